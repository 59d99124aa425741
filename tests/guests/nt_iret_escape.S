/* Issue 11 item 2: a task switch by `iret` with EFLAGS.NT.  The ring-K kernel writes (plain stores
   after lgdt) a DPL-0 code segment 0x38, a second TSS whose CS is 0x38, its descriptor 0x48 as
   BUSY (type 0xB) - the only kind an NT-iret may return to - and the back link of its current TSS
   = 0x48, then sets NT and executes `iret`: the CPU would load the whole state of tss2 (CS 0x38,
   CPL 0).  ring0_code tries `out` to the debug-exit port with status 50.  At K = 0 that is the
   kernel's own ring: status 0.  Under a de-privileging VMM the descriptor guard keeps TSS
   descriptors available (and DPL 0), so the `iret` takes #TS(0x48): status 40. */
#define KERNEL_TESTS 1
#include "user_common.inc"
        .text
on_other_trap:
        mov trap_vector, %eax
        add $30, %eax
        jmp exit_with
kernel_tests:
        call write_ring0_segments
        mov $tss2, %ecx                  /* 0x48: TSS descriptor, base tss2, limit 103, busy, DPL 3 */
        mov %ecx, %edx
        shl $16, %edx
        or $103, %edx
        mov %edx, gdt + 0x48
        mov %ecx, %edx
        shr $16, %edx
        and $0xff, %edx
        or $0xeb00, %edx
        mov %ecx, %esi
        and $0xff000000, %esi
        or %esi, %edx
        mov %edx, gdt + 0x4c
        movl $ring0_code, tss2 + 32      /* EIP */
        movl $2, tss2 + 36               /* EFLAGS */
        movl $kstack_top - 512, tss2 + 56 /* ESP */
        movl $0x40, tss2 + 72            /* ES */
        movl $0x38, tss2 + 76            /* CS */
        movl $0x40, tss2 + 80            /* SS */
        movl $0x40, tss2 + 84            /* DS */
        movl $0x40, tss2 + 88            /* FS */
        movl $0x40, tss2 + 92            /* GS */
        movl $0x48, tss                  /* back link of the current task */
        mov kring, %eax
        or $0x10, %eax
        mov %eax, %ds
        pushf
        orl $0x4000, (%esp)              /* NT */
        popf
        iret
        mov $60, %eax
        jmp exit_with
        .data
        .align 4
tss2:   .fill 26, 4, 0
