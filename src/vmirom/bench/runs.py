"""Running the guest benchmark suite once on one target and turning what it printed into records.

A *target* is a place the kernel runs: a registered hypervisor personality (`bare`, `fullvirt`,
`vmi` ...), or `qemu` (real `qemu-system-i386 -accel tcg`, no option ROM: the external native
reference).  A suffix `@native` runs the native build of the kernel (no VMI call sites,
`make -C guest native`) instead of the VMI kernel: `bare@native`, `qemu@native`.

Guest tests are the benchmark program's (guest/user/bench.c, run with `init=bench,...`).  Two pseudo
tests need no user space and come from a boot with `exit_after=N` and no init: `boot` (power-on to
the kernel's `ready` event, one iteration) and `idle` (one iteration per timer tick while the kernel
idles).
"""

from __future__ import annotations

import selectors
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmirom.bench.clock import Reading, check, tick_ns
from vmirom.bench.probe import ConsoleLine, Delta, Probe, Snapshot, bench_windows
from vmirom.engines.libunicorn import loaded_build
from vmirom.engines.options import EngineOptions, TargetError, parse_target
from vmirom.guest.console import JSON_PREFIX, parse_events
from vmirom.machine.metrics import NOT_EXITS

#: the benchmark program's tests, in its order (bench -l)
GUEST_TESTS = ("null_syscall", "pipe_latency", "fork_exit", "fork_exec", "page_fault", "prot_fault",
               "mmap_munmap", "cpu_loop", "build")
PSEUDO_TESTS = ("boot", "idle")
QEMU = "qemu"
#: QEMU with `-icount shift=0`: its virtual clock advances one nanosecond per guest instruction, so
#: the guest's clock counts instructions.  Deterministic (two boots give the same counts) and free
#: of the host's noise: what the VMI call sites cost in instructions, where times cannot resolve it.
QEMU_ICOUNT = "qemu-icount"
ICOUNT_ARGS = ("-icount", "shift=0,sleep=off")
QEMU_PLATFORMS = (QEMU, QEMU_ICOUNT)
NATIVE_SUFFIX = "@native"


class BenchError(Exception):
    """A benchmark could not be set up (unknown target or test, missing kernel ...)."""


@dataclass(frozen=True)
class Target:
    name: str            # as given: "vmi", "bare@native", "qemu", "bare+stock"
    platform: str        # personality name or "qemu"
    kernel: str          # "vmi" (the kernel with call sites) or "native"
    engine: EngineOptions = EngineOptions()  # from the +modifiers (vmirom.engines.options)

    @classmethod
    def parse(cls, name: str) -> Target:
        """NAME[+modifier...][@native]: `bare+stock@native` is bare on the stock engine, native kernel."""
        native = name.endswith(NATIVE_SUFFIX)
        try:
            platform, engine = parse_target(name[: -len(NATIVE_SUFFIX)] if native else name)
        except TargetError as e:
            raise BenchError(str(e)) from None
        if platform in QEMU_PLATFORMS and engine != EngineOptions():
            raise BenchError(f"{name}: engine modifiers apply to the VMM's personalities, not to QEMU")
        if platform not in QEMU_PLATFORMS:
            from vmirom.hypervisors import registry
            try:
                registry.get(platform)
            except registry.UnknownHypervisor as e:
                raise BenchError(f"{e}; or qemu, qemu-icount, with an optional @native suffix") from None
        return cls(name, platform, "native" if native else "vmi", engine)

    @property
    def counts_instructions(self) -> bool:
        """Its clock counts guest instructions, not time (qemu-icount)."""
        return self.platform == QEMU_ICOUNT


@dataclass
class Workload:
    """What the guest runs in one boot."""

    tests: tuple[str, ...]              # guest tests (may be empty)
    pseudo: tuple[str, ...] = ()        # pseudo tests (need the exit_after boot)
    scale: int | None = None            # bench -s PERCENT
    iterations: int | None = None       # bench -n N (wins over scale)
    idle_ticks: int = 20                # exit_after for the pseudo-test boot
    timeout_s: float = 600.0
    deterministic: bool = False         # VMM targets: guest time = instructions (vmirom.debug.determinism)

    @property
    def clock(self) -> str:
        """How the VMM targets keep guest time (said in the report: the two are not comparable)."""
        return "deterministic" if self.deterministic else "cpu-time"

    def bench_cmdline(self) -> str:
        args = ["bench"]
        if self.iterations is not None:
            args += ["-n", str(self.iterations)]
        elif self.scale is not None:
            args += ["-s", str(self.scale)]
        args += list(self.tests)
        return "init=" + ",".join(args)

    def idle_cmdline(self) -> str:
        return f"exit_after={self.idle_ticks}"


@dataclass
class Kernels:
    vmi: Path
    native: Path | None
    initrd: Path | None

    def for_target(self, t: Target) -> Path:
        if t.kernel == "native":
            if self.native is None:
                raise BenchError(f"{t.name}: no native kernel build (make -C guest native)")
            return self.native
        return self.vmi


@dataclass
class BootResult:
    """One boot of one target: how it ended, and the records it produced."""

    target: str
    repeat: int
    cmdline: str
    fate: str                       # "exit" (clean or not: see exit_status), "timeout", "triple_fault" ...
    exit_status: int | None
    message: str
    wall_s: float
    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    handler_profile: dict[str, Any] = field(default_factory=dict)
    console_tail: str = ""
    engine: dict[str, Any] | None = None    # the libunicorn the VM ran on (EngineBuild.as_json); None: QEMU
    engine_core: dict[str, Any] | None = None  # the exit core that ran (Machine.engine_core_summary)

    def as_json(self) -> dict[str, Any]:
        return {"target": self.target, "repeat": self.repeat, "cmdline": self.cmdline, "fate": self.fate,
                "exit_status": self.exit_status, "message": self.message, "wall_s": round(self.wall_s, 4),
                "errors": self.errors, "handler_profile": self.handler_profile, "engine": self.engine,
                "engine_core": self.engine_core}


def primary_time(platform: str, guest_per_iter: float | None, guest_unit: str | None,
                 host_ns_per_iter: float | None, guest_problem: str | None = None,
                 ) -> tuple[float | None, str | None]:
    """The figure a record is compared by, and where it comes from ("host" or "guest").

    On the VMM the probe's host clock brackets the test window to the nanosecond and sees every
    cost of the VMM, while the guest's own clock is virtual (the vCPU thread's CPU time) and, without
    a ROM clock, only as fine as ticks refined by the TSC.  On QEMU the host only sees console lines
    arrive on a pipe (buffered, millisecond-grained), so the guest's clock is the better figure
    (the pseudo tests have no guest figure: host time it is).  A guest figure that is not a
    measurement (`guest_problem`, see clock.check) leaves a QEMU record without a primary figure:
    the pipe's arrival times are no substitute for it."""
    if platform in QEMU_PLATFORMS and guest_problem is not None:
        return None, None
    if platform in QEMU_PLATFORMS and guest_per_iter is not None:
        source = "icount" if platform == QEMU_ICOUNT else "guest"
        return (guest_per_iter, source) if guest_unit == "ns" else (None, None)
    return (host_ns_per_iter, "host") if host_ns_per_iter is not None else (None, None)


def _record(target: Target, repeat: int, test: str, iterations: int, *, guest_total: float | None,
            guest_unit: str | None, delta: Delta | None, host_ns: int | None,
            guest_problem: str | None = None) -> dict[str, Any]:
    """One record.  `guest_problem` (clock.check) says why the guest's t1 - t0 is not a time: the
    raw total is kept, but the per-iteration figure is None, and so is the primary figure on QEMU,
    with the reason in `unmeasured` (never a 0 that would enter a ratio or a geomean)."""
    it = max(1, iterations)
    unmeasured: dict[str, str] = {}
    guest_per_iter = guest_total / it if guest_total is not None and guest_problem is None else None
    if guest_problem is not None:
        unmeasured["guest_per_iter"] = guest_problem
    host_per_iter = host_ns / it if host_ns is not None and host_ns > 0 else None
    if host_ns is not None and host_ns <= 0:
        unmeasured["host_ns_per_iter"] = f"the host saw a window of {host_ns} ns"
    ns, source = primary_time(target.platform, guest_per_iter, guest_unit, host_per_iter, guest_problem)
    if ns is None and unmeasured:
        unmeasured["ns_per_iter"] = unmeasured.get("guest_per_iter" if target.platform in QEMU_PLATFORMS
                                                   else "host_ns_per_iter") or next(iter(unmeasured.values()))
    rec: dict[str, Any] = {
        "test": test, "target": target.name, "platform": target.platform, "kernel": target.kernel,
        "repeat": repeat, "status": "ok", "error": None, "iterations": iterations,
        "ns_per_iter": ns, "time_source": source, "unmeasured": unmeasured,
        "guest_total": guest_total, "guest_unit": guest_unit, "guest_per_iter": guest_per_iter,
        "host_ns": host_ns, "host_ns_per_iter": host_per_iter,
        "exits": None, "exits_detail": None, "exits_per_iter": {}, "exits_total_per_iter": None,
        "in_guest": None, "slices": None, "handler_ns_per_iter": None, "outside_share": None,
        "engine_build": None if target.platform in QEMU_PLATFORMS else loaded_build(),
        "engine_core": None if target.platform in QEMU_PLATFORMS else _core_name(target),
    }
    if delta is not None:
        kinds = {k: v for k, v in delta.kinds.items() if k not in NOT_EXITS}  # mmu: events, in exits_detail
        rec.update(exits=kinds, exits_detail=delta.detail, in_guest=delta.in_guest,
                   exits_per_iter={k: v / it for k, v in kinds.items()},
                   exits_total_per_iter=sum(kinds.values()) / it, slices=delta.kinds.get("slice", 0),
                   handler_ns_per_iter=delta.handler_ns / it, outside_share=delta.outside_share)
    return rec


def _core_name(target: Target) -> str:
    """The exit core a VMM target's process uses: "c" or "python" (vmirom.engines.core)."""
    from vmirom.engines import core

    return core.resolve(target.engine.core)[0]


def error_record(target: Target, repeat: int, test: str, error: str) -> dict[str, Any]:
    rec = _record(target, repeat, test, 0, guest_total=None, guest_unit=None, delta=None, host_ns=None)
    # not measured: no claim about the engine
    rec.update(status="error", error=error, engine_build=None, engine_core=None)
    return rec


def _reading(ev: dict[str, Any]) -> Reading | None:
    try:
        return Reading(float(ev["t0"]), float(ev["t1"]), str(ev.get("unit", "ns")))
    except (KeyError, TypeError, ValueError):
        return None


def _tick(lines: list[ConsoleLine]) -> int:
    """The guest timer's tick in ns, from the bench program's bench_begin line."""
    begin = next((ln.event for ln in lines if ln.event and ln.event.get("event") == "bench_begin"), None)
    return tick_ns(begin.get("hz") if begin else None)


def records_from_lines(target: Target, repeat: int, lines: list[ConsoleLine], wanted: tuple[str, ...],
                       host_only: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """Records for the guest tests in `wanted` from a bench boot's console lines; tests that printed
    no result become error records.  `host_only`: the snapshots carry host time but no exit counters
    (QEMU)."""
    windows, errs = bench_windows(lines)
    recs: list[dict[str, Any]] = []
    seen: set[str] = set()
    tick = _tick(lines)
    for w in windows:
        reading = _reading(w.result)
        n = w.result.get("iterations")
        if not isinstance(n, int) or n <= 0:
            continue
        seen.add(w.test)
        recs.append(_record(target, repeat, w.test, n, guest_total=reading.total if reading else None,
                            guest_unit=reading.unit if reading else None, guest_problem=check(reading, tick),
                            delta=None if host_only else w.delta, host_ns=w.delta.wall_ns))
    messages = []
    for e in errs:
        test = str(e.get("test"))
        messages.append(f"{test}: {e.get('error')}")
        if test in wanted and test not in seen:
            seen.add(test)
            recs.append(error_record(target, repeat, test, str(e.get("error"))))
    return recs, messages


def pseudo_records(target: Target, repeat: int, lines: list[ConsoleLine], origin: Snapshot,
                   wanted: tuple[str, ...], host_only: bool = False) -> list[dict[str, Any]]:
    """`boot` and `idle` records from an exit_after boot."""
    ready = next((ln for ln in lines if ln.event and ln.event.get("event") == "ready"), None)
    idle = next((ln for ln in lines if ln.event and ln.event.get("event") == "idle"), None)
    recs = []
    if "boot" in wanted:
        if ready is None:
            recs.append(error_record(target, repeat, "boot", "the kernel printed no ready event"))
        else:
            d = ready.end.minus(origin)
            recs.append(_record(target, repeat, "boot", 1, guest_total=None, guest_unit=None,
                                delta=None if host_only else d, host_ns=d.wall_ns))
    if "idle" in wanted:
        ticks = None
        if ready is not None and idle is not None:
            try:
                ticks = int(idle.event["ticks"]) - int(ready.event.get("ticks", 0))  # type: ignore[index]
            except (KeyError, TypeError, ValueError):
                ticks = None
        if ready is None or idle is None or not ticks or ticks <= 0:
            recs.append(error_record(target, repeat, "idle", "no ready/idle events with a tick count"))
        else:
            d = idle.start.minus(ready.end)
            recs.append(_record(target, repeat, "idle", ticks, guest_total=None, guest_unit=None,
                                delta=None if host_only else d, host_ns=d.wall_ns))
    return recs


# -- the VMM -------------------------------------------------------------------------------------------
def run_vmm(target: Target, kernel: Path, initrd: Path | None, cmdline: str, timeout_s: float,
            on_line: Callable[[ConsoleLine], None] | None = None,
            stop_when: Callable[[ConsoleLine], str | None] | None = None, deterministic: bool = False,
            ) -> tuple[Any, Probe, Snapshot, float]:
    """Boot `kernel` on personality `target.platform` under the probe.  Returns (RunResult, probe,
    origin snapshot, wall seconds).  `stop_when(line)` returning a message ends the run early (fate
    "stopped")."""
    from vmirom.engines import libunicorn
    from vmirom.engines.unicorn import UnicornEngine
    from vmirom.hypervisors import registry
    from vmirom.machine import Machine, MachineConfig

    libunicorn.require(target.engine.build)  # bare+stock must not run on the patched library

    def watch(line: ConsoleLine) -> None:
        if on_line is not None:
            on_line(line)
        why = stop_when(line) if stop_when is not None else None
        if why:
            machine.stop("stopped", why)

    probe = Probe(watch)
    engine = probe.wrap(UnicornEngine())
    config = MachineConfig(timeout_s=timeout_s, echo=probe.console_sink, engine_core=target.engine.core)
    machine = Machine(registry.create(target.platform), config, engine=engine)
    try:
        modules = [(initrd.read_bytes(), "initrd")] if initrd is not None else None
        machine.load_kernel(kernel.read_bytes(), cmdline, modules)
        if deterministic:
            from vmirom.debug.determinism import make_deterministic

            make_deterministic(machine)
        probe.attach(machine)
        origin = probe.snapshot()
        t = time.monotonic()
        result = machine.run()
        wall = time.monotonic() - t
    finally:
        machine.close()
    return result, probe, origin, wall


# -- QEMU ------------------------------------------------------------------------------------------------
class _HostLines:
    """Console lines of a QEMU run, each stamped with host time when it arrived on the pipe."""

    def __init__(self, on_line: Callable[[ConsoleLine], None] | None) -> None:
        self.t0 = time.perf_counter_ns()
        self.lines: list[ConsoleLine] = []
        self.on_line = on_line
        self.buf = b""

    def snap(self) -> Snapshot:
        return Snapshot(time.perf_counter_ns() - self.t0, 0, 0, {}, {})

    def feed(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            raw, self.buf = self.buf.split(b"\n", 1)
            text = raw.decode("utf-8", "replace").rstrip("\r")
            s = self.snap()
            ln = ConsoleLine(text, s, s)
            if JSON_PREFIX in text:
                ev = parse_events(text)
                ln.event = ev[0] if ev else None
            self.lines.append(ln)
            if self.on_line is not None:
                self.on_line(ln)


def run_qemu(kernel: Path, initrd: Path | None, cmdline: str, timeout_s: float,
             on_line: Callable[[ConsoleLine], None] | None = None,
             stop_when: Callable[[ConsoleLine], str | None] | None = None,
             extra_args: tuple[str, ...] = (),
             ) -> tuple[str, int | None, str, _HostLines, float]:
    """Boot on qemu-system-i386 (TCG), reading the console as it comes.  Returns (fate, guest exit
    status, message, lines, wall seconds).  Host times are arrival times on the pipe (ms-accurate)."""
    from vmirom.guest.qemu import qemu_available, qemu_command

    if not qemu_available():
        raise BenchError("qemu-system-i386 is not installed")
    cmd = qemu_command(kernel, cmdline=cmdline, initrd=initrd, extra_args=extra_args)
    stopped: list[str] = []

    def watch(line: ConsoleLine) -> None:
        if on_line is not None:
            on_line(line)
        why = stop_when(line) if stop_when is not None else None
        if why and not stopped:
            stopped.append(why)

    hl = _HostLines(watch)
    t = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        raise BenchError(f"cannot start QEMU: {e}") from e
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    err = b""
    open_streams = 2
    timed_out = False
    try:
        while open_streams and not stopped:
            left = timeout_s - (time.monotonic() - t)
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(left, 1.0)):
                data = key.fileobj.read1(65536)  # type: ignore[union-attr]
                if not data:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                elif key.data == "out":
                    hl.feed(data)
                else:
                    err += data[:65536]
    finally:
        sel.close()
        if timed_out or stopped:
            proc.kill()
        rc = proc.wait()
    wall = time.monotonic() - t
    if stopped:
        return "stopped", None, stopped[0], hl, wall
    if timed_out:
        return "timeout", None, f"QEMU did not finish in {timeout_s:g} s", hl, wall
    if rc % 2 == 1:
        return "exit", rc >> 1, f"guest exited with status {rc >> 1}", hl, wall
    tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
    return "qemu_error", None, f"QEMU exited with code {rc}: {' '.join(tail)}", hl, wall


def no_init(line: ConsoleLine) -> str | None:
    """A kernel that cannot run the init program says so and idles: no point waiting for a timeout."""
    if "no init program" in line.text:
        return f"the kernel runs no init program: {line.text.strip()!r}"
    return None


# -- one boot -----------------------------------------------------------------------------------------
GRACE_S = 20.0


def _boot_child(target: Target, repeat: int, kernels: Kernels, workload: Workload, pseudo: bool,
                conn: Any) -> None:
    seen: list[ConsoleLine] = []

    def on_line(line: ConsoleLine) -> None:
        ev = line.event
        if ev is None:
            return
        seen.append(line)
        if ev.get("event") == "bench_start":
            conn.send(("line", ev))
        elif ev.get("event") == "bench" and not pseudo:
            # every finished test, as it finishes: if the VM hangs or dies later, these survive
            recs, _ = records_from_lines(target, repeat, seen, workload.tests)
            conn.send(("partial", [r for r in recs if r["status"] == "ok"]))

    import signal

    # Ctrl-C is the parent's business (it keeps what finished and kills us): a KeyboardInterrupt
    # raised here inside an engine callback would only print a ctypes traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        res: Any = run_boot_here(target, repeat, kernels, workload, pseudo=pseudo, on_line=on_line)
    except BaseException as e:  # noqa: BLE001 - reported to the parent as a fate, never a traceback
        res = BootResult(target.name, repeat, "", "engine_error", None,
                         f"VMM internal error: {type(e).__name__}: {e}", 0.0)
    try:
        conn.send(("done", res))
    finally:
        conn.close()


def run_boot(target: Target, repeat: int, kernels: Kernels, workload: Workload, *, pseudo: bool = False,
             on_line: Callable[[ConsoleLine], None] | None = None, isolate: bool = True) -> BootResult:
    """One boot of `target` (see `run_boot_here`).  VMM boots run in a child process (as
    `vmirom run` does): the engine can abort its process on CPU states it does not support, and a
    hook that never returns would escape the VMM's own budget; the parent enforces the deadline.
    The child is forked, or exec'd when the target's engine build is not the one loaded here
    (vmirom.childproc: `bare+stock` beside `bare` in one interleaved run)."""
    if not isolate or target.platform in QEMU_PLATFORMS:
        return run_boot_here(target, repeat, kernels, workload, pseudo=pseudo, on_line=on_line)
    import signal

    from vmirom import childproc

    t0 = time.monotonic()
    proc, parent = childproc.start(_boot_child, (target, repeat, kernels, workload, pseudo),
                                   target.engine.build)
    deadline = t0 + workload.timeout_s + GRACE_S
    try:
        result, finished, running = _wait_for_child(proc, parent, deadline, on_line)
    except KeyboardInterrupt:
        proc.kill()
        proc.join(5)
        raise
    if result is not None:
        proc.join(5)
        return result
    if time.monotonic() < deadline:     # the pipe closed early: the process is on its way out
        proc.join(min(5.0, max(0.0, deadline - time.monotonic())))
    if proc.is_alive():
        proc.kill()
        proc.join(5)
        budget = workload.timeout_s + GRACE_S
        fate, msg = "timeout", f"the VM did not finish within {budget:g} s and was killed"
    else:
        proc.join(5)
        code = proc.exitcode
        what = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"status {code}"
        fate, msg = "engine_crash", f"the VM process died with {what}"
    wanted = workload.pseudo if pseudo else workload.tests
    cmdline = workload.idle_cmdline() if pseudo else workload.bench_cmdline()
    done = {r["test"] for r in finished}
    if running is not None and running not in done:
        msg += f" (while running {running})"
    return BootResult(target.name, repeat, cmdline, fate, None, msg, time.monotonic() - t0,
                      finished + [error_record(target, repeat, t, msg) for t in wanted if t not in done])


def _wait_for_child(proc: Any, parent: Any, deadline: float, on_line: Callable[[ConsoleLine], None] | None
                    ) -> tuple[BootResult | None, list[dict[str, Any]], str | None]:
    """Read the boot child's messages until its result, its death or the deadline: (result or None,
    the records of the tests it finished, the test it started last)."""
    result: BootResult | None = None
    finished: list[dict[str, Any]] = []
    running: str | None = None
    while result is None and time.monotonic() < deadline:
        if parent.poll(min(0.5, max(0.0, deadline - time.monotonic()))):
            try:
                kind, payload = parent.recv()
            except (EOFError, OSError):
                break
            if kind == "done":
                result = payload
            elif kind == "partial":
                finished = payload
            else:
                running = str(payload.get("test"))
                if on_line is not None:
                    on_line(ConsoleLine("", Snapshot(0, 0, 0, {}, {}), Snapshot(0, 0, 0, {}, {}), payload))
        elif not proc.is_alive() and not parent.poll(0.1):
            break
    return result, finished, running


def run_boot_here(target: Target, repeat: int, kernels: Kernels, workload: Workload, *, pseudo: bool = False,
                  on_line: Callable[[ConsoleLine], None] | None = None) -> BootResult:
    """One boot of `target` in this process: the guest bench suite (pseudo=False) or the exit_after
    boot for the pseudo tests.  Never raises for guest misbehaviour: a bad fate becomes error records."""
    kernel = kernels.for_target(target)
    cmdline = workload.idle_cmdline() if pseudo else workload.bench_cmdline()
    initrd = None if pseudo else kernels.initrd
    wanted = workload.pseudo if pseudo else workload.tests
    profile: dict[str, Any] = {}
    core_info = None
    stop = None if pseudo else no_init
    if target.platform in QEMU_PLATFORMS:
        extra = ICOUNT_ARGS if target.counts_instructions else ()
        fate, status, message, hl, wall = run_qemu(kernel, initrd, cmdline, workload.timeout_s, on_line, stop,
                                                   extra)
        lines, origin, host_only = hl.lines, Snapshot(0, 0, 0, {}, {}), True
    else:
        res, probe, origin, wall = run_vmm(target, kernel, initrd, cmdline, workload.timeout_s, on_line, stop,
                                           deterministic=workload.deterministic)
        fate, status, message, lines, host_only = res.fate, res.exit_status, res.message, probe.lines, False
        core_info = res.engine_core
        profile = probe.handler_profile()
        snap = probe.snapshot()
        profile["_total"] = {"wall_ns": snap.wall_ns, "handler_ns": snap.handler_ns,
                             "exits": res.metrics.get("total_exits")}
    if pseudo:
        recs, errors = pseudo_records(target, repeat, lines, origin, wanted, host_only), []
    else:
        recs, errors = records_from_lines(target, repeat, lines, wanted, host_only)
    # A test that produced nothing (the guest died, timed out, or cannot run processes yet).
    done = {r["test"] for r in recs}
    why = message if fate != "exit" or status else "the guest printed no result for it"
    for test in wanted:
        if test not in done:
            recs.append(error_record(target, repeat, test, why))
    tail = "\n".join(ln.text for ln in lines[-15:])
    engine = None if host_only else _engine_json()
    return BootResult(target.name, repeat, cmdline, fate, status, message, wall, recs, errors, profile, tail,
                      engine, core_info)


def _engine_json() -> dict[str, Any]:
    from vmirom.engines.libunicorn import describe

    return describe().as_json()
