"""Guest physical RAM: one anonymous mmap shared with the engine (no copies between Python and the
CPU), with range-checked access for the VMM's own reads and writes."""

from __future__ import annotations

import mmap
import os
import struct

from vmirom.machine.faults import GP, GuestFault

DEFAULT_RAM = 128 * 1024 * 1024


class GuestMemory:
    """Guest-physical memory [0, size).  `readonly` ranges (the ROM) refuse VMM writes on the guest's
    behalf; loading code uses `load()` which may write anywhere.

    `machine_offset` > 0 (shadow paging, docs/mmu.md): guest RAM lives in *machine* memory at that
    offset, after a VMM-private pool the guest can never name.  One shared memory file is mapped
    twice: `machine` (all of machine memory, what the engine maps at machine address 0) and `ram`
    (the guest-physical view: index = guest-physical address).  So every VMM access through `ram`
    is the p2m translation (offset layout) by construction, and both views see the same bytes."""

    def __init__(self, size: int = DEFAULT_RAM, machine_offset: int = 0) -> None:
        if size < 2 * 1024 * 1024 or size % 4096:
            raise ValueError("guest RAM must be a multiple of 4 KiB and at least 2 MiB")
        if machine_offset < 0 or machine_offset % mmap.ALLOCATIONGRANULARITY:
            raise ValueError("the machine offset of guest RAM must be page aligned")
        self.size = size
        self.machine_offset = machine_offset
        if machine_offset:
            fd = os.memfd_create("vmirom-machine", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, machine_offset + size)
                self.machine = mmap.mmap(fd, machine_offset + size)
                self.ram = mmap.mmap(fd, size, offset=machine_offset)
            finally:
                os.close(fd)
        else:
            self.ram = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self.machine = self.ram
        self.readonly: list[tuple[int, int]] = []
        self.on_code_write = None  # callback(start, end): lets the engine drop stale translations
        #: physical [start, end) of the loaded kernel's code: a VMM write there takes the checked
        #: path (`write`), which reports it through `code_written`
        self.code_span: tuple[int, int] = (0, 0)
        self.code_written = None  # callback(start, end) for VMM writes into code_span
        #: guest frames whose VMM writes must be reported (`guarded_written(phys, size)`): the
        #: protected descriptor-table frames (machine/dtguard.py; the shadow MMU's `protected`)
        self.guarded: dict[int, str] = {}
        self.guarded_written = None

    def check(self, phys: int, size: int, *, write: bool = False) -> None:
        """Raise GuestFault(#GP) unless [phys, phys+size) is RAM (and writable when `write`)."""
        if phys < 0 or size < 0 or phys + size > self.size:
            raise GuestFault(GP, 0)
        if write:
            for s, e in self.readonly:
                if phys < e and phys + size > s:
                    raise GuestFault(GP, 0)

    def read(self, phys: int, size: int) -> bytes:
        self.check(phys, size)
        return self.ram[phys : phys + size]

    def write(self, phys: int, data: bytes) -> None:
        self.check(phys, len(data), write=True)
        self.ram[phys : phys + len(data)] = data
        if self.on_code_write is not None:
            self.on_code_write(phys, phys + len(data))
        self.vmm_wrote(phys, len(data))

    def vmm_wrote(self, phys: int, size: int) -> None:
        """The VMM stored `size` bytes at `phys` (by this class or by a path of its own, e.g. the
        shadow MMU's SetPxE): report it when it lands in the kernel's code (`code_written`)."""
        end = phys + size
        if self.code_written is not None and phys < self.code_span[1] and end > self.code_span[0]:
            self.code_written(phys, end)
        if self.guarded and any(f in self.guarded for f in range(phys >> 12, ((end - 1) >> 12) + 1)):
            self.guarded_written(phys, size)

    def load(self, phys: int, data: bytes) -> None:
        """Loader write (kernel image, ROM, boot structures): bypasses the read-only ranges."""
        if phys < 0 or phys + len(data) > self.size:
            raise ValueError(f"load [{phys:#x}, {phys + len(data):#x}) outside RAM")
        self.ram[phys : phys + len(data)] = data

    def zero(self, phys: int, size: int) -> None:
        """Loader zero-fill (a segment's .bss) without touching whole pages, so host memory does not
        grow with the size a (possibly hostile) ELF header claims (issue 11: p_memsz 1000 MiB took
        2 GB of RSS)."""
        if phys < 0 or size < 0 or phys + size > self.size:
            raise ValueError(f"zero [{phys:#x}, {phys + size:#x}) outside RAM")
        end = phys + size
        lo, hi = (phys + 0xFFF) & ~0xFFF, end & ~0xFFF
        if hi > lo:  # whole pages: dropped (a private anonymous mapping reads them back as zeros)
            self.ram[phys:lo] = bytes(lo - phys)
            self.ram.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            self.ram[hi:end] = bytes(end - hi)
        else:
            self.ram[phys:end] = bytes(end - phys)

    def u32(self, phys: int) -> int:
        self.check(phys, 4)
        return struct.unpack_from("<I", self.ram, phys)[0]

    def set_u32(self, phys: int, value: int) -> None:
        self.write(phys, struct.pack("<I", value & 0xFFFFFFFF))

    def close(self) -> None:
        for view in {id(self.ram): self.ram, id(self.machine): self.machine}.values():
            try:
                view.close()
            except BufferError:  # the engine still holds a ctypes view; the OS frees it at exit
                pass
