/* cmdline.c - the Multiboot command line.
 *   vmi=off          ignore any VMI ROM (run native)
 *   vmi=debug        print every binding
 *   exit_after=N     shut down cleanly after N timer ticks
 *   init=PROGRAM     the first user program (issue 5)
 * Unknown words are ignored (the loader may put the kernel's path first). */
#include "kernel.h"

struct cmdline cmdline;

static int word_is(const char *w, size_t len, const char *opt)
{
    return strlen(opt) == len && strncmp(w, opt, len) == 0;
}

void cmdline_parse(const char *s)
{
    strlcpy(cmdline.raw, s, sizeof cmdline.raw);
    const char *p = cmdline.raw;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *w = p;
        while (*p && *p != ' ')
            p++;
        size_t len = p - w;
        if (!len)
            break;
        if (word_is(w, len, "vmi=off"))
            cmdline.vmi_off = 1;
        else if (word_is(w, len, "vmi=debug"))
            cmdline.vmi_debug = 1;
        else if (len > 11 && strncmp(w, "exit_after=", 11) == 0)
            cmdline.exit_after = katou(w + 11);
        else if (len > 5 && strncmp(w, "init=", 5) == 0) {
            size_t n = len - 5 < sizeof cmdline.init - 1 ? len - 5 : sizeof cmdline.init - 1;
            memcpy(cmdline.init, w + 5, n);
            cmdline.init[n] = 0;
        }
    }
}
