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

static u64 tsc_last_tick, tsc_per_tick;

/* nanoseconds since boot: the VMI REAL counter when the ROM has one, else ticks refined with
 * the TSC (its rate learnt from the ticks themselves) */
u64 clock_ns(void)
{
    if (timer_cycle_hz && strcmp(timer_source, "vmi") == 0) {
        u64 c = vmi_ops.get_cycle_counter(VMI_CYCLES_REAL);
        return (c / timer_cycle_hz) * 1000000000ull + (c % timer_cycle_hz) * 1000000000ull / timer_cycle_hz;
    }
    u32 fl = irq_save();
    u64 ns = (u64)ticks * (1000000000ull / HZ);
    if (tsc_per_tick) {
        u64 d = vmi_ops.rdtsc() - tsc_last_tick;
        u64 extra = d * (1000000000ull / HZ) / tsc_per_tick;
        if (extra < 1000000000ull / HZ)
            ns += extra;
        else
            ns += 1000000000ull / HZ - 1;
    }
    restore_fl(fl);
    return ns;
}

void timer_tick(void)
{
    ticks++;
    if (strcmp(timer_source, "vmi") != 0) {
        u64 now = vmi_ops.rdtsc();
        if (tsc_last_tick && now > tsc_last_tick) {
            u64 d = now - tsc_last_tick;
            tsc_per_tick = tsc_per_tick ? (tsc_per_tick * 7 + d) / 8 : d;
        }
        tsc_last_tick = now;
    }
    if (cmdline.exit_after && ticks >= cmdline.exit_after)
        exit_requested = 1;
}
