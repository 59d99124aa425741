"""Built-in ROM descriptions, shared by `vmirom rom build --variant` and the tests.

`native` is the ROM a machine with no hypervisor help would publish: every call keeps
its native instruction (NONE), except the calls that only *inform* a hypervisor and
have nothing to do natively, which are removed (NOP).  The other variants are what the
kernel team needs to test binding and fallback: a ROM that really patches call sites
while still running on bare QEMU (`sti-cli-call`), and deliberately malformed ROMs the
guest must refuse (`bad-major`, `no-pci`, `non-gpl`, `no-license`, `init-fails`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vmirom import abi

from .spec import CallEntry, RomSpec

# Calls a native kernel need not make at all: page-table registration, linear-mapping
# hints, lazy-mode batching, "I already wrote this PTE" notifications, flushing a queue
# that natively never exists.  None of them returns a value.
NATIVE_NOPS = ("AllocatePage", "ReleasePage", "SetLinearMapping", "SetLazyMode",
               "UpdatePxE", "UpdatePxELong", "FlushDeferred")

# The interrupt-flag calls as ROM code that executes the native instructions.  Each
# keeps to the call's clobbers in vmirom.abi (flags only; GetInterruptMask also EAX).
IF_MASK = abi.IF_MASK
INTERRUPT_STUBS = {
    "EnableInterrupts": "sti\n ret",
    "DisableInterrupts": "cli\n ret",
    "GetInterruptMask": f"pushfl\n popl %eax\n andl ${IF_MASK:#x}, %eax\n ret",
    "SetInterruptMask": f"testl ${IF_MASK:#x}, %eax\n jz 1f\n sti\n ret\n1: cli\n ret",
}


def native_entries() -> dict[int | str, CallEntry]:
    return {name: CallEntry.nop() for name in NATIVE_NOPS}


def native() -> RomSpec:
    return RomSpec(product="native", entries=native_entries())


def sti_cli_call() -> RomSpec:
    entries = native_entries()
    entries.update({name: CallEntry.call(asm) for name, asm in INTERRUPT_STUBS.items()})
    return RomSpec(product="sti-cli-call", entries=entries)


def api_3_0() -> RomSpec:
    return RomSpec(product="native-3.0", api_minor=0,
                   entries={k: v for k, v in native_entries().items() if k != "FlushDeferred"})


def future_minor() -> RomSpec:
    return RomSpec(product="native-3.9", api_minor=9, entries=native_entries())


def bad_major() -> RomSpec:
    return RomSpec(product="bad-major", api_major=4, entries=native_entries())


def no_pci() -> RomSpec:
    return RomSpec(product="no-pci", with_pci=False, entries=native_entries())


def non_gpl() -> RomSpec:
    return RomSpec(product="non-gpl", license="Proprietary", entries=native_entries())


def no_license() -> RomSpec:
    return RomSpec(product="no-license", license=None, entries=native_entries())


def init_fails() -> RomSpec:
    return RomSpec(product="init-fails", init_asm="movl $-1, %eax\n ret", entries=native_entries())


@dataclass(frozen=True)
class Variant:
    name: str
    make: Callable[[], RomSpec]
    valid: bool                 # does check_rom accept it (and a guest bind to it)?
    about: str


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("native", native, True, "all NONE, NOP where nothing is needed natively (default)"),
    Variant("sti-cli-call", sti_cli_call, True,
            "CALL_REL into native sti/cli/pushf stubs for the four interrupt-flag calls"),
    Variant("api-3.0", api_3_0, True, "like native but announces API 3.0 (no extensions 74, 75)"),
    Variant("future-minor", future_minor, True, "like native but announces API 3.9 (newer minor)"),
    Variant("bad-major", bad_major, False, "announces API 4.1: guests must refuse it"),
    Variant("no-pci", no_pci, False, "pci_header_offs = 0: guests must refuse it"),
    Variant("non-gpl", non_gpl, False, "license \"Proprietary\": guests must refuse it"),
    Variant("no-license", no_license, False, "license_offs = 0: guests must refuse it"),
    Variant("init-fails", init_fails, False, "vmi_init returns -1: guests must stay native"),
)}


def variant(name: str) -> RomSpec:
    """The RomSpec of a built-in variant.  Raises KeyError listing the known names."""
    try:
        return VARIANTS[name].make()
    except KeyError:
        raise KeyError(f"unknown ROM variant {name!r}; known: {', '.join(VARIANTS)}") from None
