"""`vmirom run --deterministic [--icount N]`: guest time driven by guest progress, so that two runs
of the same kernel, initrd and command line give the same exits, the same console and the same
trace (timestamps included; only host-time fields such as a handler's duration differ).

Normally guest time is the vCPU thread's CPU time (`vmirom.machine.clock`) and slices end by a
POSIX timer (engine W7): timer interrupts land wherever the host's speed puts them, and two runs
differ (the issue measured 75,486 / 75,522 / 75,474 exits for one boot).  Here, as with QEMU's
`-icount shift=N,sleep=off`:

* guest time = instructions retired x 2**shift ns (+ idle time skipped to the next deadline), read
  from Unicorn's own instruction counter (engine W17), also inside exit handlers;
* every slice is a counted slice that ends exactly at the next timer deadline or at the next
  point of a fixed grid (GRID_NS of guest time) - absolute positions, so a slice that a
  breakpoint or a stop splits in two ends where it would have ended anyway: stopping in gdb does
  not move a single interrupt;
* the VMI wall clock is a fixed epoch plus guest time;
* the compiled engine core, which decides from the thread's CPU clock whether an interrupt is due
  at an exit, is switched off (`MachineCore.disable`): every exit takes the Python path.

What it costs: `emu_start(count=N)` makes Unicorn call its counting hook before every
instruction (W7) - measured in docs/debugging.md.

Console input (`-i`) is taken at deterministic points: one byte each time the guest halts with
the UART's receive queue empty, waiting for it if need be (`_input_at_halts`), never between
slices.  Piped input therefore gives the same run every time; with a person typing, guest time
stands still while the guest waits for the next key.

What stays nondeterministic: the native `rdtsc` instruction, which Unicorn answers from the host
clock with no hook to intercept it (the reference kernel uses it only on personalities without a
VMI timer, to interpolate clock_ns() between timer ticks; VMI personalities go through the ROM's
RDTSC/cycle-counter calls, which read this clock).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmirom.machine import Machine

GRID_NS = 1_000_000  # slices end at least every 1 ms of guest time (the run loop's polling rate)
WALL_EPOCH_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z: the wall clock of every such run


def make_deterministic(machine: Machine, shift: int = 0) -> None:
    """Switch `machine` (before it runs) to instruction-counted time and slices."""
    eng = machine.engine
    eng.icount()  # raises EngineError when the engine cannot count
    core = getattr(machine, "core", None)
    if core is not None and core.accel:
        # the compiled core decides "interrupt due at this exit?" by the thread's CPU clock
        core.disable("--deterministic: guest time counts instructions; the core reads the CPU clock")
    clock = machine.clock
    clock.drive_by(lambda: eng.icount() << shift, WALL_EPOCH_NS)
    run_slice = eng.run_slice

    def counted_slice(timeout_us: int = 0, count: int = 0):
        if count:  # a debugger's single step
            return run_slice(timeout_us, count)
        now = clock.now_ns()
        end = (now // GRID_NS + 1) * GRID_NS
        nxt = machine.next_deadline()
        if nxt is not None and now < nxt < end:
            end = nxt
        return run_slice(0, max(1, (end - now) >> shift))

    eng.run_slice = counted_slice
    _input_at_halts(machine)


def _input_at_halts(machine: Machine) -> None:
    """Console input only when the guest halts with nothing left to read: one byte, blocking (a
    read of "whatever has arrived" would depend on the host's timing)."""
    poll = machine.poll_console_input

    def at_halt(timeout_s: float | None = 0.0, limit: int = 256) -> bool:
        if not machine.halted or machine.uart.rx:
            return False
        return poll(None, 1)

    machine.poll_console_input = at_halt
