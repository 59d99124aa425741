"""`vmirom hypervisors`: every registered personality (built-in and plugins) with what a user picks
one by: the ring its kernel runs in, the ROM it publishes, how that ROM enters the VMM, and its
memory model.  Nothing is built or booted: the ROM facts come from the personality's RomSpec."""

from __future__ import annotations

import click

from vmirom.cliutil import console, exit_epilog, json_option, write_json


def describe(name: str) -> dict:
    """One personality's facts, as `vmirom hypervisors --json` gives them."""
    from vmirom.hypervisors import registry

    cls = registry.get(name)
    facts: dict = {
        "name": name,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "origin": registry.origin(name),
        "description": cls.description,
        "kernel_ring": cls.kernel_ring,
        "memory_model": cls.memory_model,
        "rom": None,
        "hypercalls": None,
    }
    if cls.hypercall_port is not None:
        facts["hypercalls"] = f"out {cls.hypercall_port:#x}"
    elif cls.hypercall_vector is not None:
        facts["hypercalls"] = f"int {cls.hypercall_vector:#x}"
    try:
        spec = cls().rom_spec()
    except Exception as e:  # noqa: BLE001 - a plugin's broken rom_spec is reported, not fatal
        facts["rom_error"] = f"{type(e).__name__}: {e}"
        return facts
    if spec is not None:
        facts["rom"] = {
            "product": f"{spec.manufacturer} {spec.product}",
            "api": f"{spec.api_major}.{spec.api_minor}",
            "rom_version": f"{spec.rom_version[0]}.{spec.rom_version[1]}",
        }
    return facts


@click.command("hypervisors", epilog=exit_epilog())
@json_option("Write the list as JSON to FILE ('-': stdout).")
def hypervisors(json_out: str | None) -> None:
    """List the hypervisor personalities (built-in and plugins): kernel ring, ROM, how the ROM
    enters the VMM, memory model (`direct`: the guest's page tables are walked as they are;
    `shadow`: the VMM keeps shadow tables)."""
    from rich.table import Table

    from vmirom.hypervisors import registry

    rows = [describe(n) for n in registry.names()]
    con = console(json_out)
    t = Table(title="hypervisor personalities")
    for col in ("name", "ring", "ROM", "hypercalls", "memory", "description"):
        t.add_column(col, overflow="fold", no_wrap=col in ("name", "ring", "memory", "hypercalls"))
    for r in rows:
        rom = r["rom"]
        rom_text = f"{rom['product']} (API {rom['api']}, ROM {rom['rom_version']})" if rom else (
            f"broken: {r['rom_error']}" if r.get("rom_error") else "none")
        origin = "" if r["origin"] == "builtin" else f" [{r['origin']}]"
        t.add_row(r["name"], str(r["kernel_ring"]), rom_text, r["hypercalls"] or "-", r["memory_model"],
                  r["description"] + origin)
    con.print(t)
    if json_out:
        write_json(json_out, {"hypervisors": rows})
