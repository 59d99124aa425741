"""`vmirom rom build/check/show/variants` the way a user runs them: every built ROM (each variant and
each hypervisor personality's) checks out, every malformed one is refused with its reason, and bad
files (empty, text, garbage, a directory, a missing path) get one clear message, never a traceback.
Also: every command of the CLI answers `--help`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vmirom.cli import main
from vmirom.hypervisors import registry
from vmirom.rom.variants import VARIANTS

MALFORMED_REASON = {
    "bad-major": "wrong major API version: the ROM says 4.1",
    "no-pci": "missing PCI header",
    "non-gpl": "non-GPL license 'Proprietary'",
    "no-license": "no license string",
    "init-fails": "vmi_init fails",
}


def run(*args: str) -> click.testing.Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_builds_and_checks_as_documented(tmp_path: Path, variant: str) -> None:
    out = tmp_path / f"{variant}.rom"
    res = run("rom", "build", "--variant", variant, "-o", str(out))
    assert res.exit_code == 0, res.output
    assert out.stat().st_size % 512 == 0 and f"wrote {out}" in res.output
    res = run("rom", "check", str(out))
    if VARIANTS[variant].valid:
        assert res.exit_code == 0 and "valid VMI 3." in res.output, res.output
    else:
        assert res.exit_code == 1 and "NOT a valid VMI ROM (1 problem(s))" in res.output, res.output
        assert f"  - {MALFORMED_REASON[variant]}" in res.output
    res = run("rom", "show", str(out))
    assert res.exit_code == (0 if VARIANTS[variant].valid else 1) and "API version" in res.output, res.output
    assert ("valid" if VARIANTS[variant].valid else "1 problem(s):") in res.output


def test_default_build_is_the_native_rom(tmp_path: Path) -> None:
    out = tmp_path / "default.rom"
    res = run("rom", "build", "-o", str(out))
    assert res.exit_code == 0, res.output
    # every call of API 3.1 answered: NONE except the seven informational ones, which are NOP
    assert "69 NONE, 0 CALL_REL, 0 JUMP_REL, 7 NOP" in res.output
    res = run("rom", "check", str(out))
    assert res.exit_code == 0 and "valid VMI 3.1 ROM" in res.output and "vmirom native" in res.output


@pytest.mark.parametrize("name", registry.names())
def test_every_personality_rom_builds_and_checks(tmp_path: Path, name: str) -> None:
    out = tmp_path / f"{name}.rom"
    res = run("rom", "build", "--hypervisor", name, "-o", str(out))
    if registry.create(name).rom_spec() is None:
        assert res.exit_code == 1 and f"hypervisor {name!r} publishes no ROM" in res.output, res.output
        assert not out.exists()
        return
    assert res.exit_code == 0, res.output
    res = run("rom", "check", str(out))
    assert res.exit_code == 0 and "valid VMI 3." in res.output, res.output
    res = run("rom", "show", str(out))
    assert res.exit_code == 0 and "CALL_REL" in res.output and "valid" in res.output


def test_build_refuses_unknown_names_and_both_options(tmp_path: Path) -> None:
    out = str(tmp_path / "x.rom")
    res = run("rom", "build", "--hypervisor", "no-such-hv", "-o", out)
    assert res.exit_code == 1 and "unknown hypervisor 'no-such-hv'; known: bare" in res.output
    res = run("rom", "build", "--variant", "no-such-variant", "-o", out)
    assert res.exit_code == 1 and "unknown ROM variant 'no-such-variant'; known: native" in res.output
    res = run("rom", "build", "--variant", "native", "--hypervisor", "vmi", "-o", out)
    assert res.exit_code == 2 and "not both" in res.output
    res = run("rom", "build", "-o", str(tmp_path / "no" / "such" / "dir.rom"))
    assert res.exit_code == 2 and "cannot write" in res.output and "does not exist" in res.output


@pytest.mark.parametrize(("content", "message"), [
    (b"", "the file is empty"),
    (b"just some text\n", "not a VMI ROM: the file has only 15 bytes"),
    (b"#!/bin/sh\n" + b"echo hello\n" * 40, "not a VMI ROM, not even an option ROM: it starts with 23 21"),
    (bytes(range(256)) * 8, "not a VMI ROM, not even an option ROM: it starts with 00 01"),
    (b"\x55\xaa\x02", "truncated: 3 bytes is too short for a VMI ROM"),
])
def test_check_and_show_on_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(content)
    res = run("rom", "check", str(bad))
    assert res.exit_code == 1 and message in res.output, res.output
    res = run("rom", "show", str(bad))
    assert res.exit_code in (1, 3) and "Traceback" not in res.output and "API version" not in res.output


def test_check_on_a_directory_or_missing_path(tmp_path: Path) -> None:
    for cmd in ("check", "show"):
        res = run("rom", cmd, str(tmp_path))
        assert res.exit_code == 2 and "is a directory" in res.output
        res = run("rom", cmd, str(tmp_path / "missing.rom"))
        assert res.exit_code == 1 and "cannot read" in res.output and "No such file" in res.output


def test_truncated_rom_file(tmp_path: Path) -> None:
    full = tmp_path / "full.rom"
    run("rom", "build", "-o", str(full))
    cut = tmp_path / "cut.rom"
    cut.write_bytes(full.read_bytes()[:700])
    res = run("rom", "check", str(cut))
    assert res.exit_code == 1 and "truncated: rom_length says the image is 1024 bytes" in res.output


def test_the_installed_command(tmp_path: Path) -> None:
    """The console script itself (not CliRunner): the exit status is what a shell sees."""
    exe = Path(sys.executable).with_name("vmirom")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from vmirom.cli import main; main()"]
    out = tmp_path / "n.rom"
    assert subprocess.run([*cmd, "rom", "build", "-o", str(out)], capture_output=True).returncode == 0
    assert subprocess.run([*cmd, "rom", "check", str(out)], capture_output=True).returncode == 0
    empty = tmp_path / "empty.rom"
    empty.write_bytes(b"")
    r = subprocess.run([*cmd, "rom", "check", str(empty)], capture_output=True, text=True)
    assert r.returncode == 1 and "the file is empty" in r.stdout and "Traceback" not in r.stderr
    # a device is not a ROM file: refused before reading (issue 11: inputs are regular files only)
    r = subprocess.run([*cmd, "rom", "check", "/dev/zero"], capture_output=True, text=True)
    assert r.returncode != 0 and "not a regular file" in r.stderr and "Traceback" not in r.stderr


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in sorted(group.commands.items()):
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*prefix, name))
    return out


@pytest.mark.parametrize("path", _commands(main), ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    res = CliRunner().invoke(main, [*path, "--help"])
    assert res.exit_code == 0 and res.output.startswith("Usage: ")
    # a real description, not just the usage line
    assert len(res.output.split("\n\n")[1].strip()) > 20, res.output


def test_readme_commands_table_names_every_command() -> None:
    """The README's Commands table stays complete: every leaf command appears as `vmirom ...`."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("## Commands"):readme.index("## Docs")]
    leaves = [p for p in _commands(main) if not isinstance(_lookup(p), click.Group)]
    missing = [" ".join(p) for p in leaves if f"`vmirom {' '.join(p)}" not in table]
    assert not missing, f"README Commands table lacks: {missing}"


def _lookup(path: tuple[str, ...]) -> click.Command:
    cmd: click.Command = main
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    return cmd
