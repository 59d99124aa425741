"""`vmi`: a de-privileging hypervisor that publishes a VMI 3.0 ROM.

The kernel runs at ring 1.  Every VMI operation that needs the hypervisor is a ROM stub made of ONE
trapping instruction, `int $0x82` (0.4-0.7 us per exit on Unicorn, the cheapest exit that leaves EIP
alone), followed by `ret`; arguments stay in the registers the VMI ABI puts them in.  The VMM maps the
trapping EIP to the call number through the ROM's stub table (no register is spent on the number).
IRET and SYSEXIT are `jmp` stubs (JUMP_REL) that never return.

Every handler validates its arguments: guest pointers go through the machine's checked page walker
(bad ones become the #PF the CPU would raise), values are range-checked (bad ones get #GP), so a
hostile kernel can only hurt itself.  Before the kernel binds to the ROM (and for instructions it
keeps native) privileged instructions trap with #GP at ring 1 and are emulated by the shared
trap-and-emulate core (`vmirom.machine.emulate`).

The hypercall path is the hot path of this personality (a boot makes ~33,000 hypercalls, 32,800 of
them SetPxE for the direct map), so it avoids per-call work: one batched register read gives CS, EIP
and the three register arguments; the trapping EIP -> call number map is a dict of ints; counters are
pre-built strings and list slots; SetPxE translates once (an aligned 4-byte write never crosses a
page) and writes through the checked memory helper.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import ClassVar

from vmirom import abi
from vmirom.hypervisors.base import Personality
from vmirom.machine.descriptors import checked_gate, checked_segment, checked_table
from vmirom.machine.faults import GP, GuestFault
from vmirom.machine.vcpu import VCpu
from vmirom.rom.spec import RomError

HYPERCALL_VECTOR = 0x82
STUB = "int $0x82\n ret"
NORETURN_STUB = "int $0x82"
CYCLE_HZ = 1_000_000_000  # REAL/AVAILABLE counters tick in nanoseconds of virtual time
IF = 0x200
IOPL = 0x3000
#: EFLAGS bits an IRET frame may load (CF PF AF ZF SF TF IF DF OF NT AC ID); IOPL/VM/RF stay
IRET_FLAGS = 0x244FD5
CR4_ALLOWED = 0x7FF & ~0x3 & ~0x20  # no VME/PVI, no PAE (2-level paging only: docs/security.md)
CR0_ALLOWED = 0x3F | (1 << 16) | (1 << 18) | (1 << 29) | (1 << 30) | (1 << 31)


#: VMI operations grouped the way kernel work is usually discussed (issue 5: "how many CR3 loads, PTE
#: writes, page-table allocations, interrupt-flag changes ..." per benchmark test).  Keys of the
#: machine's exit counters are "hypercall:<VMI call name>"; `operation_counts` folds them into these.
OPERATION_GROUPS: dict[str, tuple[str, ...]] = {
    "cr3_loads": ("SetCR3",),
    "pte_writes": ("SetPxE", "SetPxELong", "UpdatePxE", "UpdatePxELong"),
    "page_table_allocations": ("AllocatePage",),
    "page_releases": ("ReleasePage",),
    "tlb_flushes": ("InvalPage", "FlushTLB"),
    "interrupt_flag_changes": ("DisableInterrupts", "EnableInterrupts", "SetInterruptMask"),
    "interrupt_flag_reads": ("GetInterruptMask",),
    "irets": ("IRET", "SYSEXIT"),
    "kernel_stack_updates": ("UpdateKernelStack",),
    "cr2_reads": ("GetCR2",),
    "lazy_mode_changes": ("SetLazyMode",),
    "halts": ("Halt",),
    "timer": ("GetCycleCounter", "SetAlarm", "CancelAlarm"),
}


def operation_counts(detail: dict[str, int]) -> dict[str, int]:
    """Fold exit counters ("hypercall:SetCR3": n, ...) - e.g. a bench test window's `exits_detail` - into
    OPERATION_GROUPS counts; hypercalls outside every group are summed under "other"."""
    by_call = {k.split(":", 1)[1]: v for k, v in detail.items() if k.startswith("hypercall:")}
    out = {g: sum(by_call.get(c, 0) for c in calls) for g, calls in OPERATION_GROUPS.items()}
    grouped = {c for calls in OPERATION_GROUPS.values() for c in calls}
    out["other"] = sum(v for c, v in by_call.items() if c not in grouped)
    return out


def handles(name: str):
    """Mark a method as the handler of VMI call `name`."""

    def deco(fn):
        fn._vmi_call = name
        return fn

    return deco


def _u32(v: int) -> int:
    return v & 0xFFFFFFFF


class Vmi(Personality):
    """VMI 3.0, version 1: every operation is a hypercall (see module docstring).

    Subclasses (e.g. a third-party plugin, docs/plugins.md) choose their ROM per operation with class
    attributes: `rom_manufacturer`, `rom_product`, `rom_version`, `api_minor`, `native_calls` (sites
    keep the native instruction, which traps at ring 1 and is emulated, or needs no hypervisor),
    `nop_calls` (sites are removed), `rom_stubs` (call name -> their own stub code); and their
    hypercall MECHANISM: `hypercall_vector` (`int $N`, default 0x82) or `hypercall_port` (an
    `outb %al, $P` from the kernel ring; then set `hypercall_vector = None`).  Every other call this
    class handles becomes a stub of that one trapping instruction (`hypercall_stub`)."""

    name = "vmi"
    description = "de-privileging hypervisor, VMI 3.0 ROM, every op a hypercall"
    kernel_ring = 1
    iopl = 0
    hypercall_vector = HYPERCALL_VECTOR
    #: shadow page tables driven by the ROM's MMU calls (docs/mmu.md)
    memory_model = "shadow"
    shadow_tracking = "pv"
    rom_manufacturer = "vmirom"
    rom_product = "vmi hypercall ROM"
    rom_version = (1, 0)
    api_minor = 0
    #: calls left NONE (native instruction kept; it traps and is emulated, or does not need us)
    native_calls = (
        "CPUID",
        "WRMSR",
        "RDMSR",
        "RDPMC",
        "RDTSC",
        "SetPxELong",
        "UpdatePxELong",
        "MachineToPhysical",
        "PhysicalToMachine",
        "SetInitialAPState",
        "APICWrite",
        "APICRead",
        "SetCallbacks",
        "INL",
        "INB",
        "INW",
        "INSL",
        "INSB",
        "INSW",
        "OUTL",
        "OUTB",
        "OUTW",
        "OUTSL",
        "OUTSB",
        "OUTSW",
        "GetSharedInfo",
        "FlushDeferred",
    )
    #: calls the hypervisor does not need: the kernel removes the site
    nop_calls = ("SetLinearMapping", "IODelay", "WBINVD")
    #: a subclass's own stub code for some calls (name -> GNU as text, CALL_REL; IRET/SYSEXIT JUMP_REL).
    #: A stub whose FIRST instruction is the trapping one (`hypercall_stub`'s) is a hypercall site.
    rom_stubs: ClassVar[dict[str, str]] = {}

    # -- the hypercall mechanism -------------------------------------------------------------------
    @classmethod
    def trap_asm(cls) -> str:
        """The one instruction a stub traps with: `int $vector` or `outb %al, $port`."""
        if cls.hypercall_port is not None:
            if not 0 <= cls.hypercall_port <= 0xFF:
                raise RomError(f"{cls.__name__}.hypercall_port {cls.hypercall_port:#x} is not an 8-bit "
                               "port (the stub's `outb %al, $port` takes an immediate)")
            return f"outb %al, ${cls.hypercall_port:#x}"
        if cls.hypercall_vector is None or not 0x20 <= cls.hypercall_vector <= 0xFF:
            raise RomError(f"{cls.__name__} has no hypercall mechanism: set hypercall_vector (0x20-0xff) "
                           "or hypercall_port")
        return f"int ${cls.hypercall_vector:#x}"

    @classmethod
    def hypercall_stub(cls, call: str) -> str:
        """The stub of a returning call: the trapping instruction, then `ret`.  After an `out` the
        engine goes on with the rest of its translation block, so a port stub ends the block at
        once (`jmp 1f`): the VMM handles the hypercall with EIP at the `ret` (Machine.on_port_out)."""
        if cls.hypercall_port is not None:
            return f"{cls.trap_asm()}\n jmp 1f\n1: ret"
        return f"{cls.trap_asm()}\n ret"

    @classmethod
    def noreturn_stub(cls, call: str) -> str:
        """The stub of IRET/SYSEXIT (JUMP_REL): the trapping instruction (the VMM never returns; a
        port stub parks on a `jmp` to itself until the VMM has moved EIP)."""
        if cls.hypercall_port is not None:
            return f"{cls.trap_asm()}\n1: jmp 1b"
        return cls.trap_asm()

    @classmethod
    def mechanism(cls) -> str:
        """How this ROM enters the VMM, in words (`vmirom hypervisors`)."""
        return f"out {cls.hypercall_port:#x}" if cls.hypercall_port is not None else \
            f"int {cls.hypercall_vector:#x}"

    def __init__(self) -> None:
        super().__init__()
        self.call_at: dict[int, int] = {}  # ROM offset of the trapping int -> call number
        self.eip_cache: dict[int, int | None] = {}
        self.dispatch: dict[int, Callable[[VCpu], None]] = {}
        for attr in dir(type(self)):
            fn = getattr(type(self), attr)
            name = getattr(fn, "_vmi_call", None)
            if name is not None:
                self.dispatch[abi.call(name).number] = getattr(self, attr)
        self.alarms: dict[int, tuple[int, int]] = {}  # counter -> (expiry ns, period ns)
        self.user_iopl = 0
        self.lazy_mode = 0
        self.emu = None
        self.calls_seen = 0
        #: hypercalls handled, by call number (a list: the cheapest counter on the hot path)
        self.call_counts = [0] * (max(c.number for c in abi.CALLS) + 1)
        self._detail_key = {c.number: f"hypercall:{c.name}" for c in abi.CALLS}
        self._pending_call: int | None = None
        #: the register arguments of the hypercall being handled (EAX, EDX, ECX as the stub left them)
        self.eax = self.edx = self.ecx = 0
        self._frame = None  # engine reader of (cs, eip, eax, edx, ecx), set by attach()
        #: bytes from the trapping instruction to the EIP the exit reports (int: after it; out: at it)
        self._trap_back = 0 if self.hypercall_port is not None else 2

    # -- the ROM ----------------------------------------------------------------------------------
    def rom_spec(self):
        from vmirom.rom import CallEntry, RomSpec

        entries = {}
        for c in abi.CALLS:
            if c.since_minor > self.api_minor:
                continue
            if c.name in self.native_calls:
                entries[c.number] = CallEntry.native()
            elif c.name in self.nop_calls:
                entries[c.number] = CallEntry.nop()
            elif c.name in self.rom_stubs:
                jump = c.name in ("IRET", "SYSEXIT")
                entries[c.number] = (CallEntry.jump if jump else CallEntry.call)(self.rom_stubs[c.name])
            elif c.name in ("IRET", "SYSEXIT"):
                entries[c.number] = CallEntry.jump(self.noreturn_stub(c.name))
            elif c.number in self.dispatch:
                entries[c.number] = CallEntry.call(self.hypercall_stub(c.name))
        return RomSpec(
            manufacturer=self.rom_manufacturer,
            product=self.rom_product,
            rom_version=self.rom_version,
            api_minor=self.api_minor,
            entries=entries,
        )

    def attach(self, machine) -> None:
        super().attach(machine)
        rom = self.rom_image()
        trap = self.trap_asm()
        for c in abi.CALLS:
            off = rom.stub_offset(c.number)
            own = self.rom_stubs.get(c.name)
            if own is not None and not own.lstrip().startswith(trap):
                continue  # the subclass's stub does not begin with a hypercall
            if off is not None and c.number in self.dispatch:
                self.call_at[off] = c.number
        from vmirom.machine.emulate import GuestControl, TrapEmulator

        ctl = GuestControl()
        ctl.kernel_ring = self.kernel_ring
        self.emu = TrapEmulator(machine.vcpu, ctl)
        self._frame = machine.engine.reader(("cs", "eip", "eax", "edx", "ecx"))
        eng = machine.engine
        names = ("esp", "eflags", "cs", "gdtr", "cr0", "cr3", "cr4", "ds", "es", "fs", "gs")
        if getattr(eng, "reads_tables", False):  # gdtr flattened to (base, limit)
            self._iret_regs = eng.reader(names)
        else:
            self._iret_regs = lambda: tuple(
                v for n in names for v in (eng.reg(n) if n == "gdtr" else (eng.reg(n),))
            )
        self._metrics = machine.metrics
        self._paging = machine.paging
        self._memory = machine.memory

    # -- exits ------------------------------------------------------------------------------------
    def is_hypercall(self, vcpu: VCpu) -> bool:
        cs, eip, self.eax, self.edx, self.ecx = self._frame()
        if cs & 3 > self.kernel_ring:
            return False  # user code: an `int $0x82` of its own, delivered through the IDT
        # The stub's `int $0x82` is the 2 bytes before EIP (an `out` hook sees EIP AT the `out`).
        # The answer is remembered per linear EIP (kernel-ring code only); a kernel that remaps its
        # ROM window can only confuse itself: any kernel-ring code may make hypercalls anyway.
        site = (eip - self._trap_back) & 0xFFFFFFFF
        call = self.eip_cache.get(site, -1)
        if call == -1:
            call = None
            try:
                phys = vcpu.translate(site)
            except GuestFault:
                phys = -1
            base, end = self.machine.rom_range
            if base <= phys < end:
                call = self.call_at.get(phys - base)
            if len(self.eip_cache) > 4096:
                self.eip_cache.clear()
            self.eip_cache[site] = call
        self._pending_call = call
        return call is not None

    def hypercall(self, vcpu: VCpu) -> None:
        call = self._pending_call
        self.call_counts[call] += 1
        self.calls_seen += 1
        m = self._metrics  # counted like Metrics.count("hypercall:<name>"), without building the key
        m.kinds["hypercall"] += 1
        m.detail[self._detail_key[call]] += 1
        self.dispatch[call](vcpu)

    def count_from_core(self, call: int, n: int) -> None:
        """Hypercalls the compiled engine core completed (vmirom.engines.core: the IRET), counted
        here as `hypercall` counts its own."""
        self.call_counts[call] += n
        self.calls_seen += n

    def hypercall_counts(self) -> dict[str, int]:
        """Hypercalls handled so far, by VMI call name (most frequent first)."""
        pairs = [(abi.call(n).name, c) for n, c in enumerate(self.call_counts) if c]
        return dict(sorted(pairs, key=lambda kv: (-kv[1], kv[0])))

    #: the vectors on_exception may take (the compiled engine core hands only these to Python)
    core_exception_vectors = frozenset({GP})

    def on_exception(self, vcpu: VCpu, vector: int, error_code: int) -> bool:
        if vector == GP and vcpu.cpl <= self.kernel_ring and self.emu is not None:
            self.emu.handle_gp()  # raises GuestFault when it is a real #GP
            return True
        return False

    def io_permitted(self, vcpu: VCpu) -> bool:
        cpl = vcpu.cpl
        return cpl <= self.kernel_ring or cpl <= (self.user_iopl >> 12)

    # -- timers -------------------------------------------------------------------------------------
    def deadline(self) -> int | None:
        return min((e for e, _p in self.alarms.values()), default=None)

    def update_timers(self) -> None:
        if not self.alarms:
            return
        now = self.machine.clock.now_ns()
        for counter, (expiry, period) in list(self.alarms.items()):
            if now >= expiry:
                self.machine.pic.raise_irq(0)
                if period:
                    self.alarms[counter] = (expiry + ((now - expiry) // period + 1) * period, period)
                else:
                    del self.alarms[counter]

    def summary(self) -> dict:
        d = super().summary()
        d["hypercalls"] = self.calls_seen
        d["hypercalls_by_call"] = self.hypercall_counts()
        if self.emu is not None:
            d["emulated"] = self.emu.stats.traps
        return d

    # -- helpers --------------------------------------------------------------------------------------
    @staticmethod
    def stack_arg(vcpu: VCpu, n: int) -> int:
        """The n-th stack argument of a regparm(3) call (past the return address); the register
        arguments are `self.eax`, `self.edx`, `self.ecx` (read once, when the hypercall arrived)."""
        return vcpu.read_u32(_u32(vcpu.get("esp") + 4 + 4 * n))

    def _after_if_change(self, vcpu: VCpu) -> None:
        self.machine.update_timers()
        self.machine.deliver_pending_interrupt()

    def _descriptor(self, vcpu: VCpu, sel: int) -> tuple[int, int]:
        """(lo, hi) of GDT descriptor `sel`; #GP(sel) when outside the GDT or an LDT selector."""
        base, limit = vcpu.get("gdtr")
        if sel & 4 or (sel & ~7) + 7 > limit or sel & ~7 == 0:
            raise GuestFault(GP, sel & ~3)
        return struct.unpack("<II", vcpu.read(base + (sel & ~7), 8))

    @staticmethod
    def _desc_base_limit(lo: int, hi: int) -> tuple[int, int]:
        base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
        limit = (lo & 0xFFFF) | (hi & 0xF0000)
        if hi & (1 << 23):
            limit = (limit << 12) | 0xFFF
        return base, limit

    def _read_dtr(self, vcpu: VCpu, ptr: int) -> tuple[int, int]:
        raw = vcpu.read(ptr, 6)
        limit, base = struct.unpack("<HI", raw)
        return base, limit

    def _load_segment_checked(self, vcpu: VCpu, reg: str, sel: int) -> None:
        from vmirom.engines.base import EngineError

        try:
            vcpu.set(reg, sel)
        except EngineError:
            raise GuestFault(GP, sel & ~3) from None

    # -- descriptor tables -------------------------------------------------------------------------
    @handles("SetGDT")
    def set_gdt(self, vcpu: VCpu) -> None:
        base, limit = self._read_dtr(vcpu, self.eax)
        self._validate_table(vcpu, base, limit)
        live = {reg: vcpu.get(reg) for reg in ("cs", "ss", "ds", "es", "fs", "gs")}
        for sel in live.values():  # every live selector must stay valid
            if sel & ~3 == 0:
                continue
            if sel & 4 or (sel & ~7) + 7 > limit:
                raise GuestFault(GP, sel & ~3)
            _lo, hi = struct.unpack("<II", vcpu.read(base + (sel & ~7), 8))
            if not hi & 0x8000 or not (hi >> 12) & 1:
                raise GuestFault(GP, sel & ~3)
        old = vcpu.get("gdtr")
        vcpu.set("gdtr", (base, limit))
        try:
            for reg, sel in live.items():  # "reloads all segment registers"
                if sel & ~3 and reg != "cs":
                    self._load_segment_checked(vcpu, reg, sel)
        except GuestFault:
            vcpu.set("gdtr", old)
            for reg, sel in live.items():
                if sel & ~3 and reg != "cs":
                    self._load_segment_checked(vcpu, reg, sel)
            raise
        self.emu.ctl.gdtr = (base, limit)

    def _validate_table(self, vcpu: VCpu, base: int, limit: int) -> None:
        """A GDT the kernel hands over: refused (#GP) with a call/task gate or 16-bit TSS in it,
        DPL 0 code/data compressed to the kernel ring in guest memory (vmirom.machine.descriptors)."""
        if not self.kernel_ring:
            return
        size = min(limit + 1, 8192 * 8) & ~7
        raw = vcpu.read(base, size) if size else b""
        new, n = checked_table(raw, self.kernel_ring)
        if new != raw:  # compressed, or only Accessed bits set (the engine then never writes them)
            vcpu.write_code(base, new)
        if n:
            self._metrics.count("descriptor:compressed", n)

    @handles("SetIDT")
    def set_idt(self, vcpu: VCpu) -> None:
        base, limit = self._read_dtr(vcpu, self.eax)
        vcpu.set("idtr", (base, limit))
        self.emu.ctl.idtr = (base, limit)

    @handles("GetGDT")
    def get_gdt(self, vcpu: VCpu) -> None:
        base, limit = vcpu.get("gdtr")
        vcpu.write(self.eax, struct.pack("<HI", limit, base))

    @handles("GetIDT")
    def get_idt(self, vcpu: VCpu) -> None:
        base, limit = vcpu.get("idtr")
        vcpu.write(self.eax, struct.pack("<HI", limit, base))

    @handles("SetTR")
    def set_tr(self, vcpu: VCpu) -> None:
        sel = self.eax & 0xFFFF
        lo, hi = self._descriptor(vcpu, sel)
        if (hi >> 8) & 0x1F not in (0x09, 0x0B) or not hi & 0x8000:
            raise GuestFault(GP, sel & ~3)
        base, limit = self._desc_base_limit(lo, hi)
        vcpu.set("tr", (sel, base, limit, 0x8900))  # type 9 in the engine (unicorn W3)
        self.emu.ctl.tr = sel

    @handles("GetTR")
    def get_tr(self, vcpu: VCpu) -> None:
        vcpu.set("eax", vcpu.get("tr")[0])

    @handles("SetLDT")
    def set_ldt(self, vcpu: VCpu) -> None:
        sel = self.eax & 0xFFFF
        if sel & ~3 == 0:
            vcpu.set("ldtr", (0, 0, 0, 0))
        else:
            lo, hi = self._descriptor(vcpu, sel)
            if (hi >> 8) & 0x1F != 0x02 or not hi & 0x8000:
                raise GuestFault(GP, sel & ~3)
            base, limit = self._desc_base_limit(lo, hi)
            self._validate_table(vcpu, base, limit)  # the LDT's contents, like a GDT's
            vcpu.set("ldtr", (sel, base, limit, 0x8200))
        self.emu.ctl.ldtr = sel

    @handles("GetLDT")
    def get_ldt(self, vcpu: VCpu) -> None:
        vcpu.set("eax", vcpu.get("ldtr")[0])

    def _write_entry(self, vcpu: VCpu, *, idt: bool = False) -> None:
        """Write descriptor `index` of the table at EAX, after the de-privileging rules of
        vmirom.machine.descriptors (DPL 0 code/data -> the kernel ring, no call/task gates)."""
        table, index, lo = self.eax, self.edx, self.ecx
        hi = self.stack_arg(vcpu, 0)
        if index > 8191:
            raise GuestFault(GP, 0)
        if idt:
            checked_gate(lo, hi, self.kernel_ring)
        else:
            lo, hi, compressed = checked_segment(lo, hi, self.kernel_ring)
            if compressed:
                self._metrics.count("descriptor:compressed")
        vcpu.write_code(_u32(table + 8 * index), struct.pack("<II", lo, hi))  # over code it ran: seen

    @handles("WriteGDTEntry")
    def write_gdt_entry(self, vcpu: VCpu) -> None:
        self._write_entry(vcpu)

    @handles("WriteLDTEntry")
    def write_ldt_entry(self, vcpu: VCpu) -> None:
        self._write_entry(vcpu)

    @handles("WriteIDTEntry")
    def write_idt_entry(self, vcpu: VCpu) -> None:
        self._write_entry(vcpu, idt=True)

    @handles("UpdateKernelStack")
    def update_kernel_stack(self, vcpu: VCpu) -> None:
        ss, esp = self.eax, self.edx
        if ss > 0xFFFF:  # a TSS pointer (older guests): keep our SS
            ss = vcpu.get("ss")
        lo, hi = self._descriptor(vcpu, ss)
        dpl = (hi >> 13) & 3
        if (
            (ss & 3) != self.kernel_ring
            or dpl != self.kernel_ring
            or (hi >> 9) & 0x7 not in (1, 3)
            or not (hi >> 12) & 1
            or not hi & 0x8000
        ):  # present, writable data, kernel ring
            raise GuestFault(GP, ss & ~3)
        self.machine.kernel_stacks[self.kernel_ring] = (ss, esp)

    # -- control registers --------------------------------------------------------------------------
    @handles("SetCR0")
    def set_cr0(self, vcpu: VCpu) -> None:
        v = self.eax
        if v & ~CR0_ALLOWED or not v & 1 or v & (1 << 31) and self._bad_cr3(vcpu.get("cr3")):
            raise GuestFault(GP, 0)  # reserved bits, PE off, paging on garbage
        vcpu.set("cr0", v)
        self.emu.ctl.cr0 = v

    def _bad_cr3(self, v: int) -> bool:
        return (v & 0xFFFFF000) + 4096 > self.machine.memory.size

    @handles("SetCR2")
    def set_cr2(self, vcpu: VCpu) -> None:
        vcpu.set("cr2", self.eax)

    @handles("SetCR3")
    def set_cr3(self, vcpu: VCpu) -> None:
        v = self.eax
        if self._bad_cr3(v):
            raise GuestFault(GP, 0)
        vcpu.set("cr3", v)
        self.emu.ctl.cr3 = v

    @handles("SetCR4")
    def set_cr4(self, vcpu: VCpu) -> None:
        v = self.eax
        if v & ~CR4_ALLOWED:
            raise GuestFault(GP, 0)
        vcpu.set("cr4", v)
        self.emu.ctl.cr4 = v

    def _get_cr(n: int):  # noqa: N805 - factory
        def get(self, vcpu: VCpu) -> None:
            vcpu.set("eax", vcpu.get(f"cr{n}"))

        return get

    get_cr0 = handles("GetCR0")(_get_cr(0))
    get_cr2 = handles("GetCR2")(_get_cr(2))
    get_cr3 = handles("GetCR3")(_get_cr(3))
    get_cr4 = handles("GetCR4")(_get_cr(4))

    @handles("CLTS")
    def clts(self, vcpu: VCpu) -> None:
        vcpu.set("cr0", vcpu.get("cr0") & ~0x8)

    @handles("SetDR")
    def set_dr(self, vcpu: VCpu) -> None:
        num, value = self.eax, self.edx
        if num not in (0, 1, 2, 3, 6, 7):
            raise GuestFault(GP, 0)
        vcpu.set(f"dr{num}", value)

    @handles("GetDR")
    def get_dr(self, vcpu: VCpu) -> None:
        num = self.eax
        if num not in (0, 1, 2, 3, 6, 7):
            raise GuestFault(GP, 0)
        vcpu.set("eax", vcpu.get(f"dr{num}"))

    # -- interrupt flag, privilege transitions ------------------------------------------------------
    @handles("EnableInterrupts")
    def enable_interrupts(self, vcpu: VCpu) -> None:
        vcpu.set_interrupts(True)
        self._after_if_change(vcpu)

    @handles("DisableInterrupts")
    def disable_interrupts(self, vcpu: VCpu) -> None:
        vcpu.set_interrupts(False)

    @handles("GetInterruptMask")
    def get_interrupt_mask(self, vcpu: VCpu) -> None:
        vcpu.set("eax", vcpu.get("eflags") & IF)

    @handles("SetInterruptMask")
    def set_interrupt_mask(self, vcpu: VCpu) -> None:
        on = bool(self.eax & IF)
        vcpu.set_interrupts(on)
        if on:
            self._after_if_change(vcpu)

    @handles("IRET")
    def iret(self, vcpu: VCpu) -> None:
        # The hottest hypercall (every return to user space): one batched register read, the
        # descriptors through the allocation-free table walk, the new state in one engine call.
        regs = self._iret_regs()
        esp = regs[0]
        eip, cs, flags = struct.unpack("<III", vcpu.read(esp, 12))
        cs &= 0xFFFF
        undo = self.before_iret(cs, flags)
        try:
            self._iret(vcpu, regs, eip, cs, flags)
        except GuestFault:
            if undo is not None:
                undo()
            raise

    def before_iret(self, cs: int, flags: int) -> Callable[[], None] | None:
        """A subclass's look at a validated-to-be IRET frame (e.g. vmi2's virtual IF); returns what
        undoes it if the IRET faults."""
        return None

    def _iret(self, vcpu: VCpu, regs: tuple[int, ...], eip: int, cs: int, flags: int) -> None:
        esp, cur, cs_now, gdt_base, gdt_limit, cr0, cr3, cr4, *data_segs = regs
        cpl = cs_now & 3
        rpl = cs & 3
        if rpl < cpl:
            raise GuestFault(GP, cs & ~3)
        hi = self._gdt_hi(vcpu, cs, gdt_base, gdt_limit, cr0, cr3, cr4)
        if not (hi >> 11) & 1 or not (hi >> 12) & 1 or (hi >> 13) & 3 != rpl or not hi & 0x8000:
            raise GuestFault(GP, cs & ~3)
        new_flags = (flags & IRET_FLAGS) | (cur & ~IRET_FLAGS) | 0x2
        eng = self.machine.engine
        if rpl == cpl:
            eng.enter_handler(None, cs if cs != cs_now else None, 0, _u32(esp + 12), new_flags, eip)
        else:
            new_esp, ss = struct.unpack("<II", vcpu.read(esp + 12, 8))
            ss &= 0xFFFF
            shi = self._gdt_hi(vcpu, ss, gdt_base, gdt_limit, cr0, cr3, cr4)
            if (ss & 3) != rpl or (shi >> 13) & 3 != rpl or (shi >> 11) & 1 or not (shi >> 9) & 1:
                raise GuestFault(GP, ss & ~3)
            eng.enter_handler(rpl, cs, ss, new_esp, new_flags, eip)
            for reg, sel in zip(("ds", "es", "fs", "gs"), data_segs, strict=True):  # outer ring may not
                if sel & ~3:
                    try:
                        ok = (self._gdt_hi(vcpu, sel, gdt_base, gdt_limit, cr0, cr3, cr4) >> 13) & 3 >= rpl
                    except GuestFault:
                        ok = False
                    if not ok:
                        vcpu.set(reg, 0)
        if new_flags & IF:
            self._after_if_change(vcpu)

    def _gdt_hi(self, vcpu: VCpu, sel: int, base: int, limit: int, cr0: int, cr3: int, cr4: int) -> int:
        """The high dword of GDT descriptor `sel` (as `_descriptor`, on the fast table walk)."""
        if sel & 4 or (sel & ~7) + 7 > limit or sel & ~7 == 0:
            raise GuestFault(GP, sel & ~3)
        pair = self._paging.sys_u32x2(base + (sel & ~7), cr0, cr3, cr4)
        return pair[1] if pair is not None else self._descriptor(vcpu, sel)[1]

    @handles("SYSEXIT")
    def sysexit(self, vcpu: VCpu) -> None:
        base = vcpu.read_msr(0x174) & 0xFFFC
        if not base:
            raise GuestFault(GP, 0)
        self.machine.engine.switch_ring(3, (base + 16) | 3, (base + 24) | 3)
        vcpu.set("esp", self.ecx)
        vcpu.set("eip", self.edx)
        vcpu.set_interrupts(True)
        self._after_if_change(vcpu)

    @handles("Halt")
    def halt(self, vcpu: VCpu) -> None:
        vcpu.set_interrupts(True)  # all VMI halts are safe halts
        self.machine.update_timers()
        if not self.machine.deliver_pending_interrupt():
            vcpu.halt()

    @handles("Shutdown")
    def shutdown(self, vcpu: VCpu) -> None:
        self.machine.guest_exit(0)

    @handles("Reboot")
    def reboot(self, vcpu: VCpu) -> None:
        self.machine.stop("reboot", f"the guest asked for a {'hard' if vcpu.get('eax') else 'soft'} reboot")

    @handles("SetIOPLMask")
    def set_iopl_mask(self, vcpu: VCpu) -> None:
        v = self.eax
        if v & ~IOPL:
            raise GuestFault(GP, 0)
        self.user_iopl = v
        self.emu.ctl.iopl = v >> 12

    # -- MMU ------------------------------------------------------------------------------------------
    @handles("SetPxE")
    def set_pxe(self, vcpu: VCpu) -> None:
        value, ptr = self.eax, self.edx
        if ptr & 3:
            raise GuestFault(GP, 0)
        # aligned: one page, one checked translation (faults like the CPU), one checked RAM write
        phys = self._paging.translate(ptr, write=True, user=False)
        mmu = self.machine.mmu
        if mmu is None:
            self._memory.write(phys, value.to_bytes(4, "little"))
            return
        self._memory.check(phys, 4, write=True)
        mmu.set_pxe(phys, value, defer=bool(self.ecx & abi.PAGE_DEFER))  # entry and shadow together
        self._memory.vmm_wrote(phys, 4)  # over code the guest ran: re-translated
        vcpu.sync_tlb()

    @handles("UpdatePxE")
    def update_pxe(self, vcpu: VCpu) -> None:
        """The guest wrote the entry itself: the shadows follow (nothing to do without shadows)."""
        ptr = self.eax
        if ptr & 3:
            raise GuestFault(GP, 0)
        mmu = self.machine.mmu
        if mmu is not None:
            phys = self._paging.translate(ptr, write=False, user=False)
            if self.edx & abi.PAGE_DEFER:
                mmu.defer_entry(phys)
            else:
                mmu.entry_written(phys)
            vcpu.sync_tlb()

    def _check_pfn(self, pfn: int) -> None:
        if pfn >= self.machine.memory.size >> 12:
            raise GuestFault(GP, 0)

    @handles("AllocatePage")
    def allocate_page(self, vcpu: VCpu) -> None:
        self._check_pfn(self.eax)
        if self.edx & abi.PAGE_CLONE:
            self._check_pfn(self.ecx)
            start, count = self.stack_arg(vcpu, 0), self.stack_arg(vcpu, 1)
            if start > 1024 or count > 1024 - start:
                raise GuestFault(GP, 0)
        if self.machine.mmu is not None and self.edx & (abi.PAGE_PT | abi.PAGE_PD):
            self.machine.mmu.allocate_page(self.eax)  # a table the guest keeps up to date with SetPxE

    @handles("ReleasePage")
    def release_page(self, vcpu: VCpu) -> None:
        self._check_pfn(self.eax)
        if self.machine.mmu is not None:
            self.machine.mmu.release_page(self.eax)  # no longer a table: its shadows go
            vcpu.sync_tlb()

    @handles("InvalPage")
    def inval_page(self, vcpu: VCpu) -> None:
        vcpu.invlpg(self.eax)

    @handles("FlushTLB")
    def flush_tlb(self, vcpu: VCpu) -> None:
        if self.eax & ~3:
            raise GuestFault(GP, 0)
        vcpu.flush_tlb(include_global=bool(self.eax & abi.FLUSH_GLOBAL))

    @handles("SetLazyMode")
    def set_lazy_mode(self, vcpu: VCpu) -> None:
        mode = self.eax
        if mode > 2:
            raise GuestFault(GP, 0)
        self.lazy_mode = mode
        if self.machine.mmu is not None:
            self.machine.mmu.set_lazy(mode == abi.LAZY_MMU)  # leaving MMU mode applies DEFERred updates
            vcpu.sync_tlb()

    # -- time -----------------------------------------------------------------------------------------
    @handles("GetCycleFrequency")
    def get_cycle_frequency(self, vcpu: VCpu) -> None:
        vcpu.set("eax", CYCLE_HZ & 0xFFFFFFFF)
        vcpu.set("edx", CYCLE_HZ >> 32)

    @handles("GetCycleCounter")
    def get_cycle_counter(self, vcpu: VCpu) -> None:
        counter = self.eax
        v = (
            self.machine.clock.now_ns()
            if counter in (abi.CYCLE_COUNTER_REAL, abi.CYCLE_COUNTER_AVAILABLE)
            else 0
        )
        vcpu.set("eax", v & 0xFFFFFFFF)
        vcpu.set("edx", (v >> 32) & 0xFFFFFFFF)

    @handles("SetAlarm")
    def set_alarm(self, vcpu: VCpu) -> None:
        flags = self.eax
        expiry = self.edx | (self.ecx << 32)
        period = self.stack_arg(vcpu, 0) | (self.stack_arg(vcpu, 1) << 32)
        counter = flags & abi.ALARM_COUNTER_MASK
        if counter not in (abi.CYCLE_COUNTER_REAL, abi.CYCLE_COUNTER_AVAILABLE):
            return  # STOLEN / unknown counter: a NOP
        if not flags & abi.ALARM_PERIODIC:
            period = 0
        if period and period < 50_000:  # at most 20 kHz of alarms
            period = 50_000
        self.alarms[counter] = (expiry, period)
        self.update_timers()

    @handles("CancelAlarm")
    def cancel_alarm(self, vcpu: VCpu) -> None:
        vcpu.set("eax", 1 if self.alarms.pop(self.eax, None) is not None else 0)

    @handles("GetWallclockTime")
    def get_wallclock(self, vcpu: VCpu) -> None:
        v = self.machine.clock.wall_ns()
        vcpu.set("eax", v & 0xFFFFFFFF)
        vcpu.set("edx", (v >> 32) & 0xFFFFFFFF)

    @handles("WallclockUpdated")
    def wallclock_updated(self, vcpu: VCpu) -> None:
        vcpu.set("eax", 0)
