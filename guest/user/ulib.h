/* ulib.h - the tiny libc of the vmirom user programs.
 *
 * System-call wrappers return the raw kernel result: >= 0 on success, -errno on failure
 * (no global errno: a negative return value *is* the error). sbrk/mmap return pointers;
 * test them with SYSCALL_IS_ERR(). */
#ifndef VMIROM_ULIB_H
#define VMIROM_ULIB_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "syscall.h"

#define NULL_FD (-1)
#define STDIN 0
#define STDOUT 1
#define STDERR 2

/* ---- raw system calls (lib/syscall.c) ---- */
long syscall0(long n);
long syscall1(long n, long a);
long syscall2(long n, long a, long b);
long syscall3(long n, long a, long b, long c);
long syscall4(long n, long a, long b, long c, long d);
long syscall5(long n, long a, long b, long c, long d, long e);

__attribute__((noreturn)) void exit(int status);
int fork(void);
int read(int fd, void *buf, unsigned n);
int write(int fd, const void *buf, unsigned n);
int open(const char *path, int flags);
int close(int fd);
int wait(int pid, int *status);
int exec(const char *path, char *const argv[]);
int getpid(void);
int getppid(void);
int pipe(int fds[2]);
int dup(int fd);
void *sbrk(int increment);
void *mmap(void *addr, unsigned len, int prot, int flags);
int munmap(void *addr, unsigned len);
int mprotect(void *addr, unsigned len, int prot);
int pteflags(void *addr, unsigned clear);
int vmcheck(int what);
int sleep(unsigned ms);
int yield(void);
int uptime(void);
int clock_ns(uint64_t *ns);
int shutdown(int status);
int readdir(int index, struct vmirom_dirent *d);
int procs(struct vmirom_procinfo *buf, int max);
int kill(int pid);

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* ---- strings and memory (lib/string.c) ---- */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strcpy(char *dst, const char *src);
char *strncpy(char *dst, const char *src, size_t n);
size_t strlcpy(char *dst, const char *src, size_t size);
char *strcat(char *dst, const char *src);
char *strchr(const char *s, int c);
char *strrchr(const char *s, int c);
char *strstr(const char *hay, const char *needle);
char *strdup(const char *s);
const char *strerror(int err);     /* err positive or negative */
int isspace(int c);
int isdigit(int c);

/* ---- numbers (lib/stdlib.c) ---- */
int atoi(const char *s);
long strtol(const char *s, char **end, int base);
unsigned long strtoul(const char *s, char **end, int base);

/* ---- formatted output (lib/printf.c); %d %i %u %x %X %p %s %c %% with l/ll, width,
 * '-' and '0' flags, precision for %s. Each call is one write() when it fits 1 KiB, so lines
 * of different processes don't interleave. ---- */
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int vdprintf(int fd, const char *fmt, va_list ap);
int dprintf(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int puts(const char *s);           /* s + "\n" on stdout */
int fputs(int fd, const char *s);
int write_all(int fd, const void *buf, unsigned n);  /* loops over short writes */

/* ---- heap over sbrk (lib/malloc.c) ---- */
void *malloc(size_t n);
void *calloc(size_t n, size_t size);
void *realloc(void *p, size_t n);
void free(void *p);

/* ---- console (lib/readline.c): echo + line editing on the raw console.
 * Returns the line length (without '\n'), -1 at end of input (Ctrl-D on an empty line
 * or read() == 0), or a negative errno. ---- */
int readline(const char *prompt, char *buf, int size);

/* ---- misc (lib/stdlib.c) ---- */
uint64_t now_ns(void);              /* clock_ns(), or 0 if the kernel lacks it */
const char *basename(const char *path);
int spawn(const char *path, char *const argv[], int fd_in, int fd_out);  /* fork+exec, -> pid */

#endif
