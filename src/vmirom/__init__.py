"""vmirom: the Virtual Machine Interface (VMI 3.0) for 32-bit x86, in Python."""

__version__ = "0.1.0"

# Before anything imports `unicorn`: point its binding at the engine build to load (our patched
# libunicorn when it is built; see vmirom.engines.libunicorn).  Cheap: no import of unicorn here.
from vmirom.engines.libunicorn import choose as _choose_engine  # noqa: E402

_choose_engine()
