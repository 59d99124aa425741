"""The compiled engine core: hot exits completed in C, the Python path kept as the reference.

Like the split between KVM and its user space: the common exits - interrupt and exception
delivery through the guest IDT (`int n`, faults incl. the #PF error code, external interrupts, the
double-fault rules; vmi2's virtual interrupt flag in its shared page), the console's port I/O, and
vmi's/vmi2's IRET and state-only hypercalls - are completed by a small C extension (`_core`,
sources next to this file, built by the package's own build: `setup.py`) without entering Python.
Every case it cannot prove ordinary falls through, unchanged, to the Python path (`vmirom.machine.delivery`,
`Machine.on_interrupt`), which stays the readable reference; the synthetic-exit tests run on both.

Choice: `MachineConfig.engine_core`, `vmirom run --engine-core=python|c`, or the environment
variable VMIROM_ENGINE_CORE; default `c` when the extension is built (else `python`, with a one-line
reason).  What the core may do is decided per personality (`policy`): it only skips a personality
method that is the base class's no-op or that the class defining it declared (`core_exception_vectors`
next to `on_exception`), so a third-party personality works unchanged.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmirom.machine.machine import Machine

ENV = "VMIROM_ENGINE_CORE"
CHOICES = ("python", "c")
INT64_MAX = (1 << 63) - 1

#: the interface this glue expects of `_core` (module.c's API): a build from older sources (a
#: checkout updated without scripts/setup.sh) is refused with a note, not half used
API = 7

try:  # the extension is optional: a checkout without a build still runs (the Python path)
    from vmirom.engines.core import _core
    LOAD_ERROR: str | None = None
    if getattr(_core, "API", 1) != API:
        built = getattr(_core, "API", 1)
        LOAD_ERROR = f"the C engine core build is out of date (API {built}, want {API}): run scripts/setup.sh"
        _core = None
except ImportError as e:  # pragma: no cover - depends on the build
    _core = None
    LOAD_ERROR = f"the C engine core is not built ({e}); run scripts/setup.sh"


def available() -> bool:
    return _core is not None


def resolve(choice: str | None = None) -> tuple[str, str | None]:
    """(core to use, note for the user or None).  `choice` None: the environment, else the default."""
    want = (choice or os.environ.get(ENV) or "").strip().lower() or None
    if want is not None and want not in CHOICES:
        raise ValueError(f"unknown engine core {want!r} (choose from {', '.join(CHOICES)})")
    if want == "python":
        return "python", None
    if _core is None:
        return "python", f"{LOAD_ERROR}; using the Python path"
    return "c", None


def counter_keys() -> list[tuple[str, str] | None]:
    """Counter index -> (coarse kind, detail key), the same keys the Python path counts."""
    keys: list[tuple[str, str] | None] = [None] * _core.C_NCOUNTERS
    for v in range(256):
        keys[_core.C_SOFTINT + v] = ("softint", f"softint:{v:#x}")
        keys[_core.C_EXCEPTION + v] = ("exception", f"exception:{v}")
        keys[_core.C_INTERRUPT + v] = ("interrupt", f"interrupt:{v}")
    from vmirom import abi

    for call in abi.CALLS:
        if call.number < _core.C_NHYPERCALLS:
            keys[_core.C_HYPERCALL + call.number] = ("hypercall", f"hypercall:{call.name}")
    keys[_core.C_RING_CHANGE] = ("delivery", "delivery:ring_change")
    keys[_core.C_NESTED] = ("delivery", "delivery:nested_fault")
    keys[_core.C_DOUBLE] = ("delivery", "delivery:double_fault")
    keys[_core.C_SHADOW_HIDDEN] = ("shadow", "shadow:hidden_fault")
    keys[_core.C_MMU_PV_UPDATE] = ("mmu", "mmu:pv_update")  # events: Metrics.event's kind, not exits
    keys[_core.C_MMU_PREFILL] = ("mmu", "mmu:prefill")
    keys[_core.C_MMU_ZAP] = ("mmu", "mmu:zap")
    keys[_core.C_MMU_DEFERRED] = ("mmu", "mmu:deferred_update")
    keys[_core.C_SHADOW_WP] = ("shadow", "shadow:wp_trap")
    keys[_core.C_MMU_EMULATED] = ("mmu", "mmu:emulated_pte_write")
    return keys


def bind_mmu(core, mmu) -> None:  # noqa: ANN001 - a _core.Core, a ShadowMMU
    """Give `core` the shadow MMU's shared arrays (vmirom.machine.mmu.shared) and let its #PF path
    run (mmu.c: hidden faults filled, true faults decided in C).  `core.set_shadow` first."""
    from vmirom.machine.mmu.shared import C_ENABLED

    pm, sh = mmu.pm, mmu.shared
    core.set_mmu(pm.p2m_table, pm.m2p_table, sh.meta, sh.used, sh.snaps, sh.protect, sh.flood, sh.head,
                 sh.ctl, sh.log, sh.watched, sh.watched_low, sh.defq)
    sh.ctl[C_ENABLED] = 1


def _declared(cls: type, method: str, attr: str):
    """`attr` of the class that defines `method` (None when that class does not declare it): a
    declaration only covers the method written next to it, never an override in a subclass."""
    for klass in cls.__mro__:
        if method in klass.__dict__:
            return klass.__dict__.get(attr)
    return None


#: the vmi methods the C IRET stands for: a personality that overrides any of them keeps the Python path
_IRET_METHODS = ("is_hypercall", "hypercall", "iret", "before_iret", "_iret", "_gdt_hi", "_after_if_change",
                 "count_from_core")
#: the vmi2 methods the C virtual interrupt flag (vmi2.c) stands for (its IRET side, before_iret, is
#: one of the _IRET_METHODS: a vmi2 with its own keeps its IRET in Python, its deliveries in C)
_VIF_METHODS = ("load_virtual_if", "save_virtual_if", "_kernel_mode", "_u32", "_u32w", "_refuse_shared")


def virtual_if(machine: Machine) -> int | None:
    """Guest-physical address of vmi2's shared page when the core may keep the personality's virtual
    interrupt flag there itself (vmi2.c: a `Vmi2` that overrides none of the methods involved), else
    None (a personality with an IF of its own then keeps the Python path: `policy`)."""
    from vmirom.hypervisors.vmi2 import Vmi2

    p = machine.personality
    if not isinstance(p, Vmi2) or machine.rom_range is None:
        return None
    if any(getattr(type(p), name) is not getattr(Vmi2, name) for name in _VIF_METHODS):
        return None
    return p.shared


def _reference(machine: Machine) -> type:
    """The class whose hypercall methods the C core was written after: Vmi2 (when `virtual_if`
    stands for it) or Vmi."""
    from vmirom.hypervisors.vmi import Vmi
    from vmirom.hypervisors.vmi2 import Vmi2

    return Vmi2 if virtual_if(machine) is not None else Vmi


def iret_site(machine: Machine) -> int:
    """ROM offset of the IRET stub's `int $0x82` (vmi2: of its exit path) when the C core may do the
    IRET hypercall (the personality is a `Vmi`, or a `Vmi2`, that overrides none of the methods
    involved), else -1."""
    from vmirom import abi
    from vmirom.hypervisors.vmi import HYPERCALL_VECTOR as HYPERCALL_INT
    from vmirom.hypervisors.vmi import Vmi

    p = machine.personality
    if not isinstance(p, Vmi) or machine.rom_range is None:
        return -1
    if p.hypercall_port is not None or p.trap_asm() != f"int ${HYPERCALL_INT:#x}":
        return -1  # another hypercall mechanism (docs/plugins.md): the C IRET knows only `int $0x82`
    ref = _reference(machine)
    if any(getattr(type(p), name) is not getattr(ref, name) for name in _IRET_METHODS):
        return -1
    if p.dispatch.get(abi.call("IRET").number) != p.iret:
        return -1
    sites = [off for off, num in p.call_at.items() if num == abi.call("IRET").number]
    return sites[0] if len(sites) == 1 else -1


def console_rule(machine: Machine) -> int | None:
    """The in/out permission rule the core applies for the console's hot cases (console.c), or None
    when it must leave all port I/O to Python: the personality intercepts ports, or decides I/O
    permission in a way the core does not know.  Like `policy`, only the base methods (and Vmi's
    io_permitted, not overridden) are stood for."""
    from vmirom.hypervisors.base import Personality
    from vmirom.hypervisors.vmi import Vmi

    cls = type(machine.personality)
    if cls.port_in is not Personality.port_in or cls.port_out is not Personality.port_out:
        return None
    if machine.io._ports.get(machine.uart.base) is not machine.uart:
        return None
    if cls.io_permitted is Personality.io_permitted:
        return _core.IO_RULE_IOPL
    if cls.io_permitted is Vmi.io_permitted:
        return _core.IO_RULE_KERNEL  # CPL <= kernel ring in C; a user context with IOPL: Python
    return None


#: the vmi hypercalls that only read or set CPU state, done in C (hcall.c's core_state_call):
#: call -> (the Vmi methods it stands for, handler first; kind: core.h's STATE_*)
STATE_CALLS = {"GetCR0": (("get_cr0",), 0), "GetCR2": (("get_cr2",), 2), "GetCR3": (("get_cr3",), 3),
               "GetCR4": (("get_cr4",), 4), "GetInterruptMask": (("get_interrupt_mask",), 5),
               "DisableInterrupts": (("disable_interrupts",), 6),
               "EnableInterrupts": (("enable_interrupts", "_after_if_change"), 7),
               "SetInterruptMask": (("set_interrupt_mask", "_after_if_change"), 8),
               "UpdateKernelStack": (("update_kernel_stack", "_descriptor"), 9)}


#: the shadow MMU's hypercalls done in C (mmu.c's core_mmu_pxe), as state calls: call -> (Vmi method,
#: kind).  Only Vmi's own methods exactly (vmi2's SetPxE flushes its batch log first: Python's)
MMU_CALLS = {"SetPxE": ("set_pxe", 10), "UpdatePxE": ("update_pxe", 11)}
#: the Vmi2 methods its SetPxE in C stands for (kind 12)
_V2_PXE = ("set_pxe", "flush_batch", "_check_entry", "_u32", "_u32w")
#: vmi2's batch flush in C (mmu.c's core_v2_flush): call -> (the Vmi2 methods it stands for, kind)
V2_FLUSH_CALLS = {"SetLazyMode": (("set_lazy_mode", "flush_batch", "_check_entry", "_u32", "_u32w"), 13),
                  "FlushDeferred": (("flush_deferred", "flush_batch", "_check_entry", "_u32", "_u32w"), 14)}


def _single_site(p, kind: int, num: int) -> list[tuple[int, int, int]]:  # noqa: ANN001 - a Vmi
    """[(ROM offset, kind, call)] when call `num` has exactly one trap site in the personality's ROM
    (the core recognizes a state call by where it trapped), else []."""
    sites = [off for off, n in p.call_at.items() if n == num]
    return [(sites[0], kind, num)] if len(sites) == 1 else []


def state_calls(machine: Machine) -> list[tuple[int, int, int]]:
    """[(ROM offset of the stub's `int`, kind, call number)] of the state-only hypercalls the core may
    complete: only alongside the C IRET (`iret_site`'s checks of the personality), and only those
    whose handler (and what it calls) is Vmi's own, dispatched as such, at exactly one ROM site (vmi2's
    in-guest interrupt-flag calls have none: no exit)."""
    from vmirom import abi

    p = machine.personality
    ref = _reference(machine)
    out = []
    for name, (methods, kind) in STATE_CALLS.items():
        num = abi.call(name).number
        if any(getattr(type(p), m) is not getattr(ref, m) for m in methods):
            continue
        if p.dispatch.get(num) != getattr(p, methods[0]):
            continue
        out += _single_site(p, kind, num)
    if getattr(machine, "mmu", None) is not None:
        from vmirom.hypervisors.vmi import Vmi
        from vmirom.hypervisors.vmi2 import Vmi2

        for name, (method, kind) in MMU_CALLS.items():
            num = abi.call(name).number
            own_v2 = ref is Vmi2 and all(getattr(type(p), m) is getattr(Vmi2, m) for m in _V2_PXE)
            if name == "SetPxE" and own_v2:
                kind = 12  # Vmi2.set_pxe: its batch log empty, then Vmi's (mmu.c's v2_ready)
            elif getattr(type(p), method) is not getattr(Vmi, method):
                continue
            if p.dispatch.get(num) != getattr(p, method):
                continue
            out += _single_site(p, kind, num)
        for name, (methods, kind) in V2_FLUSH_CALLS.items():  # Vmi2's (and Vmi's set_lazy_mode) only
            num = abi.call(name).number
            if ref is not Vmi2 or any(getattr(type(p), m) is not getattr(Vmi2, m) for m in methods):
                continue
            if p.dispatch.get(num) != getattr(p, methods[0]):
                continue
            out += _single_site(p, kind, num)
    return out


def wp_store_in_c(machine: Machine) -> bool:
    """May the core emulate a trapped page-table store (mmu.c core_wp_store)?  Only what
    FullVirt.on_wp_trap itself would do: the personality must not have its own on_wp_trap, and the
    MMU must track page tables by write protection.  Anything the core declines stays Python's."""
    from vmirom.hypervisors.fullvirt import FullVirt

    p, mmu = machine.personality, getattr(machine, "mmu", None)
    return (mmu is not None and mmu.tracking == "wp" and isinstance(p, FullVirt)
            and type(p).on_wp_trap is FullVirt.on_wp_trap)


def policy(machine: Machine) -> tuple[bool, int, bytes, str]:
    """(may the core complete INTR exits, hypercall vector or -1, 256-byte map of the exceptions
    the personality's on_exception may take, why not when it may not)."""
    from vmirom.hypervisors.base import Personality
    from vmirom.machine.machine import KernelStacks

    p = machine.personality
    cls = type(p)
    intercept = bytearray(256)
    own_if = virtual_if(machine) is None  # vmi2's flag in its shared page: the core keeps it too
    for name in ("load_virtual_if", "save_virtual_if"):
        if own_if and getattr(cls, name) is not getattr(Personality, name):
            return False, -1, bytes(intercept), f"{cls.__name__}.{name} is its own"
    if cls.on_exception is not Personality.on_exception:
        vectors = _declared(cls, "on_exception", "core_exception_vectors")
        if vectors is None:
            why = f"{cls.__name__}.on_exception does not say which vectors it takes"
            return False, -1, bytes(intercept), why
        for v in vectors:
            intercept[v] = 1
    if type(machine.kernel_stacks) is not KernelStacks:
        return False, -1, bytes(intercept), "the kernel stacks are computed by the personality"
    hv = p.hypercall_vector
    return True, -1 if hv is None else hv, bytes(intercept), ""


#: the registers of core.h's vregs_t before the table registers (R_EIP .. R_CR4)
_SHADOW_PF_NAMES = ("eip", "eflags", "cs", "ss", "esp", "cr0", "cr3", "cr4")
#: the general registers in x86 encoding order (core.h's vwp_t.gpr, a ModRM register field's index)
_GPR_NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")


class MachineCore:
    """One machine's C core: publishes the machine state it needs, reads its counters into Metrics."""

    name = "c"

    def __init__(self, machine: Machine) -> None:
        self.m = machine
        mem = machine.memory
        self.core = _core.Core(mem.ram, mem.size)
        self._keys = counter_keys()
        base = machine.uart.base
        for r in range(8):
            self._keys[_core.C_IO_IN + r] = ("io", f"io:in:{base + r:#x}")
            self._keys[_core.C_IO_OUT + r] = ("io", f"io:out:{base + r:#x}")
        self.accel, hv, intercept, self.why_not = policy(machine)
        self.core.set_policy(self.accel, hv, intercept)
        self.iret_site = iret_site(machine) if self.accel else -1
        if self.iret_site >= 0:
            from vmirom import abi

            self._iret_number = abi.call("IRET").number
            p = machine.personality
            self.core.set_iret(p.kernel_ring, machine.rom_range[0], self.iret_site, self._iret_number)
            self.core.set_state_calls(state_calls(machine))
        else:  # no IRET in C, but delivery needs the kernel ring too (its de-privileging rules)
            self.core.set_iret(machine.personality.kernel_ring, 0, -1, 0)
        self.publish_memory()
        self.mmu = getattr(machine, "mmu", None)
        if self.mmu is not None:
            # shadow paging: the engine's CR3 is the shadow root; the core then completes software
            # interrupts only (exceptions, page faults above all, are the MMU's), walking the guest's
            # tables with its virtual control registers (published by sync)
            self.core.set_shadow(mem.machine, mem.machine_offset + mem.size)
            # the #PF exit's MMU decision in C (mmu.c), whatever the personality's policy: a hidden
            # fault runs no personality code; a true fault is delivered in C only under `accel`
            bind_mmu(self.core, self.mmu)
            from vmirom.machine.mmu.shared import C_WP_EMULATE

            self.mmu.shared.ctl[C_WP_EMULATE] = int(wp_store_in_c(machine))
            machine.engine.share_cr2(self.core)
        for ring, (ss, esp) in machine.kernel_stacks.items():
            self.core.set_kernel_stack(ring, ss, esp)
        ks = machine.kernel_stacks
        if hasattr(ks, "on_change"):
            ks.on_change = self._kernel_stack_changed
            ks.pull = self._pull_kernel_stacks  # UpdateKernelStack done in C: Python reads it lazily
        self._ks_flag = self.core.kernel_stacks_flag().cast("i")
        # vmi2: the virtual interrupt flag, kept by the core once the personality made its page live
        self.vif = virtual_if(machine) if self.accel else None
        self._vif_wait = self.vif is not None
        if self.vif is not None:
            self.core.set_vif(True, False, self.vif)
        self._pending = self.core.pending_flag().cast("i")  # ndirty, read without a call
        machine.metrics.add_source(self.drain)
        self._clock = machine.clock
        self._vcrs: tuple[int, int, int] | None = None
        self._window: tuple[bool, int] | None = None
        self._console: tuple | None = None
        rule = console_rule(machine) if self.accel else None
        self.console = rule is not None
        hport = machine.personality.hypercall_port
        self.core.set_console(self.console, base, -1 if hport is None else hport, rule or 0)
        if self.console:
            machine.uart.before_access = self.drain_console

    @property
    def mmu_fast(self) -> bool:
        """Does the core take shadow #PF exits (mmu.c)?"""
        if self.mmu is None:
            return False
        from vmirom.machine.mmu.shared import C_ENABLED

        return bool(self.mmu.shared.ctl[C_ENABLED])

    def disable(self, reason: str) -> None:
        """From now on every exit takes the Python path (e.g. a debugging mode that must see every
        exit, or that drives guest time by another clock than the core's)."""
        self.accel, self.why_not = False, reason
        if self.mmu is not None:
            from vmirom.machine.mmu.shared import C_ENABLED

            self.mmu.shared.ctl[C_ENABLED] = 0
        self.core.set_policy(False, -1, bytes(256))
        self.core.set_iret(0, 0, -1, 0)
        self.core.set_state_calls([])
        self.core.set_vif(False, False, 0)
        self.vif, self._vif_wait = None, False
        self.iret_site = -1
        self.drain_console()
        self.console = False
        self.core.set_console(False, 0, -1, 0)
        self.m.delivery.use_core(None)

    # -- state the core reads --------------------------------------------------------------------
    def publish_memory(self) -> None:
        """The ranges the core must leave every write to to Python: the read-only ROM and the frames
        of a de-privileged kernel's live descriptor tables (machine/dtguard.py: the Python path
        revalidates what the VMM writes there).  More than the core's four ranges: all writes."""
        mem = self.m.memory
        ranges = list(mem.readonly) + [(g << 12, (g + 1) << 12) for g in sorted(mem.guarded)]
        to_python = mem.on_code_write is not None or len(ranges) > 4
        self.core.set_memory(ranges[:4] if not to_python else list(mem.readonly), to_python)

    def _pull_kernel_stacks(self) -> None:
        """KernelStacks.pull: the overrides the core's UpdateKernelStack set, into the dict (whose
        on_change is not called: the core has them)."""
        if self._ks_flag[0]:
            ks = self.m.kernel_stacks
            for ring, ss, esp in self.core.take_kernel_stacks():
                dict.__setitem__(ks, ring, (ss, esp))

    def _kernel_stack_changed(self, ring: int, value: tuple[int, int] | None) -> None:
        if value is None:
            self.core.set_kernel_stack(ring, None, 0)
        else:
            self.core.set_kernel_stack(ring, value[0], value[1])

    def raw_offset(self) -> int:
        """raw thread-CPU-clock ns = virtual ns + this (see VirtualClock)."""
        clk = self._clock
        if clk._clk is None:
            clk.now_ns()  # pins the clock to this (the vCPU) thread
        return clk._base - clk._skipped

    def sync(self, slice_start: bool = False) -> None:
        """Publish the interrupt window (Machine._irq_first's inputs): whether the PIC holds an
        unmasked request, and the next timer deadline.  Called before every slice and after every
        exit the Python path handled (only Python code changes either)."""
        # Called after every exit the Python path handled: kept to a few attribute reads, and the
        # core is told only what changed.
        m = self.m
        if self._vif_wait and m.personality.live:  # vmi2 initialised its shared page (before_slice)
            self._vif_wait = False
            self.core.set_vif(True, True, self.vif)
        mmu = self.mmu
        if mmu is not None:
            crs = (mmu.cr0, mmu.cr3, mmu.cr4, m.engine.cr2)  # the engine: the MMU's CpuView
            if crs != self._vcrs:
                self._vcrs = crs
                self.core.set_virtual_crs(*crs)
        master = m.pic.master
        nxt = m.next_deadline()
        # a guest's VMI SetAlarm may ask for any 64-bit expiry: clamped to the core's int64 clock
        # (found by the hypercall fuzzer: OverflowError, docs/security.md)
        deadline = INT64_MAX if nxt is None else max(0, min(INT64_MAX, nxt + self.raw_offset()))
        window = (bool(master.irr & ~master.imr), deadline)
        if slice_start or window != self._window:
            self._window = window
            self.core.set_irq_window(*window, slice_start)
        if self.console:
            u = m.uart
            # engine._fenced: W18, the rest of a fenced block reaches no device (the Python hooks' rule)
            con = (u.lcr, u.ier, bool(u.rx), u.last_tx != 0x0A, getattr(m.engine, "_fenced", False))
            if con != self._console:
                self._console = con
                self.core.console_state(*con)

    def drain_console(self) -> None:
        """Hand the bytes the core transmitted to the UART (before any Python access to it, and at
        every slice end): the console and its sinks see every byte in order."""
        data = self.core.take_console()
        if data:
            self.m.uart.transmit(data)

    # -- counters --------------------------------------------------------------------------------
    def drain(self, kinds, detail, recent) -> None:  # noqa: ANN001 - Metrics' counters
        """Metrics source: fold the core's counts in, and its log of their order into `recent`."""
        if not self._pending[0]:
            return
        keys = self._keys
        counts, log = self.core.drain()
        for idx, n in counts:
            kind, key = keys[idx]
            kinds[kind] += n
            dict.__setitem__(detail, key, detail[key] + n)  # not through Metrics' recent-recording counter
            if kind == "hypercall":  # the personality's own per-call counters (Vmi.hypercall_counts)
                self.m.personality.count_from_core(idx - _core.C_HYPERCALL, n)
        if recent is not None:
            recent.extend(keys[i][1] for i in log if keys[i][0] != "mmu")  # events: never in recent

    # -- the Python path's own deliveries, done by the core ---------------------------------------
    def deliver(self, regs: tuple[int, ...], vector: int, err: int | None, software: bool, external: bool):
        return self.core.deliver(regs, vector, err, software, external)

    # -- synthetic exits (engines without the C hooks: the tests' fake engine) -----------------------
    def intr(self, vector: int) -> bool:
        """Run the INTR exit through the core's decision, as the Unicorn hook does; True when the core
        completed it (the entry is applied through the engine interface), False: the caller takes the
        Python path."""
        self.sync()
        m = self.m
        if vector == m.personality.hypercall_vector:
            return self.accel and self._hypercall()
        now = m.clock.now_ns() + self.raw_offset()
        if vector == 14 and self.mmu_fast:  # the #PF under shadow paging: the engine's registers
            eng = m.engine.real
            regs = (*(eng.reg(n) for n in _SHADOW_PF_NAMES[:8]), *eng.reg("idtr")[:2], *eng.reg("gdtr")[:2],
                    *eng.reg("tr")[:4], eng.reg("cr2"), eng.reg("edi"))
            gprs = tuple(eng.reg(n) for n in _GPR_NAMES)
            res = self.core.shadow_pf(regs, now, gprs)
            if res == "hidden":
                return True
            if res is not None and res[0] == "wp":  # a page-table store emulated: step over it
                _wp, eip, reg, value = res
                if reg >= 0:
                    eng.set_reg(_GPR_NAMES[reg], value)
                eng.set_reg("eip", eip)
                m.mmu.pull()  # a shadow entry lost rights: the caller's flush (no uc_ctl here)
                m.engine.sync_tlb()
                return True
        elif not self.accel:
            return False
        else:
            res = self.core.intr(vector, m.delivery.registers(), now)
        if res is None:
            return False
        self._enter(res)
        return True

    def _hypercall(self) -> bool:
        """The hook's hypercall path (hcall.c): the IRET or a state call completed in C (True), else
        False.  The registers as the hook reads them: the engine's own control registers (under shadow
        paging the core substitutes the guest's itself)."""
        if self.iret_site < 0:
            return False
        m = self.m
        eng = m.engine
        real = getattr(eng, "real", eng)
        regs = list(m.delivery.registers())
        regs[5:8] = (real.reg("cr0"), real.reg("cr3"), real.reg("cr4"))
        extra = tuple(real.reg(n) for n in ("eax", "edx", "ecx", "ds", "es", "fs", "gs"))
        res = self.core.hypercall(tuple(regs), extra, m.clock.now_ns() + self.raw_offset())
        if res is None:
            return False
        if res[0] == "entry":
            self._enter(res[1])
            return True
        _kind, eax, eflags = res
        if eax is not None:
            eng.set_reg("eax", eax)
        if eflags is not None:
            eng.set_reg("eflags", eflags)
        if self.mmu is not None:  # a SetPxE done in C: the TLB flush its hook would have done
            self.mmu.pull()
            eng.sync_tlb()
        return True

    def _enter(self, res: tuple) -> None:
        m = self.m
        cpl, cs, ss, esp, eflags, eip, cr2 = res
        if cr2 is not None:
            m.engine.set_reg("cr2", cr2)
        m.engine.enter_handler(cpl, cs, ss, esp, eflags, eip)

    def timings(self) -> dict[str, tuple[int, int]]:
        """The core's handler times (profiling): kind -> (calls, ns), hypercalls by VMI call name."""
        from vmirom import abi

        out = {}
        for k, v in self.core.timings().items():
            if k.startswith("hypercall#"):
                k = f"hypercall:{abi.call(int(k[len('hypercall#'):])).name}"
            out[k] = v
        return out

    def summary(self) -> dict:
        return {"name": "c", "accelerated": self.accel, "why_not": self.why_not or None,
                "shadow_mmu": self.mmu_fast,
                "iret": self.iret_site >= 0, "console": self.console,
                "completed": self.core.completed, "fallbacks": self.core.fallbacks,
                "state_calls": self.core.state_calls, "irets": self.core.irets}


def attach(machine: Machine, choice: str | None) -> MachineCore | None:
    """Give `machine` the core it was configured with (None: the Python path)."""
    name, note = resolve(choice)
    machine.engine_core_note = note
    if name != "c":
        return None
    mc = MachineCore(machine)
    use = getattr(machine.engine, "use_core", None)
    if (mc.accel or mc.mmu_fast) and use is not None:
        use(mc)  # the engine gives the core its TLB flush (set_uc_ctl) when it can
    elif mc.mmu is not None:
        mc.core.set_uc_ctl(0)  # synthetic exits: Python flushes after a SetPxE done in C
    if mc.accel:
        machine.delivery.use_core(mc)
    return mc
