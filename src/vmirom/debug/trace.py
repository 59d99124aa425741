"""`vmirom run --trace FILE`: every exit of the run in the Chrome trace-event format (JSON object
form), which ui.perfetto.dev and chrome://tracing open as a timeline.

    track "guest"  one complete event per slice of guest code
    track "exits"  one complete event per exit: name = what it was ("softint:0x80",
                   "hypercall:SetPxE", "io:out:0x3f8" - the Metrics detail keys), ts = guest time
                   when it happened, dur = host time spent in its handler, args = guest EIP, CPL,
                   every counter key the exit touched, handler and guest nanoseconds
    instants       exits handled between slices (a halt, an interrupt delivered at a slice start,
                   port hypercalls) at the guest time they were seen
    otherData      the per-kind summary (count, total/mean/max handler time) - also returned into
                   the run's --json under "trace"

How: the machine's exit entry points (the methods the engine calls, plus code hooks added from now
on and the run loop's interrupt delivery) are wrapped ON THIS MACHINE INSTANCE only, so a run
without --trace pays nothing; which exit it was comes from the exit counters themselves
(`Metrics.tap`), so nothing is restated here.  Timestamps are guest time (`Machine.clock`), which
is what --deterministic makes reproducible: two deterministic runs give the same events apart from
the host-time fields (dur, handler_ns).

The compiled engine core (`vmirom.engines.core`) completes hot exits in C, where no Python wrapper
sees them (its counters and order log reach `Metrics` later, without handler times or EIPs).  It
could feed `record()` from an event ring of its own; until it does, a traced run takes the Python
path (`DebugSession` disables the core, whatever --engine-core said), so every exit appears here
with its handler time - which makes the traced run slower than an untraced one on the C core.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmirom.machine import Machine

HOOKS = ("on_interrupt", "on_port_in", "on_port_out", "on_cpuid", "on_invalid_opcode", "on_bad_memory",
         "on_sysenter", "deliver_pending_interrupt")  # fmt: skip
PID, TID_GUEST, TID_EXITS = 1, 1, 2


class _Tap(deque):
    """The Metrics order ring, also collecting the keys of the exit being handled."""

    def __init__(self, recent: deque, pending: list) -> None:
        super().__init__(maxlen=recent.maxlen)
        self.pending = pending

    def append(self, key) -> None:
        super().append(key)
        self.pending.append(key)


class ExitTracer:
    """Streams the trace of one Machine's run to `path`."""

    def __init__(self, machine: Machine, path: str) -> None:
        self.m = machine
        self.path = path
        self.file = open(path, "w", buffering=1 << 20)  # noqa: SIM115 - closed by close()
        self.file.write('{"displayTimeUnit":"ns","traceEvents":[\n')
        self.first = True
        self.events = 0
        self.pending: list[str] = []
        self.depth = 0
        self.stats: dict[str, list[int]] = {}  # name -> [count, total_ns, max_ns]
        self.kinds: Counter[str] = Counter()
        self.host_ns = 0  # time spent writing the trace itself (its overhead, measured)
        # guest time of an exit: read from the clock when that is cheap (--deterministic); with the
        # CPU-time clock (a system call per read, measured 2-85 us on this host) the slice's start
        # in guest time plus the host time since, kept monotonic
        self._slice_guest = self._slice_host = self._last_ts = 0
        machine.metrics.tap(_Tap(machine.metrics.recent, self.pending))
        for name, value in (("process_name", "vmirom VM"),):
            self._write({"name": name, "ph": "M", "pid": PID, "args": {"name": value}})
        for tid, value in ((TID_GUEST, "guest code (slices)"), (TID_EXITS, "exits (handler time)")):
            self._write({"name": "thread_name", "ph": "M", "pid": PID, "tid": tid, "args": {"name": value}})
        for name in HOOKS:
            setattr(machine, name, self._wrap(getattr(machine, name), name))
        eng = machine.engine
        self._read_eip_cs = eng.reader(("eip", "cs"))  # one batched engine call per exit
        self._run_slice = eng.run_slice
        eng.run_slice = self._traced_slice
        add = eng.add_code_hook
        eng.add_code_hook = lambda address, callback: add(address, self._wrap(callback, "code_hook"))

    # -- recording ----------------------------------------------------------------------------------
    def _where(self) -> tuple[int | None, int | None]:
        try:
            eip, cs = self._read_eip_cs()
            return eip, cs & 3
        except Exception:  # noqa: BLE001 - a broken engine state is still traced
            return None, None

    def _wrap(self, fn, name: str):
        def traced(*args):
            if self.depth:
                return fn(*args)
            self.depth = 1
            self._flush_instants()
            eip, cpl = self._where()
            t0 = time.perf_counter_ns()
            guest = self._guest_now(t0)
            try:
                return fn(*args)
            finally:
                handler = time.perf_counter_ns() - t0
                self.depth = 0
                keys, self.pending[:] = list(self.pending), []
                if keys or name != "deliver_pending_interrupt":  # no interrupt was due: not an exit
                    self.record(keys or [name], eip, cpl, guest, handler)

        return traced

    def _guest_now(self, host_ns: int) -> int:
        if self.m.clock.driven:
            return self.m.clock.now_ns()
        g = max(self._last_ts, self._slice_guest + host_ns - self._slice_host)
        self._last_ts = g
        return g

    def _traced_slice(self, *args, **kw):
        self._flush_instants()
        g0 = self.m.clock.now_ns()
        if not self.m.clock.driven:
            g0 = self._last_ts = max(g0, self._last_ts)
        self._slice_guest, self._slice_host = g0, time.perf_counter_ns()
        res = self._run_slice(*args, **kw)
        g1 = max(self.m.clock.now_ns(), self._last_ts)
        self._write({"name": "guest", "ph": "X", "pid": PID, "tid": TID_GUEST, "ts": g0 / 1000,
                     "dur": max(0, g1 - g0) / 1000})
        return res

    def _flush_instants(self) -> None:
        if not self.pending:
            return
        keys, self.pending[:] = list(self.pending), []
        eip, cpl = self._where()
        self.record(keys, eip, cpl, self._guest_now(time.perf_counter_ns()), None)

    def record(self, keys: list[str], eip: int | None, cpl: int | None, guest_ns: int,
               handler_ns: int | None) -> None:
        """One exit: `keys` are its counter keys (the first names it).  A C core's event ring can
        feed this directly.  The event is formatted by hand: the names are our own counter keys
        (no characters JSON must escape), and json.dumps per event was most of the tracing cost."""
        t0 = time.perf_counter_ns()
        name = keys[0]
        where = "null" if eip is None else f'"{eip:#010x}"'
        extra = f',"keys":{json.dumps(keys)}' if len(keys) > 1 else ""
        if handler_ns is None:
            head, tail = '"ph":"i","s":"t"', ""
        else:
            head, tail = f'"ph":"X","dur":{handler_ns / 1000}', f',"handler_ns":{handler_ns}'
        self.file.write(
            f'{"" if self.first else ","}\n{{"name":"{name}","cat":"{name.split(":", 1)[0]}",{head},'
            f'"pid":{PID},"tid":{TID_EXITS},"ts":{guest_ns / 1000},"args":{{"eip":{where},'
            f'"cpl":{"null" if cpl is None else cpl},"guest_ns":{guest_ns}{tail}{extra}}}}}'
        )
        self.first = False
        self.events += 1
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = [0, 0, 0]
        st[0] += 1
        if handler_ns is not None:
            st[1] += handler_ns
            if handler_ns > st[2]:
                st[2] = handler_ns
        kinds = self.kinds
        for k in keys:
            kinds[k.split(":", 1)[0]] += 1
        self.host_ns += time.perf_counter_ns() - t0

    def _write(self, ev: dict) -> None:
        self.file.write(("" if self.first else ",\n") + json.dumps(ev, separators=(",", ":")))
        self.first = False
        self.events += 1

    # -- the end ------------------------------------------------------------------------------------
    def summary(self) -> dict:
        by_name = {
            name: {"count": c, "handler_us_total": round(t / 1000, 1),
                   "handler_us_mean": round(t / c / 1000, 2) if c else 0.0,
                   "handler_us_max": round(mx / 1000, 1)}
            for name, (c, t, mx) in sorted(self.stats.items(), key=lambda kv: -kv[1][0])
        }  # fmt: skip
        return {
            "path": self.path,
            "events": self.events,
            "exits": sum(c for c, _, _ in self.stats.values()),
            "by_kind": dict(sorted(self.kinds.items(), key=lambda kv: -kv[1])),
            "by_exit": by_name,
            "writer_ms": round(self.host_ns / 1e6, 1),
        }

    def close(self) -> dict:
        self._flush_instants()
        summary = self.summary()
        other = {"vmirom": {k: v for k, v in summary.items() if k != "path"}}
        self.file.write("\n],\n" + '"otherData":' + json.dumps(other, separators=(",", ":")) + "}\n")
        self.file.close()
        return summary
