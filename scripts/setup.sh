#!/usr/bin/env bash
# Install what vmirom needs on a Debian machine: the 32-bit toolchain pieces, QEMU for
# the external check, gdb, tmux for the console tests, cmake/patch for the engine, and the
# Python package itself in the project's virtual environment ($VMIROM_VENV, default .venv:
# nothing goes into the system Python, which may be "externally managed"); then the engine
# vmirom runs on: libunicorn 2.1.4 built from source with our store-path fix
# (src/vmirom/engines/patches/, docs/engine.md; ~1 min once, cached in ~/.cache/vmirom).
# The toolchain is detected, not assumed: whatever gcc the machine has, plus the 32-bit libgcc
# of THAT gcc's version.  Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VMIROM_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_updated=0
apt_install() {
    echo "setup: installing Debian packages: $*"
    if [ "$apt_updated" = 0 ]; then $sudo apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

need_apt=()
command -v qemu-system-i386 >/dev/null || need_apt+=(qemu-system-x86)
command -v gdb >/dev/null || need_apt+=(gdb)
command -v tmux >/dev/null || need_apt+=(tmux)
command -v cpio >/dev/null || need_apt+=(cpio)
command -v gcc >/dev/null || need_apt+=(gcc)
command -v make >/dev/null || need_apt+=(make)
command -v as >/dev/null || need_apt+=(binutils)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v patch >/dev/null || need_apt+=(patch)
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
[ ${#need_apt[@]} -eq 0 ] || apt_install "${need_apt[@]}"

# The 32-bit libgcc (__udivdi3 & co. for the kernel's 64-bit divisions) of the installed gcc.
libgcc32="$(gcc -m32 -print-libgcc-file-name 2>/dev/null || true)"
if [ -z "$libgcc32" ] || [ ! -e "$libgcc32" ]; then
    [ "$apt_updated" = 1 ] || { $sudo apt-get update -qq; apt_updated=1; }
    pkg="lib32gcc-$(gcc -dumpversion | cut -d. -f1)-dev"
    apt-cache show "$pkg" >/dev/null 2>&1 || pkg=gcc-multilib
    apt_install "$pkg"
fi

# The project's virtual environment, with vmirom installed editable from this checkout.
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating the virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c 'import vmirom, unicorn, capstone, elftools, pytest, hypothesis, jsonschema, wheel' 2>/dev/null \
   || [ pyproject.toml -nt "$VENV/.setup-stamp" ] || [ setup.py -nt "$VENV/.setup-stamp" ]; then
    echo "setup: installing the vmirom Python package (editable) and its dev tools into $VENV"
    "$PY" -m pip install -q --disable-pip-version-check -e '.[dev]'
    touch "$VENV/.setup-stamp"
fi

# The compiled engine core (src/vmirom/engines/core/*.c, see setup.py): built in place, and rebuilt
# whenever one of its sources is newer than the module.  Without it vmirom runs every exit on the
# Python path (and says so).
core_so=$(ls src/vmirom/engines/core/_core*.so 2>/dev/null | head -n1 || true)
if [ -z "$core_so" ] || [ -n "$(find src/vmirom/engines/core setup.py -newer "$core_so" \( -name '*.[ch]' -o -name setup.py \))" ]; then
    echo "setup: building the C engine core"
    "$PY" setup.py -q build_ext --inplace 2>&1 | grep -v -i "warn" || true
    ls src/vmirom/engines/core/_core*.so >/dev/null
fi

# The patched engine (instant when the cached build matches the patch; see docs/engine.md).
# Without it vmirom still runs, on the wheel's stock library, with guest stores ~10x slower.
if [ "${VMIROM_SKIP_ENGINE_BUILD:-0}" != "1" ]; then
    "$PY" -m vmirom.engines.unicorn_build || {
        echo "setup: building the patched engine failed (VMIROM_SKIP_ENGINE_BUILD=1 skips it;" \
             "vmirom then runs on the stock Unicorn wheel)" >&2
        exit 1
    }
fi
