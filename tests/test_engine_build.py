"""The engine build: which libunicorn is loaded, how a target picks one, how the build is cached.

The patched library is built by scripts/setup.sh (vmirom.engines.unicorn_build); tests that need it
skip when it is not built, the stock ones always run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import vmm_guests
from vmirom.engines import libunicorn as lu
from vmirom.engines import unicorn_build
from vmirom.engines.options import EngineOptions, TargetError, parse_target

PATCHED = lu.patched_library() is not None
needs_patched = pytest.mark.skipif(not PATCHED, reason="the patched engine is not built (scripts/setup.sh)")


def test_target_modifiers_parse_in_one_place():
    assert parse_target("bare") == ("bare", EngineOptions())
    assert parse_target("vmi2+stock") == ("vmi2", EngineOptions(build="stock"))
    assert parse_target("bare+patched")[1].suffix == "+patched"
    assert EngineOptions().suffix == ""
    for bad in ("bare+nope", "bare+stock+patched", "+stock"):
        with pytest.raises(TargetError):
            parse_target(bad)


def test_this_process_reports_what_the_binding_loaded():
    import unicorn.unicorn_py3.unicorn as binding

    d = lu.describe()
    assert d.library == str(lu.Path(binding.uclib._name).resolve())
    assert d.build == ("patched" if PATCHED else "stock")
    if PATCHED:
        assert d.patch_sha256 == lu.patch_sha256() and d.build_key == lu.build_key()
    else:
        assert d.note and "not built" in d.note


@needs_patched
def test_patched_build_record_matches_the_patch_in_the_tree():
    info = json.loads((lu.build_dir() / lu.INFO_NAME).read_text())
    assert info["patch_sha256"] == lu.patch_sha256()
    assert info["sdist_sha256"] == lu.SDIST_SHA256
    assert "-DUNICORN_ARCH=x86" in info["cmake_args"]


def test_the_patch_says_why():
    text = lu.PATCH.read_text()
    head = text.split("\n--- ", 1)[0]
    assert "notdirty_write" in head and "first_tb" in head and "tlb_protect_code" in head


def test_a_cached_build_is_found_without_building(tmp_path, monkeypatch):
    monkeypatch.setenv("VMIROM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(unicorn_build, "fetch_source", lambda say: pytest.fail("must not fetch"))
    d = lu.build_dir()
    assert lu.patched_library() is None
    d.mkdir(parents=True)
    (d / lu.LIB_NAME).write_bytes(b"\x7fELF")
    assert lu.patched_library() is None  # no build record: an interrupted build does not count
    (d / lu.INFO_NAME).write_text("{}")
    assert unicorn_build.build(say=lambda s: None) == d / lu.LIB_NAME


def test_the_cache_key_follows_the_patch(tmp_path, monkeypatch):
    key = lu.build_key()
    other = tmp_path / "x.patch"
    other.write_text(lu.PATCH.read_text() + "\n")
    monkeypatch.setattr(lu, "PATCH", other)
    assert lu.build_key() != key


def _run_json(tmp_path, target: str) -> dict:
    elf = vmm_guests.build("hello", tmp_path)
    out = tmp_path / f"{target}.json"
    p = subprocess.run([sys.executable, "-c", "from vmirom.cli import main; main()", "run", "-H", target,
                        "--cmdline", "", "--json", str(out), str(elf)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "hello from a tiny guest" in p.stdout
    assert "engine" in p.stdout  # the summary names the engine build
    return json.loads(out.read_text())


def test_run_reports_the_stock_engine_for_a_stock_target(tmp_path):
    doc = _run_json(tmp_path, "bare+stock")
    assert doc["hypervisor"] == "bare+stock"
    assert doc["engine"]["build"] == "stock"
    assert doc["engine"]["library"] == str((lu.stock_library_dir() / lu.LIB_NAME).resolve())


@needs_patched
def test_run_reports_the_patched_engine_by_default(tmp_path):
    doc = _run_json(tmp_path, "bare")
    assert doc["engine"]["build"] == "patched"
    assert doc["engine"]["patch_sha256"] == lu.patch_sha256()


def test_bench_targets_take_modifiers_before_native():
    from vmirom.bench.runs import BenchError, Target

    t = Target.parse("bare+stock@native")
    assert (t.platform, t.kernel, t.engine.build, t.name) == ("bare", "native", "stock", "bare+stock@native")
    assert Target.parse("vmi").engine == EngineOptions()
    for bad in ("qemu+stock", "bare+fast", "nosuch+stock"):
        with pytest.raises(BenchError):
            Target.parse(bad)


def test_the_store_micro_measurement_runs_on_every_build():
    """python -m vmirom.bench.stores (docs/engine.md): structure only, no timing asserted."""
    p = subprocess.run([sys.executable, "-m", "vmirom.bench.stores", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [r["engine"]["build"] for r in rows] == (["patched"] if PATCHED else []) + ["stock"]
    for r in rows:
        for layout in ("scoped_hooks", "hook_over_everything"):
            assert r[layout]["store_ns_per_iter"] > 0 and r[layout]["load_ns_per_iter"] > 0


def test_without_the_patched_build_the_vmm_runs_on_the_stock_wheel_and_says_so(tmp_path):
    """A user with only the wheel (nothing built in the cache) gets a working VMM, told why it is slower."""
    elf = vmm_guests.build("hello", tmp_path)
    out = tmp_path / "r.json"
    env = {**os.environ, "VMIROM_CACHE_DIR": str(tmp_path / "empty-cache")}
    env.pop(lu.ENV_LIBPATH, None)
    env.pop(lu.ENV_BUILD, None)
    p = subprocess.run([sys.executable, "-c", "from vmirom.cli import main; main()", "run", "-H", "bare",
                        "--cmdline", "", "--json", str(out), str(elf)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    engine = json.loads(out.read_text())["engine"]
    assert engine["build"] == "stock" and "not built" in engine["note"]
    shown = " ".join(p.stdout.replace("│", " ").split())  # the summary table may wrap the note
    assert "engine note the patched engine is not built" in shown
