"""The bench harness on real boots of the reference kernel: the exits it attributes to each test
window are exactly what the benchmark's own operations predict, on every personality; the pseudo
tests count one timer interrupt per tick; and `vmirom bench --quick --json` (the CI configuration)
writes a document that validates against schema.json.

No timing is asserted anywhere: only counts, structure and consistency."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vmirom.bench import report, runs
from vmirom.engines.libunicorn import patched_library
from vmirom.guest.build import build_kernel
from vmirom.guest.initrd import INITRD_PATH, build_user_space

N = 8                                          # iterations of every test (bench -n)
PERSONALITIES = ("bare", "fullvirt", "vmi", "vmi2", "hwassist")
TESTS = ("null_syscall", "pipe_latency", "fork_exit", "fork_exec", "page_fault", "prot_fault",
         "mmap_munmap", "cpu_loop")

#: System calls inside every test window besides the loop's own: the window opens at the newline of
#: the bench_start line (its write() was entered before) and closes at the first byte of the result
#: line, so it holds SYS_clock for t0, SYS_clock for t1 and the write() of the result line.
WINDOW_SYSCALLS = 3
#: System calls per iteration, from guest/user/bench.c
SYSCALLS_PER_ITER = {
    "null_syscall": 1,      # getpid
    "pipe_latency": 4,      # parent write + read, child read + write
    "fork_exit": 3,         # fork, child exit, wait
    "fork_exec": 4,         # fork, exec, exit, wait
    "page_fault": 0,
    "prot_fault": 0,
    "mmap_munmap": 2,       # mmap, munmap
    "cpu_loop": 0,
}
#: Another process may run inside a window.  Without a tick: in pipe_latency the child, re-entering
#: read() after its last reply.  When a timer tick preempts the measuring process: a parent still
#: on its way to wait() (init in the first test, bench itself in prot_fault), one syscall and at
#: most one copy-on-write fault of its stack -- so the bounds below add one of each per tick.
OTHER_PROCESS = {"pipe_latency": (1, 0)}       # (syscalls, faults) with no tick


def slack(r: dict[str, Any], test: str, which: int) -> int:
    return OTHER_PROCESS.get(test, (0, 0))[which] + detail(r, "interrupt:32")
#: Page faults per iteration: one per page touched (demand-zero, copy-on-write, or the one page
#: each 64 KiB mapping gets), two per fork+exit (the parent's and the child's first stack writes
#: after fork make their shared stack page private)
FAULTS_PER_ITER = {"page_fault": 1, "prot_fault": 1, "mmap_munmap": 1, "fork_exit": 2, "fork_exec": 2}


@pytest.fixture(scope="module")
def kernels() -> runs.Kernels:
    kernel = build_kernel()
    build_user_space()
    return runs.Kernels(kernel, None, INITRD_PATH)


@pytest.fixture(scope="module", params=PERSONALITIES)
def boot(request: pytest.FixtureRequest, kernels: runs.Kernels) -> runs.BootResult:
    workload = runs.Workload(TESTS, iterations=N, timeout_s=120)
    b = runs.run_boot(runs.Target.parse(request.param), 0, kernels, workload)
    assert b.fate == "exit" and b.exit_status == 0, (b.fate, b.message, b.console_tail)
    return b


def by_test(b: runs.BootResult) -> dict[str, dict[str, Any]]:
    recs = {r["test"]: r for r in b.records}
    assert set(recs) == set(TESTS)
    bad = {t: r["error"] for t, r in recs.items() if r["status"] != "ok"}
    assert not bad, bad
    return recs


def detail(r: dict[str, Any], key: str) -> int:
    return (r["exits_detail"] or {}).get(key, 0)


def test_every_record_is_valid_and_per_iteration(boot: runs.BootResult) -> None:
    for test, r in by_test(boot).items():
        assert report.validate_record(r) == [], test
        assert r["iterations"] == N and r["time_source"] == "host"
        assert r["ns_per_iter"] == r["host_ns_per_iter"] == pytest.approx(r["host_ns"] / N)
        total = sum(r["exits"].values())
        assert r["exits_total_per_iter"] == pytest.approx(total / N)
        assert r["exits_per_iter"] == pytest.approx({k: v / N for k, v in r["exits"].items()})
        assert 0 <= r["outside_share"] <= 1
        assert 0 <= r["handler_ns_per_iter"] * N <= r["host_ns"]


def test_system_calls_match_the_benchmark_loops(boot: runs.BootResult) -> None:
    """Every int $0x80 the guest executes is one exit into the VMM's delivery path."""
    for test, r in by_test(boot).items():
        expected = SYSCALLS_PER_ITER[test] * N + WINDOW_SYSCALLS
        got = detail(r, "softint:0x80")
        assert expected <= got <= expected + slack(r, test, 0), (boot.target, test, r["exits_detail"])


def test_page_faults_match_the_pages_touched(boot: runs.BootResult) -> None:
    for test, r in by_test(boot).items():
        faults = detail(r, "exception:14")
        if test in FAULTS_PER_ITER:
            expected = FAULTS_PER_ITER[test] * N
            assert expected <= faults <= expected + slack(r, test, 1), (boot.target, test, r["exits_detail"])
        else:   # at most the first touch of a page the loop's code or stack had not used yet
            assert faults <= 1 + slack(r, test, 1), (boot.target, test, r["exits_detail"])


def test_every_kernel_entry_from_user_mode_changes_ring(boot: runs.BootResult) -> None:
    """A ring change is counted per delivery from ring 3: system calls, user faults and the timer
    interrupts that hit user mode; so it lies between syscalls+faults and that plus the interrupts."""
    for test, r in by_test(boot).items():
        entries = detail(r, "softint:0x80") + detail(r, "exception:14")
        assert entries <= detail(r, "delivery:ring_change") <= entries + detail(r, "interrupt:32"), test


def test_personality_specific_exits(boot: runs.BootResult) -> None:
    for test, r in by_test(boot).items():
        d, kinds = r["exits_detail"], set(r["exits"])
        if boot.target == "bare":       # no hypervisor: only devices, traps and interrupts exit
            # (irq_before_exit: a due timer tick taken at a trap, the trapping instruction replayed)
            assert kinds <= {"softint", "exception", "interrupt", "io", "halt", "irq_before_exit"}, (test, d)
        elif boot.target == "vmi":      # every return to user mode goes through the ROM's IRET
            assert detail(r, "hypercall:IRET") >= detail(r, "delivery:ring_change"), (test, d)
            # the kernel reads CR2 through the ROM once per page fault
            assert detail(r, "hypercall:GetCR2") == detail(r, "exception:14"), (test, d)
            assert "emulate" not in kinds and "site" not in kinds, (test, d)
        elif boot.target == "fullvirt":  # iret is a sensitive instruction caught at its site
            assert detail(r, "site:iret") >= detail(r, "delivery:ring_change"), (test, d)
            assert "hypercall" not in kinds, (test, d)
        elif boot.target == "vmi2":     # the interrupt flag and CR2 live in the shared page
            assert not any(detail(r, f"hypercall:{c}") for c in (
                "DisableInterrupts", "EnableInterrupts", "GetInterruptMask", "SetInterruptMask",
                "GetCR2")), (test, d)
            # returns to user mode still exit (the ring change is the VMM's); same-ring ones do not
            assert detail(r, "hypercall:IRET") >= detail(r, "delivery:ring_change"), (test, d)
            assert "emulate" not in kinds and "site" not in kinds, (test, d)
        elif boot.target == "hwassist":  # CPU ops native: only time, halt and devices exit
            allowed = {"softint", "exception", "interrupt", "io", "hypercall", "irq_before_exit"}
            assert kinds <= allowed, (test, d)
            assert all(k.split(":")[1] in ("GetCycleCounter", "SetAlarm", "Halt")
                       for k in d if k.startswith("hypercall:")), (test, d)
        if boot.target != "vmi2":
            assert not r["in_guest"], (test, r["in_guest"])
    if boot.target in ("vmi", "vmi2", "hwassist"):  # the ROM's clock: one GetCycleCounter per SYS_clock
        assert all(detail(r, "hypercall:GetCycleCounter") == 2 for r in by_test(boot).values())
    if boot.target == "vmi2":           # fork+exit rewrites page tables: batched in the guest, one flush
        r = by_test(boot)["fork_exit"]
        assert r["in_guest"]["pte_updates_batched"] > detail(r, "hypercall:SetPxE")
        assert 0 < r["in_guest"]["batch_flushes"] <= detail(r, "hypercall:SetLazyMode") + detail(
            r, "hypercall:FlushDeferred")


@pytest.mark.parametrize("personality", PERSONALITIES)
def test_pseudo_tests_count_one_timer_interrupt_per_tick(personality: str, kernels: runs.Kernels) -> None:
    workload = runs.Workload((), ("boot", "idle"), idle_ticks=12, timeout_s=120)
    b = runs.run_boot(runs.Target.parse(personality), 0, kernels, workload, pseudo=True)
    assert b.fate == "exit", b.message
    recs = {r["test"]: r for r in b.records}
    assert all(report.validate_record(r) == [] for r in recs.values())
    assert recs["boot"]["status"] == "ok" and recs["boot"]["iterations"] == 1
    assert recs["boot"]["host_ns"] > 0 and recs["boot"]["exits_total_per_iter"] > 0
    idle = recs["idle"]
    assert idle["status"] == "ok" and 1 <= idle["iterations"] <= 12
    assert detail(idle, "interrupt:32") == idle["iterations"]


def test_bench_quick_json_validates(tmp_path: Path) -> None:
    """The CI configuration end to end: every target, the JSON document, the chart.  A figure the
    guest clock could not give (QEMU's few quick null_syscall iterations inside one tick) is no
    failure, but it must come out as unmeasured with a reason, never as a 0 or a ratio."""
    out, chart = tmp_path / "out.json", tmp_path / "chart.png"
    cli = "import sys; from vmirom.cli import main; sys.argv[0] = 'vmirom'; main()"
    proc = subprocess.run([sys.executable, "-c", cli, "bench", "--quick", "--json", str(out),
                           "--plot", str(chart), "--timeout", "120"],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert report.validate(doc) == []
    cfg = doc["config"]
    assert cfg["quick"] and cfg["repeat"] == 1
    targets, tests = cfg["targets"], cfg["tests"]
    from vmirom.guest.qemu import qemu_available
    from vmirom.hypervisors import registry

    assert set(registry.names()) <= set(targets)           # every personality, vmi2/hwassist included
    assert {"bare", "fullvirt", "vmi", "vmi2", "hwassist", "bare@native"} <= set(targets)
    if qemu_available():
        assert {"qemu", "qemu@native", "qemu-icount", "qemu-icount@native"} <= set(targets)
    # one record per test x target x repeat, none failed
    assert sorted((r["target"], r["test"]) for r in doc["records"]) == sorted(
        (tg, t) for tg in targets for t in tests)
    failed = [(r["target"], r["test"], r["error"]) for r in doc["records"] if r["status"] != "ok"]
    assert not failed
    assert {r["target"] for r in doc["summary"]} == set(targets)
    for r in doc["summary"]:
        if r["target"] == "bare":
            assert r["ns_per_iter"] and r["n_unmeasured"] == 0     # the VMM's probe always measures
        elif r["time_source"] == "icount":                      # instructions: no ratio to a time
            assert r["ns_per_iter"] > 0 and r["ratio"] is None, r
        elif r["ratio"] is None:                                # only a figure the clock could not give
            assert r["ns_per_iter"] is None and r["unmeasured"], r
            assert r["target"].startswith("qemu"), r
        else:
            assert r["ns_per_iter"] > 0 and r["ratio"] > 0, r
    for r in doc["records"]:
        assert r["ns_per_iter"] is None or r["ns_per_iter"] > 0, r
        assert r["ns_per_iter"] is not None or r["unmeasured"].get("ns_per_iter"), r
    if "bare@native" in targets:
        assert {r["platform"] for r in doc["site_cost"]} >= {"bare"}
    assert doc["environment"]["files"]["kernel"]["sha256"] == report.sha256(Path(
        doc["environment"]["files"]["kernel"]["path"]))
    assert chart.read_bytes()[:4] == b"\x89PNG"
    assert "geomean ratio" in proc.stdout and "wrote" in proc.stdout


def test_handler_profile_names_each_hypercall(boot: runs.BootResult) -> None:
    """The probe times hypercalls per VMI call: as many timed calls of each as the windows counted
    (at least; the profile covers the whole boot), and no anonymous 'hypercall' entry."""
    prof = boot.handler_profile
    timed: dict[str, int] = {}
    for k, v in prof.items():  # "core:hypercall:IRET": the calls the compiled engine core completed
        if k.startswith(("hypercall:", "core:hypercall:")):
            name = k.rsplit(":", 1)[1]
            timed[name] = timed.get(name, 0) + v["calls"]
    if boot.target in ("bare", "fullvirt"):
        assert not timed and "hypercall" not in prof
        return
    assert "hypercall" not in prof and timed
    for r in by_test(boot).values():
        for key, n in (r["exits_detail"] or {}).items():
            if key.startswith("hypercall:") and key != "hypercall:irq_window":
                assert timed.get(key.split(":", 1)[1], 0) >= n, (key, n, timed)
    assert sum(timed.values()) <= prof["_total"]["exits"]


def test_tests_finished_before_the_vm_died_keep_their_records(kernels: runs.Kernels,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A VM process that dies (or hangs and is killed) in its second test: the first test's record
    survives, only the rest become errors, and the error names the test that was running."""
    import os

    def die_in_fork_exit(line: runs.ConsoleLine) -> str | None:   # runs in the forked VM process
        if line.event and line.event.get("event") == "bench_start" and line.event.get("test") == "fork_exit":
            os._exit(3)
        return None

    monkeypatch.setattr(runs, "no_init", die_in_fork_exit)
    workload = runs.Workload(("null_syscall", "fork_exit", "page_fault"), iterations=N, timeout_s=120)
    b = runs.run_boot(runs.Target.parse("bare"), 0, kernels, workload)
    assert b.fate == "engine_crash", b.message
    recs = {r["test"]: r for r in b.records}
    assert set(recs) == {"null_syscall", "fork_exit", "page_fault"}
    ok = recs["null_syscall"]
    assert ok["status"] == "ok" and report.validate_record(ok) == []
    assert detail(ok, "softint:0x80") >= N + WINDOW_SYSCALLS
    for t in ("fork_exit", "page_fault"):
        assert recs[t]["status"] == "error" and "status 3 (while running fork_exit)" in recs[t]["error"]


def test_qemu_icount_counts_instructions_deterministically(kernels: runs.Kernels) -> None:
    """qemu-icount's guest clock advances one ns per instruction: two boots count the same
    instructions per iteration (a count, not a time), and the records say so."""
    from vmirom.guest.qemu import qemu_available

    if not qemu_available():
        pytest.skip("qemu-system-i386 is not installed")
    workload = runs.Workload(("null_syscall", "cpu_loop"), iterations=200, timeout_s=120)
    counts = []
    for repeat in (0, 1):
        b = runs.run_boot(runs.Target.parse("qemu-icount"), repeat, kernels, workload)
        assert b.fate == "exit" and b.exit_status == 0, (b.fate, b.message)
        recs = {r["test"]: r for r in b.records}
        for r in recs.values():
            assert r["status"] == "ok" and r["time_source"] == "icount" and report.validate_record(r) == []
        counts.append({t: r["guest_total"] for t, r in recs.items()})
    assert counts[0] == counts[1]
    # a system call is tens of instructions, not thousands; a cpu_loop iteration a handful
    assert 10 < counts[0]["null_syscall"] / 200 < 1000 and 1 < counts[0]["cpu_loop"] / 200 < 100


@pytest.mark.parametrize("target, build", [
    pytest.param("bare", "patched", marks=pytest.mark.skipif(patched_library() is None,
                                                            reason="the patched engine is not built")),
    ("bare+stock", "stock"),
])
def test_each_boot_records_the_engine_build_it_ran_on(kernels: runs.Kernels, target: str, build: str) -> None:
    """`bare` and `bare+stock` in one process: the +stock boot runs in an exec'd child on the wheel's
    library, and the boot and every record say which build measured them; the guest's exits are the
    same on both (the fix changes the engine's speed, not what the guest does)."""
    workload = runs.Workload(("null_syscall", "page_fault"), iterations=N, timeout_s=120)
    b = runs.run_boot(runs.Target.parse(target), 0, kernels, workload)
    assert b.fate == "exit" and b.exit_status == 0, (b.fate, b.message)
    assert b.engine is not None and b.engine["build"] == build
    assert b.as_json()["engine"] == b.engine
    recs = by_test_of(b, ("null_syscall", "page_fault"))
    assert {r["engine_build"] for r in recs.values()} == {build}
    assert all(report.validate_record(r) == [] for r in recs.values())
    assert detail(recs["null_syscall"], "softint:0x80") >= N
    assert detail(recs["page_fault"], "exception:14") >= N


def by_test_of(b: runs.BootResult, tests: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    recs = {r["test"]: r for r in b.records}
    assert set(recs) == set(tests) and all(r["status"] == "ok" for r in recs.values())
    return recs
