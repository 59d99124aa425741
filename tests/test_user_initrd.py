"""The initrd format (cpio newc): our writer, our reader, and GNU cpio agree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmirom.guest.initrd import (
    HEADER_SIZE,
    MODE_FILE,
    MODE_PROGRAM,
    TRAILER,
    CpioEntry,
    InitrdError,
    build_cpio,
    build_initrd,
    read_cpio,
)

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None,
                                reason="GNU cpio not installed (Debian package cpio)")

ENTRIES = [
    CpioEntry("init", b"\x7fELF" + bytes(range(256)) * 3, MODE_PROGRAM),
    CpioEntry("a", b"", MODE_FILE),
    CpioEntry("motd", b"hello\n", MODE_FILE),
    CpioEntry("x" * 55, b"123", MODE_FILE),
]


def _members(blob: bytes) -> list[tuple[int, str]]:
    """(header offset, name) of every member including the trailer, walking the raw format."""
    out, off = [], 0
    while True:
        namesize = int(blob[off + 94:off + 102], 16)
        filesize = int(blob[off + 54:off + 62], 16)
        name = blob[off + HEADER_SIZE:off + HEADER_SIZE + namesize - 1].decode()
        out.append((off, name))
        if name == TRAILER:
            return out
        off += HEADER_SIZE + namesize
        off += -off % 4
        off += filesize + (-filesize % 4)


def test_round_trip_and_layout() -> None:
    blob = build_cpio(ENTRIES)
    back = read_cpio(blob)
    assert [(e.name, e.data, e.mode) for e in back] == [(e.name, e.data, e.mode) for e in ENTRIES]
    assert [e.ino for e in back] == [1, 2, 3, 4]
    members = _members(blob)
    assert [m[1] for m in members] == [e.name for e in ENTRIES] + [TRAILER]
    for off, _ in members:
        assert off % 4 == 0 and blob[off:off + 6] == b"070701"
    assert len(blob) % 4 == 0
    # the trailer has nlink 1 and everything else zero
    t = members[-1][0]
    assert int(blob[t + 38:t + 46], 16) == 1 and int(blob[t + 54:t + 62], 16) == 0


@needs_cpio
def test_gnu_cpio_lists_and_extracts_ours(tmp_path: Path) -> None:
    blob = build_cpio(ENTRIES)
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=blob, capture_output=True, check=True)
    assert listing.stdout.decode().split() == [e.name for e in ENTRIES]
    subprocess.run(["cpio", "-i", "--quiet", "--no-absolute-filenames"], input=blob, cwd=tmp_path,
                   capture_output=True, check=True)
    for e in ENTRIES:
        f = tmp_path / e.name
        assert f.read_bytes() == e.data
        assert f.stat().st_mode & 0o777 == e.mode & 0o777


@needs_cpio
def test_we_read_gnu_cpio_archives(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "one").write_bytes(b"1" * 5)
    (src / "two").write_bytes(bytes(range(200)))
    (src / "two").chmod(0o755)
    made = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=b"one\ntwo\n", cwd=src,
                          capture_output=True, check=True).stdout
    back = {e.name: e for e in read_cpio(made)}
    assert back["one"].data == b"11111" and back["two"].data == bytes(range(200))
    assert back["two"].mode == MODE_PROGRAM and back["one"].is_regular


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=55),
                          st.binary(max_size=300)),
                unique_by=lambda t: t[0], max_size=8))
def test_round_trip_property(files: list[tuple[str, bytes]]) -> None:
    files = [(n, d) for n, d in files if n not in (".", "..")]
    entries = [CpioEntry(n, d) for n, d in files]
    assert [(e.name, e.data) for e in read_cpio(build_cpio(entries))] == files


@pytest.mark.parametrize("mangle, message", [
    (lambda b: b"070707" + b[6:], "magic"),
    (lambda b: b[:HEADER_SIZE - 20], "truncated"),
    (lambda b: b[:6] + b"zz" + b[8:], "hex"),
    (lambda b: b[:-124], "runs past|truncated"),
    (lambda b: b[:HEADER_SIZE + 4], "runs past"),
])
def test_malformed_archives_are_refused(mangle, message) -> None:
    blob = build_cpio([CpioEntry("f", b"data" * 10)])
    with pytest.raises(InitrdError, match=message):
        read_cpio(mangle(blob))


def test_missing_trailer_and_bad_names() -> None:
    blob = build_cpio([CpioEntry("f", b"x")])
    first = blob[:_members(blob)[1][0]]
    with pytest.raises(InitrdError, match="TRAILER"):
        read_cpio(first)
    for bad in ("", "a/b", "x" * 56, TRAILER, "..", "tab\there"):
        with pytest.raises(InitrdError):
            build_cpio([CpioEntry(bad, b"")])
    with pytest.raises(InitrdError, match="duplicate"):
        build_cpio([CpioEntry("a"), CpioEntry("a")])


def test_cli_build_list_and_errors(tmp_path: Path) -> None:
    prog = tmp_path / "prog"
    prog.write_bytes(b"\x7fELF....")
    text = tmp_path / "notes"
    text.write_text("hi\n")
    out = tmp_path / "out" / "initrd.cpio"
    run = [sys.executable, "-m", "vmirom.guest.initrd"]
    r = subprocess.run(run + ["build", "-o", str(out), str(prog), f"renamed={text}"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert [(e.name, e.mode) for e in read_cpio(out.read_bytes())] == [("prog", MODE_PROGRAM),
                                                                       ("renamed", MODE_FILE)]
    r = subprocess.run(run + ["list", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "prog" in r.stdout and "renamed" in r.stdout
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a cpio archive at all" * 10)
    for args in (["list", str(garbage)], ["list", str(tmp_path / "missing")],
                 ["build", "-o", str(out), str(tmp_path / "missing")]):
        r = subprocess.run(run + args, capture_output=True, text=True)
        assert r.returncode == 3 and "Error: refused:" in r.stderr and "Traceback" not in r.stderr
    # the same tool as a subcommand (python -m is its old spelling)
    r = subprocess.run([sys.executable, "-m", "vmirom", "guest", "initrd", "list", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "renamed" in r.stdout


def test_build_initrd_is_reproducible(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    a, b = tmp_path / "a.cpio", tmp_path / "b.cpio"
    build_initrd([f], a)
    f.touch()
    build_initrd([f], b)
    assert a.read_bytes() == b.read_bytes()
