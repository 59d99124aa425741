"""Hostile guests end with a clear report and a distinct non-zero status, never a traceback.

Each test runs the real CLI (`vmirom run`) in a subprocess on a tiny guest assembled from
tests/guests/ (GNU as + ld), so the child-process isolation and exit codes are exercised end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import vmm_guests
from vmirom.runner import EXIT_CODES


def vmirom_run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from vmirom.cli import main; main()", "run", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def guests(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("guests")
    return {
        n: vmm_guests.build(n, d)
        for n in ("hello", "garbage_hypercalls", "rom_write", "triple_fault", "spin_cli", "halt_cli")
    }


def check_clean(p: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in p.stdout + p.stderr


def test_hello_exits_cleanly(guests, tmp_path):
    out = tmp_path / "r.json"
    p = vmirom_run("-H", "bare", "--cmdline", "", "--json", str(out), str(guests["hello"]))
    check_clean(p)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "hello from a tiny guest" in p.stdout
    doc = json.loads(out.read_text())
    assert doc["fate"] == "exit" and doc["exit_status"] == 0
    assert doc["metrics"]["detail"]["io:out:0xf4"] == 1


def test_triple_fault(guests):
    p = vmirom_run("-H", "bare", str(guests["triple_fault"]))
    check_clean(p)
    assert p.returncode == EXIT_CODES["triple_fault"]
    assert "triple fault" in p.stdout + p.stderr


def test_spin_with_interrupts_off_hits_the_budget(guests):
    p = vmirom_run("-H", "bare", "--timeout", "1.5", str(guests["spin_cli"]))
    check_clean(p)
    assert p.returncode == EXIT_CODES["timeout"]
    assert "budget" in p.stdout + p.stderr


def test_halt_with_interrupts_off(guests):
    p = vmirom_run("-H", "bare", str(guests["halt_cli"]))
    check_clean(p)
    assert p.returncode == EXIT_CODES["halt_dead"]
    assert "nothing can wake it" in p.stdout + p.stderr


def test_write_to_the_rom(guests):
    p = vmirom_run("-H", "vmi", str(guests["rom_write"]))
    check_clean(p)
    assert p.returncode == EXIT_CODES["vm_error"]
    assert "read-only VMI ROM" in p.stdout + p.stderr


def test_garbage_to_every_hypercall(guests, tmp_path):
    """Every CALL_REL/JUMP_REL stub gets garbage pointers and out-of-range values twice; the VMM injects
    faults (#GP/#PF) instead of crashing, and the guest runs to its end (status 42)."""
    out = tmp_path / "r.json"
    p = vmirom_run("-H", "vmi", "--json", str(out), str(guests["garbage_hypercalls"]))
    check_clean(p)
    doc = json.loads(out.read_text())
    assert doc["fate"] == "exit" and doc["exit_status"] == 42, doc["message"]
    assert p.returncode == EXIT_CODES["exit_nonzero"]
    detail = doc["metrics"]["detail"]
    calls = {k.split(":", 1)[1] for k in detail if k.startswith("hypercall:")}
    # EVERY stub of the vmi ROM was reached (only the three calls that end a run are skipped)
    from vmirom import abi
    from vmirom.hypervisors import create

    entries = create("vmi").rom_spec().entries
    kinds = (abi.RelocType.CALL_REL, abi.RelocType.JUMP_REL)
    stubs = {abi.call(n).name for n, e in entries.items() if e.reloc in kinds}
    assert stubs - {"Halt", "Reboot", "Shutdown"} <= calls, sorted(stubs - calls)
    assert detail.get("exception:13", 0) >= 20  # and garbage was refused with #GP


def test_truncated_elf(guests, tmp_path):
    data = Path(guests["hello"]).read_bytes()
    bad = tmp_path / "truncated.elf"
    bad.write_bytes(data[: len(data) // 3])
    p = vmirom_run("-H", "bare", str(bad))
    check_clean(p)
    assert p.returncode == EXIT_CODES["refused"]
    assert "truncated" in p.stdout + p.stderr


def test_non_elf_file(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not a kernel\n")
    p = vmirom_run("-H", "vmi", str(bad))
    check_clean(p)
    assert p.returncode == EXIT_CODES["refused"]
    assert "not an ELF" in p.stdout + p.stderr


def test_missing_file_and_unknown_hypervisor(tmp_path, guests):
    p = vmirom_run("-H", "bare", str(tmp_path / "nope.elf"))
    check_clean(p)
    assert p.returncode == EXIT_CODES["refused"]
    p = vmirom_run("-H", "no-such-hv", str(guests["hello"]))
    check_clean(p)
    assert p.returncode == 2  # a usage error, like every bad option value (cliutil)
    assert "unknown hypervisor" in p.stderr


def test_elf_without_multiboot_header(tmp_path):
    src = tmp_path / "nomb.S"
    src.write_text(".text\n.globl _start\n_start: hlt\n")
    obj, elf = tmp_path / "nomb.o", tmp_path / "nomb.elf"
    subprocess.run(["as", "--32", "-o", str(obj), str(src)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext=0x100000", "-o", str(elf), str(obj)], check=True)
    p = vmirom_run("-H", "bare", str(elf))
    check_clean(p)
    assert p.returncode == EXIT_CODES["refused"]
    assert "Multiboot" in p.stdout + p.stderr
