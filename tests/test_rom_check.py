"""check_rom accepts every ROM the builder makes and names each corruption in plain words."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_rom_unicorn import SPECS, get_reloc_answers, many_spec
from vmirom import abi
from vmirom.rom import RomError, build_rom, check_rom, read_rom
from vmirom.rom.build import RELOC_TAG_SIZE, integrity_crc
from vmirom.rom.variants import VARIANTS

H = abi.ROM_HEADER


def fix_checksum(img: bytearray) -> bytearray:
    img[-1] = 0
    img[-1] = (-sum(img)) & 0xFF
    return img


def fix_crc(img: bytearray, rom) -> bytearray:
    tag = rom.symbols["reloc_table_tag"]
    crc = integrity_crc(img, tag + RELOC_TAG_SIZE, rom.symbols["rom_code_end"])
    img[tag + 12:tag + 16] = crc.to_bytes(4, "little")
    return fix_checksum(img)


@pytest.fixture(scope="module")
def native():
    return build_rom(VARIANTS["native"].make())


@pytest.mark.parametrize("name", sorted(SPECS))
def test_check_accepts_exactly_the_valid_builds(name):
    problems = check_rom(build_rom(SPECS[name]()).data)
    valid = VARIANTS[name].valid if name in VARIANTS else True
    assert (problems == []) == valid, problems


@pytest.mark.parametrize("name,message", [
    ("bad-major", "wrong major API version: the ROM says 4.1"),
    ("no-pci", "missing PCI header"),
    ("non-gpl", "non-GPL license 'Proprietary'"),
    ("no-license", "no license string"),
    ("init-fails", "vmi_init fails: it returns 0xffffffff"),
])
def test_malformed_variants_are_named(name, message):
    problems = check_rom(build_rom(VARIANTS[name].make()).data)
    assert len(problems) == 1 and problems[0].startswith(message), problems


def _corrupt(native, offset: int, value: bytes, crc: bool = True) -> list[str]:
    img = bytearray(native.data)
    img[offset:offset + len(value)] = value
    return check_rom(fix_crc(img, native) if crc else fix_checksum(img))


def test_bad_option_rom_signature(native):
    problems = _corrupt(native, H["rom_signature"].offset, b"\x55\xab")
    assert any(p.startswith("bad option-ROM signature") for p in problems), problems


def test_bad_vmi_signature(native):
    problems = _corrupt(native, H["vrom_signature"].offset, b"cVMI")
    assert problems == ["bad VMI signature: +0x8 holds b'cVMI', not b'cVmi'",
                        "this is not a VMI ROM (perhaps another option ROM): a guest skips it; its VMI "
                        "fields were not checked"]


def test_neither_signature_is_one_sentence(native):
    img = bytearray(native.data)
    img[0:2] = b"MZ"
    img[8:12] = b"\0\0\0\0"
    assert check_rom(fix_checksum(img)) == [
        "not a VMI ROM, not even an option ROM: it starts with 4d 5a, not 55 aa, and +0x8 holds "
        "b'\\x00\\x00\\x00\\x00', not b'cVmi' (nothing else was checked)"]
    assert check_rom(b"hello\n") == ["not a VMI ROM: the file has only 6 bytes (a VMI header alone is 144) "
                                     "and starts with 68 65 6c 6c 6f 0a, not the option-ROM signature 55 aa"]


def test_wrong_major(native):
    assert _corrupt(native, H["api_version_maj"].offset, b"\x02") == \
        ["wrong major API version: the ROM says 2.1, guests accept only 3.x"]


def test_newer_minor_is_fine(native):
    assert _corrupt(native, H["api_version_min"].offset, b"\x07") == []


def test_missing_pci_header(native):
    problems = _corrupt(native, H["pci_header_offs"].offset, b"\0\0")
    assert problems == ["missing PCI header: pci_header_offs is 0, and guests refuse such a ROM"]


def test_non_gpl_license(native):
    off = native.symbols["rom_license"]
    assert _corrupt(native, off, b"BSD") == ["non-GPL license 'BSD': guests accept only 'GPL' or 'GPL v2'"]


def test_bad_checksum(native):
    img = bytearray(native.data)
    img[-1] ^= 0x10
    assert check_rom(img) == ["bad checksum: the 8-bit sum of the 1024 image bytes is 0x10, it must be 0"]


def test_truncated_and_oversized(native):
    assert check_rom(native.data[:1000])[0].startswith("truncated: rom_length says the image is 1024 bytes")
    assert check_rom(native.data[:100])[0].startswith("truncated: 100 bytes is too short")
    assert check_rom(native.data + bytes(512)) == \
        ["oversized: the file has 1536 bytes but rom_length says the image is 1024 (512 bytes too many)"]
    assert check_rom(b"") == ["the file is empty"]
    big = check_rom(native.data + bytes(255 * 512))
    assert big[0] == "oversized: the file has 131584 bytes; an option ROM holds at most 130560", big
    assert check_rom(bytes(256 * 512))[0].startswith("not a VMI ROM, not even an option ROM")


def test_get_reloc_answer_out_of_range():
    rom = build_rom(many_spec())
    n = abi.call("SetCR0").number
    assert rom.stub_offset(n) is not None
    img = bytearray(rom.data)
    entry = rom.symbols["reloc_table"] + 8 * n
    struct.pack_into("<I", img, entry, len(img) + 0x100)
    problems = check_rom(fix_crc(img, rom))
    assert f"get_reloc answers out of range: call {n} (SetCR0) -> ROM+0x{len(img) + 0x100:x}, outside the " \
           f"image's code (0x90-0x{len(img):x})" in problems, problems
    # the same edit without fixing the CRC is also caught by the integrity record
    img2 = bytearray(rom.data)
    struct.pack_into("<I", img2, entry, len(img2) + 0x100)
    assert any("CRC-32" in p for p in check_rom(fix_checksum(img2)))


def test_get_reloc_pointing_at_the_wrong_stub():
    rom = build_rom(many_spec())
    a, b = abi.call("SetCR0").number, abi.call("CPUID").number
    img = bytearray(rom.data)
    struct.pack_into("<I", img, rom.symbols["reloc_table"] + 8 * a, rom.stub_offset(b))
    problems = check_rom(fix_crc(img, rom))
    assert any(p.startswith(f"get_reloc({a} (SetCR0)) points at") for p in problems), problems


def test_get_reloc_that_is_not_position_independent():
    """A get_reloc returning an absolute address is only right at one mapping."""
    spec = many_spec()
    spec.common_asm += "\nabs_get_reloc:\n movl $0xC0400, %eax\n movl $1, %edx\n ret"
    rom = build_rom(spec)
    img = bytearray(rom.data)
    jp = H["get_reloc"].offset
    img[jp:jp + 5] = b"\xe9" + struct.pack("<i", rom.symbols["abs_get_reloc"] - (jp + 5))
    problems = check_rom(fix_crc(img, rom))
    assert any(p.startswith("get_reloc is not position independent") for p in problems), problems


def test_nop_for_a_call_with_outputs_and_bad_type():
    rom = build_rom(many_spec())
    n = abi.call("GetCR3").number
    img = bytearray(rom.data)
    struct.pack_into("<IB", img, rom.symbols["reloc_table"] + 8 * n, 0, 3)
    assert any("NOP for call 21 (GetCR3)" in p for p in check_rom(fix_crc(img, rom)))
    struct.pack_into("<IB", img, rom.symbols["reloc_table"] + 8 * n, 0, 9)
    assert any("relocation type 9, which does not exist" in p for p in check_rom(fix_crc(img, rom)))


def test_get_reloc_that_hangs_or_faults(native):
    jp = H["get_reloc"].offset
    hang = _corrupt(native, jp, b"\xeb\xfe")
    assert any(p.startswith("get_reloc(0, 1, 2, 3, 4, 5, 6, 7) does not return within") for p in hang), hang
    assert hang[-1] == "get_reloc failed 8 times; the remaining call numbers were not tried"
    fault = _corrupt(native, jp, b"\x0f\x0b")              # ud2
    assert any(p.startswith("get_reloc(0, 1, 2, 3, 4, 5, 6, 7) executes an invalid instruction")
               for p in fault), fault


def test_read_rom_refuses_tiny_input():
    with pytest.raises(RomError):
        read_rom(b"\x55\xaa")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=4096))
def test_garbage_never_crashes(blob):
    problems = check_rom(blob)
    assert problems and all(isinstance(p, str) and p for p in problems)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=H.size, max_size=2048), st.integers(1, 4))
def test_garbage_with_a_plausible_header_never_crashes(blob, blocks):
    img = bytearray(blob.ljust(blocks * 512, b"\0")[:blocks * 512])
    img[0:2] = b"\x55\xaa"
    H["rom_length"].write(img, blocks)
    img[8:12] = b"cVmi"
    problems = check_rom(fix_checksum(img))
    assert all(isinstance(p, str) for p in problems)


# --- single-byte corruptions with the checksum repaired -------------------------------------------

def unchecked_regions(rom) -> list[tuple[int, int, str]]:
    """Bytes no rule reads and no code executes: where a change cannot matter to a guest.

    - PCI fields no guest or BIOS rule reads: VPD pointer, structure revision, class code,
      ROM version (only printed), reserved;
    - the PnP manufacturer/product strings, NUL included (only printed; a NUL made printable joins
      the next string, which is NUL-terminated too);
    - alignment gaps between the structures, and the zero padding up to the checksum byte.
    Everything else is protected: the header and code by the CRC-32 and execution, the PnP
    header by its own checksum, the PCI fields and the license by explicit rules.
    """
    sym, img = rom.symbols, rom.data
    regions = []
    pci = sym["pci_header"]
    for f in abi.PCI_HEADER.fields:
        if f.name in ("vpd_data", "revision", "class_interface", "class_subclass", "class_base",
                      "rom_version_min", "rom_version_maj", "reserved"):
            regions.append((pci + f.offset, pci + f.offset + f.size, "PCI " + f.name))
    for s in ("rom_manufacturer", "rom_product"):
        # the text and its NUL: a NUL turned printable only joins the next string, still printed only
        regions.append((sym[s], img.index(b"\0", sym[s]) + 1, s + " text"))
    claimed = [(0, H.size), (pci, pci + abi.PCI_HEADER.size),
               (sym["pnp_header"], sym["pnp_header"] + abi.PNP_HEADER.size),
               (sym["rom_manufacturer"], img.index(b"\0", sym["rom_product"]) + 1),
               (sym["rom_license"], img.index(b"\0", sym["rom_license"]) + 1),
               (sym["reloc_table_tag"], sym["rom_code_end"]), (len(img) - 1, len(img))]
    pos = 0
    for start, end in sorted(claimed):
        if start > pos:
            regions.append((pos, start, "gap"))
        pos = max(pos, end)
    return regions


ROMS = {name: build_rom(SPECS[name]()) for name in ("native", "sti-cli-call", "many")}
ANSWERS = {name: get_reloc_answers(rom.data) for name, rom in ROMS.items()}


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(ROMS)), st.data())
def test_every_flip_is_reported_or_harmless(name, data):
    """Change one byte (any XOR value) of a valid ROM and repair the 8-bit checksum.  Then
    either check_rom reports it, or the byte lies in `unchecked_regions` -- or in the 4-byte
    table tag, whose loss only costs the checker its cross-checks -- and get_reloc, run on
    Unicorn at both mappings, still answers exactly what it answered before."""
    rom = ROMS[name]
    offset = data.draw(st.integers(0, len(rom.data) - 2), label="offset")
    xor = data.draw(st.integers(1, 255), label="xor")
    img = bytearray(rom.data)
    img[offset] ^= xor
    fix_checksum(img)
    if check_rom(img):
        return
    tag = rom.symbols["reloc_table_tag"]
    where = [why for start, end, why in unchecked_regions(rom) if start <= offset < end]
    assert where or tag <= offset < tag + 4, f"unreported change at 0x{offset:x} (^{xor:#x}) in {name}"
    assert get_reloc_answers(bytes(img)) == ANSWERS[name]


def test_flip_targets_cover_the_code(native):
    """The CRC makes a change in the table, the code or the header visible even when the
    change would itself be a well-formed answer (NONE -> NOP, a stub address moved)."""
    n = abi.call("WRMSR").number
    img = bytearray(native.data)
    img[native.symbols["reloc_table"] + 8 * n + 4] = 3        # NONE -> NOP: a valid answer
    assert any("CRC-32" in p for p in check_rom(fix_checksum(img)))


def test_crc_is_zlib_crc32(native):
    tag = native.symbols["reloc_table_tag"]
    stored = struct.unpack_from("<I", native.data, tag + 12)[0]
    assert stored == zlib.crc32(native.data[:H.size] + native.data[tag + RELOC_TAG_SIZE:
                                                                   native.symbols["rom_code_end"]])
