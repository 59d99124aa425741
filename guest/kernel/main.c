/* main.c - boot sequence (the order follows Linux 2.6.21: find and bind the VMI ROM before the
 * kernel page tables are built, so that building them already goes through the ROM). */
#include "kernel.h"
#include "mmu.h"
#include "multiboot.h"
#include "proc.h"
#include "pv.h"
#include "vm.h"

#define BOOT_MAP_END (16u << 20)      /* what boot.S maps */

int kernel_ring;
volatile int exit_requested;
u32 idle_halts;
struct boot_module initrd_module;

void gdt_init(void);
void idt_init(void);
void pic_init(void);
void pic_enable(int irq);

static int boot_mapped(u32 pa, u32 len)
{
    return pa < BOOT_MAP_END && len <= BOOT_MAP_END - pa;
}

static u32 max_u32(u32 a, u32 b) { return a > b ? a : b; }

/* Reads what we need from the Multiboot info; returns the first physical byte free for use. */
static u32 read_multiboot(u32 magic, u32 mbi_pa, u32 *ram_end)
{
    u32 free_start = V2P(_kernel_end);
    *ram_end = 32u << 20;                     /* a guess, replaced by the loader's figure */
    if (magic != MB_BOOT_MAGIC || !boot_mapped(mbi_pa, sizeof(struct mb_info))) {
        kprintf("boot: no Multiboot information (magic %08x)\n", magic);
        return free_start;
    }
    const struct mb_info *mbi = P2V(mbi_pa);
    free_start = max_u32(free_start, mbi_pa + sizeof *mbi);
    if (mbi->flags & MBI_MEM)
        *ram_end = (mbi->mem_upper + 1024) * 1024;
    if ((mbi->flags & MBI_CMDLINE) && boot_mapped(mbi->cmdline, 1)) {
        const char *s = P2V(mbi->cmdline);
        cmdline_parse(s);
        free_start = max_u32(free_start, mbi->cmdline + strnlen(s, BOOT_MAP_END - mbi->cmdline) + 1);
    }
    if ((mbi->flags & MBI_MODS) && mbi->mods_count &&
        boot_mapped(mbi->mods_addr, mbi->mods_count * sizeof(struct mb_module))) {
        const struct mb_module *m = P2V(mbi->mods_addr);
        free_start = max_u32(free_start, mbi->mods_addr + mbi->mods_count * sizeof *m);
        for (u32 i = 0; i < mbi->mods_count; i++) {
            free_start = max_u32(free_start, m[i].end);
            if (m[i].string && boot_mapped(m[i].string, 1))
                free_start = max_u32(free_start, m[i].string + strnlen(P2V(m[i].string), 256) + 1);
        }
        initrd_module.start = m[0].start;
        initrd_module.end = m[0].end;
    }
    return free_start;
}

static u32 read_cs(void)
{
    u32 cs;
    asm volatile("movl %%cs, %0" : "=r"(cs));
    return cs;
}

void kmain(u32 magic, u32 mbi_pa)
{
    kernel_ring = read_cs() & 3;
    uart_init();
    kprintf("\nvmirom reference kernel (VMI %u.%u guest), ring %d\n", VMI_API_REV_MAJOR,
            VMI_API_REV_MINOR_CURRENT, kernel_ring);

    u32 ram_end;
    u32 free_start = read_multiboot(magic, mbi_pa, &ram_end);
    char q[300];
    json_str(q, sizeof q, cmdline.raw);
    jsonline("{\"event\":\"boot\",\"ring\":%d,\"cmdline\":%s,\"mem_kb\":%u,\"kernel_bytes\":%u,"
             "\"initrd\":%u}",
             kernel_ring, q, ram_end >> 10, (u32)(_kernel_end - _kernel_start),
             initrd_module.end - initrd_module.start);

    gdt_init();
    idt_init();

    vmi_probe_and_bind();
    vmi_report();

    if (free_start >= BOOT_MAP_END)
        panic("boot: loader data above %u MiB", BOOT_MAP_END >> 20);
    u32 map_end = vm_map_limit(ram_end);
    kinit_early(free_start, map_end);
    vm_init(map_end);

    pic_init();
    timer_init();
    pic_enable(IRQ_COM1);
    uart_irq_on();
    sti();                                   /* interrupts on from here */

    if (initrd_module.end > initrd_module.start) {
        /* a Unix: process 1 is "init" from the initrd */
        /* let a few ticks pass so the clock knows the TSC rate before user space asks */
        for (u32 t0 = ticks; ticks - t0 < 3 && strcmp(timer_source, "pit") == 0;) {
            cli();
            vmi_ops.halt();
        }
        cli();
        proc_init();
        user_init();
        jsonline("{\"event\":\"ready\",\"ticks\":%u,\"free_pages\":%u,\"init\":true}", ticks,
                 kfree_pages());
        scheduler();                         /* never returns */
    }

    kprintf("boot: no init program; idling%s\n", cmdline.exit_after ? " until exit_after" : "");
    /* ticks read and printed with interrupts off: a tick landing mid-line would count in the idle
     * pseudo-test's ticks but fall before the host's window, which starts at the line's end */
    u32 fl = irq_save();
    jsonline("{\"event\":\"ready\",\"ticks\":%u,\"free_pages\":%u}", ticks, kfree_pages());
    restore_fl(fl);
    for (;;) {
        cli();
        if (exit_requested) {
            jsonline("{\"event\":\"idle\",\"ticks\":%u,\"halts\":%u}", ticks, idle_halts);
            shutdown(0);
        }
        vmi_ops.halt();                      /* safe halt: enables interrupts, waits */
        idle_halts++;
    }
}
