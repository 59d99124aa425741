"""The shadow MMU's state in flat arrays, so the compiled engine core can read it without Python.

Why: the hot shadow-MMU exits (a hidden fault that fills one leaf of an existing shadow table, a
true fault to deliver) cost 30-90 us through Python and ~1 us in C (engines/core/mmu.c).  C cannot
walk Python dicts, so what the fast path needs lives here, in arrays both sides share through the
buffer protocol (C holds a Py_buffer of each: none of them can be resized while it does):

* per pool frame (machine frame `mfn` < pool_frames): `meta` = kind, key frame, PDE access bits,
  the guest frame it shadows (-1 none), the next pool frame shadowing the same guest frame (+1,
  0 ends the chain); `used` = last-use tick (the evictor's LRU order); `snaps` = one 4 KiB snapshot
  per pool frame (the guest table as it was at the last sync);
* per guest frame: `protect` (why the frame is write-protected in every shadow: reason bits, 0 =
  not protected - ONE notion whatever the reason, read by the C fill and by `ShadowMMU._protected`),
  `flood` (emulated writes since the last walk through it), `head` (first pool frame shadowing it
  + 1: the chain the A/D-bit writer follows to keep every snapshot of that frame in step);
* `ctl`: the tick, the current root, the deferred-queue length, the ROM range, the tracking mode,
  whether the C path may run, and what C did since Python last looked (counters, log length);
* `watched`: one byte per linear page, set while `ShadowMMU.watched` holds the page (a fault there
  may have to call the watcher first: C leaves it to Python);
* `defq`: the deferred queue (ShadowMMU.deferred: SetPxE with DEFER or in lazy mode), appended to
  by both sides, applied by Python only;
* `log`: the writable-leaf changes C made (Python's reverse map `wmap` and `ShadowPage.writable`
  must learn them): 4 ints each, (mfn << 10 | index, dropped a writable leaf, its guest frame,
  new writable guest frame or -1).  Python replays it at the start of every MMU entry point.

Python stays the only one that creates and frees shadow pages, evicts, resyncs and unshadows; C
only fills a leaf of a table Python linked, sets the guest's A/D bits, and counts.
"""

from __future__ import annotations

import mmap
from array import array

from vmirom.machine.mmu.bits import PAGE

# meta: fields per pool frame
META = 5
M_KIND, M_KEY, M_ACC, M_GFN, M_NEXT = range(META)
# kinds of shadow page (ShadowPage.key[0])
K_FREE, K_PD, K_PHYSROOT, K_PT, K_BIG, K_PHYS = range(6)
KINDS = {"pd": K_PD, "phys-root": K_PHYSROOT, "pt": K_PT, "big": K_BIG, "phys": K_PHYS}

# ctl slots
C_TICK, C_ROOT, C_DEFERRED, C_ROM_START, C_ROM_END, C_TRACKING, C_ENABLED = range(7)
C_HIDDEN, C_TRUE, C_LOGN, C_DIRTY, C_LAZY, C_PV, C_PREFILL, C_ZAP, C_FLUSH, C_DEFER_UPD = range(7, 17)
C_CODE_START, C_CODE_END = 17, 18  # the kernel image's span (GuestMemory.code_span): VMM stores there
C_V2_BATCHED, C_V2_FLUSHES = 19, 20  # vmi2's batch flushes done in C (Vmi2.batched, batch_flushes add them)
C_WP_TRAPS, C_EMULATED = 21, 22  # fullvirt's page-table stores emulated in C (MmuStats adds them)
C_WP_EMULATE = 23  # set by the glue: the personality's on_wp_trap is FullVirt's, C may emulate its stores
CTL = 32
#: the deferred queue (DEFER / lazy mode): guest entry addresses whose shadows wait for the flush
DEFQ_CAP = 1024

#: records in the log ring (C falls back to Python when it is full)
LOG_CAP = 256
LOG_REC = 4
#: log record ops (core.h): a leaf set or zapped (bit 0: it dropped a writable leaf), a slot unlinked
LOG_LEAF_DROPPED, LOG_UNLINK = 1, 2

# protection reasons (bits of `protect`)
PROT_TABLE = 1  # a shadowed guest page table under write-protection tracking (fullvirt)
PROT_OTHER = 2  # ShadowMMU.protect's reasons (the descriptor tables of machine/dtguard.py)


class SharedState:
    """The arrays (see the module docstring).  Sizes are fixed for the machine's life."""

    def __init__(self, pool_frames: int, ram_frames: int) -> None:
        self.meta = array("i", [0]) * (pool_frames * META)
        self.used = array("q", [0]) * pool_frames
        # the two big ones are anonymous mappings: zero pages cost no host memory until written
        # (a bytearray of the same size is zero-filled at once: 16 MiB per machine for the arena)
        self.snaps = mmap.mmap(-1, pool_frames * PAGE)
        self.snapview = memoryview(self.snaps)
        self.protect = bytearray(ram_frames)
        self.flood = bytearray(ram_frames)
        self.head = array("i", [0]) * ram_frames
        self.ctl = array("q", [0]) * CTL
        self.log = array("i", [0]) * (LOG_CAP * LOG_REC)
        self.defq = array("I", [0]) * DEFQ_CAP  # ctl[C_DEFERRED] entries in use
        #: per linear page: 1 when ShadowMMU.watched holds it (its faults are Python's)
        self.watched = mmap.mmap(-1, 1 << 20)
        #: per page-table index (vpn & 0x3FF): how many watched linear pages have it (SetPxE's prefill)
        self.watched_low = array("i", [0]) * 1024

    def snap(self, mfn: int) -> memoryview:
        """The snapshot slot of pool frame `mfn`."""
        return self.snapview[mfn * PAGE : (mfn + 1) * PAGE]

    def link(self, mfn: int, kind: int, key: int, acc: int, gfn: int) -> None:
        """Pool frame `mfn` now holds a shadow page; chained under guest frame `gfn` when >= 0."""
        b = mfn * META
        meta = self.meta
        meta[b + M_KIND], meta[b + M_KEY], meta[b + M_ACC], meta[b + M_GFN] = kind, key, acc, gfn
        meta[b + M_NEXT] = 0
        if gfn >= 0:
            meta[b + M_NEXT] = self.head[gfn]
            self.head[gfn] = mfn + 1

    def unlink(self, mfn: int) -> None:
        """Pool frame `mfn` is free again (out of its guest frame's chain)."""
        b = mfn * META
        meta = self.meta
        gfn = meta[b + M_GFN]
        if gfn >= 0:
            prev, cur = -1, self.head[gfn]
            while cur and cur - 1 != mfn:
                prev, cur = cur - 1, meta[(cur - 1) * META + M_NEXT]
            if cur:
                if prev < 0:
                    self.head[gfn] = meta[b + M_NEXT]
                else:
                    meta[prev * META + M_NEXT] = meta[b + M_NEXT]
        meta[b : b + META] = array("i", (K_FREE, 0, 0, -1, 0))


class WatchedPages(dict):
    """`ShadowMMU.watched` (linear page -> guest frame), mirrored into the per-linear-page byte map
    the compiled core reads.  Only the mutators the MMU's users call are mirrored."""

    def __init__(self, shared: SharedState) -> None:
        super().__init__()
        self._flags = shared.watched
        self._low = shared.watched_low

    def __setitem__(self, vpn: int, gfn: int) -> None:
        if vpn not in self:
            self._flags[vpn & 0xFFFFF] = 1
            self._low[vpn & 0x3FF] += 1
        super().__setitem__(vpn, gfn)

    def _gone(self, vpn: int) -> None:
        self._flags[vpn & 0xFFFFF] = 0
        self._low[vpn & 0x3FF] -= 1

    def __delitem__(self, vpn: int) -> None:
        super().__delitem__(vpn)
        self._gone(vpn)

    def pop(self, vpn: int, *default):  # noqa: ANN002, ANN201 - dict.pop's signature
        if vpn in self:
            self._gone(vpn)
        return super().pop(vpn, *default)

    def clear(self) -> None:
        for vpn in self:
            self._gone(vpn)
        super().clear()

    def setdefault(self, vpn: int, gfn: int):  # noqa: ANN201
        if vpn not in self:
            self[vpn] = gfn
        return self[vpn]

    def update(self, *args, **kw) -> None:  # noqa: ANN002, ANN003
        for vpn, gfn in dict(*args, **kw).items():
            self[vpn] = gfn
