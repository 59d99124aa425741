"""`hwassist`: a hardware-assisted hypervisor (VT-x/EPT-like).

The kernel runs at ring 0, as on the physical machine: with hardware assistance the CPU itself
virtualizes privileged state (control registers, the interrupt flag, descriptor tables) and EPT
translates guest-physical memory, so the guest's own page tables are used unmodified and only
*configured* events exit.  On this engine that means: port I/O (the devices live in the VMM), CPUID
(it always exits on VT-x), hlt, hardware interrupts, and the hypercalls below.  Nothing is
trapped-and-emulated.

So the ROM answers NONE (keep the native instruction) for every CPU operation - CPUID, MSRs,
descriptor tables, control and debug registers, cli/sti/pushf/popf, IRET/SYSEXIT, page-table
writes, TLB flushes, IOPL, port I/O - because a ROM call could only be slower than the native
instruction that does not exit.  It paravirtualizes what hardware assistance does not make cheap:

* time: GetCycleFrequency / GetCycleCounter / SetAlarm / CancelAlarm / GetWallclockTime /
  WallclockUpdated (one hypercall arms a periodic alarm instead of programming the PIT through
  emulated port I/O; the counter is the VMM's virtual time, not the host TSC);
* Halt (a safe halt in one exit), Shutdown and Reboot (an explicit request instead of a device).

NOP (the hypervisor does not need to hear about it): page-table page announcements (AllocatePage,
ReleasePage, UpdatePxE), SetLinearMapping, SetLazyMode (there is nothing to batch when page-table
writes do not exit), IODelay, WBINVD.  The console stays the emulated 16550: VMI 3.0 has no call for
it.  The ROM announces API 3.0 (no extension is useful here).
"""

from __future__ import annotations

from vmirom import abi
from vmirom.hypervisors.base import Personality
from vmirom.hypervisors.vmi import Vmi
from vmirom.machine.vcpu import VCpu

#: the calls this ROM implements with a hypercall
PARAVIRTUAL = (
    "GetCycleFrequency",
    "GetCycleCounter",
    "SetAlarm",
    "CancelAlarm",
    "GetWallclockTime",
    "WallclockUpdated",
    "Halt",
    "Shutdown",
    "Reboot",
)
#: the calls the hypervisor does not need (the kernel removes the site)
NOT_NEEDED = (
    "AllocatePage",
    "ReleasePage",
    "UpdatePxE",
    "SetLinearMapping",
    "SetLazyMode",
    "FlushDeferred",
    "IODelay",
    "WBINVD",
)


class HwAssist(Vmi):
    """Ring-0 kernel, native CPU operations, a ROM for time and halt (module docstring)."""

    name = "hwassist"
    description = "hardware-assisted (VT-x/EPT-like): ring 0, ROM for timer and halt only"
    kernel_ring = 0
    #: nested paging (EPT-like): the CPU walks the guest's own tables
    memory_model = "direct"
    rom_product = "hwassist ROM"
    rom_version = (1, 0)
    api_minor = 0
    nop_calls = NOT_NEEDED
    native_calls = tuple(c.name for c in abi.CALLS if c.name not in PARAVIRTUAL + NOT_NEEDED)

    core_exception_vectors = frozenset()  # see Personality.on_exception: it takes none

    def on_exception(self, vcpu: VCpu, vector: int, error_code: int) -> bool:
        return False  # nothing is de-privileged: every fault is the guest's own

    def io_permitted(self, vcpu: VCpu) -> bool:
        return Personality.io_permitted(self, vcpu)  # the native rule: CPL <= EFLAGS.IOPL
