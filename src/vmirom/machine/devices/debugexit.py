"""The debug-exit port (QEMU's isa-debug-exit at 0xF4): the guest writes its exit status v.
QEMU exits with (v << 1) | 1; we report v itself as the guest's exit status."""

from __future__ import annotations

from collections.abc import Callable

PORT = 0xF4


class DebugExit:
    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self.on_exit = on_exit

    def port_in(self, port: int, size: int) -> int:
        return 0

    def port_out(self, port: int, size: int, value: int) -> None:
        self.on_exit(value)
