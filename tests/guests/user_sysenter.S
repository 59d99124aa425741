/* Issue 11, item 1 (sysenter): #UD at the sysenter itself (+0), nothing after it runs.
   it in the same block may run: the `out` to the debug-exit port would power the VM off with the
   user's status 66, the `mov %cr3` would be emulated as a kernel instruction.  Status 0: #GP seen
   at u_in from CPL 3, handled at the kernel ring; 100 + vector: anything else. */
#include "user_common.inc"
        .text
        .globl _start
_start:
        jmp setup_and_enter_user
user_main:
u_in:   sysenter
        mov $0xf4, %dx
        mov $66, %eax
        outl %eax, %dx
        mov %cr3, %eax
        mov $67, %eax
        outl %eax, %dx
        jmp .
on_trap:
        mov trap_vector, %eax
        add $100, %eax
        cmpl $6, trap_vector
        jne exit_with
        cmpl $u_in, trap_eip
        jne exit_with
        mov trap_cs, %ecx
        and $3, %ecx
        cmp $3, %ecx
        jne exit_with
        mov trap_cpl, %ecx
        cmp kring, %ecx
        jne exit_with
        xor %eax, %eax
        jmp exit_with
