"""No guest instruction runs twice around the slice timer's asynchronous stop (docs/engine.md,
"An instruction run twice around an asynchronous stop"; part 5 of the engine patch).

Unicorn 2.1.4 checks for an exit request after every guest memory access and, on one, ends the
instruction there with EIP back at its start: an `incl mem` stopped after its store ran again in the
next slice.  Guests saw counters a few increments off (tests/test_mmu_isolation.py, the selftest's
"passed 30 of 29").  Our patched engine leaves an asynchronous stop to the next translation block's
start; the stock wheel keeps the bug, and the tests show it there (so they can fail).

Each case runs in a child interpreter: a process holds one libunicorn (VMIROM_ENGINE_BUILD).
  * engine level (a few seconds): `1: incl (x); inc %esi; jmp 1b` in a bare Unicorn with the VMM's
    slice timer, thousands of 100 us slices, memory compared with %esi after each;
  * guest level: tests/guests/stop_count.S on `bare` (paging on, IF=0) through Machine.run with
    200 us slices: incl/addl/xchg/decl on memory counted against a register, exit 0 when exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vmm_guests
from vmirom.engines import libunicorn as lu

BUILDS = [
    pytest.param("patched", marks=pytest.mark.skipif(lu.patched_library() is None,
                                                     reason="the patched engine is not built")),
    "stock",
]
SRC = str(Path(__file__).resolve().parents[1] / "src")

ENGINE_LOOP = r"""
import ctypes, json, mmap, sys
import vmirom  # chooses the library before unicorn is imported
from vmirom.engines import libunicorn
from vmirom.engines.unicorn import _slice_timer
from unicorn import Uc, UC_ARCH_X86, UC_MODE_32, UC_PROT_ALL
from unicorn import x86_const as X

CODE, X_ADDR = 0x1000, 0x2000
slices, slice_us = int(sys.argv[1]), int(sys.argv[2])
uc = Uc(UC_ARCH_X86, UC_MODE_32)
uc.ctl_exits_enabled(True)  # as the engine runs it (W11)
ram = mmap.mmap(-1, 0x10000)
uc.mem_map_ptr(0, 0x10000, UC_PROT_ALL, ctypes.addressof(ctypes.c_char.from_buffer(ram)))
ram[CODE:CODE + 9] = b"\xff\x05" + X_ADDR.to_bytes(4, "little") + b"\x46\xeb\xf7"  # incl (x); inc %esi; jmp
timer = _slice_timer(uc)
eip, off, worst = CODE, 0, 0
for _ in range(slices):
    timer.arm(slice_us * 1000)
    uc.emu_start(eip, 0)
    timer.disarm()
    eip = uc.reg_read(X.UC_X86_REG_EIP)
    esi = uc.reg_read(X.UC_X86_REG_ESI)
    want = (esi + (eip == CODE + 6)) & 0xFFFFFFFF  # between the incl and the inc: x is one ahead
    got = int.from_bytes(ram[X_ADDR:X_ADDR + 4], "little")
    if got != want:
        off, worst = off + 1, max(worst, abs(got - want))
        ram[X_ADDR:X_ADDR + 4] = want.to_bytes(4, "little")  # count each slice on its own
print(json.dumps({"build": libunicorn.describe().build, "slices": slices, "off": off, "worst": worst}))
"""

GUEST_RUN = r"""
import json, struct, sys
import vmirom
from vmirom.engines import libunicorn
from vmirom.hypervisors import create
from vmirom.machine import Machine, MachineConfig

m = Machine(create("bare"), MachineConfig(timeout_s=240, slice_us=int(sys.argv[2])))
try:
    m.load_kernel(open(sys.argv[1], "rb").read())
    res = m.run()
    counter, total, esi, chain = struct.unpack("<4I", m.memory.read(0x280000, 16))
    print(json.dumps({"build": libunicorn.describe().build, "fate": res.fate, "status": res.exit_status,
                      "message": res.message, "slices": res.metrics["kinds"].get("slice", 0),
                      "counter": counter, "sum": total, "esi": esi, "chain_errors": chain}))
finally:
    m.close()
"""


def child(build: str, program: str, *args: str) -> dict:
    path = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, VMIROM_ENGINE_BUILD=build, PYTHONPATH=path)
    env.pop("LIBUNICORN_PATH", None)
    p = subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout.strip().splitlines()[-1])
    assert doc["build"] == build
    return doc


@pytest.mark.parametrize("build", BUILDS)
def test_an_incl_is_never_run_twice_across_a_timer_stop(build):
    doc = child(build, ENGINE_LOOP, "3000", "100")
    if build == "patched":
        assert doc["off"] == 0, doc
    else:  # the stock wheel is affected (docs/engine.md): most 100 us slices show it
        assert doc["off"] > 0, doc


@pytest.mark.parametrize("build", BUILDS)
def test_guest_counters_stay_exact_with_short_slices(build, tmp_path):
    elf = vmm_guests.build("stop_count", tmp_path)
    doc = child(build, GUEST_RUN, str(elf), "200")
    assert doc["fate"] == "exit", doc
    assert doc["slices"] > 100, doc  # the loop really spanned many timer stops
    exact = (doc["status"] == 0 and doc["counter"] == doc["esi"] == 4_000_000
             and doc["sum"] == 3 * doc["esi"] and doc["chain_errors"] == 0)
    if build == "patched":
        assert exact, doc
    else:
        assert not exact, doc
