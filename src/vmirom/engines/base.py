"""The small interface between the virtual PC (`vmirom.machine`) and a CPU engine.

Why an interface: the machine (devices, delivery, page walks, the run loop) is engine-neutral, so a
KVM engine can be added on hosts with real VT-x/AMD-V without touching it.  The engine only runs
guest code, exposes registers, and calls back into an `EngineHooks` object for every exit.

Conventions:
- Register names are lower-case x86 names: "eax".."edi", "esp", "ebp", "eip", "eflags", "cr0".."cr4",
  "cs", "ss", "ds", "es", "fs", "gs" (selectors), "gdtr", "idtr" as (base, limit), "tr", "ldtr" as
  (selector, base, limit, flags), "dr0".."dr7".
- Addresses given to `read_phys`/`write_phys` are guest-physical.  Linear addresses are translated by the
  machine's page walker (`vmirom.machine.paging`), never by the engine.
"""

from __future__ import annotations

import abc
import mmap
import struct
from dataclasses import dataclass, field
from typing import Protocol


def segment_descriptor(base: int, limit: int, access: int, flags: int = 0xC) -> bytes:
    """An 8-byte x86 GDT/LDT descriptor: `access` is the type/S/DPL/P byte, `flags` the G/D/L/AVL
    nibble (0xC: 4 KiB granularity, 32-bit).  Used wherever the VMM writes a table of its own."""
    return struct.pack(
        "<HHBBBB",
        limit & 0xFFFF,
        base & 0xFFFF,
        (base >> 16) & 0xFF,
        access,
        ((limit >> 16) & 0xF) | (flags << 4),
        (base >> 24) & 0xFF,
    )


__all__ = ["EngineHooks", "Engine", "EngineError", "SliceResult", "REG_NAMES", "segment_descriptor"]

GPRS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
REG_NAMES = GPRS + (
    "eip",
    "eflags",
    "cr0",
    "cr2",
    "cr3",
    "cr4",
    "cs",
    "ss",
    "ds",
    "es",
    "fs",
    "gs",
    "dr0",
    "dr1",
    "dr2",
    "dr3",
    "dr6",
    "dr7",
)


class EngineError(Exception):
    """The engine could not do what was asked (bad CPU state, engine refusal).  The machine turns
    this into a clean guest-fate report, never a traceback."""


class EngineHooks(Protocol):
    """What the engine calls while guest code runs.  Implemented by `vmirom.machine.Machine`.

    Every callback runs *inside* the engine's run call; it may read/write registers and memory,
    change EIP (that ends the current translation block), or call `Engine.stop()`.
    """

    def on_interrupt(self, vector: int) -> None:
        """An exception or a software interrupt (`int n`, `int3`).  For faults EIP is the faulting
        instruction; for `int n`/`int3` EIP is already past it."""

    def on_port_in(self, port: int, size: int) -> int:
        """`in` from `port` with operand size 1, 2 or 4.  Returns the value.  (Engines do not check
        IOPL; the machine does.)"""

    def on_port_out(self, port: int, size: int, value: int) -> None:
        """`out` of `value` to `port`."""

    def on_cpuid(self) -> bool:
        """`cpuid` executed.  Return True when the hook produced the result (skip the native one)."""

    def on_invalid_opcode(self) -> bool:
        """An invalid opcode (including `ud2`).  Return True to continue (EIP may have been changed)."""

    def on_bad_memory(self, write: bool, phys: int, size: int, value: int, protected: bool) -> bool:
        """An access to unmapped physical memory, or a write to read-only memory (`protected`).
        Return True when handled (retry), False to stop the engine with an error."""

    def on_sysenter(self) -> None:
        """`sysenter` executed (engines that do not run it natively)."""

    def code_byte_before_eip(self) -> int:
        """The code byte at linear EIP-1 (engines use it to recognize a native `hlt`)."""


@dataclass
class SliceResult:
    """Why a `run_slice` returned."""

    error: str | None = None  # engine error text (e.g. "UC_ERR_FETCH_UNMAPPED"), None if fine
    stopped: bool = False  # a hook called stop()
    halted: bool = False  # the CPU executed `hlt` natively (ring 0)
    extra: dict = field(default_factory=dict)


class Engine(abc.ABC):
    """A CPU engine.  One engine instance = one vCPU in one VM."""

    name: str = "?"

    @abc.abstractmethod
    def attach_memory(self, ram: mmap.mmap, size: int, readonly: list[tuple[int, int]]) -> None:
        """Share guest RAM (physical 0..size) with the engine; `readonly` are (start, end) physical
        ranges the guest may read/execute but not write (the ROM)."""

    @abc.abstractmethod
    def set_hooks(self, hooks: EngineHooks) -> None:
        """Install the callback object."""

    @abc.abstractmethod
    def run_slice(self, timeout_us: int, count: int = 0) -> SliceResult:
        """Run from the current EIP for at most `timeout_us` of guest time - the CPU time of the
        calling thread, see `vmirom.machine.clock` - or until stop().  With `count` > 0: for at most
        `count` instructions instead (a debugger's single step, the deterministic clock), adding
        what ran to `icount()`."""

    def icount(self) -> int:
        """Instructions run by counted slices so far (engines that cannot count raise)."""
        raise EngineError(f"the {self.name} engine cannot count instructions")

    def uncount_current(self) -> None:  # noqa: B027 - optional
        """Called from a code hook that stops the slice before its instruction runs (a breakpoint),
        so the counted slice does not count that instruction."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Ask the running slice to end as soon as the current hook returns."""

    @abc.abstractmethod
    def reg(self, name: str) -> int | tuple:
        """Read one register (see module docstring for names)."""

    @abc.abstractmethod
    def set_reg(self, name: str, value: int | tuple) -> None:
        """Write one register.  Segment writes reload the descriptor; they cannot change the CPL
        (use `switch_ring`)."""

    def reader(self, names: tuple[str, ...]):
        """A function that reads the scalar registers `names` together and returns their values as a
        tuple.  Hot exit handlers (hypercalls) compile one once; engines may batch the reads."""
        reg = self.reg
        return lambda: tuple(reg(n) for n in names)

    @abc.abstractmethod
    def cpl(self) -> int:
        """The current privilege level."""

    @abc.abstractmethod
    def switch_ring(self, cpl: int, cs: int, ss: int) -> None:
        """Change the CPL and load CS/SS (descriptors with DPL == cpl) in one step.  This is how the
        machine delivers an interrupt across rings and enters the kernel at ring 1."""

    def enter_handler(
        self, cpl: int | None, cs: int | None, ss: int, esp: int, eflags: int, eip: int
    ) -> None:
        """Enter a handler (interrupt/exception delivery, an emulated IRET): for a ring change
        (`cpl` not None) switch the ring and load `cs`/`ss`, else load `cs` when given; then ESP,
        EFLAGS, EIP.  Engines override it to do this in fewer calls."""
        if cpl is not None:
            self.switch_ring(cpl, cs, ss)
        elif cs is not None:
            self.set_reg("cs", cs)
        self.set_reg("esp", esp)
        self.set_reg("eflags", eflags)
        self.set_reg("eip", eip)

    def fence(self) -> bool:
        """Called by an exit handler that must end its exit with a fault for the guest.  An engine
        that is in the middle of a block of guest code here (an instruction hook for in/out, cpuid,
        sysenter, or a code hook) and would go on executing the block's next instructions after
        the hook returns must make sure none of them has an effect, end the slice, and on its return
        put the CPU back in the state of this moment (EIP at the instruction); it returns True and
        the machine delivers the fault after the slice.  False (the default): the exit is between
        instructions, nothing runs before the handler's state changes take effect, deliver now."""
        return False

    @abc.abstractmethod
    def fault_done(self) -> None:
        """Called after the machine has handled a fault hook (engine-specific cleanup, e.g. the
        Unicorn #1883 workaround)."""

    @abc.abstractmethod
    def invalidate_code(self, start: int, end: int) -> None:
        """Python wrote guest code in [start, end) (physical): drop stale translations."""

    @abc.abstractmethod
    def flush_tlb(self) -> None:
        """Python edited page tables: drop stale linear->physical translations."""

    @abc.abstractmethod
    def read_msr(self, index: int) -> int:
        """Read a model-specific register."""

    @abc.abstractmethod
    def write_msr(self, index: int, value: int) -> None:
        """Write a model-specific register."""

    @abc.abstractmethod
    def add_code_hook(self, address: int, callback) -> int:
        """Call `callback()` before the instruction at linear `address` executes; returns a handle.
        (Used by trap-and-emulate for sensitive instructions that do not trap.)"""

    @abc.abstractmethod
    def remove_hook(self, handle: int) -> None:
        """Remove a hook added by add_code_hook."""

    def close(self) -> None:  # noqa: B027 - optional
        """Free engine resources."""
