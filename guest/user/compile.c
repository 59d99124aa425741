/* compile PHASE [ROUNDS] - a stand-in for one compiler phase in the `build` macro benchmark.
 * Reads all of stdin into a heap that grows with the input (sbrk through malloc/realloc, like a
 * compiler building its tables), builds a symbol table (more heap), runs ROUNDS passes of
 * integer work over the text, and writes a transformed text of the same size to stdout.
 * PHASE only names it in ps; the exit status is 0, or 1 on an I/O error. */
#include "ulib.h"

struct sym {
    uint32_t hash;
    uint32_t count;
    struct sym *next;
};

int main(int argc, char **argv)
{
    int rounds = argc > 2 ? atoi(argv[2]) : 2;
    size_t cap = 4096, len = 0;
    char *text = malloc(cap);
    if (!text)
        return 1;
    for (;;) {
        if (len == cap) {
            cap *= 2;
            char *t = realloc(text, cap);
            if (!t)
                return 1;
            text = t;
        }
        int n = read(0, text + len, cap - len);
        if (n < 0)
            return 1;
        if (n == 0)
            break;
        len += n;
    }
    /* symbol table: hash each 8-byte "token" into 256 buckets of heap-allocated nodes */
    struct sym *buckets[256] = {0};
    for (size_t i = 0; i + 8 <= len; i += 8) {
        uint32_t h = 2166136261u;
        for (int k = 0; k < 8; k++)
            h = (h ^ (uint8_t)text[i + k]) * 16777619u;
        struct sym *s = buckets[h & 255];
        while (s && s->hash != h)
            s = s->next;
        if (!s) {
            s = malloc(sizeof *s);
            if (!s)
                return 1;
            s->hash = h;
            s->count = 0;
            s->next = buckets[h & 255];
            buckets[h & 255] = s;
        }
        s->count++;
    }
    /* "optimisation passes": a rolling transform that keeps printable text printable */
    uint32_t acc = 0;
    for (int r = 0; r < rounds; r++)
        for (size_t i = 0; i < len; i++) {
            acc = acc * 31 + (uint8_t)text[i];
            char c = text[i];
            if (c >= 'a' && c <= 'z')
                text[i] = 'a' + (c - 'a' + 1 + (acc & 1)) % 26;
        }
    return write_all(1, text, len) == (int)len ? 0 : 1;
}
