"""The bench harness's own logic, without booting anything: pairing console lines into test
windows, the record fields derived from a window, medians/ratios, the site-cost pairs, the JSON
document against schema.json (with jsonschema), and the
tables, Markdown and chart produced from a document.

The VMM-side counters these records carry are checked against real boots in test_bench_vmm.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from vmirom.bench import clock, probe, report, runs, stats
from vmirom.bench.probe import ConsoleLine, Snapshot

SCHEMA = json.loads(report.SCHEMA_PATH.read_text())


def snap(wall: int, guest: int = 0, handler: int = 0, kinds: dict[str, int] | None = None) -> Snapshot:
    return Snapshot(wall, guest, handler, dict(kinds or {}), {f"{k}:x": v for k, v in (kinds or {}).items()})


def line(event: dict[str, Any] | None, start: Snapshot, end: Snapshot) -> ConsoleLine:
    text = "" if event is None else "VMIROM-JSON " + json.dumps(event)
    return ConsoleLine(text, start, end, event)


# -- windows ---------------------------------------------------------------------------------------
def test_window_runs_from_end_of_start_line_to_first_byte_of_result_line() -> None:
    lines = [
        line({"event": "bench_start", "test": "null_syscall"}, snap(100), snap(150, 40, 5, {"io": 2})),
        line(None, snap(160), snap(170)),                                         # a human line in between
        line({"event": "bench", "test": "null_syscall", "iterations": 10, "t0": 0, "t1": 1000, "unit": "ns"},
             snap(1150, 500, 300, {"io": 2, "softint": 13, "slice": 4}), snap(1400, 600, 350, {"io": 9})),
    ]
    windows, errors = probe.bench_windows(lines)
    assert errors == []
    (w,) = windows
    assert w.test == "null_syscall"
    assert w.delta.wall_ns == 1000 and w.delta.guest_ns == 460 and w.delta.handler_ns == 295
    assert w.delta.kinds == {"softint": 13, "slice": 4}         # zero differences are dropped
    assert w.delta.outside_share == pytest.approx(1 - 460 / 1000)


def test_unpaired_lines_and_errors() -> None:
    lines = [
        line({"event": "bench", "test": "orphan", "iterations": 1, "t0": 0, "t1": 1}, snap(0), snap(1)),
        line({"event": "bench_start", "test": "fork_exit"}, snap(2), snap(3)),
        line({"event": "bench_error", "test": "fork_exit", "error": "fork: out of memory"}, snap(4), snap(5)),
    ]
    windows, errors = probe.bench_windows(lines)
    assert windows == []
    assert errors == [{"event": "bench_error", "test": "fork_exit", "error": "fork: out of memory"}]


def test_console_sink_splits_lines_and_parses_events() -> None:
    seen: list[ConsoleLine] = []
    p = probe.Probe(seen.append)
    p.console_sink(b"hello\r\nVMIROM-JSON {\"event\":\"bench_start\",\"test\":\"cpu_loop\"}")
    p.console_sink(b"\nVMIROM-JSON {\"event\":\"bench\",\"test\":\"cpu_loop\",broken\n")
    assert [ln.text for ln in seen][0] == "hello"
    assert seen[1].event == {"event": "bench_start", "test": "cpu_loop"}
    assert seen[2].event is None                                    # garbled JSON: no event, no error
    assert all(ln.end.wall_ns >= ln.start.wall_ns for ln in seen)


# -- records ---------------------------------------------------------------------------------------
def _window_lines(test: str, n: int, wall: int, t0: int, t1: int, kinds: dict[str, int]) -> list[ConsoleLine]:
    return [line({"event": "bench_start", "test": test}, snap(0), snap(10)),
            line({"event": "bench", "test": test, "iterations": n, "t0": t0, "t1": t1, "unit": "ns"},
                 snap(10 + wall, wall // 2, wall // 4, kinds), snap(20 + wall))]


def test_vmm_record_uses_the_probe_clock_and_per_iteration_exits() -> None:
    t = runs.Target("vmi", "vmi", "vmi")
    lines = _window_lines("null_syscall", 100, 50_000, 1_000, 31_000, {"softint": 103, "hypercall": 210,
                                                                          "slice": 7, "delivery": 103})
    (rec,), msgs = runs.records_from_lines(t, 2, lines, ("null_syscall",))
    assert msgs == []
    assert rec["status"] == "ok" and rec["repeat"] == 2 and rec["iterations"] == 100
    assert rec["host_ns"] == 50_000 and rec["host_ns_per_iter"] == 500
    assert rec["guest_total"] == 30_000 and rec["guest_per_iter"] == 300
    assert rec["ns_per_iter"] == 500 and rec["time_source"] == "host"
    # "slice" and "delivery" are bookkeeping, not exits
    assert rec["exits"] == {"softint": 103, "hypercall": 210} and rec["slices"] == 7
    assert rec["exits_per_iter"] == {"softint": 1.03, "hypercall": 2.1}
    assert rec["exits_total_per_iter"] == pytest.approx(3.13)
    assert report.validate_record(rec) == []


def test_qemu_record_uses_the_guest_clock_and_has_no_exits() -> None:
    t = runs.Target("qemu", "qemu", "vmi")
    lines = _window_lines("fork_exit", 20, 5_000_000, 41_234_567, 43_234_567, {})
    (rec,), _ = runs.records_from_lines(t, 0, lines, ("fork_exit",), host_only=True)
    assert rec["ns_per_iter"] == 100_000 and rec["time_source"] == "guest" and rec["unmeasured"] == {}
    assert rec["exits"] is None and rec["exits_per_iter"] == {} and rec["outside_share"] is None


# -- figures the guest clock cannot give ------------------------------------------------------------
TICK = 10_000_000          # ns per tick at the guest's HZ=100


@pytest.mark.parametrize("t0, t1, unit, why", [
    (41_234_567, 41_600_000, "ns", None),                    # TSC-refined readings: fine-grained
    (39_999_999, 39_999_999, "ns", "did not advance"),       # both saturated in the same tick: "0 ns"
    (50_000_000, 50_000_000, "ns", "did not advance"),       # unrefined (no TSC rate yet)
    (40_000_003, 39_000_001, "ns", "did not advance"),       # went backwards
    (39_999_999, 60_123_456, "ns", "tick-grained"),          # saturated t0, 2 ticks: ±50 %
    (40_000_000, 70_000_000, "ns", "tick-grained"),          # tick-only readings, 3 ticks
    (39_999_999, 39_999_999 + 25 * TICK, "ns", None),        # a tick of uncertainty in 25: kept
    (1_000, 5_000_000, "tsc", "not ns"),                     # no SYS_clock: cycles, not time
])
def test_clock_check(t0: int, t1: int, unit: str, why: str | None) -> None:
    problem = clock.check(clock.Reading(t0, t1, unit), TICK)
    assert (problem is None) if why is None else (why in (problem or "")), problem


def test_tick_comes_from_the_bench_begin_line() -> None:
    assert clock.tick_ns(100) == TICK and clock.tick_ns(64) == 15_625_000
    assert clock.tick_ns(None) == clock.tick_ns(0) == clock.tick_ns("x") == TICK
    begin = line({"event": "bench_begin", "unit": "ns", "scale": 2, "hz": 64}, snap(0), snap(1))
    # 64 Hz: 39_999_999 is no saturated reading (that would be k * 15_625_000 - 1), 0.4 ms is a figure
    lines = [begin] + _window_lines("null_syscall", 200, 400_000, 39_999_999, 40_399_999, {})
    (rec,), _ = runs.records_from_lines(runs.Target("qemu", "qemu", "vmi"), 0, lines, ("null_syscall",),
                                        host_only=True)
    assert rec["ns_per_iter"] == 2_000 and rec["unmeasured"] == {}


def test_a_zero_guest_time_is_unmeasured_never_zero() -> None:
    """QEMU's null_syscall at --quick: both readings saturated in one tick, t1 == t0.  The record
    says so, and the figure stays out of the median, the ratios, the site cost and the geomean."""
    qemu, native = runs.Target("qemu", "qemu", "vmi"), runs.Target("qemu@native", "qemu", "native")
    zero = _window_lines("null_syscall", 200, 4_000_000, 39_999_999, 39_999_999, {})
    (rec,), msgs = runs.records_from_lines(qemu, 0, zero, ("null_syscall",), host_only=True)
    assert msgs == [] and rec["status"] == "ok" and rec["iterations"] == 200
    assert rec["ns_per_iter"] is None and rec["time_source"] is None and rec["guest_per_iter"] is None
    assert rec["guest_total"] == 0                              # the raw reading is kept ...
    assert "did not advance" in rec["unmeasured"]["ns_per_iter"]  # ... with the reason
    assert "did not advance" in rec["unmeasured"]["guest_per_iter"]
    assert report.validate_record(rec) == []
    # on the VMM the primary figure is the probe's host time: kept; only the guest figure goes
    vrec = runs.records_from_lines(runs.Target("bare", "bare", "vmi"), 0, zero, ("null_syscall",))[0][0]
    assert vrec["ns_per_iter"] == 20_000 and vrec["time_source"] == "host"
    assert vrec["guest_per_iter"] is None and set(vrec["unmeasured"]) == {"guest_per_iter"}

    def measured(target: runs.Target, test: str, ns_per_iter: int) -> dict[str, Any]:
        w = _window_lines(test, 200, 200 * ns_per_iter, 41_234_567, 41_234_567 + 200 * ns_per_iter, {})
        return runs.records_from_lines(target, 0, w, (test,), host_only=target.platform == "qemu")[0][0]

    bare = runs.Target("bare", "bare", "vmi")
    records = [vrec, rec, measured(native, "null_syscall", 1_800)]
    # the unmeasured repeat comes first: the row's time source is the measured repeat's
    records += [dict(rec, repeat=1), measured(native, "null_syscall", 1_800) | {"repeat": 1},
                measured(qemu, "null_syscall", 2_000) | {"repeat": 1}]
    records += [measured(t, "cpu_loop", ns) for t, ns in ((bare, 60), (qemu, 6), (native, 5))]
    d = make_doc(records)
    assert report.validate(d) == []
    rows = {(r["test"], r["target"]): r for r in d["summary"]}
    row = rows["null_syscall", "qemu"]
    assert row["ns_per_iter"] == 2_000 and row["time_source"] == "guest" and row["unmeasured"] is None
    assert row["n"] == 3 and row["n_unmeasured"] == 2         # the median of the one measured repeat
    d = make_doc([r for r in records if r["repeat"] == 0])
    rows = {(r["test"], r["target"]): r for r in d["summary"]}
    row = rows["null_syscall", "qemu"]
    assert row["ns_per_iter"] is None and row["ratio"] is None and row["guest_ratio"] is None
    assert row["n"] == 1 and row["n_unmeasured"] == 1 and "did not advance" in row["unmeasured"]
    assert rows["null_syscall", "bare"]["guest_ns_per_iter"] is None
    assert rows["null_syscall", "qemu@native"]["ratio"] == pytest.approx(1_800 / 20_000)
    site = {(r["test"], r["platform"]): r for r in d["site_cost"]}
    assert site["null_syscall", "qemu"]["ratio"] is None is site["null_syscall", "qemu"]["guest_ratio"]
    assert site["cpu_loop", "qemu"]["ratio"] == pytest.approx(6 / 5)
    md = report.markdown_table(d)
    assert f"| null_syscall | 20.0 µs<br>0.0 exits | {report.UNMEASURED} | 1.8 µsᵍ ×0.09 |" in md
    assert "| **geomean ratio** |  | ×0.10 (1/2) | ×0.09 |" in md      # qemu: over cpu_loop only
    assert not re.search(r"(?<![\d.])0 ns", md) and "×0.00" not in md
    (note,) = report.unmeasured_notes(d)
    assert note.startswith("qemu null_syscall: 1 repeat(s) unmeasured: the guest clock did not advance")
    # a zero slipping through would be caught by the schema
    bad = dict(rec, ns_per_iter=0.0, time_source="guest")
    assert any("ns_per_iter" in p for p in report.validate_record(bad))


def test_missing_and_failed_tests_become_error_records() -> None:
    t = runs.Target("bare", "bare", "vmi")
    err = {"event": "bench_error", "test": "fork_exec", "error": "exec true: ENOENT"}
    lines = [line(err, snap(0), snap(1))]
    recs, msgs = runs.records_from_lines(t, 0, lines, ("fork_exec",))
    assert msgs == ["fork_exec: exec true: ENOENT"]
    assert recs[0]["status"] == "error" and recs[0]["error"] == "exec true: ENOENT"
    assert recs[0]["ns_per_iter"] is None


def test_target_parsing() -> None:
    assert runs.Target.parse("bare@native") == runs.Target("bare@native", "bare", "native")
    assert runs.Target.parse("qemu") == runs.Target("qemu", "qemu", "vmi")
    icount = runs.Target.parse("qemu-icount@native")
    assert icount == runs.Target("qemu-icount@native", "qemu-icount", "native") and icount.counts_instructions
    assert not runs.Target.parse("qemu").counts_instructions
    with pytest.raises(runs.BenchError, match="no-such"):
        runs.Target.parse("no-such")


def test_workload_command_lines() -> None:
    w = runs.Workload(("null_syscall", "build"), ("idle",), scale=20, idle_ticks=7)
    assert w.bench_cmdline() == "init=bench,-s,20,null_syscall,build"
    assert runs.Workload(("cpu_loop",), iterations=5, scale=20).bench_cmdline() == "init=bench,-n,5,cpu_loop"
    assert w.idle_cmdline() == "exit_after=7"


# -- statistics ------------------------------------------------------------------------------------
def rec(target: str, test: str, repeat: int, ns: float | None, *, status: str = "ok",
        exits: dict[str, float] | None = None) -> dict[str, Any]:
    platform, _, native = target.partition("@")
    t = runs.Target(target, platform, "native" if native else "vmi")
    r = runs._record(t, repeat, test, 10, guest_total=None if ns is None else ns * 10, guest_unit="ns",
                     delta=None, host_ns=None if ns is None else int(ns * 10))
    r["status"] = status
    if exits is not None:
        r["exits_per_iter"] = exits
        r["exits_total_per_iter"] = sum(exits.values())
    return r


def test_summary_medians_and_ratios_to_bare() -> None:
    records = [rec("bare", "t", i, ns) for i, ns in enumerate((100, 300, 200))]
    records += [rec("vmi", "t", i, ns, exits={"hypercall": h}) for i, (ns, h) in
                enumerate(((500, 2.0), (700, 4.0), (600, 3.0)))]
    records += [rec("vmi", "t", 3, 1e9, status="error")]        # failed records do not count
    rows = {r["target"]: r for r in stats.summarize(records)}
    assert rows["bare"]["ns_per_iter"] == 200 and rows["bare"]["ratio"] == 1.0
    assert rows["vmi"]["n"] == 3 and rows["vmi"]["ns_per_iter"] == 600 and rows["vmi"]["ratio"] == 3.0
    assert rows["vmi"]["exits_per_iter"] == {"hypercall": 3.0} and rows["vmi"]["exits_total_per_iter"] == 3.0


def test_no_baseline_no_ratio_and_site_cost_pairs() -> None:
    records = [rec("vmi", "t", 0, 50), rec("qemu", "t", 0, 40), rec("qemu@native", "t", 0, 32)]
    rows = stats.summarize(records)
    assert all(r["ratio"] is None for r in rows)
    (sc,) = stats.site_cost(rows)
    assert sc["platform"] == "qemu" and sc["ratio"] == pytest.approx(1.25)


def test_helpers() -> None:
    assert stats.median([None, 3, 1, None, 2]) == 2 and stats.median([None]) is None
    assert stats.ratio(1, 0) is None and stats.ratio(None, 1) is None and stats.ratio(3, 2) == 1.5
    assert stats.ratio(0, 5) is None                         # a time of 0 is not a measurement
    assert stats.geomean([2, 8, None, 0]) == pytest.approx(4)
    assert stats.ordered("abacb") == ["a", "b", "c"]


# -- the document and its schema -------------------------------------------------------------------
def make_doc(records: list[dict[str, Any]]) -> dict[str, Any]:
    env = report.environment({"kernel": Path(__file__), "native_kernel": None})
    boots = [runs.BootResult("bare", 0, "init=bench", "exit", 0, "guest exited with status 0", 1.5,
                             handler_profile={"io": {"calls": 3, "ns": 30, "mean_ns": 10.0}}).as_json()]
    return report.document(command="vmirom bench --quick", config={"targets": ["bare"], "tests": ["t"],
                                                                    "repeat": 1}, env=env, boots=boots,
                           records=records)


@pytest.fixture
def doc() -> dict[str, Any]:
    records = [rec(tg, test, r, ns) for r in range(2) for tg, ns in
               (("bare", 100), ("vmi", 300), ("bare@native", 90), ("qemu", 10), ("qemu@native", 9))
               for test in ("null_syscall", "cpu_loop")]
    records.append(runs.error_record(runs.Target("fullvirt", "fullvirt", "vmi"), 0, "cpu_loop", "timeout"))
    return make_doc(records)


def test_document_is_valid_and_describes_its_environment(doc: dict[str, Any]) -> None:
    assert report.validate(doc) == []
    assert doc["schema"] == report.SCHEMA_ID == SCHEMA["properties"]["schema"]["enum"][0]
    assert doc["environment"]["engine"]["build"] in ("patched", "stock", "custom")
    assert doc["environment"]["files"]["kernel"]["sha256"] == report.sha256(Path(__file__))
    assert doc["environment"]["python"] and doc["environment"]["cpu"]
    assert {(r["test"], r["platform"]) for r in doc["site_cost"]} == {
        (t, p) for t in ("null_syscall", "cpu_loop") for p in ("bare", "qemu")}


@pytest.mark.parametrize("break_it, where", [
    (lambda d: d.pop("environment"), "environment"),
    (lambda d: d["records"][0].update(kernel="other"), "records/0/kernel"),
    (lambda d: d["records"][0].update(outside_share=1.5), "records/0/outside_share"),
    (lambda d: d["records"][0].pop("exits_per_iter"), "records/0"),
    (lambda d: d["records"][0].update(exits={"io": "3"}), "records/0/exits"),
    (lambda d: d["records"][0].update(surprise=1), "records/0"),
    (lambda d: d["config"].update(repeat=0), "config/repeat"),
    (lambda d: d.update(schema="vmirom-bench/0"), "schema"),
])
def test_schema_rejects_malformed_documents(doc: dict[str, Any], break_it: Any, where: str) -> None:
    break_it(doc)
    problems = report.validate(doc)
    assert problems and any(where.split("/")[0] in p for p in problems), problems


def test_the_validator_is_jsonschema(doc: dict[str, Any]) -> None:
    """No home-made validator beside jsonschema: report.validate IS a Draft 2020-12 validation."""
    import jsonschema

    assert not hasattr(report, "_validate")
    assert report.validate(json.loads(json.dumps(doc))) == []
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)


def test_schema_is_itself_valid_json_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


# -- tables, Markdown, chart -----------------------------------------------------------------------
def test_tables_markdown_and_chart(doc: dict[str, Any], tmp_path: Path) -> None:
    from rich.console import Console

    console = Console(record=True, width=200)
    for t in report.tables(doc):
        console.print(t)
    text = console.export_text()
    assert "×3.00" in text                               # vmi / bare
    assert "geomean ratio" in text and "failed" in text  # fullvirt's cpu_loop failed
    md = report.markdown_table(doc)
    assert md.splitlines()[0] == "| test | bare | vmi | bare@native | qemu | qemu@native | fullvirt |"
    assert "| null_syscall | 100 ns | 300 ns ×3.00 |" in md
    assert "| qemu | ×1.11 |" in report.markdown_site_cost(doc)
    png = report.plot(doc, tmp_path / "chart.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = report.plot(doc, tmp_path / "chart.svg")
    assert b"<svg" in svg.read_bytes()[:400]


def test_operations_table_folds_hypercalls_and_batched_entries() -> None:
    """The vmi -> vmi2 table: per iteration, operations that exited (vmi.operation_counts) plus the
    page-table entries vmi2 wrote in the guest (in_guest), and time relative to vmi."""
    def window(target: str, ns: int, detail: dict[str, int], in_guest: dict[str, int]) -> dict[str, Any]:
        kinds = {"hypercall": sum(detail.values()), "softint": 30}
        delta = probe.Delta(10 * ns, 0, 0, kinds, {f"hypercall:{k}": v for k, v in detail.items()}, in_guest)
        return runs._record(runs.Target(target, target, "vmi"), 0, "fork_exit", 10, guest_total=None,
                            guest_unit=None, delta=delta, host_ns=10 * ns)

    v1 = window("vmi", 2_000_000, {"SetPxE": 110, "AllocatePage": 30, "SetCR3": 30, "DisableInterrupts": 20,
                                   "EnableInterrupts": 5, "IRET": 52}, {})
    v2 = window("vmi2", 1_000_000, {"SetPxE": 20, "SetCR3": 30, "IRET": 53, "SetLazyMode": 10},
                {"pte_updates_batched": 90, "batch_flushes": 10})
    d = make_doc([v1, v2])
    assert report.validate(d) == []
    ops = report.operations_per_iter(d["records"], "vmi2", "fork_exit")
    assert ops["pte_writes"] == 2 and ops["pte_writes_in_guest"] == 9 and ops["cr3_loads"] == 3
    assert ops["interrupt_flag_changes"] == 0 and ops["hypercalls"] == pytest.approx(11.3)
    md = report.markdown_operations(d).splitlines()
    assert md[2] == "| fork_exit | vmi | 27.7 | 24.7 | 3.0 | 11.0 | 3.0 | 2.5 | 5.2 |  |"
    assert md[3] == "|  | vmi2 | 14.3 | 11.3 | 3.0 | 2.0 + 9.0 in guest | 0.0 | 0.0 | 5.3 | ×0.50 |"
    assert md[2] in report.markdown_all(d)


def test_time_split_of_a_window() -> None:
    """Window time = guest code + exit handlers + the rest, per iteration, from the probe's figures."""
    delta = probe.Delta(1_000_000, 600_000, 300_000, {"softint": 30}, {"softint:0x80": 30})
    r = runs._record(runs.Target("bare", "bare", "vmi"), 0, "null_syscall", 10, guest_total=None,
                     guest_unit=None, delta=delta, host_ns=1_000_000)
    d = make_doc([r])
    sp = report.time_split(d["records"], "bare", "null_syscall")
    assert sp == pytest.approx({"total": 100_000, "guest": 60_000, "handler": 30_000, "rest": 10_000,
                                "exits": 3.0, "per_exit": 10_000})
    assert "| null_syscall | bare | 100.0 µs | 60.0 µs | 30.0 µs | 10.0 µs | 3.0 | 10.0 µs |" in \
        report.markdown_split(d)


def test_handler_table_averages_benchmark_boots_only() -> None:
    boots = [{"target": "vmi", "cmdline": "init=bench,-n,10,null_syscall",
              "handler_profile": {"hypercall:IRET": {"calls": 1, "ns": 40_000, "mean_ns": 40_000.0},
                                  "hypercall:SetPxE": {"calls": 2, "ns": 20_000, "mean_ns": 10_000.0},
                                  "io": {"calls": 4, "ns": 20_000, "mean_ns": 5_000.0},
                                  "_total": {"wall_ns": 1, "handler_ns": 80_000, "exits": 7}}},
             {"target": "vmi", "cmdline": "exit_after=20",          # the pseudo-test boot: not counted
              "handler_profile": {"hypercall": {"calls": 1, "ns": 999_000, "mean_ns": 999_000.0}}}]
    md = report.markdown_handlers({"boots": boots}).splitlines()
    assert md[2] == "| vmi | - | - | 20.0 µs (75%) | - | - | 5.0 µs (25%) |"   # the calls summed
    per_call = report.markdown_hypercalls({"boots": boots}).splitlines()
    assert per_call[2:] == ["| IRET | 1, 40.0 µs | - |", "| SetPxE | 2, 10.0 µs | - |"]


def test_claim_ratios_are_geomeans_of_time_and_exit_ratios() -> None:
    records = [rec("vmi", t, 0, ns, exits={"hypercall": e}) for t, ns, e in
               (("fork_exit", 400, 40.0), ("page_fault", 100, 4.0), ("boot", 1000, 1000.0))]
    records += [rec("vmi2", t, 0, ns, exits={"hypercall": e}) for t, ns, e in
                (("fork_exit", 100, 10.0), ("page_fault", 100, 4.0), ("boot", 10, 10.0))]
    d = make_doc(records)
    t, e, n = report.claim_ratios(d, "vmi2", "vmi", report.KERNEL_HEAVY)
    assert (t, e, n) == (pytest.approx(0.5), pytest.approx(0.5), 2)     # boot is not kernel-heavy
    md = report.markdown_claims(d)
    assert "| claim 3: vmi2 / vmi, boot | ×0.01 | ×0.01 boot .. ×0.01 boot | ×0.01 | 1 |" in md
    heavy = "| claim 3: vmi2 / vmi, kernel-heavy | ×0.50 | ×0.25 fork_exit .. ×1.00 page_fault | ×0.50 | 2 |"
    assert heavy in md                                                   # the goal "on every test" reads here
    assert "fullvirt" not in md                                          # no such targets: no rows


def test_update_markdown_rewrites_only_the_generated_sections(doc: dict[str, Any]) -> None:
    text = ("# Perf\nprose stays\n<!-- bench:table -->\nold table\n<!-- /bench:table -->\n"
            "more prose\n<!-- bench:run -->\nold\n<!-- /bench:run -->\n"
            "<!-- bench:claims -->\n<!-- /bench:claims -->\n")                # empty: filled too
    new, names = report.update_markdown(text, doc)
    assert names == ["run", "table", "claims"]
    assert "| claim 3: vmi2 / vmi" not in new and "| comparison |" in new
    assert new.startswith("# Perf\nprose stays\n<!-- bench:table -->\n| test | bare | vmi |")
    assert "old table" not in new and "\nmore prose\n" in new and "vmirom bench --quick" in new
    assert report.update_markdown(new, doc)[0] == new                    # idempotent


def test_failure_notes_name_the_boot_and_the_tests_lost() -> None:
    t = runs.Target("bare", "bare", "vmi")
    records = [rec("bare", "null_syscall", 0, 100),
               runs.error_record(t, 0, "build", "link: I/O error")]
    d = make_doc(records)
    cmd = "init=bench,-n,10,null_syscall,build"
    d["boots"] = [runs.BootResult("bare", 0, cmd, "exit", 1, "guest exited with status 1", 1.0,
                                  errors=["build: link: I/O error"]).as_json(),
                  runs.BootResult("bare", 1, cmd, "exit", 0, "ok", 1.0).as_json()]
    assert report.failure_notes(d) == ["bare repeat 1: exit 1: guest exited with status 1 "
                                       "(build: link: I/O error); failed: build"]


def test_icount_targets_count_instructions_and_stay_out_of_the_time_table() -> None:
    """qemu-icount's figure is instructions per iteration: no ratio to bare's time, not in the
    time table, chart or geomeans; its own table and the site cost compare it with its native pair."""
    def counted(target: str, test: str, per_iter: int) -> dict[str, Any]:
        w = _window_lines(test, 100, 5_000_000, 41_234_567, 41_234_567 + 100 * per_iter, {})
        return runs.records_from_lines(runs.Target.parse(target), 0, w, (test,), host_only=True)[0][0]

    records = [rec("bare", "null_syscall", 0, 20_000), counted("qemu-icount", "null_syscall", 93),
               counted("qemu-icount@native", "null_syscall", 92)]
    assert records[1]["time_source"] == "icount" and records[1]["ns_per_iter"] == 93
    d = make_doc(records)
    assert report.validate(d) == []
    rows = {r["target"]: r for r in d["summary"]}
    assert rows["qemu-icount"]["ratio"] is None and rows["qemu-icount"]["ns_per_iter"] == 93
    assert "qemu-icount" not in report.markdown_table(d)
    assert report.markdown_instructions(d).splitlines()[2] == "| null_syscall | 93.0 | 92.0 | ×1.0109 |"
    (sc,) = [r for r in d["site_cost"] if r["platform"] == "qemu-icount"]
    assert sc["ratio"] == pytest.approx(93 / 92)
