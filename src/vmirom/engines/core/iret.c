/* The vmi IRET hypercall: the C twin of Vmi.is_hypercall + Vmi.hypercall + Vmi.iret/_iret
 * (vmirom/hypervisors/vmi.py; read it for the why).  The ROM's IRET stub is one `int $0x82`; the
 * exit is this hypercall when it comes from kernel-ring code whose EIP-2 translates into the ROM at
 * the IRET site.  The frame (EIP, CS, EFLAGS[, ESP, SS]) is read from the kernel stack, the code and
 * stack descriptors are checked, and the new state is entered like any delivery.  Every case the
 * Python path would handle differently - a fault anywhere, a data segment to reset, an interrupt that
 * may be due once IF is set - returns CORE_FALLBACK before anything changed. */
#include <string.h>

#include "core.h"

#define IRET_FLAGS 0x244FD5u

/* Vmi._gdt_hi: the high dword of descriptor `sel`, or -1 (the Python path raises #GP / #PF). */
static int gdt_hi(const core_t *c, const vregs_t *R, uint32_t sel, uint32_t *hi) {
    if ((sel & 4) || (sel & ~7u) + 7 > R->r[R_GDT_LIMIT] || (sel & ~7u) == 0) return -1;
    uint32_t v[2];
    vfault_t f;
    if (core_read(c, R->r[R_GDT_BASE] + (sel & ~7u), v, 8, 0, R->r[R_CR0], R->r[R_CR3], R->r[R_CR4], &f))
        return -1;
    *hi = v[1];
    return 0;
}

int core_iret(core_t *c, vregs_t *R, const uint32_t *segs, ventry_t *e) {
    const uint32_t *r = R->r;
    uint32_t cs_now = r[R_CS];
    int cpl = cs_now & 3;
    if (cpl > c->kernel_ring || c->iret_site < 0) return CORE_FALLBACK;
    /* Vmi.is_hypercall: the `int $0x82` before EIP, in the ROM, at the IRET stub */
    uint64_t pa;
    vfault_t f;
    if (core_translate(c, r[R_EIP] - 2, 0, 0, r[R_CR0], r[R_CR3], r[R_CR4], &pa, &f)) return CORE_FALLBACK;
    if (pa != c->rom_base + (uint64_t)c->iret_site) return CORE_FALLBACK;
    /* Vmi.iret */
    uint32_t fr[3];
    if (core_read(c, r[R_ESP], fr, 12, cpl == 3, r[R_CR0], r[R_CR3], r[R_CR4], &f)) return CORE_FALLBACK;
    uint32_t eip = fr[0], cs = fr[1] & 0xFFFF, flags = fr[2];
    int rpl = cs & 3;
    if (rpl < cpl) return CORE_FALLBACK;
    uint32_t hi;
    if (gdt_hi(c, R, cs, &hi)) return CORE_FALLBACK;
    if (!((hi >> 11) & 1) || !((hi >> 12) & 1) || (int)((hi >> 13) & 3) != rpl || !(hi & 0x8000))
        return CORE_FALLBACK;
    uint32_t new_flags = (flags & IRET_FLAGS) | (r[R_EFLAGS] & ~IRET_FLAGS) | 0x2;
    memset(e, 0, sizeof *e);
    e->entered = 1;
    e->eflags = new_flags;
    e->eip = eip;
    if (rpl == cpl) {
        e->cpl = -1;
        e->load_cs = cs != cs_now;
        e->cs = cs;
        e->esp = r[R_ESP] + 12;
    } else {
        uint32_t st[2];
        if (core_read(c, r[R_ESP] + 12, st, 8, cpl == 3, r[R_CR0], r[R_CR3], r[R_CR4], &f)) return CORE_FALLBACK;
        uint32_t ss = st[1] & 0xFFFF, shi;
        if (gdt_hi(c, R, ss, &shi)) return CORE_FALLBACK;
        if ((int)(ss & 3) != rpl || (int)((shi >> 13) & 3) != rpl || ((shi >> 11) & 1) || !((shi >> 9) & 1))
            return CORE_FALLBACK;
        if (!(shi & 0x8000) || !((shi >> 12) & 1)) return CORE_FALLBACK; /* the engine would refuse it */
        /* an outer ring may not keep a data segment it cannot use: Python resets it (rare) */
        for (int i = 0; i < 4; i++) {
            uint32_t sel = segs[i] & 0xFFFF, dhi;
            if (!(sel & ~3u)) continue;
            if (gdt_hi(c, R, sel, &dhi) || (int)((dhi >> 13) & 3) < rpl) return CORE_FALLBACK;
        }
        e->cpl = rpl;
        e->cs = cs;
        e->ss = ss;
        e->esp = st[0];
    }
    return CORE_OK;
}
