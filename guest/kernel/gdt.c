/* gdt.c - segmentation: the GDT, the TSS and the IDT.
 * The kernel is ring-agnostic: kernel descriptors get DPL = kernel_ring and kernel selectors
 * RPL = kernel_ring (0 on hardware, 1 under a de-privileging VMM).  Every table write and load
 * goes through the VMI table (WriteGDTEntry, WriteIDTEntry, SetGDT, SetIDT, SetTR). */
#include "kernel.h"
#include "mmu.h"
#include "pv.h"

/* The hardware tables must be page-aligned (VMI architectural requirement). */
static u32 gdt[2 * 512] __attribute__((aligned(4096), section(".bss.pagealigned")));
static u32 idt[2 * 256] __attribute__((aligned(4096), section(".bss.pagealigned")));
struct tss tss __attribute__((aligned(4096), section(".bss.pagealigned")));
static u8 tss_pad[4096 - sizeof(struct tss)] __attribute__((section(".bss.pagealigned"), used));

u32 kernel_cs, kernel_ds;      /* selectors, RPL = kernel_ring (read by trapasm.S) */
extern u32 trap_vectors[256];
extern char boot_stack_top[];

/* flat 4 GiB segment: type 0xA = code exec/read, 0x2 = data read/write */
static void set_seg(int index, u32 type, u32 dpl)
{
    u32 lo = 0x0000FFFF;                                     /* limit 15:0, base 15:0 = 0 */
    u32 hi = 0x00CF9000 | (type << 8) | (dpl << 13);         /* G, D/B, limit 19:16, P, S */
    vmi_ops.write_gdt_entry(gdt, index, lo, hi);
}

static void set_tss_desc(int index, u32 base, u32 limit)
{
    u32 lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16);
    u32 hi = ((base >> 16) & 0xFF) | 0x8900 | (limit & 0xF0000) | (base & 0xFF000000);
    vmi_ops.write_gdt_entry(gdt, index, lo, hi);
}

static void reload_segments(u32 cs, u32 ds)
{
    asm volatile("movw %w1, %%ds\n\t"
                 "movw %w1, %%es\n\t"
                 "movw %w1, %%ss\n\t"
                 "movw %w1, %%fs\n\t"
                 "movw %w1, %%gs\n\t"
                 "pushl %0\n\t"
                 "pushl $1f\n\t"
                 "lret\n"
                 "1:" :: "r"(cs), "r"(ds) : "memory");
}

void gdt_init(void)
{
    int r = kernel_ring;
    kernel_cs = SEL_KCODE(r);
    kernel_ds = SEL_KDATA(r);

    set_seg(GDT_KCODE, 0xA, r);
    set_seg(GDT_KDATA, 0x2, r);
    set_seg(GDT_UCODE, 0xA, 3);
    set_seg(GDT_UDATA, 0x2, 3);

    memset(&tss, 0, sizeof tss);
    tss.iomap_base = sizeof tss;          /* no I/O bitmap */
    set_tss_desc(GDT_TSS, (u32)&tss, sizeof tss - 1);

    struct dtr d = { NGDT * 8 - 1, (u32)gdt };
    vmi_ops.set_gdt(&d);
    reload_segments(kernel_cs, kernel_ds);
    vmi_ops.update_kernel_stack(kernel_ds, (u32)boot_stack_top);
    vmi_ops.set_tr(SEL_TSS);
}

void set_idt_gate(int vec, u32 handler, int dpl)
{
    u32 lo = (handler & 0xFFFF) | (kernel_cs << 16);
    u32 hi = (handler & 0xFFFF0000) | 0x8E00 | (dpl << 13);   /* present, 32-bit interrupt gate */
    vmi_ops.write_idt_entry(idt, vec, lo, hi);
}

void idt_init(void)
{
    for (int v = 0; v < 256; v++)
        set_idt_gate(v, trap_vectors[v], kernel_ring);
    set_idt_gate(3, trap_vectors[3], 3);            /* int3 from user space */
    set_idt_gate(T_SYSCALL, trap_vectors[T_SYSCALL], 3);
    struct dtr d = { 256 * 8 - 1, (u32)idt };
    vmi_ops.set_idt(&d);
}
