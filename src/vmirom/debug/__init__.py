"""Debugging and observability of a running VM: the gdb remote stub (gdbstub), the crash report
of a VM that ended badly (crashdump), per-exit traces in the Chrome/Perfetto format (trace), and the
deterministic clock that makes two runs give the same exits (determinism)."""
