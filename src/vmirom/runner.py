"""`vmirom run` and `vmirom demo`: boot a kernel on a hypervisor personality.

Where a VM runs: in a CHILD process (multiprocessing, fork).  The engine (Unicorn/QEMU) can abort
its whole process on CPU states it does not support (e.g. a busy TSS type: SIGABRT), so a guest
must never be able to kill `vmirom` itself.  The child streams the console straight to our stdout
and sends back one result dictionary; if it dies instead, the parent reports "engine_crash" with the
signal, cleanly.  The parent also enforces a hard deadline (the child's own budget + a grace period).

Exit status of `vmirom run` (the guest's fate):
    0  the guest exited cleanly with status 0 (debug-exit port 0xF4, or VMI Shutdown)
    1  the guest exited with a non-zero status
    3  the input was refused (not an ELF, truncated, not Multiboot, unknown hypervisor, bad option)
    4  triple fault
    5  wall-clock budget exhausted (--timeout)
    6  the guest halted with nothing that could wake it
    7  another VM-level error (wrote to the ROM, touched memory outside RAM, engine error, reboot)
    8  the engine crashed (the child process died)
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

EXIT_CODES = {
    "exit_ok": 0,
    "exit_nonzero": 1,
    "refused": 3,
    "triple_fault": 4,
    "timeout": 5,
    "halt_dead": 6,
    "vm_error": 7,
    "engine_crash": 8,
}
GRACE_S = 30.0


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


def exit_code(result: dict) -> int:
    """Map a result's fate to the process exit status documented above."""
    fate = result.get("fate")
    if fate == "exit":
        return 0 if result.get("exit_status") == 0 else 1
    if fate in ("refused", "triple_fault", "timeout", "halt_dead", "engine_crash"):
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


def run_in_process(req: RunRequest) -> dict:
    """Run the VM in THIS process and return the result dictionary (used by the child, and by tests
    that do not need crash isolation)."""
    from vmirom.hypervisors import UnknownHypervisor, create
    from vmirom.machine import LoadError, Machine, MachineConfig, VmError

    t0 = time.monotonic()
    base = {"hypervisor": req.hypervisor, "kernel": req.kernel, "cmdline": req.cmdline}

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
        data = Path(req.kernel).read_bytes()
    except OSError as e:
        return refused(f"cannot read kernel {req.kernel}: {e.strerror or e}")
    base["kernel_sha256"] = hashlib.sha256(data).hexdigest()
    modules = []
    if req.initrd:
        try:
            modules.append((Path(req.initrd).read_bytes(), "initrd"))
        except OSError as e:
            return refused(f"cannot read initrd {req.initrd}: {e.strerror or e}")
    try:
        personality = create(req.hypervisor)
    except UnknownHypervisor as e:
        return refused(str(e))

    def echo(b: bytes) -> None:
        try:
            os.write(1, b)
        except OSError:
            pass

    try:
        machine = Machine(
            personality,
            MachineConfig(
                ram_size=req.ram_mb << 20, timeout_s=req.timeout_s, echo=echo if req.echo else None
            ),
        )
    except (VmError, ValueError) as e:
        return refused(f"cannot build the {req.hypervisor} machine: {e}")
    try:
        machine.load_kernel(data, req.cmdline, modules)
    except LoadError as e:
        return refused(f"{req.kernel}: {e}")
    result = machine.run()
    out = {
        **base,
        "fate": result.fate,
        "exit_status": result.exit_status,
        "message": result.message,
        "run_time_s": round(result.run_time_s, 4),
        "metrics": result.metrics,
        "console": result.console,
        "personality": {
            "name": personality.name,
            "description": personality.description,
            "kernel_ring": personality.kernel_ring,
            **personality.summary(),
        },
        "boot_s": round(time.monotonic() - t0 - result.run_time_s, 4),
    }
    out["binding"] = _binding(result.console)
    machine.close()
    return out


def _child(req: RunRequest, conn) -> None:
    try:
        res = run_in_process(req)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, never a traceback
        import traceback

        res = {
            "hypervisor": req.hypervisor,
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


def run_isolated(req: RunRequest) -> dict:
    """Run the VM in a child process; a dying child becomes fate "engine_crash"."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    sys.stdout.flush()
    proc = ctx.Process(target=_child, args=(req, child), daemon=True)
    t0 = time.monotonic()
    proc.start()
    child.close()
    res = None
    deadline = t0 + req.timeout_s + GRACE_S
    while res is None:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if parent.poll(min(left, 0.5)):
            try:
                res = parent.recv()
            except EOFError:
                break
        elif not proc.is_alive() and not parent.poll(0.1):
            break
    if res is None:
        if proc.is_alive():
            proc.kill()
            proc.join(5)
            msg = f"the VM did not finish within {req.timeout_s + GRACE_S:g} s and was killed"
            fate = "timeout"
        else:
            proc.join(5)
            code = proc.exitcode
            what = (
                f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"status {code}"
            )
            msg = f"the engine crashed: the VM process died with {what}"
            fate = "engine_crash"
        res = {
            "hypervisor": req.hypervisor,
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


def print_summary(res: dict, console) -> None:
    from rich.table import Table

    t = Table(title=f"vmirom run: {res.get('hypervisor')}", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    p = res.get("personality") or {}
    rom = p.get("rom")
    t.add_row("personality", f"{res.get('hypervisor')} (kernel ring {p.get('kernel_ring', '?')})")
    t.add_row("ROM", f"{rom['product']} API {rom['api']} ROM {rom['rom_version']}" if rom else "none")
    t.add_row("binding", _binding_text(res))
    t.add_row("fate", f"{res.get('fate')}: {res.get('message', '')}")
    t.add_row("kernel", f"{res.get('kernel')} (sha256 {str(res.get('kernel_sha256', '?'))[:16]}...)")
    t.add_row("run time", f"{res.get('run_time_s', 0):.3f} s")
    m = res.get("metrics") or {}
    t.add_row("exits", f"{m.get('total_exits', 0)} total")
    for k, v in sorted((m.get("kinds") or {}).items(), key=lambda kv: -kv[1]):
        t.add_row(f"  {k}", str(v))
    top = sorted((m.get("detail") or {}).items(), key=lambda kv: -kv[1])[:8]
    if top:
        t.add_row("top exits", ", ".join(f"{k} {v}" for k, v in top))
    console.print(t)


def _default_kernel() -> str:
    try:
        from vmirom.guest.build import kernel_path
    except ImportError:
        raise click.ClickException("no KERNEL given and the reference kernel builder is missing") from None
    try:
        return str(kernel_path(build_if_needed=True))
    except Exception as e:  # noqa: BLE001 - BuildError and friends become a clean message
        raise click.ClickException(f"cannot build the reference kernel: {e}") from None


def _write_json(path: str, doc) -> None:
    try:
        Path(path).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise click.ClickException(f"cannot write {path}: {e.strerror or e}") from None


@click.command("run")
@click.option("--hypervisor", "-H", default="vmi", show_default=True, help="personality (see `vmirom demo`)")
@click.option("--cmdline", default="exit_after=50", show_default=True, help="kernel command line")
@click.option(
    "--timeout", "timeout_s", type=float, default=60.0, show_default=True, help="wall-clock budget in seconds"
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the summary as JSON here")
@click.option("--initrd", type=click.Path(dir_okay=False), help="first Multiboot module (cpio archive)")
@click.option(
    "--ram", "ram_mb", type=click.IntRange(2, 3072), default=128, show_default=True, help="MiB of RAM"
)
@click.option("--quiet", "-q", is_flag=True, help="do not stream the guest console")
@click.argument("kernel", required=False, type=click.Path(dir_okay=False))
def run(
    hypervisor: str,
    cmdline: str,
    timeout_s: float,
    json_path: str | None,
    initrd: str | None,
    ram_mb: int,
    quiet: bool,
    kernel: str | None,
) -> None:
    """Boot KERNEL (default: the reference kernel) on a hypervisor personality, stream its console and
    print a summary.  The exit status reflects the guest's fate (see `vmirom.runner`)."""
    from rich.console import Console

    from vmirom.hypervisors import UnknownHypervisor, get

    try:
        get(hypervisor)
    except UnknownHypervisor as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(EXIT_CODES["refused"])
    if timeout_s <= 0:
        click.echo("Error: --timeout must be positive", err=True)
        sys.exit(EXIT_CODES["refused"])
    kernel = kernel or _default_kernel()
    req = RunRequest(hypervisor, kernel, cmdline, timeout_s, initrd, ram_mb, echo=not quiet)
    res = run_isolated(req)
    console = Console(width=max(Console().width, 100))
    console.print()
    print_summary(res, console)
    if json_path:
        _write_json(json_path, {k: v for k, v in res.items() if k != "traceback"})
    code = exit_code(res)
    if code:
        click.echo(f"vmirom run: {res.get('fate')}: {res.get('message')}", err=True)
    sys.exit(code)


@click.command("demo")
@click.option(
    "--cmdline", default="exit_after=50", show_default=True, help="kernel command line for every run"
)
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write all results as JSON here")
@click.option("--hypervisor", "-H", "only", multiple=True, help="limit to these personalities")
@click.argument("kernel", required=False, type=click.Path(dir_okay=False))
def demo(
    cmdline: str, timeout_s: float, json_path: str | None, only: tuple[str, ...], kernel: str | None
) -> None:
    """Boot the SAME kernel file on every registered hypervisor personality and compare them side by
    side: binding, exits by kind, run time."""
    from rich.console import Console
    from rich.table import Table

    from vmirom.hypervisors import get, names

    console = Console(width=max(Console().width, 150))
    kernel = kernel or _default_kernel()
    try:
        digest = hashlib.sha256(Path(kernel).read_bytes()).hexdigest()
    except OSError as e:
        raise click.ClickException(f"cannot read kernel {kernel}: {e.strerror or e}") from None
    selected = list(only) or names()
    console.print(f"[bold]kernel[/bold] {kernel}  sha256 {digest[:16]}...  cmdline {cmdline!r}")
    results = []
    for name in selected:
        try:
            get(name)
        except KeyError as e:
            raise click.ClickException(str(e)) from None
        console.print(f"booting on [bold]{name}[/bold] ...")
        results.append(run_isolated(RunRequest(name, kernel, cmdline, timeout_s, echo=False)))
    t = Table(title="One kernel binary, every hypervisor personality")
    for col, kw in (
        ("hypervisor", {"style": "bold"}),
        ("ring", {}),
        ("ROM", {}),
        ("binding", {}),
        ("fate", {}),
        ("run time", {"justify": "right"}),
        ("exits", {"justify": "right"}),
        ("exits by kind", {}),
    ):
        t.add_column(col, **kw)
    for r in results:
        p = r.get("personality") or {}
        rom = p.get("rom")
        m = r.get("metrics") or {}
        fate = (
            "exit 0"
            if r.get("fate") == "exit" and r.get("exit_status") == 0
            else f"{r.get('fate')} {r.get('exit_status') if r.get('exit_status') is not None else ''}".strip()
        )
        t.add_row(
            r.get("hypervisor", "?"),
            str(p.get("kernel_ring", "?")),
            f"{rom['product']} {rom['api']}" if rom else "none",
            _binding_text(r),
            fate,
            f"{r.get('run_time_s', 0):.2f} s",
            str(m.get("total_exits", 0)),
            _kinds_text(m.get("kinds", {})),
        )
    console.print(t)
    same = {r.get("kernel_sha256") for r in results if r.get("kernel_sha256")}
    console.print(
        f"same kernel file on every run: {'yes' if same == {digest} else 'NO'} (sha256 {digest[:16]}...)"
    )
    if json_path:
        _write_json(
            json_path,
            {
                "kernel": kernel,
                "sha256": digest,
                "cmdline": cmdline,
                "results": [
                    {k: v for k, v in r.items() if k not in ("console", "traceback")} for r in results
                ],
            },
        )
    bad = [r for r in results if exit_code(r) != 0]
    if bad:
        for r in bad:
            console.print(f"[red]{r.get('hypervisor')}: {r.get('fate')}: {r.get('message')}[/red]")
        sys.exit(1)
