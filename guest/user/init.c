/* init - process 1. The kernel passes the words of its command line as argv[1..]
 * (syscall.h, "Boot"). init runs the program named by "init=PROG[,ARG...]" (default: sh)
 * with any words after "--" appended, and powers the machine off with that program's status. */
#include "ulib.h"

#define MAXARGS 32

int main(int argc, char **argv)
{
    static char valbuf[256];
    char *args[MAXARGS + 1];
    int n = 0;
    const char *prog = "sh";

    for (int i = 1; i < argc; i++) {
        if (!strncmp(argv[i], "init=", 5) && argv[i][5]) {
            strlcpy(valbuf, argv[i] + 5, sizeof valbuf);
            n = 0;
            char *p = valbuf;
            while (p && n < MAXARGS) {
                char *comma = strchr(p, ',');
                if (comma)
                    *comma = 0;
                args[n++] = p;
                p = comma ? comma + 1 : NULL;
            }
        } else if (!strcmp(argv[i], "--")) {
            if (n == 0)
                args[n++] = (char *)prog;
            for (i++; i < argc && n < MAXARGS; i++)
                args[n++] = argv[i];
            break;
        }
    }
    if (n == 0)
        args[n++] = (char *)prog;
    args[n] = NULL;
    prog = args[0];

    int pid = fork();
    if (pid < 0) {
        dprintf(2, "init: fork: %s\n", strerror(pid));
        shutdown(120);
        exit(120);
    }
    if (pid == 0) {
        int r = exec(prog, args);
        dprintf(2, "init: exec %s: %s\n", prog, strerror(r));
        exit(127);
    }
    int status = 0;
    for (;;) {
        int r = wait(-1, &status);   /* also reaps orphans re-parented to us */
        if (r == pid)
            break;
        if (r < 0) {
            dprintf(2, "init: wait: %s\n", strerror(r));
            status = 121;
            break;
        }
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 0x80 | (WTRAPNO(status) & 0x7f);
    printf("VMIROM-JSON {\"event\":\"init_exit\",\"program\":\"%s\",\"status\":%d,\"killed\":%s}\n",
           prog, code, WIFKILLED(status) ? "true" : "false");
    shutdown(code);
    return code;   /* only if shutdown is refused */
}
