"""The compiled engine core (vmirom.engines.core): its build, its contract with Unicorn, its choice
rules, and real boots with it on.

The exit-by-exit agreement of the C core with the Python path is pinned by tests/test_vmm_dispatch.py
(every synthetic exit runs on both); here:
- the Unicorn constants the C code declares itself match the binding's (no Unicorn header is used);
- the #PF decoder in C answers what the Python (capstone) rule answers, wherever it answers;
- which personality may use the core (opt-in: a third-party personality works unchanged);
- the switch (`engine_core`, VMIROM_ENGINE_CORE, `+py`) and its report;
- real boots: the user-space selftest passes with the C core on, on the patched and the stock
  libunicorn, and the core really completed exits (counted once, under the Python path's keys).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from unicorn import unicorn_const as U
from unicorn import x86_const as X

from vmirom.engines import core as engine_core
from vmirom.engines.options import EngineOptions, TargetError, parse_target
from vmirom.guest.build import build_kernel
from vmirom.guest.initrd import INITRD_PATH
from vmirom.hypervisors import create
from vmirom.hypervisors.base import Personality
from vmirom.hypervisors.vmi import Vmi
from vmirom.hypervisors.vmi2 import Vmi2
from vmirom.machine.decode import code_writes
from vmirom.machine.faults import GP, PF
from vmirom.machine.machine import Machine, MachineConfig
from vmirom.runner import RunRequest, run_isolated

pytestmark = pytest.mark.skipif(not engine_core.available(), reason=str(engine_core.LOAD_ERROR))


def test_the_c_constants_are_unicorns():
    for name, value in engine_core._core.UNICORN_CONSTANTS.items():
        expected = getattr(X, name, None)
        if expected is None:
            expected = getattr(U, name)
        assert value == expected, name


# -- the #PF decoder ---------------------------------------------------------------------------------
def _corpus():
    """Encodings of the instruction forms the C decoder knows, and some it must refuse."""
    one = [*range(0x00, 0x40), 0x69, 0x6B, 0x80, 0x81, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8B,
           0x8C, 0x8D, 0x8E, 0x8F, 0xC0, 0xC1, 0xC6, 0xC7, 0xD0, 0xD1, 0xD2, 0xD3, 0xF6, 0xF7, 0xFE, 0xFF,
           0x50, 0xE8, 0xA4, 0xA5, 0xAA, 0xAB]
    two = [0xB6, 0xB7, 0xBE, 0xBF, 0xA3, 0xAB, 0xB3, 0xBB, 0xBA, 0xB0, 0xB1, 0xC0, 0xC1, 0xAF, 0xA4, 0xA5,
           0xAC, 0xAD, 0x94, 0x9F, 0x44, 0x4F, 0x01, 0x00]
    modrms = [0x03, 0x43, 0x83, 0xC3] + [(reg << 3) | 0x03 for reg in range(8)] + [0x04, 0x05]
    prefixes = (b"", b"\x66", b"\xf0", b"\x64", b"\xf3", b"\x67")
    for prefix, op, modrm in itertools.product(prefixes, one, modrms):
        yield prefix + bytes([op, modrm]) + bytes(range(1, 15))
    for op2, modrm in itertools.product(two, modrms):
        yield bytes([0x0F, op2, modrm]) + bytes(range(1, 14))
    yield from (b"\xa0\x00\x10\x00\x00", b"\xa3\x00\x10\x00\x00", b"\x90", b"")


def test_the_c_page_fault_decoder_agrees_with_the_python_rule():
    core = engine_core._core.Core(bytearray(1 << 21), 1 << 21)
    answered = 0
    for code in _corpus():
        c = core.pf_write(code)
        if c < 0:
            continue  # "unknown": the exit takes the Python path
        answered += 1
        # cr2 far from ESP and EDI: the Python stack/string rules (never answered in C) cannot apply
        assert c == int(code_writes(code[:16], 0x500000, 0x100000, 0x200000)), code.hex()
    assert answered > 300  # the decoder is not a stub that refuses everything


# -- who may use the core ---------------------------------------------------------------------------
def _machine(p: Personality) -> Machine:
    return Machine(p, MachineConfig(ram_size=4 << 20, timeout_s=None, engine_core="c"))


@pytest.mark.parametrize(
    "name, accel", [("bare", True), ("hwassist", True), ("vmi", True), ("vmi2", True), ("fullvirt", False)]
)
def test_builtin_personalities_opt_in(name, accel):
    m = _machine(create(name))
    assert m.core is not None and m.core.accel == accel, m.core.why_not
    assert m.engine_core_summary()["accelerated"] == accel
    m.close()


class DirectVmi(Vmi):
    """vmi's exits on direct paging (no shadow MMU): the core may deliver all but vmi's #GP."""

    name = "test-direct-vmi"
    memory_model = "direct"


def test_the_gp_of_vmi_stays_on_the_python_path():
    m = _machine(DirectVmi())
    accel, _hv, intercept, why = engine_core.policy(m)
    assert accel, why
    assert intercept[GP] == 1 and intercept[PF] == 0
    m.close()


@pytest.mark.parametrize("hv", ["vmi", "vmi2"])
def test_under_shadow_paging_the_core_completes_software_interrupts_only(kernel, hv):
    """vmi and vmi2 run on shadow page tables (the GDT write-protected by the descriptor guard):
    `int $0x80` is delivered in C (walking the guest's tables with its virtual control registers;
    vmi2's virtual interrupt flag kept in its shared page), page faults stay the MMU's (Python)."""
    res = _selftest(hv, kernel, EngineOptions(core="c"))
    core = res["engine_core"]
    assert core["accelerated"] and core["completed"] > 1000
    d = res["metrics"]["detail"]
    assert d["softint:0x80"] > 0 and d["exception:14"] > 0
    assert res["metrics"]["mmu"]  # the shadow MMU was on
    # the IRET hypercall is done in C too, and counted once in both places Python counts it
    assert core["iret"]
    assert d["hypercall:IRET"] == res["personality"]["hypercalls_by_call"]["IRET"] > 1000
    # most of them in C: only those after which an interrupt may be due go to Python
    assert core["irets"] > d["hypercall:IRET"] // 2


def test_debugging_modes_that_see_every_exit_turn_the_core_off(tmp_path):
    from vmirom.debug.determinism import make_deterministic
    from vmirom.debug.session import DebugOptions, DebugSession

    m = _machine(create("bare"))
    assert m.core.accel
    make_deterministic(m)
    assert not m.core.accel and m.delivery._core is None and "deterministic" in m.core.why_not
    m.close()
    m = _machine(create("bare"))
    session = DebugSession(m, DebugOptions(trace=str(tmp_path / "trace.json")))
    session.tracer.close()
    assert not m.core.accel and "trace" in m.core.why_not
    m.close()


class ThirdParty(Personality):
    name = "test-third-party"

    def on_exception(self, vcpu, vector, error_code) -> bool:
        return False


class VmiSubclass(Vmi):
    """Inherits Vmi's declaration, but overrides on_exception: the declaration does not cover it."""

    name = "test-vmi-sub"

    def on_exception(self, vcpu, vector, error_code) -> bool:
        return super().on_exception(vcpu, vector, error_code)


class VirtualIf(Personality):
    name = "test-vif"

    def load_virtual_if(self) -> None:
        pass


class Vmi2OwnSave(Vmi2):
    """A vmi2 whose virtual flag is not Vmi2's: the core cannot stand for it (vmi2.c)."""

    name = "test-vmi2-own-save"

    def save_virtual_if(self, cpl: int, eflags: int, cr2: int) -> None:
        super().save_virtual_if(cpl, eflags, cr2)


class Vmi2OwnIret(Vmi2):
    """A vmi2 with its own IRET handler: deliveries in C, its hypercalls in Python."""

    name = "test-vmi2-own-iret"

    def before_iret(self, cs: int, flags: int):  # noqa: ANN201
        return super().before_iret(cs, flags)


def test_vmi2_opts_in_only_with_its_own_virtual_flag_and_iret():
    m = _machine(create("vmi2"))
    assert m.core.accel and m.core.vif == m.personality.shared and m.core.iret_site >= 0
    m.close()
    m = _machine(Vmi2OwnIret())
    assert m.core.accel and m.core.vif == m.personality.shared and m.core.iret_site < 0
    m.close()


@pytest.mark.parametrize("cls", [ThirdParty, VmiSubclass, VirtualIf, Vmi2OwnSave])
def test_a_personality_that_did_not_opt_in_keeps_the_python_path(cls):
    m = _machine(cls())
    assert not m.core.accel and m.core.why_not
    assert m.delivery._core is None
    m.close()


def test_kernel_stack_overrides_reach_the_core():
    m = _machine(DirectVmi())
    m.kernel_stacks[1] = (0x21, 0x9000)
    regs = (0x1000, 0x202, 0x2B, 0x33, 0x5000, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    # no IDT (limit 0): the delivery faults before it needs the stack; the point is no crash, and:
    assert m.core.core.deliver(regs, 0x80, None, True, False)[0] in ("ok", "fallback", "triple")
    del m.kernel_stacks[1]
    m.close()


# -- the switch ----------------------------------------------------------------------------------------
def test_resolve(monkeypatch):
    monkeypatch.delenv(engine_core.ENV, raising=False)
    assert engine_core.resolve() == ("c", None)
    assert engine_core.resolve("python") == ("python", None)
    monkeypatch.setenv(engine_core.ENV, "python")
    assert engine_core.resolve()[0] == "python"
    assert engine_core.resolve("c")[0] == "c"  # an explicit choice wins over the environment
    with pytest.raises(ValueError):
        engine_core.resolve("fortran")


def test_bench_records_say_which_core_ran(kernel):
    from vmirom.bench import report, runs

    kernels = runs.Kernels(kernel, None, INITRD_PATH)
    workload = runs.Workload(("null_syscall",), iterations=5, timeout_s=120)
    for name, core in (("bare", "c"), ("bare+py", "python")):
        b = runs.run_boot(runs.Target.parse(name), 0, kernels, workload)
        assert b.fate == "exit" and b.engine_core["name"] == core
        assert (b.engine_core.get("completed", 0) > 0) == (core == "c")
        (rec,) = b.records
        assert rec["engine_core"] == core and report.validate_record(rec) == []


def test_py_modifier():
    assert parse_target("bare+py") == ("bare", EngineOptions(core="python"))
    assert parse_target("bare+stock+py")[1] == EngineOptions(build="stock", core="python")
    assert EngineOptions(core="python").suffix == "+py"
    with pytest.raises(TargetError):
        parse_target("bare+pyy")


# -- real boots ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kernel() -> Path:
    return build_kernel()


def _selftest(hv: str, kernel: Path, engine: EngineOptions) -> dict:
    res = run_isolated(RunRequest(hv, str(kernel), "init=selftest", 300.0, str(INITRD_PATH), echo=False,
                                  engine=engine))
    assert (res["fate"], res["exit_status"]) == ("exit", 0), f"{hv}: {res['fate']}: {res['message']}"
    st = res["outcome"]["selftest"]
    assert st["passed"] == st["total"] > 0
    return res


@pytest.mark.parametrize("build", [None, "stock"], ids=["default-engine", "stock-wheel"])
def test_selftest_with_the_c_core_completing_exits(kernel, build):
    res = _selftest("bare", kernel, EngineOptions(build=build, core="c"))
    core = res["engine_core"]
    assert core["name"] == "c" and core["accelerated"]
    assert core["completed"] > 1000  # system calls and page faults were completed in C
    d = res["metrics"]["detail"]
    # counted once, under the Python path's keys (the core's counters are folded into Metrics)
    assert d["softint:0x80"] > 0 and d["exception:14"] > 0 and d["delivery:ring_change"] > 0


@pytest.mark.parametrize("hv", ["bare", "fullvirt", "vmi", "vmi2", "hwassist"])
def test_selftest_passes_on_every_personality_with_the_c_core_on(kernel, hv):
    res = _selftest(hv, kernel, EngineOptions(core="c"))
    assert res["engine_core"]["name"] == "c"


def test_selftest_on_the_python_path_says_so(kernel):
    res = _selftest("vmi", kernel, EngineOptions(core="python"))
    assert res["engine_core"]["name"] == "python"


# -- the console's hot port I/O (console.c) -----------------------------------------------------------
def test_console_hot_cases_and_every_fallback():
    """The core completes only the LSR poll and a THR write inside a line that raises no interrupt,
    from a context allowed I/O; everything else is the Python path's (it returns None/False)."""
    core = engine_core._core.Core(bytearray(4096), 4096)
    core.set_iret(1, 0, -1, 0)  # a kernel at ring 1
    core.set_console(True, 0x3F8, 0x99, engine_core._core.IO_RULE_KERNEL)
    core.console_state(0, 0, False, True, False)
    k1, iopl3 = 0x61, 0x3000
    assert core.console_out(0x3F8, 1, ord("a"), k1, 0x2)
    assert core.console_in(0x3FD, 1, k1, 0x2) == 0x60
    for args in [(0x3F8, 1, 0x0A, k1, 0x2),        # a newline: the sinks snapshot there
                 (0x3F9, 1, 1, k1, 0x2),           # IER
                 (0x99, 1, 1, k1, 0x2),            # the hypercall port
                 (0x3F8, 1, 0x41, 0x08, 0x2),      # CPL 0 below the kernel's ring 1: Python stops the VM
                 (0x3F8, 1, 0x41, 0x23, iopl3),    # user: Vmi's IOPL rule is Python's
                 (0x3F8, 1, 0x41, k1, 0x20002)]:   # V86
        assert not core.console_out(*args), args
    assert core.console_in(0x3FC, 1, k1, 0x2) is None and core.console_in(0x3FD, 2, k1, 0x2) is None
    for state in [(0x80, 0, False, True, False),    # DLAB
                  (0, 2, False, True, False),       # THRE interrupt enabled
                  (0, 0, False, False, False),      # first byte of a line
                  (0, 0, False, True, True)]:       # fenced block
        core.console_state(*state)
        assert not core.console_out(0x3F8, 1, 0x41, k1, 0x2), state
    core.console_state(0, 0, True, True, False)
    assert core.console_in(0x3FD, 1, k1, 0x2) == 0x61  # data ready
    core.set_console(True, 0x3F8, -1, engine_core._core.IO_RULE_IOPL)
    assert not core.console_out(0x3F8, 1, 0x41, 0x63, 0x2)  # CPL 3 > IOPL 0: Python raises #GP
    assert core.console_out(0x3F8, 1, 0x142, 0x63, iopl3)   # PortBus/UART keep the low byte
    assert core.take_console() == b"aB" and core.take_console() == b""
    counts, log = core.drain()
    assert dict(counts) == {engine_core._core.C_IO_OUT: 2, engine_core._core.C_IO_IN + 5: 2}
    assert len(log) == 4


@pytest.mark.parametrize("hv", ["bare", "vmi"])
def test_console_and_io_counters_match_the_python_path(kernel, hv):
    """A boot's console and its UART exits, on the C core (which completes most of them) and on the
    Python path: the same lines (digits aside: the selftest prints timings), one `out` THR and one
    `in` LSR per byte, counted under the same keys."""
    import re

    runs = {core: _selftest(hv, kernel, EngineOptions(core=core)) for core in ("python", "c")}
    assert runs["c"]["engine_core"]["console"]
    texts, unseen = {}, {}
    for core, res in runs.items():
        d, text = res["metrics"]["detail"], res["console"]
        assert d["io:out:0x3f8"] == d["io:in:0x3fd"], core
        texts[core] = re.sub(r"\d+", "N", text)
        unseen[core] = d["io:out:0x3f8"] - len(text.encode())  # bytes the summary's text drops
    assert texts["c"] == texts["python"] and unseen["c"] == unseen["python"]
    # most UART exits completed in C (all but newlines, first bytes of lines and the UART's setup)
    assert runs["c"]["engine_core"]["completed"] > runs["c"]["metrics"]["detail"]["io:out:0x3f8"] * 3 // 2


def test_state_only_hypercalls_in_c_on_vmi(kernel):
    """GetCR0/2/3/4 and GetInterruptMask (EAX = a value, nothing else) are completed in C on vmi, and
    counted under the Python path's keys and in the personality's own counts; the selftest (whose
    page faults read CR2 through GetCR2) still passes, as on the Python path."""
    res = _selftest("vmi", kernel, EngineOptions(core="c"))
    core, d = res["engine_core"], res["metrics"]["detail"]
    assert core["iret"] and core["state_calls"] > 0
    calls = (*engine_core.STATE_CALLS, *engine_core.MMU_CALLS)
    assert sum(d.get(f"hypercall:{name}", 0) for name in calls) >= core["state_calls"]
    # SetPxE (the shadow MMU's, mmu.c) too: nearly all of them, most deferred (lazy mode)
    assert core["state_calls"] - sum(d.get(f"hypercall:{n}", 0) for n in engine_core.STATE_CALLS) > (
        d["hypercall:SetPxE"] // 2)
    py = _selftest("vmi", kernel, EngineOptions(core="python"))
    assert "state_calls" not in py["engine_core"]
    assert py["metrics"]["detail"]["hypercall:GetCR2"] > 0 and d["hypercall:GetCR2"] > 0


@pytest.mark.parametrize("hv", ["vmi", "vmi2", "fullvirt"])
def test_shadow_mmu_exits_in_c_keep_the_python_paths_counts(kernel, hv):
    """The shadow MMU's exits in C (mmu.c: hidden faults, true faults where the core delivers, vmi's
    and vmi2's SetPxE): the selftest passes, most of them are completed in C, and on vmi/vmi2 the
    MMU's counters driven by the guest's hypercalls - PTE updates, deferred ones, zaps, prefills -
    are those of the Python path (fullvirt's depend on timing: which process the timer preempts
    decides which tables a fork's write-protect traps meet)."""
    runs = {core: _selftest(hv, kernel, EngineOptions(core=core)) for core in ("python", "c")}
    c, py = runs["c"], runs["python"]
    assert c["engine_core"]["shadow_mmu"]
    if hv != "fullvirt":
        keys = ("pv_updates", "deferred_updates", "zaps", "prefills")
        assert {k: c["metrics"]["mmu"][k] for k in keys} == {k: py["metrics"]["mmu"][k] for k in keys}
    if hv == "vmi2":  # its batch flushes (mmu.c core_v2_flush): the in-guest PTE counts the bench reports
        keys = ("pte_updates_batched", "batch_flushes")
        assert {k: c["personality"][k] for k in keys} == {k: py["personality"][k] for k in keys}
        assert c["personality"]["batch_flushes"] > 100
    d = c["metrics"]["detail"]
    assert c["engine_core"]["completed"] > d["shadow:hidden_fault"] // 2
    if hv == "fullvirt":  # its page-table stores too (mmu.c core_wp_store): more exits in C than fills
        assert c["engine_core"]["completed"] > d["shadow:hidden_fault"] and d["shadow:wp_trap"] > 1000
    if hv != "fullvirt":
        others = sum(d.get(f"hypercall:{n}", 0) for n in engine_core.STATE_CALLS)
        assert c["engine_core"]["state_calls"] - others > d["hypercall:SetPxE"] // 2
    if hv == "vmi2":  # nearly every flush too (SetLazyMode, FlushDeferred: only vmi2's flush exits)
        others += sum(d.get(f"hypercall:{n}", 0) for n in engine_core.MMU_CALLS)
        assert c["engine_core"]["state_calls"] - others > d["hypercall:SetLazyMode"] // 2
