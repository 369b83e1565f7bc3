/*
 * test_ops.c - every CPU backend op against a direct, naive computation of
 * its definition (written out here, independent of backend_cpu.c), and the
 * wrappers' shape checks.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "core/tensor.h"
#include "test.h"

static void fill(float *x, int64_t n, unsigned seed)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = test_frand(&seed);
}

static float max_abs_diff(const float *a, const float *b, int64_t n)
{
    float m = 0;
    for (int64_t i = 0; i < n; i++)
        if (fabsf(a[i] - b[i]) > m || a[i] != a[i] || b[i] != b[i])
            m = a[i] != a[i] || b[i] != b[i] ? INFINITY : fabsf(a[i] - b[i]);
    return m;
}

/* A tensor of the given shape, filled from host data. */
static tensor make(int ndim, const int64_t *shape, const float *data)
{
    tensor t;
    coin_error err = {0};
    if (tensor_alloc(&t, backend_cpu(), ndim, shape, &err) ||
        tensor_upload(&t, data, t.n, &err))
        test_failed(__FILE__, __LINE__, "make: %s", err.msg);
    return t;
}

static void download(const tensor *t, float *dst)
{
    coin_error err = {0};
    if (tensor_download(t, dst, t->n, &err))
        test_failed(__FILE__, __LINE__, "download: %s", err.msg);
}

TEST(ops_linear_matches_definition)
{
    enum { M = 5, K = 37, N = 11 };
    float x[M * K], w[N * K], b[N], y[M * N], ref[M * N];
    fill(x, M * K, 1);
    fill(w, N * K, 2);
    fill(b, N, 3);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = b[j];
            for (int k = 0; k < K; k++)
                s += (double)x[i * K + k] * w[j * K + k];
            ref[i * N + j] = (float)s;
        }
    tensor tx = make(2, (int64_t[]){M, K}, x), tw = make(2, (int64_t[]){N, K}, w);
    tensor tb = make(1, (int64_t[]){N}, b), ty = make(2, (int64_t[]){M, N}, y);
    coin_error err = {0};
    REQUIRE_OK(op_linear(&ty, &tx, &tw, &tb, &err), &err);
    download(&ty, y);
    CHECK(max_abs_diff(y, ref, M * N) < 1e-5f);
    /* Without a bias. */
    REQUIRE_OK(op_linear(&ty, &tx, &tw, NULL, &err), &err);
    download(&ty, y);
    for (int j = 0; j < N; j++)
        ref[j] -= b[j];
    CHECK(max_abs_diff(y, ref, N) < 1e-5f);
    /* A weight of the wrong width is an error that names the shapes. */
    tensor bad = make(2, (int64_t[]){N, K - 1}, w);
    CHECK_EQ_INT(op_linear(&ty, &tx, &bad, &tb, &err), COIN_ESHAPE);
    CHECK_STR_CONTAINS(err.msg, "[5, 37]");
    tensor_free(&tx), tensor_free(&tw), tensor_free(&tb), tensor_free(&ty), tensor_free(&bad);
}

/* LayerNorm of M rows of width D against the definition in double, out of
 * place and in place. */
static void check_layernorm(int M, int D)
{
    float *x = malloc(sizeof(float) * M * D), *g = malloc(sizeof(float) * D);
    float *b = malloc(sizeof(float) * D), *y = malloc(sizeof(float) * M * D);
    float *ref = malloc(sizeof(float) * M * D);
    REQUIRE(x && g && b && y && ref);
    fill(x, M * D, 4);
    fill(g, D, 5);
    fill(b, D, 6);
    for (int i = 0; i < M; i++) {
        double mean = 0, var = 0;
        for (int j = 0; j < D; j++)
            mean += x[i * D + j] / (double)D;
        for (int j = 0; j < D; j++)
            var += (x[i * D + j] - mean) * (x[i * D + j] - mean) / D;
        for (int j = 0; j < D; j++)
            ref[i * D + j] = (float)((x[i * D + j] - mean) / sqrt(var + 1e-5) * g[j] + b[j]);
    }
    tensor tx = make(2, (int64_t[]){M, D}, x), tg = make(1, (int64_t[]){D}, g);
    tensor tb = make(1, (int64_t[]){D}, b), ty = make(2, (int64_t[]){M, D}, y);
    coin_error err = {0};
    REQUIRE_OK(op_layernorm(&ty, &tx, &tg, &tb, 1e-5f, &err), &err);
    download(&ty, y);
    CHECK_MSG(max_abs_diff(y, ref, M * D) < 1e-5f, "D=%d: %g", D, max_abs_diff(y, ref, M * D));
    /* In place gives the same. */
    REQUIRE_OK(op_layernorm(&tx, &tx, &tg, &tb, 1e-5f, &err), &err);
    download(&tx, y);
    CHECK_MSG(max_abs_diff(y, ref, M * D) < 1e-5f, "D=%d in place", D);
    tensor_free(&tx), tensor_free(&tg), tensor_free(&tb), tensor_free(&ty);
    free(x), free(g), free(b), free(y), free(ref);
}

TEST(ops_layernorm_matches_definition) { check_layernorm(3, 16); }

/* Widths that leave a ragged last vector (and the text encoders' 768, 1024). */
TEST(ops_layernorm_matches_definition_at_ragged_widths)
{
    static const int widths[] = {1, 5, 17, 37, 768, 1024};
    for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++)
        check_layernorm(7, widths[i]);
}

TEST(ops_activations_known_values)
{
    /* gelu(x) = x Phi(x); quick_gelu(x) = x sigmoid(1.702 x). */
    float x[5] = {-3.0f, -1.0f, 0.0f, 1.0f, 2.5f};
    float gelu_ref[5] = {-0.0040496941f, -0.15865525f, 0.0f, 0.84134475f, 2.4844758f};
    float y[5], q_ref[5];
    for (int i = 0; i < 5; i++)
        q_ref[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
    tensor tx = make(1, (int64_t[]){5}, x), ty = make(1, (int64_t[]){5}, x);
    coin_error err = {0};
    REQUIRE_OK(op_gelu(&ty, &tx, &err), &err);
    download(&ty, y);
    CHECK(max_abs_diff(y, gelu_ref, 5) < 1e-6f);
    REQUIRE_OK(op_quick_gelu(&ty, &tx, &err), &err);
    download(&ty, y);
    CHECK(max_abs_diff(y, q_ref, 5) < 1e-6f);
    tensor_free(&tx), tensor_free(&ty);
}

/* quick_gelu over its whole range (long enough for every vector path and a
 * ragged tail, in place as the text encoder calls it) against x sigmoid(1.702 x)
 * in double: within a few float roundings of the value, and the limits right. */
TEST(ops_quick_gelu_matches_definition_over_its_range)
{
    enum { N = 70001 };
    float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
    REQUIRE(x && y);
    for (int i = 0; i < N; i++)
        x[i] = -60.0f + 120.0f * (float)i / (N - 1);
    x[0] = -1e30f, x[1] = 1e30f, x[2] = INFINITY, x[3] = -0.0f, x[4] = 1e-30f;
    tensor t = make(1, (int64_t[]){N}, x);
    coin_error err = {0};
    REQUIRE_OK(op_quick_gelu(&t, &t, &err), &err);
    download(&t, y);
    int bad = 0;
    for (int i = 0; i < N && bad < 5; i++) {
        double ref = x[i] == INFINITY ? INFINITY : x[i] / (1.0 + exp(-1.702 * (double)x[i]));
        /* 1.702 x is rounded to float before e^: a relative error of up to
         * |1.702 x| u in the result, on top of a few roundings.  1e-30: below
         * it both sides are lost to float underflow anyway. */
        double tol = (8 + 1.702 * fabs((double)x[i])) * FLT_EPSILON * fabs(ref) + 1e-30;
        if (!(y[i] == ref || fabs(y[i] - ref) <= tol)) {
            bad++;
            CHECK_MSG(0, "quick_gelu(%.9g) = %.9g, expected %.9g", x[i], y[i], ref);
        }
    }
    tensor_free(&t);
    free(x), free(y);
}

/* gelu likewise against x Phi(x) in double (erfc, so the far negative side
 * is checked relative to its tiny value too). */
TEST(ops_gelu_matches_definition_over_its_range)
{
    enum { N = 70001 };
    float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
    REQUIRE(x && y);
    for (int i = 0; i < N; i++)
        x[i] = -14.0f + 28.0f * (float)i / (N - 1);
    x[0] = -1e30f, x[1] = 1e30f, x[2] = INFINITY, x[3] = -0.0f, x[4] = 1e-30f;
    tensor t = make(1, (int64_t[]){N}, x);
    coin_error err = {0};
    REQUIRE_OK(op_gelu(&t, &t, &err), &err);
    download(&t, y);
    int bad = 0;
    for (int i = 0; i < N && bad < 5; i++) {
        double z = (double)x[i] * M_SQRT1_2;
        double ref = x[i] == INFINITY ? INFINITY : 0.5 * x[i] * erfc(-z);
        /* x / sqrt 2 is rounded to float: on the negative side e^(-z^2)
         * turns that into a relative error of about 2 z^2 u. */
        double tol = (16 + 2 * z * z) * FLT_EPSILON * fabs(ref) + 1e-30;
        if (!(y[i] == ref || fabs(y[i] - ref) <= tol)) {
            bad++;
            CHECK_MSG(0, "gelu(%.9g) = %.9g, expected %.9g", x[i], y[i], ref);
        }
    }
    tensor_free(&t);
    free(x), free(y);
}

/* Multi-head attention written out with the full score matrix. */
static void attention_ref(float *o, const float *q, const float *k, const float *v,
                          int B, int T, int S, int C, int H, int causal)
{
    int hd = C / H;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                double *s = malloc((size_t)S * sizeof(double)), max = -1e30, sum = 0;
                for (int j = 0; j < S; j++) {
                    double dot = 0;
                    for (int d = 0; d < hd; d++)
                        dot += (double)q[(b * T + i) * C + h * hd + d] *
                               k[(b * S + j) * C + h * hd + d];
                    s[j] = causal && j > i ? -INFINITY : dot / sqrt(hd);
                    if (s[j] > max)
                        max = s[j];
                }
                for (int j = 0; j < S; j++)
                    sum += s[j] = exp(s[j] - max);
                for (int d = 0; d < hd; d++) {
                    double acc = 0;
                    for (int j = 0; j < S; j++)
                        acc += s[j] / sum * v[(b * S + j) * C + h * hd + d];
                    o[(b * T + i) * C + h * hd + d] = (float)acc;
                }
                free(s);
            }
}

/* Head widths and key counts that are not multiples of 16 (the vector
 * paths' masked tails), past one vector, with and without the causal mask. */
TEST(ops_attention_matches_definition_at_ragged_widths)
{
    enum { B = 2, T = 33, S = 37, C = 40, H = 2 };
    float *q = malloc(sizeof(float) * B * T * C), *k = malloc(sizeof(float) * B * S * C);
    float *v = malloc(sizeof(float) * B * S * C), *o = malloc(sizeof(float) * B * T * C);
    float *ref = malloc(sizeof(float) * B * T * C);
    REQUIRE(q && k && v && o && ref);
    fill(q, B * T * C, 17);
    fill(k, B * S * C, 18);
    fill(v, B * S * C, 19);
    coin_error err = {0};
    for (int causal = 0; causal < 2; causal++) {
        int keys = causal ? T : S;
        tensor tq = make(3, (int64_t[]){B, T, C}, q), tk = make(3, (int64_t[]){B, keys, C}, k);
        tensor tv = make(3, (int64_t[]){B, keys, C}, v), to = make(3, (int64_t[]){B, T, C}, o);
        REQUIRE_OK(op_attention(&to, &tq, &tk, &tv, H, causal, &err), &err);
        download(&to, o);
        attention_ref(ref, q, k, v, B, T, keys, C, H, causal);
        CHECK_MSG(max_abs_diff(o, ref, B * T * C) < 1e-5f, "causal %d: %g", causal,
                  max_abs_diff(o, ref, B * T * C));
        tensor_free(&tq), tensor_free(&tk), tensor_free(&tv), tensor_free(&to);
    }
    free(q), free(k), free(v), free(o), free(ref);
}

TEST(ops_attention_matches_definition)
{
    enum { B = 2, T = 7, S = 9, C = 12, H = 3 };
    float q[B * T * C], k[B * S * C], v[B * S * C], o[B * T * C], ref[B * T * C];
    fill(q, B * T * C, 7);
    fill(k, B * S * C, 8);
    fill(v, B * S * C, 9);
    tensor tq = make(3, (int64_t[]){B, T, C}, q), tk = make(3, (int64_t[]){B, S, C}, k);
    tensor tv = make(3, (int64_t[]){B, S, C}, v), to = make(3, (int64_t[]){B, T, C}, o);
    coin_error err = {0};
    REQUIRE_OK(op_attention(&to, &tq, &tk, &tv, H, 0, &err), &err);
    download(&to, o);
    attention_ref(ref, q, k, v, B, T, S, C, H, 0);
    CHECK(max_abs_diff(o, ref, B * T * C) < 1e-5f);
    /* Causal needs as many keys as queries. */
    CHECK_EQ_INT(op_attention(&to, &tq, &tk, &tv, H, 1, &err), COIN_ESHAPE);
    tensor tk2 = make(3, (int64_t[]){B, T, C}, k), tv2 = make(3, (int64_t[]){B, T, C}, v);
    REQUIRE_OK(op_attention(&to, &tq, &tk2, &tv2, H, 1, &err), &err);
    download(&to, o);
    attention_ref(ref, q, k, v, B, T, T, C, H, 1);
    CHECK(max_abs_diff(o, ref, B * T * C) < 1e-5f);
    /* The first query of a causal sequence sees only the first value. */
    for (int d = 0; d < C; d++)
        CHECK(fabsf(o[d] - v[d]) < 1e-6f);
    CHECK_EQ_INT(op_attention(&to, &tq, &tk2, &tv2, 5, 1, &err), COIN_ESHAPE);
    tensor_free(&tq), tensor_free(&tk), tensor_free(&tv), tensor_free(&to);
    tensor_free(&tk2), tensor_free(&tv2);
}

TEST(ops_embed_adds_positions_and_checks_ids)
{
    enum { V = 6, D = 4, P = 5, T = 3 };
    float table[V * D], pos[P * D], y[2 * T * D];
    fill(table, V * D, 10);
    fill(pos, P * D, 11);
    int32_t ids[2 * T] = {5, 0, 3, 1, 1, 2};
    tensor tt = make(2, (int64_t[]){V, D}, table), tp = make(2, (int64_t[]){P, D}, pos);
    tensor ty = make(3, (int64_t[]){2, T, D}, y);
    coin_error err = {0};
    REQUIRE_OK(op_embed(&ty, &tt, ids, &tp, &err), &err);
    download(&ty, y);
    for (int i = 0; i < 2 * T; i++)
        for (int d = 0; d < D; d++)
            CHECK(y[i * D + d] == table[ids[i] * D + d] + pos[(i % T) * D + d]);
    ids[4] = V;
    CHECK_EQ_INT(op_embed(&ty, &tt, ids, &tp, &err), COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "token id 6");
    tensor_free(&tt), tensor_free(&tp), tensor_free(&ty);
}

TEST(ops_table_is_complete)
{
    const coin_backend *be = backend_cpu();
    /* Every op in the X-macro list has a CPU implementation. */
    const void *const *fields = (const void *const *)&be->linear;
    for (int i = 0; i < coin_op_count; i++)
        CHECK_MSG(fields[i] != NULL, "cpu backend lacks %s", coin_op_names[i]);
    CHECK(!strcmp(coin_op_names[0], "linear"));
    const coin_backend *auto_be;
    coin_error err = {0};
    REQUIRE_OK(backend_by_name(&auto_be, "auto", &err), &err);
    CHECK(auto_be == be);
    CHECK_EQ_INT(backend_by_name(&auto_be, "tpu", &err), COIN_EINVAL);
}

TEST(ops_attention_long_sequences_in_blocks)
{
    /* Over 128 x 128 scores the CPU backend switches to blocked GEMMs; at
     * 1100 x 1100 the rows split into two blocks. */
    enum { B = 1, T = 1100, C = 16, H = 2 };
    float *q = malloc(sizeof(float) * T * C), *k = malloc(sizeof(float) * T * C);
    float *v = malloc(sizeof(float) * T * C), *o = malloc(sizeof(float) * T * C);
    float *ref = malloc(sizeof(float) * T * C);
    REQUIRE(q && k && v && o && ref);
    fill(q, T * C, 21);
    fill(k, T * C, 22);
    fill(v, T * C, 23);
    tensor tq = make(3, (int64_t[]){B, T, C}, q), tk = make(3, (int64_t[]){B, T, C}, k);
    tensor tv = make(3, (int64_t[]){B, T, C}, v), to = make(3, (int64_t[]){B, T, C}, o);
    coin_error err = {0};
    for (int causal = 0; causal < 2; causal++) {
        REQUIRE_OK(op_attention(&to, &tq, &tk, &tv, H, causal, &err), &err);
        download(&to, o);
        attention_ref(ref, q, k, v, B, T, T, C, H, causal);
        CHECK_MSG(max_abs_diff(o, ref, T * C) < 1e-5f, "causal %d: %g", causal,
                  max_abs_diff(o, ref, T * C));
    }
    tensor_free(&tq), tensor_free(&tk), tensor_free(&tv), tensor_free(&to);
    free(q), free(k), free(v), free(o), free(ref);
}

static void conv_ref(float *y, const float *x, const float *w, const float *b, int B, int Ci,
                     int H, int W, int Co, int KH, int KW, int stride, const int pad[4],
                     int Ho, int Wo)
{
    for (int n = 0; n < B; n++)
        for (int co = 0; co < Co; co++)
            for (int oy = 0; oy < Ho; oy++)
                for (int ox = 0; ox < Wo; ox++) {
                    double s = b ? b[co] : 0;
                    for (int ci = 0; ci < Ci; ci++)
                        for (int ky = 0; ky < KH; ky++)
                            for (int kx = 0; kx < KW; kx++) {
                                int iy = oy * stride + ky - pad[0], ix = ox * stride + kx - pad[2];
                                if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                                    s += (double)x[((n * Ci + ci) * H + iy) * W + ix] *
                                         w[((co * Ci + ci) * KH + ky) * KW + kx];
                            }
                    y[((n * Co + co) * Ho + oy) * Wo + ox] = (float)s;
                }
}

static void check_conv(int B, int Ci, int H, int W, int Co, int K, int stride, const int pad[4])
{
    int Ho = (H + pad[0] + pad[1] - K) / stride + 1, Wo = (W + pad[2] + pad[3] - K) / stride + 1;
    int64_t nx = (int64_t)B * Ci * H * W, nw = (int64_t)Co * Ci * K * K, ny = (int64_t)B * Co * Ho * Wo;
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *b = malloc(Co * 4), *y = malloc(ny * 4),
          *ref = malloc(ny * 4);
    fill(x, nx, 31);
    fill(w, nw, 32);
    fill(b, Co, 33);
    conv_ref(ref, x, w, b, B, Ci, H, W, Co, K, K, stride, pad, Ho, Wo);
    tensor tx = make(4, (int64_t[]){B, Ci, H, W}, x), tw = make(4, (int64_t[]){Co, Ci, K, K}, w);
    tensor tb = make(1, (int64_t[]){Co}, b), ty = make(4, (int64_t[]){B, Co, Ho, Wo}, ref);
    coin_error err = {0};
    if (op_conv2d(&ty, &tx, &tw, &tb, stride, pad, &err))
        test_failed(__FILE__, __LINE__, "%s", err.msg);
    download(&ty, y);
    float e = max_abs_diff(y, ref, ny);
    CHECK_MSG(e < 1e-4f, "conv %dx%d stride %d pad %d,%d,%d,%d on %dx%dx%d: error %g", K, K,
              stride, pad[0], pad[1], pad[2], pad[3], Ci, H, W, e);
    tensor_free(&tx), tensor_free(&tw), tensor_free(&tb), tensor_free(&ty);
    free(x), free(w), free(b), free(y), free(ref);
}

TEST(ops_conv2d_matches_definition)
{
    check_conv(2, 3, 9, 7, 5, 3, 1, (int[]){1, 1, 1, 1});     /* UNet/VAE 3x3 */
    check_conv(1, 4, 10, 10, 6, 3, 2, (int[]){1, 1, 1, 1});   /* UNet downsample */
    check_conv(1, 4, 10, 10, 6, 3, 2, (int[]){0, 1, 0, 1});   /* VAE downsample */
    check_conv(2, 8, 5, 6, 3, 1, 1, (int[]){0, 0, 0, 0});     /* 1x1 shortcut */
    check_conv(1, 64, 64, 64, 4, 3, 1, (int[]){1, 1, 1, 1});  /* several row bands */
    /* A kernel whose input channels differ is refused. */
    float x[2 * 4 * 4] = {0}, w[3 * 3 * 3 * 3] = {0}, y[2 * 3 * 4 * 4];
    tensor tx = make(4, (int64_t[]){1, 2, 4, 4}, x), tw = make(4, (int64_t[]){3, 3, 3, 3}, w);
    tensor ty = make(4, (int64_t[]){1, 3, 4, 4}, y);
    coin_error err = {0};
    CHECK_EQ_INT(op_conv2d(&ty, &tx, &tw, NULL, 1, (int[]){1, 1, 1, 1}, &err), COIN_ESHAPE);
    tensor_free(&tx), tensor_free(&tw), tensor_free(&ty);
}

TEST(ops_group_norm_matches_definition)
{
    enum { B = 2, C = 6, G = 3, S = 10 };
    float x[B * C * S], g[C], b[C], y[B * C * S], ref[B * C * S];
    fill(x, B * C * S, 41);
    fill(g, C, 42);
    fill(b, C, 43);
    for (int n = 0; n < B; n++)
        for (int grp = 0; grp < G; grp++) {
            int cg = C / G, base = (n * C + grp * cg) * S;
            double mean = 0, var = 0;
            for (int i = 0; i < cg * S; i++)
                mean += x[base + i] / (double)(cg * S);
            for (int i = 0; i < cg * S; i++)
                var += (x[base + i] - mean) * (x[base + i] - mean) / (cg * S);
            for (int i = 0; i < cg * S; i++) {
                int c = grp * cg + i / S;
                ref[base + i] = (float)((x[base + i] - mean) / sqrt(var + 1e-6) * g[c] + b[c]);
            }
        }
    tensor tx = make(3, (int64_t[]){B, C, S}, x), tg = make(1, (int64_t[]){C}, g);
    tensor tb = make(1, (int64_t[]){C}, b), ty = make(3, (int64_t[]){B, C, S}, y);
    coin_error err = {0};
    REQUIRE_OK(op_group_norm(&ty, &tx, &tg, &tb, G, 1e-6f, &err), &err);
    download(&ty, y);
    CHECK(max_abs_diff(y, ref, B * C * S) < 1e-5f);
    CHECK_EQ_INT(op_group_norm(&ty, &tx, &tg, &tb, 4, 1e-6f, &err), COIN_ESHAPE);
    tensor_free(&tx), tensor_free(&tg), tensor_free(&tb), tensor_free(&ty);
}

TEST(ops_shape_ops_move_the_right_values)
{
    enum { B = 2, C = 3, H = 2, W = 3 };
    float x[B * C * H * W], y[B * C * 4 * H * W], v[B * C];
    fill(x, B * C * H * W, 51);
    fill(v, B * C, 52);
    coin_error err = {0};
    tensor tx = make(4, (int64_t[]){B, C, H, W}, x);
    /* upsample2x: every output pixel copies its nearest input pixel. */
    tensor tu = make(4, (int64_t[]){B, C, 2 * H, 2 * W}, y);
    REQUIRE_OK(op_upsample2x(&tu, &tx, &err), &err);
    download(&tu, y);
    for (int p = 0; p < B * C; p++)
        for (int i = 0; i < 2 * H; i++)
            for (int j = 0; j < 2 * W; j++)
                CHECK(y[(p * 2 * H + i) * 2 * W + j] == x[(p * H + i / 2) * W + j / 2]);
    /* concat on channels: a's channels, then b's, per batch. */
    tensor tc = make(4, (int64_t[]){B, 2 * C, H, W}, y);
    REQUIRE_OK(op_concat(&tc, &tx, &tx, &err), &err);
    download(&tc, y);
    for (int n = 0; n < B; n++)
        for (int i = 0; i < C * H * W; i++) {
            CHECK(y[n * 2 * C * H * W + i] == x[n * C * H * W + i]);
            CHECK(y[n * 2 * C * H * W + C * H * W + i] == x[n * C * H * W + i]);
        }
    /* add_channel broadcasts v[b, c] over the pixels. */
    tensor tv = make(2, (int64_t[]){B, C}, v), ta = make(4, (int64_t[]){B, C, H, W}, x);
    REQUIRE_OK(op_add_channel(&ta, &tx, &tv, &err), &err);
    download(&ta, y);
    for (int i = 0; i < B * C * H * W; i++)
        CHECK(y[i] == x[i] + v[i / (H * W)]);
    /* transpose [B, C, H*W] -> [B, H*W, C]. */
    REQUIRE_OK(tensor_reshape(&tx, 3, (int64_t[]){B, C, H * W}, &err), &err);
    tensor tt = make(3, (int64_t[]){B, H * W, C}, x);
    REQUIRE_OK(op_transpose(&tt, &tx, &err), &err);
    download(&tt, y);
    for (int n = 0; n < B; n++)
        for (int c = 0; c < C; c++)
            for (int s = 0; s < H * W; s++)
                CHECK(y[(n * H * W + s) * C + c] == x[(n * C + c) * H * W + s]);
    /* geglu: value half times gelu of the gate half. */
    tensor tg = make(2, (int64_t[]){B * C, W}, x);
    REQUIRE_OK(tensor_reshape(&tx, 2, (int64_t[]){B * C, 2 * W}, &err), &err);
    REQUIRE_OK(op_geglu(&tg, &tx, &err), &err);
    download(&tg, y);
    for (int r = 0; r < B * C; r++)
        for (int j = 0; j < W; j++) {
            float val = x[r * 2 * W + j], gate = x[r * 2 * W + W + j];
            float want = val * 0.5f * gate * (1.0f + erff(gate / sqrtf(2.0f)));
            CHECK(fabsf(y[r * W + j] - want) < 1e-6f);
        }
    /* silu and scale. */
    REQUIRE_OK(op_silu(&ta, &ta, &err), &err);
    REQUIRE_OK(op_scale(&ta, &ta, -2.0f, &err), &err);
    float z[B * C * H * W];
    download(&ta, z);
    for (int i = 0; i < B * C * H * W; i++) {
        float a = x[i] + v[i / (H * W)];
        CHECK(fabsf(z[i] - -2.0f * a / (1.0f + expf(-a))) < 1e-6f);
    }
    CHECK_EQ_INT(tensor_reshape(&tx, 2, (int64_t[]){5, 5}, &err), COIN_ESHAPE);
    tensor_free(&tx), tensor_free(&tu), tensor_free(&tc), tensor_free(&tv), tensor_free(&ta);
    tensor_free(&tt), tensor_free(&tg);
}
