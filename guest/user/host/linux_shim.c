/* linux_shim.c - the vmirom system calls implemented over Linux i386 system calls.
 *
 * Used only for the "host" build (make -C guest/user host): the same user programs, linked
 * against this file instead of lib/syscall.c, run as 32-bit Linux processes. That lets the
 * test suite exercise the shell, the tools, the benchmark and most self-checks on the build
 * machine, independently of the vmirom kernel. Programs are looked up in the current
 * directory (the test runs them from guest/build/user-host). Pointers in [USER_TOP, 0xF0000000)
 * are refused with -EFAULT before calling Linux, mirroring the vmirom kernel's split. */
#include "ulib.h"

enum {
    L_exit_group = 252, L_fork = 2, L_read = 3, L_write = 4, L_open = 5, L_close = 6,
    L_wait4 = 114, L_execve = 11, L_getpid = 20, L_getppid = 64, L_pipe = 42, L_dup = 41,
    L_brk = 45, L_old_mmap = 90, L_munmap = 91, L_nanosleep = 162, L_sched_yield = 158,
    L_clock_gettime = 265, L_signal = 48, L_kill = 37, L_getdents64 = 220, L_lseek = 19,
    L_access = 33,
};

/* Linux gives 32-bit processes the whole 4 GiB (the stack sits near 0xFFFFxxxx), so only the
 * range the selftest uses for "kernel" pointers is refused. */
#define BAD(p) ((uintptr_t)(p) >= USER_TOP && (uintptr_t)(p) < 0xF0000000u)
#define LINUX_EACCES 13

long syscall0(long n)
{
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(n) : "memory", "cc");
    return r;
}

long syscall1(long n, long a)
{
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(a) : "memory", "cc");
    return r;
}

long syscall2(long n, long a, long b)
{
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(a), "c"(b) : "memory", "cc");
    return r;
}

long syscall3(long n, long a, long b, long c)
{
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(a), "c"(b), "d"(c) : "memory", "cc");
    return r;
}

long syscall4(long n, long a, long b, long c, long d)
{
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(a), "c"(b), "d"(c), "S"(d) : "memory", "cc");
    return r;
}

long syscall5(long n, long a, long b, long c, long d, long e)
{
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e)
                     : "memory", "cc");
    return r;
}

static void no_sigpipe(void)
{
    static int done;
    if (!done) {
        syscall2(L_signal, 13 /* SIGPIPE */, 1 /* SIG_IGN */);
        done = 1;
    }
}

static const char *local(const char *path)
{
    return path[0] == '/' ? path + 1 : path;
}

void exit(int status)
{
    for (;;)
        syscall1(L_exit_group, status);
}

int fork(void) { no_sigpipe(); return syscall0(L_fork); }
int read(int fd, void *buf, unsigned n) { return BAD(buf) ? -EFAULT : syscall3(L_read, fd, (long)buf, n); }
int write(int fd, const void *buf, unsigned n)
{
    no_sigpipe();
    if (BAD(buf) || (n && BAD((uintptr_t)buf + n - 1)) || (uintptr_t)buf + n < (uintptr_t)buf)
        return -EFAULT;
    return syscall3(L_write, fd, (long)buf, n);
}
int open(const char *path, int flags)
{
    return BAD(path) ? -EFAULT : syscall2(L_open, (long)local(path), 0);
}
int close(int fd) { return syscall1(L_close, fd); }

int wait(int pid, int *status)
{
    if (BAD(status))
        return -EFAULT;
    int st = 0;
    int r = syscall4(L_wait4, pid, (long)&st, 0, 0);
    if (r < 0)
        return r;
    if (status) {
        if ((st & 0x7f) == 0) {
            *status = (st >> 8) & 0xff;
        } else {
            int sig = st & 0x7f, trap = 0;
            if (sig == 11 || sig == 7)
                trap = 14;
            else if (sig == 4)
                trap = 6;
            *status = WSTATUS_KILLED | trap;
        }
    }
    return r;
}

int exec(const char *path, char *const argv[])
{
    if (BAD(path) || BAD(argv))
        return -EFAULT;
    for (int i = 0; argv[i]; i++)
        if (BAD(argv[i]))
            return -EFAULT;
    int r = syscall3(L_execve, (long)local(path), (long)argv, 0);
    return r == -LINUX_EACCES ? -ENOEXEC : r;
}

int getpid(void) { return syscall0(L_getpid); }
int getppid(void) { return syscall0(L_getppid); }
int pipe(int fds[2]) { return BAD(fds) ? -EFAULT : syscall1(L_pipe, (long)fds); }
int dup(int fd) { return syscall1(L_dup, fd); }

void *sbrk(int increment)
{
    long cur = syscall1(L_brk, 0);
    if (increment == 0)
        return (void *)cur;
    long want = cur + increment;
    if (increment > 0 && want < cur)
        return (void *)(long)-ENOMEM;
    long got = syscall1(L_brk, want);
    if (got != want)
        return (void *)(long)-ENOMEM;
    return (void *)cur;
}

void *mmap(void *addr, unsigned len, int prot, int flags)
{
    if (!(flags & MAP_ANON) || len == 0)
        return (void *)(long)-EINVAL;
    long args[6] = {(long)addr, len, prot, MAP_ANON | MAP_PRIVATE, -1, 0};
    return (void *)syscall1(L_old_mmap, (long)args);
}

int munmap(void *addr, unsigned len) { return syscall2(L_munmap, (long)addr, len); }
int mprotect(void *addr, unsigned len, int prot) { return syscall3(125 /* mprotect */, (long)addr, len, prot); }
int pteflags(void *addr, unsigned clear) { return -ENOSYS; }  /* no page tables to look at on Linux */
int vmcheck(int what) { return -ENOSYS; }

int sleep(unsigned ms)
{
    long ts[2] = {ms / 1000, (ms % 1000) * 1000000L};
    return syscall2(L_nanosleep, (long)ts, 0);
}

int yield(void) { return syscall0(L_sched_yield); }

int clock_ns(uint64_t *ns)
{
    if (BAD(ns))
        return -EFAULT;
    long ts[2];
    int r = syscall2(L_clock_gettime, 1 /* CLOCK_MONOTONIC */, (long)ts);
    if (r < 0)
        return r;
    *ns = (uint64_t)ts[0] * 1000000000ull + ts[1];
    return 0;
}

int uptime(void)
{
    uint64_t ns = 0;
    clock_ns(&ns);
    return (int)(ns / (1000000000ull / SYS_HZ));
}

int shutdown(int status) { exit(status); }

int readdir(int index, struct vmirom_dirent *d)
{
    if (BAD(d))
        return -EFAULT;
    if (index < 0)
        return -ENOENT;
    int dir = syscall2(L_open, (long)".", 0200000 /* O_DIRECTORY */);
    if (dir < 0)
        return dir;
    static char buf[8192];
    int seen = 0, r = -ENOENT;
    for (;;) {
        int n = syscall3(L_getdents64, dir, (long)buf, sizeof buf);
        if (n <= 0)
            break;
        for (int off = 0; off < n;) {
            unsigned short reclen = *(unsigned short *)(buf + off + 16);
            unsigned char type = *(unsigned char *)(buf + off + 18);
            const char *name = buf + off + 19;
            off += reclen;
            if (type != 8 /* DT_REG */ || seen++ != index)
                continue;
            memset(d, 0, sizeof *d);
            strlcpy(d->name, name, sizeof d->name);
            int fd = syscall2(L_open, (long)name, 0);
            d->size = fd >= 0 ? syscall3(L_lseek, fd, 0, 2 /* SEEK_END */) : 0;
            if (fd >= 0)
                syscall1(L_close, fd);
            d->mode = syscall2(L_access, (long)name, 1 /* X_OK */) == 0 ? 0100755 : 0100644;
            r = 0;
            goto out;
        }
    }
out:
    syscall1(L_close, dir);
    return r;
}

int procs(struct vmirom_procinfo *buf, int max)
{
    if (BAD(buf))
        return -EFAULT;
    if (max < 1)
        return 0;
    memset(buf, 0, sizeof *buf);
    buf->pid = getpid();
    buf->ppid = getppid();
    buf->state = PSTATE_RUNNING;
    strlcpy(buf->name, "?", sizeof buf->name);
    return 1;
}

int kill(int pid)
{
    int r = syscall2(L_kill, pid, 9 /* SIGKILL */);
    return r;
}
