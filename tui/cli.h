/*
 * cli.h - the command-line front end: one function per subcommand.
 *
 * Each takes the arguments after the subcommand name (argv[0] is the
 * subcommand) and returns the process exit status: 0 done, 1 the job failed
 * (the message is already printed), 2 the command line was wrong.  Only the
 * front end prints; the core reports through coin_error.
 */
#ifndef COIN_CLI_H
#define COIN_CLI_H

#include "core/error.h"

int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_encode(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_show(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_regen(int argc, char **argv);
int cmd_runs(int argc, char **argv);
int cmd_rate(int argc, char **argv);
int cmd_control(int argc, char **argv);   /* pause, stop, resume */
int cmd_export(int argc, char **argv);
int cmd_worker(int argc, char **argv);    /* drains the job queue (tui/worker.c) */
/* `coin show run N` / `coin show sample N`, from the ledger. */
int cmd_show_ledger(const char *what, const char *id_text);
/* The image file the ledger holds for sample id_text (*out malloc'd). */
int cli_sample_image_path(const char *id_text, char **out, coin_error *err);

/* Hashes a file with a progress line for big ones; hex gets the sha256. */
int cli_hash_file(const char *path, const char *what, char hex[65], coin_error *err);

/* Prints "coin: <message>" for a failed core call and returns 1. */
int cli_report(const coin_error *err);
/* Prints "coin <cmd>: <message>" and a pointer to --help; returns 2. */
int cli_usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
