/* readline.c - line input on the raw console: echo, backspace, Ctrl-U, Ctrl-D.
 * The kernel's console does no line discipline (syscall.h), so this is where typing is
 * made visible. Enter arrives as '\r' from a terminal or '\n' from a pipe; "\r\n" counts once. */
#include "ulib.h"

static int last_was_cr;

int readline(const char *prompt, char *buf, int size)
{
    int n = 0;
    if (prompt)
        fputs(1, prompt);
    for (;;) {
        char c;
        int r = read(0, &c, 1);
        if (r < 0)
            return r;
        if (r == 0) {
            if (n == 0)
                return -1;
            break;
        }
        if (c == '\n' && last_was_cr) {
            last_was_cr = 0;
            continue;
        }
        last_was_cr = (c == '\r');
        if (c == '\r' || c == '\n') {
            write(1, "\n", 1);
            break;
        }
        if (c == 0x04) {          /* Ctrl-D */
            if (n == 0)
                return -1;
            continue;
        }
        if (c == 0x7f || c == 0x08) {
            if (n > 0) {
                n--;
                write(1, "\b \b", 3);
            }
            continue;
        }
        if (c == 0x15) {          /* Ctrl-U */
            while (n > 0) {
                n--;
                write(1, "\b \b", 3);
            }
            continue;
        }
        if ((unsigned char)c < 0x20 && c != '\t')
            continue;
        if (n < size - 1) {
            buf[n++] = c;
            write(1, &c, 1);
        }
    }
    buf[n] = 0;
    return n;
}
