/* Issue 11 item 2: the ring-K kernel writes (plain stores, after lgdt) a DPL-0 code segment 0x38,
   a DPL-0 data segment 0x40 and TSS.ss0 = 0x40, and a DPL-3 call gate 0x30 -> 0x38:ring0_code,
   then `lcall $0x30`.  Unicorn runs the call gate natively: on a de-privileged personality the
   CPU reaches CPL 0.  ring0_code then tries `out` to the debug-exit port with status 50 (the VMM
   must not serve it: fate privilege_violation).  At K = 0 the gate is the kernel's own ring:
   status 0.  (With NO_TR defined the kernel never loads TR: the inner-ring gate must fault, not
   abort the engine; status 0 after #TS.) */
#include "user_common.inc"
        .text
        .globl _start
_start:
#ifdef NO_TR
        movl $1, no_tr
#endif
        movl $step1, user_main_ptr
        jmp setup_and_enter_user
user_main:
        int $0x30
        jmp .
step1:
on_trap:
        cmpl $0x30, trap_vector
        je kernel_tests
        mov trap_vector, %eax
        add $30, %eax
        cmpl $10, trap_vector            /* #TS: the gate was refused before any ring change */
        jne exit_with
        xor %eax, %eax
        jmp exit_with
kernel_tests:
        movl $0x0000ffff, gdt + 0x38     /* DPL-0 code */
        movl $0x00cf9a00, gdt + 0x3c
        movl $0x0000ffff, gdt + 0x40     /* DPL-0 data */
        movl $0x00cf9200, gdt + 0x44
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
ring0_code:
        mov %cs, %eax
        and $3, %eax
        cmp kring, %eax
        jb 1f
        xor %eax, %eax
        jmp exit_with
1:      mov $50, %eax
        jmp exit_with
        .data
user_main_ptr: .long 0
