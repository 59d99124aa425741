"""The compiled core's shadow #PF path (engines/core/mmu.c) agrees with the Python MMU, bit for bit.

Two identical machines (PhysMap "permute" layout, synthetic guest page tables, no engine) run the
same random sequence of page faults and page-table events: one sends every fault to
`ShadowMMU.fault` (the reference), the other to the core first and to Python only when the core
declines, as the engine's hook does.  After every step both must hold the same machine memory
(guest RAM with its A/D bits, and every shadow table in the pool), the same snapshots, LRU ticks,
flood counts, protected frames, reverse maps and counters, and give the same fault answers.
tests/test_mmu_shadow.py runs its scenarios on both paths too; tests/test_mmu_machine.py the
machine's #PF exit.
"""

from __future__ import annotations

import random

import pytest

from vmirom.engines import core as engine_core
from vmirom.machine.mmu import HIDDEN, TRUE_FAULT, PhysMap, ShadowMMU
from vmirom.machine.mmu import shadow as shadow_mod
from vmirom.machine.mmu.bits import CR0_PE, CR0_PG, CR0_WP, CR4_PSE, PS, RW, US, A, D, P
from vmirom.machine.mmu.shadow import FaultResult

pytestmark = pytest.mark.skipif(not engine_core.available(), reason=str(engine_core.LOAD_ERROR))

RAM = 4 << 20
POOL = 48
ROM = (0xC0000, 0xC2000)
PDS = (0x100000, 0x101000, 0x102000)
PTS = tuple(0x110000 + 0x1000 * i for i in range(8))


class Side:
    """One machine: the MMU, and (c=True) the core in front of it."""

    def __init__(self, tracking: str, c: bool, seed: int) -> None:
        self.pm = PhysMap(RAM, POOL, layout="permute", seed=seed)
        self.mmu = ShadowMMU(self.pm, tracking=tracking, rom=ROM)
        self.core = None
        self.in_c = 0
        if c:
            self.core = engine_core._core.Core(self.pm.mem, len(self.pm.mem))
            self.core.set_shadow(self.pm.mem, len(self.pm.mem))
            engine_core.bind_mmu(self.core, self.mmu)
            self.core.set_uc_ctl(0)  # the TLB flush after SetPxE is the caller's

    def set_pxe(self, gpa: int, value: int, defer: bool) -> None:
        """Vmi.set_pxe's MMU part: the core first (the pointer guest-physical: its walk with paging
        off), Python when it declines."""
        if self.core is not None and self.core.mmu_pxe(False, value, gpa, 0x20 if defer else 0, 0, 0, 0):
            self.in_c += 1
            self.mmu.pull()
            return
        self.mmu.set_pxe(gpa, value, defer=defer)

    def update_pxe(self, gpa: int, defer: bool) -> None:
        if self.core is not None and self.core.mmu_pxe(True, gpa, 0x20 if defer else 0, 0, 0, 0, 0):
            self.in_c += 1
            return
        if defer:
            self.mmu.defer_entry(gpa)
        else:
            self.mmu.entry_written(gpa)

    def fault(self, va: int, write: bool | None, user: bool) -> FaultResult:
        mmu = self.mmu
        if self.core is not None:
            self.core.set_virtual_crs(mmu.cr0, mmu.cr3, mmu.cr4)
            r = self.core.mmu_fault(va, -1 if write is None else int(write), user, mmu.root.mfn)
            if r is not None:
                self.in_c += 1
                return FaultResult(HIDDEN) if r == "hidden" else FaultResult(TRUE_FAULT, error_code=r, cr2=va)
        return mmu.fault(va, write=write, user=user)

    def state(self) -> dict:
        mmu = self.mmu
        mmu.pull()
        sh = mmu.shared
        return {
            "mem": bytes(self.pm.mem),
            "snaps": {p.mfn: bytes(p.snap) for p in mmu.pages.values() if p.snap is not None},
            "used": {p.mfn: sh.used[p.mfn] for p in mmu.pages.values()},
            "flood": bytes(sh.flood),
            "protect": bytes(sh.protect),
            "wmap": {g: set(v) for g, v in mmu.wmap.items() if v},
            "writable": {p.mfn: dict(p.writable) for p in mmu.pages.values()},
            "stats": mmu.stats.as_dict(),
            "root": mmu.root.mfn,
        }


def guest_tables(side: Side, rnd: random.Random, big: bool) -> None:
    """Three address spaces sharing page tables (a kernel half), some 4 MiB pages, some not present,
    read-only, supervisor-only, A/D set or clear; a PT mapping page tables (write-protect traps);
    a table in the ROM (its A/D bits stay as they are)."""
    pm = side.pm
    for pd in PDS:
        for i in range(8):
            choice = rnd.random()
            if big and choice < 0.15:
                pde = ((0x400000 * (1 + i % 2)) if i < 6 else 0x0) | P | RW | US | PS
                pde &= ~0 if rnd.random() < 0.5 else ~(A | D)
            elif choice < 0.9:
                pt = PTS[rnd.randrange(len(PTS))] if rnd.random() < 0.95 else ROM[0]  # a table in the ROM
                pde = pt | P | rnd.choice((RW | US, RW, US, RW | US | A, 0))
            else:
                pde = PTS[0]  # not present
            pm.set_guest_u32(pd + 4 * i, pde)
    for pt in (*PTS, ROM[0]):
        for i in range(64):
            frame = rnd.choice((0x200000 + 0x1000 * rnd.randrange(256), *PTS, *PDS, ROM[0], RAM + 0x1000))
            if frame == RAM + 0x1000 and rnd.random() < 0.8:
                frame = 0x300000
            flags = rnd.choice((P | RW | US, P | US, P | RW, P, 0, P | RW | US | A, P | RW | US | A | D))
            pm.set_guest_u32(pt + 4 * i, frame | flags)


def va_in_window(rnd: random.Random) -> int:
    return (rnd.randrange(8) << 22) | (rnd.randrange(64) << 12) | (rnd.randrange(1024) << 2)


@pytest.mark.parametrize("tracking", ["wp", "pv"])
@pytest.mark.parametrize("seed", range(6))
def test_random_faults_and_table_events_agree_on_both_paths(tracking, seed):
    rnd_setup = random.Random(seed)
    sides = [Side(tracking, c, seed) for c in (False, True)]
    big = seed % 2 == 0
    for side in sides:
        guest_tables(side, random.Random(seed), big)
        side.mmu.set_cr4(CR4_PSE if big else 0)
        side.mmu.set_cr3(PDS[0])
        side.mmu.set_cr0(CR0_PE | CR0_PG | (CR0_WP if seed % 3 else 0))
        if tracking == "pv":
            for f in PTS[:5]:
                side.mmu.allocate_page(f >> 12)
    steps = [rnd_setup.random() for _ in range(1500)]
    ops = random.Random(seed + 1000)
    for n, choice in enumerate(steps):
        va = va_in_window(ops)
        write = ops.choice((None, None, True, False))
        user = ops.random() < 0.4
        flags = ops.choice((P | RW | US | A, P | RW | US | A | D, 0, P))
        value = (0x200000 + 0x1000 * ops.randrange(256)) | flags
        pt, idx = ops.choice(PTS), ops.randrange(64)
        pd = ops.choice(PDS)
        defer = ops.random() < 0.3
        ops_kind = ops.random()
        answers = []
        for side in sides:
            mmu = side.mmu
            if choice < 0.80:
                r = side.fault(va, write, user)
                answers.append((r.kind, r.error_code, r.cr2, r.gpa))
                if r.kind == "wp_trap" and tracking == "wp":
                    mmu.emulated_write(r.gpa & ~3, value.to_bytes(4, "little"))
            elif choice < 0.88:
                if tracking == "pv" and ops_kind < 0.5:
                    side.set_pxe(pt + 4 * idx, value, defer)
                elif tracking == "pv":
                    side.pm.set_guest_u32(pt + 4 * idx, value)  # the guest's own store, then UpdatePxE
                    side.update_pxe(pt + 4 * idx, defer)
                else:
                    side.pm.set_guest_u32(pt + 4 * idx, value)  # behind the VMM's back
            elif choice < 0.93:
                mmu.set_cr3(pd)
            elif choice < 0.97:
                mmu.invlpg(va)
            elif choice < 0.985:
                mmu.set_lazy(False)
            elif choice < 0.99:
                mmu.set_lazy(True)
            else:
                mmu.flush_tlb(include_global=True)
        assert not answers or answers[0] == answers[1], f"step {n}: {answers}"
        if n % 50 == 0 or n == len(steps) - 1:
            assert sides[0].state() == sides[1].state(), f"step {n}"
    # the C path did the bulk of the fills, the rest was Python's
    assert sides[1].in_c > 100


def test_the_core_declines_before_changing_anything():
    """Paging off, a pending deferred queue, no shadow table linked yet: the core answers None
    and leaves no trace (Python then takes the exit from scratch)."""
    side = Side("pv", True, 1)
    mmu = side.mmu
    guest_tables(side, random.Random(1), False)
    side.pm.set_guest_u32(PDS[0], PTS[1] | P | RW | US)
    side.pm.set_guest_u32(PTS[1] + 8, 0x200000 | P | RW | US)
    before = side.state()
    assert side.core.mmu_fault(0x1000, -1, False, mmu.root.mfn) is None  # paging off
    mmu.set_cr3(PDS[0])
    mmu.set_cr0(CR0_PE | CR0_PG | CR0_WP)
    side.core.set_virtual_crs(mmu.cr0, mmu.cr3, mmu.cr4)
    before = side.state()
    assert side.core.mmu_fault(0x2000, -1, False, mmu.root.mfn) is None  # no shadow table at slot 0
    assert side.core.mmu_fault(0x2000, -1, False, mmu.root.mfn + 1) is None  # not the current root
    assert side.state() == before
    mmu.set_pxe(PTS[0], 0x200000 | P | RW | US | A, defer=True)
    before = side.state()
    assert side.core.mmu_fault(0x2000, -1, False, mmu.root.mfn) is None  # a deferred update waits
    assert side.state() == before


def test_set_mmu_refuses_arrays_that_do_not_fit():
    pm = PhysMap(RAM, POOL, layout="permute")
    mmu = ShadowMMU(pm, tracking="wp")
    core = engine_core._core.Core(pm.mem, len(pm.mem))
    sh = mmu.shared
    with pytest.raises(RuntimeError):  # no machine memory given yet
        core.set_mmu(pm.p2m_table, pm.m2p_table, sh.meta, sh.used, sh.snaps, sh.protect, sh.flood, sh.head,
                     sh.ctl, sh.log, sh.watched, sh.watched_low, sh.defq)
    core.set_shadow(pm.mem, len(pm.mem))
    with pytest.raises(ValueError):
        core.set_mmu(pm.p2m_table, pm.m2p_table, sh.meta, sh.used, bytearray(4096), sh.protect, sh.flood,
                     sh.head, sh.ctl, sh.log, sh.watched, sh.watched_low, sh.defq)
    assert core.mmu_fault(0, -1, False, mmu.root.mfn) is None  # refused: the path stays off


# -- fullvirt's write-protect trap of a page-table store (mmu.c core_wp_store) --------------------------
KCODE = 0x5000
#: the stores FullVirt.on_wp_trap emulates (the entry's address in ebx, the value in eax/ecx; None: built
#: per store) and two it does not (a 16-bit store, a segment override): those stay Python's (unshadow)
STORES = {
    "mov [ebx], eax": bytes.fromhex("8903"),
    "mov [ebx+0], ecx (disp8)": bytes.fromhex("894b00"),
    "mov [ebx+esi*1], eax (SIB)": bytes.fromhex("890433"),
    "xchg [ebx], eax": bytes.fromhex("8703"),
    "mov dword [ebx], imm32": None,  # C7 03 imm32, the value filled in per store
    "mov [moffs32], eax": None,  # A3 addr32
    "mov word [ebx], ax": bytes.fromhex("668903"),
    "mov fs:[ebx], eax": bytes.fromhex("648903"),
}


class WpSide:
    """One machine for the store scenario: guest RAM at an offset in machine memory (the engine's
    layout: the core reads instruction bytes from guest RAM), the MMU, and (c=True) the core."""

    def __init__(self, c: bool) -> None:
        self.pm = PhysMap(RAM, POOL, layout="offset")
        self.mmu = ShadowMMU(self.pm, tracking="wp", rom=ROM)
        self.core = None
        self.in_c = self.wp_in_c = 0
        self.regs = {"eax": 0, "ecx": 0, "edx": 0, "ebx": 0, "esp": 0x9000, "ebp": 0, "esi": 0, "edi": 0}
        self.eip = KCODE
        if c:
            ram = memoryview(self.pm.mem)[POOL << 12:]
            self.core = engine_core._core.Core(ram, RAM)
            self.core.set_shadow(self.pm.mem, len(self.pm.mem))
            engine_core.bind_mmu(self.core, self.mmu)
            self.core.set_uc_ctl(0)
            from vmirom.machine.mmu.shared import C_WP_EMULATE

            self.mmu.shared.ctl[C_WP_EMULATE] = 1

    def store_fault(self, va: int, value: int) -> tuple:
        """One #PF of the kernel's store at KCODE to linear `va`: the core first (as its hook), else
        ShadowMMU.fault and, for a write-protect trap, what FullVirt.on_wp_trap does."""
        mmu = self.mmu
        if self.core is not None:
            self.core.set_virtual_crs(mmu.cr0, mmu.cr3, mmu.cr4)
            regs = (self.eip, 0x2, 0x08, 0x10, self.regs["esp"], mmu.cr0, mmu.root.mfn << 12, mmu.cr4,
                    0, 0, 0, 0, 0, 0, 0, 0, va, self.regs["edi"])
            gprs = tuple(self.regs[n] for n in engine_core._GPR_NAMES)
            r = self.core.shadow_pf(regs, 0, gprs)
            if r is not None:
                self.in_c += 1
                mmu.pull()
                if r == "hidden":
                    return ("hidden",)
                _wp, eip, reg, val = r
                if reg >= 0:
                    self.regs[engine_core._GPR_NAMES[reg]] = val
                self.eip = eip
                self.wp_in_c += 1
                return ("wp", eip)
        r = mmu.fault(va, write=None, user=False)
        if r.kind != "wp_trap":
            return (r.kind,)
        return self.emulate(r.gpa, value)

    def emulate(self, gpa: int, value: int) -> tuple:
        """FullVirt.on_wp_trap's outcome for the instruction at KCODE (the test knows its form)."""
        mmu, form = self.mmu, self.form
        if form in ("mov word [ebx], ax", "mov fs:[ebx], eax"):
            mmu.unshadow(gpa >> 12)
            return ("unshadow",)
        old = mmu.pm.guest_u32(gpa & ~3)
        mmu.emulated_write(gpa & ~3, value.to_bytes(4, "little"))
        if form.startswith("xchg"):
            self.regs["eax"] = old
        self.eip = KCODE + len(self.code)
        return ("wp", self.eip)

    def place(self, form: str, va: int, value: int) -> None:
        """The instruction at KCODE and the registers it stores from."""
        code = STORES[form]
        if form == "mov dword [ebx], imm32":
            code = bytes.fromhex("c703") + value.to_bytes(4, "little")
        elif form == "mov [moffs32], eax":
            code = b"\xa3" + va.to_bytes(4, "little")
        self.form, self.code, self.eip = form, code, KCODE
        self.pm.write(KCODE, code + b"\x90" * 16)
        self.regs.update(eax=value, ecx=value, ebx=va, esi=0)

    def state(self) -> dict:
        return Side.state(self)  # type: ignore[arg-type]


def wp_guest(side: WpSide) -> None:
    """Slot 0 maps the low 4 MiB (code, the page tables themselves) kernel-only; slots 1-7 use PTS[1:]
    (page tables once walked: write-protected under "wp" tracking)."""
    pm = side.pm
    pm.set_guest_u32(PDS[0], PTS[0] | P | RW)
    for i in range(1024):
        pm.set_guest_u32(PTS[0] + 4 * i, (i << 12) | P | RW)
    for slot in range(1, 8):
        pm.set_guest_u32(PDS[0] + 4 * slot, PTS[slot] | P | RW | US)
        for i in range(64):
            pm.set_guest_u32(PTS[slot] + 4 * i, (0x200000 + 0x1000 * i) | P | RW | US)
    side.mmu.set_cr3(PDS[0])
    side.mmu.set_cr0(CR0_PE | CR0_PG | CR0_WP)


@pytest.mark.parametrize("seed", range(3))
def test_fullvirt_page_table_stores_agree_on_both_paths(seed):
    """Random kernel stores into shadowed page tables, in every form FullVirt emulates (and two it does
    not), between faults that walk the tables (resetting the flood counts): the core's emulation
    (guest entry, every shadow of it - zap or prefill -, flood count, A/D bits, EIP and xchg's
    register, counters) equals ShadowMMU.fault + FullVirt.on_wp_trap's, and does most of them."""
    sides = [WpSide(c) for c in (False, True)]
    for side in sides:
        wp_guest(side)
    ops = random.Random(seed)
    forms = list(STORES)
    for n in range(600):
        slot, idx = ops.randrange(1, 8), ops.randrange(64)
        va = (slot << 22) | (idx << 12) | ops.randrange(0, 4096, 4)
        pt, e = PTS[ops.randrange(1, 8)], ops.randrange(64)
        flags = ops.choice((P | RW | US | A, P | RW | US | A | D, 0, P | US))
        value = (0x200000 + 0x1000 * ops.randrange(64)) | flags
        form = ops.choice(forms) if ops.random() < 0.3 else forms[ops.randrange(2)]
        walk = ops.random() < 0.5
        answers = []
        for side in sides:
            if walk:  # a load through a table: fills, resets the flood count
                side.place("mov [ebx], eax", va, 0)
                answers.append(side.store_fault(va, 0))
                side.place(form, pt + 4 * e, value)
                answers.append(side.store_fault(pt + 4 * e, value))  # the entry's page: filled read-only
            else:
                side.place(form, pt + 4 * e, value)
            answers.append(side.store_fault(pt + 4 * e, value))
            answers.append((dict(side.regs), side.eip))
        half = len(answers) // 2
        assert answers[:half] == answers[half:], f"step {n}: {answers}"
        if n % 25 == 0 or n == 599:
            assert sides[0].state() == sides[1].state(), f"step {n}"
    assert sides[1].in_c > 200 and sides[1].wp_in_c > 100
    st = sides[1].mmu.stats
    assert st.emulated_pte_writes > 100 and st.unshadows > 0


def test_the_flood_limit_is_the_same_in_c():
    assert engine_core._core.FLOOD_LIMIT == shadow_mod.FLOOD_LIMIT
