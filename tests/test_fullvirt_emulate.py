"""Unit tests of the trap-and-emulate core with synthetic CPU state: a fake `CpuAccess` (registers in a
dict, identity-mapped memory with holes) and real capstone decoding.  No engine, no boot."""

from __future__ import annotations

import struct
import subprocess
from collections import Counter

import pytest

from vmirom.machine.emulate import (
    CR0_PE,
    CR0_PG,
    CR0_TS,
    IF_MASK,
    GuestControl,
    TrapEmulator,
    UnsupportedGuestOperation,
    decode,
    scan_code,
)
from vmirom.machine.faults import GP, NP, PF, UD, GuestFault

PAGE = 0x1000
CODE = 0x4000
GDT = 0x8000
STACK = 0x9F00


class FakeCpu:
    """Identity-mapped 64 KiB guest; pages in `holes` are not present (reads raise #PF)."""

    def __init__(self, cpl: int = 1) -> None:
        self.mem = bytearray(0x10000)
        self.holes: set[int] = set()
        self.regs = {r: 0 for r in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "cr2")}
        self.regs.update(eflags=0x2, cr0=CR0_PE | 0x10, cr3=0, cr4=0, cs=0x09 | (cpl << 3) * 0, ss=0x11,
                         ds=0x11, es=0x11, fs=0x11, gs=0x11, gdtr=(GDT, 0x2F), idtr=(0, 0x7FF),
                         tr=(0, 0, 0, 0), ldtr=(0, 0, 0, 0))
        self.regs["cs"] = 0x08 | cpl
        self.regs["esp"] = STACK
        self._cpl = cpl
        self.halted = 0
        self.flushes = 0
        self.msrs = {0x10: 123456789}
        self.counts: Counter = Counter()
        self.bad_ss: set[int] = set()

    # CpuAccess
    def get(self, name):
        return self.regs[name]

    def set(self, name, value):
        if name == "ss" and value in self.bad_ss:
            raise RuntimeError("engine refuses SS")
        self.regs[name] = value

    @property
    def cpl(self):
        return self._cpl

    def _check(self, linear, size, fetch=False):
        for a in range(linear, linear + size):
            if a // PAGE in self.holes or a >= len(self.mem):
                raise GuestFault(PF, 0x10 if fetch else 0, cr2=a)

    def read(self, linear, size, *, user=None, fetch=False):
        self._check(linear, size, fetch)
        return bytes(self.mem[linear:linear + size])

    def write(self, linear, data, *, user=None):
        self._check(linear, len(data))
        self.mem[linear:linear + len(data)] = data

    def read_code(self, linear, size=16):
        out = bytearray()
        for a in range(linear, linear + size):
            if a // PAGE in self.holes or a >= len(self.mem):
                break
            out.append(self.mem[a])
        return bytes(out)

    def halt(self):
        self.halted += 1

    def flush_tlb(self):
        self.flushes += 1

    def read_msr(self, index):
        return self.msrs[index]

    def write_msr(self, index, value):
        self.msrs[index] = value

    def count(self, kind, n=1):
        self.counts[kind] += n

    # helpers
    def load(self, code: bytes, at: int = CODE) -> None:
        self.mem[at:at + len(code)] = code
        self.regs["eip"] = at

    def push32(self, v: int) -> None:
        self.regs["esp"] -= 4
        struct.pack_into("<I", self.mem, self.regs["esp"], v)


def asm(src: str) -> bytes:
    """Assemble 32-bit AT&T `src` with GNU as at address 0 and return the .text bytes."""
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        s, o, b = Path(d, "a.s"), Path(d, "a.o"), Path(d, "a.bin")
        s.write_text(".code32\n.text\n" + src + "\n")
        subprocess.run(["as", "--32", "-o", str(o), str(s)], check=True, capture_output=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(o), str(b)],
                       check=True, capture_output=True)
        return b.read_bytes()


def desc(base: int, limit: int, access: int, flags: int = 0xC) -> bytes:
    return struct.pack("<HHBBBB", limit & 0xFFFF, base & 0xFFFF, (base >> 16) & 0xFF, access,
                       ((limit >> 16) & 0xF) | (flags << 4), (base >> 24) & 0xFF)


def make(code_src: str, cpl: int = 1) -> tuple[FakeCpu, TrapEmulator]:
    cpu = FakeCpu(cpl)
    cpu.load(asm(code_src))
    ctl = GuestControl(gdtr=(GDT, 0x2F))
    return cpu, TrapEmulator(cpu, ctl)


# -- interrupt flag ----------------------------------------------------------------------------------
def test_cli_sti_toggle_the_virtual_if_and_step():
    cpu, emu = make("cli\n sti")
    cpu.regs["eflags"] = 0x202
    assert emu.handle_gp() == "cli"
    assert cpu.regs["eflags"] & IF_MASK == 0 and cpu.regs["eip"] == CODE + 1
    assert emu.handle_gp() == "sti"
    assert cpu.regs["eflags"] & IF_MASK and cpu.regs["eip"] == CODE + 2
    assert cpu.counts["emulate:cli"] == 1 and cpu.counts["emulate:sti"] == 1
    st = emu.stats.as_dict()
    assert st["gp_exits"] == 2 and st["us_per_gp"] is not None and st["by_kind"] == {"cli": 1, "sti": 1}


def test_user_mode_gp_is_reflected_not_emulated():
    cpu, emu = make("cli", cpl=3)
    cpu.regs["eflags"] = 0x202
    with pytest.raises(GuestFault) as e:
        emu.handle_gp()
    assert e.value.vector == GP and cpu.regs["eflags"] & IF_MASK and cpu.regs["eip"] == CODE


@pytest.mark.parametrize("image,expect_if", [(0x202, True), (0x002, False)])
def test_pre_popf_gives_the_popped_if_to_the_virtual_cpu(image, expect_if):
    cpu, emu = make("popf")
    cpu.regs["eflags"] = 0x2 if expect_if else 0x202
    cpu.push32(image | 0x3000)
    emu.pre_popf(4)
    assert bool(cpu.regs["eflags"] & IF_MASK) is expect_if
    assert emu.ctl.iopl == 3                       # the kernel's IOPL is virtual
    assert cpu.regs["eip"] == CODE                 # the native popf still runs


def test_pre_popf_16bit_and_user_mode_ignored():
    cpu, emu = make("popfw")
    cpu.regs["esp"] -= 2
    struct.pack_into("<H", cpu.mem, cpu.regs["esp"], 0x0202)
    emu.pre_popf(2)
    assert cpu.regs["eflags"] & IF_MASK
    user, uemu = make("popf", cpl=3)
    user.push32(0x2)
    user.regs["eflags"] = 0x202
    uemu.pre_popf(4)
    assert user.regs["eflags"] & IF_MASK          # IOPL 0: a user popf cannot clear IF


def test_pre_popf_with_unmapped_stack_leaves_it_to_the_native_fault():
    cpu, emu = make("popf")
    cpu.regs["esp"] = 0xB000
    cpu.holes.add(0xB)
    cpu.regs["eflags"] = 0x202
    emu.pre_popf(4)                                # must not raise
    assert cpu.regs["eflags"] & IF_MASK


def test_pre_iret_restores_if_from_the_frame():
    cpu, emu = make("iret")
    cpu.regs["eflags"] = 0x2                       # the handler ran with IF clear
    for v in (0x202, 0x09, 0x1234):                # EFLAGS, CS, EIP (pushed in that order)
        cpu.push32(v)
    emu.pre_iret(4)
    assert cpu.regs["eflags"] & IF_MASK
    assert cpu.regs["eip"] == CODE


# -- repairs after a site hook the engine skipped (a pending slice-timer stop) ---------------------------
USER_EIP, USER_ESP, KTOP = 0x2345, 0x7000, 0xA000


def _after_native_iret_to_user(frame_flags: int, cpu_flags: int) -> tuple[FakeCpu, TrapEmulator]:
    """The CPU state right after a native CPL-1 iret to ring 3 whose pre-hook did not run: CS:EIP,
    SS:ESP and the arithmetic flags come from the frame at the top of the ring-1 stack, IF did not."""
    cpu, emu = make("nop", cpl=3)
    struct.pack_into("<5I", cpu.mem, KTOP - 20, USER_EIP, 0x1B, frame_flags, USER_ESP, 0x23)
    cpu.regs.update(eip=USER_EIP, cs=0x1B, ss=0x23, esp=USER_ESP, eflags=cpu_flags)
    return cpu, emu


def test_repair_user_if_takes_the_frames_if():
    cpu, emu = _after_native_iret_to_user(0x3247, 0x0047)
    assert emu.repair_user_if(KTOP - 20)
    assert cpu.regs["eflags"] == 0x0247 and emu.ctl.iopl == 3
    assert emu.stats.repairs["iret_to_user"] == 1 and emu.stats.traps == 0
    assert not emu.repair_user_if(KTOP - 20)         # idempotent: nothing left to change


def test_repair_user_if_after_user_code_ran_on():
    """User code cannot change IF, so it may have run on (EIP, ESP, flags) before the VMM looks."""
    cpu, emu = _after_native_iret_to_user(0x0202, 0x0087)
    cpu.regs.update(eip=USER_EIP + 0x40, esp=USER_ESP - 8)
    assert emu.repair_user_if(KTOP - 20) and cpu.regs["eflags"] == 0x0287


@pytest.mark.parametrize("field,value", [("cs", 0x2B), ("ss", 0x2B)])
def test_repair_user_if_needs_the_same_user_context(field, value):
    cpu, emu = _after_native_iret_to_user(0x0202, 0x0002)
    cpu.regs[field] = value
    assert not emu.repair_user_if(KTOP - 20) and cpu.regs["eflags"] == 0x0002


def test_repair_user_if_not_from_kernel_mode_nor_on_an_unmapped_stack():
    cpu, emu = _after_native_iret_to_user(0x0202, 0x0002)
    cpu.holes.add((KTOP - 20) // PAGE)
    assert not emu.repair_user_if(KTOP - 20)
    cpu, emu = make("nop")                           # CPL 1
    struct.pack_into("<5I", cpu.mem, KTOP - 20, USER_EIP, 0x09, 0x0202, USER_ESP, 0x11)
    assert not emu.repair_user_if(KTOP - 20) and not cpu.regs["eflags"] & IF_MASK


def test_repair_after_same_ring_iret_and_unmapped_frame():
    cpu, emu = make("nop")
    cpu.regs.update(esp=STACK, eflags=0x0083)
    struct.pack_into("<3I", cpu.mem, STACK - 12, CODE, 0x09, 0x0282)
    assert not emu.repair_after_iret(STACK - 12)    # CF differs: not the frame just popped
    struct.pack_into("<3I", cpu.mem, STACK - 12, CODE + 1, 0x09, 0x0283)
    assert not emu.repair_after_iret(STACK - 12)    # returned somewhere else
    struct.pack_into("<3I", cpu.mem, STACK - 12, CODE, 0x09, 0x0283)
    assert emu.repair_after_iret(STACK - 12) and cpu.regs["eflags"] == 0x0283
    cpu.holes.add((STACK - 12) // PAGE)
    cpu.regs["eflags"] = 0x83
    assert not emu.repair_after_iret(STACK - 12)    # never raises


def test_repair_after_popf_only_clears_if():
    """A skipped popf that should have cleared IF leaves a cli section open: repaired.  One that
    should have set IF only delays interrupts, and a false match could open a cli section: left."""
    cpu, emu = make("nop")
    cpu.regs.update(esp=STACK, eflags=0x0246)
    struct.pack_into("<I", cpu.mem, STACK - 4, 0x0046)
    assert emu.repair_after_popf(4) and cpu.regs["eflags"] == 0x0046
    struct.pack_into("<I", cpu.mem, STACK - 4, 0x0246)
    assert not emu.repair_after_popf(4) and cpu.regs["eflags"] == 0x0046
    cpu.regs["eflags"] = 0x0247                    # CF differs from the image: not just popped
    struct.pack_into("<I", cpu.mem, STACK - 4, 0x0046)
    assert not emu.repair_after_popf(4) and cpu.regs["eflags"] & IF_MASK


def test_emulated_popf_pushf_round_trip_shows_virtual_if_and_iopl():
    cpu, emu = make("pushf\n popf")
    cpu.regs["eflags"] = 0x202 | 0x1                # IF + CF
    emu.ctl.iopl = 2
    d = emu.fetch_decode(CODE)
    assert d.kind == "pushf"
    emu._pushf(d)
    image = struct.unpack_from("<I", cpu.mem, cpu.regs["esp"])[0]
    assert image & IF_MASK and (image >> 12) & 3 == 2 and image & 1
    struct.pack_into("<I", cpu.mem, cpu.regs["esp"], 0x002 | 0x3000 | 0x40)
    emu._popf(emu.fetch_decode(CODE + 1))
    assert not cpu.regs["eflags"] & IF_MASK and cpu.regs["eflags"] & 0x40 and emu.ctl.iopl == 3
    assert cpu.regs["eflags"] & 0x3000 == 0        # the real IOPL stays 0 so cli/sti keep trapping


def test_hlt_steps_then_halts():
    cpu, emu = make("hlt")
    assert emu.handle_gp() == "hlt"
    assert cpu.halted == 1 and cpu.regs["eip"] == CODE + 1


# -- control registers ---------------------------------------------------------------------------------
def test_mov_cr_guest_view_and_enforced_bits():
    cpu, emu = make("mov %eax, %cr0\n mov %cr0, %ebx\n mov %ecx, %cr3\n mov %edx, %cr4\n mov %cr4, %esi")
    cpu.regs.update(eax=CR0_PG | CR0_PE | CR0_TS, ecx=0x5000, edx=0x10 | 0x1)   # PSE + VME
    for _ in range(5):
        emu.handle_gp()
    assert emu.ctl.cr0 & CR0_PG and cpu.regs["ebx"] == emu.ctl.cr0
    assert cpu.regs["cr0"] & (CR0_PE | CR0_PG) == CR0_PE | CR0_PG
    assert cpu.regs["cr3"] == 0x5000 == emu.ctl.cr3
    assert cpu.regs["esi"] == 0x11                 # the guest sees its VME
    assert cpu.regs["cr4"] == 0x10                 # the engine does not get VME
    assert cpu.regs["eip"] == CODE + 3 * 5


def test_mov_cr0_invalid_combinations():
    cpu, emu = make("mov %eax, %cr0")
    cpu.regs["eax"] = CR0_PG                       # PG without PE
    with pytest.raises(GuestFault) as e:
        emu.handle_gp()
    assert e.value.vector == GP and cpu.regs["eip"] == CODE
    cpu.regs["eax"] = 0                            # back to real mode: not virtualizable
    with pytest.raises(UnsupportedGuestOperation):
        emu.handle_gp()


def test_cr4_reserved_bit_is_gp():
    cpu, emu = make("mov %eax, %cr4")
    cpu.regs["eax"] = 1 << 20
    with pytest.raises(GuestFault):
        emu.handle_gp()


def test_cr2_reads_the_value_the_machine_set():
    cpu, emu = make("mov %cr2, %edi")
    cpu.regs["cr2"] = 0xDEAD000
    emu.handle_gp()
    assert cpu.regs["edi"] == 0xDEAD000


def test_clts_lmsw_and_debug_registers():
    cpu, emu = make("clts\n lmsw %ax\n mov %ebx, %dr7\n mov %dr7, %ecx\n mov %dr4, %edx")
    emu.ctl.cr0 |= CR0_TS
    cpu.regs.update(eax=0x8, ebx=0x401)
    for _ in range(5):
        emu.handle_gp()
    assert emu.ctl.cr0 & CR0_TS and emu.ctl.cr0 & CR0_PE     # lmsw set TS again, PE kept
    assert cpu.regs["ecx"] == 0x401
    assert cpu.regs["edx"] == emu.ctl.dr[6]                  # DR4 aliases DR6 with CR4.DE clear
    cpu2, emu2 = make("mov %dr5, %eax")
    emu2.ctl.cr4 = 0x8
    with pytest.raises(GuestFault) as e:
        emu2.handle_gp()
    assert e.value.vector == UD


# -- descriptor tables ---------------------------------------------------------------------------------
def _gdt(cpu: FakeCpu, tss_access: int = 0x89) -> None:
    table = b"".join([bytes(8), desc(0, 0xFFFFF, 0x9A), desc(0, 0xFFFFF, 0x92), desc(0, 0xFFFFF, 0xFA),
                      desc(0, 0xFFFFF, 0xF2), desc(0x7000, 103, tss_access, 0)])
    cpu.mem[GDT:GDT + len(table)] = table
    struct.pack_into("<HI", cpu.mem, 0x7F00, len(table) - 1, GDT)


def test_lgdt_records_guest_table_and_compresses_dpl0_descriptors():
    cpu, emu = make("lgdt 0x7f00\n lidt 0x7f00")
    _gdt(cpu)
    emu.handle_gp()
    assert emu.ctl.gdtr == (GDT, 0x2F) == cpu.regs["gdtr"]
    assert cpu.mem[GDT + 8 + 5] == 0xBB and cpu.mem[GDT + 16 + 5] == 0xB3   # DPL 0 -> 1, Accessed
    assert cpu.mem[GDT + 24 + 5] == 0xFB                                    # user DPL 3: only Accessed
    assert cpu.mem[GDT + 40 + 5] == 0x89                                    # available DPL-0 TSS kept
    emu.handle_gp()
    assert emu.ctl.idtr == (GDT, 0x2F) == cpu.regs["idtr"]


@pytest.mark.parametrize("access,after", [(0xE9, 0x89), (0x8B, 0x89), (0xEB, 0x89)])
def test_lgdt_makes_tss_descriptors_dpl0_and_available(access, after):
    """No jmp/call from ring 1 can name a DPL-0 TSS and no NT-iret can return to an available one:
    the engine never switches tasks for a de-privileged kernel."""
    cpu, emu = make("lgdt 0x7f00")
    _gdt(cpu, tss_access=access)
    emu.handle_gp()
    assert cpu.mem[GDT + 40 + 5] == after


@pytest.mark.parametrize("access", [0x8C, 0xEC, 0x85, 0x81, 0x83])  # call gates, task gate, 16-bit TSS
def test_lgdt_with_a_gate_is_refused_and_gdtr_unchanged(access):
    cpu, emu = make("lgdt 0x7f00")
    _gdt(cpu, tss_access=access)
    before = cpu.regs.get("gdtr")
    with pytest.raises(GuestFault) as e:
        emu.handle_gp()
    assert e.value.vector == GP and e.value.error_code == 0
    assert cpu.regs.get("gdtr") == before and cpu.regs["eip"] == CODE


def test_sgdt_sidt_smsw_str_show_the_guest_values():
    cpu, emu = make("sgdt 0x7e00\n sidt 0x7e10\n smsw %ax\n str %bx\n sldt %cx")
    emu.ctl.gdtr, emu.ctl.idtr, emu.ctl.tr = (GDT, 0x3F), (0xC0200000, 0x7FF), 0x28
    emu.ctl.cr0 = 0x80000033
    for _ in range(5):
        assert emu.emulate_site(cpu.regs["eip"]) is not None
    assert struct.unpack_from("<HI", cpu.mem, 0x7E00) == (0x3F, GDT)
    assert struct.unpack_from("<HI", cpu.mem, 0x7E10) == (0x7FF, 0xC0200000)
    assert cpu.regs["eax"] & 0xFFFF == 0x33 and cpu.regs["ebx"] == 0x28 and cpu.regs["ecx"] == 0


@pytest.mark.parametrize("ring,busy", [(1, 0x89), (0, 0x8B)])
def test_ltr_loads_tr_and_marks_busy_only_at_ring0(ring, busy):
    """The CPU marks the TSS busy; for a de-privileged kernel it stays available (an NT-iret could
    otherwise switch to it natively)."""
    cpu, emu = make("mov $0x28, %ax\n ltr %ax", cpl=ring)
    emu.ctl.kernel_ring = ring
    _gdt(cpu)
    emu.ctl.gdtr = (GDT, 0x2F)
    cpu.regs["eax"] = 0x28
    cpu.regs["eip"] = CODE + 4
    assert emu.handle_gp() == "ltr"
    assert cpu.mem[GDT + 40 + 5] == busy and emu.ctl.tr == 0x28
    sel, base, limit, flags = cpu.regs["tr"]
    assert (sel, base, limit) == (0x28, 0x7000, 103) and (flags >> 8) & 0xFF == 0x89


@pytest.mark.parametrize("sel,access,vector", [(0x2C, 0x89, GP), (0x10, 0x92, GP), (0x28, 0x09, NP),
                                               (0x38, 0x89, GP)])
def test_ltr_bad_selector(sel, access, vector):
    cpu, emu = make("ltr %ax")
    _gdt(cpu, tss_access=access)
    cpu.regs["eax"] = sel
    with pytest.raises(GuestFault) as e:
        emu.handle_gp()
    assert e.value.vector == vector and cpu.regs["eip"] == CODE


def test_gp_from_a_late_dpl0_descriptor_is_compressed_and_retried():
    cpu, emu = make("mov %ax, %ds")
    _gdt(cpu)                                       # DPL-0 descriptors written after "lgdt"
    assert emu.handle_gp() == "retry" and cpu.regs["eip"] == CODE
    assert cpu.mem[GDT + 16 + 5] == 0xB3
    with pytest.raises(GuestFault):                 # nothing left to compress: a real #GP
        emu.handle_gp()


def test_mov_ss_with_rpl0_selector_gets_rpl1():
    cpu, emu = make("mov %ax, %ss\n pop %ss")
    cpu.regs["eax"] = 0x10
    emu.handle_gp()
    assert cpu.regs["ss"] == 0x11
    cpu.push32(0x20)
    emu.handle_gp()
    assert cpu.regs["ss"] == 0x21 and cpu.regs["esp"] == STACK
    cpu.bad_ss.add(0x31)
    cpu.load(asm("mov %ax, %ss"))
    cpu.regs["eax"] = 0x30
    with pytest.raises(GuestFault) as e:
        emu.handle_gp()
    assert e.value.error_code == 0x30


# -- MSRs, TSC -------------------------------------------------------------------------------------------
def test_rdmsr_wrmsr_small_set():
    cpu, emu = make("rdmsr\n wrmsr\n rdmsr\n rdmsr")
    cpu.regs["ecx"] = 0x10
    emu.handle_gp()
    assert (cpu.regs["edx"] << 32 | cpu.regs["eax"]) == 123456789
    cpu.regs.update(ecx=0x174, eax=0x8, edx=0)
    emu.handle_gp()
    cpu.regs.update(eax=0, edx=0)
    emu.handle_gp()
    assert cpu.regs["eax"] == 8
    cpu.regs["ecx"] = 0xC0000080                     # EFER: not on this CPU
    with pytest.raises(GuestFault) as e:
        emu.handle_gp()
    assert e.value.vector == GP


def test_wbinvd_invlpg_flush():
    cpu, emu = make("wbinvd\n invlpg (%eax)")
    emu.handle_gp()
    emu.handle_gp()
    assert cpu.flushes == 1 and cpu.regs["eip"] == CODE + 5


# -- I/O permission -----------------------------------------------------------------------------------------
def test_io_permission_kernel_always_user_by_virtual_iopl():
    cpu, emu = make("nop")
    assert emu.io_permitted(1)
    assert not emu.io_permitted(3)
    emu.ctl.iopl = 3
    assert emu.io_permitted(3)


# -- decode cache and bad input -----------------------------------------------------------------------------
def test_decode_cache_hits_and_detects_changed_bytes():
    cpu, emu = make("cli")
    for _ in range(3):
        cpu.regs["eip"] = CODE
        emu.handle_gp()
    assert emu.stats.cache_misses == 1 and emu.stats.cache_hits == 2
    cpu.load(asm("sti"))                             # the code changed at the same address
    cpu.regs["eflags"] = 0x2
    assert emu.handle_gp() == "sti"
    assert emu.stats.cache_stale == 1 and cpu.regs["eflags"] & IF_MASK


def test_undecodable_bytes_reflect_gp():
    cpu, emu = make("nop")
    cpu.load(b"\x0f\x0b" if False else b"\xd6" * 15)   # 0xD6 (SALC) is not decoded by capstone
    d = decode(b"\xd6" * 15, 0)
    if d is not None:                                   # capstone decodes it: use an invalid group
        cpu.load(b"\x0f\xff" + b"\xff" * 13)
    with pytest.raises(GuestFault) as e:
        emu.handle_gp()
    assert e.value.vector == GP


def test_eip_on_unmapped_page_is_a_page_fault():
    cpu, emu = make("nop")
    cpu.regs["eip"] = 0xC000
    cpu.holes.add(0xC)
    with pytest.raises(GuestFault) as e:
        emu.handle_gp()
    assert e.value.vector == PF and e.value.cr2 == 0xC000


def test_instruction_running_into_an_unmapped_page_faults_there():
    cpu, emu = make("nop")
    code = asm("lgdt 0x7f00")
    cpu.load(code, at=0xD000 - 3)
    cpu.holes.add(0xD)
    with pytest.raises(GuestFault) as e:
        emu.handle_gp()
    assert e.value.vector == PF and e.value.cr2 == 0xD000


def test_lgdt_operand_on_unmapped_page_faults():
    cpu, emu = make("lgdt 0xe000")
    cpu.holes.add(0xE)
    with pytest.raises(GuestFault) as e:
        emu.handle_gp()
    assert e.value.vector == PF and cpu.regs["eip"] == CODE


def test_non_privileged_instruction_reflects_gp():
    cpu, emu = make("mov (%eax), %ebx")
    with pytest.raises(GuestFault):
        emu.handle_gp()


# -- scanner ---------------------------------------------------------------------------------------------
def test_scan_finds_sensitive_instructions_and_resyncs_after_data():
    code = asm("""
        pushf
        cli
        popf
        .byte 0xff, 0xff        # embedded data: the sweep resynchronises within a few bytes
        nop; nop; nop; nop; nop; nop; nop; nop
        push %cs
        sgdt (%eax)
        smsw %eax
        iret
        ret
    """)
    sites = scan_code(code, 0x1000)
    kinds = sorted(sites.values())
    assert kinds == sorted(["pushf", "popf", "push_cs", "sgdt", "smsw", "iret"])
    assert sites[0x1000] == "pushf" and sites[0x1002] == "popf"
