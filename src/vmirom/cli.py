"""The `vmirom` command line.  Each subsystem owns its command group; this file only
assembles them."""

from __future__ import annotations

import click

from vmirom import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vmirom")
def main() -> None:
    """vmirom: VMI 3.0 ROMs, a virtual machine monitor and a guest kernel for 32-bit x86.

    Start with `vmirom demo` (the same kernel on every hypervisor personality); see README.md
    and docs/ for the rest."""


@main.group()
def abi() -> None:
    """The VMI ABI as data: list calls, regenerate the guest's C header."""


@abi.command("calls")
def abi_calls() -> None:
    """List every VMI call: number, name, input and output registers, clobbers, and the API
    version (3.0, or the minor version of an extension) that introduced it."""
    from rich.console import Console
    from rich.table import Table

    from vmirom.abi import CALLS

    table = Table(title="VMI calls")
    for col in ("#", "name", "inputs", "outputs", "clobbers", "since"):
        table.add_column(col)
    for c in CALLS:
        table.add_row(str(c.number), c.name,
                      ", ".join(f"{a.where}={a.meaning}" for a in c.inputs),
                      ", ".join(f"{a.where}={a.meaning}" for a in c.outputs),
                      ",".join(c.clobbers) or "-", f"3.{c.since_minor}")
    Console().print(table)


@abi.command("header")
@click.option("--check", is_flag=True, help="Only report whether the committed header is stale.")
def abi_header(check: bool) -> None:
    """Write guest/include/vmi_abi.h, the C header the guest kernel includes, from the ABI
    data in vmirom.abi (the one source of truth; tests fail when the header is stale)."""
    from vmirom.abi import cheader

    if check:
        current = cheader.HEADER_PATH.read_text() if cheader.HEADER_PATH.exists() else ""
        if current != cheader.render():
            raise click.ClickException(f"{cheader.HEADER_PATH} is stale: run `vmirom abi header`")
        click.echo("header is up to date")
        return
    click.echo(f"wrote {cheader.write()}")


# Subsystem command groups.  Each lives beside the code it drives.
def _register() -> None:
    import importlib

    for module, name in (
        ("vmirom.rom.cli", "rom"),
        ("vmirom.guest.cli", "guest"),
        ("vmirom.guest.cli", "inspect"),
        ("vmirom.runner", "run"),
        ("vmirom.runner", "demo"),
        ("vmirom.bench.cli", "bench"),
        ("vmirom.engines.unicorn_build", "engine"),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (module + ".").startswith(e.name + "."):  # not written yet
                continue
            raise
        main.add_command(getattr(mod, name))


_register()
