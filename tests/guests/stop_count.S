/* Counter guest for the slice-stop test (tests/test_engine_slice_stop.py, docs/engine.md "An
   instruction run twice around an asynchronous stop").  Ring 0, bare, interrupts off, paging on
   (4 MiB identity-mapped through one page table): a loop of read-modify-write instructions on
   memory, counted against a register.  Each iteration does
       incl counter            +1
       addl $3, sum            +3
       xchg %edi, swap         swaps %edi (iteration number) with memory: memory keeps the last one
       decl remaining          the loop counter lives in memory: a double decrement skips one
   and %esi counts iterations.  An instruction resumed from its start after it had stored (what
   Unicorn's asynchronous uc_emu_stop did between a store and the end of its instruction) shows
   as counter/sum above %esi, %esi below ITER, or a broken swap chain.  At the end the values go to
   RESULTS (counter, sum, esi, swap chain errors) and the exit status is 0 when all are exact. */
        .set RESULTS, 0x280000
        .set ITER, 4000000

#include "multiboot.inc"

        .data
        .align 4
counter: .long 0
sum:    .long 0
swap:   .long 0
remaining: .long ITER

        .bss
        .align 4096
pd:     .space 4096
pt0:    .space 4096

        .text
        .globl _start
_start:
        cli
        mov $pt0, %edi                  /* identity map of the first 4 MiB */
        mov $3, %eax
        mov $1024, %ecx
1:      stosl
        add $0x1000, %eax
        loop 1b
        movl $pt0 + 3, pd
        mov $pd, %eax
        mov %eax, %cr3
        mov %cr0, %eax
        or $0x80000000, %eax
        mov %eax, %cr0
        xor %esi, %esi                  /* iterations done */
        xor %ebx, %ebx                  /* swap chain errors */
        xor %edi, %edi
2:      incl counter
        addl $3, sum
        lea 1(%esi), %edi
        xchg %edi, swap                 /* %edi = the previous iteration's number */
        cmp %esi, %edi
        je 3f
        inc %ebx
3:      inc %esi
        decl remaining
        jnz 2b
        mov counter, %eax
        mov %eax, RESULTS
        mov sum, %eax
        mov %eax, RESULTS + 4
        mov %esi, RESULTS + 8
        mov %ebx, RESULTS + 12
        xor %edx, %edx                  /* exit status: 0 when exact */
        cmp counter, %esi
        setne %dl
        lea (%esi,%esi,2), %eax
        cmp sum, %eax
        setne %al
        or %al, %dl
        cmp $ITER, %esi
        setne %al
        or %al, %dl
        test %ebx, %ebx
        setne %al
        or %al, %dl
        mov %edx, %eax
        mov $0xf4, %dx
        out %eax, %dx
4:      hlt
        jmp 4b
