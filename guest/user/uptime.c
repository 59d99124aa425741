/* uptime - ticks and nanoseconds since boot. */
#include "ulib.h"

int main(void)
{
    int t = uptime();
    uint64_t ns = now_ns();
    printf("up %d ticks (%d.%02d s), clock %llu ns\n", t, t / SYS_HZ, t % SYS_HZ * 100 / SYS_HZ,
           (unsigned long long)ns);
    return 0;
}
