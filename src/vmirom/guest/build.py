"""Building the guest kernel with its Makefile, and finding the guest files to boot.

Two places hold a reference kernel, native kernel and initrd:

* a CHECKOUT (guest/ beside src/): `make -C guest` builds guest/build/; the toolchain is needed
  only to (re)build, so with no gcc a kernel that was built already is used as it is;
* an INSTALLED package (a wheel): the package build (setup.py) put prebuilt copies in
  vmirom/_prebuilt/, built from the same sources by the same Makefile.  Nothing is compiled at
  run time; `vmirom guest build` needs a checkout.

The build installs nothing: if the toolchain is incomplete it fails with a message that names the
Debian package to install (scripts/setup.sh and the Quickstart install them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

GUEST_DIR = Path(__file__).resolve().parents[3] / "guest"
#: the guest files the package build ships (setup.py; tests/test_package.py checks them)
PREBUILT_DIR = Path(__file__).resolve().parents[1] / "_prebuilt"
PREBUILT_FILES = ("kernel.elf", "kernel-native.elf", "initrd.cpio")


def in_checkout() -> bool:
    """Is this vmirom a source checkout (guest sources beside it), rather than an installed wheel?"""
    return (GUEST_DIR / "Makefile").is_file()


BUILD_DIR = GUEST_DIR / "build" if in_checkout() or not PREBUILT_DIR.is_dir() else PREBUILT_DIR
KERNEL_PATH = BUILD_DIR / "kernel.elf"
NATIVE_KERNEL_PATH = BUILD_DIR / "kernel-native.elf"

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


def build_kernel(force: bool = False, verbose: bool = False, target: str = "all") -> Path:
    """Run `make -C guest [target]` (a no-op when up to date) and return the kernel's path."""
    if not in_checkout():
        raise BuildError(f"no guest sources at {GUEST_DIR}: building the guest needs a vmirom checkout "
                         f"(this installation boots the prebuilt files in {PREBUILT_DIR})")
    check_toolchain()
    jobs = str(min(2, os.cpu_count() or 1))
    if force:
        subprocess.run(["make", "-C", str(GUEST_DIR), "clean"], capture_output=True, check=False)
    try:
        proc = subprocess.run(["make", "-C", str(GUEST_DIR), "-j", jobs, target], capture_output=not verbose,
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
    """The reference kernel to boot.  In a checkout: built first when the toolchain is there (make
    decides whether anything changed), else the kernel built earlier.  Installed: the prebuilt one."""
    if build_if_needed and in_checkout():
        try:
            check_toolchain()
        except BuildError:
            if KERNEL_PATH.is_file():
                return KERNEL_PATH  # built earlier; no compiler needed to boot it
            raise
        return build_kernel()
    if not KERNEL_PATH.is_file():
        raise BuildError(f"{KERNEL_PATH} does not exist: run `vmirom guest build`")
    return KERNEL_PATH


def native_kernel_path() -> Path:
    """The kernel built without VMI call sites (`make -C guest native`; prebuilt when installed)."""
    if in_checkout():
        try:
            check_toolchain()
        except BuildError:
            if NATIVE_KERNEL_PATH.is_file():
                return NATIVE_KERNEL_PATH
            raise
        build_kernel(target="native")
    if not NATIVE_KERNEL_PATH.is_file():
        raise BuildError(f"{NATIVE_KERNEL_PATH} does not exist: run `make -C guest native`")
    return NATIVE_KERNEL_PATH
