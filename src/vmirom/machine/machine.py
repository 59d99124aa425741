"""The virtual PC and its run loop.

    while the guest has no fate:
        personality.before_slice()       # pending hypervisor work (e.g. deferred updates)
        update timers                    # PIT / VMI alarms -> PIC
        if halted: wait for an interrupt (skip idle time) or stop: "halt with nothing to wake"
        deliver a pending interrupt if the guest's IF allows
        run a slice of guest code        # exits are handled by the hooks below, inside the slice
        check the slice's end (engine error, wall-clock budget)

Every exit into Python is counted by kind in `self.metrics`.  Fates (why the VM stopped):
"exit" (debug-exit port; `exit_status` = the value), "triple_fault", "timeout", "halt_dead",
"rom_write", "bad_memory", "engine_error", "quit" (the user stopped it: Ctrl-A x, Ctrl-C, gdb kill),
"privilege_violation" (a de-privileged kernel found running below its ring, see `privilege_held`),
"unsupported" (V86 mode, PAE paging).
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vmirom.engines.base import EngineError, segment_descriptor
from vmirom.machine import loader
from vmirom.machine.clock import VirtualClock
from vmirom.machine.delivery import PAE_REFUSED, V86_REFUSED, Delivery
from vmirom.machine.devices import DebugExit, PicPair, Pit, PortBus, Uart16550
from vmirom.machine.dtguard import DescriptorGuard
from vmirom.machine.escape import HELP, ConsoleEscape
from vmirom.machine.faults import BP, GP, OF, PF, UD, GuestFault, TripleFault, UnsupportedState, VmError
from vmirom.machine.memory import DEFAULT_RAM, GuestMemory
from vmirom.machine.metrics import Metrics
from vmirom.machine.mmu import HIDDEN, ROM_WRITE, TRUE_FAULT, WP_TRAP, PhysMap, ShadowMMU
from vmirom.machine.mmu.cpuview import ShadowedEngine
from vmirom.machine.mmu.shadow import PROTECT_DESCRIPTORS
from vmirom.machine.paging import Paging
from vmirom.machine.vcpu import VCpu
from vmirom.procutil import peak_rss_kib

if TYPE_CHECKING:
    from vmirom.hypervisors.base import Personality

#: metrics detail keys of the hot exits, built once (Metrics.count would format and split each time)
_SOFTINT_KEYS = tuple(f"softint:{v:#x}" for v in range(256))
_EXCEPTION_KEYS = tuple(f"exception:{v}" for v in range(256))

ROM_BASE = 0xC0000
MAX_INPUT_WAIT_NS = 10_000_000  # a halted interactive guest looks for keys at least every 10 ms
BOOT_GDT = 0x800
BOOT_TSS = 0x900  # an all-zero 32-bit TSS: the TR the machine loads before the first instruction
BOOT_TSS_SEL = 0x38
BOOT_STACK = 0x7000
CR0_PG, CR4_PAE = 1 << 31, 0x20
IF = 0x200


@dataclass
class MachineConfig:
    ram_size: int = DEFAULT_RAM
    timeout_s: float | None = 60.0  # wall-clock budget for the whole run
    slice_us: int = 10_000  # longest slice of guest code between timer checks
    echo: object = None  # callable(bytes) for the console, e.g. the terminal
    #: a file descriptor whose bytes are typed on the console (the UART's receive side), e.g. 0 for an
    #: interactive terminal; None: no input.  With input, a halted guest waits in real time for a key
    #: or its next timer deadline instead of skipping idle time at once.
    console_input: int | None = None
    #: peak resident memory (KiB) the VM process may reach; checked after every slice (None: no
    #: check).  The runner sets it in its child process (docs/security.md, "host resources").
    max_rss_kib: int | None = None
    #: pool frames for shadow page tables (personalities with memory_model "shadow"; docs/mmu.md)
    shadow_pool_frames: int = 4096
    #: "python" (the reference path), "c" (the compiled engine core) or None: $VMIROM_ENGINE_CORE,
    #: else "c" when it is built (see vmirom.engines.core)
    engine_core: str | None = None


@dataclass
class RunResult:
    fate: str
    exit_status: int | None
    message: str
    run_time_s: float
    metrics: dict = field(default_factory=dict)
    console: str = ""
    #: fate "vmm_bug": the Python traceback of the handler that raised (shown by `vmirom run --debug`)
    traceback: str | None = None
    #: the exit core that ran (Machine.engine_core_summary)
    engine_core: dict | None = None


def boot_selectors(ring: int) -> tuple[int, int]:
    """(CS, SS/DS) selectors of the VMM's boot GDT for a kernel entered at `ring`."""
    return ((0x08, 0x10), (0x19, 0x21), (0x29, 0x31))[ring]


class KernelStacks(dict):
    """`Machine.kernel_stacks`: ring -> (ss, esp) overrides of the TSS stack (e.g. VMI
    UpdateKernelStack).  A dict that tells the compiled engine core about every change."""

    on_change = None  # callable(ring, (ss, esp) | None)
    #: callable() that brings in the overrides set elsewhere (the compiled core's UpdateKernelStack)
    #: before they are read: the core completes that hypercall without entering Python
    pull = None

    def get(self, ring: int, default=None):  # noqa: ANN001, ANN201 - dict.get signature
        if self.pull is not None:
            self.pull()
        return super().get(ring, default)

    def __getitem__(self, ring: int) -> tuple[int, int]:
        if self.pull is not None:
            self.pull()
        return super().__getitem__(ring)

    def __contains__(self, ring: object) -> bool:
        if self.pull is not None:
            self.pull()
        return super().__contains__(ring)

    def items(self):  # noqa: ANN201 - dict.items signature
        if self.pull is not None:
            self.pull()
        return super().items()

    def __setitem__(self, ring: int, value: tuple[int, int]) -> None:
        super().__setitem__(ring, value)
        if self.on_change is not None:
            self.on_change(ring, value)

    def __delitem__(self, ring: int) -> None:
        super().__delitem__(ring)
        if self.on_change is not None:
            self.on_change(ring, None)

    def pop(self, ring, *default):  # noqa: ANN001, ANN201 - dict.pop signature
        v = super().pop(ring, *default)
        if self.on_change is not None:
            self.on_change(ring, None)
        return v

    def clear(self) -> None:
        for ring in list(self):
            del self[ring]

    def update(self, *args, **kw) -> None:  # noqa: ANN002, ANN003 - dict.update signature
        for ring, value in dict(*args, **kw).items():
            self[ring] = value


class Machine:
    """One VM: RAM, devices, one vCPU on an engine, a personality."""

    def __init__(self, personality: Personality, config: MachineConfig | None = None, engine=None) -> None:
        self.config = config or MachineConfig()
        self.personality = personality
        self.metrics = Metrics()
        #: the shadow MMU when the personality virtualizes memory with shadow page tables, else None
        self.mmu: ShadowMMU | None = None
        shadow = personality.memory_model == "shadow"
        offset = self.config.shadow_pool_frames << 12 if shadow else 0
        self.memory = GuestMemory(self.config.ram_size, machine_offset=offset)
        if engine is None:
            from vmirom.engines.unicorn import UnicornEngine

            engine = UnicornEngine()
        if shadow:
            pm = PhysMap(self.config.ram_size, self.config.shadow_pool_frames, buffer=self.memory.machine)
            self.mmu = ShadowMMU(pm, tracking=personality.shadow_tracking, event=self.metrics.event)
            engine = ShadowedEngine(engine, self.mmu, offset)
        self.engine = engine
        #: the live GDT/LDT write-protected and validated (a de-privileged kernel under shadow paging)
        self.dtguard: DescriptorGuard | None = None
        self.clock = VirtualClock()
        self.paging = Paging(self.memory, self.engine)
        self.vcpu = VCpu(self)
        self.delivery = Delivery(self)
        self.pic = PicPair()
        self.pit = Pit(self.clock.now_ns, lambda: self.pic.raise_irq(0))
        self.uart = Uart16550(sink=self.config.echo, raise_irq=lambda: self.pic.raise_irq(4))
        self.io = PortBus()
        self.io.register(self.pic, PicPair.PORTS)
        self.io.register(self.pit, Pit.PORTS)
        self.io.register(self.uart, self.uart.ports)
        self.io.register(DebugExit(self.guest_exit), range(0xF4, 0xF8))
        self.escape = ConsoleEscape()  # Ctrl-A x on the interactive console
        #: a debugger (vmirom.debug.gdbstub.GdbStub) called between slices; None: no cost at all
        self.debugger = None
        self.paused_s = 0.0  # wall time stopped in the debugger: not charged to the --timeout budget
        self.kernel_stacks: dict[int, tuple[int, int]] = KernelStacks()  # ring -> (ss, esp) overrides
        self.fate: str | None = None
        self.exit_status: int | None = None
        self.message = ""
        self.halted = False
        self._port_hypercall = False  # an `out` to the personality's hypercall port waits for the slice end
        #: a fault an exit handler raised while the engine was inside a block of guest code: the
        #: engine fenced the CPU (`Engine.fence`), the run loop delivers it when the slice ends
        self.parked_fault: tuple[int, int, int | None] | None = None
        #: physical ranges of kernel code the VMM wrote: invalidated before the next slice
        self._stale_code: list[tuple[int, int]] = []
        self.boot = None
        self.rom = None
        self.rom_range: tuple[int, int] | None = None
        readonly = []
        rom = personality.rom_image()
        if rom is not None:
            data = bytes(rom.data)
            end = ROM_BASE + len(data)
            if end > 0xE0000:
                raise VmError(f"ROM of {len(data)} bytes does not fit the option-ROM window")
            self.memory.load(ROM_BASE, data)
            self.rom = rom
            self.rom_range = (ROM_BASE, (end + 0xFFF) & ~0xFFF)
            readonly.append(self.rom_range)
            self.memory.readonly = list(readonly)
        # VMM writes into guest RAM (hypercall results, page-table entries) are data, not code; the
        # guest's own code patching is seen by the engine itself.  So no invalidation per write.
        machine_ro = [(s + offset, e + offset) for s, e in readonly]
        self.engine.attach_memory(self.memory.machine, offset + self.memory.size, machine_ro)
        self.engine.set_hooks(self)
        if self.mmu is not None:
            self.mmu.rom = self.rom_range or (0, 0)
            self.engine.load_real()  # the CPU pages from the first instruction (identity shadow)
            if personality.kernel_ring:
                self.dtguard = DescriptorGuard(self)  # watching from the boot GDT on (load_kernel)
                self.memory.guarded = self.mmu.protected  # VMM writes there are revalidated
                self.memory.guarded_written = self.dtguard.vmm_wrote
        personality.attach(self)
        from vmirom.engines import core as engine_core

        self.engine_core_note: str | None = None
        self.core = engine_core.attach(self, self.config.engine_core)  # None: the Python path

    # -- loading and entering the kernel -----------------------------------------------------------
    def load_kernel(
        self, image: bytes, cmdline: str = "", modules: list[tuple[bytes, str]] | None = None
    ) -> None:
        """Load a Multiboot kernel and set the CPU to the Multiboot entry state at the personality's
        kernel ring (ring 1: flat CS/SS/DS with RPL/DPL 1 from the VMM's boot GDT)."""
        self.boot = loader.load_multiboot(self.memory, image, cmdline, modules)
        self.engine.invalidate_code(0, self.memory.size)
        code = [(p, p + n) for p, n, _m in self.boot.segments if n > 0]
        if code:
            self.memory.code_span = (min(s for s, _ in code), max(e for _, e in code))
            self.memory.code_written = self._vmm_wrote_code
            if self.mmu is not None:  # the compiled core's SetPxE leaves stores there to Python
                self.mmu.code_span = self.memory.code_span
        gdt = b"".join(
            [
                bytes(8),
                segment_descriptor(0, 0xFFFFF, 0x9A),
                segment_descriptor(0, 0xFFFFF, 0x92),
                segment_descriptor(0, 0xFFFFF, 0xBA),
                segment_descriptor(0, 0xFFFFF, 0xB2),
                segment_descriptor(0, 0xFFFFF, 0xDA),
                segment_descriptor(0, 0xFFFFF, 0xD2),
                segment_descriptor(BOOT_TSS, 0x67, 0x89, 0),
            ]
        )
        self.memory.load(BOOT_GDT, gdt)
        self.memory.load(BOOT_TSS, bytes(0x68))
        eng = self.engine
        eng.set_reg("gdtr", (BOOT_GDT, len(gdt) - 1))
        eng.set_reg("idtr", (0, 0))
        # A valid (available, type 9) TR before the first guest instruction: the engine reads the
        # TSS itself for a native inner-ring call gate, and with the TR it starts with (type 0) it
        # aborts the whole process (issue 11 item 3).  All-zero: such a gate takes #TS (SS0 null)
        # until the kernel loads its own TR.
        eng.set_reg("tr", (BOOT_TSS_SEL, BOOT_TSS, 0x67, 0x8900))
        eng.set_reg("cr0", 0x11)
        eng.set_reg("cs", 0x08)
        for s in ("ss", "ds", "es", "fs", "gs"):
            eng.set_reg(s, 0x10)
        ring = self.personality.kernel_ring
        cs, ds = boot_selectors(ring)
        if ring:
            eng.switch_ring(ring, cs, ds)
            for s in ("ds", "es", "fs", "gs"):
                eng.set_reg(s, ds)
        eng.set_reg("eflags", 0x2 | (self.personality.iopl << 12))
        eng.set_reg("eax", loader.MB_BOOT_MAGIC)
        eng.set_reg("ebx", self.boot.info_addr)
        for r in ("ecx", "edx", "esi", "edi", "ebp"):
            eng.set_reg(r, 0)
        eng.set_reg("esp", BOOT_STACK)
        eng.set_reg("eip", self.boot.entry)
        if self.dtguard is not None:  # the boot GDT is the first live table (its ring-0 entries compressed)
            eng.on_table = self.dtguard.watch
            self.dtguard.watch("gdt", BOOT_GDT, len(gdt) - 1)

    # -- the run loop ------------------------------------------------------------------------------
    def run(self) -> RunResult:
        t0 = time.monotonic()
        deadline = t0 + self.config.timeout_s if self.config.timeout_s else None
        tb = None
        try:
            while self.fate is None:
                if self.debugger is not None:  # gdb: report stops, take commands (may block)
                    self.debugger.between_slices()
                    if self.fate is not None:
                        break
                try:  # every personality hook may raise GuestFault: the guest takes it
                    if self._port_hypercall:
                        self._port_hypercall = False
                        self.personality.hypercall(self.vcpu)
                    self.personality.before_slice()
                    self.update_timers()
                    if self.config.console_input is not None:
                        self.poll_console_input()
                    if self.halted and not self.wait_for_interrupt():
                        break
                    self.deliver_pending_interrupt()
                except GuestFault as f:
                    self.metrics.count(f"exception:{f.vector}")
                    self.halted = False  # the guest runs its handler now, as after an interrupt
                    self._reflect(f.vector, f.error_code, f.cr2)
                    continue
                self.prepare_slice()
                res = self.engine.run_slice(self.slice_budget_us())
                self.metrics.count("slice")
                if not self.finish_slice(res):
                    break
                if deadline is not None and self.fate is None and time.monotonic() - self.paused_s > deadline:
                    self.stop(
                        "timeout",
                        f"wall-clock budget of {self.config.timeout_s:g} s exhausted "
                        f"(eip={self.engine.reg('eip'):#010x})",
                    )
        except TripleFault as e:
            self.stop("triple_fault", f"triple fault: {e}")
        except (EngineError, VmError) as e:
            self.stop(getattr(e, "fate", "engine_error"), str(e))
        except MemoryError:
            self.fate = None
            self.stop("resource_limit", "an exit handler needed more host memory than the VM process may "
                      "take (the host limit of vmirom.runner.HOST_MEMORY_HEADROOM); stopped")
        except Exception as e:  # noqa: BLE001 - a bug in a handler (ours or a plugin's), not the guest's
            # Why here: the console, the exits counted so far and the personality's facts are what
            # its author needs to find the bug; the child process would only report the type.
            import traceback

            tb = traceback.format_exc()
            where = traceback.extract_tb(e.__traceback__)[-1]
            self.fate = None
            self.stop(
                "vmm_bug",
                f"a handler of the {self.personality.name} personality raised {type(e).__name__}: {e} "
                f"({Path(where.filename).name}:{where.lineno} in {where.name}; --debug shows the traceback)",
            )
        return RunResult(
            self.fate or "engine_error",
            self.exit_status,
            self.message,
            time.monotonic() - t0,
            self.metrics_dict(),
            self.uart.text(),
            tb,
            self.engine_core_summary(),
        )

    def metrics_dict(self) -> dict:
        """The exit counters, plus the shadow MMU's state under shadow paging ("mmu")."""
        d = self.metrics.as_dict()
        if self.mmu is not None:
            d["mmu"] = self.mmu.summary()
        return d
    def _vmm_wrote_code(self, start: int, end: int) -> None:
        """A VMM write (hypercall result, emulation, delivery frame) landed in the kernel's code:
        the engine would go on running its old translation of those bytes (notes W4).  The
        translation cache cannot be flushed from inside a hook (a block may be running): end the
        slice, the run loop flushes before the next one."""
        if len(self._stale_code) < 16:
            self._stale_code.append((start, end))
        else:
            self._stale_code[:] = [(0, self.memory.size)]
        self.engine.stop()

    def engine_core_summary(self) -> dict:
        """Which exit core this machine runs (`vmirom run` summary and JSON, bench records)."""
        if self.core is None:
            return {"name": "python", "note": self.engine_core_note}
        return self.core.summary()

    def prepare_slice(self) -> None:
        """Right before guest code runs (a slice, or a debugger's single step): the compiled core's
        view of the interrupt window, translations of code the VMM rewrote."""
        if self.core is not None:
            self.core.sync(slice_start=True)
        if self._stale_code:
            for start, end in self._stale_code:
                self.engine.invalidate_code(start, end)
            self._stale_code.clear()

    def finish_slice(self, res) -> bool:
        """Right after guest code ran: the privilege and resource checks, the fault an exit parked, a
        native halt, an engine error.  False: the run must end (the checks set the fate)."""
        if self.core is not None:
            self.core.drain_console()
        if not self.privilege_held() or not self.mode_supported() or not self.memory_bounded():
            return False
        self.deliver_parked_fault()
        if res.halted:
            self.metrics.count("halt")
            self.request_halt()
        if res.error and self.fate is None:
            self.stop("engine_error", f"engine stopped: {res.error} at eip={self.engine.reg('eip'):#010x}")
        return True

    def stop(self, fate: str, message: str = "") -> None:
        """End the run with `fate` (first reason wins)."""
        if self.fate is None:
            self.fate, self.message = fate, message
        self.engine.stop()

    def guest_exit(self, status: int) -> None:
        self.exit_status = status & 0xFFFFFFFF
        self.stop("exit", f"guest exited with status {self.exit_status}")

    def slice_budget_us(self) -> int:
        budget = self.config.slice_us
        if self.pic.pending_vector() is not None:  # masked by IF: poll soon
            budget = min(budget, 1000)
        nxt = self.next_deadline()
        if nxt is not None:
            budget = min(budget, max(200, (nxt - self.clock.now_ns()) // 1000))
        return int(budget)

    def next_deadline(self) -> int | None:
        """The earliest timer deadline (PIT, personality), None when no timer is armed.  Called
        after every exit when the compiled engine core is on (it publishes the window): no list."""
        a, b = self.pit.deadline(), self.personality.deadline()
        if a is None:
            return b
        return a if b is None or a <= b else b

    def update_timers(self) -> None:
        self.pit.update()
        self.personality.update_timers()

    def request_halt(self) -> None:
        """The guest halts until an interrupt (the exit was counted by whoever saw the halt)."""
        self.halted = True
        self.engine.stop()

    def wait_for_interrupt(self) -> bool:
        """The guest halted: skip guest time to the next wake-up.  False (and a fate) if nothing can
        ever wake it."""
        self.personality.load_virtual_if()
        if not self.engine.reg("eflags") & IF:
            self.stop("halt_dead", "the guest halted with interrupts disabled: nothing can wake it")
            return False
        if self.pic.pending_vector() is None:
            nxt = self.next_deadline()
            if nxt is None and self.config.console_input is None:
                self.stop("halt_dead", "the guest halted with no timer armed and no interrupt pending")
                return False
            if self.config.console_input is not None:
                # a person is typing: idle time passes in real time, and a key wakes the guest
                wait_ns = MAX_INPUT_WAIT_NS if nxt is None else nxt - self.clock.now_ns()
                if self.poll_console_input(min(max(wait_ns, 0), MAX_INPUT_WAIT_NS) / 1e9):
                    self.halted = False
                    return True
            if nxt is not None:
                self.clock.skip_to(nxt)
            self.update_timers()
        self.halted = False
        return True

    def poll_console_input(self, timeout_s: float | None = 0.0, limit: int = 256) -> bool:
        """Move what was typed (if anything, waiting up to `timeout_s`, None: until there is some)
        into the UART, at most `limit` bytes; True if bytes arrived.  End of input is not an error:
        the guest just gets no more keys."""
        fd = self.config.console_input
        if fd is None:
            return False
        ready: list = []
        try:
            ready, _, _ = select.select([fd], [], [], timeout_s)
            data = os.read(fd, limit) if ready else b""
        except (OSError, ValueError):
            data = b""
        if ready and not data:  # EOF (or an unreadable input): stop polling
            self.config.console_input = None
        if data:
            data, command = self.escape.filter(data)
            if command == "help":
                with contextlib.suppress(OSError):
                    os.write(2, HELP.encode())
            elif command == "quit":
                self.stop("quit", "stopped by the user (Ctrl-A x)")
            if data:
                self.uart.feed(data)
        return bool(data)

    def deliver_pending_interrupt(self) -> bool:
        """If the guest's IF is set and the PIC has an interrupt, deliver it now (also called from hooks
        when the guest re-enables interrupts)."""
        self.personality.load_virtual_if()
        if not self.engine.reg("eflags") & IF or self.pic.pending_vector() is None:
            return False
        vector = self.pic.acknowledge()
        self.metrics.count(f"interrupt:{vector}")
        self.halted = False
        self.delivery.external(vector)
        return True

    # -- engine hooks (EngineHooks) ----------------------------------------------------------------
    def on_interrupt(self, vector: int) -> None:
        # The hottest exit (every system call, page fault, emulated instruction): metrics keys are
        # precomputed, the #PF error code comes from one batched read and one walk.
        if self.personality.kernel_ring and not self.privilege_held():
            return
        try:
            p = self.personality
            if vector == p.hypercall_vector and p.is_hypercall(self.vcpu):
                p.hypercall(self.vcpu)
                return
            if vector == PF and self.mmu is not None and self._shadow_fault():
                return
            if self._irq_first(vector):
                return
            metrics = self.metrics
            if vector >= 32 or vector == BP or vector == OF:
                metrics.kinds["softint"] += 1  # Metrics.count("softint:<vector>")
                metrics.detail[_SOFTINT_KEYS[vector]] += 1
                self.delivery.software(vector)
                return
            err = 0
            if vector == PF:
                # CR2 is already right (read inside this hook): delivery leaves it as it is
                _cr2, err = self.delivery.page_fault()
            if p.on_exception(self.vcpu, vector, err):
                return  # handled by the personality (it counts e.g. "emulate:cli")
            metrics.kinds["exception"] += 1  # Metrics.count("exception:<vector>")
            metrics.detail[_EXCEPTION_KEYS[vector]] += 1
            self.delivery.exception(vector, err)
        except GuestFault as f:
            self.metrics.count(f"exception:{f.vector}")
            self.fault_in_exit(f.vector, f.error_code, f.cr2)
        except TripleFault as e:
            self.stop("triple_fault", f"triple fault: {e}")
        except UnsupportedState as e:
            self.stop(e.fate, str(e))

    def _shadow_fault(self) -> bool:
        """A #PF under shadow paging: True when it was the VMM's (a hidden fault filled, a trapped
        page-table store emulated, or a fate), False for a true fault (the guest's CR2 is set, the
        caller delivers it with the error code from the guest's own tables)."""
        eng = self.engine
        va = eng.real.reg("cr2")
        r = self.mmu.fault(va, write=None, user=eng.cpl() == 3)
        kind = r.kind
        if kind == HIDDEN:
            self.metrics.count("shadow:hidden_fault")
        elif kind == TRUE_FAULT:
            eng.cr2 = va
            eng.sync_tlb()
            return False
        elif kind == WP_TRAP and self.mmu.protection(r.gpa >> 12) == PROTECT_DESCRIPTORS:
            self.metrics.count("shadow:desc_trap")
            eng.sync_tlb()
            self.dtguard.on_store(va, r.gpa)  # GuestFault (refused): delivered by the caller
        elif kind == WP_TRAP:
            self.metrics.count("shadow:wp_trap")
            self.personality.on_wp_trap(self.vcpu, va, r.gpa)
        elif kind == ROM_WRITE:
            self.metrics.count("rom_write")
            self.stop("rom_write", f"the guest wrote to the read-only VMI ROM at physical {r.gpa:#x} "
                      f"(eip={eng.reg('eip'):#010x})")
        else:
            self.stop("bad_memory", f"guest page tables name physical {r.gpa:#x} outside RAM "
                      f"(linear {va:#010x}, eip={eng.reg('eip'):#010x})")
        eng.sync_tlb()
        return True

    def _irq_first(self, vector: int) -> bool:
        """Take a due hardware interrupt at this exit, before the instruction that caused it.

        Why: a real CPU recognizes a pending interrupt at every instruction boundary where IF=1.  We
        only look between slices, and Unicorn notices its slice timeout mostly right after a hook has
        returned, i.e. at the entry of the guest's handler, where an interrupt gate just cleared IF.
        A syscall-bound user loop (IF=1 only for a few instructions between `iret` and `int $0x80`)
        then almost never saw its timer tick.  An exit is an instruction boundary the VMM does see:
        if IF=1 and an interrupt is due, deliver it with the return address AT the trapping
        instruction (a fault's EIP already is; `int n`/`int3`/`into` are rewound), so the
        instruction runs again after the handler's `iret`, exactly as if the interrupt came first.
        """
        eng = self.engine
        self.personality.load_virtual_if()
        if not self.delivery.registers()[1] & IF:  # EFLAGS, batched with what delivery needs next
            return False
        self.update_timers()
        master = self.pic.master
        if not master.irr & ~master.imr:  # nothing can be pending (the cheap test of the usual case)
            return False
        if self.pic.pending_vector() is None:
            return False
        if vector >= 32 or vector in (BP, OF):
            eip = eng.reg("eip")
            start = self.soft_int_start(eip, vector)
            if start is None:
                return False  # cannot prove where the instruction began: deliver it, IRQ later
            eng.set_reg("eip", start)
        self.metrics.count("irq_before_exit")
        return self.deliver_pending_interrupt()

    def soft_int_start(self, eip: int, vector: int) -> int | None:
        """Address of the `int n` (CD nn), `int3` (CC) or `into` (CE) that ended at `eip`."""
        user = self.engine.cpl() == 3
        two = self.paging.read_code((eip - 2) & 0xFFFFFFFF, 2, user=user)
        if len(two) == 2 and two[0] == 0xCD and two[1] == vector:
            return (eip - 2) & 0xFFFFFFFF
        if len(two) == 2 and (vector, two[1]) in ((BP, 0xCC), (OF, 0xCE)):
            return (eip - 1) & 0xFFFFFFFF
        return None

    # -- de-privileging: the kernel never runs below its ring ---------------------------------------
    def privilege_held(self) -> bool:
        """True unless the CPU runs below the personality's kernel ring (then the run stops with
        fate "privilege_violation" and the exit is not served).

        Why a check on top of prevention: the VMM's own transitions (delivery, IRET, SYSEXIT,
        descriptor-table hypercalls and emulation) refuse every route to a ring below the kernel's,
        and the descriptor guard (machine/dtguard.py) keeps the tables Unicorn reads for its native
        call gates, task switches and `iret` validated, so no known route is left.  This is the
        second line, for a route nobody thought of (or a personality without shadow paging): every
        exit and every slice end looks at the CPL first; a context that got there never has an exit
        served (no I/O reaches a device, no hypercall runs, nothing is emulated for it) and the VM
        stops.  What it can do before its next exit stays inside its own VM (docs/security.md)."""
        ring = self.personality.kernel_ring
        if ring == 0:
            return True
        eng = self.engine
        cpl = eng.cpl()
        if cpl >= ring:
            return True
        if self.fate is not None:
            return False
        eng.fence()
        if eng.reg("eflags") & 0x20000:  # CS & 3 is no CPL in virtual-8086 mode (CPL 3 there)
            self.stop("unsupported", V86_REFUSED)
            return False
        self.stop(
            "privilege_violation",
            f"the de-privileged kernel (ring {ring}) reached CPL {cpl} (cs={eng.reg('cs'):#x}, "
            f"eip={eng.reg('eip'):#010x}) through a native call gate, task switch or iret: "
            "the VM is stopped, no exit is served at that privilege",
        )
        return False

    def memory_bounded(self) -> bool:
        """False (fate resource_limit) once the process's peak RSS passed `config.max_rss_kib`."""
        cap = self.config.max_rss_kib
        if cap is None:
            return True
        rss = peak_rss_kib()
        if rss <= cap:
            return True
        self.stop("resource_limit", f"the VM process grew to {rss >> 10} MiB resident, past its limit of "
                  f"{cap >> 10} MiB (guest RAM and engine + vmirom.runner.HOST_MEMORY_HEADROOM)")
        return False

    def mode_supported(self) -> bool:
        """False (fate "unsupported") when the guest enabled what the VMM does not virtualize and can
        only see after the fact (a ring-0 kernel's native `mov %cr4`): PAE paging."""
        eng = self.engine
        if eng.reg("cr4") & CR4_PAE and eng.reg("cr0") & CR0_PG:
            self.stop("unsupported", PAE_REFUSED)
            return False
        return True

    # -- faults raised by exit handlers: ONE mechanism for every hook -------------------------------
    def fault_in_exit(self, vector: int, err: int = 0, cr2: int | None = None) -> None:
        """Make the guest take fault `vector` because of the exit being handled (a refused `in`, a
        hypercall's bad pointer, `sysenter`'s #UD, a fault while emulating at a code hook...).

        Why one path: the engine calls some hooks between instructions (interrupts/exceptions,
        invalid opcodes) and others from the middle of a block of guest code that goes on running
        after the hook returns (I/O, cpuid, sysenter, code hooks).  Delivering from the latter let
        the faulting context's next instructions run with the handler's CS/SS (issue 11: a user
        program powered the VM off).  So the engine is asked to `fence` first: if it is inside a
        block it stops it without letting anything else take effect, and the fault waits here
        until the slice ends (EIP back at the faulting instruction); otherwise it is delivered now.
        A fault that cannot be delivered settles the fate (triple fault) here, in the hook."""
        if self.engine.fence():
            if self.parked_fault is None:
                self.parked_fault = (vector, err, cr2)
                self.metrics.count("delivery:parked_fault")
            return
        self._reflect(vector, err, cr2)

    def deliver_parked_fault(self) -> None:
        """Deliver the fault an exit handler parked during the slice that just ended."""
        parked, self.parked_fault = self.parked_fault, None
        if parked is not None and self.fate is None:
            self._reflect(*parked)

    def _io_allowed(self) -> bool:
        return self.personality.io_permitted(self.vcpu)

    def on_port_in(self, port: int, size: int) -> int:
        self.metrics.count(f"io:in:{port:#x}")
        keep = self.engine.reg("eax")
        if not self.privilege_held():
            return keep
        if not self._io_allowed():
            self.fault_in_exit(GP, 0)
            return keep  # leave EAX as it was: the #GP handler must see the guest's EAX
        try:
            v = self.personality.port_in(self.vcpu, port, size)
        except GuestFault as f:
            self.fault_in_exit(f.vector, f.error_code, f.cr2)
            return keep
        if v is None:
            v = self.io.port_in(port, size)
        return v

    def on_port_out(self, port: int, size: int, value: int) -> None:
        p = self.personality
        if port == p.hypercall_port:
            try:
                if p.is_hypercall(self.vcpu):  # counted once, by the personality, as a hypercall
                    # Unicorn runs the rest of the current translation block after an I/O hook, so
                    # a handler that moves EIP/CS/ESP (IRET, a fault, an interrupt it delivers) must
                    # not run here: the slice ends at the stub's next instruction (a `jmp`, see
                    # Vmi.hypercall_stub) and `run` calls the handler between slices.
                    self._port_hypercall = True
                    self.engine.stop()
                    return
            except GuestFault as f:  # is_hypercall itself faulted: this exit is that fault
                self.metrics.count(f"exception:{f.vector}")
                self.fault_in_exit(f.vector, f.error_code, f.cr2)
                return
        self.metrics.count(f"io:out:{port:#x}")
        if not self.privilege_held():
            return
        if not self._io_allowed():
            self.fault_in_exit(GP, 0)
            return
        try:
            if not p.port_out(self.vcpu, port, size, value):
                self.io.port_out(port, size, value)
        except GuestFault as f:
            self.fault_in_exit(f.vector, f.error_code, f.cr2)

    def _reflect(self, vector: int, err: int = 0, cr2: int | None = None) -> None:
        """Deliver a fault to the guest from an exit handler; a triple fault ends the run here, so
        every exit entry point settles the fate itself (not only through `run`'s handler)."""
        try:
            self.delivery.exception(vector, err, cr2)
        except TripleFault as e:
            self.stop("triple_fault", f"triple fault: {e}")

    def on_cpuid(self) -> bool:
        self.metrics.count("cpuid")
        if not self.privilege_held():
            return True
        try:
            return bool(self.personality.on_cpuid(self.vcpu))
        except GuestFault as f:
            self.fault_in_exit(f.vector, f.error_code, f.cr2)
            return True

    def on_invalid_opcode(self) -> bool:
        if not self.privilege_held():
            return True
        try:
            if self.personality.on_exception(self.vcpu, UD, 0):
                return True
            self.metrics.count("exception:6")
            self.delivery.exception(UD)
        except GuestFault as f:
            self.fault_in_exit(f.vector, f.error_code, f.cr2)
        except TripleFault as e:
            self.stop("triple_fault", f"triple fault: {e}")
        return True

    def on_bad_memory(self, write: bool, phys: int, size: int, value: int, protected: bool) -> bool:
        eip = self.engine.reg("eip")
        phys -= self.memory.machine_offset  # the engine reports machine addresses
        if protected and self.rom_range and self.rom_range[0] <= phys < self.rom_range[1]:
            self.metrics.count("rom_write")
            self.stop(
                "rom_write",
                f"the guest wrote to the read-only VMI ROM at physical {phys:#x} (eip={eip:#010x})",
            )
        else:
            what = "write to" if write else "access to"
            self.stop("bad_memory", f"guest {what} physical {phys:#x} outside RAM (eip={eip:#010x})")
        return False

    def code_byte_before_eip(self) -> int:
        eip = self.engine.reg("eip")
        code = self.paging.read_code((eip - 1) & 0xFFFFFFFF, 1, user=self.engine.cpl() == 3)
        return code[0] if code else -1

    def on_sysenter(self) -> None:
        self.metrics.count("exception:6")
        if self.privilege_held():
            self.fault_in_exit(UD)  # at the sysenter itself (+0), like ud2

    def code_hook(self, callback) -> None:
        """Run a personality's code-hook callback (fullvirt's sensitive-instruction sites) with the
        exit rules of every other hook: a GuestFault it raises goes through `fault_in_exit`."""
        if not self.privilege_held():
            return
        try:
            callback()
        except GuestFault as f:
            self.metrics.count(f"exception:{f.vector}")
            self.fault_in_exit(f.vector, f.error_code, f.cr2)
        except TripleFault as e:
            self.stop("triple_fault", f"triple fault: {e}")

    def close(self) -> None:
        self.engine.close()


def _debug(msg: str) -> None:  # pragma: no cover - developer aid
    print(msg, file=sys.stderr)
