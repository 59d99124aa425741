"""Host-side instruments for one VMM run: where wall time goes, and exit counters at console lines.

Nothing here changes the VMM.  `Probe` wraps three things from the outside:

* the engine's `run_slice` (time spent inside Unicorn, including the exit hooks it calls),
* the hook object the engine calls back (`set_hooks`) and the code hooks personalities add
  (`add_code_hook`): time spent in Python exit handlers, by hook,
* the UART sink: every console line is watched, and at the first byte of a line and at its
  newline a `Snapshot` (host time, handler time, exit counters) is taken, synchronously inside
  the guest's `out` to the UART.

Time in the guest = time inside `run_slice` minus time in handlers; everything else (handlers,
the run loop, timer and interrupt bookkeeping) is "outside the guest".  The ctypes trampoline that
Unicorn goes through before a hook's Python code starts is not visible here and counts as guest
time, so the outside share is a slight under-estimate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmirom.guest.console import JSON_PREFIX

_now = time.perf_counter_ns

#: Counters a personality keeps of work its ROM did in the guest, without an exit (attribute ->
#: name in the snapshot).  `vmi2` writes page-table entries in the guest in lazy-MMU mode and
#: validates them at one flush hypercall: the exit counters see the flush, these see the entries.
IN_GUEST_COUNTERS = {"batched": "pte_updates_batched", "batch_flushes": "batch_flushes",
                     "irq_windows": "irq_windows"}


def in_guest_counters(personality: Any) -> dict[str, int]:
    """The personality's IN_GUEST_COUNTERS that it has (integers only)."""
    out = {}
    for attr, name in IN_GUEST_COUNTERS.items():
        v = getattr(personality, attr, None)
        if isinstance(v, int) and not isinstance(v, bool):
            out[name] = v
    return out


@dataclass(frozen=True)
class Snapshot:
    """The VMM's counters at one instant of a run."""

    wall_ns: int                    # host time since the probe started
    guest_ns: int                   # host time spent running guest code (inside slices, not in handlers)
    handler_ns: int                 # host time in Python exit handlers
    kinds: dict[str, int]           # coarse exit counters (Metrics.kinds)
    detail: dict[str, int]          # detailed exit counters (Metrics.detail)
    in_guest: dict[str, int] = field(default_factory=dict)  # personality work done without an exit

    def minus(self, earlier: Snapshot) -> Delta:
        def sub(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            out = {k: v - b.get(k, 0) for k, v in a.items()}
            return {k: v for k, v in sorted(out.items()) if v}
        return Delta(self.wall_ns - earlier.wall_ns, self.guest_ns - earlier.guest_ns,
                     self.handler_ns - earlier.handler_ns, sub(self.kinds, earlier.kinds),
                     sub(self.detail, earlier.detail), sub(self.in_guest, earlier.in_guest))


@dataclass(frozen=True)
class Delta:
    """What happened between two snapshots."""

    wall_ns: int
    guest_ns: int
    handler_ns: int
    kinds: dict[str, int]
    detail: dict[str, int]
    in_guest: dict[str, int] = field(default_factory=dict)

    @property
    def outside_share(self) -> float | None:
        """Share of wall time not spent running guest code (handlers + run loop)."""
        if self.wall_ns <= 0:
            return None
        return min(1.0, max(0.0, 1.0 - self.guest_ns / self.wall_ns))


@dataclass
class ConsoleLine:
    """One console line with the snapshots at its first byte and at its newline."""

    text: str
    start: Snapshot
    end: Snapshot
    event: dict[str, Any] | None = None


class _TimedHooks:
    """Stands in for the machine as the engine's hook object; times every call by hook name."""

    def __init__(self, target: Any, probe: Probe) -> None:
        self._t = target
        self._p = probe
        hv = getattr(getattr(target, "personality", None), "hypercall_vector", None)
        self._hv = hv
        self._keys: dict[int, str] = {}

    def __getattr__(self, name: str) -> Any:          # anything the engine reads that we do not time
        return getattr(self._t, name)

    def on_interrupt(self, vector: int) -> None:
        t = self._p.begin()
        if vector != self._hv:
            try:
                self._t.on_interrupt(vector)
            finally:
                self._p.charge(f"int:{vector:#x}", _now() - t)
            return
        kinds = getattr(getattr(self._t, "metrics", None), "kinds", None) or {}
        before = kinds.get("hypercall", 0)
        try:
            self._t.on_interrupt(vector)
        finally:
            handled = kinds.get("hypercall", 0) != before
            self._p.charge(self._call_key() if handled else f"int:{vector:#x}", _now() - t)

    def _call_key(self) -> str:
        """"hypercall:<VMI call>" for the hypercall the personality just handled (the vmi family
        remembers it in `_pending_call`), else "hypercall" (a personality that does not say)."""
        call = getattr(getattr(self._t, "personality", None), "_pending_call", None)
        if not isinstance(call, int):
            return "hypercall"
        key = self._keys.get(call)
        if key is None:
            from vmirom import abi
            try:
                key = f"hypercall:{abi.call(call).name}"
            except KeyError:  # a call number of the personality's own (vmi2's irq_window)
                key = "hypercall:other"
            self._keys[call] = key
        return key

    def on_port_in(self, port: int, size: int) -> int:
        t = self._p.begin()
        try:
            return self._t.on_port_in(port, size)
        finally:
            self._p.charge("io", _now() - t)

    def on_port_out(self, port: int, size: int, value: int) -> None:
        t = self._p.begin()
        try:
            self._t.on_port_out(port, size, value)
        finally:
            self._p.charge("io", _now() - t)

    def on_cpuid(self) -> bool:
        t = self._p.begin()
        try:
            return self._t.on_cpuid()
        finally:
            self._p.charge("cpuid", _now() - t)

    def on_invalid_opcode(self) -> bool:
        t = self._p.begin()
        try:
            return self._t.on_invalid_opcode()
        finally:
            self._p.charge("invalid_opcode", _now() - t)

    def on_sysenter(self) -> None:
        t = self._p.begin()
        try:
            self._t.on_sysenter()
        finally:
            self._p.charge("sysenter", _now() - t)

    def on_bad_memory(self, *args: Any) -> bool:
        t = self._p.begin()
        try:
            return self._t.on_bad_memory(*args)
        finally:
            self._p.charge("bad_memory", _now() - t)

    def code_byte_before_eip(self) -> int:
        t = self._p.begin()
        try:
            return self._t.code_byte_before_eip()
        finally:
            self._p.charge("hlt_check", _now() - t)


class Probe:
    """Instruments one engine + machine.  Use: `probe = Probe(); engine = probe.wrap(UnicornEngine())`,
    build the Machine with `engine=engine` and `MachineConfig(echo=probe.console_sink)`, then
    `probe.attach(machine)` before running."""

    def __init__(self, on_line: Callable[[ConsoleLine], None] | None = None) -> None:
        self.t0 = _now()
        self.slice_ns = 0
        self.slice_t0: int | None = None
        self.handler_ns = 0
        self.hook_t0: int | None = None                  # start of the timed hook running now
        self.by_hook: dict[str, list[int]] = {}        # hook -> [calls, ns]
        self.machine: Any = None
        self.lines: list[ConsoleLine] = []
        self.on_line = on_line
        self._buf = bytearray()
        self._line_start: Snapshot | None = None

    # -- wiring -------------------------------------------------------------------------------------
    def wrap(self, engine: Any) -> Any:
        """Instrument `engine` in place (instance attributes shadow its methods) and return it."""
        run_slice, set_hooks, add_code_hook = engine.run_slice, engine.set_hooks, engine.add_code_hook
        probe = self

        def timed_run_slice(timeout_us: int, count: int = 0):
            probe.slice_t0 = t = _now()
            try:
                return run_slice(timeout_us, count)
            finally:
                probe.slice_ns += _now() - t
                probe.slice_t0 = None

        def timed_set_hooks(hooks: Any) -> None:
            set_hooks(_TimedHooks(hooks, probe))

        def timed_add_code_hook(address: int, callback: Callable[[], None]) -> int:
            def cb() -> None:
                t = probe.begin()
                try:
                    callback()
                finally:
                    probe.charge("code_hook", _now() - t)
            return add_code_hook(address, cb)

        engine.run_slice = timed_run_slice
        engine.set_hooks = timed_set_hooks
        engine.add_code_hook = timed_add_code_hook
        return engine

    def attach(self, machine: Any) -> None:
        self.machine = machine
        self.t0 = _now()
        self.slice_ns = self.handler_ns = 0
        self.by_hook.clear()
        core = getattr(machine, "core", None)
        if core is not None:  # exits completed in C never reach the hooks above: the core times them
            core.core.set_timing(True)

    def core_profile(self) -> dict[str, tuple[int, int]]:
        """The compiled engine core's own handler times: "core:<kind>" -> (calls, ns)."""
        core = getattr(self.machine, "core", None)
        if core is None:
            return {}
        return {f"core:{k}": v for k, v in core.timings().items() if v[0]}

    def core_ns(self) -> int:
        return sum(ns for k, (_c, ns) in self.core_profile().items() if not k.startswith("core:phase:"))

    def begin(self) -> int:
        """A timed hook starts now.  A snapshot taken inside it (the console sink runs in the port
        hook) counts the part of the hook before the snapshot, so the hook's full time, charged at
        its end, does not land in a window that began halfway through it."""
        self.hook_t0 = t = _now()
        return t

    def charge(self, hook: str, ns: int) -> None:
        self.hook_t0 = None
        self.handler_ns += ns
        row = self.by_hook.get(hook)
        if row is None:
            self.by_hook[hook] = [1, ns]
        else:
            row[0] += 1
            row[1] += ns

    # -- snapshots ----------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        now = _now()
        in_slice = self.slice_ns + (now - self.slice_t0 if self.slice_t0 is not None else 0)
        m = self.machine.metrics if self.machine is not None else None
        ig = in_guest_counters(getattr(self.machine, "personality", None)) if self.machine is not None else {}
        running = now - self.hook_t0 if self.hook_t0 is not None else 0
        handler_ns = self.handler_ns + self.core_ns() + running
        return Snapshot(now - self.t0, in_slice - handler_ns, handler_ns,
                        dict(m.kinds) if m else {}, dict(m.detail) if m else {}, ig)

    def console_sink(self, data: bytes) -> None:
        """The UART sink: one call per byte the guest transmits."""
        for b in data:
            if not self._buf and self._line_start is None:
                self._line_start = self.snapshot()
            if b == 0x0A:
                self._finish_line()
            elif len(self._buf) < 4096:
                self._buf.append(b)

    def _finish_line(self) -> None:
        from vmirom.guest.console import parse_events

        text = self._buf.decode("utf-8", "replace").rstrip("\r")
        start = self._line_start or self.snapshot()
        line = ConsoleLine(text, start, self.snapshot())
        if JSON_PREFIX in text:
            ev = parse_events(text)
            line.event = ev[0] if ev else None
        self._buf.clear()
        self._line_start = None
        self.lines.append(line)
        if self.on_line is not None:
            self.on_line(line)

    def events(self) -> list[ConsoleLine]:
        return [ln for ln in self.lines if ln.event is not None]

    def handler_profile(self) -> dict[str, dict[str, float]]:
        """Per hook: calls, total ns, mean ns (rows "core:<kind>": exits the C engine core completed,
        and the time its decision took before handing an exit to Python: "core:fallback")."""
        rows = {**self.by_hook, **self.core_profile()}
        return {k: {"calls": c, "ns": ns, "mean_ns": ns / c if c else 0.0}
                for k, (c, ns) in sorted(rows.items())}


@dataclass
class TestWindow:
    """One benchmark test as seen host-side: from the newline of its `bench_start` line to the first
    byte of its `bench` line (so neither line's own console output is counted)."""

    test: str
    result: dict[str, Any]
    delta: Delta
    extra: dict[str, Any] = field(default_factory=dict)


def bench_windows(lines: list[ConsoleLine]) -> tuple[list[TestWindow], list[dict[str, Any]]]:
    """Pair bench_start/bench lines into windows; also return bench_error events."""
    windows: list[TestWindow] = []
    errors: list[dict[str, Any]] = []
    open_start: dict[str, ConsoleLine] = {}
    for ln in lines:
        ev = ln.event
        if ev is None:
            continue
        kind = ev.get("event")
        test = ev.get("test")
        if kind == "bench_start" and isinstance(test, str):
            open_start[test] = ln
        elif kind == "bench" and isinstance(test, str):
            st = open_start.pop(test, None)
            if st is not None:
                windows.append(TestWindow(test, ev, ln.start.minus(st.end)))
        elif kind == "bench_error":
            errors.append(ev)
    return windows, errors
