/* kalloc.c - physical page allocator: a free list in front of a bump pointer, and a reference
 * count per page (for copy-on-write).  Pages are handed out as direct-map addresses.
 * No interrupt handler allocates memory and the kernel runs with interrupts off outside the
 * idle halt, so there is no locking here (and no interrupt-flag VMI calls on this hot path). */
#include "kernel.h"
#include "pv.h"

struct run { struct run *next; };

static struct run *freelist;
static u32 bump_pa, end_pa, nfree;
static u16 *refcnt;            /* indexed by pfn */
static u32 npfn;

/* [start_pa, end_pa) is free RAM; it must lie within what the boot map covers until vm_init. */
void kinit_early(u32 start, u32 end)
{
    bump_pa = PGROUNDUP(start);
    end_pa = PGROUNDDOWN(end);
    npfn = end_pa / PGSIZE;
    u32 bytes = PGROUNDUP(npfn * sizeof(u16));
    refcnt = P2V(bump_pa);
    memset(refcnt, 0, bytes);
    bump_pa += bytes;
    nfree = (end_pa - bump_pa) / PGSIZE;
}

void *kalloc(void)
{
    void *p = 0;
    if (freelist) {
        p = freelist;
        freelist = freelist->next;
    } else if (bump_pa < end_pa) {
        p = P2V(bump_pa);
        bump_pa += PGSIZE;
    }
    if (p) {
        nfree--;
        refcnt[V2P(p) / PGSIZE] = 1;
    }
    if (p)
        memset(p, 0, PGSIZE);
    return p;
}

void kfree(void *va)
{
    if ((u32)va % PGSIZE || V2P(va) >= end_pa)
        panic("kfree %p", va);
    struct run *r = va;
    r->next = freelist;
    freelist = r;
    nfree++;
    refcnt[V2P(va) / PGSIZE] = 0;
}

u32 kfree_pages(void) { return nfree; }

void page_ref(u32 pa)
{
    refcnt[pa / PGSIZE]++;
}

int page_unref(u32 pa)
{
    int n = --refcnt[pa / PGSIZE];
    if (n == 0)
        kfree(P2V(pa));
    return n;
}

int page_refcount(u32 pa) { return refcnt[pa / PGSIZE]; }
