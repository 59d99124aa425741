/* syscall.h - the system-call ABI between the vmirom kernel and its user programs.
 *
 * Owned by "user" (guest/user/). The kernel implements exactly this; user space codes
 * against it. Shared by kernel and user code: numbers, structures and constants only, no code.
 * Safe to include from C (freestanding) and from assembly (__ASSEMBLER__).
 *
 * ---------------------------------------------------------------------------------------
 * Calling convention
 *   int $0x80 from ring 3 (the IDT gate for vector 0x80 has DPL 3).
 *   EAX = syscall number, arguments in EBX, ECX, EDX, ESI, EDI (in that order).
 *   Result in EAX. A value in [-4095, -1] is -errno (errno values below, Linux numbering);
 *   anything else is success (sbrk/mmap return addresses, which may be >= 0x80000000 and then
 *   look negative as int: test with SYSCALL_IS_ERR()).
 *   All other registers (EBX, ECX, EDX, ESI, EDI, EBP, ESP, EFLAGS' arithmetic flags aside)
 *   are preserved. Unknown syscall number -> -ENOSYS.
 *
 * Bad arguments never crash the kernel: every user pointer is checked (must lie in user space
 * below USER_TOP and be mapped, or be mappable as lazily-allocated anonymous/heap/stack memory);
 * a bad pointer -> -EFAULT, a bad fd -> -EBADF, other bad values -> -EINVAL.
 * A user process that faults (page fault on an unmapped address, #GP, #UD, divide error ...)
 * is killed: the kernel prints a report line on the console and the parent's wait() sees
 * status WSTATUS_KILLED | trap number (see below). The kernel survives.
 *
 * ---------------------------------------------------------------------------------------
 * Programs, the initrd and exec
 *   The initrd is the first Multiboot module, a cpio "newc" archive (magic 070701) built by
 *   src/vmirom/guest/initrd.py. Entries are regular files with flat names ("sh", "echo", ...),
 *   no directories. exec/open look a path up by name; one leading '/' is ignored ("/sh" == "sh").
 *   Programs are static ELF32 i386 ET_EXEC files linked at USER_TEXT_BASE (0x08048000) with
 *   page-aligned PT_LOAD segments (p_align 0x1000); p_filesz < p_memsz is zero-filled (bss).
 *   Flags PF_W decide writability; text is read-only.
 *
 *   exec(path, argv): argv is a NULL-terminated array of at most EXEC_MAXARG pointers to
 *   strings, EXEC_MAXARGBYTES bytes in total (else -E2BIG). On success it does not return:
 *   the new image starts at e_entry with
 *       ESP -> [argc][argv[0]]...[argv[argc-1]][NULL][NULL (empty envp)] ... strings ...
 *   (ESP 16-byte aligned at entry, other registers unspecified, EFLAGS.IF=1).
 *   The user stack sits just below USER_STACK_TOP and is at least USER_STACK_SIZE bytes
 *   (may grow lazily). Open fds survive exec. The heap (sbrk) starts at the first page
 *   boundary after the highest PT_LOAD segment end. Failure -> -ENOENT (no such file),
 *   -ENOEXEC (not a valid ELF i386 executable), -EFAULT, -E2BIG, -ENOMEM; old image intact.
 *
 * Boot: the kernel starts process 1 by exec'ing "init" with
 *       argv = { "init", word1, word2, ..., NULL }
 *   where word1.. are the whitespace-separated words of the kernel command line, unchanged
 *   (e.g. "vmi=off", "init=selftest", "exit_after=500"). User-space init interprets
 *   "init=PROG[,ARG...]" (commas separate arguments; default PROG is "sh") and any words after
 *   a lone "--" as further arguments, runs PROG, and calls shutdown(status of PROG).
 *   Kernel options it doesn't know it ignores. If pid 1 exits anyway, the kernel shuts down
 *   with pid 1's exit status. If "init" is missing from the initrd the kernel reports it and
 *   shuts down with a non-zero status.
 *
 * Console: fds 0, 1, 2 of process 1 are the console (serial COM1). The console is RAW:
 *   read(0, ...) blocks until at least one byte has arrived and returns the bytes available
 *   (up to n), without echo and without line editing (user space's readline does both).
 *   Bytes are passed unchanged (the terminal sends '\r' for Enter; 0x04 is Ctrl-D, 0x7f/0x08
 *   backspace). write() to the console may turn "\n" into "\r\n".
 * ---------------------------------------------------------------------------------------
 */
#ifndef VMIROM_SYSCALL_H
#define VMIROM_SYSCALL_H

/* ----- syscall numbers: name(args...) -> result ----- */
#define SYS_exit      1   /* exit(int status): never returns; status & 0xff goes to wait() */
#define SYS_fork      2   /* fork() -> child pid in parent, 0 in child; copy-on-write.
                             -EAGAIN when the process table is full, -ENOMEM out of memory */
#define SYS_read      3   /* read(int fd, void *buf, unsigned n) -> bytes (0 = EOF) */
#define SYS_write     4   /* write(int fd, const void *buf, unsigned n) -> bytes written.
                             Pipe with no reader left -> -EPIPE (no signals exist) */
#define SYS_open      5   /* open(const char *path, int flags) -> fd; initrd files,
                             flags must be O_RDONLY; -ENOENT, -EMFILE */
#define SYS_close     6   /* close(int fd) -> 0 */
#define SYS_wait      7   /* wait(int pid, int *status) -> pid of the reaped child.
                             pid = -1: any child. Blocks until that child exits.
                             status may be NULL; a bad non-NULL status pointer -> -EFAULT
                             (checked BEFORE reaping, the child stays a zombie).
                             No (such) child -> -ECHILD */
#define SYS_exec      8   /* exec(const char *path, char *const argv[]) (see above) */
#define SYS_getpid    9   /* getpid() -> pid (pid 1 = init) */
#define SYS_getppid  10   /* getppid() -> parent's pid (orphans are re-parented to 1) */
#define SYS_pipe     11   /* pipe(int fds[2]) -> 0; fds[0] read end, fds[1] write end.
                             Buffer >= 512 bytes; read blocks while empty and a writer exists,
                             returns 0 (EOF) once empty and all write ends are closed;
                             write blocks while full. Bytes arrive in order. */
#define SYS_dup      12   /* dup(int fd) -> new fd, the LOWEST free fd number (the shell
                             relies on this: close(1); dup(p[1])) */
#define SYS_sbrk     13   /* sbrk(int increment) -> old break (address); -ENOMEM.
                             New heap memory reads as zero (may be allocated lazily).
                             Growth the machine's free memory could never back (e.g. 2 GiB)
                             or into the stack/mmap areas -> -ENOMEM, break unchanged.
                             A negative increment shrinks the heap (not below its start:
                             -EINVAL). */
#define SYS_mmap     14   /* mmap(void *addr, unsigned len, int prot, int flags) -> address.
                             Anonymous private memory only: flags must include MAP_ANON
                             (MAP_PRIVATE implied), addr is a hint (0 = kernel chooses).
                             len rounded up to pages. Pages are zero-filled and allocated
                             lazily on first touch (that's the page-fault benchmark).
                             prot: PROT_READ|PROT_WRITE (PROT_READ alone = read-only).
                             -EINVAL, -ENOMEM */
#define SYS_munmap   15   /* munmap(void *addr, unsigned len) -> 0; addr page-aligned.
                             Unmapping pages that aren't mapped is not an error. */
#define SYS_sleep    16   /* sleep(unsigned ms) -> 0; sleeps at least ms milliseconds
                             (rounded up to timer ticks). sleep(0) == yield */
#define SYS_yield    17   /* yield() -> 0; gives up the CPU to the next runnable process */
#define SYS_uptime   18   /* uptime() -> timer ticks since boot (SYS_HZ per second) */
#define SYS_clock    19   /* clock(uint64_t *ns) -> 0; writes nanoseconds since boot.
                             Resolution at least one tick; the kernel refines it with the TSC
                             when it knows the TSC rate. -EFAULT */
#define SYS_shutdown 20   /* shutdown(int status) -> never returns; powers the machine off
                             through the debug-exit port with status (0 = clean) after
                             printing the {"event":"shutdown"} line. Only pid 1 may call it
                             (else -EPERM). */
#define SYS_readdir  21   /* readdir(int index, struct vmirom_dirent *d) -> 0, fills *d with
                             the index-th initrd file; -ENOENT past the last one */
#define SYS_procs    22   /* procs(struct vmirom_procinfo *buf, int max) -> number of
                             live processes written (all non-free slots, up to max) */
#define SYS_kill     23   /* kill(int pid) -> 0; the process dies with status
                             WSTATUS_KILLED | 0 (no signals otherwise); -ESRCH */

#define SYS_mprotect 24   /* mprotect(void *addr, unsigned len, int prot) -> 0; [addr, addr+len)
                             must be exactly one mmap region (whole pages); prot as for mmap.
                             Present pages take the new rights at once (a shared copy-on-write
                             page stays read-only until its next write fault). -EINVAL */
#define SYS_pteflags 25   /* pteflags(void *addr, unsigned clear) -> the low 12 bits of the
                             page-table entry that maps addr in the caller (PTE_P, PTE_W,
                             PTE_U, PTE_A 0x20, PTE_D 0x40 ...) as they were, then clears the
                             bits of `clear` (only PTE_A|PTE_D) and invalidates the TLB entry.
                             -EFAULT when nothing is mapped there, -EINVAL.  For MMU self-tests. */
#define SYS_vmcheck  26   /* vmcheck(int what) -> 0, or a negative failing step: in-kernel
                             paging checks user space cannot do itself.  VMCHECK_BIGPAGE: a
                             4 MiB page (CR4.PSE) mapped in the caller's address space, written
                             and read through it and the direct map, its PDE's A and D bits. */
#define VMCHECK_BIGPAGE 1

#define SYS_MAX      26   /* highest assigned number */

/* timer rate of the kernel (uptime() ticks per second) */
#define SYS_HZ 100

/* ----- user address-space layout ----- */
#define USER_TEXT_BASE   0x08048000u  /* where programs are linked */
#define USER_TOP         0xC0000000u  /* first kernel address; user pointers are below */
#define USER_STACK_TOP   0xBFFFF000u  /* initial stack top (a guard page above it) */
#define USER_STACK_SIZE  (64u * 1024u)
#define EXEC_MAXARG      32
#define EXEC_MAXARGBYTES 4096

/* ----- open/mmap flags ----- */
#define O_RDONLY   0
#define PROT_NONE  0x0
#define PTE_FLAG_A 0x20  /* pteflags(): Accessed */
#define PTE_FLAG_D 0x40  /* pteflags(): Dirty */
#define PROT_READ  0x1
#define PROT_WRITE 0x2
#define MAP_PRIVATE 0x02
#define MAP_ANON    0x20

/* ----- wait() status encoding -----
 * exit(n)            -> status = n & 0xff
 * killed by a fault  -> status = WSTATUS_KILLED | trap vector (e.g. 0x10e page fault,
 *                       0x10d general protection, 0x106 invalid opcode, 0x100 kill()) */
#define WSTATUS_KILLED    0x100
#define WIFEXITED(s)      (((s) & WSTATUS_KILLED) == 0)
#define WEXITSTATUS(s)    ((s) & 0xff)
#define WIFKILLED(s)      (((s) & WSTATUS_KILLED) != 0)
#define WTRAPNO(s)        ((s) & 0xff)

/* ----- errno values (Linux numbering) ----- */
#define EPERM    1
#define ENOENT   2
#define ESRCH    3
#define EINTR    4
#define EIO      5
#define E2BIG    7
#define ENOEXEC  8
#define EBADF    9
#define ECHILD  10
#define EAGAIN  11
#define ENOMEM  12
#define EFAULT  14
#define EBUSY   16
#define EEXIST  17
#define EINVAL  22
#define EMFILE  24
#define ENOSPC  28
#define EPIPE   32
#define ERANGE  34
#define ENAMETOOLONG 36
#define ENOSYS  38
#define MAX_ERRNO 4095
#define SYSCALL_IS_ERR(r) ((unsigned long)(r) >= (unsigned long)-MAX_ERRNO)

/* ----- limits the kernel promises at least ----- */
#define NOFILE_MIN 16   /* open fds per process */
#define NAME_MAX_  55   /* longest initrd file name (dirent.name holds it + NUL) */

/* process states reported by procs() */
#define PSTATE_UNUSED   0
#define PSTATE_EMBRYO   1   /* being created */
#define PSTATE_SLEEPING 2   /* blocked (wait, pipe, sleep, console) */
#define PSTATE_RUNNABLE 3
#define PSTATE_RUNNING  4
#define PSTATE_ZOMBIE   5

#ifndef __ASSEMBLER__
#include <stdint.h>

/* readdir() record: 64 bytes */
struct vmirom_dirent {
    uint32_t size;          /* file size in bytes */
    uint32_t mode;          /* the cpio mode field (0100755 for programs) */
    char name[56];          /* NUL-terminated */
};

/* procs() record: 40 bytes */
struct vmirom_procinfo {
    int32_t pid;
    int32_t ppid;
    int32_t state;          /* PSTATE_* */
    uint32_t mem;           /* bytes of user memory mapped (resident), informative */
    uint32_t ticks;         /* timer ticks spent running, informative */
    int32_t reserved;
    char name[16];          /* basename of argv[0] at the last exec (a forked child inherits
                               its parent's), NUL-terminated, truncated to 15 chars */
};

_Static_assert(sizeof(struct vmirom_dirent) == 64, "dirent ABI size");
_Static_assert(sizeof(struct vmirom_procinfo) == 40, "procinfo ABI size");
#endif

#endif /* VMIROM_SYSCALL_H */
