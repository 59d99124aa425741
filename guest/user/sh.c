/* sh - a small shell for the console.
 *   command lines of words ("double" and 'single' quotes group), pipelines "a | b | c",
 *   lists "a ; b", input redirection "< file", "$?" = status of the last command;
 *   built-ins: exit [N], help.  `sh -c WORDS...` runs one command line and exits. */
#include "ulib.h"

#define MAXLINE 512
#define MAXWORDS 64
#define MAXSTAGES 8

static int last_status;

struct stage {
    char *argv[MAXWORDS + 1];
    int argc;
    char *in;          /* "< file" */
};

/* Split s into words, copied NUL-terminated into a static buffer; the separators '|', ';'
 * and '<' become one-char words flagged in `special` (so a quoted "|" stays an ordinary word). */
static int tokenize(const char *s, char **words, int *special, int max)
{
    static char buf[2 * MAXLINE + MAXWORDS];
    char *out = buf;
    int n = 0;
    while (*s) {
        while (isspace(*s))
            s++;
        if (!*s)
            break;
        if (n >= max)
            return -1;
        if (*s == '|' || *s == ';' || *s == '<') {
            special[n] = *s++;
            words[n++] = "";
            continue;
        }
        words[n] = out;
        special[n++] = 0;
        while (*s && !isspace(*s) && *s != '|' && *s != ';' && *s != '<') {
            if (*s == '"' || *s == '\'') {
                char q = *s++;
                while (*s && *s != q)
                    *out++ = *s++;
                if (*s)
                    s++;
            } else {
                *out++ = *s++;
            }
        }
        *out++ = 0;
    }
    return n;
}

static int builtin(struct stage *st)
{
    char **argv = st->argv;
    if (!strcmp(argv[0], "exit")) {
        exit(st->argc > 1 ? atoi(argv[1]) : last_status);
    }
    if (!strcmp(argv[0], "help")) {
        printf("sh: commands are programs in the initrd (try `ls`); a | b pipes, a ; b sequences,\n"
               "    < file redirects input, $? is the last status; built-ins: exit [N], help\n");
        return 1;
    }
    return 0;
}

static void report(const char *name, int status)
{
    if (WIFKILLED(status)) {
        if (WTRAPNO(status))
            dprintf(2, "sh: %s killed (trap %d)\n", name, WTRAPNO(status));
        else
            dprintf(2, "sh: %s killed\n", name);
    }
}

static int run_pipeline(struct stage *st, int n)
{
    int pids[MAXSTAGES];
    int started = 0, prev = -1, status = 0;

    if (n == 1 && builtin(&st[0]))
        return 0;
    for (int i = 0; i < n; i++) {
        int p[2] = {-1, -1};
        if (i < n - 1) {
            int r = pipe(p);
            if (r < 0) {
                dprintf(2, "sh: pipe: %s\n", strerror(r));
                break;
            }
        }
        int pid = fork();
        if (pid == 0) {
            if (prev >= 0) {
                close(0);
                dup(prev);
                close(prev);
            } else if (st[i].in) {
                int fd = open(st[i].in, O_RDONLY);
                if (fd < 0) {
                    dprintf(2, "sh: %s: %s\n", st[i].in, strerror(fd));
                    exit(1);
                }
                close(0);
                dup(fd);
                close(fd);
            }
            if (p[1] >= 0) {
                close(1);
                dup(p[1]);
                close(p[1]);
                close(p[0]);
            }
            int r = exec(st[i].argv[0], st[i].argv);
            dprintf(2, "sh: %s: %s\n", st[i].argv[0], r == -ENOENT ? "command not found" : strerror(r));
            exit(127);
        }
        if (prev >= 0)
            close(prev);
        if (p[1] >= 0)
            close(p[1]);
        prev = p[0];
        if (pid < 0) {
            dprintf(2, "sh: fork: %s\n", strerror(pid));
            if (prev >= 0)
                close(prev);
            prev = -1;
            status = 126;
            break;
        }
        pids[started++] = pid;
    }
    if (prev >= 0)
        close(prev);
    for (int i = 0; i < started; i++) {
        int s = 0;
        int r = wait(pids[i], &s);
        if (r < 0) {
            dprintf(2, "sh: wait: %s\n", strerror(r));
            continue;
        }
        report(st[i].argv[0], s);
        if (i == started - 1 && started == n)
            status = WIFEXITED(s) ? WEXITSTATUS(s) : 128 + WTRAPNO(s);
    }
    return status;
}

static void run_line(char *line)
{
    char *words[MAXWORDS];
    int special[MAXWORDS];
    static char statbuf[16];
    int nw = tokenize(line, words, special, MAXWORDS);
    if (nw < 0) {
        dprintf(2, "sh: too many words\n");
        last_status = 2;
        return;
    }
    struct stage st[MAXSTAGES];
    int ns = 0, i = 0;
    while (i <= nw) {
        ns = 0;
        int bad = 0;
        memset(st, 0, sizeof st);
        for (; i < nw && special[i] != ';'; i++) {
            if (special[i] == '|') {
                if (st[ns].argc == 0 || ns + 1 >= MAXSTAGES) {
                    bad = 1;
                    continue;
                }
                ns++;
                continue;
            }
            if (special[i] == '<') {
                if (i + 1 < nw && !special[i + 1])
                    st[ns].in = words[++i];
                else
                    bad = 1;
                continue;
            }
            char *w = words[i];
            if (!strcmp(w, "$?")) {
                snprintf(statbuf, sizeof statbuf, "%d", last_status);
                w = statbuf;
            }
            if (st[ns].argc < MAXWORDS)
                st[ns].argv[st[ns].argc++] = w;
        }
        i++;   /* skip ';' */
        if (st[ns].argc == 0) {
            if (ns > 0)
                bad = 1;
            else if (!bad)
                continue;   /* empty command */
        }
        if (bad) {
            dprintf(2, "sh: syntax error\n");
            last_status = 2;
            return;
        }
        for (int k = 0; k <= ns; k++)
            st[k].argv[st[k].argc] = NULL;
        last_status = run_pipeline(st, ns + 1);
    }
}

int main(int argc, char **argv)
{
    static char line[MAXLINE];
    if (argc >= 3 && !strcmp(argv[1], "-c")) {
        int len = 0;
        for (int i = 2; i < argc; i++)
            len += snprintf(line + len, len < MAXLINE ? MAXLINE - len : 0, "%s%s", i > 2 ? " " : "",
                            argv[i]);
        if (len >= MAXLINE) {
            dprintf(2, "sh: command too long\n");
            return 2;
        }
        run_line(line);
        return last_status;
    }
    for (;;) {
        int n = readline("$ ", line, sizeof line);
        if (n == -1)
            break;
        if (n < 0) {
            dprintf(2, "sh: read: %s\n", strerror(n));
            return 1;
        }
        run_line(line);
    }
    return last_status;
}
