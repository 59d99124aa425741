"""Which libunicorn the `unicorn` binding loads: our patched build, or the wheel's stock library.

vmirom runs on a libunicorn 2.1.4 that it builds itself (`vmirom.engines.unicorn_build`, run by
scripts/setup.sh) with our fixes to the store path and to a bad TR
(patches/unicorn-2.1.4-vmirom.patch says why: with the stock library every guest store takes the
self-modifying-code slow path, ~10x the cost of a load, and a call gate through an unusable TR
aborts the process). The build is cached under ~/.cache/vmirom/engine/, in a directory whose name is
a key over the Unicorn version, the source archive's sha256, the patch and the build recipe, so a
changed patch is never mistaken for an old build.

The binding picks its library once, when `unicorn` is first imported: it tries the directory in
$LIBUNICORN_PATH first, then its own `unicorn/lib/`.  So the choice must be made before anything
imports unicorn; `vmirom/__init__.py` calls `choose()` for that, steered by $VMIROM_ENGINE_BUILD:

    auto (default)  the patched build when it is built, else the stock wheel (and `describe()`
                    says so); a LIBUNICORN_PATH set by the user is left alone ("custom")
    patched         the patched build (the stock wheel, with a note, when it is not built)
    stock           the wheel's own library: the "before" of every measurement (`bare+stock`)

A process can hold only one libunicorn, so a VM that needs the other build runs in a fresh
interpreter (vmirom.childproc).  `describe()` reports what was actually loaded - the path the
binding opened, not what was asked for - for `vmirom run` and the bench records.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

UNICORN_VERSION = "2.1.4"
#: sha256 of PyPI's unicorn-2.1.4.tar.gz (pip checks the index's hash too; this pins the source)
SDIST_SHA256 = "00567a70e323f749b419cd86bee4f9115beab7ebba32194581c090cbb7c59cff"
PATCH = Path(__file__).with_name("patches") / f"unicorn-{UNICORN_VERSION}-vmirom.patch"
#: how the library is configured: part of the cache key (change it and the build is redone)
CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DUNICORN_ARCH=x86",
    "-DUNICORN_BUILD_TESTS=OFF",
    "-DUNICORN_LEGACY_STATIC_ARCHIVE=OFF",
    "-DUNICORN_INSTALL=OFF",
)
LIB_NAME = "libunicorn.so.2"
INFO_NAME = "vmirom-build.json"  # written beside the built library: what it is, how it was built
ENV_BUILD = "VMIROM_ENGINE_BUILD"
ENV_LIBPATH = "LIBUNICORN_PATH"  # honoured by the 2.1.4 binding's loader (a directory)
BUILDS = ("auto", "patched", "stock")

_note: str | None = None  # why choose() did not get the build it was asked for


def cache_root() -> Path:
    """$VMIROM_CACHE_DIR, else $XDG_CACHE_HOME/vmirom, else ~/.cache/vmirom."""
    if os.environ.get("VMIROM_CACHE_DIR"):
        return Path(os.environ["VMIROM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmirom"


def patch_sha256() -> str:
    return hashlib.sha256(PATCH.read_bytes()).hexdigest()


def build_key() -> str:
    """Identifies one build: Unicorn version + source archive + patch + recipe."""
    h = hashlib.sha256()
    for part in (UNICORN_VERSION, SDIST_SHA256, patch_sha256(), *CMAKE_ARGS):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def build_dir() -> Path:
    """Where the patched library of THIS source tree lives (built or not)."""
    return cache_root() / "engine" / f"unicorn-{UNICORN_VERSION}-x86-{build_key()}"


def patched_library() -> Path | None:
    """The patched library when it is built (and its build record says it is complete)."""
    d = build_dir()
    lib, info = d / LIB_NAME, d / INFO_NAME
    return lib if lib.is_file() and info.is_file() else None


def stock_library_dir() -> Path | None:
    """The wheel's `unicorn/lib` directory, found without importing (so without loading) unicorn."""
    spec = importlib.util.find_spec("unicorn")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return d if (d / LIB_NAME).is_file() else None


def requested() -> str:
    want = os.environ.get(ENV_BUILD, "auto").strip().lower() or "auto"
    return want if want in BUILDS else "auto"


def choose(build: str | None = None) -> None:
    """Point the binding at the library for `build` (default: $VMIROM_ENGINE_BUILD, else auto).
    Must run before the first `import unicorn`; afterwards it changes nothing (see `describe`)."""
    global _note
    if "unicorn" in sys.modules:
        return
    _note = None
    want = build or requested()
    os.environ[ENV_BUILD] = want  # children (forked or exec'd) inherit the same choice
    if want == "stock":
        d = stock_library_dir()
        if d is not None:
            os.environ[ENV_LIBPATH] = str(d)
        return
    if want == "auto" and os.environ.get(ENV_LIBPATH) and not _ours(Path(os.environ[ENV_LIBPATH])):
        return  # the user's own library: reported as "custom"
    lib = patched_library()
    if lib is not None:
        os.environ[ENV_LIBPATH] = str(lib.parent)
        return
    os.environ.pop(ENV_LIBPATH, None)
    _note = (
        "the patched engine is not built (scripts/setup.sh or `vmirom engine build` builds it): "
        "running on the stock Unicorn wheel, where every guest store takes the slow path"
    )


def _ours(d: Path) -> bool:
    return (d / INFO_NAME).is_file() or d == stock_library_dir()


@dataclass(frozen=True)
class EngineBuild:
    """The libunicorn this process runs on."""

    build: str  # "patched" (ours), "stock" (the wheel's), "custom" (someone else's LIBUNICORN_PATH)
    library: str  # the file the binding loaded
    unicorn: str  # the binding's version
    patch_sha256: str | None = None  # of the patch the library was built with (patched only)
    build_key: str | None = None
    note: str | None = None  # e.g. why it is not the patched build

    def as_json(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        """One line for summaries."""
        what = {"patched": "patched (vmirom fixes)", "stock": "stock wheel", "custom": "custom"}
        s = f"unicorn {self.unicorn} {what.get(self.build, self.build)}"
        if self.patch_sha256:
            s += f", patch sha256 {self.patch_sha256[:12]}"
        return s + f": {self.library}"


def loaded_build() -> str | None:
    """"patched"/"stock"/"custom" for the library already loaded, None when unicorn is not loaded."""
    return describe().build if "unicorn" in sys.modules else None


_described: EngineBuild | None = None


def describe() -> EngineBuild:
    """What the binding loaded (imports unicorn if nothing has yet; fixed from then on)."""
    global _described
    if _described is None:
        _described = _describe()
    return _described


def _describe() -> EngineBuild:
    import unicorn
    from unicorn.unicorn_py3.unicorn import uclib  # the binding's loaded library

    lib = Path(uclib._name).resolve()
    info_file = lib.parent / INFO_NAME
    version = getattr(unicorn, "__version__", "?")
    if info_file.is_file():
        try:
            info = json.loads(info_file.read_text())
        except (OSError, ValueError):
            info = {}
        return EngineBuild("patched", str(lib), version, info.get("patch_sha256"), info.get("build_key"),
                           _note)
    stock = stock_library_dir()
    build = "stock" if stock is not None and lib == (stock / LIB_NAME).resolve() else "custom"
    note = _note
    if build == "stock" and note is None and requested() != "stock" and patched_library() is None:
        note = "the patched engine is not built: running on the stock Unicorn wheel (slower guest stores)"
    return EngineBuild(build, str(lib), version, note=note)


class EngineBuildMismatch(Exception):
    """A VM asked for an engine build this process does not run on."""


def require(build: str | None) -> EngineBuild:
    """The loaded build, checked against `build` (None: any).  A VM that asked for `+patched` or
    `+stock` must not silently run on the other library: its numbers would be filed wrongly."""
    d = describe()
    if build is not None and d.build != build:
        why = f" ({d.note})" if d.note else ""
        raise EngineBuildMismatch(f"engine build {build!r} asked for, but this process runs the {d.build} "
                                  f"library {d.library}{why}")
    return d
