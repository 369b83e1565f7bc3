/*
 * vae.c - the Stable Diffusion autoencoder, diffusers' AutoencoderKL (see
 * vae.h), on the backend ops.
 *
 * The structure follows diffusers 0.31.0 (models/autoencoders/vae.py,
 * autoencoder_kl.py, unets/unet_2d_blocks.py, resnet.py): every GroupNorm
 * has eps 1e-6, the ResNet blocks are pre-norm (norm, SiLU, conv, norm,
 * SiLU, conv, plus a 1x1 conv_shortcut when channels change), the mid
 * block is ResNet, single-head attention over all channels, ResNet, the
 * encoder downsamples by padding right and bottom by one and convolving
 * 3x3 with stride 2, the decoder upsamples nearest 2x then convolves 3x3,
 * and the decoder has one ResNet more per level than the encoder.
 *
 * Sizes come from the weights.  Activations are what costs memory at full
 * size (a 512x512 decode passes 256-channel 512x512 maps, 256 MiB each), so
 * the forward pass frees every intermediate as soon as it is consumed: the
 * block functions take their input tensor and hand back their output in
 * its place.  The peak is three full-resolution maps inside one ResNet.
 */
#include "vae.h"

#include <cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"

#define TRY(expr)                 \
    do {                          \
        if ((rc = (expr)) != 0)   \
            goto done;            \
    } while (0)

/* Every VAE GroupNorm, diffusers' resnet_eps and the hard-coded norm_out eps. */
#define VAE_EPS 1e-6f
/* diffusers' DiagonalGaussianDistribution clamps logvar to this range. */
#define LOGVAR_MIN -30.0f
#define LOGVAR_MAX 20.0f
#define CONFIG_MAX_BYTES (1 << 20)

typedef struct conv_p { tensor w, b; } conv_p;      /* w[Co, Ci, k, k], b[Co] */
typedef struct norm_p { tensor g, b; } norm_p;      /* g[C], b[C] */

typedef struct resnet_p {
    norm_p norm1, norm2;
    conv_p conv1, conv2;
    conv_p shortcut;        /* 1x1, present when in and out channels differ */
    int has_shortcut;
} resnet_p;

typedef struct attn_p {
    norm_p norm;
    tensor q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b;     /* [C, C] and [C] */
} attn_p;

typedef struct mid_p { resnet_p res0; attn_p attn; resnet_p res1; } mid_p;

typedef struct level_p {
    resnet_p *res;
    int n_res;
    conv_p sample;          /* downsampler or upsampler conv, 3x3 */
    int has_sample;
} level_p;

struct vae_model {
    vae_config cfg;
    const coin_backend *be;
    const char *norm_groups_from;
    int has_encoder;        /* in the file, then: loaded */
    int has_decoder;        /* loaded */
    const char *encoder_missing;    /* why vae_encode cannot run, when it cannot */
    /* encoder (index i = diffusers down_blocks.i) */
    conv_p enc_in;
    level_p enc[VAE_MAX_LEVELS];
    mid_p enc_mid;
    norm_p enc_norm;
    conv_p enc_out;
    /* quant_conv split by output rows: its first half of channels is the
     * mean, the second the log variance, so each is one 1x1 conv and the
     * moments never need splitting. */
    conv_p quant_mean, quant_logvar;
    /* decoder (index i = diffusers up_blocks.i, lowest resolution first) */
    conv_p post_quant;
    conv_p dec_in;
    mid_p dec_mid;
    level_p dec[VAE_MAX_LEVELS];
    norm_p dec_norm;
    conv_p dec_out;
};

/* ---- loading ---- */

typedef struct loader {
    const checkpoint *ck;
    const coin_backend *be;
    coin_error *err;
} loader;

static const ckpt_tensor *find(const loader *L, const char *name)
{
    return checkpoint_find(L->ck, COMP_VAE, name);
}

static int missing(const loader *L, const char *name)
{
    return coin_fail(L->err, COIN_ENOTFOUND,
                     "%s: the VAE tensor '%s' is missing (diffusers name)", L->ck->path, name);
}

static void shape_str(char *buf, size_t len, int ndim, const int64_t *shape)
{
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", i ? ", " : "",
                                 (long long)shape[i]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

/* Reads rows [row0, row0 + shape[0]) of the named tensor into dst, which
 * gets exactly the given shape (ndim 1, 2 or 4); the source must have
 * `rows` rows and otherwise the same shape.  Slicing rows is how
 * quant_conv is split; everything else takes all rows. */
static int load_rows(const loader *L, tensor *dst, const char *name, int64_t rows,
                     int64_t row0, int ndim, const int64_t *shape)
{
    const ckpt_tensor *src = find(L, name);
    if (!src)
        return missing(L, name);
    int64_t want[TENSOR_MAX_DIMS];
    memcpy(want, shape, (size_t)ndim * sizeof *want);
    want[0] = rows;
    int ok = src->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = src->shape[i] == want[i];
    if (!ok) {
        char have[96], exp[96];
        shape_str(have, sizeof have, src->ndim, src->shape);
        shape_str(exp, sizeof exp, ndim, want);
        return coin_fail(L->err, COIN_ESHAPE,
                         "%s: VAE tensor '%s' has shape %s where %s was expected",
                         src->file->path, name, have, exp);
    }
    float *host = malloc(src->nelem * sizeof(float));
    if (!host)
        return coin_fail(L->err, COIN_ENOMEM, "out of memory loading VAE tensor '%s'", name);
    int rc = checkpoint_read_f32(L->ck, src, host, src->nelem, L->err);
    if (!rc)
        rc = tensor_alloc(dst, L->be, ndim, shape, L->err);
    if (!rc) {
        int64_t per_row = (int64_t)src->nelem / rows;
        rc = tensor_upload(dst, host + row0 * per_row, dst->n, L->err);
    }
    free(host);
    return rc;
}

static int load(const loader *L, tensor *dst, const char *name, int ndim,
                const int64_t *shape)
{
    return load_rows(L, dst, name, shape[0], 0, ndim, shape);
}

static int load_conv(const loader *L, conv_p *c, const char *prefix, int64_t co,
                     int64_t ci, int64_t k)
{
    char name[192];
    snprintf(name, sizeof name, "%s.weight", prefix);
    int rc = load(L, &c->w, name, 4, (int64_t[]){co, ci, k, k});
    snprintf(name, sizeof name, "%s.bias", prefix);
    return rc ? rc : load(L, &c->b, name, 1, (int64_t[]){co});
}

static int load_norm(const loader *L, norm_p *n, const char *prefix, int64_t c)
{
    char name[192];
    snprintf(name, sizeof name, "%s.weight", prefix);
    int rc = load(L, &n->g, name, 1, (int64_t[]){c});
    snprintf(name, sizeof name, "%s.bias", prefix);
    return rc ? rc : load(L, &n->b, name, 1, (int64_t[]){c});
}

static int load_resnet(const loader *L, resnet_p *r, const char *prefix, int64_t ci,
                       int64_t co)
{
    char name[128];
    int rc;
    snprintf(name, sizeof name, "%s.norm1", prefix);
    if ((rc = load_norm(L, &r->norm1, name, ci)))
        return rc;
    snprintf(name, sizeof name, "%s.conv1", prefix);
    if ((rc = load_conv(L, &r->conv1, name, co, ci, 3)))
        return rc;
    snprintf(name, sizeof name, "%s.norm2", prefix);
    if ((rc = load_norm(L, &r->norm2, name, co)))
        return rc;
    snprintf(name, sizeof name, "%s.conv2", prefix);
    if ((rc = load_conv(L, &r->conv2, name, co, co, 3)))
        return rc;
    r->has_shortcut = ci != co;
    snprintf(name, sizeof name, "%s.conv_shortcut", prefix);
    return r->has_shortcut ? load_conv(L, &r->shortcut, name, co, ci, 1) : 0;
}

static int load_attn(const loader *L, attn_p *a, const char *prefix, int64_t c)
{
    char name[192];
    snprintf(name, sizeof name, "%s.group_norm", prefix);
    int rc = load_norm(L, &a->norm, name, c);
    struct { tensor *w, *b; const char *what; } lin[] = {
        {&a->q_w, &a->q_b, "to_q"}, {&a->k_w, &a->k_b, "to_k"},
        {&a->v_w, &a->v_b, "to_v"}, {&a->o_w, &a->o_b, "to_out.0"},
    };
    for (size_t i = 0; !rc && i < sizeof lin / sizeof lin[0]; i++) {
        snprintf(name, sizeof name, "%s.%s.weight", prefix, lin[i].what);
        rc = load(L, lin[i].w, name, 2, (int64_t[]){c, c});
        snprintf(name, sizeof name, "%s.%s.bias", prefix, lin[i].what);
        if (!rc)
            rc = load(L, lin[i].b, name, 1, (int64_t[]){c});
    }
    return rc;
}

static int load_mid(const loader *L, mid_p *m, const char *part, int64_t c)
{
    char name[128];
    snprintf(name, sizeof name, "%s.mid_block.resnets.0", part);
    int rc = load_resnet(L, &m->res0, name, c, c);
    snprintf(name, sizeof name, "%s.mid_block.attentions.0", part);
    if (!rc)
        rc = load_attn(L, &m->attn, name, c);
    snprintf(name, sizeof name, "%s.mid_block.resnets.1", part);
    return rc ? rc : load_resnet(L, &m->res1, name, c, c);
}

static void free_conv(conv_p *c)
{
    tensor_free(&c->w);
    tensor_free(&c->b);
}

static void free_norm(norm_p *n)
{
    tensor_free(&n->g);
    tensor_free(&n->b);
}

static void free_resnet(resnet_p *r)
{
    free_norm(&r->norm1);
    free_norm(&r->norm2);
    free_conv(&r->conv1);
    free_conv(&r->conv2);
    free_conv(&r->shortcut);
}

static void free_mid(mid_p *m)
{
    attn_p *a = &m->attn;
    tensor *lin[] = {&a->q_w, &a->q_b, &a->k_w, &a->k_b, &a->v_w, &a->v_b, &a->o_w, &a->o_b};
    free_resnet(&m->res0);
    free_resnet(&m->res1);
    free_norm(&a->norm);
    for (size_t i = 0; i < sizeof lin / sizeof lin[0]; i++)
        tensor_free(lin[i]);
}

static void free_level(level_p *l)
{
    for (int j = 0; l->res && j < l->n_res; j++)
        free_resnet(&l->res[j]);
    free(l->res);
    free_conv(&l->sample);
    memset(l, 0, sizeof *l);
}

void vae_free(vae_model *m)
{
    if (!m)
        return;
    free_conv(&m->enc_in);
    for (int i = 0; i < VAE_MAX_LEVELS; i++) {
        free_level(&m->enc[i]);
        free_level(&m->dec[i]);
    }
    free_mid(&m->enc_mid);
    free_norm(&m->enc_norm);
    free_conv(&m->enc_out);
    free_conv(&m->quant_mean);
    free_conv(&m->quant_logvar);
    free_conv(&m->post_quant);
    free_conv(&m->dec_in);
    free_mid(&m->dec_mid);
    free_norm(&m->dec_norm);
    free_conv(&m->dec_out);
    free(m);
}

const vae_config *vae_get_config(const vae_model *m) { return &m->cfg; }

/* The first dimension of a tensor the config is read from. */
static int dim0(const loader *L, const char *name, int *out)
{
    const ckpt_tensor *t = find(L, name);
    if (!t)
        return missing(L, name);
    if (t->ndim < 2 || t->shape[0] < 1 || t->shape[0] > (1 << 20) ||
        t->shape[1] < 1 || t->shape[1] > (1 << 20))
        return coin_fail(L->err, COIN_EFORMAT, "%s: VAE tensor '%s' has an unusable shape",
                         t->file->path, name);
    *out = (int)t->shape[0];
    return 0;
}

/* Levels and layers from the names: the largest block and ResNet indices
 * anywhere, so that a missing tensor shows up later as a named error rather
 * than a smaller model. */
static void scan_names(const checkpoint *ck, int *dec_levels, int *dec_res, int *enc_levels,
                       int *enc_res, int *has_encoder, int *has_decoder)
{
    *dec_levels = *dec_res = *enc_levels = *enc_res = *has_encoder = *has_decoder = 0;
    for (size_t i = 0; i < ck->n_tensors; i++) {
        const ckpt_tensor *t = &ck->tensors[i];
        int a, b;
        if (t->comp != COMP_VAE)
            continue;
        if (!strncmp(t->name, "encoder.", 8) || !strncmp(t->name, "quant_conv.", 11))
            *has_encoder = 1;
        if (!strncmp(t->name, "decoder.", 8) || !strncmp(t->name, "post_quant_conv.", 16))
            *has_decoder = 1;
        if (sscanf(t->name, "decoder.up_blocks.%d.resnets.%d.", &a, &b) == 2 &&
            a >= 0 && b >= 0 && a < 1000 && b < 1000) {
            *dec_levels = a + 1 > *dec_levels ? a + 1 : *dec_levels;
            *dec_res = b + 1 > *dec_res ? b + 1 : *dec_res;
        }
        if (sscanf(t->name, "encoder.down_blocks.%d.resnets.%d.", &a, &b) == 2 &&
            a >= 0 && b >= 0 && a < 1000 && b < 1000) {
            *enc_levels = a + 1 > *enc_levels ? a + 1 : *enc_levels;
            *enc_res = b + 1 > *enc_res ? b + 1 : *enc_res;
        }
    }
}

/* vae/config.json of a diffusers folder: norm groups and scaling factor,
 * and a refusal of AutoencoderKL variants this code does not run. */
static int read_config(vae_model *m, const checkpoint *ck, coin_error *err)
{
    char path[4200];
    int rc = path_join(path, sizeof path, ck->path, "vae/config.json", err);
    if (rc || !path_exists(path))
        return rc;
    char *text;
    if ((rc = file_read_all(path, CONFIG_MAX_BYTES, &text, NULL, err)))
        return rc;
    cJSON *c = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(c)) {
        cJSON_Delete(c);
        return coin_fail(err, COIN_EFORMAT, "%s: not a JSON object", path);
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, "norm_num_groups");
    if (cJSON_IsNumber(v)) {
        /* Out of range becomes 0, refused by the caller (no undefined cast). */
        m->cfg.norm_groups = v->valuedouble >= 1 && v->valuedouble <= 4096 ? (int)v->valuedouble : 0;
        m->norm_groups_from = "vae/config.json";
    }
    v = cJSON_GetObjectItemCaseSensitive(c, "scaling_factor");
    if (cJSON_IsNumber(v))
        m->cfg.scaling_factor = (float)v->valuedouble;
    /* Options whose default is what SD uses; anything else is another model. */
    static const char *const must_be_true[] = {"mid_block_add_attention", "use_quant_conv",
                                               "use_post_quant_conv"};
    for (size_t i = 0; !rc && i < sizeof must_be_true / sizeof must_be_true[0]; i++)
        if (cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(c, must_be_true[i])))
            rc = coin_fail(err, COIN_EUNSUPPORTED, "%s: %s false is not supported (Stable "
                           "Diffusion 1.x/2.x VAEs have it true)", path, must_be_true[i]);
    v = cJSON_GetObjectItemCaseSensitive(c, "act_fn");
    if (!rc && cJSON_IsString(v) && strcmp(v->valuestring, "silu"))
        rc = coin_fail(err, COIN_EUNSUPPORTED, "%s: act_fn \"%s\" is not supported (only silu)",
                       path, v->valuestring);
    v = cJSON_GetObjectItemCaseSensitive(c, "shift_factor");
    if (!rc && cJSON_IsNumber(v) && v->valuedouble != 0)
        rc = coin_fail(err, COIN_EUNSUPPORTED, "%s: a VAE with shift_factor (SD3/Flux) is "
                       "not a Stable Diffusion 1.x/2.x VAE", path);
    cJSON_Delete(c);
    return rc;
}

/* Config from the weights (and vae/config.json or file metadata for what
 * shapes cannot tell: the GroupNorm group count and the scaling factor). */
static int infer_config(vae_model *m, const loader *L)
{
    const checkpoint *ck = L->ck;
    vae_config *c = &m->cfg;
    int dec_levels, dec_res, enc_levels, enc_res, has_dec, rc;
    scan_names(ck, &dec_levels, &dec_res, &enc_levels, &enc_res, &m->has_encoder, &has_dec);
    if (!has_dec)
        return coin_fail(L->err, COIN_ENOTFOUND, "%s: no VAE decoder in this model "
                         "(no decoder.* / first_stage_model.decoder.* tensors)", ck->path);
    if (dec_levels < 1 || dec_levels > VAE_MAX_LEVELS || dec_res < 2)
        return coin_fail(L->err, COIN_EFORMAT, "%s: cannot read the VAE decoder's levels "
                         "and blocks from its tensor names", ck->path);
    c->levels = dec_levels;
    c->layers_per_block = dec_res - 1;
    if (m->has_encoder && (enc_levels != dec_levels || enc_res != dec_res - 1))
        return coin_fail(L->err, COIN_EFORMAT, "%s: the VAE encoder (%d levels of %d ResNets) "
                         "does not match the decoder (%d levels of %d, one more than the "
                         "encoder)", ck->path, enc_levels, enc_res, dec_levels, dec_res);
    char name[128];
    for (int i = 0; i < c->levels; i++) {
        snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.0.conv2.weight",
                 c->levels - 1 - i);
        if ((rc = dim0(L, name, &c->channels[i])))
            return rc;
    }
    if ((rc = dim0(L, "post_quant_conv.weight", &c->latent_channels)) ||
        (rc = dim0(L, "decoder.conv_out.weight", &c->in_channels)))
        return rc;
    if (m->has_encoder) {
        const ckpt_tensor *t = find(L, "encoder.conv_in.weight");
        if (!t)
            return missing(L, "encoder.conv_in.weight");
        if (t->ndim == 4 && t->shape[1] != c->in_channels)
            return coin_fail(L->err, COIN_EFORMAT, "%s: the VAE encoder takes %lld channels "
                             "but the decoder makes %d", ck->path, (long long)t->shape[1],
                             c->in_channels);
    }

    c->norm_groups = 32;
    c->scaling_factor = 0.18215f;
    m->norm_groups_from = "the default";
    if (ck->layout == CKPT_DIFFUSERS && (rc = read_config(m, ck, L->err)))
        return rc;
    for (int f = 0; ck->layout == CKPT_SINGLE_FILE && f < ck->n_files; f++) {
        /* Single files have no config; coin's tiny test models say it here. */
        const char *g = st_meta(ck->files[f], "vae.norm_num_groups");
        if (g) {
            char *end;
            long n = strtol(g, &end, 10);
            if (*end || n < 1 || n > 4096)
                return coin_fail(L->err, COIN_EFORMAT, "%s: metadata vae.norm_num_groups "
                                 "\"%s\" is not a group count", ck->files[f]->path, g);
            c->norm_groups = (int)n;
            m->norm_groups_from = "file metadata vae.norm_num_groups";
        }
    }
    if (c->norm_groups < 1)
        return coin_fail(L->err, COIN_EFORMAT, "%s: VAE norm_num_groups %d", ck->path,
                         c->norm_groups);
    for (int i = 0; i < c->levels; i++)
        if (c->channels[i] % c->norm_groups)
            return coin_fail(L->err, COIN_EFORMAT,
                             "%s: VAE level %d has %d channels, not divisible into %d "
                             "GroupNorm groups (from %s); a diffusers folder gives the count "
                             "as norm_num_groups in vae/config.json, a single file as "
                             "metadata vae.norm_num_groups", ck->path, i, c->channels[i],
                             c->norm_groups, m->norm_groups_from);
    if (!(c->scaling_factor > 0) || !isfinite(c->scaling_factor))
        return coin_fail(L->err, COIN_EFORMAT, "%s: VAE scaling_factor %g", ck->path,
                         c->scaling_factor);
    return 0;
}

static int alloc_level(level_p *l, int n_res)
{
    l->res = calloc((size_t)n_res, sizeof *l->res);
    l->n_res = l->res ? n_res : 0;
    return l->res ? 0 : COIN_ENOMEM;
}

static int load_encoder(vae_model *m, const loader *L)
{
    const vae_config *c = &m->cfg;
    int64_t top = c->channels[c->levels - 1], lat = c->latent_channels;
    char name[64];
    int rc = load_conv(L, &m->enc_in, "encoder.conv_in", c->channels[0], c->in_channels, 3);
    for (int i = 0; !rc && i < c->levels; i++) {
        level_p *l = &m->enc[i];
        int64_t ci = i ? c->channels[i - 1] : c->channels[0], co = c->channels[i];
        if (alloc_level(l, c->layers_per_block))
            return coin_fail(L->err, COIN_ENOMEM, "out of memory");
        for (int j = 0; !rc && j < l->n_res; j++) {
            snprintf(name, sizeof name, "encoder.down_blocks.%d.resnets.%d", i, j);
            rc = load_resnet(L, &l->res[j], name, j ? co : ci, co);
        }
        l->has_sample = i < c->levels - 1;
        snprintf(name, sizeof name, "encoder.down_blocks.%d.downsamplers.0.conv", i);
        if (!rc && l->has_sample)
            rc = load_conv(L, &l->sample, name, co, co, 3);
    }
    if (!rc)
        rc = load_mid(L, &m->enc_mid, "encoder", top);
    if (!rc)
        rc = load_norm(L, &m->enc_norm, "encoder.conv_norm_out", top);
    if (!rc)
        rc = load_conv(L, &m->enc_out, "encoder.conv_out", 2 * lat, top, 3);
    if (!rc)
        rc = load_rows(L, &m->quant_mean.w, "quant_conv.weight", 2 * lat, 0, 4,
                       (int64_t[]){lat, 2 * lat, 1, 1});
    if (!rc)
        rc = load_rows(L, &m->quant_logvar.w, "quant_conv.weight", 2 * lat, lat, 4,
                       (int64_t[]){lat, 2 * lat, 1, 1});
    if (!rc)
        rc = load_rows(L, &m->quant_mean.b, "quant_conv.bias", 2 * lat, 0, 1,
                       (int64_t[]){lat});
    if (!rc)
        rc = load_rows(L, &m->quant_logvar.b, "quant_conv.bias", 2 * lat, lat, 1,
                       (int64_t[]){lat});
    return rc;
}

static int load_decoder(vae_model *m, const loader *L)
{
    const vae_config *c = &m->cfg;
    int64_t top = c->channels[c->levels - 1], lat = c->latent_channels;
    char name[64];
    int rc = load_conv(L, &m->post_quant, "post_quant_conv", lat, lat, 1);
    if (!rc)
        rc = load_conv(L, &m->dec_in, "decoder.conv_in", top, lat, 3);
    if (!rc)
        rc = load_mid(L, &m->dec_mid, "decoder", top);
    for (int i = 0; !rc && i < c->levels; i++) {
        level_p *l = &m->dec[i];
        int64_t ci = c->channels[c->levels - (i ? i : 1)], co = c->channels[c->levels - 1 - i];
        if (alloc_level(l, c->layers_per_block + 1))
            return coin_fail(L->err, COIN_ENOMEM, "out of memory");
        for (int j = 0; !rc && j < l->n_res; j++) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.%d", i, j);
            rc = load_resnet(L, &l->res[j], name, j ? co : ci, co);
        }
        l->has_sample = i < c->levels - 1;
        snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0.conv", i);
        if (!rc && l->has_sample)
            rc = load_conv(L, &l->sample, name, co, co, 3);
    }
    if (!rc)
        rc = load_norm(L, &m->dec_norm, "decoder.conv_norm_out", c->channels[0]);
    if (!rc)
        rc = load_conv(L, &m->dec_out, "decoder.conv_out", c->in_channels, c->channels[0], 3);
    return rc;
}

static int load_parts(vae_model **out, const checkpoint *ck, const coin_backend *be,
                      int parts, int encoder_optional, coin_error *err)
{
    *out = NULL;
    if (!(parts & (VAE_DECODER | VAE_ENCODER)) || (parts & ~(VAE_DECODER | VAE_ENCODER)))
        return coin_fail(err, COIN_EINVAL, "vae_load_parts: parts %d", parts);
    vae_model *m = calloc(1, sizeof *m);
    if (!m)
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    m->be = be;
    loader L = {ck, be, err};
    int rc = infer_config(m, &L);
    if (!rc && (parts & VAE_ENCODER) && !m->has_encoder && !encoder_optional)
        rc = coin_fail(err, COIN_ENOTFOUND, "%s: this VAE has only a decoder (no encoder.* "
                       "tensors), so it cannot encode images; use a model with a full VAE",
                       ck->path);
    if (!rc && (parts & VAE_DECODER))
        rc = load_decoder(m, &L);
    if (!rc && (parts & VAE_ENCODER) && m->has_encoder)
        rc = load_encoder(m, &L);
    m->has_decoder = parts & VAE_DECODER;
    if (!m->has_encoder)
        m->encoder_missing = "this VAE has only a decoder (no encoder.* tensors), so it "
                             "cannot encode images; use a model with a full VAE";
    else if (!(parts & VAE_ENCODER))
        m->encoder_missing = "the VAE was loaded without its encoder (vae_load_parts)";
    m->has_encoder = m->has_encoder && (parts & VAE_ENCODER);
    if (rc) {
        vae_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

int vae_load(vae_model **out, const checkpoint *ck, const coin_backend *be,
             coin_error *err)
{
    return load_parts(out, ck, be, VAE_DECODER | VAE_ENCODER, 1, err);
}

int vae_load_parts(vae_model **out, const checkpoint *ck, const coin_backend *be,
                   int parts, coin_error *err)
{
    return load_parts(out, ck, be, parts, 0, err);
}

/* ---- forward ---- */

/* y = conv(x) with y allocated here; pad is {top, bottom, left, right}. */
static int conv(tensor *y, const tensor *x /* [B, Ci, H, W] */, const conv_p *c, int stride,
                int pad0, int pad1, coin_error *err)
{
    const int pad[4] = {pad0, pad1, pad0, pad1};
    int64_t k = c->w.shape[2];
    int64_t ho = (x->shape[2] + pad0 + pad1 - k) / stride + 1;
    int64_t wo = (x->shape[3] + pad0 + pad1 - k) / stride + 1;
    int rc = tensor_alloc4(y, x->be, x->shape[0], c->w.shape[0], ho, wo, err);
    if (!rc && (rc = op_conv2d(y, x, &c->w, &c->b, stride, pad, err)))
        tensor_free(y);
    return rc;
}

/* *x = conv(*x): the input is freed once the output exists. */
static int conv_inplace(tensor *x, const conv_p *c, int stride, int pad0, int pad1,
                        coin_error *err)
{
    tensor y;
    int rc = conv(&y, x, c, stride, pad0, pad1, err);
    if (rc)
        return rc;
    tensor_free(x);
    *x = y;
    return 0;
}

/* y = SiLU(GroupNorm(x)), y allocated here. */
static int norm_silu(tensor *y, const tensor *x, const norm_p *n, int groups, coin_error *err)
{
    int rc = tensor_alloc(y, x->be, x->ndim, x->shape, err);
    if (!rc)
        rc = op_group_norm(y, x, &n->g, &n->b, groups, VAE_EPS, err);
    if (!rc)
        rc = op_silu(y, y, err);
    if (rc)
        tensor_free(y);
    return rc;
}

/* *x [B, Ci, H, W] becomes ResnetBlock2D(*x) [B, Co, H, W] (no time
 * embedding, output_scale_factor 1).  Three maps live at the peak: the
 * input, the normalised input, and the conv output. */
static int resnet(tensor *x, const resnet_p *r, int groups, coin_error *err)
{
    tensor h = {0}, a = {0}, s = {0};
    int rc;
    TRY(norm_silu(&h, x, &r->norm1, groups, err));
    TRY(conv(&a, &h, &r->conv1, 1, 1, 1, err));
    tensor_free(&h);
    TRY(norm_silu(&h, &a, &r->norm2, groups, err));
    /* dropout is identity at inference; conv2 writes over conv1's output,
     * which norm2 has consumed. */
    TRY(op_conv2d(&a, &h, &r->conv2.w, &r->conv2.b, 1, (const int[4]){1, 1, 1, 1}, err));
    tensor_free(&h);
    if (r->has_shortcut) {
        TRY(conv(&s, x, &r->shortcut, 1, 0, 0, err));
        tensor_free(x);
        TRY(op_add(&a, &a, &s, err));
    } else {
        TRY(op_add(&a, &a, x, err));
        tensor_free(x);
    }
    *x = a;
    a = (tensor){0};
done:
    tensor_free(&h);
    tensor_free(&a);
    tensor_free(&s);
    return rc;
}

/* *x [B, C, H, W] += to_out(attention(GroupNorm(*x))), diffusers' Attention
 * with residual_connection and one head of C channels: the map is read as
 * H*W tokens of C features, scale 1/sqrt(C). */
static int attention(tensor *x, const attn_p *a, int groups, coin_error *err)
{
    const coin_backend *be = x->be;
    int64_t B = x->shape[0], C = x->shape[1], T = x->shape[2] * x->shape[3];
    tensor h = {0}, t = {0}, q = {0}, k = {0}, v = {0};
    int rc;
    TRY(tensor_alloc3(&h, be, B, C, T, err));
    TRY(op_group_norm(&h, x, &a->norm.g, &a->norm.b, groups, VAE_EPS, err));
    TRY(tensor_alloc3(&t, be, B, T, C, err));
    TRY(op_transpose(&t, &h, err));                 /* [B, T, C] tokens */
    TRY(tensor_alloc3(&q, be, B, T, C, err));
    TRY(tensor_alloc3(&k, be, B, T, C, err));
    TRY(tensor_alloc3(&v, be, B, T, C, err));
    TRY(op_linear(&q, &t, &a->q_w, &a->q_b, err));
    TRY(op_linear(&k, &t, &a->k_w, &a->k_b, err));
    TRY(op_linear(&v, &t, &a->v_w, &a->v_b, err));
    TRY(op_attention(&t, &q, &k, &v, 1, 0, err));   /* t is free again: reuse */
    TRY(op_linear(&q, &t, &a->o_w, &a->o_b, err));
    TRY(op_transpose(&h, &q, err));                 /* back to [B, C, T] */
    TRY(op_add(x, x, &h, err));                     /* rescale_output_factor 1 */
done:
    tensor_free(&h);
    tensor_free(&t);
    tensor_free(&q);
    tensor_free(&k);
    tensor_free(&v);
    return rc;
}

static int mid_block(tensor *x, const mid_p *m, int groups, coin_error *err)
{
    int rc = resnet(x, &m->res0, groups, err);
    if (!rc)
        rc = attention(x, &m->attn, groups, err);
    return rc ? rc : resnet(x, &m->res1, groups, err);
}

/* *x becomes conv_out(SiLU(GroupNorm(*x))). */
static int head(tensor *x, const norm_p *n, const conv_p *c, int groups, coin_error *err)
{
    tensor h;
    int rc = norm_silu(&h, x, n, groups, err);
    if (rc)
        return rc;
    tensor_free(x);
    *x = h;
    return conv_inplace(x, c, 1, 1, 1, err);
}

static int check_input(const vae_model *m, const tensor *in, int64_t channels,
                       int64_t multiple, const char *fn, const char *what, coin_error *err)
{
    char s[96];
    if (!in->mem || in->be != m->be || in->ndim != 4 || in->shape[0] < 1 ||
        in->shape[1] != channels || in->shape[2] < 1 || in->shape[3] < 1 ||
        in->shape[2] % multiple || in->shape[3] % multiple)
        return coin_fail(err, COIN_ESHAPE, "%s: %s %s is not [B, %lld, H, W] with H and W "
                         "multiples of %lld on the model's backend", fn, what,
                         tensor_shape_str(in, s, sizeof s), (long long)channels,
                         (long long)multiple);
    return 0;
}

int vae_decode(const vae_model *m, const tensor *z, tensor *img, coin_error *err)
{
    const vae_config *c = &m->cfg;
    int g = c->norm_groups, rc;
    tensor x = {0};
    memset(img, 0, sizeof *img);
    if (!m->has_decoder)
        return coin_fail(err, COIN_EINVAL, "vae_decode: the VAE was loaded without its decoder");
    TRY(check_input(m, z, c->latent_channels, 1, "vae_decode", "latents", err));
    TRY(conv(&x, z, &m->post_quant, 1, 0, 0, err));
    TRY(conv_inplace(&x, &m->dec_in, 1, 1, 1, err));
    TRY(mid_block(&x, &m->dec_mid, g, err));
    for (int i = 0; i < c->levels; i++) {
        const level_p *l = &m->dec[i];
        for (int j = 0; j < l->n_res; j++)
            TRY(resnet(&x, &l->res[j], g, err));
        if (l->has_sample) {
            tensor u;
            TRY(tensor_alloc4(&u, m->be, x.shape[0], x.shape[1], 2 * x.shape[2],
                              2 * x.shape[3], err));
            if ((rc = op_upsample2x(&u, &x, err))) {
                tensor_free(&u);
                goto done;
            }
            tensor_free(&x);
            x = u;
            TRY(conv_inplace(&x, &l->sample, 1, 1, 1, err));
        }
    }
    TRY(head(&x, &m->dec_norm, &m->dec_out, g, err));
    *img = x;
    x = (tensor){0};
done:
    tensor_free(&x);
    return rc;
}

int vae_encode(const vae_model *m, const tensor *img, tensor *mean, tensor *logvar,
               coin_error *err)
{
    const vae_config *c = &m->cfg;
    int g = c->norm_groups, rc;
    tensor x = {0};
    float *host = NULL;
    memset(mean, 0, sizeof *mean);
    memset(logvar, 0, sizeof *logvar);
    if (!m->has_encoder)
        return coin_fail(err, COIN_EUNSUPPORTED, "vae_encode: %s", m->encoder_missing);
    TRY(check_input(m, img, c->in_channels, (int64_t)1 << (c->levels - 1), "vae_encode",
                    "image", err));
    TRY(conv(&x, img, &m->enc_in, 1, 1, 1, err));
    for (int i = 0; i < c->levels; i++) {
        const level_p *l = &m->enc[i];
        for (int j = 0; j < l->n_res; j++)
            TRY(resnet(&x, &l->res[j], g, err));
        /* Downsample2D with padding 0: F.pad(x, (0, 1, 0, 1)), then stride 2. */
        if (l->has_sample) {
            tensor y;
            TRY(tensor_alloc4(&y, m->be, x.shape[0], x.shape[1], x.shape[2] / 2,
                              x.shape[3] / 2, err));
            if ((rc = op_conv2d(&y, &x, &l->sample.w, &l->sample.b, 2,
                                (const int[4]){0, 1, 0, 1}, err))) {
                tensor_free(&y);
                goto done;
            }
            tensor_free(&x);
            x = y;
        }
    }
    TRY(mid_block(&x, &m->enc_mid, g, err));
    TRY(head(&x, &m->enc_norm, &m->enc_out, g, err));
    TRY(conv(mean, &x, &m->quant_mean, 1, 0, 0, err));
    TRY(conv(logvar, &x, &m->quant_logvar, 1, 0, 0, err));
    /* The clamp runs on the host: the latent is small and the backend has
     * no clamp op. */
    host = malloc((size_t)logvar->n * sizeof(float));
    if (!host) {
        rc = coin_fail(err, COIN_ENOMEM, "out of memory");
        goto done;
    }
    TRY(tensor_download(logvar, host, logvar->n, err));
    for (int64_t i = 0; i < logvar->n; i++)
        host[i] = host[i] < LOGVAR_MIN ? LOGVAR_MIN : host[i] > LOGVAR_MAX ? LOGVAR_MAX : host[i];
    TRY(tensor_upload(logvar, host, logvar->n, err));
done:
    free(host);
    tensor_free(&x);
    if (rc) {
        tensor_free(mean);
        tensor_free(logvar);
    }
    return rc;
}
