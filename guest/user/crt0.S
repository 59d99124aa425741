/* crt0.S - program entry for vmirom user programs.
 * The kernel enters with ESP -> [argc][argv...][NULL][NULL envp] (see syscall.h, exec). */
    .section .text.entry, "ax"
    .globl _start
_start:
    xorl %ebp, %ebp             /* outermost frame for debuggers */
    movl (%esp), %eax           /* argc */
    leal 4(%esp), %ecx          /* argv */
    andl $-16, %esp             /* SysV i386: 16-byte aligned stack at each call */
    subl $8, %esp
    pushl %ecx
    pushl %eax
    call __libc_start
    /* __libc_start never returns; trap if it does. */
1:  ud2
    jmp 1b
