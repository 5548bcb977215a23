/* wdfhil guest agent (first version: identifies itself; the device issue grows it). */
#include <stdio.h>
#include <string.h>
#include "wdfhil_abi.h"

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "version") == 0) {
        printf("{\"agent\": \"wdfhil-agent\", \"abi_version\": %u}\n", (unsigned)WH_ABI_VERSION);
        return 0;
    }
    fprintf(stderr, "usage: wdfhil-agent version\n");
    return 2;
}
