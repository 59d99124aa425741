"""The conventions every `vmirom` command follows, in one place (so no command grows its own):

* exit status: 0 success, 1 the thing checked/run failed, 2 a usage error (unknown option, bad or
  conflicting values, an unknown hypervisor name, an output path that cannot be written), 3 the
  input was refused (a file that is not what it claims to be, a ROM description that cannot be
  built); `vmirom run` adds the guest's fates (4-8).  Every command's --help ends with its codes.
* lists: a repeated option and a comma list mean the same (`-H vmi -H bare` = `-H vmi,bare`);
* `--json FILE` on every command that reports; `--json -` writes the JSON to stdout, and then the
  human-readable output goes to stderr so the two never mix;
* output paths are checked when the options are parsed, before any work (a bench run of an hour
  must not end in "cannot write");
* tables take the terminal's width (or $COLUMNS), never a forced one.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

import click

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3

#: the codes shared by every command, for --help epilogs
COMMON_CODES = "0 success, 1 failed (see the message), 2 usage error (bad option or value)"


def exit_epilog(*extra: str) -> str:
    """The 'Exit status' paragraph of a command's --help (`\\b` keeps click from rewrapping it)."""
    lines = [f"  {code}" for code in (COMMON_CODES, *extra)]
    return "\b\nExit status:\n" + "\n".join(lines)


def split_list(values: Iterable[str] | str | None) -> list[str]:
    """Repeated options and comma lists alike: ("vmi,bare", "hwassist") -> [vmi, bare, hwassist].
    Order is kept, duplicates dropped, blanks ignored."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:
        for item in v.split(","):
            item = item.strip()
            if item and item not in out:
                out.append(item)
    return out


class OutputPath(click.ParamType):
    """A file the command will write: `-` (stdout, when `allow_stdout`) or a path whose directory
    exists and is writable and that is not a directory.  Checked at parse time, i.e. before work;
    a bad one is a usage error (exit 2)."""

    name = "FILE"

    def __init__(self, allow_stdout: bool = True) -> None:
        self.allow_stdout = allow_stdout

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        value = str(value)
        if value == "-":
            if self.allow_stdout:
                return value
            self.fail("cannot write this output to stdout ('-'): give a file", param, ctx)
        p = Path(value)
        if p.is_dir():
            self.fail(f"{value} is a directory", param, ctx)
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            self.fail(f"cannot write {value}: directory {parent} does not exist", param, ctx)
        if p.exists() and not os.access(p, os.W_OK) or not p.exists() and not os.access(parent, os.W_OK):
            self.fail(f"cannot write {value}: permission denied", param, ctx)
        return value


def json_option(help_text: str = "Write the result as JSON to FILE ('-': stdout).") -> Any:
    """The `--json FILE` option (FILE may be '-')."""
    return click.option("--json", "json_out", type=OutputPath(), metavar="FILE", help=help_text)


def write_json(dest: str, doc: Any) -> None:
    """Write `doc` to `dest` ('-' = stdout)."""
    text = json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"
    if dest == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        Path(dest).write_text(text)
    except OSError as e:
        raise click.ClickException(f"cannot write {dest}: {e.strerror or e}") from None


def refuse(reason: str) -> NoReturn:
    """End the command with exit 3 (refused input), the convention's one wording for it."""
    click.echo(f"Error: refused: {reason}", err=True)
    sys.exit(3)


def console(json_out: str | None = None) -> Any:
    """A rich Console for the human-readable output: the terminal's width (or $COLUMNS; 80 when
    neither is known), on stderr when the JSON goes to stdout.  Plain lines are never wrapped
    (soft wrap: a terminal folds them, a pipe keeps them whole); tables fit the width."""
    from rich.console import Console

    return Console(stderr=json_out == "-", soft_wrap=True)


def hypervisor_names(values: Iterable[str] | str | None, param: str = "--hypervisor",
                     extra: Iterable[str] = ()) -> list[str]:
    """Validate personality names (after `split_list`): an unknown one is a usage error (exit 2)
    naming the known ones.  `extra` names are accepted too (e.g. "qemu" in `vmirom demo`)."""
    from vmirom.engines.options import TargetError, parse_target
    from vmirom.hypervisors import UnknownHypervisor, get

    names = split_list(values)
    for n in names:
        if n in extra:
            continue
        try:
            get(parse_target(n)[0])  # engine modifiers (vmi+stock) are checked too
        except (UnknownHypervisor, TargetError) as e:
            raise click.BadParameter(str(e), param_hint=param) from None
    return names
