"""The Unix side of the reference kernel on real QEMU: init from the initrd, the user-level
self-checks, the benchmark suite, and the same with every privileged operation routed through
ROM stubs (all three binding kinds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmirom.guest.build import BUILD_DIR, build_kernel
from vmirom.guest.console import find_event, last_event
from vmirom.guest.qemu import qemu_available, run_kernel

pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(not qemu_available(), reason="qemu-system-i386 not installed")]

INITRD = BUILD_DIR / "initrd.cpio"


@pytest.fixture(scope="module")
def kernel() -> Path:
    path = build_kernel()
    if not INITRD.is_file():
        pytest.skip("no initrd (user space not built)")
    return path


def _selftest_ok(res) -> None:  # type: ignore[no-untyped-def]
    assert not res.timed_out, res.console[-3000:]
    summary = last_event(res.events, "selftest_summary")
    assert summary is not None, res.console[-3000:]
    failed = [e for e in res.events if e["event"] == "selftest" and not e["ok"]]
    assert summary["failed"] == 0 and not failed, failed
    assert summary["passed"] >= 20
    assert res.exit_status == 0


def test_init_runs_a_program(kernel: Path) -> None:
    res = run_kernel(kernel, cmdline="init=echo,hello,from,init", initrd=INITRD, timeout=60)
    assert res.exit_status == 0, res.console[-2000:]
    assert "hello from init" in res.console
    ready = find_event(res.events, "ready")
    assert ready is not None and ready.get("init") is True


def test_selftest_native(kernel: Path) -> None:
    _selftest_ok(run_kernel(kernel, cmdline="init=selftest", initrd=INITRD, timeout=120))


def test_selftest_with_every_call_through_the_rom(kernel: Path, tmp_path: Path) -> None:
    from vmirom.guest.testroms import all_calls_rom
    from vmirom.rom import build_rom

    rom = tmp_path / "all.rom"
    rom.write_bytes(build_rom(all_calls_rom()).data)
    res = run_kernel(kernel, cmdline="init=selftest", initrd=INITRD, option_rom=rom, timeout=120)
    v = find_event(res.events, "vmi")
    assert v is not None and v["status"] == "bound" and v["patched"] == v["sites"]
    _selftest_ok(res)


def test_bench_lines_parse(kernel: Path) -> None:
    res = run_kernel(kernel, cmdline="init=bench", initrd=INITRD, timeout=300)
    assert res.exit_status == 0, res.console[-3000:]
    benches = [e for e in res.events if e["event"] == "bench"]
    names = {b["test"] for b in benches}
    assert {"null_syscall", "pipe_latency", "fork_exit", "fork_exec", "page_fault", "cpu_loop"} <= names
    for b in benches:
        assert b["iterations"] > 0 and b["t1"] >= b["t0"] and b["tsc1"] > b["tsc0"]
    done = last_event(res.events, "bench_done")
    assert done is not None and done["errors"] == 0


def test_missing_init_is_reported(kernel: Path, tmp_path: Path) -> None:
    from vmirom.guest.initrd import CpioEntry, build_cpio

    empty = tmp_path / "empty.cpio"
    empty.write_bytes(build_cpio([CpioEntry("hello.txt", b"hi\n")]))
    res = run_kernel(kernel, cmdline="", initrd=empty, timeout=60)
    assert res.exit_status not in (None, 0)
    assert 'cannot exec "init"' in res.console
