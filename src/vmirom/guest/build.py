"""Building the guest kernel with its Makefile.

The build installs nothing: if the toolchain is incomplete it fails with a message that names the
Debian package to install (scripts/setup.sh and the Quickstart install them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

GUEST_DIR = Path(__file__).resolve().parents[3] / "guest"
BUILD_DIR = GUEST_DIR / "build"
KERNEL_PATH = BUILD_DIR / "kernel.elf"

_TOOLS = {"gcc": "gcc", "ld": "binutils", "as": "binutils", "make": "make"}


class BuildError(Exception):
    """The kernel could not be built; the message says why and what to install."""


def check_toolchain() -> None:
    """Raise BuildError unless gcc (with -m32 support), GNU as/ld, make and the 32-bit libgcc
    are present.  The 32-bit libgcc provides __udivdi3 & co. for the kernel's 64-bit divisions."""
    for tool, package in _TOOLS.items():
        if shutil.which(tool) is None:
            raise BuildError(f"`{tool}` not found: install the Debian package {package}")
    try:
        out = subprocess.run(["gcc", "-m32", "-print-libgcc-file-name"], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f"cannot run gcc: {e}") from e
    libgcc = out.stdout.strip()
    if out.returncode != 0 or not libgcc or not Path(libgcc).is_file():
        raise BuildError("the 32-bit libgcc is missing (`gcc -m32 -print-libgcc-file-name` gives "
                         f"{libgcc or 'nothing'!r}): install the Debian package lib32gcc-12-dev")


def build_kernel(force: bool = False, verbose: bool = False) -> Path:
    """Run `make -C guest` (a no-op when up to date) and return the kernel's path."""
    if not (GUEST_DIR / "Makefile").is_file():
        raise BuildError(f"no guest sources at {GUEST_DIR}")
    check_toolchain()
    jobs = str(min(2, os.cpu_count() or 1))
    if force:
        subprocess.run(["make", "-C", str(GUEST_DIR), "clean"], capture_output=True, check=False)
    try:
        proc = subprocess.run(["make", "-C", str(GUEST_DIR), "-j", jobs], capture_output=not verbose,
                              text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f"make failed to run: {e}") from e
    if proc.returncode != 0:
        tail = "\n".join(((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-25:])
        raise BuildError(f"building the guest kernel failed (make exit {proc.returncode}):\n{tail}")
    if not KERNEL_PATH.is_file():
        raise BuildError(f"make succeeded but {KERNEL_PATH} is missing")
    return KERNEL_PATH


def kernel_path(build_if_needed: bool = True) -> Path:
    """The built kernel, building it first if needed (make decides whether anything changed)."""
    if build_if_needed:
        return build_kernel()
    if not KERNEL_PATH.is_file():
        raise BuildError(f"{KERNEL_PATH} does not exist: run `vmirom guest build`")
    return KERNEL_PATH
