"""x86 32-bit (non-PAE) paging bits shared by the shadow MMU's modules.

Named once here so the walker, the shadow builder and the tests agree on them.
"""

from __future__ import annotations

PAGE = 4096
PAGE_SHIFT = 12
ENTRIES = 1024

# page-directory / page-table entry bits (SDM vol. 3, 4.3)
P, RW, US, PWT, PCD, A, D, PS, G = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80, 0x100
FRAME_MASK = 0xFFFFF000
BIG_MASK = 0xFFC00000  # a 4 MiB page's base in a PDE with PS

# control-register bits
CR0_PE, CR0_WP, CR0_PG = 1 << 0, 1 << 16, 1 << 31
CR4_PSE, CR4_PGE = 1 << 4, 1 << 7

# #PF error-code bits
PFERR_P, PFERR_W, PFERR_U = 1, 2, 4


def pdi(va: int) -> int:
    """Page-directory index of a linear address."""
    return (va >> 22) & 0x3FF


def pti(va: int) -> int:
    """Page-table index of a linear address."""
    return (va >> 12) & 0x3FF
