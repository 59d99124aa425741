"""vmirom: the Virtual Machine Interface (VMI 3.0) for 32-bit x86, in Python."""

__version__ = "0.1.0"
