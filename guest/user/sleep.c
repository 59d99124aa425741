/* sleep MS - sleep for MS milliseconds. */
#include "ulib.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        dprintf(2, "usage: sleep MS\n");
        return 2;
    }
    int r = sleep(strtoul(argv[1], NULL, 0));
    return r < 0 ? 1 : 0;
}
