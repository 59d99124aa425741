"""The registry of hypervisor personalities.

Built-ins are registered here; third-party ones come from the `vmirom.hypervisors` entry-point group
(each entry point names a `Personality` subclass) or from `register(cls)` at run time.

Rules a plugin author can rely on (docs/plugins.md):
* an entry point is registered under ITS name (`acme = pkg:Cls` -> `-H acme`), whatever `Cls.name`
  says: the name a user installs is the name they type;
* a plugin never silently replaces a built-in: a clash is refused with a warning unless the class
  sets `replaces_builtin = True` (or `register(cls, replace=True)`);
* a plugin built for another major version of the personality API (`requires_api`) is refused.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings

from vmirom.hypervisors.base import Personality

ENTRY_POINT_GROUP = "vmirom.hypervisors"
#: modules holding built-in personalities (every named Personality subclass defined in them is registered;
#: a module that does not exist yet is skipped)
_BUILTINS = (
    "vmirom.hypervisors.bare",
    "vmirom.hypervisors.fullvirt",
    "vmirom.hypervisors.vmi",
    "vmirom.hypervisors.vmi2",
    "vmirom.hypervisors.hwassist",
)
_registry: dict[str, type[Personality]] = {}
_origin: dict[str, str] = {}  # name -> "builtin", "register()" or "entry point <dist>"
_loaded = False


class UnknownHypervisor(KeyError):
    def __str__(self) -> str:
        return f"unknown hypervisor {self.args[0]!r}; known: {', '.join(names())}"


def register(cls: type[Personality], name: str | None = None, *, replace: bool = False,
             origin: str = "register()") -> type[Personality]:
    """Register a personality class (usable as a decorator) under `name` (default `cls.name`).

    Re-registering a plugin's name replaces it; replacing a BUILT-IN needs `replace=True` or the
    class attribute `replaces_builtin = True` (ValueError otherwise)."""
    from vmirom.plugin import check_api

    if not (isinstance(cls, type) and issubclass(cls, Personality)):
        raise TypeError(f"{cls!r} is not a Personality subclass")
    name = name or cls.name
    if not name or name == "?":
        raise ValueError(f"{cls.__name__} has no name")
    check_api(cls)
    if _origin.get(name) == "builtin" and _registry.get(name) is not cls \
            and not (replace or cls.replaces_builtin):
        raise ValueError(f"{cls.__name__} would replace the built-in personality {name!r}; set "
                         "`replaces_builtin = True` on the class to mean it")
    _registry[name] = cls
    _origin[name] = origin
    return cls


def origin(name: str) -> str:
    """Where personality `name` comes from: "builtin", "register()" or "entry point <dist>"."""
    _load()
    return _origin.get(name, "?")


def unregister(name: str) -> None:
    _registry.pop(name, None)
    _origin.pop(name, None)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTINS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue  # not written yet (another helper's file)
            raise
        for obj in vars(mod).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, Personality)
                and obj.__module__ == module
                and obj.name not in ("", "?")
            ):
                if obj.name not in _registry:
                    _registry[obj.name] = obj
                    _origin[obj.name] = "builtin"
    try:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # noqa: BLE001 - broken metadata must not break the VMM
        eps = []
    for ep in eps:
        dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
        try:
            register(ep.load(), ep.name, origin=f"entry point {dist}")
        except Exception as e:  # noqa: BLE001 - a broken plugin is reported, not fatal
            warnings.warn(f"hypervisor plugin {ep.name!r} ({dist}) not loaded: {e}", stacklevel=2)


def get(name: str) -> type[Personality]:
    """The personality class called `name` (raises UnknownHypervisor)."""
    _load()
    try:
        return _registry[name]
    except KeyError:
        raise UnknownHypervisor(name) from None


def names() -> list[str]:
    """Registered names, built-ins first in their canonical order."""
    _load()
    order = ["bare", "fullvirt", "vmi", "vmi2", "hwassist"]
    return [n for n in order if n in _registry] + sorted(n for n in _registry if n not in order)


def create(name: str) -> Personality:
    """An instance of personality `name`; its `name` is the registered one (an entry point's name
    wins over the class attribute, so the summary says what the user typed)."""
    cls = get(name)
    obj = cls()
    if obj.name != name:
        obj.name = name
    return obj
