/* Issue 11 item 2: the ring-K kernel builds a second TSS whose CS is a DPL-0 code segment (plain
   stores after lgdt) and jumps to it (`ljmp` to a DPL-3 TSS descriptor): Unicorn performs the
   task switch natively and a de-privileged kernel lands at CPL 0.  ring0_code tries `out` to the
   debug-exit port with status 50: the VMM must not serve it (fate privilege_violation).  At
   K = 0: status 0. */
#define KERNEL_TESTS 1
#include "user_common.inc"
        .text
on_other_trap:
        mov trap_vector, %eax
        add $30, %eax
        jmp exit_with
kernel_tests:
        call write_ring0_segments
        mov $tss2, %ecx                  /* 0x48: TSS descriptor, base tss2, limit 103, DPL 3 */
        mov %ecx, %edx
        shl $16, %edx
        or $103, %edx
        mov %edx, gdt + 0x48
        mov %ecx, %edx
        shr $16, %edx
        and $0xff, %edx
        or $0xe900, %edx
        mov %ecx, %esi
        and $0xff000000, %esi
        or %esi, %edx
        mov %edx, gdt + 0x4c
        movl $ring0_code, tss2 + 32      /* EIP */
        movl $2, tss2 + 36               /* EFLAGS */
        movl $kstack_top - 512, tss2 + 56 /* ESP */
        movl $0x40, tss2 + 72            /* ES */
        movl $0x38, tss2 + 76            /* CS */
        movl $0x40, tss2 + 80            /* SS */
        movl $0x40, tss2 + 84            /* DS */
        movl $0x40, tss2 + 88            /* FS */
        movl $0x40, tss2 + 92            /* GS */
        mov kring, %eax
        or $0x10, %eax
        mov %eax, %ds
        ljmp $0x48, $0
        mov $60, %eax
        jmp exit_with
        .data
        .align 4
tss2:   .fill 26, 4, 0
