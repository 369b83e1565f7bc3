/*
 * tensor.c - tensor allocation and the shape-checked op wrappers.
 *
 * The wrappers are where a wrong shape becomes an error message instead of a
 * buffer overrun: backends trust what reaches them.
 */
#include "tensor.h"

#include <stdio.h>
#include <string.h>

#define COIN_OP_NAME(name, args) #name,
const char *const coin_op_names[] = {COIN_BACKEND_OPS(COIN_OP_NAME)};
#undef COIN_OP_NAME
const int coin_op_count = sizeof coin_op_names / sizeof coin_op_names[0];

int backend_by_name(const coin_backend **out, const char *name, coin_error *err)
{
    if (!strcmp(name, "cpu") || !strcmp(name, "auto")) {
        /* auto picks CUDA once the CUDA backend exists (cuda/). */
        *out = backend_cpu();
        return 0;
    }
    if (!strcmp(name, "cuda"))
        return coin_fail(err, COIN_EUNSUPPORTED,
                         "this coin was built without the CUDA backend; "
                         "use --backend cpu");
    return coin_fail(err, COIN_EINVAL,
                     "unknown backend '%s' (choose auto, cpu or cuda)", name);
}

int tensor_alloc(tensor *t, const coin_backend *be, int ndim,
                 const int64_t *shape, coin_error *err)
{
    memset(t, 0, sizeof *t);
    if (ndim < 1 || ndim > TENSOR_MAX_DIMS)
        return coin_fail(err, COIN_EINVAL, "tensor of %d dimensions", ndim);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] && n > INT64_MAX / 4 / shape[i]))
            return coin_fail(err, COIN_EINVAL, "tensor dimension %lld is invalid",
                             (long long)shape[i]);
        n *= shape[i];
        t->shape[i] = shape[i];
    }
    t->be = be;
    t->ndim = ndim;
    t->n = n;
    t->mem = be->alloc((size_t)(n ? n : 1) * sizeof(float));
    if (!t->mem) {
        memset(t, 0, sizeof *t);
        return coin_fail(err, COIN_ENOMEM,
                         "out of %s memory allocating %.1f MiB", be->name,
                         (double)n * 4 / (1 << 20));
    }
    return 0;
}

int tensor_alloc1(tensor *t, const coin_backend *be, int64_t d0, coin_error *err)
{
    return tensor_alloc(t, be, 1, (int64_t[]){d0}, err);
}

int tensor_alloc2(tensor *t, const coin_backend *be, int64_t d0, int64_t d1,
                  coin_error *err)
{
    return tensor_alloc(t, be, 2, (int64_t[]){d0, d1}, err);
}

int tensor_alloc3(tensor *t, const coin_backend *be, int64_t d0, int64_t d1,
                  int64_t d2, coin_error *err)
{
    return tensor_alloc(t, be, 3, (int64_t[]){d0, d1, d2}, err);
}

/* Drops t's derived data (see tensor.h): its contents are about to change. */
static void drop_derived(tensor *t)
{
    void *d = __atomic_exchange_n(&t->derived, NULL, __ATOMIC_ACQ_REL);
    if (d && t->be && t->be->free_derived)
        t->be->free_derived(d);
}

void tensor_free(tensor *t)
{
    drop_derived(t);
    if (t->mem)
        t->be->free(t->mem);
    memset(t, 0, sizeof *t);
}

int tensor_upload(tensor *t, const float *src, int64_t n, coin_error *err)
{
    if (n != t->n)
        return coin_fail(err, COIN_ESHAPE, "upload of %lld values into a tensor of %lld",
                         (long long)n, (long long)t->n);
    drop_derived(t);
    int rc = t->be->upload(t->mem, src, (size_t)n);
    return rc ? coin_fail(err, rc, "%s backend: upload failed", t->be->name) : 0;
}

int tensor_download(const tensor *t, float *dst, int64_t n, coin_error *err)
{
    if (n != t->n)
        return coin_fail(err, COIN_ESHAPE, "download of %lld values from a tensor of %lld",
                         (long long)n, (long long)t->n);
    int rc = t->be->download(dst, t->mem, (size_t)n);
    return rc ? coin_fail(err, rc, "%s backend: download failed", t->be->name) : 0;
}

int tensor_upload_range(tensor *t, int64_t offset, const float *src, int64_t n,
                        coin_error *err)
{
    if (offset < 0 || n < 0 || offset + n > t->n)
        return coin_fail(err, COIN_ESHAPE, "upload of %lld values at %lld into a tensor of %lld",
                         (long long)n, (long long)offset, (long long)t->n);
    drop_derived(t);
    /* Offsetting a device pointer is fine: it is never dereferenced here. */
    int rc = t->be->upload((float *)t->mem + offset, src, (size_t)n);
    return rc ? coin_fail(err, rc, "%s backend: upload failed", t->be->name) : 0;
}

int tensor_download_range(const tensor *t, int64_t offset, float *dst, int64_t n,
                          coin_error *err)
{
    if (offset < 0 || n < 0 || offset + n > t->n)
        return coin_fail(err, COIN_ESHAPE, "download of %lld values at %lld from a tensor of %lld",
                         (long long)n, (long long)offset, (long long)t->n);
    int rc = t->be->download(dst, (const float *)t->mem + offset, (size_t)n);
    return rc ? coin_fail(err, rc, "%s backend: download failed", t->be->name) : 0;
}

const char *tensor_shape_str(const tensor *t, char *buf, size_t len)
{
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < t->ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", i ? ", " : "",
                                 (long long)t->shape[i]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
    return buf;
}

/* ---- checks shared by the wrappers ---- */

static int64_t last_dim(const tensor *t) { return t->shape[t->ndim - 1]; }

static int shape_fail(coin_error *err, const char *op, const char *what,
                      const tensor *a, const tensor *b)
{
    char sa[96], sb[96];
    return coin_fail(err, COIN_ESHAPE, "%s: %s (%s vs %s)", op, what,
                     tensor_shape_str(a, sa, sizeof sa),
                     b ? tensor_shape_str(b, sb, sizeof sb) : "-");
}

/* Every tensor an op touches must be allocated and on the output's backend. */
#define CHECK_ON(op, ref, t)                                                 \
    do {                                                                     \
        if (!(ref)->mem || !(t)->mem || (t)->be != (ref)->be)                \
            return coin_fail(err, COIN_EINVAL,                               \
                             op ": a tensor is unallocated or on another backend"); \
    } while (0)

/* After an op: t is the tensor it wrote, whose derived data is now stale. */
static int call_rc(coin_error *err, const char *op, const tensor *t, int rc)
{
    /* The wrappers take outputs as tensor *; t is const only here. */
    drop_derived((tensor *)t);
    return rc ? coin_fail(err, rc, "%s backend: %s failed", t->be->name, op) : 0;
}

int op_linear(tensor *y, const tensor *x, const tensor *w, const tensor *b,
              coin_error *err)
{
    CHECK_ON("linear", y, x);
    CHECK_ON("linear", y, w);
    if (b)
        CHECK_ON("linear", y, b);
    if (w->ndim != 2 || last_dim(x) != w->shape[1])
        return shape_fail(err, "linear", "input width differs from weight columns", x, w);
    if (last_dim(y) != w->shape[0] || y->n / last_dim(y) != x->n / last_dim(x))
        return shape_fail(err, "linear", "output shape does not fit", y, w);
    if (b && b->n != w->shape[0])
        return shape_fail(err, "linear", "bias length differs from weight rows", b, w);
    return call_rc(err, "linear", y, y->be->linear(y, x, w, b));
}

int op_layernorm(tensor *y, const tensor *x, const tensor *g, const tensor *b,
                 float eps, coin_error *err)
{
    CHECK_ON("layernorm", y, x);
    CHECK_ON("layernorm", y, g);
    CHECK_ON("layernorm", y, b);
    if (y->n != x->n || last_dim(y) != last_dim(x))
        return shape_fail(err, "layernorm", "output and input differ", y, x);
    if (g->n != last_dim(x) || b->n != last_dim(x))
        return shape_fail(err, "layernorm", "scale or shift length differs from width", g, x);
    return call_rc(err, "layernorm", y, y->be->layernorm(y, x, g, b, eps));
}

int op_add(tensor *y, const tensor *a, const tensor *b, coin_error *err)
{
    CHECK_ON("add", y, a);
    CHECK_ON("add", y, b);
    if (y->n != a->n || a->n != b->n)
        return shape_fail(err, "add", "element counts differ", a, b);
    return call_rc(err, "add", y, y->be->add(y, a, b));
}

int op_gelu(tensor *y, const tensor *x, coin_error *err)
{
    CHECK_ON("gelu", y, x);
    if (y->n != x->n)
        return shape_fail(err, "gelu", "element counts differ", y, x);
    return call_rc(err, "gelu", y, y->be->gelu(y, x));
}

int op_quick_gelu(tensor *y, const tensor *x, coin_error *err)
{
    CHECK_ON("quick_gelu", y, x);
    if (y->n != x->n)
        return shape_fail(err, "quick_gelu", "element counts differ", y, x);
    return call_rc(err, "quick_gelu", y, y->be->quick_gelu(y, x));
}

int op_attention(tensor *o, const tensor *q, const tensor *k, const tensor *v,
                 int heads, int causal, coin_error *err)
{
    CHECK_ON("attention", o, q);
    CHECK_ON("attention", o, k);
    CHECK_ON("attention", o, v);
    if (q->ndim != 3 || k->ndim != 3 || v->ndim != 3 || o->ndim != 3)
        return shape_fail(err, "attention", "q, k, v and o must be [B, T, C]", q, k);
    if (k->shape[0] != q->shape[0] || k->shape[2] != q->shape[2])
        return shape_fail(err, "attention", "q and k differ in batch or width", q, k);
    if (v->shape[0] != k->shape[0] || v->shape[1] != k->shape[1])
        return shape_fail(err, "attention", "k and v differ in batch or length", k, v);
    if (o->shape[0] != q->shape[0] || o->shape[1] != q->shape[1] ||
        o->shape[2] != v->shape[2])
        return shape_fail(err, "attention", "output shape does not fit", o, q);
    if (heads < 1 || q->shape[2] % heads || v->shape[2] % heads)
        return coin_fail(err, COIN_ESHAPE, "attention: width %lld is not divisible by %d heads",
                         (long long)q->shape[2], heads);
    if (causal && q->shape[1] != k->shape[1])
        return shape_fail(err, "attention", "causal attention needs as many keys as queries", q, k);
    return call_rc(err, "attention", o, o->be->attention(o, q, k, v, heads, causal));
}

int op_embed(tensor *y, const tensor *table, const int32_t *ids,
             const tensor *pos, coin_error *err)
{
    CHECK_ON("embed", y, table);
    CHECK_ON("embed", y, pos);
    if (y->ndim != 3 || table->ndim != 2 || pos->ndim != 2)
        return shape_fail(err, "embed", "expects y [B, T, D], table [V, D], pos [P, D]", y, table);
    int64_t T = y->shape[1], D = y->shape[2], V = table->shape[0];
    if (table->shape[1] != D || pos->shape[1] != D)
        return shape_fail(err, "embed", "embedding widths differ", table, pos);
    if (pos->shape[0] < T)
        return shape_fail(err, "embed", "more tokens than position embeddings", y, pos);
    for (int64_t i = 0; i < y->shape[0] * T; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return coin_fail(err, COIN_EINVAL,
                             "token id %d at position %lld is outside the model's "
                             "vocabulary of %lld tokens",
                             ids[i], (long long)(i % T), (long long)V);
    return call_rc(err, "embed", y, y->be->embed(y, table, ids, pos));
}

int tensor_alloc4(tensor *t, const coin_backend *be, int64_t d0, int64_t d1,
                  int64_t d2, int64_t d3, coin_error *err)
{
    return tensor_alloc(t, be, 4, (int64_t[]){d0, d1, d2, d3}, err);
}

int tensor_reshape(tensor *t, int ndim, const int64_t *shape, coin_error *err)
{
    int64_t n = 1;
    if (ndim < 1 || ndim > TENSOR_MAX_DIMS)
        return coin_fail(err, COIN_EINVAL, "reshape to %d dimensions", ndim);
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    if (n != t->n) {
        char s[96];
        return coin_fail(err, COIN_ESHAPE, "reshape of %s to %lld elements",
                         tensor_shape_str(t, s, sizeof s), (long long)n);
    }
    drop_derived(t); /* a layout for the old shape */
    t->ndim = ndim;
    for (int i = 0; i < TENSOR_MAX_DIMS; i++)
        t->shape[i] = i < ndim ? shape[i] : 0;
    return 0;
}

/* Elements per batch-and-channel slice: the product of dims 2.. */
static int64_t spatial(const tensor *t)
{
    int64_t n = 1;
    for (int i = 2; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

int op_conv2d(tensor *y, const tensor *x, const tensor *w, const tensor *b,
              int stride, const int pad[4], coin_error *err)
{
    CHECK_ON("conv2d", y, x);
    CHECK_ON("conv2d", y, w);
    if (b)
        CHECK_ON("conv2d", y, b);
    if (x->ndim != 4 || w->ndim != 4 || y->ndim != 4)
        return shape_fail(err, "conv2d", "x, w and y must have 4 dimensions", x, w);
    if (w->shape[1] != x->shape[1])
        return shape_fail(err, "conv2d", "input channels differ from the kernel's", x, w);
    if (stride < 1 || pad[0] < 0 || pad[1] < 0 || pad[2] < 0 || pad[3] < 0)
        return coin_fail(err, COIN_EINVAL, "conv2d: stride %d or padding invalid", stride);
    int64_t ho = (x->shape[2] + pad[0] + pad[1] - w->shape[2]) / stride + 1;
    int64_t wo = (x->shape[3] + pad[2] + pad[3] - w->shape[3]) / stride + 1;
    if (y->shape[0] != x->shape[0] || y->shape[1] != w->shape[0] || y->shape[2] != ho ||
        y->shape[3] != wo || ho < 1 || wo < 1)
        return shape_fail(err, "conv2d", "output shape does not fit", y, x);
    if (b && b->n != w->shape[0])
        return shape_fail(err, "conv2d", "bias length differs from output channels", b, w);
    return call_rc(err, "conv2d", y, y->be->conv2d(y, x, w, b, stride, pad));
}

int op_group_norm(tensor *y, const tensor *x, const tensor *g, const tensor *b,
                  int groups, float eps, coin_error *err)
{
    CHECK_ON("group_norm", y, x);
    CHECK_ON("group_norm", y, g);
    CHECK_ON("group_norm", y, b);
    if (x->ndim < 2 || y->n != x->n)
        return shape_fail(err, "group_norm", "output and input differ", y, x);
    if (groups < 1 || x->shape[1] % groups)
        return coin_fail(err, COIN_ESHAPE, "group_norm: %lld channels in %d groups",
                         (long long)x->shape[1], groups);
    if (g->n != x->shape[1] || b->n != x->shape[1])
        return shape_fail(err, "group_norm", "scale or shift length differs from channels", g, x);
    return call_rc(err, "group_norm", y, y->be->group_norm(y, x, g, b, groups, eps));
}

int op_silu(tensor *y, const tensor *x, coin_error *err)
{
    CHECK_ON("silu", y, x);
    if (y->n != x->n)
        return shape_fail(err, "silu", "element counts differ", y, x);
    return call_rc(err, "silu", y, y->be->silu(y, x));
}

int op_upsample2x(tensor *y, const tensor *x, coin_error *err)
{
    CHECK_ON("upsample2x", y, x);
    if (x->ndim != 4 || y->ndim != 4 || y->shape[0] != x->shape[0] ||
        y->shape[1] != x->shape[1] || y->shape[2] != 2 * x->shape[2] ||
        y->shape[3] != 2 * x->shape[3])
        return shape_fail(err, "upsample2x", "output must be [B, C, 2H, 2W]", y, x);
    return call_rc(err, "upsample2x", y, y->be->upsample2x(y, x));
}

int op_concat(tensor *y, const tensor *a, const tensor *b, coin_error *err)
{
    CHECK_ON("concat", y, a);
    CHECK_ON("concat", y, b);
    if (a->ndim < 2 || b->ndim != a->ndim || y->ndim != a->ndim ||
        a->shape[0] != b->shape[0] || y->shape[0] != a->shape[0] ||
        spatial(a) != spatial(b) || spatial(y) != spatial(a) ||
        y->shape[1] != a->shape[1] + b->shape[1])
        return shape_fail(err, "concat", "shapes do not join on dimension 1", a, b);
    return call_rc(err, "concat", y, y->be->concat(y, a, b));
}

int op_add_channel(tensor *y, const tensor *x, const tensor *v, coin_error *err)
{
    CHECK_ON("add_channel", y, x);
    CHECK_ON("add_channel", y, v);
    if (x->ndim < 2 || y->n != x->n || v->n != x->shape[0] * x->shape[1])
        return shape_fail(err, "add_channel", "v must be [B, C] of x", x, v);
    return call_rc(err, "add_channel", y, y->be->add_channel(y, x, v));
}

int op_transpose(tensor *y, const tensor *x, coin_error *err)
{
    CHECK_ON("transpose", y, x);
    if (x->ndim != 3 || y->ndim != 3 || y->shape[0] != x->shape[0] ||
        y->shape[1] != x->shape[2] || y->shape[2] != x->shape[1])
        return shape_fail(err, "transpose", "output must be [B, N, M] of input [B, M, N]", y, x);
    return call_rc(err, "transpose", y, y->be->transpose(y, x));
}

int op_geglu(tensor *y, const tensor *x, coin_error *err)
{
    CHECK_ON("geglu", y, x);
    int64_t in = x->shape[x->ndim - 1], out = y->shape[y->ndim - 1];
    if (in != 2 * out || y->n / out != x->n / in)
        return shape_fail(err, "geglu", "input must be twice as wide as the output", x, y);
    return call_rc(err, "geglu", y, y->be->geglu(y, x));
}

int op_scale(tensor *y, const tensor *x, float s, coin_error *err)
{
    CHECK_ON("scale", y, x);
    if (y->n != x->n)
        return shape_fail(err, "scale", "element counts differ", y, x);
    return call_rc(err, "scale", y, y->be->scale(y, x, s));
}

/* ---- backward ops ----
 *
 * Besides shapes, these check that an output does not overlap an input where
 * the kernel would read what it has already overwritten (most of them zero
 * or accumulate into the output before the inputs are spent). */

static int overlaps(const tensor *a, const tensor *b)
{
    uintptr_t a0 = (uintptr_t)a->mem, b0 = (uintptr_t)b->mem;
    return a->n && b->n && a0 < b0 + (uintptr_t)b->n * sizeof(float) &&
           b0 < a0 + (uintptr_t)a->n * sizeof(float);
}

#define CHECK_APART(op, out, in)                                                 \
    do {                                                                         \
        if (overlaps(out, in))                                                   \
            return coin_fail(err, COIN_EINVAL, op ": " #out " and " #in          \
                             " share memory; give " #out " a tensor of its own"); \
    } while (0)

/* The rows of a [..., D] tensor: all dims but the last (0 / 0 safe). */
static int64_t lead_dims(const tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim - 1; i++)
        n *= t->shape[i];
    return n;
}

/* Same element count and the same last dimension. */
static int same_rows(const tensor *a, const tensor *b)
{
    return a->n == b->n && last_dim(a) == last_dim(b) && lead_dims(a) == lead_dims(b);
}

static int same_shape(const tensor *a, const tensor *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

int op_linear_backward(tensor *dx, const tensor *dy, const tensor *w, coin_error *err)
{
    CHECK_ON("linear_backward", dx, dy);
    CHECK_ON("linear_backward", dx, w);
    if (w->ndim != 2 || last_dim(dy) != w->shape[0])
        return shape_fail(err, "linear_backward", "gradient width differs from weight rows",
                          dy, w);
    if (last_dim(dx) != w->shape[1] || lead_dims(dx) != lead_dims(dy))
        return shape_fail(err, "linear_backward", "input gradient shape does not fit", dx, w);
    CHECK_APART("linear_backward", dx, dy);
    CHECK_APART("linear_backward", dx, w);
    return call_rc(err, "linear_backward", dx, dx->be->linear_backward(dx, dy, w));
}

int op_layernorm_backward(tensor *dx, const tensor *dy, const tensor *x,
                          const tensor *g, float eps, coin_error *err)
{
    CHECK_ON("layernorm_backward", dx, dy);
    CHECK_ON("layernorm_backward", dx, x);
    CHECK_ON("layernorm_backward", dx, g);
    if (!same_rows(dy, x))
        return shape_fail(err, "layernorm_backward", "gradient and saved input differ", dy, x);
    if (!same_rows(dx, x))
        return shape_fail(err, "layernorm_backward", "input gradient and input differ", dx, x);
    if (g->n != last_dim(x))
        return shape_fail(err, "layernorm_backward", "scale length differs from width", g, x);
    return call_rc(err, "layernorm_backward", dx,
                   dx->be->layernorm_backward(dx, dy, x, g, eps));
}

int op_group_norm_backward(tensor *dx, const tensor *dy, const tensor *x,
                           const tensor *g, int groups, float eps, coin_error *err)
{
    CHECK_ON("group_norm_backward", dx, dy);
    CHECK_ON("group_norm_backward", dx, x);
    CHECK_ON("group_norm_backward", dx, g);
    if (x->ndim < 2 || dy->n != x->n || dx->n != x->n)
        return shape_fail(err, "group_norm_backward", "gradient and saved input differ", dy, x);
    if (groups < 1 || x->shape[1] % groups)
        return coin_fail(err, COIN_ESHAPE, "group_norm_backward: %lld channels in %d groups",
                         (long long)x->shape[1], groups);
    if (g->n != x->shape[1])
        return shape_fail(err, "group_norm_backward", "scale length differs from channels",
                          g, x);
    return call_rc(err, "group_norm_backward", dx,
                   dx->be->group_norm_backward(dx, dy, x, g, groups, eps));
}

/* The element-wise activations' backward ops share their checks. */
static int check_pointwise(const char *op, const tensor *dx, const tensor *dy,
                           const tensor *x, coin_error *err)
{
    if (!dx->mem || !dy->mem || !x->mem || dy->be != dx->be || x->be != dx->be)
        return coin_fail(err, COIN_EINVAL, "%s: a tensor is unallocated or on another backend",
                         op);
    if (dy->n != x->n)
        return shape_fail(err, op, "gradient and saved input differ in size", dy, x);
    if (dx->n != x->n)
        return shape_fail(err, op, "input gradient and input differ in size", dx, x);
    return 0;
}

int op_gelu_backward(tensor *dx, const tensor *dy, const tensor *x, coin_error *err)
{
    int rc = check_pointwise("gelu_backward", dx, dy, x, err);
    return rc ? rc : call_rc(err, "gelu_backward", dx, dx->be->gelu_backward(dx, dy, x));
}

int op_quick_gelu_backward(tensor *dx, const tensor *dy, const tensor *x, coin_error *err)
{
    int rc = check_pointwise("quick_gelu_backward", dx, dy, x, err);
    return rc ? rc : call_rc(err, "quick_gelu_backward", dx,
                             dx->be->quick_gelu_backward(dx, dy, x));
}

int op_silu_backward(tensor *dx, const tensor *dy, const tensor *x, coin_error *err)
{
    int rc = check_pointwise("silu_backward", dx, dy, x, err);
    return rc ? rc : call_rc(err, "silu_backward", dx, dx->be->silu_backward(dx, dy, x));
}

int op_geglu_backward(tensor *dx, const tensor *dy, const tensor *x, coin_error *err)
{
    CHECK_ON("geglu_backward", dx, dy);
    CHECK_ON("geglu_backward", dx, x);
    int64_t in = last_dim(x), out = last_dim(dy);
    if (in != 2 * out || lead_dims(dy) != lead_dims(x))
        return shape_fail(err, "geglu_backward",
                          "saved input must be twice as wide as the gradient", x, dy);
    if (!same_rows(dx, x))
        return shape_fail(err, "geglu_backward", "input gradient and input differ", dx, x);
    CHECK_APART("geglu_backward", dx, dy);
    return call_rc(err, "geglu_backward", dx, dx->be->geglu_backward(dx, dy, x));
}

int op_attention_backward(tensor *dq, tensor *dk, tensor *dv, const tensor *dout,
                          const tensor *q, const tensor *k, const tensor *v,
                          int heads, int causal, coin_error *err)
{
    const char *op = "attention_backward";
    const tensor *all[] = {dk, dv, dout, q, k, v};
    for (int i = 0; i < 6; i++)
        CHECK_ON("attention_backward", dq, all[i]);
    if (q->ndim != 3 || k->ndim != 3 || v->ndim != 3 || dout->ndim != 3)
        return shape_fail(err, op, "dout, q, k and v must be [B, T, C]", q, k);
    if (k->shape[0] != q->shape[0] || k->shape[2] != q->shape[2])
        return shape_fail(err, op, "q and k differ in batch or width", q, k);
    if (v->shape[0] != k->shape[0] || v->shape[1] != k->shape[1])
        return shape_fail(err, op, "k and v differ in batch or length", k, v);
    if (dout->shape[0] != q->shape[0] || dout->shape[1] != q->shape[1] ||
        dout->shape[2] != v->shape[2])
        return shape_fail(err, op, "output gradient must be [B, T, width of v]", dout, q);
    if (!same_shape(dq, q))
        return shape_fail(err, op, "dq must have q's shape", dq, q);
    if (!same_shape(dk, k))
        return shape_fail(err, op, "dk must have k's shape", dk, k);
    if (!same_shape(dv, v))
        return shape_fail(err, op, "dv must have v's shape", dv, v);
    if (heads < 1 || q->shape[2] % heads || v->shape[2] % heads)
        return coin_fail(err, COIN_ESHAPE, "%s: width %lld is not divisible by %d heads", op,
                         (long long)q->shape[2], heads);
    if (causal && q->shape[1] != k->shape[1])
        return shape_fail(err, op, "causal attention needs as many keys as queries", q, k);
    /* dk and dv accumulate over blocks of queries while q, k, v and dout are
     * still being read, so no output may share an input's memory. */
    const tensor *out[] = {dq, dk, dv}, *in[] = {dout, q, k, v};
    for (int o = 0; o < 3; o++) {
        for (int i = 0; i < 4; i++)
            if (overlaps(out[o], in[i]))
                return coin_fail(err, COIN_EINVAL, "%s: %s and %s share memory; give %s a "
                                 "tensor of its own", op,
                                 (const char *[]){"dq", "dk", "dv"}[o],
                                 (const char *[]){"dout", "q", "k", "v"}[i],
                                 (const char *[]){"dq", "dk", "dv"}[o]);
        for (int p = o + 1; p < 3; p++)
            if (overlaps(out[o], out[p]))
                return coin_fail(err, COIN_EINVAL, "%s: outputs dq, dk and dv must not "
                                 "share memory", op);
    }
    return call_rc(err, op, dq, dq->be->attention_backward(dq, dk, dv, dout, q, k, v,
                                                           heads, causal));
}

int op_conv2d_backward_input(tensor *dx, const tensor *dy, const tensor *w,
                             int stride, const int pad[4], coin_error *err)
{
    const char *op = "conv2d_backward_input";
    CHECK_ON("conv2d_backward_input", dx, dy);
    CHECK_ON("conv2d_backward_input", dx, w);
    if (dx->ndim != 4 || w->ndim != 4 || dy->ndim != 4)
        return shape_fail(err, op, "dx, w and dy must have 4 dimensions", dx, w);
    if (w->shape[1] != dx->shape[1])
        return shape_fail(err, op, "input gradient's channels differ from the kernel's", dx, w);
    if (stride < 1 || pad[0] < 0 || pad[1] < 0 || pad[2] < 0 || pad[3] < 0)
        return coin_fail(err, COIN_EINVAL, "%s: stride %d or padding invalid", op, stride);
    /* The forward's output size from dx's (the forward input's) size. */
    int64_t ho = (dx->shape[2] + pad[0] + pad[1] - w->shape[2]) / stride + 1;
    int64_t wo = (dx->shape[3] + pad[2] + pad[3] - w->shape[3]) / stride + 1;
    if (dy->shape[0] != dx->shape[0] || dy->shape[1] != w->shape[0] || dy->shape[2] != ho ||
        dy->shape[3] != wo || ho < 1 || wo < 1)
        return shape_fail(err, op, "gradient is not the forward output's shape for this "
                          "input gradient", dy, dx);
    CHECK_APART("conv2d_backward_input", dx, dy);
    CHECK_APART("conv2d_backward_input", dx, w);
    return call_rc(err, op, dx, dx->be->conv2d_backward_input(dx, dy, w, stride, pad));
}

int op_upsample2x_backward(tensor *dx, const tensor *dy, coin_error *err)
{
    CHECK_ON("upsample2x_backward", dx, dy);
    if (dx->ndim != 4 || dy->ndim != 4 || dy->shape[0] != dx->shape[0] ||
        dy->shape[1] != dx->shape[1] || dy->shape[2] != 2 * dx->shape[2] ||
        dy->shape[3] != 2 * dx->shape[3])
        return shape_fail(err, "upsample2x_backward", "gradient must be [B, C, 2H, 2W]", dy, dx);
    CHECK_APART("upsample2x_backward", dx, dy);
    return call_rc(err, "upsample2x_backward", dx, dx->be->upsample2x_backward(dx, dy));
}

int op_split(tensor *a, tensor *b, const tensor *y, coin_error *err)
{
    CHECK_ON("split", y, a);
    CHECK_ON("split", y, b);
    if (a->ndim < 2 || b->ndim != a->ndim || y->ndim != a->ndim ||
        a->shape[0] != b->shape[0] || y->shape[0] != a->shape[0] ||
        spatial(a) != spatial(b) || spatial(y) != spatial(a) ||
        y->shape[1] != a->shape[1] + b->shape[1])
        return shape_fail(err, "split", "shapes do not join on dimension 1", a, b);
    CHECK_APART("split", a, y);
    CHECK_APART("split", b, y);
    CHECK_APART("split", a, b);
    return call_rc(err, "split", y, y->be->split(a, b, y));
}

int op_embed_backward(tensor *drows, const tensor *dy, const int32_t *ids,
                      int first_id, coin_error *err)
{
    CHECK_ON("embed_backward", drows, dy);
    if (drows->ndim != 2 || dy->ndim != 3)
        return shape_fail(err, "embed_backward", "expects drows [R, D] and dy [B, T, D]",
                          drows, dy);
    if (drows->shape[1] != dy->shape[2])
        return shape_fail(err, "embed_backward", "embedding widths differ", drows, dy);
    if (!ids || first_id < 0)
        return coin_fail(err, COIN_EINVAL, "embed_backward: no token ids, or first id %d",
                         first_id);
    CHECK_APART("embed_backward", drows, dy);
    return call_rc(err, "embed_backward", drows,
                   drows->be->embed_backward(drows, dy, ids, first_id));
}

int op_axpy(tensor *y, const tensor *x, float a, coin_error *err)
{
    CHECK_ON("axpy", y, x);
    if (y->n != x->n)
        return shape_fail(err, "axpy", "element counts differ", y, x);
    return call_rc(err, "axpy", y, y->be->axpy(y, x, a));
}
