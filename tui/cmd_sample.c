/*
 * cmd_sample.c - `coin sample`: text to image from the command line, and
 * `coin show`: what a coin PNG says about how it was made.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/image.h"
#include "core/infotext.h"
#include "core/recipe.h"
#include "core/sample.h"
#include "tui/cli.h"
#include "tui/job.h"
#include "tui/progress.h"
#include "tui/record.h"

static const char SAMPLE_HELP[] =
    "usage: coin sample --model MODEL --prompt TEXT --out PATH.png [options]\n"
    "\n"
    "Turns a prompt into images.  The same seed gives the same image every time;\n"
    "image i of a batch uses seed + i, so any one can be made again alone.  Each\n"
    "PNG carries its parameters (AUTOMATIC1111's \"parameters\" text) and coin's\n"
    "recipe (model and embedding sha256, backend, precision): see coin show.\n"
    "\n"
    "  --model MODEL         single-file .safetensors or diffusers folder\n"
    "  --prompt TEXT         what to draw; trigger words of --embedding files work\n"
    "  --negative TEXT       what to avoid (default: nothing)\n"
    "  --seed N              default 42\n"
    "  --steps N             1 to 1000, default 50\n"
    "  --cfg G               guidance scale, default 7.5 (1 or less: no guidance)\n"
    "  --sampler NAME        ddim, pndm, euler, euler_a, dpmpp_2m; default: the\n"
    "                        model's own (pndm for SD 1.x, ddim for SD 2.x)\n"
    "  --schedule S          default or karras (euler, euler_a, dpmpp_2m)\n"
    "  --width W --height H  default: the model's native size (512, or 768 for\n"
    "                        SD 2.x v models)\n"
    "  --batch N             images, seeds seed .. seed+N-1 (default 1)\n"
    "  --rng cuda|cpu        cuda (default): torch's CUDA randn, as AUTOMATIC1111\n"
    "                        and stable-diffusion.cpp; cpu: torch's CPU randn, as\n"
    "                        diffusers with a CPU generator and ComfyUI\n"
    "  --embedding FILE      a textual-inversion embedding (repeatable); its trigger\n"
    "                        is the tensor's key (diffusers) or the file's stem\n"
    "  --out PATH.png        the image; with --batch N, PATH-0.png ... PATH-(N-1).png\n"
    "  --backend B           auto, cpu or cuda (default auto)\n"
    "  --version sd1|sd2     override the detected model version\n"
    "  --prediction eps|v    override the prediction type\n"
    "\n"
    "Where it runs: the job is queued in the ledger and a worker detached from the\n"
    "terminal makes the images (output in $COIN_HOME/logs/run-N.log); this command\n"
    "follows it and prints each image's path as it is recorded.  Ctrl-C stops\n"
    "following, not the job.\n"
    "  --foreground          make the images in this process instead\n"
    "  --no-follow           queue, make sure a worker runs, print only the run id\n"
    "  --detach              queue, make sure a worker runs, say where to look\n";

/* Parses a whole number in [lo, hi] or fails with the option's name. */
static int parse_long(const char *opt, const char *s, long long lo, long long hi,
                      long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || !*s || *end || v < lo || v > hi)
        return cli_usage_error("sample", "%s takes a whole number from %lld to %lld, not '%s'",
                               opt, lo, hi, s);
    *out = v;
    return 0;
}

/* PATH.png, or PATH-i.png for image i of a batch. */
static void output_path(char *buf, size_t len, const char *out, int batch, int i)
{
    if (batch == 1) {
        snprintf(buf, len, "%s", out);
        return;
    }
    const char *dot = strrchr(out, '.');
    int stem = dot && !strchr(dot, '/') ? (int)(dot - out) : (int)strlen(out);
    snprintf(buf, len, "%.*s-%d%s", stem, out, i, dot && !strchr(dot, '/') ? dot : ".png");
}

static int on_step(void *ctx, int step, int total)
{
    (void)total;
    progress_update(ctx, step);
    return 0;
}

static int on_hash(uint64_t done, uint64_t total, void *ctx)
{
    progress *bar = ctx;
    if (total < (256u << 20))
        return 0;   /* small files hash in a blink: no progress line */
    /* Whole MiB keep the step counter in int range for any file. */
    bar->total = (int)(total >> 20);
    progress_update(bar, (int)(done >> 20));
    return 0;
}

int cli_hash_file(const char *path, const char *what, char hex[65], coin_error *err)
{
    uint8_t digest[32];
    progress bar;
    char label[160];
    snprintf(label, sizeof label, "hashing %s (MiB)", what);
    progress_start(&bar, label, 1);
    int rc = sha256_file(path, digest, on_hash, &bar, err);
    if (!rc)
        sha256_hex(digest, hex);
    return rc;
}

typedef struct hashes {
    char model[65];
    char embeddings[PIPELINE_MAX_EMBEDDINGS][65];
} hashes;

/* AUTOMATIC1111's "parameters" text and coin's recipe for one image. */
static int describe(const sd_pipeline *p, const sample_params *sp, const hashes *h,
                    const char *backend, char **params, char **json, coin_error *err)
{
    recipe r = {0};
    r.model.path = p->ck->path;
    memcpy(r.model.sha256, h->model, 65);
    r.n_embeddings = p->n_embeddings;
    infotext it = {0};
    char model_short[11], ti_short[13], model_name[256];
    int rc = 0;
    for (int i = 0; i < p->n_embeddings && !rc; i++) {
        r.embeddings[i].path = p->embeddings[i].path;
        r.embeddings[i].token = p->embeddings[i].token;
        memcpy(r.embeddings[i].sha256, h->embeddings[i], 65);
        snprintf(ti_short, sizeof ti_short, "%.12s", h->embeddings[i]);
        rc = infotext_add_ti(&it, p->embeddings[i].token, ti_short, err);
    }
    r.prompt = (char *)sp->prompt;
    r.negative = (char *)sp->negative;
    r.seed = sp->seed;
    r.steps = sp->steps;
    r.cfg = sp->cfg;
    snprintf(r.sampler, sizeof r.sampler, "%s", sampler_name(sp->sampler));
    r.karras = sp->karras;
    r.width = sp->width;
    r.height = sp->height;
    snprintf(r.rng, sizeof r.rng, "%s", rng_kind_name(sp->rng));
    snprintf(r.backend, sizeof r.backend, "%s", backend);
    snprintf(r.precision, sizeof r.precision, "fp32");
    snprintf(r.prediction, sizeof r.prediction, "%s", sd_prediction_name(p->prediction));
    snprintf(r.version, sizeof r.version, "%s", COIN_VERSION);

    snprintf(model_short, sizeof model_short, "%.10s", h->model);
    path_stem(p->ck->path, model_name, sizeof model_name);
    it.prompt = (char *)sp->prompt;
    it.negative_prompt = (char *)sp->negative;
    it.have = INFOTEXT_STEPS | INFOTEXT_CFG | INFOTEXT_SEED | INFOTEXT_SIZE;
    it.steps = sp->steps;
    it.cfg_scale = sp->cfg;
    it.seed = (int64_t)sp->seed;
    it.width = sp->width;
    it.height = sp->height;
    it.sampler = (char *)sampler_a1111_name(sp->sampler);
    it.schedule_type = sp->karras ? "Karras" : "Automatic";
    it.model_hash = model_short;
    it.model_name = model_name;
    it.rng = (char *)infotext_rng_from_coin(rng_kind_name(sp->rng));
    it.version = "coin " COIN_VERSION;
    *params = *json = NULL;
    if (!rc)
        rc = infotext_format(&it, params, err);
    if (!rc)
        rc = recipe_to_json(&r, json, err);
    /* Only the TI list was allocated by the infotext calls. */
    for (size_t i = 0; i < it.n_ti; i++) {
        free(it.ti[i].name);
        free(it.ti[i].hash);
    }
    free(it.ti);
    if (rc) {
        free(*params);
        *params = NULL;
    }
    return rc;
}

/* The options of `coin sample`, as given (-1 / NAN: not given). */
typedef struct sample_args {
    const char *model, *prompt, *negative, *out, *backend;
    const char *embeddings[PIPELINE_MAX_EMBEDDINGS];
    int n_emb;
    long long seed, steps, width, height, batch;
    int sampler, karras, rng;
    float cfg;
    sd_version version;
    sd_prediction prediction;
} sample_args;

/* coin sample's options into a: 0, 1 after printing --help, 2 after a
 * usage error. */
static int parse_sample_args(int argc, char **argv, sample_args *a)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"prompt", required_argument, 0, 'p'},
        {"negative", required_argument, 0, 'n'}, {"seed", required_argument, 0, 's'},
        {"steps", required_argument, 0, 't'}, {"cfg", required_argument, 0, 'g'},
        {"sampler", required_argument, 0, 'S'}, {"schedule", required_argument, 0, 'k'},
        {"width", required_argument, 0, 'W'}, {"height", required_argument, 0, 'H'},
        {"batch", required_argument, 0, 'b'}, {"rng", required_argument, 0, 'r'},
        {"embedding", required_argument, 0, 'e'}, {"out", required_argument, 0, 'o'},
        {"backend", required_argument, 0, 'B'}, {"version", required_argument, 0, 'v'},
        {"prediction", required_argument, 0, 'P'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->negative = "";
    a->backend = "auto";
    a->seed = 42;
    a->steps = a->width = a->height = -1;
    a->batch = 1;
    a->sampler = -1;
    a->rng = RNG_CUDA;
    a->cfg = NAN;
    char *end;
    int c;
    while ((c = getopt_long(argc, argv, "m:p:n:s:t:g:S:k:W:H:b:r:e:o:B:v:P:h", opts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(SAMPLE_HELP, stdout); return 1;
        case 'm': a->model = optarg; break;
        case 'p': a->prompt = optarg; break;
        case 'n': a->negative = optarg; break;
        case 'o': a->out = optarg; break;
        case 'B': a->backend = optarg; break;
        case 's':
            if (parse_long("--seed", optarg, 0, 0x7fffffffffffffffLL, &a->seed))
                return 2;
            break;
        case 't':
            if (parse_long("--steps", optarg, 1, 1000, &a->steps))
                return 2;
            break;
        case 'W':
            if (parse_long("--width", optarg, 8, 4096, &a->width))
                return 2;
            break;
        case 'H':
            if (parse_long("--height", optarg, 8, 4096, &a->height))
                return 2;
            break;
        case 'b':
            if (parse_long("--batch", optarg, 1, 1000, &a->batch))
                return 2;
            break;
        case 'g':
            a->cfg = strtof(optarg, &end);
            if (!*optarg || *end || !isfinite(a->cfg) || a->cfg < 0 || a->cfg > 100)
                return cli_usage_error("sample", "--cfg takes a number from 0 to 100, not '%s'",
                                       optarg);
            break;
        case 'S':
            if ((a->sampler = sampler_parse(optarg)) < 0)
                return cli_usage_error("sample", "unknown sampler '%s' (ddim, pndm, euler, "
                                       "euler_a, dpmpp_2m)", optarg);
            break;
        case 'k':
            if (strcmp(optarg, "default") && strcmp(optarg, "karras"))
                return cli_usage_error("sample", "--schedule takes default or karras");
            a->karras = !strcmp(optarg, "karras");
            break;
        case 'r':
            if ((a->rng = rng_kind_parse(optarg)) < 0)
                return cli_usage_error("sample", "--rng takes cuda or cpu, not '%s'", optarg);
            break;
        case 'e':
            if (a->n_emb == PIPELINE_MAX_EMBEDDINGS)
                return cli_usage_error("sample", "at most %d --embedding files",
                                       PIPELINE_MAX_EMBEDDINGS);
            a->embeddings[a->n_emb++] = optarg;
            break;
        case 'v':
            if ((a->version = sd_version_parse(optarg)) == SD_UNKNOWN)
                return cli_usage_error("sample", "--version takes sd1 or sd2");
            break;
        case 'P':
            if (!strcmp(optarg, "eps") || !strcmp(optarg, "epsilon"))
                a->prediction = PRED_EPSILON;
            else if (!strcmp(optarg, "v") || !strcmp(optarg, "v_prediction"))
                a->prediction = PRED_V;
            else
                return cli_usage_error("sample", "--prediction takes eps or v");
            break;
        default: return cli_usage_error("sample", "bad option");
        }
    }
    if (optind != argc)
        return cli_usage_error("sample", "unexpected argument '%s'", argv[optind]);
    if (!a->model || !a->prompt || !a->out)
        return cli_usage_error("sample", "--model, --prompt and --out are required");
    return 0;
}

/* The images a run already made and recorded, whose files are still
 * what was recorded: a resumed sampling job skips them (the same seed
 * makes the same image). */
typedef struct made_list {
    char **paths;
    size_t n;
} made_list;

static int collect_made(void *ctx, const ledger_sample *s)
{
    made_list *m = ctx;
    uint8_t digest[32];
    char hex[65];
    if (!s->image_path || !s->image_sha256 || sha256_file(s->image_path, digest, NULL, NULL, NULL))
        return 0;
    sha256_hex(digest, hex);
    char **grown = strcmp(hex, s->image_sha256) ? NULL
                                                : realloc(m->paths, (m->n + 1) * sizeof *grown);
    if (grown && (grown[m->n] = strdup(s->image_path))) {
        m->paths = grown;
        m->n++;
    } else if (grown) {
        m->paths = grown;
    }
    return 0;
}

static int already_made(const made_list *m, const char *path)
{
    for (size_t i = 0; i < m->n; i++)
        if (!strcmp(m->paths[i], path))
            return 1;
    return 0;
}

/* `coin sample` without --foreground: the run is queued for the worker and
 * followed (its images are printed as they are recorded). */
static int queue_sample(const sample_args *a, int argc, char **argv, const job_flags *jf)
{
    coin_error err = {0};
    const coin_backend *be;
    if (backend_by_name(&be, a->backend, &err))
        return cli_report(&err);
    /* What is checked without loading the model is checked now. */
    if (!path_exists(a->model)) {
        coin_fail(&err, COIN_ENOTFOUND, "%s: no such file or folder", a->model);
        return cli_report(&err);
    }
    for (int i = 0; i < a->n_emb; i++)
        if (!path_exists(a->embeddings[i])) {
            coin_fail(&err, COIN_ENOTFOUND, "%s: no such file", a->embeddings[i]);
            return cli_report(&err);
        }
    char host[256];
    cli_host_name(host, sizeof host);
    ledger_run lr = {.kind = "sample", .backend = be->name, .precision = "fp32",
                     .coin_version = COIN_VERSION, .host = host, .steps_planned = (int)a->batch};
    ledger *l;
    int64_t id = 0;
    const char *device = job_device(be->name);
    int rc = cli_open_ledger(&l, &err);
    if (!rc)
        rc = ledger_insert_run(l, &lr, &id, &err);
    if (!rc)
        rc = job_queue(l, id, argc, argv, device, &err);
    ledger_close(l);
    if (rc)
        return cli_report(&err);
    return job_hand_over(id, device, jf);
}

/* `coin sample --foreground` (and the worker's --job N): makes the images
 * here, recording them in the ledger; a pause or stop asked through the
 * ledger takes effect between images.  Returns the exit status. */
static int sample_here(const sample_args *a, const job_flags *jf)
{
    int rc;
    made_list made = {0};
    coin_error err = {0};
    const coin_backend *be;
    sd_pipeline *p = NULL;
    float *pixels = NULL;
    hashes h;
    recorder rec = {0};
    int status = 1;
    /* The images' folder is made first: finding it missing after the
     * first image would waste the sampling. */
    char folder[4096];
    snprintf(folder, sizeof folder, "%s", a->out);
    char *slash = strrchr(folder, '/');
    if (slash && slash != folder) {
        *slash = '\0';
        if (path_make_dirs(folder, &err))
            goto done;
    }
    if (backend_by_name(&be, a->backend, &err) ||
        pipeline_open(&p, a->model, a->version, a->prediction, be, &err))
        goto done;
    for (int i = 0; i < a->n_emb; i++)
        if (pipeline_add_embedding(p, a->embeddings[i], &err))
            goto done;
    sample_params sp;
    sample_defaults(p, &sp);
    sp.prompt = a->prompt;
    sp.negative = a->negative;
    if (a->steps > 0)
        sp.steps = (int)a->steps;
    if (!isnan(a->cfg))
        sp.cfg = a->cfg;
    if (a->sampler >= 0)
        sp.sampler = (sampler_kind)a->sampler;
    sp.karras = a->karras;
    if (a->width > 0)
        sp.width = (int)a->width;
    if (a->height > 0)
        sp.height = (int)a->height;
    sp.rng = (rng_kind)a->rng;
    sp.seed = (uint64_t)a->seed;
    if (sample_validate(p, &sp, &err))
        goto done;
    tokenizer_result tr;
    if (pipeline_tokenize(p, a->prompt, &tr, &err))
        goto done;
    if (tr.n_dropped > 0)
        fprintf(stderr, "warning: the prompt is longer than 75 tokens; %d token%s dropped: "
                "\"%s\"\n", tr.n_dropped, tr.n_dropped == 1 ? " was" : "s were",
                tr.dropped_at >= 0 ? a->prompt + tr.dropped_at : "");
    if (cli_hash_file(checkpoint_main_file(p->ck), "the model", h.model, &err))
        goto done;
    for (int i = 0; i < p->n_embeddings; i++)
        if (cli_hash_file(p->embeddings[i].path, p->embeddings[i].token, h.embeddings[i], &err))
            goto done;
    if (!(pixels = malloc((size_t)3 * sp.width * sp.height * sizeof(float)))) {
        coin_fail(&err, COIN_ENOMEM, "out of memory");
        goto done;
    }
    char *params0 = NULL, *recipe0 = NULL;
    if (describe(p, &sp, &h, be->name, &params0, &recipe0, &err))
        goto done;
    ledger_run lr = {.kind = "sample", .config_json = recipe0, .backend = be->name,
                     .precision = "fp32", .coin_version = COIN_VERSION,
                     .steps_planned = (int)a->batch};
    if (jf->job_run) {
        record_attach(&rec, jf->job_run, &lr, p->ck->path, h.model, p->ck->version, 0, 1);
        if (rec.l)
            ledger_list_samples(rec.l, rec.run, 0, collect_made, &made, NULL);
    } else {
        record_start(&rec, &lr, p->ck->path, h.model, p->ck->version);
    }
    char emb_json[PIPELINE_MAX_EMBEDDINGS * 70 + 4] = "[";
    for (int i = 0; i < p->n_embeddings; i++)
        snprintf(emb_json + strlen(emb_json), sizeof emb_json - strlen(emb_json), "%s\"%s\"",
                 i ? "," : "", h.embeddings[i]);
    strcat(emb_json, "]");
    int64_t from_checkpoint = p->n_embeddings ? record_checkpoint_of(&rec, h.embeddings[0]) : 0;
    free(params0);
    free(recipe0);
    const char *requested = NULL;
    for (long long i = 0; i < a->batch; i++) {
        char path[4096], what[96], *params = NULL, *json = NULL;
        progress bar;
        /* coin pause / coin stop take effect between images. */
        if ((requested = record_requested(&rec))) {
            fprintf(stderr, "%s after %lld of %lld images (coin resume %lld makes the rest)\n",
                    requested, i, a->batch, (long long)rec.run);
            break;
        }
        sp.seed = (uint64_t)a->seed + (uint64_t)i;
        snprintf(what, sizeof what, "image %lld/%lld (seed %" PRIu64 ")", i + 1, a->batch,
                 sp.seed);
        output_path(path, sizeof path, a->out, (int)a->batch, (int)i);
        if (already_made(&made, path)) {
            fprintf(stderr, "%s: made before this job was resumed\n", what);
            continue;
        }
        progress_start(&bar, what, sampler_model_calls(sp.sampler, sp.steps));
        if (sample_image(p, &sp, on_step, &bar, pixels, NULL, &err))
            goto done;
        progress_end(&bar);
        coin_image img = {0};
        rc = image_from_chw_float(pixels, sp.width, sp.height, &img, &err);
        if (!rc)
            rc = describe(p, &sp, &h, be->name, &params, &json, &err);
        if (!rc) {
            image_text texts[2] = {{"parameters", params}, {"coin", json}};
            rc = image_write_png(path, &img, texts, 2, &err);
        }
        image_free(&img);
        free(params);
        free(json);
        if (rc)
            goto done;
        ledger_sample ls = {
            .prompt = sp.prompt, .negative = sp.negative, .seed = sp.seed, .steps = sp.steps,
            .guidance = sp.cfg, .sampler = sampler_name(sp.sampler),
            .schedule = sp.karras ? "karras" : "default", .width = sp.width, .height = sp.height,
            .rng = rng_kind_name(sp.rng), .model_sha256 = h.model,
            .embeddings_json = emb_json, .image_path = path, .checkpoint = from_checkpoint};
        record_sample(&rec, &ls);
        printf("%s\n", path);
    }
    status = 0;
done:
    if (status && job_disk_full(err.msg)) {
        char why[COIN_ERROR_MSG_MAX + 300];
        snprintf(why, sizeof why, "the disk is full (%s); the images made so far are intact: "
                 "free some space, then continue with coin resume %lld", err.msg,
                 (long long)rec.run);
        fprintf(stderr, "coin: paused: %s\n", why);
        record_finish(&rec, "paused", why);
    } else {
        if (status)
            cli_report(&err);
        if (status && !rec.l && jf->job_run)
            record_job_failed(jf->job_run, err.msg);
        record_finish(&rec, status ? "failed" : requested ? requested : "done",
                      status ? err.msg : NULL);
    }
    for (size_t i = 0; i < made.n; i++)
        free(made.paths[i]);
    free(made.paths);
    free(pixels);
    pipeline_free(p);
    return status;
}

int cmd_sample(int argc, char **argv)
{
    job_flags jf;
    int rc = job_take_flags(&argc, argv, &jf, "sample");
    if (rc)
        return rc;
    char **job_argv = job_copy_argv(argc, argv);
    if (!job_argv)
        return 1;
    sample_args a;
    optind = 0;
    rc = parse_sample_args(argc, argv, &a);
    if (rc == 1)                /* --help */
        rc = 0;
    else if (!rc)
        rc = jf.foreground ? sample_here(&a, &jf) : queue_sample(&a, argc, job_argv, &jf);
    free(job_argv);
    return rc;
}

static const char SHOW_HELP[] =
    "usage: coin show IMAGE.png | run N | sample N\n"
    "\n"
    "Prints how IMAGE was made: AUTOMATIC1111's parameters text (as stable-diffusion\n"
    "webui writes it and most tools read it) and, for coin's images, the recipe that\n"
    "regenerates it bit for bit: model and embedding sha256, seed, sampler, RNG,\n"
    "backend and precision.  With run N or sample N: what the ledger recorded.\n";

int cmd_show(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(SHOW_HELP, stdout);
        return 0;
    }
    if (argc == 3 && (!strcmp(argv[1], "run") || !strcmp(argv[1], "sample")))
        return cmd_show_ledger(argv[1], argv[2]);
    if (argc != 2 || argv[1][0] == '-')
        return cli_usage_error("show", "give IMAGE.png, run N or sample N");
    coin_error err = {0};
    image_text_list texts = {0};
    if (image_read_png_text(argv[1], &texts, &err))
        return cli_report(&err);
    const char *params = image_text_get(&texts, "parameters");
    const char *json = image_text_get(&texts, "coin");
    int status = 0;
    if (!params && !json) {
        coin_fail(&err, COIN_ENOTFOUND, "%s has no generation parameters (no \"parameters\" "
                  "or \"coin\" text)", argv[1]);
        status = cli_report(&err);
    }
    if (params)
        printf("%s\n", params);
    if (json) {
        recipe r;
        if (recipe_from_json(json, &r, &err)) {
            coin_error_prefix(&err, "%s: coin recipe", argv[1]);
            status = cli_report(&err);
        } else {
            printf("\ncoin recipe (coin %s):\n", r.version);
            printf("  model       %s\n  sha256      %s\n", r.model.path, r.model.sha256);
            for (int i = 0; i < r.n_embeddings; i++)
                printf("  embedding   %s = %s\n  sha256      %s\n", r.embeddings[i].token,
                       r.embeddings[i].path, r.embeddings[i].sha256);
            printf("  seed        %" PRIu64 "\n  steps       %d\n  cfg         %g\n", r.seed,
                   r.steps, r.cfg);
            printf("  sampler     %s%s\n  size        %dx%d\n  rng         %s\n", r.sampler,
                   r.karras ? " (karras)" : "", r.width, r.height, r.rng);
            printf("  backend     %s (%s)\n  prediction  %s\n", r.backend, r.precision,
                   r.prediction);
            recipe_free(&r);
        }
    }
    image_text_list_free(&texts);
    return status;
}

static const char REGEN_HELP[] =
    "usage: coin regen IMAGE.png|SAMPLE [--out NEW.png] [--backend B]\n"
    "       coin regen --from IMAGE.png [--model MODEL] [--embedding FILE]...\n"
    "                  [--out NEW.png] [--backend B]\n"
    "\n"
    "Makes IMAGE again from the recipe coin stored in it (or, for SAMPLE, the\n"
    "image the ledger recorded): the same model and embeddings (checked by\n"
    "sha256), prompt, seed, sampler, steps, guidance, size and RNG.  Writes NEW.png\n"
    "(default IMAGE-regen.png) and compares the pixels: exit 0 when they are\n"
    "identical, 1 when they differ (with how much) or the files the recipe names\n"
    "have changed.  Identical results are promised on the backend that made the\n"
    "image.\n"
    "\n"
    "--from IMAGE.png also takes images made by AUTOMATIC1111 (or any tool that\n"
    "writes its \"parameters\" text): prompt, negative prompt, steps, sampler\n"
    "(Euler, Euler a, DPM++ 2M, DDIM, PLMS), schedule (Automatic, Karras), CFG\n"
    "scale, seed, size and RNG (GPU/NV, CPU) are used; the model is found in the\n"
    "ledger by its \"Model hash\" or given with --model (its hash is checked), and\n"
    "each embedding the text lists (TI hashes) must be given with --embedding.\n"
    "Settings coin does not support (hires fix, LoRA, clip skip other than 1,\n"
    "another VAE, ...) are named and left out; the comparison then shows how\n"
    "much they mattered.\n";

/* Known keys of an AUTOMATIC1111 text that do not change the pixels. */
static int harmless_extra(const infotext_kv *kv)
{
    return !strcmp(kv->key, "Model") || !strcmp(kv->key, "Version") ||
           !strcmp(kv->key, "User") || (!strcmp(kv->key, "Clip skip") && !strcmp(kv->value, "1"));
}

/* An AUTOMATIC1111 "parameters" text as a recipe: model and embeddings by
 * their short hashes (10 and 12 hex digits, which the comparison takes as
 * prefixes), the model found in the ledger unless model is given.
 * Settings coin cannot follow are printed; a missing required one fails. */
static int recipe_from_infotext(const char *image, const char *text, const char *model,
                                const char **embeddings, int n_emb, recipe *r, coin_error *err)
{
    infotext it;
    memset(r, 0, sizeof *r);
    int rc = infotext_parse(text, &it, err);
    if (rc)
        return rc;
    const unsigned need = INFOTEXT_STEPS | INFOTEXT_CFG | INFOTEXT_SEED | INFOTEXT_SIZE;
    int sampler = sampler_parse(it.sampler);
    const char *rng = infotext_rng_to_coin(it.rng);
    char unsupported[2048] = "";
    size_t un = 0;
    for (size_t i = 0; i < it.n_extra; i++)
        if (!harmless_extra(&it.extra[i]))
            un += (size_t)snprintf(unsupported + un, un < sizeof unsupported ? sizeof unsupported - un : 0,
                                   "%s%s: %s", un ? ", " : "", it.extra[i].key, it.extra[i].value);
    int karras = it.schedule_type && !strcmp(it.schedule_type, "Karras");
    if (it.schedule_type && !karras && strcmp(it.schedule_type, "Automatic"))
        un += (size_t)snprintf(unsupported + un, un < sizeof unsupported ? sizeof unsupported - un : 0,
                               "%sSchedule type: %s", un ? ", " : "", it.schedule_type);
    if ((it.have & need) != need)
        rc = coin_fail(err, COIN_EFORMAT, "%s: the parameters text lacks %s%s%s%s", image,
                       it.have & INFOTEXT_STEPS ? "" : "Steps ", it.have & INFOTEXT_CFG ? "" : "CFG scale ",
                       it.have & INFOTEXT_SEED ? "" : "Seed ", it.have & INFOTEXT_SIZE ? "" : "Size");
    else if (sampler < 0)
        rc = coin_fail(err, COIN_EUNSUPPORTED, "%s was made with the sampler \"%s\", which coin "
                       "does not have (it has Euler, Euler a, DPM++ 2M, DDIM, PLMS)", image,
                       it.sampler ? it.sampler : "(none)");
    else if (!rng)
        rc = coin_fail(err, COIN_EUNSUPPORTED, "%s was made with the RNG \"%s\", which coin does "
                       "not have (GPU/NV or CPU)", image, it.rng);
    else if (it.seed < 0)
        rc = coin_fail(err, COIN_EUNSUPPORTED, "%s: seed %lld (random) cannot be made again",
                       image, (long long)it.seed);
    else if (it.n_ti > RECIPE_MAX_EMBEDDINGS)
        rc = coin_fail(err, COIN_EUNSUPPORTED, "%s uses %zu embeddings; coin takes at most %d",
                       image, it.n_ti, RECIPE_MAX_EMBEDDINGS);
    if (!rc && !model && !it.model_hash)
        rc = coin_fail(err, COIN_EINVAL, "%s does not say which model made it (no Model hash); "
                       "give it with --model", image);
    char *found = NULL;
    if (!rc && !model) {
        ledger *l;
        if (!(rc = cli_open_ledger(&l, err))) {
            rc = ledger_find_model(l, it.model_hash, &found, err);
            ledger_close(l);
        }
    }
    /* Each embedding it names must be among the files given. */
    for (size_t i = 0; !rc && i < it.n_ti; i++) {
        int k = 0;
        char hash[65] = "";
        for (; k < n_emb; k++) {
            uint8_t digest[32];
            if (!sha256_file(embeddings[k], digest, NULL, NULL, NULL))
                sha256_hex(digest, hash);
            if (!strncmp(hash, it.ti[i].hash, strlen(it.ti[i].hash)))
                break;
        }
        if (k == n_emb)
            rc = coin_fail(err, COIN_ENOTFOUND, "%s uses the embedding \"%s\" (hash %s); give its "
                           "file with --embedding FILE", image, it.ti[i].name, it.ti[i].hash);
        else {
            r->embeddings[r->n_embeddings].path = strdup(embeddings[k]);
            r->embeddings[r->n_embeddings].token = strdup(it.ti[i].name);
            snprintf(r->embeddings[r->n_embeddings].sha256, 65, "%s", it.ti[i].hash);
            r->n_embeddings++;
        }
    }
    if (!rc) {
        if (un)
            fprintf(stderr, "warning: %s was made with settings coin does not support, which are "
                    "left out: %s\n", image, unsupported);
        r->model.path = strdup(model ? model : found);
        snprintf(r->model.sha256, sizeof r->model.sha256, "%s", model ? "" : it.model_hash);
        if (model && it.model_hash)
            snprintf(r->model.sha256, sizeof r->model.sha256, "%s", it.model_hash);
        r->prompt = strdup(it.prompt ? it.prompt : "");
        r->negative = strdup(it.negative_prompt ? it.negative_prompt : "");
        r->seed = (uint64_t)it.seed;
        r->steps = it.steps;
        r->cfg = (float)it.cfg_scale;
        snprintf(r->sampler, sizeof r->sampler, "%s", sampler_name((sampler_kind)sampler));
        r->karras = karras;
        r->width = it.width;
        r->height = it.height;
        snprintf(r->rng, sizeof r->rng, "%s", rng);
        snprintf(r->backend, sizeof r->backend, "cpu");
        snprintf(r->precision, sizeof r->precision, "fp32");
        snprintf(r->prediction, sizeof r->prediction, "auto");
        if (!r->model.path || !r->prompt || !r->negative)
            rc = coin_fail(err, COIN_ENOMEM, "out of memory");
    }
    free(found);
    infotext_free(&it);
    return rc;
}

int cmd_regen(int argc, char **argv)
{
    static const struct option opts[] = {
        {"out", required_argument, 0, 'o'}, {"backend", required_argument, 0, 'B'},
        {"from", required_argument, 0, 'f'}, {"model", required_argument, 0, 'm'},
        {"embedding", required_argument, 0, 'e'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *out = NULL, *backend = NULL, *from = NULL, *model = NULL;
    const char *embeddings[RECIPE_MAX_EMBEDDINGS];
    int n_emb = 0, c;
    optind = 0;
    while ((c = getopt_long(argc, argv, "o:B:f:m:e:h", opts, NULL)) != -1) {
        if (c == 'h') {
            fputs(REGEN_HELP, stdout);
            return 0;
        }
        if (c == 'o')
            out = optarg;
        else if (c == 'B')
            backend = optarg;
        else if (c == 'f')
            from = optarg;
        else if (c == 'm')
            model = optarg;
        else if (c == 'e' && n_emb < RECIPE_MAX_EMBEDDINGS)
            embeddings[n_emb++] = optarg;
        else
            return cli_usage_error("regen", c == 'e' ? "too many --embedding files" : "bad option");
    }
    if (from ? optind != argc : optind != argc - 1)
        return cli_usage_error("regen", "give exactly one IMAGE.png or SAMPLE id (or --from "
                               "IMAGE.png)");
    if (!from && (model || n_emb))
        return cli_usage_error("regen", "--model and --embedding go with --from IMAGE.png");
    const char *image = from ? from : argv[optind];
    char *from_ledger = NULL;
    coin_error lerr = {0};
    if (image[strspn(image, "0123456789")] == '\0') {
        if (cli_sample_image_path(image, &from_ledger, &lerr))
            return cli_report(&lerr);
        image = from_ledger;
    }
    char out_buf[4096];
    if (!out) {
        const char *dot = strrchr(image, '.');
        int stem = dot && !strchr(dot, '/') ? (int)(dot - image) : (int)strlen(image);
        snprintf(out_buf, sizeof out_buf, "%.*s-regen.png", stem, image);
        out = out_buf;
    }

    coin_error err = {0};
    image_text_list texts = {0};
    recipe r = {0};
    sd_pipeline *p = NULL;
    const coin_backend *be;
    coin_image old = {0}, img = {0};
    float *pixels = NULL;
    char *params = NULL, *json = NULL;
    hashes h;
    int status = 1;
    const char *stored;
    if (image_read_png_text(image, &texts, &err))
        goto done;
    const char *a1111 = image_text_get(&texts, "parameters");
    stored = image_text_get(&texts, "coin");
    if (!stored && !(from && a1111)) {
        coin_fail(&err, COIN_ENOTFOUND, "%s has no coin recipe: only images coin made can be "
                  "regenerated bit for bit%s", image, a1111 ? " (it has AUTOMATIC1111's "
                  "parameters: coin regen --from IMAGE.png follows them as far as it can)" : "");
        goto done;
    }
    if (stored ? recipe_from_json(stored, &r, &err)
               : recipe_from_infotext(image, a1111, model, embeddings, n_emb, &r, &err))
        goto done;
    if (stored && model)
        fprintf(stderr, "warning: %s names its model in its coin recipe; --model is not used\n",
                image);
    if (backend_by_name(&be, backend ? backend : stored ? r.backend : "auto", &err))
        goto done;
    if (!stored)
        fprintf(stderr, "%s: made by %s; from its parameters on the %s backend (pixels made by "
                "another program are not expected to match bit for bit)\n", image,
                image_text_get(&texts, "parameters") && strstr(a1111, "Version: coin") ? "coin"
                                                                                      : "another program",
                be->name);
    else if (strcmp(be->name, r.backend))
        fprintf(stderr, "warning: %s was made on the %s backend; on %s the pixels may differ in "
                "the last bits\n", image, r.backend, be->name);
    sd_prediction pred = !strcmp(r.prediction, "v_prediction") ? PRED_V :
                         !strcmp(r.prediction, "epsilon") ? PRED_EPSILON : PRED_UNKNOWN;
    if (pipeline_open(&p, r.model.path, SD_UNKNOWN, pred, be, &err) ||
        cli_hash_file(checkpoint_main_file(p->ck), "the model", h.model, &err))
        goto done;
    /* A parameters text names files by the start of their sha256. */
    if (strncmp(h.model, r.model.sha256, strlen(r.model.sha256))) {
        coin_fail(&err, COIN_EINVAL, "%s is not the model that made %s: its sha256 is %.12s..., "
                  "the recipe says %.12s...", r.model.path, image, h.model, r.model.sha256);
        goto done;
    }
    for (int i = 0; i < r.n_embeddings; i++) {
        if (pipeline_add_embedding(p, r.embeddings[i].path, &err) ||
            cli_hash_file(r.embeddings[i].path, r.embeddings[i].token, h.embeddings[i], &err))
            goto done;
        if (strncmp(h.embeddings[i], r.embeddings[i].sha256, strlen(r.embeddings[i].sha256))) {
            coin_fail(&err, COIN_EINVAL, "the embedding %s has changed since %s was made",
                      r.embeddings[i].path, image);
            goto done;
        }
    }
    sample_params sp;
    sample_defaults(p, &sp);
    sp.prompt = r.prompt;
    sp.negative = r.negative;
    sp.seed = r.seed;
    sp.steps = r.steps;
    sp.cfg = r.cfg;
    sp.karras = r.karras;
    sp.width = r.width;
    sp.height = r.height;
    if (sampler_parse(r.sampler) < 0 || rng_kind_parse(r.rng) < 0) {
        coin_fail(&err, COIN_EFORMAT, "%s: the recipe's sampler \"%s\" or RNG \"%s\" is unknown",
                  image, r.sampler, r.rng);
        goto done;
    }
    sp.sampler = (sampler_kind)sampler_parse(r.sampler);
    sp.rng = (rng_kind)rng_kind_parse(r.rng);
    progress bar;
    progress_start(&bar, "regenerating", sampler_model_calls(sp.sampler, sp.steps));
    if (!(pixels = malloc((size_t)3 * sp.width * sp.height * sizeof(float)))) {
        coin_fail(&err, COIN_ENOMEM, "out of memory");
        goto done;
    }
    if (sample_image(p, &sp, on_step, &bar, pixels, NULL, &err) ||
        image_from_chw_float(pixels, sp.width, sp.height, &img, &err) ||
        describe(p, &sp, &h, be->name, &params, &json, &err))
        goto done;
    progress_end(&bar);
    image_text written[2] = {{"parameters", params}, {"coin", json}};
    if (image_write_png(out, &img, written, 2, &err) || image_load(image, &old, &err))
        goto done;
    size_t n = (size_t)img.width * img.height * 3, differ = 0;
    int worst = 0;
    for (size_t i = 0; old.width == img.width && old.height == img.height && i < n; i++)
        if (old.pixels[i] != img.pixels[i]) {
            differ++;
            int d = abs(old.pixels[i] - img.pixels[i]);
            worst = d > worst ? d : worst;
        }
    if (old.width != img.width || old.height != img.height)
        printf("%s: differs: %dx%d, the original is %dx%d\n", out, img.width, img.height,
               old.width, old.height);
    else if (differ)
        printf("%s: differs from %s in %zu of %zu values (at most %d levels)\n", out, image,
               differ, n, worst);
    else
        printf("%s: identical to %s\n", out, image);
    status = old.width != img.width || old.height != img.height || differ;
    err.code = COIN_OK;     /* a difference is a result, not an error */
done:
    if (err.code != COIN_OK)
        cli_report(&err);
    image_free(&old);
    image_free(&img);
    free(pixels);
    free(params);
    free(json);
    pipeline_free(p);
    recipe_free(&r);
    image_text_list_free(&texts);
    free(from_ledger);
    return status;
}
