/*
 * record.c - the command line's writes into the run ledger (record.h).
 */
#include "tui/record.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/infotext.h"
#include "tui/job.h"
#include "tui/progress.h"

static void warn(recorder *r, const coin_error *err)
{
    /* SQLite's SQLITE_FULL says "database or disk is full". */
    if (job_disk_full(err->msg))
        r->disk_full = 1;
    fprintf(stderr, "warning: the run ledger: %s%s\n", err->msg,
            r->l ? "" : " (the job goes on unrecorded)");
}

void cli_host_name(char *buf, size_t len)
{
    buf[0] = '\0';
    gethostname(buf, len - 1);
    buf[len - 1] = '\0';
}

int cli_open_ledger(ledger **l, coin_error *err)
{
    char path[4096], host[256];
    int rc = ledger_default_path(path, sizeof path, err);
    if (!rc)
        rc = ledger_open(l, path, err);
    if (rc)
        return rc;
    /* A run left 'running' by a process that died is over: say so. */
    cli_host_name(host, sizeof host);
    if ((rc = ledger_mark_dead_runs(*l, host, NULL, err))) {
        ledger_close(*l);
        *l = NULL;
    }
    return rc;
}

/* Opens the ledger and records the model; 0 when the ledger is usable. */
static int open_for_run(recorder *r, ledger_run *run, const char *model_path,
                        const char *model_sha256, int version, char *host, size_t host_len)
{
    memset(r, 0, sizeof *r);
    coin_error err = {0};
    if (cli_open_ledger(&r->l, &err)) {
        r->l = NULL;
        warn(r, &err);
        return -1;
    }
    cli_host_name(host, host_len);
    run->host = host;
    int64_t model = 0;
    if (model_path && model_sha256 && model_sha256[0] &&
        ledger_upsert_model(r->l, model_path, model_sha256, version, &model, &err))
        warn(r, &err);
    run->model_id = model;
    return 0;
}

void record_start(recorder *r, ledger_run *run, const char *model_path,
                  const char *model_sha256, int version)
{
    char host[256];
    coin_error err = {0};
    if (open_for_run(r, run, model_path, model_sha256, version, host, sizeof host))
        return;
    if (ledger_insert_run(r->l, run, &r->run, &err) ||
        ledger_set_run_status(r->l, r->run, "running", NULL, &err)) {
        warn(r, &err);
        ledger_close(r->l);
        r->l = NULL;
    }
}

/* Records the losses of out_dir/loss.csv up to step that the ledger lacks
 * (a batch a full disk kept out): a resumed run's curve has no gaps. */
static void fill_from_csv(recorder *r, const char *out_dir, int step)
{
    char path[4200], line[160];
    snprintf(path, sizeof path, "%s/loss.csv", out_dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    enum { CHUNK = 512 };
    int steps[CHUNK];
    float loss[CHUNK], lr[CHUNK];
    int n = 0;
    coin_error err = {0};
    while (fgets(line, sizeof line, f)) {
        int s;
        double lo, rate;
        if (sscanf(line, "%d,%lf,%lf", &s, &lo, &rate) != 3 || s < 1 || s > step)
            continue;
        steps[n] = s;
        loss[n] = (float)lo;
        lr[n] = (float)rate;
        if (++n == CHUNK) {
            if (ledger_fill_losses(r->l, r->run, steps, loss, lr, (size_t)n, &err))
                warn(r, &err);
            n = 0;
        }
    }
    if (n && ledger_fill_losses(r->l, r->run, steps, loss, lr, (size_t)n, &err))
        warn(r, &err);
    fclose(f);
}

void record_attach(recorder *r, int64_t run, ledger_run *desc, const char *model_path,
                   const char *model_sha256, int version, int from_step, int is_job)
{
    char host[256];
    coin_error err = {0};
    if (open_for_run(r, desc, model_path, model_sha256, version, host, sizeof host))
        return;
    r->run = run;
    if (ledger_update_run(r->l, run, desc, &err) ||
        ledger_resume_run(r->l, run, from_step, is_job, &err)) {
        warn(r, &err);
        ledger_close(r->l);
        r->l = NULL;
        return;
    }
    if (from_step > 0 && desc->out_dir)
        fill_from_csv(r, desc->out_dir, from_step);
}

void record_flush(recorder *r)
{
    coin_error err = {0};
    if (r->l && r->n && ledger_record_losses(r->l, r->run, r->steps, r->loss, r->lr,
                                             (size_t)r->n, &err))
        warn(r, &err);
    r->n = 0;
}

void record_loss(recorder *r, int step, float loss, float lr)
{
    if (!r->l)
        return;
    r->steps[r->n] = step;
    r->loss[r->n] = loss;
    r->lr[r->n] = lr;
    if (++r->n == RECORD_BATCH)
        record_flush(r);
}

/* sha256 of a (small) file as hex, or "" when it cannot be read. */
static void file_sha(const char *path, char hex[65])
{
    uint8_t digest[32];
    hex[0] = '\0';
    if (!sha256_file(path, digest, NULL, NULL, NULL))
        sha256_hex(digest, hex);
}

void record_checkpoint(recorder *r, int step, const char *path)
{
    if (!r->l)
        return;
    char sha[65];
    coin_error err = {0};
    int64_t id;
    record_flush(r);
    file_sha(path, sha);
    if (ledger_insert_checkpoint(r->l, r->run, step, path, sha, &id, &err))
        warn(r, &err);
}

int64_t record_checkpoint_of(recorder *r, const char *sha256)
{
    int64_t id = 0;
    coin_error err = {0};
    if (r->l && ledger_find_checkpoint(r->l, sha256, &id, &err))
        warn(r, &err);
    return id;
}

void record_sample(recorder *r, ledger_sample *s)
{
    if (!r->l)
        return;
    char sha[65];
    coin_error err = {0};
    int64_t id;
    file_sha(s->image_path, sha);
    s->run = r->run;
    s->image_sha256 = sha;
    if (ledger_insert_sample(r->l, s, &id, &err))
        warn(r, &err);
}

const char *record_requested(recorder *r)
{
    if (!r->l)
        return NULL;
    /* A pause need not be seen within the millisecond: on a model whose
     * steps take milliseconds, looking every step would cost a share of
     * the step time worth measuring. */
    double now = progress_now();
    if (now - r->asked_at < 0.2)
        return NULL;
    r->asked_at = now;
    char status[16];
    if (ledger_get_status(r->l, r->run, status, NULL) == 0) {
        if (!strcmp(status, "paused"))
            return "paused";
        if (!strcmp(status, "stopped"))
            return "stopped";
    }
    return NULL;
}

void record_finish(recorder *r, const char *status, const char *error)
{
    if (!r->l)
        return;
    coin_error err = {0};
    record_flush(r);
    if (ledger_finish_run(r->l, r->run, status, error, NULL, &err))
        warn(r, &err);
    ledger_close(r->l);
    r->l = NULL;
}

void record_job_failed(int64_t run, const char *msg)
{
    ledger *l;
    coin_error err = {0};
    recorder none = {0};
    if (cli_open_ledger(&l, &err) || ledger_set_run_status(l, run, "failed", msg, &err))
        warn(&none, &err);
    ledger_close(l);
}
