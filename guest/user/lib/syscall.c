/* syscall.c - system-call stubs: int $0x80, EAX = number, EBX ECX EDX ESI EDI = args (syscall.h). */
#include "ulib.h"

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
    __asm__ volatile("int $0x80"
                     : "=a"(r)
                     : "a"(n), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e)
                     : "memory", "cc");
    return r;
}

void exit(int status)
{
    for (;;)
        syscall1(SYS_exit, status);
}

int fork(void) { return syscall0(SYS_fork); }
int read(int fd, void *buf, unsigned n) { return syscall3(SYS_read, fd, (long)buf, n); }
int write(int fd, const void *buf, unsigned n) { return syscall3(SYS_write, fd, (long)buf, n); }
int open(const char *path, int flags) { return syscall2(SYS_open, (long)path, flags); }
int close(int fd) { return syscall1(SYS_close, fd); }
int wait(int pid, int *status) { return syscall2(SYS_wait, pid, (long)status); }
int exec(const char *path, char *const argv[]) { return syscall2(SYS_exec, (long)path, (long)argv); }
int getpid(void) { return syscall0(SYS_getpid); }
int getppid(void) { return syscall0(SYS_getppid); }
int pipe(int fds[2]) { return syscall1(SYS_pipe, (long)fds); }
int dup(int fd) { return syscall1(SYS_dup, fd); }
void *sbrk(int increment) { return (void *)syscall1(SYS_sbrk, increment); }
void *mmap(void *addr, unsigned len, int prot, int flags)
{
    return (void *)syscall4(SYS_mmap, (long)addr, len, prot, flags);
}
int munmap(void *addr, unsigned len) { return syscall2(SYS_munmap, (long)addr, len); }
int mprotect(void *addr, unsigned len, int prot) { return syscall3(SYS_mprotect, (long)addr, len, prot); }
int pteflags(void *addr, unsigned clear) { return syscall2(SYS_pteflags, (long)addr, clear); }
int vmcheck(int what) { return syscall1(SYS_vmcheck, what); }
int sleep(unsigned ms) { return syscall1(SYS_sleep, ms); }
int yield(void) { return syscall0(SYS_yield); }
int uptime(void) { return syscall0(SYS_uptime); }
int clock_ns(uint64_t *ns) { return syscall1(SYS_clock, (long)ns); }
int shutdown(int status) { return syscall1(SYS_shutdown, status); }
int readdir(int index, struct vmirom_dirent *d) { return syscall2(SYS_readdir, index, (long)d); }
int procs(struct vmirom_procinfo *buf, int max) { return syscall2(SYS_procs, (long)buf, max); }
int kill(int pid) { return syscall1(SYS_kill, pid); }
