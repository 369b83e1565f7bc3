/*
 * cli_helpers.c - shared helpers of the end-to-end tests (cli_helpers.h).
 */
#include "cli_helpers.h"

#include <stdio.h>
#include <sys/wait.h>

#include "test.h"

int test_capture(const char *cmd, char *out, size_t len)
{
    FILE *p = popen(cmd, "r");
    size_t n = p ? fread(out, 1, len - 1, p) : 0;
    out[n] = '\0';
    if (!p)
        return -1;
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

ledger *test_open_ledger(const char *path)
{
    coin_error err = {0};
    ledger *l = NULL;
    if (ledger_open(&l, path, &err))
        test_failed(__FILE__, __LINE__, "%s", err.msg);
    return l;
}
