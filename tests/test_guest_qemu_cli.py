"""`vmirom guest qemu` as a user runs it: the console streams while QEMU runs, the reference
kernel gets the built initrd like `vmirom run`, -i types on the console (Ctrl-C reaches the guest's
shell), and --gdb PORT hands QEMU's own gdb stub (-gdb tcp::PORT -S) to real gdb."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from pty_console import Serial, read_until  # noqa: E402
from vmirom.guest.qemu import qemu_available

pytestmark = [pytest.mark.qemu, pytest.mark.skipif(not qemu_available(), reason="qemu-system-i386 missing")]
CLI = "import sys; from vmirom.cli import main; sys.argv[0] = 'vmirom'; main()"


@pytest.fixture(scope="module")
def kernel(unix_kernel: Path) -> Path:
    return unix_kernel


def test_console_streams_and_the_default_initrd_is_passed(kernel: Path) -> None:
    cmd = [sys.executable, "-c", CLI, "guest", "qemu", "--cmdline", "init=sh", "--timeout", "120"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        seen = read_until(p, b"$ ")
        # the shell's prompt (init=sh needs the initrd) arrived while QEMU still runs
        assert b"$ " in seen, seen[-2000:]
        assert p.poll() is None
    finally:
        p.kill()  # QEMU goes with it (PR_SET_PDEATHSIG): checked below
        p.wait()
    deadline = time.monotonic() + 20
    while _qemu_children_of(p.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _qemu_children_of(p.pid)


def _qemu_children_of(pid: int) -> list[int]:
    """QEMU processes whose parent is `pid` (an orphan would have been re-parented: also listed
    by its session, which is the killed process's own)."""
    import os

    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        alive = fields[0] not in ("Z", "X")  # a killed orphan may stay a zombie until it is reaped
        if "qemu-system" in stat and alive and (int(fields[1]) == pid or int(fields[3]) == pid):
            found.append(int(d))
    return found


def test_interactive_console_and_ctrl_c(kernel: Path) -> None:
    s = Serial([sys.executable, "-c", CLI, "guest", "qemu", "-i", "--cmdline", "init=sh", "--timeout", "120"])
    try:
        s.expect("$ ")
        s.type("oops\x03")
        assert "oops^C\n" in s.expect("$ ")
        s.type("echo hi\r")
        assert "\nhi\n" in s.expect("$ ")
        s.type("exit 0\r")
        s.expect('"event":"shutdown"', timeout=60)
    finally:
        code = s.close()
    assert code == 0


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_gdb_passes_through_to_qemu(kernel: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    q = subprocess.Popen([sys.executable, "-c", CLI, "guest", "qemu", "--gdb", str(port),
                          "--cmdline", "exit_after=5", "--timeout", "120"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        script = ["set confirm off", f"target remote 127.0.0.1:{port}", "break kmain", "continue",
                  "info registers eip", "delete", "continue"]
        g = subprocess.run(["gdb", "-batch", "-nx", *[a for c in script for a in ("-ex", c)], str(kernel)],
                           capture_output=True, text=True, timeout=180)
        out, err = q.communicate(timeout=120)
    finally:
        q.kill()
    assert "Breakpoint 1, kmain" in g.stdout, g.stdout + g.stderr
    assert "<kmain>" in g.stdout
    assert q.returncode == 0, err
