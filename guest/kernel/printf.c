/* printf.c - formatted output to the console, JSON helpers, panic. */
#include "kernel.h"
#include "pv.h"

struct outbuf {
    char *buf;
    size_t n, len;
};

static void put(struct outbuf *o, char c)
{
    if (o->len + 1 < o->n)
        o->buf[o->len] = c;
    o->len++;
}

static void put_num(struct outbuf *o, u64 v, int base, int upper, int width, int zero, int left, int neg)
{
    char tmp[24];
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    int i = 0;
    do {
        tmp[i++] = digits[v % base];
        v /= base;
    } while (v);
    if (neg)
        tmp[i++] = '-';
    int pad = width > i ? width - i : 0;
    if (!left && zero && neg) {       /* sign before the zeros */
        put(o, '-');
        i--;
    }
    if (!left)
        while (pad--)
            put(o, zero ? '0' : ' ');
    while (i)
        put(o, tmp[--i]);
    if (left)
        while (pad-- > 0)
            put(o, ' ');
}

int kvsnprintf(char *buf, size_t n, const char *fmt, va_list ap)
{
    struct outbuf o = { buf, n, 0 };
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(&o, *fmt);
            continue;
        }
        int zero = 0, left = 0, width = 0, lng = 0;
        fmt++;
        for (;; fmt++) {
            if (*fmt == '0') zero = 1;
            else if (*fmt == '-') left = 1;
            else break;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') {
            lng++;
            fmt++;
        }
        switch (*fmt) {
        case 'd':
        case 'i': {
            i64 v = lng >= 2 ? va_arg(ap, i64) : va_arg(ap, i32);
            put_num(&o, v < 0 ? -(u64)v : (u64)v, 10, 0, width, zero, left, v < 0);
            break;
        }
        case 'u':
        case 'x':
        case 'X': {
            u64 v = lng >= 2 ? va_arg(ap, u64) : va_arg(ap, u32);
            put_num(&o, v, *fmt == 'u' ? 10 : 16, *fmt == 'X', width, zero, left, 0);
            break;
        }
        case 'p':
            put(&o, '0');
            put(&o, 'x');
            put_num(&o, va_arg(ap, u32), 16, 0, 8, 1, 0, 0);
            break;
        case 'c':
            put(&o, (char)va_arg(ap, int));
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            int len = strlen(s);
            if (!left)
                for (int i = len; i < width; i++)
                    put(&o, ' ');
            while (*s)
                put(&o, *s++);
            if (left)
                for (int i = len; i < width; i++)
                    put(&o, ' ');
            break;
        }
        case '%':
            put(&o, '%');
            break;
        case 0:
            fmt--;
            break;
        default:
            put(&o, '%');
            put(&o, *fmt);
        }
    }
    if (n)
        buf[o.len < n ? o.len : n - 1] = 0;
    return o.len;
}

int ksnprintf(char *buf, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = kvsnprintf(buf, n, fmt, ap);
    va_end(ap);
    return r;
}

int kprintf(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int r = kvsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    console_write(buf, strnlen(buf, sizeof buf));
    return r;
}

void json_str(char *out, size_t n, const char *s)
{
    size_t o = 0;
#define EMIT(c) do { if (o + 1 < n) out[o] = (c); o++; } while (0)
    EMIT('"');
    for (; *s; s++) {
        u8 c = *s;
        if (c == '"' || c == '\\') {
            EMIT('\\');
            EMIT(c);
        } else if (c < 0x20 || c >= 0x7f) {
            const char *hx = "0123456789abcdef";
            EMIT('\\'); EMIT('u'); EMIT('0'); EMIT('0');
            EMIT(hx[c >> 4]); EMIT(hx[c & 15]);
        } else {
            EMIT(c);
        }
    }
    EMIT('"');
    if (n)
        out[o < n ? o : n - 1] = 0;
#undef EMIT
}

/* One machine-readable line: "VMIROM-JSON " + a JSON object built by the caller's format. */
void jsonline(const char *fmt, ...)
{
    char buf[1024];
    memcpy(buf, "VMIROM-JSON ", 12);
    va_list ap;
    va_start(ap, fmt);
    int r = kvsnprintf(buf + 12, sizeof buf - 14, fmt, ap);
    va_end(ap);
    size_t len = 12 + (r < (int)sizeof buf - 14 ? (size_t)r : sizeof buf - 15);
    buf[len++] = '\n';
    console_write(buf, len);
}

void panic(const char *fmt, ...)
{
    char buf[256], q[300];
    cli();
    va_list ap;
    va_start(ap, fmt);
    kvsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    kprintf("\npanic: %s\n", buf);
    json_str(q, sizeof q, buf);
    jsonline("{\"event\":\"panic\",\"reason\":%s}", q);
    shutdown(3);
}
