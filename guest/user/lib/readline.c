/* readline.c - line input on the raw console: echo, backspace, Ctrl-U, Ctrl-D, Ctrl-C.
 * The kernel's console does no line discipline (syscall.h), so this is where typing is
 * made visible. Enter arrives as '\r' from a terminal or '\n' from a pipe; "\r\n" counts once.
 * Ctrl-C abandons the line ("^C", a fresh prompt), like a Unix shell. Terminal escape
 * sequences (arrow keys, Home, Delete: ESC [ ... final, ESC O x) are swallowed whole, so a
 * stray arrow key never puts "[A" into a command. */
#include "ulib.h"

static int last_was_cr;

/* where we are in a terminal escape sequence: none, after ESC, inside "ESC [" or "ESC O" */
enum { ESC_NONE, ESC_START, ESC_CSI, ESC_SS3 };

/* Feed one byte to the escape-sequence recognizer; nonzero while the byte belongs to one. */
static int swallow_escape(int *state, char c)
{
    switch (*state) {
    case ESC_START:
        *state = c == '[' ? ESC_CSI : c == 'O' ? ESC_SS3 : ESC_NONE;
        return 1;
    case ESC_CSI:                         /* parameters 0x20-0x3f, then one final byte */
        if ((unsigned char)c < 0x20 || (unsigned char)c > 0x3f)
            *state = ESC_NONE;
        return 1;
    case ESC_SS3:
        *state = ESC_NONE;
        return 1;
    default:
        if (c == 0x1b) {
            *state = ESC_START;
            return 1;
        }
        return 0;
    }
}

int readline(const char *prompt, char *buf, int size)
{
    int n = 0, esc = ESC_NONE;
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
        if (swallow_escape(&esc, c))
            continue;
        if (c == '\n' && last_was_cr) {
            last_was_cr = 0;
            continue;
        }
        last_was_cr = (c == '\r');
        if (c == '\r' || c == '\n') {
            write(1, "\n", 1);
            break;
        }
        if (c == 0x03) {          /* Ctrl-C: drop the line, start again */
            write(1, "^C\n", 3);
            n = 0;
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
