/* Issue 11 item 6: the kernel turns on PAE paging.  The VMM's walker is 2-level (and VMI 3.0's
   page-table calls here are 32-bit): a de-privileged kernel's `mov %cr4` with PAE gets #GP (status
   0 after the #GP), a ring-0 kernel (native mov) is stopped at its next exit with fate
   "unsupported" instead of a bogus #PF / triple fault. */
#define KERNEL_TESTS 1
#include "user_common.inc"
        .text
on_other_trap:
        cmpl $13, trap_vector
        jne 1f
        cmpl $pae_mov, trap_eip
        jne 1f
        xor %eax, %eax
        jmp exit_with
1:      mov trap_vector, %eax
        add $30, %eax
        jmp exit_with
kernel_tests:
        mov $pd, %eax
        mov %eax, %cr3
        mov %cr4, %eax
        or $0x20, %eax
pae_mov:
        mov %eax, %cr4
        mov %cr0, %eax
        or $0x80000000, %eax
        mov %eax, %cr0
        int $0x31
        mov $70, %eax
        jmp exit_with
        .data
        .align 4096
pd:     .fill 1024, 4, 0
