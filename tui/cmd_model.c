/*
 * cmd_model.c - the subcommands that look at a model: info, tokenize, encode.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/checkpoint.h"
#include "core/clip.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "core/tokenizer.h"
#include "tui/cli.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int parse_version(const char *cmd, const char *s, sd_version *out)
{
    *out = sd_version_parse(s);
    if (*out == SD_UNKNOWN)
        return cli_usage_error(cmd, "--version takes sd1 or sd2, not '%s'", s);
    return 0;
}

/* ---- info ---- */

static const char INFO_HELP[] =
    "usage: coin info [--version sd1|sd2] MODEL\n"
    "\n"
    "Shows what MODEL (a single-file .safetensors or a diffusers folder) holds:\n"
    "its layout, the detected Stable Diffusion version and prediction type (and\n"
    "why), the text encoder's shape, parameters and dtypes per component, and\n"
    "any problem found.  Exits 1 when the model cannot be read.\n"
    "\n"
    "  --version sd1|sd2   override the detected version\n";

static void print_dtypes(const checkpoint *ck, ckpt_component comp)
{
    uint64_t count[ST_DTYPE_COUNT] = {0};
    for (size_t i = 0; i < ck->n_tensors; i++)
        if (ck->tensors[i].comp == comp)
            count[ck->tensors[i].src->dtype]++;
    const char *sep = "";
    for (int d = 0; d < ST_DTYPE_COUNT; d++)
        if (count[d]) {
            printf("%s%s x%llu", sep, st_dtype_name((st_dtype)d), (unsigned long long)count[d]);
            sep = ", ";
        }
}

int cmd_info(int argc, char **argv)
{
    static const struct option opts[] = {
        {"version", required_argument, 0, 'v'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    sd_version force = SD_UNKNOWN;
    int c;
    while ((c = getopt_long(argc, argv, "v:h", opts, NULL)) != -1) {
        if (c == 'h') {
            fputs(INFO_HELP, stdout);
            return 0;
        }
        if (c == 'v' && parse_version("info", optarg, &force))
            return 2;
        if (c == '?')
            return cli_usage_error("info", "bad option");
    }
    if (optind != argc - 1)
        return cli_usage_error("info", "give exactly one MODEL");

    coin_error err = {0};
    checkpoint *ck;
    if (checkpoint_open(&ck, argv[optind], force, &err))
        return cli_report(&err);
    printf("model:       %s\n", ck->path);
    printf("layout:      %s, %d weight file%s\n", ckpt_layout_name(ck->layout), ck->n_files,
           ck->n_files == 1 ? "" : "s");
    printf("version:     %s (%s)\n", sd_version_name(ck->version), ck->version_from);
    printf("prediction:  %s (%s)\n", sd_prediction_name(ck->prediction), ck->prediction_from);
    if (ck->has_text_encoder) {
        const clip_config *t = &ck->text;
        printf("text encoder: width %lld, %d heads (%s), MLP %lld, %s, %d of %d layers "
               "used, vocabulary %lld, %lld positions\n",
               (long long)t->width, t->heads, t->heads_from[0] ? t->heads_from : "unknown",
               (long long)t->intermediate,
               t->act == CLIP_ACT_GELU ? "GELU" : "quick-GELU", t->layers, t->layers_in_file,
               (long long)t->vocab, (long long)t->positions);
    }
    printf("tokenizer:   %s\n", ck->tokenizer_dir ? ck->tokenizer_dir
                                                  : "built-in CLIP vocabulary");
    printf("padding:     %d\n", checkpoint_pad_id(ck));
    printf("components:\n");
    for (int comp = 0; comp < COMP_COUNT; comp++) {
        size_t n = 0;
        for (size_t i = 0; i < ck->n_tensors; i++)
            n += ck->tensors[i].comp == (ckpt_component)comp;
        if (!n)
            continue;
        printf("  %-13s %6zu tensors, %10.3f M parameters, ", ckpt_component_name(comp), n,
               checkpoint_param_count(ck, comp) / 1e6);
        print_dtypes(ck, comp);
        printf("\n");
    }
    if (ck->n_problems == 0)
        printf("problems:    none\n");
    for (int i = 0; i < ck->n_problems; i++)
        printf("problem:     %s\n", ck->problems[i]);
    checkpoint_close(ck);
    return 0;
}

/* ---- shared by tokenize and encode ---- */


static void warn_truncated(const char *text, const tokenizer_result *r)
{
    if (r->n_dropped <= 0)
        return;
    fprintf(stderr, "warning: the prompt is longer than %d tokens; %d token%s dropped: \"%s\"\n",
            CLIP_CONTEXT - 2, r->n_dropped, r->n_dropped == 1 ? " was" : "s were",
            r->dropped_at >= 0 ? text + r->dropped_at : "");
}

/* ---- tokenize ---- */

static const char TOKENIZE_HELP[] =
    "usage: coin tokenize [--model MODEL | --sd2] [--token WORD]... [--no-pad] TEXT\n"
    "\n"
    "Prints the 77 CLIP token ids the text encoder would read for TEXT, on one\n"
    "line: 49406, the prompt's tokens, 49407, then padding (49407 for SD 1.x, 0\n"
    "for SD 2.x).  Warns on stderr when the prompt is truncated.\n"
    "\n"
    "  --model MODEL   use MODEL's tokenizer folder and padding\n"
    "  --sd2           pad as SD 2.x does (0) without a model\n"
    "  --token WORD    a trigger word (e.g. \"<thumbs-up>\"), matched before BPE;\n"
    "                  repeatable; ids 49408 upwards in the order given\n"
    "  --no-pad        stop at the end token\n";

int cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"sd2", no_argument, 0, '2'},
        {"token", required_argument, 0, 't'}, {"no-pad", no_argument, 0, 'n'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *model = NULL;
    const char *tokens[64];
    int n_tokens = 0, sd2 = 0, no_pad = 0, c;
    while ((c = getopt_long(argc, argv, "m:2t:nh", opts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(TOKENIZE_HELP, stdout); return 0;
        case 'm': model = optarg; break;
        case '2': sd2 = 1; break;
        case 'n': no_pad = 1; break;
        case 't':
            if (n_tokens == 64)
                return cli_usage_error("tokenize", "at most 64 --token words");
            tokens[n_tokens++] = optarg;
            break;
        default: return cli_usage_error("tokenize", "bad option");
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("tokenize", "give exactly one TEXT (quote it)");
    if (model && sd2)
        return cli_usage_error("tokenize", "--sd2 and --model exclude each other "
                               "(the model decides the padding)");

    coin_error err = {0};
    checkpoint *ck = NULL;
    clip_tokenizer *tok = NULL;
    int status = 1;
    if (model && checkpoint_open(&ck, model, SD_UNKNOWN, &err))
        return cli_report(&err);
    if (checkpoint_load_tokenizer(ck, &tok, &err))
        goto out;
    for (int i = 0; i < n_tokens; i++) {
        int id;
        if (tokenizer_add_token(tok, tokens[i], &id, &err))
            goto out;
    }
    int pad = ck ? checkpoint_pad_id(ck) : sd2 ? CLIP_PAD_SD2 : CLIP_PAD_SD1;
    tokenizer_result r;
    const char *text = argv[optind];
    if (tokenizer_encode(tok, text, pad, &r, &err))
        goto out;
    warn_truncated(text, &r);
    int n = no_pad ? r.n_tokens : CLIP_CONTEXT;
    for (int i = 0; i < n; i++)
        printf(i ? " %d" : "%d", r.ids[i]);
    printf("\n");
    status = 0;
out:
    if (status)
        cli_report(&err);
    tokenizer_free(tok);
    checkpoint_close(ck);
    return status;
}

/* ---- encode ---- */

static const char ENCODE_HELP[] =
    "usage: coin encode --model MODEL --prompt TEXT --out FILE.safetensors\n"
    "                   [--version sd1|sd2] [--backend auto|cpu|cuda] [--repeat N]\n"
    "\n"
    "Runs MODEL's text encoder on TEXT and writes its output, the tensor\n"
    "hidden_states [1, 77, D] (F32), with the token ids (input_ids [1, 77], I64),\n"
    "to FILE.  This is the conditioning the UNet sees: the last layer for SD 1.x,\n"
    "the penultimate for SD 2.x, both after the final LayerNorm.\n"
    "\n"
    "  --repeat N   run the encoder N times and report the median time on stderr\n"
    "               (load time excluded), for benchmarks\n";

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int save_encoding(const char *path, const tensor *hidden, const tokenizer_result *r,
                         const checkpoint *ck, const char *prompt, coin_error *err)
{
    int64_t D = hidden->shape[2], T = hidden->shape[1];
    float *host = malloc((size_t)hidden->n * sizeof(float));
    int64_t ids[CLIP_CONTEXT];
    st_writer *w = st_writer_new();
    int rc = !host || !w ? coin_fail(err, COIN_ENOMEM, "out of memory") : 0;
    if (!rc)
        rc = tensor_download(hidden, host, hidden->n, err);
    for (int i = 0; i < CLIP_CONTEXT; i++)
        ids[i] = r->ids[i];
    if (!rc)
        rc = st_writer_add(w, "hidden_states", ST_F32, 3, (int64_t[]){1, T, D}, host, err);
    if (!rc)
        rc = st_writer_add(w, "input_ids", ST_I64, 2, (int64_t[]){1, CLIP_CONTEXT}, ids, err);
    if (!rc)
        rc = st_writer_meta(w, "prompt", prompt, err);
    if (!rc)
        rc = st_writer_meta(w, "model", ck->path, err);
    if (!rc)
        rc = st_writer_meta(w, "version", sd_version_name(ck->version), err);
    if (!rc)
        rc = st_writer_save(w, path, err);
    st_writer_free(w);
    free(host);
    return rc;
}

int cmd_encode(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"prompt", required_argument, 0, 'p'},
        {"out", required_argument, 0, 'o'}, {"version", required_argument, 0, 'v'},
        {"backend", required_argument, 0, 'b'}, {"repeat", required_argument, 0, 'r'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *model = NULL, *prompt = NULL, *out = NULL, *backend = "auto";
    sd_version force = SD_UNKNOWN;
    int repeat = 0, c;
    char *end;
    while ((c = getopt_long(argc, argv, "m:p:o:v:b:r:h", opts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(ENCODE_HELP, stdout); return 0;
        case 'm': model = optarg; break;
        case 'p': prompt = optarg; break;
        case 'o': out = optarg; break;
        case 'b': backend = optarg; break;
        case 'v':
            if (parse_version("encode", optarg, &force))
                return 2;
            break;
        case 'r':
            repeat = (int)strtol(optarg, &end, 10);
            if (*end || repeat < 1 || repeat > 10000)
                return cli_usage_error("encode", "--repeat takes 1 to 10000, not '%s'", optarg);
            break;
        default: return cli_usage_error("encode", "bad option");
        }
    }
    if (optind != argc)
        return cli_usage_error("encode", "unexpected argument '%s'", argv[optind]);
    if (!model || !prompt || !out)
        return cli_usage_error("encode", "--model, --prompt and --out are required");

    coin_error err = {0};
    const coin_backend *be;
    checkpoint *ck = NULL;
    clip_tokenizer *tok = NULL;
    clip_model *clip = NULL;
    tensor hidden = {0};
    double *times = NULL;
    int status = 1;
    double t0 = now_ms();
    if (backend_by_name(&be, backend, &err) ||
        checkpoint_open(&ck, model, force, &err) ||
        checkpoint_load_tokenizer(ck, &tok, &err))
        goto out;
    tokenizer_result r;
    if (tokenizer_encode(tok, prompt, checkpoint_pad_id(ck), &r, &err))
        goto out;
    warn_truncated(prompt, &r);
    if (ck->text.positions != CLIP_CONTEXT) {
        coin_fail(&err, COIN_EUNSUPPORTED, "%s: the text encoder has %lld positions, "
                  "coin's tokenizer makes %d", model, (long long)ck->text.positions,
                  CLIP_CONTEXT);
        goto out;
    }
    if (clip_load(&clip, ck, be, &err))
        goto out;
    double load_ms = now_ms() - t0;
    int runs = repeat ? repeat : 1;
    if (!(times = malloc((size_t)runs * sizeof *times))) {
        coin_fail(&err, COIN_ENOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < runs; i++) {
        tensor_free(&hidden);
        double t1 = now_ms();
        if (clip_forward(clip, r.ids, 1, &hidden, &err))
            goto out;
        times[i] = now_ms() - t1;
    }
    if (save_encoding(out, &hidden, &r, ck, prompt, &err))
        goto out;
    if (repeat) {
        qsort(times, (size_t)runs, sizeof *times, cmp_double);
        fprintf(stderr, "encode: forward median %.1f ms over %d runs (load %.1f ms)\n",
                times[runs / 2], runs, load_ms);
    }
    status = 0;
out:
    if (status)
        cli_report(&err);
    free(times);
    tensor_free(&hidden);
    clip_free(clip);
    tokenizer_free(tok);
    checkpoint_close(ck);
    return status;
}
