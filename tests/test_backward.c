/*
 * test_backward.c - the backward ops, each checked two independent ways:
 *
 *  1. Against a naive double-precision computation of the analytic gradient,
 *     written out here without reference to backend_cpu.c: to 1e-5 of
 *     max(1, the largest expected value).  Sizes are small and odd, and for
 *     attention and conv2d also large enough to take several query blocks or
 *     row bands.  The normalisations' reference is the explicit Jacobian
 *     product, not the closed form the backend uses.
 *
 *  2. Against central finite differences of the float forward op itself: for
 *     L(x) = sum(r * f(x)) with a fixed random r, (L(x+h) - L(x-h)) / 2h per
 *     coordinate, h = FD_H, on a sample of coordinates, must match the
 *     backward op's dx (given dy = r) to FD_RTOL (1e-2) relative to
 *     |dx_i| + rms(dx).  The rms term stops a coordinate whose gradient is
 *     near zero from asking for a relative accuracy that differences of
 *     float forward passes cannot give; 1e-2 leaves room for float rounding
 *     in L divided by 2h and the O(h^2) truncation.
 *
 * And the wrappers: wrong shapes are ESHAPE errors that name the shapes,
 * outputs that overlap inputs they would clobber are refused.
 *
 * Outputs start as NaN, so an op that leaves part of its output unwritten
 * fails the comparison.
 */
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>

#include "core/tensor.h"
#include "test.h"

#define GRAD_TOL 1e-5
#define FD_H 1e-2f
#define FD_RTOL 1e-2
#define FD_SAMPLES 16

/* n uniform values in [-scale, scale). */
static float *rnd(int64_t n, unsigned seed, float scale)
{
    float *x = malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; x && i < n; i++)
        x[i] = scale * test_frand(&seed);
    return x;
}

static tensor make(int ndim, const int64_t *shape, const float *data)
{
    tensor t;
    coin_error err = {0};
    if (tensor_alloc(&t, backend_cpu(), ndim, shape, &err))
        test_failed(__FILE__, __LINE__, "make: %s", err.msg);
    else if (data && tensor_upload(&t, data, t.n, &err))
        test_failed(__FILE__, __LINE__, "make: %s", err.msg);
    else if (!data)
        for (int64_t i = 0; i < t.n; i++)
            ((float *)t.mem)[i] = NAN;
    return t;
}

/* A tensor with the given shape, full of NaN. */
static tensor make_out(int ndim, const int64_t *shape) { return make(ndim, shape, NULL); }

static float *fetch(const tensor *t)
{
    coin_error err = {0};
    float *host = malloc((size_t)t->n * sizeof(float));
    if (host && tensor_download(t, host, t->n, &err))
        test_failed(__FILE__, __LINE__, "download: %s", err.msg);
    return host;
}

/* Largest |got - want| over max(1, largest |want|); NaN counts as infinite. */
static double rel_err(const float *got, const double *want, int64_t n)
{
    double worst = 0, big = 1;
    for (int64_t i = 0; i < n; i++)
        big = fabs(want[i]) > big ? fabs(want[i]) : big;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(got[i] - want[i]);
        if (e != e)
            return INFINITY;
        worst = e > worst ? e : worst;
    }
    return worst / big;
}

#define CHECK_GRAD(what, got, want, n)                                           \
    do {                                                                         \
        double e_ = rel_err(got, want, n);                                       \
        CHECK_MSG(e_ <= GRAD_TOL, "%s: off the analytic gradient by %.3g", what, e_); \
    } while (0)

/* ---- finite differences ----
 *
 * A forward op with its inputs on the host: fwd_loss uploads them, runs the
 * op and returns sum(r * y) in double.  fd_check perturbs one host input in
 * place, a coordinate at a time.
 */
typedef struct fwd fwd;
struct fwd {
    int (*run)(fwd *f, coin_error *err);
    int n_in;
    tensor in[4];
    const float *host[4];
    tensor y;
    const float *r;
    /* The op's parameters. */
    int heads, causal, stride, groups, pad[4];
    float eps;
    const int32_t *ids;
};

static void fwd_input(fwd *f, int ndim, const int64_t *shape, const float *host)
{
    f->in[f->n_in] = make(ndim, shape, host);
    f->host[f->n_in++] = host;
}

static void fwd_free(fwd *f)
{
    for (int i = 0; i < f->n_in; i++)
        tensor_free(&f->in[i]);
    tensor_free(&f->y);
}

static double fwd_loss(fwd *f)
{
    coin_error err = {0};
    for (int i = 0; i < f->n_in; i++)
        if (tensor_upload(&f->in[i], f->host[i], f->in[i].n, &err))
            test_failed(__FILE__, __LINE__, "upload: %s", err.msg);
    if (f->run(f, &err))
        test_failed(__FILE__, __LINE__, "forward: %s", err.msg);
    float *y = fetch(&f->y);
    double sum = 0;
    for (int64_t i = 0; i < f->y.n; i++)
        sum += (double)f->r[i] * y[i];
    free(y);
    return sum;
}

/* grad (n values) against central differences of the loss in x, which is
 * one of f's host inputs, at `samples` coordinates in [lo, lo + count)
 * (count 0: all of x).
 *
 * The forward passes run on one thread: they are hundreds of small ops, on
 * which thread start-up and barriers cost more than the work, many times
 * more when the machine's cores are shared.  The backward ops under test
 * run with the usual threads. */
static void fd_check_range(const char *what, fwd *f, float *x, int64_t n, const float *grad,
                           int64_t lo, int64_t count, int samples)
{
    if (!count)
        count = n;
    int omp_threads = omp_get_max_threads(), blas_threads = openblas_get_num_threads();
    omp_set_num_threads(1);
    openblas_set_num_threads(1);
    double rms = 0, worst = 0;
    for (int64_t i = 0; i < n; i++)
        rms += (double)grad[i] * grad[i];
    rms = sqrt(rms / (double)n);
    int64_t worst_i = -1;
    double worst_fd = 0;
    for (int s = 0; s < samples && s < count; s++) {
        /* Every coordinate when few, else a spread of them. */
        int64_t i = lo + (count <= samples ? s
                                           : (int64_t)((s * 2654435761u + 977u) % (uint64_t)count));
        float keep = x[i], up = keep + FD_H, down = keep - FD_H;
        x[i] = up;
        double lu = fwd_loss(f);
        x[i] = down;
        double ld = fwd_loss(f);
        x[i] = keep;
        double fd = (lu - ld) / ((double)up - down);
        double e = fabs(fd - grad[i]) / (fabs(grad[i]) + rms + 1e-30);
        if (e > worst) {
            worst = e;
            worst_i = i;
            worst_fd = fd;
        }
    }
    omp_set_num_threads(omp_threads);
    openblas_set_num_threads(blas_threads);
    CHECK_MSG(worst <= FD_RTOL,
              "%s: finite differences disagree by %.3g (tolerance %g) at %lld: "
              "%.6g, backward %.6g", what, worst, FD_RTOL, (long long)worst_i, worst_fd,
              worst_i >= 0 ? grad[worst_i] : 0.0);
}

static void fd_check(const char *what, fwd *f, float *x, int64_t n, const float *grad)
{
    fd_check_range(what, f, x, n, grad, 0, 0, FD_SAMPLES);
}

/* ---- linear ---- */

static int run_linear(fwd *f, coin_error *err)
{
    return op_linear(&f->y, &f->in[0], &f->in[1], NULL, err);
}

TEST(backward_linear)
{
    enum { M = 5, K = 37, N = 11 };
    float *x = rnd(M * K, 1, 1), *w = rnd(N * K, 2, 1), *r = rnd(M * N, 3, 1);
    double want[M * K];
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++) {
            double s = 0;
            for (int n = 0; n < N; n++)
                s += (double)r[m * N + n] * w[n * K + k];
            want[m * K + k] = s;
        }
    tensor dy = make(2, (int64_t[]){M, N}, r), tw = make(2, (int64_t[]){N, K}, w);
    tensor dx = make_out(2, (int64_t[]){M, K});
    coin_error err = {0};
    REQUIRE_OK(op_linear_backward(&dx, &dy, &tw, &err), &err);
    float *got = fetch(&dx);
    CHECK_GRAD("linear", got, want, M * K);

    fwd f = {.run = run_linear, .r = r};
    fwd_input(&f, 2, (int64_t[]){M, K}, x);
    fwd_input(&f, 2, (int64_t[]){N, K}, w);
    f.y = make_out(2, (int64_t[]){M, N});
    fd_check("linear", &f, x, M * K, got);
    fwd_free(&f);

    /* Shapes: dy's width must be w's rows, dx's w's columns. */
    tensor bad = make_out(2, (int64_t[]){M, K + 1});
    CHECK_EQ_INT(op_linear_backward(&bad, &dy, &tw, &err), COIN_ESHAPE);
    CHECK_STR_CONTAINS(err.msg, "linear_backward");
    CHECK_STR_CONTAINS(err.msg, "[5, 38]");
    CHECK_EQ_INT(op_linear_backward(&dx, &dx, &tw, &err), COIN_ESHAPE);
    /* An output over its own input is refused. */
    tensor sq = make_out(2, (int64_t[]){N, N});
    CHECK_EQ_INT(op_linear_backward(&sq, &sq, &sq, &err), COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "share memory");
    tensor_free(&dy), tensor_free(&tw), tensor_free(&dx), tensor_free(&bad), tensor_free(&sq);
    free(x), free(w), free(r), free(got);
}

/* ---- normalisations ---- */

/* dx = J^T dy for y = xhat * gam over one normalised set of n values, J
 * written out: d xhat_i / d x_j = rstd (delta_ij - 1/n - xhat_i xhat_j / n). */
static void norm_vjp_ref(double *dx, const float *dy, const float *x, const float *gam,
                         int n, double eps)
{
    double mean = 0, var = 0;
    for (int i = 0; i < n; i++)
        mean += x[i] / (double)n;
    for (int i = 0; i < n; i++)
        var += (x[i] - mean) * (x[i] - mean) / n;
    double rstd = 1 / sqrt(var + eps);
    for (int j = 0; j < n; j++) {
        double s = 0, xj = (x[j] - mean) * rstd;
        for (int i = 0; i < n; i++) {
            double xi = (x[i] - mean) * rstd;
            s += (double)dy[i] * gam[i] * rstd * ((i == j) - 1.0 / n - xi * xj / n);
        }
        dx[j] = s;
    }
}

static int run_layernorm(fwd *f, coin_error *err)
{
    return op_layernorm(&f->y, &f->in[0], &f->in[1], &f->in[2], f->eps, err);
}

TEST(backward_layernorm)
{
    enum { M = 3, D = 17 };
    float *x = rnd(M * D, 4, 2), *g = rnd(D, 5, 1.5f), *b = rnd(D, 6, 1), *r = rnd(M * D, 7, 1);
    for (int j = 0; j < D; j++)
        x[j] += 3; /* a row with a mean far from zero */
    double want[M * D];
    for (int i = 0; i < M; i++)
        norm_vjp_ref(want + i * D, r + i * D, x + i * D, g, D, 1e-5);
    tensor dy = make(2, (int64_t[]){M, D}, r), tx = make(2, (int64_t[]){M, D}, x);
    tensor tg = make(1, (int64_t[]){D}, g), dx = make_out(2, (int64_t[]){M, D});
    coin_error err = {0};
    REQUIRE_OK(op_layernorm_backward(&dx, &dy, &tx, &tg, 1e-5f, &err), &err);
    float *got = fetch(&dx);
    CHECK_GRAD("layernorm", got, want, M * D);
    /* In place over dy gives the same. */
    REQUIRE_OK(op_layernorm_backward(&dy, &dy, &tx, &tg, 1e-5f, &err), &err);
    float *inplace = fetch(&dy);
    CHECK_GRAD("layernorm in place", inplace, want, M * D);

    fwd f = {.run = run_layernorm, .r = r, .eps = 1e-5f};
    fwd_input(&f, 2, (int64_t[]){M, D}, x);
    fwd_input(&f, 1, (int64_t[]){D}, g);
    fwd_input(&f, 1, (int64_t[]){D}, b);
    f.y = make_out(2, (int64_t[]){M, D});
    fd_check("layernorm", &f, x, M * D, got);
    fwd_free(&f);

    tensor bad = make_out(1, (int64_t[]){D - 1});
    CHECK_EQ_INT(op_layernorm_backward(&dx, &dy, &tx, &bad, 1e-5f, &err), COIN_ESHAPE);
    CHECK_STR_CONTAINS(err.msg, "[16]");
    tensor wide = make_out(2, (int64_t[]){M, D + 1});
    CHECK_EQ_INT(op_layernorm_backward(&wide, &dy, &tx, &tg, 1e-5f, &err), COIN_ESHAPE);
    tensor_free(&dy), tensor_free(&tx), tensor_free(&tg), tensor_free(&dx);
    tensor_free(&bad), tensor_free(&wide);
    free(x), free(g), free(b), free(r), free(got), free(inplace);
}

static int run_group_norm(fwd *f, coin_error *err)
{
    return op_group_norm(&f->y, &f->in[0], &f->in[1], &f->in[2], f->groups, f->eps, err);
}

TEST(backward_group_norm)
{
    enum { B = 2, C = 6, G = 3, H = 5, W = 3, S = H * W, N = B * C * S };
    float *x = rnd(N, 41, 2), *g = rnd(C, 42, 1.5f), *b = rnd(C, 43, 1), *r = rnd(N, 44, 1);
    double want[N];
    for (int n = 0; n < B; n++)
        for (int grp = 0; grp < G; grp++) {
            int cg = C / G, base = (n * C + grp * cg) * S;
            float gam[C / G * S];
            for (int i = 0; i < cg * S; i++)
                gam[i] = g[grp * cg + i / S];
            norm_vjp_ref(want + base, r + base, x + base, gam, cg * S, 1e-6);
        }
    int64_t shape[4] = {B, C, H, W};
    tensor dy = make(4, shape, r), tx = make(4, shape, x), tg = make(1, (int64_t[]){C}, g);
    tensor dx = make_out(4, shape);
    coin_error err = {0};
    REQUIRE_OK(op_group_norm_backward(&dx, &dy, &tx, &tg, G, 1e-6f, &err), &err);
    float *got = fetch(&dx);
    CHECK_GRAD("group_norm", got, want, N);
    REQUIRE_OK(op_group_norm_backward(&dy, &dy, &tx, &tg, G, 1e-6f, &err), &err);
    float *inplace = fetch(&dy);
    CHECK_GRAD("group_norm in place", inplace, want, N);

    fwd f = {.run = run_group_norm, .r = r, .groups = G, .eps = 1e-6f};
    fwd_input(&f, 4, shape, x);
    fwd_input(&f, 1, (int64_t[]){C}, g);
    fwd_input(&f, 1, (int64_t[]){C}, b);
    f.y = make_out(4, shape);
    fd_check("group_norm", &f, x, N, got);
    fwd_free(&f);

    CHECK_EQ_INT(op_group_norm_backward(&dx, &dy, &tx, &tg, 4, 1e-6f, &err), COIN_ESHAPE);
    CHECK_STR_CONTAINS(err.msg, "6 channels in 4 groups");
    tensor bad = make_out(1, (int64_t[]){C + 1});
    CHECK_EQ_INT(op_group_norm_backward(&dx, &dy, &tx, &bad, G, 1e-6f, &err), COIN_ESHAPE);
    tensor_free(&dy), tensor_free(&tx), tensor_free(&tg), tensor_free(&dx), tensor_free(&bad);
    free(x), free(g), free(b), free(r), free(got), free(inplace);
}

/* ---- element-wise activations ---- */

/* Phi(x) + x phi(x) */
static double gelu_d(double x)
{
    return 0.5 * erfc(-x / sqrt(2)) + x * exp(-x * x / 2) / sqrt(2 * M_PI);
}
static double sig(double x) { return 1 / (1 + exp(-x)); }
static double quick_gelu_d(double x)
{
    return sig(1.702 * x) + 1.702 * x * sig(1.702 * x) * (1 - sig(1.702 * x));
}
static double silu_d(double x) { return sig(x) + x * sig(x) * (1 - sig(x)); }

static int run_gelu(fwd *f, coin_error *err) { return op_gelu(&f->y, &f->in[0], err); }
static int run_quick_gelu(fwd *f, coin_error *err) { return op_quick_gelu(&f->y, &f->in[0], err); }
static int run_silu(fwd *f, coin_error *err) { return op_silu(&f->y, &f->in[0], err); }

TEST(backward_activations)
{
    enum { N = 41 };
    struct {
        const char *name;
        int (*backward)(tensor *, const tensor *, const tensor *, coin_error *);
        int (*forward)(fwd *, coin_error *);
        double (*deriv)(double);
    } acts[] = {
        {"gelu", op_gelu_backward, run_gelu, gelu_d},
        {"quick_gelu", op_quick_gelu_backward, run_quick_gelu, quick_gelu_d},
        {"silu", op_silu_backward, run_silu, silu_d},
    };
    /* [-5, 5): both tails and the bend. */
    float *x = rnd(N, 61, 5), *r = rnd(N, 62, 1);
    tensor dy = make(1, (int64_t[]){N}, r), tx = make(1, (int64_t[]){N}, x);
    tensor dx = make_out(1, (int64_t[]){N}), bad = make_out(1, (int64_t[]){N + 1});
    coin_error err = {0};
    for (size_t a = 0; a < sizeof acts / sizeof acts[0]; a++) {
        double want[N];
        for (int i = 0; i < N; i++)
            want[i] = r[i] * acts[a].deriv(x[i]);
        REQUIRE_OK(acts[a].backward(&dx, &dy, &tx, &err), &err);
        float *got = fetch(&dx);
        CHECK_GRAD(acts[a].name, got, want, N);

        fwd f = {.run = acts[a].forward, .r = r};
        fwd_input(&f, 1, (int64_t[]){N}, x);
        f.y = make_out(1, (int64_t[]){N});
        fd_check(acts[a].name, &f, x, N, got);
        fwd_free(&f);

        /* In place over dy (the usual way: the gradient buffer is reused). */
        tensor tmp = make(1, (int64_t[]){N}, r);
        REQUIRE_OK(acts[a].backward(&tmp, &tmp, &tx, &err), &err);
        float *inplace = fetch(&tmp);
        CHECK_GRAD(acts[a].name, inplace, want, N);
        CHECK_EQ_INT(acts[a].backward(&bad, &dy, &tx, &err), COIN_ESHAPE);
        CHECK_STR_CONTAINS(err.msg, acts[a].name);
        CHECK_EQ_INT(acts[a].backward(&dx, &bad, &tx, &err), COIN_ESHAPE);
        tensor_free(&tmp);
        free(got), free(inplace);
    }
    tensor_free(&dy), tensor_free(&tx), tensor_free(&dx), tensor_free(&bad);
    free(x), free(r);
}

static int run_geglu(fwd *f, coin_error *err) { return op_geglu(&f->y, &f->in[0], err); }

TEST(backward_geglu)
{
    enum { M = 3, HALF = 7 };
    float *x = rnd(M * 2 * HALF, 71, 3), *r = rnd(M * HALF, 72, 1);
    double want[M * 2 * HALF];
    for (int m = 0; m < M; m++)
        for (int j = 0; j < HALF; j++) {
            double val = x[m * 2 * HALF + j], gate = x[m * 2 * HALF + HALF + j];
            double dy = r[m * HALF + j];
            want[m * 2 * HALF + j] = dy * gate * 0.5 * erfc(-gate / sqrt(2));
            want[m * 2 * HALF + HALF + j] = dy * val * gelu_d(gate);
        }
    tensor dy = make(2, (int64_t[]){M, HALF}, r), tx = make(2, (int64_t[]){M, 2 * HALF}, x);
    tensor dx = make_out(2, (int64_t[]){M, 2 * HALF});
    coin_error err = {0};
    REQUIRE_OK(op_geglu_backward(&dx, &dy, &tx, &err), &err);
    float *got = fetch(&dx);
    CHECK_GRAD("geglu", got, want, M * 2 * HALF);
    /* In place over x (its buffer is spent once the gradient is taken). */
    tensor tx2 = make(2, (int64_t[]){M, 2 * HALF}, x);
    REQUIRE_OK(op_geglu_backward(&tx2, &dy, &tx2, &err), &err);
    float *inplace = fetch(&tx2);
    CHECK_GRAD("geglu in place", inplace, want, M * 2 * HALF);

    fwd f = {.run = run_geglu, .r = r};
    fwd_input(&f, 2, (int64_t[]){M, 2 * HALF}, x);
    f.y = make_out(2, (int64_t[]){M, HALF});
    fd_check("geglu", &f, x, M * 2 * HALF, got);
    fwd_free(&f);

    tensor bad = make_out(2, (int64_t[]){M, 2 * HALF + 1});
    CHECK_EQ_INT(op_geglu_backward(&dx, &dy, &bad, &err), COIN_ESHAPE);
    CHECK_STR_CONTAINS(err.msg, "twice as wide");
    CHECK_EQ_INT(op_geglu_backward(&bad, &dy, &tx, &err), COIN_ESHAPE);
    tensor_free(&dy), tensor_free(&tx), tensor_free(&dx), tensor_free(&tx2), tensor_free(&bad);
    free(x), free(r), free(got), free(inplace);
}

/* ---- attention ---- */

/* The gradients of o = softmax(q k^T / sqrt(hd)) v per head, with the whole
 * score matrix in double:
 *   dV = P^T dO, dP = dO V^T, dZ_ij = P_ij (dP_ij - sum_l P_il dP_il),
 *   dQ = dZ K / sqrt(hd), dK = dZ^T Q / sqrt(hd). */
static void attention_backward_ref(double *dq, double *dk, double *dv, const float *dout,
                                   const float *q, const float *k, const float *v, int B,
                                   int T, int S, int C, int H, int causal)
{
    int hd = C / H;
    double sc = 1 / sqrt(hd);
    double *P = malloc(sizeof(double) * T * S), *dP = malloc(sizeof(double) * T * S);
    memset(dq, 0, sizeof(double) * B * T * C);
    memset(dk, 0, sizeof(double) * B * S * C);
    memset(dv, 0, sizeof(double) * B * S * C);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *qh = q + b * T * C + h * hd, *kh = k + b * S * C + h * hd;
            const float *vh = v + b * S * C + h * hd, *doh = dout + b * T * C + h * hd;
            for (int i = 0; i < T; i++) {
                double max = -INFINITY, sum = 0;
                for (int j = 0; j < S; j++) {
                    double dot = 0, dpd = 0;
                    for (int d = 0; d < hd; d++) {
                        dot += (double)qh[i * C + d] * kh[j * C + d];
                        dpd += (double)doh[i * C + d] * vh[j * C + d];
                    }
                    P[i * S + j] = causal && j > i ? -INFINITY : dot * sc;
                    dP[i * S + j] = dpd;
                    max = P[i * S + j] > max ? P[i * S + j] : max;
                }
                for (int j = 0; j < S; j++)
                    sum += P[i * S + j] = exp(P[i * S + j] - max);
                double rowdot = 0;
                for (int j = 0; j < S; j++) {
                    P[i * S + j] /= sum;
                    rowdot += P[i * S + j] * dP[i * S + j];
                }
                for (int j = 0; j < S; j++) {
                    double p = P[i * S + j], dz = p * (dP[i * S + j] - rowdot);
                    for (int d = 0; d < hd; d++) {
                        dv[(b * S + j) * C + h * hd + d] += p * doh[i * C + d];
                        dq[(b * T + i) * C + h * hd + d] += dz * sc * kh[j * C + d];
                        dk[(b * S + j) * C + h * hd + d] += dz * sc * qh[i * C + d];
                    }
                }
            }
        }
    free(P), free(dP);
}

static int run_attention(fwd *f, coin_error *err)
{
    return op_attention(&f->y, &f->in[0], &f->in[1], &f->in[2], f->heads, f->causal, err);
}

/* Backward against the reference and against finite differences, for q, k
 * and v in turn. */
static void check_attention(int B, int T, int S, int C, int H, int causal, unsigned seed,
                            int fd_samples)
{
    int64_t nq = (int64_t)B * T * C, nk = (int64_t)B * S * C;
    float *q = rnd(nq, seed, 1), *k = rnd(nk, seed + 1, 1), *v = rnd(nk, seed + 2, 1);
    float *r = rnd(nq, seed + 3, 1);
    /* Larger scores than uniform [-1, 1) inputs give: a peaked softmax. */
    for (int64_t i = 0; i < nq; i++)
        q[i] *= 2.5f;
    double *wq = malloc(sizeof(double) * nq), *wk = malloc(sizeof(double) * nk);
    double *wv = malloc(sizeof(double) * nk);
    attention_backward_ref(wq, wk, wv, r, q, k, v, B, T, S, C, H, causal);
    int64_t sq[3] = {B, T, C}, sk[3] = {B, S, C};
    tensor tq = make(3, sq, q), tk = make(3, sk, k), tv = make(3, sk, v), dy = make(3, sq, r);
    tensor dq = make_out(3, sq), dk = make_out(3, sk), dv = make_out(3, sk);
    coin_error err = {0};
    if (op_attention_backward(&dq, &dk, &dv, &dy, &tq, &tk, &tv, H, causal, &err)) {
        test_failed(__FILE__, __LINE__, "attention_backward: %s", err.msg);
        return;
    }
    float *gq = fetch(&dq), *gk = fetch(&dk), *gv = fetch(&dv);
    char what[96];
    snprintf(what, sizeof what, "attention %dx%d causal %d: dq", T, S, causal);
    CHECK_GRAD(what, gq, wq, nq);
    what[strlen(what) - 1] = 'k';
    CHECK_GRAD(what, gk, wk, nk);
    what[strlen(what) - 1] = 'v';
    CHECK_GRAD(what, gv, wv, nk);

    fwd f = {.run = run_attention, .r = r, .heads = H, .causal = causal};
    fwd_input(&f, 3, sq, q);
    fwd_input(&f, 3, sk, k);
    fwd_input(&f, 3, sk, v);
    f.y = make_out(3, sq);
    what[strlen(what) - 1] = 'q';
    fd_check_range(what, &f, q, nq, gq, 0, 0, fd_samples);
    what[strlen(what) - 1] = 'k';
    fd_check_range(what, &f, k, nk, gk, 0, 0, fd_samples);
    what[strlen(what) - 1] = 'v';
    fd_check_range(what, &f, v, nk, gv, 0, 0, fd_samples);
    fwd_free(&f);
    tensor_free(&tq), tensor_free(&tk), tensor_free(&tv), tensor_free(&dy);
    tensor_free(&dq), tensor_free(&dk), tensor_free(&dv);
    free(q), free(k), free(v), free(r), free(wq), free(wk), free(wv);
    free(gq), free(gk), free(gv);
}

TEST(backward_attention)
{
    check_attention(2, 7, 9, 12, 3, 0, 81, FD_SAMPLES);  /* cross-attention-like, T != S */
    check_attention(2, 7, 7, 12, 3, 1, 85, FD_SAMPLES);  /* causal, as in the text encoder */
    check_attention(1, 77, 77, 8, 1, 1, 89, FD_SAMPLES); /* the text encoder's length */

    /* Shapes and overlaps. */
    enum { B = 1, T = 5, S = 6, C = 4 };
    float buf[B * S * C] = {0};
    int64_t sq[3] = {B, T, C}, sk[3] = {B, S, C};
    tensor q = make(3, sq, buf), k = make(3, sk, buf), v = make(3, sk, buf), dy = make(3, sq, buf);
    tensor dq = make(3, sq, buf), dk = make(3, sk, buf), dv = make(3, sk, buf);
    coin_error err = {0};
    REQUIRE_OK(op_attention_backward(&dq, &dk, &dv, &dy, &q, &k, &v, 2, 0, &err), &err);
    CHECK_EQ_INT(op_attention_backward(&dq, &dk, &dv, &dy, &q, &k, &v, 3, 0, &err), COIN_ESHAPE);
    CHECK_STR_CONTAINS(err.msg, "3 heads");
    CHECK_EQ_INT(op_attention_backward(&dq, &dk, &dv, &dy, &q, &k, &v, 2, 1, &err), COIN_ESHAPE);
    CHECK_STR_CONTAINS(err.msg, "causal");
    CHECK_EQ_INT(op_attention_backward(&dk, &dq, &dv, &dy, &q, &k, &v, 2, 0, &err), COIN_ESHAPE);
    CHECK_STR_CONTAINS(err.msg, "dq must have q's shape");
    CHECK_EQ_INT(op_attention_backward(&dq, &dk, &dv, &dq, &q, &k, &v, 2, 0, &err), COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "dq and dout share memory");
    CHECK_EQ_INT(op_attention_backward(&dq, &dk, &dk, &dy, &q, &k, &v, 2, 0, &err), COIN_EINVAL);
    tensor_free(&q), tensor_free(&k), tensor_free(&v), tensor_free(&dy);
    tensor_free(&dq), tensor_free(&dk), tensor_free(&dv);
}

TEST(backward_attention_long_sequences_in_blocks)
{
    /* Over 2^20 scores per head (ATTN_BLOCK_FLOATS) the query rows split into
     * blocks: 1100 x 1100 gives two, the second of which sees more keys when
     * causal; 1800 x 600 gives two of unequal size.  Each forward pass
     * costs milliseconds here, so fewer finite differences. */
    check_attention(1, 1100, 1100, 16, 2, 1, 91, 4);
    check_attention(1, 1800, 600, 8, 2, 0, 95, 4);
}

/* ---- conv2d ---- */

/* dx from the definition y[co,oy,ox] = sum w[co,ci,ky,kx] x[ci, oy s + ky - top,
 * ox s + kx - left]: each product sends w * dy back to its input pixel. */
static void conv_backward_ref(double *dx, const float *dy, const float *w, int B, int Ci, int H,
                              int W, int Co, int K, int stride, const int pad[4], int Ho,
                              int Wo)
{
    memset(dx, 0, sizeof(double) * B * Ci * H * W);
    for (int n = 0; n < B; n++)
        for (int co = 0; co < Co; co++)
            for (int oy = 0; oy < Ho; oy++)
                for (int ox = 0; ox < Wo; ox++) {
                    double g = dy[((n * Co + co) * Ho + oy) * Wo + ox];
                    for (int ci = 0; ci < Ci; ci++)
                        for (int ky = 0; ky < K; ky++)
                            for (int kx = 0; kx < K; kx++) {
                                int iy = oy * stride + ky - pad[0], ix = ox * stride + kx - pad[2];
                                if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                                    dx[((n * Ci + ci) * H + iy) * W + ix] +=
                                        g * w[((co * Ci + ci) * K + ky) * K + kx];
                            }
                }
}

static int run_conv(fwd *f, coin_error *err)
{
    return op_conv2d(&f->y, &f->in[0], &f->in[1], NULL, f->stride, f->pad, err);
}

static void check_conv_backward(int B, int Ci, int H, int W, int Co, int K, int stride,
                                const int pad[4], int fd_samples)
{
    int Ho = (H + pad[0] + pad[1] - K) / stride + 1, Wo = (W + pad[2] + pad[3] - K) / stride + 1;
    int64_t nx = (int64_t)B * Ci * H * W, nw = (int64_t)Co * Ci * K * K;
    int64_t ny = (int64_t)B * Co * Ho * Wo;
    float *x = rnd(nx, 31, 1), *w = rnd(nw, 32, 1), *r = rnd(ny, 33, 1);
    double *want = malloc(sizeof(double) * nx);
    conv_backward_ref(want, r, w, B, Ci, H, W, Co, K, stride, pad, Ho, Wo);
    int64_t sx[4] = {B, Ci, H, W}, sw[4] = {Co, Ci, K, K}, sy[4] = {B, Co, Ho, Wo};
    tensor dy = make(4, sy, r), tw = make(4, sw, w), dx = make_out(4, sx);
    coin_error err = {0};
    if (op_conv2d_backward_input(&dx, &dy, &tw, stride, pad, &err))
        test_failed(__FILE__, __LINE__, "conv2d_backward_input: %s", err.msg);
    float *got = fetch(&dx);
    char what[128];
    snprintf(what, sizeof what, "conv %dx%d stride %d pad %d,%d,%d,%d on %dx%dx%d", K, K,
             stride, pad[0], pad[1], pad[2], pad[3], Ci, H, W);
    CHECK_GRAD(what, got, want, nx);

    fwd f = {.run = run_conv, .r = r, .stride = stride, .pad = {pad[0], pad[1], pad[2], pad[3]}};
    fwd_input(&f, 4, sx, x);
    fwd_input(&f, 4, sw, w);
    f.y = make_out(4, sy);
    fd_check_range(what, &f, x, nx, got, 0, 0, fd_samples);
    /* The last row, where asymmetric padding and stride show. */
    fd_check_range(what, &f, x, nx, got, nx - W, W, fd_samples);
    fwd_free(&f);
    tensor_free(&dy), tensor_free(&tw), tensor_free(&dx);
    free(x), free(w), free(r), free(want), free(got);
}

TEST(backward_conv2d_input)
{
    int same[4] = {1, 1, 1, 1}, vae[4] = {0, 1, 0, 1}, none[4] = {0, 0, 0, 0};
    check_conv_backward(2, 3, 9, 7, 5, 3, 1, same, FD_SAMPLES);   /* UNet/VAE 3x3 */
    check_conv_backward(1, 4, 10, 10, 6, 3, 2, same, FD_SAMPLES); /* UNet downsample */
    check_conv_backward(1, 3, 9, 11, 2, 3, 2, same, FD_SAMPLES);  /* odd, stride 2 */
    check_conv_backward(1, 4, 10, 10, 6, 3, 2, vae, FD_SAMPLES);  /* VAE downsample */
    check_conv_backward(2, 3, 7, 6, 2, 3, 1, none, FD_SAMPLES);   /* no padding */
    check_conv_backward(2, 8, 5, 6, 3, 1, 1, none, FD_SAMPLES);   /* 1x1 shortcut */

    coin_error err = {0};
    float z[2 * 3 * 4 * 4] = {0};
    tensor dx = make(4, (int64_t[]){1, 2, 4, 4}, z), w = make(4, (int64_t[]){3, 2, 3, 3}, z);
    tensor dy = make(4, (int64_t[]){1, 3, 4, 4}, z), w3 = make(4, (int64_t[]){3, 3, 3, 3}, z);
    REQUIRE_OK(op_conv2d_backward_input(&dx, &dy, &w, 1, same, &err), &err);
    /* The kernel's input channels must be dx's. */
    CHECK_EQ_INT(op_conv2d_backward_input(&dx, &dy, &w3, 1, same, &err),
                 COIN_ESHAPE);
    CHECK_STR_CONTAINS(err.msg, "[1, 2, 4, 4]");
    /* dy must be what the forward would give for dx's size. */
    CHECK_EQ_INT(op_conv2d_backward_input(&dx, &dy, &w, 2, same, &err),
                 COIN_ESHAPE);
    CHECK_STR_CONTAINS(err.msg, "forward output");
    CHECK_EQ_INT(op_conv2d_backward_input(&dx, &dy, &w, 0, same, &err),
                 COIN_EINVAL);
    tensor_free(&dx), tensor_free(&w), tensor_free(&dy), tensor_free(&w3);
}

TEST(backward_conv2d_input_in_bands)
{
    /* 64 channels at 64 wide: a band of 2^21 column floats holds 56 output
     * rows, so both of these take two bands that meet inside the image. */
    check_conv_backward(1, 64, 64, 64, 4, 3, 1, (int[]){1, 1, 1, 1}, 6);
    check_conv_backward(1, 64, 127, 128, 3, 3, 2, (int[]){0, 1, 0, 1}, 6);
}

/* ---- shape ops ---- */

static int run_upsample(fwd *f, coin_error *err) { return op_upsample2x(&f->y, &f->in[0], err); }

TEST(backward_upsample2x)
{
    enum { B = 2, C = 3, H = 3, W = 5, N = B * C * H * W };
    float *x = rnd(N, 101, 1), *r = rnd(4 * N, 102, 1);
    double want[N];
    for (int p = 0; p < B * C; p++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) {
                double s = 0;
                for (int oy = 0; oy < 2 * H; oy++)
                    for (int ox = 0; ox < 2 * W; ox++)
                        if (oy / 2 == i && ox / 2 == j)
                            s += r[(p * 2 * H + oy) * 2 * W + ox];
                want[(p * H + i) * W + j] = s;
            }
    int64_t sx[4] = {B, C, H, W}, sy[4] = {B, C, 2 * H, 2 * W};
    tensor dy = make(4, sy, r), dx = make_out(4, sx);
    coin_error err = {0};
    REQUIRE_OK(op_upsample2x_backward(&dx, &dy, &err), &err);
    float *got = fetch(&dx);
    CHECK_GRAD("upsample2x", got, want, N);

    fwd f = {.run = run_upsample, .r = r};
    fwd_input(&f, 4, sx, x);
    f.y = make_out(4, sy);
    fd_check("upsample2x", &f, x, N, got);
    fwd_free(&f);

    tensor bad = make_out(4, (int64_t[]){B, C, 2 * H, 2 * W + 1});
    CHECK_EQ_INT(op_upsample2x_backward(&dx, &bad, &err), COIN_ESHAPE);
    CHECK_STR_CONTAINS(err.msg, "[2, 3, 6, 11]");
    tensor_free(&dy), tensor_free(&dx), tensor_free(&bad);
    free(x), free(r), free(got);
}

static int run_concat(fwd *f, coin_error *err)
{
    return op_concat(&f->y, &f->in[0], &f->in[1], err);
}

TEST(backward_split)
{
    enum { B = 2, CA = 3, CB = 2, H = 3, W = 5, S = H * W };
    float *a = rnd(B * CA * S, 111, 1), *b = rnd(B * CB * S, 112, 1);
    float *r = rnd(B * (CA + CB) * S, 113, 1);
    double wa[B * CA * S], wb[B * CB * S];
    for (int n = 0; n < B; n++)
        for (int c = 0; c < CA + CB; c++)
            for (int i = 0; i < S; i++) {
                double g = r[(n * (CA + CB) + c) * S + i];
                if (c < CA)
                    wa[(n * CA + c) * S + i] = g;
                else
                    wb[(n * CB + c - CA) * S + i] = g;
            }
    int64_t sa[4] = {B, CA, H, W}, sb[4] = {B, CB, H, W}, sy[4] = {B, CA + CB, H, W};
    tensor dy = make(4, sy, r), da = make_out(4, sa), db = make_out(4, sb);
    coin_error err = {0};
    REQUIRE_OK(op_split(&da, &db, &dy, &err), &err);
    float *ga = fetch(&da), *gb = fetch(&db);
    CHECK_GRAD("split a", ga, wa, B * CA * S);
    CHECK_GRAD("split b", gb, wb, B * CB * S);

    fwd f = {.run = run_concat, .r = r};
    fwd_input(&f, 4, sa, a);
    fwd_input(&f, 4, sb, b);
    f.y = make_out(4, sy);
    fd_check("split a", &f, a, B * CA * S, ga);
    fd_check("split b", &f, b, B * CB * S, gb);
    fwd_free(&f);

    tensor wide = make_out(4, (int64_t[]){B, CA + CB + 1, H, W});
    CHECK_EQ_INT(op_split(&da, &db, &wide, &err), COIN_ESHAPE);
    CHECK_STR_CONTAINS(err.msg, "split");
    CHECK_EQ_INT(op_split(&da, &da, &dy, &err), COIN_ESHAPE);
    /* a over the front of y: it would be read after being written. */
    tensor front = dy;
    front.shape[1] = CA;
    front.n = B * CA * S;
    CHECK_EQ_INT(op_split(&front, &db, &dy, &err), COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "share memory");
    tensor_free(&dy), tensor_free(&da), tensor_free(&db), tensor_free(&wide);
    free(a), free(b), free(r), free(ga), free(gb);
}

static int run_embed(fwd *f, coin_error *err)
{
    return op_embed(&f->y, &f->in[0], f->ids, &f->in[1], err);
}

TEST(backward_embed)
{
    /* A vocabulary of 6 words plus 3 trigger rows at ids 6, 7, 8. */
    enum { V = 9, FIRST = 6, R = 3, D = 5, P = 8, B = 2, T = 6 };
    int32_t ids[B * T] = {0, 6, 2, 8, 6, 1, 3, 3, 7, 6, 5, 4};
    float *table = rnd(V * D, 121, 1), *pos = rnd(P * D, 122, 1), *r = rnd(B * T * D, 123, 1);
    float *start = rnd(R * D, 124, 1);
    double want[R * D];
    for (int i = 0; i < R * D; i++)
        want[i] = start[i]; /* embed_backward adds to what is there */
    for (int i = 0; i < B * T; i++)
        for (int row = 0; row < R; row++)
            if (ids[i] == FIRST + row)
                for (int d = 0; d < D; d++)
                    want[row * D + d] += r[i * D + d];
    tensor dy = make(3, (int64_t[]){B, T, D}, r), drows = make(2, (int64_t[]){R, D}, start);
    coin_error err = {0};
    REQUIRE_OK(op_embed_backward(&drows, &dy, ids, FIRST, &err), &err);
    float *got = fetch(&drows);
    CHECK_GRAD("embed", got, want, R * D);

    /* Finite differences in the trigger rows of the table; the gradient is
     * what was added. */
    float grad[V * D] = {0};
    for (int i = 0; i < R * D; i++)
        grad[FIRST * D + i] = got[i] - start[i];
    fwd f = {.run = run_embed, .r = r, .ids = ids};
    fwd_input(&f, 2, (int64_t[]){V, D}, table);
    fwd_input(&f, 2, (int64_t[]){P, D}, pos);
    f.y = make_out(3, (int64_t[]){B, T, D});
    fd_check_range("embed", &f, table, V * D, grad, FIRST * D, R * D, R * D);
    fwd_free(&f);

    tensor bad = make_out(2, (int64_t[]){R, D + 1});
    CHECK_EQ_INT(op_embed_backward(&bad, &dy, ids, FIRST, &err), COIN_ESHAPE);
    CHECK_STR_CONTAINS(err.msg, "widths differ");
    CHECK_EQ_INT(op_embed_backward(&drows, &dy, ids, -1, &err), COIN_EINVAL);
    CHECK_EQ_INT(op_embed_backward(&drows, &dy, NULL, FIRST, &err), COIN_EINVAL);
    tensor_free(&dy), tensor_free(&drows), tensor_free(&bad);
    free(table), free(pos), free(r), free(start), free(got);
}

TEST(backward_axpy)
{
    enum { N = 23 };
    float *x = rnd(N, 131, 1), *y = rnd(N, 132, 1);
    double want[N];
    for (int i = 0; i < N; i++)
        want[i] = y[i] + -0.75 * x[i];
    tensor tx = make(1, (int64_t[]){N}, x), ty = make(1, (int64_t[]){N}, y);
    coin_error err = {0};
    REQUIRE_OK(op_axpy(&ty, &tx, -0.75f, &err), &err);
    float *got = fetch(&ty);
    CHECK_GRAD("axpy", got, want, N);
    /* y += a y */
    REQUIRE_OK(op_axpy(&tx, &tx, 1.0f, &err), &err);
    float *twice = fetch(&tx);
    for (int i = 0; i < N; i++)
        want[i] = 2.0 * x[i];
    CHECK_GRAD("axpy in place", twice, want, N);
    tensor bad = make_out(1, (int64_t[]){N + 1});
    CHECK_EQ_INT(op_axpy(&bad, &tx, 1.0f, &err), COIN_ESHAPE);
    tensor_free(&tx), tensor_free(&ty), tensor_free(&bad);
    free(x), free(y), free(got), free(twice);
}
