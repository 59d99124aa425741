/* Hostile guest: divides by zero with no IDT loaded: #DE -> #GP (no gate) -> #DF -> triple fault. */
        .section .multiboot, "a"
        .align 4
        .long 0x1BADB002, 0, -0x1BADB002
        .text
        .globl _start
_start:
        xor %ecx, %ecx
        div %ecx
        hlt
