/* ls [-l] - list the files of the initrd. */
#include "ulib.h"

int main(int argc, char **argv)
{
    int lng = argc > 1 && !strcmp(argv[1], "-l");
    struct vmirom_dirent d;
    int i, r;
    for (i = 0; (r = readdir(i, &d)) == 0; i++) {
        d.name[sizeof d.name - 1] = 0;
        if (lng)
            printf("%c%06o %8u %s\n", (d.mode & 0170000) == 0100000 ? '-' : '?', d.mode & 07777,
                   d.size, d.name);
        else
            printf("%s\n", d.name);
    }
    if (r != -ENOENT) {
        dprintf(2, "ls: %s\n", strerror(r));
        return 1;
    }
    return 0;
}
