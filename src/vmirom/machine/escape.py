"""The interactive console's escape key: Ctrl-A followed by a command letter, as in QEMU's
`-serial mon:stdio`.

Why: with `vmirom run -i` every key goes to the guest, Ctrl-C included (the guest's shell abandons
its line on it), so the user needs another way out of a wedged guest.  QEMU users already know
Ctrl-A x.  Commands:

    Ctrl-A x        stop the VM (fate "quit"; the summary and crash state are still printed)
    Ctrl-A Ctrl-A   send one Ctrl-A to the guest
    Ctrl-A h        print this help on stderr
    anything else   ignored (both bytes dropped), as QEMU does
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = 0x01  # Ctrl-A
HELP = (
    "\r\nvmirom console escapes:\r\n"
    "  Ctrl-A x       stop the VM\r\n"
    "  Ctrl-A Ctrl-A  send Ctrl-A to the guest\r\n"
    "  Ctrl-A h       this help\r\n"
)


@dataclass
class ConsoleEscape:
    """A byte filter between the terminal and the UART (state survives between reads, so the
    prefix and its command may arrive in different reads)."""

    armed: bool = False

    def filter(self, data: bytes) -> tuple[bytes, str | None]:
        """Split `data` into (bytes for the guest, command or None).  On "quit" the rest of the input
        is dropped: the VM is about to stop."""
        out = bytearray()
        command = None
        for b in data:
            if self.armed:
                self.armed = False
                if b in (ord("x"), ord("X")):
                    return bytes(out), "quit"
                if b == PREFIX:
                    out.append(PREFIX)
                elif b in (ord("h"), ord("H"), ord("?")):
                    command = "help"
                continue
            if b == PREFIX:
                self.armed = True
                continue
            out.append(b)
        return bytes(out), command
