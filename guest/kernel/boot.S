/* boot.S - Multiboot v1 entry.
 *
 * The loader enters at the *physical* address of _start with paging off, EAX = Multiboot magic,
 * EBX = physical address of the Multiboot info, flat segments at ring 0 (hardware, QEMU) or
 * ring 1 (a de-privileging VMM).  We zero .bss, build a boot page directory that maps the first
 * 16 MiB both at 0 (identity, so this code keeps running) and at KERNBASE, turn paging on and jump
 * to the higher half.  vm.c replaces this map with the real one once the VMI ROM is bound.
 * The privileged instructions here (mov to CR3/CR0) run before any ROM is known: at ring 1 they
 * trap and the VMM emulates them.
 */
#include "multiboot.h"

#define KERNBASE 0xC0000000
#define BOOT_MAP_TABLES 4               /* 4 page tables = 16 MiB */
#define V2P(x) ((x) - KERNBASE)

    .section .multiboot, "a"
    .align 4
mb_header:
    .long MB_HEADER_MAGIC
    .long MB_HEADER_FLAGS
    .long -(MB_HEADER_MAGIC + MB_HEADER_FLAGS)

    .section .text.boot, "ax"
    .globl _start
_start:
    movl %eax, %esi                     /* Multiboot magic */
    /* EBX (Multiboot info, physical) is kept untouched until kmain */

    /* zero .bss (the loader should have, but be sure) */
    movl $V2P(_bss_start), %edi
    movl $V2P(_bss_end), %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    cld
    rep stosl

    /* boot page tables: identity entries for the first 16 MiB */
    movl $V2P(boot_pt), %edi
    movl $(0x000 | 0x003), %eax         /* present | writable */
    movl $(1024 * BOOT_MAP_TABLES), %ecx
1:  movl %eax, (%edi)
    addl $4096, %eax
    addl $4, %edi
    loop 1b

    /* boot page directory: the same tables at PDE 0.. and at PDE 768.. */
    movl $V2P(boot_pgdir), %edi
    movl $(V2P(boot_pt) + 0x003), %eax
    xorl %ecx, %ecx
2:  movl %eax, (%edi,%ecx,4)
    movl %eax, 768*4(%edi,%ecx,4)
    addl $4096, %eax
    incl %ecx
    cmpl $BOOT_MAP_TABLES, %ecx
    jne 2b

    movl $V2P(boot_pgdir), %eax
    movl %eax, %cr3
    movl %cr0, %eax
    orl $0x80000000, %eax               /* PG */
    movl %eax, %cr0

    movl $high, %eax
    jmp *%eax

    .text
high:
    movl $boot_stack_top, %esp
    xorl %ebp, %ebp                     /* end of the frame chain */
    /* kmain(magic, mbi_pa) - plain cdecl */
    pushl %ebx
    pushl %esi
    call kmain
3:  jmp 3b

    .section .bss.pagealigned, "aw", @nobits
    .align 4096
    .globl boot_pgdir
boot_pgdir:
    .skip 4096
boot_pt:
    .skip 4096 * BOOT_MAP_TABLES
    .globl boot_stack, boot_stack_top
boot_stack:
    .skip 16384
boot_stack_top:
