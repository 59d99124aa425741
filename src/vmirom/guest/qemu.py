"""Booting a kernel on real QEMU (`qemu-system-i386 -kernel`), for tests and benchmarks.

The guest's console is COM1, captured from QEMU's stdout.  The guest ends a run by writing a
status to port 0xF4 (`isa-debug-exit`), which makes QEMU exit with code (status << 1) | 1; any
other way QEMU stops (triple fault with -no-reboot, a crash, our timeout) is reported as such.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmirom.procutil import die_with_parent

from .console import parse_events

QEMU = "qemu-system-i386"
DEBUG_EXIT_PORT = 0xF4


class QemuError(Exception):
    """QEMU could not be started (missing binary, bad file)."""


def qemu_available() -> bool:
    """Whether qemu-system-i386 is on PATH."""
    return shutil.which(QEMU) is not None


@dataclass
class QemuResult:
    """What one QEMU run produced."""

    console: str                 # everything the guest wrote to COM1
    returncode: int | None       # QEMU's exit code (None if we had to kill it)
    timed_out: bool
    elapsed: float               # wall seconds from start to exit
    command: list[str]
    stderr: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def qemu_error(self) -> str | None:
        """QEMU's own complaint when it refused to start the guest (e.g. "invalid kernel header").

        QEMU exits with code 1 then, which is also what a guest's status 0 at port 0xF4 gives
        ((0 << 1) | 1).  What tells them apart: a refused guest never printed anything, and QEMU
        said why on stderr."""
        if self.returncode != 1 or self.console.strip():
            return None
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else None

    @property
    def exit_status(self) -> int | None:
        """The status the guest wrote to port 0xF4, or None if it did not exit that way."""
        if self.timed_out or self.returncode is None or self.returncode % 2 == 0 or self.qemu_error:
            return None
        return self.returncode >> 1

    @property
    def clean(self) -> bool:
        """The guest shut down by itself with status 0."""
        return self.exit_status == 0


def qemu_command(kernel: str | Path, *, cmdline: str = "", option_rom: str | Path | None = None,
                 initrd: str | Path | None = None, memory_mb: int = 128,
                 extra_args: Sequence[str] = ()) -> list[str]:
    """The qemu-system-i386 command line for one boot (serial on stdio, no display, no NIC)."""
    cmd = [QEMU, "-accel", "tcg", "-m", str(memory_mb), "-kernel", str(kernel),
           "-display", "none", "-monitor", "none", "-serial", "stdio", "-net", "none",
           "-no-reboot", "-device", f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=4"]
    if cmdline:
        cmd += ["-append", cmdline]
    if option_rom is not None:
        cmd += ["-option-rom", str(option_rom)]
    if initrd is not None:
        cmd += ["-initrd", str(initrd)]
    return cmd + list(extra_args)


def run_kernel(kernel: str | Path, *, cmdline: str = "", option_rom: str | Path | None = None,
               initrd: str | Path | None = None, memory_mb: int = 128, timeout: float = 60.0,
               input_bytes: bytes | None = None, extra_args: Sequence[str] = (),
               stream: Callable[[bytes], None] | None = None, interactive: bool = False) -> QemuResult:
    """Boot `kernel` under QEMU and wait until it exits or `timeout` seconds pass.

    `input_bytes`, if given, is fed to the guest's serial port (then end of input).  `stream` gets the
    console's bytes as they arrive (`vmirom guest qemu` shows them live).  `interactive`: the serial
    port is our own stdin/stdout terminal, through a QEMU mux without signals, so Ctrl-C reaches
    the guest and Ctrl-A x quits, as with `vmirom run -i`."""
    if not qemu_available():
        raise QemuError(f"{QEMU} not found: install the Debian package qemu-system-x86")
    for path in (kernel, option_rom, initrd):
        if path is not None and not Path(path).is_file():
            raise QemuError(f"no such file: {path}")
    cmd = qemu_command(kernel, cmdline=cmdline, option_rom=option_rom, initrd=initrd,
                       memory_mb=memory_mb, extra_args=extra_args)
    if interactive:
        at = cmd.index("-serial")
        cmd[at : at + 2] = ["-chardev", "stdio,id=con,mux=on,signal=off", "-serial", "chardev:con"]
    start = time.monotonic()
    stdin = None if interactive else subprocess.PIPE if input_bytes is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=die_with_parent)  # a killed vmirom leaves no QEMU behind
    except OSError as e:
        raise QemuError(f"cannot start {QEMU}: {e}") from e
    if input_bytes is not None and not interactive:
        try:
            proc.stdin.write(input_bytes)
            proc.stdin.close()
        except OSError:
            pass
    out, err, timed_out = _collect(proc, start + timeout, stream)
    elapsed = time.monotonic() - start
    console = out.decode("utf-8", errors="replace").replace("\r\n", "\n")
    return QemuResult(console=console, returncode=None if timed_out else proc.returncode,
                      timed_out=timed_out, elapsed=elapsed, command=cmd,
                      stderr=err.decode("utf-8", errors="replace"), events=parse_events(console))


def _collect(proc: subprocess.Popen, deadline: float, stream: Callable[[bytes], None] | None
             ) -> tuple[bytes, bytes, bool]:
    """QEMU's stdout and stderr until it exits (passing stdout to `stream` as it comes), or kill it
    at `deadline`."""
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    open_fds = set(bufs)
    timed_out = False
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            proc.kill()
            break
        ready, _, _ = select.select(list(open_fds), [], [], min(left, 0.5))
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
                continue
            bufs[fd] += chunk
            if stream is not None and fd == out_fd:
                stream(chunk)
    proc.wait()
    for f, fd in ((proc.stdout, out_fd), (proc.stderr, err_fd)):
        if fd in open_fds:  # killed: what it wrote before dying
            bufs[fd] += f.read() or b""
        f.close()
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), timed_out
