"""Typed errors of the virtual machine.

Two families:
- `GuestFault`: an x86 exception the *guest* caused (delivered to the guest through its IDT);
- `VmError` subclasses: the VM cannot go on (bad input, triple fault, engine trouble).  The runner
  turns these into a clean report and an exit status, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

# x86 exception vectors used by the VMM
DE, DB, NMI, BP, OF, BR, UD, NM, DF, TS, NP, SS, GP, PF, MF, AC = (
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    10,
    11,
    12,
    13,
    14,
    16,
    17,
)
HAS_ERROR_CODE = frozenset({DF, TS, NP, SS, GP, PF, AC})
#: vectors that are faults for the purpose of double-fault promotion ("contributory" + #PF)
CONTRIBUTORY = frozenset({DE, TS, NP, SS, GP})


@dataclass
class GuestFault(Exception):
    """Raise to make the guest take exception `vector` (with `error_code` if the vector has one).
    `cr2` is set for #PF."""

    vector: int
    error_code: int = 0
    cr2: int | None = None

    def __str__(self) -> str:
        s = f"guest fault vector {self.vector} error {self.error_code:#x}"
        return s + (f" cr2={self.cr2:#010x}" if self.cr2 is not None else "")


class VmError(Exception):
    """The VM stops (not a guest exception).  `fate` is the short machine-readable reason."""

    fate = "error"


class LoadError(VmError):
    """The kernel (or initrd) file is refused: not an ELF, truncated, not Multiboot, does not fit."""

    fate = "refused"


class TripleFault(VmError):
    """The guest faulted while delivering a double fault: a real PC resets; we stop."""

    fate = "triple_fault"


class UnsupportedState(VmError):
    """The guest put the CPU in a state this VMM does not virtualize (virtual-8086 mode, PAE paging):
    the run ends with a clear message instead of emulating it wrongly."""

    fate = "unsupported"


class EngineCrash(VmError):
    """The engine reported an unrecoverable error (or the process running it died)."""

    fate = "engine_error"
