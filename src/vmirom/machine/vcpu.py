"""`VCpu`: the CPU-access protocol that instruction emulators and hypercall handlers use.

Why a facade: emulation code (`vmirom.machine.emulate`, personalities' hypercall handlers) must not
know which engine runs the guest nor bypass the checks on guest addresses.  Everything it needs is
here: registers, the CPL, guest memory through the ONE checked helper (`Machine.paging`), ports,
faults, the virtual interrupt flag, halting, TLB/code-cache maintenance.

Errors: any method that touches guest memory raises `GuestFault` (e.g. #PF with the right error code)
when the guest would fault; callers let it propagate - the machine delivers it to the guest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmirom.machine.faults import GP, GuestFault

if TYPE_CHECKING:
    from vmirom.machine.machine import Machine

IF_MASK = 0x200
IOPL_MASK = 0x3000


class VCpu:
    """The one virtual CPU of a `Machine`."""

    def __init__(self, machine: Machine) -> None:
        self.m = machine

    # -- registers -------------------------------------------------------------------------------
    def get(self, name: str) -> int:
        """Read a register by lower-case x86 name (see `vmirom.engines.base`)."""
        return self.m.engine.reg(name)

    def set(self, name: str, value) -> None:
        """Write a register.  Writing CR0/CR3/CR4 also flushes translations (the engine needs it)."""
        self.m.engine.set_reg(name, value)
        if name in ("cr0", "cr3", "cr4"):
            self.m.engine.flush_tlb()

    @property
    def cpl(self) -> int:
        """Current privilege level (0..3)."""
        return self.m.engine.cpl()

    @property
    def eip(self) -> int:
        return self.m.engine.reg("eip")

    @eip.setter
    def eip(self, value: int) -> None:
        self.m.engine.set_reg("eip", value & 0xFFFFFFFF)

    @property
    def iopl(self) -> int:
        return (self.m.engine.reg("eflags") & IOPL_MASK) >> 12

    # -- memory (linear addresses, checked) ---------------------------------------------------------
    def read(self, linear: int, size: int, *, user: bool | None = None, fetch: bool = False) -> bytes:
        """Read `size` bytes at a guest linear address with the guest's own checks (present, user/
        supervisor; `user` defaults to CPL==3).  Raises GuestFault(#PF) like the CPU would."""
        return self.m.paging.read(linear, size, user=self.cpl == 3 if user is None else user, fetch=fetch)

    def write(self, linear: int, data: bytes, *, user: bool | None = None) -> None:
        """Write bytes at a guest linear address (checks present, writable per CR0.WP, user)."""
        self.m.paging.write(linear, data, user=self.cpl == 3 if user is None else user)

    def write_code(self, linear: int, data: bytes, *, user: bool | None = None) -> None:
        """`write` for bytes the guest may execute (a descriptor-table write made for it can land
        on code it already ran, as a store would on hardware): afterwards the engine drops any
        translation of the old bytes, so the guest sees what it asked to be written."""
        u = self.cpl == 3 if user is None else user
        self.m.paging.write(linear, data, user=u)
        for lin, n in self.m.paging._chunks(linear, len(data)):
            phys = self.m.paging.translate(lin, write=True, user=u)
            self.m.engine.invalidate_code(phys, phys + n)

    def read_u32(self, linear: int, **kw) -> int:
        return int.from_bytes(self.read(linear, 4, **kw), "little")

    def write_u32(self, linear: int, value: int, **kw) -> None:
        self.write(linear, (value & 0xFFFFFFFF).to_bytes(4, "little"), **kw)

    def read_code(self, linear: int, size: int = 16) -> bytes:
        """Instruction bytes at `linear` (stops early at an unmapped page instead of faulting)."""
        return self.m.paging.read_code(linear, size, user=self.cpl == 3)

    def translate(self, linear: int, *, write: bool = False, user: bool | None = None) -> int:
        """Guest linear -> guest physical, with the CPU's checks (raises GuestFault(#PF))."""
        return self.m.paging.translate(linear, write=write, user=self.cpl == 3 if user is None else user)

    def read_phys(self, phys: int, size: int) -> bytes:
        """Guest-physical read (range-checked: raises GuestFault(#GP) outside RAM)."""
        return self.m.memory.read(phys, size)

    # -- interrupts, ports, halting ----------------------------------------------------------------
    @property
    def interrupts_enabled(self) -> bool:
        """The guest's interrupt flag (as the VMM tracks it: EFLAGS.IF)."""
        return bool(self.m.engine.reg("eflags") & IF_MASK)

    def set_interrupts(self, enabled: bool) -> None:
        """Set/clear the guest's IF.  Enabling lets the machine deliver a pending interrupt at once."""
        fl = self.m.engine.reg("eflags")
        self.m.engine.set_reg("eflags", (fl | IF_MASK) if enabled else (fl & ~IF_MASK))

    def port_in(self, port: int, size: int) -> int:
        """Read a device port (bypasses the IOPL check: the caller already decided)."""
        return self.m.io.port_in(port, size)

    def port_out(self, port: int, size: int, value: int) -> None:
        """Write a device port (bypasses the IOPL check)."""
        self.m.io.port_out(port, size, value)

    def halt(self) -> None:
        """The guest halts until the next interrupt (the machine stops the slice and waits)."""
        self.m.request_halt()

    def fault(self, vector: int = GP, error_code: int = 0, cr2: int | None = None) -> GuestFault:
        """Build a GuestFault to `raise` (convenience for emulators)."""
        return GuestFault(vector, error_code, cr2)

    # -- engine maintenance ------------------------------------------------------------------------
    def flush_tlb(self, include_global: bool = False) -> None:
        """The guest flushes its TLB (FlushTLB, a CR3 reload): under shadow paging the shadows drop
        what a real TLB would (non-global entries; all with `include_global`)."""
        mmu = self.m.mmu
        if mmu is not None:
            mmu.flush_tlb(include_global)
        self.m.engine.flush_tlb()

    def invlpg(self, linear: int) -> None:
        """The guest invalidates the translation of one linear address (invlpg, InvalPage)."""
        mmu = self.m.mmu
        if mmu is not None:
            mmu.invlpg(linear & 0xFFFFFFFF)
        self.m.engine.flush_tlb()

    def sync_tlb(self) -> None:
        """After a shadow update: flush the engine's TLB if a shadow entry lost rights."""
        mmu = self.m.mmu
        if mmu is not None and mmu.need_flush:
            self.m.engine.flush_tlb()

    def invalidate_code(self, start: int, end: int) -> None:
        self.m.engine.invalidate_code(start, end)

    def read_msr(self, index: int) -> int:
        return self.m.engine.read_msr(index)

    def write_msr(self, index: int, value: int) -> None:
        self.m.engine.write_msr(index, value)

    def count(self, kind: str, n: int = 1) -> None:
        """Count an exit/event of `kind` in the machine's metrics (e.g. "emulate:cli")."""
        self.m.metrics.count(kind, n)
