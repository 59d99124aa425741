"""The 8254 programmable interval timer: channel 0 drives IRQ0 (modes 0, 2, 3; others quiet it),
channel 2 is readable through port 0x61 for calibration loops.  Time comes from the virtual clock,
so counters are computed, never ticked."""

from __future__ import annotations

from collections.abc import Callable

FREQ = 1_193_182


class _Channel:
    def __init__(self) -> None:
        self.mode = 0
        self.access = 3  # 1 lobyte, 2 hibyte, 3 lo/hi
        self.reload = 0x10000
        self.start_ns = 0
        self.armed = False
        self.write_lo: int | None = None
        self.latch: int | None = None
        self.read_hi = False

    def period_ns(self) -> int:
        return max(1, self.reload * 1_000_000_000 // FREQ)

    def count_at(self, now_ns: int) -> int:
        ticks = (now_ns - self.start_ns) * FREQ // 1_000_000_000
        if self.mode in (2, 3):
            return self.reload - (ticks % self.reload)
        return max(0, self.reload - ticks) & 0xFFFF


class Pit:
    PORTS = (0x40, 0x41, 0x42, 0x43, 0x61)

    def __init__(self, now_ns: Callable[[], int], raise_irq0: Callable[[], None]) -> None:
        self.now = now_ns
        self.raise_irq0 = raise_irq0
        self.ch = [_Channel(), _Channel(), _Channel()]
        self.next_fire: int | None = None
        self.port61 = 0

    # -- timer side -----------------------------------------------------------------------------
    def deadline(self) -> int | None:
        """Virtual time (ns) of the next IRQ0, or None if channel 0 is quiet."""
        return self.next_fire

    def update(self) -> None:
        """Raise IRQ0 if its deadline passed (missed periods collapse into one edge)."""
        if self.next_fire is None:
            return
        now = self.now()
        if now < self.next_fire:
            return
        c = self.ch[0]
        self.raise_irq0()
        if c.mode in (2, 3):
            per = c.period_ns()
            missed = (now - self.next_fire) // per + 1
            self.next_fire += missed * per
        else:
            self.next_fire = None

    # -- ports -----------------------------------------------------------------------------------
    def port_in(self, port: int, size: int) -> int:
        if port == 0x61:
            c2 = self.ch[2]
            out = 0
            if self.port61 & 1 and c2.armed:
                out = (
                    0x20
                    if c2.count_at(self.now()) > c2.reload // 2
                    or c2.mode == 0
                    and c2.count_at(self.now()) == 0
                    else 0
                )
            return (self.port61 & 0x0F) | out
        if port == 0x43:
            return 0xFF
        c = self.ch[port - 0x40]
        value = c.latch if c.latch is not None else c.count_at(self.now())
        if c.access == 1:
            c.latch = None
            return value & 0xFF
        if c.access == 2:
            c.latch = None
            return (value >> 8) & 0xFF
        if not c.read_hi:
            c.read_hi = True
            if c.latch is None:
                c.latch = value
            return value & 0xFF
        c.read_hi = False
        c.latch = None
        return (value >> 8) & 0xFF

    def port_out(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == 0x61:
            self.port61 = value
            return
        if port == 0x43:
            sel = value >> 6
            if sel == 3:
                return  # read-back: not supported
            c = self.ch[sel]
            acc = (value >> 4) & 3
            if acc == 0:  # counter latch
                c.latch = c.count_at(self.now())
                return
            c.access, c.mode = acc, (value >> 1) & 7
            if c.mode > 5:
                c.mode -= 4
            c.write_lo, c.read_hi, c.armed = None, False, False
            if sel == 0:
                self.next_fire = None  # programming stops the old count
            return
        idx = port - 0x40
        c = self.ch[idx]
        if c.access == 3:
            if c.write_lo is None:
                c.write_lo = value
                return
            reload = c.write_lo | (value << 8)
            c.write_lo = None
        elif c.access == 1:
            reload = value
        else:
            reload = value << 8
        c.reload = reload or 0x10000
        c.start_ns = self.now()
        c.armed = True
        if idx == 0:
            if c.mode in (0, 2, 3):
                self.next_fire = c.start_ns + c.period_ns()
            else:
                self.next_fire = None  # mode 1/4/5: no free-running IRQ0
