"""Reading the files a user hands to vmirom (kernel, initrd, ROM image, cpio archive): bounded.

Why: these inputs are as untrusted as the guest (issue 11: KERNEL=/dev/zero read until MemoryError,
a 1 GiB initrd took 1 GB of RSS before being refused).  So only regular files are read (no device,
FIFO or directory: they can be endless or block), the size is checked from `stat` BEFORE reading,
and the read itself stops one byte past the limit (a file that grows meanwhile is still refused).
Each refusal is one plain sentence naming the file, the size and the limit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: largest kernel ELF accepted (the reference kernel is ~100 KiB; RAM is at most 3 GiB anyway)
MAX_KERNEL_BYTES = 256 << 20
#: largest ROM image (the option-ROM window is 0xC0000-0xDFFFF: 128 KiB)
MAX_ROM_BYTES = 128 << 10
#: largest initrd/cpio archive read by the host tools (the VMM also bounds it by the guest's RAM)
MAX_ARCHIVE_BYTES = 1 << 30


class InputRefused(OSError):
    """An input file was refused before (or while) reading it; str() is the reason."""


def read_limited(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The bytes of regular file `path`, at most `limit` of them, else InputRefused."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        raise InputRefused(f"cannot read {what} {p}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputRefused(f"{what} {p} is not a regular file (devices, pipes and directories are refused)")
    if st.st_size > limit:
        raise InputRefused(f"{what} {p} is {st.st_size} bytes, more than the limit of {limit} bytes")
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise InputRefused(f"cannot read {what} {p}: {e.strerror or e}") from None
    if len(data) > limit:
        raise InputRefused(f"{what} {p} grew past the limit of {limit} bytes while being read")
    return data
