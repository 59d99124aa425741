"""Real SeaBIOS (Debian qemu-system-x86) accepts our ROM and runs its 16-bit init entry.

QEMU loads `-option-rom` files through fw_cfg; SeaBIOS checks 55 AA and the checksum,
copies the image into the option-ROM window, prints "Running option rom at SEG:0003" on
its debug console (port 0x402) and far-calls the entry.  No kernel is given: the boot
fails afterwards, which is fine; the test stops QEMU as soon as SeaBIOS gives up booting.
To be sure the line is about *our* ROM, the window is dumped through the QEMU monitor and
compared with the image at the segment SeaBIOS named.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from vmirom.rom import build_rom
from vmirom.rom.variants import VARIANTS

QEMU = shutil.which("qemu-system-i386")
pytestmark = [pytest.mark.qemu, pytest.mark.skipif(QEMU is None, reason="qemu-system-i386 not installed")]
RUNNING = re.compile(r"Running option rom at ([0-9a-f]{4}):0003")


def _boot_until_bios_gives_up(rom: Path, tmp: Path, timeout: float = 60.0) -> tuple[str, dict[int, bytes]]:
    """Run QEMU until SeaBIOS has run the option ROMs and failed to boot; return the debug log
    and {segment: dump of 64 KiB... capped at the ROM size} for every ROM it ran."""
    log = tmp / "seabios.log"
    proc = subprocess.Popen(
        [QEMU, "-accel", "tcg", "-m", "32", "-display", "none", "-no-reboot", "-net", "none",
         "-serial", "none", "-parallel", "none", "-monitor", "stdio",
         "-chardev", f"file,id=dbg,path={log}", "-device", "isa-debugcon,iobase=0x402,chardev=dbg",
         "-option-rom", str(rom)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    dumps: dict[int, bytes] = {}
    try:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "No bootable device" in text or "Booting from ROM" in text or "enter handle_18" in text:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"SeaBIOS did not finish POST within {timeout} s:\n{text[-2000:]}")
        size = len(rom.read_bytes())
        for seg in {int(s, 16) for s in RUNNING.findall(text)}:
            out = tmp / f"rom-{seg:04x}.bin"
            # the file name must be quoted: unquoted, "SIZE /path" parses as a division
            proc.stdin.write(f"pmemsave {seg * 16:#x} {size} \"{out}\"\n")
            proc.stdin.flush()
            for _ in range(50):
                if out.exists() and out.stat().st_size == size:
                    break
                time.sleep(0.1)
            dumps[seg] = out.read_bytes() if out.exists() else b""
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return text, dumps


def _spec(name: str):
    if name.startswith("hv:"):      # a hypervisor personality's ROM (hypercall stubs, API 3.0)
        from vmirom.hypervisors import registry

        return registry.create(name[3:]).rom_spec()
    return VARIANTS[name].make()


@pytest.mark.parametrize("variant", ["native", "sti-cli-call", "hv:vmi"])
def test_seabios_runs_our_option_rom(tmp_path, variant):
    image = build_rom(_spec(variant))
    rom = tmp_path / f"{variant.replace(':', '-')}.rom"
    rom.write_bytes(image.data)
    text, dumps = _boot_until_bios_gives_up(rom, tmp_path)
    ours = [seg for seg, dump in dumps.items() if dump == image.data]
    assert ours, f"no 'Running option rom' line is about our ROM; log:\n{text[-3000:]}"
    seg = ours[0]
    assert 0xC000 <= seg < 0xE000 and (seg * 16) % 2048 == 0   # where a VMI guest scans for it
    # the BIOS came back from our init and carried on to the boot attempts
    assert text.index(f"Running option rom at {seg:04x}:0003") < text.index("enter handle_19")
