"""Rendering a ROM for people: header, PCI/PnP data, get_reloc answers, stub code."""

from __future__ import annotations

from capstone import CS_ARCH_X86, CS_MODE_32, Cs
from rich.console import Console
from rich.table import Table
from rich.text import Text

from vmirom import abi

from .check import check_rom
from .reader import RomInfo, read_rom
from .sandbox import BASE

_STYLES = {"NONE": "dim", "NOP": "yellow", "CALL_REL": "green", "JUMP_REL": "cyan"}
_ENDS = {"ret", "retf", "iret", "iretd", "sysexit", "jmp", "ud2"}


def disassemble(image: bytes, start: int, end: int, base: int = BASE, max_insns: int = 48) -> list[str]:
    """Capstone listing of image[start:end] until the first unconditional exit past
    every branch target seen (so a stub with local labels is shown whole)."""
    md = Cs(CS_ARCH_X86, CS_MODE_32)
    lines, furthest = [], start
    for insn in md.disasm(image[start:end], base + start):
        off = insn.address - base
        if insn.mnemonic == "int3" and lines and off >= furthest:
            break           # 0xCC alignment padding after a stub that does not return (JUMP_REL)
        lines.append(f"{off:#06x}  {insn.bytes.hex():<16} {insn.mnemonic} {insn.op_str}".rstrip())
        if insn.mnemonic.startswith("j") and insn.op_str.startswith("0x"):
            furthest = max(furthest, int(insn.op_str, 16) - base)
        if insn.mnemonic in _ENDS and off >= furthest or len(lines) >= max_insns:
            break
    return lines


def _stub_bounds(info: RomInfo, size: int) -> dict[int, int]:
    targets = sorted({a.target for a in info.answers.values() if a.target is not None and a.target < size})
    end = info.table.code_end if info.table is not None and info.table.entries is not None else size
    return {t: (targets[i + 1] if i + 1 < len(targets) else max(end, t)) for i, t in enumerate(targets)}


def show(data: bytes, name: str, disasm: bool = True, console: Console | None = None) -> dict:
    """Print the ROM for people and return the same facts as a JSON-able dict (`rom show --json`).
    Every text from the image is printed with markup off: `[eax + 4]` is an operand, not a style."""
    con = console or Console()
    doc: dict = {"file": name, "stubs": []}
    info = read_rom(data)
    problems = check_rom(data)
    image = data[:info.image_size] if info.complete else data
    head = Table(title=f"{name}: VMI ROM header", show_header=False)
    head.add_column("field")
    head.add_column("value")
    rows = [
        ("size", f"{info.size} bytes (rom_length {info.rom_length} x 512 = {info.image_size})"),
        ("signatures", f"{info.rom_signature:#06x} / {info.vrom_signature.to_bytes(4, 'little')!r}"),
        ("API version", f"{info.api_major}.{info.api_minor}"),
        ("jump_slots", str(info.jump_slots)),
        ("virtual_top", f"{info.virtual_top:#010x}" + (" (no reservation)" if info.virtual_top == 0 else "")),
        ("license", f"{info.license!r} at {info.license_offs:#x}" if info.license_offs
         else "none (offset 0)"),
        ("PnP", f"{info.manufacturer!r} {info.product!r} at {info.pnp_header_offs:#x}"
         if info.pnp is not None else f"none (offset {info.pnp_header_offs:#x})"),
        ("rom_entry (16-bit)", info.rom_entry.hex(" ")),
        ("checksum", "ok" if info.checksum_ok else "BAD"),
        ("vmi_init", f"returns {info.init_result:#x}" if info.init_result is not None
         else f"not run ({info.init_problem or 'image incomplete'})"),
    ]
    if info.pci is not None:
        p = info.pci
        rows.insert(5, ("PCI", f"{p['vendor_id']:04x}:{p['device_id']:04x} class "
                               f"{p['class_base']:02x}{p['class_subclass']:02x}{p['class_interface']:02x}, "
                               f"ROM version {p['rom_version_maj']}.{p['rom_version_min']}, "
                               f"{p['chunks']} x 512, code type {p['code_type']}, "
                               f"indicator {p['last_rom']:#x} at {info.pci_header_offs:#x}"))
    else:
        rows.insert(5, ("PCI", f"none (offset {info.pci_header_offs:#x})"))
    for k, v in rows:
        head.add_row(k, v)
    con.print(head)
    doc["header"] = dict(rows)
    doc["answers"] = []
    if info.answers:
        calls = Table(title="get_reloc answers (executed at 0xC0000)")
        for col in ("#", "call", "reloc", "target", "since"):
            calls.add_column(col)
        for n, a in info.answers.items():
            if n >= abi.NUM_CALLS and a.reloc == 0 and a.target is None:
                continue
            c = abi.call(n) if n < abi.NUM_CALLS else None
            style = _STYLES.get(a.type_name, "red")
            target = a.problem or (f"ROM+{a.target:#x}" if a.target is not None else "-")
            calls.add_row(str(n), c.name if c else "(beyond the ABI)", Text(a.type_name, style=style),
                          Text(target), f"3.{c.since_minor}" if c else "")
            doc["answers"].append({"call": n, "name": c.name if c else None, "reloc": a.type_name,
                                   "target": a.target, "problem": a.problem})
        con.print(calls)
        if disasm:
            bounds = _stub_bounds(info, len(image))
            for n, a in info.answers.items():
                if a.target is not None and a.target in bounds:
                    title = abi.call(n).name if n < abi.NUM_CALLS else str(n)
                    con.print(Text(title, style="bold") + f" (call {n}, {a.type_name}) at ROM+{a.target:#x}:")
                    lines = disassemble(image, a.target, bounds[a.target])
                    for line in lines:
                        con.print("    " + line, highlight=False, markup=False)
                    doc["stubs"].append({"call": n, "name": title, "offset": a.target, "code": lines})
    doc["problems"] = problems
    if problems:
        con.print(f"[red]{len(problems)} problem(s):[/]")
        for p in problems:
            con.print(f"  - {p}", highlight=False, markup=False)
    else:
        con.print("[green]valid[/]")
    return doc
