"""Interrupt and exception delivery through the guest's IDT (the engine never does it: notes B4).

Implements what the CPU does on an interrupt in protected mode: read the gate (interrupt/trap gate,
present, DPL check for software `int n`), read the target code descriptor, switch to the stack of
the target ring from the TSS when the privilege changes (frame SS, ESP, EFLAGS, CS, EIP[, error]),
otherwise push EFLAGS, CS, EIP[, error] on the current stack, clear TF/NT/RF (and IF for interrupt
gates), and jump.  A fault while delivering is handled by the CPU's double-fault rules: after
`int n`, an external interrupt or a benign exception it is delivered as such; contributory on
contributory (or on #PF) becomes #DF; a fault while delivering #DF is a triple fault (the VM
stops).  All guest memory accesses go through the checked page walker.

Simplification (documented): the stack segments are assumed flat (base 0), which is what every
32-bit kernel we run uses; task gates and virtual-8086 mode are not supported (#GP).

De-privileging rules (docs/security.md), checked here because this is the one place where the VMM
itself makes the CPU enter a more privileged ring:
- a *conforming* target code segment keeps the current ring (no stack switch, CS.RPL = CPL), as
  the hardware does - a ring-1 kernel's gate to a DPL-0 conforming segment must not reach ring 0;
- a non-conforming target more privileged than the personality's kernel ring is refused with
  #GP(selector): the VMM never enters a ring the guest kernel does not own;
- the new stack's SS from the TSS is checked like the CPU does (null, RPL/DPL != new ring, not a
  writable data segment -> #TS(SS); not present -> #SS) instead of failing inside the engine;
- a code segment the engine cannot load (execute-only: Unicorn's segment write wants it readable)
  is refused with #GP(selector) rather than ending the run with an engine error;
- an exit taken in virtual-8086 mode (reachable only through the engine's native `iret`, which
  does not check CPL 0 as the hardware does) ends the run: V86 mode is not part of this VMM.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from vmirom.machine.decode import code_writes
from vmirom.machine.faults import (
    CONTRIBUTORY,
    DF,
    GP,
    HAS_ERROR_CODE,
    NP,
    PF,
    SS,
    TS,
    GuestFault,
    TripleFault,
    UnsupportedState,
)
from vmirom.machine.paging import PFERR_P, PFERR_U, PFERR_W, RW, US

if TYPE_CHECKING:
    from vmirom.machine.machine import Machine

EFLAGS_CLEAR = 0x100 | 0x4000 | 0x10000 | 0x20000  # TF, NT, RF, VM
IF = 0x200
VM = 0x20000
PAE_REFUSED = "the guest enabled PAE paging: not supported by this VMM (2-level paging only)"
V86_REFUSED = (
    "the guest runs in virtual-8086 mode: not supported by this VMM (entered through a native iret "
    "with EFLAGS.VM set; the hardware would ignore VM outside ring 0)"
)
#: descriptor high-dword bits: S (code/data), code, conforming, readable (code) / writable (data), P
D_S, D_CODE, D_CONFORMING, D_RW, D_P = 1 << 12, 1 << 11, 1 << 10, 1 << 9, 1 << 15
M32 = 0xFFFFFFFF

#: everything one delivery needs from the engine, read in ONE batched call where the engine can
#: (idtr/gdtr give (base, limit), tr gives (selector, base, limit, flags): 16 values)
_NAMES = ("eip", "eflags", "cs", "ss", "esp", "cr0", "cr3", "cr4", "idtr", "gdtr", "tr")
#: plus what the #PF error code needs (the engine does not give it): CR2 and EDI (string moves)
_ALL_NAMES = (*_NAMES, "cr2", "edi")
#: frames by word count: 3 (same ring), 4 (same ring + error), 5 (ring change), 6 (ring change + error)
_FRAME = {n: struct.Struct(f"<{n}I") for n in (3, 4, 5, 6)}


class Delivery:
    """The CPU's protected-mode interrupt/exception entry, done in Python for the engine.

    Hot path (every system call, page fault and timer tick goes through here): the registers come
    from one batched engine read, the IDT gate, the code descriptor and the TSS stack are read from
    guest RAM with `Paging.phys` (a page walk with the CPU's checks, no allocation), the frame is
    packed straight into RAM, and the new state goes to the engine in one `enter_handler` call.
    Nothing is cached between deliveries: the guest may rewrite its IDT, GDT, TSS or page tables
    at any time (directly, without lidt/lgdt/ltr), and re-reading 3 x 8 bytes through a 2-level
    walk costs about what validating a cache would.  Any access the fast walk does not clear
    (fault, page crossing, ROM, outside RAM) is redone by the general `Paging.read/write`, which
    raises the fault the CPU would raise."""

    def __init__(self, machine: Machine) -> None:
        self.m = machine
        eng = machine.engine
        self.paging = machine.paging
        self.ram = machine.memory.ram
        self._read = eng.reader(_ALL_NAMES) if getattr(eng, "reads_tables", False) else self._regs_generic
        self._snap: tuple[int, ...] = ()
        self._snap_gen = -1
        self._enter = eng.enter_handler
        self._core = None  # the compiled core's delivery (vmirom.engines.core), when the machine uses it

    def use_core(self, core) -> None:  # noqa: ANN001 - vmirom.engines.core.MachineCore
        """Let the compiled engine core do the deliveries of this path too (same rules, in C)."""
        self._core = core

    def registers(self) -> tuple[int, ...]:
        """The CPU state one exit needs (`_ALL_NAMES`, table registers flattened), read in one
        engine call and reused by the later steps of the same exit (IF check, #PF error code,
        delivery) while the engine's `reg_gen` says nothing was written since (any register or
        context write, hook entry or slice bumps it; an engine without the counter is re-read)."""
        gen = getattr(self.m.engine, "reg_gen", None)
        if gen is not None and gen == self._snap_gen:
            return self._snap
        regs = self._read()
        if gen is not None:
            self._snap, self._snap_gen = regs, gen
        return regs

    # -- public ------------------------------------------------------------------------------------
    def exception(self, vector: int, error_code: int = 0, cr2: int | None = None) -> None:
        """Deliver a fault/trap the guest caused (EIP must already be the right return address).
        `cr2` is written to CR2 first (None: CR2 already holds the right value, e.g. a #PF the
        engine itself reported)."""
        if cr2 is not None:
            self.m.engine.set_reg("cr2", cr2 & M32)
        self._with_double_fault(vector, error_code if vector in HAS_ERROR_CODE else None, software=False)

    def software(self, vector: int) -> None:
        """`int n` / `int3` / `into`: EIP is already past the instruction; gate DPL must be >= CPL."""
        self._with_double_fault(vector, None, software=True)

    def external(self, vector: int) -> None:
        """A hardware interrupt from the PIC (or a hypervisor-injected one)."""
        self._with_double_fault(vector, None, software=False, external=True)

    def page_fault(self) -> tuple[int, int]:
        """(CR2, error code) of the #PF the engine just reported: one batched register read, one
        page walk, and (when the walk cannot tell: not present / no access) a decode of the
        instruction to find out whether it wrote (`pf_is_write`'s rules)."""
        r = self.registers()
        eip, cs, esp, cr0, cr3, cr4, cr2, edi = r[0], r[2], r[4], r[5], r[6], r[7], r[16], r[17]
        user = cs & 3 == 3
        if cr4 & 0x20 and cr0 & 0x80000000:
            raise UnsupportedState(PAE_REFUSED)
        flags = self.paging.entry(cr2, cr0, cr3, cr4)
        if flags and (flags & US or not user) and not flags & RW:
            write = True  # present, reachable and read-only: only a write faults
        else:
            phys = self.paging.phys(eip, 16, cr0, cr3, cr4, False, user)
            code = self.ram[phys : phys + 16] if phys >= 0 else self.paging.read_code(eip, 16, user=user)
            write = code_writes(code, cr2, esp, edi)
        return cr2, (PFERR_P if flags else 0) | (PFERR_W if write else 0) | (PFERR_U if user else 0)

    # -- the work ----------------------------------------------------------------------------------
    def _with_double_fault(
        self, vector: int, err: int | None, *, software: bool, external: bool = False
    ) -> None:
        if self._core is not None and self._deliver_in_core(vector, err, software, external):
            return
        try:
            self._deliver(vector, err, software, external)
        except GuestFault as f1:
            self._second_fault(vector, f1, software=software, external=external)

    def _deliver_in_core(self, vector: int, err: int | None, software: bool, external: bool) -> bool:
        """The same delivery (with the double-fault rules) done by the compiled core; False when the
        core leaves it to the Python path (a write only Python may do, an SS load it cannot vouch for).
        The personality's flag is loaded here as `_deliver` loads it; the core saves it back itself
        (vmi2.c: the one personality whose flag it may keep)."""
        self.m.personality.load_virtual_if()
        res = self._core.deliver(self.registers(), vector, err, software, external)
        if res[0] == "fallback":
            return False
        eng = self.m.engine
        if res[0] == "triple":
            if res[2] is not None:
                eng.set_reg("cr2", res[2])
            raise TripleFault(res[1])
        cpl, cs, ss, esp, eflags, eip, cr2 = res[1]
        if cr2 is not None:
            eng.set_reg("cr2", cr2)
        self._enter(cpl, cs, ss, esp, eflags, eip)
        return True

    def _second_fault(self, first: int, f1: GuestFault, *, software: bool, external: bool) -> None:
        """The CPU faulted (`f1`) while delivering `first` (a software interrupt, an external one, or
        an exception).  The x86 rules: a fault while delivering #DF shuts the CPU down (triple fault);
        contributory on contributory, or #PF/contributory on #PF, becomes #DF; any other pair
        (notably everything after `int n`, an external interrupt or a benign exception such as #UD)
        is handled serially: the second fault is delivered as such.  The fault of an `int n` is the
        instruction's own: its frame returns to the `int n`, not past it."""
        if first == DF:
            raise TripleFault(f"fault while delivering a double fault ({f1})") from None
        if f1.cr2 is not None:
            self.m.engine.set_reg("cr2", f1.cr2)
        second = f1.vector
        if software or external or not _promotes_to_df(first, second):
            self.m.metrics.count("delivery:nested_fault")
            if software:
                eip = self.registers()[0]
                start = self.m.soft_int_start(eip, first)
                if start is not None:  # (unreadable code: the frame returns past it)
                    self.m.engine.set_reg("eip", start)
            self.exception(second, f1.error_code)
            return
        self.m.metrics.count("delivery:double_fault")
        try:
            self._deliver(DF, 0, False, False)
        except GuestFault as f2:
            raise TripleFault(f"vector {first} -> {f1} -> double fault -> {f2}") from None

    def _deliver(self, vector: int, err: int | None, software: bool, external: bool) -> None:
        """One delivery.  Raises GuestFault (state untouched) when the CPU would fault on the way;
        the caller turns that into #DF."""
        m = self.m
        m.personality.load_virtual_if()  # the frame's IF is the kernel's (possibly virtual) flag
        (eip, eflags, cs, ss, esp, cr0, cr3, cr4, idt_base, idt_limit, gdt_base, gdt_limit,
         tr_sel, tr_base, tr_limit, _tr_flags, cr2, _edi) = self.registers()  # fmt: skip
        ext = 1 if external else 0
        if cr4 & 0x20 and cr0 & 0x80000000:
            raise UnsupportedState(PAE_REFUSED)
        if eflags & VM:
            raise UnsupportedState(f"{V86_REFUSED} (eip={eip:#x})")
        if vector * 8 + 7 > idt_limit:
            raise GuestFault(GP, vector * 8 + 2 + ext)
        lohi = self.paging.sys_u32x2(idt_base + vector * 8, cr0, cr3, cr4)
        lo, hi = lohi if lohi is not None else self._read8(idt_base + vector * 8, cr0, cr3, cr4)
        gtype = (hi >> 8) & 0x1F
        if gtype != 0x0E and gtype != 0x0F:  # 32-bit interrupt / trap gate only
            raise GuestFault(GP, vector * 8 + 2 + ext)
        cpl = cs & 3
        if software and (hi >> 13) & 3 < cpl:
            raise GuestFault(GP, vector * 8 + 2)
        if not hi & 0x8000:
            raise GuestFault(NP, vector * 8 + 2 + ext)
        sel = lo >> 16
        offset = (hi & 0xFFFF0000) | (lo & 0xFFFF)
        hi = self._code_descriptor(sel, ext, gdt_base, gdt_limit, cr0, cr3, cr4)
        dpl = (hi >> 13) & 3
        if dpl > cpl:
            raise GuestFault(GP, (sel & ~3) + ext)
        if hi & D_CONFORMING:
            dpl = cpl  # a conforming segment runs at the caller's ring: no privilege change
        elif dpl < m.personality.kernel_ring:
            raise GuestFault(GP, (sel & ~3) + ext)  # the de-privileged kernel owns no inner ring
        new_flags = eflags & ~EFLAGS_CLEAR
        if gtype == 0x0E:
            new_flags &= ~IF
        paging = self.paging
        if dpl < cpl:
            stack = m.kernel_stacks.get(dpl)
            if stack is None:
                stack = self._tss_stack(dpl, ext, tr_sel, tr_base, tr_limit, cr0, cr3, cr4)
            ss_new, esp_new = stack
            self._check_stack_segment(ss_new, dpl, ext, gdt_base, gdt_limit, cr0, cr3, cr4)
            if err is None:
                n, words = 5, (eip, cs, eflags, esp, ss)
            else:
                n, words = 6, (err & M32, eip, cs, eflags, esp, ss)
            top = (esp_new - 4 * n) & M32
            phys = paging.phys(top, 4 * n, cr0, cr3, cr4, True, False)
            if phys < 0:
                paging.write(top, _FRAME[n].pack(*words), user=False)
            else:
                _FRAME[n].pack_into(self.ram, phys, *words)
            self._enter(dpl, (sel & ~3) | dpl, ss_new & 0xFFFF, top, new_flags, offset)
            cpl = dpl
            metrics = m.metrics  # Metrics.count("delivery:ring_change") without the string work
            metrics.kinds["delivery"] += 1
            metrics.detail["delivery:ring_change"] += 1
        else:
            if err is None:
                n, words = 3, (eip, cs, eflags)
            else:
                n, words = 4, (err & M32, eip, cs, eflags)
            top = (esp - 4 * n) & M32
            user = cpl == 3
            phys = paging.phys(top, 4 * n, cr0, cr3, cr4, True, user)
            if phys < 0:
                paging.write(top, _FRAME[n].pack(*words), user=user)
            else:
                _FRAME[n].pack_into(self.ram, phys, *words)
            self._enter(
                None, (sel & ~3) | cpl if (sel & ~3) != (cs & ~3) else None, 0, top, new_flags, offset
            )
        m.personality.save_virtual_if(cpl, new_flags, cr2)

    def _read8(self, linear: int, cr0: int, cr3: int, cr4: int) -> tuple[int, int]:
        """Two dwords of a system table (IDT/GDT/TSS: supervisor reads) at a linear address."""
        v = self.paging.sys_u32x2(linear, cr0, cr3, cr4)
        if v is None:
            return struct.unpack("<II", self.paging.read(linear & M32, 8))  # raises the right fault
        return v

    def _code_descriptor(
        self, sel: int, ext: int, gdt_base: int, gdt_limit: int, cr0: int, cr3: int, cr4: int
    ) -> int:
        """The high dword of the gate's target code descriptor, after the CPU's checks."""
        if sel & ~3 == 0:
            raise GuestFault(GP, ext)
        if sel & 4:
            raise GuestFault(GP, (sel & ~3) + ext)  # LDT code selectors: not supported
        if (sel & ~7) + 7 > gdt_limit:
            raise GuestFault(GP, (sel & ~3) + ext)
        hi = self._read8(gdt_base + (sel & ~7), cr0, cr3, cr4)[1]
        if not hi & D_CODE or not hi & D_S:  # must be a code segment
            raise GuestFault(GP, (sel & ~3) + ext)
        if not hi & D_P:
            raise GuestFault(NP, (sel & ~3) + ext)
        if not hi & D_RW:  # execute-only: the engine's CS write refuses it (see module docstring)
            raise GuestFault(GP, (sel & ~3) + ext)
        return hi

    def _check_stack_segment(
        self, ss: int, ring: int, ext: int, gdt_base: int, gdt_limit: int, cr0: int, cr3: int, cr4: int
    ) -> None:
        """The CPU's checks of the inner stack's SS before a ring change (SDM "stack switching"):
        #TS(SS) unless it is a writable data segment with RPL = DPL = the new ring in the
        GDT (LDT stacks: not supported, #TS); not present: #SS(SS)."""
        err = (ss & 0xFFFC) + ext
        if ss & 0xFFFC == 0:
            raise GuestFault(TS, ext)
        if ss & 4 or ss & 3 != ring or (ss & ~7) + 7 > gdt_limit:
            raise GuestFault(TS, err)
        hi = self._read8(gdt_base + (ss & ~7), cr0, cr3, cr4)[1]
        if not hi & D_S or hi & D_CODE or not hi & D_RW or (hi >> 13) & 3 != ring:
            raise GuestFault(TS, err)
        if not hi & D_P:
            raise GuestFault(SS, err)

    def _tss_stack(
        self, ring: int, ext: int, sel: int, base: int, limit: int, cr0: int, cr3: int, cr4: int
    ) -> tuple[int, int]:
        """SS:ESP for `ring` from the TSS (when no personality override exists, e.g. VMI
        UpdateKernelStack)."""
        if sel & ~3 == 0 or limit < 8 * ring + 11:
            raise GuestFault(TS, (sel & ~3) + ext)
        esp, ss = self._read8(base + 4 + 8 * ring, cr0, cr3, cr4)
        return ss & 0xFFFF, esp

    # -- engines without the batched interface -----------------------------------------------------
    def _regs_generic(self) -> tuple[int, ...]:
        r = self.m.engine.reg
        return (
            *(r(n) for n in _NAMES[:8]),
            *r("idtr"),
            *r("gdtr"),
            *tuple(r("tr"))[:4],
            r("cr2"),
            r("edi"),
        )


def _promotes_to_df(first: int, second: int) -> bool:
    """Does fault `second`, raised while delivering exception `first`, become #DF (SDM vol. 3, the
    double-fault conditions)?  Benign first exceptions never promote."""
    if first == PF:
        return second == PF or second in CONTRIBUTORY
    return first in CONTRIBUTORY and second in CONTRIBUTORY


def pf_is_write(machine: Machine, eip: int, cr2: int) -> bool:
    """Decide whether the faulting access at `eip` was a write (the engine does not say).  Uses the
    page walk first (a present, reachable, read-only page can only fault on a write), then decodes the
    instruction: a written memory operand, or an implicit stack push, means write."""
    from vmirom.machine.decode import writes_memory

    return writes_memory(machine, eip, cr2)


__all__ = ["Delivery", "pf_is_write", "PF"]
