/* The compiled engine core: shared declarations.
 *
 * Why this exists: an exit handled in Python costs 10-20 us (ctypes calls, ~50 Python calls per
 * exit); the same work done in C from a hook registered with uc_hook_add costs well under 1 us.
 * The core completes the COMMON exits (interrupt/exception delivery through the guest IDT) and
 * hands every case it cannot prove to be ordinary to the Python path, which stays the readable
 * reference (vmirom.machine.delivery / machine.py).  Both paths run the same synthetic-exit tests.
 *
 * The decision logic is pure: functions over a register snapshot (vregs_t) and guest RAM, giving
 * an entry (ventry_t) to apply.  The Unicorn glue (module.c) and the test entry points both call it.
 *
 * No Unicorn header is included: the few prototypes and constants needed are declared here (the
 * same C API in the stock wheel's libunicorn and in our patched build); tests check the constants
 * against unicorn.x86_const.  The functions themselves are resolved from the library the binding
 * already loaded (pointers passed from Python), so there is no link-time dependency.
 */
#ifndef VMIROM_CORE_H
#define VMIROM_CORE_H

#include <stddef.h>
#include <stdint.h>

/* ---- the Unicorn C API subset ---------------------------------------------------------------- */
typedef struct uc_struct uc_engine;
typedef struct uc_context uc_context;
typedef size_t uc_hook;
typedef int uc_err;

#define UC_HOOK_INTR 1
#define UC_HOOK_INSN 2
/* uc_ctl(UC_CTL_TLB_FLUSH) with UC_CTL_IO_WRITE and no argument: (1 << 30) | (0 << 26) | 11 */
#define UC_CTL_TLB_FLUSH_WRITE ((1 << 30) | 11)
#define UC_X86_INS_IN 218
#define UC_X86_INS_OUT 500

enum {
    UC_X86_REG_CS = 11, UC_X86_REG_DS = 17, UC_X86_REG_EAX = 19, UC_X86_REG_EBP = 20,
    UC_X86_REG_EBX = 21, UC_X86_REG_ECX = 22, UC_X86_REG_EDI = 23, UC_X86_REG_EDX = 24,
    UC_X86_REG_EFLAGS = 25, UC_X86_REG_EIP = 26, UC_X86_REG_ES = 28, UC_X86_REG_ESI = 29,
    UC_X86_REG_ESP = 30, UC_X86_REG_FS = 32, UC_X86_REG_GS = 33, UC_X86_REG_SS = 49,
    UC_X86_REG_CR0 = 50, UC_X86_REG_CR2 = 52, UC_X86_REG_CR3 = 53, UC_X86_REG_CR4 = 54,
    UC_X86_REG_IDTR = 242, UC_X86_REG_GDTR = 243, UC_X86_REG_LDTR = 244, UC_X86_REG_TR = 245,
};

/* uc_x86_mmr, as in unicorn/x86.h */
typedef struct {
    uint16_t selector;
    uint64_t base;
    uint32_t limit;
    uint32_t flags;
} uc_x86_mmr;

typedef uc_err (*uc_reg_batch_fn)(uc_engine *uc, int *regs, void **vals, int count);
typedef uc_err (*uc_reg_fn)(uc_engine *uc, int regid, void *value);
typedef uc_err (*uc_ctx_fn)(uc_engine *uc, uc_context *ctx);
typedef uc_err (*uc_ctx_alloc_fn)(uc_engine *uc, uc_context **ctx);
typedef uc_err (*uc_free_fn)(void *mem);
typedef uc_err (*uc_hook_add_fn)(uc_engine *uc, uc_hook *hh, int type, void *callback, void *user_data,
                                 uint64_t begin, uint64_t end, ...);
typedef uc_err (*uc_hook_del_fn)(uc_engine *uc, uc_hook hh);
typedef uc_err (*uc_stop_fn)(uc_engine *uc);
typedef void (*intr_cb)(uc_engine *uc, uint32_t intno, void *user_data);

typedef struct {
    uc_reg_batch_fn read_batch, write_batch;
    uc_reg_fn reg_read, reg_write;
    uc_ctx_alloc_fn ctx_alloc;
    uc_ctx_fn ctx_save, ctx_restore;
    uc_free_fn ctx_free;
    uc_hook_add_fn hook_add;
    uc_hook_del_fn hook_del;
    uc_stop_fn emu_stop;
    uc_err (*ctl)(uc_engine *uc, int control, ...);  /* uc_ctl (set_uc_ctl): the TLB flush after SetPxE */
} uc_api;

/* ---- x86 facts ------------------------------------------------------------------------------- */
enum { V_DE = 0, V_BP = 3, V_OF = 4, V_UD = 6, V_DF = 8, V_TS = 10, V_NP = 11, V_SS = 12, V_GP = 13,
       V_PF = 14, V_AC = 17 };
#define EFL_IF 0x200u
#define EFL_CLEAR (0x100u | 0x4000u | 0x10000u | 0x20000u) /* TF NT RF VM */
#define CR0_PG (1u << 31)
#define CR0_WP (1u << 16)
#define CR4_PSE (1u << 4)
#define PTE_P 1u
#define PTE_RW 2u
#define PTE_US 4u
#define PTE_PS 0x80u
#define PFERR_P 1u
#define PFERR_W 2u
#define PFERR_U 4u

static inline int has_error_code(int v) {
    return v == V_DF || v == V_TS || v == V_NP || v == V_SS || v == V_GP || v == V_PF || v == V_AC;
}
static inline int contributory(int v) {
    return v == V_DE || v == V_TS || v == V_NP || v == V_SS || v == V_GP;
}

/* ---- the register snapshot one exit needs (Delivery._ALL_NAMES, tables flattened) ------------- */
enum {
    R_EIP, R_EFLAGS, R_CS, R_SS, R_ESP, R_CR0, R_CR3, R_CR4, R_IDT_BASE, R_IDT_LIMIT, R_GDT_BASE,
    R_GDT_LIMIT, R_TR_SEL, R_TR_BASE, R_TR_LIMIT, R_TR_FLAGS, R_CR2, R_EDI, R_COUNT
};
typedef struct {
    uint32_t r[R_COUNT];
} vregs_t;

/* What an exit does to the CPU (Engine.enter_handler's arguments, plus CR2). */
typedef struct {
    int entered;        /* 1: a handler was entered */
    int cpl;            /* new CPL for a ring change, -1: same ring */
    int load_cs;        /* same ring: 1 when CS changes */
    uint32_t cs, ss, esp, eflags, eip;
    int cr2_set;        /* a nested #PF wrote CR2 */
    uint32_t cr2;
} ventry_t;

/* A fault the CPU raises on the way (GuestFault). */
typedef struct {
    int vector;
    uint32_t err;
    int has_cr2;
    uint32_t cr2;
} vfault_t;

/* the hypercalls the core completes from registers and VMM state alone (hcall.c): what each does */
enum { STATE_CR0 = 0, STATE_CR2 = 2, STATE_CR3 = 3, STATE_CR4 = 4, STATE_IF = 5, STATE_CLI = 6, STATE_STI = 7,
       STATE_SETMASK = 8, STATE_KSTACK = 9, STATE_SETPXE = 10, STATE_UPDATEPXE = 11,
       STATE_SETPXE_V2 = 12, STATE_LAZY_V2 = 13, STATE_FLUSH_V2 = 14 };
#define N_STATE 16

/* results */
enum { CORE_OK = 0, CORE_FAULT = 1, CORE_FALLBACK = 2, CORE_TRIPLE = 3 };

/* ---- counters (Metrics reads them: see module.c's drain) ------------------------------------- */
enum {
    C_SOFTINT = 0,          /* + vector: "softint:<v>" */
    C_EXCEPTION = 256,      /* + vector: "exception:<v>" */
    C_INTERRUPT = 512,      /* + vector: "interrupt:<v>" (not counted by the core yet) */
    C_RING_CHANGE = 768,    /* "delivery:ring_change" */
    C_NESTED,               /* "delivery:nested_fault" */
    C_DOUBLE,               /* "delivery:double_fault" */
    C_HYPERCALL,            /* + VMI call number: "hypercall:<name>" */
    C_NHYPERCALLS = 128,
    C_IO_IN = C_HYPERCALL + C_NHYPERCALLS,  /* + UART register: "io:in:<port>" */
    C_IO_OUT = C_IO_IN + 8,                 /* + UART register: "io:out:<port>" */
    C_SHADOW_HIDDEN = C_IO_OUT + 8,         /* "shadow:hidden_fault" (mmu.c) */
    C_MMU_PV_UPDATE,                        /* "mmu:pv_update" (an event, not an exit: Metrics.event) */
    C_MMU_PREFILL,                          /* "mmu:prefill" */
    C_MMU_ZAP,                              /* "mmu:zap" */
    C_MMU_DEFERRED,                         /* "mmu:deferred_update" */
    C_SHADOW_WP,                            /* "shadow:wp_trap" (fullvirt's PTE store emulated in C) */
    C_MMU_EMULATED,                         /* "mmu:emulated_pte_write" */
    C_NCOUNTERS
};
/* A delivery counts tentatively (pending) and commits only when the exit is done in C: a fallback
 * to Python must leave no trace, Python then counts the exit itself. */
typedef struct {
    int n;
    uint16_t idx[8];
} vcounts_t;
static inline void vcount(vcounts_t *c, int idx) {
    if (c->n < 8) c->idx[c->n++] = (uint16_t)idx;
}

/* ---- the machine state the core needs (published by Python, see vmirom.engines.core) --------- */
typedef struct {
    uint8_t *ram;
    uint64_t size;
    int n_ro;
    uint64_t ro_start[4], ro_end[4];
    int writes_to_python;    /* GuestMemory.on_code_write is set: every VMM write takes the Python path */
} vmem_t;

/* The console's hot port I/O (console.c): the 16550's state the hot cases depend on, published by
 * Python (MachineCore.sync) after every Python exit and before every slice, and the bytes the core
 * transmitted, which Python hands to the UART (Uart16550.transmit) before any Python access to it
 * and at every slice end. */
enum { IO_RULE_IOPL = 0, IO_RULE_KERNEL = 1 };
#define CONSOLE_BUF 4096
typedef struct {
    int on;              /* 0: every in/out goes to Python */
    uint32_t base;       /* the UART's first port (COM1: 0x3F8) */
    int64_t hypercall_port;  /* the personality's `out` hypercall port, -1: none */
    int io_rule;         /* who may use in/out: CPL <= EFLAGS.IOPL, or (Vmi) CPL <= the kernel ring */
    int lcr, ier, rx_ready;
    int midline;         /* the last byte transmitted was not a newline */
    int fenced;          /* the engine fenced the block (W18): the rest reaches no device */
    uint32_t n;
    uint8_t buf[CONSOLE_BUF];
} vconsole_t;

/* The shadow MMU's state shared with Python (vmirom/machine/mmu/shared.py: the layout and why).
 * Pointers into buffers Python owns (held by the Core object, so they cannot move or resize). */
enum { MM_KIND, MM_KEY, MM_ACC, MM_GFN, MM_NEXT, MM_META };
enum { MK_FREE, MK_PD, MK_PHYSROOT, MK_PT, MK_BIG, MK_PHYS };
enum { MC_TICK, MC_ROOT, MC_DEFERRED, MC_ROM_START, MC_ROM_END, MC_TRACKING, MC_ENABLED, MC_HIDDEN, MC_TRUE,
       MC_LOGN, MC_DIRTY, MC_LAZY, MC_PV, MC_PREFILL, MC_ZAP, MC_FLUSH, MC_DEFER_UPD, MC_CODE_START, MC_CODE_END,
       MC_V2_BATCHED, MC_V2_FLUSHES,
       MC_WP_TRAPS, MC_EMULATED,  /* fullvirt's write-protect traps emulated in C (MmuStats adds them) */
       MC_WP_EMULATE,             /* set by Python: the personality's on_wp_trap is FullVirt's (opt-in) */
       MC_CTL = 32 };
/* log records: (mfn << 10 | index, op, a, b); op LOG_LEAF (bit 0: a writable leaf to guest frame a
 * was dropped; b: the new writable leaf's guest frame or -1) or LOG_UNLINK (directory slot emptied) */
enum { LOG_LEAF = 0, LOG_LEAF_DROPPED = 1, LOG_UNLINK = 2 };
#define MMU_LOG_REC 4
typedef struct {
    int on;                  /* set_mmu was called: the fast paths may run (ctl[MC_ENABLED] too) */
    uint32_t pool_frames, ram_frames, log_cap;
    const uint32_t *p2m;     /* guest frame -> machine frame (PhysMap.p2m_table) */
    const int32_t *m2p;      /* machine frame -> guest frame, -1 (PhysMap.m2p_table) */
    uint32_t m2p_len;
    int32_t *meta;           /* per pool frame, MM_META ints */
    int64_t *used;           /* per pool frame: last-use tick */
    uint8_t *snaps;          /* per pool frame: 4 KiB */
    uint8_t *protect, *flood; /* per guest frame */
    int32_t *head;           /* per guest frame: first pool frame shadowing it + 1 */
    int64_t *ctl;
    int32_t *log;
    const uint8_t *watched;  /* per linear page: ShadowMMU.watched holds it (its faults are Python's) */
    const int32_t *watched_low;  /* per page-table index: watched linear pages with that index */
    uint32_t *defq;          /* the deferred queue (ctl[MC_DEFERRED] in use) */
    uint32_t defq_cap;
    int flush_ok;            /* who flushes the engine's TLB after SetPxE: the hook (uc_ctl) or Python */
} vmmu_t;

/* What a shadow #PF is (core_mmu_decide): MF_HIDDEN and MF_TRUE are done in C, MF_WP (a store to a
 * frame protected only as a page table, MC_WP_EMULATE set) when core_wp_store can emulate it. */
enum { MF_PYTHON = 0, MF_HIDDEN = 1, MF_TRUE = 2, MF_WP = 3 };
#define FLOOD_LIMIT 3  /* shadow.FLOOD_LIMIT (_core.FLOOD_LIMIT, tests check they agree): its unshadow is Python's */
/* An emulated page-table store's register side: the 8 GPRs (eax..edi) in, the xchg register's new
 * value (reg >= 0) and the next EIP out */
typedef struct {
    uint32_t gpr[8];
    int reg;
    uint32_t eip;
} vwp_t;
typedef struct {
    int kind;
    uint32_t va, err;        /* MF_TRUE: the error code ShadowMMU.fault gives (W inferred) */
    int write, big;
    uint32_t pde, pde_gpa, entry, entry_gpa, new_entry, gfn, child, flags;
} vmmu_fault_t;

typedef struct core {
    vmem_t mem;
    vmmu_t mmu;
    vconsole_t con;
    /* shadow paging (vmirom.machine.mmu): the engine's CR0/CR3/CR4 are the shadow's; the guest's
     * (virtual) ones are published by Python, and the shadow tables live in machine memory */
    int shadow;
    uint8_t *mach;
    uint64_t mach_size;
    uint32_t vcr0, vcr3, vcr4, vcr2;
    /* kernel_stacks overrides (VMI UpdateKernelStack) */
    int ks_valid[4];
    uint32_t ks_ss[4], ks_esp[4];
    int ks_dirty;            /* rings (bit mask) whose override the core changed: Python pulls them */
    /* vmi2's virtual interrupt flag in the ROM's shared page (vmi2.c; Vmi2.load/save_virtual_if) */
    int vif_on;              /* the personality keeps the kernel's IF there */
    int vif_live;            /* the page is initialised (Vmi2.live): until then EFLAGS.IF is the flag */
    uint64_t vif_page;       /* guest-physical address of the shared page */
    /* what the personality lets the core do */
    int accel_intr;          /* exits of the INTR hook may be completed here */
    int hypercall_vector;    /* -1: none (the vector always goes to Python) */
    uint8_t intercept[256];  /* exceptions the personality's on_exception may take: Python */
    /* the vmi IRET hypercall (iret.c): the kernel ring, the ROM's physical base and the ROM offset
     * of the IRET stub's `int $0x82` (-1: not handled in C), its counter */
    int kernel_ring;
    uint64_t rom_base;
    int iret_site;
    int iret_counter;
    /* the vmi hypercalls that only read VMM state (GetCR0/2/3/4, GetInterruptMask): the ROM
     * offsets of their stubs' `int`, what each reads (STATE_*), their call numbers */
    int n_state;
    int state_site[N_STATE];
    int state_kind[N_STATE];
    int state_num[N_STATE];
    /* interrupt window (Machine._irq_first): Python publishes whether the PIC has an unmasked
     * request and the next timer deadline in raw thread-CPU-clock ns */
    int pic_pending;
    int64_t deadline_raw;
    /* the thread CPU clock is a system call here (~0.7 us); a thread's CPU time cannot grow faster
     * than CLOCK_MONOTONIC (a vDSO read, ~30 ns), so (cpu, mono) at the last sync bound it from
     * above and the real clock is read only when that bound reaches the deadline */
    int64_t cpu_at_sync, mono_at_sync;
    /* counters */
    uint64_t counts[C_NCOUNTERS];
    uint16_t dirty[C_NCOUNTERS];
    int ndirty;
    uint8_t is_dirty[C_NCOUNTERS];
    uint16_t log[32];        /* the last counted events in order (Metrics.recent) */
    uint64_t nlog;           /* events logged since the last drain */
    /* timing (profiling only) */
    int timing;
    uint64_t t_calls[5], t_ns[5];  /* 0 softint, 1 exception, 2 pf, 3 fallback decisions, 4 iret */
    uint64_t t_phase[5][3];        /* completed exits by kind: reading registers, deciding, entering */
    uint64_t t_io_calls, t_io_ns;
    uint64_t t_state_calls[N_STATE], t_state_ns[N_STATE];  /* state-only hypercalls, by index */
    uint64_t t_mmu_calls[3], t_mmu_ns[3];  /* shadow #PF done here: 0 hidden (filled), 1 true (delivered),
                                             * 2 write-protect trap (emulated) */
    uint64_t fallbacks, completed, state_calls, irets;
    /* the Unicorn glue */
    uc_api api;
    uc_engine *uc;
    uc_context *ctx;
    uint32_t off_exc, off_hflags, off_eip;
    uc_hook h_intr, h_in, h_out;
    intr_cb py_intr;       /* the Python INTR hook (a ctypes callback: takes the GIL itself) */
    void *py_intr_ud;
    uint32_t (*py_in)(uc_engine *, uint32_t, int, void *);          /* the Python in/out hooks */
    void (*py_out)(uc_engine *, uint32_t, int, uint32_t, void *);
    char error[160];       /* an engine refusal inside the hook: reported by Python after the slice */
} core_t;

/* walk.c */
int core_translate(const core_t *c, uint32_t lin, int write, int user, uint32_t cr0, uint32_t cr3,
                   uint32_t cr4, uint64_t *phys, vfault_t *f);
int core_read(const core_t *c, uint32_t lin, void *out, uint32_t n, int user, uint32_t cr0,
              uint32_t cr3, uint32_t cr4, vfault_t *f);
int core_write_check(const core_t *c, uint32_t lin, uint32_t n, int user, uint32_t cr0, uint32_t cr3,
                     uint32_t cr4, uint64_t phys[2], uint32_t len[2], vfault_t *f);
uint32_t core_entry_flags(const core_t *c, uint32_t lin, uint32_t cr0, uint32_t cr3, uint32_t cr4);
uint32_t core_read_code(const core_t *c, uint32_t lin, uint8_t *out, uint32_t n, int user,
                        uint32_t cr0, uint32_t cr3, uint32_t cr4);

/* deliver.c */
int core_deliver(core_t *c, vregs_t *r, int vector, int has_err, uint32_t err, int software,
                 int external, ventry_t *e, vcounts_t *cnt, char *msg, size_t msglen);
int core_intr(core_t *c, vregs_t *r, int vector, ventry_t *e, vcounts_t *cnt, int64_t (*now_raw)(core_t *));
int core_shadow_gdt_ready(const core_t *c, const vregs_t *r, uint32_t shadow_root);
int core_intr_shadow_pf(core_t *c, vregs_t *R, uint32_t cr2, ventry_t *e, vcounts_t *cnt,
                        int64_t (*now_raw)(core_t *));
void core_commit(core_t *c, const vcounts_t *cnt);

/* iret.c: segs = DS, ES, FS, GS */
int core_iret(core_t *c, vregs_t *r, const uint32_t *segs, ventry_t *e);

/* hcall.c: the hypercalls completed in C.  A hypercall's inputs: what the ROM stub left in registers
 * and the CPU state the calls read (control registers as the guest sees them). */
typedef struct vcall_in {
    uint32_t eax, edx, ecx;
    uint32_t eflags, ss, gdt_base, gdt_limit;
    uint32_t cr0, cr3, cr4, cr2;
} vcall_in_t;
/* ... and what it changes in the CPU (a kernel stack override goes to core_t itself) */
typedef struct {
    int set_eax, set_eflags;
    uint32_t eax, eflags;
} vcall_out_t;
int core_hcall_site(const core_t *c, uint32_t eip, uint32_t cs, uint32_t cr0, uint32_t cr3, uint32_t cr4);
int core_state_call(core_t *c, int i, const vcall_in_t *in, vcall_out_t *out, vcounts_t *cnt,
                    int64_t (*now_raw)(core_t *));
int core_hcall_iret(core_t *c, vregs_t *R, const uint32_t *segs, ventry_t *e, vcounts_t *cnt,
                    int64_t (*now_raw)(core_t *));
/* the interrupt window (Machine._irq_first, Vmi._after_if_change): 1 when an interrupt may be due */
int core_irq_due(core_t *c, int64_t (*now_raw)(core_t *));

/* vmi2.c: the virtual interrupt flag (CORE_OK or CORE_FALLBACK; *loaded: the word was read) */
int core_vif_ok(const core_t *c);
int core_vif_load(core_t *c, vregs_t *R, int *loaded);
void core_vif_loaded(core_t *c);
void core_vif_save(core_t *c, int cpl, uint32_t eflags, uint32_t cr2);
int core_vif_iret_ok(const core_t *c, const ventry_t *e);
void core_vif_iret(core_t *c, const ventry_t *e);

/* console.c: CORE_OK (done, counted) or CORE_FALLBACK; cs/eflags: the CPU's at the instruction */
int core_console_out(core_t *c, uint32_t port, int size, uint32_t value, uint32_t cs, uint32_t eflags);
int core_console_in(core_t *c, uint32_t port, int size, uint32_t cs, uint32_t eflags, uint32_t *value);

/* mmu.c: the shadow MMU's hidden-fault fill (ShadowMMU.fault in C, see the file comment).  write: 1,
 * 0, or -1 (infer it from the shadow as the Python path does). */
int core_mmu_decide(const core_t *c, uint32_t va, int write, int user, uint32_t root_mfn, vmmu_fault_t *d);
void core_mmu_commit(core_t *c, const vmmu_fault_t *d);
/* The #PF exit under shadow paging (Machine._shadow_fault + on_interrupt's delivery of a true fault):
 * MF_HIDDEN (filled, counted in cnt), MF_TRUE (delivered: *e to enter, the guest's CR2 set) or
 * MF_PYTHON before anything changed.  R: the engine's registers (CR3 = the shadow root). */
int core_shadow_pf(core_t *c, vregs_t *R, ventry_t *e, vcounts_t *cnt, int64_t (*now_raw)(core_t *),
                   int (*gprs)(core_t *, uint32_t *), vwp_t *w);
/* FullVirt.on_wp_trap for decision d (MF_WP): an aligned 4-byte mov/xchg to exactly the trapped entry,
 * emulated into the guest entry and each shadow of it (ShadowMMU.emulated_write below FLOOD_LIMIT);
 * CORE_OK (w->eip, w->reg set; counted) or CORE_FALLBACK before anything changed. */
int core_wp_store(core_t *c, const vmmu_fault_t *d, vwp_t *w, vcounts_t *cnt);
struct vcall_in;
/* SetPxE (update 0; vmi2's: 2, its batch log flushed first) / UpdatePxE (update 1): the guest entry and each of its shadows (Vmi.set_pxe,
 * ShadowMMU.set_pxe / entry_written); CORE_OK (counted) or CORE_FALLBACK before anything changed.
 * ctl[MC_FLUSH] says the engine's TLB must be flushed before the guest runs on. */
int core_mmu_pxe(core_t *c, int update, const struct vcall_in *in, vcounts_t *cnt);
/* vmi2's batch flush (Vmi2.flush_batch after Vmi.set_lazy_mode's mode NONE when `lazy`, else after
 * FlushDeferred): every logged entry validated, then its shadows brought up to date; CORE_FALLBACK
 * (nothing changed) for an empty or bad log or anything unusual: Python then takes the exit. */
int core_v2_flush(core_t *c, int lazy, const struct vcall_in *in, vcounts_t *cnt);

/* decode.c */
int core_pf_write(const uint8_t *code, uint32_t n);   /* 1 write, 0 read, -1 unknown */
int core_pf_error(const core_t *c, const vregs_t *r, uint32_t esp_unused, uint32_t *err);

#endif
