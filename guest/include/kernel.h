/* kernel.h - common definitions for the vmirom reference kernel. */
#ifndef KERNEL_H
#define KERNEL_H

#include <stdint.h>
#include <stddef.h>
#include <stdarg.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int32_t i32;
typedef int64_t i64;

#define KERNBASE 0xC0000000u
#define P2V(pa) ((void *)((u32)(pa) + KERNBASE))
#define V2P(va) ((u32)(va) - KERNBASE)
#define PGSIZE 4096u
#define PGROUNDUP(a) (((u32)(a) + PGSIZE - 1) & ~(PGSIZE - 1))
#define PGROUNDDOWN(a) ((u32)(a) & ~(PGSIZE - 1))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define NORETURN __attribute__((noreturn))
#define PACKED __attribute__((packed))
#define ALIGNED(n) __attribute__((aligned(n)))

/* printf.c */
int kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int ksnprintf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int kvsnprintf(char *buf, size_t n, const char *fmt, va_list ap);
void json_str(char *out, size_t n, const char *s);   /* JSON-quote s into out */
void jsonline(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
NORETURN void panic(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* string.c */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t n);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strncpy(char *d, const char *s, size_t n);
size_t strlcpy(char *d, const char *s, size_t n);
u32 katou(const char *s);

/* uart.c */
void uart_init(void);
void uart_irq_on(void);       /* after pic_init: IRQ4 on received data */
void uart_putc(int c);
int uart_getc(void);          /* -1 if nothing is waiting */
void uart_intr(void);
void console_write(const char *s, size_t n);

/* cmdline.c */
struct cmdline {
    char raw[256];
    int vmi_off;
    int vmi_debug;
    u32 exit_after;          /* ticks; 0 = run forever */
    char init[64];           /* init=<program> (issue 5) */
};
extern struct cmdline cmdline;
void cmdline_parse(const char *s);

/* power.c */
NORETURN void shutdown(int status);

/* kalloc.c */
void kinit_early(u32 start_pa, u32 end_pa);
void *kalloc(void);          /* one zero-filled page (direct-map address), 0 if none */
void kfree(void *va);
u32 kfree_pages(void);
void page_ref(u32 pa);        /* copy-on-write reference counts */
int page_unref(u32 pa);       /* returns the count left */
int page_refcount(u32 pa);

extern int kernel_ring;       /* CS & 3 at entry: 0 on hardware, 1 under a de-privileging VMM */
extern char _kernel_start[], _kernel_end[], _bss_start[], _bss_end[];

/* timer (pit.c) */
extern volatile u32 ticks;
extern const char *timer_source;
void timer_init(void);
void timer_tick(void);

#endif
