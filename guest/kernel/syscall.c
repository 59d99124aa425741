/* syscall.c - the system calls of guest/include/syscall.h, and user faults.
 * int $0x80: EAX = number, arguments EBX, ECX, EDX, ESI, EDI; result in EAX (-errno on error). */
#include "kernel.h"
#include "mmu.h"
#include "proc.h"
#include "pv.h"
#include "syscall.h"
#include "vm.h"

u32 syscall_counts[SYS_MAX + 1];

static int fd_get(int fd, struct file **f)
{
    if (fd < 0 || fd >= NOFILE || !curproc->ofile[fd])
        return -EBADF;
    *f = curproc->ofile[fd];
    return 0;
}

static int fd_alloc(struct file *f)
{
    for (int fd = 0; fd < NOFILE; fd++)
        if (!curproc->ofile[fd]) {
            curproc->ofile[fd] = f;
            return fd;
        }
    return -EMFILE;
}

static int sys_read(u32 fd, u32 buf, u32 n, u32 a4, u32 a5)
{
    struct file *f;
    int r = fd_get(fd, &f);
    return r < 0 ? r : file_read(f, buf, n);
}

static int sys_write(u32 fd, u32 buf, u32 n, u32 a4, u32 a5)
{
    struct file *f;
    int r = fd_get(fd, &f);
    return r < 0 ? r : file_write(f, buf, n);
}

static int sys_open(u32 upath, u32 flags, u32 a3, u32 a4, u32 a5)
{
    char path[NAME_MAX_ + 2];
    int r = fetchstr(curproc, upath, path, sizeof path);
    if (r < 0)
        return r == -ENAMETOOLONG ? -ENOENT : r;
    if (flags != O_RDONLY)
        return -EINVAL;
    struct initrd_file ifile;
    if (initrd_find(path, &ifile) < 0)
        return -ENOENT;
    struct file *f = file_alloc();
    if (!f)
        return -EMFILE;
    f->type = FD_INITRD;
    f->readable = 1;
    f->ifile = ifile;
    int fd = fd_alloc(f);
    if (fd < 0)
        file_close(f);
    return fd;
}

static int sys_close(u32 fd, u32 a2, u32 a3, u32 a4, u32 a5)
{
    struct file *f;
    int r = fd_get(fd, &f);
    if (r < 0)
        return r;
    curproc->ofile[fd] = 0;
    file_close(f);
    return 0;
}

static int sys_dup(u32 fd, u32 a2, u32 a3, u32 a4, u32 a5)
{
    struct file *f;
    int r = fd_get(fd, &f);
    if (r < 0)
        return r;
    r = fd_alloc(f);
    if (r >= 0)
        file_dup(f);
    return r;
}

static int sys_pipe(u32 ufds, u32 a2, u32 a3, u32 a4, u32 a5)
{
    if (check_user(curproc, ufds, 8, 1) < 0)
        return -EFAULT;
    struct file *r, *w;
    int err = pipe_alloc(&r, &w);
    if (err < 0)
        return err;
    int fds[2];
    fds[0] = fd_alloc(r);
    fds[1] = fds[0] >= 0 ? fd_alloc(w) : -1;
    if (fds[1] < 0) {
        if (fds[0] >= 0)
            curproc->ofile[fds[0]] = 0;
        file_close(r);
        file_close(w);
        return -EMFILE;
    }
    if (copyout(curproc, ufds, fds, 8) < 0) {
        curproc->ofile[fds[0]] = curproc->ofile[fds[1]] = 0;
        file_close(r);
        file_close(w);
        return -EFAULT;
    }
    return 0;
}

static int sys_exit(u32 status, u32 a2, u32 a3, u32 a4, u32 a5)
{
    exit_proc(status & 0xFF);
}

static int sys_fork(u32 a1, u32 a2, u32 a3, u32 a4, u32 a5) { return fork(); }
static int sys_wait(u32 pid, u32 st, u32 a3, u32 a4, u32 a5) { return wait_pid((int)pid, st); }
static int sys_getpid(u32 a1, u32 a2, u32 a3, u32 a4, u32 a5) { return curproc->pid; }

static int sys_getppid(u32 a1, u32 a2, u32 a3, u32 a4, u32 a5)
{
    return curproc->parent ? curproc->parent->pid : 0;
}

static int sys_exec(u32 upath, u32 uargv, u32 a3, u32 a4, u32 a5)
{
    char path[NAME_MAX_ + 2];
    int r = fetchstr(curproc, upath, path, sizeof path);
    if (r < 0)
        return r == -ENAMETOOLONG ? -ENOENT : r;
    char *buf = kalloc();          /* argument strings */
    if (!buf)
        return -ENOMEM;
    char *argv[EXEC_MAXARG + 1];
    int argc = 0;
    u32 used = 0;
    for (;; argc++) {
        u32 up;
        if (copyin(curproc, &up, uargv + 4 * argc, 4) < 0) {
            r = -EFAULT;
            goto out;
        }
        if (!up)
            break;
        if (argc >= EXEC_MAXARG) {
            r = -E2BIG;
            goto out;
        }
        int len = fetchstr(curproc, up, buf + used, PGSIZE - used);
        if (len < 0) {
            r = len == -ENAMETOOLONG ? -E2BIG : len;
            goto out;
        }
        argv[argc] = buf + used;
        used += len + 1;
        if (used > EXEC_MAXARGBYTES) {
            r = -E2BIG;
            goto out;
        }
    }
    argv[argc] = 0;
    r = exec(path, argv, argc);
out:
    kfree(buf);
    return r;
}

static int sys_sbrk(u32 incr, u32 a2, u32 a3, u32 a4, u32 a5)
{
    struct proc *p = curproc;
    i32 n = (i32)incr;
    u32 old = p->brk;
    if (n > 0) {
        u32 nb = old + n;
        if (nb < old || nb > MMAP_BASE || (u32)n / PGSIZE > kfree_pages())
            return -ENOMEM;
        p->brk = nb;
    } else if (n < 0) {
        u32 dec = -(u32)n;
        if (dec > old - p->heap_start)
            return -EINVAL;
        u32 nb = old - dec;
        uvm_unmap(p, PGROUNDUP(nb), PGROUNDUP(old));
        p->brk = nb;
    }
    return old;
}

static int mmap_overlaps(struct proc *p, u32 start, u32 end)
{
    for (int i = 0; i < NMMAP; i++)
        if (p->mmaps[i].start < end && start < p->mmaps[i].end)
            return 1;
    return 0;
}

static int sys_mmap(u32 addr, u32 len, u32 prot, u32 flags, u32 a5)
{
    struct proc *p = curproc;
    if (!(flags & MAP_ANON) || len == 0 || len > MMAP_END - MMAP_BASE || (prot & ~(PROT_READ | PROT_WRITE)))
        return -EINVAL;
    len = PGROUNDUP(len);
    int slot = -1;
    for (int i = 0; i < NMMAP; i++)
        if (p->mmaps[i].start == p->mmaps[i].end) {
            slot = i;
            break;
        }
    if (slot < 0)
        return -ENOMEM;
    u32 start = 0;
    if (addr && addr % PGSIZE == 0 && addr >= MMAP_BASE && addr + len <= MMAP_END && addr + len > addr &&
        !mmap_overlaps(p, addr, addr + len))
        start = addr;
    for (u32 cand = MMAP_BASE; !start && cand + len <= MMAP_END && cand + len > cand;) {
        int moved = 0;
        for (int i = 0; i < NMMAP; i++)
            if (p->mmaps[i].start < cand + len && cand < p->mmaps[i].end) {
                cand = p->mmaps[i].end;
                moved = 1;
            }
        if (!moved)
            start = cand;
    }
    if (!start)
        return -ENOMEM;
    p->mmaps[slot].start = start;
    p->mmaps[slot].end = start + len;
    p->mmaps[slot].perm = PTE_U | ((prot & PROT_WRITE) ? PTE_W : 0);
    return start;
}

static int sys_mprotect(u32 addr, u32 len, u32 prot, u32 a4, u32 a5)
{
    struct proc *p = curproc;
    u32 end = PGROUNDUP(addr + len);
    if (addr % PGSIZE || len == 0 || end < addr || (prot & ~(PROT_READ | PROT_WRITE)))
        return -EINVAL;
    for (int i = 0; i < NMMAP; i++) {
        struct region *r = &p->mmaps[i];
        if (r->start == addr && r->end == end && r->start != r->end) {
            r->perm = PTE_U | ((prot & PROT_WRITE) ? PTE_W : 0);
            uvm_protect(p, addr, end, r->perm);
            return 0;
        }
    }
    return -EINVAL;
}

static int sys_pteflags(u32 addr, u32 clear, u32 a3, u32 a4, u32 a5)
{
    if (addr >= USER_TOP || (clear & ~(PTE_A | PTE_D)))
        return -EINVAL;
    return uvm_pteflags(curproc, addr, clear);
}

static int sys_vmcheck(u32 what, u32 a2, u32 a3, u32 a4, u32 a5)
{
    return what == VMCHECK_BIGPAGE ? vm_bigpage_check() : -EINVAL;
}

static int sys_munmap(u32 addr, u32 len, u32 a3, u32 a4, u32 a5)
{
    struct proc *p = curproc;
    if (addr % PGSIZE || len == 0 || addr + len < addr || addr + len > USER_TOP)
        return -EINVAL;
    u32 end = PGROUNDUP(addr + len);
    for (int i = 0; i < NMMAP; i++) {
        struct region *r = &p->mmaps[i];
        if (r->start == r->end || r->end <= addr || end <= r->start)
            continue;
        if (addr <= r->start && end >= r->end) {
            r->start = r->end = 0;
        } else if (addr <= r->start) {
            r->start = end;
        } else if (end >= r->end) {
            r->end = addr;
        } else {                                  /* a hole in the middle: split */
            int j;
            for (j = 0; j < NMMAP && p->mmaps[j].start != p->mmaps[j].end; j++)
                ;
            if (j == NMMAP)
                return -ENOMEM;
            p->mmaps[j].start = end;
            p->mmaps[j].end = r->end;
            p->mmaps[j].perm = r->perm;
            r->end = addr;
        }
    }
    /* only pages of mmap regions are unmapped (heap and stack are managed by sbrk/exec) */
    if (addr >= MMAP_BASE && end <= MMAP_END)
        uvm_unmap(p, addr, end);
    return 0;
}

static int sys_sleep(u32 ms, u32 a2, u32 a3, u32 a4, u32 a5)
{
    if (ms == 0) {
        yield();
        return 0;
    }
    u32 n = (ms * (u64)SYS_HZ + 999) / 1000;
    u32 target = ticks + (n ? n : 1);
    while ((i32)(ticks - target) < 0) {
        if (curproc->killed)
            return -EINTR;
        sleep_on((void *)&ticks);
    }
    return 0;
}

static int sys_yield(u32 a1, u32 a2, u32 a3, u32 a4, u32 a5)
{
    yield();
    return 0;
}

static int sys_uptime(u32 a1, u32 a2, u32 a3, u32 a4, u32 a5) { return ticks; }

static int sys_clock(u32 uns, u32 a2, u32 a3, u32 a4, u32 a5)
{
    u64 ns = clock_ns();
    return copyout(curproc, uns, &ns, 8);
}

static int sys_shutdown(u32 status, u32 a2, u32 a3, u32 a4, u32 a5)
{
    if (curproc->pid != 1)
        return -EPERM;
    shutdown((int)status);
}

static int sys_readdir(u32 index, u32 ud, u32 a3, u32 a4, u32 a5)
{
    struct initrd_file f;
    if (initrd_index((int)index, &f) < 0)
        return -ENOENT;
    struct vmirom_dirent d;
    memset(&d, 0, sizeof d);
    d.size = f.size;
    d.mode = f.mode;
    strlcpy(d.name, f.name, sizeof d.name);
    return copyout(curproc, ud, &d, sizeof d);
}

static int sys_procs(u32 ubuf, u32 max, u32 a3, u32 a4, u32 a5)
{
    if ((i32)max < 0 || max > NPROC * 4)
        max = NPROC;
    if (check_user(curproc, ubuf, max * sizeof(struct vmirom_procinfo), 1) < 0)
        return -EFAULT;
    return procs_info(ubuf, max);
}

static int sys_kill(u32 pid, u32 a2, u32 a3, u32 a4, u32 a5) { return kill((int)pid); }

typedef int (*sysfn)(u32, u32, u32, u32, u32);
static const sysfn systab[SYS_MAX + 1] = {
    [SYS_exit] = sys_exit, [SYS_fork] = sys_fork, [SYS_read] = sys_read, [SYS_write] = sys_write,
    [SYS_open] = sys_open, [SYS_close] = sys_close, [SYS_wait] = sys_wait, [SYS_exec] = sys_exec,
    [SYS_getpid] = sys_getpid, [SYS_getppid] = sys_getppid, [SYS_pipe] = sys_pipe, [SYS_dup] = sys_dup,
    [SYS_sbrk] = sys_sbrk, [SYS_mmap] = sys_mmap, [SYS_munmap] = sys_munmap, [SYS_sleep] = sys_sleep,
    [SYS_yield] = sys_yield, [SYS_uptime] = sys_uptime, [SYS_clock] = sys_clock,
    [SYS_shutdown] = sys_shutdown, [SYS_readdir] = sys_readdir, [SYS_procs] = sys_procs,
    [SYS_kill] = sys_kill, [SYS_mprotect] = sys_mprotect, [SYS_pteflags] = sys_pteflags,
    [SYS_vmcheck] = sys_vmcheck,
};

void syscall_dispatch(struct trapframe *tf)
{
    struct proc *p = curproc;
    if (!p || (tf->cs & 3) != 3)
        panic("system call from the kernel");
    u32 n = tf->eax;
    int r;
    if (n <= SYS_MAX && systab[n]) {
        syscall_counts[n]++;
        r = systab[n](tf->ebx, tf->ecx, tf->edx, tf->esi, tf->edi);
    } else {
        r = -ENOSYS;
    }
    /* exec replaced the frame: its EAX is whatever the new image gets (0) */
    tf->eax = r;
    if (p->killed)
        exit_proc(WSTATUS_KILLED);
}

static const char *const trap_names[] = {
    "divide error", "debug", "NMI", "breakpoint", "overflow", "bound range", "invalid opcode",
    "device not available", "double fault", "coprocessor overrun", "invalid TSS",
    "segment not present", "stack fault", "general protection", "page fault",
};

/* A fault in user mode: resolve lazy/COW page faults, otherwise kill the process. */
int user_fault(struct trapframe *tf)
{
    struct proc *p = curproc;
    if (!p)
        return 0;
    u32 addr = 0;
    if (tf->trapno == T_PGFLT) {
        addr = read_cr2();
        if (uvm_fault(p, addr, tf->err) == 0)
            return 1;
    }
    const char *name = tf->trapno < ARRAY_SIZE(trap_names) ? trap_names[tf->trapno] : "trap";
    kprintf("pid %d (%s): %s (trap %u, error %x) at eip %08x, address %08x: killed\n", p->pid, p->name, name,
            tf->trapno, tf->err, tf->eip, addr);
    char qname[40];
    json_str(qname, sizeof qname, p->name);
    jsonline("{\"event\":\"user_fault\",\"pid\":%d,\"name\":%s,\"trap\":%u,\"error\":%u,\"eip\":%u,"
             "\"addr\":%u}", p->pid, qname, tf->trapno, tf->err, tf->eip, addr);
    exit_proc(WSTATUS_KILLED | (tf->trapno & 0xFF));
}
