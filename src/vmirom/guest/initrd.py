"""The guest's initial ramdisk: a cpio "newc" archive of the user programs.

The kernel receives it as the first Multiboot module (QEMU ``-initrd``) and looks programs up in
it by name for ``exec``/``open``/``readdir`` (guest/include/syscall.h). The format is the real
SVR4 "newc" format that Linux initramfs and GNU ``cpio -H newc`` use, so ``cpio -t`` can list
our archives and the kernel's reader can be checked against archives we did not write:

    header   110 ASCII bytes: "070701" + 13 fields of 8 hex digits
             ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
             namesize (including the NUL) check (0 for newc)
    name     namesize bytes, NUL-terminated, then NULs up to a multiple of 4 from the
             start of the header
    data     filesize bytes, then NULs up to a multiple of 4
    ...      the archive ends with an entry named "TRAILER!!!" (all fields 0, nlink 1).

Builds are reproducible: mtime 0, uid/gid 0, inode numbers in archive order.

Command line (used by guest/user/Makefile, needs no installed package beyond this module)::

    vmirom guest initrd build -o guest/build/initrd.cpio FILE... [NAME=FILE ...]
    vmirom guest initrd list guest/build/initrd.cpio        (python3 -m vmirom.guest.initrd: the same)
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmirom.guest.build import BUILD_DIR, GUEST_DIR

MAGIC = b"070701"
HEADER_SIZE = 110
TRAILER = "TRAILER!!!"
FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
          "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")
MODE_PROGRAM = stat.S_IFREG | 0o755
MODE_FILE = stat.S_IFREG | 0o644
#: the longest name the kernel's readdir record carries (struct vmirom_dirent.name is 56 bytes)
NAME_MAX = 55

USER_DIR = GUEST_DIR / "user"  # GUEST_DIR, BUILD_DIR: a checkout's, or the prebuilt files (build.py)
INITRD_PATH = BUILD_DIR / "initrd.cpio"
USER_BUILD = GUEST_DIR / "build" / "user"
#: the same programs linked against a Linux shim instead of the vmirom syscalls (for tests)
USER_HOST_BUILD = GUEST_DIR / "build" / "user-host"


class InitrdError(ValueError):
    """A malformed archive or an unusable input file; the message says what and where."""


@dataclass(frozen=True)
class CpioEntry:
    """One archive member. ``mode`` is the full st_mode (file type bits included)."""

    name: str
    data: bytes = b""
    mode: int = MODE_FILE
    mtime: int = 0
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    ino: int = 0

    @property
    def is_regular(self) -> bool:
        return stat.S_ISREG(self.mode)


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def _header(values: dict[str, int]) -> bytes:
    out = bytearray(MAGIC)
    for field in FIELDS:
        v = values.get(field, 0)
        if not 0 <= v <= 0xFFFFFFFF:
            raise InitrdError(f"cpio field {field}={v} does not fit 8 hex digits")
        out += b"%08X" % v
    return bytes(out)


def _record(name: str, values: dict[str, int], data: bytes) -> bytes:
    raw_name = name.encode() + b"\0"
    values = dict(values, namesize=len(raw_name), filesize=len(data))
    head = _header(values) + raw_name
    return head + b"\0" * _pad4(len(head)) + data + b"\0" * _pad4(len(data))


def _check_name(name: str) -> None:
    if not name or name == TRAILER:
        raise InitrdError(f"invalid initrd file name {name!r}")
    if "\0" in name or "/" in name or not name.isprintable() or name in (".", ".."):
        raise InitrdError(f"initrd names are flat printable names without '/': {name!r}")
    if len(name.encode()) > NAME_MAX:
        raise InitrdError(f"initrd file name longer than {NAME_MAX} bytes: {name!r}")


def build_cpio(entries: Iterable[CpioEntry]) -> bytes:
    """Serialize ``entries`` (in order) plus the trailer. Inode numbers are assigned 1.. in
    order when an entry has ino 0; duplicate names are refused (the kernel finds the first)."""
    out = bytearray()
    seen: set[str] = set()
    for i, e in enumerate(entries, start=1):
        _check_name(e.name)
        if e.name in seen:
            raise InitrdError(f"duplicate initrd file name {e.name!r}")
        seen.add(e.name)
        out += _record(e.name, {"ino": e.ino or i, "mode": e.mode, "uid": e.uid, "gid": e.gid,
                                "nlink": e.nlink, "mtime": e.mtime}, e.data)
    out += _record(TRAILER, {"nlink": 1}, b"")
    return bytes(out)


def read_cpio(blob: bytes) -> list[CpioEntry]:
    """Parse a newc archive (also the "070702" CRC variant) up to its trailer.

    Raises InitrdError for anything the kernel's reader must also refuse: a bad magic,
    non-hex fields, a name without its NUL, a member running past the end, a missing trailer."""
    entries: list[CpioEntry] = []
    off = 0
    n = len(blob)
    while True:
        if off + HEADER_SIZE > n:
            raise InitrdError(f"truncated cpio header at offset {off} (archive has no {TRAILER})")
        magic = blob[off:off + 6]
        if magic not in (b"070701", b"070702"):
            raise InitrdError(f"bad cpio magic {magic!r} at offset {off} (want 070701, newc)")
        vals: dict[str, int] = {}
        for k, field in enumerate(FIELDS):
            raw = blob[off + 6 + 8 * k: off + 14 + 8 * k]
            try:
                text = raw.decode("ascii")
                if len(text) != 8 or not all(c in "0123456789abcdefABCDEF" for c in text):
                    raise ValueError
                vals[field] = int(text, 16)
            except ValueError:
                raise InitrdError(f"cpio field {field} at offset {off} is not 8 hex digits: {raw!r}") \
                    from None
        namesize, filesize = vals["namesize"], vals["filesize"]
        name_off = off + HEADER_SIZE
        if namesize == 0 or name_off + namesize > n:
            raise InitrdError(f"cpio name of size {namesize} at offset {off} runs past the end")
        raw_name = blob[name_off:name_off + namesize]
        if raw_name[-1] != 0 or 0 in raw_name[:-1]:
            raise InitrdError(f"cpio name at offset {off} is not a NUL-terminated string")
        try:
            name = raw_name[:-1].decode()
        except UnicodeDecodeError:
            raise InitrdError(f"cpio name at offset {off} is not UTF-8") from None
        data_off = name_off + namesize
        data_off += _pad4(data_off)
        if data_off + filesize > n:
            raise InitrdError(f"cpio member {name!r} ({filesize} bytes) runs past the end of the archive")
        if name == TRAILER:
            return entries
        data = blob[data_off:data_off + filesize]
        entries.append(CpioEntry(name=name, data=bytes(data), mode=vals["mode"], mtime=vals["mtime"],
                                 uid=vals["uid"], gid=vals["gid"], nlink=vals["nlink"], ino=vals["ino"]))
        off = data_off + filesize
        off += _pad4(off)


def _is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def entry_for_file(path: Path, name: str | None = None) -> CpioEntry:
    """An archive member for a host file: programs (ELF, or executable on the host) get mode
    0755, other files 0644. The name defaults to the file's base name."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InitrdError(f"cannot read {path}: {e.strerror}") from None
    executable = _is_elf(data) or os.access(path, os.X_OK)
    return CpioEntry(name=name or path.name, data=data, mode=MODE_PROGRAM if executable else MODE_FILE)


def build_initrd(files: Sequence[Path | tuple[str, Path]], out: Path) -> list[CpioEntry]:
    """Write the initrd for ``files`` (paths, or (name, path) pairs) to ``out``; returns the
    entries. The file is replaced atomically so a failed build leaves no half archive."""
    entries = [entry_for_file(f[1], f[0]) if isinstance(f, tuple) else entry_for_file(Path(f))
               for f in files]
    blob = build_cpio(entries)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(out)
    return entries


def build_user_space(target: str = "all", timeout: float = 600.0) -> Path:
    """Run ``make -C guest/user TARGET`` (a no-op when up to date): ``all`` builds the programs
    and the initrd (returned), ``host`` the Linux-shim variants (their directory is returned)."""
    try:
        proc = subprocess.run(["make", "-C", str(USER_DIR), target], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InitrdError(f"make -C {USER_DIR} {target} failed to run: {e}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-25:])
        raise InitrdError(f"building the user programs failed (make exit {proc.returncode}):\n{tail}")
    return USER_HOST_BUILD if target == "host" else INITRD_PATH


def parse_file_arg(arg: str) -> Path | tuple[str, Path]:
    if "=" in arg and not Path(arg).exists():
        name, _, path = arg.partition("=")
        return (name, Path(path))
    return Path(arg)


if __name__ == "__main__":  # guest/user/Makefile's spelling of `vmirom guest initrd`
    from vmirom.guest.cli import guest_initrd

    guest_initrd(prog_name="python3 -m vmirom.guest.initrd")


def reference_initrd(kernel: str, explicit: str | None, no_initrd: bool, kernel_given: bool) -> str | None:
    """The initrd `vmirom run`/`demo`/`guest qemu` pass: the explicit one; none with --no-initrd; the
    built reference initrd when the kernel is the reference kernel (default or named); else none."""
    if no_initrd:
        return None
    if explicit:
        return explicit
    from vmirom.guest.build import KERNEL_PATH

    if kernel_given:
        try:
            if Path(kernel).resolve() != KERNEL_PATH.resolve():
                return None
        except OSError:
            return None
    return str(INITRD_PATH) if INITRD_PATH.is_file() else None
