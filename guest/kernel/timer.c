/* timer.c - the periodic tick at HZ.
 * With a ROM that implements the VMI timer (get_reloc(GetCycleFrequency) != NONE, as Linux
 * 2.6.21 decides) the tick is a periodic alarm on the AVAILABLE counter wired to IRQ0, and the
 * PIT is silenced; otherwise the 8254 PIT channel 0 drives IRQ0. */
#include "kernel.h"
#include "mmu.h"
#include "pv.h"

#define HZ 100
#define PIT_HZ 1193182

volatile u32 ticks;
const char *timer_source = "none";
u64 timer_cycle_hz;

void pic_enable(int irq);

static int vmi_timer_usable(void)
{
    return vmi_call_type(VMI_CALL_GetCycleFrequency) == VMI_RELOCATION_CALL_REL &&
           vmi_call_type(VMI_CALL_GetCycleCounter) == VMI_RELOCATION_CALL_REL &&
           vmi_call_type(VMI_CALL_SetAlarm) == VMI_RELOCATION_CALL_REL;
}

void timer_init(void)
{
    if (vmi_timer_usable()) {
        timer_cycle_hz = vmi_ops.get_cycle_frequency();
        if (timer_cycle_hz >= HZ) {
            u64 period = timer_cycle_hz / HZ;
            outb(0x43, 0x3A);           /* PIT channel 0: one-shot mode 5, never armed -> quiet */
            u64 now = vmi_ops.get_cycle_counter(VMI_CYCLES_AVAILABLE);
            vmi_ops.set_alarm(VMI_ALARM_WIRED_IRQ0 | VMI_ALARM_IS_PERIODIC | VMI_CYCLES_AVAILABLE,
                              now + period, period);
            timer_source = "vmi";
        }
    }
    if (strcmp(timer_source, "vmi") != 0) {
        u32 div = (PIT_HZ + HZ / 2) / HZ;
        outb(0x43, 0x34);               /* channel 0, lobyte/hibyte, mode 2 (rate generator) */
        outb(0x40, div & 0xFF);
        outb(0x40, div >> 8);
        timer_source = "pit";
    }
    kprintf("timer: %d Hz from %s", HZ, timer_source);
    if (timer_cycle_hz)
        kprintf(" (cycle counter %u Hz)", (u32)timer_cycle_hz);
    kprintf("\n");
    jsonline("{\"event\":\"timer\",\"source\":\"%s\",\"hz\":%d,\"cycle_hz\":%llu}", timer_source, HZ,
             timer_cycle_hz);
    pic_enable(IRQ_TIMER);
}

extern volatile int exit_requested;

void timer_tick(void)
{
    ticks++;
    if (cmdline.exit_after && ticks >= cmdline.exit_after)
        exit_requested = 1;
}
