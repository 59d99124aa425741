/* vm.c - paging.  The kernel half of every address space (PDEs 768..1023) maps physical memory
 * at KERNBASE (the direct map, which includes the low 1 MiB and so the option-ROM window).
 * Every page-table page is announced with AllocatePage and released with ReleasePage; every
 * entry is written with SetPxE; CR3 loads, TLB flushes and invlpg are VMI calls. */
#include "kernel.h"
#include "mmu.h"
#include "pv.h"
#include "vm.h"

u32 *kpgdir;
u32 *cur_pgdir;
u32 phys_end;

#define MAX_DIRECT_MAP (896u << 20)

/* SetPxE flags: the level, and if the entry belongs to the live address space, CURRENT_AS plus
 * the linear address it maps. */
void set_entry(u32 *pgdir, u32 *entry, u32 val, u32 level, u32 va)
{
    u32 flags = level;
    if (pgdir == cur_pgdir || va >= KERNBASE)
        flags |= VMI_PAGE_CURRENT_AS | (va & VMI_PAGE_VA_MASK);
    vmi_ops.set_pxe(val, entry, flags);
}

static u32 *new_table(u32 flags)
{
    u32 *t = kalloc();
    if (!t)
        return 0;
    vmi_ops.allocate_page(V2P(t) / PGSIZE, flags | VMI_PAGE_ZEROED, 0, 0, 0);
    return t;
}

u32 *pgdir_walk(u32 *pgdir, u32 va, int alloc)
{
    u32 *pde = &pgdir[PDX(va)];
    u32 *pt;
    if (*pde & PTE_P) {
        pt = P2V(PTE_ADDR(*pde));
    } else {
        if (!alloc || !(pt = new_table(VMI_PAGE_PT)))
            return 0;
        u32 perm = (va < KERNBASE ? PTE_P | PTE_W | PTE_U : PTE_P | PTE_W) | PTE_A;
        set_entry(pgdir, pde, V2P(pt) | perm, VMI_PAGE_PD, va & ~0x3FFFFFu);
    }
    return &pt[PTX(va)];
}

int map_page(u32 *pgdir, u32 va, u32 pa, u32 perm)
{
    u32 *pte = pgdir_walk(pgdir, va, 1);
    if (!pte)
        return -1;
    set_entry(pgdir, pte, pa | perm | PTE_P, VMI_PAGE_PT, va);
    return 0;
}

void switch_pgdir(u32 *pgdir)
{
    if (pgdir == cur_pgdir)
        return;
    cur_pgdir = pgdir;
    vmi_ops.set_cr3(V2P(pgdir));
}

void flush_user_tlb(void)
{
    vmi_ops.flush_tlb(VMI_FLUSH_TLB);
}

/* A new address space: kernel PDEs copied from kpgdir before the page becomes a page directory,
 * and announced with CLONE so a shadowing hypervisor can copy its own view of them. */
u32 *pgdir_new(void)
{
    u32 *pd = kalloc();
    if (!pd)
        return 0;
    memcpy(pd + KERN_PDX, kpgdir + KERN_PDX, (NPDENTRIES - KERN_PDX) * 4);
    vmi_ops.allocate_page(V2P(pd) / PGSIZE, VMI_PAGE_PD | VMI_PAGE_CLONE, V2P(kpgdir) / PGSIZE,
                          KERN_PDX, NPDENTRIES - KERN_PDX);
    return pd;
}

void pgdir_free(u32 *pd)
{
    if (pd == cur_pgdir)
        switch_pgdir(kpgdir);
    for (u32 i = 0; i < KERN_PDX; i++) {
        if (!(pd[i] & PTE_P))
            continue;
        u32 *pt = P2V(PTE_ADDR(pd[i]));
        for (u32 j = 0; j < NPTENTRIES; j++)
            if (pt[j] & PTE_P)
                page_unref(PTE_ADDR(pt[j]));
        vmi_ops.release_page(V2P(pt) / PGSIZE, VMI_PAGE_PT);
        kfree(pt);
    }
    vmi_ops.release_page(V2P(pd) / PGSIZE, VMI_PAGE_PD);
    kfree(pd);
}

/* vmcheck(VMCHECK_BIGPAGE): a 4 MiB page (CR4.PSE) works as the CPU manual says.  The 4 MiB-aligned
 * physical region around a fresh page is mapped with one PDE at the first kernel slot past the
 * direct map of the current address space; a store through either view is read through the other,
 * the PDE gets Accessed and Dirty; then the PDE goes (invlpg) and CR4 is restored.  Returns 0 or
 * the negative number of the step that failed (-5: no free page). */
#define CR4_PSE 0x10
int vm_bigpage_check(void)
{
    u8 *page = kalloc();
    if (!page)
        return -5;
    u32 pa = V2P(page), base = pa & ~0x3FFFFFu;
    u32 slot = KERN_PDX + ((phys_end + 0x3FFFFFu) >> 22);
    u32 va = slot << 22;
    if (slot >= NPDENTRIES || (cur_pgdir[slot] & PTE_P) ||
        (vmi.bound && vmi.virtual_top && va >= vmi.virtual_top)) {
        kfree(page);
        return -1;
    }
    u32 cr4 = vmi_ops.get_cr4();
    vmi_ops.set_cr4(cr4 | CR4_PSE);
    set_entry(cur_pgdir, &cur_pgdir[slot], base | PTE_P | PTE_W | PTE_PS, VMI_PAGE_PD, va);
    volatile u32 *big = (volatile u32 *)(va + (pa - base)), *direct = (volatile u32 *)page;
    int r = 0;
    big[0] = 0xB16B00B5;
    if (direct[0] != 0xB16B00B5)
        r = -2;
    direct[1] = 0x5EED1234;
    if (!r && big[1] != 0x5EED1234)
        r = -3;
    if (!r && (cur_pgdir[slot] & (PTE_A | PTE_D)) != (PTE_A | PTE_D))
        r = -4;
    set_entry(cur_pgdir, &cur_pgdir[slot], 0, VMI_PAGE_PD, va);
    invlpg(va + (pa - base));
    vmi_ops.set_cr4(cr4);
    kfree(page);
    return r;
}

/* How much physical memory the direct map can cover: all RAM up to 896 MiB, and never into the
 * hypervisor's reservation [virtual_top, 4 GiB). */
u32 vm_map_limit(u32 ram_end)
{
    u32 end = ram_end < MAX_DIRECT_MAP ? ram_end : MAX_DIRECT_MAP;
    if (vmi.bound && vmi.virtual_top && vmi.virtual_top > KERNBASE && end > vmi.virtual_top - KERNBASE)
        end = vmi.virtual_top - KERNBASE;
    return end & ~(PGSIZE - 1);
}

/* Build the kernel page directory for [0, end) and switch to it. */
void vm_init(u32 end)
{
    phys_end = end;

    vmi_ops.set_linear_mapping(0, KERNBASE, end / PGSIZE, 0);
    vmi_ops.set_lazy_mode(VMI_LAZY_MMU);
    kpgdir = new_table(VMI_PAGE_PD);
    if (!kpgdir)
        panic("vm_init: out of memory");
    for (u32 pa = 0; pa < end; pa += PGSIZE) {
        u32 va = KERNBASE + pa;
        u32 *pte = pgdir_walk(kpgdir, va, 1);
        if (!pte)
            panic("vm_init: out of memory for page tables");
        /* Accessed and Dirty from the start, like Linux's PAGE_KERNEL: nobody ages kernel pages,
         * and a shadowing hypervisor then never has to trap a first access to set them */
        set_entry(kpgdir, pte, pa | PTE_P | PTE_W | PTE_A | PTE_D, VMI_PAGE_PT, va);
    }
    vmi_ops.set_lazy_mode(VMI_LAZY_NONE);
    switch_pgdir(kpgdir);
    kprintf("vm: direct map of %u MiB at %08x, %u pages free\n", end >> 20, KERNBASE, kfree_pages());
}
