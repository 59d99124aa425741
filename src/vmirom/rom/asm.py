"""Assembling ROM source with GNU as and ld (binutils), the same toolchain as the guest.

Everything is assembled into one `.text` section linked at address 0, so every label's
value is its offset from the ROM start.  Why not a Python assembler: the stubs are
written by hypervisor authors in ordinary GNU as syntax, and binutils is already a
build dependency of the guest kernel.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from .spec import RomError


@dataclass(frozen=True)
class Assembled:
    """The bytes of the linked `.text` section and every label's offset in it."""

    code: bytes
    symbols: dict[str, int]


_LINKER_SYMBOLS = frozenset({"__bss_start", "_edata", "_end"})
_LABEL_TYPES = ("STT_NOTYPE", "STT_FUNC", "STT_OBJECT")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RomError(f"`{name}` (GNU binutils) is not installed; it is needed to assemble ROM code")
    return path


def _numbered(source: str) -> str:
    return "\n".join(f"{i:4d}  {line}" for i, line in enumerate(source.splitlines(), 1))


def assemble(source: str) -> Assembled:
    """Assemble and link `source` (AT&T, 32-bit) at address 0.  Raises RomError with the
    assembler's own messages (and the numbered source they refer to) on failure."""
    as_, ld = _tool("as"), _tool("ld")
    with tempfile.TemporaryDirectory(prefix="vmirom-rom-") as tmp:
        d = Path(tmp)
        (d / "rom.s").write_text(source)
        r = subprocess.run([as_, "--32", "-o", str(d / "rom.o"), str(d / "rom.s")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            msgs = r.stderr.replace(str(d / "rom.s"), "rom.s").strip()
            raise RomError(f"the assembler rejected the ROM source:\n{msgs}\n"
                           f"--- rom.s ---\n{_numbered(source)}")
        r = subprocess.run([ld, "-m", "elf_i386", "-Ttext", "0", "-e", "0", "--no-warn-rwx-segments",
                            "-o", str(d / "rom.elf"), str(d / "rom.o")], capture_output=True, text=True)
        if r.returncode != 0:
            msgs = r.stderr.replace(str(d), ".").strip()
            raise RomError(f"the linker rejected the ROM code (undefined label?):\n{msgs}")
        with open(d / "rom.elf", "rb") as f:
            elf = ELFFile(f)
            text = elf.get_section_by_name(".text")
            code = text.data() if text is not None else b""
            for sec in elf.iter_sections():
                if sec.name in (".data", ".bss") and sec.data_size:
                    raise RomError(f"ROM code must not use {sec.name}: the ROM is one read-only image "
                                   "(keep variables in the writable area at rom_data)")
            symbols: dict[str, int] = {}
            symtab = elf.get_section_by_name(".symtab")
            if isinstance(symtab, SymbolTableSection):
                for sym in symtab.iter_symbols():
                    kind = sym["st_info"]["type"]
                    if sym.name and sym.name not in _LINKER_SYMBOLS and kind in _LABEL_TYPES:
                        symbols[sym.name] = sym["st_value"]
    return Assembled(code, symbols)
