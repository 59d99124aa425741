"""Build the tiny hostile/test guests of tests/guests/ (GNU cpp + as + ld -> Multiboot ELF)."""

from __future__ import annotations

import subprocess
from pathlib import Path

GUESTS = Path(__file__).parent / "guests"


def build(name: str, out_dir: Path, source: str | None = None) -> Path:
    """Assemble tests/guests/<name>.S (or `source`) into out_dir/<name>.elf (preprocessed by cpp so
    guests can #include the shared ring1_common.inc)."""
    src = out_dir / f"{name}.S"
    src.write_text(source if source is not None else (GUESTS / f"{name}.S").read_text())
    obj, elf = out_dir / f"{name}.o", out_dir / f"{name}.elf"
    subprocess.run(
        ["gcc", "-m32", "-c", "-I", str(GUESTS), "-o", str(obj), str(src)],
        check=True,
        capture_output=True,
        text=True,
    )
    subprocess.run(
        [
            "ld",
            "-m",
            "elf_i386",
            "-T",
            str(GUESTS / "link.ld"),
            "-o",
            str(elf),
            str(obj),
            "-z",
            "noexecstack",
            "--no-warn-rwx-segments",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return elf
