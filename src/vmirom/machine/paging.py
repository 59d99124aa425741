"""The page walker: THE one helper that checks every guest address the VMM touches.

Hypercall handlers, instruction emulators and the interrupt-delivery code reach guest memory only
through `Paging.read/write/translate`, which apply the CPU's own rules (32-bit two-level paging,
4 MiB pages with CR4.PSE, present / user / writable with CR0.WP) and raise the #PF the CPU would
raise, with its error code.  So garbage pointers from a hostile guest become guest page faults,
never a VMM crash or an access outside guest RAM.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmirom.machine.faults import GP, PF, GuestFault

if TYPE_CHECKING:
    from vmirom.engines.base import Engine
    from vmirom.machine.memory import GuestMemory

CR0_PG, CR0_WP, CR4_PSE = 1 << 31, 1 << 16, 1 << 4
P, RW, US, PS = 1, 2, 4, 0x80
PFERR_P, PFERR_W, PFERR_U, PFERR_I = 1, 2, 4, 16


_U32 = struct.Struct("<I").unpack_from
_U32x2 = struct.Struct("<II").unpack_from


@dataclass(slots=True)
class Walk:
    """Result of walking the page tables for one linear address (no access checks applied)."""

    phys: int | None  # physical address, None if not present
    writable: bool = True  # W at every level
    user: bool = True  # U at every level
    cr0: int = 0  # CR0 at the time of the walk (for the WP check), when paging is on


class Paging:
    """Linear -> physical for the guest, with checks."""

    def __init__(self, memory: GuestMemory, engine: Engine) -> None:
        self.mem = memory
        self.engine = engine
        # CR0, CR3, CR4 in one engine call (every hypercall with a pointer walks the page tables)
        reader = getattr(engine, "reader", None)
        read_crs = reader(("cr0", "cr3", "cr4")) if reader is not None else None
        self._crs = read_crs
        if read_crs is not None and hasattr(engine, "reg_gen"):
            # A hypercall or an emulator walks several times per exit: reuse the CRs read while the
            # engine's reg_gen is unchanged (any register write, hook entry or slice bumps it).
            cache = [-1, None]

            def crs() -> tuple[int, int, int]:
                gen = engine.reg_gen
                if cache[0] != gen:
                    cache[1] = read_crs()
                    cache[0] = gen
                return cache[1]

            self._crs = crs

    def walk(self, linear: int) -> Walk:
        linear &= 0xFFFFFFFF
        if self._crs is not None:
            cr0, cr3, cr4 = self._crs()
        else:
            cr0, cr3, cr4 = (self.engine.reg(r) for r in ("cr0", "cr3", "cr4"))
        if not cr0 & CR0_PG:
            return Walk(linear)
        cr3 &= 0xFFFFF000
        mem = self.mem
        pde_addr = cr3 + ((linear >> 22) << 2)
        if pde_addr + 4 > mem.size:
            return Walk(None)
        pde = struct.unpack_from("<I", mem.ram, pde_addr)[0]
        if not pde & P:
            return Walk(None)
        if pde & PS and cr4 & CR4_PSE:
            return Walk((pde & 0xFFC00000) | (linear & 0x3FFFFF), bool(pde & RW), bool(pde & US), cr0)
        pte_addr = (pde & 0xFFFFF000) + (((linear >> 12) & 0x3FF) << 2)
        if pte_addr + 4 > mem.size:
            return Walk(None)
        pte = struct.unpack_from("<I", mem.ram, pte_addr)[0]
        if not pte & P:
            return Walk(None)
        return Walk((pte & 0xFFFFF000) | (linear & 0xFFF), bool(pde & pte & RW), bool(pde & pte & US), cr0)

    def phys(self, linear: int, size: int, cr0: int, cr3: int, cr4: int, write: bool, user: bool) -> int:
        """Fast checked translation for the hot paths (interrupt delivery), with the control
        registers given by the caller (one batched read): the physical address of an access of
        `size` bytes that stays within one page, or -1 when the access would fault, crosses a page,
        leaves RAM or writes the read-only ROM.  On -1 the caller takes the general path
        (`read`/`write`/`translate`), which raises exactly the fault the CPU would."""
        if (linear & 0xFFF) + size > 0x1000:
            return -1
        mem = self.mem
        if not cr0 & CR0_PG:
            phys = linear
        else:
            ram = mem.ram
            pde_addr = (cr3 & 0xFFFFF000) + ((linear >> 22) << 2)
            if pde_addr + 4 > mem.size:
                return -1
            pde = _U32(ram, pde_addr)[0]
            if not pde & P:
                return -1
            if pde & PS and cr4 & CR4_PSE:
                flags = pde
                phys = (pde & 0xFFC00000) | (linear & 0x3FFFFF)
            else:
                pte_addr = (pde & 0xFFFFF000) + ((linear >> 10) & 0xFFC)
                if pte_addr + 4 > mem.size:
                    return -1
                pte = _U32(ram, pte_addr)[0]
                if not pte & P:
                    return -1
                flags = pde & pte
                phys = (pte & 0xFFFFF000) | (linear & 0xFFF)
            if user and not flags & US:
                return -1
            if write and not flags & RW and (user or cr0 & CR0_WP):
                return -1
        if phys + size > mem.size:
            return -1
        if write:
            if mem.on_code_write is not None or phys < mem.code_span[1] and phys + size > mem.code_span[0]:
                return -1  # the checked path: it tells the machine that code changed
            for s, e in mem.readonly:
                if phys < e and phys + size > s:
                    return -1
            if mem.guarded and phys >> 12 in mem.guarded:
                return -1  # a live descriptor table: the checked path has it revalidated
        return phys

    def sys_u32x2(self, linear: int, cr0: int, cr3: int, cr4: int) -> tuple[int, int] | None:
        """Two dwords at `linear` read the way the CPU reads its system tables (IDT gate, GDT
        descriptor, TSS stack pointer: supervisor access), walk and read in one call for interrupt
        delivery; None when the read would fault, cross a page or leave RAM (callers then use
        `read`, which raises the CPU's fault)."""
        linear &= 0xFFFFFFFF
        if (linear & 0xFFF) > 0xFF8:
            return None
        ram = self.mem.ram
        try:
            if not cr0 & CR0_PG:
                return _U32x2(ram, linear)
            pde = _U32(ram, (cr3 & 0xFFFFF000) + ((linear >> 22) << 2))[0]
            if not pde & P:
                return None
            if pde & PS and cr4 & CR4_PSE:
                return _U32x2(ram, (pde & 0xFFC00000) | (linear & 0x3FFFFF))
            pte = _U32(ram, (pde & 0xFFFFF000) + ((linear >> 10) & 0xFFC))[0]
            if not pte & P:
                return None
            return _U32x2(ram, (pte & 0xFFFFF000) | (linear & 0xFFF))
        except struct.error:  # beyond the end of RAM (the mmap is exactly guest RAM)
            return None

    def entry(self, linear: int, cr0: int, cr3: int, cr4: int) -> int:
        """The effective P/RW/US bits for `linear` (PDE & PTE; all three with paging off), 0 when not
        present: what the #PF error code and the write/read decision need, in one walk."""
        if not cr0 & CR0_PG:
            return P | RW | US
        mem = self.mem
        pde_addr = (cr3 & 0xFFFFF000) + (((linear & 0xFFFFFFFF) >> 22) << 2)
        if pde_addr + 4 > mem.size:
            return 0
        pde = _U32(mem.ram, pde_addr)[0]
        if not pde & P:
            return 0
        if pde & PS and cr4 & CR4_PSE:
            return pde & (P | RW | US)
        pte_addr = (pde & 0xFFFFF000) + ((linear >> 10) & 0xFFC)
        if pte_addr + 4 > mem.size:
            return 0
        pte = _U32(mem.ram, pte_addr)[0]
        if not pte & P:
            return 0
        return pde & pte & (P | RW | US)

    def error_code(self, linear: int, *, write: bool, user: bool, fetch: bool = False) -> int:
        """The #PF error code the CPU would push for this access (the engine does not expose it)."""
        w = self.walk(linear)
        err = (PFERR_W if write else 0) | (PFERR_U if user else 0)
        if w.phys is not None:
            err |= PFERR_P
        return err

    def translate(self, linear: int, *, write: bool = False, user: bool = False, fetch: bool = False) -> int:
        """Checked translation: raises GuestFault(#PF, error code, cr2) where the CPU would fault and
        GuestFault(#GP) when the page points outside guest RAM."""
        linear &= 0xFFFFFFFF
        w = self.walk(linear)
        ok = w.phys is not None
        if ok and user and not w.user:
            ok = False
        if ok and write and not w.writable and (user or w.cr0 & CR0_WP):
            ok = False
        if not ok:
            err = (
                (PFERR_P if w.phys is not None else 0) | (PFERR_W if write else 0) | (PFERR_U if user else 0)
            )
            raise GuestFault(PF, err, cr2=linear)
        if w.phys >= self.mem.size:
            raise GuestFault(GP, 0)
        return w.phys

    def _chunks(self, linear: int, size: int):
        while size > 0:
            n = min(size, 0x1000 - (linear & 0xFFF))
            yield linear, n
            linear = (linear + n) & 0xFFFFFFFF
            size -= n

    def read(self, linear: int, size: int, *, user: bool = False, fetch: bool = False) -> bytes:
        if size < 0 or size > 1 << 24:
            raise GuestFault(GP, 0)
        if self._crs is not None and size <= 0x1000:  # one page, no fault: the allocation-free walk
            cr0, cr3, cr4 = self._crs()
            phys = self.phys(linear & 0xFFFFFFFF, size, cr0, cr3, cr4, False, user)
            if phys >= 0:
                return self.mem.ram[phys : phys + size]
        out = bytearray()
        for lin, n in self._chunks(linear, size):
            out += self.mem.read(self.translate(lin, user=user, fetch=fetch), n)
        return bytes(out)

    def write(self, linear: int, data: bytes, *, user: bool = False) -> None:
        if len(data) > 1 << 24:
            raise GuestFault(GP, 0)
        if self._crs is not None and len(data) <= 0x1000:  # one page, no fault, not the ROM
            cr0, cr3, cr4 = self._crs()
            phys = self.phys(linear & 0xFFFFFFFF, len(data), cr0, cr3, cr4, True, user)
            if phys >= 0:
                self.mem.ram[phys : phys + len(data)] = data
                return
        # translate every page first so a fault leaves memory untouched
        targets = [
            (self.translate(lin, write=True, user=user), n) for lin, n in self._chunks(linear, len(data))
        ]
        off = 0
        for phys, n in targets:
            self.mem.write(phys, data[off : off + n])
            off += n

    def read_code(self, linear: int, size: int, *, user: bool = False) -> bytes:
        """Up to `size` instruction bytes; stops at the first page that cannot be read."""
        out = bytearray()
        for lin, n in self._chunks(linear, size):
            try:
                out += self.mem.read(self.translate(lin, user=user, fetch=True), n)
            except GuestFault:
                break
        return bytes(out)

    def u32(self, linear: int, *, user: bool = False) -> int:
        return struct.unpack("<I", self.read(linear, 4, user=user))[0]
