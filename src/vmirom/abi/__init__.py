"""The VMI API 3.0 as data: the one place its numbers and layouts are written down."""

from .calls import CALLS, CALLS_3_0, CALLS_EXTENSIONS, CLOBBER_BITS, NUM_CALLS, NUM_CALLS_3_0, Arg, Call, call
from .layout import *  # noqa: F403 - constants are the module's interface
from .layout import Field, Layout, RelocType

__all__ = ["CALLS", "CALLS_3_0", "CALLS_EXTENSIONS", "CLOBBER_BITS", "NUM_CALLS", "NUM_CALLS_3_0",
           "Arg", "Call", "call", "Field", "Layout", "RelocType"]
