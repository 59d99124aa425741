/* Hostile guest for the `vmi` personality: calls EVERY ROM stub that get_reloc reports as CALL_REL or
   JUMP_REL with garbage pointers and out-of-range values (two sets), skipping only Halt, Reboot and
   Shutdown (which would legitimately end the run).  Faults injected by the VMM land in on_fault and
   the loop goes on.  Exits with status 42 when it got through all of them. */
#include "ring1_common.inc"
        .data
garbage:
        .long 0xDEADBEEF, 0xFFFFFFFC, 0x7FFFFFFF, 0xFFFFFFF0, 0xCAFEBABE
        .long 0x07FFFFFE, 0xFFFFF000, 0x80000000, 0x0000FFFE, 0x00000000
target: .long 0
set:    .long 0
        .text
        .globl _start
_start:
        mov $stack_top, %esp
        call setup_idt
        movl $0, set
next_set:
        xor %esi, %esi
next_call:
        cmp $76, %esi
        jae set_done
        cmp $35, %esi                /* Halt */
        je advance
        cmp $36, %esi                /* Reboot */
        je advance
        cmp $37, %esi                /* Shutdown */
        je advance
        mov %esi, %eax
        mov $0xC0088, %ebx
        call *%ebx                   /* get_reloc: EAX = stub, DL = type */
        cmp $1, %dl
        je 1f
        cmp $2, %dl
        jne advance
1:      mov %eax, target
        mov %esp, saved_esp
        movl $advance, resume
        mov set, %edi
        imul $20, %edi
        add $garbage, %edi
        pushl 16(%edi)
        pushl 12(%edi)
        pushl 12(%edi)
        mov (%edi), %eax
        mov 4(%edi), %edx
        mov 8(%edi), %ecx
        call *target
        mov saved_esp, %esp
advance:
        inc %esi
        jmp next_call
set_done:
        incl set
        cmpl $2, set
        jb next_set
        mov $42, %eax
        jmp exit_with
