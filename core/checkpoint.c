/*
 * checkpoint.c - opening model files and mapping them to canonical names.
 *
 * Layouts (REFERENCE.md section 4):
 *   single file   model.diffusion_model.*   UNet (LDM names, kept as they are)
 *                 first_stage_model.*       VAE  (LDM names, kept as they are)
 *                 cond_stage_model.transformer.*  SD1 Hugging Face CLIP
 *                 cond_stage_model.model.*        SD2 OpenCLIP, renamed here
 *   diffusers     text_encoder/, unet/, vae/ each with a safetensors file,
 *                 plus config.json files, tokenizer/ and scheduler/.
 */
#include "checkpoint.h"

#include <cJSON.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fileio.h"
#include "ldm_names.h"
#include "tokenizer.h"

#define CONFIG_MAX_BYTES (1 << 20)

static const char PFX_UNET[] = "model.diffusion_model.";
static const char PFX_VAE[] = "first_stage_model.";
static const char PFX_HFCLIP[] = "cond_stage_model.transformer.";
static const char PFX_OPENCLIP[] = "cond_stage_model.model.";

const char *ckpt_layout_name(ckpt_layout l)
{
    return l == CKPT_DIFFUSERS ? "diffusers folder" : "single-file (LDM)";
}

const char *sd_version_name(sd_version v)
{
    return v == SD_V1 ? "SD 1.x" : v == SD_V2 ? "SD 2.x" : "unknown";
}

const char *sd_prediction_name(sd_prediction p)
{
    return p == PRED_EPSILON ? "epsilon" : p == PRED_V ? "v_prediction" : "unknown";
}

const char *ckpt_component_name(ckpt_component c)
{
    static const char *names[] = {"text encoder", "unet", "vae", "other"};
    return c < COMP_COUNT ? names[c] : "?";
}

sd_version sd_version_parse(const char *s)
{
    if (!strcmp(s, "sd1") || !strcmp(s, "1") || !strcmp(s, "v1") || !strcmp(s, "sd15"))
        return SD_V1;
    if (!strcmp(s, "sd2") || !strcmp(s, "2") || !strcmp(s, "v2") || !strcmp(s, "sd21"))
        return SD_V2;
    return SD_UNKNOWN;
}

int checkpoint_load_tokenizer(const checkpoint *ck, clip_tokenizer **tok, coin_error *err)
{
    if (ck && ck->tokenizer_dir)
        return tokenizer_load_hf(tok, ck->tokenizer_dir, err);
    return tokenizer_load_builtin(tok, err);
}

int checkpoint_pad_id(const checkpoint *ck)
{
    return ck->version == SD_V2 ? 0 : 49407;
}

static void add_problem(checkpoint *ck, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void add_problem(checkpoint *ck, const char *fmt, ...)
{
    if (ck->n_problems >= CKPT_MAX_PROBLEMS)
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char *copy = strdup(buf);
    if (copy)
        ck->problems[ck->n_problems++] = copy;
}

static int is_float_dtype(st_dtype d)
{
    return d == ST_F32 || d == ST_F16 || d == ST_BF16 || d == ST_F64;
}

/* ---- the tensor table ---- */

typedef struct table {
    ckpt_tensor *v;
    size_t n, cap;
} table;

static int table_add(table *t, ckpt_component comp, const char *name,
                     const st_file *f, const st_tensor *src, int64_t row_begin,
                     int64_t rows, coin_error *err)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        ckpt_tensor *v = realloc(t->v, cap * sizeof *v);
        if (!v)
            return coin_fail(err, COIN_ENOMEM, "out of memory indexing tensors");
        t->v = v;
        t->cap = cap;
    }
    ckpt_tensor *e = &t->v[t->n];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    if (!e->name)
        return coin_fail(err, COIN_ENOMEM, "out of memory indexing tensors");
    e->comp = comp;
    e->file = f;
    e->src = src;
    e->row_begin = row_begin;
    e->ndim = src->ndim;
    memcpy(e->shape, src->shape, sizeof e->shape);
    if (rows >= 0)
        e->shape[0] = rows;
    e->nelem = 1;
    for (int i = 0; i < e->ndim; i++)
        e->nelem *= (uint64_t)e->shape[i];
    t->n++;
    return 0;
}

static int cmp_entry(const void *a, const void *b)
{
    const ckpt_tensor *x = a, *y = b;
    if (x->comp != y->comp)
        return (int)x->comp - (int)y->comp;
    return strcmp(x->name, y->name);
}

const ckpt_tensor *checkpoint_find(const checkpoint *ck, ckpt_component comp,
                                   const char *name)
{
    ckpt_tensor key = {.comp = comp, .name = (char *)name};
    return bsearch(&key, ck->tensors, ck->n_tensors, sizeof key, cmp_entry);
}

int checkpoint_read_f32(const checkpoint *ck, const ckpt_tensor *t, float *dst,
                        uint64_t n, coin_error *err)
{
    (void)ck;
    if (n != t->nelem)
        return coin_fail(err, COIN_ESHAPE, "%s: tensor '%s' has %llu values, not %llu",
                         t->file->path, t->name, (unsigned long long)t->nelem,
                         (unsigned long long)n);
    if (t->row_begin == 0 && t->nelem == t->src->nelem) {
        int rc = st_tensor_to_f32(t->file, t->src, dst, n, err);
        /* Models read each tensor once into backend memory: the mapped file
         * pages would otherwise double the weights' share of memory. */
        st_release_pages(t->file, t->src);
        return rc;
    }
    /* A row slice of a fused tensor: view the slice as a tensor of its own. */
    st_tensor slice = *t->src;
    uint64_t row = t->src->nelem / (uint64_t)t->src->shape[0];
    uint64_t bytes = (uint64_t)st_dtype_bits(slice.dtype) / 8;
    slice.shape[0] = t->shape[0];
    slice.nelem = t->nelem;
    slice.data = (const char *)t->src->data + (uint64_t)t->row_begin * row * bytes;
    slice.begin = t->src->begin + (uint64_t)t->row_begin * row * bytes;
    slice.end = slice.begin + t->nelem * bytes;
    return st_tensor_to_f32(t->file, &slice, dst, n, err);
}

const char *checkpoint_main_file(const checkpoint *ck)
{
    for (size_t i = 0; i < ck->n_tensors; i++)
        if (ck->tensors[i].comp == COMP_UNET)
            return ck->tensors[i].file->path;
    return ck->files[0]->path;
}

uint64_t checkpoint_param_count(const checkpoint *ck, ckpt_component comp)
{
    uint64_t total = 0;
    for (size_t i = 0; i < ck->n_tensors; i++)
        if (ck->tensors[i].comp == comp && is_float_dtype(ck->tensors[i].src->dtype))
            total += ck->tensors[i].nelem;
    return total;
}

/* ---- OpenCLIP (SD2 single file) to Hugging Face CLIP names ---- */

/* Maps one OpenCLIP tensor (name without the prefix) into the table; the
 * fused in_proj becomes three row slices. */
static int map_openclip(checkpoint *ck, table *t, const st_file *f,
                        const st_tensor *src, const char *name, coin_error *err)
{
    static const struct { const char *from, *to; } simple[] = {
        {"token_embedding.weight", "text_model.embeddings.token_embedding.weight"},
        {"positional_embedding", "text_model.embeddings.position_embedding.weight"},
        {"ln_final.weight", "text_model.final_layer_norm.weight"},
        {"ln_final.bias", "text_model.final_layer_norm.bias"},
        /* Stored transposed relative to diffusers; SD does not use it. */
        {"text_projection", "text_projection.weight.openclip"},
    };
    static const struct { const char *from, *to; } block[] = {
        {"ln_1.", "layer_norm1."}, {"ln_2.", "layer_norm2."},
        {"attn.out_proj.", "self_attn.out_proj."},
        {"mlp.c_fc.", "mlp.fc1."}, {"mlp.c_proj.", "mlp.fc2."},
    };
    char out[512];
    for (size_t i = 0; i < sizeof simple / sizeof simple[0]; i++)
        if (!strcmp(name, simple[i].from))
            return table_add(t, COMP_TEXT_ENCODER, simple[i].to, f, src, 0, -1, err);
    if (!strcmp(name, "logit_scale"))
        return table_add(t, COMP_OTHER, "cond_stage_model.model.logit_scale", f, src, 0, -1, err);

    int layer, used = 0;
    if (sscanf(name, "transformer.resblocks.%d.%n", &layer, &used) == 1 && used > 0) {
        const char *rest = name + used;
        for (size_t i = 0; i < sizeof block / sizeof block[0]; i++) {
            size_t len = strlen(block[i].from);
            if (!strncmp(rest, block[i].from, len)) {
                snprintf(out, sizeof out, "text_model.encoder.layers.%d.%s%s", layer,
                         block[i].to, rest + len);
                return table_add(t, COMP_TEXT_ENCODER, out, f, src, 0, -1, err);
            }
        }
        int is_w = !strcmp(rest, "attn.in_proj_weight");
        if (is_w || !strcmp(rest, "attn.in_proj_bias")) {
            if (src->ndim < 1 || src->shape[0] % 3)
                return coin_fail(err, COIN_EFORMAT,
                                 "%s: tensor '%s%s' should hold q, k and v stacked "
                                 "(rows divisible by 3)", f->path, PFX_OPENCLIP, name);
            int64_t rows = src->shape[0] / 3;
            static const char qkv[3] = {'q', 'k', 'v'};
            for (int p = 0; p < 3; p++) {
                snprintf(out, sizeof out, "text_model.encoder.layers.%d.self_attn.%c_proj.%s",
                         layer, qkv[p], is_w ? "weight" : "bias");
                int rc = table_add(t, COMP_TEXT_ENCODER, out, f, src, p * rows, rows, err);
                if (rc)
                    return rc;
            }
            return 0;
        }
    }
    add_problem(ck, "unrecognised OpenCLIP tensor '%s%s' ignored", PFX_OPENCLIP, name);
    snprintf(out, sizeof out, "%s%s", PFX_OPENCLIP, name);
    return table_add(t, COMP_OTHER, out, f, src, 0, -1, err);
}

/* ---- UNet and VAE names ---- */

/* Gives every UNet and VAE entry its diffusers name: LDM names in single
 * files, old attention names in diffusers VAEs.  The LDM VAE's attention
 * projections are 1x1 convolutions; diffusers' are linear, so they lose
 * their two unit dimensions. */
static int canonical_unet_vae_names(checkpoint *ck, table *t, coin_error *err)
{
    int layers = -1, max_in = 0, levels = 0, k;
    for (size_t i = 0; i < t->n; i++) {
        const char *n = t->v[i].name;
        int used = 0;
        if (t->v[i].comp == COMP_UNET && sscanf(n, "input_blocks.%d.%n", &k, &used) == 1) {
            if (k > max_in)
                max_in = k;
            if (!strncmp(n + used, "0.op.", 5) && (layers < 0 || k - 1 < layers))
                layers = k - 1;
        }
        if (t->v[i].comp == COMP_VAE && sscanf(n, "decoder.up.%d.", &k) == 1 && k + 1 > levels)
            levels = k + 1;
    }
    if (layers < 0)
        layers = max_in;    /* a single level: no downsampler to count by */
    char out[600];
    for (size_t i = 0; i < t->n; i++) {
        ckpt_tensor *e = &t->v[i];
        int rc = 0;
        if (e->comp == COMP_UNET && ck->layout == CKPT_SINGLE_FILE)
            rc = ldm_unet_name(e->name, layers, out, sizeof out);
        else if (e->comp == COMP_VAE && ck->layout == CKPT_SINGLE_FILE)
            rc = ldm_vae_name(e->name, levels, out, sizeof out);
        else if (e->comp == COMP_VAE)
            rc = vae_legacy_name(e->name, out, sizeof out);
        else
            continue;
        if (rc < 0)
            return coin_fail(err, COIN_EFORMAT, "%s: tensor name too long: %s", ck->path, e->name);
        if (rc == 0 && ck->layout == CKPT_SINGLE_FILE)
            add_problem(ck, "unrecognised %s tensor '%s'", ckpt_component_name(e->comp), e->name);
        if (rc == 1) {
            char *copy = strdup(out);
            if (!copy)
                return coin_fail(err, COIN_ENOMEM, "out of memory");
            free(e->name);
            e->name = copy;
        }
        if (e->comp == COMP_VAE && strstr(e->name, "mid_block.attentions.0.to_") &&
            e->ndim == 4 && e->shape[2] == 1 && e->shape[3] == 1)
            e->ndim = 2;
    }
    return 0;
}

/* ---- single file ---- */

static int index_single_file(checkpoint *ck, table *t, const st_file *f,
                             int *hf_clip, int *open_clip, coin_error *err)
{
    size_t l_unet = strlen(PFX_UNET), l_vae = strlen(PFX_VAE);
    size_t l_hf = strlen(PFX_HFCLIP), l_oc = strlen(PFX_OPENCLIP);
    char buf[600];
    for (size_t i = 0; i < f->n_tensors; i++) {
        const st_tensor *s = &f->tensors[i];
        const char *n = s->name;
        int rc;
        if (!strncmp(n, PFX_UNET, l_unet)) {
            rc = table_add(t, COMP_UNET, n + l_unet, f, s, 0, -1, err);
        } else if (!strncmp(n, PFX_VAE, l_vae)) {
            rc = table_add(t, COMP_VAE, n + l_vae, f, s, 0, -1, err);
        } else if (!strncmp(n, PFX_HFCLIP, l_hf)) {
            const char *rest = n + l_hf;
            if (!is_float_dtype(s->dtype)) {      /* position_ids (I64) */
                rc = table_add(t, COMP_OTHER, n, f, s, 0, -1, err);
            } else {
                /* Old transformers versions saved without "text_model.". */
                snprintf(buf, sizeof buf, "%s%s",
                         strncmp(rest, "text_model.", 11) ? "text_model." : "", rest);
                rc = table_add(t, COMP_TEXT_ENCODER, buf, f, s, 0, -1, err);
                (*hf_clip)++;
            }
        } else if (!strncmp(n, PFX_OPENCLIP, l_oc)) {
            rc = map_openclip(ck, t, f, s, n + l_oc, err);
            (*open_clip)++;
        } else {
            rc = table_add(t, COMP_OTHER, n, f, s, 0, -1, err);
        }
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- diffusers folder ---- */

static int read_json(const char *path, cJSON **out, coin_error *err)
{
    char *text;
    *out = NULL;
    int rc = file_read_all(path, CONFIG_MAX_BYTES, &text, NULL, err);
    if (rc)
        return rc;
    *out = cJSON_Parse(text);
    free(text);
    if (!*out || !cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return coin_fail(err, COIN_EFORMAT, "%s: not a JSON object", path);
    }
    return 0;
}

static const char *json_str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int json_int(const cJSON *o, const char *key, int fallback)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? (int)v->valuedouble : fallback;
}

static int open_file(checkpoint *ck, const char *path, st_file **out, coin_error *err)
{
    if (ck->n_files >= CKPT_MAX_FILES)
        return coin_fail(err, COIN_EUNSUPPORTED, "%s: too many weight files", ck->path);
    int rc = st_open(out, path, err);
    if (rc)
        return rc;
    ck->files[ck->n_files++] = *out;
    return 0;
}

static const char PICKLE_HELP[] =
    "coin reads only safetensors, because pickle files can run code when "
    "loaded. Convert it once, where torch is installed:\n"
    "  python3 -c \"import sys,torch,safetensors.torch as st; "
    "sd=torch.load(sys.argv[1],map_location='cpu',weights_only=True); "
    "sd=sd.get('state_dict',sd); "
    "st.save_file({k:v.contiguous() for k,v in sd.items() if torch.is_tensor(v)},"
    "sys.argv[2])\" IN OUT.safetensors";

/* Finds a component's weights in a diffusers folder: the plain file, else the
 * fp16 variant.  A folder with only pickle weights is refused. */
static int diffusers_component(checkpoint *ck, table *t, const char *sub,
                               const char *stem, ckpt_component comp,
                               int *found, coin_error *err)
{
    char dir[4096], path[4200], name[256];
    *found = 0;
    if (path_join(dir, sizeof dir, ck->path, sub, err))
        return COIN_EINVAL;
    if (path_is_dir(dir) != 1)
        return 0;
    const char *variants[] = {"safetensors", "fp16.safetensors"};
    for (int v = 0; v < 2; v++) {
        snprintf(name, sizeof name, "%s.%s", stem, variants[v]);
        if (path_join(path, sizeof path, dir, name, err))
            return COIN_EINVAL;
        if (path_exists(path)) {
            st_file *f;
            int rc = open_file(ck, path, &f, err);
            if (rc)
                return rc;
            for (size_t i = 0; i < f->n_tensors; i++) {
                const st_tensor *s = &f->tensors[i];
                ckpt_component c = is_float_dtype(s->dtype) ? comp : COMP_OTHER;
                if ((rc = table_add(t, c, s->name, f, s, 0, -1, err)))
                    return rc;
            }
            *found = 1;
            return 0;
        }
    }
    if (path_join(path, sizeof path, dir, comp == COMP_TEXT_ENCODER ?
                  "pytorch_model.bin" : "diffusion_pytorch_model.bin", err))
        return COIN_EINVAL;
    if (path_exists(path))
        return coin_fail(err, COIN_EUNSUPPORTED, "%s holds only pickle weights. %s",
                         path, PICKLE_HELP);
    if (path_join(path, sizeof path, dir, "model.safetensors.index.json", err) == 0 &&
        path_exists(path))
        return coin_fail(err, COIN_EUNSUPPORTED,
                         "%s: sharded weights are not supported; merge the shards "
                         "into one model.safetensors", dir);
    add_problem(ck, "%s/ has no %s.safetensors", sub, stem);
    return 0;
}

/* ---- version, prediction and text-encoder hyperparameters ---- */

static const ckpt_tensor *te(const checkpoint *ck, const char *name)
{
    return checkpoint_find(ck, COMP_TEXT_ENCODER, name);
}

static void detect_text_config(checkpoint *ck, const cJSON *te_config,
                               int open_clip, const st_file *single)
{
    clip_config *c = &ck->text;
    const ckpt_tensor *tok = te(ck, "text_model.embeddings.token_embedding.weight");
    const ckpt_tensor *pos = te(ck, "text_model.embeddings.position_embedding.weight");
    const ckpt_tensor *fc1 = te(ck, "text_model.encoder.layers.0.mlp.fc1.weight");
    ck->has_text_encoder = tok && pos;
    if (!ck->has_text_encoder) {
        add_problem(ck, "no text encoder found (token and position embeddings missing)");
        return;
    }
    c->vocab = tok->shape[0];
    c->width = tok->ndim == 2 ? tok->shape[1] : 0;
    c->positions = pos->shape[0];
    c->intermediate = fc1 ? fc1->shape[0] : 0;
    c->eps = 1e-5f;
    for (size_t i = 0; i < ck->n_tensors; i++) {
        int layer;
        if (ck->tensors[i].comp == COMP_TEXT_ENCODER &&
            sscanf(ck->tensors[i].name, "text_model.encoder.layers.%d.", &layer) == 1 &&
            layer + 1 > c->layers_in_file)
            c->layers_in_file = layer + 1;
    }
    /* SD2 conditions on the penultimate OpenCLIP block; diffusers folders
     * already had the last block dropped when they were converted. */
    c->layers = open_clip ? c->layers_in_file - 1 : c->layers_in_file;
    c->act = open_clip ? CLIP_ACT_GELU : CLIP_ACT_QUICK_GELU;
    c->heads = 0;
    const char *act = NULL, *heads_meta = NULL;
    if (te_config) {
        act = json_str(te_config, "hidden_act");
        c->heads = json_int(te_config, "num_attention_heads", 0);
        if (c->heads)
            snprintf(c->heads_from, sizeof c->heads_from, "text_encoder/config.json");
        const cJSON *eps = cJSON_GetObjectItemCaseSensitive(te_config, "layer_norm_eps");
        if (cJSON_IsNumber(eps))
            c->eps = (float)eps->valuedouble;
        int n = json_int(te_config, "num_hidden_layers", 0);
        if (n > 0 && n < c->layers)
            c->layers = n;
    } else if (single) {
        /* coin's own small test models record what the weights cannot say. */
        act = st_meta(single, "text_encoder.hidden_act");
        heads_meta = st_meta(single, "text_encoder.num_attention_heads");
        if (heads_meta) {
            c->heads = atoi(heads_meta);
            snprintf(c->heads_from, sizeof c->heads_from,
                     "file metadata text_encoder.num_attention_heads");
        }
    }
    if (act) {
        if (!strcmp(act, "gelu"))
            c->act = CLIP_ACT_GELU;
        else if (!strcmp(act, "quick_gelu"))
            c->act = CLIP_ACT_QUICK_GELU;
        else
            add_problem(ck, "text encoder activation '%s' is not supported", act);
    }
    if (c->heads <= 0 && c->width % 64 == 0) {
        /* Both CLIP ViT-L/14 and OpenCLIP ViT-H/14 use 64-wide heads. */
        c->heads = (int)(c->width / 64);
        snprintf(c->heads_from, sizeof c->heads_from, "width / 64, as in CLIP ViT-L and ViT-H");
    }
    if (c->heads <= 0 || c->width % c->heads)
        add_problem(ck, "cannot tell the text encoder's head count for width %lld",
                    (long long)c->width);
    if (c->layers < 1)
        add_problem(ck, "the text encoder has no transformer layers to run");
}

static void detect_version(checkpoint *ck, int hf_clip, int open_clip,
                           const cJSON *te_config, const cJSON *unet_config)
{
    sd_version v = SD_UNKNOWN;
    if (open_clip) {
        v = SD_V2;
        snprintf(ck->version_from, sizeof ck->version_from,
                 "OpenCLIP text encoder (cond_stage_model.model.)");
    } else if (hf_clip) {
        v = SD_V1;
        snprintf(ck->version_from, sizeof ck->version_from,
                 "CLIP text encoder (cond_stage_model.transformer.)");
    } else if (te_config && json_str(te_config, "hidden_act")) {
        v = strcmp(json_str(te_config, "hidden_act"), "gelu") ? SD_V1 : SD_V2;
        snprintf(ck->version_from, sizeof ck->version_from,
                 "text_encoder/config.json hidden_act \"%s\"", json_str(te_config, "hidden_act"));
    }
    /* Cross-check with the UNet's context width where both are full size. */
    int64_t ctx = 0;
    if (unet_config)
        ctx = json_int(unet_config, "cross_attention_dim", 0);
    else {
        const ckpt_tensor *k =
            checkpoint_find(ck, COMP_UNET, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight");
        if (k && k->ndim == 2)
            ctx = k->shape[1];
    }
    if (ctx == 768 || ctx == 1024) {
        sd_version by_unet = ctx == 768 ? SD_V1 : SD_V2;
        if (v == SD_UNKNOWN) {
            v = by_unet;
            snprintf(ck->version_from, sizeof ck->version_from,
                     "UNet cross-attention width %lld", (long long)ctx);
        } else if (v != by_unet) {
            add_problem(ck, "the text encoder says %s but the UNet's cross-attention "
                        "width %lld says %s", sd_version_name(v), (long long)ctx,
                        sd_version_name(by_unet));
        }
    }
    if (ck->has_text_encoder && ctx && ck->text.width != ctx)
        add_problem(ck, "text encoder width %lld does not match the UNet's "
                    "cross-attention width %lld", (long long)ck->text.width, (long long)ctx);
    ck->version = v;
}

static void detect_prediction(checkpoint *ck, const cJSON *sched, const st_file *single)
{
    const char *p = sched ? json_str(sched, "prediction_type") : NULL;
    const char *spec = single ? st_meta(single, "modelspec.prediction_type") : NULL;
    if (p) {
        ck->prediction = !strcmp(p, "v_prediction") ? PRED_V :
                         !strcmp(p, "epsilon") ? PRED_EPSILON : PRED_UNKNOWN;
        snprintf(ck->prediction_from, sizeof ck->prediction_from,
                 "scheduler/scheduler_config.json");
    } else if (sched) {
        ck->prediction = PRED_EPSILON;   /* diffusers' default when the key is absent */
        snprintf(ck->prediction_from, sizeof ck->prediction_from,
                 "scheduler config without prediction_type (diffusers default)");
    } else if (spec) {
        ck->prediction = !strcmp(spec, "v") ? PRED_V :
                         !strcmp(spec, "epsilon") ? PRED_EPSILON : PRED_UNKNOWN;
        snprintf(ck->prediction_from, sizeof ck->prediction_from,
                 "file metadata modelspec.prediction_type");
    } else if (ck->version == SD_V1) {
        ck->prediction = PRED_EPSILON;
        snprintf(ck->prediction_from, sizeof ck->prediction_from, "every SD 1.x model is epsilon");
    } else {
        ck->prediction = PRED_UNKNOWN;
        snprintf(ck->prediction_from, sizeof ck->prediction_from,
                 "not recorded: SD 2.x 768 models are v_prediction, 512-base "
                 "models epsilon; pass --prediction");
    }
}

/* ---- open / close ---- */

static int refuse_pickle(const char *path, coin_error *err)
{
    const char *ext = path_ext(path);
    int by_ext = !strcasecmp(ext, "ckpt") || !strcasecmp(ext, "pt") ||
                 !strcasecmp(ext, "pth") || !strcasecmp(ext, "bin");
    unsigned char magic[4] = {0};
    FILE *f = fopen(path, "rb");
    if (f) {
        size_t got = fread(magic, 1, sizeof magic, f);
        fclose(f);
        (void)got;
    }
    int zip = !memcmp(magic, "PK\x03\x04", 4), pickle = magic[0] == 0x80 && magic[1] <= 5;
    if (by_ext || zip || pickle)
        return coin_fail(err, COIN_EUNSUPPORTED, "%s is a pickle checkpoint. %s", path,
                         PICKLE_HELP);
    return 0;
}

int checkpoint_open(checkpoint **out, const char *path, sd_version force,
                    coin_error *err)
{
    *out = NULL;
    int is_dir = path_is_dir(path);
    if (is_dir < 0)
        return coin_fail(err, COIN_ENOTFOUND, "%s: no such file or folder", path);
    if (!is_dir && refuse_pickle(path, err))
        return err ? err->code : COIN_EUNSUPPORTED;

    checkpoint *ck = calloc(1, sizeof *ck);
    if (!ck || !(ck->path = strdup(path))) {
        free(ck);
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    }
    table t = {0};
    cJSON *te_config = NULL, *unet_config = NULL, *sched = NULL;
    int hf_clip = 0, open_clip = 0, rc = 0;
    st_file *single = NULL;
    char buf[4200];

    if (is_dir) {
        ck->layout = CKPT_DIFFUSERS;
        int te_found, unet_found, vae_found;
        if ((rc = diffusers_component(ck, &t, "text_encoder", "model", COMP_TEXT_ENCODER,
                                      &te_found, err)) ||
            (rc = diffusers_component(ck, &t, "unet", "diffusion_pytorch_model", COMP_UNET,
                                      &unet_found, err)) ||
            (rc = diffusers_component(ck, &t, "vae", "diffusion_pytorch_model", COMP_VAE,
                                      &vae_found, err)))
            goto fail;
        if (!te_found && !unet_found && !vae_found) {
            rc = coin_fail(err, COIN_EFORMAT,
                           "%s is a folder but not a diffusers model: it has no "
                           "text_encoder/, unet/ or vae/ with safetensors weights", path);
            goto fail;
        }
        /* Configs are optional, but a present and broken one is an error. */
        const char *cfgs[] = {"text_encoder/config.json", "unet/config.json",
                              "scheduler/scheduler_config.json"};
        cJSON **dst[] = {&te_config, &unet_config, &sched};
        for (int i = 0; i < 3; i++) {
            if ((rc = path_join(buf, sizeof buf, path, cfgs[i], err)))
                goto fail;
            if (path_exists(buf) && (rc = read_json(buf, dst[i], err)))
                goto fail;
        }
        if ((rc = path_join(buf, sizeof buf, path, "tokenizer", err)))
            goto fail;
        if (path_is_dir(buf) == 1 && !(ck->tokenizer_dir = strdup(buf))) {
            rc = coin_fail(err, COIN_ENOMEM, "out of memory");
            goto fail;
        }
    } else {
        ck->layout = CKPT_SINGLE_FILE;
        if ((rc = open_file(ck, path, &single, err)) ||
            (rc = index_single_file(ck, &t, single, &hf_clip, &open_clip, err)))
            goto fail;
        if (hf_clip && open_clip)
            add_problem(ck, "the file holds both an SD1 CLIP and an SD2 OpenCLIP "
                        "text encoder; using the OpenCLIP one");
    }

    if ((rc = canonical_unet_vae_names(ck, &t, err)))
        goto fail;
    qsort(t.v, t.n, sizeof *t.v, cmp_entry);
    ck->tensors = t.v;
    ck->n_tensors = t.n;
    t.v = NULL;
    for (size_t i = 1; i < ck->n_tensors; i++)
        if (!cmp_entry(&ck->tensors[i - 1], &ck->tensors[i])) {
            rc = coin_fail(err, COIN_EFORMAT, "%s: two tensors map to the %s tensor '%s'",
                           path, ckpt_component_name(ck->tensors[i].comp),
                           ck->tensors[i].name);
            goto fail;
        }

    detect_text_config(ck, te_config, open_clip && !hf_clip, single);
    detect_version(ck, hf_clip, open_clip, te_config, unet_config);
    if (force != SD_UNKNOWN && force != ck->version) {
        if (ck->version != SD_UNKNOWN)
            add_problem(ck, "version forced to %s although the files look like %s",
                        sd_version_name(force), sd_version_name(ck->version));
        ck->version = force;
        snprintf(ck->version_from, sizeof ck->version_from, "given on the command line");
    }
    detect_prediction(ck, sched, single);
    cJSON_Delete(te_config);
    cJSON_Delete(unet_config);
    cJSON_Delete(sched);
    *out = ck;
    return 0;

fail:
    for (size_t i = 0; i < t.n; i++)
        free(t.v[i].name);
    free(t.v);
    cJSON_Delete(te_config);
    cJSON_Delete(unet_config);
    cJSON_Delete(sched);
    checkpoint_close(ck);
    return rc;
}

void checkpoint_close(checkpoint *ck)
{
    if (!ck)
        return;
    for (size_t i = 0; i < ck->n_tensors; i++)
        free(ck->tensors[i].name);
    free(ck->tensors);
    for (int i = 0; i < ck->n_files; i++)
        st_close(ck->files[i]);
    for (int i = 0; i < ck->n_problems; i++)
        free(ck->problems[i]);
    free(ck->tokenizer_dir);
    free(ck->path);
    free(ck);
}
