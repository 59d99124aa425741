/* stdlib.c - program start, numbers, small helpers. */
#include "ulib.h"

int main(int argc, char **argv);

__attribute__((noreturn)) void __libc_start(int argc, char **argv)
{
    exit(main(argc, argv));
}

unsigned long strtoul(const char *s, char **end, int base)
{
    unsigned long v = 0;
    while (isspace(*s))
        s++;
    if (*s == '+')
        s++;
    if ((base == 0 || base == 16) && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        s += 2;
        base = 16;
    } else if (base == 0) {
        base = s[0] == '0' ? 8 : 10;
    }
    for (;; s++) {
        int d;
        if (*s >= '0' && *s <= '9')
            d = *s - '0';
        else if (*s >= 'a' && *s <= 'z')
            d = *s - 'a' + 10;
        else if (*s >= 'A' && *s <= 'Z')
            d = *s - 'A' + 10;
        else
            break;
        if (d >= base)
            break;
        v = v * base + d;
    }
    if (end)
        *end = (char *)s;
    return v;
}

long strtol(const char *s, char **end, int base)
{
    int neg = 0;
    while (isspace(*s))
        s++;
    if (*s == '-') {
        neg = 1;
        s++;
    }
    unsigned long v = strtoul(s, end, base);
    return neg ? -(long)v : (long)v;
}

int atoi(const char *s) { return (int)strtol(s, NULL, 10); }

uint64_t now_ns(void)
{
    uint64_t ns = 0;
    if (clock_ns(&ns) < 0)
        return 0;
    return ns;
}

const char *basename(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

int spawn(const char *path, char *const argv[], int fd_in, int fd_out)
{
    int pid = fork();
    if (pid != 0)
        return pid;
    if (fd_in >= 0 && fd_in != 0) {
        close(0);
        dup(fd_in);
        close(fd_in);
    }
    if (fd_out >= 0 && fd_out != 1) {
        close(1);
        dup(fd_out);
        close(fd_out);
    }
    int r = exec(path, argv);
    dprintf(2, "exec %s: %s\n", path, strerror(r));
    exit(127);
}
