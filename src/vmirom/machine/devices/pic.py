"""The 8259A programmable interrupt controller pair (master 0x20/0x21, slave 0xA0/0xA1, cascade on
IRQ2), edge-triggered, with the initialization sequence, masking, priorities and EOI."""

from __future__ import annotations


class Pic8259:
    def __init__(self, base: int) -> None:
        self.base = base
        self.irr = 0
        self.isr = 0
        self.imr = 0xFF
        self.vector_base = 0x08 if base == 0x20 else 0x70
        self.init_step = 0  # 0 = operational; 1..3 = expecting ICW2..ICW4
        self.icw4_needed = False
        self.read_isr = False
        self.auto_eoi = False

    def raise_irq(self, line: int) -> None:
        self.irr |= 1 << line

    def lower_irq(self, line: int) -> None:
        self.irr &= ~(1 << line)

    def highest(self, bits: int) -> int | None:
        for i in range(8):
            if bits & (1 << i):
                return i
        return None

    def pending(self) -> int | None:
        """The IRQ line the PIC would present now, honouring mask and in-service priority."""
        line = self.highest(self.irr & ~self.imr)
        if line is None:
            return None
        busy = self.highest(self.isr)
        if busy is not None and busy <= line:
            return None
        return line

    def ack(self, line: int) -> None:
        self.irr &= ~(1 << line)
        if not self.auto_eoi:
            self.isr |= 1 << line

    def port_in(self, port: int, size: int) -> int:
        if port == self.base:
            return self.isr if self.read_isr else self.irr
        return self.imr

    def port_out(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == self.base:
            if value & 0x10:  # ICW1
                self.init_step, self.icw4_needed = 1, bool(value & 1)
                self.imr, self.isr, self.irr, self.auto_eoi = 0, 0, 0, False
            elif value & 0x08:  # OCW3
                if value & 0x02:
                    self.read_isr = bool(value & 1)
            else:  # OCW2
                cmd = value >> 5
                if cmd == 1:  # non-specific EOI
                    line = self.highest(self.isr)
                    if line is not None:
                        self.isr &= ~(1 << line)
                elif cmd == 3:  # specific EOI
                    self.isr &= ~(1 << (value & 7))
        else:
            if self.init_step == 1:  # ICW2
                self.vector_base = value & 0xF8
                self.init_step = 2
            elif self.init_step == 2:  # ICW3 (cascade wiring: fixed)
                self.init_step = 3 if self.icw4_needed else 0
            elif self.init_step == 3:  # ICW4
                self.auto_eoi = bool(value & 2)
                self.init_step = 0
            else:  # OCW1
                self.imr = value


class PicPair:
    """Master + slave.  `pending_vector()` / `acknowledge()` are what the CPU side uses."""

    def __init__(self) -> None:
        self.master = Pic8259(0x20)
        self.slave = Pic8259(0xA0)

    def raise_irq(self, irq: int) -> None:
        if irq >= 8:
            self.slave.raise_irq(irq - 8)
            self.master.raise_irq(2)
        else:
            self.master.raise_irq(irq)

    def _slave_line(self) -> int | None:
        return self.slave.pending()

    def pending_irq(self) -> int | None:
        line = self.master.pending()
        if line == 2:
            s = self._slave_line()
            if s is None:
                self.master.lower_irq(2)
                return self.pending_irq()
            return 8 + s
        return line

    def pending_vector(self) -> int | None:
        irq = self.pending_irq()
        if irq is None:
            return None
        return (self.slave.vector_base + irq - 8) if irq >= 8 else self.master.vector_base + irq

    def acknowledge(self) -> int | None:
        """INTA: returns the vector and moves the IRQ to in-service."""
        irq = self.pending_irq()
        if irq is None:
            return None
        if irq >= 8:
            self.slave.ack(irq - 8)
            self.master.ack(2)
            if not self.slave.irr & ~self.slave.imr:
                self.master.lower_irq(2)
            return self.slave.vector_base + irq - 8
        self.master.ack(irq)
        return self.master.vector_base + irq

    def port_in(self, port: int, size: int) -> int:
        return (self.master if port < 0x80 else self.slave).port_in(port, size)

    def port_out(self, port: int, size: int, value: int) -> None:
        (self.master if port < 0x80 else self.slave).port_out(port, size, value)

    PORTS = (0x20, 0x21, 0xA0, 0xA1)
