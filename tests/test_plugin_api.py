"""The personality API's promises to a plugin author (vmirom.plugin, docs/plugins.md):

* a bug in a handler ends the run cleanly (exit 7) with the console, the exits and the
  personality's facts kept; `--debug` prints the traceback;
* every hook may raise GuestFault and the guest takes it (port_out, before_slice, update_timers);
* a ROM description that cannot be built is a refusal (exit 3) that says why;
* entry-point names are what users type; replacing a built-in needs an explicit opt-in;
* the API version is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vmirom.guest.build import kernel_path
from vmirom.hypervisors import registry
from vmirom.hypervisors.bare import Bare
from vmirom.plugin import GP, GuestFault, HypercallPersonality, Personality, register
from vmirom.runner import RunRequest, exit_code, run_in_process

PLUGINS = Path(__file__).resolve().parent / "plugins"


def boot(name: str, cmdline: str = "exit_after=20") -> dict:
    return run_in_process(RunRequest(name, str(kernel_path()), cmdline, 120, None, echo=False))


@pytest.fixture
def registered():
    names: list[str] = []

    def add(cls: type[Personality]) -> str:
        register(cls)
        names.append(cls.name)
        return cls.name

    yield add
    for n in names:
        registry.unregister(n)


# -- GuestFault from any hook ----------------------------------------------------------------------------
class _FaultOnce(Bare):
    """Raises #GP from one hook, once, after `after` calls: the guest kernel must take it."""

    after = 300
    hook = ""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def _maybe(self, hook: str) -> None:
        if hook == self.hook:
            self.calls += 1
            if self.calls == self.after:
                raise GuestFault(GP, 0)

    def port_out(self, vcpu, port, size, value) -> bool:
        self._maybe("port_out")
        return False

    def port_in(self, vcpu, port, size):
        self._maybe("port_in")
        return None

    def before_slice(self) -> None:
        self._maybe("before_slice")

    def update_timers(self) -> None:
        self._maybe("update_timers")


@pytest.mark.parametrize("hook", ["port_out", "port_in", "before_slice", "update_timers"])
def test_every_hook_may_raise_guest_fault(hook: str, registered) -> None:
    after = {"before_slice": 20, "update_timers": 20}.get(hook, 300)
    cls = type(f"Fault_{hook}", (_FaultOnce,), {"name": f"fault-{hook}", "hook": hook, "after": after})
    res = boot(registered(cls))
    assert res["fate"] == "exit", (res["fate"], res["message"])  # the kernel reported it and shut down
    assert '"event":"exception","vector":13' in res["console"], res["console"][-1500:]
    if hook in ("before_slice", "update_timers"):  # no exit of its own: counted as the exception
        assert res["metrics"]["detail"].get("exception:13", 0) >= 1
    else:  # an I/O exit that ended in a #GP: counted once, as the I/O exit
        assert res["metrics"]["kinds"]["io"] > 0
    assert "traceback" not in res


# -- handler bugs ----------------------------------------------------------------------------------------
class Buggy(HypercallPersonality):
    name = "buggy"
    description = "a Halt handler with a bug"

    def __init__(self) -> None:
        super().__init__()
        self.halts = 0

    def halt(self, vcpu) -> None:  # replaces the base's Halt handler (same @handles mark)
        self.halts += 1
        if self.halts == 5:
            print(1 // 0)
        super().halt(vcpu)

    halt._vmi_call = "Halt"  # type: ignore[attr-defined]


def test_a_handler_bug_keeps_console_exits_and_facts(registered) -> None:
    res = boot(registered(Buggy))
    assert res["fate"] == "vmm_bug" and exit_code(res) == 7
    assert "ZeroDivisionError" in res["message"] and "test_plugin_api.py:" in res["message"]
    assert "ZeroDivisionError" in res["traceback"] and "def halt" not in res["message"]
    assert "vmi: bound" in res["console"]  # what the guest printed before the bug
    assert res["metrics"]["total_exits"] > 1000 and res["metrics"]["detail"]["hypercall:Halt"] == 5
    p = res["personality"]
    assert p["kernel_ring"] == 1 and p["rom"]["product"] == "vmirom vmi hypercall ROM"


def plugin_site(tmp_path: Path, entry_points: str, modules: dict[str, str] | None = None) -> dict:
    """An installed-looking plugin distribution in tmp_path (dist-info + modules) and the env to see it."""
    dist = tmp_path / "example_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: example-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vmirom.hypervisors]\n" + textwrap.dedent(entry_points))
    for name, text in (modules or {}).items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    env = dict(os.environ, COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), str(PLUGINS), env.get("PYTHONPATH")) if p)
    return env


def vmirom(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmirom", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


BUGGY = """
    from vmirom.plugin import HypercallPersonality, handles

    class Buggy(HypercallPersonality):
        name = "buggy"

        @handles("SetAlarm")
        def set_alarm(self, vcpu):
            return self.eax // 0
"""


def test_run_debug_prints_the_traceback_of_a_handler_bug(tmp_path: Path) -> None:
    env = plugin_site(tmp_path, "buggy = buggy_plugin:Buggy\n", {"buggy_plugin": BUGGY})
    out = tmp_path / "out.json"
    p = vmirom(env, "run", "-q", "-H", "buggy", "--json", str(out))
    assert p.returncode == 7, p.stdout[-2000:] + p.stderr[-2000:]
    assert "ZeroDivisionError" in p.stderr and "buggy_plugin.py:" in p.stderr and "Traceback" not in p.stderr
    assert "(not started)" not in p.stdout and "kernel ring 1" in p.stdout and "buggy" in p.stdout
    doc = json.loads(out.read_text())
    assert doc["console"] and doc["metrics"]["total_exits"] > 0 and doc["personality"]["rom"] is not None
    p = vmirom(env, "run", "-q", "-H", "buggy", "--debug")
    assert p.returncode == 7 and "Traceback (most recent call last)" in p.stderr
    assert "return self.eax // 0" in p.stderr


# -- ROM descriptions that cannot be built ---------------------------------------------------------------
@pytest.mark.parametrize(("attrs", "reason"), [
    ({"rom_stubs": {"GetCR3": "movl %nosuchreg, %eax\n ret"}}, "assembler rejected"),
    ({"nop_calls": ("GetCR3",)}, "returns values, so it cannot be NOP"),
    ({"hypercall_vector": None, "hypercall_port": 0x3F8}, "not an 8-bit port"),
    ({"hypercall_vector": None}, "no hypercall mechanism"),
])
def test_a_bad_rom_description_is_refused_with_the_reason(attrs: dict, reason: str, registered) -> None:
    cls = type("BadRom", (HypercallPersonality,), {"name": "bad-rom", **attrs})
    res = boot(registered(cls))
    assert res["fate"] == "refused" and exit_code(res) == 3, res["message"]
    assert "ROM description is refused" in res["message"] and reason in res["message"]


def test_a_bad_rom_description_exits_3_from_the_cli(tmp_path: Path) -> None:
    env = plugin_site(tmp_path, "badrom = badrom:BadRom\n", {"badrom": """
        from vmirom.plugin import HypercallPersonality

        class BadRom(HypercallPersonality):
            name = "badrom"
            nop_calls = ("GetCR0",)
    """})
    p = vmirom(env, "run", "-q", "-H", "badrom")
    assert p.returncode == 3 and "GetCR0 returns values, so it cannot be NOP" in p.stderr, p.stderr
    p = vmirom(env, "rom", "build", "--hypervisor", "badrom", "-o", str(tmp_path / "x.rom"))
    assert p.returncode == 3 and "refused" in p.stderr and "cannot be NOP" in p.stderr


# -- names and replacement ------------------------------------------------------------------------------
OPT_IN = """
    from vmirom.hypervisors.bare import Bare

    class NewHwassist(Bare):
        name = "hwassist"
        description = "a vendor's own hwassist"
        replaces_builtin = True

    class FutureApi(Bare):
        name = "future"
        requires_api = (2, 0)
"""


def test_entry_point_names_and_builtin_replacement(tmp_path: Path) -> None:
    env = plugin_site(tmp_path, """\
        renamed = acme_vmm:AcmeHypervisor
        vmi = acme_vmm:AcmeHypervisor
        hwassist = optin:NewHwassist
        future = optin:FutureApi
    """, {"optin": OPT_IN})
    p = vmirom(env, "hypervisors", "--json", "-")
    assert p.returncode == 0, p.stderr
    by = {h["name"]: h for h in json.loads(p.stdout)["hypervisors"]}
    # the entry point's name wins over the class's `name` ("acme")
    assert by["renamed"]["class"] == "acme_vmm.AcmeHypervisor"
    assert by["renamed"]["origin"] == "entry point example-plugins"
    # no silent replacement of a built-in ...
    assert by["vmi"]["class"] == "vmirom.hypervisors.vmi.Vmi" and by["vmi"]["origin"] == "builtin"
    assert "'vmi'" in p.stderr and "replaces_builtin" in p.stderr
    # ... unless the plugin says so
    assert by["hwassist"]["class"] == "optin.NewHwassist"
    # a plugin for another major API version is refused, with the reason
    assert "future" not in by and "needs personality API 2.0" in p.stderr
    run = vmirom(env, "run", "-q", "-H", "renamed", "--cmdline", "exit_after=5", "--json", "-")
    assert run.returncode == 0, run.stderr[-2000:]
    doc = json.loads(run.stdout)
    assert doc["personality"]["name"] == "renamed" and doc["binding"]["vmi"]["rom"]["manufacturer"] == \
        "Acme Virtualization"


def test_register_refuses_to_replace_a_builtin_without_opt_in() -> None:
    class Impostor(Bare):
        name = "bare"

    with pytest.raises(ValueError, match="replaces_builtin"):
        register(Impostor)
    assert registry.get("bare") is Bare

    class Replacer(Bare):
        name = "bare"
        replaces_builtin = True

    try:
        register(Replacer)
        assert registry.get("bare") is Replacer
    finally:
        register(Bare, replace=True, origin="builtin")
    assert registry.get("bare") is Bare
