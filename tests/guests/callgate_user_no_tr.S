/* Issue 11 item 3: the kernel never loads TR; a user program calls through a DPL-3 call gate to
   the kernel's code segment (an inner-privilege call: the CPU reads the new stack from the TSS).
   With the TR the engine starts with, Unicorn aborted the whole process (SIGABRT).  Now the
   machine loads a valid (all-zero) TSS before the first instruction: the gate takes #TS and the
   run ends with a clean fate (a triple fault: the #TS cannot be delivered without a stack either). */
#include "user_common.inc"
        .text
        .globl _start
_start:
        movl $1, no_tr
#ifdef NULL_TR
        xor %eax, %eax
        ltr %ax                          /* null selector: real CPUs #GP, QEMU empties TR */
#endif
        mov $ring_code, %eax             /* gate 0x30 -> kernel CS:ring_code, DPL 3 */
        mov %cs, %edx
        and $3, %edx
        or $0x08, %edx
        shl $16, %edx
        mov %eax, %ecx
        and $0xffff, %ecx
        or %ecx, %edx
        mov %edx, gdt + 0x30
        and $0xffff0000, %eax
        or $0xec00, %eax
        mov %eax, gdt + 0x34
        jmp setup_and_enter_user
user_main:
        lcall $0x33, $0
        mov $60, %eax
        jmp .
ring_code:
        mov $61, %eax
        jmp exit_with
on_trap:
        mov trap_vector, %eax
        add $30, %eax
        jmp exit_with
