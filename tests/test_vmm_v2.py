"""The newer personalities on the unchanged reference kernel: `vmi2` (the next `vmi`: virtual IF in
shared memory, batched page-table updates, fewer exits) and `hwassist` (VT-x/EPT-like: ring 0, a ROM
for time and halt only).

Every test boots the real kernel (in this process, through `vmirom.runner.run_in_process`) and reads
what it printed and what the VMM counted.  The comparisons are counts of exits, never times.
"""

from __future__ import annotations

import difflib
import re
import struct
from pathlib import Path

import pytest

from vmirom import abi
from vmirom.guest.build import BUILD_DIR, build_kernel
from vmirom.guest.console import parse_events
from vmirom.hypervisors import registry
from vmirom.hypervisors.vmi2 import BATCH_MAX, SH_BATCH, SH_COUNT, SH_PENDING, SH_VIF, Vmi2
from vmirom.runner import RunRequest, run_in_process

IF_CALLS = ("DisableInterrupts", "EnableInterrupts", "GetInterruptMask", "SetInterruptMask")
KERNBASE = 0xC0000000


@pytest.fixture(scope="module")
def kernel() -> Path:
    return build_kernel()


def boot(kernel: Path, hv: str, cmdline: str = "exit_after=20") -> dict:
    initrd = BUILD_DIR / "initrd.cpio"
    req = RunRequest(hypervisor=hv, kernel=str(kernel), cmdline=cmdline, timeout_s=120,
                     initrd=str(initrd) if initrd.exists() else None, echo=False)
    return run_in_process(req)


def vmi_event(doc: dict) -> dict:
    return next(e for e in parse_events(doc["console"]) if e["event"] == "vmi")


def normalised(console: str) -> str:
    """Mask what legitimately differs between personalities: the ring, the ROM line and the binding
    report (bare has no ROM), idle-halt counts and the tick at "ready"."""
    keep = []
    for line in console.replace("\r\n", "\n").splitlines():
        if line.startswith(("vmi:", "timer:", 'VMIROM-JSON {"event":"vmi"', 'VMIROM-JSON {"event":"timer"')):
            continue  # binding and timer source: what a personality is about
        line = re.sub(r"ring [01]\b", "ring R", line)
        line = re.sub(r'"ring":[01]\b', '"ring":R', line)
        line = re.sub(r'"halts":\d+', '"halts":N', line)
        line = re.sub(r'"timer":"\w+"', '"timer":T', line)
        line = re.sub(r'("event":"ready","ticks"):\d+', r"\1:N", line)
        keep.append(re.sub(r"\d+ idle halts", "N idle halts", line))
    return "\n".join(keep)


@pytest.fixture(scope="module")
def idle(kernel: Path) -> dict[str, dict]:
    """One idle boot (exit_after=20) per personality."""
    return {hv: boot(kernel, hv) for hv in ("bare", "vmi", "vmi2", "hwassist")}


@pytest.mark.parametrize("hv", ["vmi2", "hwassist"])
def test_idle_boot_exits_cleanly_with_bare_console(idle: dict, hv: str) -> None:
    bare, doc = idle["bare"], idle[hv]
    assert (bare["fate"], bare["exit_status"]) == ("exit", 0)
    assert (doc["fate"], doc["exit_status"]) == ("exit", 0), doc["message"]
    want, got = normalised(bare["console"]), normalised(doc["console"])
    assert got == want, "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True)))
    ev = vmi_event(doc)
    assert ev["status"] == "bound" and ev["ring"] == (1 if hv == "vmi2" else 0)
    # the same kernel file as every other personality
    assert doc["kernel_sha256"] == bare["kernel_sha256"] == idle["vmi"]["kernel_sha256"]


def test_vmi2_binding_sees_minor_1_and_binds_the_extensions(kernel: Path) -> None:
    doc = boot(kernel, "vmi2", "vmi=debug exit_after=5")
    assert (doc["fate"], doc["exit_status"]) == ("exit", 0), doc["message"]
    ev = vmi_event(doc)
    assert ev["rom"]["api"] == "3.1" and ev["rom"]["rom_version"] == "2.0"
    assert ev["patched"] == ev["sites"]
    assert sum(ev["counts"].values()) == abi.NUM_CALLS  # 76: the ROM was asked about 74 and 75 too
    table = dict(re.findall(r"vmi: +(\d+) \w+ +(\w+)", doc["console"]))
    num = {n: str(abi.call(n).number) for n in ("FlushDeferred", "GetSharedInfo", "IRET", "SetPxE",
                                                 "AllocatePage", "DisableInterrupts")}
    assert table[num["FlushDeferred"]] == "CALL_REL"
    assert table[num["GetSharedInfo"]] == "NONE"
    assert table[num["IRET"]] == "JUMP_REL"
    assert table[num["AllocatePage"]] == "NOP"
    assert table[num["DisableInterrupts"]] == "CALL_REL"
    # v1 announces 3.0: the same kernel never asks it about the extensions
    v1 = boot(kernel, "vmi", "vmi=debug exit_after=5")
    assert vmi_event(v1)["rom"]["api"] == "3.0"
    assert sum(vmi_event(v1)["counts"].values()) == abi.NUM_CALLS_3_0
    assert not re.search(r"vmi: +74 ", v1["console"])


def test_hwassist_keeps_cpu_ops_native(idle: dict) -> None:
    doc = idle["hwassist"]
    ev = vmi_event(doc)
    assert ev["ring"] == 0 and ev["rom"]["api"] == "3.0"
    assert ev["patched"] == 0  # every inline site (cli, sti, iret, cr2, cr3, invlpg) stays native
    detail, kinds = doc["metrics"]["detail"], doc["metrics"]["kinds"]
    assert "emulate" not in kinds  # nothing de-privileged, nothing trapped
    calls = {k.split(":", 1)[1] for k in detail if k.startswith("hypercall:")}
    assert calls <= {"GetCycleFrequency", "GetCycleCounter", "SetAlarm", "CancelAlarm", "GetWallclockTime",
                     "WallclockUpdated", "Halt", "Shutdown", "Reboot"}, calls
    assert detail["hypercall:Halt"] > 0 and detail["hypercall:SetAlarm"] == 1
    timer = next(e for e in parse_events(doc["console"]) if e["event"] == "timer")
    assert timer["source"] == "vmi"  # the ROM's alarm, not the PIT through port I/O
    assert "io:out:0x40" not in detail  # the PIT's counter is never loaded


def test_vmi2_interrupt_flag_operations_never_exit(idle: dict) -> None:
    v1, v2 = idle["vmi"]["metrics"]["detail"], idle["vmi2"]["metrics"]["detail"]
    assert sum(v1.get(f"hypercall:{c}", 0) for c in IF_CALLS) > 0  # what v1 paid
    assert {c: v2.get(f"hypercall:{c}", 0) for c in IF_CALLS} == dict.fromkeys(IF_CALLS, 0)
    # the only trapped cli/sti are the kernel's native ones before it binds, as on v1
    emu1 = {k: n for k, n in v1.items() if k.startswith("emulate:")}
    emu2 = {k: n for k, n in v2.items() if k.startswith("emulate:")}
    assert emu2 == emu1
    # an interrupt held back by the virtual flag costs one exit at most
    assert v2.get("hypercall:irq_window", 0) <= idle["vmi2"]["metrics"]["kinds"]["interrupt"]


def test_vmi2_makes_fewer_hypercalls_than_vmi(idle: dict) -> None:
    v1, v2 = idle["vmi"], idle["vmi2"]
    h1, h2 = v1["metrics"]["kinds"]["hypercall"], v2["metrics"]["kinds"]["hypercall"]
    assert h2 < h1 / 10, (h1, h2)
    assert v2["metrics"]["total_exits"] < v1["metrics"]["total_exits"]
    p = v2["personality"]
    # the direct map went through the batch: validated at a handful of flushes, not one exit each
    assert p["pte_updates_batched"] > 30000
    assert 0 < p["batch_flushes"] <= p["pte_updates_batched"] // BATCH_MAX + 20  # full logs + lazy sections
    pxe1, pxe2 = (d["metrics"]["detail"].get("hypercall:SetPxE", 0) for d in (v1, v2))
    assert pxe2 < pxe1 / 100


# -- hostile shared memory ---------------------------------------------------------------------------
def _hostile(name: str, poke) -> str:
    """Register a vmi2 whose guest memory gets `poke`d once the kernel has bound (what a hostile or
    buggy kernel could write into its shared page at any moment)."""

    class Hostile(Vmi2):
        def before_slice(self) -> None:
            super().before_slice()
            if not getattr(self, "_poked", False) and "vmi: bound" in self.machine.uart.text():
                self._poked = True
                poke(self)

    Hostile.name = name
    registry.register(Hostile)
    return name


def _set(off: int, value: int):
    return lambda p: p._memory.set_u32(p.shared + off, value)


def _records(*recs: tuple[int, int], extra: tuple[int, int] | None = None):
    def poke(p: Vmi2) -> None:
        if extra is not None:
            p._memory.set_u32(p.shared + extra[0], extra[1])
        for i, (ptr, flags) in enumerate(recs):
            p._memory.write(p.shared + SH_BATCH + 8 * i, struct.pack("<II", ptr(p), flags))
        p._memory.set_u32(p.shared + SH_COUNT, len(recs))

    return poke


def test_garbage_virtual_if_stops_the_vm_cleanly(kernel: Path) -> None:
    name = _hostile("vmi2-hostile-vif", _set(SH_VIF, 0xDEADBEEF))
    try:
        doc = boot(kernel, name, "exit_after=50")
    finally:
        registry.unregister(name)
    assert doc["fate"] == "bad_shared_state", doc["message"]
    assert "virtual interrupt flag" in doc["message"] and "0xdeadbeef" in doc["message"]


def test_garbage_pending_word_is_not_trusted(kernel: Path) -> None:
    name = _hostile("vmi2-hostile-pending", _set(SH_PENDING, 0xFFFFFFFF))
    try:
        doc = boot(kernel, name, "exit_after=20")
    finally:
        registry.unregister(name)
    assert (doc["fate"], doc["exit_status"]) == ("exit", 0), doc["message"]


OUTSIDE_RAM_ENTRY = 0xFFC  # the last batch slot, used as a fake page-table entry (count is 1)


@pytest.mark.parametrize(
    "case, poke",
    [
        ("count", _set(SH_COUNT, 0x7FFFFFFF)),
        ("misaligned", _records((lambda p: KERNBASE + p.shared + 0x802, abi.PAGE_PT))),
        ("unmapped", _records((lambda p: 0xF0000000, abi.PAGE_PT))),  # above the 128 MiB direct map
        ("outside_ram", _records((lambda p: KERNBASE + p.shared + OUTSIDE_RAM_ENTRY, abi.PAGE_PT),
                                 extra=(OUTSIDE_RAM_ENTRY, 0xFFFFF003))),
    ],
)
def test_garbage_batch_gets_gp_at_the_flush(kernel: Path, case: str, poke) -> None:
    name = _hostile(f"vmi2-hostile-{case}", poke)
    try:
        doc = boot(kernel, name, "exit_after=50")
    finally:
        registry.unregister(name)
    exc = [e for e in parse_events(doc["console"]) if e["event"] == "exception"]
    # the kernel's next page-table flush is refused with #GP; the kernel reports it and stops
    assert (doc["fate"], doc["exit_status"]) == ("exit", 2), (doc["fate"], doc["message"])
    assert exc and exc[0]["vector"] == 13, exc


# -- the selftest workload (three boots, a few seconds) ------------------------------------------------
def test_selftest_passes_and_vmi2_exits_less(kernel: Path) -> None:
    docs = {hv: boot(kernel, hv, "init=selftest") for hv in ("vmi", "vmi2", "hwassist")}
    for hv, doc in docs.items():
        assert (doc["fate"], doc["exit_status"]) == ("exit", 0), (hv, doc["message"])
        st = doc["outcome"]["selftest"]
        assert st["failed"] == 0 and st["passed"] == st["total"] > 0, (hv, st)
    v1, v2 = docs["vmi"]["metrics"], docs["vmi2"]["metrics"]
    assert v2["kinds"]["hypercall"] < v1["kinds"]["hypercall"] / 2
    assert all(v2["detail"].get(f"hypercall:{c}", 0) == 0 for c in IF_CALLS)
    # the user-space work is the same: system calls and page faults
    assert v2["detail"]["softint:0x80"] == pytest.approx(v1["detail"]["softint:0x80"], rel=0.05)
