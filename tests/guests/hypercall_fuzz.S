/* The hypercall fuzzer's guest (ring 1, vmi/vmi2 ROM): calls random VMI ROM entry points with random
   registers (EAX, EDX, ECX, EBX, ESI, EDI) and two random stack arguments, `ncalls` times, then
   exits with status 0.  Values are raw 32-bit randoms, small numbers, all-ones patterns or pointers
   into a scratch area.  Halt/Reboot/Shutdown are never called; the calls that can take the guest's
   own environment away (SetGDT/LDT/IDT/TR, SetCR0/3/4, IRET, SYSEXIT) only 1 time in 64.  A fault
   the VMM injects lands in on_fault and the loop goes on; after each of those environment calls the
   IDT and GDT are reloaded (lidt/lgdt: trapped and emulated, so not after every call).  The host patches `fuzzcfg` (seed, ncalls) in the ELF and reads the calls made from the
   VMM's exit counters.  Any fate is acceptable except a VMM failure (tests/test_hostile_suite.py). */
#include "ring1_common.inc"
        .data
        .align 4
fuzzcfg: .long 0x5A5AF022
seed:   .long 1
ncalls: .long 1000
done:   .long 0
rng:    .long 0
stub:   .long 0
envcall: .long 0
gdtsave: .word 0
        .long 0
envmask: .long (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 15) | (1 << 17) | (1 << 18)
        .long (1 << (33 - 32)) | (1 << (34 - 32))
        .long 0
stubs:  .fill 76, 4, 0
        .align 4096
scratch: .fill 1024, 4, 0
        .text
        .globl _start
_start:
        mov $stack_top, %esp
        call setup_idt
        sgdt gdtsave
        mov seed, %eax
        or $1, %eax
        mov %eax, rng
        xor %esi, %esi
1:      mov %esi, %eax
        mov $0xC0088, %ebx
        call *%ebx                       /* get_reloc: EAX = stub, DL = type */
        cmp $1, %dl
        je 2f
        cmp $2, %dl
        je 2f
        xor %eax, %eax
2:      mov %eax, stubs(, %esi, 4)
        inc %esi
        cmp $76, %esi
        jb 1b
        movl $0, stubs + 35 * 4          /* Halt, Reboot, Shutdown: end a run by design */
        movl $0, stubs + 36 * 4
        movl $0, stubs + 37 * 4
next:
        mov done, %eax
        cmp ncalls, %eax
        jae finished
        call rand
        xor %edx, %edx
        mov $76, %ecx
        div %ecx                         /* EDX = call number */
        mov stubs(, %edx, 4), %ebx
        test %ebx, %ebx
        jz next
        bt %edx, envmask
        jnc 3f
        call rand
        test $63, %eax
        jnz next
        movl $1, envcall
3:      mov %ebx, stub
        incl done
        mov %esp, saved_esp
        movl $after, resume
        call arg
        push %eax                        /* stack argument 1 */
        call arg
        push %eax                        /* stack argument 0 */
        call arg
        mov %eax, %ebx
        call arg
        mov %eax, %esi
        call arg
        mov %eax, %edi
        call arg
        push %eax
        call arg
        push %eax
        call arg
        mov %eax, %ecx
        pop %edx
        pop %eax
        call *stub
after:
        mov saved_esp, %esp
        cmpl $0, envcall
        je next
        movl $0, envcall
        lidt idtr
        lgdt gdtsave
        jmp next
finished:
        xor %eax, %eax
        jmp exit_with
rand:                                    /* xorshift32: EAX = next, EDX clobbered */
        mov rng, %eax
        mov %eax, %edx
        shl $13, %edx
        xor %edx, %eax
        mov %eax, %edx
        shr $17, %edx
        xor %edx, %eax
        mov %eax, %edx
        shl $5, %edx
        xor %edx, %eax
        mov %eax, rng
        ret
arg:                                     /* EAX = a fuzz value, EDX clobbered */
        call rand
        mov %eax, %edx
        shr $29, %edx
        cmp $0, %edx
        je 1f
        cmp $1, %edx
        je 2f
        cmp $2, %edx
        je 3f
        ret                              /* raw 32 bits */
1:      and $0xff, %eax                  /* small */
        ret
2:      and $0xffc, %eax                 /* a pointer into the scratch page */
        add $scratch, %eax
        ret
3:      or $0xfffff000, %eax             /* near the top */
        ret
