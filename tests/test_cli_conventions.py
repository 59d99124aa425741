"""One CLI convention across every command (vmirom.cliutil), as a user meets it:

exit codes documented in every --help (usage errors 2, refused input 3); lists as repeated options
and comma lists alike; `--json -` is stdout (human output then on stderr); output paths checked
before any work; --json on every command that reports; tables that fit the terminal; `vmirom
hypervisors`; the former `python -m` tools as subcommands; bench keeping what finished on Ctrl-C
and failing when nothing was measured; `rom show` refusing non-ROMs and keeping bracketed operands.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vmirom.cli import main
from vmirom.cliutil import split_list
from vmirom.guest.build import kernel_path

ROOT = Path(__file__).resolve().parents[1]


def vmirom(*args: str, env: dict | None = None, timeout: float = 600, columns: int | None = None,
           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ if env is None else env)
    if columns is not None:
        e["COLUMNS"] = str(columns)
    return subprocess.run([sys.executable, "-m", "vmirom", *args], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=cwd)


def leaves(group: click.Group = main,
           prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = []
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            out += leaves(cmd, prefix + (name,))
            if cmd.invoke_without_command:
                out.append((prefix + (name,), cmd))
        else:
            out.append((prefix + (name,), cmd))
    return out


@pytest.fixture(scope="module")
def kernel() -> str:
    return str(kernel_path())


# -- exit codes ----------------------------------------------------------------------------------------
def test_every_command_documents_its_exit_codes() -> None:
    runner = CliRunner()
    missing = []
    for path, _cmd in leaves():
        res = runner.invoke(main, [*path, "--help"], terminal_width=100)
        assert res.exit_code == 0, (path, res.output)
        if "Exit status" not in res.output or "2 usage error" not in res.output:
            missing.append(" ".join(path))
    assert not missing, f"--help without the exit codes: {missing}"


@pytest.mark.parametrize("args", [
    ("run", "--no-such-option"), ("demo", "-H", "no-such-hv"), ("run", "-H", "no-such-hv"),
    ("bench", "--hypervisors", "no-such-hv"), ("bench", "--tests", "no-such-test"),
    ("rom", "build", "--hypervisor", "vmi", "--variant", "native", "-o", "x.rom"),
    ("run", "--timeout", "0"), ("run", "-H", "vmi,bare"), ("hypervisors", "--json"),
    ("bench", "report"),
])
def test_usage_errors_exit_2(args: tuple[str, ...], tmp_path: Path) -> None:
    p = vmirom(*args, cwd=tmp_path, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and ("Usage:" in p.stderr or "Error" in p.stderr)


def test_unknown_hypervisor_is_the_same_usage_error_everywhere(tmp_path: Path) -> None:
    for args in (("run", "-H", "nope"), ("demo", "-H", "nope"), ("demo", "-H", "bare,nope")):
        p = vmirom(*args, cwd=tmp_path, timeout=120)
        assert p.returncode == 2 and "unknown hypervisor 'nope'; known: bare" in p.stderr, p.stderr


# -- lists ---------------------------------------------------------------------------------------------
def test_split_list_takes_repeats_and_commas_alike() -> None:
    assert split_list(("vmi,bare", "hwassist")) == ["vmi", "bare", "hwassist"]
    assert split_list(("vmi", "bare", "hwassist")) == split_list("vmi,bare,hwassist")
    assert split_list((" vmi , ", ",bare", "vmi")) == ["vmi", "bare"]
    assert split_list(None) == []


def test_demo_takes_a_comma_list_and_repeated_options_alike(kernel: str, tmp_path: Path) -> None:
    runs = {}
    for how, args in (("comma", ("-H", "bare,hwassist")), ("repeat", ("-H", "bare", "-H", "hwassist"))):
        p = vmirom("demo", kernel, *args, "--no-qemu", "--cmdline", "exit_after=5",
                   "--json", f"{how}.json", cwd=tmp_path)
        assert p.returncode == 0, p.stdout + p.stderr
        runs[how] = [r["hypervisor"] for r in json.loads((tmp_path / f"{how}.json").read_text())["results"]]
    assert runs["comma"] == runs["repeat"] == ["bare", "hwassist"]


def test_bench_takes_a_comma_list_and_repeated_options_alike(kernel: str, tmp_path: Path) -> None:
    targets = {}
    for how, args in (("comma", ("--hypervisors", "bare,hwassist")),
                      ("repeat", ("-H", "bare", "-H", "hwassist"))):
        p = vmirom("bench", *args, "--tests", "boot", "--repeat", "1", "--kernel", kernel,
                   "--json", f"{how}.json", cwd=tmp_path)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        targets[how] = json.loads((tmp_path / f"{how}.json").read_text())["config"]["targets"]
    assert targets["comma"] == targets["repeat"] == ["bare", "hwassist"]


# -- --json and --json - -------------------------------------------------------------------------------
def test_json_dash_is_stdout_and_the_rest_goes_to_stderr(kernel: str, tmp_path: Path) -> None:
    rom = tmp_path / "v.rom"
    assert vmirom("rom", "build", "--hypervisor", "vmi", "-o", str(rom)).returncode == 0
    initrd = kernel_path().parent / "initrd.cpio"
    for args, key in (
        (("hypervisors",), "hypervisors"),
        (("abi", "calls"), "calls"),
        (("rom", "check", str(rom)), "valid"),
        (("rom", "show", str(rom)), "stubs"),
        (("inspect", kernel), "sites"),
        (("guest", "initrd", "list", str(initrd)), "members"),
        (("run", "-H", "bare", "--cmdline", "exit_after=5", kernel), "fate"),
        (("demo", "-H", "bare", "--no-qemu", "--cmdline", "exit_after=5", kernel), "results"),
    ):
        p = vmirom(*args, "--json", "-", cwd=tmp_path)
        assert p.returncode == 0, (args, p.stderr[-2000:])
        doc = json.loads(p.stdout)  # stdout is the JSON and nothing else
        assert key in doc, (args, list(doc))
        assert not (tmp_path / "-").exists()
    run = json.loads(vmirom("run", "-H", "bare", "--cmdline", "exit_after=5", kernel, "--json", "-").stdout)
    assert run["fate"] == "exit" and "VMIROM-JSON" in run["console"]


def test_json_on_the_reporting_commands_describes_what_they_print(tmp_path: Path) -> None:
    doc = json.loads(vmirom("hypervisors", "--json", "-").stdout)["hypervisors"]
    by = {h["name"]: h for h in doc}
    assert {"bare", "fullvirt", "vmi", "vmi2", "hwassist"} <= set(by)
    assert by["bare"]["kernel_ring"] == 0 and by["bare"]["rom"] is None and by["bare"]["hypercalls"] is None
    assert by["vmi"]["kernel_ring"] == 1 and by["vmi"]["rom"]["api"] == "3.0"
    assert by["vmi"]["hypercalls"] == "int 0x82"
    assert by["vmi2"]["rom"]["api"] == "3.1" and by["hwassist"]["kernel_ring"] == 0
    from vmirom.hypervisors import registry

    for name, h in by.items():
        assert h["memory_model"] == registry.get(name).memory_model
        assert h["memory_model"] in ("direct", "shadow")
        assert h["origin"] == "builtin"
    calls = json.loads(vmirom("abi", "calls", "--json", "-").stdout)["calls"]
    from vmirom import abi

    assert [c["name"] for c in calls] == [c.name for c in abi.CALLS]
    assert calls[0]["number"] == 0 and {"inputs", "outputs", "clobbers", "since"} <= set(calls[0])
    bad = tmp_path / "bad.rom"
    bad.write_bytes(b"\x55\xaa" + bytes(1022))
    p = vmirom("rom", "check", str(bad), "--json", "-")
    assert p.returncode == 1 and json.loads(p.stdout)["valid"] is False and json.loads(p.stdout)["problems"]


# -- output paths are checked before any work -----------------------------------------------------------
@pytest.mark.parametrize("args", [
    ("run", "-H", "bare", "--json", "{missing}/out.json"),
    ("demo", "-H", "bare", "--json", "{missing}/out.json"),
    ("bench", "-H", "bare", "--tests", "boot", "--json", "{missing}/out.json"),
    ("bench", "-H", "bare", "--tests", "boot", "--plot", "{missing}/out.png"),
    ("rom", "build", "-o", "{missing}/x.rom"),
    ("hypervisors", "--json", "{dir}"),
])
def test_output_paths_are_checked_before_any_work(args: tuple[str, ...], tmp_path: Path) -> None:
    args = tuple(a.format(missing=tmp_path / "no" / "such", dir=tmp_path) for a in args)
    p = vmirom(*args, timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "does not exist" in p.stderr or "is a directory" in p.stderr
    assert "booting" not in p.stdout + p.stderr and "VMIROM-JSON" not in p.stdout  # nothing ran


# -- tables fit the terminal ----------------------------------------------------------------------------
def test_tables_fit_an_80_column_terminal(kernel: str, tmp_path: Path) -> None:
    rom = tmp_path / "v2.rom"
    assert vmirom("rom", "build", "--hypervisor", "vmi2", "-o", str(rom)).returncode == 0
    for args in (("hypervisors",), ("abi", "calls"), ("rom", "show", str(rom)),
                 ("run", "-q", "-H", "vmi", "--cmdline", "exit_after=5", kernel),
                 ("demo", "-H", "bare,vmi2", "--no-qemu", "--cmdline", "exit_after=5", kernel)):
        p = vmirom(*args, columns=80)
        assert p.returncode == 0, (args, p.stderr[-2000:])
        tables = [line for line in (p.stdout + p.stderr).splitlines() if line[:1] in "┏┃┡│└━┗╭╰|"]
        assert tables, args
        assert max(len(line) for line in tables) <= 80, (args, max(tables, key=len))
        wide = vmirom(*args, columns=200)
        assert max(len(line) for line in (wide.stdout + wide.stderr).splitlines()) > 80, args


# -- the python -m tools are subcommands ----------------------------------------------------------------
def test_python_m_tools_are_subcommands(tmp_path: Path) -> None:
    for args in (("bench", "report", "--help"), ("bench", "profile", "--help"),
                 ("guest", "initrd", "--help")):
        assert vmirom(*args).returncode == 0, args
    for module in ("vmirom.bench.report", "vmirom.bench.profile"):  # the old spellings: no crash
        p = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and "Usage:" in p.stderr and "Traceback" not in p.stderr, p.stderr
    notjson = tmp_path / "x.json"
    notjson.write_text("[1, 2")
    p = vmirom("bench", "report", str(notjson))
    assert p.returncode == 3 and "not JSON" in p.stderr and "Traceback" not in p.stderr
    notdoc = tmp_path / "y.json"
    notdoc.write_text("{}")
    p = vmirom("bench", "report", str(notdoc))
    assert p.returncode == 3 and "not a vmirom bench document" in p.stderr


# -- bench: nothing measured, Ctrl-C --------------------------------------------------------------------
def test_bench_fails_when_nothing_was_measured(tmp_path: Path) -> None:
    junk = tmp_path / "junk.elf"
    junk.write_bytes(b"\x7fELF" + bytes(200))
    p = vmirom("bench", "-H", "bare", "--tests", "boot", "--repeat", "1", "--kernel", str(junk),
               "--json", "out.json", cwd=tmp_path, timeout=300)
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    assert "nothing was measured" in p.stdout + p.stderr
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["boots"] and all(r["status"] != "ok" for r in doc["records"])


def test_bench_ctrl_c_keeps_and_saves_what_finished(kernel: str, tmp_path: Path) -> None:
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "vmirom", "bench", "-H", "bare,hwassist,bare",
                             "--tests", "boot", "--repeat", "20", "--kernel", kernel, "--json", "out.json"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = ""
    deadline = time.monotonic() + 300
    assert proc.stdout is not None
    while time.monotonic() < deadline:  # wait until two boots finished, then press Ctrl-C
        line = proc.stdout.readline()
        seen += line
        if seen.count(" ok") >= 2 or not line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    seen += out
    assert proc.returncode == 1, seen[-2000:] + err[-2000:]
    assert "Traceback" not in err and "ctypes" not in err, err[-3000:]
    assert "interrupted" in seen + err
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["config"]["interrupted"] is True
    ok = [r for r in doc["records"] if r["status"] == "ok"]
    assert len(ok) >= 2 and len(doc["boots"]) < 60


# -- rom show --------------------------------------------------------------------------------------------
def test_rom_show_refuses_what_is_not_a_rom_and_keeps_bracketed_operands(tmp_path: Path) -> None:
    p = vmirom("rom", "show", "/etc/passwd")
    assert p.returncode == 3 and "refused" in p.stderr and "API version" not in p.stdout + p.stderr
    rom = tmp_path / "v2.rom"
    assert vmirom("rom", "build", "--hypervisor", "vmi2", "-o", str(rom)).returncode == 0
    p = vmirom("rom", "show", str(rom), columns=200)
    assert p.returncode == 0
    lines = [line for line in p.stdout.splitlines() if "ptr [" in line]
    assert any("dword ptr [eax + 0x" in line for line in lines), p.stdout[-3000:]
    # the JSON has the same listing, operands and all
    doc = json.loads(vmirom("rom", "show", str(rom), "--json", "-").stdout)
    code = [line for s in doc["stubs"] for line in s["code"]]
    assert sum("ptr [" in line for line in code) == len(lines)
