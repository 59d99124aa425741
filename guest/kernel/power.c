/* power.c - shutting down.
 * The exit status goes to port 0xF4 (QEMU's isa-debug-exit; our VMM honours the same port),
 * 0 = clean.  If that did not stop the machine, the VMI Shutdown call (when the ROM provides
 * it), then a native halt loop. */
#include "kernel.h"
#include "pv.h"

#define DEBUG_EXIT_PORT 0xF4

extern u32 idle_halts;

void shutdown(int status)
{
    cli();
    kprintf("shutdown: status %d after %u ticks, %u idle halts\n", status, ticks, idle_halts);
    jsonline("{\"event\":\"shutdown\",\"status\":%d,\"ticks\":%u,\"halts\":%u,\"timer\":\"%s\"}", status, ticks,
             idle_halts, timer_source);
    outl(DEBUG_EXIT_PORT, (u32)status);
    vmi_ops.shutdown();
    for (;;)
        asm volatile("cli; hlt");
}
