/*
 * cmd_train.c - `coin train`: textual inversion from the command line.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "core/checkpoint.h"
#include "core/safetensors.h"
#include "core/recipe.h"
#include "core/ti.h"
#include "core/fileio.h"
#include "tui/cli.h"
#include "tui/job.h"
#include "tui/progress.h"
#include "tui/record.h"

static const char TRAIN_HELP[] =
    "usage: coin train --model MODEL --images DIR --token WORD --init WORD [options]\n"
    "       coin train --resume DIR [--steps N]\n"
    "\n"
    "Learns the embedding of a new trigger WORD (e.g. \"<thumbs-up>\") from a folder\n"
    "of images, starting from the embedding of the one-token word --init.  Writes\n"
    "into --out: learned_embeds.safetensors (diffusers format; AUTOMATIC1111, kohya\n"
    "and stable-diffusion.cpp load it too) and a copy at every checkpoint, the\n"
    "resume state, loss.csv, and preview PNGs from fixed prompts and seeds.  Ctrl-C\n"
    "stops following (see below); --resume continues exactly where it stopped.\n"
    "\n"
    "  --out DIR              output folder (default: ti-WORD)\n"
    "  --vectors N            vectors per trigger (default 1)\n"
    "  --templates T          object (default), style, or a file with one prompt per\n"
    "                         line, {} marking the trigger; an image NAME.png with a\n"
    "                         NAME.txt beside it uses that caption instead\n"
    "  --resolution R         training size (default: the model's native size)\n"
    "  --center-crop          crop to the central square before resizing\n"
    "  --lr X                 learning rate (default 5e-4), multiplied by\n"
    "                         batch x grad-accum unless --no-scale-lr\n"
    "  --lr-schedule S        constant (default), constant_with_warmup, linear, cosine\n"
    "  --warmup N             warm-up steps for the schedules that have one\n"
    "  --steps N              optimizer steps (default 2000)\n"
    "  --batch N              images per step (default 4)\n"
    "  --grad-accum N         micro-batches per step (default 1)\n"
    "  --clip-grad X          clip the gradient norm to X (default: off)\n"
    "  --save-every N         checkpoint every N steps (default 250)\n"
    "  --seed N               default 42; the same seed gives the same run\n"
    "  --grad-checkpointing   recompute UNet activations in the backward pass:\n"
    "                         less memory, about one more forward pass of time\n"
    "  --previews N           preview images per checkpoint (default 4, 0: none)\n"
    "  --preview-prompt P     default \"a photo of a {}\"\n"
    "  --preview-steps N      default 25 (DPM++ 2M, as diffusers' validation)\n"
    "  --preview-seed N       seeds N .. N+previews-1 (default 42)\n"
    "  --version sd1|sd2      override the detected model version\n"
    "  --backend B            auto, cpu or cuda\n"
    "\n"
    "Where it runs: the run is queued in the ledger ($COIN_HOME, default\n"
    "~/.local/share/coin) and a worker detached from the terminal trains it (one\n"
    "job at a time per device; closing the terminal or losing SSH does not stop\n"
    "it; its output goes to $COIN_HOME/logs/run-N.log).  This command follows the\n"
    "run's progress; Ctrl-C stops following, not the run: coin pause N / coin stop\n"
    "N write a checkpoint and stop it, coin resume N continues it (the same run).\n"
    "  --foreground           train in this process instead (Ctrl-C writes a\n"
    "                         checkpoint and stops)\n"
    "  --no-follow            queue, make sure a worker runs, print only the run id\n"
    "  --detach               queue, make sure a worker runs, say where to look\n";

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

typedef struct train_view {
    progress bar;
    int started;
    recorder rec;
    const char *requested;      /* "paused" / "stopped" asked through the ledger */
    int save_every;
    const char *out_dir;
} train_view;

static int on_report(void *ctx, const ti_report *r)
{
    train_view *v = ctx;
    if (r->event) {
        if (v->started && v->bar.tty)
            fputc('\n', stderr);
        fprintf(stderr, "%s\n", r->event);
        /* The event names learned_embeds.safetensors, which the next
         * checkpoint replaces; the ledger records the step's own copy. */
        if (!strncmp(r->event, "checkpoint ", 11)) {
            char step_file[1300];
            snprintf(step_file, sizeof step_file, "%s/learned_embeds-steps-%d.safetensors",
                     v->out_dir, r->step);
            record_checkpoint(&v->rec, r->step, path_exists(step_file) ? step_file
                                                                        : r->event + 11);
        }
        return interrupted;
    }
    record_loss(&v->rec, r->step, r->loss, (float)r->lr);
    /* A checkpoint follows this step: its losses go into the ledger before
     * the trainer writes the state, so a crash right after the state can
     * never leave steps the checkpoint holds without their losses. */
    if (r->step % v->save_every == 0 || r->step == r->total || interrupted)
        record_flush(&v->rec);
    if ((v->requested = record_requested(&v->rec)) || v->rec.disk_full) {
        record_flush(&v->rec);
        return 1;   /* the trainer writes a checkpoint, then stops */
    }
    if (!v->started) {
        progress_start(&v->bar, "train", r->total);
        v->bar.start = progress_now();
        v->started = 1;
    }
    snprintf(v->bar.what, sizeof v->bar.what, "loss %.4f (smoothed %.4f)%s", r->loss, r->smooth,
             r->skipped ? ", non-finite steps skipped" : "");
    v->bar.total = r->total;
    progress_update(&v->bar, r->step);
    return interrupted;
}

static int parse_int(const char *opt, const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || !*s || *end || v < lo || v > hi)
        return cli_usage_error("train", "%s takes a whole number from %lld to %lld, not '%s'", opt,
                               lo, hi, s);
    *out = v;
    return 0;
}

static int parse_float(const char *opt, const char *s, float *out)
{
    char *end;
    float v = strtof(s, &end);
    if (!*s || *end || !isfinite(v) || v < 0)
        return cli_usage_error("train", "%s takes a non-negative number, not '%s'", opt, s);
    *out = v;
    return 0;
}

static int copy_arg(const char *opt, char *dst, size_t len, const char *s)
{
    if (strlen(s) >= len)
        return cli_usage_error("train", "%s is too long", opt);
    strcpy(dst, s);
    return 0;
}

/* path made absolute (symbolic links resolved when it exists), so that a
 * run's folder is recorded the same way from any current folder. */
static void absolute_path(const char *path, char *buf, size_t len)
{
    char real[4096];
    if (realpath(path, real)) {
        snprintf(buf, len, "%s", real);
        return;
    }
    char cwd[4096];
    if (path[0] == '/' || !getcwd(cwd, sizeof cwd) || strlen(cwd) + strlen(path) + 2 > len) {
        snprintf(buf, len, "%s", path);
    } else {
        strcpy(buf, cwd);
        strcat(buf, "/");
        strcat(buf, path);
    }
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/')
        buf[--n] = '\0';
}

/* What a resume state says: its configuration (malloc'd JSON) and step. */
static int read_state(const char *dir, char **config, int *step, coin_error *err)
{
    char state[4200];
    st_file *f;
    *config = NULL;
    *step = 0;
    snprintf(state, sizeof state, "%s/state.safetensors", dir);
    if (!path_exists(state))
        return coin_fail(err, COIN_ENOTFOUND, "%s has no state.safetensors: no run to resume "
                         "there (a run writes it at its first checkpoint)", dir);
    int rc = st_open(&f, state, err);
    if (rc)
        return rc;
    const char *cfg = st_meta(f, "config"), *at = st_meta(f, "step");
    if (!cfg || !at)
        rc = coin_fail(err, COIN_EFORMAT, "%s: the resume state lacks its configuration", state);
    else if (!(*config = strdup(cfg)))
        rc = coin_fail(err, COIN_ENOMEM, "out of memory");
    else
        *step = atoi(at);
    st_close(f);
    return rc;
}

/* The ledger's description of a run: from the configuration c for a new
 * run, from the saved configuration (JSON) for a resumed one.  Strings
 * point into c, saved or out_dir. */
static void describe_run(ledger_run *run, const ti_config *c, const cJSON *saved,
                         const char *config_json, const char *out_dir, int steps_given,
                         const coin_backend *be)
{
    memset(run, 0, sizeof *run);
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(saved, "steps");
    run->kind = "train";
    run->config_json = config_json;
    run->trigger = saved ? cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(saved, "token"))
                         : c->token;
    run->initializer = saved ? cJSON_GetStringValue(
                                   cJSON_GetObjectItemCaseSensitive(saved, "init_word"))
                             : c->init_word;
    run->images_dir = saved ? cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(saved,
                                                                                     "images"))
                            : c->images;
    run->image_hashes_json = "[]";
    run->backend = be->name;
    run->precision = "fp32";
    run->coin_version = COIN_VERSION;
    run->out_dir = out_dir;
    run->steps_planned = saved && cJSON_IsNumber(steps) && !steps_given ? (int)steps->valuedouble
                                                                        : c->steps;
}

/* c as JSON (malloc'd) with out_dir, the absolute form of its output
 * folder, in place of the folder as given: the ledger's record of a run
 * must not depend on where coin was started. */
static char *config_json_at(const ti_config *c, const char *out_dir)
{
    ti_config abs = *c;
    if (strlen(out_dir) < sizeof abs.out_dir)
        strcpy(abs.out_dir, out_dir);
    return ti_config_to_json(&abs);
}

/* Puts the run in the ledger for this process to train it: a new run's
 * configuration (hashing the model once here, so the trainer need not), or
 * a resumed one's saved state, continuing its own row (job_run, or the run
 * recorded for the folder) from the state's step. */
static int start_record(recorder *rec, ti_config *c, const char *resume, int steps_given,
                        int64_t job_run, const coin_backend *be, coin_error *err)
{
    char *config = NULL, sha[65] = "", out_dir[4096];
    const char *model = NULL;
    int version = 0, from_step = 0;
    absolute_path(resume ? resume : c->out_dir, out_dir, sizeof out_dir);
    if (resume) {
        int rc = read_state(resume, &config, &from_step, err);
        if (rc)
            return rc;
    } else {
        checkpoint *ck;
        int rc = checkpoint_open(&ck, c->model, (sd_version)c->version, err);
        if (rc)
            return rc;
        version = ck->version;
        rc = cli_hash_file(checkpoint_main_file(ck), "the model", sha, err);
        checkpoint_close(ck);
        if (rc)
            return rc;
        snprintf(c->model_sha256, sizeof c->model_sha256, "%s", sha);
        model = c->model;
        config = config_json_at(c, out_dir);
    }
    cJSON *saved = resume && config ? cJSON_Parse(config) : NULL;
    ledger_run run;
    describe_run(&run, c, saved, config ? config : "{}", out_dir, steps_given, be);
    int64_t existing = job_run;
    if (!existing && resume) {
        ledger *l;
        if (cli_open_ledger(&l, NULL) == 0) {
            ledger_find_run_by_dir(l, out_dir, &existing, NULL);
            ledger_close(l);
        }
    }
    if (existing) {
        record_attach(rec, existing, &run, model, sha, version, from_step, job_run != 0);
        /* The checkpoint resumed from may have been written just before a
         * crash took its ledger row with it. */
        char step_file[4200];
        snprintf(step_file, sizeof step_file, "%s/learned_embeds-steps-%d.safetensors", out_dir,
                 from_step);
        if (resume && path_exists(step_file))
            record_checkpoint(rec, from_step, step_file);
    } else {
        record_start(rec, &run, model, sha, version);
    }
    cJSON_Delete(saved);
    free(config);
    return 0;
}

/* Queues the run for the worker (`coin train` without --foreground): a
 * new run is recorded as queued with what is known before the model is
 * hashed; a resumed one continues its own row.  job_argv is the command
 * line as given (without the job flags). */
static int queue_train(ti_config *c, const char *resume, int steps_given, const coin_backend *be,
                       int job_argc, char **job_argv, const job_flags *jf)
{
    coin_error err = {0};
    char out_dir[4096], *config = NULL, steps_text[16];
    int from_step = 0;
    absolute_path(resume ? resume : c->out_dir, out_dir, sizeof out_dir);
    if (resume) {
        if (read_state(resume, &config, &from_step, &err))
            return cli_report(&err);
    } else {
        char state[4200];
        snprintf(state, sizeof state, "%s/state.safetensors", out_dir);
        /* What can be checked without loading anything fails now, not in
         * the worker. */
        if (!path_exists(c->model) || path_is_dir(c->images) != 1) {
            coin_fail(&err, COIN_ENOTFOUND, "%s: no such %s", path_exists(c->model) ? c->images
                                                                                  : c->model,
                      path_exists(c->model) ? "folder" : "file or folder");
            return cli_report(&err);
        }
        if (path_exists(state)) {
            coin_fail(&err, COIN_EINVAL, "%s already holds a training run; continue it with "
                      "coin train --resume %s, or choose another output folder", c->out_dir,
                      c->out_dir);
            return cli_report(&err);
        }
        config = config_json_at(c, out_dir);
    }
    cJSON *saved = resume && config ? cJSON_Parse(config) : NULL;
    ledger_run run;
    describe_run(&run, c, saved, config ? config : "{}", out_dir, steps_given, be);
    char host[256];
    cli_host_name(host, sizeof host);
    run.host = host;
    ledger *l = NULL;
    int64_t id = 0;
    int rc = cli_open_ledger(&l, &err);
    if (!rc && resume)
        rc = ledger_find_run_by_dir(l, out_dir, &id, &err);
    if (!rc && id) {
        ledger_run old;
        if (!(rc = ledger_get_run(l, id, &old, &err))) {
            if (!strcmp(old.status, "running") || !strcmp(old.status, "queued"))
                rc = coin_fail(&err, COIN_EINVAL, "run %lld (%s) is %s already; follow it with "
                               "coin show run %lld", (long long)id, out_dir, old.status,
                               (long long)id);
            ledger_run_free(&old);
        }
        if (!rc)
            rc = ledger_update_run(l, id, &run, &err);
    } else if (!rc) {
        rc = ledger_insert_run(l, &run, &id, &err);
    }
    /* A resumed run's job is the resumption itself, from its folder. */
    char *resume_args[] = {"train", "--resume", out_dir, "--steps", steps_text, NULL};
    snprintf(steps_text, sizeof steps_text, "%d", c->steps);
    const char *device = job_device(be->name);
    if (!rc)
        rc = resume ? job_queue(l, id, steps_given ? 5 : 3, resume_args, device, &err)
                    : job_queue(l, id, job_argc, job_argv, device, &err);
    cJSON_Delete(saved);
    free(config);
    ledger_close(l);
    if (rc)
        return cli_report(&err);
    return job_hand_over(id, device, jf);
}

static int train_main(int argc, char **argv, int job_argc, char **job_argv, const job_flags *jf);

int cmd_train(int argc, char **argv)
{
    job_flags jf;
    int rc = job_take_flags(&argc, argv, &jf, "train");
    if (rc)
        return rc;
    /* The command line as given, for the job (getopt reorders argv). */
    char **job_argv = job_copy_argv(argc, argv);
    if (!job_argv)
        return 1;
    rc = train_main(argc, argv, argc, job_argv, &jf);
    free(job_argv);
    return rc;
}

static int train_main(int argc, char **argv, int job_argc, char **job_argv, const job_flags *jf)
{
    enum { O_NOSCALE = 256, O_SCHED, O_WARMUP, O_ACCUM, O_CLIP, O_SAVE, O_CKPT, O_PREV,
           O_PPROMPT, O_PSTEPS, O_PSEED, O_RESUME, O_CROP, O_RES, O_VEC, O_TPL };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"images", required_argument, 0, 'i'},
        {"token", required_argument, 0, 't'}, {"init", required_argument, 0, 'I'},
        {"out", required_argument, 0, 'o'}, {"vectors", required_argument, 0, O_VEC},
        {"templates", required_argument, 0, O_TPL}, {"resolution", required_argument, 0, O_RES},
        {"center-crop", no_argument, 0, O_CROP}, {"lr", required_argument, 0, 'l'},
        {"no-scale-lr", no_argument, 0, O_NOSCALE}, {"lr-schedule", required_argument, 0, O_SCHED},
        {"warmup", required_argument, 0, O_WARMUP}, {"steps", required_argument, 0, 's'},
        {"batch", required_argument, 0, 'b'}, {"grad-accum", required_argument, 0, O_ACCUM},
        {"clip-grad", required_argument, 0, O_CLIP}, {"save-every", required_argument, 0, O_SAVE},
        {"seed", required_argument, 0, 'S'}, {"grad-checkpointing", no_argument, 0, O_CKPT},
        {"previews", required_argument, 0, O_PREV}, {"preview-prompt", required_argument, 0, O_PPROMPT},
        {"preview-steps", required_argument, 0, O_PSTEPS}, {"preview-seed", required_argument, 0, O_PSEED},
        {"version", required_argument, 0, 'v'}, {"backend", required_argument, 0, 'B'},
        {"resume", required_argument, 0, O_RESUME},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    ti_config c;
    ti_config_defaults(&c);
    const char *backend = "auto", *resume = NULL;
    long long v;
    int c_opt, steps_given = 0, rc = 0;
    optind = 0;     /* a fresh getopt scan (tests call commands in-process) */
    while ((c_opt = getopt_long(argc, argv, "m:i:t:I:o:l:s:b:S:v:B:h", opts, NULL)) != -1) {
        switch (c_opt) {
        case 'h': fputs(TRAIN_HELP, stdout); return 0;
        case 'm': rc = copy_arg("--model", c.model, sizeof c.model, optarg); break;
        case 'i': rc = copy_arg("--images", c.images, sizeof c.images, optarg); break;
        case 't': rc = copy_arg("--token", c.token, sizeof c.token, optarg); break;
        case 'I': rc = copy_arg("--init", c.init_word, sizeof c.init_word, optarg); break;
        case 'o': rc = copy_arg("--out", c.out_dir, sizeof c.out_dir, optarg); break;
        case O_TPL: rc = copy_arg("--templates", c.templates, sizeof c.templates, optarg); break;
        case O_PPROMPT:
            rc = copy_arg("--preview-prompt", c.preview_prompt, sizeof c.preview_prompt, optarg);
            break;
        case 'B': backend = optarg; break;
        case O_RESUME: resume = optarg; break;
        case O_CROP: c.center_crop = 1; break;
        case O_NOSCALE: c.scale_lr = 0; break;
        case O_CKPT: c.checkpointing = 1; break;
        case 'l': rc = parse_float("--lr", optarg, &c.lr); break;
        case O_CLIP: rc = parse_float("--clip-grad", optarg, &c.max_grad_norm); break;
        case O_SCHED:
            if (ti_lr_schedule_parse(optarg) < 0)
                return cli_usage_error("train", "--lr-schedule takes constant, "
                                       "constant_with_warmup, linear or cosine");
            c.schedule = (ti_lr_schedule)ti_lr_schedule_parse(optarg);
            break;
        case 'v':
            if (strcmp(optarg, "sd1") && strcmp(optarg, "sd2"))
                return cli_usage_error("train", "--version takes sd1 or sd2");
            c.version = optarg[2] - '0';
            break;
        default: {
            struct { int opt; const char *name; long long lo, hi; int *dst; } ints[] = {
                {O_VEC, "--vectors", 1, 16, &c.vectors}, {O_RES, "--resolution", 8, 4096, &c.resolution},
                {O_WARMUP, "--warmup", 0, 1000000, &c.warmup}, {'s', "--steps", 1, 1000000, &c.steps},
                {'b', "--batch", 1, 64, &c.batch}, {O_ACCUM, "--grad-accum", 1, 1024, &c.grad_accum},
                {O_SAVE, "--save-every", 1, 1000000, &c.save_every},
                {O_PREV, "--previews", 0, 8, &c.n_previews},
                {O_PSTEPS, "--preview-steps", 1, 1000, &c.preview_steps},
            };
            size_t k = 0;
            for (; k < sizeof ints / sizeof ints[0] && ints[k].opt != c_opt; k++)
                ;
            if (k < sizeof ints / sizeof ints[0]) {
                if ((rc = parse_int(ints[k].name, optarg, ints[k].lo, ints[k].hi, &v)))
                    return rc;
                *ints[k].dst = (int)v;
                steps_given |= c_opt == 's';
            } else if (c_opt == 'S' || c_opt == O_PSEED) {
                if ((rc = parse_int(c_opt == 'S' ? "--seed" : "--preview-seed", optarg, 0,
                                    0x7fffffffffffffffLL, &v)))
                    return rc;
                *(c_opt == 'S' ? &c.seed : &c.preview_seed) = (uint64_t)v;
            } else {
                return cli_usage_error("train", "bad option");
            }
        }
        }
        if (rc)
            return rc;
    }
    if (optind != argc)
        return cli_usage_error("train", "unexpected argument '%s'", argv[optind]);
    if (!resume && (!c.model[0] || !c.images[0] || !c.token[0] || !c.init_word[0]))
        return cli_usage_error("train", "--model, --images, --token and --init are required "
                               "(or --resume DIR)");
    if (!resume && !c.out_dir[0]) {
        /* ti-<the trigger's letters, digits, - and _> */
        size_t n = (size_t)snprintf(c.out_dir, sizeof c.out_dir, "ti-");
        for (const char *s = c.token; *s && n < 100; s++)
            if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
                *s == '-' || *s == '_')
                c.out_dir[n++] = *s;
        c.out_dir[n] = '\0';
    }

    coin_error err = {0};
    const coin_backend *be;
    if (backend_by_name(&be, backend, &err)) {
        if (jf->job_run)
            record_job_failed(jf->job_run, err.msg);
        return cli_report(&err);
    }
    if (!jf->foreground)
        return queue_train(&c, resume, steps_given, be, job_argc, job_argv, jf);
    /* A queued fresh job whose folder got a checkpoint meanwhile (it was
     * started again after a pause) continues from it. */
    char state_path[1200];
    if (jf->job_run && !resume &&
        !path_join(state_path, sizeof state_path, c.out_dir, "state.safetensors", NULL) &&
        path_exists(state_path))
        resume = c.out_dir;
    struct sigaction sa = {.sa_handler = on_sigint};
    sigaction(SIGINT, &sa, NULL);
    train_view view = {0};
    ti_result res;
    if (start_record(&view.rec, &c, resume, steps_given, jf->job_run, be, &err)) {
        if (jf->job_run)
            record_job_failed(jf->job_run, err.msg);
        return cli_report(&err);
    }
    /* The saved configuration decides for a resumed run. */
    char out_dir[4096];
    absolute_path(resume ? resume : c.out_dir, out_dir, sizeof out_dir);
    view.out_dir = out_dir;
    view.save_every = c.save_every;
    if (resume) {
        char *config;
        int at;
        if (read_state(resume, &config, &at, NULL) == 0) {
            cJSON *saved = cJSON_Parse(config);
            const cJSON *every = cJSON_GetObjectItemCaseSensitive(saved, "save_every");
            if (cJSON_IsNumber(every) && every->valuedouble >= 1)
                view.save_every = (int)every->valuedouble;
            cJSON_Delete(saved);
            free(config);
        }
    }
    rc = resume ? ti_resume(resume, steps_given ? c.steps : 0, be, on_report, &view, &res, &err)
                : ti_train(&c, be, on_report, &view, &res, &err);
    if (view.started && view.bar.tty)
        fputc('\n', stderr);
    const char *dir = resume ? resume : c.out_dir;
    if (rc && (job_disk_full(err.msg) || view.rec.disk_full)) {
        /* Nothing is lost: the last checkpoint is intact, and every write
         * goes to a temporary first.  Pause, to be resumed. */
        char why[COIN_ERROR_MSG_MAX + 400];
        snprintf(why, sizeof why, "the disk is full (%s); the last checkpoint is intact: free "
                 "some space, then continue with coin resume %lld", err.msg,
                 (long long)view.rec.run);
        record_finish(&view.rec, "paused", why);
        fprintf(stderr, "coin: paused: %s\n", why);
        return 1;
    }
    if (!rc && view.rec.disk_full) {
        char why[400];
        snprintf(why, sizeof why, "the disk is full (the ledger could not record the run); "
                 "free some space, then continue with coin resume %lld", (long long)view.rec.run);
        record_finish(&view.rec, "paused", why);
        fprintf(stderr, "coin: paused: %s\n", why);
        return 1;
    }
    record_finish(&view.rec, rc ? "failed" : view.requested ? view.requested
                             : res.stopped ? "stopped" : "done", rc ? err.msg : NULL);
    if (rc)
        return cli_report(&err);
    if (res.stopped)
        fprintf(stderr, "stopped at step %d; continue with: coin train --resume %s%s\n",
                res.steps_done, dir, view.rec.run ? "" : "");
    printf("%s\n", res.embedding);
    return 0;
}
