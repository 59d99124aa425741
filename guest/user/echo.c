/* echo [-n] args... */
#include "ulib.h"

int main(int argc, char **argv)
{
    int i = 1, nl = 1;
    if (argc > 1 && !strcmp(argv[1], "-n")) {
        nl = 0;
        i++;
    }
    char buf[1024];
    int len = 0;
    for (int first = i; i < argc; i++)
        len += snprintf(buf + len, len < (int)sizeof buf ? sizeof buf - len : 0, "%s%s",
                        i > first ? " " : "", argv[i]);
    if (len > (int)sizeof buf - 2)
        len = sizeof buf - 2;
    if (nl)
        buf[len++] = '\n';
    return write_all(1, buf, len) < 0 ? 1 : 0;
}
