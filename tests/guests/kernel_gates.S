/* Issue 11 item 2, the VMM's own delivery: the kernel (at its boot ring K) runs `int $0x31`
   through a gate to a DPL-0 *conforming* code segment (0x30): the handler must run at ring K, not 0.
   Then `int $0x32` through a gate to the DPL-0 non-conforming segment 0x38: at K = 0 that is the
   kernel's own ring; at K > 0 the VMM either refuses it (#GP(0x38)) or, when it validated the GDT
   at lgdt (DPL 0 -> K, as Xen-style hypervisors do), runs the handler at ring K - never at ring 0.
   Status 0: as expected; 10 + CPL: a handler ran at the wrong ring; 40: a #GP somewhere else;
   30 + vector: an unexpected fault. */
#define KERNEL_TESTS 1
#include "user_common.inc"
        .text
on_other_trap:
        cmpl $13, trap_vector
        je gp_seen
        mov trap_vector, %eax
        add $30, %eax
        jmp exit_with
kernel_tests:
        /* plain stores after lgdt (no VMM validation sees them) */
        movl $0x0000ffff, gdt + 0x30     /* 0x30: DPL-0 conforming readable code */
        movl $0x00cf9e00, gdt + 0x34
        movl $0x0000ffff, gdt + 0x38     /* 0x38: DPL-0 code */
        movl $0x00cf9a00, gdt + 0x3c
        /* gate 0x31 -> conforming 0x30|0, gate 0x32 -> 0x38 (DPL 0), both DPL 3 interrupt gates */
        mov $conf_handler, %eax
        mov %eax, %edx
        and $0xffff, %edx
        or $0x00300000, %edx
        mov %edx, idt + 0x31 * 8
        and $0xffff0000, %eax
        or $0xee00, %eax
        mov %eax, idt + 0x31 * 8 + 4
        mov $ring0_handler, %eax
        mov %eax, %edx
        and $0xffff, %edx
        or $0x00380000, %edx
        mov %edx, idt + 0x32 * 8
        and $0xffff0000, %eax
        or $0xee00, %eax
        mov %eax, idt + 0x32 * 8 + 4
        mov kring, %eax
        or $0x10, %eax
        mov %eax, %ds
        int $0x31
after31:
        int $0x32
after32:
        xor %eax, %eax
        jmp exit_with
conf_handler:
        mov %cs, %eax
        and $3, %eax
        cmp kring, %eax
        jne 1f
        iret
1:      add $10, %eax
        jmp exit_with
ring0_handler:
        jmp conf_handler
gp_seen:
        /* the ring-0 gate refused with #GP(0x38) at the kernel ring, frame EIP = the int itself */
        mov $40, %eax
        cmpl $after31, trap_eip
        jne exit_with
        mov trap_cpl, %ecx
        cmp kring, %ecx
        jne exit_with
        xor %eax, %eax
        jmp exit_with
