/* A "classic" kernel that believes it runs at ring 0 (it never looks at CS): DPL-0 GDT, RPL-0
   selectors, ss0:esp0 in its TSS, hand-built iret frames with CS = 0x08.  Each check sets bit N of
   `fails` when it goes wrong; the guest prints one JSON line and exits with `fails` as its status. */
#include "multiboot.inc"

        .data
        .align 8
gdt:    .long 0, 0
        .long 0x0000FFFF, 0x00CF9A00     /* 0x08 kernel code, DPL 0 */
        .long 0x0000FFFF, 0x00CF9200     /* 0x10 kernel data, DPL 0 */
        .long 0x0000FFFF, 0x00CFFA00     /* 0x18 user code, DPL 3 */
        .long 0x0000FFFF, 0x00CFF200     /* 0x20 user data, DPL 3 */
        .long 0, 0                       /* 0x28 TSS, filled at run time */
gdt_end:
gdtr:   .word gdt_end - gdt - 1
        .long gdt
        .align 8
idt:    .fill 256, 8, 0
idtr:   .word 256*8-1
        .long idt
        .align 16
tss:    .fill 26, 4, 0
fails:  .long 0
vals:   .fill 16, 4, 0                   /* values reported in the JSON line */
sgdt_buf: .fill 8, 1, 0
sidt_buf: .fill 8, 1, 0
saved_esp: .long 0
user_cs: .long 0
user_err: .long 0
hexd:   .ascii "0123456789abcdef"
msg:    .ascii "VMIROM-JSON {\"event\":\"classic\",\"fails\":\""
msg_end:

        .bss
        .align 16
        .space 8192
kstack_top:
        .space 4096
ustack_top:

        .text
        .globl _start
#define FAIL(n) orl $(1 << (n)), fails
_start:
        mov $kstack_top, %esp
        /* TSS descriptor: base = tss, limit 103, type 9 */
        mov $tss, %eax
        mov %eax, %edx
        shl $16, %eax
        or $103, %eax
        mov %eax, gdt + 0x28
        mov %edx, %eax
        shr $16, %eax
        and $0xff, %eax
        mov %edx, %ecx
        and $0xff000000, %ecx
        or %ecx, %eax
        or $0x00008900, %eax
        mov %eax, gdt + 0x2c
        movl $kstack_top, tss + 4        /* esp0 */
        movl $0x10, tss + 8              /* ss0 (RPL 0): a ring-0 kernel fills only these */
        movl $104, %eax
        movw %ax, tss + 102              /* no I/O bitmap */

        lgdt gdtr
        mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss                     /* RPL 0 at CPL 1: #GP, emulated with RPL 1 */
        ljmp $0x08, $1f
1:      mov $0x28, %ax
        ltr %ax

        /* IDT: every vector -> on_trap (selector 0x08, DPL 0); int 0x80 DPL 3 */
        mov $idt, %edi
        xor %ecx, %ecx
2:      mov $on_trap, %eax
        mov %eax, %edx
        and $0xffff, %eax
        or $0x00080000, %eax
        and $0xffff0000, %edx
        or $0x8e00, %edx
        cmp $0x80, %ecx
        jne 3f
        mov $user_trap, %eax
        mov %eax, %edx
        and $0xffff, %eax
        or $0x00080000, %eax
        and $0xffff0000, %edx
        or $0xee00, %edx
3:      mov %eax, (%edi)
        mov %edx, 4(%edi)
        add $8, %edi
        inc %ecx
        cmp $256, %ecx
        jne 2b
        lidt idtr

        /* 0: cli, then pushf shows IF = 0 */
        cli
        pushf
        pop %eax
        test $0x200, %eax
        jz 1f
        FAIL(0)
1:      /* 1: sti, pushf shows IF = 1 */
        sti
        pushf
        pop %eax
        test $0x200, %eax
        jnz 1f
        FAIL(1)
1:      /* 2: popf of an image with IF = 0 clears IF (silently kept at CPL 1 without the site hook) */
        push $0x002
        popf
        pushf
        pop %eax
        test $0x200, %eax
        jz 1f
        FAIL(2)
1:      /* 3: popf of an image with IF = 1 sets it */
        push $0x202
        popf
        pushf
        pop %eax
        test $0x200, %eax
        jnz 1f
        FAIL(3)
1:      cli
        /* 4: a hand-built same-ring iret frame with CS = 0x08 (RPL 0) and IF = 1 */
        push $0x202
        push $0x08
        push $4f
        iret
        FAIL(4)
4:      pushf
        pop %eax
        test $0x200, %eax
        jnz 1f
        FAIL(4)
1:      cli
        /* 5: smsw gives CR0's low word with PE */
        smsw %ax
        movzwl %ax, %eax
        mov %eax, vals + 0
        test $1, %eax
        jnz 1f
        FAIL(5)
1:      /* 6: sgdt/sidt give the tables this kernel loaded */
        sgdt sgdt_buf
        cmpw $(gdt_end - gdt - 1), sgdt_buf
        jne 5f
        cmpl $gdt, sgdt_buf + 2
        jne 5f
        sidt sidt_buf
        cmpw $(256*8-1), sidt_buf
        jne 5f
        cmpl $idt, sidt_buf + 2
        je 1f
5:      FAIL(6)
1:      /* 7: str gives 0x28 */
        xor %eax, %eax
        str %ax
        mov %eax, vals + 4
        cmp $0x28, %eax
        je 1f
        FAIL(7)
1:      /* 8: mov %cr3 round trip (trap-and-emulate) */
        mov $0x1234000, %eax
        mov %eax, %cr3
        mov %cr3, %ebx
        cmp %eax, %ebx
        je 1f
        FAIL(8)
1:      /* 9: to ring 3 and back through int 0x80: the CPU switches to ss0:esp0 of this TSS */
        mov %esp, saved_esp
        push $0x23
        push $ustack_top
        push $0x202
        push $0x1b
        push $user_code
        iret
back_from_user:
        mov saved_esp, %esp
        mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        mov user_cs, %eax
        mov %eax, vals + 8
        and $0xfffc, %eax
        cmp $0x18, %eax
        je 1f
        FAIL(9)
1:      /* 10: the user-mode cli faulted with #GP(0) */
        mov user_err, %eax
        mov %eax, vals + 12
        cmp $0x0d, %eax
        je 1f
        FAIL(10)
1:      /* report */
        mov $msg, %esi
        mov $(msg_end - msg), %ecx
        call puts
        mov fails, %eax
        call puthex
        mov $'"', %al
        call putc
        mov $'}', %al
        call putc
        mov $'\n', %al
        call putc
        mov fails, %eax
        mov $0xf4, %dx
        out %eax, %dx
        cli
        hlt

user_code:                               /* ring 3: a privileged instruction, then int 0x80 */
        mov $0x23, %ax
        mov %ax, %ds
        cli                              /* #GP(0) -> on_trap records it and resumes after it */
        int $0x80

on_trap:                                 /* vector in the low byte of user_err, via the pushed error */
        /* frame: err, eip, cs, eflags, esp, ss (from ring 3) */
        push %eax
        mov 4(%esp), %eax                /* error code */
        shl $8, %eax
        or $0x0d, %eax
        mov %eax, %ss:user_err
        addl $1, 8(%esp)                 /* step over the 1-byte cli */
        pop %eax
        add $4, %esp                     /* drop the error code */
        iret

user_trap:
        mov 4(%esp), %eax                /* saved CS */
        mov %eax, %ss:user_cs
        jmp back_from_user

puts:   lodsb
        call putc
        loop puts
        ret
putc:   push %edx
        mov $0x3f8, %dx
        out %al, %dx
        pop %edx
        ret
puthex: mov %eax, %ebx
        mov $8, %ecx
1:      rol $4, %ebx
        mov %ebx, %eax
        and $15, %eax
        mov hexd(%eax), %al
        call putc
        loop 1b
        ret
