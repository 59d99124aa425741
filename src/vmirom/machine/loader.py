"""Multiboot v1 loader for ELF i386 kernels.

Loads PT_LOAD segments at their physical addresses (p_paddr), builds the Multiboot information
structure (mem_lower/upper, a memory map, the command line, modules such as an initrd, the boot
loader name) in low memory, and returns where to enter.  Anything it cannot load exactly is refused
with `LoadError` and a plain-words reason: not an ELF, not i386/32-bit/executable, no Multiboot
header, truncated, segments outside RAM or over the VMM's low-memory area.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from vmirom.machine.faults import LoadError
from vmirom.machine.memory import GuestMemory

MB_MAGIC = 0x1BADB002
MB_BOOT_MAGIC = 0x2BADB002
MB_SEARCH = 8192
LOW_END = 0x9FC00  # conventional memory the guest may use (below the EBDA)
HOLE = (0x9FC00, 0x100000)  # EBDA + VGA + option ROMs + BIOS: reserved in the memory map
INFO_ADDR = 0x10000  # multiboot info + strings + mmap + module list live in [0x10000, 0x20000)
BOOT_AREA = (0x500, 0x20000)  # VMM boot structures (boot GDT at 0x800); kernels must not load here
LOADER_NAME = b"vmirom\0"


@dataclass
class BootInfo:
    """What the loader produced."""

    entry: int
    info_addr: int
    kernel_end: int
    segments: list[tuple[int, int, int]] = field(default_factory=list)  # (paddr, filesz, memsz)
    modules: list[tuple[int, int]] = field(default_factory=list)  # (start, end)
    mb_flags: int = 0


def find_multiboot_header(data: bytes) -> tuple[int, int]:
    """Return (offset, flags) of a valid Multiboot v1 header in the first 8 KiB."""
    limit = min(len(data), MB_SEARCH) - 12
    for off in range(0, limit + 1, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == MB_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return off, flags
    raise LoadError("no Multiboot v1 header (magic 0x1BADB002 with a valid checksum) in the first 8 KiB")


def load_multiboot(
    mem: GuestMemory, data: bytes, cmdline: str = "", modules: list[tuple[bytes, str]] | None = None
) -> BootInfo:
    """Load `data` (an ELF file's bytes) into `mem`.  Raises LoadError on anything malformed."""
    if len(data) < 4 or data[:4] != b"\x7fELF":
        raise LoadError("not an ELF file (no \\x7fELF magic)")
    if len(data) < 52:
        raise LoadError("truncated ELF file: shorter than an ELF header")
    _, mb_flags = find_multiboot_header(data)
    if mb_flags & 0xFFF8:
        raise LoadError(f"Multiboot header asks for unsupported features (flags {mb_flags:#x})")
    try:
        elf = ELFFile(io.BytesIO(data))
        if elf.elfclass != 32 or elf["e_machine"] != "EM_386" or elf["e_type"] != "ET_EXEC":
            raise LoadError("not a 32-bit i386 executable ELF")
        segs = []
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                continue
            off, fsz, msz = seg["p_offset"], seg["p_filesz"], seg["p_memsz"]
            if off + fsz > len(data):
                raise LoadError(
                    f"truncated ELF file: segment at file offset {off:#x} needs {fsz:#x} bytes, "
                    f"file has {len(data):#x}"
                )
            if fsz > msz:
                raise LoadError("corrupt ELF: segment file size larger than memory size")
            segs.append((seg["p_paddr"], seg["p_vaddr"], off, fsz, msz))
        entry = elf["e_entry"]
    except ELFError as e:
        raise LoadError(f"corrupt or truncated ELF file: {e}") from None
    except (struct.error, ValueError, KeyError, IndexError, OSError) as e:
        raise LoadError(f"corrupt or truncated ELF file: {type(e).__name__}: {e}") from None
    if not segs:
        raise LoadError("ELF file has no loadable segments")
    info = BootInfo(entry=0, info_addr=INFO_ADDR, kernel_end=0, mb_flags=mb_flags)
    for paddr, _vaddr, off, fsz, msz in segs:
        end = paddr + msz
        if end > mem.size:
            raise LoadError(f"segment [{paddr:#x}, {end:#x}) does not fit in {mem.size >> 20} MiB of RAM")
        if paddr < BOOT_AREA[1] and end > BOOT_AREA[0] or paddr < HOLE[1] and end > HOLE[0]:
            raise LoadError(
                f"segment [{paddr:#x}, {end:#x}) overlaps the VMM's low-memory area or the "
                "option-ROM hole; load kernels at 1 MiB or above"
            )
        mem.load(paddr, data[off : off + fsz])  # the file bytes, then .bss without a host copy of it
        mem.zero(paddr + fsz, msz - fsz)
        info.segments.append((paddr, fsz, msz))
        info.kernel_end = max(info.kernel_end, end)
    # The entry is physical; a higher-half kernel may give its virtual entry: translate it.
    if any(p <= entry < p + m for p, _v, _o, _f, m in segs):
        info.entry = entry
    else:
        for p, v, _o, _f, m in segs:
            if v <= entry < v + m:
                info.entry = entry - v + p
                break
        else:
            raise LoadError(f"entry point {entry:#x} is not inside any loaded segment")
    # modules (initrd): page-aligned after the kernel
    addr = (info.kernel_end + 0xFFF) & ~0xFFF
    for blob, _name in modules or []:
        if addr + len(blob) > mem.size:
            raise LoadError(f"module of {len(blob)} bytes does not fit in RAM after the kernel")
        mem.load(addr, blob)
        info.modules.append((addr, addr + len(blob)))
        addr = (addr + len(blob) + 0xFFF) & ~0xFFF
    _write_info(mem, info, cmdline, [n for _b, n in modules or []])
    return info


def _write_info(mem: GuestMemory, info: BootInfo, cmdline: str, names: list[str]) -> None:
    base = INFO_ADDR
    strings = base + 0x200
    cmd = cmdline.encode("utf-8", "replace")[:0x800] + b"\0"
    mem.load(strings, cmd)
    loader_name = strings + len(cmd)
    mem.load(loader_name, LOADER_NAME)
    mmap_addr = (loader_name + len(LOADER_NAME) + 15) & ~15
    regions = [(0, LOW_END, 1), (HOLE[0], HOLE[1] - HOLE[0], 2), (0x100000, mem.size - 0x100000, 1)]
    mm = b"".join(struct.pack("<IQQI", 20, b, n, t) for b, n, t in regions)
    mem.load(mmap_addr, mm)
    mods_addr = (mmap_addr + len(mm) + 15) & ~15
    mod_strings = mods_addr + 16 * max(1, len(info.modules))
    mods = b""
    for (start, end), name in zip(info.modules, names, strict=True):
        s = name.encode()[:200] + b"\0"
        mem.load(mod_strings, s)
        mods += struct.pack("<IIII", start, end, mod_strings, 0)
        mod_strings += len(s)
    mem.load(mods_addr, mods)
    flags = 1 | 4 | 64 | 512 | (8 if info.modules else 0)
    hdr = bytearray(0x58)
    struct.pack_into("<IIII", hdr, 0, flags, LOW_END // 1024, (mem.size - 0x100000) // 1024, 0)
    struct.pack_into("<III", hdr, 16, strings, len(info.modules), mods_addr)
    struct.pack_into("<II", hdr, 44, len(mm), mmap_addr)
    struct.pack_into("<I", hdr, 64, loader_name)
    mem.load(base, bytes(hdr))
