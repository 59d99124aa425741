"""docs/plugins.md, followed word for word: its files are written from its code blocks (a fence
```` ```python tinyhv/tinyhv/__init__.py ```` appends the block to that file), its `sh` blocks are
run in order, and what they print is checked against what the page says they print.

The only translation: `pip install DIR` installs into a private --target directory of this test
(never into the running environment), and `vmirom ...` is `python -m vmirom ...` with that
directory first on PYTHONPATH, so vmirom finds the plugin through its entry point as it would
after a real install.  The kernel is the unchanged reference kernel (`vmirom guest path`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
FENCE = re.compile(r"^```(\w+)(?: +(\S+))?\n(.*?)^```$", re.S | re.M)


def tutorial() -> tuple[dict[str, str], list[str]]:
    """(files written by the page, shell commands in page order)."""
    files: dict[str, str] = {}
    commands: list[str] = []
    for lang, path, body in FENCE.findall(DOC.read_text()):
        if path:
            files[path] = files.get(path, "") + ("\n" if path in files else "") + body
        elif lang == "sh":
            commands += [line for line in body.splitlines() if line.strip() and not line.startswith("#")]
    return files, commands


def test_the_page_has_what_the_test_follows() -> None:
    files, commands = tutorial()
    assert set(files) == {"tinyhv/pyproject.toml", "tinyhv/tinyhv/__init__.py"}
    assert "pip install ./tinyhv" in commands
    assert any(c.startswith("vmirom run -H tinyhv") for c in commands)
    assert "int $0x82" not in files["tinyhv/tinyhv/__init__.py"]


def _run(cmd: str, cwd: Path, site: Path) -> subprocess.CompletedProcess[str]:
    args = shlex.split(cmd)
    env = dict(os.environ, COLUMNS="200")  # wide tables: one row per line
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), src, env.get("PYTHONPATH", "")) if p)
    if args[:2] == ["pip", "install"]:
        args = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                "--disable-pip-version-check", "--target", str(site), *args[2:]]
    elif args[0] == "vmirom":
        args = [sys.executable, "-m", "vmirom", *args[1:]]
    else:
        raise AssertionError(f"the tutorial runs a command this test does not know: {cmd}")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_the_tutorial_personality_boots_the_unchanged_kernel_at_ring_1(tmp_path: Path) -> None:
    files, commands = tutorial()
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    site = tmp_path / "site"
    out: list[tuple[str, subprocess.CompletedProcess[str]]] = []
    for cmd in commands:
        p = _run(cmd, tmp_path, site)
        out.append((cmd, p))
        if cmd.startswith("vmirom run") and p.returncode:
            pytest.fail(f"{cmd} -> {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        assert p.returncode == 0, f"{cmd} -> {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        assert "Traceback" not in p.stderr, p.stderr
    listing = [p.stdout for c, p in out if c == "vmirom hypervisors"]
    assert "tinyhv" not in listing[0] and "tinyhv" in listing[1]  # before and after the install
    assert "out 0xe4" in listing[1] and "Tiny Hypervisors" in listing[1]
    show = next(p.stdout for c, p in out if c.startswith("vmirom rom show"))
    assert "out 0xe4, al" in show and "pushfd" in show and "int 0x82" not in show
    doc = json.loads((tmp_path / "tinyhv.json").read_text())
    st = doc["outcome"]["selftest"]
    assert st["failed"] == 0 and st["passed"] == st["total"] >= 29
    assert doc["personality"]["kernel_ring"] == 1 and doc["personality"]["name"] == "tinyhv"
    assert doc["binding"]["vmi"]["status"] == "bound" and doc["binding"]["vmi"]["ring"] == 1
    assert doc["binding"]["vmi"]["rom"]["manufacturer"] == "Tiny Hypervisors"
    detail = doc["metrics"]["detail"]
    for call in ("SetAlarm", "Halt", "GetCycleCounter", "IRET"):
        assert detail.get(f"hypercall:{call}", 0) > 0, call
    # the port hypercalls are counted once: as hypercalls, never also as port I/O
    assert "io:out:0xe4" not in detail
    by_call = sum(v for k, v in detail.items() if k.startswith("hypercall:"))
    assert doc["metrics"]["kinds"]["hypercall"] == by_call
    # our own stubs never exit; our timer ticked
    assert "hypercall:GetCycleFrequency" not in detail and "hypercall:GetInterruptMask" not in detail
    assert doc["personality"]["timer_ticks"] > 0
    # the same kernel file as every other personality
    import hashlib

    from vmirom.guest.build import kernel_path

    assert doc["kernel_sha256"] == hashlib.sha256(kernel_path().read_bytes()).hexdigest()
