/* bench - an lmbench-style suite of operating-system micro benchmarks plus one macro workload.
 *
 *   bench [-s PERCENT] [-n ITERATIONS] [-l] [TEST...]
 *     -s  scale every default iteration count (100 = defaults; 10 = a tenth)
 *     -n  run exactly ITERATIONS of each selected test
 *     -l  list the tests and their default counts
 *   With no TEST all run, in the order listed below.
 *
 * Each test runs a fixed number of iterations and prints, around the timed loop,
 *   VMIROM-JSON {"event":"bench_start","test":NAME}
 *   VMIROM-JSON {"event":"bench","test":NAME,"iterations":N,"t0":..,"t1":..,"unit":"ns",
 *                "tsc0":..,"tsc1":..}
 * t0/t1 are the guest's own clock: SYS_clock nanoseconds since boot ("unit":"ns"); if the kernel
 * has no clock syscall they are TSC readings ("unit":"tsc"). tsc0/tsc1 (rdtsc in user mode) are
 * always present. Only the timed loop lies between bench_start and bench, so a VMM can attribute
 * the VMI operations it counts between the two lines to the test. A human line follows each
 * result, and {"event":"bench_done",...} ends the run. A test whose setup fails (fork refused,
 * mmap unavailable ...) prints {"event":"bench_error","test":..,"error":"..."} and the exit
 * status is the number of such tests.
 *
 * The tests (lmbench names in brackets):
 *   null_syscall  getpid() [lat_syscall null]
 *   pipe_latency  a 4-byte token bounced between two processes over two pipes; one iteration
 *                 is one round trip = two context switches [lat_pipe, lat_ctx]
 *   fork_exit     fork + child exit + wait [lat_proc fork]
 *   fork_exec     fork + exec("true") + exit + wait [lat_proc exec]
 *   page_fault    first write to each page of fresh anonymous mmap memory; one iteration is
 *                 one page (a demand-zero fault) [lat_pagefault]
 *   prot_fault    after fork, the child writes to each page it shares copy-on-write with its
 *                 parent: each write is a protection fault on a present read-only page that
 *                 the kernel resolves by copying; one iteration = one page [lat_sig prot]
 *   mmap_munmap   mmap 64 KiB anonymous, touch one page, munmap [lat_mmap]
 *   cpu_loop      integer work only, no kernel entry: the control
 *   build         macro: per compilation unit a two-stage pipeline "compile cpp | compile cc1"
 *                 (fork, exec, pipes, heap growth by sbrk, CPU), then one "compile ld" over all
 *                 outputs; one iteration = one unit
 */
#include "ulib.h"

#define PAGE 4096u

struct stamp {
    uint64_t t;     /* ns or tsc, see clock_unit */
    uint64_t tsc;
};

static int clock_ok;            /* SYS_clock works */
static int errors;

static void stamp(struct stamp *s)
{
    s->tsc = rdtsc();
    if (clock_ok) {
        uint64_t ns = 0;
        clock_ns(&ns);
        s->t = ns;
    } else {
        s->t = s->tsc;
    }
}

static void begin(const char *test, struct stamp *t0)
{
    printf("VMIROM-JSON {\"event\":\"bench_start\",\"test\":\"%s\"}\n", test);
    stamp(t0);
}

static void report(const char *test, unsigned n, struct stamp *t0, const char *extra)
{
    struct stamp t1;
    stamp(&t1);
    const char *unit = clock_ok ? "ns" : "tsc";
    printf("VMIROM-JSON {\"event\":\"bench\",\"test\":\"%s\",\"iterations\":%u,\"t0\":%llu,\"t1\":%llu,"
           "\"unit\":\"%s\",\"tsc0\":%llu,\"tsc1\":%llu%s}\n",
           test, n, (unsigned long long)t0->t, (unsigned long long)t1.t, unit,
           (unsigned long long)t0->tsc, (unsigned long long)t1.tsc, extra ? extra : "");
    uint64_t d = t1.t - t0->t;
    uint64_t per = n ? d / n : 0;
    uint64_t frac = n ? (d % n) * 10 / n : 0;
    printf("bench: %-13s %8u iterations %10llu.%llu %s/iteration\n", test, n, (unsigned long long)per,
           (unsigned long long)frac, clock_ok ? "ns" : "tsc");
}

static void fail(const char *test, const char *what, int err)
{
    printf("VMIROM-JSON {\"event\":\"bench_error\",\"test\":\"%s\",\"error\":\"%s: %s\"}\n", test, what,
           strerror(err));
    printf("bench: %s: %s: %s\n", test, what, strerror(err));
    errors++;
}

/* ------------------------------------------------------------------ the tests */

static void t_null_syscall(const char *name, unsigned n)
{
    struct stamp t0;
    begin(name, &t0);
    for (unsigned i = 0; i < n; i++)
        getpid();
    report(name, n, &t0, NULL);
}

static void t_pipe_latency(const char *name, unsigned n)
{
    int down[2], up[2], r;
    if ((r = pipe(down)) < 0 || (r = pipe(up)) < 0) {
        fail(name, "pipe", r);
        return;
    }
    int pid = fork();
    if (pid < 0) {
        fail(name, "fork", pid);
        return;
    }
    if (pid == 0) {
        close(down[1]);
        close(up[0]);
        uint32_t token;
        while (read(down[0], &token, sizeof token) == sizeof token) {
            token++;
            if (write(up[1], &token, sizeof token) != sizeof token)
                break;
        }
        exit(0);
    }
    close(down[0]);
    close(up[1]);
    uint32_t token = 0;
    int ok = 1;
    for (int i = 0; i < 10 && ok; i++)   /* warm up: both processes' pages faulted in */
        ok = write(down[1], &token, 4) == 4 && read(up[0], &token, 4) == 4;
    struct stamp t0;
    begin(name, &t0);
    for (unsigned i = 0; i < n && ok; i++)
        ok = write(down[1], &token, 4) == 4 && read(up[0], &token, 4) == 4;
    if (ok)
        report(name, n, &t0, NULL);
    else
        fail(name, "pipe round trip", -EIO);
    close(down[1]);
    close(up[0]);
    wait(pid, NULL);
}

static void t_fork_exit(const char *name, unsigned n)
{
    struct stamp t0;
    begin(name, &t0);
    for (unsigned i = 0; i < n; i++) {
        int pid = fork();
        if (pid == 0)
            exit(0);
        if (pid < 0) {
            fail(name, "fork", pid);
            return;
        }
        wait(pid, NULL);
    }
    report(name, n, &t0, NULL);
}

static void t_fork_exec(const char *name, unsigned n)
{
    static char *argv[] = {"true", NULL};
    struct stamp t0;
    begin(name, &t0);
    for (unsigned i = 0; i < n; i++) {
        int pid = fork();
        if (pid == 0) {
            exec("true", argv);
            exit(127);
        }
        if (pid < 0) {
            fail(name, "fork", pid);
            return;
        }
        int status = -1;
        wait(pid, &status);
        if (status != 0) {
            fail(name, "exec true", status == 127 ? -ENOENT : -EIO);
            return;
        }
    }
    report(name, n, &t0, NULL);
}

static void t_page_fault(const char *name, unsigned n)
{
    char *p = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE);
    if (SYSCALL_IS_ERR(p)) {
        fail(name, "mmap", (int)(long)p);
        return;
    }
    struct stamp t0;
    begin(name, &t0);
    for (unsigned i = 0; i < n; i++)
        p[i * PAGE] = 1;
    report(name, n, &t0, NULL);
    munmap(p, n * PAGE);
}

static void t_prot_fault(const char *name, unsigned n)
{
    volatile char *p = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE);
    if (SYSCALL_IS_ERR(p)) {
        fail(name, "mmap", (int)(long)p);
        return;
    }
    for (unsigned i = 0; i < n; i++)
        p[i * PAGE] = 1;       /* present and private in the parent before the fork */
    int pid = fork();
    if (pid < 0) {
        fail(name, "fork", pid);
    } else if (pid == 0) {
        struct stamp t0;
        begin(name, &t0);
        for (unsigned i = 0; i < n; i++)
            p[i * PAGE] = 2;   /* write to a copy-on-write page: protection fault */
        report(name, n, &t0, NULL);
        exit(0);
    } else {
        int status = -1;
        wait(pid, &status);
        if (status != 0)
            fail(name, "child", -EIO);
    }
    munmap((void *)p, n * PAGE);
}

static void t_mmap_munmap(const char *name, unsigned n)
{
    const unsigned len = 64 * 1024;
    struct stamp t0;
    begin(name, &t0);
    for (unsigned i = 0; i < n; i++) {
        char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE);
        if (SYSCALL_IS_ERR(p)) {
            fail(name, "mmap", (int)(long)p);
            return;
        }
        p[0] = 1;
        munmap(p, len);
    }
    report(name, n, &t0, NULL);
}

static volatile uint32_t sink;

static void t_cpu_loop(const char *name, unsigned n)
{
    struct stamp t0;
    begin(name, &t0);
    uint32_t x = 1;
    for (unsigned i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        x ^= x >> 7;
    }
    sink = x;
    report(name, n, &t0, NULL);
}

/* Run `stages` programs as a pipeline fed with `in`; collect stdout. 0 if all exited 0. */
static int run_filter(char **stages[], int nstages, const char *in, unsigned inlen, char **out,
                      unsigned *outlen, int *nproc)
{
    int fds[2 * 4];
    int npipes = nstages + 1, r;
    for (int i = 0; i < npipes; i++)
        if ((r = pipe(&fds[2 * i])) < 0)
            return r;
    int pids[4];
    for (int s = 0; s < nstages; s++) {
        pids[s] = fork();
        if (pids[s] < 0)
            return pids[s];
        if (pids[s] == 0) {
            close(0);
            dup(fds[2 * s]);           /* read end of pipe s */
            close(1);
            dup(fds[2 * (s + 1) + 1]); /* write end of pipe s+1 */
            for (int i = 0; i < 2 * npipes; i++)
                close(fds[i]);
            exec(stages[s][0], stages[s]);
            exit(127);
        }
        (*nproc)++;
    }
    for (int i = 0; i < npipes; i++) {
        if (i != 0)
            close(fds[2 * i + 1]);
        if (i != npipes - 1)
            close(fds[2 * i]);
    }
    int ok = write_all(fds[1], in, inlen) == (int)inlen;
    close(fds[1]);
    unsigned cap = inlen + 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf)
            break;
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            continue;
        }
        int n = read(fds[2 * (npipes - 1)], buf + len, cap - len);
        if (n <= 0)
            break;
        len += n;
    }
    close(fds[2 * (npipes - 1)]);
    for (int s = 0; s < nstages; s++) {
        int status = -1;
        wait(pids[s], &status);
        ok = ok && status == 0;
    }
    *out = buf;
    *outlen = len;
    return ok && buf ? 0 : -EIO;
}

static void t_build(const char *name, unsigned n)
{
    static char *cpp[] = {"compile", "cpp", "1", NULL};
    static char *cc1[] = {"compile", "cc1", "3", NULL};
    static char *ld[] = {"compile", "ld", "1", NULL};
    char **unit_stages[] = {cpp, cc1};
    char **link_stages[] = {ld};
    const unsigned srclen = 8192;
    char *src = malloc(srclen);
    char *objs = NULL;
    unsigned objlen = 0;
    int nproc = 0;
    if (!src) {
        fail(name, "malloc", -ENOMEM);
        return;
    }
    struct stamp t0;
    begin(name, &t0);
    for (unsigned u = 0; u < n; u++) {
        for (unsigned i = 0; i < srclen; i++)   /* a different "source file" per unit */
            src[i] = "int main(void) { return x + y; }\n"[(i + u * 7) % 34];
        char *out;
        unsigned outlen;
        int r = run_filter(unit_stages, 2, src, srclen, &out, &outlen, &nproc);
        if (r < 0 || outlen != srclen) {
            fail(name, "compile pipeline", r < 0 ? r : -EIO);
            return;
        }
        char *grown = realloc(objs, objlen + outlen);   /* the parent's memory grows too */
        if (!grown) {
            fail(name, "realloc", -ENOMEM);
            return;
        }
        objs = grown;
        memcpy(objs + objlen, out, outlen);
        objlen += outlen;
        free(out);
    }
    char *image;
    unsigned imagelen;
    int r = run_filter(link_stages, 1, objs, objlen, &image, &imagelen, &nproc);
    if (r < 0 || imagelen != objlen) {
        fail(name, "link", r < 0 ? r : -EIO);
        return;
    }
    char extra[64];
    snprintf(extra, sizeof extra, ",\"processes\":%d,\"bytes\":%u", nproc, objlen);
    report(name, n, &t0, extra);
    free(image);
    free(objs);
    free(src);
}

/* ------------------------------------------------------------------ driver */

struct test {
    const char *name;
    void (*fn)(const char *name, unsigned n);
    unsigned defaults;
    unsigned max;       /* memory-bound tests are capped */
};

static const struct test tests[] = {
    {"null_syscall", t_null_syscall, 10000, 0},
    {"pipe_latency", t_pipe_latency, 1000, 0},
    {"fork_exit", t_fork_exit, 100, 0},
    {"fork_exec", t_fork_exec, 50, 0},
    {"page_fault", t_page_fault, 1024, 16384},
    {"prot_fault", t_prot_fault, 512, 8192},
    {"mmap_munmap", t_mmap_munmap, 200, 0},
    {"cpu_loop", t_cpu_loop, 1000000, 0},
    {"build", t_build, 8, 64},
};
#define NTESTS (int)(sizeof tests / sizeof tests[0])

static int usage(void)
{
    dprintf(2, "usage: bench [-s PERCENT] [-n ITERATIONS] [-l] [TEST...]\n");
    return 2;
}

int main(int argc, char **argv)
{
    unsigned scale = 100, fixed = 0;
    int selected[NTESTS] = {0}, nsel = 0, i;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-s") && i + 1 < argc) {
            scale = strtoul(argv[++i], NULL, 0);
        } else if (!strcmp(argv[i], "-n") && i + 1 < argc) {
            fixed = strtoul(argv[++i], NULL, 0);
        } else if (!strcmp(argv[i], "-l")) {
            for (int t = 0; t < NTESTS; t++)
                printf("%-13s %u\n", tests[t].name, tests[t].defaults);
            return 0;
        } else if (argv[i][0] == '-') {
            return usage();
        } else {
            int t;
            for (t = 0; t < NTESTS; t++)
                if (!strcmp(argv[i], tests[t].name))
                    break;
            if (t == NTESTS) {
                dprintf(2, "bench: unknown test %s (bench -l lists them)\n", argv[i]);
                return 2;
            }
            selected[t] = 1;
            nsel++;
        }
    }
    uint64_t probe;
    clock_ok = clock_ns(&probe) == 0;
    printf("VMIROM-JSON {\"event\":\"bench_begin\",\"unit\":\"%s\",\"scale\":%u,\"hz\":%d}\n",
           clock_ok ? "ns" : "tsc", scale, SYS_HZ);
    int ran = 0;
    for (int t = 0; t < NTESTS; t++) {
        if (nsel && !selected[t])
            continue;
        unsigned n = fixed ? fixed : (unsigned)((uint64_t)tests[t].defaults * scale / 100);
        if (n == 0)
            n = 1;
        if (tests[t].max && n > tests[t].max)
            n = tests[t].max;
        tests[t].fn(tests[t].name, n);
        ran++;
    }
    printf("VMIROM-JSON {\"event\":\"bench_done\",\"tests\":%d,\"errors\":%d}\n", ran, errors);
    return errors;
}
