"""Ending time slices by the CPU time of the thread that runs the vCPU.

Why not Unicorn's own `emu_start(timeout=...)`: for every call it creates a thread that polls the
host's wall clock with `usleep(2)` and is joined at the end of the slice.  On a shared 2-core host
that thread competes with the emulator for the CPU, a slice ended by a hook still waits for the
join, and - worse - the guest's time ran with the host's wall clock: while the VMM was descheduled
by other users' work the PIT's periods went by unseen and collapsed into one tick, so the guest's
clock (and every benchmark figure computed from it) depended on the load of the host.

So guest time is the CPU time of the vCPU thread (`vmirom.machine.clock`), and slices are cut by
one persistent thread that sleeps until the vCPU thread has used its budget of CPU time, then calls
the engine's stop function.  No polling: it sleeps for the remaining budget (CPU time never runs
faster than wall time), re-reads the vCPU thread's CPU clock, and sleeps again if needed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable


def thread_cpu_clock() -> int:
    """The clock id of the calling thread's CPU-time clock (for `time.clock_gettime_ns`)."""
    return time.pthread_getcpuclockid(threading.get_ident())


class SliceTimer:
    """Calls `stop()` once the thread that called `arm` has used `budget_ns` of CPU time, unless
    `disarm` came first.  A stop can never reach a later slice: `disarm` and the firing decision
    take the same lock."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self._cv = threading.Condition()
        self._clk: int | None = None
        self._clk_thread: int | None = None
        self._deadline: int | None = None
        self._fired = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pid = 0

    def arm(self, budget_ns: int) -> None:
        """Start a slice of `budget_ns` nanoseconds of the calling thread's CPU time."""
        self._ensure_thread()
        tid = threading.get_ident()
        if self._clk_thread != tid:
            self._clk, self._clk_thread = thread_cpu_clock(), tid
        with self._cv:
            self._deadline = time.clock_gettime_ns(self._clk) + max(1, int(budget_ns))
            self._fired = False
            self._cv.notify()

    def disarm(self) -> bool:
        """End the slice; True when the timer had fired (the slice was cut by its budget)."""
        with self._cv:
            self._deadline = None
            return self._fired

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()

    # -- the timer thread -----------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        # threads do not survive fork(): (re)start in the process that runs the vCPU
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            if self._pid != os.getpid():
                self._cv = threading.Condition()  # the parent's lock may have been held at fork()
            self._pid = os.getpid()
            self._closed = False
            self._thread = threading.Thread(target=self._run, name="vmirom-slice-timer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with self._cv:
            while not self._closed:
                if self._deadline is None:
                    self._cv.wait()
                    continue
                left = self._deadline - time.clock_gettime_ns(self._clk)
                if left > 0:
                    self._cv.wait(left / 1e9)
                    continue
                self._deadline = None
                self._fired = True
                self._stop()
