/* proc.c - processes and the scheduler (uniprocessor, xv6 style).
 *
 * The kernel is not preemptible: it runs with interrupts disabled except in the scheduler's
 * idle halt, so the process table needs no locks.  User code always runs with interrupts on
 * and is preempted by the timer tick (the VMI alarm or the PIT).  An address-space switch is a
 * VMI SetCR3, the ring-0/1 stack for the next process is set with VMI UpdateKernelStack, and
 * the switch is bracketed by SetLazyMode(CPU)/SetLazyMode(NONE) as Linux did.
 */
#include "kernel.h"
#include "mmu.h"
#include "proc.h"
#include "pv.h"
#include "syscall.h"
#include "vm.h"

struct proc proctab[NPROC];
struct proc *curproc;
static struct proc *initproc;
static struct context *sched_ctx;
static int nextpid = 1;
static u8 kstacks[NPROC][KSTACK_SIZE] __attribute__((aligned(16)));
extern u32 kernel_ds;

void proc_init(void)
{
    for (int i = 0; i < NPROC; i++)
        proctab[i].kstack = kstacks[i];
    initrd_init();
}

/* The loader may put the kernel's own path before the options (QEMU does). */
static int loader_path(const char *w)
{
    int slash = 0;
    for (; *w; w++) {
        if (*w == '=')
            return 0;
        if (*w == '/')
            slash = 1;
    }
    return slash;
}

/* A process slot with a kernel stack laid out to "return" into trapret with *tf. */
static struct proc *alloc_proc(void)
{
    struct proc *p = 0;
    for (int i = 0; i < NPROC; i++)
        if (proctab[i].state == UNUSED) {
            p = &proctab[i];
            break;
        }
    if (!p)
        return 0;
    u8 *kstack = p->kstack;
    memset(p, 0, sizeof *p);
    p->kstack = kstack;
    p->state = EMBRYO;
    p->pid = nextpid++;
    /* kernel stack: [context] [trapframe]; swtch pops the context and "returns" into trapret,
     * which returns to user space with *tf */
    u8 *sp = p->kstack + KSTACK_SIZE;
    sp -= sizeof *p->tf;
    p->tf = (struct trapframe *)sp;
    memset(p->tf, 0, sizeof *p->tf);
    sp -= sizeof *p->context;
    p->context = (struct context *)sp;
    memset(p->context, 0, sizeof *p->context);
    p->context->eip = (u32)trapret;
    return p;
}

static void free_proc(struct proc *p)
{
    if (p->pgdir)
        pgdir_free(p->pgdir);
    p->pgdir = 0;
    p->state = UNUSED;
    p->pid = 0;
    p->parent = 0;
    p->name[0] = 0;
}

/* Process 1: exec("init", {"init", words of the command line}). */
void user_init(void)
{
    static char words[256];
    char *argv[EXEC_MAXARG + 1];
    int argc = 0;
    argv[argc++] = "init";
    strlcpy(words, cmdline.raw, sizeof words);
    char *s = words;
    int first = 1;
    while (*s && argc < EXEC_MAXARG) {
        while (*s == ' ')
            *s++ = 0;
        if (!*s)
            break;
        char *w = s;
        while (*s && *s != ' ')
            s++;
        if (*s)
            *s++ = 0;
        if (first && loader_path(w)) {
            first = 0;
            continue;
        }
        first = 0;
        argv[argc++] = w;
    }
    argv[argc] = 0;

    struct proc *p = alloc_proc();
    if (!p)
        panic("user_init: no process slot");
    initproc = p;
    p->pgdir = pgdir_new();
    if (!p->pgdir)
        panic("user_init: out of memory");
    p->tf->cs = SEL_UCODE;
    p->tf->ds = p->tf->es = p->tf->fs = p->tf->gs = p->tf->ss = SEL_UDATA;
    p->tf->eflags = FL_IF | 0x2;
    p->ofile[0] = file_alloc();
    if (!p->ofile[0])
        panic("user_init: no file");
    p->ofile[0]->type = FD_CONSOLE;
    p->ofile[0]->readable = p->ofile[0]->writable = 1;
    p->ofile[1] = file_dup(p->ofile[0]);
    p->ofile[2] = file_dup(p->ofile[0]);
    curproc = p;
    switch_pgdir(p->pgdir);
    int r = exec("init", argv, argc);
    curproc = 0;
    if (r < 0) {
        kprintf("init: cannot exec \"init\" from the initrd (error %d)\n", r);
        shutdown(126);
    }
    p->state = RUNNABLE;
}

/* Enter the scheduler from a process (interrupts off). */
static void sched(void)
{
    struct proc *p = curproc;
    swtch(&p->context, sched_ctx);
}

void yield(void)
{
    u32 fl = irq_save();
    curproc->state = RUNNABLE;
    sched();
    restore_fl(fl);
}

void sleep_on(void *chan)
{
    struct proc *p = curproc;
    p->chan = chan;
    p->state = SLEEPING;
    sched();
    p->chan = 0;
}

void wakeup(void *chan)
{
    for (struct proc *p = proctab; p < &proctab[NPROC]; p++)
        if (p->state == SLEEPING && p->chan == chan)
            p->state = RUNNABLE;
}

/* timer tick: preempt user code */
void sched_tick(struct trapframe *tf)
{
    wakeup((void *)&ticks);
    if (curproc && curproc->state == RUNNING && (tf->cs & 3) == 3) {
        curproc->ticks++;
        yield();
    }
}

NORETURN void scheduler(void)
{
    int last = 0;
    for (;;) {
        cli();
        if (exit_requested)
            shutdown(0);
        struct proc *p = 0;
        for (int k = 1; k <= NPROC; k++) {
            struct proc *q = &proctab[(last + k) % NPROC];
            if (q->state == RUNNABLE) {
                p = q;
                last = q - proctab;
                break;
            }
        }
        if (!p) {
            vmi_ops.halt();                  /* safe halt: interrupts on until the next one */
            idle_halts++;
            continue;
        }
        vmi_ops.set_lazy_mode(VMI_LAZY_CPU);
        curproc = p;
        p->state = RUNNING;
        vmi_ops.update_kernel_stack(kernel_ds, (u32)p->kstack + KSTACK_SIZE);
        switch_pgdir(p->pgdir);
        vmi_ops.set_lazy_mode(VMI_LAZY_NONE);
        swtch(&sched_ctx, p->context);
        curproc = 0;
    }
}

int fork(void)
{
    struct proc *parent = curproc, *p = alloc_proc();
    if (!p)
        return -EAGAIN;
    p->pgdir = uvm_copy(parent->pgdir);
    if (!p->pgdir) {
        p->state = UNUSED;
        return -ENOMEM;
    }
    *p->tf = *parent->tf;
    p->tf->eax = 0;
    p->parent = parent;
    p->heap_start = parent->heap_start;
    p->brk = parent->brk;
    p->stack_low = parent->stack_low;
    memcpy(p->mmaps, parent->mmaps, sizeof p->mmaps);
    memcpy(p->name, parent->name, sizeof p->name);
    for (int i = 0; i < NOFILE; i++)
        if (parent->ofile[i])
            p->ofile[i] = file_dup(parent->ofile[i]);
    p->state = RUNNABLE;
    return p->pid;
}

NORETURN void exit_proc(int status)
{
    struct proc *p = curproc;
    for (int i = 0; i < NOFILE; i++)
        if (p->ofile[i]) {
            file_close(p->ofile[i]);
            p->ofile[i] = 0;
        }
    if (p->pgdir) {
        pgdir_free(p->pgdir);         /* switches to the kernel page directory first */
        p->pgdir = 0;
    }
    if (p == initproc) {
        kprintf("init exited with status %d\n", status);
        shutdown(status);
    }
    for (struct proc *q = proctab; q < &proctab[NPROC]; q++)
        if (q->parent == p) {
            q->parent = initproc;
            if (q->state == ZOMBIE)
                wakeup(initproc);
        }
    p->xstatus = status;
    p->state = ZOMBIE;
    if (p->parent)
        wakeup(p->parent);
    sched();
    panic("zombie ran");
}

int wait_pid(int pid, u32 status_uva)
{
    struct proc *p = curproc;
    if (status_uva && check_user(p, status_uva, 4, 1) < 0)
        return -EFAULT;
    for (;;) {
        int have = 0;
        for (struct proc *q = proctab; q < &proctab[NPROC]; q++) {
            if (q->parent != p || q->state == UNUSED || (pid != -1 && q->pid != pid))
                continue;
            have = 1;
            if (q->state == ZOMBIE) {
                int st = q->xstatus;
                if (status_uva && copyout(p, status_uva, &st, 4) < 0)
                    return -EFAULT;
                int cpid = q->pid;
                free_proc(q);
                return cpid;
            }
        }
        if (!have)
            return -ECHILD;
        if (p->killed)
            return -EINTR;
        sleep_on(p);
    }
}

int kill(int pid)
{
    for (struct proc *q = proctab; q < &proctab[NPROC]; q++)
        if (q->pid == pid && q->state != UNUSED && q->state != ZOMBIE) {
            q->killed = 1;
            if (q->state == SLEEPING)
                q->state = RUNNABLE;
            return 0;
        }
    return -ESRCH;
}

int procs_info(u32 uva, int max)
{
    int n = 0;
    for (struct proc *q = proctab; q < &proctab[NPROC] && n < max; q++) {
        if (q->state == UNUSED)
            continue;
        struct vmirom_procinfo pi;
        memset(&pi, 0, sizeof pi);
        pi.pid = q->pid;
        pi.ppid = q->parent ? q->parent->pid : 0;
        pi.state = q->state == EMBRYO ? PSTATE_EMBRYO : q->state == SLEEPING ? PSTATE_SLEEPING :
                   q->state == RUNNABLE ? PSTATE_RUNNABLE : q->state == RUNNING ? PSTATE_RUNNING :
                   PSTATE_ZOMBIE;
        pi.mem = q->pgdir ? user_mem(q) : 0;
        pi.ticks = q->ticks;
        memcpy(pi.name, q->name, sizeof pi.name);
        if (copyout(curproc, uva + n * sizeof pi, &pi, sizeof pi) < 0)
            return -EFAULT;
        n++;
    }
    return n;
}
