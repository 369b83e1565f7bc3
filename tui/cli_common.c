/*
 * cli_common.c - what every subcommand shares for reporting errors.
 *
 * Kept apart from main.c so that the test binary can link the subcommands
 * (everything in tui/ but main.c) and drive them in-process.
 */
#include <stdarg.h>
#include <stdio.h>

#include "tui/cli.h"

int cli_report(const coin_error *err)
{
    fprintf(stderr, "coin: %s\n", err->msg[0] ? err->msg : coin_status_name(err->code));
    return 1;
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "coin %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(see coin %s --help)\n", cmd);
    va_end(ap);
    return 2;
}
