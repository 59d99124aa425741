/* Hostile guest: interrupts off, spins forever. */
#include "multiboot.inc"
        .text
        .globl _start
_start:
        cli
1:      jmp 1b
