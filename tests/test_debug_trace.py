"""`vmirom run --trace FILE`: a Chrome trace-event JSON file that a JSON reader accepts, with one
event per exit (the same exits the counters saw) and the known workload's exits in it: `bench -n N
null_syscall` makes exactly N more `int $0x80` exits for N more getpid() calls."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

CLI = "import sys; from vmirom.cli import main; sys.argv[0] = 'vmirom'; main()"


@pytest.fixture(scope="module")
def kernel(unix_kernel: Path) -> Path:
    return unix_kernel


def traced_run(kernel: Path, tmp: Path, n: int, *extra: str) -> tuple[dict, dict]:
    trace, result = tmp / f"trace{n}.json", tmp / f"run{n}.json"
    p = subprocess.run(
        [sys.executable, "-c", CLI, "run", "-q", "-H", "vmi", "--trace", str(trace), "--json", str(result),
         *extra, "--cmdline", f"init=bench,-n,{n},null_syscall", str(kernel)],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return json.loads(trace.read_text()), json.loads(result.read_text())


def key_counts(doc: dict) -> Counter:
    """Every counter key of every exit event (an exit may touch several: its first names it)."""
    exits = [e for e in doc["traceEvents"] if e.get("tid") == 2 and e["ph"] != "M"]
    c: Counter = Counter()
    for ev in exits:
        c.update(ev["args"].get("keys") or [ev["name"]])
    return c


def test_trace_has_every_exit_and_the_workloads_syscalls(kernel: Path, tmp_path: Path) -> None:
    small, res_small = traced_run(kernel, tmp_path, 100)
    big, res_big = traced_run(kernel, tmp_path, 600)
    for doc, res in ((small, res_small), (big, res_big)):
        events = doc["traceEvents"]
        exits = [e for e in events if e.get("tid") == 2 and e["ph"] != "M"]  # M: the track's name
        assert {e["ph"] for e in exits} <= {"X", "i"}
        for e in exits:  # the fields a viewer needs, and ours
            assert isinstance(e["ts"], float | int) and e["name"] and e["cat"] == e["name"].split(":")[0]
            assert e["args"]["eip"].startswith("0x") and e["args"]["cpl"] in (0, 1, 3)
            assert e["ph"] == "i" or e["dur"] >= 0
        assert [e["ts"] for e in exits] == sorted(e["ts"] for e in exits)  # guest time only moves on
        assert any(e["name"] == "guest" and e["ph"] == "X" for e in events)
        # one trace entry for every exit the counters saw, kind for kind
        counted = Counter({k: v for k, v in res["metrics"]["detail"].items()
                           if k.split(":")[0] != "mmu"})  # Metrics.event: bookkeeping, not exits
        traced = key_counts(doc)
        assert {k: traced[k] for k in counted} == dict(counted)
        summary = doc["otherData"]["vmirom"]
        assert summary["exits"] == len(exits) == res["trace"]["exits"]
        assert summary["by_exit"]["softint:0x80"]["count"] == counted["softint:0x80"]
        syscalls = [e for e in exits if e["name"] == "softint:0x80"]
        assert {e["args"]["cpl"] for e in syscalls} == {3}  # int $0x80 comes from user mode
    # 500 more getpid() calls: exactly 500 more int $0x80 exits
    assert key_counts(big)["softint:0x80"] - key_counts(small)["softint:0x80"] == 500


def test_trace_summary_and_plot_commands(tmp_path: Path) -> None:
    """`vmirom trace summary/plot` read a trace of a tiny guest; a file that is not a trace is a
    clean error."""
    import vmm_guests

    elf = vmm_guests.build("hello", tmp_path)
    trace = tmp_path / "hello.json"
    cmd = [sys.executable, "-c", CLI, "run", "-q", "-H", "bare", "--trace", str(trace), str(elf)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    cmd = [sys.executable, "-c", CLI, "trace", "summary", str(trace)]
    s = subprocess.run(cmd, capture_output=True, text=True)
    assert s.returncode == 0 and "io:out" in s.stdout, s.stdout + s.stderr
    png = tmp_path / "hello.png"
    g = subprocess.run([sys.executable, "-c", CLI, "trace", "plot", str(trace), "-o", str(png)],
                       capture_output=True, text=True, timeout=120)
    assert g.returncode == 0, g.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, "-c", CLI, "trace", "plot", str(elf), "-o", str(png)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "not JSON" in bad.stderr and "Traceback" not in bad.stderr
