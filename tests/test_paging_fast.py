"""The page walker's fast paths (used by interrupt delivery and single-page reads/writes) must agree
with the general, checked walker on every input, including hostile page tables: entries pointing
outside RAM, 4 MiB pages with and without CR4.PSE, supervisor/read-only pages, page crossings and
the read-only ROM."""

from __future__ import annotations

import random
import struct

import pytest

from vmirom.machine.faults import GuestFault
from vmirom.machine.memory import GuestMemory
from vmirom.machine.paging import Paging

RAM = 4 * 1024 * 1024
ROM = (0xC0000, 0xC2000)


class Regs:
    """The engine part the walker needs: CR0/CR3/CR4 (no batched reader: the general path)."""

    def __init__(self) -> None:
        self.cr = {"cr0": 0, "cr3": 0, "cr4": 0}

    def reg(self, name: str) -> int:
        return self.cr[name]


def random_tables(mem: GuestMemory, rng: random.Random) -> int:
    """A page directory at a random page with random entries; returns CR3."""
    cr3 = rng.randrange(0, RAM // 4096) * 4096
    for i in range(1024):
        kind = rng.random()
        if kind < 0.3:
            v = rng.getrandbits(32)  # garbage, often outside RAM
        elif kind < 0.5:
            v = 0  # not present
        else:
            v = rng.randrange(0, RAM // 4096) * 4096 | rng.getrandbits(8)  # a table or a 4 MiB page
        struct.pack_into("<I", mem.ram, cr3 + 4 * i, v)
    # and some page tables full of plausible entries
    for _ in range(8):
        pt = rng.randrange(0, RAM // 4096) * 4096
        for i in range(1024):
            frame = rng.randrange(0, RAM // 4096 + 16)  # a few frames beyond RAM
            struct.pack_into("<I", mem.ram, pt + 4 * i, frame * 4096 | rng.getrandbits(3))
        struct.pack_into("<I", mem.ram, cr3 + 4 * rng.randrange(1024), pt | rng.getrandbits(3))
    return cr3


def linears(rng: random.Random, mem: GuestMemory, cr3: int, n: int):
    for _ in range(n):
        pdi = rng.randrange(1024)
        yield (pdi << 22) | rng.randrange(1 << 22)


@pytest.mark.parametrize("seed", range(6))
def test_fast_walks_agree_with_the_checked_walker(seed: int) -> None:
    rng = random.Random(seed)
    mem = GuestMemory(RAM)
    mem.ram.write(rng.randbytes(RAM))
    mem.readonly = [ROM]
    regs = Regs()
    paging = Paging(mem, regs)
    cr3 = random_tables(mem, rng)
    checked = 0
    for cr0, cr4 in ((0x80000011, 0x10), (0x80010011, 0x10), (0x80010011, 0), (0x11, 0)):
        regs.cr.update(cr0=cr0, cr3=cr3 | rng.getrandbits(12), cr4=cr4)
        for lin in linears(rng, mem, cr3, 400):
            if cr0 & 0x80000000 == 0:
                lin &= RAM - 1 | 0xFFF  # mostly inside RAM with paging off
            size = rng.choice((1, 4, 8, 16, 24))
            if rng.random() < 0.1:
                lin = (lin | 0xFFF) - rng.randrange(8)  # near a page end
            for write in (False, True):
                for user in (False, True):
                    fast = paging.phys(lin, size, regs.cr["cr0"], regs.cr["cr3"], cr4, write, user)
                    try:
                        slow = paging.translate(lin, write=write, user=user)
                        mem.check(slow, size, write=write)
                        crosses = (lin & 0xFFF) + size > 0x1000
                    except GuestFault:
                        slow, crosses = -1, False
                    if crosses:
                        assert fast == -1
                    else:
                        assert fast == slow, (hex(lin), size, write, user)
                        checked += fast >= 0
            # the supervisor 8-byte reader (IDT/GDT/TSS) and the one-call flags walk
            pair = paging.sys_u32x2(lin, regs.cr["cr0"], regs.cr["cr3"], cr4)
            try:
                want = struct.unpack("<II", paging.read(lin, 8)) if (lin & 0xFFF) <= 0xFF8 else None
            except GuestFault:
                want = None
            assert pair == want, hex(lin)
            w = paging.walk(lin)
            flags = paging.entry(lin, regs.cr["cr0"], regs.cr["cr3"], cr4)
            assert bool(flags & 1) == (w.phys is not None)
            if w.phys is not None:
                assert bool(flags & 2) == w.writable and bool(flags & 4) == w.user
    assert checked > 100  # the random tables did produce plenty of valid translations


class BatchedRegs(Regs):
    """Same registers with a batched reader: Paging then takes its single-page fast path."""

    def reader(self, names):
        return lambda: tuple(self.cr[n] for n in names)


def outcome(fn):
    try:
        return ("ok", fn())
    except GuestFault as f:
        return ("fault", f.vector, f.error_code, f.cr2)


@pytest.mark.parametrize("seed", range(3))
def test_single_page_read_write_fast_path_matches_general_path(seed: int) -> None:
    rng = random.Random(100 + seed)
    mem = GuestMemory(RAM)
    mem.ram.write(rng.randbytes(RAM))
    mem.readonly = [ROM]
    general, batched = Regs(), BatchedRegs()
    slow, fast = Paging(mem, general), Paging(mem, batched)
    assert slow._crs is None and fast._crs is not None
    cr3 = random_tables(mem, rng)
    for cr0, cr4 in ((0x80000011, 0x10), (0x80010011, 0)):
        for r in (general, batched):
            r.cr.update(cr0=cr0, cr3=cr3, cr4=cr4)
        for lin in linears(rng, mem, cr3, 600):
            size = rng.choice((0, 1, 4, 8, 100, 4096))
            user = rng.random() < 0.5
            a = outcome(lambda: slow.read(lin, size, user=user))  # noqa: B023
            b = outcome(lambda: fast.read(lin, size, user=user))  # noqa: B023
            assert a == b, (hex(lin), size, user)
            if a[0] == "ok":  # write the same bytes back: same outcome, memory unchanged
                wa = outcome(lambda: slow.write(lin, a[1], user=user))  # noqa: B023
                wb = outcome(lambda: fast.write(lin, a[1], user=user))  # noqa: B023
                assert wa == wb, (hex(lin), size, user)


class CountingRegs(BatchedRegs):
    """A batched engine with the write generation counter: Paging reuses its CR read per gen."""

    def __init__(self) -> None:
        super().__init__()
        self.reg_gen = 0
        self.reads = 0

    def reader(self, names):
        def read():
            self.reads += 1
            return tuple(self.cr[n] for n in names)

        return read


def test_control_registers_are_reread_after_every_generation_bump() -> None:
    mem = GuestMemory(RAM)
    regs = CountingRegs()
    paging = Paging(mem, regs)
    # two page directories mapping linear 0 to different frames (4 KiB pages)
    for pd, pt, frame in ((0x10000, 0x11000, 0x20000), (0x12000, 0x13000, 0x30000)):
        struct.pack_into("<I", mem.ram, pd, pt | 7)
        struct.pack_into("<I", mem.ram, pt, frame | 7)
        struct.pack_into("<I", mem.ram, frame, frame)  # each frame holds its own address
    regs.cr.update(cr0=0x80000011, cr3=0x10000, cr4=0)
    assert paging.u32(0) == 0x20000 and paging.u32(0) == 0x20000
    assert regs.reads == 1  # one engine read for both accesses of the same generation
    regs.cr["cr3"] = 0x12000
    regs.reg_gen += 1  # what the engine does on any register write, hook entry or slice
    assert paging.u32(0) == 0x30000
    assert regs.reads == 2
