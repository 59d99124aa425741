"""`vmirom guest ...` (build the reference kernel, print its path, boot it on QEMU) and
`vmirom inspect KERNEL` (list its VMI call sites)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from vmirom.cliutil import OutputPath, console, exit_epilog, json_option, refuse, write_json

from .build import BuildError, build_kernel, kernel_path


@click.group()
def guest() -> None:
    """The reference guest kernel (guest/): build it, find it, boot it on real QEMU.

    \b
      vmirom guest build                        make -C guest (kernel, user programs, initrd)
      vmirom guest qemu --cmdline vmi=debug     boot on qemu-system-i386, no ROM
      vmirom guest qemu --rom native.rom        SeaBIOS loads the ROM; the kernel binds to it

    Kernel command line: vmi=off, vmi=debug, exit_after=TICKS, init=PROG."""


@guest.command("build", epilog=exit_epilog("(here 1 means: the toolchain is missing or make failed, or no "
                                            "checkout: an installed vmirom boots its prebuilt guest)"))
@click.option("--force", is_flag=True, help="Rebuild from scratch.")
@click.option("-v", "--verbose", is_flag=True, help="Show the compiler's output.")
def guest_build(force: bool, verbose: bool) -> None:
    """Build guest/build/kernel.elf (and the initrd) and print the kernel's path.

    Installs nothing: if gcc, binutils, make or the 32-bit libgcc is missing it stops and names
    the Debian package to install (`make test` / scripts/setup.sh install them)."""
    try:
        click.echo(build_kernel(force=force, verbose=verbose))
    except BuildError as e:
        raise click.ClickException(str(e)) from e


@guest.command("path", epilog=exit_epilog())
def guest_path() -> None:
    """Print the path of the built kernel, building it first if needed."""
    try:
        click.echo(kernel_path())
    except BuildError as e:
        raise click.ClickException(str(e)) from e


@guest.command("qemu", epilog=exit_epilog("(here 1 means: the guest did not shut down with status 0)"))
@click.option("--kernel", type=click.Path(dir_okay=False), help="Kernel ELF (default: the built one).")
@click.option("--rom", "option_rom", type=click.Path(exists=True, dir_okay=False),
              help="Option ROM for SeaBIOS to load (-option-rom).")
@click.option("--initrd", type=click.Path(exists=True, dir_okay=False),
              help="Initrd (first module); default: the built initrd with the reference kernel.")
@click.option("--no-initrd", is_flag=True, help="Boot without an initrd.")
@click.option("--cmdline", default="", help="Kernel command line.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds before QEMU is killed  [default: 60; 86400 with -i or --gdb]")
@click.option("--events", is_flag=True, help="Print only the parsed VMIROM-JSON events.")
@click.option("--interactive", "-i", is_flag=True,
              help="Type on the guest console (Ctrl-C goes to the guest, Ctrl-A x quits QEMU).")
@click.option("--gdb", "gdb", metavar="[HOST:]PORT",
              help="QEMU's gdb stub on this port, stopped before the first instruction (-gdb tcp::PORT -S).")
def guest_qemu(kernel: str | None, option_rom: str | None, initrd: str | None, no_initrd: bool,
               cmdline: str, timeout: float | None, events: bool, interactive: bool, gdb: str | None) -> None:
    """Boot the kernel on real QEMU (qemu-system-i386 -kernel), streaming its console as it runs.

    Like `vmirom run`: the built initrd comes along with the reference kernel, -i types on the
    console, --gdb PORT waits for `gdb -ex 'target remote :PORT'`.  The exit status is 0 only if
    the guest shut down cleanly (e.g. after exit_after=TICKS); without exit_after or init the
    kernel idles until --timeout."""
    from .initrd import reference_initrd
    from .qemu import QemuError, run_kernel

    if initrd and no_initrd:
        raise click.UsageError("--initrd and --no-initrd exclude each other")
    if interactive and events:
        raise click.UsageError("--interactive shows the console; drop --events")
    extra: list[str] = []
    if gdb:
        host, _, port = gdb.rpartition(":")
        if not port.isdigit():
            raise click.BadParameter(f"want [HOST:]PORT, not {gdb!r}", param_hint="--gdb")
        extra = ["-gdb", f"tcp:{host}:{port}", "-S"]
        click.echo(f"[QEMU waits for gdb: target remote {host or 'localhost'}:{port}]", err=True)
    if timeout is None:
        timeout = 86400.0 if interactive or gdb else 60.0
    try:
        path = kernel or kernel_path()
        initrd = reference_initrd(str(path), initrd, no_initrd, kernel is not None)

        def show(chunk: bytes) -> None:
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()

        res = run_kernel(path, cmdline=cmdline, option_rom=option_rom, initrd=initrd, timeout=timeout,
                         extra_args=extra, stream=None if events else show, interactive=interactive)
    except (BuildError, QemuError) as e:
        raise click.ClickException(str(e)) from e
    if res.qemu_error:
        raise click.ClickException(f"QEMU could not boot {path}: {res.qemu_error}")
    if events:
        for ev in res.events:
            click.echo(json.dumps(ev))
    how = ("timed out" if res.timed_out else
           f"guest exit status {res.exit_status}" if res.exit_status is not None else
           f"qemu exit code {res.returncode}")
    click.echo(f"[{how}, {res.elapsed:.2f} s]", err=True)
    if res.exit_status != 0:
        sys.exit(1)


@guest.group("initrd")
def guest_initrd() -> None:
    """Build or list a guest initrd (cpio newc), as guest/user/Makefile does."""


@guest_initrd.command("build", epilog=exit_epilog("3 refused: a FILE cannot be read or packed"))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Archive to write (its directory is created).")
@click.argument("files", nargs=-1, required=True)
def initrd_build(output: str, files: tuple[str, ...]) -> None:
    """Write an archive of FILES (or NAME=FILE pairs: the member's name in the archive)."""
    from .initrd import InitrdError, build_initrd, parse_file_arg

    try:
        entries = build_initrd([parse_file_arg(f) for f in files], Path(output))
    except InitrdError as e:
        refuse(str(e))
    click.echo(f"initrd: {output} ({len(entries)} files, {sum(len(e.data) for e in entries)} bytes of data)")


@guest_initrd.command("list", epilog=exit_epilog("3 refused: not a readable cpio newc archive"))
@click.argument("archive", type=click.Path(dir_okay=False))
@json_option("Write the members as JSON to FILE ('-': stdout).")
def initrd_list(archive: str, json_out: str | None) -> None:
    """List an archive's members: mode, size, name."""
    from vmirom.hostfiles import MAX_ARCHIVE_BYTES, InputRefused, read_limited

    from .initrd import InitrdError, read_cpio

    try:
        members = read_cpio(read_limited(archive, MAX_ARCHIVE_BYTES, "archive"))
    except (InputRefused, InitrdError) as e:
        refuse(str(e))
    out = console(json_out)
    for m in members:
        out.print(f"{m.mode:07o} {len(m.data):9d} {m.name}", markup=False, highlight=False)
    if json_out:
        write_json(json_out, {"members": [{"name": m.name, "mode": m.mode, "size": len(m.data)}
                                          for m in members]})


@click.command("inspect", epilog=exit_epilog("(here 1 means: not a linked i386 ELF with .vmi_sites)"))
@click.argument("kernel", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=False, flag_value="-", default=None, type=OutputPath(),
              help="Machine-readable output to FILE ('-' or no FILE: stdout).")
def inspect(kernel: str, as_json: str | None) -> None:
    """List every VMI call site recorded in KERNEL's .vmi_sites section.

    For each site: address, call, length, clobbers and the native code (capstone); then a
    summary per call.  KERNEL must be a linked 32-bit i386 ELF, e.g. `vmirom guest path`."""
    from .inspect import InspectError, read_sites, summary

    try:
        sites = read_sites(kernel)
    except InspectError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        write_json(as_json, {
            "sites": [{"call": s.call, "name": s.name, "address": s.address, "length": s.length,
                       "clobbers": s.clobber_names, "flags": s.flags, "native": s.native.hex(),
                       "disassembly": s.disassemble()} for s in sites],
            "summary": [{"call": n, "name": name, "count": c, "lengths": lens}
                        for n, name, c, lens in summary(sites)],
        })
        return
    click.echo(f"{len(sites)} VMI call sites in {kernel}")
    click.echo(f"{'address':>10}  {'call':<22} {'len':>3}  {'clobbers':<22} native code")
    for s in sites:
        clob = ",".join(s.clobber_names) or "-"
        click.echo(f"{s.address:#010x}  {s.call:>2} {s.name:<19} {s.length:>3}  {clob:<22} "
                   f"{'; '.join(s.disassemble())}")
    click.echo("\nper call:")
    for number, name, count, lengths in summary(sites):
        click.echo(f"  {number:>2} {name:<20} {count:>4} site(s), length {'/'.join(map(str, lengths))}")
