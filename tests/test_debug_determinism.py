"""--deterministic: guest time counts instructions, so two runs give the same exits, the same
console and the same trace (all but the host-time fields); a gdb breakpoint that the user
continues from changes no exit count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_debug_gdb import Rsp, Vm
from vmirom.guest.build import build_kernel

CLI = "import sys; from vmirom.cli import main; sys.argv[0] = 'vmirom'; main()"
ARGS = ("-H", "vmi", "--deterministic", "--cmdline", "exit_after=20")
HOST_FIELDS = ("dur", "handler_ns")


@pytest.fixture(scope="module")
def kernel() -> Path:
    return build_kernel()


def det_run(kernel: Path, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-c", CLI, "run", "-q", *ARGS, "--json", str(out), *extra, str(kernel)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return json.loads(out.read_text())


def guest_view(trace: Path) -> list:
    """The trace without what the host's speed decides (handler durations)."""
    events = json.loads(trace.read_text())["traceEvents"]
    for e in events:
        for f in HOST_FIELDS:
            e.pop(f, None)
            e.get("args", {}).pop(f, None)
    return events


def test_two_runs_give_the_same_exits_console_and_trace(kernel: Path, tmp_path: Path) -> None:
    runs = [det_run(kernel, tmp_path / f"r{i}.json", "--trace", str(tmp_path / f"t{i}.json")) for i in (1, 2)]
    a, b = runs
    assert a["metrics"] == b["metrics"]  # every counter, detail for detail
    assert a["console"] == b["console"]
    assert a["deterministic"] == b["deterministic"] and a["deterministic"]["instructions"] > 10**6
    ta, tb = guest_view(tmp_path / "t1.json"), guest_view(tmp_path / "t2.json")
    assert len(ta) > 1000 and ta == tb  # the same exits at the same guest times and EIPs


def test_a_breakpoint_changes_no_exit_count(kernel: Path, tmp_path: Path) -> None:
    plain = det_run(kernel, tmp_path / "plain.json")
    vm = Vm(*ARGS, "-q", "--wait", "--json", str(tmp_path / "gdb.json"), str(kernel))
    r = Rsp(vm.port)
    assert r.ask("?").startswith("S05")
    addr = subprocess.run(["nm", str(kernel)], capture_output=True, text=True).stdout
    kmain = next(line.split()[0] for line in addr.splitlines() if line.endswith(" kmain"))
    assert r.ask(f"Z0,{kmain},1") == "OK"
    r.send("c")
    assert r.reply().startswith("T05swbreak")
    assert r.ask("s").startswith("T05")  # one instruction stepped, too
    assert r.ask(f"z0,{kmain},1") == "OK"
    r.send("c")
    assert r.reply() == "W00"  # the guest's clean exit, as gdb sees it
    code, _ = vm.finish()
    assert code == 0
    stopped = json.loads((tmp_path / "gdb.json").read_text())
    a, b = stopped["metrics"], plain["metrics"]
    assert a["detail"] == b["detail"] and a["total_exits"] == b["total_exits"]
    # only the number of slices differs: the stop split one (a slice is not an exit)
    assert {k: v for k, v in a["kinds"].items() if k != "slice"} == {
        k: v for k, v in b["kinds"].items() if k != "slice"}
    assert a["kinds"]["slice"] > b["kinds"]["slice"]
    assert stopped["console"] == plain["console"]


def test_bench_says_its_clock_and_repeats_exactly(tmp_path: Path) -> None:
    """`vmirom bench --deterministic`: the JSON and the table say which clock ran, and the two
    repeats of a test make the same exits, kind for kind."""
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, "-c", CLI, "bench", "-H", "vmi", "--tests", "null_syscall,fork_exit",
                        "--repeat", "2", "-n", "100", "--deterministic", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "clock: deterministic" in p.stdout and "VMM clock: deterministic" in p.stdout
    doc = json.loads(out.read_text())
    assert doc["config"]["clock"] == "deterministic"
    for test in ("null_syscall", "fork_exit"):
        reps = [r["exits_detail"] for r in doc["records"] if r["test"] == test]
        assert len(reps) == 2 and reps[0] == reps[1], test


def test_piped_console_input_is_deterministic_too(kernel: Path, tmp_path: Path) -> None:
    """The same input gives the same run: bytes enter the UART only when the guest halts."""
    runs = []
    for i in (1, 2):
        out = tmp_path / f"in{i}.json"
        p = subprocess.run([sys.executable, "-c", CLI, "run", "-H", "vmi", "-i", "--deterministic",
                            "--cmdline", "init=sh", "--json", str(out), str(kernel)],
                           input=b"echo hi\nls | wc\nexit 3\n", capture_output=True, timeout=300)
        assert p.returncode == 1, p.stderr[-2000:]  # the shell's `exit 3`
        runs.append(json.loads(out.read_text()))
    a, b = runs
    assert "\nhi\n" in a["console"].replace("\r\n", "\n")
    assert a["metrics"] == b["metrics"] and a["console"] == b["console"]
