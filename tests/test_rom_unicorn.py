"""get_reloc and vmi_init run as real x86 code on Unicorn, at the ROM's physical address
and through a higher-half mapping, and answer exactly what the builder's table says.

This harness is deliberately independent of vmirom.rom.sandbox (which check_rom uses):
32-bit protected mode with a flat GDT and *paging on*, the ROM at physical 0xC0000 seen
both identity-mapped (linear 0xC0000) and through a 4 MiB page at 0xC0000000 (linear
0xC00C0000) -- the two ways a guest kernel reaches it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_32, UC_PROT_ALL, Uc
from unicorn.x86_const import (
    UC_X86_REG_CR0,
    UC_X86_REG_CR3,
    UC_X86_REG_CR4,
    UC_X86_REG_CS,
    UC_X86_REG_DS,
    UC_X86_REG_EAX,
    UC_X86_REG_EBX,
    UC_X86_REG_ECX,
    UC_X86_REG_EDI,
    UC_X86_REG_EDX,
    UC_X86_REG_EIP,
    UC_X86_REG_ES,
    UC_X86_REG_ESI,
    UC_X86_REG_ESP,
    UC_X86_REG_GDTR,
    UC_X86_REG_SS,
)

from vmirom import abi
from vmirom.abi import RelocType
from vmirom.rom import CallEntry, RomSpec, build_rom
from vmirom.rom.variants import VARIANTS

ROM_PHYS = 0xC0000
HIGH = 0xC0000000
BASES = (ROM_PHYS, HIGH + ROM_PHYS)
GDT, PD, STACK, RET = 0x1000, 0x2000, 0x8000, 0x9000
OUT_OF_RANGE = (abi.NUM_CALLS, abi.NUM_CALLS + 7, 0x80, 0xFFFF, 0x80000000, 0xFFFFFFFF)


class PagedCpu:
    """A 4 MiB guest with paging: linear 0-4 MiB and 0xC0000000+ both map physical 0."""

    def __init__(self, rom: bytes) -> None:
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map(0, 4 << 20, UC_PROT_ALL)
        uc.mem_write(ROM_PHYS, rom)
        uc.mem_write(GDT, bytes(8) + bytes.fromhex("ffff0000009acf00ffff00000092cf00"))
        pde = (0x83).to_bytes(4, "little")           # present, writable, 4 MiB page at 0
        uc.mem_write(PD, pde)
        uc.mem_write(PD + (HIGH >> 22) * 4, pde)
        uc.mem_write(RET, b"\xf4")
        uc.reg_write(UC_X86_REG_GDTR, (0, GDT, 23, 0))
        uc.reg_write(UC_X86_REG_CS, 0x08)
        for r in (UC_X86_REG_SS, UC_X86_REG_DS, UC_X86_REG_ES):
            uc.reg_write(r, 0x10)
        uc.reg_write(UC_X86_REG_CR3, PD)
        uc.reg_write(UC_X86_REG_CR4, 0x10)           # PSE
        uc.reg_write(UC_X86_REG_CR0, 0x80000011)     # PG | ET | PE
        self.uc = uc

    def call(self, addr: int, eax: int = 0) -> tuple[int, int]:
        """Call `addr` with EAX = eax; return (EAX, EDX).  Checks callee-saved registers."""
        uc = self.uc
        uc.mem_write(STACK - 4, RET.to_bytes(4, "little"))
        uc.reg_write(UC_X86_REG_ESP, STACK - 4)
        uc.reg_write(UC_X86_REG_EAX, eax)
        for r, v in ((UC_X86_REG_EBX, 0x1111), (UC_X86_REG_ESI, 0x2222), (UC_X86_REG_EDI, 0x3333)):
            uc.reg_write(r, v)
        uc.reg_write(UC_X86_REG_ECX, 0x4444)
        uc.emu_start(addr, RET, count=1000)
        assert uc.reg_read(UC_X86_REG_EIP) == RET, "did not return"
        assert uc.reg_read(UC_X86_REG_ESP) == STACK
        assert (uc.reg_read(UC_X86_REG_EBX), uc.reg_read(UC_X86_REG_ESI), uc.reg_read(UC_X86_REG_EDI)) == \
            (0x1111, 0x2222, 0x3333)
        return uc.reg_read(UC_X86_REG_EAX), uc.reg_read(UC_X86_REG_EDX)


def get_reloc_answers(rom: bytes) -> dict[tuple[int, int], tuple[int, int]]:
    """{(base, call): (EAX, EDX)} for every call number and some out-of-range ones."""
    cpu = PagedCpu(rom)
    off = abi.ROM_HEADER["get_reloc"].offset
    return {(base, n): cpu.call(base + off, n)
            for base in BASES for n in [*range(abi.NUM_CALLS), *OUT_OF_RANGE]}


def many_spec() -> RomSpec:
    """Lots of CALL_REL stubs, JUMP_REL for the two non-returning calls, NOPs, shared code."""
    entries: dict[int | str, CallEntry] = {}
    for c in abi.CALLS:
        if not c.returns:
            entries[c.number] = CallEntry.jump("iret" if c.name == "IRET" else "sti\n sysexit")
        elif c.number % 3 == 0:
            entries[c.number] = CallEntry.call(f"movl ${c.number}, %eax\n jmp common_ret")
        elif c.number % 3 == 1 and not c.outputs:
            entries[c.number] = CallEntry.nop()
    return RomSpec(product="many", entries=entries, common_asm="common_ret:\n ret", data_size=8192,
                   virtual_top=0xFC000000)


def personality_specs() -> dict[str, Callable[[], RomSpec]]:
    """The ROM of every registered hypervisor personality that publishes one, as "hv:NAME"."""
    from vmirom.hypervisors import registry

    out: dict[str, Callable[[], RomSpec]] = {}
    for name in registry.names():
        if registry.create(name).rom_spec() is not None:
            out[f"hv:{name}"] = lambda name=name: registry.create(name).rom_spec()
    return out


SPECS = {**{name: v.make for name, v in VARIANTS.items()}, "many": many_spec, **personality_specs()}


def test_some_personality_publishes_a_rom():
    assert "hv:vmi" in SPECS


@pytest.mark.parametrize("name", sorted(SPECS))
def test_get_reloc_matches_table_at_two_addresses(name):
    rom = build_rom(SPECS[name]())
    answers = get_reloc_answers(rom.data)
    for (base, n), (eax, edx) in answers.items():
        kind, target = rom.reloc(n) if n < abi.NUM_CALLS else (RelocType.NONE, None)
        assert edx == int(kind), (name, base, n)
        assert eax == (0 if target is None else base + target), (name, base, n)


def test_many_spec_really_has_every_kind():
    rom = build_rom(many_spec())
    kinds = {rom.reloc(n)[0] for n in range(abi.NUM_CALLS)}
    assert kinds == set(RelocType)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_vmi_init_result(name):
    rom = build_rom(SPECS[name]())
    cpu = PagedCpu(rom.data)
    for base in BASES:
        eax, _ = cpu.call(base + abi.ROM_HEADER["vmi_init"].offset)
        assert eax == (0xFFFFFFFF if name == "init-fails" else 0)


def test_stub_runs_and_reaches_rom_data_pc_relatively():
    """A stub finds the writable area by PC-relative addressing wherever the ROM is mapped."""
    spec = RomSpec(entries={"GetSharedInfo": CallEntry.call(
        "call 1f\n1: popl %eax\n leal (rom_data - 1b)(%eax), %eax\n ret")}, data_size=4096)
    rom = build_rom(spec)
    cpu = PagedCpu(rom.data)
    for base in BASES:
        stub, kind = cpu.call(base + abi.ROM_HEADER["get_reloc"].offset, abi.call("GetSharedInfo").number)
        assert kind == RelocType.CALL_REL and stub == base + rom.stub_offset(74)
        assert cpu.call(stub) == (base + rom.data_offset, cpu.uc.reg_read(UC_X86_REG_EDX))
    assert rom.data_offset % 4096 == 0 and rom.data_offset >= len(rom.data)


def test_sti_cli_stubs_do_what_they_say():
    rom = build_rom(VARIANTS["sti-cli-call"].make())
    cpu = PagedCpu(rom.data)
    base = BASES[1]

    def stub(name):
        eax, edx = cpu.call(base + abi.ROM_HEADER["get_reloc"].offset, abi.call(name).number)
        assert edx == RelocType.CALL_REL
        return eax

    cpu.call(stub("DisableInterrupts"))
    assert cpu.call(stub("GetInterruptMask"))[0] == 0
    cpu.call(stub("EnableInterrupts"))
    assert cpu.call(stub("GetInterruptMask"))[0] == abi.IF_MASK
    cpu.call(stub("SetInterruptMask"), 0)
    assert cpu.call(stub("GetInterruptMask"))[0] == 0
    cpu.call(stub("SetInterruptMask"), abi.IF_MASK)
    assert cpu.call(stub("GetInterruptMask"))[0] == abi.IF_MASK
