/* file.c - open files: the console, pipes, read-only initrd files. */
#include "kernel.h"
#include "proc.h"
#include "pv.h"
#include "syscall.h"

static struct file ftable[NFILE];
static int console_chan;

#define PIPESIZE (PGSIZE - 16)
struct pipe {
    u32 nread, nwrite;
    int readopen, writeopen;
    u8 data[PIPESIZE];
};

struct file *file_alloc(void)
{
    for (int i = 0; i < NFILE; i++)
        if (ftable[i].ref == 0) {
            memset(&ftable[i], 0, sizeof ftable[i]);
            ftable[i].ref = 1;
            return &ftable[i];
        }
    return 0;
}

struct file *file_dup(struct file *f)
{
    f->ref++;
    return f;
}

void file_close(struct file *f)
{
    if (--f->ref > 0)
        return;
    if (f->type == FD_PIPE) {
        struct pipe *pp = f->pipe;
        if (f->writable) {
            pp->writeopen = 0;
            wakeup(&pp->nread);
        } else {
            pp->readopen = 0;
            wakeup(&pp->nwrite);
        }
        if (!pp->readopen && !pp->writeopen)
            kfree(pp);
    }
    f->type = FD_NONE;
}

int pipe_alloc(struct file **r, struct file **w)
{
    struct pipe *pp = kalloc();
    if (!pp)
        return -ENOMEM;
    *r = file_alloc();
    *w = *r ? file_alloc() : 0;
    if (!*w) {
        if (*r)
            (*r)->ref = 0;
        kfree(pp);
        return -EMFILE;
    }
    pp->readopen = pp->writeopen = 1;
    (*r)->type = (*w)->type = FD_PIPE;
    (*r)->pipe = (*w)->pipe = pp;
    (*r)->readable = 1;
    (*w)->writable = 1;
    return 0;
}

void console_intr_wakeup(void)
{
    wakeup(&console_chan);
}

static int console_read(u32 uva, u32 n)
{
    int c;
    while ((c = uart_getc()) < 0) {
        if (curproc->killed)
            return -EINTR;
        sleep_on(&console_chan);
    }
    char buf[128];
    u32 got = 0;
    if (n > sizeof buf)
        n = sizeof buf;
    buf[got++] = c;
    while (got < n && (c = uart_getc()) >= 0)
        buf[got++] = c;
    if (copyout(curproc, uva, buf, got) < 0)
        return -EFAULT;
    return got;
}

static int console_write_user(u32 uva, u32 n)
{
    char buf[256];
    u32 done = 0;
    while (done < n) {
        u32 chunk = n - done < sizeof buf ? n - done : sizeof buf;
        if (copyin(curproc, buf, uva + done, chunk) < 0)
            return done ? (int)done : -EFAULT;
        console_write(buf, chunk);
        done += chunk;
    }
    return done;
}

static int pipe_read(struct pipe *pp, u32 uva, u32 n)
{
    while (pp->nread == pp->nwrite && pp->writeopen) {
        if (curproc->killed)
            return -EINTR;
        sleep_on(&pp->nread);
    }
    u32 done = 0;
    while (done < n && pp->nread != pp->nwrite) {
        u32 at = pp->nread % PIPESIZE;
        u32 chunk = pp->nwrite - pp->nread;
        if (chunk > PIPESIZE - at)
            chunk = PIPESIZE - at;
        if (chunk > n - done)
            chunk = n - done;
        if (copyout(curproc, uva + done, pp->data + at, chunk) < 0)
            return done ? (int)done : -EFAULT;
        pp->nread += chunk;
        done += chunk;
    }
    wakeup(&pp->nwrite);
    return done;
}

static int pipe_write(struct pipe *pp, u32 uva, u32 n)
{
    u32 done = 0;
    while (done < n) {
        if (!pp->readopen)
            return done ? (int)done : -EPIPE;
        if (curproc->killed)
            return done ? (int)done : -EINTR;
        if (pp->nwrite - pp->nread == PIPESIZE) {
            wakeup(&pp->nread);
            sleep_on(&pp->nwrite);
            continue;
        }
        u32 at = pp->nwrite % PIPESIZE;
        u32 chunk = PIPESIZE - (pp->nwrite - pp->nread);
        if (chunk > PIPESIZE - at)
            chunk = PIPESIZE - at;
        if (chunk > n - done)
            chunk = n - done;
        if (copyin(curproc, pp->data + at, uva + done, chunk) < 0)
            return done ? (int)done : -EFAULT;
        pp->nwrite += chunk;
        done += chunk;
    }
    wakeup(&pp->nread);
    return done;
}

int file_read(struct file *f, u32 uva, u32 n)
{
    if (!f->readable)
        return -EBADF;
    if (n == 0)
        return check_user(curproc, uva, 0, 1);
    switch (f->type) {
    case FD_CONSOLE:
        return console_read(uva, n);
    case FD_PIPE:
        return pipe_read(f->pipe, uva, n);
    case FD_INITRD: {
        if (f->off >= f->ifile.size)
            return 0;
        u32 left = f->ifile.size - f->off;
        if (n > left)
            n = left;
        if (copyout(curproc, uva, f->ifile.data + f->off, n) < 0)
            return -EFAULT;
        f->off += n;
        return n;
    }
    default:
        return -EBADF;
    }
}

int file_write(struct file *f, u32 uva, u32 n)
{
    if (!f->writable)
        return -EBADF;
    if (check_user(curproc, uva, n, 0) < 0)
        return -EFAULT;
    switch (f->type) {
    case FD_CONSOLE:
        return console_write_user(uva, n);
    case FD_PIPE:
        return pipe_write(f->pipe, uva, n);
    default:
        return -EBADF;
    }
}
