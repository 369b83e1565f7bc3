/*
 * ledger_query.h - the read-side queries of the workbench over the run
 * ledger (ledger.h): change detection, loss summaries for sparklines, a
 * run's checkpoints, samples with filters, and deleting a run with the
 * files only it points at.
 *
 * These live apart from ledger.c because they serve one screen each and
 * change with the screens; they use the same connection (ledger_sqlite) and
 * the same error conventions: 0 or a negative coin_status, with one
 * sentence in err.
 */
#ifndef COIN_LEDGER_QUERY_H
#define COIN_LEDGER_QUERY_H

#include <stddef.h>
#include <stdint.h>

#include "db/ledger.h"

/* SQLite's PRAGMA data_version: a number that changes whenever another
 * connection (another process: the worker, the command line) has committed
 * to the database since the last call.  Reading it costs no disk access,
 * so a screen can ask often and re-read only on change.  Our own writes do
 * not change it. */
int lq_data_version(ledger *l, int64_t *version, coin_error *err);

/* The largest run id (0: no runs), and the number of runs queued or
 * running (*active, may be NULL). */
int lq_run_counts(ledger *l, int64_t *max_id, int *active, coin_error *err);

/* The mean loss of run in `width` equal spans of steps 1 .. last_step,
 * into out[width] (NaN for a span without losses): a sparkline of a run
 * without reading every point into memory. */
int lq_loss_spans(ledger *l, int64_t run, int last_step, int width, float *out,
                  coin_error *err);

typedef struct lq_checkpoint {
    int64_t id;
    int step;
    char path[1024];
    int64_t created_at;
} lq_checkpoint;

/* run's checkpoints in step order; *out malloc'd (NULL when none). */
int lq_checkpoints(ledger *l, int64_t run, lq_checkpoint **out, size_t *n, coin_error *err);

typedef struct lq_sample_filter {
    const char *text;           /* prompt contains (case-insensitive); NULL: any */
    const char *path_prefix;    /* image_path starts with; NULL: any */
    int64_t run;                /* the sample's run, or a checkpoint's run; 0: any */
    int64_t checkpoint;         /* 0: any */
    int has_seed;
    uint64_t seed;
    int rating;                 /* -1 any, 0 bad, 1 good, 2 not rated */
    int newest_first;
    size_t limit;               /* 0: no limit */
} lq_sample_filter;

typedef struct lq_sample_row {
    int64_t id, run, checkpoint;
    char prompt[512];
    uint64_t seed;
    int steps;
    double guidance;
    char sampler[24];
    int width, height;
    char image_path[1024];
    int rating;                 /* -1 not rated, 0 bad, 1 good */
    int64_t created_at;
} lq_sample_row;

/* The samples that pass f; *out malloc'd (NULL when none). */
int lq_samples(ledger *l, const lq_sample_filter *f, lq_sample_row **out, size_t *n,
               coin_error *err);

/* Good and rated counts of the samples that pass f (its limit ignored). */
int lq_sample_acceptance(ledger *l, const lq_sample_filter *f, int *good, int *rated,
                         coin_error *err);

/* Deletes run: its samples and their ratings, its losses and checkpoints.
 * Refused (COIN_EINVAL) while the run is queued or running.  *orphans (may
 * be NULL) receives a malloc'd array of *n_orphans malloc'd paths: files
 * the deleted rows pointed at that no remaining row points at, which the
 * caller may remove; every file another row still names is left out.
 * Free with lq_free_paths. */
int lq_delete_run(ledger *l, int64_t run, char ***orphans, size_t *n_orphans,
                  coin_error *err);
void lq_free_paths(char **paths, size_t n);

#endif
