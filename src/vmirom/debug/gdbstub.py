"""A gdb remote stub for the guest's vCPU: `vmirom run --gdb [HOST:]PORT [--wait]`.

    gdb guest/build/kernel.elf -ex 'target remote :1234'
    (gdb) break kmain / continue / info registers / print ticks / stepi / next / bt / continue

Why our own and not `udbserver` (PyPI, Rust, the one maintained Unicorn gdb stub): it owns the
emulation loop inside a hook, keeps a code hook over EVERY address while the guest runs (every
instruction pays a callback and our exit counts change), reads memory with `uc_mem_read`, which on
our machine is guest-PHYSICAL (the kernel lives at 0xC0000000 linear), and knows nothing of our
slices, fates, interrupt delivery or de-privileged rings.  The remote protocol subset gdb needs for
one 32-bit CPU is small, so it is written here, on top of the machine's own services:

* registers: the i386 core set (eax..edi, eip, eflags, cs..gs) plus CR0/CR2/CR3/CR4 in a feature of
  our own (target.xml), so `info registers` shows them; the x87 registers are reported unavailable;
* memory (m/M): LINEAR addresses through the guest's page tables (`Paging`, supervisor access),
  exactly what the CPU would see; a debugger write may change read-only pages but never the ROM;
* breakpoints (Z0/Z1): one engine code hook on the breakpoint address only, nothing per
  instruction.  Breakpoints therefore change no exit count; only where the user stops do slices
  end early (like QEMU's gdbstub, which also never writes int3 into the guest);
* single step (s, vCont;s): one counted slice of one instruction, with no interrupt injected
  (QEMU's default `SSTEP_NOIRQ`); an exit inside it is handled as usual;
* continue (c, vCont;c), Ctrl-C (0x03 while running: T02), kill (k: fate "quit"), detach (D);
* the end of the run: a clean exit reports W<status> to gdb; any other fate stops once more with
  SIGSEGV so registers and memory can still be inspected (`monitor state` prints the crash report).

The stub runs in the VM's process, between slices (`Machine.debugger`): a stop is a blocking wait
for gdb's next command there.  Time stopped is neither guest time (the guest clock is the vCPU
thread's CPU time) nor charged to the --timeout budget (`Machine.paused_s`).

Limits: one vCPU, no watchpoints (Z2-Z4 answer "unsupported"); a breakpoint hook can be skipped
while a slice-timer stop is pending (engine W14), rarely: use --deterministic to rule that out.
"""

from __future__ import annotations

import select
import socket
import struct
import sys
import time
from typing import TYPE_CHECKING

from vmirom.engines.base import EngineError
from vmirom.machine.faults import GuestFault

if TYPE_CHECKING:
    from vmirom.machine import Machine

SIGINT, SIGTRAP, SIGSEGV = 2, 5, 11
CORE = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags",
        "cs", "ss", "ds", "es", "fs", "gs")  # fmt: skip
SYSTEM = ("cr0", "cr2", "cr3", "cr4")
#: gdb's register numbers: 0-15 core, 16-23 st0-st7 (10 bytes), 24-31 x87 control (4 bytes), then ours
FPU_ST, FPU_CTRL = range(16, 24), range(24, 32)
SYS_BASE = 32
PACKET_SIZE = 0x4000


def _regs_xml() -> str:
    core = []
    types = {"esp": "data_ptr", "ebp": "data_ptr", "eip": "code_ptr", "eflags": "i386_eflags"}
    for n in CORE:
        kind = types.get(n, "int32")
        core.append(f'<reg name="{n}" bitsize="32" type="{kind}"/>')
    core += [f'<reg name="st{i}" bitsize="80" type="i387_ext"/>' for i in range(8)]
    core += [
        f'<reg name="{n}" bitsize="32" type="int" group="float"/>'
        for n in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
    ]
    flags = "".join(
        f'<field name="{n}" start="{b}" end="{b}"/>'
        for b, n in ((0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
                     (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"))  # fmt: skip
    )
    system = "".join(f'<reg name="{n}" bitsize="32" type="int32" group="general"/>' for n in SYSTEM)
    return (
        '<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target version="1.0">'
        "<architecture>i386</architecture>"
        f'<feature name="org.gnu.gdb.i386.core"><flags id="i386_eflags" size="4">{flags}</flags>'
        f'{"".join(core)}</feature>'
        f'<feature name="org.vmirom.i386.system">{system}</feature></target>'
    )


TARGET_XML = _regs_xml()


def parse_address(spec: str) -> tuple[str, int]:
    """"[HOST:]PORT" -> (host, port); the host defaults to 127.0.0.1 (never all interfaces by
    accident: the stub can read and write the guest's memory)."""
    host, _, port = spec.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--gdb wants [HOST:]PORT, not {spec!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"--gdb port {number} out of range")
    return host or "127.0.0.1", number


def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def _le32(v: int) -> str:
    return struct.pack("<I", v & 0xFFFFFFFF).hex()


class _Resume(Exception):
    """Leave the command loop: the guest runs again (or the VM ends)."""


class GdbStub:
    """One gdb connection to one Machine (see the module docstring)."""

    def __init__(self, machine: Machine, host: str = "127.0.0.1", port: int = 1234, *, wait: bool = False,
                 log=None) -> None:
        self.m = machine
        self.log = log or sys.stderr
        self.listener = socket.create_server((host, port))
        self.address = self.listener.getsockname()[:2]
        self.conn: socket.socket | None = None
        self.wait = wait
        self.breakpoints: dict[int, tuple[str, int]] = {}  # linear address -> (kind, engine hook)
        self.hit: tuple[int, str] | None = None  # set by a breakpoint hook, reported between slices
        self.no_ack = False
        self.last_stop = f"S{SIGTRAP:02x}"
        self.final = False  # the run has ended: only inspection is left
        self._buf = b""
        self._stepping_from: int | None = None
        self._say(
            f"gdb stub listening on {self.address[0]}:{self.address[1]}"
            + (" - waiting for gdb before the first instruction" if wait else "")
        )

    def _say(self, text: str) -> None:
        try:
            self.log.write(f"vmirom: {text}\n")
            self.log.flush()
        except (OSError, ValueError):
            pass

    # -- between slices (Machine.run) ------------------------------------------------------------
    def between_slices(self) -> None:
        if self.conn is None:
            if self.wait:
                self.wait = False
                self._accept()
            elif select.select([self.listener], [], [], 0)[0]:
                self._accept()
            if self.conn is not None:  # gdb asks '?' first: no unsolicited stop reply
                self._stopped(None)
            return
        if self.hit is not None:
            _addr, kind = self.hit
            self.hit = None
            self._stopped(f"T{SIGTRAP:02x}{kind}break:;")
            return
        if select.select([self.conn], [], [], 0)[0]:
            data = self._recv_some()
            if data is None:
                return
            if b"\x03" in data:  # Ctrl-C in gdb
                self._stopped(f"T{SIGINT:02x}")
            else:
                self._buf += data.lstrip(b"+-")

    def finish(self) -> None:
        """The run ended: tell gdb how (W status for an exit), or let it inspect a crashed vCPU."""
        try:
            if self.conn is not None and self.m.fate == "exit":
                self._send(f"W{(self.m.exit_status or 0) & 0xFF:02x}")
            elif self.conn is not None and self.m.fate != "quit":
                self.final = True
                self._say(f"the guest ended ({self.m.fate}); gdb may inspect it, continue ends the session")
                self._stopped(f"T{SIGSEGV:02x}")
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        for addr in list(self.breakpoints):
            self._remove_breakpoint(addr)
        for s in (self.conn, self.listener):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self.conn = None

    # -- connection ---------------------------------------------------------------------------------
    def _accept(self) -> None:
        t0 = time.monotonic()
        try:
            conn, peer = self.listener.accept()
        except OSError as e:
            self._say(f"gdb connection failed: {e}")
            return
        finally:
            self.m.paused_s += time.monotonic() - t0
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn, self.no_ack, self._buf = conn, False, b""
        self._say(f"gdb connected from {peer[0]}:{peer[1]}")

    def _drop(self, why: str = "gdb disconnected; the guest runs on") -> None:
        """gdb went away (or detached): remove its breakpoints and let the guest run on."""
        self._say(why)
        for addr in list(self.breakpoints):
            self._remove_breakpoint(addr)
        try:
            self.conn.close()
        except OSError:
            pass
        self.conn = None

    def _recv_some(self) -> bytes | None:
        try:
            data = self.conn.recv(4096)
        except OSError:
            data = b""
        if not data:
            self._drop()
            return None
        return data

    def _packet(self) -> str | None:
        """The next packet's payload (blocking), acknowledged; None when gdb went away."""
        while True:
            start = self._buf.find(b"$")
            if start >= 0:
                end = self._buf.find(b"#", start)
                if end >= 0 and len(self._buf) >= end + 3:
                    payload = self._buf[start + 1 : end]
                    given = self._buf[end + 1 : end + 3]
                    self._buf = self._buf[end + 3 :]
                    ok = given.lower() == f"{checksum(payload):02x}".encode()
                    if not self.no_ack:
                        self.conn.sendall(b"+" if ok else b"-")
                    if ok:
                        return payload.decode("latin-1")
                    continue
            else:
                self._buf = b""  # acks, a stray Ctrl-C while stopped
            data = self._recv_some()
            if data is None:
                return None
            self._buf += data

    def _send(self, payload: str) -> None:
        raw = payload.encode("latin-1")
        self.conn.sendall(b"$" + raw + b"#" + f"{checksum(raw):02x}".encode())

    # -- the command loop --------------------------------------------------------------------------
    def _stopped(self, reply: str | None) -> None:
        """The guest is stopped: report `reply` (unless gdb will ask) and serve commands until gdb
        resumes it, detaches or kills it."""
        t0 = time.monotonic()
        try:
            if reply is not None:
                self.last_stop = reply
                self._send(reply)
            while self.conn is not None:
                pkt = self._packet()
                if pkt is None:
                    break
                try:
                    answer = self._handle(pkt)
                except _Resume:
                    break
                if answer is not None:
                    self._send(answer)
        except OSError:
            self._drop()
        finally:
            self.m.paused_s += time.monotonic() - t0

    def _handle(self, pkt: str) -> str | None:
        head = pkt[:1]
        if pkt == "?":
            return self.last_stop
        if head == "g":
            return self._read_all_registers()
        if head == "G":
            return self._write_all_registers(pkt[1:])
        if head == "p":
            return self._read_register(int(pkt[1:], 16))
        if head == "P":
            n, _, value = pkt[1:].partition("=")
            return self._write_register(int(n, 16), bytes.fromhex(value))
        if head == "m":
            addr, _, length = pkt[1:].partition(",")
            return self._read_memory(int(addr, 16), int(length, 16))
        if head == "M":
            where, _, data = pkt[1:].partition(":")
            addr, _, length = where.partition(",")
            return self._write_memory(int(addr, 16), bytes.fromhex(data)[: int(length, 16)])
        if head in ("Z", "z") and pkt[1:2] in ("0", "1"):
            _, addr, _kind = pkt.split(",", 2)
            kind = "sw" if pkt[1] == "0" else "hw"
            if head == "Z":
                return self._insert_breakpoint(int(addr, 16), kind)
            self._remove_breakpoint(int(addr, 16))
            return "OK"
        if head in ("c", "C"):
            self._resume(step=False, addr=pkt[1:] if head == "c" else pkt.partition(";")[2])
        if head in ("s", "S"):
            return self._resume(step=True, addr=pkt[1:] if head == "s" else pkt.partition(";")[2])
        if pkt == "vCont?":
            return "vCont;c;C;s;S"
        if pkt.startswith("vCont;"):
            action = pkt[6:].split(";")[0].split(":")[0]
            return self._resume(step=action[:1] in ("s", "S"), addr="")
        if head == "k" or pkt.startswith("vKill"):
            self.m.stop("quit", "killed by gdb")
            self.final = True
            if head == "k":
                raise _Resume
            return "OK"
        if head == "D":
            self._send("OK")
            self._drop("gdb detached; the guest runs on")
            raise _Resume
        return self._query(pkt)

    def _query(self, pkt: str) -> str:
        if pkt.startswith("qSupported"):
            return (
                f"PacketSize={PACKET_SIZE:x};qXfer:features:read+;swbreak+;hwbreak+;"
                "vContSupported+;QStartNoAckMode+"
            )
        if pkt == "QStartNoAckMode":
            self._send("OK")
            self.no_ack = True
            return None
        if pkt.startswith("qXfer:features:read:target.xml:"):
            off, _, length = pkt.rsplit(":", 1)[1].partition(",")
            off, length = int(off, 16), int(length, 16)
            chunk = TARGET_XML[off : off + length]
            return ("l" if off + length >= len(TARGET_XML) else "m") + chunk
        if pkt == "qAttached":
            return "1"
        if pkt == "qC":
            return "QC1"
        if pkt == "qfThreadInfo":
            return "m1"
        if pkt == "qsThreadInfo":
            return "l"
        if pkt[:1] in ("H", "T"):
            return "OK"
        if pkt.startswith("qSymbol"):
            return "OK"
        if pkt.startswith("qRcmd,"):
            return self._monitor(bytes.fromhex(pkt[6:]).decode("latin-1").strip())
        return ""  # not supported: gdb falls back or says so

    def _monitor(self, command: str) -> str:
        """`monitor state` (the crash report of the vCPU as it is now), `monitor exits` (counters)."""
        from vmirom.debug.crashdump import capture, format_text

        if command in ("state", "info registers", "regs"):
            text = format_text(capture(self.m))
        elif command == "exits":
            d = self.m.metrics.as_dict()
            text = f"{d['total_exits']} exits: " + ", ".join(f"{k} {v}" for k, v in d["kinds"].items())
        else:
            text = "vmirom monitor commands: state, exits"
        self._send("O" + (text + "\n").encode().hex())
        return "OK"

    # -- registers --------------------------------------------------------------------------------
    def _reg_hex(self, n: int) -> str:
        eng = self.m.engine
        if n < len(CORE):
            return _le32(eng.reg(CORE[n]))
        if n in FPU_ST:
            return "xx" * 10
        if n in FPU_CTRL:
            return "xx" * 4
        if SYS_BASE <= n < SYS_BASE + len(SYSTEM):
            return _le32(eng.reg(SYSTEM[n - SYS_BASE]))
        raise KeyError(n)

    def _read_all_registers(self) -> str:
        return "".join(self._reg_hex(n) for n in range(SYS_BASE + len(SYSTEM)))

    def _read_register(self, n: int) -> str:
        try:
            return self._reg_hex(n)
        except KeyError:
            return "E45"

    def _name(self, n: int) -> str | None:
        if n < len(CORE):
            return CORE[n]
        if SYS_BASE <= n < SYS_BASE + len(SYSTEM):
            return SYSTEM[n - SYS_BASE]
        return None

    def _write_register(self, n: int, raw: bytes) -> str:
        name = self._name(n)
        if name is None or len(raw) < 4:
            return "E45"
        value = struct.unpack_from("<I", raw)[0]
        eng = self.m.engine
        if eng.reg(name) == value:
            return "OK"
        try:
            eng.set_reg(name, value)
        except EngineError as e:
            self._say(f"gdb: cannot set {name}={value:#x}: {e}")
            return "E01"
        if name in ("cr0", "cr3", "cr4"):
            eng.flush_tlb()
        return "OK"

    def _write_all_registers(self, data: str) -> str:
        raw = bytes.fromhex(data.replace("x", "0"))
        offsets = [4 * i for i in range(len(CORE))]
        sys_at = 4 * len(CORE) + 10 * len(FPU_ST) + 4 * len(FPU_CTRL)
        offsets += [sys_at + 4 * i for i in range(len(SYSTEM))]
        numbers = [*range(len(CORE)), *range(SYS_BASE, SYS_BASE + len(SYSTEM))]
        for n, off in zip(numbers, offsets, strict=True):
            if off + 4 <= len(raw) and self._write_register(n, raw[off : off + 4]) != "OK":
                return "E01"
        return "OK"

    # -- memory -------------------------------------------------------------------------------------
    def _pages(self, addr: int, length: int):
        while length > 0:
            n = min(length, 0x1000 - (addr & 0xFFF))
            yield addr, n
            addr = (addr + n) & 0xFFFFFFFF
            length -= n

    def _read_memory(self, addr: int, length: int) -> str:
        out = bytearray()
        for lin, n in self._pages(addr, min(length, PACKET_SIZE // 2)):
            try:
                out += self.m.paging.read(lin, n)
            except GuestFault:
                break
        return out.hex() if out or not length else "E14"

    def _write_memory(self, addr: int, data: bytes) -> str:
        """Debugger writes go past the W bit (as on real hardware debuggers), not into the ROM."""
        done = 0
        for lin, n in self._pages(addr, len(data)):
            try:
                phys = self.m.paging.translate(lin)
                self.m.memory.write(phys, data[done : done + n])
            except GuestFault:
                return "E14"
            self.m.engine.invalidate_code(phys, phys + n)
            done += n
        return "OK"

    # -- breakpoints ----------------------------------------------------------------------------------
    def _insert_breakpoint(self, addr: int, kind: str) -> str:
        if addr in self.breakpoints:
            return "OK"
        eng = self.m.engine

        def hit() -> None:
            if self._stepping_from == addr:  # the instruction being stepped from / over
                return
            self.hit = (addr, kind)
            eng.uncount_current()
            eng.stop()

        self.breakpoints[addr] = (kind, eng.add_code_hook(addr, hit))
        self._retranslate(addr)
        return "OK"

    def _remove_breakpoint(self, addr: int) -> None:
        entry = self.breakpoints.pop(addr, None)
        if entry is not None:
            self.m.engine.remove_hook(entry[1])
            self._retranslate(addr)

    def _retranslate(self, addr: int) -> None:
        """A code hook takes effect in blocks translated after it: drop the cached block holding
        `addr` (none exists if the page is not mapped yet)."""
        try:
            phys = self.m.paging.translate(addr, fetch=True)
        except GuestFault:
            return
        self.m.engine.invalidate_code(phys, phys + 1)

    # -- running ------------------------------------------------------------------------------------
    def _resume(self, *, step: bool, addr: str) -> str | None:
        if self.final:
            if self.m.fate == "exit":
                self._send(f"W{(self.m.exit_status or 0) & 0xFF:02x}")
            else:
                self._send(f"X{SIGSEGV:02x}")
            raise _Resume
        eng = self.m.engine
        if addr:
            eng.set_reg("eip", int(addr, 16))
        if step or eng.reg("eip") in self.breakpoints:
            self._step_one()
            if self.m.fate is not None:
                raise _Resume
            if step:
                return f"T{SIGTRAP:02x}"
        raise _Resume

    def _step_one(self) -> None:
        """Run exactly one instruction (no interrupt injected; an exit it causes is handled, and what
        follows a slice - a parked fault, a halt, the privilege checks - follows it too)."""
        m = self.m
        if m.halted:
            return  # a halted CPU waits for an interrupt; `continue` lets one come
        eng = m.engine
        self._stepping_from = eng.reg("eip")
        m.prepare_slice()
        try:
            res = eng.run_slice(0, count=1)
        finally:
            self._stepping_from = None
        self.hit = None
        m.finish_slice(res)
