/* vmi_site.h - inline VMI call sites.
 *
 * A call site holds the native instruction(s) of a privileged operation, padded with NOPs to
 * at least VMI_SITE_MIN_CALL_LENGTH bytes so that a `call rel32` / `jmp rel32` fits, and is
 * recorded in the ELF section VMI_SITE_SECTION (".vmi_sites") as a struct vmi_site
 * {call, length, clobbers, flags, address} (layout: vmi_abi.h).  At boot, vmi.c rewrites each
 * site from the ROM's get_reloc answer; with no ROM the bytes stay as compiled.
 *
 * Usable from C (VMI_SITE_ASM string, inside asm volatile) and from .S files (VMI_SITE macro).
 */
#ifndef VMI_SITE_H
#define VMI_SITE_H

#include "vmi_abi.h"

/* Kernel-private meaning of vmi_site.flags. */
#define VMI_SITE_F_NORETURN 0x01   /* the native code never falls through (iret): JUMP_REL is fine */

#define VMI__STR(x) #x
#define VMI_STR(x) VMI__STR(x)

/* VMI_SITES=0 (`make native`, build/kernel-native.elf): the same source compiled WITHOUT call
 * sites - each site is the bare native instruction, no NOP padding, no .vmi_sites record - so the
 * cost of the sites themselves can be measured (docs/performance.md).  The default is 1. */
#ifndef VMI_SITES
#define VMI_SITES 1
#endif

#if !VMI_SITES
#ifndef __ASSEMBLER__
#define VMI_SITE_ASM(native, call, clobbers, flags) native "\n"
#define VMI_SITE(native, name, flags) native "\n"
#else
#define VMI_SITE_BEGIN
#define VMI_SITE_END(name, flags)
#endif
#elif !defined(__ASSEMBLER__)

/* The asm text of one site.  `native` is AT&T text; it must be at most 5 bytes long (the
 * assembler fails on a negative .skip otherwise).  Operands are referenced by the caller. */
#define VMI_SITE_ASM(native, call, clobbers, flags)                                  \
    "661:\n\t" native "\n"                                                           \
    "662:\n\t.skip " VMI_STR(VMI_SITE_MIN_CALL_LENGTH) " - (662b - 661b), 0x90\n"   \
    "663:\n\t.pushsection " VMI_SITE_SECTION ", \"a\"\n\t"                           \
    ".byte " VMI_STR(call) ", 663b - 661b, " VMI_STR(clobbers) ", " VMI_STR(flags) "\n\t" \
    ".long 661b\n\t.popsection\n"

/* Shorthand: the call's clobber mask comes from the generated header. */
#define VMI_SITE(native, name, flags) \
    VMI_SITE_ASM(native, VMI_CALL_##name, VMI_CALL_##name##_CLOBBERS, flags)

#else /* __ASSEMBLER__ */

/* In .S files:  VMI_SITE_BEGIN ; native instructions ; VMI_SITE_END(Name, flags) */
#define VMI_SITE_BEGIN 661:
#define VMI_SITE_END(name, flags)                                                    \
    662: ; .skip VMI_SITE_MIN_CALL_LENGTH - (662b - 661b), 0x90 ; 663: ;             \
    .pushsection .vmi_sites, "a" ;                                                   \
    .byte VMI_CALL_##name, 663b - 661b, VMI_CALL_##name##_CLOBBERS, flags ;          \
    .long 661b ; .popsection

#endif
#endif
