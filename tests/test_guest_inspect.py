"""`vmirom inspect` against an independent read of the kernel's .vmi_sites section, the build
driver's toolchain errors, and the console parser."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner
from elftools.elf.elffile import ELFFile

from vmirom import abi
from vmirom.guest import build as guest_build
from vmirom.guest.build import BuildError, build_kernel
from vmirom.guest.cli import guest, inspect
from vmirom.guest.console import parse_events
from vmirom.guest.inspect import read_sites


@pytest.fixture(scope="module")
def kernel() -> Path:
    return build_kernel()


def _independent_sites(path: Path) -> list[tuple[int, int, int, int, int, bytes]]:
    """(call, length, clobbers, flags, address, native bytes), read with plain struct + sections."""
    with path.open("rb") as f:
        elf = ELFFile(f)
        raw = elf.get_section_by_name(".vmi_sites").data()
        text = elf.get_section_by_name(".text")
        base, code = text["sh_addr"], text.data()
        out = []
        for off in range(0, len(raw), 8):
            call, length, clobbers, flags, address = struct.unpack_from("<BBBBI", raw, off)
            native = code[address - base: address - base + length]
            out.append((call, length, clobbers, flags, address, native))
        return out


def test_inspect_matches_the_section(kernel: Path) -> None:
    expected = _independent_sites(kernel)
    sites = read_sites(kernel)
    assert [(s.call, s.length, s.clobbers, s.flags, s.address, s.native) for s in sites] == expected

    res = CliRunner().invoke(inspect, [str(kernel), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [(d["call"], d["length"], d["address"], bytes.fromhex(d["native"])) for d in data["sites"]] == \
        [(c, n, a, b) for c, n, _, _, a, b in expected]
    for d in data["summary"]:
        assert d["count"] == sum(1 for e in expected if e[0] == d["call"])
        assert d["name"] == abi.call(d["call"]).name


def test_sites_hold_native_code_padded_for_a_call(kernel: Path) -> None:
    sites = read_sites(kernel)
    names = {s.name for s in sites}
    # the hot operations the issue names are all inline sites
    assert {"EnableInterrupts", "DisableInterrupts", "GetInterruptMask", "SetInterruptMask", "IRET",
            "GetCR2"} <= names
    first = {"EnableInterrupts": "sti", "DisableInterrupts": "cli", "GetInterruptMask": "pushfl",
             "SetInterruptMask": "pushl %eax", "IRET": "iretl", "GetCR2": "movl %cr2, %eax",
             "GetCR3": "movl %cr3, %eax", "InvalPage": "invlpg (%eax)"}
    for s in sites:
        assert s.length >= abi.SITE_MIN_CALL_LENGTH
        assert s.clobbers == abi.call(s.call).clobber_mask        # the clobber contract is recorded
        asm = s.disassemble()
        assert asm[0] == first[s.name], (s, asm)
        n_native = 2 if s.name in ("GetInterruptMask", "SetInterruptMask") else 1
        assert asm[n_native:] == ["nop"] * (len(asm) - n_native)     # padding only
    iret = [s for s in sites if s.name == "IRET"]
    assert iret and all(s.flags & 1 for s in iret)               # may become jmp rel32


def test_inspect_human_output(kernel: Path) -> None:
    res = CliRunner().invoke(inspect, [str(kernel)])
    assert res.exit_code == 0
    assert "VMI call sites" in res.output and "per call:" in res.output
    assert "DisableInterrupts" in res.output and "cli" in res.output


@pytest.mark.parametrize("content", [b"", b"hello, not an ELF", b"\x7fELF\x02\x01\x01" + b"\0" * 9])
def test_inspect_rejects_non_elf(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.elf"
    bad.write_bytes(content)
    res = CliRunner().invoke(inspect, [str(bad)])
    assert res.exit_code == 1
    assert "Error:" in res.output and "Traceback" not in res.output


def test_inspect_rejects_other_elves() -> None:
    res = CliRunner().invoke(inspect, ["/bin/sh"])
    assert res.exit_code == 1 and "not a 32-bit i386 ELF" in res.output
    res = CliRunner().invoke(inspect, ["/nonexistent/kernel.elf"])
    assert res.exit_code == 1 and "cannot read" in res.output


def _tiny_elf(tmp_path: Path, with_sites: bool, link: bool) -> Path:
    """A small i386 ELF made with GNU as/ld: optionally with a .vmi_sites record, optionally linked."""
    import subprocess

    src = tmp_path / "t.s"
    body = "\t.text\n\t.globl _start\n_start:\n\tcli\n\tnop\n\tnop\n\tnop\n\tnop\n\tret\n"
    if with_sites:
        body += "\t.pushsection .vmi_sites, \"a\"\n\t.byte 30, 5, 0x40, 0\n\t.long _start\n\t.popsection\n"
    src.write_text(body)
    obj = tmp_path / "t.o"
    subprocess.run(["as", "--32", "-o", str(obj), str(src)], check=True)
    if not link:
        return obj
    exe = tmp_path / "t.elf"
    subprocess.run(["ld", "-m", "elf_i386", "-o", str(exe), str(obj)], check=True)
    return exe


def test_inspect_non_vmi_and_unlinked_elves(tmp_path: Path) -> None:
    plain = _tiny_elf(tmp_path, with_sites=False, link=True)
    res = CliRunner().invoke(inspect, [str(plain)])
    assert res.exit_code == 1 and "no .vmi_sites section (not a VMI kernel)" in res.output, res.output
    obj = _tiny_elf(tmp_path, with_sites=True, link=False)
    res = CliRunner().invoke(inspect, [str(obj)])
    assert res.exit_code == 1 and "type ET_REL, not a linked kernel" in res.output, res.output
    # the same source linked is a (tiny) VMI kernel: one DisableInterrupts site
    exe = _tiny_elf(tmp_path, with_sites=True, link=True)
    [site] = read_sites(exe)
    assert (site.name, site.length, site.disassemble()) == ("DisableInterrupts", 5, ["cli"] + ["nop"] * 4)


def test_inspect_damaged_kernels_give_one_line(kernel: Path, tmp_path: Path) -> None:
    """Truncated or byte-damaged copies of the real kernel: an error sentence, never a traceback."""
    import random

    from vmirom.guest.inspect import InspectError, kernel_text_crc

    data = kernel.read_bytes()
    bad = tmp_path / "damaged.elf"
    for n in (0, 3, 52, 100, 1000, len(data) // 2, len(data) - 1):      # truncated: always refused
        bad.write_bytes(data[:n])
        for reader in (read_sites, kernel_text_crc):
            with pytest.raises(InspectError) as err:
                reader(bad)
            assert str(err.value).startswith(str(bad)) and "\n" not in str(err.value)
    rnd = random.Random(7)
    for _ in range(60):                   # damaged: refused in one sentence, or still readable
        img = bytearray(data)
        for _ in range(rnd.randint(1, 12)):
            img[rnd.randrange(0, 4096 if rnd.random() < 0.7 else len(img))] = rnd.randrange(256)
        bad.write_bytes(img)
        for reader in (read_sites, kernel_text_crc):
            try:
                reader(bad)
            except InspectError as e:
                assert str(e) and "\n" not in str(e)
    res = CliRunner().invoke(inspect, [str(tmp_path)])
    assert res.exit_code == 2 and "is a directory" in res.output


def test_guest_path_builds_and_prints(kernel: Path) -> None:
    res = CliRunner().invoke(guest, ["path"])
    assert res.exit_code == 0 and Path(res.output.strip()) == kernel


def test_missing_32bit_libgcc_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    real_run = subprocess.run

    def fake_run(cmd, *a, **kw):  # type: ignore[no-untyped-def]
        if "-print-libgcc-file-name" in cmd:
            return subprocess.CompletedProcess(cmd, 0, stdout="libgcc.a\n", stderr="")
        return real_run(cmd, *a, **kw)

    monkeypatch.setattr(guest_build.subprocess, "run", fake_run)
    with pytest.raises(BuildError, match="lib32gcc-12-dev"):
        guest_build.check_toolchain()
    monkeypatch.setattr(guest_build.shutil, "which", lambda tool: None)
    with pytest.raises(BuildError, match="install the Debian package gcc"):
        guest_build.check_toolchain()


def test_parse_events_skips_garbage() -> None:
    text = ("noise\r\nVMIROM-JSON {\"event\":\"boot\",\"ring\":1}\r\n"
            "VMIROM-JSON {\"event\":\"vmi\",\"stat\n"          # cut off
            "VMIROM-JSON [1,2]\nVMIROM-JSON {\"no_event\":1}\n"
            "xxVMIROM-JSON {\"event\":\"shutdown\",\"status\":0}")
    assert parse_events(text) == [{"event": "boot", "ring": 1}, {"event": "shutdown", "status": 0}]
    assert parse_events(b"VMIROM-JSON {\"event\":\"x\"}\xff") == [{"event": "x"}]
