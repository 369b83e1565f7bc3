/*
 * cmd_runs.c - `coin runs`: the runs in the ledger, newest first.
 */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/ti.h"
#include "db/ledger.h"
#include "tui/record.h"
#include "core/fileio.h"
#include "tui/cli.h"
#include "tui/job.h"

static const char RUNS_HELP[] =
    "usage: coin runs\n"
    "\n"
    "Lists every training and sampling run in the ledger ($COIN_HOME, default\n"
    "~/.local/share/coin), newest first: id, kind, trigger, model, status,\n"
    "step / steps (images / images for sampling), last loss, start time.\n"
    "\n"
    "status: queued (waiting for the worker), running, paused or stopped (coin\n"
    "pause / coin stop, or paused by a full disk: the error says so), done, failed\n"
    "(coin show run N says why), interrupted (its process died: a crash, kill -9,\n"
    "a lost machine; any coin start notices).  coin resume N continues paused,\n"
    "stopped, interrupted and failed training runs from their last checkpoint.\n";

static int print_row(void *ctx, const ledger_run_row *r)
{
    (void)ctx;
    char started[32] = "-", loss[16] = "-";
    if (r->started_at) {
        time_t t = (time_t)r->started_at;
        strftime(started, sizeof started, "%Y-%m-%d %H:%M", localtime(&t));
    }
    if (!isnan(r->last_loss))
        snprintf(loss, sizeof loss, "%.4f", r->last_loss);
    const char *model = strrchr(r->model_path, '/');
    printf("%5lld  %-6s %-16.16s %-24.24s %-11s %6d/%-6d %8s  %s\n", (long long)r->id, r->kind,
           r->trigger[0] ? r->trigger : "-", model ? model + 1 : r->model_path[0] ? r->model_path : "-",
           r->status, r->step, r->steps, loss, started);
    return 0;
}

int cmd_runs(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(RUNS_HELP, stdout);
        return 0;
    }
    if (argc != 1)
        return cli_usage_error("runs", "takes no arguments");
    coin_error err = {0};
    ledger *l;
    if (cli_open_ledger(&l, &err))
        return cli_report(&err);
    printf("%5s  %-6s %-16s %-24s %-11s %13s %8s  %s\n", "id", "kind", "trigger", "model",
           "status", "step/steps", "loss", "started");
    int rc = ledger_list_runs(l, print_row, NULL, &err);
    ledger_close(l);
    return rc ? cli_report(&err) : 0;
}

static const char RATE_HELP[] =
    "usage: coin rate SAMPLE good|bad [--note TEXT]\n"
    "\n"
    "Rates a sample of the ledger (its id is printed by coin sample's runs; see\n"
    "coin runs) and prints its run's acceptance: the share of rated images that\n"
    "are good.  Our users call a trigger word working at 75%.\n";

int cmd_rate(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(RATE_HELP, stdout);
        return 0;
    }
    const char *note = NULL;
    if (argc == 5 && !strcmp(argv[3], "--note"))
        note = argv[4];
    else if (argc != 3)
        return cli_usage_error("rate", "give SAMPLE and good or bad");
    char *end;
    long long id = strtoll(argv[1], &end, 10);
    if (!*argv[1] || *end || id < 1)
        return cli_usage_error("rate", "SAMPLE is a sample id, not '%s'", argv[1]);
    int good = !strcmp(argv[2], "good");
    if (!good && strcmp(argv[2], "bad"))
        return cli_usage_error("rate", "a rating is good or bad, not '%s'", argv[2]);
    coin_error err = {0};
    ledger *l;
    ledger_sample s;
    if (cli_open_ledger(&l, &err))
        return cli_report(&err);
    int rc = ledger_get_sample(l, id, &s, &err);
    if (!rc) {
        rc = ledger_rate_sample(l, id, good, note, &err);
        double share;
        int rated;
        if (!rc && s.run && !(rc = ledger_acceptance(l, s.run, &share, &rated, &err)))
            printf("run %lld: %d rated, %.0f%% good (the bar is 75%%)\n", (long long)s.run, rated,
                   100 * share);
        ledger_sample_free(&s);
    }
    ledger_close(l);
    return rc ? cli_report(&err) : 0;
}

/* `coin show run N` and `coin show sample N` (cmd_show hands these over). */
int cmd_show_ledger(const char *what, const char *id_text)
{
    char *end;
    long long id = strtoll(id_text, &end, 10);
    if (!*id_text || *end || id < 1)
        return cli_usage_error("show", "%s takes a number, not '%s'", what, id_text);
    coin_error err = {0};
    ledger *l;
    if (cli_open_ledger(&l, &err))
        return cli_report(&err);
    int rc;
    if (!strcmp(what, "run")) {
        ledger_run r;
        ledger_run_row row;
        if (!(rc = ledger_get_run(l, id, &r, &err)) &&
            !(rc = ledger_run_summary(l, id, &row, &err))) {
            printf("run %lld: %s, %s, step %d of %d", id, r.kind, r.status, row.step, row.steps);
            if (!isnan(row.last_loss))
                printf(", last loss %.4f", row.last_loss);
            printf("\nmodel:   %s\n", row.model_path[0] ? row.model_path : "-");
            if (r.trigger)
                printf("trigger: %s (from \"%s\")\n", r.trigger, r.initializer ? r.initializer : "");
            printf("backend: %s %s, coin %s on %s\n", r.backend ? r.backend : "-",
                   r.precision ? r.precision : "", r.coin_version ? r.coin_version : "-",
                   r.host ? r.host : "-");
            if (r.out_dir)
                printf("folder:  %s\n", r.out_dir);
            char log[4096], name[32];
            snprintf(name, sizeof name, "run-%lld", id);
            ledger_job job;
            if (ledger_get_job(l, id, &job, NULL) == 0) {
                if (!job_log_path(log, sizeof log, name, NULL))
                    printf("job:     on %s, taken %d time%s; output: %s\n", job.device,
                           job.attempts, job.attempts == 1 ? "" : "s", log);
                ledger_job_free(&job);
            }
            if (r.error)
                printf("error:   %s\n", r.error);
            printf("config:  %s\n", r.config_json ? r.config_json : "{}");
            double share;
            int rated;
            if (!ledger_acceptance(l, id, &share, &rated, &err) && rated)
                printf("rated:   %d, %.0f%% good\n", rated, 100 * share);
            ledger_run_free(&r);
        }
    } else {
        ledger_sample s;
        if (!(rc = ledger_get_sample(l, id, &s, &err))) {
            printf("sample %lld of run %lld: %s\n", id, (long long)s.run,
                   s.image_path ? s.image_path : "-");
            printf("prompt:  %s\nnegative: %s\n", s.prompt, s.negative ? s.negative : "");
            printf("seed %llu, %d steps, guidance %g, %s (%s), %dx%d, rng %s\n",
                   (unsigned long long)s.seed, s.steps, s.guidance, s.sampler ? s.sampler : "-",
                   s.schedule ? s.schedule : "-", s.width, s.height, s.rng ? s.rng : "-");
            printf("model sha256 %s\nimage sha256 %s\n", s.model_sha256 ? s.model_sha256 : "-",
                   s.image_sha256 ? s.image_sha256 : "-");
            ledger_sample_free(&s);
        }
    }
    ledger_close(l);
    return rc ? cli_report(&err) : 0;
}

/* The image file of sample N, for `coin regen N`; *out is malloc'd. */
int cli_sample_image_path(const char *id_text, char **out, coin_error *err)
{
    char *end;
    long long id = strtoll(id_text, &end, 10);
    *out = NULL;
    if (!*id_text || *end || id < 1)
        return coin_fail(err, COIN_EINVAL, "'%s' is not a sample id", id_text);
    ledger *l;
    ledger_sample s;
    int rc = cli_open_ledger(&l, err);
    if (rc)
        return rc;
    if (!(rc = ledger_get_sample(l, id, &s, err))) {
        if (!s.image_path || !(*out = strdup(s.image_path)))
            rc = coin_fail(err, COIN_ENOTFOUND, "sample %lld has no image file", id);
        ledger_sample_free(&s);
    }
    ledger_close(l);
    return rc;
}

static const char CONTROL_HELP[] =
    "usage: coin pause RUN | coin stop RUN\n"
    "       coin resume RUN [--foreground | --no-follow | --detach]\n"
    "\n"
    "pause and stop ask a running training run to write a checkpoint and stop\n"
    "after its current step (it looks at its status in the ledger as it goes), a\n"
    "sampling run to stop after its current image; a queued job is taken off the\n"
    "queue.  A paused run is meant to continue, a stopped one to stay as it is;\n"
    "either can be resumed.\n"
    "\n"
    "resume continues a paused, stopped, interrupted (crashed, killed) or failed\n"
    "training run from its last checkpoint, as the same run in the ledger (its\n"
    "losses after that checkpoint are trained again), or starts a job that never\n"
    "reached a checkpoint again.  A sampling job resumed makes the images it had\n"
    "not recorded yet.  Like coin train it queues the job for the worker\n"
    "and follows it; Ctrl-C stops following, not the run.\n"
    "  --foreground   train in this process\n"
    "  --no-follow    print only the run id\n"
    "  --detach       say where to look and return\n";

/* `coin resume N`: queues run N again, from its folder's checkpoint when
 * it has one, else as its job was first given. */
static int resume_run(ledger *l, const ledger_run *r, const job_flags *jf)
{
    coin_error err = {0};
    long long id = (long long)r->id;
    char state[4200] = "";
    if (r->out_dir)
        snprintf(state, sizeof state, "%s/state.safetensors", r->out_dir);
    ledger_job job = {0};
    int have_job = ledger_get_job(l, r->id, &job, NULL) == 0;
    int rc = 0;
    if (strcmp(r->kind, "train") && (!have_job || jf->foreground)) {
        rc = coin_fail(&err, COIN_EINVAL, "run %lld is a %s run %s; resume it without "
                       "--foreground, or make its images again with coin sample", id, r->kind,
                       have_job ? "" : "that was not started through the queue");
    } else if (!strcmp(r->status, "running") || !strcmp(r->status, "queued") ||
               !strcmp(r->status, "done")) {
        rc = coin_fail(&err, COIN_EINVAL, "run %lld is %s; there is nothing to resume", id,
                       r->status);
    } else if (!r->out_dir && !have_job) {
        rc = coin_fail(&err, COIN_ENOTFOUND, "run %lld does not record its output folder", id);
    } else if (!path_exists(state) && !have_job) {
        rc = coin_fail(&err, COIN_ENOTFOUND, "run %lld never reached a checkpoint (%s does not "
                       "exist) and has no job to start again", id, state);
    }
    /* A run just asked to pause may still be writing its checkpoint:
     * whether it has one is known once its trainer lets the folder go. */
    if (!rc && r->out_dir && path_is_dir(r->out_dir) == 1)
        rc = ti_wait_for_folder(r->out_dir, 120, &err);
    if (rc) {
        ledger_job_free(&job);
        ledger_close(l);
        return cli_report(&err);
    }
    const char *device = have_job ? job.device : job_device(r->backend);
    char dev[16];
    snprintf(dev, sizeof dev, "%s", device);
    if (!strcmp(r->kind, "train") && path_exists(state)) {
        char *args[] = {"train", "--resume", (char *)r->out_dir, NULL};
        if (jf->foreground) {
            char run_text[24];
            snprintf(run_text, sizeof run_text, "%lld", id);
            char *fg[] = {"train", "--resume", (char *)r->out_dir, "--foreground", "--job",
                          run_text, NULL};
            /* Out of paused or stopped first (a pause asked before a job
             * starts stands), into a status no worker takes from the queue
             * and that the trainer's start replaces with running. */
            rc = ledger_set_run_status(l, r->id, "interrupted", r->error, &err);
            ledger_job_free(&job);
            ledger_close(l);
            return rc ? cli_report(&err) : cmd_train(6, fg);
        }
        rc = job_queue(l, r->id, 3, args, dev, &err);
    } else if (jf->foreground) {
        rc = coin_fail(&err, COIN_EINVAL, "run %lld never reached a checkpoint; coin resume %lld "
                       "without --foreground starts its job again", id, id);
    } else {
        rc = ledger_enqueue_job(l, r->id, job.argv_json, job.cwd, dev, &err);
    }
    ledger_job_free(&job);
    ledger_close(l);
    if (rc)
        return cli_report(&err);
    return job_hand_over(r->id, dev, jf);
}

/* `coin pause N`, `coin stop N`, `coin resume N`. */
int cmd_control(int argc, char **argv)
{
    const char *verb = argv[0];
    job_flags jf = {0};
    int resume = !strcmp(verb, "resume");
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(CONTROL_HELP, stdout);
        return 0;
    }
    if (resume) {
        int rc = job_take_flags(&argc, argv, &jf, verb);
        if (rc)
            return rc;
    }
    if (argc != 2 || argv[1][0] == '-')
        return cli_usage_error(verb, "give the RUN id (see coin runs)");
    char *end;
    long long id = strtoll(argv[1], &end, 10);
    if (!*argv[1] || *end || id < 1)
        return cli_usage_error(verb, "RUN is a number, not '%s'", argv[1]);
    coin_error err = {0};
    ledger *l;
    ledger_run r;
    if (cli_open_ledger(&l, &err))
        return cli_report(&err);
    int rc = ledger_get_run(l, id, &r, &err);
    if (rc) {
        ledger_close(l);
        return cli_report(&err);
    }
    if (resume) {
        rc = resume_run(l, &r, &jf);     /* closes l */
        ledger_run_free(&r);
        return rc;
    }
    int status = 0;
    const char *to = !strcmp(verb, "pause") ? "paused" : "stopped";
    if (!strcmp(r.status, "queued")) {
        if (ledger_set_run_status(l, id, to, NULL, &err))
            status = cli_report(&err);
        else
            printf("run %lld was waiting in the queue; now %s (coin resume %lld queues it "
                   "again)\n", id, to, id);
    } else if (strcmp(r.status, "running")) {
        coin_fail(&err, COIN_EINVAL, "run %lld is %s, not running", id, r.status);
        status = cli_report(&err);
    } else if (ledger_set_run_status(l, id, to, NULL, &err)) {
        status = cli_report(&err);
    } else if (!strcmp(r.kind, "train")) {
        printf("run %lld will write a checkpoint and stop after its current step\n", id);
    } else {
        printf("run %lld will stop after its current image\n", id);
    }
    ledger_run_free(&r);
    ledger_close(l);
    return status;
}
