"""Build of the compiled engine core (vmirom.engines.core._core); everything else is in pyproject.toml.

The core is plain C against Python's C API; it calls Unicorn through function pointers taken from
the library the `unicorn` binding loaded, so it needs no Unicorn headers or library at build time
and works with the stock wheel's libunicorn and with our patched build alike."""

from pathlib import Path

from setuptools import Extension, setup

CORE = Path("src/vmirom/engines/core")

setup(
    ext_modules=[
        Extension(
            "vmirom.engines.core._core",
            sources=sorted(str(p) for p in CORE.glob("*.c")),
            depends=[str(CORE / "core.h")],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ],
)
