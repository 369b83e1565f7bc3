/*
 * record.h - what the command line writes into the run ledger (db/ledger.h):
 * a run per `coin train` or `coin sample`, its losses, checkpoints and
 * images.  A ledger that cannot be opened is reported once and the job goes
 * on without it: losing the record must not lose the work.
 */
#ifndef COIN_RECORD_H
#define COIN_RECORD_H

#include <stdint.h>

#include "db/ledger.h"

#define RECORD_BATCH 50

typedef struct recorder {
    ledger *l;                  /* NULL: no ledger this time */
    int64_t run;
    int disk_full;              /* a ledger write failed for want of space */
    double asked_at;            /* when record_requested last read the status */
    int n;                      /* buffered losses */
    int steps[RECORD_BATCH];
    float loss[RECORD_BATCH], lr[RECORD_BATCH];
} recorder;

/* This machine's name, as runs record it ("" when it has none). */
void cli_host_name(char *buf, size_t len);

/* Opens the ledger ($COIN_HOME or ~/.local/share/coin) and, as every coin
 * start does, marks runs of this host whose process died as interrupted. */
int cli_open_ledger(ledger **l, coin_error *err);

/* Opens the ledger as cli_open_ledger does and inserts a run
 * described by run (kind, config, ...), marked running.  model_path,
 * model_sha256 and version (1, 2 or 0) identify the model. */
void record_start(recorder *r, ledger_run *run, const char *model_path,
                  const char *model_sha256, int version);
/* As record_start for run, already in the ledger (a queued job, or a
 * training run being resumed): fills in its description (NULL fields keep
 * what is recorded), forgets what it recorded after step from_step (the
 * checkpoint it continues from; 0 for a job starting afresh) and marks it
 * running.  is_job: the worker took it from the queue, and a pause or stop
 * asked since then stands.  Losses up to from_step that the ledger lacks
 * (a write a full disk refused) are taken from desc->out_dir's loss.csv. */
void record_attach(recorder *r, int64_t run, ledger_run *desc, const char *model_path,
                   const char *model_sha256, int version, int from_step, int is_job);
/* Buffers one training step's loss; writes a batch when the buffer fills. */
void record_loss(recorder *r, int step, float loss, float lr);
/* Writes buffered losses. */
void record_flush(recorder *r);
/* The ledger's checkpoint whose file has sha256 (hex), 0 when none: a
 * sample made with a training run's embedding is recorded against it. */
int64_t record_checkpoint_of(recorder *r, const char *sha256);
/* Records a checkpoint file written at step (hashing it). */
void record_checkpoint(recorder *r, int step, const char *path);
/* Records an image (hashing the file); s->run is filled in. */
void record_sample(recorder *r, ledger_sample *s);
/* "paused" or "stopped" when someone asked the run to pause or stop
 * (coin pause / coin stop set the run's status in the ledger), else NULL.
 * Reads the ledger at most every 0.2 s. */
const char *record_requested(recorder *r);
/* Flushes, sets the final status ("done", "stopped", "failed") with the
 * error text, and closes the ledger. */
void record_finish(recorder *r, const char *status, const char *error);

/* For a queued job (run) that failed before it could start recording
 * (a model that does not load, a size the model cannot make): marks it
 * failed with msg, so that whoever follows it sees why. */
void record_job_failed(int64_t run, const char *msg);

#endif
