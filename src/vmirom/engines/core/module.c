/* vmirom.engines.core._core: the Python face of the compiled core, and its Unicorn glue.
 *
 * A `Core` holds the machine state the C paths need (guest RAM, the read-only ranges, the kernel
 * stack overrides, what the personality opted into, the interrupt window, exit counters).  Python
 * (vmirom/engines/core/__init__.py) publishes that state and reads the counters back into Metrics.
 *
 * attach_uc() registers the core's own UC_HOOK_INTR hook on the binding's engine.  The hook reads
 * the registers in one uc_reg_read_batch, runs core_intr() and, when that completes the exit,
 * enters the handler the way UnicornEngine.enter_handler does inside an INTR hook (W1 old_exception
 * reset, W2 CPL bits of hflags, W13 EIP through the saved context, then one uc_reg_write_batch);
 * otherwise it calls the Python hook (a ctypes callback, which takes the GIL itself).  The hook
 * never touches a Python object: it runs while emu_start has released the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <time.h>

#include "core.h"

typedef struct {
    PyObject_HEAD
    core_t c;
    Py_buffer ram;
    int has_ram;
    Py_buffer mach;
    int has_mach;
    Py_buffer mmu_buf[13];  /* set_mmu's arrays (vmmu_t points into them) */
    int n_mmu_buf;
    PyObject *uc_owner;  /* the binding's Uc: kept alive while our hook is registered on it */
} CoreObject;

static int64_t cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* The thread's CPU time (the virtual clock's raw source) where it matters: an upper bound from the
 * monotonic clock while that bound is below the deadline, the real clock otherwise (see core.h). */
static int64_t now_raw(core_t *c) {
    int64_t mono = (int64_t)mono_ns();
    int64_t ub = c->cpu_at_sync + (mono - c->mono_at_sync);
    if (ub < c->deadline_raw) return ub;
    int64_t cpu = cpu_ns();  /* the bound reached the deadline: read the real clock, tighten the bound */
    c->cpu_at_sync = cpu;
    c->mono_at_sync = mono;
    return cpu;
}

/* The test entry point's clock: exactly the value it was given. */
static int64_t given_now;
static int64_t now_given(core_t *c) {
    (void)c;
    return given_now;
}

/* ---- the Unicorn glue ------------------------------------------------------------------------ */
static int uc_read_regs(core_t *c, vregs_t *R) {
    static int ids[13] = {UC_X86_REG_EIP, UC_X86_REG_EFLAGS, UC_X86_REG_CS, UC_X86_REG_SS, UC_X86_REG_ESP,
                          UC_X86_REG_CR0, UC_X86_REG_CR3, UC_X86_REG_CR4, UC_X86_REG_IDTR, UC_X86_REG_GDTR,
                          UC_X86_REG_TR, UC_X86_REG_CR2, UC_X86_REG_EDI};
    uint32_t s[8] = {0}, cr2 = 0, edi = 0;
    uc_x86_mmr idtr, gdtr, tr;
    memset(&idtr, 0, sizeof idtr);
    memset(&gdtr, 0, sizeof gdtr);
    memset(&tr, 0, sizeof tr);
    void *vals[13] = {&s[0], &s[1], &s[2], &s[3], &s[4], &s[5], &s[6], &s[7], &idtr, &gdtr, &tr, &cr2, &edi};
    if (c->api.read_batch(c->uc, ids, vals, 13)) return -1;
    uint32_t *r = R->r;
    r[R_EIP] = s[0];
    r[R_EFLAGS] = s[1];
    r[R_CS] = s[2] & 0xFFFF;  /* selectors: the engine writes 2 bytes */
    r[R_SS] = s[3] & 0xFFFF;
    r[R_ESP] = s[4];
    r[R_CR0] = s[5];
    r[R_CR3] = s[6];
    r[R_CR4] = s[7];
    r[R_IDT_BASE] = (uint32_t)idtr.base;
    r[R_IDT_LIMIT] = idtr.limit;
    r[R_GDT_BASE] = (uint32_t)gdtr.base;
    r[R_GDT_LIMIT] = gdtr.limit;
    r[R_TR_SEL] = tr.selector;
    r[R_TR_BASE] = (uint32_t)tr.base;
    r[R_TR_LIMIT] = tr.limit;
    r[R_TR_FLAGS] = tr.flags;
    r[R_CR2] = cr2;
    r[R_EDI] = edi;
    return 0;
}

/* W1/W2/W13 in one context round trip (UnicornEngine._poke_context). */
static int poke_context(core_t *c, int eip_set, uint32_t eip, int clear_exc, int cpl) {
    if (c->api.ctx_save(c->uc, c->ctx)) return -1;
    uint8_t *base = (uint8_t *)c->ctx;
    if (eip_set) memcpy(base + c->off_eip, &eip, 4);
    if (clear_exc) {
        uint32_t m1 = 0xFFFFFFFFu;
        memcpy(base + c->off_exc, &m1, 4);
    }
    if (cpl >= 0) {
        uint32_t hf;
        memcpy(&hf, base + c->off_hflags, 4);
        hf = (hf & ~3u) | (uint32_t)cpl;
        memcpy(base + c->off_hflags, &hf, 4);
    }
    return c->api.ctx_restore(c->uc, c->ctx) ? -1 : 0;
}

static void glue_error(core_t *c, const char *what) {
    if (!c->error[0]) snprintf(c->error, sizeof c->error, "%s", what);
    c->api.emu_stop(c->uc);
}

/* UnicornEngine.enter_handler inside an INTR hook, plus _h_intr's closing context write. */
static void apply_entry(core_t *c, const ventry_t *e, uint32_t intno) {
    if (e->cr2_set) {
        uint32_t v = e->cr2;
        if (c->api.reg_write(c->uc, UC_X86_REG_CR2, &v)) return glue_error(c, "cannot write cr2");
    }
    if (e->cpl >= 0) {
        if (poke_context(c, 1, e->eip, 1, e->cpl)) return glue_error(c, "uc_context_save/restore failed");
        int ids[4] = {UC_X86_REG_SS, UC_X86_REG_CS, UC_X86_REG_ESP, UC_X86_REG_EFLAGS};
        uint32_t v[4] = {e->ss, e->cs, e->esp, e->eflags};
        void *p[4] = {&v[0], &v[1], &v[2], &v[3]};
        if (c->api.write_batch(c->uc, ids, p, 4)) {
            char m[120];
            snprintf(m, sizeof m, "cannot enter ring %d with cs=%#x ss=%#x", e->cpl, e->cs, e->ss);
            glue_error(c, m);
        }
        return;
    }
    int ids[3] = {UC_X86_REG_CS, UC_X86_REG_ESP, UC_X86_REG_EFLAGS};
    uint32_t v[3] = {e->cs, e->esp, e->eflags};
    void *p[3] = {&v[0], &v[1], &v[2]};
    int k = e->load_cs ? 0 : 1;
    if (c->api.write_batch(c->uc, ids + k, p + k, 3 - k)) return glue_error(c, "cannot load cs/esp/eflags");
    if (poke_context(c, 1, e->eip, intno < 32, -1)) glue_error(c, "uc_context_save/restore failed");
}

/* The IRET hypercall from the hook (hcall.c), with the data segments. */
static int glue_iret(core_t *c, vregs_t *R, ventry_t *e, vcounts_t *cnt) {
    static int ids[4] = {UC_X86_REG_DS, UC_X86_REG_ES, UC_X86_REG_FS, UC_X86_REG_GS};
    uint32_t segs[4] = {0, 0, 0, 0};
    void *vals[4] = {&segs[0], &segs[1], &segs[2], &segs[3]};
    if (c->api.read_batch(c->uc, ids, vals, 4)) return CORE_FALLBACK;
    return core_hcall_iret(c, R, segs, e, cnt, now_raw);
}

/* Which ROM call is this hypercall exit (core_hcall_site, from five registers): -1 none the core
 * does, 0 the IRET, 1 + i the state call i.  Every other hypercall goes to Python at once, without
 * the full register read.  `crs` gets CR0/CR3/CR4 as the guest sees them. */
static int hcall_site(core_t *c, uint32_t crs[3]) {
    if (c->iret_site < 0) return -1;
    static int ids[5] = {UC_X86_REG_EIP, UC_X86_REG_CS, UC_X86_REG_CR0, UC_X86_REG_CR3, UC_X86_REG_CR4};
    uint32_t v[5] = {0, 0, 0, 0, 0};
    void *vals[5] = {&v[0], &v[1], &v[2], &v[3], &v[4]};
    if (c->api.read_batch(c->uc, ids, vals, 5)) return -1;
    if (c->shadow) {
        v[2] = c->vcr0;
        v[3] = c->vcr3;
        v[4] = c->vcr4;
    }
    crs[0] = v[2];
    crs[1] = v[3];
    crs[2] = v[4];
    return core_hcall_site(c, v[0], v[1], v[2], v[3], v[4]);
}

/* A state call from the hook (hcall.c): its inputs in one batched read, its result written back. */
static int state_call(core_t *c, int i, const uint32_t crs[3]) {
    static int ids[7] = {UC_X86_REG_EAX, UC_X86_REG_EDX, UC_X86_REG_ECX, UC_X86_REG_EFLAGS, UC_X86_REG_SS,
                         UC_X86_REG_GDTR, UC_X86_REG_CR2};
    vcall_in_t in;
    memset(&in, 0, sizeof in);
    uc_x86_mmr gdtr;
    memset(&gdtr, 0, sizeof gdtr);
    void *vals[7] = {&in.eax, &in.edx, &in.ecx, &in.eflags, &in.ss, &gdtr, &in.cr2};
    if (c->api.read_batch(c->uc, ids, vals, c->shadow ? 6 : 7)) return CORE_FALLBACK;
    in.ss &= 0xFFFF;
    in.gdt_base = (uint32_t)gdtr.base;
    in.gdt_limit = gdtr.limit;
    in.cr0 = crs[0];
    in.cr3 = crs[1];
    in.cr4 = crs[2];
    if (c->shadow) in.cr2 = c->vcr2;
    vcall_out_t out;
    vcounts_t cnt = {0};
    if (core_state_call(c, i, &in, &out, &cnt, now_raw) != CORE_OK) return CORE_FALLBACK;
    if (out.set_eax && c->api.reg_write(c->uc, UC_X86_REG_EAX, &out.eax)) return CORE_FALLBACK;
    if (out.set_eflags && c->api.reg_write(c->uc, UC_X86_REG_EFLAGS, &out.eflags)) return CORE_FALLBACK;
    if (c->mmu.on && c->mmu.ctl[MC_FLUSH] && c->api.ctl) { /* a shadow entry lost rights (SetPxE) */
        c->mmu.ctl[MC_FLUSH] = 0;
        if (c->api.ctl(c->uc, UC_CTL_TLB_FLUSH_WRITE)) glue_error(c, "uc_ctl(TLB flush) failed");
    }
    core_commit(c, &cnt);
    c->completed++;
    c->state_calls++;
    return CORE_OK;
}

/* A #PF under shadow paging from the hook: the decision in mmu.c (core_shadow_pf); a hidden fault
 * only needs W1's reset (nothing is entered), a true fault enters the guest's handler. */
static const int gpr_ids[8] = {UC_X86_REG_EAX, UC_X86_REG_ECX, UC_X86_REG_EDX, UC_X86_REG_EBX,
                               UC_X86_REG_ESP, UC_X86_REG_EBP, UC_X86_REG_ESI, UC_X86_REG_EDI};

/* the 8 GPRs (eax..edi), read only when a write-protect trap may be emulated */
static int uc_read_gprs(core_t *c, uint32_t *gpr) {
    void *vals[8];
    for (int i = 0; i < 8; i++) vals[i] = &gpr[i];
    return c->api.read_batch(c->uc, (int *)gpr_ids, vals, 8) ? -1 : 0;
}

static int shadow_pf(core_t *c, uint64_t t0) {
    vregs_t R;
    if (uc_read_regs(c, &R)) return CORE_FALLBACK;
    ventry_t e;
    vcounts_t cnt = {0};
    vwp_t w;
    int kind = core_shadow_pf(c, &R, &e, &cnt, now_raw, uc_read_gprs, &w);
    if (kind == MF_PYTHON) return CORE_FALLBACK;
    if (kind == MF_WP) { /* the store emulated: the xchg register, step over it, a lost right flushed */
        if (w.reg >= 0 && c->api.reg_write(c->uc, gpr_ids[w.reg], &w.gpr[w.reg]))
            glue_error(c, "cannot write a register");
        if (poke_context(c, 1, w.eip, 1, -1)) glue_error(c, "uc_context_save/restore failed");
        if (c->mmu.ctl[MC_FLUSH] && c->api.ctl) {
            c->mmu.ctl[MC_FLUSH] = 0;
            if (c->api.ctl(c->uc, UC_CTL_TLB_FLUSH_WRITE)) glue_error(c, "uc_ctl(TLB flush) failed");
        }
    } else if (kind == MF_HIDDEN) {
        if (poke_context(c, 0, 0, 1, -1)) glue_error(c, "uc_context_save/restore failed");  /* W1 */
    } else {
        apply_entry(c, &e, V_PF);
    }
    core_commit(c, &cnt);
    c->completed++;
    if (c->timing) {
        c->t_mmu_calls[kind - 1]++;
        c->t_mmu_ns[kind - 1] += mono_ns() - t0;
    }
    return CORE_OK;
}

static void hook_intr(uc_engine *uc, uint32_t intno, void *ud) {
    core_t *c = ud;
    uint64_t t0 = c->timing ? mono_ns() : 0;
    if (intno == V_PF && c->mmu.on && !c->error[0] && shadow_pf(c, t0) == CORE_OK) return;
    vregs_t R;
    ventry_t e;
    vcounts_t cnt = {0};
    int rc = CORE_FALLBACK;
    uint64_t t1 = 0, t2 = 0;
    int hcall = (int)intno == c->hypercall_vector;
    int site = -1;
    if (hcall && !c->error[0]) {
        uint32_t crs[3];
        site = hcall_site(c, crs);
        if (site > 0 && state_call(c, site - 1, crs) == CORE_OK) {
            if (c->timing) {
                c->t_state_calls[site - 1]++;
                c->t_state_ns[site - 1] += mono_ns() - t0;
            }
            return;
        }
    }
    if (!c->error[0] && (!hcall || site == 0) && uc_read_regs(c, &R) == 0) {
        if (c->timing) t1 = mono_ns();
        if (hcall)
            rc = glue_iret(c, &R, &e, &cnt);
        else
            rc = core_intr(c, &R, (int)intno, &e, &cnt, now_raw);
        if (c->timing) t2 = mono_ns();
    }
    if (rc != CORE_OK) {
        c->fallbacks++;
        if (c->timing) {
            c->t_calls[3]++;
            c->t_ns[3] += mono_ns() - t0;
        }
        c->py_intr(uc, intno, c->py_intr_ud);
        return;
    }
    apply_entry(c, &e, intno);
    core_commit(c, &cnt);
    c->completed++;
    if (hcall) c->irets++;
    if (c->timing) {
        int k = (int)intno == c->hypercall_vector ? 4
                : intno >= 32 || intno == V_BP || intno == V_OF ? 0 : intno == V_PF ? 2 : 1;
        uint64_t t3 = mono_ns();
        c->t_calls[k]++;
        c->t_ns[k] += t3 - t0;
        c->t_phase[k][0] += t1 - t0;
        c->t_phase[k][1] += t2 - t1;
        c->t_phase[k][2] += t3 - t2;
    }
}

/* The in/out hooks: the console's hot cases here (console.c), everything else in Python. */
static int read_cs_eflags(core_t *c, uint32_t *cs, uint32_t *eflags) {
    static int ids[2] = {UC_X86_REG_CS, UC_X86_REG_EFLAGS};
    void *vals[2] = {cs, eflags};
    *cs = *eflags = 0;
    return c->api.read_batch(c->uc, ids, vals, 2);
}

static void io_timed(core_t *c, uint64_t t0) {
    c->t_io_calls++;
    c->t_io_ns += mono_ns() - t0;
}

static uint32_t hook_in(uc_engine *uc, uint32_t port, int size, void *ud) {
    core_t *c = ud;
    uint64_t t0 = c->timing ? mono_ns() : 0;
    uint32_t cs, eflags, v;
    if (!c->error[0] && c->con.on && read_cs_eflags(c, &cs, &eflags) == 0 &&
        core_console_in(c, port, size, cs, eflags, &v) == CORE_OK) {
        if (c->timing) io_timed(c, t0);
        return v;
    }
    return c->py_in(uc, port, size, NULL);
}

static void hook_out(uc_engine *uc, uint32_t port, int size, uint32_t value, void *ud) {
    core_t *c = ud;
    uint64_t t0 = c->timing ? mono_ns() : 0;
    uint32_t cs, eflags;
    if (!c->error[0] && c->con.on && read_cs_eflags(c, &cs, &eflags) == 0 &&
        core_console_out(c, port, size, value, cs, eflags) == CORE_OK) {
        if (c->timing) io_timed(c, t0);
        return;
    }
    c->py_out(uc, port, size, value, NULL);
}

/* ---- helpers between Python tuples and the structs --------------------------------------------- */
static int regs_from_tuple(PyObject *t, vregs_t *R) {
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != R_COUNT) {
        PyErr_Format(PyExc_ValueError, "expected a tuple of %d register values", R_COUNT);
        return -1;
    }
    for (int i = 0; i < R_COUNT; i++) {
        unsigned long v = PyLong_AsUnsignedLongMask(PyTuple_GET_ITEM(t, i));
        if (v == (unsigned long)-1 && PyErr_Occurred()) return -1;
        R->r[i] = (uint32_t)v;
    }
    return 0;
}

/* (cpl or None, cs or None, ss, esp, eflags, eip, cr2 or None): Engine.enter_handler's arguments */
static PyObject *entry_tuple(const ventry_t *e) {
    PyObject *cpl, *cs;
    if (e->cpl >= 0) {
        cpl = PyLong_FromLong(e->cpl);
        cs = PyLong_FromUnsignedLong(e->cs);
    } else {
        cpl = Py_NewRef(Py_None);
        cs = e->load_cs ? PyLong_FromUnsignedLong(e->cs) : Py_NewRef(Py_None);
    }
    PyObject *cr2 = e->cr2_set ? PyLong_FromUnsignedLong(e->cr2) : Py_NewRef(Py_None);
    return Py_BuildValue("(NNkkkkN)", cpl, cs, (unsigned long)(e->cpl >= 0 ? e->ss : 0),
                         (unsigned long)e->esp, (unsigned long)e->eflags, (unsigned long)e->eip, cr2);
}

/* ---- the Core type --------------------------------------------------------------------------- */
static int Core_init(CoreObject *self, PyObject *args, PyObject *kw) {
    PyObject *ram;
    unsigned long long size;
    if (!PyArg_ParseTuple(args, "OK", &ram, &size)) return -1;
    if (self->has_ram) {
        PyBuffer_Release(&self->ram);
        self->has_ram = 0;
    }
    if (PyObject_GetBuffer(ram, &self->ram, PyBUF_WRITABLE) < 0) return -1;
    self->has_ram = 1;
    if ((unsigned long long)self->ram.len < size) {
        PyErr_SetString(PyExc_ValueError, "RAM buffer smaller than the RAM size");
        return -1;
    }
    memset(&self->c, 0, sizeof self->c);
    self->c.mem.ram = self->ram.buf;
    self->c.mem.size = size;
    self->c.hypercall_vector = -1;
    self->c.iret_site = -1;
    self->c.deadline_raw = INT64_MAX;
    return 0;
}

static void release_mmu(CoreObject *self) {
    for (int i = 0; i < self->n_mmu_buf; i++) PyBuffer_Release(&self->mmu_buf[i]);
    self->n_mmu_buf = 0;
    memset(&self->c.mmu, 0, sizeof self->c.mmu);
}

static void Core_dealloc(CoreObject *self) {
    core_t *c = &self->c;
    release_mmu(self);
    if (c->uc && c->h_intr) c->api.hook_del(c->uc, c->h_intr);  /* the engine is alive: uc_owner */
    if (c->uc && c->h_in) c->api.hook_del(c->uc, c->h_in);
    if (c->uc && c->h_out) c->api.hook_del(c->uc, c->h_out);
    if (c->ctx && c->api.ctx_free) c->api.ctx_free(c->ctx);
    Py_CLEAR(self->uc_owner);
    if (self->has_ram) PyBuffer_Release(&self->ram);
    if (self->has_mach) PyBuffer_Release(&self->mach);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Core_set_memory(CoreObject *self, PyObject *args) {
    PyObject *ro;
    int writes_to_python;
    if (!PyArg_ParseTuple(args, "Op", &ro, &writes_to_python)) return NULL;
    PyObject *seq = PySequence_Fast(ro, "readonly ranges must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > 4) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "at most 4 read-only ranges");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long s, e;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "KK", &s, &e)) {
            Py_DECREF(seq);
            return NULL;
        }
        self->c.mem.ro_start[i] = s;
        self->c.mem.ro_end[i] = e;
    }
    Py_DECREF(seq);
    self->c.mem.n_ro = (int)n;
    self->c.mem.writes_to_python = writes_to_python;
    Py_RETURN_NONE;
}

static PyObject *Core_set_policy(CoreObject *self, PyObject *args) {
    int accel, hv;
    Py_buffer icpt;
    if (!PyArg_ParseTuple(args, "piy*", &accel, &hv, &icpt)) return NULL;
    if (icpt.len != 256) {
        PyBuffer_Release(&icpt);
        PyErr_SetString(PyExc_ValueError, "intercept map must have 256 bytes");
        return NULL;
    }
    memcpy(self->c.intercept, icpt.buf, 256);
    PyBuffer_Release(&icpt);
    self->c.accel_intr = accel;
    self->c.hypercall_vector = hv;
    Py_RETURN_NONE;
}

/* set_shadow(machine_buffer, machine_size): the engine runs on shadow page tables in this buffer */
static PyObject *Core_set_shadow(CoreObject *self, PyObject *args) {
    PyObject *buf;
    unsigned long long size;
    if (!PyArg_ParseTuple(args, "OK", &buf, &size)) return NULL;
    if (self->has_mach) {
        PyBuffer_Release(&self->mach);
        self->has_mach = 0;
    }
    if (PyObject_GetBuffer(buf, &self->mach, PyBUF_SIMPLE) < 0) return NULL;
    self->has_mach = 1;
    if ((unsigned long long)self->mach.len < size) {
        PyErr_SetString(PyExc_ValueError, "machine buffer smaller than its size");
        return NULL;
    }
    self->c.mach = self->mach.buf;
    self->c.mach_size = size;
    self->c.shadow = 1;
    Py_RETURN_NONE;
}

/* set_virtual_crs(cr0, cr3, cr4, cr2=0): the guest's control registers under shadow paging */
static PyObject *Core_set_virtual_crs(CoreObject *self, PyObject *args) {
    unsigned int a, b, d, cr2 = 0;
    if (!PyArg_ParseTuple(args, "III|I", &a, &b, &d, &cr2)) return NULL;
    self->c.vcr2 = cr2;
    self->c.vcr0 = a;
    self->c.vcr3 = b;
    self->c.vcr4 = d;
    Py_RETURN_NONE;
}

/* set_mmu(p2m, m2p, meta, used, snaps, protect, flood, head, ctl, log, watched, watched_low, defq): the shadow
 * MMU's shared
 * arrays (vmirom/machine/mmu/shared.py), after set_shadow.  Sizes are checked against each other,
 * so a wrong layout is refused here instead of read out of bounds later. */
static PyObject *Core_set_mmu(CoreObject *self, PyObject *args) {
    int flush_ok = self->c.mmu.flush_ok;
    PyObject *o[13];
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8],
                          &o[9], &o[10], &o[11], &o[12]))
        return NULL;
    if (!self->has_mach) {
        PyErr_SetString(PyExc_RuntimeError, "set_mmu needs set_shadow first");
        return NULL;
    }
    release_mmu(self);
    for (int i = 0; i < 13; i++) {
        if (PyObject_GetBuffer(o[i], &self->mmu_buf[i], PyBUF_WRITABLE) < 0) {
            release_mmu(self);
            return NULL;
        }
        self->n_mmu_buf = i + 1;
    }
    Py_buffer *b = self->mmu_buf;
    uint64_t ram_frames = (uint64_t)b[0].len / 4, pool = (uint64_t)b[3].len / 8;
    int ok = b[1].len % 4 == 0 && (uint64_t)b[2].len == pool * MM_META * 4 && (uint64_t)b[4].len == pool * 4096 &&
             (uint64_t)b[5].len == ram_frames && (uint64_t)b[6].len == ram_frames &&
             (uint64_t)b[7].len == ram_frames * 4 && b[8].len == MC_CTL * 8 && b[9].len % (MMU_LOG_REC * 4) == 0 && b[10].len == (1 << 20) && b[11].len == 1024 * 4 && b[12].len >= 4 && b[12].len % 4 == 0 &&
             (pool + ram_frames) << 12 <= self->c.mach_size && pool > 0;
    const uint32_t *p2m = b[0].buf;
    for (uint64_t g = 0; ok && g < ram_frames; g++)  /* every leaf C builds stays inside machine memory */
        ok = p2m[g] >= pool && ((uint64_t)p2m[g] + 1) << 12 <= self->c.mach_size;
    if (!ok) {
        release_mmu(self);
        PyErr_SetString(PyExc_ValueError, "set_mmu: arrays of inconsistent sizes");
        return NULL;
    }
    vmmu_t *m = &self->c.mmu;
    m->p2m = p2m;
    m->m2p = b[1].buf;
    m->m2p_len = (uint32_t)(b[1].len / 4);
    m->meta = b[2].buf;
    m->used = b[3].buf;
    m->snaps = b[4].buf;
    m->protect = b[5].buf;
    m->flood = b[6].buf;
    m->head = b[7].buf;
    m->ctl = b[8].buf;
    m->log = b[9].buf;
    m->watched = b[10].buf;
    m->watched_low = b[11].buf;
    m->defq = b[12].buf;
    m->defq_cap = (uint32_t)(b[12].len / 4);
    m->pool_frames = (uint32_t)pool;
    m->ram_frames = (uint32_t)ram_frames;
    m->log_cap = (uint32_t)(b[9].len / (MMU_LOG_REC * 4));
    m->flush_ok = flush_ok;
    m->on = 1;
    Py_RETURN_NONE;
}

/* set_uc_ctl(ptr): uc_ctl of the engine's library (the hook flushes the engine's TLB after a SetPxE
 * that took rights from a shadow entry); 0: no hook, Python flushes after the synthetic call. */
static PyObject *Core_set_uc_ctl(CoreObject *self, PyObject *args) {
    unsigned long long p;
    if (!PyArg_ParseTuple(args, "K", &p)) return NULL;
    self->c.api.ctl = (uc_err(*)(uc_engine *, int, ...))(uintptr_t)p;
    self->c.mmu.flush_ok = 1;
    Py_RETURN_NONE;
}

/* mmu_fault(va, write (-1: infer), user, root_mfn) -> None (the Python path) | "hidden" | err:
 * the shadow #PF decision of the hook over given values (synthetic exits, the MMU's tests),
 * committed when it is not None.  A true fault is not delivered here (the caller does). */
static PyObject *Core_mmu_fault(CoreObject *self, PyObject *args) {
    unsigned int va, root;
    int write, user;
    if (!PyArg_ParseTuple(args, "IipI", &va, &write, &user, &root)) return NULL;
    vmmu_fault_t d;
    int kind = core_mmu_decide(&self->c, va, write, user, root, &d);
    if (kind == MF_PYTHON || kind == MF_WP) Py_RETURN_NONE;  /* a store to emulate: shadow_pf's */
    core_mmu_commit(&self->c, &d);
    if (kind == MF_HIDDEN) return PyUnicode_FromString("hidden");
    return PyLong_FromUnsignedLong(d.err);
}

static uint32_t given_gpr[8];
static int gprs_given(core_t *c, uint32_t *gpr) {
    (void)c;
    memcpy(gpr, given_gpr, sizeof given_gpr);
    return 0;
}

/* shadow_pf(regs, now_raw[, gprs]) -> None (the Python path) | "hidden" | entry tuple | ("wp", eip,
 * xchg register index or -1, its value): the hook's shadow #PF over given registers (synthetic exits;
 * regs as for intr, CR3 = the engine's, i.e. the shadow root; gprs: eax..edi, without them a
 * write-protect trap is Python's) */
static PyObject *Core_shadow_pf(CoreObject *self, PyObject *args) {
    PyObject *regs, *gprs = NULL;
    long long now;
    if (!PyArg_ParseTuple(args, "OL|O", &regs, &now, &gprs)) return NULL;
    vregs_t R;
    if (regs_from_tuple(regs, &R)) return NULL;
    if (gprs && !PyArg_ParseTuple(gprs, "IIIIIIII", &given_gpr[0], &given_gpr[1], &given_gpr[2],
                                  &given_gpr[3], &given_gpr[4], &given_gpr[5], &given_gpr[6], &given_gpr[7]))
        return NULL;
    ventry_t e;
    vcounts_t cnt = {0};
    vwp_t w;
    given_now = now;
    int kind = core_shadow_pf(&self->c, &R, &e, &cnt, now_given, gprs ? gprs_given : NULL, &w);
    if (kind == MF_PYTHON) {
        self->c.fallbacks++;
        Py_RETURN_NONE;
    }
    core_commit(&self->c, &cnt);
    self->c.completed++;
    if (kind == MF_HIDDEN) return PyUnicode_FromString("hidden");
    if (kind == MF_WP) return Py_BuildValue("(sIiI)", "wp", w.eip, w.reg, w.reg >= 0 ? w.gpr[w.reg] : 0);
    return entry_tuple(&e);
}

/* mmu_pxe(update, eax, edx, ecx, cr0, cr3, cr4) -> bool: SetPxE (update False) / UpdatePxE done in C
 * over given registers (core_mmu_pxe; the MMU's tests: with cr0 0 the pointer is guest-physical) */
static PyObject *Core_mmu_pxe(CoreObject *self, PyObject *args) {
    int update;
    vcall_in_t in;
    memset(&in, 0, sizeof in);
    if (!PyArg_ParseTuple(args, "pIIIIII", &update, &in.eax, &in.edx, &in.ecx, &in.cr0, &in.cr3, &in.cr4))
        return NULL;
    vcounts_t cnt = {0};
    if (core_mmu_pxe(&self->c, update, &in, &cnt) != CORE_OK) Py_RETURN_FALSE;
    core_commit(&self->c, &cnt);
    Py_RETURN_TRUE;
}

/* A writable memoryview of the guest's CR2 under shadow paging (ShadowedEngine.cr2 reads and
 * writes this word: the core sets it when it delivers a true #PF) */
static PyObject *Core_vcr2_view(CoreObject *self, PyObject *unused) {
    return PyMemoryView_FromMemory((char *)&self->c.vcr2, sizeof self->c.vcr2, PyBUF_WRITE);
}

/* set_iret(kernel_ring, rom_base, site, call_number): the vmi IRET hypercall may be done in C
 * (site: the ROM offset of the IRET stub's `int`; -1 turns it off) */
static PyObject *Core_set_iret(CoreObject *self, PyObject *args) {
    int ring, site, num;
    unsigned long long base;
    if (!PyArg_ParseTuple(args, "iKii", &ring, &base, &site, &num)) return NULL;
    if (num < 0 || num >= C_NHYPERCALLS) {
        PyErr_SetString(PyExc_ValueError, "call number out of range");
        return NULL;
    }
    self->c.kernel_ring = ring;
    self->c.rom_base = base;
    self->c.iret_site = site;
    self->c.iret_counter = num;
    Py_RETURN_NONE;
}

/* set_state_calls([(rom offset, STATE_* kind, call number), ...]): the state-only hypercalls the
 * core may complete (only with the IRET on: set_iret's checks of the personality hold for them) */
static PyObject *Core_set_state_calls(CoreObject *self, PyObject *args) {
    PyObject *lst;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &lst)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(lst);
    if (n > N_STATE) {
        PyErr_SetString(PyExc_ValueError, "too many state calls");
        return NULL;
    }
    int site[N_STATE], kind[N_STATE], num[N_STATE];
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyArg_ParseTuple(PyList_GET_ITEM(lst, i), "iii", &site[i], &kind[i], &num[i])) return NULL;
        if (num[i] < 0 || num[i] >= C_NHYPERCALLS || site[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "bad state call");
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        self->c.state_site[i] = site[i];
        self->c.state_kind[i] = kind[i];
        self->c.state_num[i] = num[i];
    }
    self->c.n_state = (int)n;
    Py_RETURN_NONE;
}

static PyObject *Core_set_kernel_stack(CoreObject *self, PyObject *args) {
    int ring;
    PyObject *ss, *esp;
    if (!PyArg_ParseTuple(args, "iOO", &ring, &ss, &esp)) return NULL;
    if (ring < 0 || ring > 3) {
        PyErr_SetString(PyExc_ValueError, "ring must be 0..3");
        return NULL;
    }
    if (ss == Py_None) {
        self->c.ks_valid[ring] = 0;
        Py_RETURN_NONE;
    }
    self->c.ks_ss[ring] = (uint32_t)PyLong_AsUnsignedLongMask(ss);
    self->c.ks_esp[ring] = (uint32_t)PyLong_AsUnsignedLongMask(esp);
    if (PyErr_Occurred()) return NULL;
    self->c.ks_valid[ring] = 1;
    Py_RETURN_NONE;
}

/* set_vif(on, live, page): vmi2's virtual interrupt flag lives in the shared page at guest-physical
 * `page` (vmi2.c); `live` once the personality initialised it */
static PyObject *Core_set_vif(CoreObject *self, PyObject *args) {
    int on, live;
    unsigned long long page;
    if (!PyArg_ParseTuple(args, "ppK", &on, &live, &page)) return NULL;
    if (on && (page > self->c.mem.size || self->c.mem.size - page < 4096)) {
        PyErr_SetString(PyExc_ValueError, "the shared page is not in RAM");
        return NULL;
    }
    self->c.vif_on = on;
    self->c.vif_live = on && live;
    self->c.vif_page = on ? page : 0;
    Py_RETURN_NONE;
}

/* take_kernel_stacks() -> [(ring, ss, esp)]: the overrides the core changed since the last call */
static PyObject *Core_take_kernel_stacks(CoreObject *self, PyObject *unused) {
    core_t *c = &self->c;
    PyObject *out = PyList_New(0);
    for (int ring = 0; out && ring < 4; ring++) {
        if (!(c->ks_dirty & (1 << ring)) || !c->ks_valid[ring]) continue;
        PyObject *t = Py_BuildValue("(ikk)", ring, (unsigned long)c->ks_ss[ring], (unsigned long)c->ks_esp[ring]);
        if (!t || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(t);
    }
    if (out) c->ks_dirty = 0;
    return out;
}

/* A read-only memoryview of the int that is non-zero while take_kernel_stacks has news. */
static PyObject *Core_kernel_stacks_flag(CoreObject *self, PyObject *unused) {
    return PyMemoryView_FromMemory((char *)&self->c.ks_dirty, sizeof self->c.ks_dirty, PyBUF_READ);
}

static PyObject *Core_set_irq_window(CoreObject *self, PyObject *args) {
    int pending, refresh = 0;
    long long deadline;
    if (!PyArg_ParseTuple(args, "pL|p", &pending, &deadline, &refresh)) return NULL;
    self->c.pic_pending = pending;
    self->c.deadline_raw = deadline;
    /* any earlier (cpu, mono) pair bounds the clock; a fresh one (a system call) keeps the bound
     * tight: taken before every slice, not after every exit */
    if (refresh || !self->c.mono_at_sync) {
        self->c.cpu_at_sync = cpu_ns();
        self->c.mono_at_sync = (int64_t)mono_ns();
    }
    Py_RETURN_NONE;
}

/* ([(counter index, count), ...], [the last <= 32 counter indices in order]) since the last drain;
 * the counters restart at 0 */
static PyObject *Core_drain(CoreObject *self, PyObject *unused) {
    core_t *c = &self->c;
    uint64_t nl = c->nlog < 32 ? c->nlog : 32;
    PyObject *log = PyList_New((Py_ssize_t)nl);
    if (!log) return NULL;
    for (uint64_t i = 0; i < nl; i++)
        PyList_SET_ITEM(log, (Py_ssize_t)i, PyLong_FromLong(c->log[(c->nlog - nl + i) % 32]));
    c->nlog = 0;
    PyObject *out = PyList_New(c->ndirty);
    if (!out) {
        Py_DECREF(log);
        return NULL;
    }
    for (int i = 0; i < c->ndirty; i++) {
        int k = c->dirty[i];
        PyList_SET_ITEM(out, i, Py_BuildValue("(iK)", k, (unsigned long long)c->counts[k]));
        c->counts[k] = 0;
        c->is_dirty[k] = 0;
    }
    c->ndirty = 0;
    return Py_BuildValue("(NN)", out, log);
}

static PyObject *Core_pending(CoreObject *self, PyObject *unused) {
    return PyBool_FromLong(self->c.ndirty != 0);
}

/* A writable memoryview of one int that is non-zero while counts wait to be drained (Python reads
 * it without a call: Metrics looks at it on every read of its counters). */
static PyObject *Core_pending_flag(CoreObject *self, PyObject *unused) {
    return PyMemoryView_FromMemory((char *)&self->c.ndirty, sizeof self->c.ndirty, PyBUF_READ);
}

/* intr(vector, regs, now_raw) -> None (the Python path takes the exit) | entry tuple.
 * The same decision as the Unicorn hook, over registers given by the caller (synthetic exits). */
static PyObject *Core_intr(CoreObject *self, PyObject *args) {
    int vector;
    PyObject *regs;
    long long now;
    if (!PyArg_ParseTuple(args, "iOL", &vector, &regs, &now)) return NULL;
    vregs_t R;
    if (regs_from_tuple(regs, &R)) return NULL;
    ventry_t e;
    vcounts_t cnt = {0};
    given_now = now;
    if (core_intr(&self->c, &R, vector, &e, &cnt, now_given) != CORE_OK) {
        self->c.fallbacks++;
        Py_RETURN_NONE;
    }
    core_commit(&self->c, &cnt);
    self->c.completed++;
    return entry_tuple(&e);
}

/* hypercall(regs, (eax, edx, ecx, ds, es, fs, gs), now_raw) -> None (the Python path takes the exit)
 * | ("entry", entry tuple) | ("regs", eax or None, eflags or None): the hypercall exit as the Unicorn
 * hook decides it (hcall.c), over registers given by the caller (synthetic exits).  Control registers
 * in `regs` are the engine's: under shadow paging the core substitutes the guest's, as the hook does. */
static PyObject *Core_hypercall(CoreObject *self, PyObject *args) {
    PyObject *regs;
    long long now;
    unsigned int x[7];
    if (!PyArg_ParseTuple(args, "O(IIIIIII)L", &regs, &x[0], &x[1], &x[2], &x[3], &x[4], &x[5], &x[6], &now))
        return NULL;
    vregs_t R;
    if (regs_from_tuple(regs, &R)) return NULL;
    core_t *c = &self->c;
    given_now = now;
    uint32_t cr[4] = {R.r[R_CR0], R.r[R_CR3], R.r[R_CR4], R.r[R_CR2]}; /* as the guest sees them */
    if (c->shadow) {
        cr[0] = c->vcr0;
        cr[1] = c->vcr3;
        cr[2] = c->vcr4;
        cr[3] = c->vcr2;
    }
    int site = core_hcall_site(c, R.r[R_EIP], R.r[R_CS], cr[0], cr[1], cr[2]);
    vcounts_t cnt = {0};
    if (site > 0) {
        vcall_in_t in = {x[0], x[1], x[2], R.r[R_EFLAGS], R.r[R_SS], R.r[R_GDT_BASE], R.r[R_GDT_LIMIT],
                         cr[0], cr[1], cr[2], cr[3]};
        vcall_out_t out;
        if (core_state_call(c, site - 1, &in, &out, &cnt, now_given) == CORE_OK) {
            core_commit(c, &cnt);
            c->completed++;
            c->state_calls++;
            PyObject *eax = out.set_eax ? PyLong_FromUnsignedLong(out.eax) : Py_NewRef(Py_None);
            PyObject *efl = out.set_eflags ? PyLong_FromUnsignedLong(out.eflags) : Py_NewRef(Py_None);
            return Py_BuildValue("(sNN)", "regs", eax, efl);
        }
    } else if (site == 0) {
        ventry_t e;
        if (core_hcall_iret(c, &R, x + 3, &e, &cnt, now_given) == CORE_OK) {
            core_commit(c, &cnt);
            c->completed++;
            c->irets++;
            return Py_BuildValue("(sN)", "entry", entry_tuple(&e));
        }
    }
    c->fallbacks++;
    Py_RETURN_NONE;
}

/* deliver(regs, vector, err or None, software, external) -> ("ok", entry) | ("triple", msg, cr2)
 * | ("fallback",): Delivery._with_double_fault in C, for the Python path's own deliveries. */
static PyObject *Core_deliver(CoreObject *self, PyObject *args) {
    PyObject *regs, *err;
    int vector, software, external;
    if (!PyArg_ParseTuple(args, "OiOpp", &regs, &vector, &err, &software, &external)) return NULL;
    vregs_t R;
    if (regs_from_tuple(regs, &R)) return NULL;
    uint32_t e32 = 0;
    if (err != Py_None) {
        e32 = (uint32_t)PyLong_AsUnsignedLongMask(err);
        if (PyErr_Occurred()) return NULL;
    }
    ventry_t e;
    vcounts_t cnt = {0};
    char msg[400] = "";
    int rc = core_deliver(&self->c, &R, vector, err != Py_None, e32, software, external, &e, &cnt, msg,
                          sizeof msg);
    if (rc == CORE_OK) {
        core_commit(&self->c, &cnt);
        return Py_BuildValue("(sN)", "ok", entry_tuple(&e));
    }
    if (rc == CORE_TRIPLE) {
        core_commit(&self->c, &cnt);
        PyObject *cr2 = e.cr2_set ? PyLong_FromUnsignedLong(e.cr2) : Py_NewRef(Py_None);
        return Py_BuildValue("(ssN)", "triple", msg, cr2);
    }
    return Py_BuildValue("(s)", "fallback");
}

static PyObject *Core_pf_write(CoreObject *self, PyObject *args) {
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "y*", &b)) return NULL;
    int w = core_pf_write(b.buf, (uint32_t)b.len);
    PyBuffer_Release(&b);
    return PyLong_FromLong(w);
}

/* attach_uc(uc, uch, (read_batch, write_batch, reg_read, reg_write, ctx_alloc, ctx_save, ctx_restore,
 *            ctx_free, hook_add, hook_del, emu_stop), off_exc, off_hflags, off_eip, py_intr)
 * Function pointers come from the library the binding loaded (no link-time dependency). */
static PyObject *Core_attach_uc(CoreObject *self, PyObject *args) {
    unsigned long long uch, py_intr;
    PyObject *fns, *owner;
    unsigned int oe, oh, oi;
    if (!PyArg_ParseTuple(args, "OKOIIIK", &owner, &uch, &fns, &oe, &oh, &oi, &py_intr)) return NULL;
    core_t *c = &self->c;
    if (c->uc) {
        PyErr_SetString(PyExc_RuntimeError, "core already attached to an engine");
        return NULL;
    }
    void *p[11];
    if (!PyArg_ParseTuple(fns, "KKKKKKKKKKK", &p[0], &p[1], &p[2], &p[3], &p[4], &p[5], &p[6], &p[7], &p[8],
                          &p[9], &p[10]))
        return NULL;
    for (int i = 0; i < 11; i++)
        if (!p[i]) {
            PyErr_SetString(PyExc_ValueError, "a Unicorn function pointer is NULL");
            return NULL;
        }
    c->api.read_batch = (uc_reg_batch_fn)p[0];
    c->api.write_batch = (uc_reg_batch_fn)p[1];
    c->api.reg_read = (uc_reg_fn)p[2];
    c->api.reg_write = (uc_reg_fn)p[3];
    c->api.ctx_alloc = (uc_ctx_alloc_fn)p[4];
    c->api.ctx_save = (uc_ctx_fn)p[5];
    c->api.ctx_restore = (uc_ctx_fn)p[6];
    c->api.ctx_free = (uc_free_fn)p[7];
    c->api.hook_add = (uc_hook_add_fn)p[8];
    c->api.hook_del = (uc_hook_del_fn)p[9];
    c->api.emu_stop = (uc_stop_fn)p[10];
    c->off_exc = oe;
    c->off_hflags = oh;
    c->off_eip = oi;
    c->py_intr = (intr_cb)(uintptr_t)py_intr;
    c->uc = (uc_engine *)(uintptr_t)uch;
    if (c->api.ctx_alloc(c->uc, &c->ctx)) {
        c->uc = NULL;
        PyErr_SetString(PyExc_RuntimeError, "uc_context_alloc failed");
        return NULL;
    }
    if (c->api.hook_add(c->uc, &c->h_intr, UC_HOOK_INTR, (void *)hook_intr, c, (uint64_t)1, (uint64_t)0)) {
        c->api.ctx_free(c->ctx);
        c->ctx = NULL;
        c->uc = NULL;
        PyErr_SetString(PyExc_RuntimeError, "uc_hook_add(UC_HOOK_INTR) failed");
        return NULL;
    }
    Py_INCREF(owner);
    self->uc_owner = owner;
    Py_RETURN_NONE;
}

/* attach_io(py_in, py_out): the core's in/out hooks replace the Python ones (ctypes callbacks with
 * the binding's signatures, called for every access the core does not complete) */
static PyObject *Core_attach_io(CoreObject *self, PyObject *args) {
    unsigned long long pin, pout;
    if (!PyArg_ParseTuple(args, "KK", &pin, &pout)) return NULL;
    core_t *c = &self->c;
    if (!c->uc || !pin || !pout || c->h_in) {
        PyErr_SetString(PyExc_RuntimeError, "attach_io needs an attached engine, once, and two callbacks");
        return NULL;
    }
    c->py_in = (uint32_t(*)(uc_engine *, uint32_t, int, void *))(uintptr_t)pin;
    c->py_out = (void (*)(uc_engine *, uint32_t, int, uint32_t, void *))(uintptr_t)pout;
    if (c->api.hook_add(c->uc, &c->h_in, UC_HOOK_INSN, (void *)hook_in, c, (uint64_t)1, (uint64_t)0,
                        (int)UC_X86_INS_IN) ||
        c->api.hook_add(c->uc, &c->h_out, UC_HOOK_INSN, (void *)hook_out, c, (uint64_t)1, (uint64_t)0,
                        (int)UC_X86_INS_OUT)) {
        PyErr_SetString(PyExc_RuntimeError, "uc_hook_add(UC_HOOK_INSN in/out) failed");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* set_console(on, base, hypercall_port, io_rule) */
static PyObject *Core_set_console(CoreObject *self, PyObject *args) {
    int on, rule;
    unsigned int base;
    long long hport;
    if (!PyArg_ParseTuple(args, "pILi", &on, &base, &hport, &rule)) return NULL;
    self->c.con.on = on;
    self->c.con.base = base;
    self->c.con.hypercall_port = hport;
    self->c.con.io_rule = rule;
    Py_RETURN_NONE;
}

/* console_state(lcr, ier, rx_ready, midline, fenced): the UART's (and engine's) state the hot cases need */
static PyObject *Core_console_state(CoreObject *self, PyObject *args) {
    vconsole_t *k = &self->c.con;
    if (!PyArg_ParseTuple(args, "iippp", &k->lcr, &k->ier, &k->rx_ready, &k->midline, &k->fenced)) return NULL;
    Py_RETURN_NONE;
}

/* take_console() -> bytes the core transmitted since the last call, in order */
static PyObject *Core_take_console(CoreObject *self, PyObject *unused) {
    vconsole_t *k = &self->c.con;
    PyObject *b = PyBytes_FromStringAndSize((const char *)k->buf, k->n);
    if (b) k->n = 0;
    return b;
}

/* console_out(port, size, value, cs, eflags) -> bool, console_in(port, size, cs, eflags) -> int | None:
 * the hooks' decisions over given registers (tests) */
static PyObject *Core_console_out(CoreObject *self, PyObject *args) {
    unsigned int port, value, cs, eflags;
    int size;
    if (!PyArg_ParseTuple(args, "IiIII", &port, &size, &value, &cs, &eflags)) return NULL;
    return PyBool_FromLong(core_console_out(&self->c, port, size, value, cs, eflags) == CORE_OK);
}

static PyObject *Core_console_in(CoreObject *self, PyObject *args) {
    unsigned int port, cs, eflags, v = 0;
    int size;
    if (!PyArg_ParseTuple(args, "IiII", &port, &size, &cs, &eflags)) return NULL;
    if (core_console_in(&self->c, port, size, cs, eflags, &v) != CORE_OK) Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(v);
}

static PyObject *Core_take_error(CoreObject *self, PyObject *unused) {
    if (!self->c.error[0]) Py_RETURN_NONE;
    PyObject *s = PyUnicode_FromString(self->c.error);
    self->c.error[0] = 0;
    return s;
}

static PyObject *Core_set_timing(CoreObject *self, PyObject *args) {
    int on;
    if (!PyArg_ParseTuple(args, "p", &on)) return NULL;
    self->c.timing = on;
    Py_RETURN_NONE;
}

/* {"io": (calls, ns), "softint": ..., "exception": ..., "page_fault": ..., "fallback": ...} */
static PyObject *Core_timings(CoreObject *self, PyObject *unused) {
    core_t *c = &self->c;
    PyObject *d = Py_BuildValue("{s(KK)s(KK)s(KK)s(KK)s(KK)s(KK)}", "io", c->t_io_calls, c->t_io_ns,
                                "softint", c->t_calls[0], c->t_ns[0],
                                "exception", c->t_calls[1], c->t_ns[1], "page_fault", c->t_calls[2],
                                c->t_ns[2], "fallback", c->t_calls[3], c->t_ns[3], "hypercall:IRET",
                                c->t_calls[4], c->t_ns[4]);
    for (int i = 0; d && i < c->n_state; i++) {  /* "hypercall#<call number>": named by the Python side */
        char key[32];
        snprintf(key, sizeof key, "hypercall#%d", c->state_num[i]);
        PyObject *v = Py_BuildValue("(KK)", c->t_state_calls[i], c->t_state_ns[i]);
        if (!v || PyDict_SetItemString(d, key, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    static const char *mmu_key[3] = {"shadow:hidden_fault", "shadow:true_fault", "shadow:wp_trap"};
    for (int k = 0; d && k < 3; k++) {
        PyObject *v = Py_BuildValue("(KK)", c->t_mmu_calls[k], c->t_mmu_ns[k]);
        if (!v || PyDict_SetItemString(d, mmu_key[k], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    static const char *kind[5] = {"softint", "exception", "page_fault", "fallback", "hypercall_IRET"};
    static const char *phase[3] = {"read_registers", "decide_and_frame", "enter_handler"};
    for (int k = 0; d && k < 5; k++) {
        if (k == 3) continue;
        for (int p = 0; p < 3; p++) {
            char key[64];
            snprintf(key, sizeof key, "phase:%s:%s", kind[k], phase[p]);
            PyObject *v = Py_BuildValue("(KK)", c->t_calls[k], c->t_phase[k][p]);
            if (!v || PyDict_SetItemString(d, key, v) < 0) {
                Py_XDECREF(v);
                Py_DECREF(d);
                return NULL;
            }
            Py_DECREF(v);
        }
    }
    return d;
}

static PyObject *Core_get_fallbacks(CoreObject *self, void *unused) {
    return PyLong_FromUnsignedLongLong(self->c.fallbacks);
}

static PyMethodDef Core_methods[] = {
    {"set_memory", (PyCFunction)Core_set_memory, METH_VARARGS, "set_memory(readonly, writes_to_python)"},
    {"set_policy", (PyCFunction)Core_set_policy, METH_VARARGS,
     "set_policy(accel_intr, hypercall_vector, intercept: bytes[256])"},
    {"set_shadow", (PyCFunction)Core_set_shadow, METH_VARARGS, "set_shadow(machine_buffer, size)"},
    {"set_virtual_crs", (PyCFunction)Core_set_virtual_crs, METH_VARARGS, "set_virtual_crs(cr0, cr3, cr4)"},
    {"set_mmu", (PyCFunction)Core_set_mmu, METH_VARARGS,
     "set_mmu(p2m, m2p, meta, used, snaps, protect, flood, head, ctl, log, watched, watched_low, defq)"},
    {"mmu_pxe", (PyCFunction)Core_mmu_pxe, METH_VARARGS, "mmu_pxe(update, eax, edx, ecx, cr0, cr3, cr4)"},
    {"set_uc_ctl", (PyCFunction)Core_set_uc_ctl, METH_VARARGS, "set_uc_ctl(ptr or 0)"},
    {"mmu_fault", (PyCFunction)Core_mmu_fault, METH_VARARGS, "mmu_fault(va, write, user, root_mfn)"},
    {"shadow_pf", (PyCFunction)Core_shadow_pf, METH_VARARGS, "shadow_pf(regs, now_raw) -> None | 'hidden' | entry"},
    {"vcr2_view", (PyCFunction)Core_vcr2_view, METH_NOARGS, "memoryview of the guest's CR2"},
    {"set_iret", (PyCFunction)Core_set_iret, METH_VARARGS, "set_iret(kernel_ring, rom_base, site, number)"},
    {"set_state_calls", (PyCFunction)Core_set_state_calls, METH_VARARGS,
     "set_state_calls([(rom_offset, kind, number)])"},
    {"set_kernel_stack", (PyCFunction)Core_set_kernel_stack, METH_VARARGS,
     "set_kernel_stack(ring, ss|None, esp)"},
    {"set_irq_window", (PyCFunction)Core_set_irq_window, METH_VARARGS,
     "set_irq_window(pic_pending, deadline_raw_ns, refresh_clock=False)"},
    {"drain", (PyCFunction)Core_drain, METH_NOARGS, "counts since the last drain: [(index, n)]"},
    {"pending", (PyCFunction)Core_pending, METH_NOARGS, "True when counts wait to be drained"},
    {"pending_flag", (PyCFunction)Core_pending_flag, METH_NOARGS, "memoryview of the pending count"},
    {"intr", (PyCFunction)Core_intr, METH_VARARGS, "intr(vector, regs, now_raw) -> entry | None"},
    {"hypercall", (PyCFunction)Core_hypercall, METH_VARARGS,
     "hypercall(regs, (eax, edx, ecx, ds, es, fs, gs), now_raw) -> None | ('entry', e) | ('regs', eax, eflags)"},
    {"set_vif", (PyCFunction)Core_set_vif, METH_VARARGS, "set_vif(on, live, shared_page)"},
    {"take_kernel_stacks", (PyCFunction)Core_take_kernel_stacks, METH_NOARGS,
     "[(ring, ss, esp)] changed by the core since the last call"},
    {"kernel_stacks_flag", (PyCFunction)Core_kernel_stacks_flag, METH_NOARGS,
     "memoryview of the 'kernel stacks changed' flag"},
    {"deliver", (PyCFunction)Core_deliver, METH_VARARGS, "deliver(regs, vector, err, software, external)"},
    {"pf_write", (PyCFunction)Core_pf_write, METH_VARARGS, "decoder: 1 write, 0 read, -1 unknown"},
    {"attach_uc", (PyCFunction)Core_attach_uc, METH_VARARGS, "register the core's hooks on an engine"},
    {"attach_io", (PyCFunction)Core_attach_io, METH_VARARGS, "attach_io(py_in, py_out): the in/out hooks"},
    {"set_console", (PyCFunction)Core_set_console, METH_VARARGS, "set_console(on, base, hypercall_port, rule)"},
    {"console_state", (PyCFunction)Core_console_state, METH_VARARGS,
     "console_state(lcr, ier, rx_ready, midline, fenced)"},
    {"take_console", (PyCFunction)Core_take_console, METH_NOARGS, "bytes transmitted by the core"},
    {"console_out", (PyCFunction)Core_console_out, METH_VARARGS, "console_out(port, size, value, cs, eflags)"},
    {"console_in", (PyCFunction)Core_console_in, METH_VARARGS, "console_in(port, size, cs, eflags)"},
    {"take_error", (PyCFunction)Core_take_error, METH_NOARGS, "an engine refusal seen inside a hook"},
    {"set_timing", (PyCFunction)Core_set_timing, METH_VARARGS, "time every exit (profiling)"},
    {"timings", (PyCFunction)Core_timings, METH_NOARGS, "per exit kind: (calls, ns)"},
    {NULL, NULL, 0, NULL},
};

static PyObject *Core_get_state_calls(CoreObject *self, void *unused) {
    return PyLong_FromUnsignedLongLong(self->c.state_calls);
}

static PyObject *Core_get_irets(CoreObject *self, void *unused) {
    return PyLong_FromUnsignedLongLong(self->c.irets);
}

static PyObject *Core_get_completed(CoreObject *self, void *unused) {
    return PyLong_FromUnsignedLongLong(self->c.completed);
}

static PyGetSetDef Core_getset[] = {
    {"completed", (getter)Core_get_completed, NULL, "exits the core completed itself", NULL},
    {"fallbacks", (getter)Core_get_fallbacks, NULL, "exits handed to the Python path", NULL},
    {"state_calls", (getter)Core_get_state_calls, NULL, "state-only hypercalls completed here", NULL},
    {"irets", (getter)Core_get_irets, NULL, "IRET hypercalls completed here", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "vmirom.engines.core._core.Core",
    .tp_basicsize = sizeof(CoreObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Core(ram_buffer, ram_size): the compiled exit core of one machine",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
    .tp_getset = Core_getset,
};

static struct PyModuleDef coremodule = {
    PyModuleDef_HEAD_INIT, "_core", "vmirom's compiled engine core (see core.h)", -1, NULL, NULL, NULL, NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__core(void) {
    if (PyType_Ready(&CoreType) < 0) return NULL;
    PyObject *m = PyModule_Create(&coremodule);
    if (!m) return NULL;
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0) return NULL;
    PyModule_AddIntConstant(m, "C_SOFTINT", C_SOFTINT);
    PyModule_AddIntConstant(m, "C_EXCEPTION", C_EXCEPTION);
    PyModule_AddIntConstant(m, "C_INTERRUPT", C_INTERRUPT);
    PyModule_AddIntConstant(m, "C_RING_CHANGE", C_RING_CHANGE);
    PyModule_AddIntConstant(m, "C_NESTED", C_NESTED);
    PyModule_AddIntConstant(m, "C_DOUBLE", C_DOUBLE);
    PyModule_AddIntConstant(m, "C_HYPERCALL", C_HYPERCALL);
    PyModule_AddIntConstant(m, "C_NCOUNTERS", C_NCOUNTERS);
    PyModule_AddIntConstant(m, "C_NHYPERCALLS", C_NHYPERCALLS);
    /* the interface version vmirom/engines/core/__init__.py checks (2: the console's port I/O, 3: state-only
     * hypercalls, 4: vmi2's virtual IF, the IF and kernel-stack hypercalls, Core.hypercall, 5: the shadow
     * MMU's #PF: set_mmu, mmu_fault, shadow_pf, vcr2_view, C_SHADOW_HIDDEN; 6: vmi2's batch flush; 7: fullvirt's
     * write-protect trap: shadow_pf's gprs and "wp", C_SHADOW_WP, C_MMU_EMULATED, FLOOD_LIMIT) */
    PyModule_AddIntConstant(m, "API", 7);
    PyModule_AddIntConstant(m, "FLOOD_LIMIT", FLOOD_LIMIT);
    PyModule_AddIntConstant(m, "C_SHADOW_WP", C_SHADOW_WP);
    PyModule_AddIntConstant(m, "C_MMU_EMULATED", C_MMU_EMULATED);
    PyModule_AddIntConstant(m, "STATE_CLI", STATE_CLI);
    PyModule_AddIntConstant(m, "STATE_STI", STATE_STI);
    PyModule_AddIntConstant(m, "STATE_SETMASK", STATE_SETMASK);
    PyModule_AddIntConstant(m, "STATE_KSTACK", STATE_KSTACK);
    PyModule_AddIntConstant(m, "C_IO_IN", C_IO_IN);
    PyModule_AddIntConstant(m, "C_IO_OUT", C_IO_OUT);
    PyModule_AddIntConstant(m, "C_SHADOW_HIDDEN", C_SHADOW_HIDDEN);
    PyModule_AddIntConstant(m, "C_MMU_PV_UPDATE", C_MMU_PV_UPDATE);
    PyModule_AddIntConstant(m, "C_MMU_PREFILL", C_MMU_PREFILL);
    PyModule_AddIntConstant(m, "C_MMU_ZAP", C_MMU_ZAP);
    PyModule_AddIntConstant(m, "C_MMU_DEFERRED", C_MMU_DEFERRED);
    PyModule_AddIntConstant(m, "STATE_SETPXE", STATE_SETPXE);
    PyModule_AddIntConstant(m, "STATE_UPDATEPXE", STATE_UPDATEPXE);
    PyModule_AddIntConstant(m, "MMU_CTL", MC_CTL);
    PyModule_AddIntConstant(m, "MMU_META", MM_META);
    PyModule_AddIntConstant(m, "MMU_LOG_REC", MMU_LOG_REC);
    PyModule_AddIntConstant(m, "IO_RULE_IOPL", IO_RULE_IOPL);
    PyModule_AddIntConstant(m, "IO_RULE_KERNEL", IO_RULE_KERNEL);
    /* the Unicorn constants this file was written against (a test compares them with the binding) */
    PyObject *uc = Py_BuildValue(
        "{sisisisisisisisisisisisisisisisisisisisisisisisisisisisi}", "UC_HOOK_INTR", UC_HOOK_INTR,
        "UC_HOOK_INSN", UC_HOOK_INSN, "UC_X86_INS_IN", UC_X86_INS_IN, "UC_X86_INS_OUT", UC_X86_INS_OUT,
        "UC_X86_REG_CS", UC_X86_REG_CS, "UC_X86_REG_DS", UC_X86_REG_DS, "UC_X86_REG_EAX", UC_X86_REG_EAX,
        "UC_X86_REG_EBP", UC_X86_REG_EBP, "UC_X86_REG_EBX", UC_X86_REG_EBX, "UC_X86_REG_ECX", UC_X86_REG_ECX,
        "UC_X86_REG_EDI", UC_X86_REG_EDI, "UC_X86_REG_EDX", UC_X86_REG_EDX, "UC_X86_REG_EFLAGS",
        UC_X86_REG_EFLAGS, "UC_X86_REG_EIP", UC_X86_REG_EIP, "UC_X86_REG_ES", UC_X86_REG_ES, "UC_X86_REG_ESI",
        UC_X86_REG_ESI, "UC_X86_REG_ESP", UC_X86_REG_ESP, "UC_X86_REG_FS", UC_X86_REG_FS, "UC_X86_REG_GS",
        UC_X86_REG_GS, "UC_X86_REG_SS", UC_X86_REG_SS, "UC_X86_REG_CR0", UC_X86_REG_CR0, "UC_X86_REG_CR2",
        UC_X86_REG_CR2, "UC_X86_REG_CR3", UC_X86_REG_CR3, "UC_X86_REG_CR4", UC_X86_REG_CR4, "UC_X86_REG_IDTR",
        UC_X86_REG_IDTR, "UC_X86_REG_GDTR", UC_X86_REG_GDTR, "UC_X86_REG_LDTR", UC_X86_REG_LDTR,
        "UC_X86_REG_TR", UC_X86_REG_TR);
    if (!uc || PyModule_AddObject(m, "UNICORN_CONSTANTS", uc) < 0) return NULL;
    return m;
}
