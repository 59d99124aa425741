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
