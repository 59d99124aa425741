/* Issue 11 item 5: fullvirt hooks every sensitive instruction (popf/iret) of the kernel image at
   every linear address that maps it.  This kernel maps its first 4 MiB (its own image included)
   through all 1,024 page-directory entries, i.e. 1,024 aliases x 40 sites: the VMM must refuse
   (fate resource_limit) instead of installing hooks without bound. */
#include "multiboot.inc"
        .text
        .globl _start
_start:
        mov $pt, %edi                    /* pt: identity map of the first 4 MiB */
        xor %ecx, %ecx
1:      mov %ecx, %eax
        shl $12, %eax
        or $3, %eax
        mov %eax, (%edi, %ecx, 4)
        inc %ecx
        cmp $1024, %ecx
        jne 1b
        mov $pd, %edi                    /* every PDE -> pt */
        xor %ecx, %ecx
        mov $pt, %eax
        or $3, %eax
2:      mov %eax, (%edi, %ecx, 4)
        inc %ecx
        cmp $1024, %ecx
        jne 2b
        mov $pd, %eax
        mov %eax, %cr3
        mov %cr0, %eax
        or $0x80000000, %eax
        mov %eax, %cr0
        xor %eax, %eax
        mov $0xf4, %dx
        out %eax, %dx
        cli
        hlt
sites:  .rept 40                         /* never executed */
        popf
        .endr
        .bss
        .align 4096
pd:     .space 4096
pt:     .space 4096
