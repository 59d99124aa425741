/* Page-fault guest (ring 0, bare): identity-maps 4 MiB with one not-present page (0x300000), one
   read-only user page (0x301000) and one supervisor-only page (0x302000), turns on paging with
   CR0.WP, then faults on purpose - three times from ring 0, four times from ring 3 (entered by
   iret through its own GDT and TSS).  The #PF handler first spins long enough for the VMM to end
   several time slices, THEN reads CR2 (a slice boundary must not change it), and records
   (CR2, error code) at RESULTS; it skips the 2-byte faulting instruction.  `int $0x80` from ring 3
   ends the test: exit status = number of faults recorded. */
        .set RESULTS, 0x280000          /* (cr2, error) pairs */
        .set NRES, 0x27fff0
        .set SPIN, 3000000

#include "multiboot.inc"

        .data
        .align 8
gdt:    .quad 0
        .quad 0x00cf9a000000ffff        /* 0x08 kernel code, DPL 0 */
        .quad 0x00cf92000000ffff        /* 0x10 kernel data */
        .quad 0x00cffa000000ffff        /* 0x18 user code, DPL 3 */
        .quad 0x00cff2000000ffff        /* 0x20 user data */
tss_desc:
        .quad 0                         /* 0x28 TSS, filled at run time */
gdt_end:
gdtr:   .word gdt_end - gdt - 1
        .long gdt
idtr:   .word 256*8-1
        .long idt

        .bss
        .align 4096
pd:     .space 4096
pt0:    .space 4096
idt:    .space 256*8
tss:    .space 104
        .align 16
        .space 4096
kstack_top:
        .space 4096
ustack_top:

        .text
        .globl _start
_start:
        cli
        lgdt gdtr
        ljmp $0x08, $1f
1:      mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov %ax, %fs
        mov %ax, %gs
        mov $kstack_top, %esp
        movl $0, NRES

        /* TSS: ring-0 stack for faults from ring 3 */
        movl $kstack_top, tss+4
        movl $0x10, tss+8
        mov $tss, %eax
        mov %eax, %edx
        shl $16, %eax
        or $103, %eax                   /* limit 103, base 15:0 */
        mov %eax, tss_desc
        mov %edx, %eax
        shr $16, %eax
        and $0xff, %eax                 /* base 23:16 */
        mov %edx, %ecx
        and $0xff000000, %ecx           /* base 31:24 */
        or %ecx, %eax
        or $0x8900, %eax                /* present, 32-bit available TSS */
        mov %eax, tss_desc+4
        mov $0x28, %ax
        ltr %ax

        /* IDT: #PF (DPL 0) and int $0x80 (DPL 3), interrupt gates to selector 0x08 */
        mov $pf_handler, %eax
        mov $14, %ebx
        mov $0x8e00, %ecx
        call set_gate
        mov $done, %eax
        mov $0x80, %ebx
        mov $0xee00, %ecx
        call set_gate
        lidt idtr

        /* page table: identity, user + writable, except the three test pages */
        mov $pt0, %edi
        xor %ecx, %ecx
2:      mov %ecx, %eax
        shl $12, %eax
        or $7, %eax
        mov %eax, (%edi,%ecx,4)
        inc %ecx
        cmp $1024, %ecx
        jne 2b
        movl $0, pt0 + 0x300*4                  /* not present */
        movl $0x301000 | 5, pt0 + 0x301*4       /* present, read-only, user */
        movl $0x302000 | 3, pt0 + 0x302*4       /* present, writable, supervisor */
        mov $pt0, %eax
        or $7, %eax
        mov %eax, pd
        mov $pd, %eax
        mov %eax, %cr3
        mov %cr0, %eax
        or $0x80010000, %eax            /* PG | WP */
        mov %eax, %cr0

        /* ring 0: read not-present (0), write not-present (2), write read-only with WP (3) */
        mov $0x300000, %esi
        .byte 0x8b, 0x06                /* mov (%esi), %eax */
        mov $0x300010, %esi
        .byte 0x89, 0x06                /* mov %eax, (%esi) */
        mov $0x301020, %esi
        .byte 0x89, 0x06

        /* to ring 3 */
        pushl $0x23
        pushl $ustack_top
        pushl $0x002
        pushl $0x1b
        pushl $user
        iret
user:
        mov $0x23, %ax
        mov %ax, %ds
        mov %ax, %es
        /* ring 3: read not-present (4), write read-only (7), read supervisor (5), write supervisor (7) */
        mov $0x300030, %esi
        .byte 0x8b, 0x06
        mov $0x301040, %esi
        .byte 0x89, 0x06
        mov $0x302050, %esi
        .byte 0x8b, 0x06
        mov $0x302060, %esi
        .byte 0x89, 0x06
        int $0x80

done:   mov $0x10, %ax
        mov %ax, %ds
        mov NRES, %eax
        mov $0xf4, %dx
        out %eax, %dx
        cli
        hlt

/* %eax = handler, %ebx = vector, %ecx = type/DPL bits */
set_gate:
        mov %eax, %edx
        and $0xffff, %edx
        or $0x00080000, %edx
        mov %edx, idt(,%ebx,8)
        and $0xffff0000, %eax
        or %ecx, %eax
        mov %eax, idt+4(,%ebx,8)
        ret

pf_handler:                             /* stack: error, eip, cs, eflags[, esp, ss] */
        push %eax
        push %ecx
        push %edx
        push %ds
        mov $0x10, %ax
        mov %ax, %ds
        mov $SPIN, %ecx                 /* let the VMM end a few slices before CR2 is read */
3:      dec %ecx
        jnz 3b
        mov %cr2, %eax
        mov NRES, %ecx
        mov %eax, RESULTS(,%ecx,8)
        mov 16(%esp), %edx              /* error code */
        mov %edx, RESULTS+4(,%ecx,8)
        incl NRES
        addl $2, 20(%esp)               /* skip the 2-byte faulting instruction */
        pop %ds
        pop %edx
        pop %ecx
        pop %eax
        add $4, %esp
        iret
