"""Target modifiers: `NAME+mod1+mod2` runs personality NAME with engine options changed.

`vmirom run -H bare+stock` and `vmirom bench --hypervisors bare,bare+stock,...` use them, so the
before and after of an engine change are measured side by side in one interleaved run.  This is
the ONE place they are parsed; a new modifier is a new field of `EngineOptions` plus an entry in
`MODIFIERS` (and whatever makes the child process honour the field).

    +stock    the stock libunicorn of the `unicorn` wheel (the "before" of docs/engine.md)
    +patched  our patched libunicorn (the default when it is built)
    +py       the Python path for every exit (no compiled engine core: vmirom.engines.core)

A library can only be chosen before unicorn is loaded, so a target whose build differs from the
one loaded here runs in a freshly exec'd interpreter (vmirom.childproc); the others are forked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SEPARATOR = "+"


@dataclass(frozen=True)
class EngineOptions:
    """How the engine of one VM is set up (picklable: it travels to the VM's child process)."""

    build: str | None = None  # None: this process's library; "stock" / "patched": that libunicorn
    core: str | None = None  # None: $VMIROM_ENGINE_CORE or the default; "python" / "c" (engines.core)

    @property
    def suffix(self) -> str:
        """The modifiers that give these options, e.g. "+stock" ("" for the defaults)."""
        return "".join(SEPARATOR + m for m, change in MODIFIERS.items()
                       if all(getattr(self, k) == v for k, v in change.items()))


#: modifier -> the fields it sets
MODIFIERS: dict[str, dict[str, object]] = {
    "stock": {"build": "stock"},
    "patched": {"build": "patched"},
    "py": {"core": "python"},
}


class TargetError(ValueError):
    """A target name with an unknown or contradictory modifier."""


def parse_target(name: str) -> tuple[str, EngineOptions]:
    """"bare+stock" -> ("bare", EngineOptions(build="stock")).  The base name is not checked here."""
    base, *mods = name.split(SEPARATOR)
    opts = EngineOptions()
    set_by: dict[str, str] = {}
    for m in mods:
        change = MODIFIERS.get(m)
        if change is None:
            known = ", ".join(SEPARATOR + k for k in MODIFIERS)
            raise TargetError(f"unknown modifier {SEPARATOR}{m!r} in {name!r} (known: {known})")
        for k in change:
            if k in set_by and set_by[k] != m:
                raise TargetError(f"{name!r}: {SEPARATOR}{set_by[k]} and {SEPARATOR}{m} exclude each other")
            set_by[k] = m
        opts = replace(opts, **change)  # type: ignore[arg-type]
    if not base:
        raise TargetError(f"{name!r}: no personality before the modifiers")
    return base, opts
