/* vmi2's virtual interrupt flag: the C twin of Vmi2.load_virtual_if, Vmi2.save_virtual_if and
 * Vmi2.before_iret (vmirom/hypervisors/vmi2.py; read it for the why).
 *
 * vmi2's ROM keeps the kernel's interrupt flag in the first word of its shared page (0 or 0x200);
 * cli/sti are stores there.  So for kernel-ring code EFLAGS.IF is not the flag: before the machine
 * looks at IF (the interrupt window, the frame it pushes) it loads the word into EFLAGS.IF, and after
 * it entered a handler it stores the handler's IF (cleared by an interrupt gate) back, with the CR2 of
 * the delivery for the ROM's GetCR2.  The second word, "pending", tells the ROM's sti/IRET stubs to
 * exit: the VMM rewrites it at every load (1 only when the flag holds back an interrupt the PIC has).
 *
 * What the core does not know it leaves to Python, before anything changed: a word that is neither
 * 0 nor 0x200 (Python stops the VM, fate bad_shared_state), an interrupt the PIC may hold while the
 * flag is clear (the pending word then depends on the PIC's priorities: Vmi2 asks pic.pending_vector),
 * a VMM write that must go through Python (GuestMemory.on_code_write, or the page among the ranges
 * whose writes Python must see: the ROM, a live descriptor table's frames - machine/dtguard.py). */
#include <string.h>

#include "core.h"

#define SH_VIF 0x00
#define SH_PENDING 0x04
#define SH_CR2 0x14

static uint32_t shared_u32(const core_t *c, uint32_t off) {
    uint32_t v;
    memcpy(&v, c->mem.ram + c->vif_page + off, 4);
    return v;
}

static void shared_set(const core_t *c, uint32_t off, uint32_t v) {
    memcpy(c->mem.ram + c->vif_page + off, &v, 4);
}

/* May the core store into the shared page (0: every exit that would must go to Python)? */
int core_vif_ok(const core_t *c) {
    if (!c->vif_on || !c->vif_live) return 1;
    if (c->mem.writes_to_python) return 0;
    uint64_t lo = c->vif_page, hi = c->vif_page + 4096;
    for (int i = 0; i < c->mem.n_ro; i++)
        if (c->mem.ro_start[i] < hi && c->mem.ro_end[i] > lo) return 0;
    return 1;
}

/* Vmi2.load_virtual_if over the register snapshot: for kernel-ring code EFLAGS.IF becomes the word.
 * *loaded says the word was read; the caller then writes the pending word (core_vif_loaded) once the
 * exit is completed. */
int core_vif_load(core_t *c, vregs_t *R, int *loaded) {
    *loaded = 0;
    if (!c->vif_on || !c->vif_live || (int)(R->r[R_CS] & 3) > c->kernel_ring) return CORE_OK;
    if (!core_vif_ok(c)) return CORE_FALLBACK;
    uint32_t vif = shared_u32(c, SH_VIF);
    if (vif != 0 && vif != EFL_IF) return CORE_FALLBACK; /* Python refuses it: bad_shared_state */
    if (!vif && c->pic_pending) return CORE_FALLBACK;    /* pending = pic.pending_vector(): Python's */
    R->r[R_EFLAGS] = (R->r[R_EFLAGS] & ~EFL_IF) | vif;
    *loaded = 1;
    return CORE_OK;
}

/* The pending word as load_virtual_if leaves it when the PIC holds nothing for the kernel (the only
 * case core_vif_load lets through with the flag clear; with the flag set the word is 0 anyway). */
void core_vif_loaded(core_t *c) {
    shared_set(c, SH_PENDING, 0);
}

/* Vmi2.save_virtual_if: a handler at `cpl` was entered with `eflags`; `cr2` is the delivery's. */
void core_vif_save(core_t *c, int cpl, uint32_t eflags, uint32_t cr2) {
    if (!c->vif_on || !c->vif_live || cpl > c->kernel_ring) return;
    shared_set(c, SH_VIF, eflags & EFL_IF);
    shared_set(c, SH_CR2, cr2);
}

/* May the core complete this IRET as far as the flag goes?  (Only a write Python must do stops it.) */
int core_vif_iret_ok(const core_t *c, const ventry_t *e) {
    return (int)(e->cs & 3) > c->kernel_ring || core_vif_ok(c);
}

/* The IRET exit of vmi2's stub (user frames, or a kernel frame while an interrupt was pending):
 * Vmi2.before_iret makes a kernel frame's IF the flag; when that IF is set, Vmi._after_if_change's
 * load_virtual_if (now in the kernel ring, flag set) clears the pending word. */
void core_vif_iret(core_t *c, const ventry_t *e) {
    if (!c->vif_on || !c->vif_live || (int)(e->cs & 3) > c->kernel_ring) return;
    shared_set(c, SH_VIF, e->eflags & EFL_IF);
    if (e->eflags & EFL_IF) shared_set(c, SH_PENDING, 0);
}
