/* Guest page walks for the core: the same rules as vmirom.machine.paging (32-bit two-level paging,
 * 4 MiB pages with CR4.PSE, present / user / writable with CR0.WP), raising the same faults
 * (#PF with its error code and CR2, #GP(0) outside RAM).  The guest is untrusted: every table entry
 * and every physical address is range-checked against guest RAM before it is touched. */
#include <string.h>

#include "core.h"

static inline uint32_t ld32(const core_t *c, uint64_t pa) {
    uint32_t v;
    memcpy(&v, c->mem.ram + pa, 4);
    return v;
}

/* Paging.walk: 1 when present (phys, rw, us filled), 0 when not. */
static int walk(const core_t *c, uint32_t lin, uint32_t cr0, uint32_t cr3, uint32_t cr4, uint64_t *phys,
                int *rw, int *us) {
    if (!(cr0 & CR0_PG)) {
        *phys = lin;
        *rw = *us = 1;
        return 1;
    }
    uint64_t pde_addr = (uint64_t)(cr3 & 0xFFFFF000u) + ((lin >> 22) << 2);
    if (pde_addr + 4 > c->mem.size) return 0;
    uint32_t pde = ld32(c, pde_addr);
    if (!(pde & PTE_P)) return 0;
    if ((pde & PTE_PS) && (cr4 & CR4_PSE)) {
        *phys = (pde & 0xFFC00000u) | (lin & 0x3FFFFFu);
        *rw = !!(pde & PTE_RW);
        *us = !!(pde & PTE_US);
        return 1;
    }
    uint64_t pte_addr = (uint64_t)(pde & 0xFFFFF000u) + (((lin >> 12) & 0x3FF) << 2);
    if (pte_addr + 4 > c->mem.size) return 0;
    uint32_t pte = ld32(c, pte_addr);
    if (!(pte & PTE_P)) return 0;
    *phys = (pte & 0xFFFFF000u) | (lin & 0xFFFu);
    *rw = !!(pde & pte & PTE_RW);
    *us = !!(pde & pte & PTE_US);
    return 1;
}

/* Paging.translate: 0 and *phys, or -1 and the fault. */
int core_translate(const core_t *c, uint32_t lin, int write, int user, uint32_t cr0, uint32_t cr3,
                   uint32_t cr4, uint64_t *phys, vfault_t *f) {
    int rw = 0, us = 0;
    int present = walk(c, lin, cr0, cr3, cr4, phys, &rw, &us);
    int ok = present;
    if (ok && user && !us) ok = 0;
    if (ok && write && !rw && (user || (cr0 & CR0_WP))) ok = 0;
    if (!ok) {
        f->vector = V_PF;
        f->err = (present ? PFERR_P : 0) | (write ? PFERR_W : 0) | (user ? PFERR_U : 0);
        f->has_cr2 = 1;
        f->cr2 = lin;
        return -1;
    }
    if (*phys >= c->mem.size) {
        f->vector = V_GP;
        f->err = 0;
        f->has_cr2 = 0;
        return -1;
    }
    return 0;
}

/* Paging.read (supervisor or user data read), page by page. */
int core_read(const core_t *c, uint32_t lin, void *out, uint32_t n, int user, uint32_t cr0, uint32_t cr3,
              uint32_t cr4, vfault_t *f) {
    uint8_t *o = out;
    while (n) {
        uint32_t k = 0x1000 - (lin & 0xFFF);
        if (k > n) k = n;
        uint64_t pa;
        if (core_translate(c, lin, 0, user, cr0, cr3, cr4, &pa, f)) return -1;
        if (pa + k > c->mem.size) {  /* GuestMemory.read's range check */
            f->vector = V_GP;
            f->err = 0;
            f->has_cr2 = 0;
            return -1;
        }
        memcpy(o, c->mem.ram + pa, k);
        o += k;
        n -= k;
        lin += k;
    }
    return 0;
}

/* Where a write of n (<= 4096) bytes would go: up to two physical pieces.  -1 and the fault the CPU
 * raises; CORE_FALLBACK (2) when the write is one only Python may do (the read-only ROM, a VMM with a
 * code-write observer, a piece leaving RAM after the first one). */
int core_write_check(const core_t *c, uint32_t lin, uint32_t n, int user, uint32_t cr0, uint32_t cr3,
                     uint32_t cr4, uint64_t phys[2], uint32_t len[2], vfault_t *f) {
    int i = 0;
    while (n) {
        uint32_t k = 0x1000 - (lin & 0xFFF);
        if (k > n) k = n;
        if (i == 2) return CORE_FALLBACK;
        if (core_translate(c, lin, 1, user, cr0, cr3, cr4, &phys[i], f)) return -1;
        len[i++] = k;
        n -= k;
        lin += k;
    }
    if (c->mem.writes_to_python) return CORE_FALLBACK;
    for (int j = 0; j < i; j++) {
        if (phys[j] + len[j] > c->mem.size) return CORE_FALLBACK;
        for (int r = 0; r < c->mem.n_ro; r++)
            if (phys[j] < c->mem.ro_end[r] && phys[j] + len[j] > c->mem.ro_start[r]) return CORE_FALLBACK;
    }
    if (i < 2) len[1] = 0;
    return 0;
}

/* Paging.entry: effective P/RW/US for `lin`, 0 when not present. */
uint32_t core_entry_flags(const core_t *c, uint32_t lin, uint32_t cr0, uint32_t cr3, uint32_t cr4) {
    if (!(cr0 & CR0_PG)) return PTE_P | PTE_RW | PTE_US;
    uint64_t pde_addr = (uint64_t)(cr3 & 0xFFFFF000u) + ((lin >> 22) << 2);
    if (pde_addr + 4 > c->mem.size) return 0;
    uint32_t pde = ld32(c, pde_addr);
    if (!(pde & PTE_P)) return 0;
    if ((pde & PTE_PS) && (cr4 & CR4_PSE)) return pde & (PTE_P | PTE_RW | PTE_US);
    uint64_t pte_addr = (uint64_t)(pde & 0xFFFFF000u) + (((lin >> 12) & 0x3FF) << 2);
    if (pte_addr + 4 > c->mem.size) return 0;
    uint32_t pte = ld32(c, pte_addr);
    if (!(pte & PTE_P)) return 0;
    return pde & pte & (PTE_P | PTE_RW | PTE_US);
}

/* Paging.read_code: up to n instruction bytes, stopping at the first page that cannot be read. */
uint32_t core_read_code(const core_t *c, uint32_t lin, uint8_t *out, uint32_t n, int user, uint32_t cr0,
                        uint32_t cr3, uint32_t cr4) {
    uint32_t got = 0;
    while (n) {
        uint32_t k = 0x1000 - (lin & 0xFFF);
        if (k > n) k = n;
        uint64_t pa;
        vfault_t f;
        if (core_translate(c, lin, 0, user, cr0, cr3, cr4, &pa, &f)) break;
        if (pa + k > c->mem.size) break;
        memcpy(out + got, c->mem.ram + pa, k);
        got += k;
        n -= k;
        lin += k;
    }
    return got;
}

/* Is the GDT page at `page` in a frame the descriptor guard protects (machine/dtguard.py: its
 * descriptors all have Accessed set, so a segment load writes nothing there)?  The guarded frames are
 * published among the write-fallback ranges, after the ROM's (MachineCore.publish_memory); a range
 * holding the ROM is not one of them.  Unknown ROM (no IRET in C): none is taken as guarded. */
static int guarded_gdt_page(const core_t *c, uint32_t page) {
    if (c->iret_site < 0) return 0;
    uint64_t pa;
    vfault_t f;
    if (core_translate(c, page, 0, 0, c->vcr0, c->vcr3, c->vcr4, &pa, &f)) return 0;
    pa &= ~(uint64_t)0xFFF;
    for (int i = 0; i < c->mem.n_ro; i++) {
        if (c->mem.ro_start[i] <= c->rom_base && c->rom_base < c->mem.ro_end[i]) continue;
        if (c->mem.ro_start[i] <= pa && pa + 0x1000 <= c->mem.ro_end[i]) return 1;
    }
    return 0;
}

/* ShadowMMU.shadow_writable for every page of the GDT (ShadowedEngine._ready_gdt's condition; a page
 * the descriptor guard protects needs only be present): the engine reads (and marks accessed) a
 * descriptor through the shadow when a segment is loaded, and a shadow miss there cannot be taken
 * as a fault.  0: some page is not ready (Python prepares it). */
int core_shadow_gdt_ready(const core_t *c, const vregs_t *r, uint32_t shadow_root) {
    uint32_t base = r->r[R_GDT_BASE], end = base + r->r[R_GDT_LIMIT];
    uint64_t root = shadow_root & 0xFFFFF000u;
    for (uint64_t page = base & ~0xFFFu; page <= end; page += 0x1000) {
        uint64_t pde_addr = root | ((page >> 22) << 2);
        if (pde_addr + 4 > c->mach_size) return 0;
        uint32_t pde;
        memcpy(&pde, c->mach + pde_addr, 4);
        if (!(pde & PTE_P)) return 0;
        uint64_t leaf_addr = (uint64_t)(pde & 0xFFFFF000u) | ((page >> 10) & 0xFFC);
        if (leaf_addr + 4 > c->mach_size) return 0;
        uint32_t leaf;
        memcpy(&leaf, c->mach + leaf_addr, 4);
        if (!(leaf & PTE_P)) return 0;
        if (!(leaf & PTE_RW) && !guarded_gdt_page(c, (uint32_t)page)) return 0;
        if (page >= 0xFFFFF000u) break;
    }
    return 1;
}
