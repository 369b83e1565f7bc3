/*
 * cmd_export.c - `coin export`: an embedding in the form another tool reads.
 */
#include <stdio.h>
#include <string.h>

#include "core/embedding.h"
#include "core/fileio.h"
#include "tui/cli.h"

static const char EXPORT_HELP[] =
    "usage: coin export EMBEDDING --format diffusers|a1111|kohya --out FILE.safetensors\n"
    "                   [--token WORD]\n"
    "\n"
    "Writes an embedding (a .safetensors or .pt file, or a coin training folder,\n"
    "whose latest learned_embeds.safetensors is taken) as:\n"
    "  diffusers  {\"<token>\": [N, D]}: load_textual_inversion, coin --embedding\n"
    "  a1111      {\"string_to_param.*\": [N, D]}: AUTOMATIC1111's embeddings folder;\n"
    "             the trigger is the file name\n"
    "  kohya      {\"emb_params\": [N, D]}: sd-scripts, stable-diffusion.cpp\n"
    "             (--embd-dir), AUTOMATIC1111; the trigger is the file name\n";

int cmd_export(int argc, char **argv)
{
    const char *in = NULL, *format = NULL, *out = NULL, *token = NULL;
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
        else if (argv[i][0] != '-' && !in)
            in = argv[i];
        else
            return cli_usage_error("export", "unexpected argument '%s'", argv[i]);
    }
    if (!in || !format || !out)
        return cli_usage_error("export", "give EMBEDDING, --format and --out");
    embedding_format fmt;
    if (!strcmp(format, "diffusers"))
        fmt = EMB_DIFFUSERS;
    else if (!strcmp(format, "a1111"))
        fmt = EMB_A1111;
    else if (!strcmp(format, "kohya"))
        fmt = EMB_KOHYA;
    else
        return cli_usage_error("export", "--format takes diffusers, a1111 or kohya");
    char path[4096];
    coin_error err = {0};
    if (path_is_dir(in) == 1) {
        if (path_join(path, sizeof path, in, "learned_embeds.safetensors", &err))
            return cli_report(&err);
        in = path;
    }
    ti_embedding e;
    if (embedding_load(&e, in, token, &err))
        return cli_report(&err);
    const char *meta[] = {"coin.exported_from", in};
    int rc = embedding_save(out, fmt, e.token, e.vectors, e.n_vectors, e.width, meta, 1, &err);
    if (!rc)
        printf("%s: \"%s\", %d vector%s of %lld\n", out, e.token, e.n_vectors,
               e.n_vectors == 1 ? "" : "s", (long long)e.width);
    embedding_free(&e);
    return rc ? cli_report(&err) : 0;
}
