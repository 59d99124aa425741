"""`vmi2`: the next version of the `vmi` hypervisor - same VMM design, a smarter ROM (API 3.1).

The kernel still runs at ring 1 and the ROM is still the only thing it knows; the unchanged kernel
binary gets faster because the ROM makes fewer exits.  What changes against `vmi` v1:

1. **Virtual interrupt flag in shared memory.**  The ROM owns one page of writable data right after
   its image (`rom_data`, docs/abi.md section 2.7), found PC-relatively by the stubs.  Its first
   word is the kernel's interrupt flag (0 or 0x200).  cli/sti/GetInterruptMask/SetInterruptMask are
   a few instructions on that word: no exit.  The VMM delivers an interrupt to kernel code only when
   that word says 0x200 (the machine asks `load_virtual_if` before it reads EFLAGS.IF), and after it
   entered a handler through an interrupt gate it writes the cleared flag back (`save_virtual_if`).
   When it holds an interrupt back it sets the second word, "pending"; the sti / SetInterruptMask /
   IRET stubs make a hypercall ("irq_window") only when that word is set.  Halt sets the flag
   (a safe halt) before it waits.  IRET to the same ring is done in the guest (native `iret` after
   copying the frame's IF into the word); IRET to user space still exits (the ring change and the
   real EFLAGS.IF of user code are the VMM's).
2. **Batched page-table updates.**  In lazy MMU mode (SetLazyMode(MMU), state kept in the shared
   page by the ROM) SetPxE writes the entry *in the guest* and appends {entry pointer, flags} to a
   batch log in the shared page; SetLazyMode(NONE) / FlushDeferred make one hypercall when the log is
   not empty.  Why in-guest writes rather than a queue: the reference kernel reads entries back
   inside its lazy sections (pgdir_walk), so a queue that applied writes late would break it; the
   *shadow* side is what is deferred.  At the flush the VMM validates every record (pointer aligned
   and kernel-writable, a present entry maps guest RAM) and brings the shadow page tables up to date
   with each logged entry (docs/mmu.md); until then the old shadow entries act as a TLB the guest
   has not flushed yet, which lazy MMU mode allows.  A bad record or a garbage count gets #GP at
   the flush.  Outside lazy mode SetPxE
   is an immediate hypercall, as in v1.
3. **Cheaper paths for what would exit.**  Values the VMM can publish are read from the shared page
   with no exit: CR0/CR2/CR3/CR4 shadows (written by the VMM on every change and on every exception
   delivery), the cycle frequency (a constant).  Page announcements (AllocatePage/ReleasePage) are
   hypercalls as in v1 (the shadow MMU keeps per-table state).  What must still exit uses v1's
   `int $0x82` path (the cheapest exit on this engine, EIP unchanged).

Everything the VMM reads from the shared page is untrusted: the virtual-IF word must be 0 or 0x200
(anything else stops the VM with fate "bad_shared_state", a clean report), the pending word is never
read (the VMM recomputes it from the PIC), the batch count and records are range-checked.
The VMM initialises the shared page before the first guest instruction (flag clear, as EFLAGS.IF is
at the Multiboot entry) and keeps the word equal to the flag from then on, also while the kernel
still uses native cli/sti (they trap and are emulated; the emulation writes the word too), so a
kernel that binds late, or refuses the ROM, sees one consistent flag.  `vmi_init` is the default
(returns 0, no exit).
"""

from __future__ import annotations

from vmirom import abi
from vmirom.hypervisors.vmi import IF, NORETURN_STUB, Vmi, handles
from vmirom.machine.faults import GP, GuestFault
from vmirom.machine.mmu.shared import C_V2_BATCHED, C_V2_FLUSHES
from vmirom.machine.vcpu import VCpu

# -- the shared page (offsets from rom_data) -------------------------------------------------------
SH_VIF = 0x00  # the kernel's interrupt flag: 0 or 0x200 (written by the ROM and the VMM)
SH_PENDING = 0x04  # 1: an interrupt is held back (written by the VMM, read by the ROM)
SH_LAZY = 0x08  # the lazy mode (ROM-private)
SH_COUNT = 0x0C  # records in the batch log
SH_CR0, SH_CR2, SH_CR3, SH_CR4 = 0x10, 0x14, 0x18, 0x1C  # shadows written by the VMM
SH_BATCH = 0x40  # batch log: {u32 entry pointer, u32 SetPxE flags} records
SHARED_SIZE = 4096  # one page
BATCH_MAX = (SHARED_SIZE - SH_BATCH) // 8  # 504 records; a full log is flushed by the next SetPxE

#: pseudo call numbers for hypercall sites that are not a call's own (past every real call)
IRQ_WINDOW = 1000
#: ROM labels of the `int $0x82` sites and what they mean to the VMM
_SITE_LABELS = {
    "v2_hc_sti": IRQ_WINDOW,
    "v2_hc_setmask": IRQ_WINDOW,
    "v2_hc_iret": "IRET",
    "v2_hc_setpxe": "SetPxE",
    "v2_hc_lazy": "SetLazyMode",
    "v2_hc_flush": "FlushDeferred",
}

_COMMON = f"""
\t.set V2_VIF, rom_data + {SH_VIF}
\t.set V2_PENDING, rom_data + {SH_PENDING}
\t.set V2_LAZY, rom_data + {SH_LAZY}
\t.set V2_COUNT, rom_data + {SH_COUNT}
\t.set V2_CR0, rom_data + {SH_CR0}
\t.set V2_CR2, rom_data + {SH_CR2}
\t.set V2_CR3, rom_data + {SH_CR3}
\t.set V2_CR4, rom_data + {SH_CR4}
\t.set V2_BATCH, rom_data + {SH_BATCH}
"""

# Every stub finds the shared page PC-relatively (`call 1f; 1: pop`), like get_reloc finds its table,
# so it works through any mapping of the ROM.  Registers beyond a call's clobbers are saved.
_ASM = {
    "DisableInterrupts": """
    pushl %eax
    call 1f
1:  popl %eax
    movl $0, (V2_VIF - 1b)(%eax)
    popl %eax
    ret""",
    "EnableInterrupts": """
    pushl %eax
    call 1f
1:  popl %eax
    movl $0x200, (V2_VIF - 1b)(%eax)
    cmpl $0, (V2_PENDING - 1b)(%eax)
    popl %eax
    jne v2_sti_exit
    ret
v2_sti_exit:
v2_hc_sti:
    int $0x82
    ret""",
    "GetInterruptMask": """
    call 1f
1:  popl %eax
    movl (V2_VIF - 1b)(%eax), %eax
    andl $0x200, %eax
    ret""",
    "SetInterruptMask": """
    pushl %edx
    call 1f
1:  popl %edx
    testl $0x200, %eax
    jz 2f
    movl $0x200, (V2_VIF - 1b)(%edx)
    cmpl $0, (V2_PENDING - 1b)(%edx)
    popl %edx
    jne v2_setmask_exit
    ret
2:  movl $0, (V2_VIF - 1b)(%edx)
    popl %edx
    ret
v2_setmask_exit:
v2_hc_setmask:
    int $0x82
    ret""",
    # IRET: a frame for the kernel ring is returned from in the guest (the frame's IF becomes the
    # virtual flag; a pending interrupt makes it exit instead); user frames exit (ring change).
    "IRET": """
    testb $2, 4(%esp)
    jnz v2_iret_exit
    pushl %eax
    call 1f
1:  popl %eax
    testl $0x200, 12(%esp)
    jz 2f
    movl $0x200, (V2_VIF - 1b)(%eax)
    cmpl $0, (V2_PENDING - 1b)(%eax)
    popl %eax
    jne v2_iret_exit
    iret
2:  movl $0, (V2_VIF - 1b)(%eax)
    popl %eax
    iret
v2_iret_exit:
v2_hc_iret:
    int $0x82""",
    "SetPxE": f"""
    pushl %ebx
    call 1f
1:  popl %ebx
    cmpl $1, (V2_LAZY - 1b)(%ebx)
    jne 8f
    testl $3, %edx
    jnz 8f
    pushl %ecx
    movl (V2_COUNT - 1b)(%ebx), %ecx
    cmpl ${BATCH_MAX}, %ecx
    jae 7f
    movl %eax, (%edx)
    incl (V2_COUNT - 1b)(%ebx)
    leal (V2_BATCH - 1b)(%ebx,%ecx,8), %ecx
    movl %edx, (%ecx)
    popl 4(%ecx)
    popl %ebx
    ret
7:  popl %ecx
8:  popl %ebx
v2_hc_setpxe:
    int $0x82
    ret""",
    "SetLazyMode": """
    call 1f
1:  popl %edx
    cmpl $2, %eax
    ja v2_hc_lazy
    movl %eax, (V2_LAZY - 1b)(%edx)
    testl %eax, %eax
    jnz 2f
    cmpl $0, (V2_COUNT - 1b)(%edx)
    jne v2_hc_lazy
2:  ret
v2_hc_lazy:
    int $0x82
    ret""",
    "FlushDeferred": """
    call 1f
1:  popl %edx
    cmpl $0, (V2_COUNT - 1b)(%edx)
    jne v2_hc_flush
    ret
v2_hc_flush:
    int $0x82
    ret""",
    "GetCR0": "call 1f\n1:  popl %eax\n movl (V2_CR0 - 1b)(%eax), %eax\n ret",
    "GetCR2": "call 1f\n1:  popl %eax\n movl (V2_CR2 - 1b)(%eax), %eax\n ret",
    "GetCR3": "call 1f\n1:  popl %eax\n movl (V2_CR3 - 1b)(%eax), %eax\n ret",
    "GetCR4": "call 1f\n1:  popl %eax\n movl (V2_CR4 - 1b)(%eax), %eax\n ret",
    "GetCycleFrequency": "movl $1000000000, %eax\n xorl %edx, %edx\n ret",
}


class BadSharedState(Exception):
    """The guest left a value in the shared page that the VMM refuses to act on."""


class Vmi2(Vmi):
    """VMI 3.1 ROM, version 2: virtual IF, batched page-table updates, fewer exits (module docstring)."""

    name = "vmi2"
    description = "vmi v2: virtual IF in shared memory, batched PTE updates, fewer exits"
    rom_product = "vmi hypercall ROM v2"
    rom_version = (2, 0)
    api_minor = 1
    #: GetSharedInfo stays NONE: the page is the ROM's own business (the kernel never asks for it)
    native_calls = tuple(n for n in Vmi.native_calls if n != "FlushDeferred")
    #: AllocatePage/ReleasePage are real (v1's hypercalls): the shadow MMU must know which frames are
    #: tables and when they stop being tables (docs/mmu.md)
    nop_calls = Vmi.nop_calls

    def __init__(self) -> None:
        super().__init__()
        self.dispatch[IRQ_WINDOW] = self.irq_window
        self.live = False  # the shared page is initialised (before the first guest instruction)
        self.shared = 0  # guest-physical address of the shared page
        self._batched = 0  # page-table updates that arrived in batches (flushed by the Python path)
        self._batch_flushes = 0
        self.irq_windows = 0
        self.bad_shared: str | None = None

    # -- the ROM ----------------------------------------------------------------------------------
    def rom_spec(self):
        from vmirom.rom import CallEntry

        spec = super().rom_spec()
        for name, asm in _ASM.items():
            num = abi.call(name).number
            entry = CallEntry.jump(asm) if name == "IRET" else CallEntry.call(asm)
            spec.entries[num] = entry
        spec.entries[abi.call("SYSEXIT").number] = CallEntry.jump(NORETURN_STUB)
        spec.common_asm = _COMMON
        spec.data_size = SHARED_SIZE
        return spec

    def attach(self, machine) -> None:
        super().attach(machine)
        rom = self.rom_image()
        base = machine.rom_range[0]
        self.shared = base + rom.data_offset
        for label, call in _SITE_LABELS.items():
            num = call if isinstance(call, int) else abi.call(call).number
            self.call_at[rom.symbols[label]] = num
        # the `int` of a stub that starts with one is mapped by v1's attach; a v2 stub whose start is
        # not an `int $0x82` must not be taken for one: drop those
        for num, asm in ((abi.call(n).number, a) for n, a in _ASM.items()):
            off = rom.stub_offset(num)
            if off is not None and not asm.lstrip().startswith("int"):
                self.call_at.pop(off, None)
        if self.shared + SHARED_SIZE > machine.memory.size:
            raise ValueError("no RAM for the vmi2 shared page")

    # -- exits ------------------------------------------------------------------------------------
    def hypercall(self, vcpu: VCpu) -> None:
        call = self._pending_call
        if call >= IRQ_WINDOW:  # a site that is not a VMI call of its own
            self.calls_seen += 1
            self._metrics.count("hypercall:irq_window")
            self.dispatch[call](vcpu)
            return
        super().hypercall(vcpu)

    def hypercall_counts(self) -> dict[str, int]:
        d = super().hypercall_counts()
        if self.irq_windows:
            d["irq_window"] = self.irq_windows
        return d

    #: as v1's (the compiled engine core hands only #GP to on_exception)
    core_exception_vectors = Vmi.core_exception_vectors

    def on_exception(self, vcpu: VCpu, vector: int, error_code: int) -> bool:
        handled = super().on_exception(vcpu, vector, error_code)
        if handled and self.live:  # an emulated native instruction (cli/sti, mov cr ...): resync
            self._u32w(SH_VIF, vcpu.get("eflags") & IF)
            self._publish_crs(vcpu)
        return handled

    def _core_flushes(self, slot: int) -> int:
        """What the compiled core's batch flushes (mmu.c core_v2_flush) added to a counter."""
        shared = getattr(getattr(getattr(self, "machine", None), "mmu", None), "shared", None)
        return shared.ctl[slot] if shared is not None else 0

    @property
    def batched(self) -> int:
        """Page-table updates that arrived in batches (both paths)."""
        return self._batched + self._core_flushes(C_V2_BATCHED)

    @property
    def batch_flushes(self) -> int:
        """Batch logs flushed (both paths)."""
        return self._batch_flushes + self._core_flushes(C_V2_FLUSHES)

    def summary(self) -> dict:
        d = super().summary()
        d["shared_page"] = self.shared
        d["pte_updates_batched"] = self.batched
        d["batch_flushes"] = self.batch_flushes
        d["irq_windows"] = self.irq_windows
        return d

    # -- the shared page --------------------------------------------------------------------------
    def _u32(self, off: int) -> int:
        return self._memory.u32(self.shared + off)

    def _u32w(self, off: int, value: int) -> None:
        self._memory.set_u32(self.shared + off, value & 0xFFFFFFFF)

    def _publish_crs(self, vcpu: VCpu) -> None:
        for off, reg in ((SH_CR0, "cr0"), (SH_CR2, "cr2"), (SH_CR3, "cr3"), (SH_CR4, "cr4")):
            self._u32w(off, vcpu.get(reg))

    def _refuse_shared(self, what: str, value: int) -> None:
        """A value the VMM must act on is garbage: stop the VM with a clear report."""
        if self.bad_shared is None:
            self.bad_shared = f"{what} in the vmi2 shared page is {value:#x}"
            self.machine.stop(
                "bad_shared_state",
                f"the guest corrupted its vmi2 shared page: {self.bad_shared} (allowed: 0 or 0x200)",
            )

    def _kernel_mode(self) -> bool:
        return self.machine.engine.cpl() <= self.kernel_ring

    def load_virtual_if(self) -> None:
        """Kernel code's interrupt flag is the shared word: copy it into EFLAGS.IF for the machine.
        An interrupt it holds back raises the pending word, so the next sti/restore/iret exits."""
        if not self.live or not self._kernel_mode():
            return
        vif = self._u32(SH_VIF)
        if vif not in (0, IF):
            self._refuse_shared("the virtual interrupt flag", vif)
            vif = 0  # treat as masked until the VM has stopped
        eng = self.machine.engine
        fl = eng.reg("eflags")
        if fl & IF != vif:
            eng.set_reg("eflags", (fl & ~IF) | vif)
        self._u32w(SH_PENDING, 1 if not vif and self.machine.pic.pending_vector() is not None else 0)

    def save_virtual_if(self, cpl: int, eflags: int, cr2: int) -> None:
        """A handler was entered: its EFLAGS.IF (cleared by an interrupt gate) becomes the virtual
        flag, and CR2 (set for a #PF) is published for GetCR2."""
        if not self.live or cpl > self.kernel_ring:
            return
        self._u32w(SH_VIF, eflags & IF)
        self._u32w(SH_CR2, cr2)

    # -- handlers ---------------------------------------------------------------------------------
    def before_slice(self) -> None:
        if not self.live:  # once, before the first guest instruction (the kernel is loaded by now)
            vcpu = self.machine.vcpu
            self._memory.write(self.shared, bytes(SHARED_SIZE))
            self._u32w(SH_VIF, vcpu.get("eflags") & IF)
            self._publish_crs(vcpu)
            self.live = True

    def irq_window(self, vcpu: VCpu) -> None:
        """The kernel set its flag while an interrupt was held back: deliver it now."""
        self.irq_windows += 1
        self._u32w(SH_PENDING, 0)
        self._after_if_change(vcpu)

    @handles("Halt")
    def halt(self, vcpu: VCpu) -> None:
        if self.live:
            self._u32w(SH_VIF, IF)  # a safe halt enables interrupts (the machine reads the word)
        super().halt(vcpu)

    def before_iret(self, cs: int, flags: int):  # noqa: ANN201 - see Vmi.before_iret
        """The exit path of the IRET stub (user frames, or a pending interrupt): for a kernel-ring
        frame the frame's IF becomes the virtual flag first, so v1's delivery check sees it."""
        if not self.live or cs & 3 > self.kernel_ring:
            return None
        old = self._u32(SH_VIF)
        self._u32w(SH_VIF, flags & IF)
        return lambda: self._u32w(SH_VIF, old)

    # the v1 handlers of the IF calls stay reachable only through the native instructions' emulation;
    # a hostile jump into the middle of a stub lands on an irq_window or IRET site, both safe.

    @handles("SetCR0")
    def set_cr0(self, vcpu: VCpu) -> None:
        super().set_cr0(vcpu)
        self._u32w(SH_CR0, vcpu.get("cr0"))

    @handles("SetCR2")
    def set_cr2(self, vcpu: VCpu) -> None:
        super().set_cr2(vcpu)
        self._u32w(SH_CR2, vcpu.get("cr2"))

    @handles("SetCR3")
    def set_cr3(self, vcpu: VCpu) -> None:
        super().set_cr3(vcpu)
        self._u32w(SH_CR3, vcpu.get("cr3"))

    @handles("SetCR4")
    def set_cr4(self, vcpu: VCpu) -> None:
        super().set_cr4(vcpu)
        self._u32w(SH_CR4, vcpu.get("cr4"))

    @handles("CLTS")
    def clts(self, vcpu: VCpu) -> None:
        super().clts(vcpu)
        self._u32w(SH_CR0, vcpu.get("cr0"))

    # -- page tables ------------------------------------------------------------------------------
    def _check_entry(self, value: int) -> None:
        """A present entry must map guest RAM (the engine would otherwise hit unmapped memory)."""
        if value & 1 and (value & 0xFFFFF000) >= self._memory.size:
            raise GuestFault(GP, 0)

    def flush_batch(self, vcpu: VCpu) -> None:
        """Validate every logged update and make the live address space see them.  The reference of
        the compiled core's flush at SetLazyMode(NONE) / FlushDeferred (mmu.c core_v2_flush: the
        same checks on every record first, the whole flush left to this method on any doubt)."""
        count = self._u32(SH_COUNT)
        self._u32w(SH_COUNT, 0)  # consumed even when refused: the guest must not loop on it
        if count == 0:
            return
        if count > BATCH_MAX:
            raise GuestFault(GP, 0)
        mem = self._memory
        words = memoryview(mem.read(self.shared + SH_BATCH, 8 * count)).cast("I")
        pages: dict[int, int] = {}  # linear page -> physical page: one walk per page-table page
        mmu = self.machine.mmu
        live_as = 0
        for i in range(0, 2 * count, 2):
            ptr, flags = words[i], words[i + 1]
            if ptr & 3:
                raise GuestFault(GP, 0)
            page = pages.get(ptr >> 12)
            if page is None:
                try:
                    page = self._paging.translate(ptr & ~0xFFF, write=True, user=False)
                except GuestFault:
                    raise GuestFault(GP, 0) from None
                pages[ptr >> 12] = page
            self._check_entry(mem.u32(page | (ptr & 0xFFF)))
            live_as |= flags & abi.PAGE_CURRENT_AS
            if mmu is not None:
                mmu.entry_written(page | (ptr & 0xFFF))  # the shadows follow the logged update
        self._batched += count
        self._batch_flushes += 1
        if mmu is not None:
            vcpu.sync_tlb()
        elif live_as:
            vcpu.flush_tlb()

    @handles("SetPxE")
    def set_pxe(self, vcpu: VCpu) -> None:
        self.flush_batch(vcpu)  # keep the order: earlier (batched) updates first
        self._check_entry(self.eax)
        super().set_pxe(vcpu)

    @handles("SetLazyMode")
    def set_lazy_mode(self, vcpu: VCpu) -> None:
        super().set_lazy_mode(vcpu)  # #GP for a bad mode
        self.flush_batch(vcpu)

    @handles("FlushDeferred")
    def flush_deferred(self, vcpu: VCpu) -> None:
        self.flush_batch(vcpu)
