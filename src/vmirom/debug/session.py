"""What `vmirom run --gdb/--wait/--trace/--deterministic` attach to one Machine, in one place, so
the runner only says "attach" before the run and "finish" after it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmirom.machine import Machine


class DebugSetupError(Exception):
    """The debugging options cannot be honoured (port taken, trace file not writable)."""


@dataclass
class DebugOptions:
    """Picklable: it crosses into the VM's child process with the RunRequest."""

    gdb: str | None = None  # "[HOST:]PORT" of the gdb stub
    gdb_wait: bool = False  # stop before the first instruction until gdb connects
    trace: str | None = None  # Chrome trace-event JSON file of every exit
    deterministic: bool = False  # guest time = instructions retired (vmirom.debug.determinism)
    icount_shift: int = 0  # with deterministic: 2**shift ns of guest time per instruction

    @property
    def any(self) -> bool:
        return bool(self.gdb or self.trace or self.deterministic)


class DebugSession:
    """The attached pieces of one run; `finish()` returns what goes into the run's result."""

    def __init__(self, machine: Machine, options: DebugOptions) -> None:
        self.machine = machine
        self.options = options
        self.stub = None
        self.tracer = None
        if options.deterministic:
            from vmirom.debug.determinism import make_deterministic

            make_deterministic(machine, options.icount_shift)
        if options.trace:
            from vmirom.debug.trace import ExitTracer

            try:
                self.tracer = ExitTracer(machine, options.trace)
            except OSError as e:
                raise DebugSetupError(f"cannot write the trace {options.trace}: {e.strerror or e}") from None
        core = getattr(machine, "core", None)
        if core is not None and core.accel and options.trace:
            # the compiled engine core completes exits no hook sees (--deterministic: determinism.py)
            core.disable("--trace: every exit on the Python path")
        if options.gdb:
            from vmirom.debug.gdbstub import GdbStub, parse_address

            try:
                host, port = parse_address(options.gdb)
                self.stub = GdbStub(machine, host, port, wait=options.gdb_wait)
            except (ValueError, OSError) as e:
                raise DebugSetupError(f"cannot start the gdb stub on {options.gdb}: {e}") from None
            machine.debugger = self.stub

    def finish(self) -> dict:
        out: dict = {}
        if self.stub is not None:
            self.stub.finish()
            self.machine.debugger = None
            out["gdb"] = {"address": f"{self.stub.address[0]}:{self.stub.address[1]}"}
        if self.tracer is not None:
            out["trace"] = self.tracer.close()
        if self.options.deterministic:
            out["deterministic"] = {
                "icount_shift": self.options.icount_shift,
                "instructions": self.machine.engine.icount(),
            }
        return out
