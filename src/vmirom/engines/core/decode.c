/* The #PF error code the engine does not give (Delivery.page_fault's rules): the page walk decides
 * when it can (a present, reachable, read-only page only faults on a write); otherwise the faulting
 * instruction is decoded.  The decoder knows the common data-moving and read-modify-write
 * instructions and answers exactly what vmirom.machine.decode.code_writes (capstone) answers for
 * them; anything else is "unknown" and the exit takes the Python path: pushes and calls (the stack
 * rule), string instructions, lock/rep/addr-size prefixes, system instructions, and the rotates,
 * setcc and cmpxchg (capstone calls some of their memory operands read-only, which is not what the
 * CPU does, but Python's answer is the reference).
 * tests/test_engine_core.py checks the answers against the Python rule over a corpus. */
#include "core.h"

/* 1: the memory operand is written, 0: only read (or no memory operand), -1: unknown. */
int core_pf_write(const uint8_t *code, uint32_t n) {
    uint32_t i = 0;
    for (;; i++) {
        if (i >= n) return -1;
        uint8_t p = code[i];
        if (p == 0x66 || p == 0x26 || p == 0x2E || p == 0x36 || p == 0x3E || p == 0x64 || p == 0x65) continue;
        if (p == 0x67 || p == 0xF2 || p == 0xF3 || p == 0xF0) return -1;  /* lock: invalid forms #UD */
        break;
    }
    uint8_t op = code[i++];
#define MODRM()                      \
    do {                             \
        if (i >= n) return -1;       \
        modrm = code[i];             \
        mem = (modrm >> 6) != 3;     \
        reg = (modrm >> 3) & 7;      \
    } while (0)
    uint8_t modrm;
    int mem, reg;
    if (op < 0x40 && (op & 7) < 4 && op != 0x0F) {  /* ALU ops: r/m dest (0,1) or source (2,3) */
        MODRM();
        if ((op & 7) >= 2 || (op >> 3) == 7) return 0;  /* reg dest, or cmp */
        return mem;
    }
    switch (op) {
    case 0x69: case 0x6B: case 0x84: case 0x85: case 0x8A: case 0x8B: case 0x8E:
        MODRM();
        return 0;
    case 0x86: case 0x87: case 0x88: case 0x89:
        MODRM();
        return mem;
    case 0x8C:  /* mov r/m16, sreg: sreg 6 and 7 do not exist */
        MODRM();
        return reg <= 5 ? mem : -1;
    case 0x80: case 0x81: case 0x83:
        MODRM();
        return reg == 7 ? 0 : mem;
    case 0xA0: case 0xA1:
        return 0;
    case 0xA2: case 0xA3:
        return 1;
    case 0xC0: case 0xC1: case 0xD0: case 0xD1: case 0xD2: case 0xD3:
        /* shl/shr/sar write; the rotates are left to Python (capstone reports their memory operand
         * as read-only, and the Python rule is the reference) */
        MODRM();
        return (reg == 4 || reg == 5 || reg == 7) ? mem : -1;
    case 0xC6: case 0xC7:
        MODRM();
        return reg == 0 ? mem : -1;
    case 0xF6: case 0xF7:
        MODRM();
        if (reg == 1) return -1;
        return (reg == 2 || reg == 3) ? mem : 0;
    case 0xFE:
        MODRM();
        return reg <= 1 ? mem : -1;
    case 0xFF:
        MODRM();
        if (reg <= 1) return mem;
        if (reg == 4 || reg == 5) return 0;
        return -1;  /* call (a push), push */
    case 0x0F:
        break;
    default:
        return -1;
    }
    if (i >= n) return -1;
    uint8_t op2 = code[i++];
    if (op2 >= 0x40 && op2 <= 0x4F) {  /* cmovcc */
        MODRM();
        return 0;
    }
    switch (op2) {
    case 0xB6: case 0xB7: case 0xBE: case 0xBF: case 0xA3: case 0xAF:
        MODRM();
        return 0;
    case 0xAB: case 0xB3: case 0xBB: case 0xC0: case 0xC1: case 0xA4: case 0xA5:
    case 0xAC: case 0xAD:
        MODRM();
        return mem;
    case 0xBA:
        MODRM();
        if (reg == 4) return 0;
        return reg >= 5 ? mem : -1;
    default:
        return -1;
    }
#undef MODRM
}

/* Delivery.page_fault: 0 and *err, or -1 when only the Python path can tell. */
int core_pf_error(const core_t *c, const vregs_t *R, uint32_t unused, uint32_t *err) {
    (void)unused;
    const uint32_t *r = R->r;
    int user = (r[R_CS] & 3) == 3;
    uint32_t flags = core_entry_flags(c, r[R_CR2], r[R_CR0], r[R_CR3], r[R_CR4]);
    int write;
    if (flags && ((flags & PTE_US) || !user) && !(flags & PTE_RW)) {
        write = 1;
    } else {
        uint32_t eip = r[R_EIP];
        if ((eip & 0xFFF) + 16 > 0x1000) return -1;  /* Paging.phys would refuse: Python reads it */
        uint64_t pa;
        vfault_t f;
        if (core_translate(c, eip, 0, user, r[R_CR0], r[R_CR3], r[R_CR4], &pa, &f)) return -1;
        if (pa + 16 > c->mem.size) return -1;
        write = core_pf_write(c->mem.ram + pa, 16);
        if (write < 0) return -1;
    }
    *err = (flags ? PFERR_P : 0) | (write ? PFERR_W : 0) | (user ? PFERR_U : 0);
    return 0;
}
