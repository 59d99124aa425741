"""A third-party hypervisor personality, packaged OUTSIDE vmirom (tests/plugins is its own "site").

It stands for a hypervisor written after the reference kernel was compiled: it registers through the
`vmirom.hypervisors` entry point (see ../acme_vmm-0.1.dist-info/entry_points.txt) and publishes a ROM
with its own per-operation choices, different from the built-in `vmi`:

- page-table writes stay native (SetPxE: NONE) - this hypervisor does not shadow page tables, so a
  ring-1 kernel may write its own PTEs; INVLPG stays native too (it traps at ring 1 and is emulated);
- page allocation/release and lazy-mode notices are not needed at all: the sites become NOPs;
- everything else (interrupt flag, CR3, IRET, timer, halt ...) is a hypercall, as in `vmi`.

Only the public API of vmirom is used: the `Vmi` base class and its class attributes.
"""

from __future__ import annotations

from vmirom.hypervisors.vmi import Vmi


class AcmeHypervisor(Vmi):
    name = "acme"
    description = "third-party plugin: VMI ROM with native PTE writes, no page-type hypercalls"
    rom_manufacturer = "Acme Virtualization"
    rom_product = "acme hybrid ROM"
    rom_version = (7, 2)
    native_calls = Vmi.native_calls + ("SetPxE", "InvalPage")
    nop_calls = Vmi.nop_calls + ("AllocatePage", "ReleasePage", "SetLazyMode")
