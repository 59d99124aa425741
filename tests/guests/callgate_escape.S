/* Issue 11 item 2: the ring-K kernel writes (plain stores, after lgdt) a DPL-0 code segment 0x38,
   a DPL-0 data segment 0x40 and TSS.ss0 = 0x40, and a DPL-3 call gate 0x30 -> 0x38:ring0_code,
   then `lcall $0x30`.  Unicorn runs the call gate natively: on a de-privileged personality the
   CPU reaches CPL 0.  ring0_code then tries `out` to the debug-exit port with status 50 (the VMM
   must not serve it: fate privilege_violation).  At K = 0 the gate is the kernel's own ring:
   status 0.  (With NO_TR defined the kernel never loads TR: the inner-ring gate must fault, not
   abort the engine; status 0 after #TS.) */
#define KERNEL_TESTS 1
#include "user_common.inc"
        .text
on_other_trap:
        mov trap_vector, %eax
        add $30, %eax
        cmpl $10, trap_vector            /* #TS: the gate was refused before any ring change */
        jne exit_with
        xor %eax, %eax
        jmp exit_with
kernel_tests:
        call write_ring0_segments
        movl $0x40, tss + 8              /* ss0 */
        movl $kstack_top - 256, tss + 4  /* esp0 */
        mov $ring0_code, %eax            /* call gate: selector 0x38, DPL 3, type 0xC */
        mov %eax, %edx
        and $0xffff, %edx
        or $0x00380000, %edx
        mov %edx, gdt + 0x30
        and $0xffff0000, %eax
        or $0xec00, %eax
        mov %eax, gdt + 0x34
        mov kring, %eax
        or $0x10, %eax
        mov %eax, %ds
        lcall $0x30, $0
        mov $60, %eax                    /* the gate returned?! */
        jmp exit_with
