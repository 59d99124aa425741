"""The `vmirom` command line.  Each subsystem owns its command group; this file only
assembles them."""

from __future__ import annotations

import click

from vmirom import __version__
from vmirom.cliutil import console, exit_epilog, json_option, write_json


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog=exit_epilog("3 input refused; `vmirom run` adds the guest's fates (see its --help)"))
@click.version_option(__version__, prog_name="vmirom")
def main() -> None:
    """vmirom: VMI 3.0 ROMs, a virtual machine monitor and a guest kernel for 32-bit x86.

    Start with `vmirom demo` (the same kernel on every hypervisor personality) and `vmirom
    hypervisors` (the personalities); see README.md and docs/ for the rest.  Every command
    follows one convention: lists as repeated options or comma lists, `--json FILE` (or `-` for
    stdout) where it reports, output paths checked before any work."""


@main.group()
def abi() -> None:
    """The VMI ABI as data: list calls, regenerate the guest's C header."""


@abi.command("calls", epilog=exit_epilog())
@json_option("Write the calls as JSON to FILE ('-': stdout).")
def abi_calls(json_out: str | None) -> None:
    """List every VMI call: number, name, input and output registers, clobbers, and the API
    version (3.0, or the minor version of an extension) that introduced it."""
    from rich.table import Table

    from vmirom.abi import CALLS

    def regs(args) -> list[dict]:
        return [{"where": a.where, "meaning": a.meaning} for a in args]

    rows = [{"number": c.number, "name": c.name, "inputs": regs(c.inputs), "outputs": regs(c.outputs),
             "clobbers": list(c.clobbers), "since": f"3.{c.since_minor}"} for c in CALLS]
    table = Table(title="VMI calls")
    for col in ("#", "name", "inputs", "outputs", "clobbers", "since"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(str(r["number"]), r["name"],
                      ", ".join(f"{a['where']}={a['meaning']}" for a in r["inputs"]),
                      ", ".join(f"{a['where']}={a['meaning']}" for a in r["outputs"]),
                      ",".join(r["clobbers"]) or "-", r["since"])
    console(json_out).print(table)
    if json_out:
        write_json(json_out, {"calls": rows})


@abi.command("header", epilog=exit_epilog("(here 1 means: --check found the header stale)"))
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
        ("vmirom.hypervisors.cli", "hypervisors"),
        ("vmirom.debug.cli", "trace"),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (module + ".").startswith(e.name + "."):  # not written yet
                continue
            raise
        main.add_command(getattr(mod, name))


_register()
