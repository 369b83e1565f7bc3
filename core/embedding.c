/*
 * embedding.c - reading and writing textual-inversion embeddings
 * (embedding.h).
 */
#include "embedding.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fileio.h"
#include "pickle_pt.h"
#include "safetensors.h"

/* A new copy of the file name without folders and extension. */
static char *file_stem(const char *path)
{
    char buf[512];
    path_stem(path, buf, sizeof buf);
    return strdup(buf);
}

int embedding_load(ti_embedding *e, const char *path, const char *token_override,
                   coin_error *err)
{
    memset(e, 0, sizeof *e);
    const char *ext = path_ext(path);
    if (!strcasecmp(ext, "pt") || !strcasecmp(ext, "bin") || !strcasecmp(ext, "ckpt")) {
        /* torch.save files, through a reader that executes nothing. */
        char *key = NULL;
        int n = 0, rc = pt_load_embedding(path, &key, &e->vectors, &n, &e->width, err);
        if (rc)
            return rc;
        e->n_vectors = n;
        e->token = token_override ? strdup(token_override) : key ? strdup(key) : file_stem(path);
        free(key);
        e->path = strdup(path);
        if (!e->token || !e->path) {
            embedding_free(e);
            return coin_fail(err, COIN_ENOMEM, "out of memory");
        }
        if (n > 75) {
            embedding_free(e);
            return coin_fail(err, COIN_EFORMAT, "%s: %d vectors; at most 75 fit a prompt", path, n);
        }
        return 0;
    }
    st_file *f;
    int rc = st_open(&f, path, err);
    if (rc)
        return rc;
    /* diffusers: the one tensor's key is the trigger; kohya: emb_params
     * (A1111's safetensors embeddings use the same key). */
    const st_tensor *t = st_find(f, "emb_params");
    const char *key = NULL;
    if (!t) {
        size_t floats = 0;
        for (size_t i = 0; i < f->n_tensors; i++)
            if (f->tensors[i].ndim == 2 || f->tensors[i].ndim == 1) {
                t = &f->tensors[i];
                floats++;
            }
        if (floats != 1) {
            rc = coin_fail(err, COIN_EFORMAT,
                           "%s: not an embedding: expected one [N, D] tensor (diffusers) or "
                           "'emb_params' (kohya, AUTOMATIC1111), found %zu tensors",
                           path, f->n_tensors);
            goto out;
        }
        /* AUTOMATIC1111's dict flattened into safetensors names the vectors
         * "string_to_param.*"; its trigger, like kohya's, is the file name. */
        key = strncmp(t->name, "string_to_param", 15) ? t->name : NULL;
    }
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
        rc = coin_fail(err, COIN_EFORMAT, "%s: tensor '%s' is %s, not a float type", path,
                       t->name, st_dtype_name(t->dtype));
        goto out;
    }
    /* A 1-D tensor is a single vector (some tools save [D]). */
    e->n_vectors = t->ndim == 2 ? (int)t->shape[0] : 1;
    e->width = t->ndim == 2 ? t->shape[1] : t->shape[0];
    if (e->n_vectors < 1 || e->n_vectors > 75 || e->width < 1) {
        rc = coin_fail(err, COIN_EFORMAT, "%s: an embedding of %d vectors of width %lld is "
                       "not usable (1 to 75 vectors)", path, e->n_vectors, (long long)e->width);
        goto out;
    }
    e->vectors = malloc(t->nelem * sizeof(float));
    e->token = token_override ? strdup(token_override) : key ? strdup(key) : file_stem(path);
    e->path = strdup(path);
    if (!e->vectors || !e->token || !e->path) {
        rc = coin_fail(err, COIN_ENOMEM, "out of memory");
        goto out;
    }
    if (!e->token[0] || strchr(e->token, ' ')) {
        rc = coin_fail(err, COIN_EFORMAT, "%s: trigger '%s' must be one word; pass another "
                       "with the trigger option", path, e->token);
        goto out;
    }
    rc = st_tensor_to_f32(f, t, e->vectors, t->nelem, err);
out:
    st_close(f);
    if (rc)
        embedding_free(e);
    return rc;
}

void embedding_free(ti_embedding *e)
{
    free(e->token);
    free(e->path);
    free(e->vectors);
    memset(e, 0, sizeof *e);
}

int embedding_save(const char *path, embedding_format fmt, const char *token,
                   const float *vectors, int n, int64_t width,
                   const char *const *meta, int n_meta, coin_error *err)
{
    st_writer *w = st_writer_new();
    if (!w)
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    int64_t shape[2] = {n, width};
    const char *key = fmt == EMB_KOHYA ? "emb_params" : fmt == EMB_A1111 ? "string_to_param.*" : token;
    int rc = st_writer_add(w, key, ST_F32, 2, shape, vectors, err);
    /* diffusers saves with {"format": "pt"}; readers expect it. */
    if (!rc)
        rc = st_writer_meta(w, "format", "pt", err);
    for (int i = 0; !rc && i < n_meta; i++)
        rc = st_writer_meta(w, meta[2 * i], meta[2 * i + 1], err);
    if (!rc)
        rc = st_writer_save(w, path, err);
    st_writer_free(w);
    return rc;
}

int embedding_vector_token(const char *token, int i, char *buf, size_t len)
{
    int n = i ? snprintf(buf, len, "%s_%d", token, i) : snprintf(buf, len, "%s", token);
    return n < 0 || (size_t)n >= len ? COIN_EINVAL : 0;
}

int embedding_expand_prompt(const char *prompt, const char *token, int n_vectors,
                            char **out, coin_error *err)
{
    size_t tl = strlen(token), count = 0;
    for (const char *p = strstr(prompt, token); p; p = strstr(p + tl, token))
        count++;
    char extra[4096] = "";
    size_t el = 0;
    for (int i = 1; i < n_vectors; i++) {
        int w = snprintf(extra + el, sizeof extra - el, " %s_%d", token, i);
        if (w < 0 || (size_t)w >= sizeof extra - el)
            return coin_fail(err, COIN_EINVAL, "trigger '%s' is too long", token);
        el += (size_t)w;
    }
    char *s = malloc(strlen(prompt) + count * el + 1);
    if (!s)
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    char *d = s;
    const char *p = prompt;
    for (const char *hit = strstr(p, token); hit; hit = strstr(p, token)) {
        memcpy(d, p, (size_t)(hit - p));
        d += hit - p;
        memcpy(d, token, tl);
        d += tl;
        memcpy(d, extra, el);
        d += el;
        p = hit + tl;
    }
    strcpy(d, p);
    *out = s;
    return 0;
}
