/* wc - count lines, words and bytes of stdin (or initrd files). */
#include "ulib.h"

static int count(int fd, const char *name)
{
    char buf[512];
    unsigned lines = 0, words = 0, bytes = 0;
    int inword = 0;
    for (;;) {
        int n = read(fd, buf, sizeof buf);
        if (n < 0) {
            dprintf(2, "wc: %s: %s\n", name, strerror(n));
            return 1;
        }
        if (n == 0)
            break;
        bytes += n;
        for (int i = 0; i < n; i++) {
            if (buf[i] == '\n')
                lines++;
            if (isspace(buf[i]))
                inword = 0;
            else if (!inword) {
                inword = 1;
                words++;
            }
        }
    }
    printf("%u %u %u%s%s\n", lines, words, bytes, name ? " " : "", name ? name : "");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return count(0, NULL);
    int rc = 0;
    for (int i = 1; i < argc; i++) {
        int fd = open(argv[i], O_RDONLY);
        if (fd < 0) {
            dprintf(2, "wc: %s: %s\n", argv[i], strerror(fd));
            rc = 1;
            continue;
        }
        rc |= count(fd, argv[i]);
        close(fd);
    }
    return rc;
}
