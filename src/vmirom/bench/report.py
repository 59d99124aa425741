"""The outputs of a benchmark run: the JSON document (and its schema check), the table of medians
with ratios, and the overhead chart."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from vmirom.bench import stats
from vmirom.bench.runs import GUEST_TESTS

SCHEMA_PATH = Path(__file__).with_name("schema.json")
SCHEMA_ID = "vmirom-bench/4"
REPO = Path(__file__).resolve().parents[3]


def sha256(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cmd(args: list[str]) -> str | None:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(kernels: dict[str, Path | None]) -> dict[str, Any]:
    """Versions, CPU, commit and the sha256 of every guest file used: enough to tell two runs apart."""
    import os

    from vmirom import __version__

    qemu = None
    if shutil.which("qemu-system-i386"):
        q = _cmd(["qemu-system-i386", "--version"])
        qemu = q.splitlines()[0] if q else None
    dirty = _cmd(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "vmirom": __version__,
        "python": sys.version.split()[0],
        "unicorn": _version("unicorn"),
        "capstone": _version("capstone"),
        "qemu": qemu,
        "cpu": _cpu(),
        "cpus": os.cpu_count(),
        "os": platform.platform(),
        "commit": _cmd(["git", "rev-parse", "HEAD"]),
        "tree_dirty": bool(dirty),
        "files": {name: {"path": str(p) if p else None, "sha256": sha256(p)} for name, p in kernels.items()},
        "engine": _engine(),
    }


def _engine() -> dict[str, Any]:
    from vmirom.engines.libunicorn import describe

    return describe().as_json()


def document(*, command: str, config: dict[str, Any], env: dict[str, Any], boots: list[dict[str, Any]],
             records: list[dict[str, Any]]) -> dict[str, Any]:
    summary = stats.summarize(records)
    return {
        "schema": SCHEMA_ID,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "config": config,
        "environment": env,
        "boots": boots,
        "records": records,
        "summary": summary,
        "site_cost": stats.site_cost(summary),
    }


# -- schema validation ---------------------------------------------------------------------------------
def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def _errors(value: Any, schema: dict[str, Any]) -> list[str]:
    import jsonschema

    v = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '$'}: {e.message}" for e in v.iter_errors(value)]


def validate(doc: Any) -> list[str]:
    """Problems of `doc` against schema.json ([] = valid), by `jsonschema` (Draft 2020-12)."""
    return _errors(doc, load_schema())


def validate_record(record: Any) -> list[str]:
    """Problems of one record against the schema's record definition ([] = valid)."""
    schema = load_schema()
    return _errors(record, {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/record"})


# -- the table -----------------------------------------------------------------------------------------
def fmt_time(ns: float | None) -> str:
    if ns is None:
        return "-"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.0f} ns"


def fmt_ratio(r: float | None, digits: int = 2) -> str:
    return "-" if r is None else f"×{r:.{digits}f}"


def fmt_count(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def instructions_rows(doc: dict[str, Any]) -> list[tuple[str, float | None, float | None, float | None]]:
    """(test, instructions per iteration with call sites, without, ratio) from qemu-icount and
    qemu-icount@native: the call sites' cost in instructions when no ROM is present."""
    by = {(r["test"], r["target"]): r for r in doc["summary"]}
    out = []
    for test in stats.ordered(r["test"] for r in doc["summary"]):
        a, b = by.get((test, "qemu-icount")), by.get((test, "qemu-icount@native"))
        if a is None and b is None:
            continue
        va = a["ns_per_iter"] if a else None
        vb = b["ns_per_iter"] if b else None
        out.append((test, va, vb, stats.ratio(va, vb)))
    return out


def markdown_instructions(doc: dict[str, Any]) -> str:
    rows = ["| test | instructions / iteration, kernel with sites | native build | ratio |",
            "|---|---|---|---|"]
    for test, a, b, q in instructions_rows(doc):
        rows.append(f"| {test} | {fmt_count(a)} | {fmt_count(b)} | {fmt_ratio(q, 4)} |")
    return "\n".join(rows)


def _axes(doc: dict[str, Any], timed: bool = False) -> tuple[list[str], list[str]]:
    """Tests and targets in run order, from the records (so a target whose every run failed shows);
    `timed`: only targets whose figures are times (not qemu-icount's instruction counts)."""
    rows = doc["records"] or doc["summary"]
    targets = stats.ordered(r["target"] for r in rows)
    if timed:
        counting = {r["target"] for r in rows if r.get("platform") == "qemu-icount"
                    or r.get("time_source") == "icount"}
        targets = [t for t in targets if t not in counting]
    return stats.ordered(r["test"] for r in rows), targets


#: what a cell shows for a test that ran but whose time could not be measured (summary `unmeasured`)
UNMEASURED = "<res"


def _cell(r: dict[str, Any] | None, baseline: bool) -> str:
    if r is None:
        return "failed"
    if r["ns_per_iter"] is None and r.get("unmeasured"):
        return UNMEASURED
    mark = "ᵍ" if r.get("time_source") == "guest" else ""
    return f"{fmt_time(r['ns_per_iter'])}{mark}" + ("" if baseline else f" {fmt_ratio(r['ratio'])}")


def _geomean_cell(by: dict[tuple[str, str], dict[str, Any]], tests: list[str], target: str) -> str:
    """Geomean of a target's ratios; says over how many tests when some have no ratio (failed or
    unmeasured there, or at the baseline), since such a geomean covers a different set of tests."""
    if target == stats.BASELINE:
        return ""
    ratios = [by[t, target]["ratio"] for t in tests if (t, target) in by]
    have = [v for v in ratios if v is not None]
    g = fmt_ratio(stats.geomean(have))
    return g if len(have) == len(tests) or not have else f"{g} ({len(have)}/{len(tests)})"


def unmeasured_notes(doc: dict[str, Any]) -> list[str]:
    """One line per summary row with records whose time could not be measured, with the reason."""
    out = []
    by_row: dict[tuple[str, str], list[str]] = {}
    for r in doc["records"]:
        if r.get("status") == "ok" and r.get("ns_per_iter") is None and (r.get("unmeasured") or {}):
            why = r["unmeasured"].get("ns_per_iter") or next(iter(r["unmeasured"].values()))
            by_row.setdefault((r["target"], r["test"]), []).append(why)
    for (target, test), whys in by_row.items():
        out.append(f"{target} {test}: {len(whys)} repeat(s) unmeasured: {whys[0]}")
    return out


def _kinds(r: dict[str, Any]) -> str:
    """Exits per iteration by kind, largest first ("3.0 softint, 1.0 hypercall")."""
    ks = sorted(((v, k) for k, v in (r.get("exits_per_iter") or {}).items() if v and v >= 0.05),
                reverse=True)
    return ", ".join(f"{v:.1f} {k}" for v, k in ks[:3]) + (" …" if len(ks) > 3 else "")


def clock_text(doc: dict[str, Any]) -> str:
    """Which guest clock the VMM targets ran with (older documents: the CPU-time clock)."""
    if doc.get("config", {}).get("clock") == "deterministic":
        return "VMM clock: deterministic (guest time = instructions retired, --deterministic)"
    return "VMM clock: cpu-time (guest time = vCPU thread CPU time; exit counts vary run to run)"


def tables(doc: dict[str, Any]) -> list[Any]:
    """rich Tables: per-test medians with ratios to bare, host-side figures, site cost."""
    from rich.table import Table

    summary = doc["summary"]
    tests, targets = _axes(doc, timed=True)
    by = {(r["test"], r["target"]): r for r in summary}
    n = max((r["n"] for r in summary), default=0)

    t1 = Table(title=f"Time per iteration (median of {n} repeat{'s' if n != 1 else ''}) and ratio to bare")
    t1.add_column("test", no_wrap=True)  # "geomean ratio" stays one line however many targets
    for tg in targets:
        t1.add_column(tg, justify="right")
    for test in tests:
        t1.add_row(test, *[_cell(by.get((test, tg)), tg == stats.BASELINE) for tg in targets])
    t1.add_row("geomean ratio", *[_geomean_cell(by, tests, tg) for tg in targets], style="bold")
    t1.caption = ("VMM targets: host time of the test window (probe); ᵍ = the guest's own clock "
                  f"(QEMU, whose console reaches the host buffered); {UNMEASURED} = ran, but too short "
                  f"for the clock (no figure, no ratio); {clock_text(doc)}")

    t2 = Table(title="VMM: guest clock per iteration, exits per iteration (top kinds), "
                     "share of wall time outside the guest")
    t2.add_column("test")
    vmm = [tg for tg in targets if any(by.get((t, tg), {}).get("exits_total_per_iter") is not None
                                       for t in tests)]
    for tg in vmm:
        t2.add_column(tg, justify="right")
    for test in tests:
        row = [test]
        for tg in vmm:
            r = by.get((test, tg))
            if r is None:
                row.append("failed")
                continue
            ex, share = r["exits_total_per_iter"], r["outside_share"]
            guest = r["guest_ns_per_iter"]
            row.append(f"guest {UNMEASURED if guest is None else fmt_time(guest)}"
                       + (f"\n{ex:.1f} exits" if ex is not None else "")
                       + (f", {share:.0%} out" if share is not None else "")
                       + (f"\n{_kinds(r)}" if r.get("exits_per_iter") else ""))
        t2.add_row(*row)
    out = [t1, t2] if vmm else [t1]
    counted = instructions_rows(doc)
    if counted:
        t4 = Table(title="Guest instructions per iteration (qemu-icount: deterministic)")
        for c in ("test", "kernel with sites", "native build", "ratio"):
            t4.add_column(c, justify="left" if c == "test" else "right")
        for test, a, b, q in counted:
            t4.add_row(test, fmt_count(a), fmt_count(b), fmt_ratio(q, 4))
        out.append(t4)
    if doc.get("site_cost"):
        t3 = Table(title="Cost of the VMI call sites with no ROM: kernel with sites / native build")
        for c in ("test", "platform", "ratio", "guest clock", "host clock"):
            t3.add_column(c, justify="left" if c in ("test", "platform") else "right")
        for r in doc["site_cost"]:
            t3.add_row(r["test"], r["platform"], fmt_ratio(r.get("ratio")), fmt_ratio(r["guest_ratio"]),
                       fmt_ratio(r["host_ratio"]))
        out.append(t3)
    return out


def markdown_table(doc: dict[str, Any]) -> str:
    """The main table as Markdown (for docs/performance.md): primary time, ratio to bare, exits."""
    summary = doc["summary"]
    tests, targets = _axes(doc, timed=True)
    by = {(r["test"], r["target"]): r for r in summary}
    lines = ["| test | " + " | ".join(targets) + " |", "|---" * (len(targets) + 1) + "|"]
    for test in tests:
        cells = []
        for tg in targets:
            r = by.get((test, tg))
            ex = None if r is None else r["exits_total_per_iter"]
            cells.append(_cell(r, tg == stats.BASELINE) + (f"<br>{ex:.1f} exits" if ex is not None else ""))
        lines.append(f"| {test} | " + " | ".join(cells) + " |")
    geo = [_geomean_cell(by, tests, tg) for tg in targets]
    lines.append("| **geomean ratio** | " + " | ".join(geo) + " |")
    return "\n".join(lines)


def markdown_site_cost(doc: dict[str, Any]) -> str:
    rows = ["| test | platform | ratio | guest clock | host clock |", "|---|---|---|---|---|"]
    for r in doc.get("site_cost", []):
        rows.append(f"| {r['test']} | {r['platform']} | {fmt_ratio(r.get('ratio'))} | "
                    f"{fmt_ratio(r['guest_ratio'])} | {fmt_ratio(r['host_ratio'])} |")
    return "\n".join(rows)


def markdown_exits(doc: dict[str, Any]) -> str:
    """Per VMM target and test: exits per iteration by kind and the share of time outside the guest."""
    rows = ["| test | target | exits/iter | by kind | outside guest |", "|---|---|---|---|---|"]
    for r in doc["summary"]:
        if r["exits_total_per_iter"] is None:
            continue
        share = r["outside_share"]
        rows.append(f"| {r['test']} | {r['target']} | {r['exits_total_per_iter']:.1f} | {_kinds(r)} | "
                    + ("-" if share is None else f"{share:.0%}") + " |")
    return "\n".join(rows)


#: the VMI operations shown per test for the vmi family (vmirom.hypervisors.vmi.OPERATION_GROUPS)
OPERATIONS = (("cr3_loads", "CR3 loads"), ("pte_writes", "PTE writes"),
              ("page_table_allocations", "page-table allocations"),
              ("interrupt_flag_changes", "IF changes"), ("irets", "IRETs"))


def operations_per_iter(records: list[dict[str, Any]], target: str, test: str) -> dict[str, float | None]:
    """Median per iteration over the repeats of `target`'s VMI operations that exited (hypercalls,
    grouped by vmi.operation_counts), plus `pte_writes_in_guest` (vmi2's batched entries), the
    hypercall total and the exit total."""
    from vmirom.hypervisors.vmi import operation_counts

    rows = []
    for r in records:
        if r["target"] != target or r["test"] != test or r.get("status") != "ok" or r["exits_detail"] is None:
            continue
        it = max(1, r["iterations"])
        ops = {k: v / it for k, v in operation_counts(r["exits_detail"]).items()}
        ops["pte_writes_in_guest"] = (r.get("in_guest") or {}).get("pte_updates_batched", 0) / it
        ops["hypercalls"] = (r["exits"] or {}).get("hypercall", 0) / it
        ops["exits"] = r["exits_total_per_iter"]
        rows.append(ops)
    keys = stats.ordered(k for row in rows for k in row)
    return {k: stats.median(row.get(k, 0.0) for row in rows) for k in keys}


def markdown_operations(doc: dict[str, Any], targets: tuple[str, ...] = ("vmi", "vmi2")) -> str:
    """Per test, for each target of the vmi family: exits and the VMI operations behind them, per
    iteration, and time relative to the first target (same kernel binary, newer ROM)."""
    by = {(r["test"], r["target"]): r for r in doc["summary"]}
    tests = [t for t in _axes(doc)[0] if all((t, tg) in by for tg in targets)]
    head = ["test", "target", "exits", "hypercalls", *(label for _, label in OPERATIONS),
            f"time vs {targets[0]}"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}" if v < 100 else f"{v:.0f}"

    for test in tests:
        first = by[test, targets[0]]
        for tg in targets:
            ops = operations_per_iter(doc["records"], tg, test)
            cells = [test if tg == targets[0] else "", tg, num(ops.get("exits")), num(ops.get("hypercalls"))]
            for key, _ in OPERATIONS:
                v = num(ops.get(key))
                if key == "pte_writes" and ops.get("pte_writes_in_guest"):
                    v += f" + {num(ops['pte_writes_in_guest'])} in guest"
                cells.append(v)
            rel = stats.ratio(by[test, tg]["ns_per_iter"], first["ns_per_iter"])
            cells.append("" if tg == targets[0] else fmt_ratio(rel))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def time_split(records: list[dict[str, Any]], target: str, test: str) -> dict[str, float | None]:
    """Medians per iteration of where a VMM target's window time went: running guest code (inside
    Unicorn, translation included), in Python exit handlers, and the rest (run loop, timers,
    slice ends); with the exits and the handler time per exit."""
    rows = []
    for r in records:
        if (r["target"] != target or r["test"] != test or r.get("status") != "ok"
                or r.get("host_ns_per_iter") is None or r.get("outside_share") is None
                or r.get("handler_ns_per_iter") is None):
            continue
        total, handler = r["host_ns_per_iter"], r["handler_ns_per_iter"]
        guest = total * (1 - r["outside_share"])
        exits = r["exits_total_per_iter"] or 0.0
        rows.append({"total": total, "guest": guest, "handler": handler,
                     "rest": max(0.0, total - guest - handler), "exits": exits,
                     "per_exit": handler / exits if exits else None})
    keys = ("total", "guest", "handler", "rest", "exits", "per_exit")
    return {k: stats.median(row[k] for row in rows) for k in keys}


def markdown_split(doc: dict[str, Any], tests: tuple[str, ...] = ("null_syscall", "pipe_latency", "fork_exit",
                                                                 "fork_exec", "page_fault", "build"),
                   targets: tuple[str, ...] = ("bare", "fullvirt", "vmi", "vmi2", "hwassist")) -> str:
    """Per test and VMM target: time per iteration split into guest code / exit handlers / the rest."""
    present = {(r["test"], r["target"]) for r in doc["summary"]}
    lines = ["| test | target | time | in guest code | in exit handlers | rest | exits "
             "| handler time per exit |", "|---|---|---|---|---|---|---|---|"]
    for test in tests:
        first = True
        for tg in targets:
            if (test, tg) not in present:
                continue
            sp = time_split(doc["records"], tg, test)
            if sp["total"] is None:
                continue
            ex = sp["exits"]
            lines.append(f"| {test if first else ''} | {tg} | {fmt_time(sp['total'])} | "
                         f"{fmt_time(sp['guest'])} | {fmt_time(sp['handler'])} | {fmt_time(sp['rest'])} | "
                         f"{'-' if ex is None else f'{ex:.1f}'} | {fmt_time(sp['per_exit'])} |")
            first = False
    return "\n".join(lines)


#: exit hooks of the probe's handler profile, as the docs name them
HOOKS = (("int:0x80", "int $0x80 delivery"), ("int:0xe", "#PF delivery"), ("hypercall", "hypercall"),
         ("int:0xd", "#GP (trap-and-emulate)"), ("code_hook", "site hook (popf, iret)"), ("io", "port I/O"))


#: the compiled engine core's timing keys -> the Python hook they stand in for (the core's phase
#: breakdown and its look before handing an exit to Python are not exits of their own)
_CORE_HOOKS = {"core:softint": "int:0x80", "core:page_fault": "int:0xe", "core:io": "io"}


def _hook_key(key: str) -> str | None:
    """The exit hook a handler-profile key belongs to: exits completed in C count with the same
    exits on the Python path, so a target's mean per exit covers both paths."""
    if key.startswith("core:hypercall:"):
        return key[len("core:"):]
    if key.startswith("core:"):
        return _CORE_HOOKS.get(key)
    return None if key.startswith("_") else key


def markdown_handlers(doc: dict[str, Any]) -> str:
    """Per VMM target, over its benchmark boots (not the pseudo-test boots): mean host time per call
    of each exit hook (exits the compiled core completed included), and its share of all handler
    time."""
    acc: dict[str, dict[str, list[float]]] = {}
    for b in doc["boots"]:
        prof = b.get("handler_profile") or {}
        if not prof or "exit_after" in b.get("cmdline", ""):
            continue
        t = acc.setdefault(b["target"], {})
        for key, v in prof.items():
            hook = _hook_key(key)
            if hook is None:
                continue
            row = t.setdefault(hook.split(":")[0] if hook.startswith("hypercall") else hook, [0.0, 0.0])
            row[0] += v["calls"]
            row[1] += v["ns"]
    lines = ["| target | " + " | ".join(label for _, label in HOOKS) + " |", "|---" * (len(HOOKS) + 1) + "|"]
    for target, hooks in acc.items():
        spent = sum(ns for _, ns in hooks.values()) or 1.0
        cells = []
        for key, _ in HOOKS:
            calls, ns = hooks.get(key, (0.0, 0.0))
            cells.append("-" if not calls else f"{fmt_time(ns / calls)} ({ns / spent:.0%})")
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_hypercalls(doc: dict[str, Any], targets: tuple[str, ...] = ("vmi", "vmi2"),
                        top: int = 12) -> str:
    """Per VMI call, over the benchmark boots: calls and mean host time per call on each target
    (the probe's per-call handler profile), most handler time first."""
    acc: dict[str, dict[str, list[float]]] = {tg: {} for tg in targets}
    for b in doc["boots"]:
        if b["target"] not in acc or "exit_after" in b.get("cmdline", ""):
            continue
        for key, v in (b.get("handler_profile") or {}).items():
            hook = _hook_key(key)
            if hook is not None and hook.startswith("hypercall:"):
                row = acc[b["target"]].setdefault(hook.split(":", 1)[1], [0.0, 0.0])
                row[0] += v["calls"]
                row[1] += v["ns"]
    names = sorted({n for t in acc.values() for n in t},
                   key=lambda n: -max(t.get(n, (0, 0))[1] for t in acc.values()))
    lines = ["| call | " + " | ".join(f"{tg}: calls, mean" for tg in targets) + " |",
             "|---" * (len(targets) + 1) + "|"]
    for n in names[:top]:
        cells = []
        for tg in targets:
            calls, ns = acc[tg].get(n, (0.0, 0.0))
            cells.append("-" if not calls else f"{int(calls)}, {fmt_time(ns / calls)}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: DESIGN's "kernel-heavy work (fork, exec, context switch, page faults)" among the guest tests
KERNEL_HEAVY = ("pipe_latency", "fork_exit", "fork_exec", "page_fault", "prot_fault", "mmap_munmap", "build")
#: the tests the shadow-MMU goals name
SHADOW_TESTS = ("fork_exit", "fork_exec", "page_fault", "prot_fault", "mmap_munmap")
#: (label, numerator target, denominator target, tests or None = all): the comparisons DESIGN's
#: claims 3 and 5 are about
CLAIMS = (
    ("claim 3: vmi2 / vmi (same kernel, newer ROM)", "vmi2", "vmi", None),
    ("claim 3: vmi2 / vmi, kernel-heavy", "vmi2", "vmi", KERNEL_HEAVY),
    ("claim 3: vmi2 / vmi, boot", "vmi2", "vmi", ("boot",)),
    ("claim 5: vmi / fullvirt, kernel-heavy", "vmi", "fullvirt", KERNEL_HEAVY),
    ("claim 5: vmi2 / fullvirt, kernel-heavy", "vmi2", "fullvirt", KERNEL_HEAVY),
    ("claim 5: hwassist / fullvirt, kernel-heavy", "hwassist", "fullvirt", KERNEL_HEAVY),
    ("claim 5: sites, no ROM: bare / bare@native", "bare", "bare@native", None),
    ("claim 5: sites, no ROM: qemu / qemu@native", "qemu", "qemu@native", None),
    ("claim 5: sites, no ROM: qemu / qemu@native, kernel-heavy", "qemu", "qemu@native", KERNEL_HEAVY),
    ("claim 5: sites, no ROM: instructions, qemu-icount / @native", "qemu-icount", "qemu-icount@native",
     None),
    # the engine issue's goals: our engine against QEMU TCG, and each target after/before (`+stock+py`:
    # the stock Unicorn wheel and the Python exit path, i.e. the engine as it was)
    ("engine: bare / qemu, guest tests (goal <= 1.5)", "bare", "qemu", GUEST_TESTS),
    *((f"engine: {n} / {n}+stock+py (after / before)", n, f"{n}+stock+py", None)
      for n in ("bare", "vmi", "vmi2", "fullvirt", "hwassist")),
    # the shadow-MMU issue's goals (fork_exit .. mmap_munmap: the tests the goals name)
    ("shadow: fullvirt / vmi, fork..mmap (goal >= 3)", "fullvirt", "vmi", SHADOW_TESTS),
    ("shadow: vmi2 / vmi, fork..mmap (goal < 1)", "vmi2", "vmi", SHADOW_TESTS),
    ("shadow: vmi2 / bare, guest tests (goal <= 1.5 each)", "vmi2", "bare", GUEST_TESTS),
)


def claim_ratios(doc: dict[str, Any], num: str, den: str, tests: tuple[str, ...] | None
                 ) -> tuple[float | None, float | None, int]:
    """Geomeans over `tests` of num/den for the primary time and for exits per iteration, and how
    many tests have a time ratio (both measured)."""
    times, exits = _claim_per_test(doc, num, den, tests)
    measured = list(times.values())
    return stats.geomean(measured), stats.geomean(exits), sum(1 for v in measured if v is not None)


def _claim_per_test(doc: dict[str, Any], num: str, den: str, tests: tuple[str, ...] | None
                    ) -> tuple[dict[str, float | None], list[float | None]]:
    """Per test of `tests` measured on both targets: the time ratio num/den (by test), and the exit
    ratios."""
    by = {(r["test"], r["target"]): r for r in doc["summary"]}
    names = [t for t in (tests or _axes(doc)[0]) if (t, num) in by and (t, den) in by]
    times = {t: stats.ratio(by[t, num]["ns_per_iter"], by[t, den]["ns_per_iter"]) for t in names}
    exits = [stats.ratio(by[t, num]["exits_total_per_iter"], by[t, den]["exits_total_per_iter"])
             for t in names]
    return times, exits


def markdown_claims(doc: dict[str, Any]) -> str:
    """The headline ratios for DESIGN's claims 3 and 5 (below 1: the first target is faster)."""
    lines = ["| comparison | time (geomean) | time per test (lowest .. highest) | exits (geomean) | tests |",
             "|---|---|---|---|---|"]
    for label, num, den, tests in CLAIMS:
        t, e, n = claim_ratios(doc, num, den, tests)
        if n:
            digits = 4 if num == "qemu-icount" else 2      # deterministic: the digits mean something
            lines.append(f"| {label} | {fmt_ratio(t, digits)} | {_extremes(doc, num, den, tests, digits)} "
                         f"| {fmt_ratio(e)} | {n} |")
    return "\n".join(lines)


def _extremes(doc: dict[str, Any], num: str, den: str, tests: tuple[str, ...] | None, digits: int) -> str:
    """The lowest and highest per-test time ratio, each with its test: a goal that must hold on
    *every* test (e.g. "vmi2 within 1.5x of bare") is read here, not from the geomean."""
    measured = {t: v for t, v in _claim_per_test(doc, num, den, tests)[0].items() if v is not None}
    if not measured:
        return "-"
    lo, hi = min(measured, key=measured.get), max(measured, key=measured.get)
    return f"{fmt_ratio(measured[lo], digits)} {lo} .. {fmt_ratio(measured[hi], digits)} {hi}"


def markdown_all(doc: dict[str, Any]) -> str:
    """Every Markdown table docs/performance.md shows, from one document."""
    env = doc["environment"]
    out = [f"<!-- {doc['command']} | commit {env.get('commit')} dirty={env.get('tree_dirty')} -->",
           markdown_table(doc), "", markdown_claims(doc), "", markdown_site_cost(doc), "",
           markdown_instructions(doc), "",
           markdown_exits(doc), "", markdown_operations(doc), "", markdown_split(doc), "",
           markdown_handlers(doc), "", markdown_hypercalls(doc)]
    notes = unmeasured_notes(doc)
    if notes:
        out += ["", *[f"* unmeasured: {n}" for n in notes]]
    return "\n".join(out)


# -- the chart ------------------------------------------------------------------------------------------
def _plain_target(target: str) -> str:
    """The target without engine modifiers: `vmi+stock+py` -> `vmi`, `bare+stock@native` ->
    `bare@native`."""
    name, at, native = target.partition("@")
    return name.split("+")[0] + at + native


def plot(doc: dict[str, Any], path: Path) -> Path:
    """Grouped bars: per test, each target's time per iteration relative to bare (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = doc["summary"]
    tests = stats.ordered(r["test"] for r in summary)
    targets = [t for t in _axes(doc, timed=True)[1] if t != stats.BASELINE]
    by = {(r["test"], r["target"]): r for r in summary}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(tests) + 2), 4.5))
    width = 0.8 / max(1, len(targets))
    # one colour per platform; a target with engine modifiers (`vmi+stock+py`) takes its platform's
    # colour, paler and hatched, so "before" stands next to "after" in the same hue
    palette = plt.get_cmap("tab10").colors
    plain = list(dict.fromkeys(_plain_target(t) for t in targets))
    for i, tg in enumerate(targets):
        colour = palette[plain.index(_plain_target(tg)) % len(palette)]
        modified = _plain_target(tg) != tg
        xs, ys = [], []
        for j, test in enumerate(tests):
            r = by.get((test, tg))
            v = None if r is None else r["ratio"]
            if v is not None:
                xs.append(j + (i - (len(targets) - 1) / 2) * width)
                ys.append(v)
        ax.bar(xs, ys, width=width, label=tg, color=colour, alpha=0.5 if modified else 1.0,
               hatch="//" if modified else None, edgecolor="black" if modified else None, linewidth=0)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(tests)))
    ax.set_xticklabels(tests, rotation=30, ha="right")
    ax.set_ylabel("time per iteration / bare (log)")
    ax.set_title("vmirom bench: overhead relative to bare")
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))  # beside, not over the bars
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_line(doc: dict[str, Any]) -> str:
    """One line naming the run: date, commit, tree state, versions, guest files."""
    env, files = doc["environment"], doc["environment"].get("files", {})

    def sha(name: str) -> str:
        h = (files.get(name) or {}).get("sha256")
        return f"`{h[:16]}…`" if h else "-"

    ok = sum(1 for r in doc["records"] if r.get("status") == "ok")
    fates = sorted({b["fate"] for b in doc["boots"]})
    return (f"Run of {doc['created']} on {env.get('cpu')} ({env.get('cpus')} CPUs, shared), commit "
            f"`{(env.get('commit') or '?')[:12]}`{' (tree dirty)' if env.get('tree_dirty') else ''}, "
            f"Python {env.get('python')}, Unicorn {env.get('unicorn')}, {env.get('qemu') or 'no QEMU'}; "
            f"kernel {sha('kernel')}, native kernel {sha('native_kernel')}, initrd {sha('initrd')}. "
            f"{len(doc['boots'])} boots (fates: {', '.join(fates)}), "
            f"{ok} of {len(doc['records'])} records ok.")


def failure_notes(doc: dict[str, Any]) -> list[str]:
    """One line per boot that did not end with a clean exit, with what it cost (records lost)."""
    out = []
    for b in doc["boots"]:
        if b["fate"] == "exit" and not b["exit_status"]:
            continue
        lost = [r["test"] for r in doc["records"] if r["target"] == b["target"] and r["repeat"] == b["repeat"]
                and r["status"] != "ok" and r["test"] in b.get("cmdline", "")]
        errs = "; ".join(b.get("errors") or [])
        out.append(f"{b['target']} repeat {b['repeat'] + 1}: {b['fate']}"
                   + (f" {b['exit_status']}" if b["exit_status"] is not None else "")
                   + f": {b['message']}" + (f" ({errs})" if errs else "")
                   + (f"; failed: {', '.join(lost)}" if lost else ""))
    return out


#: generated sections of docs/performance.md: <!-- bench:NAME --> ... <!-- /bench:NAME -->
SECTIONS: dict[str, Any] = {
    "run": lambda d: run_line(d) + f"\n\n```\n{d['command']}\n```",
    "table": markdown_table, "claims": markdown_claims, "site_cost": markdown_site_cost,
    "instructions": markdown_instructions,
    "exits": markdown_exits, "operations": markdown_operations, "split": markdown_split,
    "handlers": markdown_handlers, "hypercalls": markdown_hypercalls,
    "unmeasured": lambda d: "\n".join(f"* {n}" for n in unmeasured_notes(d)) or "(none)",
    "failures": lambda d: "\n".join(f"* {n}" for n in failure_notes(d)) or "(none)",
}


def update_markdown(text: str, doc: dict[str, Any]) -> tuple[str, list[str]]:
    """Replace every generated section of `text` with the tables of `doc`; returns (text, the
    names replaced).  Prose outside the markers is left alone."""
    import re

    done = []
    for name, fn in SECTIONS.items():
        pat = re.compile(rf"(<!-- bench:{name} -->\n)(?:.*?\n)?(<!-- /bench:{name} -->)", re.S)
        if pat.search(text):
            body = fn(doc)
            text = pat.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
            done.append(name)
    return text, done


if __name__ == "__main__":  # the old spelling of `vmirom bench report`
    from vmirom.bench.cli import report_cmd

    report_cmd(prog_name="python -m vmirom.bench.report")
