"""Interrupt and exception delivery through the guest's IDT (the engine never does it: notes B4).

Implements what the CPU does on an interrupt in protected mode: read the gate (interrupt/trap gate,
present, DPL check for software `int n`), read the target code descriptor, switch to the stack of
the target ring from the TSS when the privilege changes (frame SS, ESP, EFLAGS, CS, EIP[, error]),
otherwise push EFLAGS, CS, EIP[, error] on the current stack, clear TF/NT/RF (and IF for interrupt
gates), and jump.  A fault while delivering becomes #DF; a fault while delivering #DF is a triple
fault (the VM stops).  All guest memory accesses go through the checked page walker.

Simplification (documented): the stack segments are assumed flat (base 0), which is what every
32-bit kernel we run uses; task gates and virtual-8086 mode are not supported (#GP).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from vmirom.machine.faults import DF, GP, HAS_ERROR_CODE, NP, PF, TS, GuestFault, TripleFault

if TYPE_CHECKING:
    from vmirom.machine.machine import Machine

EFLAGS_CLEAR = 0x100 | 0x4000 | 0x10000 | 0x20000  # TF, NT, RF, VM
IF = 0x200


class Delivery:
    def __init__(self, machine: Machine) -> None:
        self.m = machine

    # -- public ------------------------------------------------------------------------------------
    def exception(self, vector: int, error_code: int = 0, cr2: int | None = None) -> None:
        """Deliver a fault/trap the guest caused (EIP must already be the right return address)."""
        if cr2 is not None:
            self.m.engine.set_reg("cr2", cr2 & 0xFFFFFFFF)
        self._with_double_fault(vector, error_code if vector in HAS_ERROR_CODE else None, software=False)

    def software(self, vector: int) -> None:
        """`int n` / `int3` / `into`: EIP is already past the instruction; gate DPL must be >= CPL."""
        self._with_double_fault(vector, None, software=True)

    def external(self, vector: int) -> None:
        """A hardware interrupt from the PIC (or a hypervisor-injected one)."""
        self._with_double_fault(vector, None, software=False, external=True)

    # -- the work ----------------------------------------------------------------------------------
    def _with_double_fault(
        self, vector: int, err: int | None, *, software: bool, external: bool = False
    ) -> None:
        try:
            self._deliver(vector, err, software=software, external=external)
        except GuestFault as f1:
            if vector == DF:
                raise TripleFault(f"fault while delivering a double fault ({f1})") from None
            self.m.metrics.count("exception:df")
            if f1.cr2 is not None:
                self.m.engine.set_reg("cr2", f1.cr2)
            try:
                self._deliver(DF, 0, software=False, external=False)
            except GuestFault as f2:
                raise TripleFault(f"vector {vector} -> {f1} -> double fault -> {f2}") from None

    def _deliver(self, vector: int, err: int | None, *, software: bool, external: bool) -> None:
        m = self.m
        eng = m.engine
        m.personality.load_virtual_if()  # the frame's IF is the kernel's (possibly virtual) flag
        ext = 1 if external else 0
        idt_base, idt_limit = eng.reg("idtr")
        if vector * 8 + 7 > idt_limit:
            raise GuestFault(GP, vector * 8 + 2 + ext)
        lo, hi = struct.unpack("<II", m.paging.read(idt_base + vector * 8, 8))
        gtype = (hi >> 8) & 0x1F
        if gtype not in (0x0E, 0x0F):  # 32-bit interrupt / trap gate only
            raise GuestFault(GP, vector * 8 + 2 + ext)
        gdpl = (hi >> 13) & 3
        cpl = eng.cpl()
        if software and gdpl < cpl:
            raise GuestFault(GP, vector * 8 + 2)
        if not hi & 0x8000:
            raise GuestFault(NP, vector * 8 + 2 + ext)
        sel = (lo >> 16) & 0xFFFF
        offset = (hi & 0xFFFF0000) | (lo & 0xFFFF)
        dpl = self._code_dpl(sel, ext)
        if dpl > cpl:
            raise GuestFault(GP, (sel & ~3) + ext)
        eflags = eng.reg("eflags")
        eip = eng.reg("eip")
        cs = eng.reg("cs")
        new_flags = eflags & ~EFLAGS_CLEAR
        if gtype == 0x0E:
            new_flags &= ~IF
        if dpl < cpl:
            ss_new, esp_new = self._ring_stack(dpl, ext)
            frame = [eip, cs, eflags, eng.reg("esp"), eng.reg("ss")]
            if err is not None:
                frame.insert(0, err)
            data = struct.pack(f"<{len(frame)}I", *[v & 0xFFFFFFFF for v in frame])
            top = (esp_new - len(data)) & 0xFFFFFFFF
            m.paging.write(top, data, user=False)
            eng.switch_ring(dpl, (sel & ~3) | dpl, ss_new)
            m.metrics.count("delivery:ring_change")
        else:
            frame = [eip, cs, eflags]
            if err is not None:
                frame.insert(0, err)
            data = struct.pack(f"<{len(frame)}I", *[v & 0xFFFFFFFF for v in frame])
            top = (eng.reg("esp") - len(data)) & 0xFFFFFFFF
            m.paging.write(top, data, user=cpl == 3)
            if (sel & ~3) != (cs & ~3):
                eng.set_reg("cs", (sel & ~3) | cpl)
        eng.set_reg("esp", top)
        eng.set_reg("eflags", new_flags)
        eng.set_reg("eip", offset)
        m.personality.save_virtual_if()

    def _code_dpl(self, sel: int, ext: int) -> int:
        m = self.m
        if sel & ~3 == 0:
            raise GuestFault(GP, ext)
        if sel & 4:
            raise GuestFault(GP, (sel & ~3) + ext)  # LDT code selectors: not supported
        gdt_base, gdt_limit = m.engine.reg("gdtr")
        if (sel & ~7) + 7 > gdt_limit:
            raise GuestFault(GP, (sel & ~3) + ext)
        _lo, hi = struct.unpack("<II", m.paging.read(gdt_base + (sel & ~7), 8))
        if not (hi >> 11) & 1 or not (hi >> 12) & 1:  # must be a code segment
            raise GuestFault(GP, (sel & ~3) + ext)
        if not hi & 0x8000:
            raise GuestFault(NP, (sel & ~3) + ext)
        return (hi >> 13) & 3

    def _ring_stack(self, ring: int, ext: int) -> tuple[int, int]:
        """SS:ESP for `ring` from the TSS (or a personality override, e.g. VMI UpdateKernelStack)."""
        override = self.m.kernel_stacks.get(ring)
        if override is not None:
            return override
        tr = self.m.engine.reg("tr")
        sel, base, limit = tr[0], tr[1], tr[2]
        if sel & ~3 == 0 or limit < 8 * ring + 11:
            raise GuestFault(TS, (sel & ~3) + ext)
        esp, ss = struct.unpack("<II", self.m.paging.read(base + 4 + 8 * ring, 8))
        return ss & 0xFFFF, esp


def pf_is_write(machine: Machine, eip: int, cr2: int) -> bool:
    """Decide whether the faulting access at `eip` was a write (the engine does not say).  Uses the
    page walk first (a present, reachable, read-only page can only fault on a write), then decodes the
    instruction: a written memory operand, or an implicit stack push, means write."""
    from vmirom.machine.decode import writes_memory

    return writes_memory(machine, eip, cr2)


__all__ = ["Delivery", "pf_is_write", "PF"]
