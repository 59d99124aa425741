"""Build the patched libunicorn that vmirom runs on (`vmirom engine build`; scripts/setup.sh).

Steps, each visible on the terminal:
  1. the source: PyPI's unicorn-2.1.4 sdist (`pip download --no-binary :all:`), checked against the
     pinned sha256 and kept in the cache (or $VMIROM_UNICORN_SDIST, a local copy of that archive);
  2. unpack it and apply patches/unicorn-2.1.4-vmirom.patch (`patch -p1`);
  3. cmake + make of the x86 target only (UNICORN_ARCH=x86: ~1 min on 2 cores instead of ~15 for
     all ten architectures), progress shown from make's percentages;
  4. a smoke test in a fresh interpreter (the binding must load THIS file and run guest code);
  5. install: the library and vmirom-build.json move into the cache directory named by the build
     key (libunicorn.build_dir) in one rename, so a half-built library is never picked up.
A second run finds the directory and returns at once.  A lock file serialises concurrent builds.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click

from vmirom.cliutil import exit_epilog
from vmirom.engines import libunicorn as lu

SDIST_NAME = f"unicorn-{lu.UNICORN_VERSION}.tar.gz"
_PERCENT = re.compile(r"^\[\s*(\d+)%\]")


class EngineBuildError(Exception):
    """The patched engine could not be built (the message says which step and why)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_source(say: Callable[[str], None]) -> Path:
    """The verified source archive (downloaded once into the cache)."""
    local = os.environ.get("VMIROM_UNICORN_SDIST")
    src_dir = lu.cache_root() / "engine" / "src"
    cached = Path(local) if local else src_dir / SDIST_NAME
    if not cached.is_file():
        src_dir.mkdir(parents=True, exist_ok=True)
        say(f"downloading the unicorn {lu.UNICORN_VERSION} source package from PyPI")
        with tempfile.TemporaryDirectory(dir=src_dir) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                   "--disable-pip-version-check", "-q", "-d", tmp, f"unicorn=={lu.UNICORN_VERSION}"]
            p = subprocess.run(cmd, capture_output=True, text=True, check=False)
            got = Path(tmp) / SDIST_NAME
            if p.returncode != 0 or not got.is_file():
                raise EngineBuildError(f"pip download failed: {(p.stderr or p.stdout).strip()[-800:]}")
            os.replace(got, cached)
    digest = _sha256(cached)
    if digest != lu.SDIST_SHA256:
        raise EngineBuildError(f"{cached}: sha256 {digest}, expected {lu.SDIST_SHA256}")
    return cached


def _run_logged(cmd: list[str], cwd: Path, log: Path, on_line: Callable[[str], None] | None = None) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if on_line is not None:
                on_line(line)
        rc = proc.wait()
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise EngineBuildError(f"`{' '.join(cmd[:3])} ...` failed (status {rc}); log {log}:\n{tail}")


class _Progress:
    """make's `[ NN%]` lines as one updating line on a terminal, or every 10 % otherwise."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say, self.last, self.tty = say, -1, sys.stdout.isatty()
        self.t0 = time.monotonic()

    def __call__(self, line: str) -> None:
        m = _PERCENT.match(line)
        if not m:
            return
        pct = int(m.group(1))
        step = pct if self.tty else pct // 10 * 10
        if step <= self.last:
            return
        self.last = step
        text = f"compiling libunicorn (x86): {pct:3d}%  {time.monotonic() - self.t0:5.0f} s"
        if self.tty:
            sys.stdout.write("\r  " + text)
            sys.stdout.flush()
        else:
            self.say(text)

    def done(self) -> None:
        if self.tty and self.last >= 0:
            sys.stdout.write("\n")


def _smoke(lib_dir: Path) -> None:
    """A fresh interpreter must load this very library and run a few guest stores through it."""
    code = (
        "import sys\n"
        "from unicorn import Uc, UC_ARCH_X86, UC_MODE_32\n"
        "from unicorn.unicorn_py3.unicorn import uclib\n"
        "from unicorn.x86_const import UC_X86_REG_ECX\n"
        "uc = Uc(UC_ARCH_X86, UC_MODE_32); uc.mem_map(0, 0x10000)\n"
        # mov ecx,16; L: mov [ecx+0x2000],cl; loop L  (stores into a page, then the code reads on)
        "code = bytes.fromhex('b910000000' '8889 00200000' 'e2f8'.replace(' ', ''))\n"
        "uc.mem_write(0x1000, code); uc.emu_start(0x1000, 0x1000 + len(code))\n"
        "assert uc.reg_read(UC_X86_REG_ECX) == 0 and uc.mem_read(0x2001, 2) == b'\\x01\\x02'\n"
        "print(uclib._name)\n"
    )
    env = {**os.environ, lu.ENV_LIBPATH: str(lib_dir)}
    env.pop(lu.ENV_BUILD, None)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise EngineBuildError(f"the built library fails its smoke test: {p.stderr.strip()[-800:]}")
    if Path(p.stdout.strip()).resolve() != (lib_dir / lu.LIB_NAME).resolve():
        raise EngineBuildError(f"the binding loaded {p.stdout.strip()!r}, not the built library in {lib_dir}")


def build(*, force: bool = False, jobs: int = 2, say: Callable[[str], None] = print) -> Path:
    """Build (or find) the patched library; returns its path."""
    final = lu.build_dir()
    final.parent.mkdir(parents=True, exist_ok=True)
    with (final.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lu.patched_library() is not None and not force:
            return final / lu.LIB_NAME
        for tool in ("cmake", "make", "gcc", "patch"):
            if shutil.which(tool) is None:
                raise EngineBuildError(f"`{tool}` is not installed (scripts/setup.sh installs it)")
        t0 = time.monotonic()
        say(f"building the patched Unicorn {lu.UNICORN_VERSION} engine into {final}")
        sdist = fetch_source(say)
        work = Path(tempfile.mkdtemp(prefix="build-", dir=final.parent))
        try:
            say(f"unpacking {sdist.name} and applying {lu.PATCH.name}")
            with tarfile.open(sdist) as tar:
                tar.extractall(work, filter="data")
            src = work / f"unicorn-{lu.UNICORN_VERSION}" / "src"
            log = work / "build.log"
            _run_logged(["patch", "-p1", "--forward", "-i", str(lu.PATCH)], src, log)
            out = work / "out"
            _run_logged(["cmake", "-S", str(src), "-B", str(out), *lu.CMAKE_ARGS], work, log)
            progress = _Progress(say)
            try:
                _run_logged(["cmake", "--build", str(out), "--target", "unicorn", f"-j{jobs}"], work, log,
                            progress)
            finally:
                progress.done()
            stage = work / "install"
            stage.mkdir()
            shutil.copy2(out / lu.LIB_NAME, stage / lu.LIB_NAME)
            _smoke(stage)
            seconds = round(time.monotonic() - t0, 1)
            info = {"unicorn": lu.UNICORN_VERSION, "sdist_sha256": lu.SDIST_SHA256,
                    "patch": lu.PATCH.name, "patch_sha256": lu.patch_sha256(), "build_key": lu.build_key(),
                    "cmake_args": list(lu.CMAKE_ARGS), "jobs": jobs, "build_seconds": seconds,
                    "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            shutil.copy2(log, stage / "build.log")
            (stage / lu.INFO_NAME).write_text(json.dumps(info, indent=1) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(stage, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        say(f"built the patched engine in {seconds:.0f} s: {final / lu.LIB_NAME}")
        return final / lu.LIB_NAME


@click.group("engine")
def engine() -> None:
    """The CPU engine vmirom runs on: our patched libunicorn build (see docs/engine.md)."""


@engine.command("build", epilog=exit_epilog("(here 1 means: the build failed; the log says why)"))
@click.option("--force", is_flag=True, help="Rebuild even when the cached build is there.")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=2, show_default=True, help="make -j")
def engine_build(force: bool, jobs: int) -> None:
    """Build libunicorn 2.1.4 with vmirom's store-path fix into the cache (instant when built)."""
    try:
        path = build(force=force, jobs=jobs, say=lambda s: click.echo(f"engine: {s}"))
    except EngineBuildError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"engine: patched libunicorn ready: {path}")


@engine.command("info", epilog=exit_epilog())
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def engine_info(as_json: bool) -> None:
    """Which libunicorn this process loads (patched / stock / custom), and the expected build."""
    d = lu.describe()
    if as_json:
        click.echo(json.dumps({**d.as_json(), "expected_build_dir": str(lu.build_dir()),
                               "patched_built": lu.patched_library() is not None}, indent=1))
        return
    click.echo(f"engine in use: {d.text()}")
    if d.note:
        click.echo(f"note: {d.note}")
    click.echo(f"patched build: {lu.build_dir()} ({'built' if lu.patched_library() else 'not built'})")


if __name__ == "__main__":
    try:
        build(say=lambda s: print(f"engine: {s}", flush=True))
    except EngineBuildError as e:
        print(f"engine: ERROR: {e}", file=sys.stderr)
        sys.exit(1)
