/* exec.c - replace a process image with an ELF program from the initrd (syscall.h "exec"). */
#include "kernel.h"
#include "mmu.h"
#include "proc.h"
#include "pv.h"
#include "syscall.h"
#include "vm.h"

struct elfhdr {
    u8 ident[16];
    u16 type, machine;
    u32 version, entry, phoff, shoff, flags;
    u16 ehsize, phentsize, phnum, shentsize, shnum, shstrndx;
} PACKED;

struct proghdr {
    u32 type, offset, vaddr, paddr, filesz, memsz, flags, align;
} PACKED;

#define PT_LOAD 1
#define PF_W 2

/* Map [va, va+memsz) in pgdir, copying filesz bytes from data; returns the segment end or 0. */
static u32 load_segment(u32 *pgdir, const struct proghdr *ph, const u8 *file, u32 fsize)
{
    if (ph->memsz < ph->filesz || ph->vaddr < PGSIZE || ph->vaddr + ph->memsz < ph->vaddr ||
        ph->vaddr + ph->memsz > USER_STACK_TOP - USER_STACK_MAX || ph->offset + ph->filesz < ph->offset ||
        ph->offset + ph->filesz > fsize)
        return 0;
    u32 perm = PTE_U | ((ph->flags & PF_W) ? PTE_W : 0);
    for (u32 va = PGROUNDDOWN(ph->vaddr); va < ph->vaddr + ph->memsz; va += PGSIZE) {
        u32 *pte = pgdir_walk(pgdir, va, 1);
        if (!pte)
            return 0;
        u8 *page;
        if (*pte & PTE_P) {                  /* shared with the previous segment */
            page = P2V(PTE_ADDR(*pte));
            if ((perm & PTE_W) && !(*pte & PTE_W))
                set_entry(pgdir, pte, *pte | PTE_W, VMI_PAGE_PT, va);
        } else {
            page = kalloc();
            if (!page)
                return 0;
            set_entry(pgdir, pte, V2P(page) | perm | PTE_P | PTE_A, VMI_PAGE_PT, va);
        }
        /* bytes of the file that land in this page */
        u32 lo = va > ph->vaddr ? va : ph->vaddr;
        u32 hi = va + PGSIZE < ph->vaddr + ph->filesz ? va + PGSIZE : ph->vaddr + ph->filesz;
        if (hi > lo)
            memcpy(page + (lo - va), file + ph->offset + (lo - ph->vaddr), hi - lo);
    }
    return ph->vaddr + ph->memsz;
}

static const char *basename(const char *s)
{
    const char *b = s;
    for (; *s; s++)
        if (*s == '/' && s[1])
            b = s + 1;
    return b;
}

/* kargv: argc kernel strings.  On success the current process runs the new image when it
 * returns to user space. */
int exec(const char *path, char *const kargv[], int argc)
{
    struct proc *p = curproc;
    struct initrd_file f;
    if (initrd_find(path, &f) < 0)
        return -ENOENT;
    const struct elfhdr *eh = (const void *)f.data;
    if (f.size < sizeof *eh || memcmp(eh->ident, "\x7f" "ELF", 4) != 0 || eh->ident[4] != 1 ||
        eh->ident[5] != 1 || eh->type != 2 || eh->machine != 3 || eh->phentsize != sizeof(struct proghdr) ||
        eh->phnum == 0 || eh->phnum > 16 || eh->phoff > f.size ||
        eh->phoff + eh->phnum * sizeof(struct proghdr) > f.size)
        return -ENOEXEC;

    /* size of the argument block: strings + pointers + argc, 16-byte aligned */
    u32 strbytes = 0;
    for (int i = 0; i < argc; i++)
        strbytes += strlen(kargv[i]) + 1;
    if (argc > EXEC_MAXARG || strbytes > EXEC_MAXARGBYTES)
        return -E2BIG;

    u32 *pgdir = pgdir_new();
    if (!pgdir)
        return -ENOMEM;
    int err = -ENOEXEC;
    u32 top = 0;
    vmi_ops.set_lazy_mode(VMI_LAZY_MMU);
    const struct proghdr *ph = (const void *)(f.data + eh->phoff);
    for (int i = 0; i < eh->phnum; i++) {
        if (ph[i].type != PT_LOAD || ph[i].memsz == 0)
            continue;
        u32 end = load_segment(pgdir, &ph[i], f.data, f.size);
        if (!end) {
            err = kfree_pages() ? -ENOEXEC : -ENOMEM;
            goto bad;
        }
        if (end > top)
            top = end;
    }
    if (!top || eh->entry >= top)
        goto bad;

    /* the stack: argument block in the top page(s), the rest grows lazily */
    u32 block = strbytes + (argc + 3) * 4;
    u32 sp = (USER_STACK_TOP - block) & ~15u;
    for (u32 va = PGROUNDDOWN(sp); va < USER_STACK_TOP; va += PGSIZE) {
        u8 *page = kalloc();
        if (!page || map_page(pgdir, va, V2P(page), PTE_U | PTE_W | PTE_A | PTE_D) < 0) {
            err = -ENOMEM;
            goto bad;
        }
    }
    vmi_ops.set_lazy_mode(VMI_LAZY_NONE);
    /* write the block through the kernel map of the new pages */
    u32 strp = sp + (argc + 3) * 4;
    u32 words[EXEC_MAXARG + 3];
    words[0] = argc;
    for (int i = 0; i < argc; i++) {
        u32 len = strlen(kargv[i]) + 1;
        for (u32 k = 0; k < len; k++) {
            u32 va = strp + k;
            u32 *pte = pgdir_walk(pgdir, va, 0);
            *((u8 *)P2V(PTE_ADDR(*pte)) + (va & 0xFFF)) = kargv[i][k];
        }
        words[1 + i] = strp;
        strp += len;
    }
    words[1 + argc] = 0;
    words[2 + argc] = 0;
    for (int i = 0; i < argc + 3; i++) {
        u32 va = sp + 4 * i;
        u32 *pte = pgdir_walk(pgdir, va, 0);
        *(u32 *)((u8 *)P2V(PTE_ADDR(*pte)) + (va & 0xFFF)) = words[i];
    }

    /* commit */
    strlcpy(p->name, basename(argc ? kargv[0] : path), sizeof p->name);
    u32 *old = p->pgdir;
    p->pgdir = pgdir;
    switch_pgdir(pgdir);
    if (old)
        pgdir_free(old);
    p->heap_start = p->brk = PGROUNDUP(top);
    p->stack_low = USER_STACK_TOP - USER_STACK_MAX;
    memset(p->mmaps, 0, sizeof p->mmaps);
    memset(p->tf, 0, sizeof *p->tf);
    p->tf->cs = SEL_UCODE;
    p->tf->ds = p->tf->es = p->tf->fs = p->tf->gs = p->tf->ss = SEL_UDATA;
    p->tf->eflags = FL_IF | 0x2;
    p->tf->eip = eh->entry;
    p->tf->esp = sp;
    return 0;

bad:
    vmi_ops.set_lazy_mode(VMI_LAZY_NONE);
    pgdir_free(pgdir);
    return err;
}
