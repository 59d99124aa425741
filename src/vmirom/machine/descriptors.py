"""The descriptor rules of de-privileging (docs/security.md): what a kernel that runs at ring
`kernel_ring` > 0 may have the VMM put into its GDT, LDT and IDT.

Why: the CPU enters a more privileged ring only through a descriptor - an IDT gate, a call gate, a
task gate or TSS, a code segment more privileged than the caller.  Real de-privileging hypervisors
validated every descriptor a guest kernel installed (Xen's check_descriptor: DPL 0 code/data
become DPL 1, gates must lead to the guest's own rings).  Here the VMM applies the same rules on
every path where it writes or loads a table for the guest (the VMI descriptor calls, SetGDT, and
the trap-and-emulate of lgdt/lldt) AND on every plain store of the kernel into its live GDT/LDT:
under shadow paging those frames are write-protected whatever the kernel's page tables say, and a
trapped store is validated here before it is emulated (machine/dtguard.py).  So the engine's
native transitions (call gates, task switches, iret) only ever read descriptors these rules let
through; the machine's CPL check at every exit (Machine.privilege_held) stays as a second line.

Rules (kernel ring K > 0; ring-0 kernels are not de-privileged and keep their tables as written):
- present code/data descriptors with DPL < K get DPL K ("compression": the kernel's own segments
  keep working at ring K, no ring-0 segment exists for anything to reach), and every present
  code/data descriptor gets its Accessed bit set: the CPU then never writes a descriptor itself
  (it sets A on a segment load), so the VMM can keep the table pages read-only to the engine;
- 32-bit TSS descriptors are kept *available* (type 9) with DPL 0: no `jmp`/`call` from ring >= 1
  can name them (DPL 0) and no `iret` with EFLAGS.NT can return to one (a task switch by IRET
  needs a busy TSS), so the engine never performs a task switch, which would load CR3, the LDT,
  EFLAGS and CS from TSS memory the kernel writes freely.  The VMM loads TR itself (ltr, SetTR)
  and leaves the descriptor available (hardware marks it busy);
- call gates (types 4, C), task gates (5) and 16-bit TSS descriptors (1, 3) are refused, as are
  interrupt/trap gates in a GDT/LDT (types 6, 7, E, F: meaningless there): #GP(0);
- in the IDT, only interrupt/trap gates (types 6, 7, E, F) or not-present entries; task gates are
  refused (#GP(0)); a gate's target is checked at delivery (a conforming target keeps the ring, a
  target below K is #GP(selector));
- not-present descriptors are accepted as written (the CPU never loads them).
"""

from __future__ import annotations

from vmirom.machine.faults import GP, GuestFault

P, S = 1 << 15, 1 << 12
DPL_SHIFT = 13
#: system descriptor types a GDT/LDT may hold for a de-privileged kernel: LDT, 32-bit TSS
ALLOWED_SYSTEM = frozenset({0x2, 0x9, 0xB})
#: IDT gate types: 16/32-bit interrupt and trap gates
ALLOWED_GATES = frozenset({0x6, 0x7, 0xE, 0xF})


#: the Accessed bit of a code/data descriptor (type bit 0), the busy bit of a TSS (type bit 1)
ACCESSED, TSS_BUSY = 1 << 8, 1 << 9
TSS_TYPES = frozenset({0x9, 0xB})


def checked_segment(lo: int, hi: int, kernel_ring: int) -> tuple[int, int, bool]:
    """A GDT/LDT descriptor after the rules: (lo, hi, compressed?); GuestFault(#GP(0)) if refused.
    `compressed` is True when the rules took privilege away (DPL raised, a TSS made DPL 0 or
    available); setting the Accessed bit alone does not count."""
    if kernel_ring == 0 or not hi & P:
        return lo, hi, False
    if hi & S:
        new = hi | ACCESSED
        if (hi >> DPL_SHIFT) & 3 < kernel_ring:
            return lo, (new & ~(3 << DPL_SHIFT)) | (kernel_ring << DPL_SHIFT), True
        return lo, new, False
    kind = (hi >> 8) & 0xF
    if kind not in ALLOWED_SYSTEM:
        raise GuestFault(GP, 0)
    if kind in TSS_TYPES:
        new = hi & ~(TSS_BUSY | (3 << DPL_SHIFT))
        return lo, new, new != hi
    return lo, hi, False


def checked_gate(lo: int, hi: int, kernel_ring: int) -> None:
    """An IDT entry: GuestFault(#GP(0)) unless it is an interrupt/trap gate or not present."""
    if kernel_ring and hi & P and (hi & S or (hi >> 8) & 0xF not in ALLOWED_GATES):
        raise GuestFault(GP, 0)


def checked_table(raw: bytes, kernel_ring: int) -> tuple[bytes, int]:
    """A whole GDT/LDT image after the rules: (new image, descriptors compressed).  The image also
    differs from `raw` where only an Accessed bit was set: callers write it back when it differs."""
    out = bytearray(raw)
    n = 0
    for off in range(0, len(raw) - 7, 8):
        lo = int.from_bytes(raw[off : off + 4], "little")
        hi = int.from_bytes(raw[off + 4 : off + 8], "little")
        lo, new_hi, changed = checked_segment(lo, hi, kernel_ring)
        if new_hi != hi:
            out[off + 4 : off + 8] = new_hi.to_bytes(4, "little")
        n += changed
    return bytes(out), n
