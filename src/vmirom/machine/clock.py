"""Virtual time.

Guest time runs with the host's monotonic clock while the vCPU runs, and jumps forward while the
guest halts (the VMM skips idle time to the next timer deadline instead of sleeping), so an idle
guest does not cost wall-clock time.  All devices read time from here, in nanoseconds.
"""

from __future__ import annotations

import time


class VirtualClock:
    def __init__(self) -> None:
        self._t0 = time.monotonic_ns()
        self._skipped = 0

    def now_ns(self) -> int:
        """Nanoseconds of guest time since power-on."""
        return time.monotonic_ns() - self._t0 + self._skipped

    def skip_to(self, ns: int) -> None:
        """Advance guest time to `ns` at once (used when the guest halts until a deadline)."""
        now = self.now_ns()
        if ns > now:
            self._skipped += ns - now

    def wall_ns(self) -> int:
        """Host wall-clock time (for the wallclock VMI call)."""
        return time.time_ns()
