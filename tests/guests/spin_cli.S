/* Hostile guest: interrupts off, spins forever. */
        .section .multiboot, "a"
        .align 4
        .long 0x1BADB002, 0, -0x1BADB002
        .text
        .globl _start
_start:
        cli
1:      jmp 1b
