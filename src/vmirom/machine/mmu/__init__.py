"""Memory virtualization: machine memory apart from guest-physical memory, and shadow page tables.

`PhysMap` (physmap.py) places guest RAM in machine memory at frames the guest cannot name and
keeps the VMM-private pool; `ShadowMMU` (shadow.py) builds the page tables the CPU really walks
from the guest's own.  Engine-neutral: nothing here calls an engine (see docs/mmu.md).
"""

from vmirom.machine.mmu.physmap import PhysMap
from vmirom.machine.mmu.shadow import (
    BAD_PHYS,
    HIDDEN,
    ROM_WRITE,
    TRUE_FAULT,
    WP_TRAP,
    FaultResult,
    MmuError,
    MmuStats,
    ShadowMMU,
)

__all__ = [
    "BAD_PHYS",
    "HIDDEN",
    "ROM_WRITE",
    "TRUE_FAULT",
    "WP_TRAP",
    "FaultResult",
    "MmuError",
    "MmuStats",
    "PhysMap",
    "ShadowMMU",
]
