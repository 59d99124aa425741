/* pvnative.c - the native implementation of every table-bound VMI call.
 *
 * These run when no ROM is bound, or when the ROM answers NONE for a call.  Each is written so
 * that it is correct at ring 0 on hardware and also at ring 1 under a trap-and-emulate VMM
 * (plain privileged instructions, which trap there and get emulated).  Port I/O is not a VMI
 * call in this kernel (Linux kept it native too).
 */
#include "kernel.h"
#include "mmu.h"
#include "pv.h"

extern struct tss tss;

/* CPUID is not a C function in VMI: EAX/ECX in, EAX/EBX/ECX/EDX out, flags clobbered. */
VMICALL void native_cpuid(void);
asm(".text\n.globl native_cpuid\nnative_cpuid:\n\tcpuid\n\tret\n");

/* The empty call used for NOP answers: returns 0 in EDX:EAX, touches nothing else. */
VMICALL void pv_nop(void);
asm(".text\n.globl pv_nop\npv_nop:\n\txorl %eax, %eax\n\txorl %edx, %edx\n\tret\n");
u32 pv_empty_call_target = (u32)pv_nop;

static VMICALL void native_set_gdt(const struct dtr *d) { asm volatile("lgdt (%0)" :: "r"(d) : "memory"); }
static VMICALL void native_set_idt(const struct dtr *d) { asm volatile("lidt (%0)" :: "r"(d) : "memory"); }
static VMICALL void native_set_tr(u32 sel) { asm volatile("ltr %w0" :: "r"(sel) : "memory"); }

static VMICALL void native_write_dt_entry(void *table, u32 index, u32 lo, u32 hi)
{
    volatile u32 *e = (u32 *)table + index * 2;
    e[0] = lo;
    e[1] = hi;
}

/* The stack the CPU switches to on entry from ring 3: esp0 at ring 0, esp1 at ring 1. */
static VMICALL void native_update_kernel_stack(u32 ss, u32 esp)
{
    if (kernel_ring == 1) {
        tss.ss1 = ss;
        tss.esp1 = esp;
    } else {
        tss.ss0 = ss;
        tss.esp0 = esp;
    }
}

static VMICALL void native_set_cr0(u32 v) { asm volatile("movl %0, %%cr0" :: "r"(v) : "memory"); }
static VMICALL void native_set_cr3(u32 v) { asm volatile("movl %0, %%cr3" :: "r"(v) : "memory"); }
static VMICALL void native_set_cr4(u32 v) { asm volatile("movl %0, %%cr4" :: "r"(v) : "memory"); }
static VMICALL u32 native_get_cr0(void) { u32 v; asm volatile("movl %%cr0, %0" : "=r"(v)); return v; }
static VMICALL u32 native_get_cr4(void) { u32 v; asm volatile("movl %%cr4, %0" : "=r"(v)); return v; }
static VMICALL void native_wbinvd(void) { asm volatile("wbinvd" ::: "memory"); }
static VMICALL void native_clts(void) { asm volatile("clts"); }

static VMICALL u64 native_rdtsc(void)
{
    u32 lo, hi;
    asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

/* safe halt: interrupts on and halt, with no window between them (sti's shadow) */
static VMICALL void native_halt(void) { asm volatile("sti; hlt" ::: "memory"); }

static VMICALL void native_reboot(u32 how)
{
    outb(0x64, 0xFE);                       /* keyboard controller reset */
    for (;;)
        asm volatile("hlt");
}

static VMICALL void native_shutdown(void)
{
    for (;;)
        asm volatile("cli; hlt");
}

static VMICALL void native_set_pxe(u32 val, u32 *entry, u32 flags) { *(volatile u32 *)entry = val; }
static VMICALL void native_allocate_page(u32 pfn, u32 flags, u32 clone, u32 start, u32 count) {}
static VMICALL void native_release_page(u32 pfn, u32 flags) {}

static VMICALL void native_flush_tlb(u32 flags)
{
    u32 v;
    asm volatile("movl %%cr3, %0; movl %0, %%cr3" : "=r"(v) :: "memory");
}

static VMICALL void native_nothing_4(u32 a, u32 b, u32 c, u32 d) {}
static VMICALL void native_nothing_1(u32 a) {}
static VMICALL void native_nothing(void) {}
static VMICALL void native_io_delay(void) { asm volatile("outb %%al, $0x80" ::: "memory"); }
static VMICALL u64 native_zero64(void) { return 0; }
static VMICALL u64 native_zero64_1(u32 a) { return 0; }
static VMICALL void native_set_alarm(u32 flags, u64 expiry, u64 period) {}
static VMICALL u32 native_zero32_1(u32 a) { return 0; }
static VMICALL u32 native_zero32(void) { return 0; }

/* Statically native, so everything works before (and without) binding. */
struct vmi_ops vmi_ops = {
    .cpuid = native_cpuid,
    .set_gdt = native_set_gdt,
    .set_idt = native_set_idt,
    .set_tr = native_set_tr,
    .write_gdt_entry = native_write_dt_entry,
    .write_idt_entry = native_write_dt_entry,
    .update_kernel_stack = native_update_kernel_stack,
    .set_cr0 = native_set_cr0,
    .set_cr3 = native_set_cr3,
    .set_cr4 = native_set_cr4,
    .get_cr0 = native_get_cr0,
    .get_cr4 = native_get_cr4,
    .wbinvd = native_wbinvd,
    .rdtsc = native_rdtsc,
    .clts = native_clts,
    .halt = native_halt,
    .reboot = native_reboot,
    .shutdown = native_shutdown,
    .set_pxe = native_set_pxe,
    .allocate_page = native_allocate_page,
    .release_page = native_release_page,
    .flush_tlb = native_flush_tlb,
    .set_linear_mapping = native_nothing_4,
    .set_lazy_mode = native_nothing_1,
    .flush_deferred = native_nothing,
    .io_delay = native_io_delay,
    .get_cycle_frequency = native_zero64,
    .get_cycle_counter = native_zero64_1,
    .set_alarm = native_set_alarm,
    .cancel_alarm = native_zero32_1,
    .get_wallclock = native_zero64,
    .wallclock_updated = native_zero32,
};
