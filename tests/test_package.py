"""The package people install: a wheel that boots with no compiler.

* The wheel carries the reference kernel, the native kernel, the initrd and every built-in ROM
  (assembled) as package data, built by the package build (setup.py); they equal a rebuild from
  the sources in a fresh copy of guest/ and a fresh assembly of every built-in ROM.
* (slow) In a fresh virtual environment, on a PATH that has no gcc, cc, as or ld: `pip install`
  of that wheel, then `vmirom demo` passes on every personality and `vmirom run -H vmi2` boots.
* ROMs are cached by content: a second build needs no binutils; a damaged entry is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vmirom.rom import build_rom, cache
from vmirom.rom.build import assemblies

ROOT = Path(__file__).resolve().parents[1]
GUEST_FILES = ("kernel.elf", "kernel-native.elf", "initrd.cpio")
#: what a machine with no C toolchain lacks (tests hide these from PATH)
COMPILERS = ("gcc", "cc", "c++", "g++", "cpp", "as", "ld", "clang", "tcc")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built by pip from this checkout (no build isolation: the dev environment has
    the build requirements, and the test must not depend on the network)."""
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "-w", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (whl,) = out.glob("vmirom-*.whl")
    return whl


def prebuilt(whl: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(whl) as z:
        prefix = "vmirom/_prebuilt/"
        return {n[len(prefix):]: z.read(n) for n in z.namelist()
                if n.startswith(prefix) and not n.endswith("/")}


def test_the_wheel_ships_the_guest_files_a_rebuild_gives(wheel: Path, tmp_path: Path) -> None:
    files = prebuilt(wheel)
    manifest = json.loads(files.pop("MANIFEST.json"))
    assert manifest == {name: sha(data) for name, data in files.items()}
    # a rebuild from the sources, in a fresh copy of guest/ (another path: the build is reproducible)
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT / "guest", copy / "guest", ignore=shutil.ignore_patterns("build"))
    (copy / "src").symlink_to(ROOT / "src")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    make = ["make", "-C", str(copy / "guest"), "-j2", f"PYTHON={sys.executable}", "all", "native"]
    p = subprocess.run(make, capture_output=True, text=True, timeout=1200, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    for name in GUEST_FILES:
        assert sha(files[name]) == sha((copy / "guest" / "build" / name).read_bytes()), name


def test_the_wheel_ships_every_builtin_rom_as_a_fresh_assembly(wheel: Path) -> None:
    files = prebuilt(wheel)
    shipped = {name[len("rom/"):-len(".json")]: json.loads(data) for name, data in files.items()
               if name.startswith("rom/")}
    expected = {}
    names = []
    for name, spec in cache.builtin_specs():
        names.append(name)
        for source, asm in assemblies(spec):  # GNU as/ld, now, bypassing every cache
            expected[cache.key(source)] = {"code": asm.code.hex(), "symbols": asm.symbols}
    assert {"hypervisor vmi", "hypervisor vmi2", "hypervisor hwassist", "variant native"} <= set(names)
    assert set(shipped) == set(expected)
    for k, doc in shipped.items():
        assert doc["key"] == k
        assert doc["code"] == expected[k]["code"] and doc["symbols"] == expected[k]["symbols"]


def no_compiler_path(tmp_path: Path) -> str:
    """A PATH with every program of this machine's PATH except the C toolchain (symlinks)."""
    d = tmp_path / "bin-without-compilers"
    d.mkdir()
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not entry or not Path(entry).is_dir():
            continue
        for prog in Path(entry).iterdir():
            n = prog.name
            if n in COMPILERS or n.startswith(("gcc", "g++", "ld.", "x86_64-linux-gnu-", "i686-", "clang")):
                continue
            if not (d / n).exists():
                (d / n).symlink_to(prog)
    return str(d)


def test_a_second_build_of_a_rom_needs_no_binutils(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vmirom.hypervisors.vmi import Vmi

    class Fresh(Vmi):  # a ROM no one built before: its own product string
        rom_product = f"cache test {tmp_path.name[-20:]}"

    monkeypatch.setenv("VMIROM_ROM_CACHE", str(tmp_path / "cache"))
    first = build_rom(Fresh().rom_spec())
    entries = list((tmp_path / "cache").glob("*.json"))
    assert entries
    monkeypatch.setenv("PATH", no_compiler_path(tmp_path))
    assert shutil.which("as") is None and shutil.which("ld") is None
    again = build_rom(Fresh().rom_spec())
    assert again.data == first.data
    # a damaged entry is not trusted: without binutils that ROM can no longer be built
    for e in entries:
        e.write_text("{not json")
    from vmirom.rom import RomError

    with pytest.raises(RomError, match="binutils"):
        build_rom(Fresh().rom_spec())


@pytest.mark.slow
def test_pip_install_then_demo_and_run_with_no_compiler(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of this checkout leaks in
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=clean)
    py = venv / "bin" / "python"
    p = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                       capture_output=True, text=True, timeout=1800, env=clean)
    assert p.returncode == 0, p.stderr[-3000:]
    installed = subprocess.run([str(py), "-c", "import vmirom; print(vmirom.__file__)"], env=clean,
                               capture_output=True, text=True, cwd=tmp_path)
    assert str(venv) in installed.stdout, installed.stdout + installed.stderr
    env = dict(clean, PATH=os.pathsep.join([str(venv / "bin"), no_compiler_path(tmp_path)]),
               VMIROM_ROM_CACHE=str(tmp_path / "empty-rom-cache"), COLUMNS="200")
    for tool in ("gcc", "cc", "as", "ld"):
        assert shutil.which(tool, path=env["PATH"]) is None
    where = subprocess.run(["vmirom", "guest", "path"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert where.returncode == 0 and "_prebuilt" in where.stdout, where.stdout + where.stderr
    demo = subprocess.run(["vmirom", "demo", "--json", "demo.json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=3000)
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-3000:]
    doc = json.loads((tmp_path / "demo.json").read_text())
    names = {r["hypervisor"] for r in doc["results"]}
    listed = subprocess.run(["vmirom", "hypervisors", "--json", "-"], env=env, capture_output=True, text=True)
    assert {h["name"] for h in json.loads(listed.stdout)["hypervisors"]} <= names
    for r in doc["results"]:
        st = r["outcome"]["selftest"]
        assert st["failed"] == 0 and st["passed"] == st["total"] >= 29, r["hypervisor"]
    run = subprocess.run(["vmirom", "run", "-q", "-H", "vmi2", "--json", "run.json"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    res = json.loads((tmp_path / "run.json").read_text())
    assert res["binding"]["vmi"]["status"] == "bound" and res["personality"]["kernel_ring"] == 1
    # every ROM came from the wheel: nothing was assembled (there is no assembler) or cached
    assert not list((tmp_path / "empty-rom-cache").glob("*.json"))
    # the guest cannot be rebuilt from a wheel, and says why
    gb = subprocess.run(["vmirom", "guest", "build"], env=env, capture_output=True, text=True, timeout=120)
    assert gb.returncode == 1 and "needs a vmirom checkout" in gb.stderr
