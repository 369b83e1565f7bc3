/*
 * bench_ledger.c - what the run ledger costs a training run, and how fast a
 * long loss curve reads back.
 *
 *   bench_ledger MODEL IMAGES_DIR WORK_DIR [STEPS] [SAVE_EVERY]
 *
 * 1. Trains STEPS steps (default 400) of textual inversion on MODEL (the
 *    tiny test model: its steps take milliseconds, so the ledger's share is
 *    the largest it can be) with the ledger work `coin train` does in its
 *    step callback (tui/cmd_train.c): every loss buffered and written in
 *    batches and before each checkpoint, the run's status looked at (every
 *    0.2 s at most: coin pause / coin stop), each checkpoint hashed and
 *    recorded.  The
 *    time spent in those calls is measured around them and printed as a
 *    share of the training time.
 * 2. Writes a 100,000-step loss curve (batches of 50, as the recorder
 *    does) and reads it back with ledger_loss_curve, median of 11 reads.
 *
 * Build and run: sh tools/bench/bench_ledger.sh (it links build/libcoin.a,
 * the ledger and the front end's recorder, as bin/coin does).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/fileio.h"
#include "core/recipe.h"
#include "core/ti.h"
#include "db/ledger.h"
#include "tui/record.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

typedef struct bench {
    recorder rec;
    int save_every;
    const char *out_dir;
    double ledger_ms;           /* time inside ledger calls */
    double first_step_ms;       /* when step 1 was reported (start-up excluded) */
    double last_step_ms;
    int steps;
} bench;

/* The ledger work of cmd_train.c's on_report, timed. */
static int on_report(void *ctx, const ti_report *r)
{
    bench *b = ctx;
    double t0 = now_ms();
    if (r->event) {
        if (!strncmp(r->event, "checkpoint ", 11)) {
            char step_file[1300];
            snprintf(step_file, sizeof step_file, "%s/learned_embeds-steps-%d.safetensors",
                     b->out_dir, r->step);
            record_checkpoint(&b->rec, r->step, path_exists(step_file) ? step_file
                                                                        : r->event + 11);
        }
        b->ledger_ms += now_ms() - t0;
        return 0;
    }
    if (r->step == 1)
        b->first_step_ms = t0;
    b->last_step_ms = t0;
    b->steps = r->step;
    record_loss(&b->rec, r->step, r->loss, (float)r->lr);
    if (r->step % b->save_every == 0 || r->step == r->total)
        record_flush(&b->rec);
    int stop = record_requested(&b->rec) != NULL;
    b->ledger_ms += now_ms() - t0;
    return stop;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: bench_ledger MODEL IMAGES_DIR WORK_DIR [STEPS] [SAVE_EVERY]\n");
        return 2;
    }
    const char *work = argv[3];
    int steps = argc > 4 ? atoi(argv[4]) : 400, save_every = argc > 5 ? atoi(argv[5]) : 50;
    char home[1000], out_dir[1000];
    if (strlen(work) > 900) {
        fprintf(stderr, "bench: WORK_DIR is too long\n");
        return 2;
    }
    snprintf(home, sizeof home, "%s/home", work);
    snprintf(out_dir, sizeof out_dir, "%s/run", work);
    mkdir(work, 0755);
    setenv("COIN_HOME", home, 1);
    coin_error err = {0};
    const coin_backend *be;
    if (backend_by_name(&be, "cpu", &err)) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return 1;
    }

    /* 1. A training run with the ledger's work in its callback. */
    ti_config c;
    ti_config_defaults(&c);
    snprintf(c.model, sizeof c.model, "%s", argv[1]);
    snprintf(c.images, sizeof c.images, "%s", argv[2]);
    snprintf(c.out_dir, sizeof c.out_dir, "%s", out_dir);
    snprintf(c.token, sizeof c.token, "<bench>");
    snprintf(c.init_word, sizeof c.init_word, "hand");
    c.steps = steps;
    c.save_every = save_every;
    c.batch = 1;
    c.n_previews = 0;
    bench b = {.save_every = save_every, .out_dir = out_dir};
    ledger_run run = {.kind = "train", .trigger = c.token, .initializer = c.init_word,
                      .images_dir = c.images, .backend = be->name, .precision = "fp32",
                      .coin_version = COIN_VERSION, .steps_planned = steps, .out_dir = out_dir};
    double t0 = now_ms();
    record_start(&b.rec, &run, NULL, NULL, 0);
    double start_ms = now_ms() - t0;
    if (!b.rec.l) {
        fprintf(stderr, "bench: the ledger did not open\n");
        return 1;
    }
    ti_result res;
    int rc = ti_train(&c, be, on_report, &b, &res, &err);
    t0 = now_ms();
    record_finish(&b.rec, rc ? "failed" : "done", rc ? err.msg : NULL);
    double finish_ms = now_ms() - t0;
    if (rc) {
        fprintf(stderr, "bench: training failed: %s\n", err.msg);
        return 1;
    }
    /* Steps 2..N: from the report of step 1 to that of step N. */
    double train_ms = b.last_step_ms - b.first_step_ms;
    double per_step = train_ms / (b.steps - 1);
    printf("training: %d steps (checkpoint every %d) on %s: %.2f ms per step\n", b.steps,
           save_every, argv[1], per_step);
    printf("ledger:   %.3f ms during training, %.4f ms per step = %.3f%% of the step time "
           "(target < 1%%)\n", b.ledger_ms, b.ledger_ms / b.steps,
           100.0 * b.ledger_ms / (train_ms + b.ledger_ms));
    printf("          once per run: %.1f ms to open the ledger and record the run, %.1f ms to "
           "record its end\n", start_ms, finish_ms);

    /* 2. A 100,000-point loss curve, written as the recorder writes it. */
    char path[1200];
    snprintf(path, sizeof path, "%s/ledger.db", home);
    ledger *l;
    if (ledger_open(&l, path, &err)) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return 1;
    }
    int64_t id;
    ledger_run big = {.kind = "train", .trigger = "<curve>", .steps_planned = 100000};
    if (ledger_insert_run(l, &big, &id, &err)) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return 1;
    }
    enum { N = 100000, BATCH = 50 };
    double w0 = now_ms();
    for (int s = 0; s < N; s += BATCH) {
        int st[BATCH];
        float lo[BATCH], lr[BATCH];
        for (int k = 0; k < BATCH; k++) {
            st[k] = s + k + 1;
            lo[k] = 0.1f + 0.05f * sinf((float)(s + k) * 0.01f);
            lr[k] = 5e-4f;
        }
        if (ledger_record_losses(l, id, st, lo, lr, BATCH, &err)) {
            fprintf(stderr, "bench: %s\n", err.msg);
            return 1;
        }
    }
    double write_ms = now_ms() - w0;
    double reads[11];
    size_t n = 0;
    for (int i = 0; i < 11; i++) {
        int *st;
        float *lo, *lr;
        double r0 = now_ms();
        if (ledger_loss_curve(l, id, &st, &lo, &lr, &n, &err)) {
            fprintf(stderr, "bench: %s\n", err.msg);
            return 1;
        }
        reads[i] = now_ms() - r0;
        free(st);
        free(lo);
        free(lr);
    }
    qsort(reads, 11, sizeof *reads, cmp_double);
    printf("curve:    %zu points written in %.0f ms (%d batches); read in %.1f ms (median of 11, "
           "min %.1f, max %.1f; target < 50 ms)\n", n, write_ms, N / BATCH, reads[5], reads[0],
           reads[10]);
    ledger_close(l);
    return 0;
}
