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
#include "tui/cli.h"
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
    "writes a checkpoint and stops; --resume continues exactly where it stopped.\n"
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
    "  --detach               run in the background, detached from the terminal\n"
    "                         (closing it or losing SSH does not stop the run);\n"
    "                         output in OUT/train.log, progress in coin runs\n";

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
} train_view;

static int on_report(void *ctx, const ti_report *r)
{
    train_view *v = ctx;
    if (r->event) {
        if (v->started && v->bar.tty)
            fputc('\n', stderr);
        fprintf(stderr, "%s\n", r->event);
        if (!strncmp(r->event, "checkpoint ", 11))
            record_checkpoint(&v->rec, r->step, r->event + 11);
        return interrupted;
    }
    record_loss(&v->rec, r->step, r->loss, (float)r->lr);
    if ((v->requested = record_requested(&v->rec)))
        return 1;   /* the trainer writes a checkpoint, then stops */
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

/* Goes on in a process of its own session, detached from the terminal, so
 * that closing it or losing SSH does not stop the run; its output goes to
 * <out>/train.log.  The parent returns 0 at once (after saying where to
 * look); the child returns 0 and carries on, 1 when it could not detach. */
static int detach_from_terminal(const char *out_dir)
{
    char log[1200];
    snprintf(log, sizeof log, "%s/train.log", out_dir);
    mkdir(out_dir, 0777);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "coin train: cannot start a background process: %s\n", strerror(errno));
        return 1;
    }
    if (pid > 0) {
        printf("training in the background (process %d); its output: %s\n"
               "follow it with coin runs or coin show run N; coin pause / coin stop N\n",
               (int)pid, log);
        exit(0);
    }
    setsid();
    signal(SIGHUP, SIG_IGN);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644), null = open("/dev/null", O_RDONLY);
    if (fd < 0 || null < 0)
        _exit(1);
    dup2(null, STDIN_FILENO);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
    close(null);
    return 0;
}

/* Puts the run in the ledger: a new run's configuration (hashing the model
 * once here, so the trainer need not), or a resumed one's saved state. */
static int start_record(recorder *rec, ti_config *c, const char *resume, int steps_given,
                        const coin_backend *be, coin_error *err)
{
    char *config = NULL, sha[65] = "", state[1200];
    const char *model = NULL;
    int version = 0;
    if (resume) {
        st_file *f;
        snprintf(state, sizeof state, "%s/state.safetensors", resume);
        if (st_open(&f, state, NULL) == 0) {
            config = st_meta(f, "config") ? strdup(st_meta(f, "config")) : NULL;
            st_close(f);
        }
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
        config = ti_config_to_json(c);
    }
    /* A resumed run is described by its saved configuration. */
    cJSON *saved = resume && config ? cJSON_Parse(config) : NULL;
    const cJSON *token = cJSON_GetObjectItemCaseSensitive(saved, "token");
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(saved, "init_word");
    const cJSON *images = cJSON_GetObjectItemCaseSensitive(saved, "images");
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(saved, "steps");
    ledger_run run = {
        .kind = "train", .config_json = config ? config : "{}",
        .trigger = resume ? cJSON_GetStringValue(token) : c->token,
        .initializer = resume ? cJSON_GetStringValue(init) : c->init_word,
        .images_dir = resume ? cJSON_GetStringValue(images) : c->images,
        .image_hashes_json = "[]", .backend = be->name, .precision = "fp32",
        .coin_version = COIN_VERSION,
        .steps_planned = resume && cJSON_IsNumber(steps) && !steps_given ? (int)steps->valuedouble
                                                                          : c->steps};
    record_start(rec, &run, model, sha, version);
    cJSON_Delete(saved);
    free(config);
    return 0;
}

int cmd_train(int argc, char **argv)
{
    enum { O_NOSCALE = 256, O_SCHED, O_WARMUP, O_ACCUM, O_CLIP, O_SAVE, O_CKPT, O_PREV,
           O_PPROMPT, O_PSTEPS, O_PSEED, O_RESUME, O_CROP, O_RES, O_VEC, O_TPL, O_DETACH };
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
        {"resume", required_argument, 0, O_RESUME}, {"detach", no_argument, 0, O_DETACH},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    ti_config c;
    ti_config_defaults(&c);
    const char *backend = "auto", *resume = NULL;
    int detach = 0;
    long long v;
    int c_opt, steps_given = 0, rc = 0;
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
        case O_DETACH: detach = 1; break;
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
    if (backend_by_name(&be, backend, &err))
        return cli_report(&err);
    if (detach && (rc = detach_from_terminal(resume ? resume : c.out_dir)))
        return rc;
    struct sigaction sa = {.sa_handler = on_sigint};
    sigaction(SIGINT, &sa, NULL);
    train_view view = {0};
    ti_result res;
    if (start_record(&view.rec, &c, resume, steps_given, be, &err))
        return cli_report(&err);
    rc = resume ? ti_resume(resume, steps_given ? c.steps : 0, be, on_report, &view, &res, &err)
                : ti_train(&c, be, on_report, &view, &res, &err);
    if (view.started && view.bar.tty)
        fputc('\n', stderr);
    record_finish(&view.rec, rc ? "failed" : view.requested ? view.requested
                             : res.stopped ? "stopped" : "done", rc ? err.msg : NULL);
    if (rc)
        return cli_report(&err);
    const char *dir = resume ? resume : c.out_dir;
    if (res.stopped)
        fprintf(stderr, "stopped at step %d; continue with: coin train --resume %s\n",
                res.steps_done, dir);
    printf("%s\n", res.embedding);
    return 0;
}
