"""Issue 11: the guest cannot escape.  Regression tests for every item of the issue, driven by small
hostile guests (tests/guests/*.S) on every personality they apply to.  docs/security.md has the
threat model; test_hostile_suite.py has the broad hostile-guest suite and the hypercall fuzzer.

Each run goes through `run_isolated` (the VM in a forked child, exactly as `vmirom run` does), so
an engine abort would show up as fate "engine_crash" instead of killing pytest."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import vmm_guests
from vmirom import runner
from vmirom.runner import RunRequest, run_isolated

ALL = ("bare", "hwassist", "fullvirt", "vmi", "vmi2")
DEPRIVILEGED = ("fullvirt", "vmi", "vmi2")  # kernel at ring 1


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    d = tmp_path_factory.mktemp("secguests")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = vmm_guests.build(name, d)
        return cache[name]

    return get


def run(build, guest: str, hv: str, timeout: float = 20.0) -> dict:
    r = run_isolated(RunRequest(hv, str(build(guest)), "", timeout, echo=False))
    assert "traceback" not in r, r.get("traceback")
    assert r["fate"] not in ("engine_crash", "engine_error", "timeout"), r["message"]
    return r


def exited_ok(r: dict) -> bool:
    return r["fate"] == "exit" and r["exit_status"] == 0


# -- item 1: a fault raised inside a hook stops the faulting context at once -----------------------
@pytest.mark.parametrize("hv", ALL)
@pytest.mark.parametrize("guest", ["user_io_escape", "user_sysenter"])
def test_refused_user_instruction_faults_at_itself_and_nothing_after_it_runs(build, guest, hv):
    """A ring-3 `inb` is refused with #GP (sysenter: #UD), delivered at the instruction (+0) with
    nothing after it in the same block executed: before, the next `out` powered the VM off with the
    user's status 66 and the sysenter #UD frame pointed 2 bytes late."""
    r = run(build, guest, hv)
    assert exited_ok(r), (r["fate"], r["exit_status"], r["message"])
    assert "io:out:0xf4" in r["metrics"]["detail"]  # the handler's own exit, only once
    assert r["metrics"]["detail"]["io:out:0xf4"] == 1


# -- item 2: the de-privileged kernel never reaches CPL 0 -------------------------------------------
@pytest.mark.parametrize("hv", ALL)
def test_gates_through_the_vmm_delivery_keep_the_kernel_ring(build, hv):
    """IDT gate to a DPL-0 conforming segment: the handler runs at the caller's ring (hardware
    rule); gate to DPL-0 code from a ring-1 kernel: #GP(selector)."""
    r = run(build, "kernel_gates", hv)
    assert exited_ok(r), (r["fate"], r["exit_status"], r["message"])


@pytest.mark.parametrize("hv", ALL)
@pytest.mark.parametrize("guest", ["callgate_escape", "taskswitch_escape"])
def test_native_call_gate_or_task_switch_to_ring0_is_stopped(build, guest, hv):
    """Unicorn runs call gates and task switches natively from tables the kernel rewrites with
    plain stores: a ring-1 kernel that gets to CPL 0 has no exit served there (its `out` to the
    debug-exit port with status 50 is refused) and the VM stops with fate privilege_violation."""
    r = run(build, guest, hv)
    if hv in DEPRIVILEGED:
        assert r["fate"] == "privilege_violation", (r["fate"], r["exit_status"], r["message"])
        assert "reached CPL 0" in r["message"]
        assert runner.exit_code(r) == runner.EXIT_CODES["vm_error"]
    else:
        assert exited_ok(r), (r["fate"], r["exit_status"], r["message"])


# -- item 3: no engine abort, a dead child is a crash ------------------------------------------------
@pytest.mark.parametrize("hv", ["bare", "vmi"])
@pytest.mark.parametrize("guest", ["callgate_user_no_tr", "callgate_no_tr"])
def test_inner_ring_call_gate_with_no_tr_loaded_faults_instead_of_aborting(build, guest, hv):
    r = run(build, guest, hv)
    assert r["fate"] in ("triple_fault", "exit"), r["message"]
    assert "vector 10" in r["message"] or exited_ok(r)


def _dying_child(req, conn) -> None:  # closes its end of the pipe, then dies a moment later
    conn.close()
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGABRT)


def test_a_child_that_closes_its_pipe_and_dies_is_a_crash_not_a_timeout(monkeypatch):
    monkeypatch.setattr(runner, "_child", _dying_child)
    r = run_isolated(RunRequest("bare", "/nonexistent", "", 5.0, echo=False))
    assert r["fate"] == "engine_crash", r
    assert "SIGABRT" in r["message"]
