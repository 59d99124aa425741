"""Whether a guest clock figure (t1 - t0 of one test window) is a measurement at all.

The guest's `SYS_clock` is, without a ROM clock, timer ticks (10 ms at HZ=100) refined with the TSC,
its rate learnt from the ticks; the refinement is clamped to one tick short of the next tick
(`guest/kernel/timer.c`).  So a reading is only as fine as a tick when

* its sub-tick part is 0: no TSC refinement yet (the TSC rate is learnt from the first ticks), or
* its sub-tick part is tick - 1: the refinement saturated because the TSC ran faster than the
  rate learnt (on QEMU after the host descheduled it, for example).

Two saturated readings inside the same tick give t1 == t0: a test of a few hundred microseconds
"took 0 ns".  Such a figure is not small, it is unknown, and it must never become a 0 in a table,
a ratio or a geomean.  `check` says why a figure cannot be used (or None when it can).
"""

from __future__ import annotations

from dataclasses import dataclass

#: the guest's timer frequency when its bench_begin line does not say (guest/include/syscall.h)
DEFAULT_HZ = 100
#: a figure bracketed by a tick-grained reading is kept only if it spans at least this many ticks
#: (then the one-tick uncertainty is at most 1/MIN_TICKS of it)
MIN_TICKS = 20


@dataclass(frozen=True)
class Reading:
    """t0 and t1 of one window, in the guest's unit ("ns" or "tsc")."""

    t0: float
    t1: float
    unit: str

    @property
    def total(self) -> float:
        return self.t1 - self.t0


def tick_ns(hz: object) -> int:
    """Nanoseconds per guest timer tick from the bench_begin line's `hz` (default HZ=100)."""
    return 1_000_000_000 // (hz if isinstance(hz, int) and 0 < hz <= 1_000_000 else DEFAULT_HZ)


def coarse(value: float, tick: int) -> bool:
    """A reading that only knows the tick it fell into (unrefined or saturated)."""
    sub = int(value) % tick
    return sub in (0, tick - 1)


def check(r: Reading | None, tick: int) -> str | None:
    """Why `r` cannot be used as a time (None when it can)."""
    if r is None:
        return "the guest printed no clock readings"
    if r.unit != "ns":
        return f"the guest clock counts {r.unit!r}, not ns (no SYS_clock)"
    if r.total <= 0:
        return (f"the guest clock did not advance in the window (t0={r.t0:.0f}, t1={r.t1:.0f} ns): "
                f"the test was shorter than the clock's resolution")
    if (coarse(r.t0, tick) or coarse(r.t1, tick)) and r.total < MIN_TICKS * tick:
        return (f"tick-grained guest clock reading (t0={r.t0:.0f}, t1={r.t1:.0f} ns, "
                f"resolution {tick / 1e6:g} ms): {r.total / 1e6:.3f} ms is below "
                f"{MIN_TICKS} ticks")
    return None
