"""`vmirom rom ...`: build, show and check VMI ROM images."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import click

from vmirom.abi import RelocType
from vmirom.cliutil import OutputPath, console, exit_epilog, json_option, refuse, write_json

from .spec import RomError, RomSpec


@click.group("rom")
def rom() -> None:
    """Build, show and check VMI 3.x option-ROM images.

    \b
      vmirom rom build -o native.rom              all-native ROM, loadable by QEMU/SeaBIOS
      vmirom rom build --hypervisor vmi -o v.rom  the ROM a hypervisor personality publishes
      vmirom rom check v.rom                      validate (exit status 0 only if valid)
      vmirom rom show v.rom                       header, get_reloc answers, stub code

    Layout and decisions: docs/abi.md."""


def _hypervisor_spec(name: str) -> RomSpec:
    try:
        from vmirom.hypervisors import registry
    except ModuleNotFoundError as e:
        raise click.ClickException(f"no hypervisor registry is installed ({e}); "
                                   "use --variant for a built-in ROM") from None
    try:
        personality = registry.get(name)
    except KeyError:
        known = ", ".join(registry.names())
        raise click.ClickException(f"unknown hypervisor {name!r}; known: {known}") from None
    obj = personality() if isinstance(personality, type) else personality
    spec = obj.rom_spec()
    if spec is None:
        raise click.ClickException(f"hypervisor {name!r} publishes no ROM (its guests run without VMI)")
    return spec


def _read(path: str) -> bytes:
    from vmirom.hostfiles import InputRefused, read_limited

    try:  # bounded: a ROM file is at most 128 KiB; 16 MiB leaves `check` room to say what is wrong
        return read_limited(path, 16 << 20, "ROM image")
    except InputRefused as e:
        raise click.ClickException(str(e)) from None


@rom.command("build", epilog=exit_epilog("3 refused: the ROM description cannot be built (the reason "
                                                "is printed)"))
@click.option("--hypervisor", "hypervisor", metavar="NAME",
              help="Build the ROM this hypervisor personality publishes (e.g. vmi; an unknown "
                   "name lists the registered ones).")
@click.option("--variant", metavar="NAME",
              help="A built-in ROM (see `vmirom rom variants`); default: native.")
@click.option("-o", "--output", required=True, type=OutputPath(allow_stdout=False),
              help="Where to write the image (checked before anything is built).")
def build_cmd(hypervisor: str | None, variant: str | None, output: str) -> None:
    """Build a ROM image and write it to FILE (-o).

    Without --hypervisor/--variant: the all-native ROM (every answer NONE, or NOP for the calls
    that only inform a hypervisor) that real QEMU/SeaBIOS can load with `-option-rom`.  The
    image is checked after building; a deliberately malformed variant is written anyway and its
    problems are listed on stderr."""
    from . import build_rom, check_rom
    from .variants import variant as get_variant

    if hypervisor and variant:
        raise click.UsageError("give --hypervisor or --variant, not both")
    if hypervisor:
        spec = _hypervisor_spec(hypervisor)
    else:
        try:
            spec = get_variant(variant or "native")
        except KeyError as e:
            raise click.ClickException(str(e.args[0])) from None
    try:
        image = build_rom(spec)
    except RomError as e:
        refuse(f"the ROM description cannot be built: {e}")
    try:
        Path(output).write_bytes(image.data)
    except OSError as e:
        raise click.ClickException(f"cannot write {output}: {e.strerror or e}") from None
    counts = Counter(image.reloc(n)[0].name for n in range(spec.covered_calls()))
    problems = check_rom(image.data)
    click.echo(f"wrote {output}: {len(image.data)} bytes, API {spec.api_major}.{spec.api_minor}, "
               f"{spec.manufacturer} {spec.product}; "
               + ", ".join(f"{counts[t.name]} {t.name}" for t in RelocType)
               + f"; assembled in {image.build_seconds * 1000:.0f} ms")
    if problems:
        click.echo(f"note: this ROM is deliberately invalid ({len(problems)} problem(s)):", err=True)
        for p in problems:
            click.echo(f"  - {p}", err=True)


@rom.command("variants", epilog=exit_epilog())
def variants_cmd() -> None:
    """List the built-in ROM variants (for `vmirom rom build --variant`)."""
    from .variants import VARIANTS

    for v in VARIANTS.values():
        click.echo(f"{v.name:14s} {'valid  ' if v.valid else 'INVALID'} {v.about}")


def _not_a_rom(data: bytes) -> str | None:
    """Why `data` is not a VMI ROM at all (no header, no "cVmi"), or None: then there is nothing
    to show, and showing its bytes as VMI fields would only invent facts ("API 111.111")."""
    from vmirom import abi

    from . import check_rom

    if len(data) >= abi.ROM_HEADER.size and data[8:12] == abi.VMI_SIGNATURE.to_bytes(4, "little"):
        return None
    problems = check_rom(data)
    return problems[-1] if problems else "no VMI signature"


def _rom_facts(info) -> dict:
    """The JSON form of a read ROM (what `rom check/show --json` report)."""
    from vmirom import abi

    answers = []
    for n, a in sorted(info.answers.items()):
        if n >= abi.NUM_CALLS and a.reloc == 0 and a.target is None:
            continue
        answers.append({"call": n, "name": abi.call(n).name if n < abi.NUM_CALLS else None,
                        "reloc": a.type_name, "target": a.target, "problem": a.problem})
    return {
        "size": info.size, "rom_length": info.rom_length, "api": f"{info.api_major}.{info.api_minor}",
        "jump_slots": info.jump_slots, "virtual_top": info.virtual_top, "license": info.license,
        "manufacturer": info.manufacturer, "product": info.product,
        "rom_version": ".".join(map(str, info.rom_version)) if info.rom_version else None,
        "checksum_ok": info.checksum_ok, "vmi_init": info.init_result, "answers": answers,
    }


@rom.command("check", epilog=exit_epilog("(here 1 means: not a valid VMI ROM)"))
@click.argument("file", type=click.Path(dir_okay=False))
@json_option("Write the verdict, the problems and the ROM's facts as JSON to FILE ('-': stdout).")
def check_cmd(file: str, json_out: str | None) -> None:
    """Validate FILE as a VMI 3.x ROM and list every violation in plain words.

    Checks what a guest checks (55 AA, "cVmi", major version 3, a PCI header, a GPL license),
    what a BIOS needs (size and rom_length, the 8-bit checksum, a 16-bit init entry that just
    returns, PCI/PnP structures), and runs vmi_init and get_reloc on an x86 CPU (Unicorn) with
    the ROM at two addresses: every answer must be in range, position independent and match the
    ROM's own table.  Exit status 0 only for a valid ROM, 1 otherwise."""
    from . import check_rom, read_rom

    data = _read(file)
    problems = check_rom(data)
    out = console(json_out)
    doc: dict = {"file": file, "valid": not problems, "problems": problems}
    if problems:
        out.print(f"{file}: NOT a valid VMI ROM ({len(problems)} problem(s)):", highlight=False, markup=False)
        for p in problems:
            out.print(f"  - {p}", highlight=False, markup=False)
    else:
        info = read_rom(data)
        doc["rom"] = _rom_facts(info)
        counts = Counter(a.type_name for n, a in info.answers.items() if n < info.jump_slots)
        doc["counts"] = {t.name: counts.get(t.name, 0) for t in RelocType}
        out.print(f"{file}: valid VMI {info.api_major}.{info.api_minor} ROM, {info.size} bytes, "
                  f"{info.manufacturer or '?'} {info.product or '?'}; "
                  + ", ".join(f"{counts.get(t.name, 0)} {t.name}" for t in RelocType),
                  highlight=False, markup=False)
    if json_out:
        write_json(json_out, doc)
    sys.exit(1 if problems else 0)


@rom.command("show", epilog=exit_epilog("(here 1 means: shown, but not a valid VMI ROM)",
                                        "3 refused: the file is not a VMI ROM at all (nothing to show)"))
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--no-disasm", is_flag=True, help="Leave out the stub disassembly.")
@json_option("Write the header, the get_reloc answers, the stub code and the problems as JSON to FILE "
             "('-': stdout).")
def show_cmd(file: str, no_disasm: bool, json_out: str | None) -> None:
    """Show FILE: header fields, PCI/PnP data, what get_reloc answers for every call (executed,
    not read from a table) and a disassembly of every stub, then the problems `rom check` finds."""
    from .show import show

    data = _read(file)
    why = _not_a_rom(data)
    if why is not None:
        click.echo(f"Error: {file}: refused: {why}", err=True)
        if json_out:
            write_json(json_out, {"file": file, "refused": why})
        sys.exit(3)
    try:
        doc = show(data, file, disasm=not no_disasm, console=console(json_out))
    except RomError as e:
        click.echo(f"Error: {file}: refused: {e}", err=True)
        sys.exit(3)
    if json_out:
        write_json(json_out, doc)
    sys.exit(1 if doc["problems"] else 0)
