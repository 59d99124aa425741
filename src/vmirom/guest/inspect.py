"""Reading the VMI call sites a kernel ELF records in its `.vmi_sites` section.

Each record (vmirom.abi.SITE_RECORD) names the call, the site's length, the clobber mask, a
flags byte and the site's linear address; the bytes at that address are the native code the
kernel runs when no ROM patches the site.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from vmirom import abi

T = TypeVar("T")
SITE_FLAG_NORETURN = 0x01   # kernel-private meaning of vmi_site.flags (guest/include/vmi_site.h)


class InspectError(Exception):
    """The file is not a kernel we can inspect; the message says why."""


@dataclass(frozen=True)
class Site:
    """One recorded call site."""

    call: int
    name: str
    address: int
    length: int
    clobbers: int
    flags: int
    native: bytes

    def disassemble(self) -> list[str]:
        """The native bytes as AT&T-syntax instructions (capstone)."""
        return disassemble(self.native, self.address)

    @property
    def clobber_names(self) -> list[str]:
        return [reg for reg, bit in abi.CLOBBER_BITS.items() if self.clobbers & bit]


def disassemble(code: bytes, address: int) -> list[str]:
    from capstone import CS_ARCH_X86, CS_MODE_32, CS_OPT_SYNTAX_ATT, Cs

    md = Cs(CS_ARCH_X86, CS_MODE_32)
    md.syntax = CS_OPT_SYNTAX_ATT
    out = [f"{i.mnemonic} {i.op_str}".strip() for i in md.disasm(code, address)]
    used = sum(i.size for i in md.disasm(code, address))
    if used < len(code):
        out.append(f"(.byte {', '.join(f'{b:#04x}' for b in code[used:])})")
    return out


def call_name(number: int) -> str:
    try:
        return abi.call(number).name
    except (KeyError, ValueError, IndexError):
        return f"call{number}"


def _read_vaddr(elf: ELFFile, address: int, length: int, path: Path) -> bytes:
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_LOAD":
            continue
        start, filesz = seg["p_vaddr"], seg["p_filesz"]
        if start <= address and address + length <= start + filesz:
            data = seg.data()
            return data[address - start: address - start + length]
    raise InspectError(f"{path}: {length} bytes at {address:#x} lie outside the kernel's loaded image "
                       "(a damaged section or symbol?)")


def _open_kernel(f: BinaryIO, path: Path) -> ELFFile:
    """The file as an executable 32-bit i386 ELF, or InspectError saying what it is instead."""
    f.seek(0, 2)
    if f.tell() == 0:
        raise InspectError(f"{path}: the file is empty, not an ELF kernel")
    f.seek(0)
    try:
        elf = ELFFile(f)
    except ELFError as e:
        raise InspectError(f"{path}: not an ELF file ({e})") from e
    if elf.elfclass != 32 or elf["e_machine"] != "EM_386":
        raise InspectError(f"{path}: not a 32-bit i386 ELF (class {elf.elfclass}, "
                           f"machine {elf['e_machine']})")
    if elf["e_type"] != "ET_EXEC":
        raise InspectError(f"{path}: an ELF of type {elf['e_type']}, not a linked kernel (ET_EXEC): "
                           "site addresses are only final after linking")
    return elf


def _with_kernel(path: str | Path, read: Callable[[ELFFile, Path], T]) -> T:
    """Open `path` and run `read` on it; every way a damaged file can fail becomes InspectError.

    pyelftools reports truncated or inconsistent files with several exception types (ELFError,
    ELFParseError, struct/construct errors, ValueError ...).  A kernel file is untrusted input, so
    any of them is turned into one plain sentence instead of a traceback."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            try:
                return read(_open_kernel(f, path), path)
            except InspectError:
                raise
            except Exception as e:  # noqa: BLE001 - see the docstring
                raise InspectError(f"{path}: malformed or truncated ELF file "
                                   f"({type(e).__name__}: {e})") from e
    except IsADirectoryError:
        raise InspectError(f"{path} is a directory, not a kernel ELF file") from None
    except OSError as e:
        raise InspectError(f"cannot read {path}: {e.strerror or e}") from e


def _sites(elf: ELFFile, path: Path) -> list[Site]:
    sec = elf.get_section_by_name(abi.SITE_SECTION)
    if sec is None:
        raise InspectError(f"{path}: no {abi.SITE_SECTION} section (not a VMI kernel)")
    data = sec.data()
    size = abi.SITE_RECORD.size
    if len(data) % size:
        raise InspectError(f"{path}: {abi.SITE_SECTION} is {len(data)} bytes, not a multiple of {size}")
    sites = []
    for off in range(0, len(data), size):
        rec = {fld.name: fld.read(data, off) for fld in abi.SITE_RECORD.fields}
        native = _read_vaddr(elf, rec["address"], rec["length"], path)
        sites.append(Site(call=rec["call"], name=call_name(rec["call"]), address=rec["address"],
                          length=rec["length"], clobbers=rec["clobbers"], flags=rec["flags"],
                          native=native))
    return sites


def read_sites(path: str | Path) -> list[Site]:
    """Every site recorded in the kernel at `path`, in section order.  Raises InspectError."""
    return _with_kernel(path, _sites)


def summary(sites: list[Site]) -> list[tuple[int, str, int, list[int]]]:
    """Per call: (number, name, site count, sorted distinct lengths)."""
    counts = Counter(s.call for s in sites)
    out = []
    for number in sorted(counts):
        lengths = sorted({s.length for s in sites if s.call == number})
        out.append((number, call_name(number), counts[number], lengths))
    return out


def _text_crc(elf: ELFFile, path: Path) -> int:
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None:
        raise InspectError(f"{path}: no symbol table")
    addr = {}
    for name in ("_kernel_start", "_etext"):
        syms = symtab.get_symbol_by_name(name)
        if not syms:
            raise InspectError(f"{path}: no symbol {name}")
        addr[name] = syms[0]["st_value"]
    start, end = addr["_kernel_start"], addr["_etext"]
    if end < start:
        raise InspectError(f"{path}: _etext lies before _kernel_start")
    return zlib.crc32(_read_vaddr(elf, start, end - start, path))


def kernel_text_crc(path: str | Path) -> int:
    """CRC-32 of the kernel text [_kernel_start, _etext) as stored in the file: the kernel reports
    the same figure for its text in memory before and after binding ("text_crc" in the vmi event)."""
    return _with_kernel(path, _text_crc)
