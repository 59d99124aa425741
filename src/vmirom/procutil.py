"""Small process helpers shared by the parts of vmirom that start other programs."""

from __future__ import annotations


def die_with_parent() -> None:
    """For `subprocess.Popen(preexec_fn=...)`: the child gets SIGKILL when its parent dies (Linux prctl
    PR_SET_PDEATHSIG).  Why: a killed `vmirom bench` or `vmirom guest qemu` must not leave a VM or
    a QEMU running on its own, with nobody left to enforce its time budget."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def peak_rss_kib() -> int:
    """Peak resident memory of this process's own address space in KiB (`VmHWM`).

    Why not `getrusage().ru_maxrss`: Linux carries that figure over `exec` from the address space
    the process was spawned from, so a VM or a helper started by a large parent (a long pytest run,
    `vmirom bench`) reports the parent's peak - and a memory cap based on it trips with no guest
    doing anything.  Falls back to ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
