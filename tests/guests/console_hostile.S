/* Issue 11 item 4: the guest's console is data.  It prints console events whose values are rich
   markup (`[/x]` crashed `vmirom run`'s summary, other markup restyled it), 3,000 nested `[` (the
   event parser's RecursionError lost the run), raw terminal escape sequences and other control
   characters, then exits with status 0. */
#include "multiboot.inc"
        .text
        .globl _start
_start:
        mov $msg, %esi
        call puts
        mov $3000, %ecx                  /* VMIROM-JSON [[[[...  (3,000 deep) */
        mov $deep, %esi
        call puts
1:      mov $'[', %al
        call putc
        loop 1b
        mov $'\n', %al
        call putc
        mov $msg2, %esi
        call puts
        xor %eax, %eax
        mov $0xf4, %dx
        out %eax, %dx
        cli
        hlt
putc:   mov $0x3f8, %dx
        out %al, %dx
        ret
puts:   lodsb
        test %al, %al
        jz 2f
        call putc
        jmp puts
2:      ret
        .data
msg:    .ascii "VMIROM-JSON {\"event\":\"init_exit\",\"program\":\"[/x]\",\"status\":0}\n"
        .ascii "VMIROM-JSON {\"event\":\"selftest_summary\",\"passed\":\"[bold red]22[/]\",\"total\":\"[link=x]22\"}\n"
        .ascii "VMIROM-JSON {\"event\":\"vmi\",\"status\":\"bound\",\"rom\":{\"product\":\"[/bold]genuine ROM\"}}\n"
        .asciz "\033[2J\033]0;pwned\007\033[31mred text\033[0m\r\n"
deep:   .asciz "VMIROM-JSON "
msg2:   .asciz "VMIROM-JSON {\"event\":\"shutdown\",\"status\":0}\nbye\n"
