/*
 * ledger.h - the run ledger: one SQLite database that remembers every
 * training and sampling run coin has made.
 *
 * The ledger is the shared memory between the detached worker (which writes
 * runs, per-step losses, checkpoints and samples as they happen) and the TUI
 * and CLI (which read them, often while the worker is still writing).  It is
 * one file in the workspace (ledger_default_path), opened in WAL mode so that
 * readers never wait for the writer, with foreign keys on and a busy timeout
 * so that two writers queue instead of failing.  The schema is versioned with
 * PRAGMA user_version: an older database is upgraded when opened, a newer
 * one is refused rather than misread.
 *
 * Every function returns 0 or a negative coin_status and, on failure, writes
 * one sentence into err naming the database file and what failed.  Every
 * write runs in its own transaction.  A ledger handle belongs to one thread
 * (and one process: open a new one after fork).
 */
#ifndef COIN_LEDGER_H
#define COIN_LEDGER_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

/* The schema version this build writes and understands. */
#define LEDGER_SCHEMA_VERSION 3

typedef struct ledger ledger;

/* Writes the ledger's path, "$COIN_HOME/ledger.db" or, without COIN_HOME,
 * "$HOME/.local/share/coin/ledger.db", into buf, creating the folder (and
 * its parents) when missing.  COIN_EINVAL when buf is too small or neither
 * variable is set. */
int ledger_default_path(char *buf, size_t len, coin_error *err);

/* Opens (creating when missing) the ledger at path and brings its schema up
 * to LEDGER_SCHEMA_VERSION.  The folder must exist.  A database written by a
 * newer coin (higher user_version) is refused with COIN_EUNSUPPORTED; a file
 * that is not SQLite gives COIN_EFORMAT.  *out is NULL on failure. */
int ledger_open(ledger **out, const char *path, coin_error *err);
/* Closes l (NULL is fine). */
void ledger_close(ledger *l);
/* The path l was opened with. */
const char *ledger_path(const ledger *l);

/* Records a model by content: one row per sha256 (a moved file keeps its id
 * and gets the new path).  version: 1 or 2 as detected, 0 unknown.  *id (may
 * be NULL) receives the model's id. */
int ledger_upsert_model(ledger *l, const char *path, const char *sha256, int version,
                        int64_t *id, coin_error *err);

/* A run.  For ledger_insert_run the caller fills the inputs (NULL strings
 * are stored as NULL, config_json NULL as "{}", image_hashes_json NULL as
 * "[]", status NULL as "queued"); id, model_path, step_reached, the times
 * and error are ignored.  ledger_get_run fills every field with strings the
 * struct owns: release them with ledger_run_free. */
typedef struct ledger_run {
    int64_t id;
    const char *kind;               /* "train" or "sample" */
    const char *config_json;        /* every hyperparameter, as JSON */
    const char *trigger, *initializer;
    int64_t model_id;               /* 0: none */
    const char *model_path;         /* read only: the model's path */
    const char *images_dir;
    const char *image_hashes_json;  /* JSON list of the images' sha256 */
    const char *backend, *precision;
    int threads;
    const char *coin_version, *host;
    const char *status;             /* see ledger_set_run_status */
    int steps_planned, step_reached;
    int64_t created_at, started_at, ended_at;   /* unix seconds, 0: not yet */
    const char *error;
    const char *out_dir;            /* a training run's folder (absolute), or NULL */
    int64_t pid;                    /* read only: the process that last ran it */
} ledger_run;

/* Inserts a run; *id receives its id.  COIN_EINVAL for an unknown kind or
 * status, or JSON that does not parse. */
int ledger_insert_run(ledger *l, const ledger_run *r, int64_t *id, coin_error *err);
/* Reads run id into *out (COIN_ENOTFOUND when there is none). */
int ledger_get_run(ledger *l, int64_t id, ledger_run *out, coin_error *err);
void ledger_run_free(ledger_run *r);

/* run's status into status (a running job reads it every step, to see a
 * pause or stop asked through the ledger; the statement is prepared once
 * per handle). */
int ledger_get_status(ledger *l, int64_t run, char status[16], coin_error *err);

/* Moves a run to status: one of queued, running, paused, stopped, done,
 * failed, interrupted.  "running" stamps the start time (once); stopped,
 * done, failed and interrupted stamp the end time; error_text (may be NULL)
 * replaces the run's error.  COIN_ENOTFOUND for a missing run. */
int ledger_set_run_status(ledger *l, int64_t run, const char *status,
                          const char *error_text, coin_error *err);

/* Records how this process's run ended (status and error as for
 * ledger_set_run_status), but only while the run is still this process's:
 * running, paused or stopped, with this process's id.  A run queued again
 * meanwhile (coin resume right after coin pause) is left alone.  *changed
 * (may be NULL) is 1 when the run was updated. */
int ledger_finish_run(ledger *l, int64_t run, const char *status, const char *error_text,
                      int *changed, coin_error *err);

/* Records n (step, loss, lr) rows for run in one transaction and raises the
 * run's step_reached to the highest step.  A step already recorded is
 * overwritten (a resumed run repeats the steps after its checkpoint).  A NaN
 * loss is stored as NULL and read back as NaN.  A run that does not exist is
 * refused (foreign key) and nothing is written. */
int ledger_record_losses(ledger *l, int64_t run, const int *steps, const float *loss,
                         const float *lr, size_t n, coin_error *err);

/* As ledger_record_losses, but only for steps not recorded yet: a resumed
 * run fills the gaps a failed write (a full disk) left, from its loss.csv,
 * without touching what is recorded. */
int ledger_fill_losses(ledger *l, int64_t run, const int *steps, const float *loss,
                       const float *lr, size_t n, coin_error *err);

/* The losses of run after step `after` in step order, appended to the
 * caller's arrays: *steps, *loss, *lr (each may be NULL) are realloc'd to
 * *n + the new count, and *n grows.  So a live curve reads only its tail.
 * On failure the arrays hold what was read so far (the caller frees them). */
int ledger_losses_after(ledger *l, int64_t run, int after, int **steps, float **loss,
                        float **lr, size_t *n, coin_error *err);

/* The loss curve of run in step order: *steps, *loss, *lr (each may be
 * NULL if not wanted) are malloc'd arrays of *n entries that the caller
 * frees; all NULL and *n 0 when the run has none. */
int ledger_loss_curve(ledger *l, int64_t run, int **steps, float **loss, float **lr,
                      size_t *n, coin_error *err);

/* Records a checkpoint of run at step (one per step: a rewrite replaces the
 * path and hash).  *id (may be NULL) receives its id. */
int ledger_insert_checkpoint(ledger *l, int64_t run, int step, const char *path,
                             const char *sha256, int64_t *id, coin_error *err);

/* A generated image and everything needed to make it again.  Insert: the
 * caller fills the inputs (run and checkpoint 0 for none; NULL strings stored
 * as NULL, embeddings_json NULL as "[]"); id and created_at are ignored.
 * ledger_get_sample fills owned strings: release with ledger_sample_free. */
typedef struct ledger_sample {
    int64_t id;
    int64_t run, checkpoint;        /* 0: none */
    const char *prompt, *negative;
    uint64_t seed;                  /* stored as decimal text: SQLite integers are signed */
    int steps;
    double guidance;
    const char *sampler, *schedule; /* e.g. "euler_a", "karras" */
    int width, height;
    const char *rng;                /* "cuda" or "cpu" */
    const char *model_sha256;
    const char *embeddings_json;    /* JSON list of the embeddings' hashes */
    const char *image_path, *image_sha256;
    int64_t created_at;
} ledger_sample;

int ledger_insert_sample(ledger *l, const ledger_sample *s, int64_t *id, coin_error *err);
int ledger_get_sample(ledger *l, int64_t id, ledger_sample *out, coin_error *err);
void ledger_sample_free(ledger_sample *s);
/* Calls fn for each sample of run whose id is above after, in id order (a
 * follower passes the last id it has seen); the sample passed to fn is
 * freed after fn returns.  A non-zero return from fn stops the walk and is
 * returned. */
typedef int (*ledger_sample_fn)(void *ctx, const ledger_sample *s);
int ledger_list_samples(ledger *l, int64_t run, int64_t after, ledger_sample_fn fn, void *ctx,
                        coin_error *err);

/* Rates a sample good (1) or bad (0) with an optional note; rating it again
 * replaces the earlier rating.  COIN_EINVAL for a missing sample. */
int ledger_rate_sample(ledger *l, int64_t sample, int good, const char *note,
                       coin_error *err);

/* The share of run's rated samples (its own, and those of its checkpoints)
 * rated good: *share in [0, 1], NaN when none is rated; *n_rated (may be
 * NULL) receives how many are rated. */
int ledger_acceptance(ledger *l, int64_t run, double *share, int *n_rated, coin_error *err);

/* One line of the run list. */
typedef struct ledger_run_row {
    int64_t id;
    char kind[8];
    char trigger[128];
    char model_path[1024];
    char status[16];
    int step, steps;                /* reached / planned */
    float last_loss;                /* NaN when no loss is recorded */
    int64_t started_at;             /* unix seconds, 0: not started */
} ledger_run_row;

/* Fills *out with run's line (COIN_ENOTFOUND when there is none). */
int ledger_run_summary(ledger *l, int64_t run, ledger_run_row *out, coin_error *err);
/* Calls fn for every run, newest first; a non-zero return from fn stops the
 * walk and is returned. */
typedef int (*ledger_run_fn)(void *ctx, const ledger_run_row *row);
int ledger_list_runs(ledger *l, ledger_run_fn fn, void *ctx, coin_error *err);

/* Marks 'running' runs of this host whose process no longer exists as
 * 'interrupted' (a crash, a kill -9, a lost machine): what any coin start
 * does before it shows or starts runs.  *n (may be NULL) gets the count. */
int ledger_mark_dead_runs(ledger *l, const char *host, int *n, coin_error *err);

/* Marks every "running" run "interrupted" (with its end time): called at
 * start-up, when no worker can be running, after a crash left runs behind.
 * *n (may be NULL) receives how many were marked. */
int ledger_mark_interrupted(ledger *l, int *n, coin_error *err);

/* Updates the description of run (a queued run gets its model hash and
 * full configuration when the worker starts it): NULL strings and zero
 * numbers in r keep what is recorded; status, times and error are not
 * touched.  COIN_ENOTFOUND for a missing run. */
int ledger_update_run(ledger *l, int64_t run, const ledger_run *r, coin_error *err);

/* The newest training run whose output folder is out_dir (absolute, as
 * recorded); *run is 0 when there is none. */
int ledger_find_run_by_dir(ledger *l, const char *out_dir, int64_t *run, coin_error *err);

/* Continues run from its checkpoint at from_step, in one transaction:
 * forgets the losses and checkpoints after from_step (a crash may have
 * recorded steps that the checkpoint does not hold; they are trained
 * again), sets step_reached to from_step and the status to running with
 * this process's id, and clears the end time and error.  With keep_request
 * a run that was asked to pause or stop since a worker took it keeps that
 * status (the job then stops at its first step). */
int ledger_resume_run(ledger *l, int64_t run, int from_step, int keep_request, coin_error *err);

/* The checkpoint whose file has sha256 (hex), so that a sample made with a
 * training run's embedding counts for that run; *id = 0 when none. */
int ledger_find_checkpoint(ledger *l, const char *sha256, int64_t *id, coin_error *err);

/* A recorded checkpoint. */
typedef struct ledger_checkpoint {
    int64_t id;
    int step;
    char *path, *sha256;
} ledger_checkpoint;
/* run's checkpoints in step order (*out malloc'd, NULL when none); free
 * with ledger_checkpoints_free. */
int ledger_list_checkpoints(ledger *l, int64_t run, ledger_checkpoint **out, size_t *n,
                            coin_error *err);
void ledger_checkpoints_free(ledger_checkpoint *c, size_t n);

/* The path of the newest model whose sha256 starts with sha_prefix (8 to 64
 * hex digits, as AUTOMATIC1111's 10-digit "Model hash"); *path malloc'd.
 * COIN_ENOTFOUND when the ledger knows no such model. */
int ledger_find_model(ledger *l, const char *sha_prefix, char **path, coin_error *err);

/* ---- the job queue ----
 * A job is the command line (a JSON list of arguments after "coin", run in
 * folder cwd) that makes a run; the run's status is the job's state:
 * queued until a worker takes it, then running, and done, failed, paused,
 * stopped or interrupted.  One worker per device drains the queue in the
 * order jobs were queued. */
typedef struct ledger_job {
    int64_t run;                    /* 0: none */
    char *argv_json, *cwd, *device;
    int attempts;                   /* how many times a worker has taken it */
} ledger_job;

/* Queues run's job (replacing an earlier job of the run) and sets the run
 * queued, in one transaction. */
int ledger_enqueue_job(ledger *l, int64_t run, const char *argv_json, const char *cwd,
                       const char *device, coin_error *err);
/* Reads run's job (COIN_ENOTFOUND when it has none). */
int ledger_get_job(ledger *l, int64_t run, ledger_job *out, coin_error *err);
/* Takes the oldest queued job of device, marking its run running with this
 * process's id, atomically (two workers never take one job); out->run is 0
 * when the queue is empty.  Free with ledger_job_free. */
int ledger_claim_job(ledger *l, const char *device, ledger_job *out, coin_error *err);
void ledger_job_free(ledger_job *j);
/* How many jobs wait for device (NULL: any device). */
int ledger_count_queued(ledger *l, const char *device, int *n, coin_error *err);

/* The SQLite connection under l, for read-only queries that have no
 * function here (the workbench's views, integrity checks in tests).  It
 * stays l's: do not close it. */
typedef struct sqlite3 sqlite3;
sqlite3 *ledger_sqlite(ledger *l);

#endif
