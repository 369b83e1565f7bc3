/*
 * unet_backward.c - the UNet's backward pass to its conditioning (see
 * unet.h), for textual inversion.
 *
 * The forward pass is a tape: v[0] = conv_in(x), then steps s = 1..n, each
 * a ResNet, a spatial transformer, a downsampler or an upsampler reading
 * v[s-1] (and, for the up path's ResNets, the skip v[skip] concatenated
 * after it) and writing v[s]; then the head (GroupNorm, SiLU, conv_out).
 * The trace keeps every v[s] - the block inputs, skips among them - and,
 * without checkpointing, each step's internals (its "record").  The
 * backward pass walks the steps in reverse with one gradient per v; a v
 * read twice (a skip) sums its two gradients.  With checkpointing a step's
 * record is recomputed from v[s-1] just before its backward by the same
 * code that made it in the forward pass, so both modes see the same floats
 * and give the same gradient bit for bit.
 *
 * The steps mirror unet.c's forward op for op (same ops, same operands) so
 * that the traced output equals unet_forward's exactly.  Only gradients
 * that can reach ctx are computed: the blocks before the first
 * cross-attention (and conv_in) get none, and the time embedding none.
 */
#include <stdlib.h>
#include <string.h>

#include "unet_internal.h"

#define TRY(expr)                 \
    do {                          \
        if ((rc = (expr)) != 0)   \
            goto done;            \
    } while (0)

static const int PAD1[4] = {1, 1, 1, 1}, PAD0[4] = {0, 0, 0, 0};

enum { STEP_RESNET, STEP_ATTN, STEP_DOWN, STEP_UP };

/* What one BasicTransformerBlock's backward reads: the residual stream
 * before each sub-layer (the LayerNorms' inputs), the attentions' q, k, v
 * and the GEGLU's input.  LayerNorm outputs are not kept: a linear layer's
 * input gradient needs only its weight. */
typedef struct tblock_rec {
    tensor x0, x1, x2;          /* [B, HW, C] */
    tensor q1, k1, v1, q2;      /* [B, HW, C] */
    tensor kc, vc;              /* [B, S, C] */
    tensor ff;                  /* [B, HW, 2F] */
} tblock_rec;

/* A step's internals.  ResNet: a1 = norm1(x), h1 = conv1(SiLU(a1)) + time,
 * a2 = norm2(h1) (the SiLUs' inputs and norm2's input; norm1's input is the
 * step's input).  Transformer: one tblock_rec per block. */
typedef struct rec {
    tensor a1, h1, a2;
    tblock_rec *blk;
    int depth;
} rec;

typedef struct step {
    int kind;
    const resnet *r;
    const transformer *t;
    const level *lv;            /* resamplers */
    int skip;                   /* v index concatenated after v[s-1], or -1 */
    int live;                   /* v[s] depends on ctx */
    rec rec;                    /* without checkpointing */
} step;

struct unet_trace {
    int checkpointing;
    int n;                      /* steps 1..n (steps[0] unused) */
    step *steps;
    tensor *v;                  /* v[0..n] */
    tensor tact;                /* SiLU(time embedding) [B, temb_dim] */
    tensor ctx;                 /* a copy of the conditioning [B, S, X] */
    tensor head_a;              /* norm_out(v[n]) [B, C0, H, W], without checkpointing */
    int64_t out_shape[4];
};

static void rec_free(rec *r)
{
    tensor_free(&r->a1);
    tensor_free(&r->h1);
    tensor_free(&r->a2);
    for (int d = 0; r->blk && d < r->depth; d++) {
        tblock_rec *b = &r->blk[d];
        tensor *all[] = {&b->x0, &b->x1, &b->x2, &b->q1, &b->k1, &b->v1, &b->q2,
                         &b->kc, &b->vc, &b->ff};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            tensor_free(all[i]);
    }
    free(r->blk);
    memset(r, 0, sizeof *r);
}

void unet_trace_free(unet_trace *t)
{
    if (!t)
        return;
    for (int s = 0; t->steps && s <= t->n; s++)
        rec_free(&t->steps[s].rec);
    for (int s = 0; t->v && s <= t->n; s++)
        tensor_free(&t->v[s]);
    free(t->steps);
    free(t->v);
    tensor_free(&t->tact);
    tensor_free(&t->ctx);
    tensor_free(&t->head_a);
    free(t);
}

/* ------------------------------------------------------------------ */
/* The plan: unet_forward's block order as steps                      */
/* ------------------------------------------------------------------ */

static int count_steps(const unet_model *m)
{
    int n = 3;                  /* mid: resnet, transformer, resnet */
    for (int i = 0; i < m->cfg.levels; i++)
        n += 2 * m->down[i].n_res + 1 + 2 * m->up[i].n_res + 1;
    return n;
}

static void add_step(unet_trace *t, int kind, const resnet *r, const transformer *tr,
                     const level *lv, int skip)
{
    step *st = &t->steps[++t->n];
    st->kind = kind;
    st->r = r;
    st->t = tr;
    st->lv = lv;
    st->skip = skip;
    st->live = kind == STEP_ATTN || t->steps[t->n - 1].live ||
               (skip >= 0 && t->steps[skip].live);
}

/* The steps in unet_forward's order; skips are the v indices its skip
 * stack would hold. */
static void plan(unet_trace *t, const unet_model *m)
{
    const unet_config *c = &m->cfg;
    enum { MAX_SKIPS = 1 + UNET_MAX_LEVELS * (MAX_LAYERS + 1) };
    int skips[MAX_SKIPS], n_skips = 0;
    t->n = 0;
    skips[n_skips++] = 0;       /* conv_in's output */
    for (int i = 0; i < c->levels; i++) {
        const level *lv = &m->down[i];
        for (int j = 0; j < lv->n_res; j++) {
            add_step(t, STEP_RESNET, &lv->res[j], NULL, NULL, -1);
            if (lv->attn)
                add_step(t, STEP_ATTN, NULL, &lv->attn[j], NULL, -1);
            skips[n_skips++] = t->n;
        }
        if (lv->has_sample) {
            add_step(t, STEP_DOWN, NULL, NULL, lv, -1);
            skips[n_skips++] = t->n;
        }
    }
    add_step(t, STEP_RESNET, &m->mid_res[0], NULL, NULL, -1);
    add_step(t, STEP_ATTN, NULL, &m->mid_attn, NULL, -1);
    add_step(t, STEP_RESNET, &m->mid_res[1], NULL, NULL, -1);
    for (int i = 0; i < c->levels; i++) {
        const level *lv = &m->up[i];
        for (int j = 0; j < lv->n_res; j++) {
            add_step(t, STEP_RESNET, &lv->res[j], NULL, NULL, skips[--n_skips]);
            if (lv->attn)
                add_step(t, STEP_ATTN, NULL, &lv->attn[j], NULL, -1);
        }
        if (lv->has_sample)
            add_step(t, STEP_UP, NULL, NULL, lv, -1);
    }
}

/* ------------------------------------------------------------------ */
/* Steps forward, recording                                           */
/* ------------------------------------------------------------------ */

/* The up path's ResNet input cat[B, Ch+Cs, H, W] = [h, skip]. */
static int concat_input(const coin_backend *be, const tensor *h, const tensor *skip,
                        tensor *cat, coin_error *err)
{
    int rc = tensor_alloc4(cat, be, h->shape[0], h->shape[1] + skip->shape[1], h->shape[2],
                           h->shape[3], err);
    if (!rc && (rc = op_concat(cat, h, skip, err)))
        tensor_free(cat);
    return rc;
}

/* Records a1, h1, a2 of resnet r on x[B, cin, H, W] and, when out is not
 * NULL, out[B, cout, H, W] (allocated here) as unet.c's resnet_forward. */
static int resnet_record(const unet_model *m, const resnet *r, const tensor *x,
                         const tensor *tact, rec *rc_, tensor *out, coin_error *err)
{
    const coin_backend *be = m->be;
    int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3];
    int groups = m->cfg.norm_groups;
    float eps = m->cfg.norm_eps;
    tensor act = {0}, e = {0}, sk = {0};
    int rc;
    TRY(tensor_alloc(&rc_->a1, be, 4, x->shape, err));
    TRY(op_group_norm(&rc_->a1, x, &r->norm1_w, &r->norm1_b, groups, eps, err));
    TRY(tensor_alloc(&act, be, 4, x->shape, err));
    TRY(op_silu(&act, &rc_->a1, err));
    TRY(tensor_alloc4(&rc_->h1, be, B, r->cout, H, W, err));
    TRY(op_conv2d(&rc_->h1, &act, &r->conv1_w, &r->conv1_b, 1, PAD1, err));
    tensor_free(&act);
    TRY(tensor_alloc2(&e, be, B, r->cout, err));
    TRY(op_linear(&e, tact, &r->temb_w, &r->temb_b, err));
    TRY(op_add_channel(&rc_->h1, &rc_->h1, &e, err));
    TRY(tensor_alloc4(&rc_->a2, be, B, r->cout, H, W, err));
    TRY(op_group_norm(&rc_->a2, &rc_->h1, &r->norm2_w, &r->norm2_b, groups, eps, err));
    if (out) {
        TRY(tensor_alloc4(&act, be, B, r->cout, H, W, err));
        TRY(op_silu(&act, &rc_->a2, err));
        TRY(tensor_alloc4(out, be, B, r->cout, H, W, err));
        TRY(op_conv2d(out, &act, &r->conv2_w, &r->conv2_b, 1, PAD1, err));
        if (r->cin != r->cout) {
            TRY(tensor_alloc4(&sk, be, B, r->cout, H, W, err));
            TRY(op_conv2d(&sk, x, &r->skip_w, &r->skip_b, 1, PAD0, err));
            TRY(op_add(out, &sk, out, err));
        } else {
            TRY(op_add(out, x, out, err));
        }
    }
done:
    tensor_free(&act);
    tensor_free(&e);
    tensor_free(&sk);
    if (rc && out)
        tensor_free(out);
    return rc;
}

/* x_out[B, T, C] = x_in + o(attention(q, k, v)): unet.c's attend, with the
 * sum in a tensor of its own so that x_in stays recorded. */
static int attend(const transformer *t, const tensor *x_in, const tensor *q, const tensor *k,
                  const tensor *v, const tensor *ow, const tensor *ob, tensor *a, tensor *o,
                  tensor *x_out, coin_error *err)
{
    int rc = op_attention(a, q, k, v, t->heads, 0, err);
    if (!rc)
        rc = op_linear(o, a, ow, ob, err);
    if (!rc)
        rc = op_add(x_out, x_in, o, err);
    return rc;
}

/* Records transformer t on h[B, C, H, W] and, when out is not NULL,
 * out[B, C, H, W] (allocated here) = h + Transformer2DModel(h, ctx), as
 * unet.c's transformer_forward. */
static int transformer_record(const unet_model *m, const transformer *t, const tensor *h,
                              const tensor *ctx, rec *r, tensor *out, coin_error *err)
{
    const coin_backend *be = m->be;
    int64_t B = h->shape[0], C = h->shape[1], HW = h->shape[2] * h->shape[3];
    int64_t S = ctx->shape[1], F = (int64_t)FF_MULT * C;
    tensor gn = {0}, n = {0}, a = {0}, g = {0}, xf = {0}, tr = {0};
    int rc = 0;
    if (!(r->blk = calloc((size_t)t->depth, sizeof *r->blk)))
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    r->depth = t->depth;

    /* GroupNorm, tokens [B, HW, C], proj_in. */
    TRY(tensor_alloc(&gn, be, 4, h->shape, err));
    TRY(op_group_norm(&gn, h, &t->norm_w, &t->norm_b, m->cfg.norm_groups,
                      TRANSFORMER_GN_EPS, err));
    TRY(tensor_reshape(&gn, 3, (int64_t[]){B, C, HW}, err));
    TRY(tensor_alloc3(&n, be, B, HW, C, err));
    TRY(op_transpose(&n, &gn, err));
    tensor_free(&gn);
    TRY(tensor_alloc3(&r->blk[0].x0, be, B, HW, C, err));
    TRY(op_linear(&r->blk[0].x0, &n, &t->proj_in_w, &t->proj_in_b, err));

    TRY(tensor_alloc3(&a, be, B, HW, C, err));
    for (int d = 0; d < t->depth; d++) {
        const tblock *b = &t->blocks[d];
        tblock_rec *br = &r->blk[d];
        int last = d == t->depth - 1;
        tensor *all[] = {&br->x1, &br->x2, &br->q1, &br->k1, &br->v1, &br->q2};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            TRY(tensor_alloc3(all[i], be, B, HW, C, err));
        TRY(tensor_alloc3(&br->kc, be, B, S, C, err));
        TRY(tensor_alloc3(&br->vc, be, B, S, C, err));
        /* Self-attention. */
        TRY(op_layernorm(&n, &br->x0, &b->ln1_w, &b->ln1_b, LAYERNORM_EPS, err));
        TRY(op_linear(&br->q1, &n, &b->q1_w, NULL, err));
        TRY(op_linear(&br->k1, &n, &b->k1_w, NULL, err));
        TRY(op_linear(&br->v1, &n, &b->v1_w, NULL, err));
        TRY(attend(t, &br->x0, &br->q1, &br->k1, &br->v1, &b->o1_w, &b->o1_b, &a, &n,
                   &br->x1, err));
        /* Cross-attention: keys and values from the text. */
        TRY(op_layernorm(&n, &br->x1, &b->ln2_w, &b->ln2_b, LAYERNORM_EPS, err));
        TRY(op_linear(&br->q2, &n, &b->q2_w, NULL, err));
        TRY(op_linear(&br->kc, ctx, &b->k2_w, NULL, err));
        TRY(op_linear(&br->vc, ctx, &b->v2_w, NULL, err));
        TRY(attend(t, &br->x1, &br->q2, &br->kc, &br->vc, &b->o2_w, &b->o2_b, &a, &n,
                   &br->x2, err));
        /* GEGLU feed-forward; its output is only needed by what follows,
         * which a recomputation for the backward pass does not run. */
        TRY(op_layernorm(&n, &br->x2, &b->ln3_w, &b->ln3_b, LAYERNORM_EPS, err));
        TRY(tensor_alloc3(&br->ff, be, B, HW, 2 * F, err));
        TRY(op_linear(&br->ff, &n, &b->ff1_w, &b->ff1_b, err));
        if (last && !out)
            break;
        TRY(tensor_alloc3(&g, be, B, HW, F, err));
        TRY(op_geglu(&g, &br->ff, err));
        TRY(op_linear(&n, &g, &b->ff2_w, &b->ff2_b, err));
        tensor_free(&g);
        tensor *next = last ? &xf : &r->blk[d + 1].x0;
        TRY(tensor_alloc3(next, be, B, HW, C, err));
        TRY(op_add(next, &br->x2, &n, err));
    }

    if (out) {
        /* proj_out, back to [B, C, H, W], plus the block's input. */
        TRY(op_linear(&n, &xf, &t->proj_out_w, &t->proj_out_b, err));
        TRY(tensor_alloc3(&tr, be, B, C, HW, err));
        TRY(op_transpose(&tr, &n, err));
        TRY(tensor_reshape(&tr, 4, h->shape, err));
        TRY(tensor_alloc(out, be, 4, h->shape, err));
        TRY(op_add(out, h, &tr, err));
    }
done:
    tensor_free(&gn);
    tensor_free(&n);
    tensor_free(&a);
    tensor_free(&g);
    tensor_free(&xf);
    tensor_free(&tr);
    if (rc && out)
        tensor_free(out);
    return rc;
}

/* Runs step s of t on its inputs from t->v, recording into r; writes
 * v[s] when out is not NULL (resamplers record nothing). */
static int step_forward(const unet_model *m, const unet_trace *t, int s, rec *r, tensor *out,
                        coin_error *err)
{
    const step *st = &t->steps[s];
    const tensor *x = &t->v[s - 1];
    const coin_backend *be = m->be;
    int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    tensor cat = {0}, u = {0};
    int rc = 0;
    switch (st->kind) {
    case STEP_RESNET:
        if (st->skip >= 0) {
            TRY(concat_input(be, x, &t->v[st->skip], &cat, err));
            x = &cat;
        }
        TRY(resnet_record(m, st->r, x, &t->tact, r, out, err));
        break;
    case STEP_ATTN:
        TRY(transformer_record(m, st->t, x, &t->ctx, r, out, err));
        break;
    case STEP_DOWN:
        if (out) {
            TRY(tensor_alloc4(out, be, B, C, (H + 1) / 2, (W + 1) / 2, err));
            TRY(op_conv2d(out, x, &st->lv->sample_w, &st->lv->sample_b, 2, PAD1, err));
        }
        break;
    case STEP_UP:
        if (out) {
            TRY(tensor_alloc4(&u, be, B, C, 2 * H, 2 * W, err));
            TRY(op_upsample2x(&u, x, err));
            TRY(tensor_alloc4(out, be, B, C, 2 * H, 2 * W, err));
            TRY(op_conv2d(out, &u, &st->lv->sample_w, &st->lv->sample_b, 1, PAD1, err));
        }
        break;
    }
done:
    tensor_free(&cat);
    tensor_free(&u);
    if (rc) {
        rec_free(r);
        if (out)
            tensor_free(out);
    }
    return rc;
}

/* head_a[B, C0, H, W] (allocated here) = conv_norm_out(v[n]), before its SiLU. */
static int head_norm(const unet_model *m, const tensor *v, tensor *head_a, coin_error *err)
{
    int rc = tensor_alloc(head_a, m->be, 4, v->shape, err);
    if (!rc)
        rc = op_group_norm(head_a, v, &m->norm_out_w, &m->norm_out_b, m->cfg.norm_groups,
                           m->cfg.norm_eps, err);
    if (rc)
        tensor_free(head_a);
    return rc;
}

int unet_forward_trace(const unet_model *m, const tensor *x, const float *timesteps,
                       const tensor *ctx, tensor *out, int checkpointing,
                       unet_trace **trace, coin_error *err)
{
    const unet_config *c = &m->cfg;
    const coin_backend *be = m->be;
    tensor act = {0}, head_a = {0};
    float *host = NULL;
    int rc;
    memset(out, 0, sizeof *out);
    *trace = NULL;
    if ((rc = unet_check_inputs(m, x, ctx, "unet_forward_trace", err)))
        return rc;
    int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3];
    int max_steps = count_steps(m);
    unet_trace *t = calloc(1, sizeof *t);
    if (!t || !(t->steps = calloc((size_t)max_steps + 1, sizeof *t->steps)) ||
        !(t->v = calloc((size_t)max_steps + 1, sizeof *t->v))) {
        rc = coin_fail(err, COIN_ENOMEM, "out of memory");
        goto done;
    }
    t->checkpointing = checkpointing != 0;
    t->steps[0].skip = -1;      /* conv_in: v[0] does not depend on ctx */
    plan(t, m);

    /* The trace's own ctx, through the host (the backend has no copy op). */
    if (!(host = malloc((size_t)ctx->n * sizeof(float)))) {
        rc = coin_fail(err, COIN_ENOMEM, "out of memory");
        goto done;
    }
    TRY(tensor_download(ctx, host, ctx->n, err));
    TRY(tensor_alloc(&t->ctx, be, 3, ctx->shape, err));
    TRY(tensor_upload(&t->ctx, host, ctx->n, err));
    TRY(unet_time_embedding(m, timesteps, B, &t->tact, err));

    TRY(tensor_alloc4(&t->v[0], be, B, c->channels[0], H, W, err));
    TRY(op_conv2d(&t->v[0], x, &m->conv_in_w, &m->conv_in_b, 1, PAD1, err));
    for (int s = 1; s <= t->n; s++) {
        rec *r = &t->steps[s].rec;
        TRY(step_forward(m, t, s, r, &t->v[s], err));
        if (t->checkpointing)
            rec_free(r);
    }

    /* conv_norm_out (the ResNet eps), SiLU, conv_out. */
    TRY(head_norm(m, &t->v[t->n], &head_a, err));
    TRY(tensor_alloc(&act, be, 4, head_a.shape, err));
    TRY(op_silu(&act, &head_a, err));
    TRY(tensor_alloc4(out, be, B, c->out_channels, H, W, err));
    TRY(op_conv2d(out, &act, &m->conv_out_w, &m->conv_out_b, 1, PAD1, err));
    memcpy(t->out_shape, out->shape, sizeof t->out_shape);
    if (!t->checkpointing) {
        t->head_a = head_a;
        head_a = (tensor){0};
    }
done:
    tensor_free(&act);
    tensor_free(&head_a);
    free(host);
    if (rc) {
        tensor_free(out);
        unet_trace_free(t);
        return rc;
    }
    *trace = t;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Backward                                                           */
/* ------------------------------------------------------------------ */

/* *acc += *g, moving g into an empty acc; g is spent either way. */
static int accumulate(tensor *acc, tensor *g, coin_error *err)
{
    int rc = 0;
    if (!acc->mem) {
        *acc = *g;
        *g = (tensor){0};
        return 0;
    }
    rc = op_axpy(acc, g, 1.0f, err);
    tensor_free(g);
    return rc;
}

/* dx[B, cin, H, W] (allocated here) = d/dx of resnet r at input x, from
 * dy[B, cout, H, W] and the record.  The time embedding gets nothing. */
static int resnet_backward(const unet_model *m, const resnet *r, const tensor *x,
                           const rec *rd, const tensor *dy, tensor *dx, coin_error *err)
{
    const coin_backend *be = m->be;
    int groups = m->cfg.norm_groups;
    float eps = m->cfg.norm_eps;
    tensor dh = {0}, dsk = {0};
    int rc;
    /* conv2 <- SiLU <- norm2 <- (+ time, a per-channel constant) <- conv1. */
    TRY(tensor_alloc(&dh, be, 4, dy->shape, err));
    TRY(op_conv2d_backward_input(&dh, dy, &r->conv2_w, 1, PAD1, err));
    TRY(op_silu_backward(&dh, &dh, &rd->a2, err));
    TRY(op_group_norm_backward(&dh, &dh, &rd->h1, &r->norm2_w, groups, eps, err));
    TRY(tensor_alloc(dx, be, 4, x->shape, err));
    TRY(op_conv2d_backward_input(dx, &dh, &r->conv1_w, 1, PAD1, err));
    TRY(op_silu_backward(dx, dx, &rd->a1, err));
    TRY(op_group_norm_backward(dx, dx, x, &r->norm1_w, groups, eps, err));
    /* The shortcut. */
    if (r->cin != r->cout) {
        TRY(tensor_alloc(&dsk, be, 4, x->shape, err));
        TRY(op_conv2d_backward_input(&dsk, dy, &r->skip_w, 1, PAD0, err));
        TRY(op_axpy(dx, &dsk, 1.0f, err));
    } else {
        TRY(op_axpy(dx, dy, 1.0f, err));
    }
done:
    tensor_free(&dh);
    tensor_free(&dsk);
    if (rc)
        tensor_free(dx);
    return rc;
}

/* Transformer t at input h: adds d/dctx to dctx[B, S, X] and, when dh is
 * not NULL, sets dh[B, C, H, W] (allocated here) = d/dh, from
 * dy[B, C, H, W] and the record. */
static int transformer_backward(const unet_model *m, const transformer *t, const tensor *h,
                                const rec *rd, const tensor *dy, tensor *dctx, tensor *dh,
                                coin_error *err)
{
    const coin_backend *be = m->be;
    int64_t B = h->shape[0], C = h->shape[1], HW = h->shape[2] * h->shape[3];
    int64_t S = dctx->shape[1], X = dctx->shape[2], F = (int64_t)FF_MULT * C;
    tensor dx = {0}, dn = {0}, da = {0}, dq = {0}, dk = {0}, dv = {0};
    tensor dkc = {0}, dvc = {0}, dc = {0}, dg = {0}, dff = {0}, dt = {0};
    int rc;
    TRY(tensor_alloc3(&dx, be, B, HW, C, err));
    TRY(tensor_alloc3(&dn, be, B, HW, C, err));
    TRY(tensor_alloc3(&da, be, B, HW, C, err));
    TRY(tensor_alloc3(&dq, be, B, HW, C, err));
    TRY(tensor_alloc3(&dk, be, B, HW, C, err));
    TRY(tensor_alloc3(&dv, be, B, HW, C, err));
    TRY(tensor_alloc3(&dkc, be, B, S, C, err));
    TRY(tensor_alloc3(&dvc, be, B, S, C, err));
    TRY(tensor_alloc3(&dc, be, B, S, X, err));

    /* out = h + transpose(proj_out(x)): dy viewed as [B, C, HW]. */
    tensor dyv = *dy;
    TRY(tensor_reshape(&dyv, 3, (int64_t[]){B, C, HW}, err));
    TRY(op_transpose(&dn, &dyv, err));
    TRY(op_linear_backward(&dx, &dn, &t->proj_out_w, err));

    for (int d = t->depth - 1; d >= 0; d--) {
        const tblock *b = &t->blocks[d];
        const tblock_rec *br = &rd->blk[d];
        /* x3 = x2 + ff2(geglu(ff1(ln3(x2)))) */
        TRY(tensor_alloc3(&dg, be, B, HW, F, err));
        TRY(op_linear_backward(&dg, &dx, &b->ff2_w, err));
        TRY(tensor_alloc3(&dff, be, B, HW, 2 * F, err));
        TRY(op_geglu_backward(&dff, &dg, &br->ff, err));
        tensor_free(&dg);
        TRY(op_linear_backward(&dn, &dff, &b->ff1_w, err));
        tensor_free(&dff);
        TRY(op_layernorm_backward(&dn, &dn, &br->x2, &b->ln3_w, LAYERNORM_EPS, err));
        TRY(op_axpy(&dx, &dn, 1.0f, err));
        /* x2 = x1 + o2(attention(q2(ln2(x1)), k2(ctx), v2(ctx))): the
         * gradient reaches ctx through the keys and values. */
        TRY(op_linear_backward(&da, &dx, &b->o2_w, err));
        TRY(op_attention_backward(&dq, &dkc, &dvc, &da, &br->q2, &br->kc, &br->vc, t->heads, 0,
                                  err));
        TRY(op_linear_backward(&dc, &dkc, &b->k2_w, err));
        TRY(op_axpy(dctx, &dc, 1.0f, err));
        TRY(op_linear_backward(&dc, &dvc, &b->v2_w, err));
        TRY(op_axpy(dctx, &dc, 1.0f, err));
        TRY(op_linear_backward(&dn, &dq, &b->q2_w, err));
        TRY(op_layernorm_backward(&dn, &dn, &br->x1, &b->ln2_w, LAYERNORM_EPS, err));
        TRY(op_axpy(&dx, &dn, 1.0f, err));
        /* x1 = x0 + o1(attention(q1, k1, v1 of ln1(x0))) */
        TRY(op_linear_backward(&da, &dx, &b->o1_w, err));
        TRY(op_attention_backward(&dq, &dk, &dv, &da, &br->q1, &br->k1, &br->v1, t->heads, 0,
                                  err));
        TRY(op_linear_backward(&dn, &dq, &b->q1_w, err));
        TRY(op_linear_backward(&da, &dk, &b->k1_w, err));
        TRY(op_axpy(&dn, &da, 1.0f, err));
        TRY(op_linear_backward(&da, &dv, &b->v1_w, err));
        TRY(op_axpy(&dn, &da, 1.0f, err));
        TRY(op_layernorm_backward(&dn, &dn, &br->x0, &b->ln1_w, LAYERNORM_EPS, err));
        TRY(op_axpy(&dx, &dn, 1.0f, err));
    }

    if (dh) {
        /* x0 = proj_in(transpose(norm(h))), and the residual h. */
        TRY(op_linear_backward(&dn, &dx, &t->proj_in_w, err));
        TRY(tensor_alloc3(&dt, be, B, C, HW, err));
        TRY(op_transpose(&dt, &dn, err));
        TRY(tensor_reshape(&dt, 4, h->shape, err));
        TRY(op_group_norm_backward(&dt, &dt, h, &t->norm_w, m->cfg.norm_groups,
                                   TRANSFORMER_GN_EPS, err));
        TRY(op_axpy(&dt, dy, 1.0f, err));
        *dh = dt;
        dt = (tensor){0};
    }
done:
    tensor_free(&dx);
    tensor_free(&dn);
    tensor_free(&da);
    tensor_free(&dq);
    tensor_free(&dk);
    tensor_free(&dv);
    tensor_free(&dkc);
    tensor_free(&dvc);
    tensor_free(&dc);
    tensor_free(&dg);
    tensor_free(&dff);
    tensor_free(&dt);
    return rc;
}

/* The backward pass of step s: from dv[s] into dv[s-1], dv[skip] (those
 * that depend on ctx) and dctx. */
static int step_backward(const unet_model *m, const unet_trace *t, int s, const rec *r,
                         tensor *dv, tensor *dctx, coin_error *err)
{
    const step *st = &t->steps[s];
    const coin_backend *be = m->be;
    const tensor *x = &t->v[s - 1], *dy = &dv[s];
    int need_x = t->steps[s - 1].live;
    tensor cat = {0}, dx = {0}, ds = {0}, du = {0}, dcat = {0};
    int rc = 0;
    switch (st->kind) {
    case STEP_RESNET:
        if (st->skip >= 0) {
            /* The record does not keep the concatenation: it is v[s-1]
             * and the skip, which the trace has. */
            TRY(concat_input(be, x, &t->v[st->skip], &cat, err));
            TRY(resnet_backward(m, st->r, &cat, r, dy, &dcat, err));
            TRY(tensor_alloc(&dx, be, 4, x->shape, err));
            TRY(tensor_alloc(&ds, be, 4, t->v[st->skip].shape, err));
            TRY(op_split(&dx, &ds, &dcat, err));
            tensor_free(&dcat);
            if (t->steps[st->skip].live)
                TRY(accumulate(&dv[st->skip], &ds, err));
        } else {
            TRY(resnet_backward(m, st->r, x, r, dy, &dx, err));
        }
        break;
    case STEP_ATTN:
        TRY(transformer_backward(m, st->t, x, r, dy, dctx, need_x ? &dx : NULL, err));
        break;
    case STEP_DOWN:
        TRY(tensor_alloc(&dx, be, 4, x->shape, err));
        TRY(op_conv2d_backward_input(&dx, dy, &st->lv->sample_w, 2, PAD1, err));
        break;
    case STEP_UP:
        TRY(tensor_alloc4(&du, be, dy->shape[0], dy->shape[1], dy->shape[2], dy->shape[3], err));
        TRY(op_conv2d_backward_input(&du, dy, &st->lv->sample_w, 1, PAD1, err));
        TRY(tensor_alloc(&dx, be, 4, x->shape, err));
        TRY(op_upsample2x_backward(&dx, &du, err));
        break;
    }
    if (need_x && dx.mem)
        TRY(accumulate(&dv[s - 1], &dx, err));
done:
    tensor_free(&cat);
    tensor_free(&dx);
    tensor_free(&ds);
    tensor_free(&du);
    tensor_free(&dcat);
    return rc;
}

int unet_backward_ctx(const unet_model *m, const unet_trace *t, const tensor *dout,
                      tensor *dctx, coin_error *err)
{
    const coin_backend *be = m->be;
    tensor *dv = NULL, dh = {0}, head_a = {0};
    rec scratch = {0};
    float *zeros = NULL;
    int rc = 0;
    memset(dctx, 0, sizeof *dctx);
    char got[96];
    int fits = dout->ndim == 4 && dout->be == be;
    for (int i = 0; fits && i < 4; i++)
        fits = dout->shape[i] == t->out_shape[i];
    if (!fits)
        return coin_fail(err, COIN_ESHAPE, "unet_backward_ctx: gradient %s does not fit the "
                         "traced output [%lld, %lld, %lld, %lld] on the %s backend",
                         tensor_shape_str(dout, got, sizeof got), (long long)t->out_shape[0],
                         (long long)t->out_shape[1], (long long)t->out_shape[2],
                         (long long)t->out_shape[3], be->name);
    if (!(dv = calloc((size_t)t->n + 1, sizeof *dv)) ||
        !(zeros = calloc((size_t)t->ctx.n, sizeof *zeros))) {
        rc = coin_fail(err, COIN_ENOMEM, "out of memory");
        goto done;
    }
    TRY(tensor_alloc(dctx, be, 3, t->ctx.shape, err));
    TRY(tensor_upload(dctx, zeros, t->ctx.n, err));

    /* The head: conv_out <- SiLU <- conv_norm_out. */
    const tensor *v_last = &t->v[t->n];
    if (t->checkpointing)
        TRY(head_norm(m, v_last, &head_a, err));
    TRY(tensor_alloc(&dh, be, 4, v_last->shape, err));
    TRY(op_conv2d_backward_input(&dh, dout, &m->conv_out_w, 1, PAD1, err));
    TRY(op_silu_backward(&dh, &dh, t->checkpointing ? &head_a : &t->head_a, err));
    TRY(tensor_alloc(&dv[t->n], be, 4, v_last->shape, err));
    TRY(op_group_norm_backward(&dv[t->n], &dh, v_last, &m->norm_out_w, m->cfg.norm_groups,
                               m->cfg.norm_eps, err));
    tensor_free(&dh);
    tensor_free(&head_a);

    for (int s = t->n; s >= 1; s--) {
        const step *st = &t->steps[s];
        /* A step none of whose inputs depends on ctx, and which does not
         * read ctx itself, passes no gradient anyone wants. */
        int wanted = st->kind == STEP_ATTN || t->steps[s - 1].live ||
                     (st->skip >= 0 && t->steps[st->skip].live);
        if (dv[s].mem && wanted) {
            const rec *r = &st->rec;
            if (t->checkpointing) {
                TRY(step_forward(m, t, s, &scratch, NULL, err));
                r = &scratch;
            }
            TRY(step_backward(m, t, s, r, dv, dctx, err));
            rec_free(&scratch);
        }
        tensor_free(&dv[s]);
    }
done:
    for (int s = 0; dv && s <= t->n; s++)
        tensor_free(&dv[s]);
    free(dv);
    free(zeros);
    tensor_free(&dh);
    tensor_free(&head_a);
    rec_free(&scratch);
    if (rc)
        tensor_free(dctx);
    return rc;
}
