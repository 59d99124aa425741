"""Machine memory and where guest-physical memory lives in it (p2m / m2p).

Why: a de-privileging hypervisor without nested paging cannot let the guest name machine frames.
The CPU (our engine) sees *machine* memory: a VMM-private pool (shadow page tables and anything
else the guest must never reach) followed by the guest's RAM, placed either at a fixed offset or
as a permutation of frames.  The guest only ever names guest-physical addresses; the VMM turns
them into machine addresses with `p2m` and back with `m2p`.  Nothing in machine memory outside
the guest's own frames is reachable from a guest page table, because shadow entries are built
only from `p2m` of a guest frame.

Layouts:
- "offset": guest frame g at machine frame `pool_frames + g` (contiguous: fast bulk copies);
- "permute": guest frame g at machine frame `pool_frames + perm[g]`, a fixed pseudo-random
  permutation: any VMM path that forgets the translation reads the wrong bytes at once, which is
  what the unit tests run on.

The pool is a simple free list of machine frames: `alloc_frame` hands out zeroed frames (None
when exhausted: the caller evicts), `free_frame` returns them.
"""

from __future__ import annotations

import random
import struct
from array import array

from vmirom.machine.mmu.bits import PAGE, PAGE_SHIFT

_U32 = struct.Struct("<I")
_ZERO_PAGE = bytes(PAGE)


class PhysMap:
    """Machine memory = [pool | guest RAM]; p2m/m2p between guest and machine frames."""

    def __init__(
        self,
        ram_size: int,
        pool_frames: int,
        *,
        layout: str = "offset",
        seed: int = 0x5EED,
        buffer=None,
    ) -> None:
        if ram_size <= 0 or ram_size % PAGE:
            raise ValueError("guest RAM must be a positive multiple of 4 KiB")
        if pool_frames < 2:
            raise ValueError("the shadow pool needs at least 2 frames")
        if layout not in ("offset", "permute"):
            raise ValueError(f"unknown layout {layout!r}")
        self.ram_size = ram_size
        self.ram_frames = ram_size >> PAGE_SHIFT
        self.pool_frames = pool_frames
        self.layout = layout
        self.machine_size = (pool_frames + self.ram_frames) << PAGE_SHIFT
        if buffer is None:
            buffer = bytearray(self.machine_size)
        elif len(buffer) < self.machine_size:
            raise ValueError("machine buffer smaller than pool + RAM")
        #: machine memory, addressed by machine-physical address (what the engine maps at 0)
        self.mem = buffer
        order = list(range(self.ram_frames))
        if layout == "permute":
            random.Random(seed).shuffle(order)
        #: guest frame -> machine frame
        self.p2m_table = array("I", (pool_frames + o for o in order))
        #: machine frame -> guest frame (-1: not guest RAM, e.g. a pool frame)
        self.m2p_table = array("i", [-1]) * (pool_frames + self.ram_frames)
        for g, m in enumerate(self.p2m_table):
            self.m2p_table[m] = g
        self._free = list(range(pool_frames - 1, -1, -1))  # pop() hands out low frames first

    # -- translation ---------------------------------------------------------------------------------
    def p2m(self, gfn: int) -> int:
        """Machine frame of guest frame `gfn`, -1 when the guest has no such frame."""
        if 0 <= gfn < self.ram_frames:
            return self.p2m_table[gfn]
        return -1

    def m2p(self, mfn: int) -> int:
        """Guest frame held in machine frame `mfn`, -1 for VMM-private or nonexistent frames."""
        if 0 <= mfn < len(self.m2p_table):
            return self.m2p_table[mfn]
        return -1

    def gpa_to_ma(self, gpa: int) -> int:
        """Machine address of guest-physical `gpa`, -1 outside guest RAM."""
        if 0 <= gpa < self.ram_size:
            return (self.p2m_table[gpa >> PAGE_SHIFT] << PAGE_SHIFT) | (gpa & 0xFFF)
        return -1

    # -- guest-physical access (through p2m) ---------------------------------------------------------
    def guest_u32(self, gpa: int) -> int | None:
        """The aligned dword at guest-physical `gpa`, None outside guest RAM."""
        ma = self.gpa_to_ma(gpa & ~3)
        if ma < 0:
            return None
        return _U32.unpack_from(self.mem, ma)[0]

    def set_guest_u32(self, gpa: int, value: int) -> None:
        """Store an aligned dword at guest-physical `gpa` (caller checked it is RAM)."""
        _U32.pack_into(self.mem, self.gpa_to_ma(gpa & ~3), value & 0xFFFFFFFF)

    def guest_frame(self, gfn: int) -> bytes:
        """A copy of guest frame `gfn` (4 KiB)."""
        ma = self.p2m(gfn) << PAGE_SHIFT
        return bytes(self.mem[ma : ma + PAGE])

    def read(self, gpa: int, size: int) -> bytes:
        """Guest-physical bytes, page by page through p2m (ValueError outside guest RAM)."""
        if gpa < 0 or size < 0 or gpa + size > self.ram_size:
            raise ValueError(f"guest-physical [{gpa:#x}, +{size:#x}) outside RAM")
        out = bytearray()
        while size:
            n = min(size, PAGE - (gpa & 0xFFF))
            ma = self.gpa_to_ma(gpa)
            out += self.mem[ma : ma + n]
            gpa, size = gpa + n, size - n
        return bytes(out)

    def write(self, gpa: int, data: bytes) -> None:
        """Guest-physical store, page by page through p2m (ValueError outside guest RAM)."""
        if gpa < 0 or gpa + len(data) > self.ram_size:
            raise ValueError(f"guest-physical [{gpa:#x}, +{len(data):#x}) outside RAM")
        off = 0
        while off < len(data):
            n = min(len(data) - off, PAGE - (gpa & 0xFFF))
            ma = self.gpa_to_ma(gpa)
            self.mem[ma : ma + n] = data[off : off + n]
            gpa, off = gpa + n, off + n

    # -- the VMM-private pool --------------------------------------------------------------------------
    def alloc_frame(self) -> int | None:
        """A zeroed pool frame (machine frame number), None when the pool is exhausted."""
        if not self._free:
            return None
        mfn = self._free.pop()
        ma = mfn << PAGE_SHIFT
        self.mem[ma : ma + PAGE] = _ZERO_PAGE
        return mfn

    def free_frame(self, mfn: int) -> None:
        """Give a pool frame back."""
        if not 0 <= mfn < self.pool_frames:
            raise ValueError(f"machine frame {mfn:#x} is not a pool frame")
        self._free.append(mfn)

    @property
    def pool_free(self) -> int:
        return len(self._free)

    def is_pool(self, ma: int) -> bool:
        """Is machine address `ma` VMM-private (the shadow pool)?"""
        return 0 <= ma < self.pool_frames << PAGE_SHIFT
