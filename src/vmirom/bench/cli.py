"""`vmirom bench`: the benchmark matrix, side by side in one run, with tables, JSON and a chart."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from vmirom.bench import report, runs
from vmirom.bench.runs import GUEST_TESTS, PSEUDO_TESTS, BenchError, Kernels, Target, Workload
from vmirom.cliutil import OutputPath, exit_epilog, json_option, refuse, split_list, write_json
from vmirom.cliutil import console as output_console

#: --quick: every target of the full run (so the table still has fullvirt, vmi, QEMU and the
#: native-build pairs), one repeat, a kernel-heavy subset at 2% of the guest's counts: ~15 s here
QUICK_TESTS = ("null_syscall", "pipe_latency", "fork_exit", "page_fault", "cpu_loop")
QUICK_SCALE = 2
DEFAULT_SCALE = 20


def default_targets(native: bool) -> list[str]:
    """Every registered personality, then QEMU (timed, and counting instructions), then the
    native-build pairs (when available)."""
    from vmirom.guest.qemu import qemu_available
    from vmirom.hypervisors import registry

    names = registry.names()
    qemu = qemu_available()
    out = list(names) + ([runs.QEMU, runs.QEMU_ICOUNT] if qemu else [])
    if native:
        out += ["bare@native"] + (["qemu@native", f"{runs.QEMU_ICOUNT}@native"] if qemu else [])
    return out


def build_native() -> Path:
    """`make -C guest native` -> guest/build/kernel-native.elf (the kernel without VMI call sites);
    installed: the prebuilt one."""
    from vmirom.guest.build import native_kernel_path

    return native_kernel_path()


def resolve_kernels(kernel: str | None, native_kernel: str | None, initrd: str | None,
                    want_native: bool) -> tuple[Kernels, str | None]:
    """The guest files to run, building them when not given.  Returns (kernels, warning)."""
    from vmirom.guest.build import BuildError, build_kernel
    from vmirom.guest.initrd import INITRD_PATH

    warning = None
    try:
        k = Path(kernel) if kernel else build_kernel()
    except BuildError as e:
        raise click.ClickException(str(e)) from None
    rd = Path(initrd) if initrd else (INITRD_PATH if INITRD_PATH.is_file() else None)
    nk: Path | None = None
    if native_kernel:
        nk = Path(native_kernel)
    elif want_native:
        try:
            nk = build_native()
        except BuildError as e:
            warning = f"no native kernel ({e}); skipping the @native targets"
    return Kernels(k, nk, rd), warning


BENCH_CODES = exit_epilog(
    "(here 1 means: nothing was measured, or the run was interrupted; what finished is still saved)",
    "3 refused: the guest files are missing and cannot be built")


@click.group("bench", invoke_without_command=True, epilog=BENCH_CODES)
@click.option("--hypervisors", "-H", "targets_opt", metavar="A,B,...", multiple=True,
              help="Targets (repeat the option or give a comma list): registered personalities, `qemu`, "
                   "optional engine modifiers (`bare+stock`: the stock Unicorn wheel, docs/engine.md), "
                   "optional `@native` suffix (the kernel built without VMI call sites).  "
                   "Default: all + qemu + bare@native, qemu@native.")
@click.option("--tests", "tests_opt", metavar="T,U,...", multiple=True,
              help=f"Guest tests ({', '.join(GUEST_TESTS)}) and/or pseudo tests ({', '.join(PSEUDO_TESTS)}); "
                   "repeat the option or give a comma list.  Default: every guest test.")
@click.option("--repeat", type=click.IntRange(1, 100), default=None,
              help="Repeats (targets interleaved). [3]")
@click.option("--scale", type=click.IntRange(1, 10000), default=None,
              help=f"Percent of the guest's default iteration counts (bench -s). [{DEFAULT_SCALE}]")
@click.option("--iterations", "-n", type=click.IntRange(1), default=None,
              help="Exact iterations of every test (bench -n; wins over --scale).")
@json_option("Write the results as JSON to FILE ('-': stdout; the tables go to stderr).  Checked before "
             "the run; written also when the run is interrupted (Ctrl-C).")
@click.option("--plot", "plot_path", type=OutputPath(allow_stdout=False),
              help="Write the overhead chart here (.png or .svg).")
@click.option("--quick", is_flag=True,
              help=f"Short configuration (seconds, for CI): every target, 1 repeat, {','.join(QUICK_TESTS)} "
                   f"at {QUICK_SCALE}% of the guest's counts (explicit options still win).")
@click.option("--timeout", type=click.FloatRange(1), default=600.0, show_default=True,
              help="Wall-clock budget of one boot, seconds.")
@click.option("--idle-ticks", type=click.IntRange(1), default=20, show_default=True,
              help="Timer ticks of the exit_after boot used by the pseudo tests.")
@click.option("--kernel", type=click.Path(exists=True, dir_okay=False),
              help="VMI kernel (default: build it).")
@click.option("--native-kernel", type=click.Path(exists=True, dir_okay=False),
              help="Native kernel (default: make -C guest native).")
@click.option("--initrd", type=click.Path(exists=True, dir_okay=False),
              help="Initrd (default: the built one).")
@click.option("--deterministic", is_flag=True,
              help="VMM targets keep guest time in instructions: reproducible exit counts, slower "
                   "(docs/debugging.md); the report says which clock was used")
@click.pass_context
def bench(ctx: click.Context, targets_opt: tuple[str, ...], tests_opt: tuple[str, ...], repeat: int | None,
          scale: int | None, iterations: int | None, json_out: str | None, plot_path: str | None, quick: bool,
          timeout: float, idle_ticks: int, kernel: str | None, native_kernel: str | None,
          initrd: str | None, deterministic: bool) -> None:
    """Run the guest benchmark suite on each target, interleaved across repeats, and report medians
    with ratios to `bare` (see docs/performance.md).  `vmirom bench report` and `vmirom bench
    profile` work on the results and the VMM's own time."""
    if ctx.invoked_subcommand is not None:
        return
    if plot_path and plot_path == json_out:
        raise click.UsageError("--json and --plot name the same file")
    console = output_console(json_out)
    names = split_list(targets_opt) or None
    tests = split_list(tests_opt) or list(QUICK_TESTS if quick else GUEST_TESTS)
    for t in tests:
        if t not in GUEST_TESTS and t not in PSEUDO_TESTS:
            raise click.BadParameter(f"unknown test {t!r}; known: {', '.join(GUEST_TESTS + PSEUDO_TESTS)}",
                                     param_hint="--tests")
    try:
        targets_given = [Target.parse(n) for n in names] if names else None
    except BenchError as e:
        raise click.BadParameter(str(e), param_hint="--hypervisors") from None
    repeat = repeat or (1 if quick else 3)
    if iterations is None and scale is None:
        scale = QUICK_SCALE if quick else DEFAULT_SCALE
    want_native = names is None or any(n.endswith(runs.NATIVE_SUFFIX) for n in names)
    kernels, warning = resolve_kernels(kernel, native_kernel, initrd, want_native)
    if targets_given is None:
        targets = [Target.parse(n) for n in default_targets(kernels.native is not None)]
    elif kernels.native is None and any(t.kernel == "native" for t in targets_given):
        refuse(warning or "no native kernel")
    else:
        targets = targets_given
    if warning:
        console.print(f"[yellow]warning:[/] {warning}")
    guest_tests = tuple(t for t in tests if t in GUEST_TESTS)
    pseudo = tuple(t for t in tests if t in PSEUDO_TESTS)
    workload = Workload(guest_tests, pseudo, scale=scale, iterations=iterations, idle_ticks=idle_ticks,
                        timeout_s=timeout, deterministic=deterministic)
    if guest_tests and kernels.initrd is None:
        refuse("no initrd: build the guest (vmirom guest build) or pass --initrd")

    from vmirom.engines.libunicorn import describe

    engine, stock = describe(), any(t.engine.build == "stock" for t in targets)
    console.print(f"engine: {engine.text()}" + ("; +stock targets: the stock wheel" if stock else "")
                  + (f" ({engine.note})" if engine.note else ""))
    console.print("clock: " + ("deterministic (VMM guest time = instructions retired, docs/debugging.md)"
                               if deterministic else "cpu-time (VMM guest time = vCPU thread CPU time)"))
    boots, records, interrupted = _run_matrix(console, targets, workload, kernels, repeat)

    files = {"kernel": kernels.vmi, "native_kernel": kernels.native, "initrd": kernels.initrd}
    config: dict[str, Any] = {"targets": [t.name for t in targets], "tests": tests, "repeat": repeat,
                              "scale": scale, "iterations": iterations, "quick": quick, "timeout_s": timeout,
                              "idle_ticks": idle_ticks, "clock": workload.clock}
    if interrupted:
        config["interrupted"] = True
    doc = report.document(command="vmirom bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
                          config=config, env=report.environment(files), boots=[b.as_json() for b in boots],
                          records=records)
    for table in report.tables(doc):
        console.print(table)
    for note in report.unmeasured_notes(doc):
        console.print(f"[yellow]unmeasured:[/] {note}")
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        shown = {(r["target"], r["test"]): r["error"] for r in failed}
        console.print(f"[yellow]{len(failed)} of {len(records)} measurements failed:[/]")
        for (tg, test), err in list(shown.items())[:20]:
            console.print(f"  {tg} {test}: {err}", markup=False)
    if json_out:
        problems = report.validate(doc)
        if problems:          # a bug of ours: say so, but keep the data
            console.print(f"[red]the JSON does not match schema.json:[/] {problems[:5]}", markup=False)
        write_json(json_out, doc)
        if json_out != "-":
            console.print(f"wrote {json_out}")
    if plot_path:
        if not doc["summary"]:
            console.print("[yellow]no results to plot[/]")
        else:
            try:
                report.plot(doc, Path(plot_path))
            except (OSError, ValueError) as e:
                raise click.ClickException(f"cannot write {plot_path}: {e}") from None
            console.print(f"wrote {plot_path}")
    measured = sum(1 for r in records if r["status"] == "ok")
    if interrupted:
        console.print(f"[yellow]interrupted:[/] {measured} measurement(s) finished and are reported above")
        sys.exit(1)
    if not measured:
        console.print("[red]nothing was measured[/] (every boot failed: see above)")
        sys.exit(1)


@bench.command("report", epilog=exit_epilog("3 refused: the file is not a vmirom bench JSON document"))
@click.argument("results", type=click.Path(dir_okay=False))
@click.argument("markdown", required=False, type=click.Path(dir_okay=False))
def report_cmd(results: str, markdown: str | None) -> None:
    """Print the Markdown tables of a `vmirom bench --json` RESULTS file, or, with MARKDOWN,
    rewrite that file's generated sections (<!-- bench:NAME --> ... <!-- /bench:NAME -->)."""
    try:
        doc = json.loads(Path(results).read_text())
    except OSError as e:
        refuse(f"cannot read {results}: {e.strerror or e}")
    except ValueError as e:
        refuse(f"{results} is not JSON: {e}")
    problems = report.validate(doc)
    if problems:
        refuse(f"{results} is not a vmirom bench document: {'; '.join(problems[:3])}")
    if markdown is None:
        click.echo(report.markdown_all(doc))
        return
    try:
        text, names = report.update_markdown(Path(markdown).read_text(), doc)
        Path(markdown).write_text(text)
    except OSError as e:
        raise click.ClickException(f"cannot update {markdown}: {e.strerror or e}") from None
    click.echo(f"{markdown}: updated {', '.join(names) or 'nothing'}")


@bench.command("profile", epilog=exit_epilog("(here 1 means: the boot did not exit cleanly)"))
@click.argument("target")
@click.argument("tests", nargs=-1)
@click.option("-n", "--iterations", type=click.IntRange(1), default=100, show_default=True)
@click.option("--top", type=click.IntRange(1), default=25, show_default=True, help="functions to list")
@click.option("--kernel", type=click.Path(exists=True, dir_okay=False), help="VMI kernel (default: built)")
@click.option("--initrd", type=click.Path(exists=True, dir_okay=False), help="initrd (default: built)")
def profile_cmd(target: str, tests: tuple[str, ...], iterations: int, top: int, kernel: str | None,
                initrd: str | None) -> None:
    """Where the VMM's own time goes: one benchmark boot of TARGET in this process, plain (the
    per-hook handler times) and under cProfile (the Python functions behind them).  TESTS default
    to null_syscall pipe_latency fork_exit page_fault."""
    from vmirom.bench import profile

    sys.exit(profile.run(target, split_list(tests) or list(profile.DEFAULT_TESTS), iterations, top,
                         kernel, initrd))


def _run_matrix(console: Any, targets: list[Target], workload: Workload, kernels: Kernels,
                repeat: int) -> tuple[list[runs.BootResult], list[dict[str, Any]], bool]:
    """Repeat 1: every target in order; repeat 2: again ... (interleaved, so drifts of a shared
    machine hit every target alike).  Ctrl-C stops the matrix and keeps every boot that finished
    (the third value says it was interrupted)."""

    def kinds(t: Target) -> list[bool]:
        # boot and idle are host times: meaningless for a target whose clock counts instructions
        pseudo = [True] if workload.pseudo and not t.counts_instructions else []
        return ([False] if workload.tests else []) + pseudo

    boots: list[runs.BootResult] = []
    records: list[dict[str, Any]] = []
    try:
        _matrix(console, targets, workload, kernels, repeat, kinds, boots, records)
    except KeyboardInterrupt:
        return boots, records, True
    return boots, records, False


def _matrix(console: Any, targets: list[Target], workload: Workload, kernels: Kernels, repeat: int,
            kinds: Any, boots: list[runs.BootResult], records: list[dict[str, Any]]) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} boots"), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task("bench", total=repeat * sum(len(kinds(t)) for t in targets))
        for r in range(repeat):
            for t in targets:
                for pseudo in kinds(t):
                    label = f"repeat {r + 1}/{repeat} [bold]{t.name}[/]"
                    progress.update(task, description=label + (": boot" if pseudo else ": starting"))

                    def on_line(line: runs.ConsoleLine, label: str = label) -> None:
                        ev = line.event
                        if ev and ev.get("event") == "bench_start":
                            progress.update(task, description=f"{label}: {ev.get('test')}")

                    try:
                        b = runs.run_boot(t, r, kernels, workload, pseudo=pseudo, on_line=on_line)
                    except BenchError as e:
                        b = runs.BootResult(t.name, r, "", "setup_error", None, str(e), 0.0,
                                            [runs.error_record(t, r, x, str(e)) for x in
                                             (workload.pseudo if pseudo else workload.tests)])
                    boots.append(b)
                    records += b.records
                    ok = sum(1 for x in b.records if x["status"] == "ok")
                    colour = "green" if ok == len(b.records) else "yellow"
                    progress.console.print(f"  r{r + 1} {t.name:<14} {b.fate}"
                                           f"{'' if b.exit_status is None else f' {b.exit_status}'} "
                                           f"in {b.wall_s:.1f} s: [{colour}]{ok}/{len(b.records)} ok[/]")
                    progress.advance(task)
