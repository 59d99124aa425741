"""The shadow MMU: the page tables the CPU really walks, built from the guest's own.

Why: a de-privileging hypervisor without nested paging (the VMI era) cannot let the CPU walk the
guest's page tables - they name guest-physical frames, and the CPU needs machine frames the guest
must not choose.  So the VMM keeps *shadow* page tables in its own memory (`PhysMap`'s pool) and
points the CPU's CR3 at them; the guest's CR0/CR3/CR4 are virtual registers kept here.

The model (see docs/mmu.md for the diagram and the reasons behind each heuristic):

- **One shadow directory per guest address space**, keyed by the guest CR3's frame and cached, so a
  context switch back to a known address space finds its shadow intact (no rebuild).  Guest paging
  off runs on one identity shadow of guest-physical memory.
- **Shadow tables keyed by (guest table frame, PDE access bits)**, shared by every directory that
  points at that frame (the kernel half of all address spaces shares one set).  The CPU ANDs the
  directory's and the table's U/W bits; the shadow directory entries grant everything and the leaf
  carries the combined rights, so one shadow table is exact for one PDE access class.  A 4 MiB
  guest page (PSE) is split into a shadow table of 4 KiB entries keyed by its base.
- **Lazy fill.**  Shadow entries start not present.  The CPU faults; `fault()` walks the guest's
  tables: if the guest allows the access the fault is *hidden* (fill, retry, never delivered);
  otherwise it is a *true* fault, returned with the error code and CR2 the guest's CPU would give.
- **Accessed / Dirty bits live in the guest's entries**, set by `fault()` exactly when the SDM's
  CPU would set them: A on the first use of a translation (PDE and PTE), D on the first write
  through it.  A clean page is shadowed read-only, so its first write faults (hidden) and sets D.
- **Staleness exactly as a TLB's.**  A shadow entry behaves like a TLB entry: a guest table frame
  whose writes the VMM sees (write-protected in "wp" tracking, announced with AllocatePage in "pv"
  tracking) is kept in sync at every write; any other shadowed table is compared with a snapshot at
  `invlpg` (that one address), at a CR3 load (every non-global entry) and at a full flush (all), so
  an update the VMM did not see is used no later than a real CPU would use it.
- **Write-protection tracking ("wp", fullvirt).**  Every guest frame with a shadow is mapped
  read-only in every shadow; a guest store to it returns `WP_TRAP` (the caller decodes and emulates
  the store through `emulated_write`, which updates the shadows).  Heuristics taken from production
  shadow MMUs: a frame that takes FLOOD_LIMIT emulated writes with no page walk through it in
  between stops being shadowed (it was freed and reused as data); a store the caller cannot emulate
  as one entry (string stores, odd sizes) unshadows the frame at once ("unprotect and re-execute").
- **Paravirtual updates ("pv", vmi/vmi2).**  SetPxE/UpdatePxE write the guest entry and update the
  shadow in one call (`set_pxe`), with DEFER / lazy mode queueing the shadow side until the batch is
  flushed; AllocatePage/ReleasePage tell which frames are tables (`allocate_page`/`release_page`);
  InvalPage/FlushTLB/SetCR3 are `invlpg`/`flush_tlb`/`set_cr3`.  A guest that writes its tables
  behind the VMM's back only gets stale translations of its own memory.
- **Frames protected for another reason** (`protect`): the live GDT/LDT of a de-privileged kernel
  (PROTECT_DESCRIPTORS, machine/dtguard.py) are write-protected like "wp" page tables, in either
  tracking mode: a store returns WP_TRAP and `protection(gfn)` tells the caller whose trap it is.
  Their *linear* pages are `watched`: a fill mapping one to a frame other than the one the VMM
  validated for it calls `on_remap` first (no prefill there), so the CPU never reaches such a table
  through a mapping the VMM did not see.
- **Isolation by construction.**  Shadow leaves are built only from `PhysMap.p2m` of a guest RAM
  frame, so no shadow ever maps the pool (shadow tables) or any other machine memory; a guest entry
  naming a frame outside RAM gives `BAD_PHYS`, a write to the ROM `ROM_WRITE` (fates for the
  caller).  The pool is fixed: running out evicts least-recently-used shadow pages, so host memory
  stays bounded whatever the guest's tables look like.

The engine's own paging runs with CR0.WP=1, CR4.PSE=0 and CR4.PGE=0 on these tables; whenever a
shadow entry loses rights `need_flush` is set and the caller flushes the engine's TLB.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from vmirom.machine.mmu.bits import (
    BIG_MASK,
    CR0_PG,
    CR0_WP,
    CR4_PGE,
    CR4_PSE,
    ENTRIES,
    FRAME_MASK,
    PAGE_SHIFT,
    PFERR_P,
    PFERR_U,
    PFERR_W,
    PS,
    RW,
    US,
    A,
    D,
    G,
    P,
)
from vmirom.machine.mmu.physmap import PhysMap
from vmirom.machine.mmu.shared import (
    C_CODE_END,
    C_CODE_START,
    C_DEFER_UPD,
    C_DEFERRED,
    C_DIRTY,
    C_EMULATED,
    C_FLUSH,
    C_HIDDEN,
    C_LAZY,
    C_LOGN,
    C_PREFILL,
    C_PV,
    C_ROM_END,
    C_ROM_START,
    C_ROOT,
    C_TICK,
    C_TRACKING,
    C_TRUE,
    C_WP_TRAPS,
    C_ZAP,
    KINDS,
    LOG_LEAF_DROPPED,
    LOG_REC,
    LOG_UNLINK,
    PROT_OTHER,
    PROT_TABLE,
    SharedState,
    WatchedPages,
)

_U32 = struct.Struct("<I")
_TABLE = struct.Struct(f"<{ENTRIES}I")

#: emulated writes to one shadowed frame, with no page walk through it in between, before the VMM
#: stops shadowing it (KVM's "write flooding" threshold)
FLOOD_LIMIT = 3
#: free pool frames the evictor makes room for in one go (amortizes the LRU sort)
EVICT_BATCH = 16

HIDDEN, TRUE_FAULT, WP_TRAP, ROM_WRITE, BAD_PHYS = "hidden", "fault", "wp_trap", "rom_write", "bad_phys"
#: why a frame is write-protected (`ShadowMMU.protection`): a shadowed guest page table ("wp"
#: tracking), or a page of a de-privileged kernel's live descriptor tables (machine/dtguard.py)
PROTECT_PAGE_TABLE, PROTECT_DESCRIPTORS = "page_table", "descriptors"


class MmuError(Exception):
    """The shadow MMU cannot go on (e.g. a pool too small for one address space's walk)."""


@dataclass(slots=True)
class FaultResult:
    """What a CPU page fault on the shadows turned out to be.

    kind: HIDDEN (filled: retry the instruction, nothing reaches the guest), TRUE_FAULT (deliver
    #PF with `error_code`, CR2 = `cr2`), WP_TRAP (a guest-permitted store to a write-protected
    guest page table at guest-physical `gpa`: emulate it), ROM_WRITE (a guest-permitted store to the
    read-only ROM at `gpa`), BAD_PHYS (the guest's tables name guest-physical `gpa` outside RAM)."""

    kind: str
    error_code: int = 0
    cr2: int = 0
    gpa: int = -1


@dataclass(eq=False, slots=True)
class ShadowPage:
    """One shadow table in a pool frame.

    level 2: a shadow directory (a root); `children` maps directory index -> linked shadow table.
    level 1: a shadow table; `parents` holds the (root machine frame, index) entries pointing at it.
    `gfn` is the guest table frame it shadows (-1 for the split of a 4 MiB page and for the
    identity shadow); `snap` the guest frame's content at its last sync (a slot of the shared
    snapshot arena, see shared.py).  Its last-use tick is `ShadowMMU.shared.used[mfn]`."""

    mfn: int
    key: tuple
    level: int
    gfn: int
    snap: memoryview | None
    parents: set[tuple[int, int]] = field(default_factory=set)
    children: dict[int, ShadowPage] = field(default_factory=dict)
    #: level 1: index -> guest frame of every writable leaf (so freeing the page is not a scan)
    writable: dict[int, int] = field(default_factory=dict)


@dataclass
class MmuStats:
    """Counters of the shadow MMU (events, not all of them exits: the machine counts exits)."""

    hidden_faults: int = 0
    true_faults: int = 0
    wp_traps: int = 0  # stores to write-protected page tables ("wp" tracking)
    desc_traps: int = 0  # stores to protected descriptor-table frames (machine/dtguard.py)
    emulated_pte_writes: int = 0
    pv_updates: int = 0
    deferred_updates: int = 0
    syncs: int = 0  # shadow pages compared with the guest table and found changed
    zaps: int = 0  # shadow entries dropped because the guest entry changed
    prefills: int = 0  # shadow entries filled when the guest wrote them (no hidden fault later)
    unshadows: int = 0  # frames no longer shadowed (flood / unemulatable store / release)
    evictions: int = 0  # shadow pages reclaimed for lack of pool frames
    roots_created: int = 0
    root_hits: int = 0  # CR3 loads that found their shadow cached
    pages_created: int = 0
    peak_pages: int = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class ShadowMMU:
    """Shadow page tables for one vCPU.  `tracking`: "wp" (trace guest tables by write protection,
    fullvirt) or "pv" (the guest announces its updates: the VMI MMU calls)."""

    def __init__(
        self,
        physmap: PhysMap,
        *,
        tracking: str = "wp",
        rom: tuple[int, int] | None = None,
        event: Callable[[str], None] | None = None,
    ) -> None:
        if tracking not in ("wp", "pv"):
            raise ValueError(f"unknown tracking {tracking!r}")
        self.pm = physmap
        self.tracking = tracking
        #: the state the compiled engine core reads and writes (shared.py); flood counts and the
        #: protected frames live there, per guest frame
        self.shared = SharedState(physmap.pool_frames, physmap.ram_frames)
        self._ctl = self.shared.ctl
        self._ctl[C_TRACKING] = 0 if tracking == "wp" else 1
        #: guest-physical [start, end) of the read-only ROM (writes there are ROM_WRITE)
        self.rom = rom or (0, 0)
        self.cr0 = 0
        self.cr3 = 0
        self.cr4 = 0
        self._stats = MmuStats()
        #: called with "mmu:<event>" for bookkeeping inside exits (the machine's Metrics.event)
        self.event = event or (lambda key: None)
        self.pages: dict[int, ShadowPage] = {}  # by machine frame
        self.by_key: dict[tuple, ShadowPage] = {}
        self.by_gfn: dict[int, list[ShadowPage]] = {}  # shadowed guest table frames
        self.wmap: dict[int, set[tuple[int, int]]] = {}  # guest frame -> writable leaves (mfn, index)
        self.flood = self.shared.flood  # guest frame -> emulated writes since the last walk
        #: guest frame -> why it is write-protected (bits: PROT_TABLE, PROT_OTHER; 0: it is not)
        self.prot_bits = self.shared.protect
        self.trusted: set[int] = set()  # pv: frames announced as page tables
        #: guest frame -> reason (PROTECT_DESCRIPTORS): write-protected in every shadow whatever the
        #: guest's tables say, in both tracking modes (page tables of "wp" tracking are protected
        #: through `by_gfn`, see `protection`); both end in the one byte per frame `prot_bits`
        self.protected: dict[int, str] = {}
        #: linear page -> guest frame the owner of the protection validated for it (-1: none yet);
        #: the compiled core leaves every fault on a watched page to Python (shared.WatchedPages)
        self.watched = WatchedPages(self.shared)
        #: called as on_remap(va, gfn) before a fill maps a watched linear page to another frame
        self.on_remap: Callable[[int, int], None] | None = None
        self.lazy = False
        #: a shadow entry lost rights: the engine's TLB must be flushed (the caller clears it)
        self.need_flush = False
        self.root = self._get_root()

    # -- state shared with the compiled engine core ------------------------------------------------
    @property
    def root(self) -> ShadowPage:
        """The current shadow directory (the CPU's CR3)."""
        return self._root

    @root.setter
    def root(self, page: ShadowPage) -> None:
        self._root = page
        self._ctl[C_ROOT] = page.mfn

    @property
    def rom(self) -> tuple[int, int]:
        return self._rom_range

    @rom.setter
    def rom(self, value: tuple[int, int]) -> None:
        self._rom_range = (value[0], value[1])
        self._ctl[C_ROM_START], self._ctl[C_ROM_END] = value

    @property
    def code_span(self) -> tuple[int, int]:
        """Guest-physical [start, end) of the kernel image: a VMM store there must reach
        `GuestMemory.vmm_wrote` (stale translations), so the compiled core's SetPxE leaves it to Python."""
        return self._ctl[C_CODE_START], self._ctl[C_CODE_END]

    @code_span.setter
    def code_span(self, span: tuple[int, int]) -> None:
        self._ctl[C_CODE_START], self._ctl[C_CODE_END] = span

    def pull(self) -> None:
        """Take in what the compiled core did since Python last looked: its counters and the
        writable leaves it made or dropped (replayed into `wmap` / `ShadowPage.writable`).  Called
        at the start of every entry point; costs one array read when C did nothing."""
        ctl = self._ctl
        if not ctl[C_DIRTY]:
            return
        ctl[C_DIRTY] = 0
        st = self._stats
        st.hidden_faults += ctl[C_HIDDEN]
        st.true_faults += ctl[C_TRUE]
        st.pv_updates += ctl[C_PV]
        st.prefills += ctl[C_PREFILL]
        st.zaps += ctl[C_ZAP]
        st.deferred_updates += ctl[C_DEFER_UPD]
        st.wp_traps += ctl[C_WP_TRAPS]
        st.emulated_pte_writes += ctl[C_EMULATED]
        ctl[C_HIDDEN] = ctl[C_TRUE] = ctl[C_PV] = ctl[C_PREFILL] = ctl[C_ZAP] = ctl[C_DEFER_UPD] = 0
        ctl[C_WP_TRAPS] = ctl[C_EMULATED] = 0
        if ctl[C_FLUSH]:  # SetPxE in C without its hook's flush (synthetic exits): the caller's
            ctl[C_FLUSH] = 0
            self.need_flush = True
        n, ctl[C_LOGN] = ctl[C_LOGN], 0
        log, pages, wmap = self.shared.log, self.pages, self.wmap
        for r in range(0, n * LOG_REC, LOG_REC):
            where, op, old, new = log[r : r + LOG_REC]
            mfn, i = where >> 10, where & 0x3FF
            page = pages[mfn]
            if op == LOG_UNLINK:
                child = page.children.pop(i, None)
                if child is not None:
                    child.parents.discard((mfn, i))
                continue
            if op & LOG_LEAF_DROPPED:
                leaves = wmap.get(old)
                if leaves is not None:
                    leaves.discard((mfn, i))
                page.writable.pop(i, None)
            if new >= 0:
                wmap.setdefault(new, set()).add((mfn, i))
                page.writable[i] = new

    @property
    def stats(self) -> MmuStats:
        """The counters, with what the compiled core counted folded in."""
        if self._ctl[C_DIRTY]:
            self.pull()
        return self._stats

    @property
    def _tick(self) -> int:
        return self._ctl[C_TICK]

    # -- guest control registers ----------------------------------------------------------------------
    @property
    def paging(self) -> bool:
        return bool(self.cr0 & CR0_PG)

    @property
    def root_ma(self) -> int:
        """Machine address of the current shadow directory: the CPU's real CR3."""
        return self.root.mfn << PAGE_SHIFT

    @property
    def shadow_pages(self) -> int:
        """Pool frames holding shadow tables now."""
        return len(self.pages)

    def summary(self) -> dict:
        """For the run summary: the counters, and the pool as it is now."""
        self.pull()
        return {
            **self.stats.as_dict(),
            "tracking": self.tracking,
            "shadow_pages": len(self.pages),
            "pool_frames": self.pm.pool_frames,
            "address_spaces": sum(1 for p in self.pages.values() if p.level == 2),
            "protected_frames": (len(self.by_gfn) if self.tracking == "wp" else 0) + len(self.protected),
            "descriptor_frames": len(self.protected),
        }

    def set_cr0(self, value: int) -> int:
        """The guest loads CR0; returns the CPU's CR3 (the root may change with PG or WP)."""
        self.pull()
        old, self.cr0 = self.cr0, value & 0xFFFFFFFF
        if (old ^ self.cr0) & CR0_WP:
            self._reset()  # leaves built under one WP rule are wrong under the other
        elif (old ^ self.cr0) & CR0_PG:
            self._switch_root()
        return self.root_ma

    def set_cr4(self, value: int) -> int:
        """The guest loads CR4: PSE changes how directories read (rebuild); toggling PGE flushes the
        global entries too (SDM 4.10.4.1)."""
        self.pull()
        old, self.cr4 = self.cr4, value & 0xFFFFFFFF
        if (old ^ self.cr4) & CR4_PSE:
            self._reset()
        elif (old ^ self.cr4) & CR4_PGE:
            self.flush_tlb(include_global=True)
        return self.root_ma

    def set_cr3(self, value: int) -> int:
        """The guest loads CR3: switch to that address space's cached shadow (or a new one); entries
        the VMM could not watch are resynced as a CPU would drop its non-global TLB entries."""
        self.pull()
        self.flush_deferred()
        self.cr3 = value & 0xFFFFFFFF
        self._switch_root()
        if self.paging:
            self._resync_reachable(include_global=False)
        return self.root_ma

    def invlpg(self, va: int) -> None:
        """The guest invalidates one linear address: its shadow entries are brought up to date."""
        self.pull()
        self.flush_deferred()
        self.need_flush = True
        if not self.paging:
            return
        root, i = self.root, (va >> 22) & 0x3FF
        if not self._synced(root):
            self._resync_entry(root, i)
        child = root.children.get(i)
        if child is not None and not self._synced(child):
            self._resync_entry(child, (va >> 12) & 0x3FF)

    def flush_tlb(self, include_global: bool = False) -> None:
        """FlushTLB / a CR3 reload of the same value: every unwatched non-global entry (all of them
        with `include_global`) of the current address space is resynced."""
        self.pull()
        self.flush_deferred()
        self.need_flush = True
        if self.paging:
            self._resync_reachable(include_global)

    # -- the fault path ---------------------------------------------------------------------------------
    def fault(self, va: int, *, write: bool | None, user: bool) -> FaultResult:
        """The CPU faulted at linear `va` walking the shadows.  Decide hidden vs true and fill.

        `write` None: the CPU did not say (Unicorn gives no #PF error code).  Then the shadow tells:
        a fault on a present shadow entry the access class could read can only be a write; anything
        else is taken as a read first (a write then faults once more on the read-only fill, which
        is the price of not decoding the instruction on the hot path).  The error code of a true
        fault found this way may lack W: the caller recomputes it from the guest's tables."""
        self.pull()
        if self._ctl[C_DEFERRED]:
            self.flush_deferred()
        va &= 0xFFFFFFFF
        self._ctl[C_TICK] += 1
        if write is None:
            write = self._readable(va, user)
            if write:
                self.need_flush = True  # present and readable yet faulted: no stale TLB entry either
        if not self.paging:
            return self._fault_phys(va, write)
        err = (PFERR_W if write else 0) | (PFERR_U if user else 0)
        pd_gfn = self.cr3 >> PAGE_SHIFT
        pde_gpa = (self.cr3 & FRAME_MASK) | ((va >> 22) << 2)
        pde = self.pm.guest_u32(pde_gpa)
        if pde is None:
            return FaultResult(BAD_PHYS, gpa=pde_gpa)
        if not pde & P:
            return self._true(err, va)
        big = bool(pde & PS and self.cr4 & CR4_PSE)
        if big:
            entry, entry_gpa = pde, pde_gpa
            frame = (pde & BIG_MASK) | (va & 0x3FF000)
            eff = pde
        else:
            pte_gpa = (pde & FRAME_MASK) | ((va >> 10) & 0xFFC)
            pte = self.pm.guest_u32(pte_gpa)
            if pte is None:
                return FaultResult(BAD_PHYS, gpa=pte_gpa)
            if not pte & P:
                return self._true(err, va)
            entry, entry_gpa = pte, pte_gpa
            frame = pte & FRAME_MASK
            eff = pde & pte
        wp = self.cr0 & CR0_WP
        if user and not eff & US or write and not eff & RW and (user or wp):
            return self._true(err | PFERR_P, va)
        # the guest's CPU would use this translation: Accessed (and Dirty) in the guest's entries
        if not big and not pde & A:
            pde |= A
            self._guest_set(pde_gpa, pde)
        new = entry | A | (D if write else 0)
        if new != entry:
            self._guest_set(entry_gpa, new)
            entry = new
        gfn = frame >> PAGE_SHIFT
        gpa = frame | (va & 0xFFF)
        if gfn >= self.pm.ram_frames:
            return FaultResult(BAD_PHYS, gpa=gpa)
        if write and self.rom[0] <= frame < self.rom[1]:
            return FaultResult(ROM_WRITE, gpa=gpa)
        if self.watched and self.watched.get(va >> PAGE_SHIFT, gfn) != gfn:
            self.on_remap(va, gfn)
        if write and self._protected(gfn):
            self._count_trap(gfn)
            return FaultResult(WP_TRAP, gpa=gpa)
        # a walk through these guest tables: they are page tables after all (flood heuristic)
        self.flood[pd_gfn] = 0
        if big:
            key = ("big", (pde & BIG_MASK) >> PAGE_SHIFT, pde & (RW | US))
            table = self._child(self.root, va >> 22, key, -1)
        else:
            pt_gfn = pde >> PAGE_SHIFT
            self.flood[pt_gfn] = 0
            table = self._child(self.root, va >> 22, ("pt", pt_gfn, pde & (RW | US)), pt_gfn)
        if eff & RW:
            writable = entry & D and not self._protected(gfn) and not self._rom(gfn)
            flags = P | (eff & US) | (RW if writable else 0)
        elif write:  # CR0.WP=0, supervisor store to a read-only page: writable, supervisor-only
            flags = P | RW
        else:
            flags = P | (eff & US)
        self._set_leaf(table, (va >> 12) & 0x3FF, gfn, flags)
        # the snapshots hold what the shadow was built from, so an entry the guest changes back to
        # its last synced value behind our back is still seen as changed at the next resync
        self._snap_used(self.root, va >> 22, pde if not big else entry)
        if not big:
            self._snap_used(table, (va >> 12) & 0x3FF, entry)
        self.stats.hidden_faults += 1
        return FaultResult(HIDDEN)

    @staticmethod
    def _snap_used(page: ShadowPage, i: int, value: int) -> None:
        if page.snap is not None:
            _U32.pack_into(page.snap, i << 2, value)

    def _fault_phys(self, va: int, write: bool) -> FaultResult:
        """Guest paging off: the identity shadow of guest-physical memory."""
        gfn = va >> PAGE_SHIFT
        if gfn >= self.pm.ram_frames:
            return FaultResult(BAD_PHYS, gpa=va)
        if write and self._rom(gfn):
            return FaultResult(ROM_WRITE, gpa=va)
        if self.watched and self.watched.get(gfn, gfn) != gfn:
            self.on_remap(va, gfn)
        if write and self._protected(gfn):
            self._count_trap(gfn)
            return FaultResult(WP_TRAP, gpa=va)
        table = self._child(self.root, va >> 22, ("phys", va >> 22), -1)
        rw = RW if not self._protected(gfn) and not self._rom(gfn) else 0
        self._set_leaf(table, (va >> 12) & 0x3FF, gfn, P | US | rw)
        self.stats.hidden_faults += 1
        return FaultResult(HIDDEN)

    def _readable(self, va: int, user: bool) -> bool:
        """Does the shadow let this access class read `va` (so a fault there was a write)?"""
        mem = self.pm.mem
        pde = _U32.unpack_from(mem, (self.root.mfn << PAGE_SHIFT) | ((va >> 22) << 2))[0]
        if not pde & P:
            return False
        leaf = _U32.unpack_from(mem, (pde & FRAME_MASK) | ((va >> 10) & 0xFFC))[0]
        return bool(leaf & P) and (not user or bool(leaf & US))

    def shadow_present(self, va: int, *, user: bool = False) -> bool:
        """Does the current shadow let this access class read `va` with no fault?"""
        return self._readable(va, user)

    def shadow_writable(self, va: int, *, user: bool) -> bool:
        """Does the current shadow let this access class write `va` with no fault?"""
        mem = self.pm.mem
        pde = _U32.unpack_from(mem, (self.root.mfn << PAGE_SHIFT) | ((va >> 22) << 2))[0]
        if not pde & P:
            return False
        leaf = _U32.unpack_from(mem, (pde & FRAME_MASK) | ((va >> 10) & 0xFFC))[0]
        return leaf & (P | RW) == P | RW and (not user or bool(leaf & US))

    def _true(self, err: int, va: int) -> FaultResult:
        self.stats.true_faults += 1
        return FaultResult(TRUE_FAULT, error_code=err, cr2=va)

    # -- guest table updates the VMM sees ---------------------------------------------------------------
    def emulated_write(self, gpa: int, data: bytes) -> None:
        """A trapped guest store to a write-protected table frame, decoded and emulated by the caller:
        store it and update every shadow of that frame.  (Flood heuristic: FLOOD_LIMIT such writes
        without a walk through the frame unshadow it.)"""
        self.pull()
        self.stats.emulated_pte_writes += 1
        self.event("mmu:emulated_pte_write")
        self.pm.write(gpa, data)
        gfn = gpa >> PAGE_SHIFT
        if (gpa & 3) or len(data) != 4:
            self.unshadow(gfn)  # not one entry: the frame is being used as data
            return
        self._entry_changed(gpa)
        n = min(self.flood[gfn] + 1, 255)
        self.flood[gfn] = n
        if n >= FLOOD_LIMIT:
            self.unshadow(gfn)

    def set_pxe(self, gpa: int, value: int, *, defer: bool = False) -> None:
        """SetPxE/UpdatePxE: write the guest entry and its shadows in one go (no trap, no decode).
        With `defer` (the DEFER flag) or in lazy MMU mode the shadow side waits for the flush."""
        self.pull()
        self.stats.pv_updates += 1
        self.event("mmu:pv_update")
        self.pm.set_guest_u32(gpa, value)
        if defer or self.lazy:
            self.stats.deferred_updates += 1
            self.event("mmu:deferred_update")
            self.defer_entry(gpa)
        else:
            self._entry_changed(gpa)

    def defer_entry(self, gpa: int) -> None:
        """The guest entry at `gpa` changed; its shadows follow at the next flush (UpdatePxE with
        DEFER).  The queue's length is shared: the compiled core's fault path leaves every fault
        to Python while it is not empty (Python applies the queue first)."""
        self.pull()
        n = self._ctl[C_DEFERRED]
        if n == len(self.shared.defq):  # full: applied now (earlier than needed is never wrong)
            self.flush_deferred()
            n = 0
        self.shared.defq[n] = gpa & ~3
        self._ctl[C_DEFERRED] = n + 1

    @property
    def deferred(self) -> list[int]:
        """The queued guest entry addresses (shared.defq), oldest first."""
        return self.shared.defq[: self._ctl[C_DEFERRED]].tolist()

    def entry_written(self, gpa: int) -> None:
        """The guest entry at `gpa` was written by other means the VMM knows of (a batch log, the
        VMM's own store into guest memory): update its shadows."""
        self.pull()
        self._entry_changed(gpa & ~3)

    def memory_written(self, gpa: int, size: int) -> None:
        """The VMM stored `size` bytes at guest-physical `gpa` (not as a page-table update): any
        shadowed table among them is resynced."""
        self.pull()
        first, last = gpa >> PAGE_SHIFT, (gpa + max(size, 1) - 1) >> PAGE_SHIFT
        for gfn in range(first, last + 1):
            for page in list(self.by_gfn.get(gfn, ())):
                self._resync_page(page, include_global=True)

    def set_lazy(self, on: bool) -> None:
        """SetLazyMode(MMU) on/off: leaving lazy mode applies the queued shadow updates."""
        self.pull()
        self.lazy = on
        self._ctl[C_LAZY] = int(on)
        if not on:
            self.flush_deferred()

    def flush_deferred(self) -> None:
        """Apply the queued (DEFER / lazy) shadow updates in order."""
        self.pull()
        if self._ctl[C_DEFERRED]:
            pending = self.deferred
            self._ctl[C_DEFERRED] = 0
            for gpa in pending:
                self._entry_changed(gpa)

    def allocate_page(self, gfn: int) -> None:
        """AllocatePage: the guest will use frame `gfn` as a page table and update it with SetPxE."""
        self.pull()
        if self.tracking == "pv":
            for page in list(self.by_gfn.get(gfn, ())):
                self._resync_page(page, include_global=True)
            self.trusted.add(gfn)

    def release_page(self, gfn: int) -> None:
        """ReleasePage: frame `gfn` is no longer a page table: drop its shadows."""
        self.trusted.discard(gfn)
        self.unshadow(gfn)

    def unshadow(self, gfn: int) -> bool:
        """Stop shadowing guest frame `gfn` (its writes no longer trap).  The current root cannot go
        (the CPU walks it): it is emptied instead and stays.  False if nothing was shadowed."""
        self.pull()
        pages = self.by_gfn.get(gfn)
        if not pages:
            return False
        self.stats.unshadows += 1
        self.event("mmu:unshadow")
        for page in list(pages):
            if page is self.root:
                for i in list(page.children):
                    self._unlink(page, i)
                page.snap[:] = self.pm.guest_frame(gfn)
            else:
                self._zap_page(page)
        self.flood[gfn] = 0
        return True

    # -- shadow pages --------------------------------------------------------------------------------
    def _synced(self, page: ShadowPage) -> bool:
        """Does the VMM see every write to this page's guest frame (so it never needs a resync)?"""
        if page.gfn < 0:
            return True
        return self.tracking == "wp" or page.gfn in self.trusted

    def _protected(self, gfn: int) -> bool:
        """Is guest frame `gfn` write-protected in every shadow, for any reason?  The one set of
        protected frames (`prot_bits`, shared with the compiled core's fill: shared.py), kept equal to
        `gfn in protected or tracking == "wp" and gfn in by_gfn`."""
        return 0 <= gfn < len(self.prot_bits) and self.prot_bits[gfn] != 0

    def _count_trap(self, gfn: int) -> None:
        if gfn in self.protected:
            self._stats.desc_traps += 1
        else:
            self._stats.wp_traps += 1

    def protection(self, gfn: int) -> str | None:
        """Why guest frame `gfn` is write-protected (None: it is not); descriptors win."""
        reason = self.protected.get(gfn)
        if reason is None and self.tracking == "wp" and gfn in self.by_gfn:
            reason = PROTECT_PAGE_TABLE
        return reason

    def protect(self, gfn: int, reason: str) -> None:
        """Write-protect guest frame `gfn` in every shadow from now on, for `reason`."""
        if gfn not in self.protected:
            self.protected[gfn] = reason
            self._add_protection(gfn, PROT_OTHER)
            self._write_protect(gfn)

    def unprotect(self, gfn: int) -> None:
        """Drop `protect`'s protection (the leaves stay read-only until a write refills them)."""
        if self.protected.pop(gfn, None) is not None:
            self._drop_protection(gfn, PROT_OTHER)

    def _add_protection(self, gfn: int, bit: int) -> None:
        if 0 <= gfn < len(self.prot_bits):
            self.prot_bits[gfn] |= bit

    def _drop_protection(self, gfn: int, bit: int) -> None:
        if 0 <= gfn < len(self.prot_bits):
            self.prot_bits[gfn] &= ~bit & 0xFF

    def forget_linear(self, vpns) -> None:
        """Drop the shadow leaves of linear pages `vpns` in every shadow (their next use refills
        them through `fault`)."""
        self.pull()
        roots = [page for page in self.pages.values() if page.level == 2]
        for vpn in vpns:
            for root in roots:
                child = root.children.get(vpn >> 10)
                if child is not None:
                    self._zap_leaf(child, vpn & 0x3FF)

    def _rom(self, gfn: int) -> bool:
        return self.rom[0] <= gfn << PAGE_SHIFT < self.rom[1]

    def _get_root(self) -> ShadowPage:
        if not self.paging:
            key, gfn = ("phys-root",), -1
        else:
            gfn = self.cr3 >> PAGE_SHIFT
            key = ("pd", gfn)
        page = self.by_key.get(key)
        if page is None:
            page = self._new_page(key, 2, gfn if 0 <= gfn < self.pm.ram_frames else -1, keep=())
            self.stats.roots_created += 1
            self.event("mmu:root_new")
        else:
            self.stats.root_hits += 1
            self.event("mmu:root_hit")
        self.shared.used[page.mfn] = self._tick
        return page

    def _switch_root(self) -> None:
        self.root = self._get_root()
        self.need_flush = True

    def _reset(self) -> None:
        for page in list(self.pages.values()):
            if page.level == 1:
                self._zap_page(page)
        for page in list(self.pages.values()):
            self._zap_page(page, force=True)
        self.flood[:] = bytes(len(self.flood))
        self.root = self._get_root()
        self.need_flush = True

    def _new_page(self, key: tuple, level: int, gfn: int, keep: tuple) -> ShadowPage:
        mfn = self.pm.alloc_frame()
        if mfn is None:
            self._evict(keep)
            mfn = self.pm.alloc_frame()
            if mfn is None:
                raise MmuError("shadow pool exhausted by one address space")
        shared = self.shared
        snap = None
        if gfn >= 0:
            snap = shared.snap(mfn)
            snap[:] = self.pm.guest_frame(gfn)
        page = ShadowPage(mfn, key, level, gfn, snap)
        shared.used[mfn] = self._tick
        shared.link(mfn, KINDS[key[0]], key[1] if len(key) > 1 else 0, key[2] if len(key) > 2 else 0, gfn)
        self.pages[mfn] = page
        self.by_key[key] = page
        if gfn >= 0:
            first = gfn not in self.by_gfn
            self.by_gfn.setdefault(gfn, []).append(page)
            if first and self.tracking == "wp":
                self._add_protection(gfn, PROT_TABLE)
                self._write_protect(gfn)
        self.stats.pages_created += 1
        self.stats.peak_pages = max(self.stats.peak_pages, len(self.pages))
        return page

    def _write_protect(self, gfn: int) -> None:
        """`gfn` became a shadowed table: no shadow may keep mapping it writable."""
        leaves = self.wmap.pop(gfn, None)
        if not leaves:
            return
        mem = self.pm.mem
        for mfn, i in leaves:
            off = (mfn << PAGE_SHIFT) | (i << 2)
            _U32.pack_into(mem, off, _U32.unpack_from(mem, off)[0] & ~RW)
            self.pages[mfn].writable.pop(i, None)
        self.need_flush = True

    def _child(self, root: ShadowPage, i: int, key: tuple, gfn: int) -> ShadowPage:
        """The shadow table linked at directory index `i` of `root`, (re)linking the one for `key`."""
        child = root.children.get(i)
        if child is not None:
            if child.key == key:
                self.shared.used[child.mfn] = self._tick
                return child
            self._unlink(root, i)
        child = self.by_key.get(key)
        if child is None:
            child = self._new_page(key, 1, gfn, keep=(root,))
        elif not self._synced(child):
            self._resync_page(child, include_global=False)  # a cached table meets a new walk
        self.shared.used[child.mfn] = self._tick
        root.children[i] = child
        child.parents.add((root.mfn, i))
        if self.watched:  # a cached table linked here: its leaf in a watched page may map another frame
            mem = self.pm.mem
            for vpn, gfn in self.watched.items():
                if vpn >> 10 == i:
                    leaf = _U32.unpack_from(mem, (child.mfn << PAGE_SHIFT) | ((vpn & 0x3FF) << 2))[0]
                    if leaf & P and self.pm.m2p(leaf >> PAGE_SHIFT) != gfn:
                        self._zap_leaf(child, vpn & 0x3FF)
        pde = (child.mfn << PAGE_SHIFT) | P | RW | US
        _U32.pack_into(self.pm.mem, (root.mfn << PAGE_SHIFT) | (i << 2), pde)
        return child

    def _unlink(self, root: ShadowPage, i: int) -> None:
        child = root.children.pop(i, None)
        if child is None:
            return
        child.parents.discard((root.mfn, i))
        _U32.pack_into(self.pm.mem, (root.mfn << PAGE_SHIFT) | (i << 2), 0)
        self.need_flush = True

    def _set_leaf(self, table: ShadowPage, i: int, gfn: int, flags: int) -> None:
        off = (table.mfn << PAGE_SHIFT) | (i << 2)
        old = _U32.unpack_from(self.pm.mem, off)[0]
        if old & RW:
            self._wmap_drop(old, table.mfn, i)
        _U32.pack_into(self.pm.mem, off, (self.pm.p2m_table[gfn] << PAGE_SHIFT) | flags)
        if flags & RW:
            self.wmap.setdefault(gfn, set()).add((table.mfn, i))
            table.writable[i] = gfn

    def _zap_leaf(self, table: ShadowPage, i: int) -> None:
        off = (table.mfn << PAGE_SHIFT) | (i << 2)
        old = _U32.unpack_from(self.pm.mem, off)[0]
        if old & P:
            if old & RW:
                self._wmap_drop(old, table.mfn, i)
            _U32.pack_into(self.pm.mem, off, 0)
            self.need_flush = True

    def _wmap_drop(self, leaf: int, mfn: int, i: int) -> None:
        leaves = self.wmap.get(self.pm.m2p(leaf >> PAGE_SHIFT))
        if leaves is not None:
            leaves.discard((mfn, i))
        self.pages[mfn].writable.pop(i, None)

    def _zap_page(self, page: ShadowPage, force: bool = False) -> None:
        """Free one shadow page (never the current root unless `force`)."""
        if page is self.root and not force:
            raise MmuError("the current shadow root cannot be freed")
        if page.level == 2:
            for i, child in page.children.items():
                child.parents.discard((page.mfn, i))
            page.children.clear()
        else:
            for rmfn, i in list(page.parents):
                parent = self.pages.get(rmfn)
                if parent is not None:
                    self._unlink(parent, i)
            wmap = self.wmap
            for i, gfn in page.writable.items():
                leaves = wmap.get(gfn)
                if leaves is not None:
                    leaves.discard((page.mfn, i))
        del self.pages[page.mfn]
        del self.by_key[page.key]
        self.shared.unlink(page.mfn)
        if page.gfn >= 0:
            same = self.by_gfn[page.gfn]
            same.remove(page)
            if not same:
                del self.by_gfn[page.gfn]
                self.flood[page.gfn] = 0
                self._drop_protection(page.gfn, PROT_TABLE)
        self.pm.free_frame(page.mfn)
        self.need_flush = True

    def _evict(self, keep: tuple) -> None:
        """Free the least recently used shadow pages (never the current root or `keep`)."""
        used = self.shared.used
        candidates = sorted(
            (p for p in self.pages.values() if p is not self.root and all(p is not k for k in keep)),
            key=lambda p: (used[p.mfn], p.level),
        )
        for page in candidates:
            if self.pm.pool_free >= EVICT_BATCH:
                break
            if page.mfn in self.pages:
                self._zap_page(page)
                self.stats.evictions += 1
                self.event("mmu:evict")

    # -- keeping shadows in step with guest entries -----------------------------------------------------
    def _guest_set(self, gpa: int, value: int) -> None:
        """The VMM writes a guest entry (A/D bits): the snapshots follow, so it is no 'change'.
        An entry in the ROM keeps its bits: the CPU's A/D store to ROM is dropped (the ROM is
        read-only to the guest, and a guest with page tables there must not make the VMM write it;
        tests/test_mmu_isolation.py)."""
        if self._rom(gpa >> PAGE_SHIFT):
            return
        self.pm.set_guest_u32(gpa, value)
        for page in self.by_gfn.get(gpa >> PAGE_SHIFT, ()):
            _U32.pack_into(page.snap, gpa & 0xFFC, value)

    def _entry_changed(self, gpa: int) -> None:
        pages = self.by_gfn.get(gpa >> PAGE_SHIFT)
        if pages:
            for page in list(pages):
                self._resync_entry(page, (gpa & 0xFFF) >> 2)

    def _resync_entry(self, page: ShadowPage, i: int, include_global: bool = True) -> bool:
        """Compare one entry with its snapshot; drop the shadow entry if the guest's changed."""
        if page.snap is None:
            return False
        new = self.pm.guest_u32((page.gfn << PAGE_SHIFT) | (i << 2))
        old = _U32.unpack_from(page.snap, i << 2)[0]
        if new == old:
            return False
        if not include_global and self._global(page, old):
            return False
        _U32.pack_into(page.snap, i << 2, new)
        if page.level == 2:
            self._unlink(page, i)
        elif self._prefill(page, i, new):
            return True
        else:
            self._zap_leaf(page, i)
        self.stats.zaps += 1
        self.event("mmu:zap")
        return True

    def _prefill(self, table: ShadowPage, i: int, entry: int) -> bool:
        """A guest entry the VMM saw being written is shadowed at once instead of on its first use
        (KVM's pte prefetch), when that changes nothing the guest can see: the entry is present and
        already Accessed (the guest set A itself, as kernels do for fresh mappings), writable in the
        shadow only when already Dirty.  Saves the hidden fault that would follow."""
        if not entry & P or not entry & A or table.key[0] != "pt":
            return False
        if self.watched and any((di << 10 | i) in self.watched for _, di in table.parents):
            return False  # a descriptor-table page: filled by a fault, which checks its frame
        gfn = entry >> PAGE_SHIFT
        if gfn >= self.pm.ram_frames:
            return False
        eff = table.key[2] & entry
        writable = eff & RW and entry & D and not self._protected(gfn) and not self._rom(gfn)
        off = (table.mfn << PAGE_SHIFT) | (i << 2)
        if _U32.unpack_from(self.pm.mem, off)[0] & P:
            self.need_flush = True  # a TLB may hold the old translation
        self._set_leaf(table, i, gfn, P | (eff & US) | (RW if writable else 0))
        self.stats.prefills += 1
        self.event("mmu:prefill")
        return True

    def _global(self, page: ShadowPage, entry: int) -> bool:
        """Would a CPU keep this entry's translation across a CR3 load (a global page)?"""
        if not entry & G or not self.cr4 & CR4_PGE:
            return False
        return page.level == 1 or bool(entry & PS and self.cr4 & CR4_PSE)

    def _resync_page(self, page: ShadowPage, include_global: bool) -> None:
        if page.snap is None:
            return
        current = self.pm.guest_frame(page.gfn)
        if current == page.snap:
            return
        self.stats.syncs += 1
        self.event("mmu:sync")
        old = _TABLE.unpack_from(page.snap)
        new = _TABLE.unpack_from(current)
        for i in range(ENTRIES):
            if old[i] != new[i]:
                self._resync_entry(page, i, include_global)

    def _resync_reachable(self, include_global: bool) -> None:
        """CR3 load / flush: every unwatched shadow page reachable from the current root."""
        root = self.root
        if not self._synced(root):
            self._resync_page(root, include_global)
        for child in list(root.children.values()):
            if not self._synced(child):
                self._resync_page(child, include_global)
