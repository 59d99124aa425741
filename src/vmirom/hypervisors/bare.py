"""`bare`: the physical machine, no hypervisor.  The kernel runs at ring 0 with no ROM; only the
platform devices exist.  Exits are the ones any PC emulator has (port I/O, interrupts)."""

from __future__ import annotations

from vmirom.hypervisors.base import Personality


class Bare(Personality):
    name = "bare"
    description = "physical machine: ring 0, no ROM"
    kernel_ring = 0
