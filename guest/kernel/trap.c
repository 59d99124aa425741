/* trap.c - dispatch of interrupts, exceptions and system calls. */
#include "kernel.h"
#include "mmu.h"
#include "proc.h"
#include "pv.h"
#include "syscall.h"

void pic_eoi(int irq);
int pic_spurious(int irq);

static const char *const exc_names[] = {
    "divide error", "debug", "NMI", "breakpoint", "overflow", "bound range", "invalid opcode",
    "device not available", "double fault", "coprocessor overrun", "invalid TSS",
    "segment not present", "stack fault", "general protection", "page fault", "reserved",
    "x87 error", "alignment check", "machine check", "SIMD error", "virtualization",
    "control protection",
};

u32 irq_counts[16];

NORETURN static void kernel_exception(struct trapframe *tf)
{
    u32 cr2 = tf->trapno == T_PGFLT ? read_cr2() : 0;
    const char *name = tf->trapno < ARRAY_SIZE(exc_names) ? exc_names[tf->trapno] : "unexpected trap";
    kprintf("\n*** kernel exception %u (%s): error %08x eip %08x cs %04x eflags %08x cr2 %08x\n",
            tf->trapno, name, tf->err, tf->eip, tf->cs & 0xFFFF, tf->eflags, cr2);
    kprintf("    eax %08x ebx %08x ecx %08x edx %08x esi %08x edi %08x ebp %08x\n", tf->eax, tf->ebx,
            tf->ecx, tf->edx, tf->esi, tf->edi, tf->ebp);
    jsonline("{\"event\":\"exception\",\"vector\":%u,\"name\":\"%s\",\"error\":%u,\"eip\":%u,\"cs\":%u,"
             "\"eflags\":%u,\"cr2\":%u,\"ring\":%u}",
             tf->trapno, name, tf->err, tf->eip, tf->cs & 0xFFFF, tf->eflags, cr2, tf->cs & 3);
    shutdown(2);
}

void trap(struct trapframe *tf)
{
    u32 t = tf->trapno;
    if (t >= T_IRQ0 && t < T_IRQ0 + 16) {
        int irq = t - T_IRQ0;
        if (pic_spurious(irq))
            return;
        irq_counts[irq]++;
        if (irq == IRQ_TIMER)
            timer_tick();
        else if (irq == IRQ_COM1) {
            uart_intr();
            console_intr_wakeup();
        }
        pic_eoi(irq);
        if (irq == IRQ_TIMER)
            sched_tick(tf);
        if ((tf->cs & 3) == 3 && curproc && curproc->killed)
            exit_proc(WSTATUS_KILLED);
        return;
    }
    if (t == T_SYSCALL && (tf->cs & 3) == 3) {
        syscall_dispatch(tf);
        return;
    }
    if ((tf->cs & 3) == 3 && user_fault(tf))
        return;
    kernel_exception(tf);
}
