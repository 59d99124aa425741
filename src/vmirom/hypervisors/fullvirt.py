"""`fullvirt`: a classic VMM with no guest cooperation.

The unchanged kernel runs de-privileged at ring 1 with IOPL 0 and no ROM.  Three mechanisms make
its native code paths work (details and measured costs in docs/fullvirt.md):

1. Trap-and-emulate: every privileged instruction raises #GP at CPL 1; `TrapEmulator.handle_gp`
   decodes it (capstone, cached per address+bytes), performs it on the guest's virtual CPU state
   and steps over it.  Counted per instruction kind ("emulate:cli", ...).
2. Scanning: the sensitive instructions that do NOT trap at CPL 1 (popf, iret: IF silently kept;
   pushf/sgdt/sidt/sldt/str/smsw: reveal host values) are found by a capstone sweep of the kernel's
   loaded image, at every linear address that maps it (found by walking the guest's page tables when
   it switches page directories), and a per-address engine code hook runs *before* each of them.
   By default only popf and iret are hooked (the others already show the guest's values, because
   the real GDTR/IDTR/LDTR/TR/CR0-low are the guest's own); `strict=True` hooks all of them.
3. Descriptor compression: the kernel's own GDT/LDT is used directly by the engine; DPL-0 code/data
   descriptors are rewritten to DPL 1 on lgdt/lldt and again whenever a #GP is explained by a
   DPL-0 descriptor the kernel wrote later with plain stores.

The virtual IF is the engine's EFLAGS.IF (the guest at CPL 1/IOPL 0 cannot change it), so the
machine's interrupt delivery needs nothing special.
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from typing import TYPE_CHECKING, ClassVar

from vmirom.hypervisors.base import Personality
from vmirom.machine.emulate import (
    CR0_PG,
    CR4_VALID,
    DEFAULT_HOOKED,
    IF_MASK,
    STRICT_HOOKED,
    GuestControl,
    TrapEmulator,
    decode,
    scan_code,
)
from vmirom.machine.faults import DF, GP, GuestFault

if TYPE_CHECKING:
    from vmirom.machine.machine import Machine
    from vmirom.machine.vcpu import VCpu

#: how many distinct page directories are walked to find the kernel's linear aliases (the kernel
#: mappings are set up by the first few; every later process shares them)
ALIAS_WALK_LIMIT = 6
#: most engine code hooks fullvirt installs (one per linear alias x sensitive site).  The reference
#: kernel needs a few hundred; a guest that maps its kernel image at thousands of linear addresses
#: would otherwise make the VMM install hooks without bound (issue 11: 32 Ki aliases -> 524k hooks,
#: 1.9 GB, over a minute with no wall-clock check).  Past it the run ends (fate resource_limit).
MAX_SITE_HOOKS = 16384


class RingStacks(dict):
    """`machine.kernel_stacks` for a de-privileged kernel: where a user -> kernel transition switches
    its stack to.  The CPU takes SS:ESP of the *target* ring from the TSS, i.e. ss1:esp1 at ring 1.  A
    kernel that knows it runs at ring 1 (the reference kernel) fills those; a kernel that believes it
    is at ring 0 fills only ss0:esp0 and rewrites esp0 with plain stores at every context switch.
    So, read at delivery time (no shadow TSS to keep in sync): ss1:esp1 when ss1 is a real selector,
    else ss0:esp0 with the selector's RPL raised to the kernel ring (the descriptor's DPL is
    compressed like every kernel descriptor).  Explicit entries (set by a personality) win."""

    def __init__(self, machine: Machine, ring: int) -> None:
        super().__init__()
        self.machine = machine
        self.ring = ring

    def get(self, ring, default=None):  # noqa: ANN001, ANN201 - dict.get signature
        v = super().get(ring)
        if v is not None or ring != self.ring:
            return default if v is None else v
        eng = self.machine.engine
        sel, base, limit = eng.reg("tr")[:3]
        if sel & ~3 == 0 or limit < 8 * ring + 11:
            return default                   # no usable TSS: the delivery code raises #TS itself
        try:
            read = self.machine.paging.read
            esp0, ss0 = struct.unpack("<II", read(base + 4, 8))
            esp_r, ss_r = struct.unpack("<II", read(base + 4 + 8 * ring, 8))
        except GuestFault:
            return default
        if ss_r & 0xFFFC:
            return default                   # the kernel filled its own ring's stack: native rule
        if ss0 & 0xFFFC:
            return (ss0 & 0xFFFC) | ring, esp0
        return default


class FullVirt(Personality):
    """Trap-and-emulate full virtualization (ring 1, no ROM)."""

    name: ClassVar[str] = "fullvirt"
    description: ClassVar[str] = "classic VMM: ring 1, no ROM, trap-and-emulate + scanning for popf/iret"
    kernel_ring: ClassVar[int] = 1
    iopl: ClassVar[int] = 0
    #: no nested paging and no guest help: shadow page tables traced by write protection
    memory_model: ClassVar[str] = "shadow"
    shadow_tracking: ClassVar[str] = "wp"
    #: hook the reveal-only sensitive instructions too (pushf, sgdt, sidt, sldt, str, smsw)
    strict: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.ctl = GuestControl(kernel_ring=self.kernel_ring)
        self.emu: TrapEmulator | None = None
        self.sites: dict[int, str] = {}            # physical address -> sensitive kind (scan result)
        self.hooked: dict[int, tuple[str, int]] = {}  # linear address -> (kind, operand size)
        self._identity: dict[int, bytes] = {}        # hooks at load addresses: expected bytes
        self.scan_counts: Counter = Counter()
        self.scan_seconds = 0.0
        self._scanned = False
        self._walked_cr3: set[int] = set()
        self._hook_handles: list = []
        self._code_ranges: list[tuple[int, int]] = []  # physical [start, end) scanned
        self._df_retry_eip: int | None = None
        self._pending: dict[int, int] = {}           # linear -> physical sites waiting for before_slice
        self._after_popf: dict[int, tuple[int, int]] = {}  # address after a hooked popf -> (site, opsize)

    # -- lifecycle ----------------------------------------------------------------------------------
    def attach(self, machine: Machine) -> None:
        super().attach(machine)
        self.emu = TrapEmulator(machine.vcpu, self.ctl)
        machine.kernel_stacks = RingStacks(machine, self.kernel_ring)

    def on_wp_trap(self, vcpu: VCpu, linear: int, gpa: int) -> None:
        """A store to a write-protected guest page table (the way a VMM without guest help sees
        page-table updates): decode it, emulate it into the guest entry and every shadow of it, step
        over it.  Anything but one aligned 4-byte mov/xchg to the entry unshadows the frame and
        re-executes natively (docs/mmu.md, heuristics)."""
        mmu = self.machine.mmu
        eip = vcpu.eip
        old = mmu.pm.guest_u32(gpa & ~3)
        try:
            store = self.emu.table_store(eip, linear, old)
        except GuestFault:
            store = None
        # (the exit is counted once, as shadow:wp_trap; the MMU counts mmu:unshadow / emulated_pte_write)
        if store is None or old is None:
            mmu.unshadow(gpa >> 12)
            return
        value, size, reg = store
        mmu.emulated_write(gpa & ~3, value.to_bytes(4, "little"))
        self.emu.finish_table_store(eip, size, reg, old)

    def io_permitted(self, vcpu: VCpu) -> bool:
        """in/out permission.  The kernel runs with IOPL 0 (so cli/sti trap), but its I/O is entitled:
        on a real CPU it would #GP and be emulated.  User code needs CPL <= the guest's virtual IOPL."""
        return self.emu.io_permitted(vcpu.cpl)

    def before_slice(self) -> None:
        if self._scanned and self.machine is not None:
            self._repair_skipped_site()
        if not self._scanned and self.machine is not None and self.machine.boot is not None:
            self._scanned = True
            eng = self.machine.engine
            # the guest's view starts as the Multiboot entry state the machine set up
            # (CR4: Unicorn starts with OSFXSR|FSGSBASE|OSXSAVE; the two high ones are reserved on a
            # 32-bit P6-class CPU, and a guest writing back what it read would take #GP)
            self.ctl.cr0, self.ctl.cr3 = eng.reg("cr0"), eng.reg("cr3")
            self.ctl.cr4 = eng.reg("cr4") & CR4_VALID
            self.ctl.gdtr, self.ctl.idtr = tuple(eng.reg("gdtr")), tuple(eng.reg("idtr"))
            self._scan_boot_image()
        if self._pending:
            pending, self._pending = self._pending, {}
            self._install(pending)

    # -- exits -------------------------------------------------------------------------------------------
    def on_exception(self, vcpu: VCpu, vector: int, error_code: int) -> bool:
        if vector == DF:
            # Every exception is delivered by the machine in Python, so the engine never nests two
            # faults itself: a #DF from the engine is Unicorn's stale `old_exception` (#1883; it is
            # also left behind by page faults Unicorn takes internally).  The hook's fault_done()
            # clears it; re-executing the instruction then reports its real vector.  Twice at the
            # same EIP means it is not that: deliver.
            eip = vcpu.eip
            if self._df_retry_eip != eip:
                self._df_retry_eip = eip
                vcpu.count("fullvirt:spurious_df_retry")
                return True
            self._df_retry_eip = None
            return False
        self._df_retry_eip = None
        if vector != GP:
            return False
        kind = self.emu.handle_gp()          # raises GuestFault to reflect
        if kind in ("mov_to_cr", "lmsw", "clts"):
            self._maybe_walk_aliases()
        return True

    # -- scanning ---------------------------------------------------------------------------------------
    def _scan_boot_image(self) -> None:
        """Sweep the loaded kernel image for sensitive non-trapping instructions and hook them at their
        load (= identity, paging off) addresses; higher-half aliases are added by `_maybe_walk_aliases`."""
        m = self.machine
        t0 = time.perf_counter()
        for paddr, filesz, _memsz in m.boot.segments:
            if filesz <= 0:
                continue
            code = bytes(m.memory.ram[paddr:paddr + filesz])
            for addr, kind in scan_code(code, paddr).items():
                self.sites[addr] = kind
                self.scan_counts[kind] += 1
            self._code_ranges.append((paddr, paddr + filesz))
        self.scan_seconds += time.perf_counter() - t0
        self._install({p: p for p in self.sites}, identity=True)
        self._maybe_walk_aliases()

    def _maybe_walk_aliases(self) -> None:
        """When the guest runs with paging and a page directory not walked yet, find every linear page
        that maps a scanned physical page and hook the sites there too."""
        m = self.machine
        if m is None or not self.sites or not m.engine.reg("cr0") & CR0_PG:
            return
        cr3 = m.engine.reg("cr3") & 0xFFFFF000
        if cr3 in self._walked_cr3 or len(self._walked_cr3) >= ALIAS_WALK_LIMIT:
            return
        self._walked_cr3.add(cr3)
        t0 = time.perf_counter()
        pages: dict[int, list[int]] = {}
        for phys in self.sites:
            pages.setdefault(phys & ~0xFFF, []).append(phys)
        lo = min(s for s, _ in self._code_ranges) & ~0xFFF
        hi = max(e for _, e in self._code_ranges)
        ram, size = m.memory.ram, m.memory.size
        pse = bool(m.engine.reg("cr4") & 0x10)
        # physical page -> EVERY linear page that maps it (the boot directory maps the kernel twice:
        # identity and higher half; keeping only the first alias left the higher half unhooked)
        mapping: dict[int, list[int]] = {}
        if cr3 + 4096 > size:
            return
        pdes = struct.unpack_from("<1024I", ram, cr3)
        for i, pde in enumerate(pdes):
            if not pde & 1:
                continue
            if pde & 0x80 and pse:
                base = pde & 0xFFC00000
                if base < hi and base + (1 << 22) > lo:
                    for pg in pages:
                        if base <= pg < base + (1 << 22):
                            mapping.setdefault(pg, []).append((i << 22) | (pg - base))
                continue
            pt = pde & 0xFFFFF000
            if pt + 4096 > size:
                continue
            for j, pte in enumerate(struct.unpack_from("<1024I", ram, pt)):
                if pte & 1 and lo <= (pte & 0xFFFFF000) < hi and (pte & 0xFFFFF000) in pages:
                    mapping.setdefault(pte & 0xFFFFF000, []).append((i << 22) | (j << 12))
        wanted = STRICT_HOOKED if self.strict else DEFAULT_HOOKED
        new: dict[int, int] = {}
        room = MAX_SITE_HOOKS - len(self.hooked) - len(self._pending)
        for pg, lins in mapping.items():
            for lin in lins:
                for phys in pages[pg]:
                    if self.sites[phys] in wanted and lin + (phys - pg) not in self.hooked:
                        new[lin + (phys - pg)] = phys
                if len(new) > room:
                    m.stop(
                        "resource_limit",
                        f"fullvirt: the guest maps its kernel code at so many linear addresses that "
                        f"more than {MAX_SITE_HOOKS} sensitive-instruction hooks would be needed "
                        f"(page directory {cr3:#x}); refused",
                    )
                    return
        self.scan_seconds += time.perf_counter() - t0
        if new:
            # Hooks and the translation-cache flush they need must not happen while the engine runs
            # a translation block (we are inside a #GP hook): end the slice, install in before_slice.
            self._pending.update(new)
            m.engine.stop()

    def _install(self, lin_to_phys: dict[int, int], identity: bool = False) -> None:
        """Hook each linear site (once) whose kind this mode handles."""
        wanted = STRICT_HOOKED if self.strict else DEFAULT_HOOKED
        eng = self.machine.engine
        added = 0
        for lin, phys in sorted(lin_to_phys.items()):
            kind = self.sites[phys]
            if kind not in wanted or lin in self.hooked:
                continue
            raw = bytes(self.machine.memory.ram[phys:phys + 15])
            d = decode(raw, lin)
            opsize = d.opsize if d else 4
            self.hooked[lin] = (kind, opsize)
            if kind == "popf" and d is not None:
                self._after_popf[lin + d.size] = (lin, opsize)
            if identity and d is not None:
                self._identity[lin] = d.raw
            self._hook_handles.append(self._add_code_hook(eng, lin))
            added += 1
        if added:
            # translations made before the hooks existed lack the callback: drop them all
            if hasattr(eng, "uc"):
                eng.uc.ctl_flush_tb()
            else:
                for lin in lin_to_phys:
                    eng.invalidate_code(lin, lin + 1)

    def _repair_skipped_site(self) -> None:
        """Undo the effect of a site hook the engine skipped in the slice that just ended.

        Unicorn does not call code hooks while an asynchronous `uc_emu_stop` (our slice timer) is
        pending, yet the translation block goes on executing: a popf or iret reached in that window
        runs natively without its pre-hook, i.e. at CPL 1 with the virtual IF left as it was (see
        docs/fullvirt.md, "Skipped site hooks").  popf and iret end their translation block, so the
        slice normally ends right after the instruction, its image still in memory: recognised here
        and repaired as the hook would have done (`repair_after_popf/iret`).  User mode is checked
        whenever the machine looks at IF (`load_virtual_if`)."""
        eng = self.machine.engine
        if eng.reg("cs") & 3 > self.kernel_ring:
            self.load_virtual_if()
            return
        emu = self.emu
        site = self._after_popf.get(eng.reg("eip"))
        if site is not None and self._site_bytes_ok(site[0]):
            if emu.repair_after_popf(site[1]):
                self.machine.metrics.count("fullvirt:repair:popf")
            return
        if emu.repair_after_iret((eng.reg("esp") - 12) & 0xFFFFFFFF):
            self.machine.metrics.count("fullvirt:repair:iret_same_ring")

    def load_virtual_if(self) -> None:
        """The machine is about to look at IF (deliver an interrupt, build a frame, halt).  In kernel
        mode EFLAGS.IF is the virtual IF.  In user mode it must be the IF of the kernel's last iret
        to user mode; if that iret's pre-hook was skipped, user code runs with the kernel's IF=0 and,
        unrepaired, every later kernel entry saves IF=0 again and timer ticks stop for good.  Cheap
        in the usual case: one batched register read, reused by the delivery that follows."""
        if self.machine is None or self.emu is None:
            return
        regs = self.machine.delivery.registers()
        if regs[1] & IF_MASK or regs[2] & 3 != 3:
            return
        top = self._ring_stack_top()
        if top is not None and self.emu.repair_user_if((top - 20) & 0xFFFFFFFF):
            self.machine.metrics.count("fullvirt:repair:iret_to_user")

    def _site_bytes_ok(self, lin: int) -> bool:
        """A load-address hook with paging on: are the kernel's bytes still there (see _on_site)?"""
        raw = self._identity.get(lin)
        if raw is None or not self.machine.engine.reg("cr0") & CR0_PG:
            return True
        try:
            return self.machine.vcpu.read_code(lin, len(raw)) == raw
        except GuestFault:
            return False

    def _ring_stack_top(self) -> int | None:
        """ESP of the kernel's ring stack (where a user -> kernel transition puts its frame, so where
        the kernel's iret back to user mode takes it from): RingStacks' rule, else TSS.esp1."""
        stack = self.machine.kernel_stacks.get(self.kernel_ring)
        if stack is not None:
            return stack[1]
        eng = self.machine.engine
        sel, base, limit = eng.reg("tr")[:3]
        if sel & ~3 == 0 or limit < 8 * self.kernel_ring + 11:
            return None
        try:
            return struct.unpack("<I", self.machine.paging.read(base + 4 + 8 * self.kernel_ring, 4))[0]
        except GuestFault:
            return None

    def _add_code_hook(self, eng, lin: int):
        """A pre-execution hook on one linear address (Unicorn: UC_HOOK_CODE with begin == end, which
        emits the callback only into translations of that one address, so the rest runs at full speed)."""
        m = self.machine
        return eng.add_code_hook(lin, lambda: m.code_hook(lambda: self._on_site(lin)))

    def _on_site(self, lin: int) -> None:
        kind, opsize = self.hooked[lin]
        emu = self.emu
        raw = self._identity.get(lin)
        if raw is not None and self.machine.engine.reg("cr0") & CR0_PG:
            # a load-address hook with paging on: the address may now hold other code (user space)
            if self.machine.vcpu.read_code(lin, len(raw)) != raw:
                return
        if kind == "popf":
            emu.pre_popf(opsize)
        elif kind == "iret":
            emu.pre_iret(opsize)
        else:
            emu.emulate_site(lin)
        self.machine.metrics.count("site:" + kind)

    # -- report ------------------------------------------------------------------------------------------
    def summary(self) -> dict:
        out = super().summary()
        st = self.emu.stats.as_dict() if self.emu else {}
        out["fullvirt"] = {
            "mode": "strict" if self.strict else "default",
            "traps": st,
            "scan": {"sites_found": dict(sorted(self.scan_counts.items())),
                     "hooked_addresses": len(self.hooked),
                     "page_directories_walked": len(self._walked_cr3),
                     "seconds": round(self.scan_seconds, 4)},
            "virtual": {"cr0": f"{self.ctl.cr0:#010x}", "cr3": f"{self.ctl.cr3:#010x}",
                        "cr4": f"{self.ctl.cr4:#010x}", "gdtr": [hex(v) for v in self.ctl.gdtr],
                        "idtr": [hex(v) for v in self.ctl.idtr], "tr": hex(self.ctl.tr),
                        "iopl": self.ctl.iopl},
        }
        return out


class FullVirtStrict(FullVirt):
    """`fullvirt` that also hooks and emulates pushf/sgdt/sidt/sldt/str/smsw (for measurement)."""

    name: ClassVar[str] = "fullvirt-strict"
    description: ClassVar[str] = "fullvirt that also emulates every reveal-only sensitive instruction"
    strict: ClassVar[bool] = True
