"""The crash report: every fate but a clean exit carries the vCPU state (registers, segments with
descriptors, control registers, the instruction at EIP disassembled, the stack, the last exits),
in `vmirom run`'s output and in its --json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import vmm_guests

CLI = "import sys; from vmirom.cli import main; sys.argv[0] = 'vmirom'; main()"


@pytest.fixture(scope="module")
def guests(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("guests")
    return {n: vmm_guests.build(n, d) for n in ("hello", "triple_fault", "spin_cli")}


def run(*args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = Path(args[-1]).with_suffix(".result.json")
    p = subprocess.run([sys.executable, "-c", CLI, "run", "--json", str(out), *args],
                       capture_output=True, text=True, timeout=180)
    return p, json.loads(out.read_text())


@pytest.mark.parametrize("hypervisor", ["bare", "fullvirt"])
def test_triple_fault_reports_the_faulting_state(guests, hypervisor: str) -> None:
    p, res = run("-H", hypervisor, str(guests["triple_fault"]))
    assert p.returncode == 4 and res["fate"] == "triple_fault"
    crash = res["crash"]
    regs = crash["registers"]
    assert regs["ecx"] == 0  # xor %ecx,%ecx; div %ecx
    assert crash["code"]["disassembly"][0].endswith("div ecx"), crash["code"]
    assert crash["code"]["eip"] == regs["eip"]
    assert crash["cpl"] == (0 if hypervisor == "bare" else 1)
    assert crash["segments"]["cs"]["dpl"] == crash["cpl"]
    assert crash["segments"]["cs"]["limit"] == 0xFFFFFFFF
    assert set(crash["control"]) == {"cr0", "cr2", "cr3", "cr4"} and crash["control"]["cr0"] & 1
    assert "exception:0" in crash["last_exits"]
    text = p.stdout
    assert "vCPU state (CPL" in text and "=> 0x" in text and "div ecx" in text
    assert "CR0=" in text and "CS=" in text and "last " in text


def test_timeout_reports_the_state_and_a_clean_exit_does_not(guests) -> None:
    p, res = run("-H", "bare", "--timeout", "2", str(guests["spin_cli"]))
    assert res["fate"] == "timeout" and "crash" in res
    assert res["crash"]["eflags_flags"].split()[-1] == "IOPL=0" and "IF" not in res["crash"]["eflags_flags"]
    assert res["crash"]["code"]["disassembly"]
    p, res = run("-H", "bare", str(guests["hello"]))
    assert p.returncode == 0 and "crash" not in res and "vCPU state" not in p.stdout


def test_capture_survives_a_hostile_state() -> None:
    """Garbage ESP, EIP, GDTR: the report says so instead of failing."""
    from vmirom.debug.crashdump import capture, format_text
    from vmirom.hypervisors import create
    from vmirom.machine import Machine, MachineConfig

    m = Machine(create("bare"), MachineConfig(timeout_s=5))
    try:
        m.engine.set_reg("cr3", 0x7FFF000)
        m.engine.set_reg("cr0", 0x80000011)  # paging on with a page directory of zeros
        m.engine.set_reg("esp", 0xDEADBEEF)
        m.engine.set_reg("eip", 0xFFFFFFF0)
        m.engine.set_reg("gdtr", (0xFFFFF000, 0xFFFF))
        state = capture(m)
    finally:
        m.close()
    assert state["stack"] is None
    assert state["code"]["disassembly"] == ["0xfffffff0: (not mapped)"]
    text = format_text(state)
    assert "ESP not mapped" in text and "(not mapped)" in text
