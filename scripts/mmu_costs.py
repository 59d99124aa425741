"""Costs of the shadow MMU's operations on synthetic page tables, no engine (docs/mmu.md, "Costs").

    python3 scripts/mmu_costs.py      # from the repository root

Uses the unit tests' harness (tests/test_mmu_shadow.py: a software CPU that walks the shadows);
prints one Markdown row per operation (median of 5 batches) and the load average, because the
figures are only comparable with others taken on an equally loaded machine.
"""

from __future__ import annotations

import os
import statistics
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "src"), os.path.join(HERE, "..", "tests")]

from test_mmu_shadow import machine, paging_on  # noqa: E402
from vmirom.machine.mmu.bits import RW, US, A, D, P  # noqa: E402


def median_us(fn, n: int = 2000) -> float:
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        fn(n)
        runs.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(runs)


def pv_costs() -> dict[str, float]:
    pm, mmu, cpu, g = machine("pv", pool=1024)
    pd = g.frame()
    for k in range(512):
        g.map(pd, 0x400000 + k * 0x1000, 0x200000 + k * 0x1000)
    pt = g.entry(pd, 1) & ~0xFFF
    mmu.allocate_page(pd >> 12)
    mmu.allocate_page(pt >> 12)
    paging_on(mmu, pd)
    for k in range(512):
        cpu.read32(0x400000 + k * 0x1000)
    table = mmu.root.children[1]

    def zap(n):
        for i in range(n):
            mmu._zap_leaf(table, i % 512)

    def zap_and_fill(n):
        for i in range(n):
            mmu._zap_leaf(table, i % 512)
            mmu.fault(0x400000 + (i % 512) * 0x1000, write=None, user=False)

    def set_pxe(flags):
        def run(n):
            for i in range(n):
                k = i % 512
                mmu.set_pxe(pt + 4 * k, (0x200000 + k * 0x1000) | flags)

        return run

    spaces = [g.frame() for _ in range(16)]
    for s in spaces:
        g.map(s, 0x400000, 0x200000)
        mmu.allocate_page(s >> 12)

    def cr3(n):
        for i in range(n):
            mmu.set_cr3(spaces[i % 16])

    def invlpg(n):
        for i in range(n):
            mmu.invlpg(0x400000 + (i % 512) * 0x1000)

    return {
        "hidden fault (fill one leaf of an existing shadow table)": median_us(zap_and_fill) - median_us(zap),
        "SetPxE, entry not yet accessed (write + zap)": median_us(set_pxe(P | RW | US)),
        "SetPxE, entry accessed+dirty (write + prefill)": median_us(set_pxe(P | RW | US | A | D)),
        "CR3 load of a cached address space (announced tables)": median_us(cr3),
        "invlpg": median_us(invlpg),
    }


def wp_costs() -> dict[str, float]:
    pm, mmu, cpu, g = machine("wp", pool=1024)
    pd = g.frame()
    g.map(pd, 0x400000, 0x200000)
    pt = g.entry(pd, 1) & ~0xFFF
    paging_on(mmu, pd)
    cpu.read32(0x400000)

    def emulated(n):
        for i in range(n):
            mmu.emulated_write(pt + 4 * (i % 2), struct.pack("<I", 0x200000 | P | RW | US))
            mmu.flood[:] = bytes(len(mmu.flood))  # measure the write, not the unshadowing

    spaces = [g.frame() for _ in range(64)]
    for s in spaces:
        g.map(s, 0x400000, 0x200000)

    def new_space(n):
        for i in range(n):
            s = spaces[i % 64]
            mmu.set_cr3(s)
            cpu.read32(0x400000)
            mmu.set_cr3(pd)
            mmu.unshadow(s >> 12)

    return {
        "emulated PTE write (wp: store + shadow update)": median_us(emulated),
        "new address space: root + first fill + unshadow (wp)": median_us(new_space, 200),
    }


if __name__ == "__main__":
    for name, us in {**pv_costs(), **wp_costs()}.items():
        print(f"| {name} | {us:.1f} µs |")
    print("load average", os.getloadavg())
