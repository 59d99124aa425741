"""The reference kernel's user space on OUR VMM (the Unicorn engine), not on QEMU.

- `pagefault.S`, a tiny ring-0 guest, takes seven page faults (ring 0 and ring 3, not-present /
  read-only with CR0.WP / supervisor-only pages) and records what its #PF handler saw.  The handler
  spins long enough for the VMM to end several time slices before it reads CR2: Unicorn used to
  rewrite CR2 at the end of every slice (engine W11), so the guest read 0xfffffffe.  The error codes
  are computed by the VMM from the page walk (the engine does not expose them).
- `init=selftest` on `bare`: every check the user-level selftest prints must pass, read from the
  console with the guest's own parser.
"""

from __future__ import annotations

import re
import struct
import sys
from pathlib import Path

import pytest

from vmirom.guest.build import BUILD_DIR, build_kernel
from vmirom.guest.console import last_event, parse_events
from vmirom.hypervisors import create
from vmirom.machine import Machine, MachineConfig
from vmirom.runner import RunRequest, run_isolated

sys.path.insert(0, str(Path(__file__).parent))
import vmm_guests  # noqa: E402

INITRD = BUILD_DIR / "initrd.cpio"
RESULTS, N_FAULTS = 0x280000, 7
# (CR2, error code) in the order pagefault.S faults; error bits: 1 present, 2 write, 4 user
EXPECTED = [
    (0x300000, 0),  # ring 0 read, not present
    (0x300010, 2),  # ring 0 write, not present
    (0x301020, 3),  # ring 0 write to a read-only page with CR0.WP
    (0x300030, 4),  # ring 3 read, not present
    (0x301040, 7),  # ring 3 write, read-only user page
    (0x302050, 5),  # ring 3 read, supervisor page
    (0x302060, 7),  # ring 3 write, supervisor page
]


def test_page_fault_error_codes_and_cr2_survive_slice_ends(tmp_path: Path) -> None:
    elf = vmm_guests.build("pagefault", tmp_path)
    m = Machine(create("bare"), MachineConfig(timeout_s=60, slice_us=1000))
    try:
        m.load_kernel(elf.read_bytes())
        res = m.run()
        assert (res.fate, res.exit_status) == ("exit", N_FAULTS), res.message
        # the handler's spin really did span slice ends (otherwise this test would prove nothing)
        assert res.metrics["kinds"]["slice"] > N_FAULTS
        seen = [struct.unpack_from("<II", m.memory.read(RESULTS + 8 * i, 8)) for i in range(N_FAULTS)]
    finally:
        m.close()
    assert seen == EXPECTED


@pytest.fixture(scope="module")
def kernel() -> Path:
    path = build_kernel()
    if not INITRD.is_file():
        pytest.skip("no initrd (user space not built)")
    return path


def test_selftest_on_bare(kernel: Path) -> None:
    res = run_isolated(RunRequest("bare", str(kernel), "init=selftest", 240.0, str(INITRD), echo=False))
    console = res["console"]
    events = parse_events(console)
    checks = [e for e in events if e["event"] == "selftest"]
    failed = [e for e in checks if not e["ok"]]
    assert not failed, failed
    assert res["fate"] == "exit" and res["exit_status"] == 0, (res["message"], console[-3000:])
    summary = last_event(events, "selftest_summary")
    assert summary is not None, console[-3000:]
    assert summary["failed"] == 0 and summary["passed"] == summary["total"] == len(checks) >= 20
    # the human lines agree: one "selftest: NAME ... ok" per check, nothing else
    lines = re.findall(r"^selftest: (\S+)\s+\.\.\. (\S+)", console, flags=re.M)
    assert [name for name, _ in lines] == [e["check"] for e in checks]
    assert {verdict for _, verdict in lines} == {"ok"}
    # user faults were delivered and reported by the kernel (the faults_kill check provokes them),
    # and no kernel-mode exception happened
    assert any(e["event"] == "user_fault" for e in events)
    assert not any(e["event"] == "exception" for e in events), console[-3000:]


@pytest.mark.parametrize("hypervisor", ["bare", "vmi2"])
def test_interactive_shell_on_the_vmm(kernel: Path, hypervisor: str) -> None:
    """`vmirom run -i --cmdline init=sh`: keys typed on the terminal reach the guest's serial port
    (IRQ4), the shell runs pipelines, and `exit 0` ends the run with status 0."""
    from pty_console import Serial, run_shell_session

    cli = "import sys; from vmirom.cli import main; sys.argv[0] = 'vmirom'; main()"
    s = Serial([sys.executable, "-c", cli, "run", "-H", hypervisor, "-i", "--timeout", "120",
                "--cmdline", "init=sh", str(kernel)])
    try:
        run_shell_session(s)
        s.expect("vmirom run: " + hypervisor, timeout=30)   # the summary follows the guest's end
    finally:
        code = s.close()
    assert code == 0
