"""The virtual PC, engine-neutral: guest RAM, the Multiboot loader, the vCPU access protocol,
virtual time, interrupt/exception delivery through the guest IDT, the page walker, devices, the run
loop (`Machine.run`) and exit metrics."""

from vmirom.machine.faults import EngineCrash, GuestFault, LoadError, TripleFault, VmError
from vmirom.machine.machine import Machine, MachineConfig, RunResult

__all__ = [
    "Machine",
    "MachineConfig",
    "RunResult",
    "GuestFault",
    "VmError",
    "LoadError",
    "TripleFault",
    "EngineCrash",
]
