#!/usr/bin/env bash
# Install what vmirom needs on a Debian machine: the 32-bit toolchain pieces, QEMU for
# the external check, gdb, tmux for the console tests, the Python package itself, and the
# engine vmirom runs on: libunicorn 2.1.4 built from source with our store-path fix
# (src/vmirom/engines/patches/, docs/engine.md; ~1 min once, cached in ~/.cache/vmirom).
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v qemu-system-i386 >/dev/null || need_apt+=(qemu-system-x86)
[ -e /usr/lib/gcc/x86_64-linux-gnu/12/32/libgcc.a ] || need_apt+=(lib32gcc-12-dev)
command -v gdb >/dev/null || need_apt+=(gdb)
command -v tmux >/dev/null || need_apt+=(tmux)
command -v cpio >/dev/null || need_apt+=(cpio)
command -v gcc >/dev/null || need_apt+=(gcc)
command -v make >/dev/null || need_apt+=(make)
command -v as >/dev/null || need_apt+=(binutils)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v patch >/dev/null || need_apt+=(patch)

if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need_apt[*]}"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! python3 -c 'import vmirom, unicorn, capstone, elftools, pytest, hypothesis' 2>/dev/null \
   || [ pyproject.toml -nt .setup-stamp ]; then
    echo "setup: installing the vmirom Python package (editable) and its dev tools"
    python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
    touch .setup-stamp
fi

# The compiled engine core (src/vmirom/engines/core/*.c, see setup.py): built in place, and rebuilt
# whenever one of its sources is newer than the module.  Without it vmirom runs every exit on the
# Python path (and says so).
core_so=$(ls src/vmirom/engines/core/_core*.so 2>/dev/null | head -n1 || true)
if [ -z "$core_so" ] || [ -n "$(find src/vmirom/engines/core setup.py -newer "$core_so" \( -name '*.[ch]' -o -name setup.py \))" ]; then
    echo "setup: building the C engine core"
    python3 setup.py -q build_ext --inplace 2>&1 | grep -v -i "warn" || true
    ls src/vmirom/engines/core/_core*.so >/dev/null
fi

# The patched engine (instant when the cached build matches the patch; see docs/engine.md).
# Without it vmirom still runs, on the wheel's stock library, with guest stores ~10x slower.
if [ "${VMIROM_SKIP_ENGINE_BUILD:-0}" != "1" ]; then
    python3 -m vmirom.engines.unicorn_build || {
        echo "setup: building the patched engine failed (VMIROM_SKIP_ENGINE_BUILD=1 skips it;" \
             "vmirom then runs on the stock Unicorn wheel)" >&2
        exit 1
    }
fi
