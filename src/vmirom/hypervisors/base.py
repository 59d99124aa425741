"""The base class of hypervisor personalities.

A personality is a small class: the ring the guest kernel runs in, the ROM it publishes (or none),
its hypercall handlers, and which events it takes (exceptions it emulates, ports, cpuid).  The
machine (`vmirom.machine.Machine`) calls these methods from its exit handlers; everything not
overridden behaves like the bare platform.  Subclass it, give it a unique `name`, and register it
(`vmirom.hypervisors.register`, or an entry point in the `vmirom.hypervisors` group).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from vmirom.machine.machine import Machine
    from vmirom.machine.vcpu import VCpu
    from vmirom.rom import RomImage, RomSpec


class Personality:
    """Default: the physical machine (kernel at ring 0, no ROM, nothing intercepted)."""

    name: ClassVar[str] = "?"
    description: ClassVar[str] = ""
    kernel_ring: ClassVar[int] = 0
    #: IOPL the kernel is entered with (ring-1 kernels with IOPL 0 trap cli/sti/hlt)
    iopl: ClassVar[int] = 0
    #: software-interrupt vector used by ROM stubs to enter the VMM (None: no hypercalls)
    hypercall_vector: ClassVar[int | None] = None
    #: How guest memory is virtualized (`vmirom.machine.mmu`, docs/mmu.md):
    #: - "direct": guest-physical == machine-physical and the CPU walks the guest's own page tables
    #:   (the physical machine; a hardware-assisted hypervisor with nested paging);
    #: - "shadow": guest RAM lives at machine frames the guest cannot name (p2m/m2p) and the CPU walks
    #:   VMM-built shadow page tables (its CR3 is the shadow root; the guest's CR0/CR3/CR4/CR2 are
    #:   virtual, kept by the machine's ShadowMMU).
    #: Code that reads guest page tables or guest-physical memory itself (the page walker, delivery,
    #: any compiled fast path) must, for "shadow", use the guest's virtual CR3 and translate every
    #: guest-physical address through p2m - never the engine's CR3 or a machine address.
    memory_model: ClassVar[str] = "direct"
    #: I/O port whose `out` from the kernel ring is a hypercall (None: none).  The machine asks
    #: `is_hypercall` and calls `hypercall` instead of `port_out`, and counts it ONCE, as the
    #: personality counts it (not also as "io:out:<port>"); the guest's IOPL is not consulted.
    hypercall_port: ClassVar[int | None] = None
    #: a plugin that means to REPLACE a built-in personality of the same name says so here
    #: (otherwise the registry keeps the built-in and warns)
    replaces_builtin: ClassVar[bool] = False
    #: the personality API (vmirom.plugin.API_VERSION) this class was written against
    requires_api: ClassVar[tuple[int, int]] = (1, 0)
    #: with "shadow": how the VMM learns of guest page-table updates - "wp" (write-protect the
    #: guest's tables, trap and emulate their stores: no guest help) or "pv" (the guest announces
    #: them through the VMI MMU calls; tables it never announced are resynced like a TLB)
    shadow_tracking: ClassVar[str] = "wp"

    def __init__(self) -> None:
        self.machine: Machine | None = None
        self._rom: RomImage | None = None
        self._rom_built = False

    # -- ROM -----------------------------------------------------------------------------------------
    def rom_spec(self) -> RomSpec | None:
        """The VMI ROM this hypervisor publishes (None: no ROM).  Used by `vmirom rom build` too."""
        return None

    def rom_image(self) -> RomImage | None:
        """The built ROM (cached)."""
        if not self._rom_built:
            spec = self.rom_spec()
            if spec is not None:
                from vmirom.rom import build_rom

                self._rom = build_rom(spec)
            self._rom_built = True
        return self._rom

    # -- lifecycle ----------------------------------------------------------------------------------
    def attach(self, machine: Machine) -> None:
        """Called once the machine (RAM, devices, ROM placement) exists."""
        self.machine = machine

    def before_slice(self) -> None:
        """Pending hypervisor work before guest code runs again."""

    def deadline(self) -> int | None:
        """Virtual time (ns) of the next timer this personality owns (e.g. VMI alarms)."""
        return None

    def update_timers(self) -> None:
        """Fire timers whose deadline passed (raise their IRQ on the PIC)."""

    # -- exits ----------------------------------------------------------------------------------------
    def is_hypercall(self, vcpu: VCpu) -> bool:
        """Was the trap at `hypercall_vector` (or the `out` to `hypercall_port`) a hypercall from the
        ROM, vs. a guest `int n` / `out` of its own?"""
        return False

    def hypercall(self, vcpu: VCpu) -> None:
        """Handle a hypercall (registers as the stub left them).  Raise GuestFault to inject a fault.
        Count it with `count_hypercall` (the machine does not: only the personality knows the call)."""

    def count_hypercall(self, call: str) -> None:
        """Count one hypercall exit of `call` (a VMI call name or a name of the personality's own):
        kind "hypercall", detail "hypercall:<call>", as `vmirom run`/`demo`/`bench` report them."""
        self.machine.metrics.count(f"hypercall:{call}")

    def load_virtual_if(self) -> None:
        """Called before the machine reads EFLAGS.IF (to deliver an interrupt, halt, or push a frame).
        A personality that keeps the kernel's interrupt flag outside EFLAGS (e.g. a virtual IF word in
        memory shared with its ROM) copies it into EFLAGS.IF here.  Default: EFLAGS.IF is the flag."""

    def save_virtual_if(self, cpl: int, eflags: int, cr2: int) -> None:
        """Called after the machine entered an interrupt/exception handler (which may have cleared
        EFLAGS.IF): the counterpart of `load_virtual_if`.  The machine passes the handler's CPL and
        EFLAGS and the CR2 of this delivery (what it just wrote: no register reads).  Default: nothing."""

    def on_exception(self, vcpu: VCpu, vector: int, error_code: int) -> bool:
        """A guest exception before delivery: return True if handled (e.g. an emulated privileged
        instruction), False to deliver it to the guest.  A subclass that overrides it may declare,
        in the same class, `core_exception_vectors = frozenset({...})`: the only vectors it can
        take; the compiled engine core then delivers the others itself (vmirom.engines.core).
        Without the declaration every exception goes through the Python path."""
        return False

    def on_wp_trap(self, vcpu: VCpu, linear: int, gpa: int) -> None:
        """Shadow paging, "wp" tracking: a guest store to a write-protected page table (guest-physical
        `gpa`, linear `linear`) trapped.  Emulate it through `machine.mmu.emulated_write` and step
        over it, or - the default - stop shadowing that frame so the store runs natively on retry
        (KVM's "unprotect and re-execute")."""
        self.machine.mmu.unshadow(gpa >> 12)

    def on_cpuid(self, vcpu: VCpu) -> bool:
        """`cpuid`: return True after writing EAX/EBX/ECX/EDX and advancing EIP, False for native."""
        return False

    def io_permitted(self, vcpu: VCpu) -> bool:
        """May the current code use in/out?  (Unicorn never checks: notes W5.)  Native rule by default:
        CPL <= EFLAGS.IOPL (no TSS I/O bitmap)."""
        return vcpu.cpl <= vcpu.iopl

    def port_in(self, vcpu: VCpu, port: int, size: int) -> int | None:
        """Intercept an `in` (return the value) or None for the platform devices."""
        return None

    def port_out(self, vcpu: VCpu, port: int, size: int, value: int) -> bool:
        """Intercept an `out`: True if consumed."""
        return False

    def summary(self) -> dict:
        """Extra facts for the run summary (ROM, binding, hypercall counts ...)."""
        rom = self.rom_image()
        if rom is None:
            return {"rom": None}
        spec = rom.spec
        return {
            "rom": {
                "product": f"{spec.manufacturer} {spec.product}",
                "api": f"{spec.api_major}.{spec.api_minor}",
                "rom_version": f"{spec.rom_version[0]}.{spec.rom_version[1]}",
                "size": len(rom.data),
            }
        }
