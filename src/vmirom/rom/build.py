"""Laying out and building a VMI ROM image from a RomSpec.

Image layout (offsets of everything after the fixed header are chosen by the
assembler and published through the header's offset fields, never assumed):

    0x00  vrom_header (abi.ROM_HEADER), filled in by Python after assembly;
          rom_entry holds the 16-bit BIOS init entry (`retf`)
    0x80  vmi_init jump point: jmp vmi_init_body
    0x88  get_reloc jump point: jmp get_reloc_body
          PCI data structure ("PCIR"), PnP header ("$PnP"), strings, license
          reloc table: a 16-byte block {"vRlc", u16 count, u16 entry size 8,
            u32 code end, u32 CRC-32}, then per call
            {u32 stub offset from rom_start (0 = none), u8 reloc type, 3 x 0}
          vmi_init body, get_reloc body, common_asm, stubs
          (each stub is preceded by a 4-byte marker "vS" + u16 call number)
          zero padding to a multiple of 512; the last byte is the checksum byte
    rom_data = image end rounded up to 4 KiB: the writable area (spec.data_size)

The tag block, the CRC and the stub markers are our format's redundancy (no guest
needs them): `check_rom` uses them to prove that get_reloc answers what the table
says, that every answer points at the stub meant for that call, and that no byte of
the jump points, the table or the code changed after the build (the CRC-32 covers
the whole 0x90-byte header, jump points included, and everything from the table to
the code end).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from vmirom import abi
from vmirom.abi import RelocType

from .asm import Assembled, assemble
from .spec import DEFAULT_INIT_ASM, CallEntry, RomError, RomSpec

# The 16-bit init entry a BIOS far-calls at rom_entry: `retf`, padded with `nop`.
# It changes no memory (SeaBIOS re-reads rom_length after init) and no register
# the BIOS relies on.
REAL_MODE_ENTRY = b"\xcb\x90\x90\x90"
RELOC_TAG = b"vRlc"
RELOC_ENTRY_SIZE = 8
RELOC_TAG_SIZE = 16            # tag, count, entry size, code end, crc
STUB_MARKER = b"vS"            # followed by the u16 call number, right before each stub
PAGE = 4096
PCI_REVISION = 0
PCI_CODE_TYPE_X86 = 0
PCI_LAST_IMAGE = 0x80
PNP_REVISION = 1


def _round_up(n: int, unit: int) -> int:
    return (n + unit - 1) // unit * unit


def _asm_string(s: str, what: str) -> str:
    if not s or len(s) > 64 or not all(0x20 <= ord(ch) < 0x7F for ch in s):
        raise RomError(f"{what} must be 1-64 printable ASCII characters, got {s!r}")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def stub_label(number: int) -> str:
    """The assembler label of call `number`'s stub."""
    return "vmi_stub_" + abi.call(number).name


@dataclass
class RomImage:
    """A built ROM: the bytes a hypervisor maps at 0xC0000, and where things are in it."""

    data: bytes
    spec: RomSpec
    symbols: dict[str, int]        # label -> offset from the ROM start
    data_offset: int               # offset of the writable area (rom_data), page aligned
    build_seconds: float = 0.0
    assembler_runs: int = 0
    entries: dict[int, CallEntry] = field(default_factory=dict)

    def stub_offset(self, call_no: int) -> int | None:
        """Offset of call `call_no`'s stub, or None if get_reloc answers NONE/NOP for it."""
        entry = self.entries.get(call_no)
        if entry is None or entry.reloc not in (RelocType.CALL_REL, RelocType.JUMP_REL):
            return None
        return self.symbols[stub_label(call_no)]

    def reloc(self, call_no: int) -> tuple[RelocType, int | None]:
        """What the table says for `call_no`: (type, stub offset or None)."""
        entry = self.entries.get(call_no)
        if entry is None or call_no >= self.spec.covered_calls():
            return RelocType.NONE, None
        return entry.reloc, self.stub_offset(call_no)


def _validate(spec: RomSpec) -> dict[int, CallEntry]:
    entries = spec.resolved_entries()
    for field_name, value, bits in (("api_major", spec.api_major, 8), ("api_minor", spec.api_minor, 8),
                                    ("rom_version major", spec.rom_version[0], 8),
                                    ("rom_version minor", spec.rom_version[1], 8),
                                    ("virtual_top", spec.virtual_top, 32)):
        if not 0 <= value < (1 << bits):
            raise RomError(f"{field_name} = {value} does not fit in {bits} bits")
    if spec.virtual_top % PAGE:
        raise RomError(f"virtual_top 0x{spec.virtual_top:x} is not page aligned")
    if spec.data_size < 0:
        raise RomError("data_size must be >= 0")
    covered = spec.covered_calls()
    for num, entry in entries.items():
        c = abi.call(num)
        if num >= covered and entry.reloc != RelocType.NONE:
            raise RomError(f"call {c.name} exists since API minor {c.since_minor}, "
                           f"but the ROM announces 3.{spec.api_minor}")
        if entry.reloc in (RelocType.CALL_REL, RelocType.JUMP_REL):
            if not entry.asm.strip():
                raise RomError(f"call {c.name}: a {entry.reloc.name} entry needs stub code")
            if entry.reloc == RelocType.JUMP_REL and c.returns:
                raise RomError(f"call {c.name} returns, so it cannot be JUMP_REL (only IRET/SYSEXIT can)")
        elif entry.asm.strip():
            raise RomError(f"call {c.name}: a {entry.reloc.name} entry has no stub, but code was given")
        if entry.reloc == RelocType.NOP and c.outputs:
            raise RomError(f"call {c.name} returns values, so it cannot be NOP")
    return entries


def render_source(spec: RomSpec, entries: dict[int, CallEntry], data_offset: int) -> str:
    """The complete assembler source of the image (header bytes are zero placeholders)."""
    h = abi.ROM_HEADER
    covered = spec.covered_calls()
    out = [
        "# vmirom ROM image; generated by vmirom.rom.build",
        "\t.text", "\t.code32",
        "rom_start:",
        f"\t.set rom_data, rom_start + 0x{data_offset:x}",
        f"\t.fill 0x{h['vmi_init'].offset:x}, 1, 0     # vrom_header, filled in after assembly",
        "vmi_init:", "\tjmp vmi_init_body",
        f"\t.org 0x{h['get_reloc'].offset:x}, 0xcc",
        "get_reloc:", "\tjmp get_reloc_body",
        f"\t.org 0x{h.size:x}, 0xcc",
    ]
    if spec.with_pci:
        out += ["\t.p2align 2, 0", "pci_header:", f"\t.fill {abi.PCI_HEADER.size}, 1, 0"]
    out += ["\t.p2align 4, 0", "pnp_header:", f"\t.fill {abi.PNP_HEADER.size}, 1, 0",
            "rom_manufacturer:", f"\t.asciz {_asm_string(spec.manufacturer, 'manufacturer')}",
            "rom_product:", f"\t.asciz {_asm_string(spec.product, 'product')}"]
    if spec.license is not None:
        out += ["rom_license:", f"\t.asciz {_asm_string(spec.license, 'license')}"]
    out += ["\t.p2align 2, 0", "reloc_table_tag:",
            f"\t.ascii \"{RELOC_TAG.decode()}\"", f"\t.word {covered}, {RELOC_ENTRY_SIZE}",
            "\t.long rom_code_end - rom_start, 0     # code end; CRC-32 filled in after assembly",
            "reloc_table:"]
    for num in range(covered):
        entry = entries.get(num, CallEntry.native())
        target = (f"{stub_label(num)} - rom_start"
                  if entry.reloc in (RelocType.CALL_REL, RelocType.JUMP_REL) else "0")
        out.append(f"\t.long {target}; .byte {int(entry.reloc)}, 0, 0, 0   # {num} {abi.call(num).name}")
    out += [
        "\t.p2align 4, 0xcc", "vmi_init_body:", spec.init_asm or DEFAULT_INIT_ASM,
        # get_reloc: EAX = call number -> EAX = linear address of the stub, computed from the
        # address this code runs at; EDX = relocation type.  Clobbers only EAX, EDX, flags.
        "\t.p2align 4, 0xcc", "get_reloc_body:",
        f"\tcmpl ${covered}, %eax",
        "\tjae 9f",
        "\tcall 1f",
        "1:\tpopl %edx",
        f"\tleal (reloc_table - 1b)(%edx,%eax,{RELOC_ENTRY_SIZE}), %eax",
        "\tcmpl $0, (%eax)",
        "\tje 8f",
        "\tsubl $(1b - rom_start), %edx",
        "\taddl (%eax), %edx",
        "\tmovzbl 4(%eax), %eax",
        "\txchgl %eax, %edx",
        "\tret",
        "8:\tmovzbl 4(%eax), %edx",
        "\txorl %eax, %eax",
        "\tret",
        "9:\txorl %eax, %eax",
        "\txorl %edx, %edx",
        "\tret",
        "\t.p2align 2, 0xcc", "common_start:", spec.common_asm, "common_end:",
    ]
    for num in sorted(entries):
        entry = entries[num]
        if entry.reloc in (RelocType.CALL_REL, RelocType.JUMP_REL):
            out += ["\t.p2align 2, 0xcc", f"\t.ascii \"{STUB_MARKER.decode()}\"", f"\t.word {num}",
                    f"{stub_label(num)}:", entry.asm]
    out += ["rom_code_end:", ""]
    return "\n".join(out)


def _fill_header(img: bytearray, spec: RomSpec, sym: dict[str, int], covered: int) -> None:
    h, pci, pnp = abi.ROM_HEADER, abi.PCI_HEADER, abi.PNP_HEADER
    blocks = len(img) // abi.ROM_BLOCK
    h["rom_signature"].write(img, abi.OPTION_ROM_SIGNATURE)
    h["rom_length"].write(img, blocks)
    entry = h["rom_entry"]
    img[entry.offset:entry.offset + entry.size] = REAL_MODE_ENTRY
    h["vrom_signature"].write(img, abi.VMI_SIGNATURE)
    h["api_version_min"].write(img, spec.api_minor)
    h["api_version_maj"].write(img, spec.api_major)
    h["jump_slots"].write(img, covered)
    h["virtual_top"].write(img, spec.virtual_top)
    h["license_offs"].write(img, sym["rom_license"] if spec.license is not None else 0)
    h["pci_header_offs"].write(img, sym["pci_header"] if spec.with_pci else 0)
    h["pnp_header_offs"].write(img, sym["pnp_header"])
    if spec.with_pci:
        base = sym["pci_header"]
        sig = pci["signature"]
        img[base + sig.offset:base + sig.offset + sig.size] = b"PCIR"
        for name, value in (("vendor_id", abi.PCI_VENDOR_VMWARE), ("device_id", abi.PCI_DEVICE_VMI),
                            ("size", pci.size), ("revision", PCI_REVISION),
                            ("class_base", abi.PCI_CLASS), ("class_subclass", abi.PCI_SUBCLASS),
                            ("class_interface", abi.PCI_INTERFACE), ("chunks", blocks),
                            ("rom_version_maj", spec.rom_version[0]),
                            ("rom_version_min", spec.rom_version[1]),
                            ("code_type", PCI_CODE_TYPE_X86), ("last_rom", PCI_LAST_IMAGE)):
            pci[name].write(img, value, base)
    base = sym["pnp_header"]
    sig = pnp["signature"]
    img[base + sig.offset:base + sig.offset + sig.size] = b"$PnP"
    pnp["revision"].write(img, PNP_REVISION, base)
    pnp["length"].write(img, pnp.size // 16, base)
    pnp["manufacturer_offs"].write(img, sym["rom_manufacturer"], base)
    pnp["product_offs"].write(img, sym["rom_product"], base)
    pnp["checksum"].write(img, (-sum(img[base:base + pnp.size])) & 0xFF, base)
    tag = sym["reloc_table_tag"]
    crc = integrity_crc(img, tag + RELOC_TAG_SIZE, sym["rom_code_end"])
    img[tag + 12:tag + 16] = crc.to_bytes(4, "little")
    img[-1] = (-sum(img[:-1])) & 0xFF


def integrity_crc(img: bytes, table_start: int, code_end: int) -> int:
    """CRC-32 of the whole vrom_header (jump points included) and of [table_start, code_end):
    what our format protects beyond the 8-bit checksum."""
    return zlib.crc32(bytes(img[:abi.ROM_HEADER.size]) + bytes(img[table_start:code_end]))


def assemblies(spec: RomSpec) -> list[tuple[str, Assembled]]:
    """Every (source, fresh assembly) that building `spec` goes through, WITHOUT the cache: what
    the package build stores as prebuilt ROMs, and what tests compare the shipped ones with."""
    seen: list[tuple[str, Assembled]] = []

    def fresh(source: str) -> Assembled:
        seen.append((source, assemble(source)))
        return seen[-1][1]

    build_rom(spec, fresh)
    return seen


def build_rom(spec: RomSpec, assembler: Callable[[str], Assembled] | None = None) -> RomImage:
    """Assemble `spec` into a ROM image with a zero 8-bit checksum.  Raises RomError.  The
    assembler's output is cached by content (`vmirom.rom.cache`): binutils is needed only for a
    ROM source never assembled before."""
    from .cache import cached_assemble

    assembler = assembler or cached_assemble
    t0 = time.perf_counter()
    entries = _validate(spec)
    covered = spec.covered_calls()
    data_offset = PAGE           # guess; re-assemble until rom_data is where the image ends
    runs = 0
    while runs < 5:
        runs += 1
        asm = assembler(render_source(spec, entries, data_offset))
        size = _round_up(len(asm.code) + 1, abi.ROM_BLOCK)    # + 1: room for the checksum byte
        needed = _round_up(size, PAGE)
        if needed == data_offset:
            break
        data_offset = needed
    else:  # pragma: no cover - layout never oscillates in practice
        raise RomError("ROM layout did not converge")
    if size > abi.ROM_MAX_BLOCKS * abi.ROM_BLOCK:
        raise RomError(f"ROM code is {len(asm.code)} bytes; an option ROM holds at most "
                       f"{abi.ROM_MAX_BLOCKS * abi.ROM_BLOCK - 1} plus the checksum byte")
    sym = asm.symbols
    for name in ("vmi_init", "get_reloc"):
        if sym.get(name) != abi.ROM_HEADER[name].offset:
            raise RomError(f"internal layout error: {name} at {sym.get(name)}")
    img = bytearray(asm.code) + bytes(size - len(asm.code))
    _fill_header(img, spec, sym, covered)
    return RomImage(bytes(img), spec, dict(sym), data_offset, time.perf_counter() - t0, runs, entries)
