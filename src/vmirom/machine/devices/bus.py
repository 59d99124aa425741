"""The I/O port bus: dispatches `in`/`out` to the device that owns the port."""

from __future__ import annotations

from typing import Protocol


class PortDevice(Protocol):
    def port_in(self, port: int, size: int) -> int: ...
    def port_out(self, port: int, size: int, value: int) -> None: ...


class PortBus:
    """Ports nobody owns read as all-ones and ignore writes (like an ISA bus)."""

    def __init__(self) -> None:
        self._ports: dict[int, PortDevice] = {}

    def register(self, device: PortDevice, ports) -> None:
        for p in ports:
            self._ports[p] = device

    def port_in(self, port: int, size: int) -> int:
        dev = self._ports.get(port)
        return dev.port_in(port, size) if dev is not None else (1 << (8 * size)) - 1

    def port_out(self, port: int, size: int, value: int) -> None:
        dev = self._ports.get(port)
        if dev is not None:
            dev.port_out(port, size, value & ((1 << (8 * size)) - 1))
