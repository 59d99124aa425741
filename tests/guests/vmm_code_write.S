/* Code written by the VMM must be seen (tests/test_engine_smc.py), on `vmi` (ring 1).
   f runs, then the guest asks the VMM to write "a descriptor" over f's first 8 bytes through the
   ROM's WriteGDTEntry (table = f, index 0): the bytes are `mov $0x22222222, %eax; mov $0x22, %cl; ret`.
   A VMM write is no guest store, so no engine sees it by itself: the VMM must drop the stale
   translation of f.  Exit status 0 when the second call of f returns the new value, 1 if the
   old code ran again, 2 if the first call was wrong. */
#include "ring1_common.inc"
        .text
        .globl _start
_start:
        mov $stack_top, %esp
        call f
        cmp $0x11111111, %eax
        jne bad_first
        mov $11, %eax                        /* WriteGDTEntry */
        mov $0xC0088, %ebx
        call *%ebx                           /* get_reloc: EAX = the stub */
        mov %eax, %ebx
        push $0xc322b122                     /* hi: 22 b1 22 c3 (access byte b1: a valid DPL-1 data
                                                descriptor, which the VMM's descriptor rules accept
                                                unchanged, docs/security.md) */
        mov $f, %eax                         /* table */
        xor %edx, %edx                       /* index 0 */
        mov $0x222222b8, %ecx                /* lo: b8 22 22 22 */
        call *%ebx
        add $4, %esp
        call f
        cmp $0x22222222, %eax
        jne stale
        mov $msg, %esi
        call puts
        xor %eax, %eax
        jmp exit_with
bad_first:
        mov $2, %eax
        jmp exit_with
stale:  mov $1, %eax
        jmp exit_with
        .align 4096
f:      mov $0x11111111, %eax
        ret
        nop
        nop
        .align 4096
        .data
msg:    .asciz "vmm code write seen\n"
