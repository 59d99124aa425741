"""The package build: everything is in pyproject.toml except what setuptools cannot declare.

1. The compiled engine core (vmirom.engines.core._core).  It is plain C against Python's C API;
   it calls Unicorn through function pointers taken from the library the `unicorn` binding
   loaded, so it needs no Unicorn headers or library at build time and works with the stock
   wheel's libunicorn and with our patched build alike.

2. `build_py` also builds what the wheel ships as package data, so that an installed vmirom boots
   with no compiler, assembler or linker on the machine (src/vmirom/guest/build.py, rom/cache.py):

   * vmirom/_prebuilt/kernel.elf, kernel-native.elf, initrd.cpio: `make -C guest all native` (the
     same Makefile and reproducible flags as a checkout: tests/test_package.py compares them with
     a rebuild);
   * vmirom/_prebuilt/rom/*.json: every built-in ROM (the built-in personalities' and the
     variants) assembled by GNU as/ld, keyed by the sha256 of its source;
   * vmirom/_prebuilt/MANIFEST.json: the sha256 of each file.

   So BUILDING a wheel needs the guest toolchain (gcc -m32, binutils, make, the 32-bit libgcc:
   scripts/setup.sh installs them); installing and running it does not.  An editable install
   (`pip install -e`) skips this step: a checkout builds guest/build/ itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CORE = Path("src/vmirom/engines/core")
GUEST_FILES = ("kernel.elf", "kernel-native.elf", "initrd.cpio")


class BuildWithGuest(build_py):
    """build_py + the prebuilt guest files and ROMs (module docstring, 2)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        build_prebuilt(Path(self.build_lib) / "vmirom" / "_prebuilt")


def build_prebuilt(out: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    jobs = str(min(2, os.cpu_count() or 1))
    subprocess.run(["make", "-C", str(ROOT / "guest"), "-j", jobs, f"PYTHON={sys.executable}", "all", "native"],
                   check=True, env=env)
    if out.exists():
        shutil.rmtree(out)
    (out / "rom").mkdir(parents=True)
    for name in GUEST_FILES:
        shutil.copyfile(ROOT / "guest" / "build" / name, out / name)
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from vmirom.rom.cache import "
                    "prebuild; print('prebuilt ROMs:', ', '.join(prebuild(Path(sys.argv[1]))))", str(out / "rom")],
                   check=True, env=env)
    manifest = {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(out.rglob("*")) if p.is_file()}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


setup(
    cmdclass={"build_py": BuildWithGuest},
    ext_modules=[
        Extension(
            "vmirom.engines.core._core",
            sources=sorted(str(p) for p in CORE.glob("*.c")),
            depends=[str(CORE / "core.h")],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ],
)
