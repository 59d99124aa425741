"""Micro-measurement: what one guest store costs on each engine build (docs/engine.md).

    python -m vmirom.bench.stores            # every build available, each in its own interpreter
    python -m vmirom.bench.stores --json     # the same as JSON

A byte loop like the guest kernel's memset (`mov %al,(%edi); inc %edi; dec %ecx; jnz`) over one
4 KiB page, repeated, against the same loop with a load.  The engine is set up the way the VMM
sets it up (UnicornEngine.attach_memory + set_hooks: RAM mapped whole, a read-only ROM range, the
memory hooks only where they can fire), and once more with one extra memory hook over the whole
address space (the hook layout before W15).  The store fast path needs both the patched library
and the scoped hooks; everything else shows the slow path's ~50 ns per store.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import subprocess
import sys
import time

PAGE = 0x100000  # the page the loops write (physical = linear: no paging)
CODE = 0x1000
ROUNDS = 300  # passes over the page per run
RAM = 4 << 20
ROM = (0xC0000, 0xC8000)


def _loop(op: bytes) -> bytes:
    """mov edx, ROUNDS; L1: mov edi, PAGE; mov ecx, 4096; L2: <op>; inc edi; dec ecx; jnz L2;
    dec edx; jnz L1; hlt"""
    inner = op + b"\x47\x49\x75" + bytes([256 - (len(op) + 4)])
    body = b"\xbf" + struct.pack("<I", PAGE) + b"\xb9" + struct.pack("<I", 4096) + inner + b"\x4a\x75"
    return b"\xba" + struct.pack("<I", ROUNDS) + body + bytes([256 - (len(body) + 1)]) + b"\xf4"


class _NoHooks:
    """The machine's hook object, reduced to what this loop can reach (nothing but a halt)."""

    def __getattr__(self, name: str):
        return lambda *a: 0


def measure(extra_hook: bool) -> dict[str, float]:
    from unicorn import UC_HOOK_MEM_READ_UNMAPPED

    from vmirom.engines.unicorn import UnicornEngine

    eng = UnicornEngine()
    ram = mmap.mmap(-1, RAM)
    eng.attach_memory(ram, RAM, [ROM])
    eng.set_hooks(_NoHooks())  # type: ignore[arg-type]
    if extra_hook:  # the old layout: one memory hook with the default range (everything)
        eng.uc.hook_add(UC_HOOK_MEM_READ_UNMAPPED, lambda *a: False)
    out = {}
    for name, op in (("store", b"\x88\x07"), ("load", b"\x8a\x07")):
        best = float("inf")
        for _ in range(3):
            code = _loop(op)
            ram[CODE : CODE + len(code)] = code
            eng.invalidate_code(CODE, CODE + len(code))
            t = time.perf_counter()
            eng.uc.emu_start(CODE, CODE + len(code))
            best = min(best, time.perf_counter() - t)
        out[f"{name}_ns_per_iter"] = round(best / (ROUNDS * 4096) * 1e9, 2)
    out["store_extra_ns"] = round(out["store_ns_per_iter"] - out["load_ns_per_iter"], 2)
    out["memset_4k_us"] = round(out["store_ns_per_iter"] * 4096 / 1000, 1)
    eng.close()
    return out


def here() -> dict:
    """This process's build, both hook layouts."""
    from vmirom.engines.libunicorn import describe

    return {"engine": describe().as_json(), "scoped_hooks": measure(False),
            "hook_over_everything": measure(True)}


def main(argv: list[str]) -> None:
    if "--here" in argv:
        print(json.dumps(here()))
        return
    from vmirom.engines import libunicorn

    rows = []
    for build in ("patched", "stock"):
        if build == "patched" and libunicorn.patched_library() is None:
            continue
        env = {**os.environ, libunicorn.ENV_BUILD: build}
        env.pop(libunicorn.ENV_LIBPATH, None)
        p = subprocess.run([sys.executable, "-m", "vmirom.bench.stores", "--here"], env=env,
                           capture_output=True, text=True, check=True)
        rows.append(json.loads(p.stdout))
    if "--json" in argv:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'build':8} {'memory hooks':22} {'store ns/iter':>14} {'load ns/iter':>13} {'store extra':>12} "
          f"{'4 KiB memset':>13}")
    layouts = (("scoped_hooks", "where they can fire"), ("hook_over_everything", "over everything"))
    for r in rows:
        for layout, label in layouts:
            m = r[layout]
            print(f"{r['engine']['build']:8} {label:22} {m['store_ns_per_iter']:14.2f} "
                  f"{m['load_ns_per_iter']:13.2f} {m['store_extra_ns']:12.2f} {m['memset_4k_us']:10.1f} us")
    print("(per iteration of a byte loop: the access + inc + dec + jnz; best of 3 runs of "
          f"{ROUNDS} x 4 KiB)")


if __name__ == "__main__":
    main(sys.argv[1:])
