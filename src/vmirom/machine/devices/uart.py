"""A 16550 UART (COM1 at 0x3F8, IRQ4): transmit goes to a sink (the terminal) and into a captured
buffer that tools parse (e.g. VMIROM-JSON lines); receive reads from an input queue.  The transmitter
is infinitely fast, so LSR always shows it empty.

The interrupt rule of a real 16550: an interrupt source is raised whenever its condition holds AND
its IER bit is set, whichever became true last.  So enabling "received data available" (IER bit 0)
while bytes are already waiting raises IRQ4 at once, exactly like enabling "THR empty" (bit 1) with
the transmitter empty.  Without this, input that arrived before the kernel's `uart_init` enabled
the receive interrupt (piped input: `printf 'echo hi\n' | vmirom run -i`) was never announced and
the shell waited forever.

The compiled engine core (vmirom.engines.core, console.c) completes the hot cases - the LSR poll,
and THR writes inside a line that raise no interrupt - itself; the bytes it transmitted reach
`transmit` through `before_access`, which runs before anything here reads or changes the UART's
state, so the console sees every byte in order whichever path wrote it."""

from __future__ import annotations

from collections.abc import Callable


class Uart16550:
    def __init__(
        self,
        base: int = 0x3F8,
        sink: Callable[[bytes], None] | None = None,
        raise_irq: Callable[[], None] | None = None,
        capture_limit: int = 16 << 20,
    ) -> None:
        self.base = base
        self.sink = sink
        self.raise_irq = raise_irq or (lambda: None)
        self.captured = bytearray()
        self.capture_limit = capture_limit
        self.rx = bytearray()
        self.ier = self.lcr = self.mcr = self.scr = 0
        self.dll, self.dlm = 1, 0
        self.thre_pending = False
        self.last_tx = 0x0A  # the last byte transmitted (a line is open unless it was a newline)
        #: called before every access to the UART (the C core hands over the bytes it transmitted)
        self.before_access: Callable[[], None] | None = None

    @property
    def ports(self) -> range:
        return range(self.base, self.base + 8)

    def text(self) -> str:
        if self.before_access is not None:
            self.before_access()
        return self.captured.decode("utf-8", "replace")

    def transmit(self, data: bytes) -> None:
        """Bytes written to THR (no interrupt: the caller raises THRE itself): into the captured
        buffer up to its limit, and to the sink."""
        room = self.capture_limit - len(self.captured)
        if room > 0:
            self.captured += data[:room]
        if data:
            self.last_tx = data[-1]
        if self.sink is not None:
            self.sink(data)

    def feed(self, data: bytes) -> None:
        """Queue bytes for the guest to read."""
        if self.before_access is not None:
            self.before_access()
        self.rx += data
        if self.ier & 1:
            self.raise_irq()

    def port_in(self, port: int, size: int) -> int:
        if self.before_access is not None:
            self.before_access()
        r = port - self.base
        dlab = self.lcr & 0x80
        if r == 0:
            if dlab:
                return self.dll
            if self.rx:
                b = self.rx[0]
                del self.rx[0]
                return b
            return 0
        if r == 1:
            return self.dlm if dlab else self.ier
        if r == 2:  # IIR
            if self.ier & 1 and self.rx:
                return 0xC4
            if self.thre_pending:
                self.thre_pending = False
                return 0xC2
            return 0xC1
        if r == 3:
            return self.lcr
        if r == 4:
            return self.mcr
        if r == 5:  # LSR: THR empty + transmitter empty (+ data ready)
            return 0x60 | (1 if self.rx else 0)
        if r == 6:
            return 0xB0  # MSR: CTS, DSR, DCD
        return self.scr

    def port_out(self, port: int, size: int, value: int) -> None:
        if self.before_access is not None:
            self.before_access()
        r = port - self.base
        value &= 0xFF
        dlab = self.lcr & 0x80
        if r == 0:
            if dlab:
                self.dll = value
                return
            self.transmit(bytes([value]))
            if self.ier & 2:
                self.thre_pending = True
                self.raise_irq()
        elif r == 1:
            if dlab:
                self.dlm = value
            else:
                old, self.ier = self.ier, value & 0x0F
                if self.ier & 1 and not old & 1 and self.rx:  # data already waiting: announce it
                    self.raise_irq()
                if self.ier & 2:
                    self.thre_pending = True
                    self.raise_irq()
        elif r == 3:
            self.lcr = value
        elif r == 4:
            self.mcr = value
        elif r == 7:
            self.scr = value
