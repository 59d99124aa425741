"""`vmirom run` and `vmirom demo`: boot a kernel on a hypervisor personality.

Where a VM runs: in a CHILD process (multiprocessing, fork).  The engine (Unicorn/QEMU) can abort
its whole process on CPU states it does not support (e.g. a busy TSS type: SIGABRT), so a guest
must never be able to kill `vmirom` itself.  The child streams the console straight to our stdout
and sends back one result dictionary; if it dies instead, the parent reports "engine_crash" with the
signal, cleanly.  The parent also enforces a hard deadline (the child's own budget + a grace period).

Exit status of `vmirom run` (the guest's fate):
    0  the guest exited cleanly with status 0 (debug-exit port 0xF4, or VMI Shutdown)
    1  the guest exited with a non-zero status
    2  usage error (unknown option or hypervisor, bad or conflicting values, unwritable --json)
    3  the input was refused (not an ELF, truncated, not Multiboot, a ROM description that
       cannot be built)
    4  triple fault
    5  wall-clock budget exhausted (--timeout)
    6  the guest halted with nothing that could wake it
    7  another VM-level error (wrote to the ROM, touched memory outside RAM, engine error, reboot,
       a bug in a personality's handler: `--debug` prints its traceback; and the security fates of
       docs/security.md: privilege_violation, unsupported (V86, PAE), resource_limit)
    8  the engine crashed (the child process died)
    9  the user stopped the VM (Ctrl-A x on the console, Ctrl-C when the keys do not go to the
       guest, `kill` in gdb)

Every fate but a clean exit also prints the vCPU's state (`vmirom.debug.crashdump`).

With no KERNEL argument (or KERNEL = the built reference kernel) the built initrd
(guest/build/initrd.cpio) is passed as the first Multiboot module, so `vmirom run --cmdline
init=selftest` just works; `--no-initrd` boots without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import click

from vmirom import childproc
from vmirom.cliutil import OutputPath, hypervisor_names, json_option, split_list, write_json
from vmirom.cliutil import console as output_console
from vmirom.debug.session import DebugOptions, DebugSession, DebugSetupError
from vmirom.engines.options import EngineOptions
from vmirom.guest.initrd import reference_initrd
from vmirom.machine.faults import VmError
from vmirom.procutil import peak_rss_kib

EXIT_CODES = {
    "exit_ok": 0,
    "exit_nonzero": 1,
    "refused": 3,
    "triple_fault": 4,
    "timeout": 5,
    "halt_dead": 6,
    "vm_error": 7,
    "engine_crash": 8,
    "quit": 9,
}
GRACE_S = 30.0
RUN_CODES = (
    "\b\nExit status (the guest's fate):\n"
    "  0 exited with status 0, 1 exited with another status, 2 usage error,\n"
    "  3 input refused (kernel, initrd or ROM description), 4 triple fault, 5 timeout,\n"
    "  6 halted with nothing to wake it, 7 other VM error (incl. a handler bug), 8 engine crash,\n"
    "  9 stopped by the user"
)


@dataclass
class RunRequest:
    """Everything needed to run one VM (picklable: it crosses into the child process)."""

    hypervisor: str
    kernel: str
    cmdline: str = ""
    timeout_s: float = 60.0
    initrd: str | None = None
    ram_mb: int = 128
    echo: bool = True
    extra: dict = field(default_factory=dict)
    interactive: bool = False  # the terminal's keys go to the guest's console (stdin, fd 0)
    engine: EngineOptions = field(default_factory=EngineOptions)  # from target modifiers (bare+stock)
    echo_fd: int = 1  # where the streamed console goes (2 when the JSON takes stdout)
    debug: DebugOptions = field(default_factory=DebugOptions)  # --gdb, --trace, --deterministic


def exit_code(result: dict) -> int:
    """Map a result's fate to the process exit status documented above."""
    fate = result.get("fate")
    if fate == "exit":
        return 0 if result.get("exit_status") == 0 else 1
    if fate in ("refused", "triple_fault", "timeout", "halt_dead", "engine_crash", "quit"):
        return EXIT_CODES[fate]
    return EXIT_CODES["vm_error"]


def _binding(console: str) -> dict | None:
    try:
        from vmirom.guest.console import parse_events
    except ImportError:
        return None
    ev = parse_events(console)
    vmi = next((e for e in ev if e.get("event") == "vmi"), None)
    shut = next((e for e in reversed(ev) if e.get("event") == "shutdown"), None)
    out = {"events": len(ev)}
    if vmi is not None:
        out["vmi"] = {k: vmi.get(k) for k in ("status", "reason", "rom", "counts", "patched", "ring")}
    if shut is not None:
        out["shutdown"] = shut
    return out


def outcome(console: str) -> dict:
    """What the guest reported on its console, in a form that must be IDENTICAL on every hypervisor
    for the same kernel, initrd and command line (no timings, no tick counts that depend on speed):
    selftest summary, init's exit status, the idle run's tick budget, the shutdown status."""
    try:
        from vmirom.guest.console import last_event, parse_events
    except ImportError:
        return {"text": "?"}
    ev = parse_events(console)
    out: dict = {}
    parts: list[str] = []
    st = last_event(ev, "selftest_summary")
    if st is not None:
        out["selftest"] = {k: st.get(k) for k in ("passed", "failed", "total")}
        parts.append(f"checks passed {st.get('passed')}/{st.get('total')}")
    init = last_event(ev, "init_exit")
    if init is not None:
        out["init"] = {"program": init.get("program"), "status": init.get("status")}
        if st is None or init.get("status") != 0:  # a passing selftest already says it all
            parts.append(f"{init.get('program')} exited {init.get('status')}")
    idle = last_event(ev, "idle")
    if idle is not None and init is None:
        out["idle_ticks"] = idle.get("ticks")
        parts.append(f"idled {idle.get('ticks')} ticks")
    shut = last_event(ev, "shutdown")
    if shut is not None:
        out["shutdown_status"] = shut.get("status")
        parts.append(f"shutdown {shut.get('status')}")
    exc = last_event(ev, "exception")
    if exc is not None:
        out["kernel_exception"] = exc.get("vector")
        parts.append(f"kernel exception {exc.get('vector')}")
    out["text"] = ", ".join(parts) or "no result on the console"
    return out


def hypervisor_work(metrics: dict, top: int = 3) -> dict:
    """How the hypervisor got involved, from the exit counters: hypercalls (by VMI call) and
    trap-and-emulate work (emulated privileged instructions + hooked sensitive-instruction sites)."""
    kinds = metrics.get("kinds") or {}
    detail = metrics.get("detail") or {}

    def by(prefixes: tuple[str, ...]) -> dict[str, int]:
        d = {k.split(":", 1)[1]: v for k, v in detail.items() if k.split(":", 1)[0] in prefixes}
        return dict(sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))

    hc, em = by(("hypercall",)), by(("emulate", "site"))
    work = {
        "hypercalls": kinds.get("hypercall", 0),
        "hypercalls_by_call": hc,
        "trap_and_emulate": kinds.get("emulate", 0) + kinds.get("site", 0),
        "trap_and_emulate_by_kind": em,
    }
    parts = []
    for label, n, d in (
        ("hypercalls", work["hypercalls"], hc),
        ("trap-and-emulate", work["trap_and_emulate"], em),
    ):
        if n:
            tops = ", ".join(f"{k} {v}" for k, v in list(d.items())[:top])
            parts.append(f"{n} {label} ({tops})" if tops else f"{n} {label}")
    work["text"] = "; ".join(parts) or "none (privileged instructions run natively)"
    return work


def personality_facts(personality) -> dict:
    """What the summary says about a personality (also when its run failed: no false "ROM none")."""
    facts = {
        "name": personality.name,
        "description": personality.description,
        "kernel_ring": personality.kernel_ring,
        "memory_model": personality.memory_model,
    }
    try:
        facts.update(personality.summary())
    except Exception as e:  # noqa: BLE001 - a plugin's summary() bug must not hide the run
        facts["summary_error"] = f"{type(e).__name__}: {e}"
    return facts


def run_in_process(req: RunRequest) -> dict:
    """Run the VM in THIS process and return the result dictionary (used by the child, and by tests
    that do not need crash isolation)."""
    from vmirom.engines import libunicorn
    from vmirom.hypervisors import UnknownHypervisor, create
    from vmirom.machine import LoadError, Machine, MachineConfig, VmError
    from vmirom.rom import RomError

    t0 = time.monotonic()
    base = {"hypervisor": req.hypervisor + req.engine.suffix, "kernel": req.kernel, "cmdline": req.cmdline}

    def refused(msg: str) -> dict:
        return {
            **base,
            "fate": "refused",
            "exit_status": None,
            "message": msg,
            "run_time_s": 0.0,
            "metrics": {"kinds": {}, "detail": {}, "total_exits": 0},
            "console": "",
        }

    try:
        base["engine"] = libunicorn.require(req.engine.build).as_json()
    except libunicorn.EngineBuildMismatch as e:
        return refused(str(e))
    from vmirom.hostfiles import MAX_KERNEL_BYTES, InputRefused, read_limited

    try:
        data = read_limited(req.kernel, MAX_KERNEL_BYTES, "kernel")
    except InputRefused as e:
        return refused(str(e))
    base["kernel_sha256"] = hashlib.sha256(data).hexdigest()
    modules = []
    if req.initrd:
        try:  # an initrd larger than the guest's RAM could never be loaded: refused unread
            modules.append((read_limited(req.initrd, req.ram_mb << 20, "initrd"), "initrd"))
        except InputRefused as e:
            return refused(str(e))
    try:
        personality = create(req.hypervisor)
    except UnknownHypervisor as e:
        return refused(str(e))

    from vmirom.guest.console import TerminalFilter

    # the console goes to the host terminal as text: control characters and escape sequences are
    # stripped, except with --interactive, where the guest's shell drives the terminal on purpose
    to_terminal = (lambda b: b) if req.interactive else TerminalFilter()

    def echo(b: bytes) -> None:
        try:
            os.write(req.echo_fd, to_terminal(b))
        except OSError:
            pass

    try:
        machine = Machine(
            personality,
            MachineConfig(
                ram_size=req.ram_mb << 20,
                timeout_s=req.timeout_s,
                echo=echo if req.echo else None,
                console_input=0 if req.interactive else None,
                engine_core=req.engine.core,
            ),
        )
    except RomError as e:
        return refused(f"the {req.hypervisor} personality's ROM description is refused: {e}")
    except (VmError, ValueError) as e:
        return refused(f"cannot build the {req.hypervisor} machine: {e}")
    try:
        machine.load_kernel(data, req.cmdline, modules)
    except LoadError as e:
        return refused(f"{req.kernel}: {e}")
    try:
        session = DebugSession(machine, req.debug) if req.debug.any else None
    except DebugSetupError as e:
        machine.close()
        return refused(str(e))
    if _ISOLATED:
        _bound_child(machine, req.timeout_s, waits=session is not None)
    with _sigint_stops(machine):
        result = machine.run()
    if _ISOLATED:
        signal.setitimer(signal.ITIMER_REAL, 0)
    debug_facts = session.finish() if session is not None else {}
    out = {
        **base,
        "fate": result.fate,
        "exit_status": result.exit_status,
        "message": result.message,
        "run_time_s": round(result.run_time_s, 4),
        "engine_core": machine.engine_core_summary(),
        "metrics": result.metrics,
        "console": result.console,
        "personality": personality_facts(personality),
        "boot_s": round(time.monotonic() - t0 - result.run_time_s, 4),
        "host_max_rss_kib": peak_rss_kib(),
    }
    if result.traceback:
        out["traceback"] = result.traceback
    if not (result.fate == "exit" and result.exit_status == 0):
        from vmirom.debug.crashdump import capture

        out["crash"] = capture(machine)
    out.update(debug_facts)
    out["binding"] = _binding(result.console)
    out["outcome"] = outcome(result.console)
    out["hypervisor_work"] = hypervisor_work(result.metrics)
    out["initrd"] = req.initrd
    machine.close()
    return out


@contextlib.contextmanager
def _sigint_stops(machine):
    """Ctrl-C (SIGINT) ends the run with fate "quit" and a full report, instead of a traceback.
    Only in the main thread (where Python runs signal handlers); the handler just asks the engine
    to stop, which is safe at any point of an exit handler."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, lambda *_: machine.stop("quit", "interrupted by Ctrl-C"))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def _parent_survives_sigint():
    """The parent waits for the child's report through Ctrl-C (the child stops its VM on the same
    SIGINT: one process group); a second Ctrl-C gives up waiting."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits = []

    def handler(*_):
        hits.append(1)
        if len(hits) > 1:
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


#: True in the child process of `run_isolated` (limits may then be put on the whole process)
_ISOLATED = False
#: host memory (resident) a VM process may add beyond what it holds when the guest starts (RAM,
#: engine): checked after every slice by the machine (fate resource_limit)
HOST_MEMORY_HEADROOM = 1 << 30
#: address space it may add (a backstop inside one exit handler; generous because the engine
#: reserves translation buffers of ~1 GiB that it never touches, e.g. when a debugger attaches)
HOST_ADDRESS_SPACE_HEADROOM = 8 << 30
#: how far past its own wall-clock budget a VM process may run inside one exit handler
HANDLER_GRACE_S = 10.0


class HandlerTimeout(VmError):
    """Raised by the child's wall-clock watchdog inside whatever Python code is running."""

    fate = "timeout"


def _bound_child(machine, timeout_s: float, *, waits: bool = False) -> None:
    """Host limits of a VM child process, set once the guest is loaded (issue 11, docs/security.md).

    Memory: the machine stops the run (fate resource_limit) when the process's resident memory has
    grown by HOST_MEMORY_HEADROOM since the guest was loaded (checked after every slice); the
    address space is capped at HOST_ADDRESS_SPACE_HEADROOM more, so a handler that allocates without
    bound inside one exit gets MemoryError (also resource_limit) instead of the host's memory.
    Time: the run loop checks its wall-clock budget after every slice; a watchdog timer backs it
    for time spent inside one exit handler (fate timeout, raised in the handler)."""
    import resource

    machine.config.max_rss_kib = peak_rss_kib() + (HOST_MEMORY_HEADROOM >> 10)
    try:
        with open("/proc/self/statm") as f:
            vm_bytes = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        cap = vm_bytes + HOST_ADDRESS_SPACE_HEADROOM
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or cap < hard:
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (OSError, ValueError):
        pass  # no /proc or no permission: the per-slice check remains

    def expired(_sig, _frame) -> None:
        raise HandlerTimeout(
            f"an exit handler was still running {HANDLER_GRACE_S:g} s after the wall-clock budget of "
            f"{timeout_s:g} s"
        )

    if waits:  # a debugger may hold the VM stopped as long as it likes: no watchdog then
        return
    signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, timeout_s + HANDLER_GRACE_S)


def _child(req: RunRequest, conn) -> None:
    global _ISOLATED
    _ISOLATED = True
    try:
        res = run_in_process(req)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, never a traceback
        import traceback

        res = {
            "hypervisor": req.hypervisor + req.engine.suffix,
            "kernel": req.kernel,
            "fate": "engine_error",
            "exit_status": None,
            "message": f"VMM internal error: {type(e).__name__}: {e}",
            "traceback": traceback.format_exc(),
            "run_time_s": 0.0,
            "metrics": {"kinds": {}, "detail": {}, "total_exits": 0},
            "console": "",
        }
    try:
        conn.send(res)
    finally:
        conn.close()


def _wait_for_child(proc, conn, deadline: float) -> dict | None:
    """The child's result, or None when it died or the deadline passed."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if conn.poll(min(left, 0.5)):
            try:
                return conn.recv()
            except EOFError:
                return None
        elif not proc.is_alive() and not conn.poll(0.1):
            return None


def run_isolated(req: RunRequest) -> dict:
    """Run the VM in a child process; a dying child becomes fate "engine_crash"."""
    t0 = time.monotonic()
    proc, parent = childproc.start(_child, (req,), req.engine.build)
    res = None
    # A gdb session may keep the VM stopped as long as the user likes (that time is not charged to
    # the child's budget): then only the child's own budget and a Ctrl-C end the run.
    deadline = t0 + req.timeout_s + GRACE_S if not req.debug.gdb else float("inf")
    gave_up = False
    try:
        with _parent_survives_sigint():
            res = _wait_for_child(proc, parent, deadline)
    except KeyboardInterrupt:
        gave_up = True
    if res is None:
        if not gave_up and time.monotonic() < deadline:
            # No result before the deadline: the child closed its pipe or died.  That is a crash
            # whatever it is doing this instant - wait for it to be gone instead of killing it and
            # calling that a timeout (issue 11: with two runs at a time, 8 of 30 aborts were
            # reported as "timeout" after < 1 s).
            proc.join(max(5.0, min(30.0, deadline - time.monotonic())))
        timed_out = gave_up or time.monotonic() >= deadline
        if proc.is_alive() and timed_out:
            proc.kill()
            proc.join(5)
            if gave_up:
                msg, fate = "interrupted twice by Ctrl-C: the VM process was killed", "quit"
            else:
                msg = f"the VM did not finish within {req.timeout_s + GRACE_S:g} s and was killed"
                fate = "timeout"
        elif proc.is_alive():
            proc.kill()
            proc.join(5)
            msg, fate = "the engine crashed: the VM process closed its result pipe and hung", "engine_crash"
        else:
            proc.join(5)
            code = proc.exitcode
            what = (
                f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"status {code}"
            )
            msg = f"the engine crashed: the VM process died with {what}"
            fate = "engine_crash"
        res = {
            "hypervisor": req.hypervisor + req.engine.suffix,
            "kernel": req.kernel,
            "cmdline": req.cmdline,
            "fate": fate,
            "exit_status": None,
            "message": msg,
            "run_time_s": round(time.monotonic() - t0, 4),
            "metrics": {"kinds": {}, "detail": {}, "total_exits": 0},
            "console": "",
        }
    else:
        proc.join(5)
    return res


# ----------------------------------------------------------------------------------------------------
# presentation
# ----------------------------------------------------------------------------------------------------
def _binding_text(res: dict) -> str:
    b = (res.get("binding") or {}).get("vmi")
    if not b:
        return "-"
    status = b.get("status") or "?"
    if status == "bound":
        rom = b.get("rom") or {}
        prod = rom.get("product", "") if isinstance(rom, dict) else ""
        return f"bound to {prod} ({b.get('patched', 0)} sites patched)".replace("  ", " ")
    return f"{status}: {b.get('reason') or ''}".strip(": ")


def _kinds_text(kinds: dict, limit: int = 6) -> str:
    items = sorted(((k, v) for k, v in kinds.items() if k != "slice"), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v}" for k, v in items[:limit]) or "-"


def engine_text(engine: dict | None) -> str:
    """The engine build a run used (libunicorn.EngineBuild as JSON), in one line (without its note)."""
    if not engine:
        return "-"
    from vmirom.engines.libunicorn import EngineBuild

    return EngineBuild(**engine).text()


def engine_core_text(core: dict | None) -> str:
    """Which exit core ran (vmirom.engines.core), in one line."""
    if not core:
        return "-"
    if core.get("name") != "c":
        return "python (the reference path)" + (f" [{core['note']}]" if core.get("note") else "")
    done, back = core.get("completed", 0), core.get("fallbacks", 0)
    if not core.get("accelerated"):
        if core.get("shadow_mmu"):
            return (f"c, shadow MMU page faults only ({core.get('why_not')}); {done} exits completed in C, "
                    f"{back} handed to Python")
        return f"c, not used for this personality ({core.get('why_not')}): every exit on the Python path"
    return f"c (compiled; {done} exits completed in C, {back} handed to Python)"
def _add_row(table, *values: object) -> None:
    """A table row whose cells may carry guest-provided text (event fields, messages): rich `Text`,
    never parsed as markup, one bounded line each (issue 11: `[/x]` in an event crashed the summary,
    other markup restyled it)."""
    from rich.text import Text

    from vmirom.guest.console import clip

    table.add_row(*(Text(clip(v, 600)) for v in values))


def print_summary(res: dict, console) -> None:
    from rich.table import Table

    t = Table(title=f"vmirom run: {res.get('hypervisor')}", show_header=False)
    t.add_column("what", style="bold", no_wrap=True)
    t.add_column("value", overflow="fold")
    p = res.get("personality") or {}
    rom = p.get("rom")
    if p:
        _add_row(t, "personality", f"{res.get('hypervisor')} (kernel ring {p.get('kernel_ring', '?')})")
        _add_row(t, "ROM", f"{rom['product']} API {rom['api']} ROM {rom['rom_version']}" if rom else "none")
    else:  # the VM never started: say so instead of guessing
        _add_row(t, "personality", f"{res.get('hypervisor')} (not started)")
    _add_row(t, "binding", _binding_text(res))
    _add_row(t, "fate", f"{res.get('fate')}: {res.get('message', '')}")
    _add_row(t, "result", (res.get("outcome") or {}).get("text", "-"))
    _add_row(t, "hypervisor work", (res.get("hypervisor_work") or {}).get("text", "-"))
    _add_row(t, "kernel", f"{res.get('kernel')} (sha256 {str(res.get('kernel_sha256', '?'))[:16]}...)")
    _add_row(t, "initrd", str(res.get("initrd") or "none"))
    _add_row(t, "engine", engine_text(res.get("engine")))
    note = (res.get("engine") or {}).get("note")
    if note:
        _add_row(t, "engine note", note)
    _add_row(t, "engine core", engine_core_text(res.get("engine_core")))
    _add_row(t, "run time", f"{res.get('run_time_s', 0):.3f} s")
    m = res.get("metrics") or {}
    _add_row(t, "exits", f"{m.get('total_exits', 0)} total")
    for k, v in sorted((m.get("kinds") or {}).items(), key=lambda kv: -kv[1]):
        _add_row(t, f"  {k}", str(v))
    top = sorted((m.get("detail") or {}).items(), key=lambda kv: -kv[1])[:8]
    if top:
        _add_row(t, "top exits", ", ".join(f"{k} {v}" for k, v in top))
    mmu = m.get("mmu")
    if mmu:
        _add_row(
            t,
            "shadow MMU",
            f"{mmu['tracking']}: {mmu['hidden_faults']} hidden faults, {mmu['wp_traps']} WP traps, "
            f"{mmu['emulated_pte_writes']} emulated PTE writes, {mmu['pv_updates']} pv updates, "
            f"{mmu['zaps']} zaps, {mmu['syncs']} syncs, {mmu['unshadows']} unshadows; "
            f"{mmu['shadow_pages']} shadow pages in use (peak {mmu['peak_pages']} of {mmu['pool_frames']}); "
            f"descriptor tables: {mmu.get('descriptor_frames', 0)} protected frames, "
            f"{mmu.get('desc_traps', 0)} store traps",
        )
    tr = res.get("trace")
    if tr:
        t.add_row("trace", f"{tr['path']}: {tr['exits']} exits, {tr['events']} events (ui.perfetto.dev)")
    det = res.get("deterministic")
    if det:
        t.add_row("clock", f"deterministic: {det['instructions']} instructions, "
                           f"{1 << det['icount_shift']} ns each")
    console.print(t)
    if res.get("crash"):
        from vmirom.debug.crashdump import format_text

        console.print(format_text(res["crash"]), markup=False, highlight=False)


def _default_kernel() -> str:
    try:
        from vmirom.guest.build import kernel_path
    except ImportError:
        raise click.ClickException("no KERNEL given and the reference kernel builder is missing") from None
    try:
        return str(kernel_path(build_if_needed=True))
    except Exception as e:  # noqa: BLE001 - BuildError and friends become a clean message
        raise click.ClickException(f"cannot build the reference kernel: {e}") from None


@contextlib.contextmanager
def _keys_to_guest(interactive: bool):
    """With --interactive on a terminal: every key goes to the guest one at a time, unechoed (the
    guest's shell echoes), Ctrl-C and Ctrl-Z included (raw mode: no ISIG); Ctrl-A x stops the VM
    (`vmirom.machine.escape`).  Output processing stays on, so vmirom's own messages still start
    at the left margin."""
    if not interactive or not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(0)
    try:
        tty.setraw(0, termios.TCSADRAIN)
        mode = termios.tcgetattr(0)
        mode[1] |= termios.OPOST  # oflag
        termios.tcsetattr(0, termios.TCSADRAIN, mode)
        if sys.stderr.isatty():
            sys.stderr.write("vmirom: keys go to the guest; Ctrl-A x stops the VM, Ctrl-A h for help\r\n")
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _show_traceback(res: dict, debug: bool) -> None:
    tb = res.get("traceback")
    if tb and debug:
        click.echo(f"--- traceback ({res.get('hypervisor')}) ---\n{tb.rstrip()}", err=True)


@click.command("run", epilog=RUN_CODES)
@click.option("--hypervisor", "-H", default="vmi", show_default=True,
              help="personality (`vmirom hypervisors` lists them), optionally with engine modifiers: "
                   "bare+stock (docs/engine.md)")
@click.option("--cmdline", default="exit_after=50", show_default=True, help="kernel command line")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="wall-clock budget in seconds  [default: 60; 86400 with --interactive]",
)
@json_option("write the summary as JSON to FILE ('-': stdout; the console and summary go to stderr)")
@click.option(
    "--interactive",
    "-i",
    is_flag=True,
    help="type on the guest console: every key (Ctrl-C too) goes to its serial port (e.g. --cmdline "
    "init=sh); Ctrl-A x stops the VM",
)
@click.option(
    "--initrd",
    type=click.Path(dir_okay=False),
    help="first Multiboot module (cpio archive); default: the built initrd with the reference kernel",
)
@click.option("--no-initrd", is_flag=True, help="boot without an initrd")
@click.option(
    "--ram", "ram_mb", type=click.IntRange(2, 3072), default=128, show_default=True, help="MiB of RAM"
)
@click.option("--quiet", "-q", is_flag=True, help="do not stream the guest console")
@click.option("--debug", is_flag=True, help="print the Python traceback of a failing handler")
@click.option("--gdb", "gdb", metavar="[HOST:]PORT",
              help="gdb remote stub on this port (host default 127.0.0.1; port 0: any free one): "
                   "gdb KERNEL -ex 'target remote :PORT'  (docs/debugging.md)")
@click.option("--wait", "gdb_wait", is_flag=True,
              help="with --gdb: stop before the first instruction until gdb connects")
@click.option("--trace", "trace", type=OutputPath(allow_stdout=False),
              help="write every exit to FILE (Chrome trace-event JSON: ui.perfetto.dev)")
@click.option("--deterministic", is_flag=True,
              help="guest time counts instructions, not host time: the same run gives the same "
                   "exits, console and trace (slower, docs/debugging.md)")
@click.option("--icount", "icount_shift", type=click.IntRange(0, 10), default=0, show_default=True,
              help="with --deterministic: 2**N ns of guest time per instruction")
@click.option(
    "--engine-core",
    type=click.Choice(["python", "c"]),
    default=None,
    help="who completes the hot exits: the compiled core (c) or the Python reference path  "
    "[default: $VMIROM_ENGINE_CORE, else c when built]",
)
@click.argument("kernel", required=False, type=click.Path(dir_okay=False))
def run(
    hypervisor: str,
    cmdline: str,
    timeout_s: float | None,
    json_out: str | None,
    interactive: bool,
    initrd: str | None,
    no_initrd: bool,
    ram_mb: int,
    quiet: bool,
    debug: bool,
    gdb: str | None,
    gdb_wait: bool,
    trace: str | None,
    deterministic: bool,
    icount_shift: int,
    engine_core: str | None,
    kernel: str | None,
) -> None:
    """Boot KERNEL (default: the reference kernel) on a hypervisor personality, stream its console and
    print a summary.  The exit status reflects the guest's fate."""
    from vmirom.engines.options import parse_target

    hypervisor_names(hypervisor, "--hypervisor")
    if len(split_list(hypervisor)) != 1:
        raise click.BadParameter("give one personality (vmirom demo boots several)",
                                 param_hint="--hypervisor")
    hypervisor, engine = parse_target(hypervisor)
    if gdb_wait and not gdb:
        raise click.UsageError("--wait needs --gdb")
    if gdb:
        from vmirom.debug.gdbstub import parse_address

        try:
            parse_address(gdb)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--gdb") from None
    if timeout_s is None:
        timeout_s = 86400.0 if interactive or gdb else 60.0
    if interactive and quiet:
        raise click.UsageError("--interactive needs the console (drop --quiet)")
    if interactive and json_out == "-":
        raise click.UsageError("--interactive and --json - both want the terminal")
    if initrd and no_initrd:
        raise click.UsageError("--initrd and --no-initrd exclude each other")
    if engine_core is not None:
        if engine.core is not None and engine.core != engine_core:
            raise click.UsageError(f"--engine-core={engine_core} contradicts the target's +py")
        engine = dataclasses.replace(engine, core=engine_core)
    given = kernel is not None
    kernel = kernel or _default_kernel()
    initrd = reference_initrd(kernel, initrd, no_initrd, given)
    req = RunRequest(
        hypervisor, kernel, cmdline, timeout_s, initrd, ram_mb, echo=not quiet, interactive=interactive,
        engine=engine, echo_fd=2 if json_out == "-" else 1,
        debug=DebugOptions(gdb, gdb_wait, trace, deterministic, icount_shift),
    )
    with _keys_to_guest(interactive):
        res = run_isolated(req)
    con = output_console(json_out)
    con.print()
    print_summary(res, con)
    _show_traceback(res, debug)
    if json_out:
        write_json(json_out, {k: v for k, v in res.items() if k != "traceback" or debug})
    code = exit_code(res)
    if code:
        click.echo(f"vmirom run: {res.get('fate')}: {res.get('message')}", err=True)
    sys.exit(code)


def run_on_qemu(kernel: str, cmdline: str, initrd: str | None, timeout_s: float, digest: str) -> dict:
    """Boot the same kernel on real QEMU (qemu-system-i386 -kernel) and describe it like a VMM run."""
    from vmirom.guest.qemu import QemuError, run_kernel

    base = {"hypervisor": "qemu", "kernel": kernel, "cmdline": cmdline, "initrd": initrd}
    try:
        q = run_kernel(kernel, cmdline=cmdline, initrd=initrd, timeout=timeout_s)
    except QemuError as e:
        return {
            **base,
            "fate": "refused",
            "exit_status": None,
            "message": str(e),
            "run_time_s": 0.0,
            "metrics": {},
            "console": "",
        }
    if q.timed_out:
        fate, msg = "timeout", f"QEMU did not finish within {timeout_s:g} s"
    elif q.exit_status is not None:
        fate, msg = "exit", f"guest exited with status {q.exit_status}"
    else:
        fate, msg = "vm_error", f"QEMU stopped with code {q.returncode} (triple fault or crash)"
    boot = next((e for e in q.events if e.get("event") == "boot"), {})
    return {
        **base,
        "fate": fate,
        "exit_status": q.exit_status,
        "message": msg,
        "run_time_s": round(q.elapsed, 4),
        "kernel_sha256": digest,
        "metrics": {},
        "console": q.console,
        "personality": {
            "name": "qemu",
            "description": "real QEMU (TCG), no ROM",
            "kernel_ring": boot.get("ring", "?"),
            "rom": None,
        },
        "binding": _binding(q.console),
        "outcome": outcome(q.console),
        "hypervisor_work": {"text": "n/a (QEMU: a real PC, no VMM exits counted)"},
    }


def _fate_text(r: dict) -> str:
    if r.get("fate") == "exit" and r.get("exit_status") == 0:
        return "exit 0"
    st = r.get("exit_status")
    return f"{r.get('fate')} {st if st is not None else ''}".strip()


DEMO_CODES = (
    "\b\nExit status:\n"
    "  0 every run exited cleanly with the same console result, 1 a run failed or the results\n"
    "  differ, 2 usage error (e.g. an unknown hypervisor), 3 the kernel could not be read"
)


@click.command("demo", epilog=DEMO_CODES)
@click.option(
    "--cmdline", default="init=selftest", show_default=True, help="kernel command line for every run"
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(0, min_open=True),
    default=120.0,
    show_default=True,
    help="wall-clock budget per run in seconds",
)
@json_option("write all results as JSON to FILE ('-': stdout; the table goes to stderr)")
@click.option("--hypervisor", "-H", "only", multiple=True, metavar="NAME[,NAME...]",
              help="limit to these personalities (repeat the option or give a comma list; `qemu` too)")
@click.option(
    "--initrd",
    type=click.Path(dir_okay=False),
    help="initrd for every run; default: the built initrd with the reference kernel",
)
@click.option("--no-initrd", is_flag=True, help="boot without an initrd")
@click.option(
    "--qemu/--no-qemu",
    "with_qemu",
    default=None,
    help="also boot on real qemu-system-i386 (default: when it is installed)",
)
@click.option("--debug", is_flag=True, help="print the Python traceback of a failing handler")
@click.argument("kernel", required=False, type=click.Path(dir_okay=False))
def demo(
    cmdline: str,
    timeout_s: float,
    json_out: str | None,
    only: tuple[str, ...],
    initrd: str | None,
    no_initrd: bool,
    with_qemu: bool | None,
    debug: bool,
    kernel: str | None,
) -> None:
    """Boot the SAME kernel file on every registered hypervisor personality (and on real QEMU when it
    is installed) and compare them side by side: ROM and binding, the guest's own result (by default
    the user-space selftest: "checks passed N/N"), run time, and how each hypervisor got involved
    (no ROM / trap-and-emulate counts / hypercall counts by VMI call)."""
    from rich.table import Table

    from vmirom.engines.options import parse_target
    from vmirom.hostfiles import MAX_KERNEL_BYTES, InputRefused, read_limited
    from vmirom.hypervisors import names

    con = output_console(json_out)
    if initrd and no_initrd:
        raise click.UsageError("--initrd and --no-initrd exclude each other")
    wanted = hypervisor_names(only, "--hypervisor", extra=("qemu",))
    given = kernel is not None
    kernel = kernel or _default_kernel()
    initrd = reference_initrd(kernel, initrd, no_initrd, given)
    try:
        digest = hashlib.sha256(read_limited(kernel, MAX_KERNEL_BYTES, "kernel")).hexdigest()
    except InputRefused as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(EXIT_CODES["refused"])
    selected = wanted or names()
    if with_qemu is None:
        from vmirom.guest.qemu import qemu_available

        with_qemu = qemu_available() and (not wanted or "qemu" in wanted)
    selected = [n for n in selected if n != "qemu"]
    con.print(f"[bold]kernel[/bold] {kernel}  sha256 {digest[:16]}...")
    con.print(f"[bold]initrd[/bold] {initrd or 'none'}  [bold]cmdline[/bold] {cmdline!r}")
    results = []
    for name in selected:
        con.print(f"booting on [bold]{name}[/bold] ...")
        base_name, engine = parse_target(name)
        results.append(run_isolated(RunRequest(base_name, kernel, cmdline, timeout_s, initrd, echo=False,
                                               engine=engine)))
        _show_traceback(results[-1], debug)
    if with_qemu:
        con.print("booting on [bold]qemu[/bold] (qemu-system-i386) ...")
        results.append(run_on_qemu(kernel, cmdline, initrd, timeout_s, digest))
    t = Table(title="One kernel binary, every hypervisor")
    for col, kw in (
        ("hypervisor", {"style": "bold"}),
        ("ring", {}),
        ("ROM", {}),
        ("binding", {}),
        ("fate", {}),
        ("result", {}),
        ("run time", {"justify": "right"}),
        ("exits", {"justify": "right"}),
        ("hypervisor work", {}),
    ):
        t.add_column(col, overflow="fold", **kw)
    for r in results:
        p = r.get("personality") or {}
        rom = p.get("rom")
        m = r.get("metrics") or {}
        _add_row(
            t,
            r.get("hypervisor", "?"),
            str(p.get("kernel_ring", "?")),
            f"{rom['product']} {rom['api']}" if rom else "none",
            _binding_text(r),
            _fate_text(r),
            (r.get("outcome") or {}).get("text", "-"),
            f"{r.get('run_time_s', 0):.2f} s",
            str(m.get("total_exits", "-")) if m else "-",
            (r.get("hypervisor_work") or {}).get("text", "-"),
        )
    con.print(t)
    same_file = {r.get("kernel_sha256") for r in results} == {digest}
    texts = {(r.get("outcome") or {}).get("text") for r in results}
    con.print(
        f"same kernel file on every run: {'yes' if same_file else 'NO'} (sha256 {digest[:16]}...); "
        f"same console result everywhere: {'yes' if len(texts) == 1 else 'NO'}"
    )
    if json_out:
        write_json(
            json_out,
            {
                "kernel": kernel,
                "sha256": digest,
                "cmdline": cmdline,
                "initrd": initrd,
                "same_result": len(texts) == 1,
                "results": [
                    {k: v for k, v in r.items() if k not in ("console", "traceback")} for r in results
                ],
            },
        )
    bad = [r for r in results if exit_code(r) != 0]
    for r in bad:
        con.print(f"{r.get('hypervisor')}: {r.get('fate')}: {r.get('message')}", style="red", markup=False)
    if bad or len(texts) != 1 or not same_file:
        sys.exit(1)
