/* Hostile guest: divides by zero with no IDT loaded: #DE -> #GP (no gate) -> #DF -> triple fault. */
#include "multiboot.inc"
        .text
        .globl _start
_start:
        xor %ecx, %ecx
        div %ecx
        hlt
