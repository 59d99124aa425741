"""The user programs build, and are the static ELF i386 executables the kernel's loader expects
(guest/include/syscall.h: ET_EXEC at 0x08048000, page-aligned PT_LOAD segments, W^X); the initrd
carries all of them; the syscall header is self-consistent and compiles for C and assembly."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from vmirom.guest.initrd import GUEST_DIR, USER_BUILD, build_user_space, read_cpio

PROGRAMS = ["init", "sh", "echo", "cat", "ls", "ps", "true", "false", "wc", "sleep", "kill", "uptime",
            "compile", "bench", "selftest"]
HEADER = GUEST_DIR / "include" / "syscall.h"
PF_X, PF_W = 1, 2


@pytest.fixture(scope="module")
def initrd() -> Path:
    return build_user_space()


@pytest.mark.parametrize("name", PROGRAMS)
def test_program_is_static_elf_i386(initrd: Path, name: str) -> None:
    path = USER_BUILD / name
    with path.open("rb") as f:
        elf = ELFFile(f)
        assert elf.elfclass == 32 and elf.little_endian
        assert elf["e_machine"] == "EM_386" and elf["e_type"] == "ET_EXEC"
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        kinds = {s["p_type"] for s in elf.iter_segments()}
        assert "PT_INTERP" not in kinds and "PT_DYNAMIC" not in kinds
        assert elf.get_section_by_name(".dynamic") is None
        assert loads and loads[0]["p_vaddr"] == 0x08048000
        entry = elf["e_entry"]
        text = [s for s in loads if s["p_flags"] & PF_X]
        assert len(text) == 1 and not text[0]["p_flags"] & PF_W, "text must be read-only"
        assert text[0]["p_vaddr"] <= entry < text[0]["p_vaddr"] + text[0]["p_memsz"]
        for s in loads:
            assert s["p_align"] == 0x1000 and s["p_vaddr"] % 0x1000 == s["p_offset"] % 0x1000
            assert s["p_filesz"] <= s["p_memsz"]
            assert s["p_vaddr"] + s["p_memsz"] < 0xBFFF0000, "must stay below the user stack"
            assert not (s["p_flags"] & PF_W and s["p_flags"] & PF_X), "W^X"
        # no SSE/FPU state needed: built with -mgeneral-regs-only (the kernel need not save it)
        symbols = elf.get_section_by_name(".symtab")
        assert symbols is not None and symbols.get_symbol_by_name("_start")


def test_initrd_carries_every_program(initrd: Path) -> None:
    entries = {e.name: e for e in read_cpio(initrd.read_bytes())}
    assert set(PROGRAMS) | {"motd"} == set(entries)
    for name in PROGRAMS:
        assert entries[name].data == (USER_BUILD / name).read_bytes()
        assert entries[name].mode == 0o100755
    assert entries["motd"].data.startswith(b"vmirom")


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_gnu_cpio_reads_the_initrd(initrd: Path) -> None:
    out = subprocess.run(["cpio", "-t", "--quiet"], stdin=initrd.open("rb"), capture_output=True,
                         check=True).stdout.decode().split()
    assert out[0] == "init" and set(out) == set(PROGRAMS) | {"motd"}


def _defines() -> dict[str, str]:
    return dict(re.findall(r"^#define\s+(\w+)\s+(\S+)", HEADER.read_text(), re.M))


def test_syscall_numbers_are_unique_and_dense() -> None:
    nums = {k: int(v) for k, v in _defines().items()
            if k.startswith("SYS_") and k not in ("SYS_MAX", "SYS_HZ")}
    assert len(set(nums.values())) == len(nums), "duplicate syscall numbers"
    assert sorted(nums.values()) == list(range(1, len(nums) + 1))
    assert int(_defines()["SYS_MAX"]) == max(nums.values())
    required = {"exit", "fork", "exec", "wait", "getpid", "read", "write", "pipe", "close", "dup", "sbrk",
                "mmap", "munmap", "sleep", "yield", "uptime", "shutdown", "clock", "readdir", "procs"}
    assert required <= {k[4:] for k in nums}


def test_errno_values_follow_linux() -> None:
    d = _defines()
    assert (d["EFAULT"], d["EAGAIN"], d["ENOSYS"], d["EBADF"], d["ECHILD"], d["EPIPE"]) == \
        ("14", "11", "38", "9", "10", "32")


@pytest.mark.parametrize("lang", ["c", "assembler-with-cpp"])
def test_syscall_header_compiles(tmp_path: Path, lang: str) -> None:
    if lang == "c":
        src = '#include "syscall.h"\nint n = SYS_MAX; struct vmirom_dirent d; struct vmirom_procinfo p;\n'
        flags = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffreestanding"]
    else:
        src = '#include "syscall.h"\n movl $SYS_fork, %eax\n int $0x80\n'
        flags = []
    (tmp_path / "t.src").write_text(src)
    subprocess.run(["gcc", "-m32", "-x", lang, *flags, "-I", str(HEADER.parent),
                    "-c", str(tmp_path / "t.src"), "-o", str(tmp_path / "t.o")],
                   check=True, capture_output=True)


HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "syscall_initrd.h"
int main(int argc, char **argv) {
    FILE *fp = fopen(argv[1], "rb");
    fseek(fp, 0, SEEK_END); long n = ftell(fp); rewind(fp);
    unsigned char *buf = malloc(n ? n : 1);   /* exact size: the sanitizer sees over-reads */
    if (fread(buf, 1, n, fp) != (size_t)n) return 3;
    struct initrd_file f;
    for (int i = 0; initrd_entry(buf, (uint32_t)n, i, &f) == 0; i++) {
        unsigned sum = 0;
        for (uint32_t k = 0; k < f.size; k++) sum = sum * 31 + f.data[k];
        printf("entry %s %u %o %u\n", f.name, f.size, f.mode, sum);
    }
    for (int a = 2; a < argc; a++)
        printf("find %s %d\n", argv[a], initrd_find(buf, (uint32_t)n, argv[a], &f) == 0 ? (int)f.size : -1);
    free(buf);
    return 0;
}
"""


@pytest.fixture(scope="module")
def initrd_reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("reader")
    (d / "h.c").write_text(HARNESS)
    base = ["gcc", "-O1", "-g", "-Wall", "-Werror", "-I", str(HEADER.parent), str(d / "h.c"),
            "-o", str(d / "h")]
    if subprocess.run(base + ["-fsanitize=address,undefined"], capture_output=True).returncode != 0:
        subprocess.run(base, check=True, capture_output=True)
    return d / "h"


def _sum(data: bytes) -> int:
    s = 0
    for b in data:
        s = (s * 31 + b) & 0xFFFFFFFF
    return s


def test_c_initrd_reader_agrees_with_python(initrd: Path, initrd_reader: Path) -> None:
    out = subprocess.run([str(initrd_reader), str(initrd), "sh", "/selftest", "motd", "nosuch", "sh/"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    entries = read_cpio(initrd.read_bytes())
    want = [f"entry {e.name} {len(e.data)} {e.mode:o} {_sum(e.data)}" for e in entries]
    sizes = {e.name: len(e.data) for e in entries}
    want += [f"find sh {sizes['sh']}", f"find /selftest {sizes['selftest']}", f"find motd {sizes['motd']}",
             "find nosuch -1", "find sh/ -1"]
    assert out == want


def test_c_initrd_reader_survives_damage(initrd: Path, initrd_reader: Path, tmp_path: Path) -> None:
    blob = initrd.read_bytes()[:4096]
    bad = tmp_path / "bad.cpio"
    for cut in list(range(0, 200, 7)) + [len(blob)]:
        huge_size = blob[:54] + b"FFFFFFFF" + blob[62:max(cut, 62)]
        for damaged in (blob[:cut], blob[:cut] + b"\xff" * 8, huge_size):
            bad.write_bytes(damaged)
            r = subprocess.run([str(initrd_reader), str(bad), "sh"], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr[-2000:]
