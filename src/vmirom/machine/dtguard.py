"""The descriptor-table guard: a de-privileged kernel's live GDT and LDT are write-protected in the
shadow page tables, and every store into them is validated before it is emulated.

Why: the engine performs far calls through call gates, task switches and `iret` natively, reading
the GDT and LDT from guest memory.  A ring-1 kernel that rewrote its GDT with ordinary stores (a
DPL-0 code segment and a call gate to it, a TSS it can jump to) got to CPL 0 for up to one slice
(issue 11).  De-privileging hypervisors of the VMI era kept such tables out of the guest's direct
reach - Xen PV maps the guest's GDT frames read-only and accepts updates only through a hypercall
that validates them (check_descriptor), VMware's binary translator traces the GDT pages and keeps
a validated shadow.  Here the shadow MMU (docs/mmu.md) does the tracing: every guest frame that
holds a page of the live GDT or LDT is protected (reason PROTECT_DESCRIPTORS) - read-only in every
shadow, whatever the kernel's page tables say - and

- a store into it is a write-protect trap (`on_store`): the instruction is decoded, the bytes it
  writes are merged into the descriptors they touch, those are checked with the SAME rules as the
  WriteGDTEntry hypercall (`vmirom.machine.descriptors`: DPL 0 compressed to the kernel ring,
  Accessed set, TSS available and DPL 0, call/task gates and 16-bit TSS refused with #GP(0) at the
  store, nothing written) and the result is written and the instruction stepped over;
- the whole table is validated when it becomes live (`watch`, called for every GDTR/LDTR load the
  VMM makes: emulated lgdt/lldt, SetGDT/SetLDT, the machine's boot GDT), and protection moves with
  the GDTR/LDTR;
- the linear pages of the live tables are *watched*: a shadow fill that maps one of them to a frame
  other than the one validated for it (the kernel remapped its GDT, switched to an address space
  that maps it elsewhere, turned paging off) calls `remap` first, which validates that frame and
  protects it too.  So the engine never reads a descriptor the rules did not pass.

What the CPU reads on a privilege-raising transition, and why only the GDT and LDT are guarded:
far call/jmp/iret/lret read code and gate descriptors from the GDT or LDT (guarded); a task switch
would read a whole CPU state from TSS *memory* (CR3, EFLAGS, CS, the LDT selector) - the rules
make task switches impossible instead (TSS descriptors DPL 0 and never busy, task gates refused),
so TSS memory needs no protection; the IDT is never read by the engine (every interrupt and
exception goes through the VMM's delivery, which checks the gate); an LDT is loaded natively only
by a task switch (impossible), by the VMM otherwise (validated).

Only ordinary stores are emulated: `mov` and `xchg` to memory, `stos`/`movs` (also with `rep`,
one page at a time) and the read-modify-write `add sub and or xor inc dec not neg` with a memory
destination (flags as the CPU sets them), and `sgdt sidt sldt str smsw` to memory (a buffer
next to the GDT).  Anything else that writes a protected page (push/call with the stack there,
cmpxchg, bts...) is refused with #GP(0), counted as
mmu:desc_unemulated: a kernel should not keep hot data next to its descriptor tables (the
reference kernel keeps them in page-aligned pages of their own: no trap at all in a boot).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vmirom.machine.descriptors import checked_segment
from vmirom.machine.emulate import GuestControl, TrapEmulator, _write_gpr
from vmirom.machine.faults import GP, GuestFault, UnsupportedState
from vmirom.machine.mmu.shadow import PROTECT_DESCRIPTORS

if TYPE_CHECKING:
    from vmirom.machine.emulate import Decoded
    from vmirom.machine.machine import Machine

_U32 = 0xFFFFFFFF
_DF = 1 << 10
#: frames kept protected for one set of live tables before protection is rebuilt from scratch (a
#: kernel that maps its GDT's linear pages to ever new frames cannot grow the set without bound)
MAX_FRAMES = 64
#: string-instruction iterations emulated per trap (the rest runs natively and traps again)
MAX_REP = 4096
#: the string stores emulated (with or without `rep`) and their element size
_STRING = {"stosb": 1, "stosw": 2, "stosd": 4, "movsb": 1, "movsw": 2, "movsd": 4}


#: the register stores a kernel makes natively at ring 1 (strict fullvirt hooks them anyway)
_TABLE_STORES = frozenset({"sgdt", "sidt", "sldt", "str", "smsw"})
#: read-modify-write instructions emulated on a protected page (one memory destination)
_ALU = frozenset({"add", "sub", "and", "or", "xor", "inc", "dec", "not", "neg"})
CF, PF, AF, ZF, SF, OF = 1, 1 << 2, 1 << 4, 1 << 6, 1 << 7, 1 << 11
_ARITH = CF | PF | AF | ZF | SF | OF


def alu(op: str, a: int, b: int, size: int) -> tuple[int, int, int]:
    """(result, flags, mask of the flags it defines) of `op` on `size`-byte operands, as the CPU
    computes them (AF is left 0 where the SDM says undefined)."""
    bits = 8 * size
    full, sign = (1 << bits) - 1, 1 << (bits - 1)
    b &= full
    if op == "not":
        return ~a & full, 0, 0
    if op in ("add", "inc"):
        r = (a + b) & full
        flags = (CF if a + b > full else 0) | (OF if (a ^ r) & (b ^ r) & sign else 0)
    elif op in ("sub", "dec"):
        r = (a - b) & full
        flags = (CF if a < b else 0) | (OF if (a ^ b) & (a ^ r) & sign else 0)
    elif op == "neg":
        r = -a & full
        flags = (CF if a else 0) | (OF if a == sign else 0)
        a, b = 0, a
    else:
        r = {"and": a & b, "or": a | b, "xor": a ^ b}[op]
        flags = 0
    if op in ("add", "inc", "sub", "dec", "neg"):
        flags |= (a ^ b ^ r) & AF
    flags |= (ZF if r == 0 else 0) | (SF if r & sign else 0)
    flags |= PF if bin(r & 0xFF).count("1") % 2 == 0 else 0
    mask = _ARITH & ~CF if op in ("inc", "dec") else _ARITH
    return r, flags, mask


@dataclass
class DescriptorGuard:
    """The live GDT/LDT of a de-privileged kernel under shadow paging (see the module docstring)."""

    machine: Machine
    #: "gdt" / "ldt" -> (linear base, limit) of the live tables
    windows: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: guest frames protected for them -> the linear pages validated in them
    frames: dict[int, set[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = self.machine
        self.mmu = m.mmu
        self.ring = m.personality.kernel_ring
        self.mmu.on_remap = self.remap
        self._own_emu: TrapEmulator | None = None
        self._writing = False  # our own writes are checked already (vmm_wrote)

    # -- the tables become live ---------------------------------------------------------------------
    def watch(self, kind: str, base: int, limit: int) -> None:
        """GDTR (kind "gdt") or LDTR ("ldt") now holds (base, limit) (limit < 0: no LDT).  Protection
        moves: the old frames are released, every shadow leaf of the old and new tables' linear pages
        is dropped (the next use refills it through `remap`), the new table's pages present now are
        validated and protected."""
        before = dict(self.windows)
        if limit >= 0:
            self.windows[kind] = (base & _U32, min(limit, 0xFFFF))
        else:
            self.windows.pop(kind, None)
        if self.windows != before:  # the same table again (a reload): already validated, protected
            self._rebuild()

    def _rebuild(self) -> None:
        mmu = self.mmu
        for gfn in self.frames:
            mmu.unprotect(gfn)
        self.frames.clear()
        self._publish()
        vpns = self._vpns()
        mmu.forget_linear(set(mmu.watched) | vpns)
        mmu.watched.clear()
        for vpn in vpns:
            phys = self.machine.paging.walk(vpn << 12).phys
            if phys is None or phys >= self.machine.memory.size:
                mmu.watched[vpn] = -1  # not mapped now: the fill that maps it validates it first
            else:
                self._validate_page(vpn, phys >> 12)
        self.mmu.need_flush = True

    def _vpns(self) -> set[int]:
        out: set[int] = set()
        for base, limit in self.windows.values():
            out.update(((base + off) & _U32) >> 12 for off in range(0, limit + 1, 0x1000))
            out.add(((base + limit) & _U32) >> 12)
        return out

    def remap(self, va: int, gfn: int) -> None:
        """The shadow MMU is about to map watched linear page `va` to guest frame `gfn` (not the one
        validated for it): validate that frame's part of the tables and protect it first."""
        if len(self.frames) >= MAX_FRAMES:
            self._rebuild()
            if self.mmu.watched.get(va >> 12) == gfn:
                return
        self._validate_page(va >> 12, gfn)

    def _validate_page(self, vpn: int, gfn: int) -> None:
        """Apply the rules to every descriptor of the live tables that overlaps linear page `vpn`,
        read and written in guest frame `gfn` (a descriptor that crosses into the next page is read
        and written there through the guest's current tables).  Nothing is refused here - the
        table is already live: a descriptor the rules refuse is made not present (the CPU then
        faults on it instead of using it)."""
        self.mmu.watched[vpn] = gfn
        if gfn not in self.frames:
            self.mmu.protect(gfn, PROTECT_DESCRIPTORS)
            self._publish()
        self.frames.setdefault(gfn, set()).add(vpn)
        self._validate_range(vpn, gfn, 0, 0x1000)
        self.machine.metrics.event("mmu:desc_validated_page")

    def _publish(self) -> None:
        """The compiled exit core writes interrupt frames itself: it must leave writes into the
        protected frames to the Python path (which revalidates them, `vmm_wrote`)."""
        core = getattr(self.machine, "core", None)
        if core is not None:
            core.publish_memory()

    def vmm_wrote(self, phys: int, size: int) -> None:
        """The VMM itself stored into a protected frame (an interrupt frame pushed onto a stack the
        kernel put there, a hypercall's result or SetPxE aimed at it): the descriptors among those
        bytes are validated again right away, before any guest instruction runs."""
        if self._writing:
            return
        end = phys + size
        while phys < end:
            n = min(end - phys, 0x1000 - (phys & 0xFFF))
            for vpn in list(self.frames.get(phys >> 12, ())):
                self._validate_range(vpn, phys >> 12, phys & 0xFFF, n)
            phys += n
        self.machine.metrics.event("mmu:desc_vmm_write")

    def _validate_range(self, vpn: int, gfn: int, off: int, size: int) -> None:
        """The rules for the live tables' descriptors overlapping bytes [off, off + size) of linear
        page `vpn`, which frame `gfn` holds."""
        m = self.machine
        page = vpn << 12
        for base, limit in self.windows.values():
            for slot in self._slots(base, limit, page + off, size):
                raw = self._read_slot(slot, vpn, gfn)
                if raw is None:
                    continue
                lo, hi = struct.unpack("<II", raw)
                try:
                    lo, new_hi, changed = checked_segment(lo, hi, self.ring)
                except GuestFault:
                    new_hi, changed = hi & ~(1 << 15), True  # not present
                if new_hi != hi:
                    self._write_slot(slot, vpn, gfn, struct.pack("<II", lo, new_hi))
                if changed:
                    m.metrics.event("mmu:desc_compressed")

    @staticmethod
    def _slots(base: int, limit: int, start: int, size: int) -> range:
        """Linear addresses of the table's descriptors (whole ones: the CPU checks offset + 7 <=
        limit) that overlap [start, start + size)."""
        first = max(0, (start - base - 8) // 8 + 1)
        end = min((start + size - base + 7) // 8, (limit + 1) // 8)
        return range(base + 8 * first, base + 8 * max(end, first), 8)

    def _slot_phys(self, lin: int, vpn: int, gfn: int) -> int | None:
        """Guest-physical address of linear `lin`: in `gfn` for page `vpn`, else by the guest walk."""
        if (lin & _U32) >> 12 == vpn:
            return (gfn << 12) | (lin & 0xFFF)
        phys = self.machine.paging.walk(lin).phys
        return phys if phys is not None and phys < self.machine.memory.size else None

    def _slot_parts(self, slot: int, vpn: int, gfn: int) -> list[tuple[int, int, int]] | None:
        """(offset in the descriptor, guest-physical address, length) of its 1 or 2 pieces (a
        misaligned table puts descriptors across pages); None if a piece is not mapped."""
        parts = []
        off = 0
        while off < 8:
            lin = (slot + off) & _U32
            n = min(8 - off, 0x1000 - (lin & 0xFFF))
            phys = self._slot_phys(lin, vpn, gfn)
            if phys is None:
                return None
            parts.append((off, phys, n))
            off += n
        return parts

    def _read_slot(self, slot: int, vpn: int, gfn: int) -> bytes | None:
        parts = self._slot_parts(slot, vpn, gfn)
        if parts is None:
            return None  # the other page is not mapped: validated when a fill maps it
        ram = self.machine.memory.ram
        return b"".join(ram[phys : phys + n] for _, phys, n in parts)

    def _write_slot(self, slot: int, vpn: int, gfn: int, data: bytes) -> None:
        for off, phys, n in self._slot_parts(slot, vpn, gfn) or ():
            self._write_phys(phys, data[off : off + n])

    def _write_phys(self, phys: int, data: bytes) -> None:
        m = self.machine
        self._writing = True
        try:
            m.memory.write(phys, data)
        except GuestFault:
            raise UnsupportedState(
                f"the kernel's descriptor table lies in the read-only ROM (physical {phys:#x}) and holds "
                "a descriptor the VMM must rewrite (docs/security.md)"
            ) from None
        finally:
            self._writing = False
        m.engine.invalidate_code(phys, phys + len(data))
        self.mmu.memory_written(phys, len(data))  # a table frame that is also a page table: resynced

    # -- a store into a protected frame -------------------------------------------------------------
    @property
    def emu(self) -> TrapEmulator:
        """The personality's decoder (it knows the guest's GDTR for segment bases), or our own."""
        emu = getattr(self.machine.personality, "emu", None)
        if emu is None:
            if self._own_emu is None:
                self._own_emu = TrapEmulator(self.machine.vcpu, GuestControl(kernel_ring=self.ring))
            self._own_emu.ctl.gdtr = self.machine.engine.reg("gdtr")[:2]
            emu = self._own_emu
        return emu

    def on_store(self, va: int, gpa: int) -> None:
        """A guest store at linear `va` hit a protected descriptor frame (`gpa`): emulate it with the
        descriptor rules, or raise GuestFault (#GP(0): refused or not an ordinary store; #PF: the
        instruction's other memory).  EIP is stepped over it only when it completed."""
        m = self.machine
        vcpu = m.vcpu
        emu = self.emu
        eip = vcpu.eip
        d = emu.fetch_decode(eip)
        mn = d.mnemonic
        if mn.removeprefix("rep ") in _STRING:
            done = self._string(d, mn)
        elif mn in ("mov", "xchg") and len(d.ops) == 2:
            self._move(d)
            done = True
        elif mn in _ALU and d.ops and d.ops[0].type == "mem":
            self._alu(d)
            done = True
        elif d.kind in _TABLE_STORES and d.ops and d.ops[0].type == "mem":
            emu._handlers[d.kind](d)  # sgdt & co. into a buffer next to the GDT: the guest's values
            done = True
        else:
            m.metrics.event("mmu:desc_unemulated")
            raise GuestFault(GP, 0)
        m.metrics.event("mmu:desc_store")
        if done:
            vcpu.eip = (eip + d.size) & _U32

    def _move(self, d: Decoded) -> None:
        emu = self.emu
        dst, src = d.ops
        if d.mnemonic == "xchg" and dst.type == "reg":
            dst, src = src, dst
        if dst.type != "mem" or src.type not in ("reg", "imm") or dst.size not in (1, 2, 4):
            self.machine.metrics.event("mmu:desc_unemulated")
            raise GuestFault(GP, 0)
        lin = emu.effective_address(dst)
        value = emu._read_op(src) & ((1 << (8 * dst.size)) - 1)
        old = self.machine.vcpu.read(lin, dst.size)
        self.store(lin, value.to_bytes(dst.size, "little"))
        if d.mnemonic == "xchg":
            _write_gpr(emu.cpu, src.reg, int.from_bytes(old, "little"))

    def _alu(self, d: Decoded) -> None:
        """A read-modify-write store (`incl counter`, `orl %eax, flags`...) with the flags it sets."""
        emu, vcpu = self.emu, self.machine.vcpu
        dst = d.ops[0]
        size = dst.size
        if size not in (1, 2, 4) or len(d.ops) > 2 or len(d.ops) == 2 and d.ops[1].type == "mem":
            self.machine.metrics.event("mmu:desc_unemulated")
            raise GuestFault(GP, 0)
        lin = emu.effective_address(dst)
        a = int.from_bytes(vcpu.read(lin, size), "little")
        b = emu._read_op(d.ops[1]) if len(d.ops) == 2 else 1
        result, flags, mask = alu(d.mnemonic, a, b, size)
        self.store(lin, result.to_bytes(size, "little"))
        if mask:
            vcpu.set("eflags", (vcpu.get("eflags") & ~mask) | flags)

    def _string(self, d: Decoded, mn: str) -> bool:
        """stos/movs, with or without rep: iterations until the destination leaves its page (or
        MAX_REP); True when the instruction is complete (ECX reached 0 or no rep)."""
        vcpu = self.machine.vcpu
        rep = mn.startswith("rep ")
        op = mn.removeprefix("rep ")
        size = _STRING[op]
        step = -size if vcpu.get("eflags") & _DF else size
        emu = self.emu
        es = emu.segment_base("es")
        edi, esi, ecx = vcpu.get("edi"), vcpu.get("esi"), vcpu.get("ecx")
        if rep and ecx == 0:
            return True
        page = ((es + edi) & _U32) >> 12
        n = 0
        while True:
            dst = (es + edi) & _U32
            if op.startswith("stos"):
                data = (vcpu.get("eax") & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            else:
                data = vcpu.read((emu.segment_base("ds") + esi) & _U32, size)
                esi = (esi + step) & _U32
            self.store(dst, data)
            edi = (edi + step) & _U32
            n += 1
            if rep:
                ecx = (ecx - 1) & _U32
            vcpu.set("edi", edi)
            vcpu.set("esi", esi)
            if rep:
                vcpu.set("ecx", ecx)
            if not rep or ecx == 0:
                return True
            if n >= MAX_REP or ((es + edi) & _U32) >> 12 != page:
                return False  # the rest runs natively (and traps again on a protected page)

    def store(self, lin: int, data: bytes) -> None:
        """Store `data` at linear `lin` as the guest's CPU would (its page-table checks: #PF), with
        every live-table descriptor it touches checked by the rules first (refused: #GP(0), nothing
        written)."""
        m = self.machine
        vcpu = m.vcpu
        user = vcpu.cpl == 3
        end = lin + len(data)
        patches: list[tuple[int, bytes]] = []
        for base, limit in self.windows.values():
            for slot in self._slots(base, limit, lin, len(data)):
                old = bytearray(vcpu.read(slot & _U32, 8, user=False))
                for i in range(max(lin, slot), min(end, slot + 8)):
                    old[i - slot] = data[i - lin]
                lo, hi = struct.unpack("<II", old)
                try:
                    lo, hi, changed = checked_segment(lo, hi, self.ring)
                except GuestFault:
                    m.metrics.event("mmu:desc_refused")
                    raise
                if changed:
                    m.metrics.event("mmu:desc_compressed")
                patches.append((slot, struct.pack("<II", lo, hi)))
        self._write_linear(lin, data, write=True, user=user)
        for slot, desc in patches:  # the checked descriptors win over the raw bytes
            self._write_linear(slot, desc, write=False, user=False)

    def _write_linear(self, lin: int, data: bytes, *, write: bool, user: bool) -> None:
        """Write through the guest's tables, every page translated (and checked) before any byte."""
        m = self.machine
        chunks = m.paging._chunks(lin & _U32, len(data))
        targets = [(m.vcpu.translate(c, write=write, user=user), n) for c, n in chunks]
        off = 0
        for phys, n in targets:
            self._write_phys(phys, data[off : off + n])
            off += n
