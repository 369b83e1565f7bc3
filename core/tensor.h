/*
 * tensor.h - tensors, and the backend table that computes on them.
 *
 * A tensor is a shape plus a block of backend memory.  Model code never
 * touches that memory: it may live on a GPU.  It moves data with
 * tensor_upload / tensor_download and computes through the op_* wrappers
 * below, which check shapes (a mismatch is an error naming the op and both
 * shapes, not a crash) and dispatch through the tensor's backend.
 *
 * The op list is written once, in COIN_BACKEND_OPS; it expands into the
 * function-pointer fields of coin_backend (so a backend is a table, as in
 * ggml), into the list of op names, and into the wrappers' declarations.
 * The CPU backend (backend_cpu.c) is the readable reference; others
 * (cuda/) implement the same table and are checked op by op against it.
 * Compute is fp32 throughout; weights stored in F16/BF16 are widened on load.
 */
#ifndef COIN_TENSOR_H
#define COIN_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define TENSOR_MAX_DIMS 4

typedef struct coin_backend coin_backend;

typedef struct tensor {
    const coin_backend *be;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    int64_t n;          /* elements */
    void *mem;          /* backend memory (host memory only on the CPU backend) */
    /* A copy of mem's contents in a layout of the backend's choosing, made by
     * the backend on first use and owned by this tensor (the CPU backend
     * keeps a linear layer's weight packed for its GEMM kernel here).  It
     * goes stale when mem changes, so tensor_upload*, and the op wrappers for
     * the tensor an op writes, drop it; tensor_free frees it through
     * be->free_derived.  A struct copy of a tensor that has one must not be
     * freed (views are never freed), nor must writes bypass those calls. */
    void *derived;
} tensor;

/*
 * The ops.  Each is X(name, (arguments)) and returns 0 or a negative
 * coin_status.  Shapes, in the order of the arguments:
 *   linear     y[M,N] = x[M,K] w[N,K]^T + b[N]   (b may be NULL; M = all
 *              leading dims of x flattened)
 *   layernorm  y[M,D] = (x - mean) / sqrt(var + eps) * g[D] + b[D], per row
 *   add        y[n] = a[n] + b[n]   (y may alias a or b)
 *   gelu       y[n] = x * Phi(x), the exact erf form   (y may alias x)
 *   quick_gelu y[n] = x * sigmoid(1.702 x)            (y may alias x)
 *   attention  o[B,T,C] = softmax(q k^T / sqrt(C/heads)) v per head, with
 *              q[B,T,C], k[B,S,C], v[B,S,C]; causal masks key j > query i
 *   embed      y[B,T,D] = table[ids[b*T+t], :] + pos[t, :]; ids is host
 *              memory, checked against the table's row count by the wrapper
 *   conv2d     y[B,Co,Ho,Wo] = w[Co,Ci,KH,KW] * x[B,Ci,H,W] + b[Co] (b may be
 *              NULL), zero padding pad = {top, bottom, left, right}, stride s;
 *              Ho = (H + top + bottom - KH) / s + 1, likewise Wo
 *   group_norm y[B,C,...] = per (batch, group of C/groups channels) normalised
 *              x, times g[C] plus b[C] (biased variance)
 *   silu       y[n] = x / (1 + exp(-x))                    (y may alias x)
 *   upsample2x y[B,C,2H,2W] = x[B,C,H,W], nearest neighbour
 *   concat     y[B,Ca+Cb,...] = a[B,Ca,...] then b[B,Cb,...] on dim 1
 *   add_channel y[B,C,...] = x[B,C,...] + v[B,C] broadcast over the rest
 *              (y may alias x)
 *   transpose  y[B,N,M] = x[B,M,N] swapped in each batch
 *   geglu      y[M,I] = x[M,:I] * gelu(x[M,I:]) with x[M,2I]
 *   scale      y[n] = x[n] * s                             (y may alias x)
 *
 * Backward ops, for gradients of activations only (textual inversion never
 * needs a weight's gradient).  As in llm.c, arguments run: gradients out,
 * the gradient in (dy), the saved forward inputs, weights, sizes.  Each
 * recomputes what it needs (LayerNorm statistics, softmax rows) from the
 * saved inputs, so the forward pass stores nothing extra.  Unless noted,
 * an output must not share memory with an input (the wrappers refuse it).
 *   linear_backward     dx[M,K] = dy[M,N] w[N,K]
 *   layernorm_backward  dx[M,D] from dy[M,D], x[M,D], g[D], eps (the forward's
 *                       b is not needed)                  (dx may alias dy or x)
 *   group_norm_backward dx[B,C,...] from dy, x[B,C,...], g[C], groups, eps
 *                                                         (dx may alias dy or x)
 *   gelu_backward, quick_gelu_backward, silu_backward
 *                       dx[n] = dy[n] * f'(x[n])          (dx may alias dy or x)
 *   geglu_backward      dx[M,2I] from dy[M,I], x[M,2I]    (dx may alias x)
 *   attention_backward  dq[B,T,C], dk[B,S,C], dv[B,S,Cv] from dout[B,T,Cv] and
 *                       q, k, v, heads, causal as in attention
 *   conv2d_backward_input dx[B,Ci,H,W] from dy[B,Co,Ho,Wo], w[Co,Ci,KH,KW],
 *                       stride, pad as in conv2d (dx's H, W are the forward
 *                       input's: with stride 2 they do not follow from Ho, Wo)
 *   upsample2x_backward dx[B,C,H,W] = the sum of each 2x2 block of dy[B,C,2H,2W]
 *   split               a[B,Ca,...], b[B,Cb,...] = y[B,Ca+Cb,...] cut on dim 1
 *                       (the backward of concat)
 *   embed_backward      drows[R,D] += the sum of dy[b,t,:] over the positions
 *                       whose ids[b*T+t] (host memory) lies in [first_id,
 *                       first_id + R): the trigger rows' gradient, never the
 *                       whole vocabulary's; note it accumulates
 *   axpy                y[n] += a * x[n], for summing gradients  (x may alias y)
 */
#define COIN_BACKEND_OPS(X)                                                     \
    X(linear, (tensor *y, const tensor *x, const tensor *w, const tensor *b))  \
    X(layernorm, (tensor *y, const tensor *x, const tensor *g,                 \
                  const tensor *b, float eps))                                  \
    X(add, (tensor *y, const tensor *a, const tensor *b))                       \
    X(gelu, (tensor *y, const tensor *x))                                       \
    X(quick_gelu, (tensor *y, const tensor *x))                                 \
    X(attention, (tensor *o, const tensor *q, const tensor *k, const tensor *v, \
                  int heads, int causal))                                       \
    X(embed, (tensor *y, const tensor *table, const int32_t *ids,               \
              const tensor *pos))                                               \
    X(conv2d, (tensor *y, const tensor *x, const tensor *w, const tensor *b,    \
               int stride, const int pad[4]))                                   \
    X(group_norm, (tensor *y, const tensor *x, const tensor *g,                 \
                   const tensor *b, int groups, float eps))                     \
    X(silu, (tensor *y, const tensor *x))                                       \
    X(upsample2x, (tensor *y, const tensor *x))                                 \
    X(concat, (tensor *y, const tensor *a, const tensor *b))                    \
    X(add_channel, (tensor *y, const tensor *x, const tensor *v))               \
    X(transpose, (tensor *y, const tensor *x))                                  \
    X(geglu, (tensor *y, const tensor *x))                                      \
    X(scale, (tensor *y, const tensor *x, float s))                             \
    X(linear_backward, (tensor *dx, const tensor *dy, const tensor *w))         \
    X(layernorm_backward, (tensor *dx, const tensor *dy, const tensor *x,       \
                           const tensor *g, float eps))                         \
    X(group_norm_backward, (tensor *dx, const tensor *dy, const tensor *x,      \
                            const tensor *g, int groups, float eps))            \
    X(gelu_backward, (tensor *dx, const tensor *dy, const tensor *x))           \
    X(quick_gelu_backward, (tensor *dx, const tensor *dy, const tensor *x))     \
    X(silu_backward, (tensor *dx, const tensor *dy, const tensor *x))           \
    X(geglu_backward, (tensor *dx, const tensor *dy, const tensor *x))          \
    X(attention_backward, (tensor *dq, tensor *dk, tensor *dv,                  \
                           const tensor *dout, const tensor *q,                 \
                           const tensor *k, const tensor *v, int heads,         \
                           int causal))                                         \
    X(conv2d_backward_input, (tensor *dx, const tensor *dy, const tensor *w,    \
                              int stride, const int pad[4]))                    \
    X(upsample2x_backward, (tensor *dx, const tensor *dy))                      \
    X(split, (tensor *a, tensor *b, const tensor *y))                           \
    X(embed_backward, (tensor *drows, const tensor *dy, const int32_t *ids,     \
                       int first_id))                                           \
    X(axpy, (tensor *y, const tensor *x, float a))

struct coin_backend {
    const char *name;
    /* Memory: alloc returns NULL on failure; upload/download copy host floats. */
    void *(*alloc)(size_t bytes);
    void (*free)(void *mem);
    int (*upload)(void *dst, const float *src, size_t n);
    int (*download)(float *dst, const void *src, size_t n);
    /* Frees a tensor's derived data (NULL for a backend that never makes any). */
    void (*free_derived)(void *derived);
#define COIN_OP_FIELD(name, args) int(*name) args;
    COIN_BACKEND_OPS(COIN_OP_FIELD)
#undef COIN_OP_FIELD
};

/* The op names, in table order, and their count (for tests and reports). */
extern const char *const coin_op_names[];
extern const int coin_op_count;

/* The CPU reference backend (always present). */
const coin_backend *backend_cpu(void);

/* "cpu", "cuda" or "auto" (cuda when built with it and a device is there,
 * else cpu).  Asking for cuda in a build without it is an error that says
 * how to get it. */
int backend_by_name(const coin_backend **out, const char *name, coin_error *err);

/* Allocates t with the given shape on be (contents undefined). */
int tensor_alloc(tensor *t, const coin_backend *be, int ndim,
                 const int64_t *shape, coin_error *err);
/* Shorthands for 1-3 dims. */
int tensor_alloc1(tensor *t, const coin_backend *be, int64_t d0, coin_error *err);
int tensor_alloc2(tensor *t, const coin_backend *be, int64_t d0, int64_t d1,
                  coin_error *err);
int tensor_alloc3(tensor *t, const coin_backend *be, int64_t d0, int64_t d1,
                  int64_t d2, coin_error *err);
/* Frees t's memory and zeroes it; a zeroed tensor is fine. */
void tensor_free(tensor *t);
/* Copies n host floats in or out; n must equal t->n. */
int tensor_upload(tensor *t, const float *src, int64_t n, coin_error *err);
int tensor_download(const tensor *t, float *dst, int64_t n, coin_error *err);
/* Copies n host floats into or out of t starting at element offset
 * (offset + n must fit in t). */
int tensor_upload_range(tensor *t, int64_t offset, const float *src, int64_t n,
                        coin_error *err);
int tensor_download_range(const tensor *t, int64_t offset, float *dst, int64_t n,
                          coin_error *err);
/* "[2, 77, 768]" into buf. */
const char *tensor_shape_str(const tensor *t, char *buf, size_t len);

/* The checked wrappers: one per op, same arguments plus err. */
int op_linear(tensor *y, const tensor *x, const tensor *w, const tensor *b,
              coin_error *err);
int op_layernorm(tensor *y, const tensor *x, const tensor *g, const tensor *b,
                 float eps, coin_error *err);
int op_add(tensor *y, const tensor *a, const tensor *b, coin_error *err);
int op_gelu(tensor *y, const tensor *x, coin_error *err);
int op_quick_gelu(tensor *y, const tensor *x, coin_error *err);
int op_attention(tensor *o, const tensor *q, const tensor *k, const tensor *v,
                 int heads, int causal, coin_error *err);
int op_embed(tensor *y, const tensor *table, const int32_t *ids,
             const tensor *pos, coin_error *err);
int op_conv2d(tensor *y, const tensor *x, const tensor *w, const tensor *b,
              int stride, const int pad[4], coin_error *err);
int op_group_norm(tensor *y, const tensor *x, const tensor *g, const tensor *b,
                  int groups, float eps, coin_error *err);
int op_silu(tensor *y, const tensor *x, coin_error *err);
int op_upsample2x(tensor *y, const tensor *x, coin_error *err);
int op_concat(tensor *y, const tensor *a, const tensor *b, coin_error *err);
int op_add_channel(tensor *y, const tensor *x, const tensor *v, coin_error *err);
int op_transpose(tensor *y, const tensor *x, coin_error *err);
int op_geglu(tensor *y, const tensor *x, coin_error *err);
int op_scale(tensor *y, const tensor *x, float s, coin_error *err);

/* The backward ops' checked wrappers (see COIN_BACKEND_OPS for shapes). */
int op_linear_backward(tensor *dx, const tensor *dy, const tensor *w, coin_error *err);
int op_layernorm_backward(tensor *dx, const tensor *dy, const tensor *x,
                          const tensor *g, float eps, coin_error *err);
int op_group_norm_backward(tensor *dx, const tensor *dy, const tensor *x,
                           const tensor *g, int groups, float eps, coin_error *err);
int op_gelu_backward(tensor *dx, const tensor *dy, const tensor *x, coin_error *err);
int op_quick_gelu_backward(tensor *dx, const tensor *dy, const tensor *x,
                           coin_error *err);
int op_silu_backward(tensor *dx, const tensor *dy, const tensor *x, coin_error *err);
int op_geglu_backward(tensor *dx, const tensor *dy, const tensor *x, coin_error *err);
int op_attention_backward(tensor *dq, tensor *dk, tensor *dv, const tensor *dout,
                          const tensor *q, const tensor *k, const tensor *v,
                          int heads, int causal, coin_error *err);
int op_conv2d_backward_input(tensor *dx, const tensor *dy, const tensor *w,
                             int stride, const int pad[4], coin_error *err);
int op_upsample2x_backward(tensor *dx, const tensor *dy, coin_error *err);
int op_split(tensor *a, tensor *b, const tensor *y, coin_error *err);
int op_embed_backward(tensor *drows, const tensor *dy, const int32_t *ids,
                      int first_id, coin_error *err);
int op_axpy(tensor *y, const tensor *x, float a, coin_error *err);

/* Gives t a new shape with the same element count (no data moves). */
int tensor_reshape(tensor *t, int ndim, const int64_t *shape, coin_error *err);
/* Allocates a 4-dimensional tensor. */
int tensor_alloc4(tensor *t, const coin_backend *be, int64_t d0, int64_t d1,
                  int64_t d2, int64_t d3, coin_error *err);

#endif
