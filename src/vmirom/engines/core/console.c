/* The console's hot port I/O: what Machine.on_port_in/on_port_out + Uart16550 do for the two
 * accesses a kernel's console output is made of - the LSR poll and the THR write - when the
 * outcome is provably the Python path's.
 *
 * Why: a byte of console output is two exits (`in` LSR, `out` THR), ~8 us each through Python;
 * printing is the largest handler share of a quiet guest.  Everything else falls through to the
 * Python path, unchanged: any other UART register, DLAB set, a THR write that would raise the
 * THRE interrupt (IER bit 1), a newline or the first byte of a line (the console sinks take a
 * snapshot there: vmirom.bench.probe), a full buffer, the personality's hypercall port, a context
 * below the kernel's ring (privilege_held: Python stops the VM), or one not allowed I/O (Python
 * raises #GP), V86 mode, and a block fenced by the engine (W18).
 *
 * The checks, in the Python path's order: on_port_out's hypercall port test, the count, then
 * privilege_held, then io_permitted; the UART's own state last.  A fallback counts nothing (the
 * Python path counts the exit itself).
 */
#include "core.h"

#define EFL_VM 0x20000u

/* privilege_held() and the personality's io_permitted(), from CS and EFLAGS (1: the core may go on) */
static int io_allowed(const core_t *c, uint32_t cs, uint32_t eflags) {
    if (eflags & EFL_VM) return 0;
    int cpl = (int)(cs & 3);
    if (c->kernel_ring != 0 && cpl < c->kernel_ring) return 0;
    if (c->con.io_rule == IO_RULE_IOPL) return cpl <= (int)((eflags >> 12) & 3);
    return cpl <= c->kernel_ring;  /* Vmi: a user context with the guest's IOPL is Python's */
}

static void count(core_t *c, int idx) {
    vcounts_t cnt = {0};
    vcount(&cnt, idx);
    core_commit(c, &cnt);
    c->completed++;  /* an exit completed in C, like a delivery (Core.completed, the run summary) */
}

int core_console_out(core_t *c, uint32_t port, int size, uint32_t value, uint32_t cs, uint32_t eflags) {
    const vconsole_t *k = &c->con;
    if (!k->on || k->fenced || port != k->base || (int64_t)port == k->hypercall_port) return CORE_FALLBACK;
    if (!io_allowed(c, cs, eflags)) return CORE_FALLBACK;
    if (k->lcr & 0x80 || k->ier & 2 || !k->midline || k->n >= CONSOLE_BUF) return CORE_FALLBACK;
    (void)size;
    uint8_t b = (uint8_t)(value & 0xFF);  /* PortBus masks to the size, the UART to a byte */
    if (b == '\n') return CORE_FALLBACK;
    c->con.buf[c->con.n++] = b;
    count(c, C_IO_OUT);
    return CORE_OK;
}

int core_console_in(core_t *c, uint32_t port, int size, uint32_t cs, uint32_t eflags, uint32_t *value) {
    const vconsole_t *k = &c->con;
    if (!k->on || k->fenced || size != 1 || port != k->base + 5) return CORE_FALLBACK;
    if (!io_allowed(c, cs, eflags)) return CORE_FALLBACK;
    *value = 0x60u | (k->rx_ready ? 1u : 0u);  /* LSR: THR empty + transmitter empty (+ data ready) */
    count(c, C_IO_IN + 5);
    return CORE_OK;
}
