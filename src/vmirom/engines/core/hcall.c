/* The VMI hypercalls the core completes (vmi and vmi2), over a register snapshot: the C twins of
 * Vmi.is_hypercall's site test, Vmi.iret (+ Vmi2.before_iret) and the calls that only read or set CPU
 * state (vmirom/hypervisors/vmi.py; read it for the why of every check).  module.c's INTR hook and
 * its synthetic-exit entry point (Core.hypercall, the tests') both call these.
 *
 * Every case the Python handler would treat differently - a fault it would raise, an interrupt that
 * may be due once IF is set, a value it would refuse - returns CORE_FALLBACK before anything changed;
 * the Python path then handles the exit from scratch. */
#include <string.h>

#include "core.h"

/* Machine._irq_first / Vmi._after_if_change: with IF set, may an interrupt be due now?  (A PIC
 * request, or a timer whose deadline the thread's CPU clock reached: update_timers would fire it.) */
int core_irq_due(core_t *c, int64_t (*now_raw)(core_t *)) {
    return c->pic_pending || now_raw(c) >= c->deadline_raw;
}

/* Which ROM call is the hypercall at `eip` (the INTR exit of the `int` before it) from code at `cs`:
 * -1 none the core does, 0 the IRET, 1 + i the state call i.  Vmi.is_hypercall: the 2 bytes before EIP
 * translate into the ROM at a known site; privilege_held first (Machine.on_interrupt): nothing is
 * served below the kernel's ring. */
int core_hcall_site(const core_t *c, uint32_t eip, uint32_t cs, uint32_t cr0, uint32_t cr3, uint32_t cr4) {
    if (c->iret_site < 0) return -1;
    if ((int)(cs & 3) != c->kernel_ring) return -1;
    uint64_t pa;
    vfault_t f;
    if (core_translate(c, eip - 2, 0, 0, cr0, cr3, cr4, &pa, &f)) return -1;
    if (pa < c->rom_base) return -1;
    uint64_t off = pa - c->rom_base;
    if (off == (uint64_t)c->iret_site) return 0;
    for (int i = 0; i < c->n_state; i++)
        if (off == (uint64_t)c->state_site[i]) return 1 + i;
    return -1;
}

/* Vmi.update_kernel_stack: SS:ESP of the kernel ring's stack for the next ring change, once SS is a
 * present writable data segment of the kernel ring (Vmi._descriptor's checks; any fault: Python). */
static int kernel_stack(core_t *c, const vcall_in_t *in) {
    uint32_t ss = in->eax, esp = in->edx;
    if (ss > 0xFFFF) ss = in->ss; /* a TSS pointer (older guests): keep our SS */
    if ((ss & 4) || (ss & ~7u) + 7 > in->gdt_limit || (ss & ~7u) == 0) return CORE_FALLBACK;
    uint32_t d[2];
    vfault_t f;
    if (core_read(c, in->gdt_base + (ss & ~7u), d, 8, 0, in->cr0, in->cr3, in->cr4, &f)) return CORE_FALLBACK;
    uint32_t hi = d[1], type = (hi >> 9) & 7;
    int kr = c->kernel_ring;
    if ((int)(ss & 3) != kr || (int)((hi >> 13) & 3) != kr || (type != 1 && type != 3) || !((hi >> 12) & 1) ||
        !(hi & 0x8000))
        return CORE_FALLBACK; /* Python raises #GP(ss) */
    c->ks_valid[kr] = 1;
    c->ks_ss[kr] = ss;
    c->ks_esp[kr] = esp;
    c->ks_dirty |= 1 << kr; /* KernelStacks pulls it before Python reads it */
    return CORE_OK;
}

/* State call i (core_t.state_kind[i]).  CORE_OK: counted in *cnt, *out says what to write. */
int core_state_call(core_t *c, int i, const vcall_in_t *in, vcall_out_t *out, vcounts_t *cnt,
                    int64_t (*now_raw)(core_t *)) {
    memset(out, 0, sizeof *out);
    switch (c->state_kind[i]) {
    case STATE_CR0: out->set_eax = 1, out->eax = in->cr0; break;
    case STATE_CR2: out->set_eax = 1, out->eax = in->cr2; break;
    case STATE_CR3: out->set_eax = 1, out->eax = in->cr3; break;
    case STATE_CR4: out->set_eax = 1, out->eax = in->cr4; break;
    case STATE_IF: out->set_eax = 1, out->eax = in->eflags & EFL_IF; break;
    case STATE_CLI: out->set_eflags = 1, out->eflags = in->eflags & ~EFL_IF; break;
    case STATE_STI: /* Vmi.enable_interrupts: IF set, then a due interrupt is delivered (Python) */
        if (core_irq_due(c, now_raw)) return CORE_FALLBACK;
        out->set_eflags = 1, out->eflags = in->eflags | EFL_IF;
        break;
    case STATE_SETMASK: /* Vmi.set_interrupt_mask: EAX's IF becomes the flag */
        if (in->eax & EFL_IF) {
            if (core_irq_due(c, now_raw)) return CORE_FALLBACK;
            out->eflags = in->eflags | EFL_IF;
        } else {
            out->eflags = in->eflags & ~EFL_IF;
        }
        out->set_eflags = 1;
        break;
    case STATE_KSTACK:
        if (kernel_stack(c, in)) return CORE_FALLBACK;
        break;
    case STATE_SETPXE: /* the shadow MMU's (mmu.c) */
    case STATE_UPDATEPXE:
    case STATE_SETPXE_V2:
        if (core_mmu_pxe(c, c->state_kind[i] - STATE_SETPXE, in, cnt)) return CORE_FALLBACK;
        break;
    case STATE_LAZY_V2: /* vmi2's batch flush (mmu.c) */
    case STATE_FLUSH_V2:
        if (core_v2_flush(c, c->state_kind[i] == STATE_LAZY_V2, in, cnt)) return CORE_FALLBACK;
        break;
    default: return CORE_FALLBACK;
    }
    vcount(cnt, C_HYPERCALL + c->state_num[i]);
    return CORE_OK;
}

/* The IRET hypercall (Vmi.iret; vmi2: Vmi2.before_iret's virtual flag), with the data segments
 * (segs: DS, ES, FS, GS) and, under shadow paging, the guest's control registers.  R is the full
 * snapshot of the exit. */
int core_hcall_iret(core_t *c, vregs_t *R, const uint32_t *segs, ventry_t *e, vcounts_t *cnt,
                    int64_t (*now_raw)(core_t *)) {
    if (c->shadow) {
        if (!core_shadow_gdt_ready(c, R, R->r[R_CR3])) return CORE_FALLBACK;
        R->r[R_CR0] = c->vcr0;
        R->r[R_CR3] = c->vcr3;
        R->r[R_CR4] = c->vcr4;
    }
    if (core_iret(c, R, segs, e) != CORE_OK) return CORE_FALLBACK;
    if ((e->eflags & EFL_IF) && core_irq_due(c, now_raw)) return CORE_FALLBACK;
    if (!core_vif_iret_ok(c, e)) return CORE_FALLBACK;
    core_vif_iret(c, e);
    vcount(cnt, C_HYPERCALL + c->iret_counter);
    return CORE_OK;
}
