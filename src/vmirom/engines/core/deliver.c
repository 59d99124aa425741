/* Interrupt and exception delivery through the guest IDT: the C twin of
 * vmirom.machine.delivery.Delivery (read that for the why of every rule; this file follows it
 * step by step, in the same order, so the two agree on every frame, register, error code and
 * counter - the synthetic-exit tests run against both).
 *
 * core_deliver: one delivery with the double-fault rules (Delivery._with_double_fault).
 * core_intr:    the INTR exit (Machine.on_interrupt) for the cases the core completes itself;
 *               everything else returns CORE_FALLBACK *before anything was changed*, and the
 *               Python path handles the exit from scratch. */
#include <stdio.h>
#include <string.h>

#include "core.h"

typedef struct {
    uint32_t w[6];
    int n;
    uint64_t phys[2];
    uint32_t len[2];
} vframe_t;

static int gp(vfault_t *f, int vector, uint32_t err) {
    f->vector = vector;
    f->err = err;
    f->has_cr2 = 0;
    return CORE_FAULT;
}

/* Delivery._read8: two dwords of a system table (supervisor read). */
static int read8(const core_t *c, const vregs_t *R, uint32_t lin, uint32_t *lo, uint32_t *hi, vfault_t *f) {
    uint32_t v[2];
    if (core_read(c, lin, v, 8, 0, R->r[R_CR0], R->r[R_CR3], R->r[R_CR4], f)) return CORE_FAULT;
    *lo = v[0];
    *hi = v[1];
    return CORE_OK;
}

/* Delivery._code_dpl */
static int code_dpl(const core_t *c, const vregs_t *R, uint32_t sel, int ext, int *dpl, vfault_t *f) {
    if ((sel & ~3u) == 0) return gp(f, V_GP, ext);
    if (sel & 4) return gp(f, V_GP, (sel & ~3u) + ext);
    if ((sel & ~7u) + 7 > R->r[R_GDT_LIMIT]) return gp(f, V_GP, (sel & ~3u) + ext);
    uint32_t lo, hi;
    if (read8(c, R, R->r[R_GDT_BASE] + (sel & ~7u), &lo, &hi, f)) return CORE_FAULT;
    if (!((hi >> 11) & 1) || !((hi >> 12) & 1)) return gp(f, V_GP, (sel & ~3u) + ext);
    if (!(hi & 0x8000)) return gp(f, V_NP, (sel & ~3u) + ext);
    /* docs/security.md: a conforming target keeps the caller's ring and an execute-only one is
     * refused - both rare, both left to the Python path, which applies those rules */
    if (((hi >> 10) & 1) || !((hi >> 9) & 1)) return CORE_FALLBACK;
    *dpl = (hi >> 13) & 3;
    return CORE_OK;
}

/* Would the engine accept SS = sel at CPL `cpl`?  (Python does not check: the engine refuses and
 * the run ends with an engine error.  The core only proceeds when the load is sure to work, and
 * leaves every other case to that Python path.) */
static int ss_loadable(const core_t *c, const vregs_t *R, uint32_t sel, int cpl) {
    if ((sel & ~3u) == 0 || (sel & 4) || (int)(sel & 3) != cpl) return 0;
    if ((sel & ~7u) + 7 > R->r[R_GDT_LIMIT]) return 0;
    uint32_t lo, hi;
    vfault_t f;
    if (read8(c, R, R->r[R_GDT_BASE] + (sel & ~7u), &lo, &hi, &f)) return 0;
    return (hi & 0x8000) && ((hi >> 12) & 1) && !((hi >> 11) & 1) && ((hi >> 9) & 1) &&
           (int)((hi >> 13) & 3) == cpl;
}

/* Delivery._deliver: one delivery.  CORE_OK (entry in *e, frame in *fr, not yet written),
 * CORE_FAULT (*f) or CORE_FALLBACK. */
static int deliver_once(const core_t *c, const vregs_t *R, int vector, int has_err, uint32_t err,
                        int software, int external, ventry_t *e, vframe_t *fr, vfault_t *f) {
    const uint32_t *r = R->r;
    uint32_t ext = external ? 1 : 0;
    /* docs/security.md: a context below the kernel's ring (Machine.privilege_held), V86 mode and
     * PAE paging are refused by the Python path: never completed here */
    if ((int)(r[R_CS] & 3) < c->kernel_ring || (r[R_EFLAGS] & 0x20000u) ||
        ((r[R_CR4] & 0x20u) && (r[R_CR0] & 0x80000000u)))
        return CORE_FALLBACK;
    if ((uint32_t)vector * 8 + 7 > r[R_IDT_LIMIT]) return gp(f, V_GP, vector * 8 + 2 + ext);
    uint32_t lo, hi;
    if (read8(c, R, r[R_IDT_BASE] + vector * 8, &lo, &hi, f)) return CORE_FAULT;
    uint32_t gtype = (hi >> 8) & 0x1F;
    if (gtype != 0x0E && gtype != 0x0F) return gp(f, V_GP, vector * 8 + 2 + ext);
    int cpl = r[R_CS] & 3;
    if (software && (int)((hi >> 13) & 3) < cpl) return gp(f, V_GP, vector * 8 + 2);
    if (!(hi & 0x8000)) return gp(f, V_NP, vector * 8 + 2 + ext);
    uint32_t sel = lo >> 16;
    uint32_t offset = (hi & 0xFFFF0000u) | (lo & 0xFFFF);
    int dpl;
    int rc = code_dpl(c, R, sel, ext, &dpl, f);
    if (rc) return rc;
    if (dpl > cpl) return gp(f, V_GP, (sel & ~3u) + ext);
    if (dpl < c->kernel_ring) return CORE_FALLBACK; /* a ring the kernel does not own: #GP in Python */
    uint32_t new_flags = r[R_EFLAGS] & ~EFL_CLEAR;
    if (gtype == 0x0E) new_flags &= ~EFL_IF;
    uint32_t top;
    int user;
    memset(e, 0, sizeof *e);
    if (dpl < cpl) {
        uint32_t ss_new, esp_new;
        if (c->ks_valid[dpl]) {
            ss_new = c->ks_ss[dpl];
            esp_new = c->ks_esp[dpl];
        } else { /* Delivery._tss_stack */
            uint32_t tsel = r[R_TR_SEL];
            if ((tsel & ~3u) == 0 || r[R_TR_LIMIT] < (uint32_t)(8 * dpl + 11))
                return gp(f, V_TS, (tsel & ~3u) + ext);
            uint32_t esp_t, ss_t;
            if (read8(c, R, r[R_TR_BASE] + 4 + 8 * dpl, &esp_t, &ss_t, f)) return CORE_FAULT;
            ss_new = ss_t & 0xFFFF;
            esp_new = esp_t;
        }
        if (!has_err) {
            fr->n = 5;
            uint32_t w[5] = {r[R_EIP], r[R_CS], r[R_EFLAGS], r[R_ESP], r[R_SS]};
            memcpy(fr->w, w, sizeof w);
        } else {
            fr->n = 6;
            uint32_t w[6] = {err, r[R_EIP], r[R_CS], r[R_EFLAGS], r[R_ESP], r[R_SS]};
            memcpy(fr->w, w, sizeof w);
        }
        top = esp_new - 4 * fr->n;
        user = 0;
        e->cpl = dpl;
        e->cs = (sel & ~3u) | dpl;
        e->ss = ss_new & 0xFFFF;
    } else {
        if (!has_err) {
            fr->n = 3;
            uint32_t w[3] = {r[R_EIP], r[R_CS], r[R_EFLAGS]};
            memcpy(fr->w, w, sizeof w);
        } else {
            fr->n = 4;
            uint32_t w[4] = {err, r[R_EIP], r[R_CS], r[R_EFLAGS]};
            memcpy(fr->w, w, sizeof w);
        }
        top = r[R_ESP] - 4 * fr->n;
        user = cpl == 3;
        e->cpl = -1;
        e->load_cs = (sel & ~3u) != (r[R_CS] & ~3u);
        e->cs = (sel & ~3u) | cpl;
        e->ss = r[R_SS];
    }
    int w = core_write_check(c, top, 4 * fr->n, user, r[R_CR0], r[R_CR3], r[R_CR4], fr->phys, fr->len, f);
    if (w < 0) return CORE_FAULT;
    if (w == CORE_FALLBACK) return CORE_FALLBACK;
    if (e->cpl >= 0 && !ss_loadable(c, R, e->ss, e->cpl)) return CORE_FALLBACK;
    e->entered = 1;
    e->esp = top;
    e->eflags = new_flags;
    e->eip = offset;
    return CORE_OK;
}

static void write_frame(const core_t *c, const vframe_t *fr) {
    const uint8_t *src = (const uint8_t *)fr->w;
    memcpy(c->mem.ram + fr->phys[0], src, fr->len[0]);
    if (fr->len[1]) memcpy(c->mem.ram + fr->phys[1], src + fr->len[0], fr->len[1]);
}

static int promotes_to_df(int first, int second) {
    if (first == V_PF) return second == V_PF || contributory(second);
    return contributory(first) && contributory(second);
}

/* Machine.soft_int_start: where the `int n` / int3 / into that ended at eip began (0: unknown). */
static int soft_int_start(const core_t *c, const vregs_t *R, int vector, uint32_t *start) {
    uint8_t two[2];
    uint32_t eip = R->r[R_EIP];
    uint32_t n = core_read_code(c, eip - 2, two, 2, (R->r[R_CS] & 3) == 3, R->r[R_CR0], R->r[R_CR3],
                                R->r[R_CR4]);
    if (n == 2 && two[0] == 0xCD && two[1] == vector) {
        *start = eip - 2;
        return 1;
    }
    if (n == 2 && ((vector == V_BP && two[1] == 0xCC) || (vector == V_OF && two[1] == 0xCE))) {
        *start = eip - 1;
        return 1;
    }
    return 0;
}

static void fault_text(char *buf, size_t len, const vfault_t *f) {
    if (f->has_cr2)
        snprintf(buf, len, "guest fault vector %d error %#x cr2=%#010x", f->vector, f->err, f->cr2);
    else
        snprintf(buf, len, "guest fault vector %d error %#x", f->vector, f->err);
}

/* A delivery succeeded: its frame goes to guest RAM, the ring change is counted, a CR2 written on
 * the way goes with the entry, the handler's IF becomes vmi2's virtual flag (save_virtual_if, with
 * the delivery's CR2: R's, which a nested #PF updated). */
static int entered(core_t *c, const vregs_t *R, const vframe_t *fr, ventry_t *e, vcounts_t *cnt,
                   int cr2_set, uint32_t cr2) {
    write_frame(c, fr);
    if (e->cpl >= 0) vcount(cnt, C_RING_CHANGE);
    e->cr2_set = cr2_set;
    e->cr2 = cr2;
    core_vif_save(c, e->cpl >= 0 ? e->cpl : (int)(R->r[R_CS] & 3), e->eflags, R->r[R_CR2]);
    return CORE_OK;
}

/* Delivery._with_double_fault + _second_fault.  R is updated in place the way the Python path
 * updates the engine (EIP rewound to an `int n`, CR2 of a nested #PF).  On CORE_TRIPLE `msg` holds
 * TripleFault's text and *e may carry a CR2 write. */
int core_deliver(core_t *c, vregs_t *R, int vector, int has_err, uint32_t err, int software, int external,
                 ventry_t *e, vcounts_t *cnt, char *msg, size_t msglen) {
    vframe_t fr;
    vfault_t f1;
    int cr2_set = 0;
    uint32_t cr2 = 0;
    if (!core_vif_ok(c)) return CORE_FALLBACK; /* entered() could not save vmi2's flag */
    for (int depth = 0; depth < 8; depth++) {
        int rc = deliver_once(c, R, vector, has_err, err, software, external, e, &fr, &f1);
        if (rc == CORE_OK) return entered(c, R, &fr, e, cnt, cr2_set, cr2);
        if (rc != CORE_FAULT) return rc;
        if (vector == V_DF) {
            if (msg) {
                char t[96];
                fault_text(t, sizeof t, &f1);
                snprintf(msg, msglen, "fault while delivering a double fault (%s)", t);
            }
            memset(e, 0, sizeof *e);
            e->cr2_set = cr2_set;
            e->cr2 = cr2;
            return CORE_TRIPLE;
        }
        if (f1.has_cr2 && c->shadow) return CORE_FALLBACK; /* CR2 is the MMU's (virtual) there */
        if (f1.has_cr2) {
            cr2_set = 1;
            cr2 = R->r[R_CR2] = f1.cr2;
        }
        if (software || external || !promotes_to_df(vector, f1.vector)) {
            vcount(cnt, C_NESTED);
            if (software) {
                uint32_t start;
                if (soft_int_start(c, R, vector, &start)) R->r[R_EIP] = start;
            }
            vector = f1.vector; /* Delivery.exception(second, f1.error_code) */
            has_err = has_error_code(vector);
            err = f1.err;
            software = external = 0;
            continue;
        }
        vcount(cnt, C_DOUBLE);
        vfault_t f2;
        rc = deliver_once(c, R, V_DF, 1, 0, 0, 0, e, &fr, &f2);
        if (rc == CORE_OK) return entered(c, R, &fr, e, cnt, cr2_set, cr2);
        if (rc != CORE_FAULT) return rc;
        if (msg) {
            char t1[96], t2[96];
            fault_text(t1, sizeof t1, &f1);
            fault_text(t2, sizeof t2, &f2);
            snprintf(msg, msglen, "vector %d -> %s -> double fault -> %s", vector, t1, t2);
        }
        memset(e, 0, sizeof *e);
        e->cr2_set = cr2_set;
        e->cr2 = cr2;
        return CORE_TRIPLE;
    }
    return CORE_FALLBACK; /* a chain of benign faults this long: let Python decide */
}

/* Machine.on_interrupt for the exits the core completes (see the file comment). */
/* core_intr once R holds the guest's control registers (shared with the MMU's true #PF below). */
static int intr_guest(core_t *c, vregs_t *R, int vector, int soft, ventry_t *e, vcounts_t *cnt,
                      int64_t (*now_raw)(core_t *)) {
    /* Machine._irq_first: the kernel's flag (vmi2: the shared page's), and with IF set and an
     * interrupt possibly due, Python takes the exit.  (Any exit the core delivers must pass here:
     * core_vif_load before the IF check, core_vif_loaded once completed - as Machine.on_interrupt
     * calls _irq_first before every delivery; only the VMM's own faults, a shadow MMU's hidden
     * fault, return before it.  core_deliver saves the flag back itself.) */
    int vif_loaded;
    if (core_vif_load(c, R, &vif_loaded)) return CORE_FALLBACK;
    if ((R->r[R_EFLAGS] & EFL_IF) && core_irq_due(c, now_raw)) return CORE_FALLBACK;
    int rc;
    if (soft) {
        vcount(cnt, C_SOFTINT + vector);
        rc = core_deliver(c, R, vector, 0, 0, 1, 0, e, cnt, NULL, 0);
    } else {
        uint32_t err = 0;
        if (vector == V_PF && core_pf_error(c, R, 0, &err)) return CORE_FALLBACK;
        if (c->intercept[vector]) return CORE_FALLBACK;
        vcount(cnt, C_EXCEPTION + vector);
        rc = core_deliver(c, R, vector, has_error_code(vector), err, 0, 0, e, cnt, NULL, 0);
    }
    if (rc != CORE_OK) return CORE_FALLBACK; /* a triple fault: Python settles the fate */
    if (vif_loaded) core_vif_loaded(c);
    return CORE_OK;
}

int core_intr(core_t *c, vregs_t *R, int vector, ventry_t *e, vcounts_t *cnt, int64_t (*now_raw)(core_t *)) {
    if (!c->accel_intr || vector < 0 || vector > 255) return CORE_FALLBACK;
    if (vector == c->hypercall_vector) return CORE_FALLBACK;
    int soft = vector >= 32 || vector == V_BP || vector == V_OF;
    if (c->shadow) {
        /* shadow paging: exceptions (page faults above all) are the MMU's (core_intr_shadow_pf);
         * software interrupts go on with the guest's own control registers, once the GDT is ready
         * in the shadow */
        if (!soft || !core_shadow_gdt_ready(c, R, R->r[R_CR3])) return CORE_FALLBACK;
        R->r[R_CR0] = c->vcr0;
        R->r[R_CR3] = c->vcr3;
        R->r[R_CR4] = c->vcr4;
        R->r[R_CR2] = c->vcr2;
    }
    return intr_guest(c, R, vector, soft, e, cnt, now_raw);
}

/* A true #PF the shadow MMU found (mmu.c): delivered as core_intr delivers #PF, with the guest's
 * control registers and its new CR2 (Machine._shadow_fault sets it before delivery). */
int core_intr_shadow_pf(core_t *c, vregs_t *R, uint32_t cr2, ventry_t *e, vcounts_t *cnt,
                        int64_t (*now_raw)(core_t *)) {
    if (!c->accel_intr || !c->shadow || !core_shadow_gdt_ready(c, R, R->r[R_CR3])) return CORE_FALLBACK;
    R->r[R_CR0] = c->vcr0;
    R->r[R_CR3] = c->vcr3;
    R->r[R_CR4] = c->vcr4;
    R->r[R_CR2] = cr2;
    return intr_guest(c, R, V_PF, 0, e, cnt, now_raw);
}

void core_commit(core_t *c, const vcounts_t *cnt) {
    for (int i = 0; i < cnt->n; i++) {
        int k = cnt->idx[i];
        c->counts[k]++;
        c->log[c->nlog++ % 32] = (uint16_t)k;
        if (!c->is_dirty[k]) {
            c->is_dirty[k] = 1;
            c->dirty[c->ndirty++] = (uint16_t)k;
        }
    }
}
