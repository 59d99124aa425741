"""The child process a VM runs in: forked, or a fresh interpreter when it needs another libunicorn.

Every VM runs in a child (the engine can abort its process; see vmirom.runner).  Forking is the
cheap way and keeps everything already imported.  But a process holds one libunicorn, chosen when
`unicorn` is first imported (vmirom.engines.libunicorn), so a VM asking for another engine build
than the one loaded here (`bare+stock` next to `bare` in one bench run) needs a new interpreter:
`python -m vmirom.childproc` with $VMIROM_ENGINE_BUILD set, which picks the library before
anything imports unicorn.  Both kinds look the same to the caller: an object with is_alive(),
kill(), join(timeout) and exitcode (negative: killed by that signal, as multiprocessing's), and
the read end of a pipe (multiprocessing.connection.Connection) on which the child sends results.

The child function is called as fn(*args, conn) and must send its results on conn and close it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from vmirom.engines import libunicorn
from vmirom.procutil import die_with_parent


class ExecProcess:
    """A `multiprocessing.Process`-like view of an exec'd child."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()

    def join(self, timeout: float | None = None) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    @property
    def exitcode(self) -> int | None:
        return self.popen.returncode


def needs_exec(build: str | None) -> bool:
    """Whether a VM asking for engine `build` (None: whatever this process uses) must be exec'd."""
    if build is None or "unicorn" not in sys.modules:
        return False  # a forked child chooses its library itself, before importing unicorn
    return libunicorn.loaded_build() != build


def start(fn: Callable[..., None], args: tuple, build: str | None = None) -> tuple[Any, Connection]:
    """Run fn(*args, conn) in a child using engine `build`; returns (process, read end of conn)."""
    sys.stdout.flush()
    if not needs_exec(build):
        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_forked, args=(fn, args, build, child), daemon=True)
        proc.start()
        child.close()
        return proc, parent
    res_r, res_w = os.pipe()
    req_r, req_w = os.pipe()
    env = {**os.environ, libunicorn.ENV_BUILD: str(build)}
    env.pop(libunicorn.ENV_LIBPATH, None)
    try:
        popen = subprocess.Popen([sys.executable, "-m", "vmirom.childproc", str(req_r), str(res_w)],
                                 pass_fds=(req_r, res_w), env=env, preexec_fn=die_with_parent)
    finally:
        os.close(req_r)
        os.close(res_w)
    try:
        with os.fdopen(req_w, "wb") as f:  # the child reads it whole before it starts the VM
            pickle.dump((fn, args), f)
    except BrokenPipeError:
        pass  # the child died at once: the caller sees a dead process and an empty pipe
    return ExecProcess(popen), Connection(res_r, writable=False)


def _forked(fn: Callable[..., None], args: tuple, build: str | None, conn: Connection) -> None:
    if build is not None:
        libunicorn.choose(build)  # no-op when unicorn is loaded (then it is the right one already)
    fn(*args, conn)


def main(argv: list[str]) -> None:
    """Entry of an exec'd child: read (fn, args) from the request pipe, run fn with the result pipe."""
    with os.fdopen(int(argv[0]), "rb") as f:
        fn, args = pickle.load(f)
    fn(*args, Connection(int(argv[1]), readable=False))


if __name__ == "__main__":
    main(sys.argv[1:])
