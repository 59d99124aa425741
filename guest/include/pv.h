/* pv.h - every privileged operation of the kernel, as a VMI call.
 *
 * Two kinds (see vmi.c for how they are bound):
 *  - hot operations are inline call sites (vmi_site.h): the native instruction is compiled in
 *    place and the site is patched at boot;
 *  - the others are calls through the table `vmi_ops`, whose entries are regparm(3) functions:
 *    the native implementation (pvnative.c), an empty function (NOP) or the ROM's code (CALL_REL).
 */
#ifndef PV_H
#define PV_H

#include "kernel.h"
#include "vmi_site.h"

#define VMICALL __attribute__((regparm(3)))

struct dtr {
    u16 limit;
    u32 base;
} PACKED;

struct cpuid_regs { u32 eax, ebx, ecx, edx; };

struct vmi_ops {
    /* CPU state */
    VMICALL void (*cpuid)(void);            /* not C: EAX/ECX in, EAX..EDX out (cpuid() wraps) */
    VMICALL void (*set_gdt)(const struct dtr *d);
    VMICALL void (*set_idt)(const struct dtr *d);
    VMICALL void (*set_tr)(u32 sel);
    VMICALL void (*write_gdt_entry)(void *table, u32 index, u32 lo, u32 hi);
    VMICALL void (*write_idt_entry)(void *table, u32 index, u32 lo, u32 hi);
    VMICALL void (*update_kernel_stack)(u32 ss, u32 esp);
    VMICALL void (*set_cr0)(u32 v);
    VMICALL void (*set_cr3)(u32 v);
    VMICALL void (*set_cr4)(u32 v);
    VMICALL u32 (*get_cr0)(void);
    VMICALL u32 (*get_cr4)(void);
    VMICALL void (*wbinvd)(void);
    VMICALL u64 (*rdtsc)(void);
    VMICALL void (*clts)(void);
    /* processor state */
    VMICALL void (*halt)(void);
    VMICALL void (*reboot)(u32 how);
    VMICALL void (*shutdown)(void);
    /* MMU */
    VMICALL void (*set_pxe)(u32 val, u32 *entry, u32 flags);
    VMICALL void (*allocate_page)(u32 pfn, u32 flags, u32 clone_pfn, u32 start, u32 count);
    VMICALL void (*release_page)(u32 pfn, u32 flags);
    VMICALL void (*flush_tlb)(u32 flags);
    VMICALL void (*set_linear_mapping)(u32 slot, u32 va, u32 npages, u32 pfn);
    VMICALL void (*set_lazy_mode)(u32 mode);
    VMICALL void (*flush_deferred)(void);   /* extension, minor >= 1 */
    /* I/O */
    VMICALL void (*io_delay)(void);
    /* time */
    VMICALL u64 (*get_cycle_frequency)(void);
    VMICALL u64 (*get_cycle_counter)(u32 which);
    VMICALL void (*set_alarm)(u32 flags, u64 expiry, u64 period);
    VMICALL u32 (*cancel_alarm)(u32 counter);
    VMICALL u64 (*get_wallclock)(void);
    VMICALL u32 (*wallclock_updated)(void);
};
extern struct vmi_ops vmi_ops;

/* ---- inline sites ---- */

static inline void cli(void)
{
    asm volatile(VMI_SITE("cli", DisableInterrupts, 0) ::: "memory", "cc");
}

static inline void sti(void)
{
    asm volatile(VMI_SITE("sti", EnableInterrupts, 0) ::: "memory", "cc");
}

static inline u32 save_fl(void)
{
    u32 f;
    asm volatile(VMI_SITE("pushfl; popl %%eax", GetInterruptMask, 0) : "=a"(f) :: "memory", "cc");
    return f;
}

static inline void restore_fl(u32 f)
{
    asm volatile(VMI_SITE("pushl %%eax; popfl", SetInterruptMask, 0) :: "a"(f) : "memory", "cc");
}

static inline u32 irq_save(void)
{
    u32 f = save_fl();
    cli();
    return f;
}

static inline u32 read_cr2(void)
{
    u32 v;
    asm volatile(VMI_SITE("movl %%cr2, %%eax", GetCR2, 0) : "=a"(v) :: "ecx", "edx", "cc", "memory");
    return v;
}

static inline u32 read_cr3(void)
{
    u32 v;
    asm volatile(VMI_SITE("movl %%cr3, %%eax", GetCR3, 0) : "=a"(v) :: "ecx", "edx", "cc", "memory");
    return v;
}

static inline void invlpg(u32 va)
{
    asm volatile(VMI_SITE("invlpg (%%eax)", InvalPage, 0)
                 : "+a"(va) :: "ecx", "edx", "cc", "memory");
}

static inline void cpuid(u32 leaf, u32 sub, struct cpuid_regs *r)
{
    asm volatile("call *%4"
                 : "=a"(r->eax), "=b"(r->ebx), "=c"(r->ecx), "=d"(r->edx)
                 : "m"(vmi_ops.cpuid), "0"(leaf), "2"(sub)
                 : "cc", "memory");
}

/* port I/O stays native (as in Linux: it traps, or the VMM lets it through) */
static inline void outb(u16 port, u8 v) { asm volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outl(u16 port, u32 v) { asm volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }

/* pvnative.c: the native implementations, also used as fallbacks */
void pv_native_init(void);
extern u32 pv_empty_call_target;   /* address of an empty function (NOP binding) */

/* vmi.c */
struct vmi_state {
    int bound;                 /* a ROM is in use */
    u32 rom_pa;                /* physical address of the ROM, 0 if none */
    u8 api_major, api_minor;
    u8 rom_major, rom_minor;
    u32 virtual_top;
    char manufacturer[48], product[48];
    char reason[96];           /* why native, or "" */
    u32 counts[4];             /* per relocation type over every call asked */
    u32 sites, patched;
    u8 reloc_type[VMI_NUM_CALLS];
    u32 reloc_eip[VMI_NUM_CALLS];
};
extern struct vmi_state vmi;
void vmi_probe_and_bind(void);
void vmi_report(void);
int vmi_call_type(int call);   /* relocation type the kernel uses for a call (NONE if native) */
const char *vmi_call_name(int call);

#endif
