/*
 * cli_helpers.h - what the end-to-end tests (test_cli.c, test_worker.c,
 * test_workbench.c) share for driving bin/coin as a user does: running a
 * shell command and keeping what it printed, and opening the ledger a run
 * wrote to check it.
 */
#ifndef COIN_CLI_HELPERS_H
#define COIN_CLI_HELPERS_H

#include <stddef.h>

#include "db/ledger.h"

/* Runs cmd with /bin/sh and keeps its standard output (standard error too
 * when cmd sends it there) in out, NUL-terminated, what does not fit in
 * len - 1 bytes dropped.  Returns the exit status, -1 when cmd could not
 * run or did not exit. */
int test_capture(const char *cmd, char *out, size_t len);

/* Opens the ledger at path; NULL, with the test marked failed, when it
 * cannot be opened. */
ledger *test_open_ledger(const char *path);

#endif
