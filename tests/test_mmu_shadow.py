"""The shadow MMU on synthetic page tables, with no engine.

`Cpu` below plays the CPU's part: it walks the *shadow* tables in machine memory (CR3 = the MMU's
root, CR0.WP=1, no PSE: the engine's view), faults like x86 on a missing or insufficient entry,
hands the fault to `ShadowMMU.fault` and retries after a hidden fault.  Guest page tables are
written into guest-physical memory through `PhysMap` (the "permute" layout: guest frames scattered
over machine memory, so a path that forgets p2m reads the wrong bytes).  Each test then checks
what the guest would see: the data at a linear address, the fault it takes, its own A/D bits.
"""

from __future__ import annotations

import struct

import pytest

from vmirom.engines import core as engine_core
from vmirom.machine.mmu import BAD_PHYS, HIDDEN, ROM_WRITE, TRUE_FAULT, WP_TRAP, PhysMap, ShadowMMU
from vmirom.machine.mmu.bits import CR0_PE, CR0_PG, CR0_WP, CR4_PGE, CR4_PSE, PS, RW, US, A, D, G, P
from vmirom.machine.mmu.shadow import FLOOD_LIMIT, FaultResult

RAM = 8 << 20
POOL = 64
PG_ON = CR0_PE | CR0_PG | CR0_WP
ROM = (0xC0000, 0xC2000)


class Fault(Exception):
    def __init__(self, result):
        super().__init__(result.kind)
        self.result = result


@pytest.fixture(autouse=True, params=["python", "c"])
def path(request):
    """Every test runs twice: on the Python MMU (the reference) and with the compiled core's #PF
    path in front of it (engines/core/mmu.c, as the engine's hook runs it: C first, Python for
    whatever C declines).  Both must give the same guest A/D bits, shadows, faults and counters."""
    global PATH
    if request.param == "c" and not engine_core.available():
        pytest.skip(engine_core.LOAD_ERROR)
    PATH = request.param
    yield request.param
    PATH = "python"


PATH = "python"


class Cpu:
    """The engine's part: walk the shadows, fault, let the MMU fill, retry."""

    def __init__(self, mmu: ShadowMMU) -> None:
        self.mmu = mmu
        self.pm = mmu.pm
        self.core = None
        self.in_c = 0  # faults the core completed
        if PATH == "c":
            self.core = engine_core._core.Core(self.pm.mem, len(self.pm.mem))
            self.core.set_shadow(self.pm.mem, len(self.pm.mem))
            engine_core.bind_mmu(self.core, mmu)

    def fault(self, va: int, write: bool, user: bool) -> FaultResult:
        """The #PF exit: the core's decision first when it is on, the Python MMU when it declines."""
        mmu = self.mmu
        if self.core is not None:
            self.core.set_virtual_crs(mmu.cr0, mmu.cr3, mmu.cr4)  # MachineCore.sync's part
            r = self.core.mmu_fault(va, int(write), user, mmu.root.mfn)
            if r is not None:
                self.in_c += 1
                if r == "hidden":
                    return FaultResult(HIDDEN)
                return FaultResult(TRUE_FAULT, error_code=r, cr2=va)
        return mmu.fault(va, write=write, user=user)

    def _walk(self, va: int, write: bool, user: bool) -> int | None:
        mem = self.pm.mem
        pde = struct.unpack_from("<I", mem, self.mmu.root_ma + ((va >> 22) << 2))[0]
        if not pde & P:
            return None
        pte = struct.unpack_from("<I", mem, (pde & ~0xFFF) + (((va >> 12) & 0x3FF) << 2))[0]
        if not pte & P:
            return None
        eff = pde & pte
        if user and not eff & US or write and not eff & RW:  # the engine runs with CR0.WP=1
            return None
        return (pte & ~0xFFF) | (va & 0xFFF)

    def translate(self, va: int, *, write: bool = False, user: bool = False) -> int:
        """Machine address of an access, raising Fault for any non-hidden outcome."""
        for _ in range(4):
            ma = self._walk(va, write, user)
            if ma is not None:
                return ma
            r = self.fault(va, write, user)
            if r.kind != HIDDEN:
                raise Fault(r)
        raise AssertionError("hidden faults do not converge")

    def read32(self, va: int, **kw) -> int:
        return struct.unpack_from("<I", self.pm.mem, self.translate(va, **kw))[0]

    def write32(self, va: int, value: int, **kw) -> None:
        struct.pack_into("<I", self.pm.mem, self.translate(va, write=True, **kw), value)


class Guest:
    """Guest-physical page tables built through p2m (what a guest kernel would write)."""

    def __init__(self, pm: PhysMap) -> None:
        self.pm = pm
        self.next = 0x100000

    def frame(self) -> int:
        f, self.next = self.next, self.next + 0x1000
        self.pm.write(f, bytes(4096))
        return f

    def entry(self, table: int, i: int) -> int:
        return self.pm.guest_u32(table + 4 * i)

    def set(self, table: int, i: int, value: int) -> None:
        self.pm.set_guest_u32(table + 4 * i, value)

    def map(self, pd: int, va: int, pa: int, flags: int = P | RW | US, pde_flags: int = P | RW | US) -> int:
        """Map one 4 KiB page; returns the guest-physical address of its PTE."""
        pde = self.entry(pd, va >> 22)
        if not pde & P:
            pt = self.frame()
            self.set(pd, va >> 22, pt | pde_flags)
        else:
            pt = pde & ~0xFFF
        self.set(pt, (va >> 12) & 0x3FF, pa | flags)
        return pt + 4 * ((va >> 12) & 0x3FF)


def machine(tracking: str = "wp", pool: int = POOL):
    pm = PhysMap(RAM, pool, layout="permute")
    mmu = ShadowMMU(pm, tracking=tracking, rom=ROM)
    return pm, mmu, Cpu(mmu), Guest(pm)


def paging_on(mmu: ShadowMMU, pd: int, cr4: int = 0) -> None:
    mmu.set_cr4(cr4)
    mmu.set_cr3(pd)
    mmu.set_cr0(PG_ON)


def fill_data(pm: PhysMap, gpa: int, value: int) -> None:
    pm.set_guest_u32(gpa, value)


# -- the layout -------------------------------------------------------------------------------------
def test_guest_ram_is_not_identity_and_p2m_m2p_agree():
    pm = PhysMap(RAM, POOL, layout="permute")
    frames = [pm.p2m(g) for g in range(pm.ram_frames)]
    assert sorted(frames) == list(range(POOL, POOL + pm.ram_frames))
    assert sum(f == g for g, f in enumerate(frames)) < pm.ram_frames // 10
    assert all(pm.m2p(m) == g for g, m in enumerate(frames))
    assert pm.m2p(0) == -1 and pm.p2m(pm.ram_frames) == -1
    pm.write(0x1FFE, b"abcd")  # crosses a guest page: two machine frames
    assert pm.read(0x1FFE, 4) == b"abcd"
    offset = PhysMap(RAM, POOL)
    assert offset.gpa_to_ma(0x1234) == POOL * 4096 + 0x1234


def test_paging_off_runs_on_an_identity_shadow_of_guest_physical():
    pm, mmu, cpu, _ = machine()
    fill_data(pm, 0x5000, 0xCAFE)
    assert cpu.read32(0x5000) == 0xCAFE
    assert cpu.translate(0x5000) == pm.gpa_to_ma(0x5000) != 0x5000
    with pytest.raises(Fault) as e:
        cpu.read32(RAM + 0x1000)
    assert e.value.result.kind == BAD_PHYS
    with pytest.raises(Fault) as e:
        cpu.write32(ROM[0] + 8, 1)
    assert e.value.result.kind == ROM_WRITE
    assert cpu.read32(ROM[0]) == 0  # the ROM reads


# -- hidden vs true faults ----------------------------------------------------------------------------
def test_hidden_fault_fills_and_true_faults_carry_the_guests_error_code_and_cr2():
    pm, mmu, cpu, g = machine()
    pd = g.frame()
    g.map(pd, 0x400000, 0x200000)
    g.map(pd, 0x401000, 0x201000, flags=P | RW)  # supervisor
    g.map(pd, 0x402000, 0x202000, flags=P | US)  # read-only
    fill_data(pm, 0x200010, 77)
    paging_on(mmu, pd)
    assert cpu.read32(0x400010, user=True) == 77
    assert mmu.stats.hidden_faults == 1 and mmu.stats.true_faults == 0
    assert cpu.read32(0x400010, user=True) == 77 and mmu.stats.hidden_faults == 1  # no second fault
    cases = [
        (0x800123, dict(), 0),  # no PDE
        (0x403000, dict(user=True), 4),  # PDE present, PTE not
        (0x401000, dict(user=True), 5),  # user access to a supervisor page
        (0x402000, dict(write=True, user=True), 7),  # user write to a read-only page
        (0x402004, dict(write=True), 3),  # supervisor write, CR0.WP=1
    ]
    for va, kw, err in cases:
        with pytest.raises(Fault) as e:
            cpu.translate(va, **kw)
        r = e.value.result
        assert (r.kind, r.error_code, r.cr2) == (TRUE_FAULT, err, va), hex(va)


def test_a_and_d_bits_are_set_in_the_guests_entries_as_the_sdm_says():
    pm, mmu, cpu, g = machine()
    pd = g.frame()
    pte = g.map(pd, 0x400000, 0x200000)
    paging_on(mmu, pd)
    assert not g.entry(pd, 1) & A and not pm.guest_u32(pte) & A  # nothing used yet
    cpu.read32(0x400000)
    assert g.entry(pd, 1) & A and pm.guest_u32(pte) & (A | D) == A
    cpu.write32(0x400000, 5)  # first write: a hidden fault sets D
    assert pm.guest_u32(pte) & (A | D) == A | D
    assert mmu.stats.hidden_faults == 2
    # the guest clears A and D (page aging; the store traps and is emulated): the next use sets A again
    mmu.emulated_write(pte, struct.pack("<I", pm.guest_u32(pte) & ~(A | D)))
    mmu.invlpg(0x400000)
    cpu.read32(0x400000)
    assert pm.guest_u32(pte) & (A | D) == A
    # a write to a page the guest may not write sets nothing
    ro = g.map(pd, 0x401000, 0x201000, flags=P | US)
    with pytest.raises(Fault):
        cpu.write32(0x401000, 1, user=True)
    assert not pm.guest_u32(ro) & D


def test_4mib_pages_with_pse_and_a_d_in_the_pde():
    pm, mmu, cpu, g = machine()
    pd = g.frame()
    g.set(pd, 1, 0x400000 | P | RW | PS)  # guest-physical 4 MiB .. 8 MiB
    fill_data(pm, 0x400000 + 0x123000, 0xB16)
    paging_on(mmu, pd, cr4=CR4_PSE)
    assert cpu.read32(0x523000) == 0xB16
    assert cpu.translate(0x523004) == pm.gpa_to_ma(0x523004)
    assert g.entry(pd, 1) & (A | D) == A
    cpu.write32(0x7FF000, 9)
    assert g.entry(pd, 1) & (A | D) == A | D and pm.guest_u32(0x7FF000) == 9
    # without CR4.PSE the same PDE names a page table at 0x400000 (PS is ignored)
    mmu.set_cr4(0)
    g.set(0x400000, 0x123, 0x300000 | P | RW)
    fill_data(pm, 0x300000, 0x4B)
    assert cpu.read32(0x523000) == 0x4B


# -- TLB semantics ------------------------------------------------------------------------------------
def test_invlpg_staleness_for_a_table_the_vmm_cannot_see():
    """pv tracking, frames never announced: a store behind the VMM's back is seen no later than a
    real CPU would see it (after invlpg), and it may stay stale until then."""
    pm, mmu, cpu, g = machine("pv")
    pd = g.frame()
    pte = g.map(pd, 0x400000, 0x200000)
    fill_data(pm, 0x200000, 1)
    fill_data(pm, 0x201000, 2)
    paging_on(mmu, pd)
    assert cpu.read32(0x400000) == 1
    pm.set_guest_u32(pte, 0x201000 | P | RW | US | A)  # a plain store, no call
    assert cpu.read32(0x400000) == 1  # stale, like a TLB entry
    mmu.invlpg(0x400000)
    assert cpu.read32(0x400000) == 2
    pm.set_guest_u32(pte, 0)  # unmapped behind our back, then invlpg: a true fault
    mmu.invlpg(0x400000)
    with pytest.raises(Fault) as e:
        cpu.read32(0x400000)
    assert e.value.result.kind == TRUE_FAULT


def test_cr3_reload_drops_non_global_entries_and_keeps_global_ones_until_a_full_flush():
    pm, mmu, cpu, g = machine("pv")
    pd = g.frame()
    local = g.map(pd, 0x400000, 0x200000)
    glob = g.map(pd, 0x401000, 0x201000, flags=P | RW | G)
    for i, pa in enumerate((0x200000, 0x201000, 0x202000, 0x203000)):
        fill_data(pm, pa, i)
    paging_on(mmu, pd, cr4=CR4_PGE)
    assert (cpu.read32(0x400000), cpu.read32(0x401000)) == (0, 1)
    pm.set_guest_u32(local, 0x202000 | P | RW | US)
    pm.set_guest_u32(glob, 0x203000 | P | RW | G)
    mmu.set_cr3(pd)  # reload: the non-global entry is new, the global one may stay stale
    assert (cpu.read32(0x400000), cpu.read32(0x401000)) == (2, 1)
    mmu.set_cr4(0)  # toggling PGE flushes globals too
    assert cpu.read32(0x401000) == 3


def test_announced_tables_are_updated_by_set_pxe_and_deferred_until_the_flush():
    pm, mmu, cpu, g = machine("pv")
    pd = g.frame()
    pte = g.map(pd, 0x400000, 0x200000)
    mmu.allocate_page(pd >> 12)
    mmu.allocate_page((g.entry(pd, 1) & ~0xFFF) >> 12)
    fill_data(pm, 0x200000, 1)
    fill_data(pm, 0x201000, 2)
    fill_data(pm, 0x202000, 3)
    paging_on(mmu, pd)
    assert cpu.read32(0x400000) == 1
    mmu.set_pxe(pte, 0x201000 | P | RW | US)  # immediate: no invlpg needed
    assert pm.guest_u32(pte) == 0x201000 | P | RW | US
    assert cpu.read32(0x400000) == 2
    mmu.set_lazy(True)
    mmu.set_pxe(pte, 0x202000 | P | RW | US)
    assert pm.guest_u32(pte) & ~0xFFF == 0x202000  # the guest reads its entry back at once
    assert mmu.deferred == [pte]
    mmu.set_lazy(False)
    assert cpu.read32(0x400000) == 3
    mmu.set_pxe(pte, 0x201000 | P | RW | US, defer=True)
    assert cpu.read32(0x400000) == 3  # deferred: the old translation may still be used ...
    mmu.invlpg(0x400000)
    assert cpu.read32(0x400000) == 2  # ... until the guest invalidates it
    assert mmu.stats.deferred_updates == 2 and mmu.stats.pv_updates == 3


def test_a_context_switch_finds_its_shadow_cached():
    pm, mmu, cpu, g = machine("pv")
    pds = [g.frame() for _ in range(3)]
    for n, pd in enumerate(pds):
        for k in range(8):
            g.map(pd, 0x400000 + k * 0x1000, 0x200000 + n * 0x10000 + k * 0x1000)
            fill_data(pm, 0x200000 + n * 0x10000 + k * 0x1000, n * 100 + k)
        mmu.allocate_page(pd >> 12)
        mmu.allocate_page(g.entry(pd, 1) >> 12)
    paging_on(mmu, pds[0])
    for pd in pds:
        mmu.set_cr3(pd)
        for k in range(8):
            cpu.read32(0x400000 + k * 0x1000)
    created, faults = mmu.stats.roots_created, mmu.stats.hidden_faults
    for _ in range(5):
        for n, pd in enumerate(pds):
            mmu.set_cr3(pd)
            assert [cpu.read32(0x400000 + k * 0x1000) for k in range(8)] == [n * 100 + k for k in range(8)]
    assert mmu.stats.roots_created == created and mmu.stats.hidden_faults == faults
    assert mmu.stats.root_hits >= 15


# -- write-protect tracking (fullvirt) ------------------------------------------------------------------
def test_a_store_to_a_page_table_traps_and_the_emulated_write_updates_the_shadow():
    pm, mmu, cpu, g = machine("wp")
    pd = g.frame()
    pte = g.map(pd, 0x400000, 0x200000)
    pt = g.entry(pd, 1) & ~0xFFF
    g.map(pd, 0x500000, pt)  # the kernel's own mapping of its page table
    fill_data(pm, 0x200000, 1)
    fill_data(pm, 0x201000, 2)
    paging_on(mmu, pd)
    assert cpu.read32(0x400000) == 1
    with pytest.raises(Fault) as e:
        cpu.write32(0x500000, 0x201000 | P | RW | US)
    r = e.value.result
    assert (r.kind, r.gpa) == (WP_TRAP, pte)
    mmu.emulated_write(r.gpa, struct.pack("<I", 0x201000 | P | RW | US))
    assert cpu.read32(0x400000) == 2  # no invlpg: the shadow followed the trapped store
    assert cpu.read32(0x500000) & ~0xFFF == 0x201000  # reading a page table never traps
    assert (mmu.stats.wp_traps, mmu.stats.emulated_pte_writes) == (1, 1)


def test_a_frame_mapped_writable_before_it_became_a_table_is_write_protected_then():
    pm, mmu, cpu, g = machine("wp")
    pd = g.frame()
    future = g.frame()
    g.map(pd, 0x500000, future)
    paging_on(mmu, pd)
    cpu.write32(0x500000, 0x200000 | P | RW | US)  # a writable, dirty leaf for the frame
    g.set(pd, 2, future | P | RW | US)  # the kernel makes it a table (the PD write itself traps)
    mmu.entry_written(pd + 8)
    cpu.read32(0x800000)  # a walk through it: now it is shadowed
    with pytest.raises(Fault) as e:
        cpu.write32(0x500000, 1)
    assert e.value.result.kind == WP_TRAP
    check_invariants(mmu)


def test_flooded_or_unemulatable_frames_are_unshadowed():
    pm, mmu, cpu, g = machine("wp")
    pd = g.frame()
    g.map(pd, 0x400000, 0x200000)
    pt = g.entry(pd, 1) & ~0xFFF
    g.map(pd, 0x800000, pt)  # an alias in another table (a walk through `pt` re-shadows it)
    paging_on(mmu, pd)
    cpu.read32(0x400000)
    for n in range(FLOOD_LIMIT):
        with pytest.raises(Fault) as e:
            cpu.write32(0x800000 + 0x800 + 4 * n, n)
        mmu.emulated_write(e.value.result.gpa, struct.pack("<I", n))
    assert mmu.stats.unshadows == 1 and pt >> 12 not in mmu.by_gfn
    cpu.write32(0x800FF0, 7)  # the frame is data now: plain writes
    assert mmu.stats.wp_traps == FLOOD_LIMIT
    cpu.read32(0x400000)  # used as a table again: shadowed again
    with pytest.raises(Fault) as e:
        cpu.write32(0x800000, 0)
    mmu.emulated_write(e.value.result.gpa + 1, b"\0\0")  # e.g. rep stos / a partial entry
    assert pt >> 12 not in mmu.by_gfn
    check_invariants(mmu)


# -- isolation and hostile tables -------------------------------------------------------------------------
def all_leaves(mmu: ShadowMMU):
    for page in mmu.pages.values():
        base = page.mfn << 12
        for e in struct.unpack_from("<1024I", mmu.pm.mem, base):
            if e & P:
                yield page, e


def check_invariants(mmu: ShadowMMU) -> None:
    """The bookkeeping agrees with the shadow tables: writable leaves, their reverse map, links."""
    mmu.pull()  # what the compiled core did (the MMU's entry points do this themselves)
    for page in mmu.pages.values():
        if page.level != 1:
            continue
        leaves = struct.unpack_from("<1024I", mmu.pm.mem, page.mfn << 12)
        assert {i for i, e in enumerate(leaves) if e & P and e & RW} == set(page.writable)
        for i, gfn in page.writable.items():
            assert (page.mfn, i) in mmu.wmap.get(gfn, ()) and mmu.pm.m2p(leaves[i] >> 12) == gfn
        for rmfn, i in page.parents:
            assert mmu.pages[rmfn].children[i] is page


def test_a_guest_that_maps_every_frame_it_can_name_sees_only_its_own_ram():
    pm, mmu, cpu, g = machine("wp", pool=96)
    pd = g.frame()
    for gpa in range(0, RAM + 0x10000, 0x1000):  # every guest frame, and some beyond RAM
        g.map(pd, 0x40000000 + gpa, gpa)
    paging_on(mmu, pd)
    seen, bad = set(), 0
    for gpa in range(0, RAM + 0x10000, 0x1000):
        try:
            seen.add(cpu.translate(0x40000000 + gpa) >> 12)
        except Fault as e:
            assert e.result.kind == BAD_PHYS and gpa >= RAM
            bad += 1
    assert bad == 16
    assert seen == {pm.p2m(g_) for g_ in range(pm.ram_frames)}
    for page, leaf in all_leaves(mmu):
        if page.level == 1:
            assert pm.m2p(leaf >> 12) >= 0, "a shadow leaf maps VMM-private memory"
            assert not pm.is_pool(leaf & ~0xFFF)
    assert mmu.shadow_pages <= 96
    check_invariants(mmu)


def test_self_referencing_directory():
    pm, mmu, cpu, g = machine("wp")
    pd = g.frame()
    g.set(pd, 1023, pd | P | RW)  # the directory is also the table for the top 4 MiB
    g.map(pd, 0x400000, 0x200000)
    paging_on(mmu, pd)
    top = 0xFFC00000
    assert cpu.read32(top + 0x3FF000 + 4 * 1023) & ~0xFFF == pd  # the PD seen as a page
    assert cpu.read32(top + 0x1000) & ~0xFFF == 0x200000  # the table of 0x400000 seen as a page
    with pytest.raises(Fault) as e:
        cpu.write32(top + 0x3FF000 + 4 * 5, 0x200000 | P | RW)
    assert e.value.result.kind == WP_TRAP and e.value.result.gpa == pd + 20
    mmu.emulated_write(e.value.result.gpa, struct.pack("<I", 0x200000 | P | RW | US))
    assert mmu.shadow_pages <= 4


def test_one_frame_mapped_a_million_times_costs_a_bounded_number_of_shadow_pages():
    pm, mmu, cpu, g = machine("wp")
    pd, pt = g.frame(), g.frame()
    for i in range(1024):
        g.set(pt, i, 0x200000 | P | RW | US)
    for i in range(1, 1024):
        g.set(pd, i, pt | P | RW | US)  # 1023 x 1024 mappings of one frame
    paging_on(mmu, pd)
    for n in range(3000):
        va = 0x400000 + n * 0x151000 % 0xFFC00000
        cpu.read32(va)
    assert mmu.shadow_pages <= 3  # one root, one shared table (per PDE access class)
    assert len(mmu.wmap.get(0x200, ())) == 0


def test_tables_in_the_rom_range_and_beyond_ram_end_cleanly():
    pm, mmu, cpu, g = machine("wp")
    pm.write(ROM[0], struct.pack("<I", 0x400000 | P | RW | PS))  # "ROM" content as a directory
    paging_on(mmu, ROM[0], cr4=CR4_PSE)
    assert cpu.translate(0x1234) == pm.gpa_to_ma(0x401234)
    with pytest.raises(Fault) as e:
        cpu.read32(0x400000)
    assert e.value.result.kind == TRUE_FAULT
    pd = g.frame()
    g.map(pd, 0x400000, ROM[0])
    g.set(pd, 2, (RAM + 0x5000) | P | RW)  # a table outside RAM
    mmu.set_cr3(pd)
    assert cpu.read32(0x400000) & ~(A | D) == 0x400000 | P | RW | PS
    with pytest.raises(Fault) as e:
        cpu.write32(0x400000, 0)
    assert e.value.result.kind == ROM_WRITE
    with pytest.raises(Fault) as e:
        cpu.read32(0x800000)
    assert e.value.result.kind == BAD_PHYS
    mmu.set_cr3(RAM + 0x10000)  # CR3 outside RAM
    with pytest.raises(Fault) as e:
        cpu.read32(0x400000)
    assert e.value.result.kind == BAD_PHYS


def test_many_address_spaces_stay_within_the_pool():
    pm, mmu, cpu, g = machine("wp", pool=24)
    spaces = []
    for n in range(60):
        pd = g.frame()
        g.map(pd, 0x400000, 0x200000 + n * 0x1000)
        g.map(pd, 0x800000, 0x300000 + n * 0x1000)
        fill_data(pm, 0x200000 + n * 0x1000, n)
        spaces.append(pd)
    paging_on(mmu, spaces[0])
    for _ in range(2):
        for n, pd in enumerate(spaces):
            mmu.set_cr3(pd)
            assert cpu.read32(0x400000) == n
            cpu.read32(0x800000)
            assert mmu.shadow_pages <= 24
    assert mmu.stats.evictions > 0
    check_invariants(mmu)


def test_cr0_wp_clear_lets_the_kernel_write_read_only_pages_but_not_user_code():
    pm, mmu, cpu, g = machine("wp")
    pd = g.frame()
    pte = g.map(pd, 0x400000, 0x200000, flags=P | US)
    mmu.set_cr3(pd)
    mmu.set_cr0(CR0_PE | CR0_PG)  # WP clear
    cpu.write32(0x400000, 42)  # supervisor write to a read-only user page: allowed
    assert pm.guest_u32(0x200000) == 42 and pm.guest_u32(pte) & D
    assert cpu.read32(0x400000, user=True) == 42
    with pytest.raises(Fault) as e:
        cpu.write32(0x400000, 1, user=True)
    assert e.value.result.error_code == 7
    mmu.set_cr0(PG_ON)  # WP set again: the kernel's write faults now
    with pytest.raises(Fault) as e:
        cpu.write32(0x400000, 1)
    assert e.value.result.error_code == 3


def test_release_page_drops_the_shadows_of_a_table():
    pm, mmu, cpu, g = machine("pv")
    pd = g.frame()
    g.map(pd, 0x400000, 0x200000)
    pt = g.entry(pd, 1) >> 12
    mmu.allocate_page(pt)
    paging_on(mmu, pd)
    cpu.read32(0x400000)
    assert pt in mmu.by_gfn
    mmu.release_page(pt)
    assert pt not in mmu.by_gfn and mmu.stats.unshadows == 1
    assert cpu.read32(0x400000) == 0  # refilled from the guest's tables


def test_an_update_already_accessed_is_shadowed_at_once_and_nothing_the_guest_sees_changes():
    pm, mmu, cpu, g = machine("pv")
    pd = g.frame()
    pte = g.map(pd, 0x400000, 0x200000)
    mmu.allocate_page(pd >> 12)
    mmu.allocate_page(g.entry(pd, 1) >> 12)
    fill_data(pm, 0x201000, 11)
    fill_data(pm, 0x202000, 22)
    paging_on(mmu, pd)
    cpu.read32(0x400000)
    faults = mmu.stats.hidden_faults
    mmu.set_pxe(pte, 0x201000 | P | RW | US | A)  # accessed, clean: prefilled read-only
    assert cpu.read32(0x400000) == 11 and mmu.stats.hidden_faults == faults
    cpu.write32(0x400004, 1)  # the first write still faults: D is set by it, in the guest's entry
    assert mmu.stats.hidden_faults == faults + 1 and pm.guest_u32(pte) & D
    mmu.set_pxe(pte, 0x202000 | P | RW | US | A | D)  # accessed and dirty: prefilled writable
    cpu.write32(0x400008, 2)
    assert cpu.read32(0x400000) == 22 and mmu.stats.hidden_faults == faults + 1
    mmu.set_pxe(pte, 0x201000 | P | RW | US)  # not accessed: dropped, A is set on the next use
    assert pm.guest_u32(pte) & A == 0
    cpu.read32(0x400000)
    assert mmu.stats.hidden_faults == faults + 2 and pm.guest_u32(pte) & A
    assert mmu.stats.prefills == 2


def test_an_entry_written_behind_the_vmms_back_and_back_again_is_not_kept_past_a_flush():
    """The snapshot must hold the values the shadow was built from: an entry that was 0 at the
    last sync, filled from a later value, then cleared again looks unchanged to a naive compare."""
    pm, mmu, cpu, g = machine("pv")
    pd = g.frame()
    g.map(pd, 0x401000, 0x201000)  # the table exists; 0x400000 itself is not mapped yet
    fill_data(pm, 0x200000, 5)
    paging_on(mmu, pd)
    cpu.read32(0x401000)  # the shadow table exists, its snapshot has entry 0x400 == 0
    pte = g.map(pd, 0x400000, 0x200000, flags=P | RW | US | A | D)  # a native store (no call), A/D
    assert cpu.read32(0x400000) == 5  # not present before: used at once, as on a CPU
    pm.set_guest_u32(pte, 0)  # unmapped natively again ...
    for flush in (lambda: mmu.invlpg(0x400000), lambda: mmu.set_cr3(pd), mmu.flush_tlb):
        pm.set_guest_u32(pte, 0x200000 | P | RW | US | A | D)
        cpu.read32(0x400000)
        pm.set_guest_u32(pte, 0)
        flush()  # ... and invalidated: the old translation must be gone
        with pytest.raises(Fault) as e:
            cpu.read32(0x400000)
        assert e.value.result.kind == TRUE_FAULT
