/* initrd.c - the initial ramdisk: a cpio "newc" archive passed as the first Multiboot module.
 * Read in place through the direct map; files are looked up by name (one leading '/' or "./"
 * ignored). */
#include "kernel.h"
#include "multiboot.h"
#include "proc.h"
#include "syscall.h"

#define MAXFILES 128

static struct initrd_file files[MAXFILES];
static char names[MAXFILES][NAME_MAX_ + 1];
static int nfiles;
extern u32 phys_end;

static u32 hex8(const u8 *s)
{
    u32 v = 0;
    for (int i = 0; i < 8; i++) {
        int c = s[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return 0xFFFFFFFF;
        v = v * 16 + d;
    }
    return v;
}

static const char *strip(const char *n)
{
    if (n[0] == '.' && n[1] == '/')
        n += 2;
    if (n[0] == '/')
        n++;
    return n;
}

void initrd_init(void)
{
    u32 start = initrd_module.start, end = initrd_module.end;
    if (!end || end <= start || end > phys_end)
        return;
    const u8 *base = P2V(start);
    u32 size = end - start, off = 0;
    while (off + 110 <= size && nfiles < MAXFILES) {
        const u8 *h = base + off;
        if (memcmp(h, "070701", 6) != 0 && memcmp(h, "070702", 6) != 0)
            break;
        u32 mode = hex8(h + 6 + 8), fsize = hex8(h + 6 + 6 * 8), namesize = hex8(h + 6 + 11 * 8);
        if (mode == 0xFFFFFFFF || fsize == 0xFFFFFFFF || namesize == 0xFFFFFFFF || namesize == 0 ||
            off + 110 + namesize > size)
            break;
        const char *name = (const char *)h + 110;
        u32 data = (off + 110 + namesize + 3) & ~3u;
        if (data + fsize > size || data + fsize < data)
            break;
        if (namesize == 11 && memcmp(name, "TRAILER!!!", 10) == 0)
            break;
        if ((mode & 0170000) == 0100000 && name[namesize - 1] == 0) {
            const char *n = strip(name);
            if (strlen(n) <= NAME_MAX_ && *n) {
                strlcpy(names[nfiles], n, sizeof names[nfiles]);
                files[nfiles].name = names[nfiles];
                files[nfiles].data = base + data;
                files[nfiles].size = fsize;
                files[nfiles].mode = mode;
                nfiles++;
            }
        }
        off = (data + fsize + 3) & ~3u;
    }
    kprintf("initrd: %u bytes, %d files\n", size, nfiles);
}

int initrd_find(const char *name, struct initrd_file *f)
{
    name = strip(name);
    for (int i = 0; i < nfiles; i++)
        if (strcmp(files[i].name, name) == 0) {
            *f = files[i];
            return 0;
        }
    return -ENOENT;
}

int initrd_index(int i, struct initrd_file *f)
{
    if (i < 0 || i >= nfiles)
        return -ENOENT;
    *f = files[i];
    return 0;
}
