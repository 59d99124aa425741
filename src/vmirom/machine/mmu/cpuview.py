"""The engine as the VMM sees it under shadow paging: real CPU, virtual control registers.

Why a wrapper: under shadow paging the engine's CR3 is the shadow root, its CR0 always has PG and
WP, its CR4 has no PSE/PGE, and its CR2 changes on every hidden fault - none of which the guest may
see.  Every VMM component (delivery, the page walker, emulators, hypercall handlers) reads and
writes control registers through `Machine.engine`; wrapping that one object makes all of them use
the guest's *virtual* CR0/CR2/CR3/CR4 (kept by the `ShadowMMU`, CR2 here) with no change to them.
Writes go to the MMU, which answers with the real CR3 (the shadow root) the engine then loads.
Physical addresses given to the engine (code invalidation) are guest-physical and are moved to
machine addresses here.  Everything else is the real engine's (attribute delegation).

The real engine stays reachable as `.real` for the two places that need the hardware view: the
#PF exit (the engine's CR2 is the faulting address, hidden faults included) and TLB maintenance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmirom.engines.base import EngineError
from vmirom.machine.faults import PF, GuestFault
from vmirom.machine.mmu.bits import CR0_PE, CR0_PG, CR0_WP, CR4_PGE, CR4_PSE
from vmirom.machine.mmu.shadow import HIDDEN, PROTECT_DESCRIPTORS, TRUE_FAULT, WP_TRAP

if TYPE_CHECKING:
    from vmirom.engines.base import Engine
    from vmirom.machine.mmu.shadow import ShadowMMU

_TABLE2 = ("gdtr", "idtr")
_TABLE4 = ("tr", "ldtr")
_CRS = ("cr0", "cr2", "cr3", "cr4")
_SEGS = ("cs", "ss", "ds", "es", "fs", "gs")


class ShadowedEngine:
    """`Engine` facade: control registers virtual, everything else the real engine."""

    def __init__(self, real: Engine, mmu: ShadowMMU, machine_offset: int) -> None:
        self.real = real
        self.mmu = mmu
        self.offset = machine_offset
        #: the guest's CR2: one word, shared with the compiled core when it delivers #PF (share_cr2)
        self._cr2 = memoryview(bytearray(4)).cast("I")
        self._cr2_owner = None
        self._gdtr: tuple[int, int] | None = None
        #: on_table(kind, base, limit): the GDTR ("gdt") or LDTR ("ldt", limit -1: none) was loaded
        #: (machine/dtguard.py moves the descriptor tables' protection with it)
        self.on_table = None

    @property
    def cr2(self) -> int:
        return self._cr2[0]

    @cr2.setter
    def cr2(self, value: int) -> None:
        self._cr2[0] = value & 0xFFFFFFFF

    def share_cr2(self, core) -> None:  # noqa: ANN001 - a vmirom.engines.core._core.Core
        """From now on the guest's CR2 is the core's word (it sets it when it delivers a #PF)."""
        view = core.vcr2_view().cast("I")
        view[0] = self._cr2[0]
        self._cr2, self._cr2_owner = view, core  # the owner keeps the word's memory alive

    # -- descriptor loads from the VMM side ---------------------------------------------------------
    def _ready_gdt(self) -> None:
        """Make the guest's GDT present (and writable, unless it is protected) in the current shadow
        before the engine loads a segment register for the VMM.  Why: such a load reads the
        descriptor (and sets its accessed bit) through the engine's MMU *outside* guest execution,
        where a #PF cannot be taken - on Unicorn it kills the process.  A GDT protected by the
        descriptor guard only needs to be readable: its descriptors all have Accessed set (the
        rules set it), so the engine writes nothing.  A page the guest itself cannot use that way
        is refused cleanly: a true fault becomes the guest's #PF, anything else an EngineError."""
        if self._gdtr is None:
            base, limit = self.real.reg("gdtr")[:2]
            self._gdtr = (base, limit)
        base, limit = self._gdtr
        mmu = self.mmu
        page = base & ~0xFFF
        while page <= ((base + limit) & 0xFFFFFFFF):
            if not mmu.shadow_writable(page, user=False) and not (mmu.protected and mmu.shadow_present(page)):
                r = mmu.fault(page, write=True, user=False)
                if r.kind == WP_TRAP and mmu.protection(r.gpa >> 12) == PROTECT_DESCRIPTORS:
                    r = mmu.fault(page, write=False, user=False)
                elif r.kind == WP_TRAP:  # a GDT in a frame shadowed as a page table: not a table then
                    mmu.unshadow(r.gpa >> 12)
                    r = mmu.fault(page, write=True, user=False)
                if r.kind == TRUE_FAULT:
                    self.cr2 = r.cr2
                    raise GuestFault(PF, r.error_code, cr2=r.cr2)
                if r.kind != HIDDEN:
                    raise EngineError(f"the guest's GDT at {page:#010x} is not in writable RAM ({r.kind})")
            if page >= 0xFFFFF000:
                break
            page += 0x1000
        if mmu.need_flush:
            self.flush_tlb()

    def switch_ring(self, cpl: int, cs: int, ss: int) -> None:
        self._ready_gdt()
        self.real.switch_ring(cpl, cs, ss)

    def enter_handler(self, cpl, cs, ss, esp, eflags, eip) -> None:
        if cpl is not None or cs is not None:
            self._ready_gdt()
        self.real.enter_handler(cpl, cs, ss, esp, eflags, eip)

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    # -- control registers ------------------------------------------------------------------------
    def _virtual(self, name: str) -> int:
        if name == "cr2":
            return self.cr2
        mmu = self.mmu
        return mmu.cr0 if name == "cr0" else mmu.cr3 if name == "cr3" else mmu.cr4

    def reg(self, name: str):
        if name in _CRS:
            return self._virtual(name)
        return self.real.reg(name)

    def set_reg(self, name: str, value) -> None:
        if name not in _CRS:
            if name in _SEGS:
                self._ready_gdt()
            elif name == "gdtr":
                self._gdtr = (value[0], value[1])
            self.real.set_reg(name, value)
            if self.on_table is not None and name in ("gdtr", "ldtr"):
                if name == "gdtr":
                    self.on_table("gdt", value[0], value[1])
                else:
                    self.on_table("ldt", value[1], value[2] if value[0] & ~3 else -1)
            return
        value &= 0xFFFFFFFF
        mmu = self.mmu
        if name == "cr2":
            self.cr2 = value
            return
        if name == "cr3":
            mmu.set_cr3(value)
        elif name == "cr0":
            mmu.set_cr0(value)
        else:
            mmu.set_cr4(value)
        self.load_real()

    def load_real(self) -> None:
        """Load the engine's real paging registers from the MMU's state: CR4 without PSE/PGE, the
        shadow root in CR3, CR0 with paging and write protection always on."""
        real, mmu = self.real, self.mmu
        real.set_reg("cr4", mmu.cr4 & ~(CR4_PSE | CR4_PGE))
        real.set_reg("cr3", mmu.root_ma)
        real.set_reg("cr0", mmu.cr0 | CR0_PE | CR0_PG | CR0_WP)
        mmu.need_flush = False  # the CR3 load flushed the engine's TLB

    def reader(self, names: tuple[str, ...]):
        """Batched reads with the control registers replaced by the virtual ones."""
        if not any(n in _CRS for n in names):
            return self.real.reader(names)
        if not getattr(self.real, "reads_tables", False):
            reg = self.reg
            return lambda: tuple(reg(n) for n in names)
        read = self.real.reader(names)
        slots: list[tuple[int, str]] = []
        i = 0
        for n in names:
            if n in _CRS:
                slots.append((i, n))
            i += 2 if n in _TABLE2 else 4 if n in _TABLE4 else 1
        virtual = self._virtual

        def read_virtual() -> tuple[int, ...]:
            vals = list(read())
            for j, n in slots:
                vals[j] = virtual(n)
            return tuple(vals)

        return read_virtual

    # -- physical addresses -----------------------------------------------------------------------
    def invalidate_code(self, start: int, end: int) -> None:
        self.real.invalidate_code(start + self.offset, end + self.offset)

    def flush_tlb(self) -> None:
        """Drop the engine's cached translations (after shadow entries lost rights)."""
        self.mmu.need_flush = False
        self.real.flush_tlb()

    def sync_tlb(self) -> None:
        """Flush the engine's TLB if the MMU changed a shadow entry in a way a TLB could hide."""
        if self.mmu.need_flush:
            self.flush_tlb()
