"""The console as a user types at it: the 16550 interrupt rule (input waiting before the guest
enables the receive interrupt), piped input to the shell, Ctrl-C reaching the guest's shell,
arrow keys swallowed cleanly, and the Ctrl-A x escape that stops the VM with a report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vmirom.guest.build import BUILD_DIR
from vmirom.machine.devices import Uart16550
from vmirom.machine.escape import ConsoleEscape

sys.path.insert(0, str(Path(__file__).parent))

CLI = "import sys; from vmirom.cli import main; sys.argv[0] = 'vmirom'; main()"
INITRD = BUILD_DIR / "initrd.cpio"


def test_uart_raises_rx_interrupt_when_enabled_with_data_waiting() -> None:
    irqs = []
    u = Uart16550(raise_irq=lambda: irqs.append(1))
    u.feed(b"ab")  # the receive interrupt is off: nothing is announced yet
    assert irqs == []
    u.port_out(0x3F9, 1, 0x01)  # IER: received data available
    assert irqs == [1]
    assert u.port_in(0x3FA, 1) == 0xC4  # IIR: receive data pending
    u.port_out(0x3F9, 1, 0x01)  # enabling again (no change) raises nothing new
    assert irqs == [1]
    u2 = Uart16550(raise_irq=lambda: irqs.append(2))
    u2.port_out(0x3F9, 1, 0x01)  # no data: nothing to announce
    assert irqs == [1]


def test_escape_filter() -> None:
    e = ConsoleEscape()
    assert e.filter(b"ab\x01\x01c") == (b"ab\x01c", None)  # Ctrl-A Ctrl-A: one Ctrl-A
    assert e.filter(b"x\x01") == (b"x", None)  # the prefix may end one read ...
    assert e.filter(b"xyz") == (b"", "quit")  # ... and its command start the next
    assert e.filter(b"\x01h") == (b"", "help")
    assert e.filter(b"\x01q\x03") == (b"\x03", None)  # unknown command: dropped; Ctrl-C passes


@pytest.fixture(scope="module")
def kernel(unix_kernel: Path) -> Path:
    return unix_kernel


@pytest.mark.parametrize("hypervisor", ["vmi", "bare"])
def test_piped_input_shell_session(kernel: Path, hypervisor: str) -> None:
    """`printf 'echo hi\\nexit 0\\n' | vmirom run -i --cmdline init=sh`: the input is all there
    before the kernel enables the UART's receive interrupt, and must still reach the shell."""
    p = subprocess.run(
        [sys.executable, "-c", CLI, "run", "-H", hypervisor, "-i", "--timeout", "120",
         "--cmdline", "init=sh", str(kernel)],
        input=b"echo hi\nexit 0\n", capture_output=True, timeout=240,
    )
    out = p.stdout.decode(errors="replace").replace("\r\n", "\n")
    assert "$ echo hi\nhi\n$ exit 0\n" in out, out[-3000:]
    assert p.returncode == 0, (p.returncode, p.stderr.decode()[-2000:])


def test_ctrl_c_arrow_keys_and_escape_on_a_terminal(kernel: Path) -> None:
    """On a terminal: an arrow key in the middle of a word leaves no trace, Ctrl-C abandons the
    line ("^C", a new prompt, the half-typed command never runs), and Ctrl-A x stops the VM with
    fate "quit" (exit status 9) and the usual summary, including the vCPU state."""
    from pty_console import Serial

    s = Serial([sys.executable, "-c", CLI, "run", "-H", "vmi", "-i", "--timeout", "120",
                "--cmdline", "init=sh", str(kernel)])
    try:
        s.expect("$ ")
        s.type("ech\x1b[Do h\x1bOAi\r")  # left arrow (CSI) and up arrow (SS3) mid-line
        out = s.expect("$ ")
        assert "\nhi\n" in out and "[D" not in out and "command not found" not in out, out
        s.type("nosuchcommand\x03")
        out = s.expect("$ ")
        assert "nosuchcommand^C\n" in out, out
        s.type("echo again\r")
        assert "\nagain\n" in s.expect("$ ")
        s.type("\x01x")
        s.expect("stopped by the user (Ctrl-A x)", timeout=30)
        s.expect("vCPU state (CPL", timeout=30)  # the state of the stopped vCPU
    finally:
        code = s.close()
    assert code == 9


def test_ctrl_c_without_a_guest_console_stops_with_a_report(kernel: Path) -> None:
    """Ctrl-C at a `vmirom run` whose keys do not go to the guest (no -i): SIGINT reaches the
    whole process group, the VM stops with fate "quit" (exit 9) and the summary, crash state
    included, is still printed - no "Aborted!", no traceback."""
    import os
    import signal

    from pty_console import read_until

    p = subprocess.Popen([sys.executable, "-c", CLI, "run", "-H", "vmi", "--timeout", "120",
                          "--cmdline", "init=sh", str(kernel)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        seen = read_until(p, b"$ ")
        assert b"$ " in seen, seen[-2000:]
        os.killpg(p.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    text = (seen + out).decode(errors="replace") + err.decode(errors="replace")
    assert p.returncode == 9, text[-3000:]
    assert "interrupted by Ctrl-C" in text and "vCPU state (CPL" in text
    assert "Traceback" not in text and "Aborted" not in text
