/* Smallest multiboot guest: prints a line on COM1 and exits with status 0 via port 0xf4. */
#include "multiboot.inc"
        .text
        .globl _start
_start:
        mov $msg, %esi
1:      lodsb
        test %al, %al
        jz 2f
        mov $0x3f8, %dx
        out %al, %dx
        jmp 1b
2:      xor %eax, %eax
        mov $0xf4, %dx
        out %eax, %dx
        cli
        hlt
        .data
msg:    .asciz "hello from a tiny guest\n"
