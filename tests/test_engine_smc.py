"""Self-modifying code is still seen with our patched engine (and with the stock one).

The patch (src/vmirom/engines/patches/) lets guest stores skip the self-modifying-code check on
pages without translated code; these tests pin down that code is still seen whenever it changes:
  * the guest's own stores (tests/guests/smc.S on `bare`): in the executing translation block, on
    another page, and through an alias whose TLB entry went fast before the page held code;
  * code written by the VMM: a WriteGDTEntry over code the guest already ran
    (tests/guests/vmm_code_write.S on `vmi` and `vmi2`), and the reference kernel's call-site
    patching at bind on `vmi` (its selftest passes only if the patched sites run).
Every case runs on both libraries through the target modifiers (`bare+patched`, `bare+stock`);
the patched case is skipped only when the patched engine is not built.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import vmm_guests
from vmirom.engines import libunicorn as lu

BUILDS = [
    pytest.param("patched", marks=pytest.mark.skipif(lu.patched_library() is None,
                                                     reason="the patched engine is not built")),
    "stock",
]


@pytest.fixture(scope="module")
def guests(tmp_path_factory):
    d = tmp_path_factory.mktemp("smc")
    return {n: vmm_guests.build(n, d) for n in ("smc", "vmm_code_write")}


def run(target: str, *args: str, tmp_path) -> tuple[dict, str]:
    out = tmp_path / "run.json"
    p = subprocess.run([sys.executable, "-c", "from vmirom.cli import main; main()", "run", "-H", target,
                        "--json", str(out), *args], capture_output=True, text=True, timeout=180)
    assert "Traceback" not in p.stdout + p.stderr
    doc = json.loads(out.read_text())
    return doc, p.stdout


@pytest.mark.parametrize("build", BUILDS)
def test_the_guests_own_code_changes_are_seen(guests, tmp_path, build):
    doc, out = run(f"bare+{build}", "--cmdline", "", str(guests["smc"]), tmp_path=tmp_path)
    assert doc["engine"]["build"] == build
    assert doc["fate"] == "exit" and doc["exit_status"] == 0, (doc["exit_status"], out)
    for what in ("same block", "other page", "alias"):
        assert f"smc: {what} seen" in out


@pytest.mark.parametrize("personality", ["vmi", "vmi2"])
@pytest.mark.parametrize("build", BUILDS)
def test_a_vmm_write_over_code_the_guest_ran_is_seen(guests, tmp_path, build, personality):
    doc, out = run(f"{personality}+{build}", "--cmdline", "", str(guests["vmm_code_write"]),
                   tmp_path=tmp_path)
    assert doc["engine"]["build"] == build
    assert doc["fate"] == "exit" and doc["exit_status"] == 0, (doc["exit_status"], out)
    assert "vmm code write seen" in out
    assert doc["metrics"]["detail"].get("hypercall:WriteGDTEntry") == 1


@pytest.mark.parametrize("build", BUILDS)
def test_call_sites_patched_at_bind_run(tmp_path, build):
    from vmirom.guest.build import kernel_path

    kernel_path(build_if_needed=True)
    doc, _ = run(f"vmi+{build}", "--cmdline", "init=selftest", "--quiet", tmp_path=tmp_path)
    assert doc["engine"]["build"] == build
    assert doc["binding"]["vmi"]["status"] == "bound" and doc["binding"]["vmi"]["patched"] > 0
    assert doc["outcome"]["selftest"]["failed"] == 0 and doc["outcome"]["selftest"]["passed"] > 0
    assert doc["fate"] == "exit" and doc["exit_status"] == 0


@pytest.mark.skipif(lu.patched_library() is None, reason="the patched engine is not built")
def test_the_patched_engine_invalidates_exactly():
    """W16: on the patched engine a VMM code write is dropped through uc_mem_write (this page's
    translations only), never by flushing the whole translation cache."""
    import mmap

    from unicorn.x86_const import UC_X86_REG_EAX

    from vmirom.engines.unicorn import UnicornEngine

    eng = UnicornEngine()
    assert eng._coherent_writes
    ram = mmap.mmap(-1, 1 << 21)
    eng.attach_memory(ram, 1 << 21, [])
    flushed = []
    eng.uc.ctl_flush_tb = lambda: flushed.append(1)  # the fallback must not be taken
    code = bytes.fromhex("b811111111" "f4")  # mov eax, 0x11111111; hlt
    ram[0x1000:0x1006] = code
    eng.invalidate_code(0x1000, 0x1006)
    for value in (0x11111111, 0x22222222):
        ram[0x1001:0x1005] = value.to_bytes(4, "little")
        eng.invalidate_code(0x1001, 0x1005)
        eng.uc.emu_start(0x1000, 0x1005)
        assert eng.uc.reg_read(UC_X86_REG_EAX) == value
    assert not flushed
    eng.close()
