/* A ring-0 kernel (bare, hwassist) loads TR with a NULL selector - real CPUs raise #GP, Unicorn
   empties TR - and a user program then calls through an inner-privilege call gate: Unicorn's
   get_ss_esp_from_tss calls cpu_abort ("invalid tss") and the VM process dies with SIGABRT.  Not
   preventable from outside the engine (both steps run natively at ring 0 / ring 3, no exit between
   them): the parent must report it as engine_crash, cleanly.  On ring-1 personalities the `ltr`
   traps and is refused (#GP) and the run ends in a triple fault.  docs/security.md, "Known gaps". */
#include "user_common.inc"
        .text
        .globl _start
_start:
        movl $1, no_tr
        xor %eax, %eax
        ltr %ax                          /* null selector: real CPUs #GP, QEMU empties TR */
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
