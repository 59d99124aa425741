"""Ending time slices without Unicorn's `timeout=` thread and without the Python GIL.

Why not `emu_start(timeout=...)`: for every call Unicorn creates a thread that polls the wall clock
with `usleep(2)` and joins it at the end of the slice; on a shared 2-core host that poller competes
with the emulator for the CPU.  Why not a Python thread: it needs the GIL each time it wakes up, and
when the host is loaded the vCPU thread then waits for that thread to be scheduled (measured:
hundreds of µs per GIL hand-over, at every slice).

So a POSIX timer (`timer_create(CLOCK_MONOTONIC, SIGEV_THREAD)`) calls the C function
`uc_emu_stop(uc)` directly when it expires: no Python, no GIL, no polling, two system calls per
slice (arm, disarm).  Guest time itself is the vCPU thread's CPU time (`vmirom.machine.clock`);
CPU time never runs faster than the monotonic clock, so a slice armed for the time left before
the next guest timer deadline never overshoots it (under host load slices just get shorter).
A late expiry can at worst end the NEXT slice early, which only costs one more slice.

The timer REPEATS (every `budget`, at least `MIN_REPEAT_NS`) until `disarm`: an expiry that lands
after `arm` but before `uc_emu_start` has set itself up is lost - the stop request is cleared by
`uc_emu_start` (and before it sets `emulation_done = false`, `uc_emu_stop` does not even break the
translation loop) - and a one-shot timer would then let that slice run until the guest exits by
itself, for ever in a loop without exits (measured: a direct Unicorn loop of 100 us slices hung
after a few hundred slices on the loaded host).  The next expiry ends it; expiries after the slice
ended and before `disarm` only set a request the next `uc_emu_start` clears.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

CLOCK_MONOTONIC = 1
SIGEV_THREAD = 2
MIN_REPEAT_NS = 100_000  # the repeat interval's floor: no stream of expiries for tiny budgets


class _Sigevent(ctypes.Structure):
    """struct sigevent (Linux, 64 bytes): value, signo, notify, then the SIGEV_THREAD function."""

    _fields_ = [
        ("sigev_value", ctypes.c_void_p),
        ("sigev_signo", ctypes.c_int),
        ("sigev_notify", ctypes.c_int),
        ("sigev_function", ctypes.c_void_p),
        ("sigev_attributes", ctypes.c_void_p),
        ("_pad", ctypes.c_int * 8),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    try:
        libc.timer_create  # noqa: B018 - glibc >= 2.34 has it in libc; older ones in librt
        return libc
    except AttributeError:
        return ctypes.CDLL(ctypes.util.find_library("rt") or "librt.so.1", use_errno=True)


class SliceTimer:
    """Timer that calls the C function `stop_fn(arg)` (`uc_emu_stop(uc)`) after `arm`'s budget, and
    again every budget, until `disarm`."""

    def __init__(self, stop_fn: int, arg: int) -> None:
        self._lib = _libc()
        self._lib.timer_create.argtypes = [ctypes.c_int, ctypes.POINTER(_Sigevent), ctypes.c_void_p]
        self._lib.timer_settime.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.POINTER(_Itimerspec),
        ]
        self._lib.timer_delete.argtypes = [ctypes.c_void_p]
        ev = _Sigevent()
        ev.sigev_value = arg
        ev.sigev_notify = SIGEV_THREAD
        ev.sigev_function = stop_fn
        self._timer = ctypes.c_void_p()
        if self._lib.timer_create(CLOCK_MONOTONIC, ctypes.byref(ev), ctypes.byref(self._timer)) != 0:
            raise OSError(ctypes.get_errno(), "timer_create failed")
        self._arm = _Itimerspec()
        self._off = _Itimerspec()
        self._deadline = 0

    def arm(self, budget_ns: int) -> None:
        """Start a slice of at most `budget_ns` nanoseconds (then again every budget until `disarm`,
        see the module docstring)."""
        budget_ns = max(1000, int(budget_ns))
        self._arm.it_value.tv_sec, self._arm.it_value.tv_nsec = divmod(budget_ns, 1_000_000_000)
        repeat = max(budget_ns, MIN_REPEAT_NS)
        self._arm.it_interval.tv_sec, self._arm.it_interval.tv_nsec = divmod(repeat, 1_000_000_000)
        self._lib.timer_settime(self._timer, 0, ctypes.byref(self._arm), None)
        # read after arming: the elapsed time disarm measures is never more than the timer's
        self._deadline = time.monotonic_ns() + budget_ns

    def disarm(self) -> bool:
        """End the slice; True when the timer had already expired (the slice was cut by it).  A
        repeating timer's remaining time says nothing about that, so the clock does."""
        expired = time.monotonic_ns() >= self._deadline  # before disarming: then it did expire
        self._lib.timer_settime(self._timer, 0, ctypes.byref(self._off), None)
        return expired

    def close(self) -> None:
        if self._timer is not None:
            self._lib.timer_delete(self._timer)
            self._timer = None
