"""The public, versioned API for writing a hypervisor personality (docs/plugins.md is the tutorial).

Import everything a personality needs from HERE: what this module exports is the API; the rest of
vmirom may change between releases.  `API_VERSION` is (major, minor): a minor release only adds;
a major release may change or remove something listed below.  A personality class states the
version it was written against in `requires_api` (default: this one); the registry refuses a
plugin whose major differs, or whose minor is newer than this vmirom's.

The pieces (each documented where it is defined):

* `Personality`: the base class.  Class attributes: `name`, `description`, `kernel_ring` (0 or
  1), `iopl`, `hypercall_vector` / `hypercall_port` (the mechanism), `memory_model`,
  `replaces_builtin`, `requires_api`.  Hooks the machine calls (each may raise `GuestFault`: the
  guest takes that exception): `rom_spec`, `attach`, `before_slice`, `deadline`, `update_timers`,
  `is_hypercall`, `hypercall`, `load_virtual_if`, `save_virtual_if`, `on_exception`, `on_cpuid`,
  `io_permitted`, `port_in`, `port_out`, `summary`; helper `count_hypercall`.
* `HypercallPersonality` (the built-in `vmi`'s machinery): a ring-1 personality whose ROM stubs
  trap into Python handlers, one per VMI call (`@handles("CallName")`), every argument checked.
  Subclasses choose per call (`native_calls`, `nop_calls`, `rom_stubs`) and their mechanism
  (`hypercall_vector` or `hypercall_port`); they inherit validated handlers for every call,
  trap-and-emulate of the native instructions a ring-1 kernel keeps, and hypercall counting.
* `RomSpec`, `CallEntry`, `RomError`: the ROM as data (`vmirom.rom.spec`).  Stub code is GNU as
  (AT&T, 32-bit); labels `rom_start` and `rom_data` (the writable page after the image) exist in
  every stub; `common_asm` holds shared code.  A spec that cannot be built refuses the run (exit 3).
* `VCpu`: registers (`get`/`set`), `cpl`, checked guest memory (`read`/`write`/`read_u32`/
  `write_u32`/`translate`), `set_interrupts`, `halt`, `count`.
* The machine (`self.machine` after `attach`): `clock.now_ns()` (virtual time), `pic.raise_irq(n)`,
  `update_timers()`, `deliver_pending_interrupt()`, `guest_exit(status)`, `stop(fate, message)`,
  `metrics.count(kind)`, `rom_range` (guest-physical [start, end) of the ROM).
* `GuestFault` and the vector numbers (`GP`, `PF`, `UD`, ...); `abi` (call numbers and names).
* `register` (a personality from code) and `ENTRY_POINT_GROUP` ("vmirom.hypervisors").
"""

from __future__ import annotations

from vmirom import abi
from vmirom.hypervisors.base import Personality
from vmirom.hypervisors.registry import ENTRY_POINT_GROUP, register
from vmirom.hypervisors.vmi import Vmi as HypercallPersonality
from vmirom.hypervisors.vmi import handles
from vmirom.machine.faults import BP, DE, GP, NP, PF, SS, TS, UD, GuestFault, VmError
from vmirom.machine.vcpu import VCpu
from vmirom.rom.spec import CallEntry, RomError, RomSpec

API_VERSION: tuple[int, int] = (1, 0)


class ApiMismatch(ValueError):
    """A personality was written against an API version this vmirom does not provide."""


def check_api(cls: type[Personality]) -> None:
    """Raise ApiMismatch unless `cls.requires_api` is served by this vmirom's `API_VERSION`."""
    want = getattr(cls, "requires_api", API_VERSION)
    try:
        major, minor = (int(v) for v in want)
    except (TypeError, ValueError):
        raise ApiMismatch(f"{cls.__name__}.requires_api must be (major, minor), got {want!r}") from None
    if major != API_VERSION[0] or minor > API_VERSION[1]:
        raise ApiMismatch(f"{cls.__name__} needs personality API {major}.{minor}; this vmirom provides "
                          f"{API_VERSION[0]}.{API_VERSION[1]}")


__all__ = [
    "API_VERSION", "ApiMismatch", "BP", "CallEntry", "DE", "ENTRY_POINT_GROUP", "GP", "GuestFault",
    "HypercallPersonality", "NP", "PF", "Personality", "RomError", "RomSpec", "SS", "TS", "UD", "VCpu",
    "VmError", "abi", "check_api", "handles", "register",
]
