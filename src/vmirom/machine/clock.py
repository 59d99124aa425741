"""Virtual time.

Guest time is the CPU time of the thread that runs the vCPU (Unicorn's work plus the VMM's exit
handling), and it jumps forward while the guest halts (the VMM skips idle time to the next timer
deadline instead of sleeping), so an idle guest costs no wall-clock time.  All devices read time
from here, in nanoseconds.

Why CPU time and not the host's wall clock: this VMM runs on shared hosts.  With wall-clock time,
every moment the VMM process waited for a CPU was guest time in which the PIT's periods went by
unseen (missed periods collapse into one interrupt), so the guest lost ticks and its clock, its
scheduling and every benchmark figure depended on what other users were running.  The engine cuts
its slices by the same clock (`vmirom.engines.slicetimer`).
"""

from __future__ import annotations

import threading
import time


class VirtualClock:
    def __init__(self) -> None:
        self._elapsed = self._cpu_ns  # what drives guest time (see drive_by)
        self._wall_base: int | None = None  # set: the wall clock is derived from guest time
        self._clk: int | None = None
        self._thread: int | None = None
        self._base = 0
        self._skipped = 0

    def _cpu_ns(self) -> int:
        """CPU time of the vCPU thread: the first thread to ask (the one running the VM).  Reads
        from another thread (rare: tests, tools) see that same thread's clock."""
        if self._clk is None:
            self._thread = threading.get_ident()
            self._clk = time.pthread_getcpuclockid(self._thread)
            self._base = time.clock_gettime_ns(self._clk)
        return time.clock_gettime_ns(self._clk) - self._base

    def now_ns(self) -> int:
        """Nanoseconds of guest time since power-on."""
        return self._elapsed() + self._skipped

    def drive_by(self, elapsed_ns, wall_base_ns: int) -> None:
        """Let `elapsed_ns()` drive guest time instead of CPU time, and derive the wall clock from
        guest time starting at `wall_base_ns` (the deterministic mode: `vmirom.debug.determinism`)."""
        self._elapsed = elapsed_ns
        self._wall_base = wall_base_ns

    def skip_to(self, ns: int) -> None:
        """Advance guest time to `ns` at once (used when the guest halts until a deadline)."""
        now = self.now_ns()
        if ns > now:
            self._skipped += ns - now

    @property
    def driven(self) -> bool:
        """True when guest time comes from `drive_by` (cheap to read), not from the CPU clock (a
        system call per read)."""
        return self._wall_base is not None

    def wall_ns(self) -> int:
        """Host wall-clock time (for the wallclock VMI call)."""
        if self._wall_base is not None:
            return self._wall_base + self.now_ns()
        return time.time_ns()
