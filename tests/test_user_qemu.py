"""End to end on real QEMU: the reference kernel runs init, the self-checks, the benchmark suite
and an interactive shell from the initrd. Skipped until the kernel implements processes (it must
handle SYS_exec from guest/include/syscall.h)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
import tty
from pathlib import Path

import pytest

from vmirom.guest.initrd import GUEST_DIR, build_user_space


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


class Serial:
    """QEMU with its serial port on a pseudo-terminal, typed at like a person at a terminal."""

    def __init__(self, cmd: list[str]) -> None:
        self.master, slave = pty.openpty()
        tty.setraw(slave)      # no ONLCR: the guest's own "\r\n" would otherwise arrive as "\r\r\n"
        self.proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=subprocess.DEVNULL,
                                     close_fds=True)
        os.close(slave)
        self.text = ""

    def expect(self, needle: str, timeout: float = 60) -> str:
        end = time.monotonic() + timeout
        while needle not in self.text:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {needle!r} on the console; got:\n{self.text[-2000:]}")
            ready, _, _ = select.select([self.master], [], [], min(left, 1.0))
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:
                    chunk = b""
                if not chunk and self.proc.poll() is not None:
                    raise AssertionError(f"QEMU exited; console:\n{self.text[-2000:]}")
                # the kernel writes "\r\n"; the bytes may arrive in different reads, so normalise the
                # whole text, not the chunk
                self.text = re.sub(r"\r+\n", "\n", self.text + chunk.decode("utf-8", errors="replace"))
        at = self.text.index(needle) + len(needle)
        seen, self.text = self.text[:at], self.text[at:]
        return seen

    def type(self, line: str) -> None:
        for ch in line.encode():       # one key at a time, as a terminal sends them
            os.write(self.master, bytes([ch]))
            time.sleep(0.005)

    def close(self) -> int | None:
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        finally:
            os.close(self.master)


def test_interactive_shell_pipeline(images: tuple[Path, Path]) -> None:
    kernel, initrd = images
    s = Serial(qemu_command(kernel, initrd=initrd, cmdline="init=sh"))
    try:
        s.expect("$ ")
        s.type("echo hello pipe world | wc\r")
        out = s.expect("$ ")
        assert "echo hello pipe world | wc\n" in out          # echoed as typed
        assert "\n1 3 17\n" in out
        s.type("ls | wc\r")
        assert "\n16 16 " in s.expect("$ ")
        s.type("cat motd | wc | cat\r")
        assert "\n3 34 197\n" in s.expect("$ ")
        s.type("nosuch\r")
        assert "nosuch: command not found" in s.expect("$ ")
        s.type("exit 0\r")
        s.expect('"event":"shutdown"', timeout=30)
    finally:
        code = s.close()
    assert code == 1, f"QEMU exit code {code}, want 1 (guest status 0)"
