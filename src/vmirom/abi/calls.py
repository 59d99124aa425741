"""The VMI 3.0 calls as data: number, name, registers in and out, clobbers.

Numbers 0-73 are the VMI API 3.0 numbering used by Linux 2.6.21.  Calls we add
are appended after 73 and carry the minor API version that introduced them
(`since_minor`); a guest may use one only when the ROM's minor version is at
least that.  Nothing else in the project restates these numbers: the C header
for the guest is generated from this table (see `vmirom.abi.cheader`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Clobber sets.  "standard" is the regparm(3) C convention: EAX, ECX, EDX and flags.
STANDARD = ("eax", "ecx", "edx", "flags")
FLAGS_ONLY = ("flags",)
NOTHING: tuple[str, ...] = ()

# Bit per register, for the clobber masks recorded at guest call sites.
CLOBBER_BITS = {"eax": 0x01, "ecx": 0x02, "edx": 0x04, "ebx": 0x08,
                "esi": 0x10, "edi": 0x20, "flags": 0x40, "memory": 0x80}


@dataclass(frozen=True)
class Arg:
    """One input or output of a call: where it lives and what it means."""

    where: str  # "eax", "edx", "ecx", "edi", "esi", "ebx", "edx:eax", "stack0", "stack1", "frame"
    meaning: str


@dataclass(frozen=True)
class Call:
    """One VMI call."""

    number: int
    name: str
    inputs: tuple[Arg, ...] = ()
    outputs: tuple[Arg, ...] = ()
    clobbers: tuple[str, ...] = STANDARD
    returns: bool = True          # False for IRET/SYSEXIT: the call never comes back
    c_callable: bool = True       # False: not a regparm(3) C function (CPUID, INS/OUTS)
    since_minor: int = 0          # minor API version that introduced the call
    notes: str = ""
    extra_outputs: tuple[str, ...] = field(default=(), repr=False)

    @property
    def c_name(self) -> str:
        return "VMI_CALL_" + self.name

    @property
    def clobber_mask(self) -> int:
        """Registers the call may change, outputs included, as CLOBBER_BITS."""
        mask = 0
        for reg in self.clobbers:
            mask |= CLOBBER_BITS[reg]
        for out in self.outputs:
            for reg in out.where.split(":"):
                mask |= CLOBBER_BITS.get(reg, 0)
        return mask


def _a(*pairs: str) -> tuple[Arg, ...]:
    """Build an Arg tuple from "where=meaning" strings."""
    out = []
    for p in pairs:
        where, _, meaning = p.partition("=")
        out.append(Arg(where, meaning))
    return tuple(out)


_DT_WRITE = _a("eax=table base", "edx=entry index", "ecx=descriptor low word",
               "stack0=descriptor high word")
_IN = dict(inputs=_a("edx=port"), outputs=_a("eax=value"))
_INS = dict(inputs=_a("edi=destination", "edx=port", "ecx=count"),
            clobbers=("edi", "ecx", "memory"), c_callable=False)
_OUT = dict(inputs=_a("eax=value", "edx=port"), clobbers=NOTHING)
_OUTS = dict(inputs=_a("esi=source", "edx=port", "ecx=count"),
             clobbers=("esi", "ecx"), c_callable=False)

CALLS_3_0: tuple[Call, ...] = (
    # --- CPU state, descriptors, control registers
    Call(0, "CPUID", _a("eax=leaf", "ecx=subleaf"), _a("eax=eax", "ebx=ebx", "ecx=ecx", "edx=edx"),
         FLAGS_ONLY, c_callable=False, notes="Not a C function; like the CPUID instruction."),
    Call(1, "WRMSR", _a("eax=value low", "edx=value high", "ecx=msr")),
    Call(2, "RDMSR", _a("ecx=msr"), _a("edx:eax=value")),
    Call(3, "SetGDT", _a("eax=pointer to {u16 limit; u32 base}"),
         clobbers=STANDARD + ("memory",), notes="Reloads all segment registers."),
    Call(4, "SetLDT", _a("eax=GDT selector of the LDT descriptor, 0 for none")),
    Call(5, "SetIDT", _a("eax=pointer to {u16 limit; u32 base}")),
    Call(6, "SetTR", _a("eax=TSS selector")),
    Call(7, "GetGDT", _a("eax=pointer to a {limit, base} to fill"), clobbers=STANDARD + ("memory",)),
    Call(8, "GetLDT", outputs=_a("eax=LDT selector")),
    Call(9, "GetIDT", _a("eax=pointer to a {limit, base} to fill"), clobbers=STANDARD + ("memory",)),
    Call(10, "GetTR", outputs=_a("eax=TSS selector")),
    Call(11, "WriteGDTEntry", _DT_WRITE, notes="The stored value may differ (DPL/limit adjusted)."),
    Call(12, "WriteLDTEntry", _DT_WRITE),
    Call(13, "WriteIDTEntry", _DT_WRITE),
    Call(14, "UpdateKernelStack", _a("eax=kernel SS selector (Linux) or TSS address (spec)",
                                     "edx=esp0"),
         notes="The ring-0/1 stack used on entry from user mode."),
    Call(15, "SetCR0", _a("eax=value")),
    Call(16, "SetCR2", _a("eax=value")),
    Call(17, "SetCR3", _a("eax=value"), notes="Flushes the non-global TLB."),
    Call(18, "SetCR4", _a("eax=value")),
    Call(19, "GetCR0", outputs=_a("eax=value")),
    Call(20, "GetCR2", outputs=_a("eax=value")),
    Call(21, "GetCR3", outputs=_a("eax=value")),
    Call(22, "GetCR4", outputs=_a("eax=value")),
    Call(23, "WBINVD"),
    Call(24, "SetDR", _a("eax=register number", "edx=value")),
    Call(25, "GetDR", _a("eax=register number"), _a("eax=value")),
    Call(26, "RDPMC", _a("ecx=counter"), _a("edx:eax=value")),
    Call(27, "RDTSC", outputs=_a("edx:eax=time stamp")),
    Call(28, "CLTS"),
    # --- interrupt flag, privilege transitions, processor state
    Call(29, "EnableInterrupts", clobbers=FLAGS_ONLY,
         notes="Delivers pending interrupts at once. Needs only CS/SS."),
    Call(30, "DisableInterrupts", clobbers=FLAGS_ONLY),
    Call(31, "GetInterruptMask", outputs=_a("eax=0x200 if interrupts are enabled"),
         clobbers=FLAGS_ONLY),
    Call(32, "SetInterruptMask", _a("eax=mask (0x200 = enable)"), clobbers=FLAGS_ONLY,
         notes="Delivers pending interrupts if the mask enables them."),
    Call(33, "IRET", _a("frame=native IRET frame on the stack"), clobbers=NOTHING, returns=False,
         c_callable=False, notes="Entered with CALL or JMP; a CALL's return address must be discarded."),
    Call(34, "SYSEXIT", _a("edx=user EIP", "ecx=user ESP"), clobbers=NOTHING, returns=False,
         c_callable=False, notes="Enables interrupts atomically."),
    Call(35, "Halt", clobbers=STANDARD, notes="Interruptible: enables interrupts and halts (safe_halt)."),
    Call(36, "Reboot", _a("eax=0 soft, 1 hard")),
    Call(37, "Shutdown", notes="Non-interruptible halt: powers off this CPU."),
    # --- MMU
    Call(38, "SetPxE", _a("eax=new entry", "edx=pointer to the entry", "ecx=flags"),
         clobbers=STANDARD + ("memory",)),
    Call(39, "SetPxELong", _a("edx:eax=new 64-bit entry", "ecx=pointer to the entry", "stack0=flags"),
         clobbers=STANDARD + ("memory",)),
    Call(40, "UpdatePxE", _a("eax=pointer to the entry", "edx=flags"),
         notes="The guest already wrote the entry; this tells the hypervisor."),
    Call(41, "UpdatePxELong", _a("eax=pointer to the entry", "edx=flags")),
    Call(42, "MachineToPhysical", notes="Signature undocumented in 3.0; unused."),
    Call(43, "PhysicalToMachine", notes="Signature undocumented in 3.0; unused."),
    Call(44, "AllocatePage", _a("eax=pfn", "edx=flags", "ecx=clone source pfn",
                                "stack0=clone start index", "stack1=clone count")),
    Call(45, "ReleasePage", _a("eax=pfn", "edx=flags")),
    Call(46, "InvalPage", _a("eax=linear address"), clobbers=STANDARD + ("memory",)),
    Call(47, "FlushTLB", _a("eax=flags (1 = TLB, 2 = GLOBAL)"), clobbers=STANDARD + ("memory",)),
    Call(48, "SetLinearMapping", _a("eax=slot 0-3", "edx=linear address", "ecx=page count",
                                    "stack0=first pfn")),
    # --- port I/O (Linux keeps these native)
    Call(49, "INL", **_IN),
    Call(50, "INB", **_IN),
    Call(51, "INW", **_IN),
    Call(52, "INSL", **_INS),
    Call(53, "INSB", **_INS),
    Call(54, "INSW", **_INS),
    Call(55, "OUTL", **_OUT),
    Call(56, "OUTB", **_OUT),
    Call(57, "OUTW", **_OUT),
    Call(58, "OUTSL", **_OUTS),
    Call(59, "OUTSB", **_OUTS),
    Call(60, "OUTSW", **_OUTS),
    Call(61, "SetIOPLMask", _a("eax=IOPL bits in place (IOPL 3 = 0x3000)")),
    Call(62, "SetInitialAPState", _a("eax=pointer to an APState", "edx=APIC id")),
    Call(63, "APICWrite", _a("eax=register offset", "edx=value")),
    Call(64, "APICRead", _a("eax=register offset"), _a("eax=value")),
    Call(65, "IODelay"),
    # --- time
    Call(66, "GetCycleFrequency", outputs=_a("edx:eax=cycles per second")),
    Call(67, "GetCycleCounter", _a("eax=counter (0 REAL, 1 AVAILABLE, 2 STOLEN)"),
         _a("edx:eax=cycles")),
    Call(68, "SetAlarm", _a("eax=flags", "edx=expiry low", "ecx=expiry high",
                            "stack0=period low", "stack1=period high")),
    Call(69, "CancelAlarm", _a("eax=counter"), _a("eax=1 if it was armed")),
    Call(70, "GetWallclockTime", outputs=_a("edx:eax=nanoseconds since the epoch")),
    Call(71, "WallclockUpdated", outputs=_a("eax=1 if the wallclock moved")),
    Call(72, "SetCallbacks", notes="Undocumented in 3.0; unused."),
    Call(73, "SetLazyMode", _a("eax=mode (0 off/flush, 1 MMU, 2 CPU)")),
)

# Extensions beyond 3.0: appended after 73, each announced by a minor version bump.
CALLS_EXTENSIONS: tuple[Call, ...] = (
    Call(74, "GetSharedInfo", outputs=_a("eax=linear address of the VMM-shared page, 0 if none"),
         since_minor=1,
         notes="Where the ROM keeps its per-VCPU state the guest may read (virtual IF, counters)."),
    Call(75, "FlushDeferred", clobbers=STANDARD + ("memory",), since_minor=1,
         notes="Apply every queued page-table update now, without changing the lazy mode."),
)

CALLS: tuple[Call, ...] = CALLS_3_0 + CALLS_EXTENSIONS
NUM_CALLS_3_0 = len(CALLS_3_0)  # 74
NUM_CALLS = len(CALLS)

_BY_NAME = {c.name.lower(): c for c in CALLS}


def call(key: int | str) -> Call:
    """Look a call up by number or by name (case-insensitive). Raises KeyError."""
    if isinstance(key, int):
        if 0 <= key < NUM_CALLS:
            return CALLS[key]
        raise KeyError(f"no VMI call number {key}")
    try:
        return _BY_NAME[key.lower()]
    except KeyError:
        raise KeyError(f"no VMI call named {key!r}") from None


def _check_table() -> None:
    for i, c in enumerate(CALLS):
        assert c.number == i, f"call table out of order at {i}: {c.name}"


_check_table()
