/* Hostile guest: writes into the VMI ROM (physical 0xC0000 + 0x100, paging off). */
#include "multiboot.inc"
        .text
        .globl _start
_start:
        movl $0x12345678, 0xC0100
        xor %eax, %eax
        mov $0xf4, %dx
        out %eax, %dx
        hlt
