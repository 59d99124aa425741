"""Real gdb (batch mode) against `vmirom run --gdb PORT --wait` on bare, vmi and fullvirt: a
breakpoint at kmain, registers (segment and control registers too), a variable, stepping, a
backtrace and a continue to the guest's clean exit.  And the protocol's other half driven by hand:
Ctrl-C while running, memory through the page tables, kill."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmirom.debug.gdbstub import checksum
from vmirom.guest.build import GUEST_DIR, build_kernel

CLI = "import sys; from vmirom.cli import main; sys.argv[0] = 'vmirom'; main()"
RING = {"bare": 0, "vmi": 1, "fullvirt": 1}


@pytest.fixture(scope="module")
def kernel() -> Path:
    return build_kernel()


class Vm:
    """`vmirom run --gdb 127.0.0.1:0 --wait ...` in the background; `port` is the one it chose."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLI, "run", "--gdb", "127.0.0.1:0", "--timeout", "300", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = ""
        deadline = time.monotonic() + 120
        while "gdb stub listening" not in line:
            line = self.proc.stderr.readline()
            if not line and (self.proc.poll() is not None or time.monotonic() > deadline):
                raise AssertionError(f"no gdb stub: {self.proc.stdout.read()}")
        self.port = int(re.search(r":(\d+)", line.split("listening on")[1]).group(1))

    def finish(self) -> tuple[int, str]:
        try:
            out, err = self.proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out + err


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed (scripts/setup.sh)")
@pytest.mark.parametrize("hypervisor", ["bare", "vmi", "fullvirt"])
def test_gdb_breaks_in_kmain_steps_and_continues_to_exit(kernel: Path, hypervisor: str) -> None:
    vm = Vm("-H", hypervisor, "--wait", "--cmdline", "exit_after=5", str(kernel))
    script = [
        "set confirm off", "set pagination off", f"directory {GUEST_DIR}",
        f"target remote 127.0.0.1:{vm.port}",
        "break kmain", "continue",
        "info registers",
        "stepi", "next",
        "tbreak uart_init", "continue",  # kmain has set kernel_ring by the time it calls uart_init
        "print kernel_ring",
        "print/x $cs",
        "bt",
        "delete", "continue",
    ]
    cmd = ["gdb", "-batch", "-nx", *[a for c in script for a in ("-ex", c)], str(kernel)]
    g = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    code, vm_out = vm.finish()
    out = g.stdout + g.stderr
    assert "Breakpoint 1, kmain (magic=732803074" in out, out  # 0x2BADB002: the Multiboot magic
    regs = dict(re.findall(r"^(\w+)\s+(0x[0-9a-f]+)", out, flags=re.M))
    assert "<kmain>" in out
    assert int(regs["cs"], 16) & 3 == RING[hypervisor]
    assert int(regs["ss"], 16) & 3 == RING[hypervisor]
    assert int(regs["cr0"], 16) & 0x80000001 == 0x80000001  # protected mode, paging on
    assert int(regs["cr3"], 16) and "cr4" in regs
    assert f"$1 = {RING[hypervisor]}" in out  # kernel_ring = read_cs() & 3, after `next`
    assert re.search(r"\$2 = 0x[0-9a-f]*" + "89"[RING[hypervisor]], out), out
    assert re.search(r"#0\s+.*uart_init \(", out) and re.search(r"#1\s+.*kmain \(", out), out
    assert re.search(r"^7\d\s", out, flags=re.M), out  # `next` reached a later source line of kmain
    assert "exited normally" in out, out
    assert code == 0, vm_out[-3000:]


class Rsp:
    """A minimal gdb remote-protocol client (what gdb sends, byte for byte)."""

    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.buf = b""

    def send(self, payload: str) -> None:
        raw = payload.encode()
        self.s.sendall(b"$" + raw + b"#" + f"{checksum(raw):02x}".encode())

    def reply(self) -> str:
        while True:
            m = re.search(rb"\$([^#]*)#[0-9a-f]{2}", self.buf)
            if m:
                self.buf = self.buf[m.end():]
                self.s.sendall(b"+")
                return m.group(1).decode()
            chunk = self.s.recv(4096)
            assert chunk, "the stub closed the connection"
            self.buf += chunk

    def ask(self, payload: str) -> str:
        self.send(payload)
        return self.reply()


def test_protocol_ctrl_c_memory_and_kill(kernel: Path) -> None:
    vm = Vm("-H", "vmi", "--cmdline", "init=sh", "--timeout", "120", str(kernel))
    r = Rsp(vm.port)
    assert "swbreak+" in r.ask("qSupported:swbreak+;hwbreak+")
    assert r.ask("?").startswith("S05")
    assert r.ask("qXfer:features:read:target.xml:0,ffff").startswith("l<?xml")
    r.send("c")  # runs until the shell waits for input, then idles
    time.sleep(2)
    r.s.sendall(b"\x03")
    assert r.reply().startswith("T02")
    regs = r.ask("g")
    cr0_at = 16 * 8 + 8 * 20 + 8 * 8  # core, st0-7, x87 control (hex digits), then cr0
    cr0 = int.from_bytes(bytes.fromhex(regs[cr0_at : cr0_at + 8]), "little")
    assert cr0 & 0x80000001 == 0x80000001  # protected mode, paging on: the shell is running
    assert "x" in regs  # the x87 registers are reported unavailable, not made up
    # memory goes through the guest's page tables: the kernel's text is mapped at 0xC0100000 ...
    assert len(r.ask("mc0100000,10")) == 32
    # ... and an unmapped linear address is an error, not a host crash
    assert r.ask("m10000000,10").startswith("E")
    assert r.ask("Z0,c0100000,1") == "OK" and r.ask("z0,c0100000,1") == "OK"
    assert r.ask("qRcmd," + b"state".hex()).startswith("O")
    r.send("k")
    code, out = vm.finish()
    assert code == 9 and "killed by gdb" in out


def test_time_stopped_in_gdb_is_not_charged_to_the_budget(kernel: Path) -> None:
    """--timeout 4, and gdb holds the VM stopped for 6 s: the guest still runs to its clean exit."""
    vm = Vm("-H", "bare", "--wait", "--cmdline", "exit_after=5", str(kernel), "--timeout", "4")
    r = Rsp(vm.port)
    assert r.ask("?").startswith("S05")
    time.sleep(6)
    r.send("c")
    assert r.reply() == "W00"
    code, out = vm.finish()
    assert code == 0, out[-2000:]
