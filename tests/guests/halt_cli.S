/* Hostile guest: interrupts off, then halt: nothing can ever wake it. */
#include "multiboot.inc"
        .text
        .globl _start
_start:
        cli
        hlt
        jmp _start
