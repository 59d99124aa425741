"""ROM specs the kernel's own tests use on real QEMU (ring 0, no hypervisor behind the ROM).

`all_calls_rom()` routes every operation the reference kernel performs through ROM stubs that
do the native thing, answers NOP for the calls a bare machine does not need, and JUMP_REL for
IRET: all three binding kinds, every inline site patched, and still a working machine.
"""

from __future__ import annotations

from vmirom.rom import CallEntry, RomSpec

_WRITE_DT_ENTRY = ("lea (%eax,%edx,8), %eax\n mov %ecx, (%eax)\n mov 4(%esp), %ecx\n"
                   " mov %ecx, 4(%eax)\n ret")


def all_calls_rom(product: str = "all-calls") -> RomSpec:
    """A ROM that answers CALL_REL/NOP/JUMP_REL for everything the kernel uses."""
    call = CallEntry.call
    return RomSpec(product=product, entries={
        "CPUID": call("cpuid\n ret"),
        "SetGDT": call("lgdt (%eax)\n ret"),
        "SetIDT": call("lidt (%eax)\n ret"),
        "SetTR": call("ltr %ax\n ret"),
        "WriteGDTEntry": call(_WRITE_DT_ENTRY),
        "WriteIDTEntry": call(_WRITE_DT_ENTRY),
        "SetCR3": call("mov %eax, %cr3\n ret"),
        "GetCR2": call("mov %cr2, %eax\n ret"),
        "GetCR3": call("mov %cr3, %eax\n ret"),
        "EnableInterrupts": call("sti\n ret"),
        "DisableInterrupts": call("cli\n ret"),
        "GetInterruptMask": call("pushf\n pop %eax\n and $0x200, %eax\n ret"),
        "SetInterruptMask": call("push %eax\n popf\n ret"),
        "IRET": CallEntry.jump("iret"),
        "Halt": call("sti\n hlt\n ret"),
        "RDTSC": call("rdtsc\n ret"),
        "SetPxE": call("mov %eax, (%edx)\n ret"),
        "FlushTLB": call("mov %cr3, %eax\n mov %eax, %cr3\n ret"),
        "InvalPage": call("invlpg (%eax)\n ret"),
        "AllocatePage": CallEntry.nop(),
        "ReleasePage": CallEntry.nop(),
        "SetLinearMapping": CallEntry.nop(),
        "SetLazyMode": CallEntry.nop(),
        "IODelay": CallEntry.nop(),
    })
