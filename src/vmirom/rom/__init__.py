"""VMI ROM images: build them from a RomSpec, read them, check them with the guest's rules.

The names are loaded on first use (PEP 562): building a ROM needs only the assembler side
(spec, build, asm), so the package build (setup.py prebuilds the built-in ROMs) can import it
without Unicorn and capstone, which only reading/checking ROMs needs."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "CallEntry": ".spec", "RomError": ".spec", "RomSpec": ".spec",
    "RomImage": ".build", "build_rom": ".build",
    "check_rom": ".check",
    "RomInfo": ".reader", "read_rom": ".reader",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)
