"""The reference kernel on real QEMU: native boots, option ROMs found by SeaBIOS, malformed ROMs
refused, CALL_REL/JUMP_REL/NOP bindings patched and still running — always the same kernel file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmirom import abi
from vmirom.guest.build import build_kernel
from vmirom.guest.console import find_event, last_event
from vmirom.guest.qemu import QemuResult, qemu_available, run_kernel

pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(not qemu_available(), reason="qemu-system-i386 not installed")]

rom_mod = pytest.importorskip("vmirom.rom")
RomSpec, CallEntry, build_rom = rom_mod.RomSpec, rom_mod.CallEntry, rom_mod.build_rom


@dataclass(frozen=True)
class Kernel:
    path: Path
    sha256: str
    text_crc: int          # CRC-32 of the kernel text in the file


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def kernel() -> Kernel:
    from vmirom.guest.inspect import kernel_text_crc

    path = build_kernel()
    return Kernel(path, _sha(path), kernel_text_crc(path))


def boot(kernel: Kernel, cmdline: str = "exit_after=10", rom: RomSpec | None = None,
         tmp_path: Path | None = None) -> QemuResult:
    rom_file = None
    if rom is not None:
        assert tmp_path is not None
        rom_file = tmp_path / "test.rom"
        rom_file.write_bytes(build_rom(rom).data)
    res = run_kernel(kernel.path, cmdline=cmdline, option_rom=rom_file, timeout=60)
    # one binary: nothing rebuilt or rewritten it between runs
    assert _sha(kernel.path) == kernel.sha256
    return res


def assert_text(kernel: Kernel, vmi_event: dict, changed: bool) -> None:
    """The text in memory was the file's before binding, and changed only if sites were patched."""
    crc = vmi_event["text_crc"]
    assert crc["before"] == kernel.text_crc
    assert (crc["after"] != crc["before"]) == changed


def assert_clean(res: QemuResult, ticks: int = 10) -> None:
    assert not res.timed_out, res.console[-2000:]
    assert res.exit_status == 0, res.console[-2000:]
    down = last_event(res.events, "shutdown")
    assert down is not None and down["status"] == 0
    assert down["ticks"] >= ticks


def test_native_boot_ticks_and_clean_shutdown(kernel: Kernel) -> None:
    res = boot(kernel, "exit_after=25")
    assert_clean(res, 25)
    b = find_event(res.events, "boot")
    assert b is not None and b["ring"] == 0 and "exit_after=25" in b["cmdline"]
    v = find_event(res.events, "vmi")
    assert v is not None and v["status"] == "native" and v["reason"] == "no VMI ROM found"
    assert v["patched"] == 0 and v["sites"] > 0
    assert_text(kernel, v, changed=False)         # no ROM: not one byte of the text changed
    t = find_event(res.events, "timer")
    assert t is not None and t["source"] == "pit" and t["hz"] == 100
    idle = last_event(res.events, "idle")
    assert idle is not None and idle["halts"] >= 25     # the idle loop halted between ticks
    assert "vmi: native mode: no VMI ROM found" in res.console


def test_vmi_off(kernel: Kernel, tmp_path: Path) -> None:
    res = boot(kernel, "vmi=off exit_after=10", RomSpec(), tmp_path)
    assert_clean(res)
    v = find_event(res.events, "vmi")
    assert v is not None and v["status"] == "native" and "vmi=off" in v["reason"]


def test_native_rom_found_where_seabios_put_it(kernel: Kernel, tmp_path: Path) -> None:
    spec = RomSpec(manufacturer="vmirom", product="qemu-native", rom_version=(2, 7))
    res = boot(kernel, "exit_after=20", spec, tmp_path)
    assert_clean(res, 20)
    v = find_event(res.events, "vmi")
    assert v is not None and v["status"] == "bound", res.console
    rom = v["rom"]
    assert abi.ROM_SCAN_START <= rom["addr"] < abi.ROM_SCAN_END and rom["addr"] % abi.ROM_SCAN_STEP == 0
    assert (rom["manufacturer"], rom["product"]) == ("vmirom", "qemu-native")
    assert rom["api"] == f"{abi.API_MAJOR}.{abi.API_MINOR}" and rom["rom_version"] == "2.7"
    # every call the ROM's minor covers was asked; all answered native
    assert v["counts"] == {"NONE": abi.NUM_CALLS, "CALL_REL": 0, "JUMP_REL": 0, "NOP": 0}
    assert v["patched"] == 0
    assert_text(kernel, v, changed=False)
    assert f"at {rom['addr']:05x}" in res.console


def test_the_users_way_rom_build_then_guest_qemu(kernel: Kernel, tmp_path: Path) -> None:
    """Exactly what a user types: `vmirom rom build -o F` (the default, all-native ROM) then
    `vmirom guest qemu --rom F --events`; the kernel binds, asks every call, patches nothing."""
    import json

    from click.testing import CliRunner

    from vmirom.cli import main

    rom = tmp_path / "native.rom"
    res = CliRunner().invoke(main, ["rom", "build", "-o", str(rom)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["guest", "qemu", "--kernel", str(kernel.path), "--rom", str(rom),
                                    "--cmdline", "exit_after=10", "--events", "--timeout", "60"])
    assert _sha(kernel.path) == kernel.sha256
    assert res.exit_code == 0, res.output
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    v = find_event(events, "vmi")
    assert v is not None and v["status"] == "bound", res.output
    assert (v["rom"]["manufacturer"], v["rom"]["product"]) == ("vmirom", "native")
    from vmirom.rom.variants import NATIVE_NOPS
    assert v["counts"] == {"NONE": abi.NUM_CALLS - len(NATIVE_NOPS), "CALL_REL": 0, "JUMP_REL": 0,
                           "NOP": len(NATIVE_NOPS)}
    assert v["patched"] == 0                      # the NOP calls are table calls, no inline sites
    assert_text(kernel, v, changed=False)
    down = last_event(events, "shutdown")
    assert down is not None and down["status"] == 0 and down["ticks"] >= 10


def test_rom_announcing_3_0_is_not_asked_for_extensions(kernel: Kernel, tmp_path: Path) -> None:
    res = boot(kernel, "exit_after=5", RomSpec(api_minor=0), tmp_path)
    assert_clean(res, 5)
    v = find_event(res.events, "vmi")
    assert v is not None and v["status"] == "bound"
    assert sum(v["counts"].values()) == abi.NUM_CALLS_3_0


@pytest.mark.parametrize(("spec", "reason"), [
    (RomSpec(api_major=2), "mismatched rom version 2."),
    (RomSpec(api_major=4, api_minor=0), "mismatched rom version 4.0"),
    (RomSpec(with_pci=False), "ROM does not contain PCI header"),
    (RomSpec(license="Proprietary"), 'non-GPL license "Proprietary"'),
    (RomSpec(license=None), 'non-GPL license "unspecified"'),
    (RomSpec(init_asm="movl $-1, %eax\n ret"), "vmi_init failed (returned -1)"),
], ids=["major-2", "major-4", "no-pci", "non-gpl", "no-license", "init-fails"])
def test_malformed_rom_refused_and_native(kernel: Kernel, tmp_path: Path, spec: RomSpec, reason: str) -> None:
    spec.entries = {"DisableInterrupts": CallEntry.call("cli\n ret")}   # would be patched if accepted
    res = boot(kernel, "exit_after=10", spec, tmp_path)
    assert_clean(res)
    v = find_event(res.events, "vmi")
    assert v is not None and v["status"] == "native"
    assert reason in v["reason"], v["reason"]
    assert v["patched"] == 0 and v["rom"]["addr"] % abi.ROM_SCAN_STEP == 0
    assert_text(kernel, v, changed=False)
    assert f"vmi: native mode: {v['reason']}" in res.console


def test_call_rel_sti_cli_patched_and_running(kernel: Kernel, tmp_path: Path) -> None:
    spec = RomSpec(product="sti-cli-call", entries={
        "EnableInterrupts": CallEntry.call("sti\n ret"),
        "DisableInterrupts": CallEntry.call("cli\n ret"),
    })
    res = boot(kernel, "exit_after=30 vmi=debug", spec, tmp_path)
    assert_clean(res, 30)
    v = find_event(res.events, "vmi")
    assert v is not None and v["status"] == "bound"
    assert v["counts"]["CALL_REL"] == 2 and v["counts"]["NONE"] == abi.NUM_CALLS - 2
    from vmirom.guest.inspect import read_sites
    sites = read_sites(kernel.path)
    expected = sum(1 for s in sites if s.name in ("EnableInterrupts", "DisableInterrupts"))
    assert expected >= 2 and v["patched"] == expected
    assert_text(kernel, v, changed=True)
    assert "EnableInterrupts     CALL_REL" in res.console     # vmi=debug prints every binding


def test_all_binding_kinds_run_on_qemu(kernel: Kernel, tmp_path: Path) -> None:
    from vmirom.guest.testroms import all_calls_rom

    res = boot(kernel, "exit_after=30", all_calls_rom(), tmp_path)
    assert_clean(res, 30)
    v = find_event(res.events, "vmi")
    assert v is not None and v["status"] == "bound"
    assert v["counts"]["JUMP_REL"] == 1 and v["counts"]["NOP"] == 5 and v["counts"]["CALL_REL"] == 18
    assert v["patched"] == v["sites"]          # every inline site's call is answered by the ROM
    assert_text(kernel, v, changed=True)


def _tamper_reloc(data: bytes, call: int, reloc: int, target: int | None = None) -> bytes:
    """A ROM whose get_reloc answers something the builder refuses to produce (a hostile or buggy
    hypervisor): rewrite one entry of the relocation table, then fix the option-ROM checksum so
    SeaBIOS still loads it."""
    from vmirom.rom import read_rom
    from vmirom.rom.build import RELOC_TAG_SIZE

    table = read_rom(data).table
    assert table is not None and table.entries is not None
    img = bytearray(data)
    at = table.tag_offset + RELOC_TAG_SIZE + call * table.entry_size
    img[at + 4] = reloc
    if target is not None:
        img[at:at + 4] = target.to_bytes(4, "little")
    size = img[2] * abi.ROM_BLOCK
    img[size - 1] = (img[size - 1] - sum(img[:size])) & 0xFF
    return bytes(img)


@pytest.mark.parametrize(("call", "reloc", "target", "reason"), [
    ("DisableInterrupts", 2, None, "JUMP_REL for a call that returns"),
    ("SetCR3", 7, None, "an unknown relocation type"),
    ("EnableInterrupts", 1, 0, "a null target"),
], ids=["jump-for-returning-call", "unknown-type", "null-target"])
def test_bad_get_reloc_answer_refuses_the_rom(kernel: Kernel, tmp_path: Path, call: str, reloc: int,
                                              target: int | None, reason: str) -> None:
    spec = RomSpec(entries={"DisableInterrupts": CallEntry.call("cli\n ret"),
                            "EnableInterrupts": CallEntry.call("sti\n ret"),
                            "SetCR3": CallEntry.call("mov %eax, %cr3\n ret")})
    rom_file = tmp_path / "tampered.rom"
    rom_file.write_bytes(_tamper_reloc(build_rom(spec).data, abi.call(call).number, reloc, target))
    res = run_kernel(kernel.path, cmdline="exit_after=5", option_rom=rom_file, timeout=60)
    assert _sha(kernel.path) == kernel.sha256
    assert_clean(res, 5)
    v = find_event(res.events, "vmi")
    assert v is not None and v["status"] == "native", res.console
    assert reason in v["reason"] and call in v["reason"] and v["patched"] == 0
    assert_text(kernel, v, changed=False)


@pytest.mark.parametrize("content", [b"not a kernel\n", b"\x7fELF" + bytes(60)], ids=["text", "bad-elf"])
def test_guest_qemu_reports_a_kernel_qemu_refuses(tmp_path: Path, content: bytes) -> None:
    """QEMU exits with 1 when it refuses a kernel -- the same code as a guest's clean status 0 at
    port 0xF4; the run must not pass for a clean boot."""
    from click.testing import CliRunner

    from vmirom.cli import main

    bad = tmp_path / "bad.elf"
    bad.write_bytes(content)
    res = run_kernel(bad, timeout=30)
    assert res.qemu_error and res.exit_status is None and not res.clean
    out = CliRunner().invoke(main, ["guest", "qemu", "--kernel", str(bad), "--timeout", "30"])
    assert out.exit_code == 1 and f"QEMU could not boot {bad}" in out.output, out.output
