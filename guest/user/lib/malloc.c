/* malloc.c - a first-fit free-list allocator over sbrk (K&R style, 16-byte units, coalescing). */
#include "ulib.h"

typedef union header {
    struct {
        union header *next;
        size_t units;   /* size of this block in headers, header included */
    } s;
    uint8_t align[16];
} header_t;

static header_t base;
static header_t *freep;

void free(void *p)
{
    if (!p)
        return;
    header_t *b = (header_t *)p - 1, *q;
    for (q = freep; !(b > q && b < q->s.next); q = q->s.next)
        if (q >= q->s.next && (b > q || b < q->s.next))
            break;
    if (b + b->s.units == q->s.next) {
        b->s.units += q->s.next->s.units;
        b->s.next = q->s.next->s.next;
    } else {
        b->s.next = q->s.next;
    }
    if (q + q->s.units == b) {
        q->s.units += b->s.units;
        q->s.next = b->s.next;
    } else {
        q->s.next = b;
    }
    freep = q;
}

static header_t *morecore(size_t units)
{
    if (units < 256)
        units = 256;   /* grow by >= 4 KiB */
    void *p = sbrk((int)(units * sizeof(header_t)));
    if (SYSCALL_IS_ERR(p))
        return NULL;
    header_t *h = p;
    h->s.units = units;
    free(h + 1);
    return freep;
}

void *malloc(size_t n)
{
    if (n == 0)
        n = 1;
    if (n > 0x40000000u)
        return NULL;
    size_t units = (n + sizeof(header_t) - 1) / sizeof(header_t) + 1;
    header_t *prev = freep, *p;
    if (!prev) {
        base.s.next = freep = prev = &base;
        base.s.units = 0;
    }
    for (p = prev->s.next;; prev = p, p = p->s.next) {
        if (p->s.units >= units) {
            if (p->s.units == units) {
                prev->s.next = p->s.next;
            } else {
                p->s.units -= units;
                p += p->s.units;
                p->s.units = units;
            }
            freep = prev;
            return p + 1;
        }
        if (p == freep)
            if (!(p = morecore(units)))
                return NULL;
    }
}

void *calloc(size_t n, size_t size)
{
    if (size && n > 0x40000000u / size)
        return NULL;
    void *p = malloc(n * size);
    if (p)
        memset(p, 0, n * size);
    return p;
}

void *realloc(void *p, size_t n)
{
    if (!p)
        return malloc(n);
    header_t *h = (header_t *)p - 1;
    size_t have = (h->s.units - 1) * sizeof(header_t);
    if (n <= have)
        return p;
    void *q = malloc(n);
    if (q) {
        memcpy(q, p, have);
        free(p);
    }
    return q;
}
