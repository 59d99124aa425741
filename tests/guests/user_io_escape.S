/* Issue 11, item 1: a user program's refused `in` must fault AT the instruction, and nothing after
   it in the same block may run: the `out` to the debug-exit port would power the VM off with the
   user's status 66, the `mov %cr3` would be emulated as a kernel instruction.  Status 0: #GP seen
   at u_in from CPL 3, handled at the kernel ring; 100 + vector: anything else. */
#ifndef FAULTING_INSN
#define FAULTING_INSN inb $0x80, %al
#define FAULT_VECTOR 13
#endif
#include "user_common.inc"
        .text
        .globl _start
_start:
        jmp setup_and_enter_user
user_main:
u_in:   FAULTING_INSN
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
        cmpl $FAULT_VECTOR, trap_vector
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
