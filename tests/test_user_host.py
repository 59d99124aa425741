"""The user programs, run on the build machine as 32-bit Linux processes.

`make -C guest/user host` links the very same program objects against a Linux shim
(guest/user/host/linux_shim.c) instead of the vmirom system-call stubs. That tests the shell, the
tools, init's command-line handling, the benchmark's output and the self-checks' logic without the
vmirom kernel; the QEMU tests (test_user_qemu.py) then run them on the real kernel."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vmirom.guest.console import parse_events
from vmirom.guest.initrd import build_user_space

# checks whose outcome on Linux differs by design: `cli` is SIGSEGV there (no #GP number), Linux
# syscall 0 exists, procs/proc_limit need the vmirom process table, shutdown is pid 1's business
HOST_CHECKS = ["getpid", "fork_isolation", "cow", "cow_nested", "pipe_order", "pipe_eof", "wait_status",
               "efault", "exec", "sbrk", "mmap", "dup", "clock_sleep", "preempt_kill", "files", "fork_churn"]


def _can_run_i386() -> bool:
    try:
        bindir = build_user_space("host")
        return subprocess.run([str(bindir / "true")], timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


pytestmark = pytest.mark.skipif(not _can_run_i386(), reason="this host cannot run 32-bit Linux programs")


@pytest.fixture(scope="module")
def bindir() -> Path:
    return build_user_space("host")


def run(bindir: Path, *argv: str, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(bindir / argv[0]), *argv[1:]], input=stdin, capture_output=True, cwd=bindir,
                          timeout=timeout)


@pytest.mark.parametrize("line, out", [
    ("echo hello world | wc", "1 2 12\n"),
    ("cat motd | wc | cat", "3 34 197\n"),
    ('echo "a | b" ; echo $?', "a | b\n0\n"),
    ("false ; echo $? ; true ; echo $?", "1\n0\n"),
    ("echo -n x|wc", "0 1 1\n"),
    ("wc < motd", "3 34 197\n"),
])
def test_sh_command_lines(bindir: Path, line: str, out: str) -> None:
    r = run(bindir, "sh", "-c", line)
    assert r.stdout.decode() == out and r.returncode == 0, r.stderr


def test_sh_ls_lists_the_programs(bindir: Path) -> None:
    r = run(bindir, "sh", "-c", "ls | wc")
    assert r.stdout.split()[0] == b"16"
    r = run(bindir, "ls", "-l")
    assert b"-000755" in r.stdout and b" motd\n" in r.stdout


def test_sh_errors(bindir: Path) -> None:
    r = run(bindir, "sh", "-c", "nosuch arg")
    assert r.returncode == 127 and b"nosuch: command not found" in r.stderr
    r = run(bindir, "sh", "-c", "echo a | | wc")
    assert r.returncode == 2 and b"syntax error" in r.stderr


def test_sh_interactive_line_editing(bindir: Path) -> None:
    typed = b"ecX\x7fho hi | wc\r\necho two\n\x15junk\x15exit 3\r"
    r = run(bindir, "sh", stdin=typed)
    out = r.stdout.decode()
    assert r.returncode == 3
    assert out.startswith("$ ecX\b \bho hi | wc\n1 1 3\n$ echo two\ntwo\n$ ")
    assert out.count("$ ") == 3


def test_sh_ends_at_end_of_input(bindir: Path) -> None:
    r = run(bindir, "sh", stdin=b"echo x\n")
    assert r.returncode == 0 and r.stdout.decode() == "$ echo x\nx\n$ "


@pytest.mark.parametrize("words, status, out", [
    (["vmi=off", "init=echo,a,b c"], 0, "a b c\n"),
    (["init=echo", "quiet", "--", "x", "y"], 0, "x y\n"),
    (["init=false"], 1, ""),
    (["init=nosuch"], 127, ""),
    (["--", "-c", "echo", "from", "sh"], 0, "from sh\n"),
])
def test_init_runs_the_command_line(bindir: Path, words: list[str], status: int, out: str) -> None:
    r = run(bindir, "init", *words)
    text = r.stdout.decode()
    ev = [e for e in parse_events(text) if e["event"] == "init_exit"]
    assert ev and ev[0]["status"] == status and r.returncode == status
    assert text.split("VMIROM-JSON")[0] == out


def test_bench_lines_parse(bindir: Path) -> None:
    r = run(bindir, "bench", "-s", "5", timeout=120)
    assert r.returncode == 0, r.stdout.decode()[-2000:]
    events = parse_events(r.stdout)
    results = [e for e in events if e["event"] == "bench"]
    names = ["null_syscall", "pipe_latency", "fork_exit", "fork_exec", "page_fault", "prot_fault",
             "mmap_munmap", "cpu_loop", "build"]
    assert [e["test"] for e in results] == names
    starts = [e["test"] for e in events if e["event"] == "bench_start"]
    assert starts == names
    for e in results:
        assert e["unit"] == "ns" and e["iterations"] >= 1 and e["t1"] >= e["t0"] > 0
        assert e["tsc1"] >= e["tsc0"]
    assert results[-1]["processes"] == 2 * results[-1]["iterations"] + 1
    assert events[-1] == {"event": "bench_done", "tests": 9, "errors": 0}


def test_bench_arguments(bindir: Path) -> None:
    r = run(bindir, "bench", "-n", "3", "cpu_loop", "fork_exit")
    results = [e for e in parse_events(r.stdout) if e["event"] == "bench"]
    assert [(e["test"], e["iterations"]) for e in results] == [("fork_exit", 3), ("cpu_loop", 3)]
    assert run(bindir, "bench", "nosuch").returncode == 2
    assert b"null_syscall" in run(bindir, "bench", "-l").stdout


def test_selftest_logic_on_linux(bindir: Path) -> None:
    r = run(bindir, "selftest", *HOST_CHECKS, timeout=120)
    events = parse_events(r.stdout)
    checks = {e["check"]: e for e in events if e["event"] == "selftest"}
    assert list(checks) == HOST_CHECKS
    failed = {k: v["detail"] for k, v in checks.items() if not v["ok"]}
    assert not failed
    assert events[-1] == {"event": "selftest_summary", "passed": len(HOST_CHECKS), "failed": 0,
                          "total": len(HOST_CHECKS)}
    assert r.returncode == 0


def test_selftest_reports_failures(bindir: Path) -> None:
    # on Linux `cli` raises SIGSEGV, not #GP: the check must say so and the run must count it
    r = run(bindir, "selftest", "faults_kill", "getpid")
    events = parse_events(r.stdout)
    assert [e.get("check") for e in events[:2]] == ["getpid", "faults_kill"]   # table order
    assert events[1]["ok"] is False and events[0]["ok"] is True
    assert "cli: status 0x10e, want 0x10d" in events[1]["detail"]
    assert events[-1]["failed"] == 1 and r.returncode == 1
    assert b"selftest: faults_kill     ... FAIL" in r.stdout


def test_compile_stage(bindir: Path) -> None:
    src = b"int main(void) { return x + y; }\n" * 50
    r = run(bindir, "compile", "cc1", "2", stdin=src)
    assert r.returncode == 0 and len(r.stdout) == len(src) and r.stdout != src
