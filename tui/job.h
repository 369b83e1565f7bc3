/*
 * job.h - how `coin train`, `coin sample` and `coin resume` hand their work
 * to the worker, and how the command line follows it.
 *
 * A job is a run in the ledger (db/ledger.h) plus the command line that
 * makes it.  The front end checks the options, records the run as queued
 * with its job, makes sure a worker for the device is running (a process of
 * its own session, SIGHUP ignored, stdin /dev/null, output in the
 * workspace's logs/ folder, so that closing the terminal or losing SSH does
 * not stop it), then follows the run's progress from the ledger.  Ctrl-C
 * stops the following, never the job.  The worker (tui/worker.c, `coin
 * worker`) runs each job as `coin ARGS --foreground --job RUN` in a process
 * of its own, one at a time per device.
 */
#ifndef COIN_JOB_H
#define COIN_JOB_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "db/ledger.h"

/* The options every job-making command takes besides its own. */
typedef struct job_flags {
    int foreground;             /* --foreground: do the work in this process */
    int no_follow;              /* --no-follow: print only the run id and return */
    int detach;                 /* --detach: queue, say where to look, return */
    int64_t job_run;            /* --job N (the worker's): do queued run N here */
} job_flags;

/* Takes --foreground, --no-follow, --detach and --job N out of argv
 * (shifting the rest down and updating *argc), so the command's own parser
 * and the job's stored command line never see them.  Returns 0, or 2 after
 * printing a usage error for cmd. */
int job_take_flags(int *argc, char **argv, job_flags *f, const char *cmd);

/* A copy of argv[0 .. argc) and a NULL after it (the pointers, not the
 * strings): the command line as given, for job_queue, before getopt
 * reorders argv.  NULL, after saying so on stderr, when out of memory; the
 * caller frees it. */
char **job_copy_argv(int argc, char **argv);

/* "$COIN_HOME/logs/NAME.log" (the logs folder created when missing). */
int job_log_path(char *buf, size_t len, const char *name, coin_error *err);

/* "$COIN_HOME/worker-DEVICE.lock": the file a device's worker holds an
 * flock on for as long as it runs. */
int job_lock_path(char *buf, size_t len, const char *device, coin_error *err);

/* The device name a backend's jobs queue on: one worker per device. */
const char *job_device(const char *backend_name);

/* Queues run's job: argv[0 .. argc) (argv[0] the subcommand, without
 * "coin") to be run in the current folder on device. */
int job_queue(ledger *l, int64_t run, int argc, char **argv, const char *device,
              coin_error *err);

/* After run was queued on device: starts a worker if needed, then as f
 * says prints the run id alone (--no-follow), a sentence (--detach), or
 * follows the run.  Returns the process exit status. */
int job_hand_over(int64_t run, const char *device, const job_flags *f);

/* 1 when msg says that a write failed because the disk is full. */
int job_disk_full(const char *msg);

#endif
