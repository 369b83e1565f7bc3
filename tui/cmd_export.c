/*
 * cmd_export.c - `coin export`: an embedding in the form another tool reads.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/embedding.h"
#include "core/fileio.h"
#include "core/infotext.h"
#include "db/ledger.h"
#include "tui/cli.h"
#include "tui/record.h"

static const char EXPORT_HELP[] =
    "usage: coin export EMBEDDING --format diffusers|a1111|kohya --out FILE.safetensors\n"
    "                   [--token WORD]\n"
    "       coin export RUN --format diffusers|a1111|kohya [--step N] [--out FILE]\n"
    "\n"
    "Writes an embedding (a .safetensors or .pt file, or a coin training folder,\n"
    "whose latest learned_embeds.safetensors is taken) or a training run of the\n"
    "ledger (see coin runs: its last checkpoint, or the one at --step N, checked\n"
    "against the sha256 the ledger recorded; --out defaults to\n"
    "RUNFOLDER/TRIGGER-steps-N-FORMAT.safetensors) as:\n"
    "  diffusers  {\"<token>\": [N, D]}: load_textual_inversion, coin --embedding\n"
    "  a1111      {\"string_to_param.*\": [N, D]}: AUTOMATIC1111's embeddings folder;\n"
    "             the trigger is the file name\n"
    "  kohya      {\"emb_params\": [N, D]}: sd-scripts, stable-diffusion.cpp\n"
    "             (--embd-dir), AUTOMATIC1111; the trigger is the file name\n";

/* The checkpoint file of training run id_text at step (-1: its last) into
 * path, checked against the recorded sha256; *at gets its step, *trigger
 * the run's trigger and *out_dir its folder (both malloc'd). */
static int run_checkpoint(const char *id_text, long step, char path[4096], char **trigger,
                          char **out_dir, int *at, coin_error *err)
{
    long long id = strtoll(id_text, NULL, 10);
    ledger *l;
    ledger_run r;
    int rc = cli_open_ledger(&l, err);
    if (rc)
        return rc;
    if ((rc = ledger_get_run(l, id, &r, err))) {
        ledger_close(l);
        return rc;
    }
    ledger_checkpoint *c = NULL;
    size_t n = 0;
    if (strcmp(r.kind, "train"))
        rc = coin_fail(err, COIN_EINVAL, "run %lld is a %s run; only training runs have "
                       "embeddings to export", id, r.kind);
    else
        rc = ledger_list_checkpoints(l, id, &c, &n, err);
    const ledger_checkpoint *pick = NULL;
    for (size_t i = 0; !rc && i < n; i++)
        if (step < 0 ? !pick || c[i].step > pick->step : c[i].step == step)
            pick = &c[i];
    if (!rc && !pick) {
        char steps[512] = "";
        for (size_t i = 0; i < n && strlen(steps) < sizeof steps - 16; i++)
            snprintf(steps + strlen(steps), sizeof steps - strlen(steps), "%s%d", i ? ", " : "",
                     c[i].step);
        rc = step < 0 ? coin_fail(err, COIN_ENOTFOUND, "run %lld has no checkpoint yet", id)
                      : coin_fail(err, COIN_ENOTFOUND, "run %lld has no checkpoint at step %ld "
                                  "(it has: %s)", id, step, n ? steps : "none");
    }
    if (!rc) {
        uint8_t digest[32];
        char hex[65];
        snprintf(path, 4096, "%s", pick->path);
        *at = pick->step;
        if ((rc = sha256_file(path, digest, NULL, NULL, err)) == 0) {
            sha256_hex(digest, hex);
            if (pick->sha256 && strcmp(hex, pick->sha256))
                rc = coin_fail(err, COIN_EINVAL, "%s has changed since run %lld recorded it at "
                               "step %d (sha256 %.12s..., recorded %.12s...)", path, id,
                               pick->step, hex, pick->sha256);
        }
        *trigger = strdup(r.trigger ? r.trigger : "embedding");
        *out_dir = strdup(r.out_dir ? r.out_dir : ".");
    }
    ledger_checkpoints_free(c, n);
    ledger_run_free(&r);
    ledger_close(l);
    return rc;
}

int cmd_export(int argc, char **argv)
{
    const char *in = NULL, *format = NULL, *out = NULL, *token = NULL, *step_text = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(EXPORT_HELP, stdout);
            return 0;
        }
        if (i + 1 < argc && !strcmp(argv[i], "--format"))
            format = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--out"))
            out = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--token"))
            token = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--step"))
            step_text = argv[++i];
        else if (argv[i][0] != '-' && !in)
            in = argv[i];
        else
            return cli_usage_error("export", "unexpected argument '%s'", argv[i]);
    }
    /* A number that is not a file is a run of the ledger. */
    int is_run = in && in[strspn(in, "0123456789")] == '\0' && !path_exists(in);
    if (!in || !format || (!out && !is_run))
        return cli_usage_error("export", "give EMBEDDING, --format and --out (or RUN and "
                               "--format)");
    long step = -1;
    if (step_text) {
        char *end;
        step = strtol(step_text, &end, 10);
        if (!is_run || !*step_text || *end || step < 0)
            return cli_usage_error("export", is_run ? "--step takes a step number"
                                                    : "--step goes with a RUN id");
    }
    embedding_format fmt;
    if (!strcmp(format, "diffusers"))
        fmt = EMB_DIFFUSERS;
    else if (!strcmp(format, "a1111"))
        fmt = EMB_A1111;
    else if (!strcmp(format, "kohya"))
        fmt = EMB_KOHYA;
    else
        return cli_usage_error("export", "--format takes diffusers, a1111 or kohya");
    char path[4096], out_buf[4400], *trigger = NULL;
    coin_error err = {0};
    if (is_run) {
        char *dir = NULL;
        int at = 0;
        if (run_checkpoint(in, step, path, &trigger, &dir, &at, &err)) {
            free(trigger);
            free(dir);
            return cli_report(&err);
        }
        if (!out) {
            /* The trigger's letters, digits, - and _ name the file. */
            char stem[128];
            size_t k = 0;
            for (const char *t = trigger; *t && k < sizeof stem - 1; t++)
                if ((*t >= 'a' && *t <= 'z') || (*t >= 'A' && *t <= 'Z') ||
                    (*t >= '0' && *t <= '9') || *t == '-' || *t == '_')
                    stem[k++] = *t;
            stem[k] = '\0';
            snprintf(out_buf, sizeof out_buf, "%s/%s-steps-%d-%s.safetensors", dir,
                     k ? stem : "embedding", at, format);
            out = out_buf;
        }
        if (!token)
            token = trigger;
        in = path;
        free(dir);
    } else if (path_is_dir(in) == 1) {
        if (path_join(path, sizeof path, in, "learned_embeds.safetensors", &err))
            return cli_report(&err);
        in = path;
    }
    ti_embedding e;
    int loaded = embedding_load(&e, in, token, &err);
    free(trigger);      /* embedding_load copied the token */
    if (loaded)
        return cli_report(&err);
    const char *meta[] = {"coin.exported_from", in};
    int rc = embedding_save(out, fmt, e.token, e.vectors, e.n_vectors, e.width, meta, 1, &err);
    if (!rc)
        printf("%s: \"%s\", %d vector%s of %lld\n", out, e.token, e.n_vectors,
               e.n_vectors == 1 ? "" : "s", (long long)e.width);
    embedding_free(&e);
    return rc ? cli_report(&err) : 0;
}
