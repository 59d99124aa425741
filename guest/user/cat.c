/* cat [file...] - copy initrd files (or stdin) to stdout. */
#include "ulib.h"

static int copy(int fd, const char *name)
{
    char buf[512];
    for (;;) {
        int n = read(fd, buf, sizeof buf);
        if (n == 0)
            return 0;
        if (n < 0) {
            dprintf(2, "cat: %s: %s\n", name, strerror(n));
            return 1;
        }
        if (write_all(1, buf, n) < 0)
            return 1;
    }
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return copy(0, "stdin");
    int rc = 0;
    for (int i = 1; i < argc; i++) {
        int fd = open(argv[i], O_RDONLY);
        if (fd < 0) {
            dprintf(2, "cat: %s: %s\n", argv[i], strerror(fd));
            rc = 1;
            continue;
        }
        rc |= copy(fd, argv[i]);
        close(fd);
    }
    return rc;
}
