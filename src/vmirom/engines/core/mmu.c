/* The shadow MMU's hot path in C: ShadowMMU.fault (vmirom/machine/mmu/shadow.py, the reference) for
 * the two outcomes that need no new shadow page - a hidden fault that fills one leaf of a shadow
 * table Python already linked at that directory slot, and a true fault - over the state Python
 * shares in flat arrays (vmirom/machine/mmu/shared.py).  It follows fault() step by step, in the
 * same order, so both give the same guest A/D bits, shadow leaf, snapshots, flood counts, LRU
 * ticks and counters; tests/test_mmu_shadow.py runs every scenario on both.
 *
 * core_mmu_decide is pure: it reads and decides, and answers MF_PYTHON for everything unusual
 * before anything was changed (paging off, a deferred queue, no shadow table linked for that slot
 * or one with another key, a frame outside RAM, a store to the ROM or to a write-protected frame
 * (any reason but PROT_TABLE under MC_WP_EMULATE: MF_WP, core_wp_store at the end), a linear page
 * ShadowMMU.watched holds, a full log), so the Python path then takes the exit from scratch.  core_mmu_commit applies a
 * decision: for MF_HIDDEN the fill, for MF_TRUE only the tick and the counter (the caller delivers).
 *
 * The guest is untrusted: every guest-physical address is checked against RAM and every shadow
 * frame against the pool before it is touched.  The shadow tables themselves are VMM-written, but
 * they are checked too (a broken invariant falls back to Python instead of reading out of bounds). */
#include <string.h>

#include "core.h"

#define PTE_A 0x20u
#define PROT_TABLE 1   /* shared.PROT_TABLE: the only protection reason this file emulates stores for */
#define PTE_D 0x40u
#define FRAME 0xFFFFF000u

static inline uint32_t m32(const core_t *c, uint64_t ma) {
    uint32_t v;
    memcpy(&v, c->mach + ma, 4);
    return v;
}

static inline void m32_set(core_t *c, uint64_t ma, uint32_t v) { memcpy(c->mach + ma, &v, 4); }

/* PhysMap.gpa_to_ma for an aligned dword: -1 outside guest RAM */
static inline int64_t gpa_ma(const core_t *c, uint64_t gpa) {
    const vmmu_t *s = &c->mmu;
    if ((gpa >> 12) >= s->ram_frames) return -1;
    uint64_t ma = ((uint64_t)s->p2m[gpa >> 12] << 12) | (gpa & 0xFFC);
    return ma + 4 <= c->mach_size ? (int64_t)ma : -1;
}

static inline int32_t *meta(const core_t *c, uint32_t mfn) { return c->mmu.meta + (size_t)mfn * MM_META; }

/* ShadowMMU._readable: does the shadow let this access class read va (then the fault was a write)? */
static int shadow_readable(const core_t *c, uint32_t root, uint32_t va, int user) {
    uint32_t pde = m32(c, ((uint64_t)root << 12) | ((va >> 22) << 2));
    if (!(pde & PTE_P) || (pde >> 12) >= c->mmu.pool_frames) return 0;
    uint32_t leaf = m32(c, (uint64_t)(pde & FRAME) | ((va >> 10) & 0xFFC));
    return (leaf & PTE_P) && (!user || (leaf & PTE_US));
}

static inline int rom_frame(const vmmu_t *s, uint32_t frame) {
    return (int64_t)frame >= s->ctl[MC_ROM_START] && (int64_t)frame < s->ctl[MC_ROM_END];
}

int core_mmu_decide(const core_t *c, uint32_t va, int write, int user, uint32_t root, vmmu_fault_t *d) {
    const vmmu_t *s = &c->mmu;
    memset(d, 0, sizeof *d);
    d->kind = MF_PYTHON;
    d->va = va;
    if (!s->on || !s->ctl[MC_ENABLED] || s->ctl[MC_DEFERRED] || !(c->vcr0 & CR0_PG)) return MF_PYTHON;
    if (root >= s->pool_frames || (int64_t)root != s->ctl[MC_ROOT]) return MF_PYTHON;
    if (s->watched[va >> 12]) return MF_PYTHON;  /* a descriptor-table page: the watcher decides */
    if ((uint32_t)s->ctl[MC_LOGN] >= s->log_cap) return MF_PYTHON;
    if (write < 0) write = shadow_readable(c, root, va, user);
    d->write = write;
    uint32_t err = (write ? PFERR_W : 0) | (user ? PFERR_U : 0);
    uint32_t pde_gpa = (c->vcr3 & FRAME) | ((va >> 22) << 2);
    int64_t ma = gpa_ma(c, pde_gpa);
    if (ma < 0) return MF_PYTHON;  /* BAD_PHYS */
    uint32_t pde = m32(c, (uint64_t)ma);
    d->pde = pde;
    d->pde_gpa = pde_gpa;
    if (!(pde & PTE_P)) {
        d->err = err;
        return d->kind = MF_TRUE;
    }
    int big = (pde & PTE_PS) && (c->vcr4 & CR4_PSE);
    uint32_t entry, entry_gpa, frame, eff;
    if (big) {
        entry = pde;
        entry_gpa = pde_gpa;
        frame = (pde & 0xFFC00000u) | (va & 0x3FF000u);
        eff = pde;
    } else {
        entry_gpa = (pde & FRAME) | ((va >> 10) & 0xFFC);
        ma = gpa_ma(c, entry_gpa);
        if (ma < 0) return MF_PYTHON;
        entry = m32(c, (uint64_t)ma);
        if (!(entry & PTE_P)) {
            d->err = err;
            return d->kind = MF_TRUE;
        }
        frame = entry & FRAME;
        eff = pde & entry;
    }
    int wp = !!(c->vcr0 & CR0_WP);
    if ((user && !(eff & PTE_US)) || (write && !(eff & PTE_RW) && (user || wp))) {
        d->err = err | PFERR_P;
        return d->kind = MF_TRUE;
    }
    uint32_t new_entry = entry | PTE_A | (write ? PTE_D : 0);
    uint32_t gfn = frame >> 12;
    if (gfn >= s->ram_frames) return MF_PYTHON;              /* BAD_PHYS */
    if (write && rom_frame(s, frame)) return MF_PYTHON;      /* ROM_WRITE */
    if (write && s->protect[gfn]) { /* WP_TRAP: fullvirt's page-table store may be emulated here */
        if (s->protect[gfn] != PROT_TABLE || !s->ctl[MC_WP_EMULATE]) return MF_PYTHON;
        d->big = big;
        d->entry = entry;
        d->entry_gpa = entry_gpa;
        d->new_entry = new_entry;
        d->gfn = gfn;
        return d->kind = MF_WP;
    }
    /* ShadowMMU._child, only when the slot already links the shadow table of this key */
    uint32_t spde = m32(c, ((uint64_t)root << 12) | ((va >> 22) << 2));
    if (!(spde & PTE_P)) return MF_PYTHON;
    uint32_t child = spde >> 12;
    if (child >= s->pool_frames) return MF_PYTHON;
    const int32_t *m = meta(c, child);
    int kind = big ? MK_BIG : MK_PT;
    uint32_t key = big ? (pde & 0xFFC00000u) >> 12 : pde >> 12;
    if (m[MM_KIND] != kind || (uint32_t)m[MM_KEY] != key || (uint32_t)m[MM_ACC] != (pde & (PTE_RW | PTE_US)))
        return MF_PYTHON;
    uint32_t flags;
    if (eff & PTE_RW) {
        int writable = (new_entry & PTE_D) && !s->protect[gfn] && !rom_frame(s, frame);
        flags = PTE_P | (eff & PTE_US) | (writable ? PTE_RW : 0);
    } else if (write) {  /* CR0.WP=0, supervisor store to a read-only page: writable, supervisor-only */
        flags = PTE_P | PTE_RW;
    } else {
        flags = PTE_P | (eff & PTE_US);
    }
    d->big = big;
    d->entry = entry;
    d->entry_gpa = entry_gpa;
    d->new_entry = new_entry;
    d->gfn = gfn;
    d->child = child;
    d->flags = flags;
    return d->kind = MF_HIDDEN;
}

/* ShadowMMU._guest_set: the guest entry and every snapshot of its frame (the A/D bits the VMM sets
 * are no "change" of the guest's); an entry in the ROM is left as it is */
static void guest_set(core_t *c, uint32_t gpa, uint32_t value) {
    vmmu_t *s = &c->mmu;
    if (rom_frame(s, gpa & FRAME)) return;  /* an entry in the ROM keeps its bits (read-only) */
    m32_set(c, (uint64_t)gpa_ma(c, gpa), value);
    for (int32_t p = s->head[gpa >> 12]; p > 0 && (uint32_t)p <= s->pool_frames; p = meta(c, p - 1)[MM_NEXT])
        memcpy(s->snaps + ((size_t)(p - 1) << 12) + (gpa & 0xFFC), &value, 4);
}

static void snap_used(core_t *c, uint32_t mfn, uint32_t i, uint32_t value) {
    if (meta(c, mfn)[MM_GFN] >= 0) memcpy(c->mmu.snaps + ((size_t)mfn << 12) + (i << 2), &value, 4);
}

/* ShadowMMU._set_leaf; the writable-leaf bookkeeping goes to the log Python replays */
static void set_leaf(core_t *c, uint32_t mfn, uint32_t i, uint32_t gfn, uint32_t flags) {
    vmmu_t *s = &c->mmu;
    uint64_t off = ((uint64_t)mfn << 12) | (i << 2);
    uint32_t old = m32(c, off);
    int dropped = !!(old & PTE_RW);
    int32_t old_gfn = -1;
    if (dropped && (old >> 12) < s->m2p_len) old_gfn = s->m2p[old >> 12];
    m32_set(c, off, (s->p2m[gfn] << 12) | flags);
    if (dropped || (flags & PTE_RW)) {
        int32_t *r = s->log + (size_t)s->ctl[MC_LOGN] * MMU_LOG_REC;
        r[0] = (int32_t)((mfn << 10) | i);
        r[1] = dropped;
        r[2] = old_gfn;
        r[3] = (flags & PTE_RW) ? (int32_t)gfn : -1;
        s->ctl[MC_LOGN]++;
    }
}

void core_mmu_commit(core_t *c, const vmmu_fault_t *d) {
    vmmu_t *s = &c->mmu;
    int64_t tick = ++s->ctl[MC_TICK];
    s->ctl[MC_DIRTY] = 1;
    if (d->kind == MF_TRUE) {
        s->ctl[MC_TRUE]++;
        return;
    }
    uint32_t va = d->va, pde = d->pde;
    if (!d->big && !(pde & PTE_A)) {
        pde |= PTE_A;
        guest_set(c, d->pde_gpa, pde);
    }
    if (d->new_entry != d->entry) guest_set(c, d->entry_gpa, d->new_entry);
    s->flood[d->pde_gpa >> 12] = 0;  /* a walk through these tables: they are page tables after all */
    if (!d->big) s->flood[d->pde >> 12] = 0;
    s->used[d->child] = tick;
    set_leaf(c, d->child, (va >> 12) & 0x3FF, d->gfn, d->flags);
    snap_used(c, (uint32_t)s->ctl[MC_ROOT], va >> 22, d->big ? d->new_entry : pde);
    if (!d->big) snap_used(c, d->child, (va >> 12) & 0x3FF, d->new_entry);
    s->ctl[MC_HIDDEN]++;
}

int core_shadow_pf(core_t *c, vregs_t *R, ventry_t *e, vcounts_t *cnt, int64_t (*now_raw)(core_t *),
                   int (*gprs)(core_t *, uint32_t *), vwp_t *w) {
    if ((int)(R->r[R_CS] & 3) < c->kernel_ring) return MF_PYTHON;  /* Machine.privilege_held */
    uint32_t va = R->r[R_CR2];
    vmmu_fault_t d;
    int kind = core_mmu_decide(c, va, -1, (R->r[R_CS] & 3) == 3, R->r[R_CR3] >> 12, &d);
    if (kind == MF_WP) { /* only the kernel's own stores (at its ring), the registers read only now */
        if ((int)(R->r[R_CS] & 3) != c->kernel_ring || !gprs || gprs(c, w->gpr)) return MF_PYTHON;
        w->eip = R->r[R_EIP];
        if (core_wp_store(c, &d, w, cnt) != CORE_OK) {
            cnt->n = 0;
            return MF_PYTHON;
        }
        return MF_WP;
    }
    if (kind == MF_HIDDEN) {
        core_mmu_commit(c, &d);
        vcount(cnt, C_SHADOW_HIDDEN);
        return MF_HIDDEN;
    }
    /* a true fault: Machine.on_interrupt goes on to deliver it, as core_intr would */
    if (kind != MF_TRUE || core_intr_shadow_pf(c, R, va, e, cnt, now_raw) != CORE_OK) {
        cnt->n = 0;
        return MF_PYTHON;
    }
    core_mmu_commit(c, &d);
    c->vcr2 = va;  /* the guest's CR2 (ShadowedEngine.cr2 reads this very word) */
    return MF_TRUE;
}

/* ---- SetPxE / UpdatePxE (Vmi.set_pxe, Vmi.update_pxe; ShadowMMU.set_pxe, entry_written) -------- */
#define PAGE_DEFER 0x20u  /* abi.PAGE_DEFER */

static void log_rec(vmmu_t *s, uint32_t mfn, uint32_t i, int op, int32_t a, int32_t b) {
    int32_t *r = s->log + (size_t)s->ctl[MC_LOGN] * MMU_LOG_REC;
    r[0] = (int32_t)((mfn << 10) | i);
    r[1] = op;
    r[2] = a;
    r[3] = b;
    s->ctl[MC_LOGN]++;
}

/* What ShadowMMU._resync_entry does to shadow page `mfn` (index i) for guest entry `entry`:
 * 0 nothing, 1 unlink (directory), 2 prefill, 3 zap a leaf; -1 only Python can (a watched page) */
static int resync_action(const core_t *c, uint32_t mfn, uint32_t i, uint32_t entry) {
    const vmmu_t *s = &c->mmu;
    uint32_t old;
    memcpy(&old, s->snaps + ((size_t)mfn << 12) + (i << 2), 4);
    if (old == entry) return 0;
    const int32_t *m = meta(c, mfn);
    if (m[MM_KIND] == MK_PD) return 1;
    if (m[MM_KIND] != MK_PT) return -1;  /* a chained page is a directory or a table: not reached */
    /* _prefill: present, already Accessed, a guest frame; never on a watched linear page (its
     * parents' slots are Python's to know: any watched page with this table index declines) */
    if ((entry & PTE_P) && (entry & PTE_A) && (entry >> 12) < s->ram_frames) return s->watched_low[i] ? -1 : 2;
    return 3;
}

/* May C bring every shadow of the guest entry at gpa up to date with `entry` (resync_action never -1,
 * whatever the snapshots say by then)?  -1 no, else the most log records it can add. */
static int resync_count(const core_t *c, uint32_t gpa, uint32_t entry) {
    const vmmu_t *s = &c->mmu;
    uint32_t i = (gpa & 0xFFF) >> 2;
    int n = 0;
    for (int32_t p = s->head[gpa >> 12]; p > 0 && (uint32_t)p <= s->pool_frames; p = meta(c, p - 1)[MM_NEXT]) {
        if (resync_action(c, (uint32_t)p - 1, i, entry) < 0) return -1;
        int32_t kind = meta(c, (uint32_t)p - 1)[MM_KIND];  /* a later update of the slot: same rules */
        if (kind != MK_PD && kind != MK_PT) return -1;
        if (kind == MK_PT && (entry & PTE_P) && (entry & PTE_A) && s->watched_low[i]) return -1;
        if (++n > 64) return -1;
    }
    return n;
}

static void resync(core_t *c, uint32_t gpa, uint32_t entry, vcounts_t *cnt);

#define SH_COUNT 0x0C
#define SH_BATCH 0x40  /* ... and the log: {u32 entry pointer, u32 SetPxE flags} records */
#define BATCH_MAX ((4096 - SH_BATCH) / 8)

/* May the core store into vmi2's shared page as Vmi2._u32w does (no notice needed: kernel code,
 * guarded frames, the ROM)? */
static int v2_shared_ok(const core_t *c) {
    uint64_t sp = c->vif_page;
    if (!c->vif_on || sp + 0x1000 > c->mem.size || c->mem.writes_to_python) return 0;
    const vmmu_t *s = &c->mmu;
    if ((int64_t)sp < s->ctl[MC_CODE_END] && (int64_t)sp + 0x1000 > s->ctl[MC_CODE_START]) return 0;
    for (int r = 0; r < c->mem.n_ro; r++)
        if (sp < c->mem.ro_end[r] && sp + 0x1000 > c->mem.ro_start[r]) return 0;
    return 1;
}  /* vmi2's shared page: records in the batch log */

static int v2_flush_check(const core_t *c, const struct vcall_in *in, uint32_t count, uint32_t *logn);
static void v2_flush_apply(core_t *c, const struct vcall_in *in, uint32_t count, vcounts_t *cnt);

int core_mmu_pxe(core_t *c, int update, const struct vcall_in *in, vcounts_t *cnt) {
    vmmu_t *s = &c->mmu;
    if (!s->on || !s->ctl[MC_ENABLED] || !c->shadow || !s->flush_ok) return CORE_FALLBACK;
    /* vmi2's (Vmi2.set_pxe): flush_batch first (a full log: checked here, applied with the first
     * change below), then _check_entry (a present entry maps RAM, else #GP), then Vmi's */
    uint32_t batch = 0, logn = (uint32_t)s->ctl[MC_LOGN];
    if (update == 2) {
        if (!v2_shared_ok(c)) return CORE_FALLBACK;
        memcpy(&batch, c->mem.ram + c->vif_page + SH_COUNT, 4);
        if (batch && v2_flush_check(c, in, batch, &logn)) return CORE_FALLBACK;
        if ((in->eax & PTE_P) && (uint64_t)(in->eax & FRAME) >= c->mem.size) return CORE_FALLBACK;
        update = 0;
    }
    uint32_t ptr = update ? in->eax : in->edx, flags = update ? in->edx : in->ecx;
    if (ptr & 3) return CORE_FALLBACK;  /* #GP */
    /* the shadow side waits for the flush: SetPxE with DEFER or in lazy mode, UpdatePxE with DEFER */
    int defer = (flags & PAGE_DEFER) || (!update && s->ctl[MC_LAZY]);
    if (defer && (uint64_t)s->ctl[MC_DEFERRED] >= s->defq_cap) return CORE_FALLBACK;  /* full: Python */
    uint64_t pa;
    vfault_t f;
    if (core_translate(c, ptr, !update, 0, in->cr0, in->cr3, in->cr4, &pa, &f)) return CORE_FALLBACK;
    if (pa + 4 > c->mem.size || (pa >> 12) >= s->ram_frames) return CORE_FALLBACK;
    if (!update) { /* GuestMemory.check(write) and the writes only Python may do (ROM, guarded frames) */
        if (c->mem.writes_to_python) return CORE_FALLBACK;
        for (int r = 0; r < c->mem.n_ro; r++)
            if (pa < c->mem.ro_end[r] && pa + 4 > c->mem.ro_start[r]) return CORE_FALLBACK;
        /* GuestMemory.vmm_wrote: a store into the kernel image may be over code (re-translated) */
        if ((int64_t)pa < s->ctl[MC_CODE_END] && (int64_t)pa + 4 > s->ctl[MC_CODE_START]) return CORE_FALLBACK;
    }
    uint32_t gpa = (uint32_t)pa & ~3u;
    if (defer) { /* ShadowMMU.set_pxe / defer_entry: the guest entry now, the queue for the rest */
        if (batch) v2_flush_apply(c, in, batch, cnt);
        if (!update) {
            m32_set(c, (uint64_t)gpa_ma(c, gpa), in->eax);
            s->ctl[MC_PV]++;
            s->ctl[MC_DEFER_UPD]++;
            vcount(cnt, C_MMU_PV_UPDATE);
            vcount(cnt, C_MMU_DEFERRED);
        }
        s->defq[s->ctl[MC_DEFERRED]++] = gpa;
        s->ctl[MC_DIRTY] = 1;
        return CORE_OK;
    }
    uint32_t entry = update ? m32(c, (uint64_t)gpa_ma(c, gpa)) : in->eax;
    /* every shadow of the frame decided first: a fallback leaves nothing changed */
    int n = resync_count(c, gpa, entry);  /* the same whatever the batch changes first */
    if (n < 0 || logn + (uint32_t)n > s->log_cap) return CORE_FALLBACK;
    if (batch) v2_flush_apply(c, in, batch, cnt);
    s->ctl[MC_DIRTY] = 1;
    if (!update) {
        m32_set(c, (uint64_t)gpa_ma(c, gpa), entry);
        s->ctl[MC_PV]++;
        vcount(cnt, C_MMU_PV_UPDATE);
    }
    resync(c, gpa, entry, cnt);
    return CORE_OK;
}

/* ShadowMMU._entry_changed after resync_count said yes: each shadow of the guest entry at gpa */
static void resync(core_t *c, uint32_t gpa, uint32_t entry, vcounts_t *cnt) {
    vmmu_t *s = &c->mmu;
    uint32_t i = (gpa & 0xFFF) >> 2;
    for (int32_t p = s->head[gpa >> 12]; p > 0 && (uint32_t)p <= s->pool_frames; p = meta(c, p - 1)[MM_NEXT]) {
        uint32_t mfn = (uint32_t)p - 1;
        int act = resync_action(c, mfn, i, entry);
        if (!act) continue;
        memcpy(s->snaps + ((size_t)mfn << 12) + (i << 2), &entry, 4);
        uint64_t off = ((uint64_t)mfn << 12) | (i << 2);
        uint32_t old = m32(c, off);
        if (act == 2) { /* _prefill */
            uint32_t gfn = entry >> 12, eff = (uint32_t)meta(c, mfn)[MM_ACC] & entry;
            int writable = (eff & PTE_RW) && (entry & PTE_D) && !s->protect[gfn] && !rom_frame(s, gfn << 12);
            if (old & PTE_P) s->ctl[MC_FLUSH] = 1;  /* a TLB may hold the old translation */
            set_leaf(c, mfn, i, gfn, PTE_P | (eff & PTE_US) | (writable ? PTE_RW : 0));
            s->ctl[MC_PREFILL]++;
            vcount(cnt, C_MMU_PREFILL);
            continue;
        }
        if (act == 1) { /* _unlink */
            if (old & PTE_P) {
                m32_set(c, off, 0);
                log_rec(s, mfn, i, LOG_UNLINK, 0, 0);
                s->ctl[MC_FLUSH] = 1;
            }
        } else if (old & PTE_P) { /* _zap_leaf */
            if (old & PTE_RW)
                log_rec(s, mfn, i, LOG_LEAF_DROPPED, (old >> 12) < s->m2p_len ? s->m2p[old >> 12] : -1, -1);
            m32_set(c, off, 0);
            s->ctl[MC_FLUSH] = 1;
        }
        s->ctl[MC_ZAP]++;
        vcount(cnt, C_MMU_ZAP);
    }
}

/* ---- vmi2's batch flush (Vmi2.flush_batch; docs/mmu.md) ----------------------------------------
 * The ROM wrote each entry in the guest and logged {pointer, flags}; SetLazyMode(NONE) and
 * FlushDeferred exit only when the log is not empty.  Pass 1 validates every record as flush_batch
 * does (aligned, a kernel-writable mapping of guest RAM, a present entry maps RAM: _check_entry) and
 * that C may resync every shadow of each; anything else - a record Python would answer with #GP, a
 * store the shared page's count needs a notice for, a log too long, a deferred queue or lazy mode to
 * leave first - is Python's before anything changed.  Pass 2 is ShadowMMU.entry_written per record,
 * in log order, then the count's 0 and flush_batch's counters (ctl: Vmi2.batched, batch_flushes). */
/* Pass 1 over `count` records (1..BATCH_MAX): may C apply every one?  *logn grows by the most log
 * records they can add (it must stay within the log).  The translations depend on the guest's
 * tables only, which no flush changes: pass 2 walks again. */
static int v2_flush_check(const core_t *c, const struct vcall_in *in, uint32_t count, uint32_t *logn) {
    const vmmu_t *s = &c->mmu;
    if (count > BATCH_MAX) return CORE_FALLBACK;  /* #GP: Python's */
    const uint8_t *sp = c->mem.ram + c->vif_page;
    uint32_t rec[2], page = 1, pa = 0;  /* one walk per page-table page, as flush_batch's `pages` */
    for (uint32_t k = 0; k < count; k++) {
        memcpy(rec, sp + SH_BATCH + 8 * k, 8);
        if (rec[0] & 3) return CORE_FALLBACK;
        if ((rec[0] & FRAME) != page) {
            uint64_t phys;
            vfault_t f;
            if (core_translate(c, rec[0] & FRAME, 1, 0, in->cr0, in->cr3, in->cr4, &phys, &f)) return CORE_FALLBACK;
            if (phys + 0x1000 > c->mem.size || (phys >> 12) >= s->ram_frames) return CORE_FALLBACK;
            page = rec[0] & FRAME;
            pa = (uint32_t)phys;
        }
        uint32_t gpa = pa | (rec[0] & 0xFFF);
        int64_t ma = gpa_ma(c, gpa);
        if (ma < 0) return CORE_FALLBACK;
        uint32_t entry = m32(c, (uint64_t)ma);
        if ((entry & PTE_P) && (uint64_t)(entry & FRAME) >= c->mem.size) return CORE_FALLBACK;
        int n = resync_count(c, gpa, entry);
        if (n < 0 || (*logn += (uint32_t)n) > s->log_cap) return CORE_FALLBACK;
    }
    return CORE_OK;
}

/* Pass 2: ShadowMMU.entry_written per record, in log order; the count's 0; flush_batch's counters
 * (ctl: Vmi2.batched and batch_flushes add them) */
static void v2_flush_apply(core_t *c, const struct vcall_in *in, uint32_t count, vcounts_t *cnt) {
    vmmu_t *s = &c->mmu;
    const uint8_t *sp = c->mem.ram + c->vif_page;
    uint32_t rec[2], page = 1, pa = 0;
    s->ctl[MC_DIRTY] = 1;
    for (uint32_t k = 0; k < count; k++) {
        memcpy(rec, sp + SH_BATCH + 8 * k, 8);
        if ((rec[0] & FRAME) != page) {
            uint64_t phys = 0;
            vfault_t f;
            core_translate(c, rec[0] & FRAME, 1, 0, in->cr0, in->cr3, in->cr4, &phys, &f);
            page = rec[0] & FRAME;
            pa = (uint32_t)phys;
        }
        uint32_t gpa = pa | (rec[0] & 0xFFF);
        resync(c, gpa, m32(c, (uint64_t)gpa_ma(c, gpa)), cnt);
    }
    uint32_t zero = 0;
    memcpy(c->mem.ram + c->vif_page + SH_COUNT, &zero, 4);
    s->ctl[MC_V2_BATCHED] += count;
    s->ctl[MC_V2_FLUSHES]++;
}

int core_v2_flush(core_t *c, int lazy, const struct vcall_in *in, vcounts_t *cnt) {
    vmmu_t *s = &c->mmu;
    if (!s->on || !s->ctl[MC_ENABLED] || !c->shadow || !s->flush_ok || !v2_shared_ok(c)) return CORE_FALLBACK;
    /* Vmi.set_lazy_mode(NONE) first: nothing to do when not in lazy MMU mode with an empty queue */
    if (lazy && (in->eax != 0 || s->ctl[MC_LAZY] || s->ctl[MC_DEFERRED])) return CORE_FALLBACK;
    uint32_t count, logn = (uint32_t)s->ctl[MC_LOGN];
    memcpy(&count, c->mem.ram + c->vif_page + SH_COUNT, 4);
    if (count == 0 || v2_flush_check(c, in, count, &logn)) return CORE_FALLBACK;  /* nothing to do / Python's */
    v2_flush_apply(c, in, count, cnt);
    return CORE_OK;
}

/* ---- fullvirt's write-protect trap (FullVirt.on_wp_trap, Emulator.table_store) -------------------
 * The store kernels write entries with: mov r/m32,r32 (89 /r), mov r/m32,imm32 (C7 /0), xchg r/m32,r32
 * (87 /r), mov moffs32,eax (A3); no prefixes (a 16-bit or locked or segment-overridden store is
 * Python's).  Its effective address must be CR2 itself: the store is the instruction's one memory
 * access, so that holds exactly when the segment base is 0 - a non-flat segment falls to Python,
 * which adds the base.  Returns the instruction length, 0 for anything else. */
static uint32_t wp_decode(const uint8_t *b, const uint32_t *gpr, uint32_t *ea, uint32_t *value, int *reg) {
    uint32_t disp;
    *reg = -1;
    if (b[0] == 0xA3) { /* mov [moffs32], eax */
        memcpy(ea, b + 1, 4);
        *value = gpr[0];
        return 5;
    }
    if (b[0] != 0x89 && b[0] != 0xC7 && b[0] != 0x87) return 0;
    uint32_t mod = b[1] >> 6, rf = (b[1] >> 3) & 7, rm = b[1] & 7, p = 2, a = 0;
    if (mod == 3 || (b[0] == 0xC7 && rf)) return 0;
    if (rm == 4) { /* SIB */
        uint32_t sib = b[p++], idx = (sib >> 3) & 7, base = sib & 7;
        if (idx != 4) a = gpr[idx] << (sib >> 6);
        if (base == 5 && mod == 0) {
            memcpy(&disp, b + p, 4);
            a += disp;
            p += 4;
        } else {
            a += gpr[base];
        }
    } else if (rm == 5 && mod == 0) {
        memcpy(&disp, b + p, 4);
        a = disp;
        p += 4;
    } else {
        a = gpr[rm];
    }
    if (mod == 1) {
        a += (uint32_t)(int32_t)(int8_t)b[p++];
    } else if (mod == 2) {
        memcpy(&disp, b + p, 4);
        a += disp;
        p += 4;
    }
    *ea = a;
    if (b[0] == 0xC7) {
        memcpy(value, b + p, 4);
        return p + 4;
    }
    *value = gpr[rf];
    if (b[0] == 0x87) *reg = (int)rf;
    return p;
}

int core_wp_store(core_t *c, const vmmu_fault_t *d, vwp_t *w, vcounts_t *cnt) {
    vmmu_t *s = &c->mmu;
    uint32_t gfn = d->gfn, gpa = (gfn << 12) | (d->va & 0xFFF);
    if (d->kind != MF_WP || (d->va & 3) || !s->flush_ok) return CORE_FALLBACK;
    /* fault() sets A/D in two entries first: if one is the stored entry itself (a table mapping
     * itself through that very slot), the order of the two matters - Python's (another index of the
     * same frame is independent: its snapshots and the resync below touch index i only) */
    if (d->pde_gpa == (gpa & ~3u) || d->entry_gpa == (gpa & ~3u)) return CORE_FALLBACK;
    if ((int64_t)gpa < s->ctl[MC_CODE_END] && (int64_t)gpa + 4 > s->ctl[MC_CODE_START]) return CORE_FALLBACK;
    uint8_t b[11];  /* the longest form: C7, ModRM, SIB, disp32, imm32 */
    vfault_t f;
    if (core_read(c, w->eip, b, sizeof b, 0, c->vcr0, c->vcr3, c->vcr4, &f)) return CORE_FALLBACK;
    uint32_t ea = 0, value = 0;
    int reg;
    uint32_t len = wp_decode(b, w->gpr, &ea, &value, &reg);
    if (!len || ea != d->va || reg == 4) return CORE_FALLBACK;  /* (xchg with ESP: Python's) */
    if (s->flood[gfn] + 1 >= FLOOD_LIMIT) return CORE_FALLBACK;  /* the unshadow: Python's */
    int64_t ma = gpa_ma(c, gpa);
    if (ma < 0) return CORE_FALLBACK;
    int n = resync_count(c, gpa, value);  /* + the trap and the write: vcounts_t holds 8 */
    if (n < 0 || n > 6 || (uint32_t)s->ctl[MC_LOGN] + (uint32_t)n > s->log_cap) return CORE_FALLBACK;
    uint32_t old = m32(c, (uint64_t)ma);
    /* ShadowMMU.fault up to its WP_TRAP: the tick, the guest's Accessed/Dirty bits, the trap counted */
    s->ctl[MC_TICK]++;
    s->ctl[MC_DIRTY] = 1;
    if (!d->big && !(d->pde & PTE_A)) guest_set(c, d->pde_gpa, d->pde | PTE_A);
    if (d->new_entry != d->entry) guest_set(c, d->entry_gpa, d->new_entry);
    s->ctl[MC_WP_TRAPS]++;
    vcount(cnt, C_SHADOW_WP);
    /* ShadowMMU.emulated_write: the guest entry (a plain store, no snapshot), its shadows, the flood */
    s->ctl[MC_EMULATED]++;
    vcount(cnt, C_MMU_EMULATED);
    m32_set(c, (uint64_t)ma, value);
    resync(c, gpa, value, cnt);
    s->flood[gfn]++;
    /* Emulator.finish_table_store */
    if (reg >= 0) w->gpr[reg] = old;
    w->reg = reg;
    w->eip += len;
    return CORE_OK;
}
