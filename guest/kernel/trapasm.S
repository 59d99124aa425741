/* trapasm.S - interrupt and exception entry and the return to the interrupted context.
 * Every vector pushes (a dummy error code and) its number, then alltraps builds a struct
 * trapframe (mmu.h) and calls trap(tf).  The return is an inline VMI IRET site. */
#include "vmi_site.h"

/* vectors with a CPU-pushed error code */
#define HAS_ERR(n) ((n) == 8 || ((n) >= 10 && (n) <= 14) || (n) == 17 || (n) == 21)

    .text
    .macro vector n
    .align 4
vector\n:
    .if !(\n == 8 || (\n >= 10 && \n <= 14) || \n == 17 || \n == 21)
    pushl $0
    .endif
    pushl $\n
    jmp alltraps
    .endm

    .altmacro
    .set i, 0
    .rept 256
    vector %i
    .set i, i + 1
    .endr

    .globl alltraps
alltraps:
    pushl %ds
    pushl %es
    pushl %fs
    pushl %gs
    pushal
    movl %ss:kernel_ds, %eax
    movw %ax, %ds
    movw %ax, %es
    pushl %esp
    call trap
    addl $4, %esp
    .globl trapret
trapret:
    popal
    popl %gs
    popl %fs
    popl %es
    popl %ds
    addl $8, %esp                       /* trapno, error code */
    VMI_SITE_BEGIN
    iret
    VMI_SITE_END(IRET, VMI_SITE_F_NORETURN)

    .macro vecaddr n
    .long vector\n
    .endm

    .section .rodata
    .align 4
    .globl trap_vectors
trap_vectors:
    .set i, 0
    .rept 256
    vecaddr %i
    .set i, i + 1
    .endr
