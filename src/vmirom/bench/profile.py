"""Where the VMM's own time goes: one benchmark boot in this process, twice -- once plain (the
probe's per-hook handler times: calls, total, mean per exit kind) and once under cProfile (the
Python functions behind them).  For docs/performance.md; not part of `vmirom bench`, because
cProfile multiplies the cost of every Python call and would distort the benchmark itself.

    vmirom bench profile vmi -n 200 null_syscall fork_exit page_fault
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
from pathlib import Path

from vmirom.bench import runs


def handler_table(profile: dict[str, dict[str, float]]) -> str:
    """The probe's handler profile as Markdown: per hook, calls, share of handler time, mean."""
    total = profile.get("_total", {})
    rows = {k: v for k, v in profile.items() if not k.startswith(("_", "core:phase:"))}
    phases = {k[len("core:phase:"):]: v for k, v in profile.items() if k.startswith("core:phase:")}
    spent = sum(v["ns"] for v in rows.values()) or 1
    out = ["| exit hook | calls | handler time | share | mean per call |", "|---|---|---|---|---|"]
    for k, v in sorted(rows.items(), key=lambda kv: -kv[1]["ns"]):
        out.append(f"| {k} | {int(v['calls'])} | {v['ns'] / 1e6:.1f} ms | {v['ns'] / spent:.0%} | "
                   f"{v['mean_ns'] / 1e3:.1f} µs |")
    if phases:  # where a C-completed exit's time goes (the core:* rows above)
        out.append("\n| C core, per completed exit | mean |\n|---|---|")
        out += [f"| {k.replace('_', ' ').replace(':', ': ')} | {v['mean_ns'] / 1e3:.2f} µs |"
                for k, v in phases.items() if v["calls"]]
    wall = total.get("wall_ns")
    if wall:
        out.append(f"\nwall {wall / 1e6:.0f} ms, of which in exit handlers {total['handler_ns'] / wall:.0%} "
                   f"({total.get('exits')} exits)")
    return "\n".join(out)


DEFAULT_TESTS = ("null_syscall", "pipe_latency", "fork_exit", "page_fault")


def run(target_name: str, tests: list[str], iterations: int, top: int, kernel: str | None,
        initrd: str | None) -> int:
    """`vmirom bench profile`: print the handler table and the cProfile listing; the exit status."""
    from vmirom.guest.build import BuildError, build_kernel
    from vmirom.guest.initrd import INITRD_PATH

    try:
        target = runs.Target.parse(target_name)
        if target.platform in runs.QEMU_PLATFORMS:
            raise runs.BenchError("QEMU runs outside this process: nothing to profile")
        unknown = [t for t in tests if t not in runs.GUEST_TESTS]
        if unknown:
            raise runs.BenchError(f"unknown tests {unknown}; known: {', '.join(runs.GUEST_TESTS)}")
        kernels = runs.Kernels(Path(kernel) if kernel else build_kernel(), None,
                               Path(initrd) if initrd else INITRD_PATH)
    except (runs.BenchError, BuildError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    workload = runs.Workload(tuple(tests), iterations=iterations, timeout_s=600)
    plain = runs.run_boot_here(target, 0, kernels, workload)
    print(f"# {target_name}: bench -n {iterations} {' '.join(tests)} -> {plain.fate} ({plain.message})\n")
    print(handler_table(plain.handler_profile))
    prof = cProfile.Profile()
    prof.enable()
    runs.run_boot_here(target, 0, kernels, workload)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("tottime").print_stats(top)
    print(f"\n## cProfile (same boot again; times inflated by the profiler), top {top} by own time\n")
    print(buf.getvalue().strip())
    return 0 if plain.fate == "exit" else 1


if __name__ == "__main__":  # the old spelling of `vmirom bench profile`
    from vmirom.bench.cli import profile_cmd

    profile_cmd(prog_name="python -m vmirom.bench.profile")
