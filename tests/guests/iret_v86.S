/* Issue 11 item 6: the kernel irets with EFLAGS.VM set.  At CPL 1 the hardware ignores VM; Unicorn
   enters virtual-8086 mode anyway.  The VMM does not virtualize V86 mode: at the first exit from
   it (the V86 code's `int $0x30` -> #GP) the run ends with fate "unsupported". */
#define KERNEL_TESTS 1
#include "user_common.inc"
        .text
on_other_trap:
        mov trap_vector, %eax
        add $30, %eax
        jmp exit_with
kernel_tests:
        movw $0x30cd, 0x70000            /* int $0x30 at 7000:0000 */
        pushl $0                         /* GS FS DS ES */
        pushl $0
        pushl $0
        pushl $0
        pushl $0x7000                    /* SS */
        pushl $0xfff0                    /* ESP */
        pushl $0x20002                   /* EFLAGS: VM */
        pushl $0x7000                    /* CS */
        pushl $0                         /* EIP */
        iret
        .data
