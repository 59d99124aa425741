"""Validating a ROM image with the guest's discovery rules, plus what a BIOS and our
own format require.  Every violation is one sentence in plain words.

The rules, in the order a guest applies them (vmi-abi.md section 1), then the rest:
size and rom_length; 55 AA; "cVmi"; major version 3; a PCI data structure; a GPL
license; the PnP header; the 8-bit checksum; the 16-bit BIOS entry; vmi_init; and
get_reloc, executed at two linear addresses for every call number and some
out-of-range ones.  ROMs in our own format (found by their table tag) are also
held to their table, stub markers and CRC-32 (vmirom.rom.build).
"""

from __future__ import annotations

from vmirom import abi
from vmirom.abi import RelocType

from .build import PCI_CODE_TYPE_X86, PCI_LAST_IMAGE, REAL_MODE_ENTRY, RELOC_TAG_SIZE, STUB_MARKER
from .reader import MAX_FAILED_PROBES, Answer, RomInfo, c_string, read_rom
from .sandbox import ALT_BASE, BASE, RomSandbox
from .spec import RomError

MAX_SIZE = abi.ROM_MAX_BLOCKS * abi.ROM_BLOCK
OPTION_ROM_MAGIC = abi.OPTION_ROM_SIGNATURE.to_bytes(2, "little")
MAX_RELOC_MESSAGES = 12


def _name(n: int) -> str:
    return f"{n} ({abi.call(n).name})" if 0 <= n < abi.NUM_CALLS else f"{n}"


def _describe(a: Answer) -> str:
    if a.target is None:
        return a.type_name
    return f"{a.type_name} -> ROM+0x{a.target:x}"


def check_rom(data: bytes) -> list[str]:
    """Every way `data` is not a valid VMI 3.x ROM, in plain words; [] means valid."""
    data = bytes(data)
    if not data:
        return ["the file is empty"]
    try:
        info = read_rom(data, execute=False)
    except RomError as e:
        if data[:2] == OPTION_ROM_MAGIC:
            return [f"truncated: {e}"]
        return [f"not a VMI ROM: the file has only {len(data)} bytes (a VMI header alone is "
                f"{abi.ROM_HEADER.size}) and starts with {data[:8].hex(' ')}, not the option-ROM "
                "signature 55 aa"]
    signatures = _signature_rules(info)
    if info.vrom_signature != abi.VMI_SIGNATURE:
        # Without "cVmi" a guest skips the image silently: its other bytes are not VMI fields,
        # and listing what they would mean as such only buries the real answer.
        if info.rom_signature != abi.OPTION_ROM_SIGNATURE:
            got = info.vrom_signature.to_bytes(4, "little")
            return [f"not a VMI ROM, not even an option ROM: it starts with {data[:2].hex(' ')}, not "
                    f"55 aa, and +0x8 holds {got!r}, not b'cVmi' (nothing else was checked)"]
        return signatures + _size_rules(info) + [
            "this is not a VMI ROM (perhaps another option ROM): a guest skips it; its VMI fields "
            "were not checked"]
    info = read_rom(data)
    problems: list[str] = []
    problems += _size_rules(info)
    image = data[:info.image_size] if 0 < info.image_size <= len(data) else data
    problems += signatures
    problems += _header_rules(info)
    problems += _pci_rules(info)
    problems += _license_rules(info)
    problems += _pnp_rules(info, image)
    if not info.checksum_ok and info.image_size and len(data) >= info.image_size:
        problems.append(f"bad checksum: the 8-bit sum of the {info.image_size} image bytes is "
                        f"0x{sum(image) & 0xFF:02x}, it must be 0")
    if not info.complete:
        return problems     # the code of an incomplete image is not worth running
    entry = abi.ROM_HEADER["rom_entry"]
    bad_entry = RomSandbox(image).real_mode_entry(entry.offset, abi.ROM_HEADER["rom_length"].offset)
    if bad_entry:
        problems.append(f"the 16-bit BIOS init entry at +0x{entry.offset:x} {bad_entry}; "
                        f"it must only return (e.g. `retf`, {REAL_MODE_ENTRY[:1].hex()})")
    if info.init_problem and not info.init_hypercall:
        problems.append(f"vmi_init {info.init_problem}")
    elif info.init_result not in (None, 0):
        problems.append(f"vmi_init fails: it returns 0x{info.init_result:x} (the guest needs 0 and "
                        "would stay native)")
    problems += _table_rules(info, image)
    problems += _reloc_rules(info, image)
    return problems


def _size_rules(info: RomInfo) -> list[str]:
    out = []
    if info.size > MAX_SIZE:
        out.append(f"oversized: the file has {info.size} bytes; an option ROM holds at most {MAX_SIZE}")
    if info.rom_length == 0:
        out.append("rom_length is 0: the header describes an empty image")
    elif info.size < info.image_size:
        out.append(f"truncated: rom_length says the image is {info.image_size} bytes "
                   f"({info.rom_length} x 512) but the file has only {info.size}")
    elif info.size > info.image_size:
        out.append(f"oversized: the file has {info.size} bytes but rom_length says the image is "
                   f"{info.image_size} ({info.size - info.image_size} bytes too many)")
    return out


def _signature_rules(info: RomInfo) -> list[str]:
    out = []
    if info.rom_signature != abi.OPTION_ROM_SIGNATURE:
        got = info.rom_signature.to_bytes(2, "little").hex(" ")
        out.append(f"bad option-ROM signature: the file starts with {got}, not 55 aa")
    if info.vrom_signature != abi.VMI_SIGNATURE:
        got = info.vrom_signature.to_bytes(4, "little")
        out.append(f"bad VMI signature: +0x{abi.ROM_HEADER['vrom_signature'].offset:x} holds {got!r}, "
                   "not b'cVmi'")
    return out


def _header_rules(info: RomInfo) -> list[str]:
    out = []
    if info.api_major != abi.API_MAJOR:
        out.append(f"wrong major API version: the ROM says {info.api_major}.{info.api_minor}, "
                   f"guests accept only {abi.API_MAJOR}.x")
    if info.virtual_top % 4096:
        out.append(f"virtual_top 0x{info.virtual_top:x} is not page aligned")
    return out


def _pci_rules(info: RomInfo) -> list[str]:
    if info.pci_header_offs == 0:
        return ["missing PCI header: pci_header_offs is 0, and guests refuse such a ROM"]
    p = info.pci
    if p is None:
        return [f"PCI header offset 0x{info.pci_header_offs:x} lies outside the image"]
    out = []
    if p["signature"] != int.from_bytes(b"PCIR", "little"):
        out.append(f"PCI data structure at 0x{info.pci_header_offs:x} lacks its \"PCIR\" signature")
    if p["vendor_id"] != abi.PCI_VENDOR_VMWARE or p["device_id"] != abi.PCI_DEVICE_VMI:
        out.append(f"PCI id {p['vendor_id']:04x}:{p['device_id']:04x} is not VMI's "
                   f"{abi.PCI_VENDOR_VMWARE:04x}:{abi.PCI_DEVICE_VMI:04x}")
    if p["size"] != abi.PCI_HEADER.size:
        out.append(f"PCI data structure length is {p['size']}, not {abi.PCI_HEADER.size}")
    if p["chunks"] != info.rom_length:
        out.append(f"PCI image length {p['chunks']} x 512 disagrees with rom_length {info.rom_length}")
    if p["code_type"] != PCI_CODE_TYPE_X86:
        out.append(f"PCI code type {p['code_type']} is not 0 (x86)")
    if p["last_rom"] != PCI_LAST_IMAGE:
        out.append(f"PCI image indicator is {p['last_rom']:#x}; it must be 0x80 (last image, reserved "
                   "bits clear)")
    return out


def _license_rules(info: RomInfo) -> list[str]:
    if info.license_offs == 0:
        return [f"no license string (license_offs is 0): guests accept only "
                f"{' or '.join(repr(x) for x in abi.GPL_LICENSES)}"]
    if info.license is None:
        return [f"the license string at 0x{info.license_offs:x} is not a NUL-terminated ASCII string "
                "inside the image"]
    if info.license not in abi.GPL_LICENSES:
        return [f"non-GPL license {info.license!r}: guests accept only "
                f"{' or '.join(repr(x) for x in abi.GPL_LICENSES)}"]
    return []


def _pnp_rules(info: RomInfo, image: bytes) -> list[str]:
    off = info.pnp_header_offs
    if off == 0:
        return []
    p = info.pnp
    if p is None:
        return [f"PnP header offset 0x{off:x} lies outside the image"]
    if p["signature"] != int.from_bytes(b"$PnP", "little"):
        return [f"PnP header at 0x{off:x} lacks its \"$PnP\" signature"]
    out = []
    length = int(p["length"]) * 16
    if length < abi.PNP_HEADER.size or off + length > len(image):
        out.append(f"PnP header length {p['length']} x 16 is wrong or runs off the image")
    elif sum(image[off:off + length]) & 0xFF:
        total = sum(image[off:off + length]) & 0xFF
        out.append(f"bad PnP header checksum: its {length} bytes sum to 0x{total:02x}, not 0")
    if p["next"] != 0:
        out.append(f"PnP header links to another header at 0x{p['next']:x}; a VMI ROM has one")
    for what in ("manufacturer", "product"):
        soff = int(p[what + "_offs"])
        if soff and c_string(image, soff) is None:
            out.append(f"PnP {what} string at 0x{soff:x} is not a NUL-terminated ASCII string in the image")
    return out


def _table_rules(info: RomInfo, image: bytes) -> list[str]:
    t = info.table
    if t is None:
        return []
    where = f"the relocation table block at 0x{t.tag_offset:x}"
    if t.entries is None:
        return [f"{where} is malformed (count {t.count}, entry size {t.entry_size}, "
                f"code end 0x{t.code_end:x})"]
    out = []
    if t.count != info.jump_slots:
        out.append(f"jump_slots is {info.jump_slots} but {where} covers {t.count} calls")
    if not t.crc_ok:
        out.append(f"the CRC-32 in {where} does not match: the header, table or code were altered "
                   "after the ROM was built")
    for e in t.entries:
        if e.target and (e.target < t.tag_offset + RELOC_TAG_SIZE or e.target >= t.code_end):
            out.append(f"table entry for call {_name(e.call)} points at 0x{e.target:x}, outside the code "
                       f"(0x{t.tag_offset:x}-0x{t.code_end:x})")
    return out


def _reloc_rules(info: RomInfo, image: bytes) -> list[str]:
    out: list[str] = []
    size = len(image)
    table = info.table.entries if info.table is not None else None
    failures: dict[str, list[int]] = {}
    for n, a in info.answers.items():
        if a.problem is not None:
            failures.setdefault(a.problem, []).append(n)
            continue
        moved = info.moved_answers.get(n)
        if moved is not None and (moved.problem is not None
                                  or (moved.reloc, moved.target) != (a.reloc, a.target)):
            there = _describe(moved) if moved.problem is None else moved.problem
            out.append(f"get_reloc is not position independent: for call {_name(n)} it answers "
                       f"{_describe(a)} with the ROM at 0x{BASE:x} but {there} at 0x{ALT_BASE:x}")
        assert a.reloc is not None
        if a.reloc > max(RelocType):
            out.append(f"get_reloc({_name(n)}) answers relocation type {a.reloc}, which does not exist")
            continue
        kind = RelocType(a.reloc)
        known = n < abi.NUM_CALLS
        beyond = n >= info.jump_slots or (not known and info.api_minor <= abi.API_MINOR)
        if beyond and (kind != RelocType.NONE or a.target is not None):
            out.append(f"get_reloc({_name(n)}) answers {_describe(a)} for a call number beyond its table "
                       f"(jump_slots {info.jump_slots}); it must answer NONE with address 0")
            continue
        if known and kind != RelocType.NONE and abi.call(n).since_minor > info.api_minor:
            out.append(f"call {_name(n)} exists only since API {abi.API_MAJOR}.{abi.call(n).since_minor}, "
                       f"but the ROM announces {info.api_major}.{info.api_minor} and answers {kind.name}")
        if kind in (RelocType.NONE, RelocType.NOP):
            if a.target is not None:
                out.append(f"get_reloc({_name(n)}) answers {kind.name} with address {a.raw[0]:#x}; "
                           f"{kind.name} answers must have address 0")
            if known and kind == RelocType.NOP and abi.call(n).outputs:
                out.append(f"get_reloc answers NOP for call {_name(n)}, which returns values the guest needs")
            continue
        if a.target is None:
            out.append(f"get_reloc({_name(n)}) answers {kind.name} without an address")
            continue
        if not abi.ROM_HEADER.size <= a.target < size:
            out.append(f"get_reloc answers out of range: call {_name(n)} -> ROM+0x{a.target:x}, outside the "
                       f"image's code (0x{abi.ROM_HEADER.size:x}-0x{size:x})")
            continue
        if known and kind == RelocType.JUMP_REL and abi.call(n).returns:
            out.append(f"get_reloc answers JUMP_REL for call {_name(n)}, which returns (only IRET and "
                       "SYSEXIT may be jumped to)")
        if table is not None:
            want = STUB_MARKER + n.to_bytes(2, "little")
            if image[a.target - len(want):a.target] != want:
                out.append(f"get_reloc({_name(n)}) points at ROM+0x{a.target:x}, which is not the start of "
                           "that call's stub")
    for problem, calls in failures.items():
        shown = ", ".join(str(n) for n in calls[:8])
        if len(calls) > 8:
            shown += f", ... ({len(calls)} call numbers)"
        out.insert(0, f"get_reloc({shown}) {problem}")
    if info.probes_abandoned:
        out.append(f"get_reloc failed {MAX_FAILED_PROBES} times; the remaining call numbers were not tried")
    if table is not None:
        for e in table:
            a = info.answers.get(e.call)
            if a is None or a.problem is not None:
                continue
            if (a.reloc, a.target or 0) != (e.reloc, e.target if e.reloc in (1, 2) else 0):
                out.append(f"get_reloc({_name(e.call)}) answers {_describe(a)} but the ROM's own table says "
                           f"{RelocType(e.reloc).name if e.reloc <= 3 else e.reloc}"
                           + (f" -> ROM+0x{e.target:x}" if e.reloc in (1, 2) else ""))
    if len(out) > MAX_RELOC_MESSAGES:
        out = out[:MAX_RELOC_MESSAGES] + [f"... and {len(out) - MAX_RELOC_MESSAGES} more get_reloc problems"]
    return out
