/* ps - list processes (SYS_procs). */
#include "ulib.h"

static const char *state_name(int s)
{
    static const char *names[] = {"unused", "embryo", "sleep", "runnable", "running", "zombie"};
    return s >= 0 && s <= PSTATE_ZOMBIE ? names[s] : "?";
}

int main(void)
{
    static struct vmirom_procinfo p[256];
    int n = procs(p, 256);
    if (n < 0) {
        dprintf(2, "ps: %s\n", strerror(n));
        return 1;
    }
    printf("  PID  PPID STATE       MEM  TICKS NAME\n");
    for (int i = 0; i < n; i++) {
        p[i].name[sizeof p[i].name - 1] = 0;
        printf("%5d %5d %-8s %6uK %6u %s\n", p[i].pid, p[i].ppid, state_name(p[i].state),
               p[i].mem / 1024, p[i].ticks, p[i].name);
    }
    return 0;
}
