"""What a hypervisor decides about its ROM: the data a ROM image is built from.

A `RomSpec` is deliberately plain data (strings of GNU as source, numbers), so a
hypervisor personality can describe its ROM without knowing how images are laid
out.  Deliberately malformed specs (wrong major, no PCI header, non-GPL license,
failing init) are allowed: the kernel's tests need such ROMs, and `check_rom`
is what says they are bad.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmirom import abi
from vmirom.abi import RelocType


class RomError(Exception):
    """A ROM cannot be built or read (bad spec, assembler error, unreadable bytes)."""


@dataclass(frozen=True)
class CallEntry:
    """The hypervisor's answer for one call: what get_reloc reports, and the stub code if any."""

    reloc: RelocType
    asm: str = ""   # GNU as (AT&T, 32-bit) body of the stub; only for CALL_REL / JUMP_REL

    @classmethod
    def native(cls) -> CallEntry:
        """Keep the kernel's native instruction (RelocType.NONE)."""
        return cls(RelocType.NONE)

    @classmethod
    def nop(cls) -> CallEntry:
        """The hypervisor does not need this call: the kernel removes the site."""
        return cls(RelocType.NOP)

    @classmethod
    def call(cls, asm: str) -> CallEntry:
        """The site becomes `call rel32` to a stub with this body (it must `ret`)."""
        return cls(RelocType.CALL_REL, asm)

    @classmethod
    def jump(cls, asm: str) -> CallEntry:
        """The site becomes `jmp rel32` to a stub with this body (non-returning calls only)."""
        return cls(RelocType.JUMP_REL, asm)


DEFAULT_INIT_ASM = "xor %eax, %eax\n ret"


@dataclass
class RomSpec:
    """A hypervisor's description of its ROM.  Missing entries mean NONE (native)."""

    manufacturer: str = "vmirom"
    product: str = "native"
    rom_version: tuple[int, int] = (1, 0)
    api_major: int = abi.API_MAJOR
    api_minor: int = abi.API_MINOR
    virtual_top: int = 0                 # 0 = the hypervisor reserves no linear space
    license: str | None = "GPL"          # None -> license_offs = 0
    with_pci: bool = True                # False -> pci_header_offs = 0 (malformed-ROM tests)
    entries: dict[int | str, CallEntry] = field(default_factory=dict)
    init_asm: str | None = None          # body of vmi_init; default returns 0
    common_asm: str = ""                 # shared code/data; its labels are usable in stubs
    data_size: int = 0                   # writable bytes the hypervisor provides at rom_data

    def resolved_entries(self) -> dict[int, CallEntry]:
        """Entries keyed by call number (names accepted in `entries` for convenience)."""
        out: dict[int, CallEntry] = {}
        for key, entry in self.entries.items():
            try:
                num = abi.call(key).number
            except KeyError as e:
                raise RomError(str(e.args[0])) from None
            if num in out:
                raise RomError(f"call {abi.call(num).name} is given twice")
            if not isinstance(entry, CallEntry):
                raise RomError(f"entry for {abi.call(num).name} is not a CallEntry: {entry!r}")
            out[num] = entry
        return out

    def covered_calls(self) -> int:
        """How many call numbers get_reloc's table covers: every call that exists at this
        ROM's minor version (a ROM announcing 3.0 does not answer for extensions)."""
        return sum(1 for c in abi.CALLS if c.since_minor <= self.api_minor)
