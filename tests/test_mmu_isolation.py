"""Issue 10's isolation must-show on the real machine (docs/mmu.md "Isolation tests").

The guest is tests/guests/isoscan.S (Multiboot, GNU as), run on every personality: the shadowing
ones (fullvirt, fullvirt-strict, vmi, vmi2: guest RAM at machine frames the guest cannot name, the
CPU on shadow tables in a VMM-private pool) and the direct ones (bare, hwassist), where the same
checks hold for the guest's own view.

* The scan: every frame the memory map gives the guest is tagged with its own guest-physical
  address and a per-run nonce, every frame number of RAM is mapped through ten aliases (4 KiB pages
  in order and reversed, 4 MiB pages; user and supervisor; read-write and read-only) and read in
  full through every one from the kernel's ring and from ring 3, written through every writable
  one, and probed where the ring may not go.  The guest reports counts; the test checks them
  against what the guest must have done, and then looks from the host side: guest RAM holds
  exactly the tags, the pool holds only shadow tables the MMU knows (every leaf a guest RAM frame),
  no dword outside guest RAM carries a tag or a written value, the fence page and the ROM are
  unchanged.
* Frames beyond RAM (a 4 KiB page, a 4 MiB page, the fence frame): fate bad_memory.
* Hostile tables: a self-referencing directory used as a table and written through; one frame
  mapped over a million times; more distinct tables than the shadow pool holds; tables and CR3 in
  the ROM range.  Each ends in a clean fate or a guest fault, with host memory bounded.

Runs that need the host's view of machine memory use the Machine API in this process; runs whose
host memory is measured go through `run_isolated` (the VM in a child, as `vmirom run`)."""

from __future__ import annotations

import os
import struct
from array import array
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

import vmm_guests
from test_hostile_suite import check_vmm_held
from vmirom.engines import libunicorn as lu
from vmirom.guest.console import last_event, parse_events
from vmirom.hypervisors import create
from vmirom.machine import Machine, MachineConfig
from vmirom.machine.mmu.bits import FRAME_MASK, PAGE, RW, US, A, D, P
from vmirom.runner import RunRequest, run_isolated

SHADOW = ("fullvirt", "fullvirt-strict", "vmi", "vmi2")
DIRECT = ("bare", "hwassist")
ALL = SHADOW + DIRECT
WITH_ROM = ("vmi", "vmi2", "hwassist")
LOW_END, HOLE_END = 0x9F000, 0x100000  # the guest tags memory-map RAM: [0, LOW_END) and above its tables
FENCE_PAGE = 0xFFFFF000
#: the guest's aliases (isoscan.S `aliases`): (kind, access) in order; kinds fwd/rev/big
SR, SW, UR, UW, UF, SWF, UWF = 1, 2, 4, 8, 16, 32, 64
ALIASES = [
    ("fwd", SR | SW | UR | UW),
    ("fwd", SR | SW | UF),
    ("rev", SR | SW | UF),
    ("big", SR | SW | UF),
    ("fwd", SR | SWF | UF),
    ("rev", SR | SW | UR | UW),
    ("big", SR | SW | UR | UW),
    ("fwd", SR | SWF | UR | UWF),
    ("big", SR | SWF | UR | UWF),
    ("big", SR | SWF | UF),
]
NO_TRAP = 0xFFFFFFFF  # the report's unexpected_vector when no unexpected trap came


@pytest.fixture(scope="module")
def guest(tmp_path_factory) -> Path:
    return vmm_guests.build("isoscan", tmp_path_factory.mktemp("isoscan"))


def new_nonce() -> int:
    """A per-run nonce with bit 31 set: every tag (gpa ^ nonce, gpa < 2 GiB) has bit 31 set, which no
    shadow entry (a machine address below 2 GiB) and no free pool frame (zeros) has."""
    return int.from_bytes(os.urandom(4), "little") | 0x80000000


@dataclass
class Layout:
    """Where the guest put its tables (isoscan.S build_base), from its ELF and the RAM size."""

    frames: int
    tables_end_gfn: int

    @classmethod
    def of(cls, elf: Path, ram_mb: int) -> Layout:
        with elf.open("rb") as f:
            symbols = ELFFile(f).get_section_by_name(".symtab")
            image_end = symbols.get_symbol_by_name("image_end")[0]["st_value"]
        npde = ram_mb // 4
        # the directory, the fwd and rev tables, a spare table and a spare frame
        end = image_end + PAGE + 2 * npde * PAGE + 2 * PAGE
        return cls(ram_mb << 8, end >> 12)

    def tagged(self, gfn: int) -> bool:
        return gfn < LOW_END >> 12 or self.tables_end_gfn <= gfn < self.frames

    def expected_scan(self) -> dict[str, int]:
        """The counts the scan must report (isoscan.S scan_alias, mirrored)."""
        n = self.frames
        tagged = sum(map(self.tagged, range(n)))
        probe_frames = range(0, n, 64)
        tagged64 = sum(map(self.tagged, probe_frames))
        kernel_reads = sum(1 for _k, a in ALIASES if a & SR)
        user_reads = sum(1 for _k, a in ALIASES if a & UR)
        writes = sum(1 for _k, a in ALIASES if a & SW) + sum(1 for _k, a in ALIASES if a & UW)
        probes = sum(
            tagged64 * bool(a & SWF) + len(probe_frames) * bool(a & UF) + tagged64 * bool(a & UWF)
            for _k, a in ALIASES
        )
        mappings = (kernel_reads + user_reads) * n
        return {
            "ram_frames": n,
            "tagged": tagged,
            "mappings": mappings,
            "dwords": mappings * 1024,
            "writes": writes * tagged,
            "probes": probes,
            "faults": probes,
        }


def run_machine(guest: Path, hv: str, mode: str, ram_mb: int, nonce: int, timeout_s: float = 300,
                **config) -> tuple[Machine, object]:
    """Boot the guest in this process (the host then inspects machine memory)."""
    m = Machine(create(hv), MachineConfig(ram_size=ram_mb << 20, timeout_s=timeout_s, **config))
    m.load_kernel(guest.read_bytes(), f"{nonce:08x} {mode}")
    return m, m.run()


def report(console: str) -> dict:
    ev = last_event(parse_events(console), "isoscan")
    assert ev is not None, console[-2000:]
    return ev


def assert_clean(rep: dict) -> None:
    """The guest's own checks: nothing it read or wrote was wrong, every probe faulted as expected."""
    assert rep["unexpected_vector"] == NO_TRAP, rep
    assert (rep["bad"], rep["bad_writes"], rep["bad_faults"], rep["nofault"]) == (0, 0, 0, 0), rep
    assert_counts(rep, {"faults": rep["probes"]})


#: increments a guest counter may be off by (see assert_counts): none on our patched engine
COUNT_SLACK = 0 if lu.describe().build == "patched" else 16


def assert_counts(rep: dict, expected: dict[str, int]) -> None:
    """The guest's counts are exactly what it must have done.  On the stock wheel (or a library not
    ours) a counter the guest keeps in memory (`incl`/`addl` on it) is now and then off by a few
    increments, up or down: Unicorn 2.1.4 ends an instruction after its store when the slice
    timer's asynchronous stop lands there, and resumes it from its start (docs/engine.md, "An
    instruction run twice around an asynchronous stop"; part 5 of our patch fixes it).  There a
    count may differ by COUNT_SLACK increments, reported as a warning; the isolation checks
    (nothing wrong read or written) stay exact everywhere."""
    off = {}
    for key, want in expected.items():
        unit = 1024 if key == "dwords" else 1
        got = rep[key]
        assert abs(got - want) <= COUNT_SLACK * unit, (key, got, want, rep)
        if got != want:
            off[key] = (got, want)
    if off:
        import warnings

        warnings.warn(f"guest counters off by a few increments (stock engine, known issue): {off}",
                      stacklevel=2)


def rom_bytes(m: Machine) -> bytes:
    start, end = m.rom_range
    return bytes(m.memory.ram[start:end])


def check_guest_ram_holds_its_tags(m: Machine, layout: Layout, nonce: int) -> None:
    """Every tagged frame holds exactly gpa ^ nonce: the guest's writes through every alias landed in
    the frame they name and nowhere else (each was put back and checked through the identity)."""
    ram = m.memory.ram
    wrong = []
    for gfn in range(layout.frames):
        if not layout.tagged(gfn):
            continue
        base = gfn << 12
        want = array("I", ((base + 4 * i) ^ nonce for i in range(1024)))
        if array("I", ram[base : base + PAGE]) != want:
            wrong.append(hex(gfn))
    assert not wrong, f"frames not holding their tags after the scan: {wrong[:10]}"


def check_machine_memory_outside_ram(m: Machine, nonce: int) -> None:
    """Shadow paging: the pool holds only the shadow tables the MMU knows, each leaf a guest RAM
    frame; no dword anywhere outside guest RAM carries a guest tag or written value (all have bit
    31 set); the fence page is still zeros."""
    mmu, pm = m.mmu, m.mmu.pm
    mem = m.memory.machine
    pool = array("I", mem[: pm.pool_frames * PAGE])
    assert max(pool) < 0x80000000, "a guest tag or written value reached the VMM-private pool"
    assert mmu.shadow_pages <= pm.pool_frames and pm.pool_free + mmu.shadow_pages == pm.pool_frames
    for mfn, page in mmu.pages.items():
        assert 0 <= mfn < pm.pool_frames
        entries = pool[mfn * 1024 : (mfn + 1) * 1024]
        for i, e in enumerate(entries):
            if not e & P:
                assert e == 0, (hex(mfn), i, hex(e))
                continue
            # no other bit than the VMM's P/RW/US and the A/D the engine's walker sets in the shadow
            assert e & ~FRAME_MASK & ~(P | RW | US | A | D) == 0, (hex(mfn), i, hex(e))
            if page.level == 2:
                child = page.children.get(i)
                assert child is not None and e >> 12 == child.mfn, (hex(mfn), i, hex(e))
            else:
                assert pm.m2p(e >> 12) >= 0, f"shadow leaf {e:#x} maps machine frame outside guest RAM"
        if page.level == 2:
            assert all(entries[i] & P for i in page.children)
    real = m.engine.real
    assert bytes(real.uc.mem_read(FENCE_PAGE, PAGE)) == bytes(PAGE)


# -- the scan ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hv", ALL)
def test_a_guest_mapping_every_frame_it_can_name_sees_only_its_own_ram(guest, hv):
    """4 MiB of RAM: 1,024 frames x 15 mappings read in full (15.7 M dwords), 8,000+ writes, 164
    probes; then the host's view of guest RAM, the pool, the fence page and the ROM."""
    ram_mb, nonce = 4, new_nonce()
    layout = Layout.of(guest, ram_mb)
    m, r = run_machine(guest, hv, "s", ram_mb, nonce)
    assert (r.fate, r.exit_status) == ("exit", 0), (r.message, r.console[-1500:])
    rep = report(r.console)
    assert_clean(rep)
    assert_counts(rep, layout.expected_scan())
    check_guest_ram_holds_its_tags(m, layout, nonce)
    if m.rom_range:
        image = bytes(m.personality.rom_image().data)
        assert rom_bytes(m)[: len(image)] == image
    if hv in SHADOW:
        check_machine_memory_outside_ram(m, nonce)
        assert r.metrics["mmu"]["hidden_faults"] >= rep["ram_frames"]  # it really ran on shadows


@pytest.mark.slow
@pytest.mark.parametrize("hv", ALL)
def test_the_scan_over_64_mib_of_ram(guest, hv):
    """The same over 64 MiB: 16,384 frames x 15 mappings, 16 page tables per alias."""
    ram_mb, nonce = 64, new_nonce()
    layout = Layout.of(guest, ram_mb)
    m, r = run_machine(guest, hv, "s", ram_mb, nonce, timeout_s=1800)  # 8 s direct, 280-376 s shadowed
    assert (r.fate, r.exit_status) == ("exit", 0), (r.message, r.console[-1500:])
    rep = report(r.console)
    assert_clean(rep)
    assert_counts(rep, layout.expected_scan())
    check_guest_ram_holds_its_tags(m, layout, nonce)
    if hv in SHADOW:
        check_machine_memory_outside_ram(m, nonce)


@pytest.mark.parametrize("hv", ALL)
@pytest.mark.parametrize(
    "mode, what",
    [("b", "a 4 KiB page of the first frame past RAM"), ("B", "a 4 MiB page past RAM (written)"),
     ("f", "frame 0xFFFFF, the VMM's fence page on the direct model (read, then written)")],
    ids=["4k_past_ram", "4m_past_ram", "fence_frame"],
)
def test_a_mapping_of_a_frame_beyond_ram_ends_in_bad_memory(guest, hv, mode, what):
    m, r = run_machine(guest, hv, mode, 4, new_nonce())
    assert r.fate == "bad_memory", (what, r.fate, r.message)
    if hv in SHADOW:  # the shadow MMU refused to build the leaf: the guest's tables name it
        assert "guest page tables name physical" in r.message and "outside RAM" in r.message
        check_machine_memory_outside_ram(m, 0x80000000)
    else:  # the engine found nothing there (the fence page reads as zeros: docs/security.md)
        assert "outside RAM" in r.message


# -- hostile page tables --------------------------------------------------------------------------------
@pytest.mark.parametrize("hv", ALL)
def test_a_self_referencing_directory_used_as_a_table_and_written_through(guest, hv):
    """PD[1023] = PD: the directory and the tables read through the recursive windows, a PDE and a
    PTE written through them take effect after CR3 load / invlpg, 2,000 rounds flip a PDE between
    the directory and a table, and the self-map finally removes itself (a guest #PF)."""
    nonce = new_nonce()
    m, r = run_machine(guest, hv, "r", 4, nonce)
    assert (r.fate, r.exit_status) == ("exit", 0), (r.message, r.console[-1500:])
    rep = report(r.console)
    assert_clean(rep)
    assert_counts(rep, {"probes": 1, "mappings": 2006, "dwords": 2006 * 1024})
    if hv in SHADOW:
        check_machine_memory_outside_ram(m, nonce)


def rss_growth_kib(guest: Path, hv: str, mode: str, ram_mb: int) -> tuple[dict, int]:
    """Run `mode` and the do-nothing baseline in child processes: the hostile run and how much more
    host memory (peak RSS) it took than the baseline with the same RAM."""
    base = run_isolated(RunRequest(hv, str(guest), f"{new_nonce():08x} n", 60, ram_mb=ram_mb, echo=False))
    assert base["fate"] == "exit", base["message"]
    r = run_isolated(RunRequest(hv, str(guest), f"{new_nonce():08x} {mode}", 240, ram_mb=ram_mb, echo=False))
    check_vmm_held(r)
    return r, r["host_max_rss_kib"] - base["host_max_rss_kib"]


#: host memory a hostile run may take beyond the same machine doing nothing, besides the guest RAM it
#: touches and the pool (MachineConfig.shadow_pool_frames): the MMU's bookkeeping of a full pool
#: (a snapshot of each guest table, 4 KiB, parents, reverse map) measured 16-31 MiB
BOOKKEEPING_KIB = 48 << 10


def rss_bound_kib(ram_mb: int) -> int:
    return (ram_mb << 10) + MachineConfig().shadow_pool_frames * 4 + BOOKKEEPING_KIB


@pytest.mark.parametrize("hv", ALL)
def test_one_frame_mapped_a_million_times_and_touched_everywhere(guest, hv):
    """Every PDE but the first names one table whose 1,024 entries all name one frame: 1,044,480
    linear pages of one frame, each read and written (a counter, incremented through the next page
    each time).  On the shadows they share one or two shadow tables (per PDE access class)."""
    ram_mb = 16
    r, growth = rss_growth_kib(guest, hv, "m", ram_mb)
    assert (r["fate"], r["exit_status"]) == ("exit", 0), r["message"]
    rep = report(r["console"])
    assert_clean(rep)
    assert rep["mappings"] == rep["value"] == 1_044_480  # kept in a register, then stored once
    assert growth < rss_bound_kib(ram_mb), f"{hv}: {growth} KiB more than the baseline"
    if hv in SHADOW:
        mmu = r["metrics"]["mmu"]
        assert mmu["peak_pages"] <= 16, mmu  # the root, the identity tables, <= 4 shared shadow tables


@pytest.mark.parametrize("hv", ALL)
def test_more_distinct_tables_than_the_shadow_pool_holds(guest, hv):
    """4 directories x 1,023 distinct tables (every entry naming one frame), four PDE access
    classes, each walked, the first two again: 4,092 shadow tables wanted, a pool of 4,096 frames.
    The pool stays the pool (LRU eviction), the guest sees correct translations after eviction, and
    host memory stays bounded."""
    ram_mb = 32
    r, growth = rss_growth_kib(guest, hv, "t", ram_mb)
    assert (r["fate"], r["exit_status"]) == ("exit", 0), r["message"]
    rep = report(r["console"])
    assert_clean(rep)
    assert_counts(rep, {"mappings": 6 * 1023, "writes": 3 * 1023})
    assert growth < rss_bound_kib(ram_mb), f"{hv}: {growth} KiB more than the baseline"
    if hv in SHADOW:
        mmu = r["metrics"]["mmu"]
        assert mmu["evictions"] > 0 and mmu["peak_pages"] <= mmu["pool_frames"], mmu


@pytest.mark.parametrize("hv", ALL)
def test_a_page_table_in_the_rom_is_walked_without_writing_the_rom(guest, hv):
    """PDE -> a page table at 0xC0000.  With a ROM there its bytes are read as entries: the first
    one naming a frame past RAM ends the run in bad_memory, and the walk left the ROM as it was (no
    Accessed bit set in it; the direct model's engine walker does set it, docs/mmu.md).  Without a
    ROM (bare, fullvirt) the range is zeroed RAM: 1,024 guest page faults."""
    m, r = run_machine(guest, hv, "o", 4, new_nonce())
    if hv not in WITH_ROM:
        assert (r.fate, r.exit_status) == ("exit", 0), r.message
        rep = report(r.console)
        assert_clean(rep)
        assert_counts(rep, {"faults": 1024, "probes": 1024})
        return
    assert r.fate == "bad_memory" and "outside RAM" in r.message, r.message
    image = bytes(m.personality.rom_image().data)
    now = rom_bytes(m)[: len(image)]
    if hv in SHADOW:
        assert now == image
    else:  # known gap: Unicorn's own walker sets A (0x20) in the entry it used
        changed = [i for i in range(0, len(image), 4) if now[i : i + 4] != image[i : i + 4]]
        for i in changed:
            was, is_ = struct.unpack_from("<I", image, i)[0], struct.unpack_from("<I", now, i)[0]
            assert was & P and (was ^ is_) & ~0x60 == 0, (hex(i), hex(was), hex(is_))


@pytest.mark.parametrize("hv", ALL)
def test_a_store_into_a_page_table_in_the_rom_and_cr3_in_the_rom(guest, hv):
    """A store into the ROM-resident table is fate rom_write (the ROM is read-only); CR3 = 0xC0000
    makes the next fetch walk the ROM as a directory: a triple fault or bad_memory, never more."""
    m, r = run_machine(guest, hv, "O", 4, new_nonce())
    if hv in WITH_ROM:
        assert r.fate == "rom_write", r.message
        assert rom_bytes(m)[: len(m.personality.rom_image().data)] == bytes(m.personality.rom_image().data)
    else:
        assert (r.fate, r.exit_status) == ("exit", 0), r.message
    m, r = run_machine(guest, hv, "c", 4, new_nonce())
    assert r.fate in ("triple_fault", "bad_memory"), (r.fate, r.message)
