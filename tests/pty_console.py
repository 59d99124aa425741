"""A guest console on a pseudo-terminal, typed at like a person at a terminal (one key at a time),
and the shell session that the QEMU and the VMM interactive tests both run."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
import tty


class Serial:
    """A command whose terminal is a pseudo-terminal we type at (QEMU's serial, `vmirom run -i`)."""

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


def run_shell_session(s: Serial) -> None:
    """Type a few pipelines at the reference kernel's `sh`, check what they print, then exit it."""
    s.expect("$ ")
    s.type("echo hello pipe world | wc\r")
    out = s.expect("$ ")
    assert "echo hello pipe world | wc\n" in out  # echoed as typed
    assert "\n1 3 17\n" in out
    s.type("ls | wc\r")
    assert "\n16 16 " in s.expect("$ ")
    s.type("cat motd | wc | cat\r")
    assert "\n3 34 197\n" in s.expect("$ ")
    s.type("nosuch\r")
    assert "nosuch: command not found" in s.expect("$ ")
    s.type("exit 0\r")
    s.expect('"event":"shutdown"', timeout=30)


def read_until(proc: subprocess.Popen, needle: bytes, timeout: float = 100) -> bytes:
    """What `proc` wrote on its stdout pipe up to `needle` (or until it stopped writing)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        chunk = proc.stdout.read1(4096)
        if not chunk:
            break
        seen += chunk
    return seen
