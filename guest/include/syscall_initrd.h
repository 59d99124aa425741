/* syscall_initrd.h - reading the initrd (cpio "newc") for exec/open/readdir.
 *
 * Owned by "user", offered to the kernel: a small, allocation-free reader of the archive that
 * src/vmirom/guest/initrd.py writes (format described there). Header-only (static functions) so
 * the kernel just includes it; needs nothing but the compiler. It treats the archive as
 * untrusted: every size is checked against the archive's end, a malformed archive reads as
 * ending early, never as an out-of-bounds access. tests/test_user_build.py checks it against
 * archives written by initrd.py and by GNU cpio.
 *
 *   struct initrd_file f;
 *   if (initrd_find(base, size, "sh", &f) == 0) ... f.data, f.size, f.mode, f.name
 *   for (i = 0; initrd_entry(base, size, i, &f) == 0; i++) ...    (readdir)
 * Lookup ignores one leading '/' ("/sh" == "sh"), as syscall.h promises.
 */
#ifndef VMIROM_SYSCALL_INITRD_H
#define VMIROM_SYSCALL_INITRD_H

#include <stdint.h>

struct initrd_file {
    const char *name;          /* NUL-terminated, inside the archive */
    const uint8_t *data;
    uint32_t size;
    uint32_t mode;             /* st_mode: 0100755 program, 0100644 file */
};

#define INITRD_HEADER 110u

static inline int initrd_hex8(const uint8_t *p, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 8; i++) {
        uint8_t c = p[i];
        uint32_t d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v << 4 | d;
    }
    *out = v;
    return 0;
}

/* Parse the member at *off; on success fill *f, advance *off and return 0.
 * Returns 1 at the trailer, -1 on a malformed or truncated member. */
static inline int initrd_next(const uint8_t *base, uint32_t size, uint32_t *off, struct initrd_file *f)
{
    uint32_t o = *off, namesize, filesize, mode;
    if (o > size || size - o < INITRD_HEADER)
        return -1;
    const uint8_t *h = base + o;
    if (h[0] != '0' || h[1] != '7' || h[2] != '0' || h[3] != '7' || h[4] != '0' ||
        (h[5] != '1' && h[5] != '2'))
        return -1;
    if (initrd_hex8(h + 14, &mode) || initrd_hex8(h + 54, &filesize) || initrd_hex8(h + 94, &namesize))
        return -1;
    uint32_t name_off = o + INITRD_HEADER;
    if (namesize == 0 || namesize > size - name_off)
        return -1;
    const char *name = (const char *)base + name_off;
    if (name[namesize - 1] != 0)
        return -1;
    uint32_t data_off = (name_off + namesize + 3u) & ~3u;
    if (data_off > size || filesize > size - data_off)
        return -1;
    /* the trailer: "TRAILER!!!" */
    static const char trailer[] = "TRAILER!!!";
    if (namesize == sizeof trailer) {
        int i = 0;
        while (i < (int)sizeof trailer && name[i] == trailer[i])
            i++;
        if (i == (int)sizeof trailer)
            return 1;
    }
    f->name = name;
    f->data = base + data_off;
    f->size = filesize;
    f->mode = mode;
    uint32_t next = data_off + filesize;
    *off = next > size - 3 ? size : (next + 3u) & ~3u;
    return 0;
}

/* The index-th member (0-based). 0 on success, -1 past the end or on a malformed archive. */
static inline int initrd_entry(const void *archive, uint32_t size, int index, struct initrd_file *f)
{
    uint32_t off = 0;
    if (index < 0)
        return -1;
    for (int i = 0;; i++) {
        if (initrd_next((const uint8_t *)archive, size, &off, f) != 0)
            return -1;
        if (i == index)
            return 0;
    }
}

/* Find a regular file by name (one leading '/' ignored). 0 on success, -1 if absent. */
static inline int initrd_find(const void *archive, uint32_t size, const char *name, struct initrd_file *f)
{
    uint32_t off = 0;
    if (name[0] == '/')
        name++;
    while (initrd_next((const uint8_t *)archive, size, &off, f) == 0) {
        const char *a = f->name, *b = name;
        while (*a && *a == *b)
            a++, b++;
        if (*a == 0 && *b == 0 && (f->mode & 0170000) == 0100000)
            return 0;
    }
    return -1;
}

#endif /* VMIROM_SYSCALL_INITRD_H */
