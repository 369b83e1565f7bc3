/*
 * clip.c - CLIP text encoder forward pass (see clip.h).
 */
#include "clip.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRY(expr)                 \
    do {                          \
        if ((rc = (expr)) != 0)   \
            goto done;            \
    } while (0)

/* Loads one canonical text-encoder tensor, requiring exactly the given
 * shape (ndim 1 or 2). */
static int load_tensor(tensor *dst, const checkpoint *ck, const coin_backend *be,
                       const char *name, int64_t d0, int64_t d1, coin_error *err)
{
    const ckpt_tensor *src = checkpoint_find(ck, COMP_TEXT_ENCODER, name);
    int ndim = d1 ? 2 : 1;
    if (!src)
        return coin_fail(err, COIN_ENOTFOUND, "%s: the text encoder has no tensor '%s'",
                         ck->path, name);
    if (src->ndim != ndim || src->shape[0] != d0 || (d1 && src->shape[1] != d1))
        return coin_fail(err, COIN_ESHAPE,
                         "%s: text encoder tensor '%s' has shape [%lld%s%lld] where "
                         "[%lld%s%lld] was expected", src->file->path, name,
                         (long long)src->shape[0], src->ndim > 1 ? ", " : "",
                         src->ndim > 1 ? (long long)src->shape[1] : 0LL,
                         (long long)d0, d1 ? ", " : "", (long long)d1);
    float *host = malloc(src->nelem * sizeof(float));
    if (!host)
        return coin_fail(err, COIN_ENOMEM, "out of memory loading '%s'", name);
    int rc = checkpoint_read_f32(ck, src, host, src->nelem, err);
    if (!rc)
        rc = d1 ? tensor_alloc2(dst, be, d0, d1, err) : tensor_alloc1(dst, be, d0, err);
    if (!rc)
        rc = tensor_upload(dst, host, (int64_t)src->nelem, err);
    free(host);
    return rc;
}

static int load_layer(clip_layer *L, const checkpoint *ck, const coin_backend *be,
                      int i, coin_error *err)
{
    const clip_config *c = &ck->text;
    int64_t D = c->width, I = c->intermediate;
    char name[160];
    struct { tensor *t; const char *suffix; int64_t d0, d1; } parts[] = {
        {&L->ln1_w, "layer_norm1.weight", D, 0},
        {&L->ln1_b, "layer_norm1.bias", D, 0},
        {&L->q_w, "self_attn.q_proj.weight", D, D},
        {&L->q_b, "self_attn.q_proj.bias", D, 0},
        {&L->k_w, "self_attn.k_proj.weight", D, D},
        {&L->k_b, "self_attn.k_proj.bias", D, 0},
        {&L->v_w, "self_attn.v_proj.weight", D, D},
        {&L->v_b, "self_attn.v_proj.bias", D, 0},
        {&L->o_w, "self_attn.out_proj.weight", D, D},
        {&L->o_b, "self_attn.out_proj.bias", D, 0},
        {&L->ln2_w, "layer_norm2.weight", D, 0},
        {&L->ln2_b, "layer_norm2.bias", D, 0},
        {&L->fc1_w, "mlp.fc1.weight", I, D},
        {&L->fc1_b, "mlp.fc1.bias", I, 0},
        {&L->fc2_w, "mlp.fc2.weight", D, I},
        {&L->fc2_b, "mlp.fc2.bias", D, 0},
    };
    for (size_t p = 0; p < sizeof parts / sizeof parts[0]; p++) {
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.%s", i, parts[p].suffix);
        int rc = load_tensor(parts[p].t, ck, be, name, parts[p].d0, parts[p].d1, err);
        if (rc)
            return rc;
    }
    return 0;
}

static void free_layer(clip_layer *L)
{
    tensor *all[] = {&L->ln1_w, &L->ln1_b, &L->q_w, &L->k_w, &L->v_w, &L->o_w,
                     &L->q_b, &L->k_b, &L->v_b, &L->o_b, &L->ln2_w, &L->ln2_b,
                     &L->fc1_w, &L->fc1_b, &L->fc2_w, &L->fc2_b};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        tensor_free(all[i]);
}

int clip_load(clip_model **out, const checkpoint *ck, const coin_backend *be,
              coin_error *err)
{
    *out = NULL;
    const clip_config *c = &ck->text;
    if (!ck->has_text_encoder)
        return coin_fail(err, COIN_ENOTFOUND, "%s: no text encoder in this model", ck->path);
    if (c->heads <= 0 || c->width % c->heads || c->layers < 1 || c->intermediate <= 0)
        return coin_fail(err, COIN_EFORMAT,
                         "%s: cannot run this text encoder (width %lld, %d heads, "
                         "%d layers, MLP width %lld); see `coin info`", ck->path,
                         (long long)c->width, c->heads, c->layers,
                         (long long)c->intermediate);
    clip_model *m = calloc(1, sizeof *m);
    if (!m || !(m->layers = calloc((size_t)c->layers, sizeof *m->layers))) {
        free(m);
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    }
    m->cfg = *c;
    m->be = be;
    int64_t D = c->width;
    int rc;
    TRY(load_tensor(&m->tok_emb, ck, be, "text_model.embeddings.token_embedding.weight",
                    c->vocab, D, err));
    TRY(load_tensor(&m->pos_emb, ck, be, "text_model.embeddings.position_embedding.weight",
                    c->positions, D, err));
    for (int i = 0; i < c->layers; i++)
        TRY(load_layer(&m->layers[i], ck, be, i, err));
    TRY(load_tensor(&m->lnf_w, ck, be, "text_model.final_layer_norm.weight", D, 0, err));
    TRY(load_tensor(&m->lnf_b, ck, be, "text_model.final_layer_norm.bias", D, 0, err));
done:
    if (rc) {
        clip_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void clip_free(clip_model *m)
{
    if (!m)
        return;
    tensor_free(&m->tok_emb);
    tensor_free(&m->pos_emb);
    for (int i = 0; m->layers && i < m->cfg.layers; i++)
        free_layer(&m->layers[i]);
    free(m->layers);
    tensor_free(&m->lnf_w);
    tensor_free(&m->lnf_b);
    free(m);
}

int clip_add_tokens(clip_model *m, const float *rows, int n, int first_id,
                    coin_error *err)
{
    int64_t V = m->cfg.vocab, D = m->cfg.width;
    if (first_id != V)
        return coin_fail(err, COIN_EINVAL,
                         "trigger ids start at %d but the text encoder has %lld rows; the "
                         "tokenizer and the model disagree on the vocabulary", first_id,
                         (long long)V);
    if (n < 1)
        return 0;
    tensor grown;
    float *host = malloc((size_t)((V + n) * D) * sizeof(float));
    if (!host)
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    int rc = tensor_download(&m->tok_emb, host, V * D, err);
    if (!rc) {
        memcpy(host + V * D, rows, (size_t)(n * D) * sizeof(float));
        rc = tensor_alloc2(&grown, m->be, V + n, D, err);
    }
    if (!rc && (rc = tensor_upload(&grown, host, (V + n) * D, err)))
        tensor_free(&grown);
    free(host);
    if (rc)
        return rc;
    tensor_free(&m->tok_emb);
    m->tok_emb = grown;
    m->cfg.vocab = V + n;
    return 0;
}

/* What the backward pass needs of one layer's forward pass. */
typedef struct layer_trace {
    tensor x_in, h1, q, k, v, a, x_mid, h2, m1;  /* [B,T,D], m1 [B,T,I] */
} layer_trace;

struct clip_trace {
    int B;
    int32_t *ids;                   /* [B*T], host */
    layer_trace *layers;
    tensor x_final;                 /* the residual stream before the final LayerNorm */
};

void clip_trace_free(clip_trace *t)
{
    if (!t)
        return;
    for (int i = 0; t->layers && t->layers[i].x_in.mem; i++) {
        layer_trace *L = &t->layers[i];
        tensor *all[] = {&L->x_in, &L->h1, &L->q, &L->k, &L->v, &L->a, &L->x_mid, &L->h2, &L->m1};
        for (size_t j = 0; j < sizeof all / sizeof all[0]; j++)
            tensor_free(all[j]);
    }
    free(t->layers);
    tensor_free(&t->x_final);
    free(t->ids);
    free(t);
}

/*
 * The forward pass.  Without a trace the residual stream lives in out and
 * the per-layer activations share scratch tensors; with one, every
 * activation the backward pass reads gets a tensor of its own (the text
 * encoder is small: 77 positions).
 */
static int forward(const clip_model *m, const int32_t *ids, int B, tensor *out,
                   clip_trace *trace, coin_error *err)
{
    const clip_config *c = &m->cfg;
    const coin_backend *be = m->be;
    int64_t T = c->positions, D = c->width, I = c->intermediate;
    tensor h = {0}, q = {0}, k = {0}, v = {0}, a = {0}, mlp = {0}, act = {0};
    int rc;
    memset(out, 0, sizeof *out);
    if (B < 1)
        return coin_fail(err, COIN_EINVAL, "clip_forward: batch of %d", B);
    TRY(tensor_alloc3(out, be, B, T, D, err));
    TRY(tensor_alloc3(&h, be, B, T, D, err));
    TRY(tensor_alloc3(&act, be, B, T, I, err));
    if (!trace) {
        TRY(tensor_alloc3(&q, be, B, T, D, err));
        TRY(tensor_alloc3(&k, be, B, T, D, err));
        TRY(tensor_alloc3(&v, be, B, T, D, err));
        TRY(tensor_alloc3(&a, be, B, T, D, err));
        TRY(tensor_alloc3(&mlp, be, B, T, I, err));
    }
    tensor *x = trace ? &trace->layers[0].x_in : out;
    if (trace)
        TRY(tensor_alloc3(x, be, B, T, D, err));
    TRY(op_embed(x, &m->tok_emb, ids, &m->pos_emb, err));
    for (int i = 0; i < c->layers; i++) {
        const clip_layer *L = &m->layers[i];
        layer_trace *lt = trace ? &trace->layers[i] : NULL;
        tensor *h1 = &h, *pq = &q, *pk = &k, *pv = &v, *pa = &a, *xm = x, *h2 = &h, *m1 = &mlp;
        if (lt) {
            tensor *mine[] = {&lt->h1, &lt->q, &lt->k, &lt->v, &lt->a, &lt->x_mid, &lt->h2};
            for (size_t j = 0; j < sizeof mine / sizeof mine[0]; j++)
                TRY(tensor_alloc3(mine[j], be, B, T, D, err));
            TRY(tensor_alloc3(&lt->m1, be, B, T, I, err));
            h1 = &lt->h1, pq = &lt->q, pk = &lt->k, pv = &lt->v, pa = &lt->a;
            xm = &lt->x_mid, h2 = &lt->h2, m1 = &lt->m1;
        }
        TRY(op_layernorm(h1, x, &L->ln1_w, &L->ln1_b, c->eps, err));
        TRY(op_linear(pq, h1, &L->q_w, &L->q_b, err));
        TRY(op_linear(pk, h1, &L->k_w, &L->k_b, err));
        TRY(op_linear(pv, h1, &L->v_w, &L->v_b, err));
        TRY(op_attention(pa, pq, pk, pv, c->heads, 1, err));
        TRY(op_linear(&h, pa, &L->o_w, &L->o_b, err));
        TRY(op_add(xm, x, &h, err));
        TRY(op_layernorm(h2, xm, &L->ln2_w, &L->ln2_b, c->eps, err));
        TRY(op_linear(m1, h2, &L->fc1_w, &L->fc1_b, err));
        TRY(c->act == CLIP_ACT_GELU ? op_gelu(&act, m1, err) : op_quick_gelu(&act, m1, err));
        TRY(op_linear(&h, &act, &L->fc2_w, &L->fc2_b, err));
        tensor *next = xm;
        if (trace) {
            next = i + 1 < c->layers ? &trace->layers[i + 1].x_in : &trace->x_final;
            TRY(tensor_alloc3(next, be, B, T, D, err));
        }
        TRY(op_add(next, xm, &h, err));
        x = next;
    }
    TRY(op_layernorm(out, x, &m->lnf_w, &m->lnf_b, c->eps, err));
done:
    tensor_free(&h);
    tensor_free(&q);
    tensor_free(&k);
    tensor_free(&v);
    tensor_free(&a);
    tensor_free(&mlp);
    tensor_free(&act);
    if (rc)
        tensor_free(out);
    return rc;
}

int clip_forward(const clip_model *m, const int32_t *ids, int B, tensor *out,
                 coin_error *err)
{
    return forward(m, ids, B, out, NULL, err);
}

int clip_forward_trace(const clip_model *m, const int32_t *ids, int B, tensor *out,
                       clip_trace **trace, coin_error *err)
{
    *trace = NULL;
    clip_trace *t = calloc(1, sizeof *t);
    int64_t n = (int64_t)B * m->cfg.positions;
    if (!t || !(t->layers = calloc((size_t)m->cfg.layers + 1, sizeof *t->layers)) ||
        !(t->ids = malloc((size_t)n * sizeof *t->ids))) {
        clip_trace_free(t);
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    }
    t->B = B;
    memcpy(t->ids, ids, (size_t)n * sizeof *ids);
    int rc = forward(m, ids, B, out, t, err);
    if (rc) {
        clip_trace_free(t);
        return rc;
    }
    *trace = t;
    return 0;
}

int clip_backward(const clip_model *m, const clip_trace *t, const tensor *dout,
                  int first_id, tensor *drows, coin_error *err)
{
    const clip_config *c = &m->cfg;
    const coin_backend *be = m->be;
    int64_t T = c->positions, D = c->width, I = c->intermediate;
    int B = t->B, rc;
    tensor dx = {0}, dh = {0}, dtmp = {0}, dq = {0}, dk = {0}, dv = {0}, da = {0};
    tensor dact = {0}, dm = {0};
    TRY(tensor_alloc3(&dx, be, B, T, D, err));
    TRY(tensor_alloc3(&dh, be, B, T, D, err));
    TRY(tensor_alloc3(&dtmp, be, B, T, D, err));
    TRY(tensor_alloc3(&dq, be, B, T, D, err));
    TRY(tensor_alloc3(&dk, be, B, T, D, err));
    TRY(tensor_alloc3(&dv, be, B, T, D, err));
    TRY(tensor_alloc3(&da, be, B, T, D, err));
    TRY(tensor_alloc3(&dact, be, B, T, I, err));
    TRY(tensor_alloc3(&dm, be, B, T, I, err));
    TRY(op_layernorm_backward(&dx, dout, &t->x_final, &m->lnf_w, c->eps, err));
    for (int i = c->layers - 1; i >= 0; i--) {
        const clip_layer *L = &m->layers[i];
        const layer_trace *lt = &t->layers[i];
        /* x_next = x_mid + fc2(act(fc1(ln2(x_mid)))) */
        TRY(op_linear_backward(&dact, &dx, &L->fc2_w, err));
        TRY(c->act == CLIP_ACT_GELU ? op_gelu_backward(&dm, &dact, &lt->m1, err)
                                    : op_quick_gelu_backward(&dm, &dact, &lt->m1, err));
        TRY(op_linear_backward(&dh, &dm, &L->fc1_w, err));
        TRY(op_layernorm_backward(&dtmp, &dh, &lt->x_mid, &L->ln2_w, c->eps, err));
        TRY(op_axpy(&dx, &dtmp, 1.0f, err));
        /* x_mid = x_in + out_proj(attention(q, k, v)), q k v from ln1(x_in) */
        TRY(op_linear_backward(&da, &dx, &L->o_w, err));
        TRY(op_attention_backward(&dq, &dk, &dv, &da, &lt->q, &lt->k, &lt->v, c->heads, 1, err));
        TRY(op_linear_backward(&dh, &dq, &L->q_w, err));
        TRY(op_linear_backward(&dtmp, &dk, &L->k_w, err));
        TRY(op_axpy(&dh, &dtmp, 1.0f, err));
        TRY(op_linear_backward(&dtmp, &dv, &L->v_w, err));
        TRY(op_axpy(&dh, &dtmp, 1.0f, err));
        TRY(op_layernorm_backward(&dtmp, &dh, &lt->x_in, &L->ln1_w, c->eps, err));
        TRY(op_axpy(&dx, &dtmp, 1.0f, err));
    }
    /* Token plus position embedding: only the trigger rows learn. */
    TRY(op_embed_backward(drows, &dx, t->ids, first_id, err));
done:
    tensor_free(&dx);
    tensor_free(&dh);
    tensor_free(&dtmp);
    tensor_free(&dq);
    tensor_free(&dk);
    tensor_free(&dv);
    tensor_free(&da);
    tensor_free(&dact);
    tensor_free(&dm);
    return rc;
}

int clip_set_token_rows(clip_model *m, int first_id, const float *rows, int n,
                        coin_error *err)
{
    int64_t D = m->cfg.width;
    if (first_id < 0 || n < 0 || first_id + n > m->cfg.vocab)
        return coin_fail(err, COIN_EINVAL, "token rows %d..%d are outside the vocabulary of %lld",
                         first_id, first_id + n - 1, (long long)m->cfg.vocab);
    return tensor_upload_range(&m->tok_emb, (int64_t)first_id * D, rows, (int64_t)n * D, err);
}

int clip_get_token_rows(const clip_model *m, int first_id, float *rows, int n,
                        coin_error *err)
{
    int64_t D = m->cfg.width;
    if (first_id < 0 || n < 0 || first_id + n > m->cfg.vocab)
        return coin_fail(err, COIN_EINVAL, "token rows %d..%d are outside the vocabulary of %lld",
                         first_id, first_id + n - 1, (long long)m->cfg.vocab);
    return tensor_download_range(&m->tok_emb, (int64_t)first_id * D, rows, (int64_t)n * D, err);
}
