/* Hostile guest: interrupts off, then halt: nothing can ever wake it. */
        .section .multiboot, "a"
        .align 4
        .long 0x1BADB002, 0, -0x1BADB002
        .text
        .globl _start
_start:
        cli
        hlt
        jmp _start
