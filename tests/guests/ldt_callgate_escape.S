/* Issue 11 item 2, through the LDT: the ring-K kernel writes a DPL-0 code segment 0x38 into its GDT
   and an LDT descriptor 0x50 (plain stores), loads that LDT (`lldt`: emulated for a de-privileged
   kernel), then writes a DPL-3 call gate to 0x38:ring0_code into LDT entry 0 with plain stores -
   the LDT lives in a page of its own, so only the LDT's protection can see that store - and
   calls it (`lcall $0x07`).  At K = 0 the gate leads to the kernel's own ring: status 0.  Under
   a de-privileging VMM the store of the gate is refused: #GP at the store, status 43. */
#define KERNEL_TESTS 1
#include "user_common.inc"
        .text
on_other_trap:
        mov trap_vector, %eax
        add $30, %eax
        jmp exit_with
kernel_tests:
        call write_ring0_segments
        movl $0x40, tss + 8              /* ss0: the ring-0 data segment */
        movl $kstack_top - 256, tss + 4  /* esp0 */
        mov $ldt, %ecx                   /* 0x50: LDT descriptor, base ldt, limit 4 entries, DPL 0 */
        mov %ecx, %edx
        shl $16, %edx
        or $31, %edx
        mov %edx, gdt + 0x50
        mov %ecx, %edx
        shr $16, %edx
        and $0xff, %edx
        or $0x8200, %edx
        mov %ecx, %esi
        and $0xff000000, %esi
        or %esi, %edx
        mov %edx, gdt + 0x54
        mov $0x50, %eax
        lldt %ax
        mov $ring0_code, %eax            /* LDT entry 0: call gate -> 0x38:ring0_code, DPL 3 */
        mov %eax, %edx
        and $0xffff, %edx
        or $0x00380000, %edx
        mov %edx, ldt
        and $0xffff0000, %eax
        or $0xec00, %eax
        mov %eax, ldt + 4
        mov kring, %eax
        or $0x10, %eax
        mov %eax, %ds
        lcall $0x07, $0
        mov $60, %eax
        jmp exit_with
        .data
        .balign 4096
ldt:    .fill 4, 8, 0
        .balign 4096
