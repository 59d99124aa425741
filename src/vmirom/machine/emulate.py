"""Trap-and-emulate core for a kernel de-privileged to ring 1.

Why this exists: a classic VMM (the `fullvirt` personality, and the `vmi` personality before the
kernel binds to its ROM) runs the unmodified kernel at CPL 1.  There every privileged instruction
raises #GP; the engine hands the fault to the machine, the machine hands it to `TrapEmulator.handle_gp`,
which decodes the instruction (capstone, cached per address *and* bytes), performs it on the guest's
*virtual* CPU state (`GuestControl`) and on the engine's real state where the engine needs it, and
steps EIP over it.

The x86 instructions that misbehave at CPL 1 *without* trapping (popf drops IF, iret keeps the old IF,
pushf/sgdt/sidt/smsw/sldt/str reveal host values) are found by `scan_code` (a capstone linear sweep
of the kernel's code) and handled by pre-execution code hooks (`pre_popf`, `pre_iret`, and in strict
mode the full emulations `emulate_site`).  See docs/fullvirt.md for the design and measured costs.

The virtual interrupt flag IS the engine's EFLAGS.IF.  Unicorn never delivers external interrupts
itself (the machine does, when EFLAGS.IF is set), and at CPL 1 with IOPL 0 the guest cannot change
that bit (cli/sti trap, popf/iret silently keep it).  So only this module writes it, and a native
`pushf` shows the right IF for free, and the machine's delivery pushes the right IF image.

Everything that talks to the VMM goes through the `CpuAccess` protocol (a subset of
`vmirom.machine.vcpu.VCpu`), so the unit tests drive it with a fake CPU and real capstone decoding.
Guest-caused problems are raised as `GuestFault` (the machine delivers them); nothing else escapes
for guest input except `UnsupportedGuestOperation` (a `VmError`: the VM stops with a clear report).
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import capstone
from capstone import x86 as cx

from vmirom.machine.descriptors import checked_table
from vmirom.machine.faults import GP, NP, UD, GuestFault, VmError

__all__ = [
    "CpuAccess", "GuestControl", "Decoded", "Operand", "TrapEmulator", "UnsupportedGuestOperation",
    "decode", "scan_code", "SENSITIVE_KINDS", "DEFAULT_HOOKED", "STRICT_HOOKED",
    "CR0_PE", "CR0_TS", "CR0_ET", "CR0_WP", "CR0_PG", "CR4_VALID", "IF_MASK", "IOPL_MASK",
]

IF_MASK = 0x200
IOPL_MASK = 0x3000
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20
CR0_WP, CR0_AM, CR0_NW, CR0_CD, CR0_PG = 1 << 16, 1 << 18, 1 << 29, 1 << 30, 1 << 31
CR4_VME, CR4_PVI, CR4_DE = 0x1, 0x2, 0x8
#: CR4 bits a 32-bit guest may set (VME..OSXMMEXCPT); anything else is #GP(0) as on a P6-class CPU.
CR4_PAE = 0x20
#: CR4 bits a guest may set: P6-class features up to PCE, minus PAE (the VMM's walker and VMI 3.0's
#: page-table calls here are 2-level; a PAE guest gets #GP, see docs/security.md)
CR4_VALID = 0x7FF & ~CR4_PAE
#: CR4 bits kept out of the engine: VME/PVI would turn user-mode cli/sti into VIF updates.
CR4_HOST_MASKED = CR4_VME | CR4_PVI
#: EFLAGS bits popf/iret load: CF PF AF ZF SF TF IF DF OF NT AC ID (IOPL is virtual, VM/RF/VIF/VIP kept)
FLAGS_LOADABLE = 0x244FD5
_U32 = 0xFFFFFFFF

MSR_TSC, MSR_APIC_BASE = 0x10, 0x1B
MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP = 0x174, 0x175, 0x176
MSR_MISC_ENABLE, MSR_PAT, MSR_MTRR_DEF = 0x1A0, 0x277, 0x2FF
#: The small MSR set a P6-class guest may touch; initial values.  Unknown MSRs are #GP(0).
DEFAULT_MSRS = {
    0x17: 0,                         # IA32_PLATFORM_ID
    MSR_APIC_BASE: 0xFEE00100,       # BSP, APIC globally disabled (the platform has a PIC only)
    0x8B: 0,                         # IA32_BIOS_SIGN_ID (microcode revision)
    0xFE: 0,                         # IA32_MTRRCAP: no MTRRs
    MSR_SYSENTER_CS: 0, MSR_SYSENTER_ESP: 0, MSR_SYSENTER_EIP: 0,
    MSR_MISC_ENABLE: 0,
    MSR_PAT: 0x0007040600070406,
    MSR_MTRR_DEF: 0,
}


class UnsupportedGuestOperation(VmError):
    """The guest did something this VMM cannot virtualize (e.g. clearing CR0.PE to go back to real
    mode at ring 1).  The VM stops with this message instead of silently misbehaving."""

    fate = "unsupported"


class CpuAccess(Protocol):
    """What the emulator needs from the VMM: the subset of `vmirom.machine.vcpu.VCpu` it uses.

    Register names are lower-case x86 names ("eax", "eip", "eflags", "cr0", "cs", "gdtr" as
    (base, limit), "tr"/"ldtr" as (selector, base, limit, flags)).  Memory is guest *linear*,
    checked like the CPU would (raises `GuestFault(#PF)`)."""

    def get(self, name: str) -> int: ...
    def set(self, name: str, value) -> None: ...
    @property
    def cpl(self) -> int: ...
    def read(self, linear: int, size: int, *, user: bool | None = None, fetch: bool = False) -> bytes: ...
    def write(self, linear: int, data: bytes, *, user: bool | None = None) -> None: ...
    def read_code(self, linear: int, size: int = 16) -> bytes: ...
    def halt(self) -> None: ...
    def flush_tlb(self) -> None: ...
    def invlpg(self, linear: int) -> None: ...  # optional: without it invlpg flushes everything
    def read_msr(self, index: int) -> int: ...
    def write_msr(self, index: int, value: int) -> None: ...
    def count(self, kind: str, n: int = 1) -> None: ...


@dataclass
class GuestControl:
    """The guest's view of the system state a de-privileged kernel may not hold in real registers.

    The engine holds the *real* values: CR0 with PE forced on, CR4 without VME/PVI, the guest's
    own GDT/IDT/LDT/TR (used directly; see docs/fullvirt.md), EFLAGS.IF = the virtual IF.
    CR2 is not here: the machine writes the engine's CR2 when it delivers a #PF, and that is the
    value the guest reads back."""

    cr0: int = CR0_PE | CR0_ET
    cr3: int = 0
    cr4: int = 0
    gdtr: tuple[int, int] = (0, 0xFFFF)
    idtr: tuple[int, int] = (0, 0x3FF)
    ldtr: int = 0
    tr: int = 0
    iopl: int = 0                     # the guest's IOPL (the engine runs with IOPL 0 so cli/sti trap)
    dr: list[int] = field(default_factory=lambda: [0, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0x400])
    msrs: dict[int, int] = field(default_factory=lambda: dict(DEFAULT_MSRS))
    #: the ring the guest kernel runs in (its "privileged" ring: CPL <= kernel_ring is the kernel)
    kernel_ring: int = 1


# ------------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Operand:
    """One decoded operand, in plain Python data (cached decodes hold no capstone objects)."""

    type: str                        # "reg" | "mem" | "imm"
    size: int                        # bytes
    reg: str = ""                    # "eax", "ax", "cr3", "dr7", "ss" ...
    seg: str = ""                    # segment override ("" = default)
    base: str = ""
    index: str = ""
    scale: int = 1
    disp: int = 0
    imm: int = 0


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded instruction: `kind` is what the emulator dispatches on (e.g. "mov_to_cr")."""

    kind: str
    mnemonic: str
    size: int
    raw: bytes
    opsize: int                      # operand size in bytes: 2 with a 0x66 prefix, else 4
    ops: tuple[Operand, ...]
    text: str

    def __str__(self) -> str:
        return self.text


_MD = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
_MD.detail = True
_MD_LITE = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
_MD_LITE.skipdata = True

_SEGS = ("cs", "ss", "ds", "es", "fs", "gs")
_SIMPLE_KINDS = {
    "cli": "cli", "sti": "sti", "hlt": "hlt", "clts": "clts", "wbinvd": "wbinvd", "invd": "invd",
    "lgdt": "lgdt", "lidt": "lidt", "ltr": "ltr", "lldt": "lldt", "lmsw": "lmsw", "invlpg": "invlpg",
    "rdmsr": "rdmsr", "wrmsr": "wrmsr", "rdtsc": "rdtsc", "rdpmc": "rdpmc", "lss": "lss",
    "popf": "popf", "popfd": "popf", "pushf": "pushf", "pushfd": "pushf", "iret": "iret", "iretd": "iret",
    "smsw": "smsw", "sgdt": "sgdt", "sidt": "sidt", "sldt": "sldt", "str": "str",
    "in": "in", "out": "out", "lar": "lar", "lsl": "lsl", "verr": "verr", "verw": "verw",
}


def _kind(mnemonic: str, ops: tuple[Operand, ...]) -> str:
    k = _SIMPLE_KINDS.get(mnemonic)
    if k:
        return k
    if mnemonic == "mov" and len(ops) == 2:
        dst, src = ops
        if dst.type == "reg" and dst.reg.startswith("cr"):
            return "mov_to_cr"
        if src.type == "reg" and src.reg.startswith("cr"):
            return "mov_from_cr"
        if dst.type == "reg" and dst.reg.startswith("dr"):
            return "mov_to_dr"
        if src.type == "reg" and src.reg.startswith("dr"):
            return "mov_from_dr"
        if dst.type == "reg" and dst.reg == "ss":
            return "mov_ss"
        if dst.type == "reg" and dst.reg in _SEGS:
            return "mov_seg"
    if mnemonic == "pop" and ops and ops[0].type == "reg" and ops[0].reg == "ss":
        return "pop_ss"
    if mnemonic == "push" and ops and ops[0].type == "reg" and ops[0].reg == "cs":
        return "push_cs"
    return "other"


def decode(code: bytes, address: int) -> Decoded | None:
    """Decode the one instruction at the start of `code` (None if capstone cannot)."""
    try:
        insn = next(_MD.disasm(code[:15], address, 1))
    except StopIteration:
        return None
    ops = []
    for o in insn.operands:
        if o.type == cx.X86_OP_REG:
            ops.append(Operand("reg", o.size, reg=insn.reg_name(o.reg)))
        elif o.type == cx.X86_OP_MEM:
            m = o.mem
            ops.append(Operand("mem", o.size, seg=insn.reg_name(m.segment) if m.segment else "",
                               base=insn.reg_name(m.base) if m.base else "",
                               index=insn.reg_name(m.index) if m.index else "",
                               scale=m.scale, disp=m.disp & _U32))
        else:
            ops.append(Operand("imm", o.size, imm=o.imm & _U32))
    opsize = 2 if 0x66 in insn.prefix else 4
    t = tuple(ops)
    return Decoded(_kind(insn.mnemonic, t), insn.mnemonic, insn.size, bytes(insn.bytes), opsize, t,
                   f"{insn.mnemonic} {insn.op_str}".strip())


#: instructions that do NOT trap at CPL 1 yet behave differently from CPL 0
SENSITIVE_KINDS = frozenset({"popf", "pushf", "iret", "push_cs", "sgdt", "sidt", "sldt", "str", "smsw",
                             "lar", "lsl", "verr", "verw"})
#: what fullvirt hooks by default: the two whose effect on the virtual IF would otherwise be lost
DEFAULT_HOOKED = frozenset({"popf", "iret"})
#: strict mode also hooks the ones that only *reveal* host state (they show the truth here anyway,
#: because the real GDTR/IDTR/LDTR/TR/CR0-low hold the guest's values; strict mode proves it)
STRICT_HOOKED = DEFAULT_HOOKED | {"pushf", "sgdt", "sidt", "sldt", "str", "smsw"}
_LITE_SENSITIVE = {"popf": "popf", "popfd": "popf", "pushf": "pushf", "pushfd": "pushf", "iret": "iret",
                   "iretd": "iret", "sgdt": "sgdt", "sidt": "sidt", "sldt": "sldt", "str": "str",
                   "smsw": "smsw", "lar": "lar", "lsl": "lsl", "verr": "verr", "verw": "verw"}


_FAR = frozenset({"ljmp", "lcall", "retf", "lret", "lds", "les", "lfs", "lgs", "lss", "iret", "iretd"})
_SREGS = frozenset({"ds", "es", "fs", "gs", "ss"})


def loads_segment(d: Decoded) -> bool:
    """Does `d` load a segment register from a descriptor (mov/pop to a segment register, far
    jmp/call/ret, lds & co., iret, `jmp/call m16:32`)?  Only such a #GP can be caused by a DPL-0
    descriptor at CPL 1."""
    if d.mnemonic in _FAR:
        return True
    first = d.ops[0] if d.ops else None
    if first is None:
        return False
    if d.mnemonic in ("mov", "pop") and first.type == "reg" and first.reg in _SREGS:
        return True
    return d.mnemonic in ("jmp", "call") and first.type == "mem" and first.size == 6


def scan_code(code: bytes, base: int) -> dict[int, str]:
    """Linear-sweep `code` (loaded at linear `base`) and return {address: kind} of every sensitive
    non-trapping instruction.  Undecodable bytes are skipped one at a time (capstone skipdata), so
    the sweep resynchronises after embedded data.  Why a linear sweep is enough: gcc puts no data in
    .text, padding is multi-byte NOPs; and a wrong extra address costs nothing at run time (a code
    hook on an address that never starts an instruction never fires)."""
    sites: dict[int, str] = {}
    for addr, _size, mnem, op_str in _MD_LITE.disasm_lite(code, base):
        kind = _LITE_SENSITIVE.get(mnem)
        if kind is None and mnem == "push" and op_str == "cs":
            kind = "push_cs"
        if kind:
            sites[addr] = kind
    return sites


# ------------------------------------------------------------------------------------------------
# Registers
# ------------------------------------------------------------------------------------------------
_GPR32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
_SUB: dict[str, tuple[str, int, int]] = {r: (r, 0, 32) for r in _GPR32}
for _r in ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di"):
    _SUB[_r] = ("e" + _r, 0, 16)
for _r in ("a", "c", "d", "b"):
    _SUB[_r + "l"] = ("e" + _r + "x", 0, 8)
    _SUB[_r + "h"] = ("e" + _r + "x", 8, 8)


def _read_gpr(cpu: CpuAccess, name: str) -> int:
    full, shift, bits = _SUB[name]
    return (cpu.get(full) >> shift) & ((1 << bits) - 1)


def _write_gpr(cpu: CpuAccess, name: str, value: int) -> None:
    full, shift, bits = _SUB[name]
    if bits == 32:
        cpu.set(full, value & _U32)
        return
    mask = ((1 << bits) - 1) << shift
    cpu.set(full, (cpu.get(full) & ~mask) | ((value << shift) & mask))


def _desc_fields(raw: bytes) -> tuple[int, int, int, int]:
    """(base, byte-granular limit, access byte, flags nibble) of an 8-byte descriptor."""
    lo, hi = struct.unpack("<II", raw)
    base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
    limit = (lo & 0xFFFF) | (hi & 0xF0000)
    flags = (hi >> 20) & 0xF
    if flags & 0x8:
        limit = (limit << 12) | 0xFFF
    return base, limit, (hi >> 8) & 0xFF, flags


def _just_loaded(eflags: int, image: int, opsize: int) -> bool:
    """Do the loadable flags other than IF (CF PF AF ZF SF TF DF OF NT AC ID) of `eflags` equal those of
    the popf/iret `image`?  True right after the native instruction loaded them: the signature the
    skipped-hook repairs check before trusting stale stack memory."""
    mask = FLAGS_LOADABLE & ~IF_MASK & (0xFFFF if opsize == 2 else _U32)
    return not (eflags ^ image) & mask


# ------------------------------------------------------------------------------------------------
# The emulator
# ------------------------------------------------------------------------------------------------
@dataclass
class TrapStats:
    """Counters for the run summary and docs: traps by kind, decode-cache use, time in handlers."""

    by_kind: Counter = field(default_factory=Counter)
    cache_hits: int = 0
    cache_misses: int = 0
    cache_stale: int = 0              # an address whose bytes changed since it was decoded
    seconds: float = 0.0              # time inside handle_gp (the #GP exits only; hooks are not timed)
    gp_exits: int = 0                 # handle_gp calls (emulated, reflected or retried)
    descriptors_compressed: int = 0
    #: effects of site hooks the engine skipped, applied afterwards (not exits: not in `traps`)
    repairs: Counter = field(default_factory=Counter)

    @property
    def traps(self) -> int:
        """#GP exits plus scanned-site hook calls."""
        return sum(self.by_kind.values())

    @property
    def hit_rate(self) -> float:
        n = self.cache_hits + self.cache_misses
        return self.cache_hits / n if n else 0.0

    def as_dict(self) -> dict:
        return {"traps": self.traps, "by_kind": dict(sorted(self.by_kind.items())),
                "decode_cache": {"hits": self.cache_hits, "misses": self.cache_misses,
                                 "stale": self.cache_stale, "hit_rate": round(self.hit_rate, 4)},
                "descriptors_compressed": self.descriptors_compressed,
                "skipped_hook_repairs": dict(sorted(self.repairs.items())),
                "gp_exits": self.gp_exits,
                "gp_handler_seconds": round(self.seconds, 6),
                "us_per_gp": round(self.seconds / self.gp_exits * 1e6, 2) if self.gp_exits else None}


class TrapEmulator:
    """Emulates the privileged and sensitive instructions of a CPL-1 guest kernel.

    One instance per vCPU.  `handle_gp` is the #GP entry point; `pre_popf`/`pre_iret` and
    `emulate_site` are the code-hook entry points for the scanned non-trapping instructions."""

    def __init__(self, cpu: CpuAccess, ctl: GuestControl | None = None, *, cache_size: int = 4096) -> None:
        self.cpu = cpu
        self.ctl = ctl or GuestControl()
        self.stats = TrapStats()
        self._cache: dict[int, Decoded] = {}
        self._cache_size = cache_size
        self._handlers = {
            "cli": self._cli, "sti": self._sti, "hlt": self._hlt, "clts": self._clts,
            "wbinvd": self._nop, "invd": self._nop, "invlpg": self._invlpg,
            "mov_to_cr": self._mov_to_cr, "mov_from_cr": self._mov_from_cr,
            "mov_to_dr": self._mov_to_dr, "mov_from_dr": self._mov_from_dr,
            "lgdt": self._lgdt, "lidt": self._lidt, "ltr": self._ltr, "lldt": self._lldt, "lmsw": self._lmsw,
            "rdmsr": self._rdmsr, "wrmsr": self._wrmsr, "rdtsc": self._rdtsc, "rdpmc": self._rdpmc,
            "mov_ss": self._mov_ss, "pop_ss": self._pop_ss, "lss": self._lss, "iret": self._iret_gp,
            "popf": self._popf, "pushf": self._pushf, "smsw": self._smsw, "sgdt": self._sgdt,
            "sidt": self._sidt, "sldt": self._sldt, "str": self._str,
        }

    # -- decoding with the cache ---------------------------------------------------------------------
    def fetch_decode(self, eip: int) -> Decoded:
        """The instruction at linear `eip`, from the cache when its bytes are unchanged.  Raises
        GuestFault(#PF) when the bytes cannot be fetched, GuestFault(#GP) when undecodable."""
        code = self.cpu.read_code(eip, 15)
        d = self._cache.get(eip)
        if d is not None:
            if code[:d.size] == d.raw:
                self.stats.cache_hits += 1
                return d
            self.stats.cache_stale += 1
        self.stats.cache_misses += 1
        d = decode(code, eip) if code else None
        if d is None:
            if len(code) < 15:
                # the instruction runs into a page we cannot read: let the CPU-accurate read fault
                self.cpu.read((eip + len(code)) & _U32, 1, fetch=True)
            self.stats.by_kind["reflect:undecodable"] += 1
            raise GuestFault(GP, 0)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[eip] = d
        return d

    def forget(self, start: int = 0, end: int = 1 << 32) -> None:
        """Drop cached decodes of linear [start, end) (the bytes check makes this optional)."""
        for a in [a for a in self._cache if start <= a < end]:
            del self._cache[a]

    # -- entry points ---------------------------------------------------------------------------------
    def handle_gp(self) -> str:
        """The guest took #GP.  Emulate the instruction if the guest kernel was entitled to it and
        step over it; otherwise raise GuestFault for the machine to deliver.  Returns the kind."""
        t0 = time.perf_counter()
        self.stats.gp_exits += 1
        try:
            return self._handle_gp()
        finally:
            self.stats.seconds += time.perf_counter() - t0

    def _handle_gp(self) -> str:
        cpu = self.cpu
        if cpu.cpl > self.ctl.kernel_ring:
            self.stats.by_kind["reflect:user"] += 1
            raise GuestFault(GP, 0)
        eip = cpu.get("eip")
        d = self.fetch_decode(eip)
        handler = self._handlers.get(d.kind)
        if handler is None:
            # Not a privileged instruction: maybe a DPL-0 descriptor the kernel wrote with plain
            # stores after its lgdt/lldt.  Only an instruction that loads a segment register can be
            # explained that way (issue 11: ANY unexplained kernel #GP used to rewrite the guest's
            # DPL-0 descriptors); then compress and retry once, else the #GP is the guest's.
            if loads_segment(d) and self.compress_tables():
                self.stats.by_kind["retry:compressed"] += 1
                cpu.count("fullvirt:retry_compressed")
                return "retry"
            self.stats.by_kind["reflect:" + d.kind] += 1
            raise GuestFault(GP, 0)
        advance = handler(d)
        if advance:
            cpu.set("eip", (eip + d.size) & _U32)
        self.stats.by_kind[d.kind] += 1
        cpu.count("emulate:" + d.kind)
        return d.kind

    # -- scanned-site hooks (run BEFORE the native instruction; must never raise) -----------------------
    def pre_popf(self, opsize: int = 4) -> None:
        """Before a native popf at CPL 1: give the popped image's IF (and IOPL) to the virtual CPU.
        The native popf then loads the other flags and, at CPL 1, leaves our IF alone."""
        cpu = self.cpu
        cpl = cpu.cpl
        if cpl > self.ctl.kernel_ring and cpl > self.ctl.iopl:
            return                                  # user popf: hardware ignores IF here too
        try:
            image = int.from_bytes(cpu.read(cpu.get("esp"), opsize), "little")
        except GuestFault:
            return                                  # the native popf takes the #PF; we run again on retry
        self._take_if(image, cpl, opsize)
        self.stats.by_kind["hook:popf"] += 1

    def pre_iret(self, opsize: int = 4) -> None:
        """Before a native iret at CPL 1: the EFLAGS image's IF becomes the virtual IF (native iret
        at CPL 1 would keep the old one), whether it returns to ring 1 or to user mode."""
        cpu = self.cpu
        cpl = cpu.cpl
        if cpl > self.ctl.kernel_ring:
            return
        try:
            image = int.from_bytes(cpu.read((cpu.get("esp") + 2 * opsize) & _U32, opsize), "little")
        except GuestFault:
            return
        self._take_if(image, cpl, opsize)
        self.stats.by_kind["hook:iret"] += 1

    def _take_if(self, image: int, cpl: int, opsize: int) -> None:
        fl = self.cpu.get("eflags")
        new = (fl & ~IF_MASK) | (image & IF_MASK)
        if cpl <= self.ctl.kernel_ring:
            self.ctl.iopl = (image & IOPL_MASK) >> 12   # only the kernel may change its IOPL
        if new != fl:
            self.cpu.set("eflags", new)             # the one write that costs (it ends the TB)

    # -- sites whose hook the engine skipped (see docs/fullvirt.md, "Skipped site hooks") -------------
    def repair_after_popf(self, opsize: int = 4) -> bool:
        """The slice ended right after a native kernel popf whose pre-hook may not have run: the image
        it popped is still at ESP - opsize.  If the arithmetic flags now equal the image's (the popf
        loaded them), and the image has IF=0 while the virtual IF is 1, clear IF.  Only that direction:
        a popf that should have *set* IF only delays interrupts until the kernel's next sti/iret, and
        setting IF on a false match (a jump to the address after the popf) could open a cli section.
        Returns True when IF was changed.  Never raises."""
        cpu = self.cpu
        cpl = cpu.cpl
        if cpl > self.ctl.kernel_ring:
            return False
        fl = cpu.get("eflags")
        if not fl & IF_MASK:
            return False
        try:
            image = int.from_bytes(cpu.read((cpu.get("esp") - opsize) & _U32, opsize, user=False), "little")
        except GuestFault:
            return False
        if image & IF_MASK or not _just_loaded(fl, image, opsize):
            return False
        self._take_if(image, cpl, opsize)
        self.stats.repairs["popf"] += 1
        return True

    def repair_after_iret(self, frame: int) -> bool:
        """The slice ended right after a native 32-bit same-ring iret whose pre-hook may not have run;
        `frame` = ESP - 12, where it popped EIP, CS, EFLAGS from.  If that frame is exactly the one
        just returned through (EIP and CS equal the CPU's, the arithmetic flags equal the image's), its
        IF becomes the virtual IF, as pre_iret would have done.  Returns True when IF was changed.
        Never raises.  (Returns to user mode: `repair_user_if`.)"""
        cpu = self.cpu
        if cpu.cpl > self.ctl.kernel_ring:
            return False
        try:
            eip, cs, image = struct.unpack("<3I", cpu.read(frame & _U32, 12, user=False))
        except GuestFault:
            return False
        if eip != cpu.get("eip") or cs & 0xFFFF != cpu.get("cs") & 0xFFFF:
            return False
        if (frame + 12) & _U32 != cpu.get("esp"):
            return False
        fl = cpu.get("eflags")
        if not (fl ^ image) & IF_MASK or not _just_loaded(fl, image, 4):
            return False
        self._take_if(image, self.ctl.kernel_ring, 4)      # the hook runs at CPL <= kernel ring
        self.stats.repairs["iret"] += 1
        return True

    def repair_user_if(self, frame: int) -> bool:
        """User mode's IF is whatever the kernel's last iret to user mode loaded (user code cannot
        change it: IOPL 0), i.e. the IF of the frame that iret popped.  A kernel returns to user mode
        through the frame its entry built at the top of its ring stack; `frame` is that address (top -
        20: EIP, CS, EFLAGS, ESP, SS).  If the CPU is in the user context that frame describes (same
        CS and SS, RPL 3) and its IF differs from the frame's, the iret's pre-hook was skipped: take
        the frame's IF (and IOPL), as pre_iret would have.  EIP/ESP are not compared: the user code may
        have run on before the VMM looks.  Returns True when IF was changed.  Never raises."""
        cpu = self.cpu
        if cpu.cpl != 3:
            return False
        try:
            _eip, cs, image, _esp, ss = struct.unpack("<5I", cpu.read(frame & _U32, 20, user=False))
        except GuestFault:
            return False
        if cs & 0xFFFF != cpu.get("cs") & 0xFFFF or ss & 0xFFFF != cpu.get("ss") & 0xFFFF:
            return False
        if not (cpu.get("eflags") ^ image) & IF_MASK:
            return False
        self._take_if(image, self.ctl.kernel_ring, 4)
        self.stats.repairs["iret_to_user"] += 1
        return True

    def emulate_site(self, eip: int) -> str | None:
        """Strict mode: fully emulate the sensitive instruction at `eip` (pushf/sgdt/sidt/sldt/str/smsw)
        and step over it.  Returns the kind, or None when it left the instruction to run natively
        (user mode, changed bytes, or a fault the native instruction will raise itself)."""
        cpu = self.cpu
        if cpu.cpl > self.ctl.kernel_ring:
            return None
        try:
            d = self.fetch_decode(eip)
            if d.kind not in ("pushf", "sgdt", "sidt", "sldt", "str", "smsw"):
                return None
            self._handlers[d.kind](d)
        except GuestFault:
            return None
        cpu.set("eip", (eip + d.size) & _U32)
        self.stats.by_kind["hook:" + d.kind] += 1
        return d.kind

    def io_permitted(self, cpl: int) -> bool:
        """May code at `cpl` use in/out?  (The engine never checks; the machine asks us.)  The kernel's
        own I/O would #GP at ring 1 and be emulated, so it is always allowed; user code needs
        CPL <= the guest's (virtual) IOPL.  No TSS I/O bitmap."""
        return cpl <= self.ctl.kernel_ring or cpl <= self.ctl.iopl

    # -- memory operand helpers --------------------------------------------------------------------------
    def segment_base(self, seg: str) -> int:
        """Base of the segment in `seg`, read from the guest's GDT/LDT (flat segments give 0)."""
        sel = self.cpu.get(seg) & 0xFFFF
        if sel < 4:
            return 0
        if sel & 4:
            _, base, limit, _ = self.cpu.get("ldtr")
        else:
            base, limit = self.ctl.gdtr
        off = sel & ~7
        if off + 7 > limit:
            return 0
        return _desc_fields(self.cpu.read((base + off) & _U32, 8, user=False))[0]

    def effective_address(self, op: Operand) -> int:
        ea = op.disp
        if op.base:
            ea += _read_gpr(self.cpu, op.base)
        if op.index:
            ea += _read_gpr(self.cpu, op.index) * op.scale
        seg = op.seg or ("ss" if op.base in ("esp", "ebp") else "ds")
        return (ea + self.segment_base(seg)) & _U32

    def _read_op(self, op: Operand, size: int | None = None) -> int:
        size = size or op.size
        if op.type == "reg":
            return _read_gpr(self.cpu, op.reg) if op.reg in _SUB else self.cpu.get(op.reg)
        if op.type == "imm":
            return op.imm
        return int.from_bytes(self.cpu.read(self.effective_address(op), size), "little")

    def _write_op(self, op: Operand, value: int, size: int | None = None) -> None:
        size = size or op.size
        if op.type == "reg":
            _write_gpr(self.cpu, op.reg, value)
        else:
            data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            self.cpu.write(self.effective_address(op), data)

    # -- trapped page-table stores (shadow paging, docs/mmu.md) -----------------------------------------
    def table_store(self, eip: int, linear: int, old: int) -> tuple[int, int, str] | None:
        """The instruction at `eip` stored to a write-protected page table at `linear`, whose entry
        holds `old`: (value it stores, instruction length, register that receives `old` or "") when
        it is one aligned 4-byte `mov` or `xchg` to exactly that entry - how kernels write entries -
        else None (the caller unshadows the frame and lets the instruction run natively)."""
        d = self.fetch_decode(eip)
        if d.mnemonic not in ("mov", "xchg") or len(d.ops) != 2 or linear & 3:
            return None
        dst, src = d.ops
        if d.mnemonic == "xchg" and dst.type == "reg":
            dst, src = src, dst
        if dst.type != "mem" or dst.size != 4 or src.type not in ("reg", "imm") or src.size != 4:
            return None
        if self.effective_address(dst) != linear:
            return None
        value = src.imm & _U32 if src.type == "imm" else _read_gpr(self.cpu, src.reg)
        return value, d.size, src.reg if d.mnemonic == "xchg" else ""

    def finish_table_store(self, eip: int, size: int, reg: str, old: int) -> None:
        """Complete an emulated `table_store`: xchg's register gets the old entry; step over it."""
        if reg:
            _write_gpr(self.cpu, reg, old)
        self.cpu.set("eip", (eip + size) & _U32)

    # -- descriptor tables ------------------------------------------------------------------------------
    def compress_table(self, base: int, limit: int) -> int:
        """Apply the descriptor rules (vmirom.machine.descriptors) to a GDT/LDT in guest memory:
        DPL-0 code/data get the kernel's ring and their Accessed bit, TSS descriptors are made
        DPL 0 and available; a call/task gate or 16-bit TSS is refused with #GP(0).  Returns how
        many descriptors were compressed."""
        if limit < 7 or self.ctl.kernel_ring == 0:
            return 0
        size = min(limit + 1, 8192 * 8) & ~7
        try:
            raw = self.cpu.read(base, size, user=False)
        except GuestFault:
            return 0
        new, changed = checked_table(raw, self.ctl.kernel_ring)
        for off in range(0, size, 8):  # descriptor by descriptor: only what changed is written
            if new[off : off + 8] != raw[off : off + 8]:
                try:
                    self.cpu.write((base + off) & _U32, new[off : off + 8], user=False)
                except GuestFault:
                    pass
        self.stats.descriptors_compressed += changed
        return changed

    def compress_tables(self) -> int:
        n = self.compress_table(*self.ctl.gdtr)
        if self.ctl.ldtr & ~3:
            _, base, limit, _ = self.cpu.get("ldtr")
            n += self.compress_table(base, limit)
        return n

    def _load_system_desc(self, sel: int, types: tuple[int, ...]) -> tuple[int, int, int, int, int]:
        """Checks of ltr/lldt: a GDT selector of one of `types`, present.  Returns
        (base, limit, access, flags, gdt offset)."""
        if sel & 4:
            raise GuestFault(GP, sel & 0xFFFC)
        base, limit = self.ctl.gdtr
        off = sel & ~7
        if off + 7 > limit:
            raise GuestFault(GP, sel & 0xFFFC)
        dbase, dlimit, access, flags = _desc_fields(self.cpu.read((base + off) & _U32, 8, user=False))
        if access & 0x10 or (access & 0xF) not in types:
            raise GuestFault(GP, sel & 0xFFFC)
        if not access & 0x80:
            raise GuestFault(NP, sel & 0xFFFC)
        return dbase, dlimit, access, flags, off

    # -- the handlers: each returns True to step EIP over the instruction ---------------------------------
    def _nop(self, d: Decoded) -> bool:
        return True

    def _cli(self, d: Decoded) -> bool:
        fl = self.cpu.get("eflags")
        if fl & IF_MASK:
            self.cpu.set("eflags", fl & ~IF_MASK)
        return True

    def _sti(self, d: Decoded) -> bool:
        # Plain register write: the machine delivers pending interrupts at its next exit, which is
        # after at least the next guest instruction - the hardware's one-instruction STI shadow.
        fl = self.cpu.get("eflags")
        if not fl & IF_MASK:
            self.cpu.set("eflags", fl | IF_MASK)
        return True

    def _hlt(self, d: Decoded) -> bool:
        # Step first: the interrupt that wakes us returns after the hlt, as on hardware.
        self.cpu.set("eip", (self.cpu.get("eip") + d.size) & _U32)
        self.cpu.halt()
        return False

    def _clts(self, d: Decoded) -> bool:
        self._set_cr0(self.ctl.cr0 & ~CR0_TS)
        return True

    def _invlpg(self, d: Decoded) -> bool:
        invlpg = getattr(self.cpu, "invlpg", None)
        if invlpg is None:
            self.cpu.flush_tlb()
        else:
            invlpg(self.effective_address(d.ops[0]))
        return True

    def _set_cr0(self, value: int) -> None:
        value &= _U32
        if value & CR0_PG and not value & CR0_PE:
            raise GuestFault(GP, 0)
        if value & CR0_NW and not value & CR0_CD:
            raise GuestFault(GP, 0)
        if not value & CR0_PE:
            raise UnsupportedGuestOperation("the guest cleared CR0.PE (real mode) at ring 1: "
                                            "fullvirt cannot virtualize real mode")
        value |= CR0_ET
        old = self.ctl.cr0
        self.ctl.cr0 = value
        if value != old:
            self.cpu.set("cr0", value | CR0_PE)

    def _mov_to_cr(self, d: Decoded) -> bool:
        cr, src = d.ops[0].reg, d.ops[1].reg
        v = _read_gpr(self.cpu, src)
        if cr == "cr0":
            self._set_cr0(v)
        elif cr == "cr2":
            self.cpu.set("cr2", v)
        elif cr == "cr3":
            self.ctl.cr3 = v
            self.cpu.set("cr3", v)
        elif cr == "cr4":
            if v & ~CR4_VALID:
                raise GuestFault(GP, 0)
            self.ctl.cr4 = v
            self.cpu.set("cr4", v & ~CR4_HOST_MASKED)
        else:
            raise GuestFault(UD)
        return True

    def _mov_from_cr(self, d: Decoded) -> bool:
        dst, cr = d.ops[0].reg, d.ops[1].reg
        if cr == "cr0":
            v = self.ctl.cr0
        elif cr == "cr2":
            v = self.cpu.get("cr2")
        elif cr == "cr3":
            v = self.ctl.cr3
        elif cr == "cr4":
            v = self.ctl.cr4
        else:
            raise GuestFault(UD)
        _write_gpr(self.cpu, dst, v)
        return True

    def _dr_index(self, name: str) -> int:
        n = int(name[2:])
        if n in (4, 5):
            if self.ctl.cr4 & CR4_DE:
                raise GuestFault(UD)
            n += 2
        return n

    def _mov_to_dr(self, d: Decoded) -> bool:
        n = self._dr_index(d.ops[0].reg)
        self.ctl.dr[n] = _read_gpr(self.cpu, d.ops[1].reg)
        return True

    def _mov_from_dr(self, d: Decoded) -> bool:
        n = self._dr_index(d.ops[1].reg)
        _write_gpr(self.cpu, d.ops[0].reg, self.ctl.dr[n])
        return True

    def _read_table_operand(self, d: Decoded) -> tuple[int, int]:
        op = d.ops[0]
        if op.type != "mem":
            raise GuestFault(UD)
        raw = self.cpu.read(self.effective_address(op), 6)
        limit, base = struct.unpack("<HI", raw)
        if d.opsize == 2:
            base &= 0xFFFFFF
        return base, limit

    def _lgdt(self, d: Decoded) -> bool:
        base, limit = self._read_table_operand(d)
        self.compress_table(base, limit)  # first: a table with a gate is refused, GDTR unchanged
        self.ctl.gdtr = (base, limit)
        self.cpu.set("gdtr", (base, limit))
        return True

    def _lidt(self, d: Decoded) -> bool:
        base, limit = self._read_table_operand(d)
        self.ctl.idtr = (base, limit)
        self.cpu.set("idtr", (base, limit))
        return True

    def _ltr(self, d: Decoded) -> bool:
        sel = self._read_op(d.ops[0], 2) & 0xFFFF
        if sel & ~3 == 0:
            raise GuestFault(GP, 0)
        base, limit, access, flags, _ = self._load_system_desc(sel, (1, 9))
        if self.ctl.kernel_ring == 0:  # the CPU marks it busy; a de-privileged kernel's stays available
            self.cpu.write((self.ctl.gdtr[0] + (sel & ~7) + 5) & _U32, bytes([access | 0x2]), user=False)
        self.ctl.tr = sel
        self.cpu.set("tr", (sel, base, limit, (access << 8) | (flags << 20)))
        return True

    def _lldt(self, d: Decoded) -> bool:
        sel = self._read_op(d.ops[0], 2) & 0xFFFF
        if sel & ~3 == 0:
            self.ctl.ldtr = 0
            self.cpu.set("ldtr", (0, 0, 0, 0))
            return True
        base, limit, access, flags, _ = self._load_system_desc(sel, (2,))
        self.compress_table(base, limit)  # first: an LDT with a gate is refused, LDTR unchanged
        self.ctl.ldtr = sel
        self.cpu.set("ldtr", (sel, base, limit, (access << 8) | (flags << 20)))
        return True

    def _lmsw(self, d: Decoded) -> bool:
        src = self._read_op(d.ops[0], 2) & 0xF
        old = self.ctl.cr0
        self._set_cr0((old & ~0xE) | src | (old & CR0_PE))     # lmsw can set PE, never clear it
        return True

    def _rdmsr(self, d: Decoded) -> bool:
        idx = self.cpu.get("ecx")
        if idx == MSR_TSC:
            v = self.cpu.read_msr(MSR_TSC)
        elif idx in self.ctl.msrs:
            v = self.ctl.msrs[idx]
        else:
            raise GuestFault(GP, 0)
        self.cpu.set("eax", v & _U32)
        self.cpu.set("edx", (v >> 32) & _U32)
        return True

    def _wrmsr(self, d: Decoded) -> bool:
        idx = self.cpu.get("ecx")
        v = (self.cpu.get("edx") << 32) | self.cpu.get("eax")
        if idx == MSR_TSC:
            self.cpu.write_msr(MSR_TSC, v)
        elif idx in (0x17, 0xFE, 0x8B) or idx not in self.ctl.msrs:
            raise GuestFault(GP, 0)                    # read-only or unknown
        else:
            self.ctl.msrs[idx] = v
        return True

    def _rdtsc(self, d: Decoded) -> bool:           # traps only with CR4.TSD at CPL > 0
        v = self.cpu.read_msr(MSR_TSC)
        self.cpu.set("eax", v & _U32)
        self.cpu.set("edx", (v >> 32) & _U32)
        return True

    def _rdpmc(self, d: Decoded) -> bool:           # no performance counters: 0 for the architectural two
        if self.cpu.get("ecx") > 1:
            raise GuestFault(GP, 0)
        self.cpu.set("eax", 0)
        self.cpu.set("edx", 0)
        return True

    def _load_ss(self, sel: int) -> None:
        """A kernel SS selector with RPL 0 is loaded as RPL 1 (hardware requires RPL == CPL)."""
        sel &= 0xFFFF
        if sel & 3 < self.cpu.cpl:
            sel = (sel & ~3) | self.cpu.cpl
        try:
            self.cpu.set("ss", sel)
        except GuestFault:
            raise
        except Exception:
            if self.compress_tables():
                try:
                    self.cpu.set("ss", sel)
                    return
                except Exception:
                    pass
            raise GuestFault(GP, sel & 0xFFFC) from None

    def _mov_ss(self, d: Decoded) -> bool:
        self._load_ss(self._read_op(d.ops[1], 2))
        return True

    def _pop_ss(self, d: Decoded) -> bool:
        esp = self.cpu.get("esp")
        sel = int.from_bytes(self.cpu.read(esp, d.opsize), "little")
        self._load_ss(sel)
        self.cpu.set("esp", (esp + d.opsize) & _U32)
        return True

    def _lss(self, d: Decoded) -> bool:
        ea = self.effective_address(d.ops[1])
        off = int.from_bytes(self.cpu.read(ea, d.opsize), "little")
        sel = int.from_bytes(self.cpu.read((ea + d.opsize) & _U32, 2), "little")
        self._load_ss(sel)
        _write_gpr(self.cpu, d.ops[0].reg, off)
        return True

    def _iret_gp(self, d: Decoded) -> bool:
        """A CPL-1 iret that faulted: the usual cause is a hand-built frame with the kernel's ring-0
        CS (RPL 0).  A same-ring return is emulated with CS given RPL 1; anything else is reflected."""
        cpu = self.cpu
        esp = cpu.get("esp")
        n = d.opsize
        raw = cpu.read(esp, 3 * n)
        eip, cs, fl = (int.from_bytes(raw[i * n:(i + 1) * n], "little") for i in range(3))
        cs &= 0xFFFF
        if cs & 3 > self.ctl.kernel_ring or cs & ~3 == 0:
            raise GuestFault(GP, cs & 0xFFFC)
        cs = (cs & ~3) | cpu.cpl
        try:
            cpu.set("cs", cs)
        except Exception:
            if not self.compress_tables():
                raise GuestFault(GP, cs & 0xFFFC) from None
            try:
                cpu.set("cs", cs)
            except Exception:
                raise GuestFault(GP, cs & 0xFFFC) from None
        loadable = FLAGS_LOADABLE & (0xFFFF if n == 2 else _U32)
        old = cpu.get("eflags")
        new = (old & ~loadable) | (fl & loadable) | 0x2
        self.ctl.iopl = (fl & IOPL_MASK) >> 12
        cpu.set("eflags", new & _U32)
        cpu.set("esp", (esp + 3 * n) & _U32)
        cpu.set("eip", eip & (0xFFFF if n == 2 else _U32))
        return False

    # emulations of the non-trapping sensitive instructions (reached from strict-mode code hooks, and
    # from handle_gp should a future engine trap them)
    def _popf(self, d: Decoded) -> bool:
        cpu = self.cpu
        esp = cpu.get("esp")
        n = d.opsize
        image = int.from_bytes(cpu.read(esp, n), "little")
        old = cpu.get("eflags")
        loadable = FLAGS_LOADABLE & (0xFFFF if n == 2 else _U32)
        new = (old & ~loadable) | (image & loadable) | 0x2
        self.ctl.iopl = (image & IOPL_MASK) >> 12
        cpu.set("eflags", new & _U32)
        cpu.set("esp", (esp + n) & _U32)
        return True

    def _pushf(self, d: Decoded) -> bool:
        cpu = self.cpu
        n = d.opsize
        image = (cpu.get("eflags") & ~(IOPL_MASK | 0x30000)) | (self.ctl.iopl << 12)
        esp = (cpu.get("esp") - n) & _U32
        cpu.write(esp, (image & ((1 << (8 * n)) - 1)).to_bytes(n, "little"))
        cpu.set("esp", esp)
        return True

    def _smsw(self, d: Decoded) -> bool:
        op = d.ops[0]
        v = self.ctl.cr0 & (0xFFFF if op.type == "mem" or op.size == 2 else _U32)
        self._write_op(op, v, 2 if op.type == "mem" else op.size)
        return True

    def _store_table(self, d: Decoded, base: int, limit: int) -> None:
        op = d.ops[0]
        if op.type != "mem":
            raise GuestFault(UD)
        self.cpu.write(self.effective_address(op), struct.pack("<HI", limit & 0xFFFF, base & _U32))

    def _sgdt(self, d: Decoded) -> bool:
        self._store_table(d, self.ctl.gdtr[0], self.ctl.gdtr[1])
        return True

    def _sidt(self, d: Decoded) -> bool:
        self._store_table(d, self.ctl.idtr[0], self.ctl.idtr[1])
        return True

    def _sldt(self, d: Decoded) -> bool:
        op = d.ops[0]
        self._write_op(op, self.ctl.ldtr, 2 if op.type == "mem" else op.size)
        return True

    def _str(self, d: Decoded) -> bool:
        op = d.ops[0]
        self._write_op(op, self.ctl.tr, 2 if op.type == "mem" else op.size)
        return True

