/* proc.h - processes, files, pipes (the Unix part of the kernel; ABI in syscall.h). */
#ifndef PROC_H
#define PROC_H
#include "kernel.h"
#include "mmu.h"

#define NPROC 64
#define NOFILE 16
#define NFILE 256
#define KSTACK_SIZE 8192
#define NMMAP 16
#define MMAP_BASE 0x40000000u
#define MMAP_END 0xB0000000u
#define USER_STACK_MAX (8u << 20)     /* the stack may grow lazily down to this size */

enum procstate { UNUSED, EMBRYO, SLEEPING, RUNNABLE, RUNNING, ZOMBIE };

struct context {            /* what swtch saves; the layout is shared with swtch.S */
    u32 edi, esi, ebx, ebp, eip;
};

struct region {             /* a lazily allocated user range */
    u32 start, end;         /* page-aligned, end exclusive; start == end: unused */
    u32 perm;               /* PTE_U | (PTE_W) */
};

struct file;

struct proc {
    int pid;
    enum procstate state;
    struct proc *parent;
    u32 *pgdir;
    u8 *kstack;
    struct trapframe *tf;
    struct context *context;
    void *chan;
    int killed;
    int xstatus;
    char name[16];
    struct file *ofile[NOFILE];
    u32 heap_start, brk;
    u32 stack_low;          /* lowest address the stack may grow to */
    struct region mmaps[NMMAP];
    u32 ticks;
    u32 wake_tick;
};

extern struct proc *curproc;

/* proc.c */
void proc_init(void);
void user_init(void);
NORETURN void scheduler(void);
void sched_tick(struct trapframe *tf);
void sleep_on(void *chan);             /* call with interrupts off */
void wakeup(void *chan);
void yield(void);
int fork(void);
NORETURN void exit_proc(int status);
int wait_pid(int pid, u32 status_uva);
int kill(int pid);
int procs_info(u32 uva, int max);

/* uvm.c: user memory */
void *uva_page(struct proc *p, u32 va, int write);     /* kernel address of the byte, 0 = bad */
int copyout(struct proc *p, u32 dst, const void *src, u32 n);
int copyin(struct proc *p, void *dst, u32 src, u32 n);
int fetchstr(struct proc *p, u32 uva, char *buf, u32 max);  /* length, or -errno */
int check_user(struct proc *p, u32 uva, u32 n, int write);
int uvm_fault(struct proc *p, u32 va, u32 err);        /* 0 = resolved */
u32 *uvm_copy(u32 *pgdir);                             /* fork: copy-on-write duplicate */
u32 region_perm(struct proc *p, u32 va);               /* 0 if not a lazy region */
int uvm_unmap(struct proc *p, u32 start, u32 end);
void uvm_protect(struct proc *p, u32 start, u32 end, u32 perm);  /* mprotect on present pages */
int uvm_pteflags(struct proc *p, u32 va, u32 clear);           /* flags, then clear A/D */
u32 user_mem(struct proc *p);

/* exec.c */
int exec(const char *path, char *const kargv[], int argc);

/* initrd.c */
struct initrd_file {
    const char *name;
    const u8 *data;
    u32 size, mode;
};
void initrd_init(void);
int initrd_find(const char *name, struct initrd_file *f);
int initrd_index(int i, struct initrd_file *f);

/* file.c */
enum ftype { FD_NONE, FD_CONSOLE, FD_PIPE, FD_INITRD };
struct pipe;
struct file {
    enum ftype type;
    int ref;
    int readable, writable;
    struct pipe *pipe;
    struct initrd_file ifile;
    u32 off;
};
struct file *file_alloc(void);
struct file *file_dup(struct file *f);
void file_close(struct file *f);
int file_read(struct file *f, u32 uva, u32 n);
int file_write(struct file *f, u32 uva, u32 n);
int pipe_alloc(struct file **r, struct file **w);
void console_intr_wakeup(void);

/* syscall.c */
void syscall_dispatch(struct trapframe *tf);
int user_fault(struct trapframe *tf);

/* swtch.S */
void swtch(struct context **old, struct context *new);
void trapret(void);

extern volatile int exit_requested;
extern u32 idle_halts;
u64 clock_ns(void);
#endif
