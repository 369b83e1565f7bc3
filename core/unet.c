/*
 * unet.c - the Stable Diffusion UNet forward pass (see unet.h).
 *
 * A line-by-line port of diffusers 0.31 UNet2DConditionModel for the
 * configurations SD 1.x and 2.x use (CrossAttnDownBlock2D / DownBlock2D,
 * UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D / UpBlock2D, one or more
 * BasicTransformerBlocks per Transformer2DModel; no class labels, no added
 * conditioning).  The configuration is read from the weights themselves
 * (levels, channels, layers, attention placement, context width, projection
 * kind); only head counts and the GroupNorm group count need a config file,
 * file metadata or the SD version.
 *
 * Everything after the sinusoidal timestep features runs through the op_*
 * wrappers, so the same code drives any backend.  Activations are freed as
 * soon as the next one exists: the only long-lived activations are the skip
 * connections diffusers keeps for the up path.
 */
#include "unet.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "unet_internal.h"

#define TRY(expr)                 \
    do {                          \
        if ((rc = (expr)) != 0)   \
            goto done;            \
    } while (0)

#define CONFIG_MAX_BYTES (1 << 20)
/* ------------------------------------------------------------------ */
/* Loading                                                            */
/* ------------------------------------------------------------------ */

typedef struct loader {
    unet_model *m;
    const checkpoint *ck;
    coin_error *err;
} loader;

static const char *dims_str(char *buf, size_t len, int ndim, const int64_t *d)
{
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", i ? ", " : "",
                                 (long long)d[i]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
    return buf;
}

static const ckpt_tensor *find(const checkpoint *ck, const char *name)
{
    return checkpoint_find(ck, COMP_UNET, name);
}

/* Loads UNet tensor `name` into dst, requiring exactly the shape d[0..ndim). */
static int load(loader *L, tensor *dst, const char *name, int ndim, const int64_t *d)
{
    const ckpt_tensor *src = find(L->ck, name);
    char want[96], got[96];
    if (!src)
        return coin_fail(L->err, COIN_ENOTFOUND, "%s: the UNet has no tensor '%s'",
                         L->ck->path, name);
    int same = src->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = src->shape[i] == d[i];
    if (!same)
        return coin_fail(L->err, COIN_ESHAPE,
                         "%s: UNet tensor '%s' has shape %s where %s was expected",
                         src->file->path, name, dims_str(got, sizeof got, src->ndim, src->shape),
                         dims_str(want, sizeof want, ndim, d));
    if (L->m->n_owned == L->m->cap_owned) {
        size_t cap = L->m->cap_owned ? 2 * L->m->cap_owned : 256;
        tensor **grown = realloc(L->m->owned, cap * sizeof *grown);
        if (!grown)
            return coin_fail(L->err, COIN_ENOMEM, "out of memory");
        L->m->owned = grown;
        L->m->cap_owned = cap;
    }
    float *host = malloc(src->nelem * sizeof(float));
    if (!host)
        return coin_fail(L->err, COIN_ENOMEM, "out of memory loading UNet tensor '%s'", name);
    int rc = checkpoint_read_f32(L->ck, src, host, src->nelem, L->err);
    if (!rc)
        rc = tensor_alloc(dst, L->m->be, ndim, d, L->err);
    if (!rc) {
        L->m->owned[L->m->n_owned++] = dst;
        rc = tensor_upload(dst, host, (int64_t)src->nelem, L->err);
    }
    free(host);
    return rc;
}

/* prefix + "." + suffix, shape given inline. */
#define LOADP(L, dst, prefix, suffix, ...)                                     \
    load_named(L, dst, prefix, suffix, (int)(sizeof((int64_t[]){__VA_ARGS__}) / \
                                             sizeof(int64_t)),                  \
               (int64_t[]){__VA_ARGS__})

static int load_named(loader *L, tensor *dst, const char *prefix, const char *suffix,
                      int ndim, const int64_t *d)
{
    char name[256];
    if (snprintf(name, sizeof name, "%s.%s", prefix, suffix) >= (int)sizeof name)
        return coin_fail(L->err, COIN_EINVAL, "UNet tensor name too long: %s", prefix);
    return load(L, dst, name, ndim, d);
}

static int load_resnet(loader *L, resnet *r, const char *p, int cin, int cout)
{
    int64_t T = L->m->cfg.temb_dim;
    int rc;
    r->cin = cin;
    r->cout = cout;
    if ((rc = LOADP(L, &r->norm1_w, p, "norm1.weight", cin)) ||
        (rc = LOADP(L, &r->norm1_b, p, "norm1.bias", cin)) ||
        (rc = LOADP(L, &r->conv1_w, p, "conv1.weight", cout, cin, 3, 3)) ||
        (rc = LOADP(L, &r->conv1_b, p, "conv1.bias", cout)) ||
        (rc = LOADP(L, &r->temb_w, p, "time_emb_proj.weight", cout, T)) ||
        (rc = LOADP(L, &r->temb_b, p, "time_emb_proj.bias", cout)) ||
        (rc = LOADP(L, &r->norm2_w, p, "norm2.weight", cout)) ||
        (rc = LOADP(L, &r->norm2_b, p, "norm2.bias", cout)) ||
        (rc = LOADP(L, &r->conv2_w, p, "conv2.weight", cout, cout, 3, 3)) ||
        (rc = LOADP(L, &r->conv2_b, p, "conv2.bias", cout)))
        return rc;
    if (cin != cout &&
        ((rc = LOADP(L, &r->skip_w, p, "conv_shortcut.weight", cout, cin, 1, 1)) ||
         (rc = LOADP(L, &r->skip_b, p, "conv_shortcut.bias", cout))))
        return rc;
    return 0;
}

/* Counts the BasicTransformerBlocks under prefix p. */
static int count_depth(const checkpoint *ck, const char *p)
{
    char name[256];
    int d = 0;
    for (; d <= MAX_DEPTH; d++) {
        snprintf(name, sizeof name, "%s.transformer_blocks.%d.norm1.weight", p, d);
        if (!find(ck, name))
            break;
    }
    return d;
}

static int load_transformer(loader *L, transformer *t, const char *p, int C, int heads)
{
    const unet_config *c = &L->m->cfg;
    int64_t X = c->context_dim, F = (int64_t)FF_MULT * C;
    int rc;
    t->channels = C;
    t->heads = heads;
    if (heads < 1 || C % heads)
        return coin_fail(L->err, COIN_EFORMAT,
                         "%s: %d attention heads do not divide the %d channels of '%s' "
                         "(head counts from %s)", L->ck->path, heads, C, p, c->heads_from);
    t->depth = count_depth(L->ck, p);
    if (t->depth < 1 || t->depth > MAX_DEPTH)
        return coin_fail(L->err, t->depth < 1 ? COIN_ENOTFOUND : COIN_EUNSUPPORTED,
                         "%s: the UNet has no tensor '%s.transformer_blocks.0.norm1.weight'%s",
                         L->ck->path, p, t->depth < 1 ? "" : " (too many transformer blocks)");
    if ((rc = LOADP(L, &t->norm_w, p, "norm.weight", C)) ||
        (rc = LOADP(L, &t->norm_b, p, "norm.bias", C)))
        return rc;
    if (c->linear_projection) {
        if ((rc = LOADP(L, &t->proj_in_w, p, "proj_in.weight", C, C)) ||
            (rc = LOADP(L, &t->proj_out_w, p, "proj_out.weight", C, C)))
            return rc;
    } else {
        if ((rc = LOADP(L, &t->proj_in_w, p, "proj_in.weight", C, C, 1, 1)) ||
            (rc = LOADP(L, &t->proj_out_w, p, "proj_out.weight", C, C, 1, 1)))
            return rc;
        int64_t square[2] = {C, C};
        if ((rc = tensor_reshape(&t->proj_in_w, 2, square, L->err)) ||
            (rc = tensor_reshape(&t->proj_out_w, 2, square, L->err)))
            return rc;
    }
    if ((rc = LOADP(L, &t->proj_in_b, p, "proj_in.bias", C)) ||
        (rc = LOADP(L, &t->proj_out_b, p, "proj_out.bias", C)))
        return rc;
    for (int d = 0; d < t->depth; d++) {
        tblock *b = &t->blocks[d];
        char q[256];
        snprintf(q, sizeof q, "%s.transformer_blocks.%d", p, d);
        if ((rc = LOADP(L, &b->ln1_w, q, "norm1.weight", C)) ||
            (rc = LOADP(L, &b->ln1_b, q, "norm1.bias", C)) ||
            (rc = LOADP(L, &b->q1_w, q, "attn1.to_q.weight", C, C)) ||
            (rc = LOADP(L, &b->k1_w, q, "attn1.to_k.weight", C, C)) ||
            (rc = LOADP(L, &b->v1_w, q, "attn1.to_v.weight", C, C)) ||
            (rc = LOADP(L, &b->o1_w, q, "attn1.to_out.0.weight", C, C)) ||
            (rc = LOADP(L, &b->o1_b, q, "attn1.to_out.0.bias", C)) ||
            (rc = LOADP(L, &b->ln2_w, q, "norm2.weight", C)) ||
            (rc = LOADP(L, &b->ln2_b, q, "norm2.bias", C)) ||
            (rc = LOADP(L, &b->q2_w, q, "attn2.to_q.weight", C, C)) ||
            (rc = LOADP(L, &b->k2_w, q, "attn2.to_k.weight", C, X)) ||
            (rc = LOADP(L, &b->v2_w, q, "attn2.to_v.weight", C, X)) ||
            (rc = LOADP(L, &b->o2_w, q, "attn2.to_out.0.weight", C, C)) ||
            (rc = LOADP(L, &b->o2_b, q, "attn2.to_out.0.bias", C)) ||
            (rc = LOADP(L, &b->ln3_w, q, "norm3.weight", C)) ||
            (rc = LOADP(L, &b->ln3_b, q, "norm3.bias", C)) ||
            (rc = LOADP(L, &b->ff1_w, q, "ff.net.0.proj.weight", 2 * F, C)) ||
            (rc = LOADP(L, &b->ff1_b, q, "ff.net.0.proj.bias", 2 * F)) ||
            (rc = LOADP(L, &b->ff2_w, q, "ff.net.2.weight", C, F)) ||
            (rc = LOADP(L, &b->ff2_b, q, "ff.net.2.bias", C)))
            return rc;
    }
    return 0;
}

/* ---- the configuration ---- */

/* Shape of a tensor that must exist to read the configuration. */
static const ckpt_tensor *need(const checkpoint *ck, const char *name, int ndim,
                               coin_error *err)
{
    const ckpt_tensor *t = find(ck, name);
    if (!t)
        coin_fail(err, COIN_ENOTFOUND, "%s: the UNet has no tensor '%s'", ck->path, name);
    else if (t->ndim != ndim) {
        char got[96];
        coin_fail(err, COIN_ESHAPE, "%s: UNet tensor '%s' has shape %s, not %d dimensions",
                  t->file->path, name, dims_str(got, sizeof got, t->ndim, t->shape), ndim);
        t = NULL;
    }
    return t;
}

/* Head counts from a JSON number or list (diffusers' attention_head_dim,
 * which holds head counts for these models, or coin's metadata).  Returns
 * 1 when read, 0 when v is absent/null, -1 when malformed. */
static int heads_from_json(const cJSON *v, unet_config *c)
{
    if (!v || cJSON_IsNull(v))
        return 0;
    if (cJSON_IsNumber(v)) {
        for (int i = 0; i < c->levels; i++)
            c->heads[i] = v->valueint;
        return v->valueint > 0 ? 1 : -1;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != c->levels)
        return -1;
    for (int i = 0; i < c->levels; i++) {
        const cJSON *e = cJSON_GetArrayItem(v, i);
        if (!cJSON_IsNumber(e) || e->valueint < 1)
            return -1;
        c->heads[i] = e->valueint;
    }
    return 1;
}

/* The value of metadata key in any of the checkpoint's files, or NULL. */
static const char *meta(const checkpoint *ck, const char *key)
{
    for (int i = 0; i < ck->n_files; i++) {
        const char *v = st_meta(ck->files[i], key);
        if (v)
            return v;
    }
    return NULL;
}

/* The diffusers options that change the computation, with the one value
 * coin implements (as JSON).  An absent key is diffusers' default, which is
 * that value; a list (per-level form) must hold it everywhere. */
static const struct { const char *key, *value; } SUPPORTED[] = {
    {"act_fn", "\"silu\""},
    {"time_embedding_type", "\"positional\""},
    {"flip_sin_to_cos", "true"},
    {"freq_shift", "0"},
    {"center_input_sample", "false"},
    {"resnet_time_scale_shift", "\"default\""},
    {"resnet_skip_time_act", "false"},
    {"resnet_out_scale_factor", "1"},
    {"mid_block_type", "\"UNetMidBlock2DCrossAttn\""},
    {"mid_block_scale_factor", "1"},
    {"mid_block_only_cross_attention", "null"},
    {"downsample_padding", "1"},
    {"only_cross_attention", "false"},
    {"dual_cross_attention", "false"},
    {"attention_type", "\"default\""},
    {"cross_attention_norm", "null"},
    {"class_embed_type", "null"},
    {"num_class_embeds", "null"},
    {"addition_embed_type", "null"},
    {"encoder_hid_dim", "null"},
    {"encoder_hid_dim_type", "null"},
    {"time_cond_proj_dim", "null"},
    {"time_embedding_act_fn", "null"},
    {"timestep_post_act", "null"},
};

/* Rejects a config that asks for something else instead of computing
 * something else silently. */
static int check_unsupported(const checkpoint *ck, const cJSON *j, coin_error *err)
{
    for (size_t i = 0; i < sizeof SUPPORTED / sizeof SUPPORTED[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, SUPPORTED[i].key);
        if (!v)
            continue;
        cJSON *want = cJSON_Parse(SUPPORTED[i].value);
        int ok = cJSON_Compare(v, want, 1);
        if (!ok && cJSON_IsArray(v)) {
            ok = 1;
            for (const cJSON *e = v->child; e; e = e->next)
                ok = ok && cJSON_Compare(e, want, 1);
        }
        cJSON_Delete(want);
        if (!ok) {
            char *got = cJSON_PrintUnformatted(v);
            int rc = coin_fail(err, COIN_EUNSUPPORTED,
                               "%s/unet/config.json: %s %s is not supported (coin runs the "
                               "Stable Diffusion 1.x/2.x UNet, which has %s)", ck->path,
                               SUPPORTED[i].key, got ? got : "(?)", SUPPORTED[i].value);
            free(got);
            return rc;
        }
    }
    return 0;
}

/* Reads unet/config.json of a diffusers folder (NULL when there is none). */
static int read_config_json(const checkpoint *ck, cJSON **out, coin_error *err)
{
    char path[4200], *text = NULL;
    *out = NULL;
    if (ck->layout != CKPT_DIFFUSERS)
        return 0;
    int rc = path_join(path, sizeof path, ck->path, "unet/config.json", err);
    if (rc || !path_exists(path))
        return rc;
    if ((rc = file_read_all(path, CONFIG_MAX_BYTES, &text, NULL, err)))
        return rc;
    *out = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return coin_fail(err, COIN_EFORMAT, "%s: not a JSON object", path);
    }
    return 0;
}

static int infer_config(unet_config *c, const checkpoint *ck, coin_error *err)
{
    char name[256];
    const ckpt_tensor *t;
    memset(c, 0, sizeof *c);

    if (!(t = need(ck, "conv_in.weight", 4, err)))
        return err ? err->code : COIN_ENOTFOUND;
    c->in_channels = (int)t->shape[1];
    if (!(t = need(ck, "conv_out.weight", 4, err)))
        return err ? err->code : COIN_ENOTFOUND;
    c->out_channels = (int)t->shape[0];
    if (!(t = need(ck, "time_embedding.linear_1.weight", 2, err)))
        return err ? err->code : COIN_ENOTFOUND;
    c->time_dim = (int)t->shape[1];
    c->temb_dim = (int)t->shape[0];

    for (c->levels = 0; c->levels <= UNET_MAX_LEVELS; c->levels++) {
        snprintf(name, sizeof name, "down_blocks.%d.resnets.0.conv1.weight", c->levels);
        if (!(t = find(ck, name)))
            break;
        if (c->levels == UNET_MAX_LEVELS)
            return coin_fail(err, COIN_EUNSUPPORTED, "%s: the UNet has more than %d levels",
                             ck->path, UNET_MAX_LEVELS);
        c->channels[c->levels] = (int)t->shape[0];
        snprintf(name, sizeof name, "down_blocks.%d.attentions.0.norm.weight", c->levels);
        c->attention[c->levels] = find(ck, name) != NULL;
    }
    if (c->levels == 0)
        return coin_fail(err, COIN_ENOTFOUND,
                         "%s: the UNet has no tensor 'down_blocks.0.resnets.0.conv1.weight'",
                         ck->path);
    for (int i = 0; i < c->levels; i++) {
        snprintf(name, sizeof name, "up_blocks.%d.attentions.0.norm.weight", i);
        c->up_attention[i] = find(ck, name) != NULL;
    }
    for (c->layers_per_block = 0; c->layers_per_block <= MAX_LAYERS; c->layers_per_block++) {
        snprintf(name, sizeof name, "down_blocks.0.resnets.%d.conv1.weight", c->layers_per_block);
        if (!find(ck, name))
            break;
    }
    if (c->layers_per_block > MAX_LAYERS)
        return coin_fail(err, COIN_EUNSUPPORTED, "%s: more than %d ResNet layers per UNet block",
                         ck->path, MAX_LAYERS);

    /* The mid block always has cross-attention in SD: it gives the context
     * width and the projection kind. */
    if (!(t = need(ck, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight", 2, err)))
        return err ? err->code : COIN_ENOTFOUND;
    c->context_dim = (int)t->shape[1];
    if (!(t = find(ck, "mid_block.attentions.0.proj_in.weight")))
        return coin_fail(err, COIN_ENOTFOUND,
                         "%s: the UNet has no tensor 'mid_block.attentions.0.proj_in.weight'",
                         ck->path);
    c->linear_projection = t->ndim == 2;
    c->transformer_depth = count_depth(ck, "mid_block.attentions.0");

    c->norm_groups = 32;
    c->norm_eps = 1e-5f;
    snprintf(c->groups_from, sizeof c->groups_from, "the full-size models' default");

    cJSON *j = NULL;
    int rc = read_config_json(ck, &j, err);
    if (rc)
        return rc;
    int got_heads = 0;
    if (j) {
        if ((rc = check_unsupported(ck, j, err)))
            goto done;
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "norm_num_groups");
        if (cJSON_IsNumber(v)) {
            c->norm_groups = v->valueint;
            snprintf(c->groups_from, sizeof c->groups_from, "unet/config.json");
        }
        v = cJSON_GetObjectItemCaseSensitive(j, "norm_eps");
        if (cJSON_IsNumber(v))
            c->norm_eps = (float)v->valuedouble;
        /* diffusers: num_attention_heads = num_attention_heads or
         * attention_head_dim, the latter being head counts for SD (a
         * naming accident diffusers keeps for compatibility), default 8. */
        const char *keys[] = {"num_attention_heads", "attention_head_dim"};
        for (int k = 0; k < 2 && !got_heads; k++) {
            v = cJSON_GetObjectItemCaseSensitive(j, keys[k]);
            got_heads = heads_from_json(v, c);
            if (got_heads < 0) {
                rc = coin_fail(err, COIN_EFORMAT,
                               "%s/unet/config.json: %s must be a positive number or a "
                               "list of %d", ck->path, keys[k], c->levels);
                goto done;
            }
            if (got_heads)
                snprintf(c->heads_from, sizeof c->heads_from, "unet/config.json %s", keys[k]);
        }
        if (!got_heads) {
            for (int i = 0; i < c->levels; i++)
                c->heads[i] = 8;
            got_heads = 1;
            snprintf(c->heads_from, sizeof c->heads_from,
                     "unet/config.json without attention_head_dim (diffusers' default 8)");
        }
    } else {
        /* coin's tiny test models record what the weights cannot say. */
        const char *g = meta(ck, "unet.norm_num_groups");
        if (g) {
            c->norm_groups = atoi(g);
            snprintf(c->groups_from, sizeof c->groups_from, "file metadata unet.norm_num_groups");
        }
        const char *h = meta(ck, "unet.num_attention_heads");
        if (h) {
            cJSON *v = cJSON_Parse(h);
            got_heads = heads_from_json(v, c);
            cJSON_Delete(v);
            if (got_heads <= 0) {
                rc = coin_fail(err, COIN_EFORMAT,
                               "%s: metadata unet.num_attention_heads \"%s\" is not a number "
                               "or a list of %d", ck->path, h, c->levels);
                goto done;
            }
            snprintf(c->heads_from, sizeof c->heads_from, "file metadata unet.num_attention_heads");
        }
    }
    if (!got_heads) {
        /* SD1 (CompVis num_heads 8) or SD2 (num_head_channels 64); an
         * unknown version goes by its projection kind, which also tells
         * them apart. */
        int sd2 = ck->version == SD_V2 || (ck->version == SD_UNKNOWN && c->linear_projection);
        for (int i = 0; i < c->levels; i++)
            c->heads[i] = sd2 ? c->channels[i] / 64 : 8;
        snprintf(c->heads_from, sizeof c->heads_from, "%s",
                 sd2 ? "SD 2.x: channels / 64" : "SD 1.x: 8 heads");
    }
    if (c->norm_groups < 1) {
        rc = coin_fail(err, COIN_EFORMAT, "%s: norm_num_groups %d (from %s)", ck->path,
                       c->norm_groups, c->groups_from);
        goto done;
    }
done:
    cJSON_Delete(j);
    return rc;
}

static int load_level_down(loader *L, int i)
{
    const unet_config *c = &L->m->cfg;
    level *lv = &L->m->down[i];
    char p[128];
    int rc, out = c->channels[i], in = i ? c->channels[i - 1] : c->channels[0];
    lv->n_res = c->layers_per_block;
    if (c->attention[i] && !(lv->attn = calloc((size_t)lv->n_res, sizeof *lv->attn)))
        return coin_fail(L->err, COIN_ENOMEM, "out of memory");
    for (int j = 0; j < lv->n_res; j++) {
        snprintf(p, sizeof p, "down_blocks.%d.resnets.%d", i, j);
        if ((rc = load_resnet(L, &lv->res[j], p, j ? out : in, out)))
            return rc;
        snprintf(p, sizeof p, "down_blocks.%d.attentions.%d", i, j);
        if (lv->attn && (rc = load_transformer(L, &lv->attn[j], p, out, c->heads[i])))
            return rc;
    }
    if (i < c->levels - 1) {
        lv->has_sample = 1;
        snprintf(p, sizeof p, "down_blocks.%d.downsamplers.0.conv", i);
        if ((rc = LOADP(L, &lv->sample_w, p, "weight", out, out, 3, 3)) ||
            (rc = LOADP(L, &lv->sample_b, p, "bias", out)))
            return rc;
    }
    return 0;
}

/* Up block i runs at the level levels-1-i; its channel plan is diffusers'
 * (prev_output_channel, output_channel, input_channel for the skips). */
static int load_level_up(loader *L, int i)
{
    const unet_config *c = &L->m->cfg;
    level *lv = &L->m->up[i];
    int n = c->levels, lvl = n - 1 - i;
    int out = c->channels[lvl];
    int prev = i ? c->channels[lvl + 1] : c->channels[n - 1];
    int in = c->channels[lvl > 0 ? lvl - 1 : 0];
    char p[128];
    int rc;
    lv->n_res = c->layers_per_block + 1;
    if (c->up_attention[i] && !(lv->attn = calloc((size_t)lv->n_res, sizeof *lv->attn)))
        return coin_fail(L->err, COIN_ENOMEM, "out of memory");
    for (int j = 0; j < lv->n_res; j++) {
        int skip = j == lv->n_res - 1 ? in : out;
        int res_in = j ? out : prev;
        snprintf(p, sizeof p, "up_blocks.%d.resnets.%d", i, j);
        if ((rc = load_resnet(L, &lv->res[j], p, res_in + skip, out)))
            return rc;
        snprintf(p, sizeof p, "up_blocks.%d.attentions.%d", i, j);
        if (lv->attn && (rc = load_transformer(L, &lv->attn[j], p, out, c->heads[lvl])))
            return rc;
    }
    if (i < n - 1) {
        lv->has_sample = 1;
        snprintf(p, sizeof p, "up_blocks.%d.upsamplers.0.conv", i);
        if ((rc = LOADP(L, &lv->sample_w, p, "weight", out, out, 3, 3)) ||
            (rc = LOADP(L, &lv->sample_b, p, "bias", out)))
            return rc;
    }
    return 0;
}

int unet_load(unet_model **out, const checkpoint *ck, const coin_backend *be,
              coin_error *err)
{
    *out = NULL;
    unet_model *m = calloc(1, sizeof *m);
    if (!m)
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    m->be = be;
    loader L = {m, ck, err};
    unet_config *c = &m->cfg;
    int rc;
    TRY(infer_config(c, ck, err));
    int top = c->channels[c->levels - 1], C0 = c->channels[0];
    for (int i = 0; i < c->levels; i++)
        if (c->channels[i] % c->norm_groups) {
            rc = coin_fail(err, COIN_EFORMAT, "%s: %d GroupNorm groups (%s) do not divide "
                           "the UNet's %d channels%s", ck->path, c->norm_groups,
                           c->groups_from, c->channels[i],
                           ck->layout == CKPT_SINGLE_FILE && !strncmp(c->groups_from, "the full-size", 13)
                               ? "; a single file must then say its group count in the "
                                 "metadata key unet.norm_num_groups" : "");
            goto done;
        }
    TRY(LOADP(&L, &m->conv_in_w, "conv_in", "weight", C0, c->in_channels, 3, 3));
    TRY(LOADP(&L, &m->conv_in_b, "conv_in", "bias", C0));
    TRY(LOADP(&L, &m->t1_w, "time_embedding.linear_1", "weight", c->temb_dim, c->time_dim));
    TRY(LOADP(&L, &m->t1_b, "time_embedding.linear_1", "bias", c->temb_dim));
    TRY(LOADP(&L, &m->t2_w, "time_embedding.linear_2", "weight", c->temb_dim, c->temb_dim));
    TRY(LOADP(&L, &m->t2_b, "time_embedding.linear_2", "bias", c->temb_dim));
    for (int i = 0; i < c->levels; i++)
        TRY(load_level_down(&L, i));
    TRY(load_resnet(&L, &m->mid_res[0], "mid_block.resnets.0", top, top));
    TRY(load_transformer(&L, &m->mid_attn, "mid_block.attentions.0", top,
                         c->heads[c->levels - 1]));
    TRY(load_resnet(&L, &m->mid_res[1], "mid_block.resnets.1", top, top));
    for (int i = 0; i < c->levels; i++)
        TRY(load_level_up(&L, i));
    TRY(LOADP(&L, &m->norm_out_w, "conv_norm_out", "weight", C0));
    TRY(LOADP(&L, &m->norm_out_b, "conv_norm_out", "bias", C0));
    TRY(LOADP(&L, &m->conv_out_w, "conv_out", "weight", c->out_channels, C0, 3, 3));
    TRY(LOADP(&L, &m->conv_out_b, "conv_out", "bias", c->out_channels));
done:
    if (rc) {
        unet_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void unet_free(unet_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_owned; i++)
        tensor_free(m->owned[i]);
    free(m->owned);
    for (int i = 0; i < UNET_MAX_LEVELS; i++) {
        free(m->down[i].attn);
        free(m->up[i].attn);
    }
    free(m);
}

const unet_config *unet_get_config(const unet_model *m) { return &m->cfg; }

/* ------------------------------------------------------------------ */
/* Forward                                                            */
/* ------------------------------------------------------------------ */

static const int PAD1[4] = {1, 1, 1, 1}, PAD0[4] = {0, 0, 0, 0};

/* out[B, cout, H, W] = resnet(x[B, cin, H, W], temb_act[B, temb_dim]),
 * where temb_act is SiLU(time embedding), shared by all resnets. */
static int resnet_forward(const unet_model *m, const resnet *r, const tensor *x,
                          const tensor *temb_act, tensor *out, coin_error *err)
{
    const coin_backend *be = m->be;
    int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3];
    int groups = m->cfg.norm_groups;
    float eps = m->cfg.norm_eps;
    tensor a = {0}, h = {0}, e = {0};
    int rc;
    memset(out, 0, sizeof *out);
    TRY(tensor_alloc(&a, be, 4, x->shape, err));
    TRY(op_group_norm(&a, x, &r->norm1_w, &r->norm1_b, groups, eps, err));
    TRY(op_silu(&a, &a, err));
    TRY(tensor_alloc4(&h, be, B, r->cout, H, W, err));
    TRY(op_conv2d(&h, &a, &r->conv1_w, &r->conv1_b, 1, PAD1, err));
    tensor_free(&a);
    TRY(tensor_alloc2(&e, be, B, r->cout, err));
    TRY(op_linear(&e, temb_act, &r->temb_w, &r->temb_b, err));
    TRY(op_add_channel(&h, &h, &e, err));
    tensor_free(&e);
    TRY(tensor_alloc4(&a, be, B, r->cout, H, W, err));
    TRY(op_group_norm(&a, &h, &r->norm2_w, &r->norm2_b, groups, eps, err));
    TRY(op_silu(&a, &a, err));
    /* h is spent: conv2 writes into it. */
    TRY(op_conv2d(&h, &a, &r->conv2_w, &r->conv2_b, 1, PAD1, err));
    if (r->cin != r->cout) {
        TRY(op_conv2d(&a, x, &r->skip_w, &r->skip_b, 1, PAD0, err));
        TRY(op_add(&h, &a, &h, err));
    } else {
        TRY(op_add(&h, x, &h, err));
    }
    *out = h;
    h = (tensor){0};
done:
    tensor_free(&a);
    tensor_free(&h);
    tensor_free(&e);
    return rc;
}

/* q[B, T, C] = linear(x) without bias, then o[B, T, C] = the heads' attention
 * over kv and its output projection added to the residual stream res. */
static int attend(const transformer *t, tensor *res, const tensor *q, const tensor *k,
                  const tensor *v, tensor *a, tensor *o, const tensor *ow,
                  const tensor *ob, coin_error *err)
{
    int rc = op_attention(a, q, k, v, t->heads, 0, err);
    if (!rc)
        rc = op_linear(o, a, ow, ob, err);
    if (!rc)
        rc = op_add(res, res, o, err);
    return rc;
}

/* h[B, C, H, W] += Transformer2DModel(h, ctx[B, S, context_dim]), in place. */
static int transformer_forward(const unet_model *m, const transformer *t, tensor *h,
                               const tensor *ctx, coin_error *err)
{
    const coin_backend *be = m->be;
    int64_t B = h->shape[0], C = h->shape[1], HW = h->shape[2] * h->shape[3];
    int64_t S = ctx->shape[1], F = (int64_t)FF_MULT * C;
    tensor gn = {0}, x = {0}, n = {0}, q = {0}, k = {0}, v = {0}, a = {0};
    tensor kc = {0}, vc = {0}, ff = {0}, g = {0};
    int rc;

    /* GroupNorm, then tokens [B, HW, C], then proj_in (see transformer). */
    TRY(tensor_alloc(&gn, be, 4, h->shape, err));
    TRY(op_group_norm(&gn, h, &t->norm_w, &t->norm_b, m->cfg.norm_groups,
                      TRANSFORMER_GN_EPS, err));
    TRY(tensor_reshape(&gn, 3, (int64_t[]){B, C, HW}, err));
    TRY(tensor_alloc3(&n, be, B, HW, C, err));
    TRY(op_transpose(&n, &gn, err));
    tensor_free(&gn);
    TRY(tensor_alloc3(&x, be, B, HW, C, err));
    TRY(op_linear(&x, &n, &t->proj_in_w, &t->proj_in_b, err));

    TRY(tensor_alloc3(&q, be, B, HW, C, err));
    TRY(tensor_alloc3(&k, be, B, HW, C, err));
    TRY(tensor_alloc3(&v, be, B, HW, C, err));
    TRY(tensor_alloc3(&a, be, B, HW, C, err));
    TRY(tensor_alloc3(&kc, be, B, S, C, err));
    TRY(tensor_alloc3(&vc, be, B, S, C, err));
    for (int d = 0; d < t->depth; d++) {
        const tblock *b = &t->blocks[d];
        /* Self-attention; v doubles as the output projection's buffer. */
        TRY(op_layernorm(&n, &x, &b->ln1_w, &b->ln1_b, LAYERNORM_EPS, err));
        TRY(op_linear(&q, &n, &b->q1_w, NULL, err));
        TRY(op_linear(&k, &n, &b->k1_w, NULL, err));
        TRY(op_linear(&v, &n, &b->v1_w, NULL, err));
        TRY(attend(t, &x, &q, &k, &v, &a, &n, &b->o1_w, &b->o1_b, err));
        /* Cross-attention: keys and values from the text. */
        TRY(op_layernorm(&n, &x, &b->ln2_w, &b->ln2_b, LAYERNORM_EPS, err));
        TRY(op_linear(&q, &n, &b->q2_w, NULL, err));
        TRY(op_linear(&kc, ctx, &b->k2_w, NULL, err));
        TRY(op_linear(&vc, ctx, &b->v2_w, NULL, err));
        TRY(attend(t, &x, &q, &kc, &vc, &a, &n, &b->o2_w, &b->o2_b, err));
        /* GEGLU feed-forward, its wide buffers held only while it runs. */
        TRY(op_layernorm(&n, &x, &b->ln3_w, &b->ln3_b, LAYERNORM_EPS, err));
        TRY(tensor_alloc3(&ff, be, B, HW, 2 * F, err));
        TRY(op_linear(&ff, &n, &b->ff1_w, &b->ff1_b, err));
        TRY(tensor_alloc3(&g, be, B, HW, F, err));
        TRY(op_geglu(&g, &ff, err));
        tensor_free(&ff);
        TRY(op_linear(&n, &g, &b->ff2_w, &b->ff2_b, err));
        tensor_free(&g);
        TRY(op_add(&x, &x, &n, err));
    }

    /* proj_out, back to [B, C, H, W], plus the block's input. */
    TRY(op_linear(&n, &x, &t->proj_out_w, &t->proj_out_b, err));
    TRY(tensor_reshape(&q, 3, (int64_t[]){B, C, HW}, err));
    TRY(op_transpose(&q, &n, err));
    TRY(tensor_reshape(&q, 4, h->shape, err));
    TRY(op_add(h, h, &q, err));
done:
    tensor_free(&gn);
    tensor_free(&x);
    tensor_free(&n);
    tensor_free(&q);
    tensor_free(&k);
    tensor_free(&v);
    tensor_free(&a);
    tensor_free(&kc);
    tensor_free(&vc);
    tensor_free(&ff);
    tensor_free(&g);
    return rc;
}

/* y[B, C, H', W'] = conv3x3(x) with the given stride (downsampler), or of
 * the nearest-neighbour 2x upsampled x (upsampler). */
static int resample(const coin_backend *be, const level *lv, const tensor *x, int up,
                    tensor *y, coin_error *err)
{
    int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    tensor u = {0};
    int rc;
    memset(y, 0, sizeof *y);
    if (up) {
        TRY(tensor_alloc4(&u, be, B, C, 2 * H, 2 * W, err));
        TRY(op_upsample2x(&u, x, err));
        TRY(tensor_alloc4(y, be, B, C, 2 * H, 2 * W, err));
        TRY(op_conv2d(y, &u, &lv->sample_w, &lv->sample_b, 1, PAD1, err));
    } else {
        TRY(tensor_alloc4(y, be, B, C, (H + 1) / 2, (W + 1) / 2, err));
        TRY(op_conv2d(y, x, &lv->sample_w, &lv->sample_b, 2, PAD1, err));
    }
done:
    tensor_free(&u);
    if (rc)
        tensor_free(y);
    return rc;
}

/* The sinusoidal features of diffusers' get_timestep_embedding with
 * flip_sin_to_cos=True, downscale_freq_shift=0: [cos(t f_i), sin(t f_i)],
 * f_i = exp(-ln(10000) i / half), computed in float32 step by step as
 * torch does so that large timesteps round alike. */
static void timestep_features(float *dst, const float *timesteps, int B, int dim)
{
    int half = dim / 2;
    const float neg_log = (float)-log(10000.0);
    for (int b = 0; b < B; b++) {
        float *row = dst + (size_t)b * dim;
        for (int i = 0; i < half; i++) {
            float e = neg_log * (float)i;
            e = e / (float)half;
            float arg = timesteps[b] * expf(e);
            row[i] = cosf(arg);
            row[half + i] = sinf(arg);
        }
        if (dim % 2)
            row[dim - 1] = 0.0f;
    }
}

int unet_check_inputs(const unet_model *m, const tensor *x, const tensor *ctx,
                      const char *fn, coin_error *err)
{
    const unet_config *c = &m->cfg;
    const coin_backend *be = m->be;
    char sx[96], sc[96];
    int64_t mult = (int64_t)1 << (c->levels - 1);
    if (x->ndim != 4 || x->shape[1] != c->in_channels || x->shape[2] % mult ||
        x->shape[3] % mult || x->shape[0] < 1)
        return coin_fail(err, COIN_ESHAPE, "%s: input %s must be [B, %d, H, W] with "
                         "H and W multiples of %lld", fn, tensor_shape_str(x, sx, sizeof sx),
                         c->in_channels, (long long)mult);
    if (ctx->ndim != 3 || ctx->shape[0] != x->shape[0] || ctx->shape[2] != c->context_dim)
        return coin_fail(err, COIN_ESHAPE, "%s: context %s does not fit input %s "
                         "(want [%lld, tokens, %d])", fn, tensor_shape_str(ctx, sc, sizeof sc),
                         tensor_shape_str(x, sx, sizeof sx), (long long)x->shape[0],
                         c->context_dim);
    if (x->be != be || ctx->be != be)
        return coin_fail(err, COIN_EINVAL, "%s: inputs are on the %s backend, the "
                         "model on %s", fn, x->be->name, be->name);
    return 0;
}

int unet_time_embedding(const unet_model *m, const float *timesteps, int64_t B, tensor *tact,
                        coin_error *err)
{
    const unet_config *c = &m->cfg;
    const coin_backend *be = m->be;
    tensor tf = {0}, temb = {0};
    float *host = NULL;
    int rc = 0;
    memset(tact, 0, sizeof *tact);
    /* Features on the host, the MLP on the backend, and the SiLU every
     * ResNet applies to it done once. */
    host = malloc((size_t)(B * c->time_dim) * sizeof(float));
    if (!host)
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    timestep_features(host, timesteps, (int)B, c->time_dim);
    TRY(tensor_alloc2(&tf, be, B, c->time_dim, err));
    TRY(tensor_upload(&tf, host, B * c->time_dim, err));
    TRY(tensor_alloc2(&temb, be, B, c->temb_dim, err));
    TRY(op_linear(&temb, &tf, &m->t1_w, &m->t1_b, err));
    TRY(op_silu(&temb, &temb, err));
    TRY(tensor_alloc2(tact, be, B, c->temb_dim, err));
    TRY(op_linear(tact, &temb, &m->t2_w, &m->t2_b, err));
    TRY(op_silu(tact, tact, err));
done:
    tensor_free(&tf);
    tensor_free(&temb);
    free(host);
    if (rc)
        tensor_free(tact);
    return rc;
}

int unet_forward(const unet_model *m, const tensor *x, const float *timesteps,
                 const tensor *ctx, tensor *out, coin_error *err)
{
    const unet_config *c = &m->cfg;
    const coin_backend *be = m->be;
    enum { MAX_SKIPS = 1 + UNET_MAX_LEVELS * (MAX_LAYERS + 1) };
    tensor skips[MAX_SKIPS];
    int n_skips = 0;
    tensor tact = {0}, h = {0}, h2 = {0}, cat = {0};
    int rc = 0;
    memset(out, 0, sizeof *out);
    memset(skips, 0, sizeof skips);

    if ((rc = unet_check_inputs(m, x, ctx, "unet_forward", err)))
        return rc;
    int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3];

    TRY(unet_time_embedding(m, timesteps, B, &tact, err));

    /* Down: every resnet(+attention) output and every downsampler output is
     * a skip, as is conv_in's output; the last one is also the input of the
     * mid block. */
    TRY(tensor_alloc4(&skips[0], be, B, c->channels[0], H, W, err));
    n_skips = 1;
    TRY(op_conv2d(&skips[0], x, &m->conv_in_w, &m->conv_in_b, 1, PAD1, err));
    for (int i = 0; i < c->levels; i++) {
        const level *lv = &m->down[i];
        for (int j = 0; j < lv->n_res; j++) {
            TRY(resnet_forward(m, &lv->res[j], &skips[n_skips - 1], &tact, &skips[n_skips], err));
            n_skips++;
            if (lv->attn)
                TRY(transformer_forward(m, &lv->attn[j], &skips[n_skips - 1], ctx, err));
        }
        if (lv->has_sample) {
            TRY(resample(be, lv, &skips[n_skips - 1], 0, &skips[n_skips], err));
            n_skips++;
        }
    }

    /* Mid: resnet, transformer, resnet. */
    TRY(resnet_forward(m, &m->mid_res[0], &skips[n_skips - 1], &tact, &h, err));
    TRY(transformer_forward(m, &m->mid_attn, &h, ctx, err));
    TRY(resnet_forward(m, &m->mid_res[1], &h, &tact, &h2, err));
    tensor_free(&h);
    h = h2;
    h2 = (tensor){0};

    /* Up: each resnet takes [hidden, skip] with the skip popped from the end. */
    for (int i = 0; i < c->levels; i++) {
        const level *lv = &m->up[i];
        for (int j = 0; j < lv->n_res; j++) {
            tensor *s = &skips[--n_skips];
            TRY(tensor_alloc4(&cat, be, B, h.shape[1] + s->shape[1], h.shape[2], h.shape[3], err));
            TRY(op_concat(&cat, &h, s, err));
            tensor_free(s);
            tensor_free(&h);
            TRY(resnet_forward(m, &lv->res[j], &cat, &tact, &h, err));
            tensor_free(&cat);
            if (lv->attn)
                TRY(transformer_forward(m, &lv->attn[j], &h, ctx, err));
        }
        if (lv->has_sample) {
            TRY(resample(be, lv, &h, 1, &h2, err));
            tensor_free(&h);
            h = h2;
            h2 = (tensor){0};
        }
    }

    /* conv_norm_out (the ResNet eps), SiLU, conv_out. */
    TRY(tensor_alloc(&h2, be, 4, h.shape, err));
    TRY(op_group_norm(&h2, &h, &m->norm_out_w, &m->norm_out_b, c->norm_groups,
                      c->norm_eps, err));
    TRY(op_silu(&h2, &h2, err));
    tensor_free(&h);
    TRY(tensor_alloc4(out, be, B, c->out_channels, H, W, err));
    TRY(op_conv2d(out, &h2, &m->conv_out_w, &m->conv_out_b, 1, PAD1, err));
done:
    for (int i = 0; i < MAX_SKIPS; i++)
        tensor_free(&skips[i]);
    tensor_free(&tact);
    tensor_free(&h);
    tensor_free(&h2);
    tensor_free(&cat);
    if (rc)
        tensor_free(out);
    return rc;
}
