/* Issue 11 item 6: code the VMM writes into guest RAM over already-run code must be re-translated.
   `f` (mov $1,%al; ret) runs once; the kernel then has the VMM itself overwrite it through the
   vmi ROM's SetPxE call (value 0x90C307B0 = mov $7,%al; ret; nop) and calls it again.  Status 0:
   the new code ran; 1 - 7 (= 0xfa): the engine ran its stale translation of the old bytes. */
#include "ring1_common.inc"
        .text
        .globl _start
_start:
        mov $stack_top, %esp
        call setup_idt
        call f
        mov $38, %eax                    /* SetPxE */
        mov $0xC0088, %ebx
        call *%ebx                       /* get_reloc: EAX = stub */
        mov %eax, %ebx
        mov $0x90C307B0, %eax            /* value */
        mov $f, %edx                     /* pointer */
        call *%ebx
        call f
        movzbl %al, %eax
        sub $7, %eax
        jmp exit_with
        .balign 16
f:      .byte 0xB0, 0x01, 0xC3, 0x90
