"""Running a ROM's entry points as real x86 code on the Unicorn engine.

`check_rom`, `read_rom` and the tests trust no table: they ask the ROM's own
get_reloc, the way a guest does.  The sandbox maps the ROM read-only at two linear
addresses (to prove the answers are position independent), gives it a flat 32-bit
ring-0 GDT, a stack and a return address, and stops at the first thing a
side-effect-free entry point must not do (an interrupt, port I/O, an invalid
instruction, a fault, running too long).
"""

from __future__ import annotations

from dataclasses import dataclass

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_MODE_16,
    UC_MODE_32,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    Uc,
    UcError,
)
from unicorn.x86_const import (
    UC_X86_INS_IN,
    UC_X86_INS_OUT,
    UC_X86_REG_CS,
    UC_X86_REG_DS,
    UC_X86_REG_EAX,
    UC_X86_REG_EBP,
    UC_X86_REG_EBX,
    UC_X86_REG_ECX,
    UC_X86_REG_EDI,
    UC_X86_REG_EDX,
    UC_X86_REG_EIP,
    UC_X86_REG_ES,
    UC_X86_REG_ESI,
    UC_X86_REG_ESP,
    UC_X86_REG_FS,
    UC_X86_REG_GDTR,
    UC_X86_REG_GS,
    UC_X86_REG_SS,
)

PAGE = 4096
LOW_SIZE = 0x10000          # GDT, stack, return trap
GDT_ADDR = 0x1000
STACK_TOP = 0x8000
RETURN_TRAP = 0x9000        # the return address pushed for every call
DATA_AREA = 0x10000         # writable RAM mapped after the image, as a hypervisor would
ALT_BASE = 0xC00C0000       # the ROM as a higher-half kernel sees it (PAGE_OFFSET + 0xC0000)
BASE = 0xC0000
MAX_INSNS = 5000
# Values put in the registers a C function (regparm) must preserve.
CANARIES = {UC_X86_REG_EBX: 0x0B0B0B0B, UC_X86_REG_ESI: 0x05050505, UC_X86_REG_EDI: 0x0D0D0D0D,
            UC_X86_REG_EBP: 0x0BADBEEF}
_GDT = (bytes(8) + bytes.fromhex("ffff0000009acf00") + bytes.fromhex("ffff00000092cf00"))


@dataclass(frozen=True)
class Outcome:
    """How one entry-point call ended.  `problem` is None when it returned normally."""

    eax: int = 0
    edx: int = 0
    problem: str | None = None
    clobbered: tuple[str, ...] = ()     # callee-saved registers it changed
    hypercall: bool = False             # stopped at `int n` (n >= 32) or port I/O: a hypervisor call


def _round_up(n: int, unit: int) -> int:
    return (n + unit - 1) // unit * unit


class RomSandbox:
    """One ROM image mapped at BASE and ALT_BASE on a 32-bit Unicorn CPU."""

    bases = (BASE, ALT_BASE)

    def __init__(self, image: bytes) -> None:
        self.image = bytes(image)
        self._uc: Uc | None = None
        self._event: str | None = None
        self._hypercall = False

    # --- 32-bit protected mode
    def _fresh(self) -> Uc:
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map(0, LOW_SIZE, UC_PROT_ALL)
        uc.mem_write(GDT_ADDR, _GDT)
        uc.mem_write(RETURN_TRAP, b"\xf4" * 16)
        size = _round_up(max(len(self.image), 1), PAGE)
        for base in self.bases:
            uc.mem_map(base, size, UC_PROT_READ | UC_PROT_EXEC)
            uc.mem_write(base, self.image)
            uc.mem_map(base + size, DATA_AREA, UC_PROT_ALL)
        uc.reg_write(UC_X86_REG_GDTR, (0, GDT_ADDR, len(_GDT) - 1, 0))
        uc.reg_write(UC_X86_REG_CS, 0x08)
        for reg in (UC_X86_REG_SS, UC_X86_REG_DS, UC_X86_REG_ES, UC_X86_REG_FS, UC_X86_REG_GS):
            uc.reg_write(reg, 0x10)
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        return uc

    def _on_intr(self, uc: Uc, intno: int, _user: object) -> None:
        eip = uc.reg_read(UC_X86_REG_EIP)
        if intno >= 32:
            self._event = f"makes a software interrupt (int 0x{intno:x}) near 0x{eip:x}"
            self._hypercall = True
        else:
            self._event = f"raises CPU exception {intno} near 0x{eip:x}"
        uc.emu_stop()

    def _on_in(self, uc: Uc, port: int, size: int, _user: object) -> int:
        self._event = f"reads I/O port 0x{port:x}"
        self._hypercall = True
        uc.emu_stop()
        return 0

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _user: object) -> None:
        self._event = f"writes I/O port 0x{port:x}"
        self._hypercall = True
        uc.emu_stop()

    def _on_invalid(self, uc: Uc, _user: object) -> bool:
        self._event = f"executes an invalid instruction at 0x{uc.reg_read(UC_X86_REG_EIP):x}"
        return False

    def call(self, base: int, offset: int, eax: int = 0, edx: int = 0, ecx: int = 0) -> Outcome:
        """Call ROM+offset (mapped at `base`) like a regparm C function and see how it ends."""
        if self._uc is None:
            self._uc = self._fresh()
        uc = self._uc
        self._event, self._hypercall = None, False
        uc.mem_write(STACK_TOP - 4, RETURN_TRAP.to_bytes(4, "little"))
        uc.reg_write(UC_X86_REG_ESP, STACK_TOP - 4)
        uc.reg_write(UC_X86_REG_EAX, eax & 0xFFFFFFFF)
        uc.reg_write(UC_X86_REG_EDX, edx & 0xFFFFFFFF)
        uc.reg_write(UC_X86_REG_ECX, ecx & 0xFFFFFFFF)
        for reg, value in CANARIES.items():
            uc.reg_write(reg, value)
        error = None
        try:
            uc.emu_start(base + offset, RETURN_TRAP, count=MAX_INSNS)
        except UcError as e:
            error = str(e)
        eip = uc.reg_read(UC_X86_REG_EIP)
        problem = None
        if self._event is not None:
            problem = self._event
        elif error is not None:
            problem = f"faults ({error}) at 0x{eip:x}"
        elif eip != RETURN_TRAP:
            problem = f"does not return within {MAX_INSNS} instructions (stopped at 0x{eip:x})"
        elif uc.reg_read(UC_X86_REG_ESP) != STACK_TOP:
            problem = "returns with an unbalanced stack"
        if problem is not None:
            self._uc = None      # a fresh CPU next time (Unicorn keeps stale fault state, #1883)
            return Outcome(problem=problem, hypercall=self._hypercall)
        names = {UC_X86_REG_EBX: "ebx", UC_X86_REG_ESI: "esi", UC_X86_REG_EDI: "edi", UC_X86_REG_EBP: "ebp"}
        clobbered = tuple(names[r] for r, v in CANARIES.items() if uc.reg_read(r) != v)
        return Outcome(uc.reg_read(UC_X86_REG_EAX), uc.reg_read(UC_X86_REG_EDX), None, clobbered)

    # --- the 16-bit BIOS init entry
    def real_mode_entry(self, entry_offset: int, length_offset: int) -> str | None:
        """Far-call ROM:entry_offset in real mode at segment 0xC000, the way a BIOS runs an
        option ROM's init.  Returns a problem, or None if it returned cleanly without I/O,
        interrupts or changing the length byte (SeaBIOS re-reads it after init)."""
        uc = Uc(UC_ARCH_X86, UC_MODE_16)
        uc.mem_map(0, 0x100000, UC_PROT_ALL)         # ROM shadow RAM is writable during POST
        uc.mem_write(BASE, self.image[:0x100000 - BASE])
        uc.mem_write(0x600, b"\xf4")
        ret_ip, sp = 0x0600, 0x7000
        uc.mem_write(sp - 4, ret_ip.to_bytes(2, "little") + (0).to_bytes(2, "little"))
        uc.reg_write(UC_X86_REG_SS, 0)
        uc.reg_write(UC_X86_REG_ESP, sp - 4)
        uc.reg_write(UC_X86_REG_CS, BASE >> 4)
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        self._event = None
        before = self.image[length_offset]
        try:
            uc.emu_start(BASE + entry_offset, ret_ip, count=200)
        except UcError as e:
            return f"faults ({e})"
        if self._event is not None:
            return self._event
        if uc.reg_read(UC_X86_REG_EIP) & 0xFFFF != ret_ip or uc.reg_read(UC_X86_REG_CS) != 0:
            return "does not return with a far return within 200 instructions"
        if uc.reg_read(UC_X86_REG_ESP) & 0xFFFF != sp:
            return "returns with an unbalanced stack"
        if uc.mem_read(BASE + length_offset, 1)[0] != before:
            return "changes rom_length"
        return None
