/* Self-modifying code the engine must see (tests/test_engine_smc.py), at ring 0 on `bare`
   (ring1_common.inc: header, stack, puts, exit_with; its IDT is not used).
   Each check runs code, rewrites it with an ordinary guest store, runs it again and compares:
     1  same translation block: a store rewrites the immediate of an instruction two
        instructions further on in the block that is executing
     2  another page: f runs, its immediate is rewritten from this page, f runs again
     3  an alias: with 4 MiB pages mapping physical 0..4 MiB twice (X and X + 4 MiB), a store
        through the alias first makes that TLB entry a fast (dirty) one while g's page holds no
        code; then g runs (its page's first translation), is rewritten through the alias and runs
        again.  This is the case the patched engine's tlb_protect_code handles.
   Prints one line per check on COM1 and exits (port 0xf4) with 0, or with the failed check's number. */
#include "ring1_common.inc"
        .set ALIAS, 0x400000
        .text
        .globl _start
_start:
        mov $stack_top, %esp
        /* 1: same block */
        movb $0x33, 1f+1
1:      mov $0x00, %dl
        cmp $0x33, %dl
        jne fail1
        mov $msg1, %esi
        call puts
        /* 2: another page */
        call f
        cmp $0x11111111, %eax
        jne fail2
        movl $0x22222222, f+1
        call f
        cmp $0x22222222, %eax
        jne fail2
        mov $msg2, %esi
        call puts
        /* 3: an alias; paging on with two 4 MiB pages (PSE) */
        mov $pd, %edi
        movl $0x00000083, (%edi)             /* PD[0]: physical 0, present, writable, 4 MiB */
        movl $0x00000083, 4(%edi)            /* PD[1]: the same physical 4 MiB at ALIAS */
        mov %cr4, %eax
        or $0x10, %eax                       /* CR4.PSE */
        mov %eax, %cr4
        mov %edi, %cr3
        mov %cr0, %eax
        or $0x80000000, %eax
        mov %eax, %cr0
        movl $0x5a5a5a5a, g_data + ALIAS     /* the alias entry: a store while g's page has no code */
        call g
        cmp $0x44444444, %eax
        jne fail3
        movl $0x55555555, g + 1 + ALIAS      /* rewrite g through the alias */
        call g
        cmp $0x55555555, %eax
        jne fail3
        mov $msg3, %esi
        call puts
        xor %eax, %eax
        jmp exit_with
fail1:  mov $1, %eax
        jmp exit_with
fail2:  mov $2, %eax
        jmp exit_with
fail3:  mov $3, %eax
        jmp exit_with

        .align 4096
f:      mov $0x11111111, %eax
        ret
        .align 4096
g:      mov $0x44444444, %eax
        ret
        .align 16
g_data: .long 0
        .align 4096

        .data
msg1:   .asciz "smc: same block seen\n"
msg2:   .asciz "smc: other page seen\n"
msg3:   .asciz "smc: alias seen\n"
        .bss
        .align 4096
pd:     .space 4096
