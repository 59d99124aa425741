/* selftest - checks the kernel's process, memory, pipe and error behaviour from user space.
 *
 *   selftest [-l] [CHECK...]      (no CHECK: all of them, in order)
 *
 * Each check runs in its own child process (so a check that crashes is a failed check, not a
 * dead test run) and prints one machine-readable and one human line:
 *   VMIROM-JSON {"event":"selftest","check":NAME,"ok":true|false,"detail":"..."}
 *   selftest: NAME ... ok|FAIL (detail)
 * then the run ends with
 *   VMIROM-JSON {"event":"selftest_summary","passed":P,"failed":F,"total":T}
 * and the exit status is the number of failed checks (so init=selftest shuts down with 0 only
 * when all pass). */
#include "ulib.h"

#define PAGE 4096u
#define KERNEL_PTR(off) ((void *)(0xC0000000u + (off)))

typedef int (*check_fn)(char *d, int n);

static int fails;   /* per-check failure notes appended by EXPECT */

#define NOTE(...) snprintf(d + strlen(d), n - strlen(d), __VA_ARGS__)
#define EXPECT(cond, ...)                              \
    do {                                               \
        if (!(cond)) {                                 \
            fails++;                                   \
            NOTE(__VA_ARGS__);                         \
            NOTE("; ");                                \
        }                                              \
    } while (0)

/* fork a child that runs fn(arg) and exits with its return; -> wait status (or -errno) */
static int run_child(int (*fn)(long), long arg)
{
    int pid = fork();
    if (pid < 0)
        return pid;
    if (pid == 0)
        exit(fn(arg));
    int status = -1;
    int r = wait(pid, &status);
    return r < 0 ? r : status;
}

/* ------------------------------------------------------------------ checks */

static int c_getpid(char *d, int n)
{
    int me = getpid(), pp = getppid();
    EXPECT(me > 1, "getpid()=%d", me);
    EXPECT(pp >= 1, "getppid()=%d", pp);
    int p[2];
    pipe(p);
    int pid = fork();
    if (pid == 0) {
        int v[2] = {getpid(), getppid()};
        write(p[1], v, sizeof v);
        exit(0);
    }
    int v[2] = {0, 0};
    read(p[0], v, sizeof v);
    wait(pid, NULL);
    EXPECT(v[0] == pid, "child getpid()=%d, fork returned %d", v[0], pid);
    EXPECT(v[1] == me, "child getppid()=%d, parent is %d", v[1], me);
    EXPECT(pid != me, "fork returned own pid");
    close(p[0]);
    close(p[1]);
    NOTE("pid %d ppid %d child %d", me, pp, pid);
    return fails == 0;
}

static int global_counter = 7;

static int c_fork_isolation(char *d, int n)
{
    volatile int local = 11;
    int *heap = malloc(sizeof(int));
    *heap = 13;
    int p[2];
    pipe(p);
    int pid = fork();
    if (pid == 0) {
        global_counter = 100;
        local = 200;
        *heap = 300;
        char c;
        read(p[0], &c, 1);   /* the parent has now written its own values */
        exit(global_counter == 100 && local == 200 && *heap == 300 ? 0 : 1);
    }
    EXPECT(pid > 0, "fork: %s", strerror(pid));
    global_counter = 8;
    local = 12;
    *heap = 14;
    write(p[1], "x", 1);
    int status = -1;
    wait(pid, &status);
    EXPECT(status == 0, "child saw the parent's writes (status %d)", status);
    EXPECT(global_counter == 8 && local == 12 && *heap == 14,
           "parent sees child's writes: global %d local %d heap %d", global_counter, local, *heap);
    close(p[0]);
    close(p[1]);
    free(heap);
    return fails == 0;
}

#define COW_PAGES 16

static int cow_verify(volatile uint8_t *b, unsigned from, unsigned to, uint8_t salt)
{
    for (unsigned i = from; i < to; i++)
        if (b[i] != (uint8_t)(i * 13 + salt + i / PAGE))
            return 0;
    return 1;
}

static void cow_fill(volatile uint8_t *b, unsigned from, unsigned to, uint8_t salt)
{
    for (unsigned i = from; i < to; i++)
        b[i] = (uint8_t)(i * 13 + salt + i / PAGE);
}

static int c_cow(char *d, int n)
{
    const unsigned len = COW_PAGES * PAGE;
    volatile uint8_t *b = sbrk(len);
    if (SYSCALL_IS_ERR(b)) {
        NOTE("sbrk: %s", strerror((int)(long)b));
        return 0;
    }
    cow_fill(b, 0, len, 1);
    int go[2], res[2];
    pipe(go);
    pipe(res);
    int pid = fork();
    if (pid == 0) {
        uint8_t r = 0;
        if (!cow_verify(b, 0, len, 1))
            r |= 1;                        /* child didn't inherit the contents */
        cow_fill(b, 0, len, 2);            /* COW faults in the child */
        if (!cow_verify(b, 0, len, 2))
            r |= 2;
        char c;
        read(go[0], &c, 1);                /* parent has written its half */
        if (!cow_verify(b, 0, len, 2))
            r |= 4;                        /* parent's writes leaked into the child */
        write(res[1], &r, 1);
        exit(0);
    }
    cow_fill(b, 0, len / 2, 3);            /* COW faults in the parent, first half */
    write(go[1], "g", 1);
    uint8_t r = 0xff;
    read(res[0], &r, 1);
    wait(pid, NULL);
    EXPECT(!(r & 1), "child did not inherit the parent's memory");
    EXPECT(!(r & 2), "child's own writes did not stick");
    EXPECT(!(r & 4), "parent's writes after fork leaked into the child");
    EXPECT(r != 0xff, "no report from the child");
    EXPECT(cow_verify(b, 0, len / 2, 3), "parent's own writes lost");
    EXPECT(cow_verify(b, len / 2, len, 1), "child's writes leaked into the parent");
    for (int i = 0; i < 2; i++) {
        close(go[i]);
        close(res[i]);
    }
    NOTE("%u pages", COW_PAGES);
    return fails == 0;
}

static volatile uint8_t *cow_buf;

static int cow_grandchild(long salt)
{
    cow_fill(cow_buf, 0, COW_PAGES * PAGE, (uint8_t)salt);
    return cow_verify(cow_buf, 0, COW_PAGES * PAGE, (uint8_t)salt) ? 0 : 1;
}

static int cow_child(long salt)
{
    /* a child forks its own children that write: three generations share the pages */
    for (int k = 0; k < 2; k++)
        if (run_child(cow_grandchild, salt + 10 + k) != 0)
            return 2;
    if (!cow_verify(cow_buf, 0, COW_PAGES * PAGE, 1))
        return 3;
    return cow_grandchild(salt);
}

static int c_cow_nested(char *d, int n)
{
    const unsigned len = COW_PAGES * PAGE;
    cow_buf = sbrk(len);
    if (SYSCALL_IS_ERR(cow_buf)) {
        NOTE("sbrk: %s", strerror((int)(long)cow_buf));
        return 0;
    }
    cow_fill(cow_buf, 0, len, 1);
    for (int c = 0; c < 4; c++) {
        int s = run_child(cow_child, 20 + c);
        EXPECT(s == 0, "child %d: status %d (2 grandchild failed, 3 grandchild leaked)", c, s);
    }
    EXPECT(cow_verify(cow_buf, 0, len, 1), "children's writes leaked into the parent");
    NOTE("4 children x 2 grandchildren");
    return fails == 0;
}

static uint8_t pattern(unsigned k) { return (uint8_t)(k * 7 + k / 251); }

static int c_pipe_order(char *d, int n)
{
    const unsigned total = 64 * 1024;
    int p[2];
    int r = pipe(p);
    if (r < 0) {
        NOTE("pipe: %s", strerror(r));
        return 0;
    }
    int pid = fork();
    if (pid == 0) {
        close(p[0]);
        static uint8_t buf[1024];
        unsigned k = 0, chunk = 1;
        while (k < total) {
            unsigned m = chunk < total - k ? chunk : total - k;
            for (unsigned i = 0; i < m; i++)
                buf[i] = pattern(k + i);
            if (write_all(p[1], buf, m) != (int)m)
                exit(1);
            k += m;
            chunk = chunk * 3 % 1021 + 1;
        }
        exit(0);
    }
    close(p[1]);
    static uint8_t buf[777];
    unsigned k = 0, bad = 0, want = 1;
    for (;;) {
        int m = read(p[0], buf, want);
        if (m <= 0) {
            EXPECT(m == 0, "read: %s", strerror(m));
            break;
        }
        for (int i = 0; i < m; i++, k++)
            if (buf[i] != pattern(k) && !bad++)
                NOTE("byte %u is %u, want %u; ", k, buf[i], pattern(k));
        want = want * 5 % sizeof buf + 1;
    }
    int status = -1;
    wait(pid, &status);
    close(p[0]);
    EXPECT(bad == 0, "%u bytes out of order", bad);
    EXPECT(k == total, "got %u bytes, want %u", k, total);
    EXPECT(status == 0, "writer status %d", status);
    NOTE("%u bytes, odd chunk sizes, EOF after the writer exited", k);
    return fails == 0;
}

static int c_pipe_eof(char *d, int n)
{
    int p[2];
    char c;
    pipe(p);
    close(p[1]);
    int r = read(p[0], &c, 1);
    EXPECT(r == 0, "read after closing the only writer: %d, want 0", r);
    close(p[0]);

    /* a second writer (the child) keeps the pipe open until it exits */
    pipe(p);
    int pid = fork();
    if (pid == 0) {
        close(p[0]);
        sleep(20);
        write(p[1], "x", 1);
        exit(0);
    }
    close(p[1]);
    r = read(p[0], &c, 1);
    EXPECT(r == 1 && c == 'x', "first read %d, want the child's byte", r);
    r = read(p[0], &c, 1);
    EXPECT(r == 0, "read after the child exited: %d, want EOF", r);
    wait(pid, NULL);
    close(p[0]);

    pipe(p);
    close(p[0]);
    r = write(p[1], "y", 1);
    EXPECT(r == -EPIPE, "write with no reader: %d, want -EPIPE", r);
    close(p[1]);
    return fails == 0;
}

static int c_wait_status(char *d, int n)
{
    int pids[3];
    const int codes[3] = {42, 0, 0x1ff};
    for (int i = 0; i < 3; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            sleep(10 * (3 - i));
            exit(codes[i]);
        }
    }
    for (int i = 2; i >= 0; i--) {     /* reap in an order different from exit order */
        int s = -1;
        int r = wait(pids[i], &s);
        EXPECT(r == pids[i], "wait(%d) returned %d", pids[i], r);
        EXPECT(WIFEXITED(s) && WEXITSTATUS(s) == (codes[i] & 0xff), "exit(%d) gave status %#x", codes[i], s);
    }
    int r = wait(-1, NULL);
    EXPECT(r == -ECHILD, "wait with no children: %d, want -ECHILD", r);
    r = wait(1, NULL);
    EXPECT(r == -ECHILD, "wait for a non-child: %d, want -ECHILD", r);
    int pid = fork();
    if (pid == 0)
        exit(5);
    int s = -1;
    r = wait(-1, &s);
    EXPECT(r == pid && s == 5, "wait(-1): pid %d status %d, want %d/5", r, s, pid);
    return fails == 0;
}

static int fault_null(long a) { return *(volatile int *)0 = 1; }
static int fault_kernel(long a) { return *(volatile int *)KERNEL_PTR(0x1000); }
static int fault_text(long a) { return *(volatile uint8_t *)(void *)c_getpid = 0x90; }
static int fault_cli(long a) { __asm__ volatile("cli"); return 0; }
static int fault_ud2(long a) { __asm__ volatile("ud2"); return 0; }
static int fault_stack(long a) { return *(volatile int *)(USER_STACK_TOP + 16); }

static int c_faults_kill(char *d, int n)
{
    static const struct {
        const char *what;
        int (*fn)(long);
        int trap;
    } cases[] = {
        {"NULL write", fault_null, 14},
        {"kernel read", fault_kernel, 14},
        {"text write", fault_text, 14},
        {"cli", fault_cli, 13},
        {"ud2", fault_ud2, 6},
        {"guard page", fault_stack, 14},
    };
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int s = run_child(cases[i].fn, 0);
        EXPECT(s == (WSTATUS_KILLED | cases[i].trap), "%s: status %#x, want %#x", cases[i].what, s,
               WSTATUS_KILLED | cases[i].trap);
    }
    NOTE("6 kinds of faulting child killed, parent survives");
    return fails == 0;
}

static int c_efault(char *d, int n)
{
    char *argv[] = {"true", NULL};
    int p[2], r;
    EXPECT((r = write(1, KERNEL_PTR(0), 4)) == -EFAULT, "write(kernel ptr)=%d", r);
    EXPECT((r = write(1, NULL, 4)) == -EFAULT, "write(NULL)=%d", r);
    EXPECT((r = write(1, (void *)(USER_TOP - 8), 16)) == -EFAULT, "write(spanning user top)=%d", r);
    pipe(p);
    write(p[1], "abcd", 4);
    EXPECT((r = read(p[0], KERNEL_PTR(0x100000), 4)) == -EFAULT, "read into kernel=%d", r);
    close(p[0]);
    close(p[1]);
    EXPECT((r = pipe(KERNEL_PTR(0))) == -EFAULT, "pipe(kernel ptr)=%d", r);
    EXPECT((r = exec(KERNEL_PTR(0), argv)) == -EFAULT, "exec(kernel path)=%d", r);
    EXPECT((r = exec("true", KERNEL_PTR(0))) == -EFAULT, "exec(kernel argv)=%d", r);
    char *badargv[] = {"true", KERNEL_PTR(0), NULL};
    EXPECT((r = exec("true", badargv)) == -EFAULT, "exec(argv[1] kernel)=%d", r);
    EXPECT((r = open(KERNEL_PTR(0), O_RDONLY)) == -EFAULT, "open(kernel)=%d", r);
    EXPECT((r = clock_ns(KERNEL_PTR(0))) == -EFAULT, "clock(kernel)=%d", r);
    EXPECT((r = readdir(0, KERNEL_PTR(0))) == -EFAULT, "readdir(kernel)=%d", r);
    EXPECT((r = procs(KERNEL_PTR(0), 4)) == -EFAULT, "procs(kernel)=%d", r);
    int pid = fork();
    if (pid == 0)
        exit(3);
    EXPECT((r = wait(pid, KERNEL_PTR(0))) == -EFAULT, "wait(kernel status)=%d", r);
    int s = -1;
    r = wait(pid, &s);
    EXPECT(r == pid && s == 3, "child lost after the EFAULT wait: %d status %d", r, s);
    return fails == 0;
}

static int c_ebadf_enosys(char *d, int n)
{
    int p[2], r;
    char c;
    EXPECT((r = close(-1)) == -EBADF, "close(-1)=%d", r);
    EXPECT((r = close(1000)) == -EBADF, "close(1000)=%d", r);
    EXPECT((r = read(1000, &c, 1)) == -EBADF, "read(1000)=%d", r);
    EXPECT((r = dup(77)) == -EBADF, "dup(77)=%d", r);
    pipe(p);
    EXPECT((r = write(p[0], "x", 1)) == -EBADF, "write(read end)=%d", r);
    EXPECT((r = read(p[1], &c, 1)) == -EBADF, "read(write end)=%d", r);
    close(p[0]);
    close(p[1]);
    EXPECT((r = read(p[0], &c, 1)) == -EBADF, "read(closed fd)=%d", r);
    EXPECT((r = syscall0(0)) == -ENOSYS, "syscall 0=%d", r);
    EXPECT((r = syscall0(999)) == -ENOSYS, "syscall 999=%d", r);
    EXPECT((r = syscall0(-5)) == -ENOSYS, "syscall -5=%d", r);
    return fails == 0;
}

static int c_exec(char *d, int n)
{
    char *argv[] = {"echo", "a", "b c", NULL};
    int r;
    EXPECT((r = exec("no-such-program", argv)) == -ENOENT, "exec(missing)=%d", r);
    EXPECT((r = exec("motd", argv)) == -ENOEXEC, "exec(text file)=%d", r);
    int p[2];
    pipe(p);
    int pid = fork();
    if (pid == 0) {
        close(1);
        dup(p[1]);
        close(p[0]);
        close(p[1]);
        exec("/echo", argv);
        exit(127);
    }
    close(p[1]);
    char buf[64];
    int len = 0;
    while ((r = read(p[0], buf + len, sizeof buf - 1 - len)) > 0)
        len += r;
    buf[len] = 0;
    close(p[0]);
    int s = -1;
    wait(pid, &s);
    EXPECT(s == 0, "echo status %d", s);
    EXPECT(!strcmp(buf, "a b c\n"), "echo through a pipe gave \"%s\"", len > 20 ? "(long)" : buf);
    NOTE("argv and fds survive exec");
    return fails == 0;
}

static int c_sbrk(char *d, int n)
{
    char *a = sbrk(0);
    char *b = sbrk(64 * 1024);
    char *c = sbrk(0);
    EXPECT(!SYSCALL_IS_ERR(b) && a == b, "sbrk(64K) returned %p, break was %p", b, a);
    EXPECT(c == a + 64 * 1024, "break %p after growing from %p", c, a);
    int nonzero = 0;
    for (unsigned i = 0; i < 64 * 1024; i++)
        nonzero += b[i] != 0;
    EXPECT(nonzero == 0, "%d bytes of new heap not zero", nonzero);
    memset(b, 0x5a, 64 * 1024);
    EXPECT(b[65535] == 0x5a, "heap write lost");
    void *huge = sbrk(0x7ff00000);
    EXPECT(SYSCALL_IS_ERR(huge) && (long)huge == -ENOMEM, "sbrk(2 GiB)=%p, want -ENOMEM", huge);
    EXPECT(sbrk(0) == c, "failed sbrk moved the break");
    return fails == 0;
}

static volatile char *mm_ptr;
static int mm_touch_write(long a) { mm_ptr[a] = 1; return 0; }

static int c_mmap(char *d, int n)
{
    const unsigned len = 16 * PAGE;
    volatile char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE);
    if (SYSCALL_IS_ERR(p)) {
        NOTE("mmap: %s", strerror((int)(long)p));
        return 0;
    }
    int nonzero = 0;
    for (unsigned i = 0; i < len; i += 512)
        nonzero += p[i] != 0;
    EXPECT(nonzero == 0, "fresh anonymous memory not zero");
    for (unsigned i = 0; i < len; i += PAGE)
        p[i] = (char)i + 1;
    int ok = 1;
    for (unsigned i = 0; i < len; i += PAGE)
        ok &= p[i] == (char)((char)i + 1);
    EXPECT(ok, "written values lost");
    void *q = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE);
    EXPECT(!SYSCALL_IS_ERR(q) && ((uintptr_t)q >= (uintptr_t)p + len || (uintptr_t)q + len <= (uintptr_t)p),
           "second mapping %p overlaps %p", q, p);
    EXPECT(((uintptr_t)p & (PAGE - 1)) == 0, "mapping not page aligned");
    int r = munmap((void *)p, len);
    EXPECT(r == 0, "munmap=%d", r);
    mm_ptr = p;
    int s = run_child(mm_touch_write, 0);
    EXPECT(s == (WSTATUS_KILLED | 14), "touching unmapped memory: status %#x, want 0x10e", s);
    if (!SYSCALL_IS_ERR(q))
        munmap(q, len);

    volatile char *ro = mmap(NULL, PAGE, PROT_READ, MAP_ANON | MAP_PRIVATE);
    EXPECT(!SYSCALL_IS_ERR(ro), "mmap(PROT_READ)=%d", (int)(long)ro);
    if (!SYSCALL_IS_ERR(ro)) {
        EXPECT(ro[100] == 0, "read-only page not zero");
        mm_ptr = ro;
        s = run_child(mm_touch_write, 100);
        EXPECT(s == (WSTATUS_KILLED | 14), "write to read-only mapping: status %#x, want 0x10e", s);
        munmap((void *)ro, PAGE);
    }
    void *bad = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
    EXPECT((long)bad == -EINVAL, "mmap without MAP_ANON=%d, want -EINVAL", (int)(long)bad);
    bad = mmap(NULL, 0, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE);
    EXPECT((long)bad == -EINVAL, "mmap(len 0)=%d, want -EINVAL", (int)(long)bad);
    return fails == 0;
}

static int c_dup(char *d, int n)
{
    int p[2];
    pipe(p);
    int lo = p[0] < p[1] ? p[0] : p[1];
    int hi = p[0] < p[1] ? p[1] : p[0];
    close(lo);
    int fd = dup(hi);
    EXPECT(fd == lo, "dup gave %d, lowest free is %d", fd, lo);
    close(fd);
    close(hi);
    pipe(p);
    int w2 = dup(p[1]);
    close(p[1]);
    write(w2, "hi", 2);
    close(w2);
    char buf[4];
    int r = read(p[0], buf, sizeof buf);
    EXPECT(r == 2 && buf[0] == 'h', "data through a dup'd write end: %d", r);
    r = read(p[0], buf, sizeof buf);
    EXPECT(r == 0, "EOF after closing the original and the dup: %d", r);
    close(p[0]);
    return fails == 0;
}

static int c_clock_sleep(char *d, int n)
{
    uint64_t ns0 = 0, ns1 = 0, prev = 0;
    int r = clock_ns(&ns0);
    EXPECT(r == 0, "clock=%d", r);
    int t0 = uptime();
    int mono = 1;
    for (int i = 0; i < 1000; i++) {
        uint64_t t;
        clock_ns(&t);
        mono &= t >= prev;
        prev = t;
    }
    EXPECT(mono, "clock went backwards");
    EXPECT((r = sleep(50)) == 0, "sleep=%d", r);
    EXPECT((r = yield()) == 0, "yield=%d", r);
    clock_ns(&ns1);
    int t1 = uptime();
    EXPECT(t1 - t0 >= 50 * SYS_HZ / 1000 - 1, "uptime advanced %d ticks over sleep(50)", t1 - t0);
    EXPECT(ns1 - ns0 >= 40000000ull, "clock advanced %llu ns over sleep(50)", (unsigned long long)(ns1 - ns0));
    NOTE("sleep(50): %d ticks, %llu us", t1 - t0, (unsigned long long)((ns1 - ns0) / 1000));
    return fails == 0;
}

static int c_preempt_kill(char *d, int n)
{
    int pid = fork();
    if (pid == 0)
        for (;;)
            ;           /* never yields: only the timer can take the CPU away */
    sleep(30);
    int r = kill(pid);
    EXPECT(r == 0, "kill=%d", r);
    int s = -1;
    r = wait(pid, &s);
    EXPECT(r == pid && s == WSTATUS_KILLED, "killed spinner: wait %d status %#x", r, s);
    EXPECT((r = kill(99999)) == -ESRCH, "kill(99999)=%d", r);
    return fails == 0;
}

static int c_orphan(char *d, int n)
{
    int p[2];
    pipe(p);
    int pid = fork();
    if (pid == 0) {
        int g = fork();
        if (g == 0) {
            int pp = 0;
            for (int i = 0; i < 200 && (pp = getppid()) != 1; i++)
                sleep(5);
            write(p[1], &pp, sizeof pp);
            exit(0);
        }
        exit(0);
    }
    close(p[1]);
    wait(pid, NULL);
    int pp = -1;
    int r = read(p[0], &pp, sizeof pp);
    close(p[0]);
    EXPECT(r == sizeof pp && pp == 1, "orphan's getppid()=%d (read %d), want 1", pp, r);
    return fails == 0;
}

static int c_files(char *d, int n)
{
    struct vmirom_dirent e;
    int found = 0, i, r;
    for (i = 0; (r = readdir(i, &e)) == 0 && i < 1000; i++)
        found += !strcmp(e.name, "init") || !strcmp(e.name, "sh") || !strcmp(e.name, "selftest") ||
                 !strcmp(e.name, "motd");
    EXPECT(r == -ENOENT, "readdir past the end=%d", r);
    EXPECT(found == 4, "init, sh, selftest, motd: found %d of 4 in %d files", found, i);
    EXPECT((r = readdir(-1, &e)) == -ENOENT || r == -EINVAL, "readdir(-1)=%d", r);
    int fd = open("motd", O_RDONLY);
    EXPECT(fd >= 0, "open(motd)=%d", fd);
    if (fd >= 0) {
        char buf[8] = {0};
        r = read(fd, buf, 6);
        EXPECT(r == 6 && !memcmp(buf, "vmirom", 6), "motd starts \"%.6s\" (%d)", buf, r);
        close(fd);
    }
    EXPECT((r = open("no-such-file", O_RDONLY)) == -ENOENT, "open(missing)=%d", r);
    NOTE("%d files", i);
    return fails == 0;
}

static int c_procs(char *d, int n)
{
    static struct vmirom_procinfo p[128];
    int k = procs(p, 128), me = getpid(), found = 0;
    EXPECT(k >= 2, "procs=%d", k);
    for (int i = 0; i < k; i++)
        if (p[i].pid == me) {
            found = 1;
            EXPECT(p[i].ppid == getppid(), "ppid %d, want %d", p[i].ppid, getppid());
            EXPECT(p[i].state == PSTATE_RUNNING, "state %d, want running", p[i].state);
            p[i].name[15] = 0;
            EXPECT(!strcmp(p[i].name, "selftest"), "name \"%s\"", p[i].name);
        }
    EXPECT(found, "own pid %d not listed", me);
    EXPECT(procs(p, 1) == 1 || k < 1, "procs(max 1) wrote more than 1");
    NOTE("%d processes", k);
    return fails == 0;
}

static int c_proc_limit(char *d, int n)
{
    enum { CAP = 4096 };
    static int pids[CAP];
    int p[2];
    pipe(p);
    int k = 0, last = 0;
    while (k < CAP) {
        int pid = fork();
        if (pid == 0) {
            char c;
            close(p[1]);
            read(p[0], &c, 1);   /* EOF when the parent closes its end */
            exit(0);
        }
        if (pid < 0) {
            last = pid;
            break;
        }
        pids[k++] = pid;
    }
    close(p[1]);
    close(p[0]);
    int reaped = 0;
    for (int i = 0; i < k; i++) {
        int s = -1;
        if (wait(pids[i], &s) == pids[i] && s == 0)
            reaped++;
    }
    EXPECT(last == -EAGAIN, "fork stopped with %d after %d children, want -EAGAIN", last, k);
    EXPECT(reaped == k, "reaped %d of %d", reaped, k);
    int pid = fork();
    if (pid == 0)
        exit(0);
    EXPECT(pid > 0, "fork after reaping: %d", pid);
    if (pid > 0)
        wait(pid, NULL);
    NOTE("%d children until -EAGAIN", k);
    return fails == 0;
}

static int c_fork_churn(char *d, int n)
{
    int ok = 0;
    for (int i = 0; i < 300; i++) {
        int pid = fork();
        if (pid == 0)
            exit(i & 0x7f);
        int s = -1;
        if (pid > 0 && wait(pid, &s) == pid && s == (i & 0x7f))
            ok++;
    }
    EXPECT(ok == 300, "%d of 300 fork/exit/wait rounds right", ok);
    NOTE("300 rounds");
    return fails == 0;
}

/* ---- what shadow page tables can break (docs/mmu.md); they pass on bare hardware and QEMU too */

#define PTE_AD (PTE_FLAG_A | PTE_FLAG_D)

/* anonymous private memory for a check, or NULL after a note */
static void *map_or_note(char *d, int n, unsigned len, int prot)
{
    void *p = mmap(NULL, len, prot, MAP_ANON | MAP_PRIVATE);
    if (SYSCALL_IS_ERR(p)) {
        NOTE("mmap: %s", strerror((int)(long)p));
        return NULL;
    }
    return p;
}

static int c_ad_bits(char *d, int n)
{
    volatile char *p = map_or_note(d, n, PAGE, PROT_READ | PROT_WRITE);
    if (!p)
        return 0;
    (void)p[0];                                     /* first touch: a read */
    int f = pteflags((void *)p, 0);
    EXPECT(f > 0 && (f & PTE_AD) == PTE_FLAG_A, "after a read: flags %#x, want A without D", f);
    p[8] = 1;
    f = pteflags((void *)p, PTE_AD);                /* read them, then clear them */
    EXPECT(f > 0 && (f & PTE_AD) == PTE_AD, "after a write: flags %#x, want A and D", f);
    f = pteflags((void *)p, 0);
    EXPECT(f > 0 && !(f & PTE_AD), "after clearing: flags %#x", f);
    (void)p[8];
    f = pteflags((void *)p, 0);
    EXPECT(f > 0 && (f & PTE_AD) == PTE_FLAG_A, "read after clearing: flags %#x, want A only", f);
    p[9] = 2;
    f = pteflags((void *)p, 0);
    EXPECT(f > 0 && (f & PTE_AD) == PTE_AD, "write after clearing: flags %#x, want A and D", f);
    EXPECT(pteflags((void *)(p + PAGE), 0) == -EFAULT, "pteflags of an unmapped page");
    munmap((void *)p, PAGE);
    return fails == 0;
}

static int c_bigpage(char *d, int n)
{
    int r = vmcheck(VMCHECK_BIGPAGE);
    EXPECT(r == 0, "the kernel's 4 MiB page check failed at step %d (2/3: views differ, 4: A/D)", -r);
    return fails == 0;
}

static int mp_child(long a)
{
    volatile char *p = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE);
    if (SYSCALL_IS_ERR(p))
        return 2;
    p[0] = 1;                                       /* writable, present, cached by the TLB */
    if (mprotect((void *)p, 2 * PAGE, PROT_READ) != 0 || p[0] != 1)
        return 3;
    p[a] = 2;                                       /* must fault: the old rights are gone */
    return 0;
}

static int c_mprotect(char *d, int n)
{
    int s = run_child(mp_child, 0);
    EXPECT(s == (WSTATUS_KILLED | 14), "write after mprotect(PROT_READ): status %#x, want 0x10e", s);
    s = run_child(mp_child, PAGE);
    EXPECT(s == (WSTATUS_KILLED | 14), "write to a not yet touched page: status %#x, want 0x10e", s);
    volatile char *p = map_or_note(d, n, 4 * PAGE, PROT_READ);
    if (!p)
        return 0;
    (void)p[0];
    EXPECT(mprotect((void *)p, 4 * PAGE, PROT_READ | PROT_WRITE) == 0, "mprotect(RW) refused");
    for (unsigned i = 0; i < 4; i++)
        p[i * PAGE] = (char)(i + 1);
    int ok = 1;
    for (unsigned i = 0; i < 4; i++)
        ok &= p[i * PAGE] == (char)(i + 1);
    EXPECT(ok, "writes after mprotect(RW) lost");
    EXPECT(mprotect((void *)(p + PAGE), PAGE, PROT_READ) == -EINVAL, "part of a region accepted");
    munmap((void *)p, 4 * PAGE);
    return fails == 0;
}

#define CP_PAGES 24

static int c_cow_pages(char *d, int n)
{
    volatile uint8_t *b = map_or_note(d, n, CP_PAGES * PAGE, PROT_READ | PROT_WRITE);
    if (!b)
        return 0;
    cow_fill(b, 0, CP_PAGES * PAGE, 5);
    int pid = fork();
    if (pid == 0) {                                 /* the child writes every page: all copies */
        int bad = !cow_verify(b, 0, CP_PAGES * PAGE, 5);
        cow_fill(b, 0, CP_PAGES * PAGE, 6);
        bad |= !cow_verify(b, 0, CP_PAGES * PAGE, 6) << 1;
        exit(bad);
    }
    int f = pteflags((void *)b, 0);                 /* shared now: read-only in the parent */
    EXPECT(f > 0 && !(f & 2), "parent's entry after fork: %#x, want W clear", f);
    int s = -1;
    wait(pid, &s);
    EXPECT(s == 0, "child: status %#x (1: did not inherit, 2: own writes lost)", s);
    EXPECT(cow_verify(b, 0, CP_PAGES * PAGE, 5), "the child's writes reached the parent");
    cow_fill(b, 0, CP_PAGES * PAGE, 7);             /* the last owner writes: no copy needed */
    EXPECT(cow_verify(b, 0, CP_PAGES * PAGE, 7), "parent's writes after the child exited lost");
    f = pteflags((void *)b, 0);
    EXPECT(f > 0 && (f & 2) && (f & PTE_AD) == PTE_AD, "parent's entry after its write: %#x", f);
    munmap((void *)b, CP_PAGES * PAGE);
    NOTE("%d pages", CP_PAGES);
    return fails == 0;
}

#define MR_DATA 64
#define MR_TABLES 16

static int c_munmap_reuse(char *d, int n)
{
    /* fill pages and unmap them: their frames go back to the kernel, and the next allocations
     * take them - here as the page tables of 4 MiB slots never used before */
    volatile uint8_t *a = map_or_note(d, n, MR_DATA * PAGE, PROT_READ | PROT_WRITE);
    if (!a)
        return 0;
    for (unsigned i = 0; i < MR_DATA * PAGE; i += 64)
        a[i] = 0xA5;
    EXPECT(munmap((void *)a, MR_DATA * PAGE) == 0, "munmap");
    volatile uint32_t *t[MR_TABLES];
    int bad = 0;
    for (unsigned k = 0; k < MR_TABLES; k++) {
        void *want = (void *)(uintptr_t)(0x60000000u + k * 0x400000u);
        t[k] = mmap(want, PAGE, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE);
        if (SYSCALL_IS_ERR(t[k]) || (void *)t[k] != want) {
            NOTE("mmap at %p: %p", want, (void *)t[k]);
            return 0;
        }
        for (unsigned i = 0; i < PAGE / 4; i += 97)
            bad += t[k][i] != 0;                    /* a new table, a fresh zero page */
        t[k][k] = 0x1000 + k;
    }
    EXPECT(bad == 0, "%d words of fresh pages not zero", bad);
    for (unsigned k = 0; k < MR_TABLES; k++)
        bad += t[k][k] != 0x1000 + k;
    EXPECT(bad == 0, "%d of %d pages behind new tables lost their word", bad, MR_TABLES);
    mm_ptr = (volatile char *)a;
    int s = run_child(mm_touch_write, 5 * PAGE);
    EXPECT(s == (WSTATUS_KILLED | 14), "touching unmapped memory: status %#x, want 0x10e", s);
    for (unsigned k = 0; k < MR_TABLES; k++)
        munmap((void *)t[k], PAGE);
    NOTE("%d pages freed, %d new tables", MR_DATA, MR_TABLES);
    return fails == 0;
}

#define MS_SPACES 24

static int ms_child(long k)
{
    volatile uint32_t *m = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE);
    if (SYSCALL_IS_ERR(m))
        return 2;
    global_counter = (int)k;                        /* a copy-on-write data page, one per child */
    for (unsigned i = 0; i < 4; i++)
        m[i * PAGE / 4] = (uint32_t)(k * 100 + i);
    for (int round = 0; round < 6; round++) {
        yield();                                    /* the others run: their CR3, their pages */
        if (global_counter != (int)k)
            return 3;
        for (unsigned i = 0; i < 4; i++)
            if (m[i * PAGE / 4] != (uint32_t)(k * 100 + i))
                return 4;
    }
    return 0;
}

static int c_many_spaces(char *d, int n)
{
    int pids[MS_SPACES], started = 0;
    for (int k = 0; k < MS_SPACES; k++) {
        pids[k] = fork();
        if (pids[k] == 0)
            exit(ms_child(k + 1));
        started += pids[k] > 0;
    }
    int ok = 0;
    for (int k = 0; k < MS_SPACES; k++) {
        int s = -1;
        if (pids[k] > 0 && wait(pids[k], &s) == pids[k] && s == 0)
            ok++;
        else if (pids[k] > 0)
            NOTE("child %d: status %#x (3: data page, 4: mmap page); ", k + 1, s);
    }
    EXPECT(ok == MS_SPACES, "%d of %d address spaces kept their memory (%d started)", ok, MS_SPACES,
           started);
    EXPECT(global_counter == 7, "the children's writes reached the parent");
    NOTE("%d address spaces alive at once", MS_SPACES);
    return fails == 0;
}

static int c_invlpg(char *d, int n)
{
    /* unmap and map again at the same address: the old translation must be gone */
    void *at = (void *)0x50000000u;
    int stale = 0;
    for (int round = 0; round < 32; round++) {
        unsigned pages = round & 1 ? 16 : 1;        /* 16 pages: a full flush; 1 page: invlpg */
        volatile uint32_t *p = mmap(at, pages * PAGE, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE);
        if (SYSCALL_IS_ERR(p) || (void *)p != at) {
            NOTE("round %d: mmap at %p: %p", round, at, (void *)p);
            return 0;
        }
        for (unsigned i = 0; i < pages; i++) {
            stale += p[i * PAGE / 4] != 0;
            p[i * PAGE / 4] = (uint32_t)round + 1;
        }
        munmap((void *)p, pages * PAGE);
    }
    EXPECT(stale == 0, "%d pages read data of an unmapped page (stale translation)", stale);
    return fails == 0;
}

static int c_shutdown_eperm(char *d, int n)
{
    int r = shutdown(0);
    EXPECT(r == -EPERM, "shutdown from pid %d=%d, want -EPERM", getpid(), r);
    return fails == 0;
}

/* ------------------------------------------------------------------ driver */

static const struct {
    const char *name;
    check_fn fn;
} checks[] = {
    {"getpid", c_getpid},
    {"fork_isolation", c_fork_isolation},
    {"cow", c_cow},
    {"cow_nested", c_cow_nested},
    {"pipe_order", c_pipe_order},
    {"pipe_eof", c_pipe_eof},
    {"wait_status", c_wait_status},
    {"faults_kill", c_faults_kill},
    {"efault", c_efault},
    {"ebadf_enosys", c_ebadf_enosys},
    {"exec", c_exec},
    {"sbrk", c_sbrk},
    {"mmap", c_mmap},
    {"dup", c_dup},
    {"clock_sleep", c_clock_sleep},
    {"preempt_kill", c_preempt_kill},
    {"orphan", c_orphan},
    {"files", c_files},
    {"procs", c_procs},
    {"proc_limit", c_proc_limit},
    {"fork_churn", c_fork_churn},
    {"ad_bits", c_ad_bits},
    {"bigpage", c_bigpage},
    {"mprotect", c_mprotect},
    {"cow_pages", c_cow_pages},
    {"munmap_reuse", c_munmap_reuse},
    {"many_spaces", c_many_spaces},
    {"invlpg", c_invlpg},
    {"shutdown_eperm", c_shutdown_eperm},
};
#define NCHECKS (int)(sizeof checks / sizeof checks[0])

/* JSON string body: escape quotes, backslashes and control characters */
static void json_escape(char *out, int size, const char *in)
{
    int o = 0;
    for (; *in && o < size - 7; in++) {
        unsigned char c = *in;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = c;
        } else if (c < 0x20) {
            o += snprintf(out + o, size - o, "\\u%04x", c);
        } else {
            out[o++] = c;
        }
    }
    out[o] = 0;
}

static void print_result(const char *name, int ok, const char *detail)
{
    char esc[600];
    json_escape(esc, sizeof esc, detail);
    printf("VMIROM-JSON {\"event\":\"selftest\",\"check\":\"%s\",\"ok\":%s,\"detail\":\"%s\"}\n", name,
           ok ? "true" : "false", esc);
    printf("selftest: %-15s ... %s%s%s%s\n", name, ok ? "ok" : "FAIL", *detail ? " (" : "", detail,
           *detail ? ")" : "");
}

/* run one check in a child; the child prints its result and exits 0 (pass) or 1 (fail) */
static int run_check(int i)
{
    int pid = fork();
    if (pid == 0) {
        static char detail[400];
        fails = 0;
        int ok = checks[i].fn(detail, sizeof detail);
        print_result(checks[i].name, ok, detail);
        exit(ok ? 0 : 1);
    }
    if (pid < 0) {
        char detail[80];
        snprintf(detail, sizeof detail, "fork for the check failed: %s", strerror(pid));
        print_result(checks[i].name, 0, detail);
        return 0;
    }
    int s = -1;
    int r = wait(pid, &s);
    if (r != pid || WIFKILLED(s)) {
        char detail[80];
        snprintf(detail, sizeof detail, "check process died: wait %d status %#x", r, s);
        print_result(checks[i].name, 0, detail);
        return 0;
    }
    return s == 0;
}

int main(int argc, char **argv)
{
    int want[NCHECKS], nsel = 0;
    memset(want, 0, sizeof want);
    for (int a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "-l")) {
            for (int i = 0; i < NCHECKS; i++)
                printf("%s\n", checks[i].name);
            return 0;
        }
        int i;
        for (i = 0; i < NCHECKS; i++)
            if (!strcmp(argv[a], checks[i].name))
                break;
        if (i == NCHECKS) {
            dprintf(2, "selftest: unknown check %s (selftest -l lists them)\n", argv[a]);
            return 2;
        }
        want[i] = 1;
        nsel++;
    }
    int passed = 0, total = 0;
    for (int i = 0; i < NCHECKS; i++) {
        if (nsel && !want[i])
            continue;
        total++;
        passed += run_check(i);
    }
    printf("VMIROM-JSON {\"event\":\"selftest_summary\",\"passed\":%d,\"failed\":%d,\"total\":%d}\n", passed,
           total - passed, total);
    printf("selftest: %d/%d checks passed\n", passed, total);
    return total - passed > 100 ? 100 : total - passed;
}
