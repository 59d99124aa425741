"""Assembled ROM code, cached by content, so that booting needs no binutils.

What is cached is the assembler's output for one complete ROM source (`render_source`): the
linked bytes and every label's offset.  The key is the sha256 of that source, so a changed stub,
spec or layout is a different entry. Nothing is ever invalidated, and a stale entry cannot be
hit.  Two places are looked in, in order:

1. `vmirom/_prebuilt/rom/`: the built-in ROMs (every built-in personality and `rom variants`),
   assembled by the package build (setup.py -> `prebuild`) and shipped in the wheel;
2. the user cache: `$VMIROM_ROM_CACHE`, else `$XDG_CACHE_HOME/vmirom/rom`, else
   `~/.cache/vmirom/rom` (`VMIROM_ROM_CACHE=off` disables it).  A new ROM, e.g. a plugin's, is
   assembled once and stored here.

A damaged entry (unreadable, wrong key, bad JSON) is ignored and the source is assembled again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .asm import Assembled, assemble

PREBUILT_DIR = Path(__file__).resolve().parents[1] / "_prebuilt" / "rom"
FORMAT = 1


def key(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def user_dir() -> Path | None:
    """The user cache directory (None: disabled)."""
    env = os.environ.get("VMIROM_ROM_CACHE")
    if env:
        return None if env == "off" else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmirom" / "rom"


def _read(path: Path, k: str) -> Assembled | None:
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != FORMAT or doc.get("key") != k:
            return None
        symbols = {str(n): int(v) for n, v in doc["symbols"].items()}
        return Assembled(bytes.fromhex(doc["code"]), symbols)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def lookup(source: str) -> Assembled | None:
    """The cached assembly of `source`, from the package's prebuilt ROMs or the user cache."""
    k = key(source)
    for d in (PREBUILT_DIR, user_dir()):
        if d is not None:
            hit = _read(d / f"{k}.json", k)
            if hit is not None:
                return hit
    return None


def store(source: str, asm: Assembled, directory: Path | None = None) -> Path | None:
    """Write the entry (atomically) to `directory` (default: the user cache); None if it cannot."""
    d = directory if directory is not None else user_dir()
    if d is None:
        return None
    k = key(source)
    doc = {"format": FORMAT, "key": k, "code": asm.code.hex(), "symbols": asm.symbols}
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, sort_keys=True)
        os.replace(tmp, d / f"{k}.json")
    except OSError:
        return None
    return d / f"{k}.json"


def cached_assemble(source: str) -> Assembled:
    """`assemble(source)`, unless the same source was assembled before (then no binutils needed)."""
    hit = lookup(source)
    if hit is not None:
        return hit
    asm = assemble(source)
    store(source, asm)
    return asm


def builtin_specs() -> Iterator[tuple[str, object]]:
    """(name, RomSpec) of every built-in ROM: the built-in personalities' and the variants."""
    from vmirom.hypervisors import registry

    from .variants import VARIANTS

    for name in registry.names():
        if registry.origin(name) != "builtin":
            continue
        spec = registry.get(name)().rom_spec()
        if spec is not None:
            yield f"hypervisor {name}", spec
    for v in VARIANTS.values():
        yield f"variant {v.name}", v.make()


def prebuild(directory: Path) -> list[str]:
    """Assemble every built-in ROM afresh into `directory` (the package build's step); returns
    the names built."""
    from . import build

    done = []
    for name, spec in builtin_specs():
        for source, asm in build.assemblies(spec):
            store(source, asm, directory)
        done.append(name)
    return done
