"""The hypercall fuzzer: a tiny ring-1 guest (tests/guests/hypercall_fuzz.S) calls random VMI ROM
entry points with random registers and stack arguments; the host runs it again and again with new
seeds until a call budget or a time budget is used, and checks every run's fate.

Why a guest and not Python calls into the handlers: the guest goes through everything a hostile
kernel can reach - the ROM stubs, the engine's hooks, fault delivery back into the guest, the run
loop - in the real child process `vmirom run` uses.  What counts as a failure: a VMM crash (fate
engine_crash), an engine error, a VMM bug (vmm_bug, a Python exception), a run the parent had to
kill (a hang), or a run whose host memory grew past the limit.  Every other fate (the guest exited,
triple-faulted, halted, wrote its ROM, ran out of its own time budget...) is the guest's own doing.

`vmirom`-free entry point for scripts and CI: `python -m vmirom.fuzz --personality vmi --calls N`.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

MARKER = struct.pack("<I", 0x5A5AF022)
#: fates that are a VMM failure, whatever the guest did
VMM_FAILURES = ("engine_crash", "engine_error", "vmm_bug")


@dataclass
class FuzzReport:
    personality: str
    runs: int = 0
    calls: int = 0  # hypercalls the VMM handled (its exit counters)
    faults_injected: int = 0  # exceptions delivered back into the guest
    seconds: float = 0.0
    fates: dict[str, int] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def patched(elf: bytes, seed: int, ncalls: int) -> bytes:
    """The fuzzer guest with its seed and call count written into `fuzzcfg`."""
    at = elf.find(MARKER)
    if at < 0:
        raise ValueError("not the hypercall fuzzer guest (no fuzzcfg marker)")
    return elf[: at + 4] + struct.pack("<II", seed & 0xFFFFFFFF, ncalls) + elf[at + 12 :]


def campaign(
    elf: bytes, personality: str, *, calls: int, seconds: float, seed: int = 1, per_run: int = 20000,
    run_timeout: float = 60.0, workdir: Path, progress=None,
) -> FuzzReport:
    """Run the fuzzer guest until `calls` hypercalls were made or `seconds` passed."""
    from vmirom.runner import RunRequest, run_isolated

    rep = FuzzReport(personality)
    rng = random.Random(seed)
    t0 = time.monotonic()
    path = workdir / f"fuzz-{personality}.elf"
    while rep.calls < calls and time.monotonic() - t0 < seconds:
        run_seed = rng.getrandbits(32)
        path.write_bytes(patched(elf, run_seed, per_run))
        r = run_isolated(RunRequest(personality, str(path), "", run_timeout, echo=False))
        rep.runs += 1
        kinds = (r.get("metrics") or {}).get("kinds") or {}
        rep.calls += kinds.get("hypercall", 0)
        rep.faults_injected += kinds.get("exception", 0)
        fate = r.get("fate", "?")
        rep.fates[fate] = rep.fates.get(fate, 0) + 1
        hung = fate == "timeout" and "budget" not in str(r.get("message"))
        if fate in VMM_FAILURES or hung or "traceback" in r:
            rep.failures.append(
                {"run": rep.runs, "seed": run_seed, "fate": fate, "message": r.get("message")}
            )
        if progress is not None:
            progress(rep, time.monotonic() - t0)
    rep.seconds = round(time.monotonic() - t0, 1)
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--personality", "-H", default="vmi")
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=3600.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--per-run", type=int, default=20000, help="calls per VM run (a new seed each)")
    ap.add_argument("--run-timeout", type=float, default=60.0, help="wall-clock budget of one run")
    ap.add_argument("--guest", required=True, help="the built hypercall_fuzz ELF")
    args = ap.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        def progress(rep: FuzzReport, elapsed: float) -> None:
            print(f"{elapsed:8.0f} s  runs {rep.runs}  calls {rep.calls}  failures {len(rep.failures)}",
                  file=sys.stderr, flush=True)
            if rep.failures and rep.failures[-1].get("run") == rep.runs:
                print(f"  FAILURE {json.dumps(rep.failures[-1])}", file=sys.stderr, flush=True)

        rep = campaign(Path(args.guest).read_bytes(), args.personality, calls=args.calls,
                       seconds=args.seconds, seed=args.seed, per_run=args.per_run,
                       run_timeout=args.run_timeout, workdir=Path(d), progress=progress)
    print(rep.as_json())
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
