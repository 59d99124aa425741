"""End to end on real QEMU: the reference kernel runs init, the self-checks, the benchmark suite
and an interactive shell from the initrd. Skipped until the kernel implements processes (it must
handle SYS_exec from guest/include/syscall.h)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vmirom.guest.initrd import GUEST_DIR, build_user_space

sys.path.insert(0, str(Path(__file__).parent))
from pty_console import Serial, run_shell_session  # noqa: E402


def _kernel_has_processes() -> bool:
    sources = list((GUEST_DIR / "kernel").glob("*.c"))
    return any("SYS_exec" in f.read_text(errors="replace") for f in sources)


try:
    from vmirom.guest.qemu import qemu_available, qemu_command, run_kernel
except ImportError:   # pragma: no cover - the kernel helper's module is missing
    qemu_available = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(qemu_available is None or not qemu_available(), reason="qemu-system-i386 missing"),
    pytest.mark.skipif(not _kernel_has_processes(), reason="the kernel does not run user processes yet"),
]


@pytest.fixture(scope="module")
def images() -> tuple[Path, Path]:
    from vmirom.guest.build import build_kernel

    kernel = build_kernel()
    return kernel, build_user_space()


def test_init_runs_a_program_and_shuts_down(images: tuple[Path, Path]) -> None:
    kernel, initrd = images
    r = run_kernel(kernel, initrd=initrd, cmdline="init=echo,hello,from,init", timeout=60)
    assert "hello from init" in r.console
    ev = [e for e in r.events if e["event"] == "init_exit"]
    assert ev and ev[0]["status"] == 0 and ev[0]["program"] == "echo"
    assert r.clean, r.console[-3000:]


def test_init_passes_on_the_exit_status(images: tuple[Path, Path]) -> None:
    kernel, initrd = images
    r = run_kernel(kernel, initrd=initrd, cmdline="init=false", timeout=60)
    assert r.exit_status == 1, r.console[-3000:]


def test_selftest_passes_on_qemu(images: tuple[Path, Path]) -> None:
    kernel, initrd = images
    r = run_kernel(kernel, initrd=initrd, cmdline="init=selftest", timeout=300)
    checks = [e for e in r.events if e["event"] == "selftest"]
    failed = {e["check"]: e["detail"] for e in checks if not e["ok"]}
    assert not failed, r.console[-4000:]
    summary = [e for e in r.events if e["event"] == "selftest_summary"]
    assert summary and summary[0]["failed"] == 0 and summary[0]["total"] == len(checks) >= 20
    assert r.clean


def test_bench_lines_parse_on_qemu(images: tuple[Path, Path]) -> None:
    kernel, initrd = images
    r = run_kernel(kernel, initrd=initrd, cmdline="init=bench,-s,20", timeout=300)
    results = [e for e in r.events if e["event"] == "bench"]
    assert [e["test"] for e in results] == ["null_syscall", "pipe_latency", "fork_exit", "fork_exec",
                                            "page_fault", "prot_fault", "mmap_munmap", "cpu_loop", "build"]
    for e in results:
        assert e["t1"] >= e["t0"] and e["iterations"] >= 1 and e["unit"] in ("ns", "tsc")
    done = [e for e in r.events if e["event"] == "bench_done"]
    assert done and done[0]["errors"] == 0, r.console[-3000:]
    assert r.clean


def test_interactive_shell_pipeline(images: tuple[Path, Path]) -> None:
    kernel, initrd = images
    s = Serial(qemu_command(kernel, initrd=initrd, cmdline="init=sh"))
    try:
        run_shell_session(s)
    finally:
        code = s.close()
    assert code == 1, f"QEMU exit code {code}, want 1 (guest status 0)"
