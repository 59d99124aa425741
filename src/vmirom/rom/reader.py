"""Reading a ROM image into a parsed view, tolerating damage.

`read_rom` never trusts the bytes: every offset is bounds-checked, and the per-call
answers come from executing the ROM's own get_reloc (vmirom.rom.sandbox) at two
linear addresses, exactly as a guest would obtain them.  Fields that cannot be read
are None; `check_rom` turns them into plain-word violations.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vmirom import abi
from vmirom.abi import RelocType

from .build import RELOC_ENTRY_SIZE, RELOC_TAG, RELOC_TAG_SIZE, integrity_crc
from .sandbox import RomSandbox
from .spec import RomError

# Call numbers probed beyond the table: just past it, a byte-sized one, "negative" ones.
MAX_FAILED_PROBES = 8
OUT_OF_RANGE_PROBES = (abi.NUM_CALLS, abi.NUM_CALLS + 1, 0xFF, 0x100, 0x7FFFFFFF, 0xFFFFFFFF)


@dataclass(frozen=True)
class Answer:
    """What get_reloc answered for one call number, as offsets from the ROM start."""

    call: int
    reloc: int | None            # raw DL (None if get_reloc misbehaved)
    target: int | None           # EAX - base, or None for EAX = 0
    problem: str | None = None   # how get_reloc misbehaved when asked for this call
    raw: tuple[int, int] = (0, 0)

    @property
    def type_name(self) -> str:
        if self.reloc is None:
            return "?"
        try:
            return RelocType(self.reloc).name
        except ValueError:
            return f"invalid({self.reloc})"


@dataclass(frozen=True)
class TableEntry:
    """One entry of our format's relocation table (found via its tag), read statically."""

    call: int
    target: int
    reloc: int


@dataclass
class RomInfo:
    """Everything a guest (or a person) wants to know about an image."""

    size: int
    rom_signature: int
    rom_length: int
    rom_entry: bytes
    vrom_signature: int
    api_major: int
    api_minor: int
    jump_slots: int
    virtual_top: int
    license_offs: int
    pci_header_offs: int
    pnp_header_offs: int
    checksum_ok: bool
    license: str | None = None               # None: no/unreadable string
    pci: dict[str, int | bytes] | None = None
    pnp: dict[str, int | bytes] | None = None
    manufacturer: str | None = None
    product: str | None = None
    init_result: int | None = None
    init_problem: str | None = None
    init_hypercall: bool = False      # vmi_init talked to its hypervisor: result unknowable offline
    answers: dict[int, Answer] = field(default_factory=dict)           # at the first base
    moved_answers: dict[int, Answer] = field(default_factory=dict)     # at the second base
    table: TableBlock | None = None
    complete: bool = False            # the file holds the whole image rom_length describes
    probes_abandoned: bool = False    # get_reloc failed MAX_FAILED_PROBES times; the rest were not asked

    @property
    def image_size(self) -> int:
        return self.rom_length * abi.ROM_BLOCK

    @property
    def rom_version(self) -> tuple[int, int] | None:
        if self.pci is None:
            return None
        return int(self.pci["rom_version_maj"]), int(self.pci["rom_version_min"])  # type: ignore[arg-type]


def c_string(data: bytes, offset: int, limit: int = 256) -> str | None:
    """The NUL-terminated ASCII string at `offset`, or None if it runs off the image or
    holds non-printable bytes."""
    if not 0 < offset < len(data):
        return None
    end = data.find(b"\0", offset, offset + limit)
    if end < 0:
        return None
    raw = data[offset:end]
    if not all(0x20 <= b < 0x7F for b in raw):
        return None
    return raw.decode("ascii")


def _struct(data: bytes, layout: abi.Layout, base: int) -> dict[str, int | bytes] | None:
    if base <= 0 or base + layout.size > len(data):
        return None
    out: dict[str, int | bytes] = {}
    for f in layout.fields:
        out[f.name] = f.read(data, base) if f.fmt else data[base + f.offset:base + f.offset + f.size]
    return out


@dataclass
class TableBlock:
    """Our format's relocation table block (see vmirom.rom.build), read statically."""

    tag_offset: int
    count: int
    entry_size: int
    code_end: int
    crc: int
    entries: list[TableEntry] | None      # None if the block's fields do not fit the image
    crc_ok: bool = False


def _find_table(data: bytes) -> TableBlock | None:
    pos = data.find(RELOC_TAG, abi.ROM_HEADER.size)
    while pos >= 0 and pos % 4:
        pos = data.find(RELOC_TAG, pos + 1)
    if pos < 0 or pos + RELOC_TAG_SIZE > len(data):
        return None
    count, esize = struct.unpack_from("<HH", data, pos + 4)
    code_end, crc = struct.unpack_from("<II", data, pos + 8)
    block = TableBlock(pos, count, esize, code_end, crc, None)
    start = pos + RELOC_TAG_SIZE
    if esize != RELOC_ENTRY_SIZE or start + count * esize > min(code_end, len(data)):
        return block
    block.entries = [TableEntry(n, *struct.unpack_from("<IB", data, start + n * esize)) for n in range(count)]
    block.crc_ok = integrity_crc(data, start, code_end) == crc
    return block


def probe_numbers(info_jump_slots: int) -> list[int]:
    """Every call number get_reloc is asked about."""
    nums = list(range(max(abi.NUM_CALLS, info_jump_slots)))
    return nums + [n for n in OUT_OF_RANGE_PROBES if n not in nums]


def _ask(sandbox: RomSandbox, base: int, n: int) -> Answer:
    out = sandbox.call(base, abi.ROM_HEADER["get_reloc"].offset, eax=n)
    if out.problem is not None:
        return Answer(n, None, None, out.problem)
    if out.clobbered:
        return Answer(n, out.edx & 0xFF, None, f"changes {', '.join(out.clobbered)}, "
                      "which a C function must preserve", (out.eax, out.edx))
    target = None if out.eax == 0 else (out.eax - base) & 0xFFFFFFFF
    return Answer(n, out.edx & 0xFF, target, None, (out.eax, out.edx))


def read_rom(data: bytes, execute: bool = True) -> RomInfo:
    """Parse `data`.  Raises RomError only if it is too short to hold a VMI header; all
    other damage is reported through the returned fields (see check_rom)."""
    data = bytes(data)
    h = abi.ROM_HEADER
    if len(data) < h.size:
        raise RomError(f"{len(data)} bytes is too short for a VMI ROM: the header alone is {h.size} bytes")
    rd = {f.name: f.read(data) for f in h.fields if f.fmt}
    info = RomInfo(
        size=len(data), rom_signature=rd["rom_signature"], rom_length=rd["rom_length"],
        rom_entry=data[h["rom_entry"].offset:h["rom_entry"].offset + h["rom_entry"].size],
        vrom_signature=rd["vrom_signature"], api_major=rd["api_version_maj"],
        api_minor=rd["api_version_min"], jump_slots=rd["jump_slots"], virtual_top=rd["virtual_top"],
        license_offs=rd["license_offs"], pci_header_offs=rd["pci_header_offs"],
        pnp_header_offs=rd["pnp_header_offs"], checksum_ok=False)
    image = data[:min(len(data), info.image_size)] if info.rom_length else data
    info.checksum_ok = info.image_size > 0 and len(data) >= info.image_size and sum(image) & 0xFF == 0
    if info.license_offs:
        info.license = c_string(image, info.license_offs)
    if info.pci_header_offs:
        info.pci = _struct(image, abi.PCI_HEADER, info.pci_header_offs)
    if info.pnp_header_offs:
        info.pnp = _struct(image, abi.PNP_HEADER, info.pnp_header_offs)
        if info.pnp is not None:
            info.manufacturer = c_string(image, int(info.pnp["manufacturer_offs"]))  # type: ignore[arg-type]
            info.product = c_string(image, int(info.pnp["product_offs"]))  # type: ignore[arg-type]
    info.table = _find_table(image)
    info.complete = info.rom_length > 0 and len(data) >= info.image_size
    if execute and info.complete:
        sandbox = RomSandbox(image)
        init = sandbox.call(sandbox.bases[0], h["vmi_init"].offset)
        info.init_problem, info.init_result = init.problem, (None if init.problem else init.eax)
        if init.problem is None and init.clobbered:
            info.init_problem = f"changes {', '.join(init.clobbered)}, which a C function must preserve"
        info.init_hypercall = init.hypercall
        failures = 0
        for n in probe_numbers(info.jump_slots):
            info.answers[n] = _ask(sandbox, sandbox.bases[0], n)
            info.moved_answers[n] = _ask(sandbox, sandbox.bases[1], n)
            failures += info.answers[n].problem is not None
            if failures >= MAX_FAILED_PROBES:     # broken code: more probes only cost time
                info.probes_abandoned = True
                break
    return info
