/* uvm.c - user address spaces: lazily allocated regions (heap, stack, anonymous mmap),
 * copy-on-write fork, and safe access to user memory from the kernel.
 *
 * The kernel never takes a page fault on user memory: copyin/copyout walk the page tables in
 * software and resolve lazy and copy-on-write pages themselves.  Every page-table entry change
 * is a VMI SetPxE (through set_entry), with TLB work through InvalPage/FlushTLB. */
#include "kernel.h"
#include "mmu.h"
#include "proc.h"
#include "pv.h"
#include "syscall.h"
#include "vm.h"

u32 region_perm(struct proc *p, u32 va)
{
    if (va >= USER_TOP)
        return 0;
    if (va >= p->heap_start && va < PGROUNDUP(p->brk))
        return PTE_U | PTE_W;
    if (va >= p->stack_low && va < USER_STACK_TOP)
        return PTE_U | PTE_W;
    for (int i = 0; i < NMMAP; i++)
        if (va >= p->mmaps[i].start && va < p->mmaps[i].end)
            return p->mmaps[i].perm;
    return 0;
}

/* May a copy-on-write page at va become writable?  Not in an mmap region mprotect()ed read-only
 * (program data, heap and stack pages always may). */
static int cow_writable(struct proc *p, u32 va)
{
    for (int i = 0; i < NMMAP; i++)
        if (va >= p->mmaps[i].start && va < p->mmaps[i].end)
            return (p->mmaps[i].perm & PTE_W) != 0;
    return 1;
}

static void tlb_inval(struct proc *p, u32 va)
{
    if (p->pgdir == cur_pgdir)
        invlpg(va);
}

static int cow_break(struct proc *p, u32 va, u32 *pte)
{
    u32 pa = PTE_ADDR(*pte);
    u32 flags = (*pte & 0xFFF & ~PTE_COW) | PTE_W | PTE_A | PTE_D;   /* a write fault: used, dirty */
    if (page_refcount(pa) == 1) {
        set_entry(p->pgdir, pte, pa | flags, VMI_PAGE_PT, va);
    } else {
        u8 *n = kalloc();
        if (!n)
            return -1;
        memcpy(n, P2V(pa), PGSIZE);
        set_entry(p->pgdir, pte, V2P(n) | flags, VMI_PAGE_PT, va);
        page_unref(pa);
    }
    tlb_inval(p, va);
    return 0;
}

/* Kernel address of user byte `va`, making the page present (lazy) and private (COW) as
 * needed; 0 if the address is not valid user memory for this access. */
void *uva_page(struct proc *p, u32 va, int write)
{
    if (va >= USER_TOP || va < PGSIZE)
        return 0;
    u32 *pte = pgdir_walk(p->pgdir, va, 0);
    if (pte && (*pte & PTE_P)) {
        if (!(*pte & PTE_U))
            return 0;
        if (write && !(*pte & PTE_W)) {
            if (!(*pte & PTE_COW) || !cow_writable(p, va) || cow_break(p, PGROUNDDOWN(va), pte) < 0)
                return 0;
        }
        return (u8 *)P2V(PTE_ADDR(*pte)) + (va & (PGSIZE - 1));
    }
    u32 perm = region_perm(p, va);
    if (!perm || (write && !(perm & PTE_W)))
        return 0;
    u8 *page = kalloc();
    if (!page)
        return 0;
    /* a fresh page is mapped Accessed (and Dirty for a write fault), as Linux maps it "young" */
    if (map_page(p->pgdir, PGROUNDDOWN(va), V2P(page), perm | PTE_A | (write ? PTE_D : 0)) < 0) {
        kfree(page);
        return 0;
    }
    return page + (va & (PGSIZE - 1));
}

int uvm_fault(struct proc *p, u32 va, u32 err)
{
    return uva_page(p, va, (err & 2) != 0) ? 0 : -1;
}

int check_user(struct proc *p, u32 uva, u32 n, int write)
{
    if (uva + n < uva || uva + n > USER_TOP)
        return -EFAULT;
    for (u32 va = PGROUNDDOWN(uva); va < uva + n; va += PGSIZE)
        if (!uva_page(p, va < uva ? uva : va, write))
            return -EFAULT;
    return 0;
}

int copyout(struct proc *p, u32 dst, const void *src, u32 n)
{
    const u8 *s = src;
    while (n) {
        u8 *k = uva_page(p, dst, 1);
        if (!k)
            return -EFAULT;
        u32 chunk = PGSIZE - (dst & (PGSIZE - 1));
        if (chunk > n)
            chunk = n;
        memcpy(k, s, chunk);
        s += chunk;
        dst += chunk;
        n -= chunk;
    }
    return 0;
}

int copyin(struct proc *p, void *dst, u32 src, u32 n)
{
    u8 *d = dst;
    while (n) {
        u8 *k = uva_page(p, src, 0);
        if (!k)
            return -EFAULT;
        u32 chunk = PGSIZE - (src & (PGSIZE - 1));
        if (chunk > n)
            chunk = n;
        memcpy(d, k, chunk);
        d += chunk;
        src += chunk;
        n -= chunk;
    }
    return 0;
}

int fetchstr(struct proc *p, u32 uva, char *buf, u32 max)
{
    for (u32 i = 0; i < max; i++) {
        const char *k = uva_page(p, uva + i, 0);
        if (!k)
            return -EFAULT;
        buf[i] = *k;
        if (!*k)
            return i;
    }
    return -ENAMETOOLONG;
}

/* fork: the child gets the same pages; writable ones become read-only + COW in both. */
u32 *uvm_copy(u32 *parent)
{
    u32 *child = pgdir_new();
    if (!child)
        return 0;
    int changed = 0;
    vmi_ops.set_lazy_mode(VMI_LAZY_MMU);
    for (u32 i = 0; i < KERN_PDX; i++) {
        if (!(parent[i] & PTE_P))
            continue;
        u32 *pt = P2V(PTE_ADDR(parent[i]));
        for (u32 j = 0; j < NPTENTRIES; j++) {
            u32 e = pt[j];
            if (!(e & PTE_P))
                continue;
            u32 va = (i << 22) | (j << 12);
            if (e & PTE_W) {
                e = (e & ~PTE_W) | PTE_COW;
                set_entry(parent, &pt[j], e, VMI_PAGE_PT | (parent == cur_pgdir ? VMI_PAGE_DEFER : 0), va);
                changed = 1;
            }
            u32 *cpte = pgdir_walk(child, va, 1);
            if (!cpte) {
                vmi_ops.set_lazy_mode(VMI_LAZY_NONE);
                pgdir_free(child);
                return 0;
            }
            set_entry(child, cpte, e, VMI_PAGE_PT, va);
            page_ref(PTE_ADDR(e));
        }
    }
    vmi_ops.set_lazy_mode(VMI_LAZY_NONE);
    if (changed && parent == cur_pgdir)
        flush_user_tlb();
    return child;
}

/* After changing entries of [start, end) in p's tables: the TLB forgets them (a few invlpg, or
 * one flush for a big range).  Only the live address space can have them cached. */
static void tlb_range(struct proc *p, u32 start, u32 end)
{
    if (p->pgdir != cur_pgdir)
        return;
    if ((end - start) / PGSIZE <= 8)
        for (u32 va = start; va < end; va += PGSIZE)
            invlpg(va);
    else
        flush_user_tlb();
}

/* mprotect: present pages of [start, end) take the W bit of `perm`; a shared copy-on-write page
 * stays read-only (its next write fault copies it, if the region allows writes then). */
void uvm_protect(struct proc *p, u32 start, u32 end, u32 perm)
{
    int changed = 0;
    for (u32 va = start; va < end; va += PGSIZE) {
        u32 *pte = pgdir_walk(p->pgdir, va, 0);
        if (!pte || !(*pte & PTE_P))
            continue;
        u32 e = *pte;
        u32 w = (perm & PTE_W) && !(e & PTE_COW) ? PTE_W : 0;
        if ((e & PTE_W) != w) {
            set_entry(p->pgdir, pte, (e & ~PTE_W) | w, VMI_PAGE_PT, va);
            changed = 1;
        }
    }
    if (changed)
        tlb_range(p, start, end);
}

/* pteflags(): the entry's flag bits, then clear the Accessed/Dirty bits asked for.  The CPU sets
 * them again only once the entry has left its TLB: hence the invlpg. */
int uvm_pteflags(struct proc *p, u32 va, u32 clear)
{
    u32 *pte = pgdir_walk(p->pgdir, va, 0);
    if (!pte || !(*pte & PTE_P))
        return -EFAULT;
    u32 flags = *pte & 0xFFF;
    if (flags & clear) {
        set_entry(p->pgdir, pte, *pte & ~clear, VMI_PAGE_PT, PGROUNDDOWN(va));
        tlb_range(p, PGROUNDDOWN(va), PGROUNDDOWN(va) + PGSIZE);
    }
    return flags;
}

int uvm_unmap(struct proc *p, u32 start, u32 end)
{
    int changed = 0;
    for (u32 va = start; va < end; va += PGSIZE) {
        u32 *pde = &p->pgdir[PDX(va)];
        if (!(*pde & PTE_P)) {
            va = (va & ~0x3FFFFFu) + (1u << 22) - PGSIZE;
            continue;
        }
        u32 *pte = pgdir_walk(p->pgdir, va, 0);
        if (!pte || !(*pte & PTE_P))
            continue;
        u32 pa = PTE_ADDR(*pte);
        set_entry(p->pgdir, pte, 0, VMI_PAGE_PT | (p->pgdir == cur_pgdir ? VMI_PAGE_DEFER : 0), va);
        page_unref(pa);
        changed++;
    }
    if (changed)
        tlb_range(p, start, end);
    return 0;
}

u32 user_mem(struct proc *p)
{
    u32 n = 0;
    for (u32 i = 0; i < KERN_PDX; i++) {
        if (!(p->pgdir[i] & PTE_P))
            continue;
        u32 *pt = P2V(PTE_ADDR(p->pgdir[i]));
        for (u32 j = 0; j < NPTENTRIES; j++)
            if (pt[j] & PTE_P)
                n += PGSIZE;
    }
    return n;
}
