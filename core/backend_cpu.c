/*
 * backend_cpu.c - the CPU backend: the reference every other backend is
 * checked against.
 *
 * Plain C over host memory, OpenMP across rows, GEMMs through OpenBLAS,
 * except linear layers with few rows and long self-attention, which use
 * coin's packed-weight kernel (gemm.c) where the CPU has AVX-512; 3x3
 * convolutions go through Winograd's F(2x2, 3x3) (winograd.c), whose GEMMs
 * are OpenBLAS's.
 * LayerNorm and GroupNorm statistics are accumulated in double; no sum is
 * ever split across threads, so results do not depend on the thread count.
 */
#include "tensor.h"
#include "gemm.h"
#include "winograd.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX512_PATHS 1

/* The lanes of a 16-float block that are still in range. */
static __mmask16 tail_mask(int64_t left)
{
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
}
#endif

#define F(t) ((float *)(t)->mem)
#define CF(t) ((const float *)(t)->mem)

/*
 * Tensor memory.  A UNet step or a training step allocates and frees the
 * same large activations every time; fresh large blocks come from mmap, and
 * the kernel zeroes every page of them on first touch (6-7% of a training
 * step went to clear_page).  So freed blocks of at least CACHE_MIN_BYTES
 * are kept, up to CACHE_MAX_BYTES in all, and an allocation of exactly the
 * same size takes one back.  A failed allocation empties the cache and
 * tries again, so the cache never makes a model fail to fit.
 * Each block carries its size in a 64-byte header (the alignment AVX-512
 * loads and OpenBLAS's packing like).
 */
#define CACHE_MIN_BYTES ((size_t)1 << 18)
#define CACHE_MAX_BYTES ((size_t)1 << 28)   /* 256 MiB */
#define CACHE_SLOTS 256
#define HEADER 64

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    void *raw;
    size_t bytes;
} cache[CACHE_SLOTS];
static int cache_used;
static size_t cache_bytes;

static void cache_flush(void)
{
    pthread_mutex_lock(&cache_lock);
    for (int i = 0; i < cache_used; i++)
        free(cache[i].raw);
    cache_used = 0;
    cache_bytes = 0;
    pthread_mutex_unlock(&cache_lock);
}

static void *cpu_alloc(size_t bytes)
{
    size_t rounded = bytes ? (bytes + 63) & ~(size_t)63 : 64;
    char *raw = NULL;
    if (rounded >= CACHE_MIN_BYTES) {
        pthread_mutex_lock(&cache_lock);
        for (int i = cache_used - 1; i >= 0; i--)
            if (cache[i].bytes == rounded) {
                raw = cache[i].raw;
                cache_bytes -= rounded;
                cache[i] = cache[--cache_used];
                break;
            }
        pthread_mutex_unlock(&cache_lock);
    }
    if (!raw)
        raw = aligned_alloc(64, rounded + HEADER);
    if (!raw) {
        cache_flush();
        raw = aligned_alloc(64, rounded + HEADER);
    }
    if (!raw)
        return NULL;
    *(size_t *)raw = rounded;
    return raw + HEADER;
}

static void cpu_free(void *mem)
{
    if (!mem)
        return;
    char *raw = (char *)mem - HEADER;
    size_t bytes = *(size_t *)raw;
    if (bytes >= CACHE_MIN_BYTES) {
        pthread_mutex_lock(&cache_lock);
        int kept = cache_used < CACHE_SLOTS && cache_bytes + bytes <= CACHE_MAX_BYTES;
        if (kept) {
            cache[cache_used].raw = raw;
            cache[cache_used++].bytes = bytes;
            cache_bytes += bytes;
        }
        pthread_mutex_unlock(&cache_lock);
        if (kept)
            return;
    }
    free(raw);
}

static int cpu_upload(void *dst, const float *src, size_t n)
{
    memcpy(dst, src, n * sizeof(float));
    return 0;
}

static int cpu_download(float *dst, const void *src, size_t n)
{
    memcpy(dst, src, n * sizeof(float));
    return 0;
}

/* 1 where the AVX-512 paths (these and gemm.c's) may run; asked once. */
static int avx512_available = -1;

static int have_avx512(void)
{
    int a = __atomic_load_n(&avx512_available, __ATOMIC_RELAXED);
    if (a < 0) {
        a = gemm_packed_available();
        __atomic_store_n(&avx512_available, a, __ATOMIC_RELAXED);
    }
    return a;
}

static void cpu_free_derived(void *derived) { gemm_packed_free(derived); }

/*
 * Linear layers with at most this many rows use the packed kernel: the text
 * encoder (77 rows, or 154 for a prompt and a negative one), the UNet's
 * cross-attention keys and values and its 8x8 level (about 0.2 GB of packed
 * copies for SD 1.5's UNet, which gains nothing measurable from them).
 * Measured with tools/bench/bench_gemm.sh (one thread, min of 20): at 77
 * rows it takes 0.3-0.5 of OpenBLAS's time (OpenBLAS re-packs the weight
 * every call), at 154 rows 0.73-0.97, at 128x1280x1280 0.91; from 512 rows
 * up it is 1.06-1.19 and would also need a second copy of every UNet weight.
 */
#define PACKED_MAX_ROWS 160
/* Below this (the UNet's time embedding: 1-2 rows) a call is a matrix-vector
 * product that reads each weight once either way: a packed copy would only
 * cost memory (~90 MB for SD 1.5's UNet). */
#define PACKED_MIN_ROWS 8

/* w's packed copy, made on first use and kept in w->derived (see tensor.h),
 * or NULL (no AVX-512, out of memory: the caller falls back to OpenBLAS). */
static const gemm_packed *packed_weight(const tensor *w)
{
    /* The cache is not part of w's value; w itself is never const storage. */
    void **slot = &((tensor *)w)->derived;
    void *p = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (p)
        return p;
    gemm_packed *fresh = gemm_pack(CF(w), w->shape[0], w->shape[1]);
    if (!fresh)
        return NULL;
    /* Two threads may pack the same weight at once: the first to store wins. */
    void *expected = NULL;
    if (!__atomic_compare_exchange_n(slot, &expected, fresh, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
        gemm_packed_free(fresh);
        return expected;
    }
    return fresh;
}

static int cpu_linear(tensor *y, const tensor *x, const tensor *w, const tensor *b)
{
    int64_t K = x->shape[x->ndim - 1], N = w->shape[0], M = x->n / K;
    if (have_avx512() && M >= PACKED_MIN_ROWS && M <= PACKED_MAX_ROWS && K > 0 && N > 0) {
        const gemm_packed *p = packed_weight(w);
        if (p) {
            gemm_packed_linear(F(y), CF(x), p, b ? CF(b) : NULL, M);
            return 0;
        }
    }
    /* The bias goes in first and the GEMM adds onto it (beta 1): one pass
     * over y instead of OpenBLAS zeroing it and a second pass adding. */
    if (b) {
        float *out = F(y);
#pragma omp parallel for if (M * N > 65536)
        for (int64_t i = 0; i < M; i++)
            memcpy(out + i * N, CF(b), (size_t)N * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K,
                1.0f, CF(x), (int)K, CF(w), (int)K, b ? 1.0f : 0.0f, F(y), (int)N);
    return 0;
}

#ifdef HAVE_AVX512_PATHS
/* The 8 doubles of a 16-float vector's low (half 0) or high (half 1) half. */
__attribute__((target("avx512f"))) static inline __m512d widen_half(__m512 v, int half)
{
    __m256 h = half ? _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))
                    : _mm512_castps512_ps256(v);
    return _mm512_cvtps_pd(h);
}

/* One row of cpu_layernorm, the same sums in double, 8 lanes at a time. */
__attribute__((target("avx512f"))) static void layernorm_row_avx512(
    float *out, const float *row, const float *gamma, const float *beta, int64_t D, float eps)
{
    __m512d sum = _mm512_setzero_pd(), sq = _mm512_setzero_pd();
    for (int64_t j = 0; j < D; j += 16) {
        __m512 v = _mm512_maskz_loadu_ps(tail_mask(D - j), row + j);
        sum = _mm512_add_pd(sum, _mm512_add_pd(widen_half(v, 0), widen_half(v, 1)));
    }
    double mean = _mm512_reduce_add_pd(sum) / (double)D;
    __m512d vmean = _mm512_set1_pd(mean);
    for (int64_t j = 0; j < D; j += 16) {
        __mmask16 m = tail_mask(D - j);
        __m512 v = _mm512_maskz_loadu_ps(m, row + j);
        /* masked-off lanes are 0 - mean: leave them out of the sum */
        __m512d d0 = _mm512_maskz_sub_pd((__mmask8)m, widen_half(v, 0), vmean);
        __m512d d1 = _mm512_maskz_sub_pd((__mmask8)(m >> 8), widen_half(v, 1), vmean);
        sq = _mm512_fmadd_pd(d0, d0, _mm512_fmadd_pd(d1, d1, sq));
    }
    __m512 inv = _mm512_set1_ps((float)(1.0 / sqrt(_mm512_reduce_add_pd(sq) / (double)D + eps)));
    for (int64_t j = 0; j < D; j += 16) {
        __mmask16 m = tail_mask(D - j);
        __m512 v = _mm512_maskz_loadu_ps(m, row + j);
        __m256 lo = _mm512_cvtpd_ps(_mm512_sub_pd(widen_half(v, 0), vmean));
        __m256 hi = _mm512_cvtpd_ps(_mm512_sub_pd(widen_half(v, 1), vmean));
        __m512 d = _mm512_castpd_ps(_mm512_insertf64x4(
            _mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi), 1));
        __m512 r = _mm512_mul_ps(_mm512_mul_ps(d, inv), _mm512_maskz_loadu_ps(m, gamma + j));
        _mm512_mask_storeu_ps(out + j, m, _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, beta + j)));
    }
}
#endif

static int cpu_layernorm(tensor *y, const tensor *x, const tensor *g,
                         const tensor *b, float eps)
{
    int64_t D = x->shape[x->ndim - 1], M = x->n / D;
    const float *gamma = CF(g), *beta = CF(b);
#pragma omp parallel for if (M * D > 65536)
    for (int64_t i = 0; i < M; i++) {
        const float *row = CF(x) + i * D;
        float *out = F(y) + i * D;
#ifdef HAVE_AVX512_PATHS
        if (have_avx512()) {
            layernorm_row_avx512(out, row, gamma, beta, D, eps);
            continue;
        }
#endif
        double sum = 0, sq = 0;
        for (int64_t j = 0; j < D; j++)
            sum += row[j];
        double mean = sum / (double)D;
        for (int64_t j = 0; j < D; j++) {
            double d = row[j] - mean;
            sq += d * d;
        }
        /* Biased variance, as torch.nn.LayerNorm. */
        float inv = (float)(1.0 / sqrt(sq / (double)D + eps));
        for (int64_t j = 0; j < D; j++)
            out[j] = (float)(row[j] - mean) * inv * gamma[j] + beta[j];
    }
    return 0;
}

static int cpu_add(tensor *y, const tensor *a, const tensor *b)
{
    float *out = F(y);
    const float *pa = CF(a), *pb = CF(b);
#pragma omp parallel for if (y->n > 65536)
    for (int64_t i = 0; i < y->n; i++)
        out[i] = pa[i] + pb[i];
    return 0;
}


#ifdef HAVE_AVX512_PATHS
/*
 * e^x in 16 lanes, within a few ulp of expf: x = n ln2 + r with |r| <= ln2/2
 * (ln2 in two parts, as in Cephes, so r is exact enough), e^r by its Taylor
 * polynomial to degree 7 (truncation < 1e-8 relative), then 2^n by scalef,
 * which gives inf and 0 past the float range as expf does.  x is clamped so
 * that +-inf give inf and 0 rather than inf - inf.
 */
__attribute__((target("avx512f"))) static inline __m512 exp16(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* out = x sigmoid(k x): quick_gelu with k = 1.702, SiLU with k = 1. */
__attribute__((target("avx512f"))) static void x_sigmoid_avx512(float *out, const float *in,
                                                                int64_t n, float k)
{
    int64_t blocks = (n + 15) / 16;
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < blocks; i++) {
        __mmask16 m = tail_mask(n - i * 16);
        __m512 x = _mm512_maskz_loadu_ps(m, in + i * 16);
        __m512 e = exp16(_mm512_mul_ps(x, _mm512_set1_ps(-k)));
        _mm512_mask_storeu_ps(out + i * 16, m,
                              _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e)));
    }
}

/* score[j] = e^(score[j] - max) for j < n; returns their sum (lane sums,
 * then the lanes: a fixed order). */
__attribute__((target("avx512f"))) static float softmax_exp_avx512(float *score, int64_t n,
                                                                   float max)
{
    __m512 sum = _mm512_setzero_ps(), vmax = _mm512_set1_ps(max);
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 m = tail_mask(n - j);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, score + j), vmax));
        _mm512_mask_storeu_ps(score + j, m, e);
        sum = _mm512_mask_add_ps(sum, m, sum, e);
    }
    return _mm512_reduce_add_ps(sum);
}

/* One query row of attention_rows: oi[hdv] = softmax(qi . k_j * scale) v_j
 * over keys j < n_keys, k_j at kb + j * C and v_j at vb + j * Cv; score
 * holds n_keys floats. */
__attribute__((target("avx512f"))) static void attend_row_avx512(
    float *oi, const float *qi, const float *kb, int64_t C, const float *vb, int64_t Cv,
    int64_t n_keys, int64_t hd, int64_t hdv, float scale, float *score)
{
    float max = -INFINITY;
    for (int64_t j = 0; j < n_keys; j++) {
        const float *kj = kb + j * C;
        __m512 dot = _mm512_setzero_ps();
        for (int64_t d = 0; d < hd; d += 16) {
            __mmask16 m = tail_mask(hd - d);
            dot = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qi + d),
                                  _mm512_maskz_loadu_ps(m, kj + d), dot);
        }
        score[j] = _mm512_reduce_add_ps(dot) * scale;
        max = score[j] > max ? score[j] : max;
    }
    __m512 inv = _mm512_set1_ps(1.0f / softmax_exp_avx512(score, n_keys, max));
    for (int64_t d = 0; d < hdv; d += 16) {
        __mmask16 m = tail_mask(hdv - d);
        __m512 acc = _mm512_setzero_ps();
        for (int64_t j = 0; j < n_keys; j++)
            acc = _mm512_fmadd_ps(_mm512_set1_ps(score[j]),
                                  _mm512_maskz_loadu_ps(m, vb + j * Cv + d), acc);
        _mm512_mask_storeu_ps(oi + d, m, _mm512_mul_ps(acc, inv));
    }
}
#endif

#ifdef HAVE_AVX512_PATHS
/*
 * gelu(x) = x/2 (1 + erf(z)), z = x / sqrt 2, with 1 + erf(z) = erfc(-z)
 * for z < 0 and 2 - erfc(z) otherwise, so the negative side (where 1 + erf
 * is tiny) keeps its relative accuracy.  erfc(|z|) = t e^(-z^2 + P(t)) with
 * t = 1 / (1 + |z|/2) and P the degree-9 Chebyshev fit of Numerical Recipes'
 * erfcc (fractional error below 1.2e-7 for all z).
 */
__attribute__((target("avx512f"))) static void gelu_avx512(float *out, const float *in,
                                                           int64_t n)
{
    static const float c[10] = {0.17087277f,  -0.82215223f, 1.48851587f, -1.13520398f,
                                0.27886807f,  -0.18628806f, 0.09678418f, 0.37409196f,
                                1.00002368f, -1.26551223f};
    int64_t blocks = (n + 15) / 16;
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < blocks; i++) {
        __mmask16 m = tail_mask(n - i * 16);
        __m512 x = _mm512_maskz_loadu_ps(m, in + i * 16);
        __m512 z = _mm512_mul_ps(x, _mm512_set1_ps((float)M_SQRT1_2));
        __m512 a = _mm512_abs_ps(z);
        __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f),
                                 _mm512_fmadd_ps(_mm512_set1_ps(0.5f), a, _mm512_set1_ps(1.0f)));
        __m512 p = _mm512_set1_ps(c[0]);
        for (int j = 1; j < 10; j++)
            p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c[j]));
        __m512 erfc = _mm512_mul_ps(t, exp16(_mm512_fnmadd_ps(a, a, p)));
        __mmask16 pos = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_GE_OQ);
        __m512 one_plus_erf =
            _mm512_mask_sub_ps(erfc, pos, _mm512_set1_ps(2.0f), erfc);
        _mm512_mask_storeu_ps(out + i * 16, m,
                              _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), one_plus_erf));
    }
}
#endif

static int cpu_gelu(tensor *y, const tensor *x)
{
    float *out = F(y);
    const float *in = CF(x);
#ifdef HAVE_AVX512_PATHS
    if (have_avx512()) {
        gelu_avx512(out, in, y->n);
        return 0;
    }
#endif
    /* 1 + erf(z) as erfc(-z): no cancellation for negative x. */
#pragma omp parallel for if (y->n > 65536)
    for (int64_t i = 0; i < y->n; i++)
        out[i] = 0.5f * in[i] * erfcf(-in[i] * (float)M_SQRT1_2);
    return 0;
}

static int cpu_quick_gelu(tensor *y, const tensor *x)
{
    float *out = F(y);
    const float *in = CF(x);
#ifdef HAVE_AVX512_PATHS
    if (have_avx512()) {
        x_sigmoid_avx512(out, in, y->n, 1.702f);
        return 0;
    }
#endif
#pragma omp parallel for if (y->n > 65536)
    for (int64_t i = 0; i < y->n; i++)
        out[i] = in[i] / (1.0f + expf(-1.702f * in[i]));
    return 0;
}

/* score[j] = e^(score[j] - max) for j < n; returns their sum. */
static float softmax_exp(float *score, int64_t n, float max)
{
#ifdef HAVE_AVX512_PATHS
    if (have_avx512())
        return softmax_exp_avx512(score, n, max);
#endif
    float denom = 0;
    for (int64_t j = 0; j < n; j++) {
        score[j] = expf(score[j] - max);
        denom += score[j];
    }
    return denom;
}

/* row[0..n) = softmax(row[0..n)).  The attention forward and the backward's
 * recomputation share it, so the backward sees the very probabilities the
 * forward used. */
#ifdef HAVE_AVX512_PATHS
__attribute__((target("avx512f"))) static void softmax_row_avx512(float *row, int64_t n)
{
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n; j += 16) {
        /* max(x, vmax) keeps vmax where x is NaN, as the scalar loop does. */
        __mmask16 m = tail_mask(n - j);
        vmax = _mm512_mask_max_ps(vmax, m, _mm512_maskz_loadu_ps(m, row + j), vmax);
    }
    __m512 inv = _mm512_set1_ps(1.0f / softmax_exp_avx512(row, n, _mm512_reduce_max_ps(vmax)));
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 m = tail_mask(n - j);
        _mm512_mask_storeu_ps(row + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + j), inv));
    }
}
#endif

static void softmax_row(float *row, int64_t n)
{
#ifdef HAVE_AVX512_PATHS
    if (have_avx512()) {
        softmax_row_avx512(row, n);
        return;
    }
#endif
    float max = -INFINITY;
    for (int64_t j = 0; j < n; j++)
        max = row[j] > max ? row[j] : max;
    float inv = 1.0f / softmax_exp(row, n, max);
    for (int64_t j = 0; j < n; j++)
        row[j] *= inv;
}

/*
 * Short sequences (the text encoder): one query row at a time per (batch,
 * head), the row's scores in a per-thread buffer of S floats.
 */
static int attention_rows(tensor *o, const tensor *q, const tensor *k,
                          const tensor *v, int heads, int causal)
{
    int64_t B = q->shape[0], T = q->shape[1], S = k->shape[1];
    int64_t C = q->shape[2], Cv = v->shape[2];
    int64_t hd = C / heads, hdv = Cv / heads;
    float scale = 1.0f / sqrtf((float)hd);
    int failed = 0;
#pragma omp parallel
    {
        float *score = malloc((size_t)S * sizeof(float));
        float *acc = malloc((size_t)hdv * sizeof(float));
        if (!score || !acc) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for collapse(2) schedule(static)
        for (int64_t bh = 0; bh < B * heads; bh++)
            for (int64_t i = 0; i < T; i++) {
                if (!score || !acc)
                    continue;
                int64_t b = bh / heads, h = bh % heads;
                const float *restrict qi = CF(q) + (b * T + i) * C + h * hd;
                int64_t n_keys = causal ? i + 1 : S;
#ifdef HAVE_AVX512_PATHS
                if (have_avx512()) {
                    attend_row_avx512(F(o) + (b * T + i) * Cv + h * hdv, qi,
                                      CF(k) + b * S * C + h * hd, C,
                                      CF(v) + b * S * Cv + h * hdv, Cv, n_keys, hd, hdv,
                                      scale, score);
                    continue;
                }
#endif
                float max = -INFINITY;
                for (int64_t j = 0; j < n_keys; j++) {
                    const float *restrict kj = CF(k) + (b * S + j) * C + h * hd;
                    float dot = 0;
                    /* simd: lets the compiler split the sum across lanes. */
#pragma omp simd reduction(+ : dot)
                    for (int64_t d = 0; d < hd; d++)
                        dot += qi[d] * kj[d];
                    score[j] = dot * scale;
                    if (score[j] > max)
                        max = score[j];
                }
                float denom = softmax_exp(score, n_keys, max);
                for (int64_t d = 0; d < hdv; d++)
                    acc[d] = 0;
                for (int64_t j = 0; j < n_keys; j++) {
                    const float *restrict vj = CF(v) + (b * S + j) * Cv + h * hdv;
                    float p = score[j];
#pragma omp simd
                    for (int64_t d = 0; d < hdv; d++)
                        acc[d] += p * vj[d];
                }
                float *oi = F(o) + (b * T + i) * Cv + h * hdv, inv = 1.0f / denom;
                for (int64_t d = 0; d < hdv; d++)
                    oi[d] = acc[d] * inv;
            }
        free(score);
        free(acc);
    }
    return failed ? COIN_ENOMEM : 0;
}

static int cpu_embed(tensor *y, const tensor *table, const int32_t *ids,
                     const tensor *pos)
{
    int64_t BT = y->shape[0] * y->shape[1], T = y->shape[1], D = y->shape[2];
#pragma omp parallel for if (BT * D > 65536)
    for (int64_t i = 0; i < BT; i++) {
        const float *row = CF(table) + (int64_t)ids[i] * D;
        const float *p = CF(pos) + (i % T) * D;
        float *out = F(y) + i * D;
        for (int64_t d = 0; d < D; d++)
            out[d] = row[d] + p[d];
    }
    return 0;
}

/* Each of the n score rows [S] of queries i0.. becomes its softmax; with
 * causal, over the keys up to the query's own position, the rest zeroed. */
static void softmax_block(float *score, int64_t n, int64_t S, int64_t i0, int causal)
{
    for (int64_t r = 0; r < n; r++) {
        float *row = score + r * S;
        int64_t keys = causal ? i0 + r + 1 : S;
        softmax_row(row, keys);
        for (int64_t j = keys; j < S; j++)
            row[j] = 0.0f;
    }
}

/*
 * Long sequences (UNet self-attention over 4096+ positions): blocks of query
 * rows per (batch, head), scores = Q K^T and out = P V as GEMMs.  A block's
 * score matrix is capped at ATTN_BLOCK_FLOATS, so memory stays bounded
 * however long the sequence: the whole T x S matrix is never formed.
 */
#define ATTN_BLOCK_FLOATS (1 << 20)

static int attention_blocks(tensor *o, const tensor *q, const tensor *k,
                            const tensor *v, int heads, int causal)
{
    int64_t B = q->shape[0], T = q->shape[1], S = k->shape[1];
    int64_t C = q->shape[2], Cv = v->shape[2];
    int64_t hd = C / heads, hdv = Cv / heads;
    int64_t rows = ATTN_BLOCK_FLOATS / S;
    if (rows < 1)
        rows = 1;
    if (rows > T)
        rows = T;
    int64_t blocks = (T + rows - 1) / rows, tasks = B * heads * blocks;
    float scale = 1.0f / sqrtf((float)hd);
    int failed = 0;
    /* One task per (batch, head, block of query rows), each on one thread
     * with its own score buffer: inside a parallel region OpenBLAS (the
     * OpenMP build) runs each GEMM single-threaded, which beats splitting
     * every small GEMM across the cores. */
#pragma omp parallel
    {
        float *score = cpu_alloc((size_t)(rows * S) * sizeof(float));
        if (!score) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < tasks; task++) {
            if (!score)
                continue;
            int64_t b = task / (heads * blocks), h = task / blocks % heads;
            int64_t i0 = task % blocks * rows, n = T - i0 < rows ? T - i0 : rows;
            const float *qb = CF(q) + (b * T + i0) * C + h * hd;
            const float *kb = CF(k) + b * S * C + h * hd;
            const float *vb = CF(v) + b * S * Cv + h * hdv;
            float *ob = F(o) + (b * T + i0) * Cv + h * hdv;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)S, (int)hd,
                        scale, qb, (int)C, kb, (int)C, 0.0f, score, (int)S);
            softmax_block(score, n, S, i0, causal);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)hdv, (int)S,
                        1.0f, score, (int)S, vb, (int)Cv, 0.0f, ob, (int)Cv);
        }
        cpu_free(score);
    }
    return failed ? COIN_ENOMEM : 0;
}

/*
 * attention_blocks with coin's packed-weight kernel (gemm.c) in place of
 * OpenBLAS, where the CPU has AVX-512.  Each (batch, head)'s keys K_h
 * [S, hd] and values, as V_h^T [hdv, S], are packed once, before any block;
 * OpenBLAS instead re-packs K_h for every block of query rows and packs
 * every block's whole probability matrix P [rows, S] again before P V,
 * a copy as large as P itself.  A block then costs two kernel calls and the
 * softmax.  The queries are scaled by 1/sqrt(hd) as they are copied.
 * Returns 1 when it could not pack (out of memory): the caller falls back.
 */
static int attention_packed(tensor *o, const tensor *q, const tensor *k, const tensor *v,
                            int heads, int causal)
{
    int64_t B = q->shape[0], T = q->shape[1], S = k->shape[1];
    int64_t C = q->shape[2], Cv = v->shape[2];
    int64_t hd = C / heads, hdv = Cv / heads, BH = B * heads;
    int64_t rows = ATTN_BLOCK_FLOATS / S;
    if (rows < 1)
        rows = 1;
    if (rows > T)
        rows = T;
    int64_t blocks = (T + rows - 1) / rows, tasks = BH * blocks;
    float scale = 1.0f / sqrtf((float)hd);
    gemm_packed **kp = calloc((size_t)(2 * BH), sizeof *kp), **vp = kp + BH;
    if (!kp)
        return 1;
    int failed = 0;
#pragma omp parallel
    {
        int64_t tmp_floats = S * (hd > hdv ? hd : hdv);
        float *tmp = malloc((size_t)tmp_floats * sizeof(float));
#pragma omp for schedule(dynamic)
        for (int64_t bh = 0; bh < BH; bh++) {
            int64_t b = bh / heads, h = bh % heads;
            if (!tmp)
                continue;
            for (int64_t j = 0; j < S; j++)
                memcpy(tmp + j * hd, CF(k) + (b * S + j) * C + h * hd, (size_t)hd * sizeof(float));
            kp[bh] = gemm_pack(tmp, S, hd);
            for (int64_t j = 0; j < S; j++)
                for (int64_t d = 0; d < hdv; d++)
                    tmp[d * S + j] = CF(v)[(b * S + j) * Cv + h * hdv + d];
            vp[bh] = gemm_pack(tmp, hdv, S);
        }
        free(tmp);
        for (int64_t bh = 0; bh < BH; bh++)
            if (!kp[bh] || !vp[bh]) {
#pragma omp atomic write
                failed = 1;
            }
#pragma omp barrier
        float *qb = cpu_alloc((size_t)(rows * (hd + S + hdv)) * sizeof(float));
        float *score = qb ? qb + rows * hd : NULL, *ob = qb ? score + rows * S : NULL;
        if (!qb) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < tasks; task++) {
            if (!qb || failed)
                continue;
            int64_t bh = task / blocks, b = bh / heads, h = bh % heads;
            int64_t i0 = task % blocks * rows, n = T - i0 < rows ? T - i0 : rows;
            for (int64_t r = 0; r < n; r++) {
                const float *src = CF(q) + (b * T + i0 + r) * C + h * hd;
                for (int64_t d = 0; d < hd; d++)
                    qb[r * hd + d] = src[d] * scale;
            }
            gemm_packed_linear(score, qb, kp[bh], NULL, n);
            softmax_block(score, n, S, i0, causal);
            gemm_packed_linear(ob, score, vp[bh], NULL, n);
            for (int64_t r = 0; r < n; r++)
                memcpy(F(o) + (b * T + i0 + r) * Cv + h * hdv, ob + r * hdv,
                       (size_t)hdv * sizeof(float));
        }
        cpu_free(qb);
    }
    for (int64_t bh = 0; bh < 2 * BH; bh++)
        gemm_packed_free(kp[bh]);
    free(kp);
    return failed;
}

static int cpu_attention(tensor *o, const tensor *q, const tensor *k,
                         const tensor *v, int heads, int causal)
{
    /* Below this many scores per head GEMM set-up costs more than it saves. */
    if (q->shape[1] * k->shape[1] <= 128 * 128)
        return attention_rows(o, q, k, v, heads, causal);
    if (have_avx512() && !attention_packed(o, q, k, v, heads, causal))
        return 0;
    return attention_blocks(o, q, k, v, heads, causal);
}

/*
 * Convolution as im2col + GEMM, one band of output rows at a time so that
 * the column buffer stays under CONV_BAND_FLOATS (a 512x512 VAE layer would
 * otherwise need over a gigabyte).  1x1 convolutions skip im2col.
 */
#define CONV_BAND_FLOATS (1 << 21)

/*
 * 3x3 convolutions with stride 1 and padding 1 (nearly all of the UNet's
 * and the VAE's) go through Winograd's F(2x2, 3x3) (winograd.c) when there
 * are enough 2x2 output tiles to pay for transforming the filters on every
 * call: at SD 1.5's 8x8 level (32 tiles for a guided step) the filter
 * transform alone would cost about as much as im2col's GEMM.
 */
#define WINOGRAD_MIN_TILES 128

static int use_winograd(int64_t B, int64_t H, int64_t W, int64_t KH, int64_t KW, int stride,
                        const int pad[4])
{
    return KH == 3 && KW == 3 && stride == 1 && pad[0] == 1 && pad[1] == 1 && pad[2] == 1 &&
           pad[3] == 1 && B * ((H + 1) / 2) * ((W + 1) / 2) >= WINOGRAD_MIN_TILES;
}

static int cpu_conv2d(tensor *y, const tensor *x, const tensor *w, const tensor *b,
                      int stride, const int pad[4])
{
    int64_t B = x->shape[0], Ci = x->shape[1], H = x->shape[2], W = x->shape[3];
    int64_t Co = w->shape[0], KH = w->shape[2], KW = w->shape[3];
    if (use_winograd(B, H, W, KH, KW, stride, pad))
        return winograd_conv3x3(F(y), CF(x), CF(w), b ? CF(b) : NULL, B, Ci, Co, H, W, 0);
    int64_t Ho = y->shape[2], Wo = y->shape[3], K = Ci * KH * KW;
    int pointwise = KH == 1 && KW == 1 && stride == 1 && !pad[0] && !pad[1] && !pad[2] && !pad[3];
    int64_t band = pointwise ? Ho : CONV_BAND_FLOATS / (K * Wo);
    if (band < 1)
        band = 1;
    if (band > Ho)
        band = Ho;
    float *cols = pointwise ? NULL : cpu_alloc((size_t)(K * band * Wo) * sizeof(float));
    if (!pointwise && !cols)
        return COIN_ENOMEM;
    for (int64_t n = 0; n < B; n++) {
        const float *xn = CF(x) + n * Ci * H * W;
        float *yn = F(y) + n * Co * Ho * Wo;
        if (pointwise) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Co, (int)(H * W),
                        (int)Ci, 1.0f, CF(w), (int)Ci, xn, (int)(H * W), 0.0f, yn, (int)(H * W));
            continue;
        }
        for (int64_t r0 = 0; r0 < Ho; r0 += band) {
            int64_t rows = Ho - r0 < band ? Ho - r0 : band, width = rows * Wo;
#pragma omp parallel for
            for (int64_t kk = 0; kk < K; kk++) {
                int64_t c = kk / (KH * KW), ky = kk / KW % KH, kx = kk % KW;
                float *dst = cols + kk * width;
                for (int64_t oy = 0; oy < rows; oy++) {
                    int64_t iy = (r0 + oy) * stride + ky - pad[0];
                    for (int64_t ox = 0; ox < Wo; ox++) {
                        int64_t ix = ox * stride + kx - pad[2];
                        dst[oy * Wo + ox] = iy >= 0 && iy < H && ix >= 0 && ix < W
                                                ? xn[(c * H + iy) * W + ix] : 0.0f;
                    }
                }
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Co, (int)width, (int)K,
                        1.0f, CF(w), (int)K, cols, (int)width, 0.0f, yn + r0 * Wo, (int)(Ho * Wo));
        }
    }
    cpu_free(cols);
    if (b) {
        const float *bias = CF(b);
#pragma omp parallel for collapse(2)
        for (int64_t n = 0; n < B; n++)
            for (int64_t c = 0; c < Co; c++) {
                float *p = F(y) + (n * Co + c) * Ho * Wo;
                for (int64_t i = 0; i < Ho * Wo; i++)
                    p[i] += bias[c];
            }
    }
    return 0;
}

#ifdef HAVE_AVX512_PATHS
/* mean and variance of in[0..n), summed in double as the scalar loop does
 * (eight double lanes per half-vector, added up at the end). */
__attribute__((target("avx512f"))) static void moments_avx512(const float *in, int64_t n,
                                                              double *mean, double *var)
{
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16) {
        __m512 v = _mm512_maskz_loadu_ps(tail_mask(n - i), in + i);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(
                                   _mm512_castps_pd(v), 1))));
    }
    double m = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1)) / (double)n;
    __m512d vm = _mm512_set1_pd(m);
    s0 = s1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(k, in + i);
        __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        /* masked-off lanes hold 0, whose deviation must not count */
        lo = _mm512_maskz_sub_pd((__mmask8)k, lo, vm);
        hi = _mm512_maskz_sub_pd((__mmask8)(k >> 8), hi, vm);
        s0 = _mm512_fmadd_pd(lo, lo, s0);
        s1 = _mm512_fmadd_pd(hi, hi, s1);
    }
    *mean = m;
    *var = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1)) / (double)n;
}

/* out = (float)(in - mean) * a + sh over n floats. */
__attribute__((target("avx512f"))) static void norm_apply_avx512(float *out, const float *in,
                                                                 int64_t n, double mean,
                                                                 float a, float sh)
{
    __m512d vm = _mm512_set1_pd(mean);
    __m512 va = _mm512_set1_ps(a), vs = _mm512_set1_ps(sh);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(k, in + i);
        __m256 lo = _mm512_cvtpd_ps(_mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), vm));
        __m256 hi = _mm512_cvtpd_ps(_mm512_sub_pd(
            _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))), vm));
        __m512 d = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)),
                                                       _mm256_castps_pd(hi), 1));
        _mm512_mask_storeu_ps(out + i, k, _mm512_fmadd_ps(d, va, vs));
    }
}
#endif

static int cpu_group_norm(tensor *y, const tensor *x, const tensor *g,
                          const tensor *b, int groups, float eps)
{
    int64_t B = x->shape[0], C = x->shape[1], S = x->n / (B * C), cg = C / groups;
    const float *gamma = CF(g), *beta = CF(b);
#pragma omp parallel for collapse(2)
    for (int64_t n = 0; n < B; n++)
        for (int64_t grp = 0; grp < groups; grp++) {
            const float *in = CF(x) + (n * C + grp * cg) * S;
            float *out = F(y) + (n * C + grp * cg) * S;
#ifdef HAVE_AVX512_PATHS
            if (have_avx512()) {
                double mean, var;
                moments_avx512(in, cg * S, &mean, &var);
                float inv = (float)(1.0 / sqrt(var + eps));
                for (int64_t c = 0; c < cg; c++)
                    norm_apply_avx512(out + c * S, in + c * S, S, mean,
                                      inv * gamma[grp * cg + c], beta[grp * cg + c]);
                continue;
            }
#endif
            double sum = 0, sq = 0;
            for (int64_t i = 0; i < cg * S; i++)
                sum += in[i];
            double mean = sum / (double)(cg * S);
            for (int64_t i = 0; i < cg * S; i++)
                sq += (in[i] - mean) * (in[i] - mean);
            float inv = (float)(1.0 / sqrt(sq / (double)(cg * S) + eps));
            for (int64_t c = 0; c < cg; c++) {
                float a = inv * gamma[grp * cg + c], sh = beta[grp * cg + c];
                for (int64_t i = 0; i < S; i++)
                    out[c * S + i] = (float)(in[c * S + i] - mean) * a + sh;
            }
        }
    return 0;
}

static int cpu_silu(tensor *y, const tensor *x)
{
    float *out = F(y);
    const float *in = CF(x);
#ifdef HAVE_AVX512_PATHS
    if (have_avx512()) {
        x_sigmoid_avx512(out, in, y->n, 1.0f);
        return 0;
    }
#endif
#pragma omp parallel for if (y->n > 65536)
    for (int64_t i = 0; i < y->n; i++)
        out[i] = in[i] / (1.0f + expf(-in[i]));
    return 0;
}

static int cpu_upsample2x(tensor *y, const tensor *x)
{
    int64_t BC = x->shape[0] * x->shape[1], H = x->shape[2], W = x->shape[3];
#pragma omp parallel for
    for (int64_t p = 0; p < BC; p++) {
        const float *in = CF(x) + p * H * W;
        float *out = F(y) + p * 4 * H * W;
        for (int64_t i = 0; i < 2 * H; i++)
            for (int64_t j = 0; j < 2 * W; j++)
                out[i * 2 * W + j] = in[(i / 2) * W + j / 2];
    }
    return 0;
}

static int cpu_concat(tensor *y, const tensor *a, const tensor *b)
{
    int64_t B = a->shape[0], na = a->n / B, nb = b->n / B;
    for (int64_t n = 0; n < B; n++) {
        memcpy(F(y) + n * (na + nb), CF(a) + n * na, (size_t)na * sizeof(float));
        memcpy(F(y) + n * (na + nb) + na, CF(b) + n * nb, (size_t)nb * sizeof(float));
    }
    return 0;
}

static int cpu_add_channel(tensor *y, const tensor *x, const tensor *v)
{
    int64_t BC = x->shape[0] * x->shape[1], S = x->n / BC;
    const float *add = CF(v);
#pragma omp parallel for if (x->n > 65536)
    for (int64_t p = 0; p < BC; p++)
        for (int64_t i = 0; i < S; i++)
            F(y)[p * S + i] = CF(x)[p * S + i] + add[p];
    return 0;
}

static int cpu_transpose(tensor *y, const tensor *x)
{
    int64_t B = x->shape[0], M = x->shape[1], N = x->shape[2];
    /* Tiles keep both the reads and the writes within cache lines. */
    enum { TILE = 32 };
#pragma omp parallel for collapse(2)
    for (int64_t n = 0; n < B; n++)
        for (int64_t i0 = 0; i0 < M; i0 += TILE)
            for (int64_t j0 = 0; j0 < N; j0 += TILE) {
                const float *in = CF(x) + n * M * N;
                float *out = F(y) + n * M * N;
                for (int64_t i = i0; i < i0 + TILE && i < M; i++)
                    for (int64_t j = j0; j < j0 + TILE && j < N; j++)
                        out[j * M + i] = in[i * N + j];
            }
    return 0;
}

static int cpu_geglu(tensor *y, const tensor *x)
{
    int64_t width = y->shape[y->ndim - 1], M = y->n / width;
#ifdef HAVE_AVX512_PATHS
    /* gelu_avx512 inside a row loop runs on its caller's thread alone. */
    int fast = have_avx512();
#else
    int fast = 0;
#endif
#pragma omp parallel for if (y->n > 65536)
    for (int64_t r = 0; r < M; r++) {
        const float *val = CF(x) + r * 2 * width, *gate = val + width;
        float *out = F(y) + r * width;
#ifdef HAVE_AVX512_PATHS
        if (fast) {
            gelu_avx512(out, gate, width);
            for (int64_t j = 0; j < width; j++)
                out[j] *= val[j];
            continue;
        }
#endif
        for (int64_t j = 0; j < width; j++)
            out[j] = val[j] * 0.5f * gate[j] * (1.0f + erff(gate[j] * (float)M_SQRT1_2));
    }
    return 0;
}

static int cpu_scale(tensor *y, const tensor *x, float s)
{
#pragma omp parallel for if (y->n > 65536)
    for (int64_t i = 0; i < y->n; i++)
        F(y)[i] = CF(x)[i] * s;
    return 0;
}

/* ==== Backward ops ====
 *
 * Gradients of activations only: textual inversion trains a few embedding
 * rows, so no weight gradient is ever formed.  Each op recomputes what it
 * needs from the saved forward input (normalisation statistics, softmax
 * rows) rather than have the forward store it.  Reductions that decide
 * accuracy are again accumulated in double.
 */

/* dx[M,K] = dy[M,N] w[N,K]: the forward's GEMM with w untransposed. */
static int cpu_linear_backward(tensor *dx, const tensor *dy, const tensor *w)
{
    if (!dx->n)
        return 0;
    int64_t N = w->shape[0], K = w->shape[1], M = dx->n / K;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)K, (int)N,
                1.0f, CF(dy), (int)N, CF(w), (int)K, 0.0f, F(dx), (int)K);
    return 0;
}

/*
 * The normalisation backward shared by LayerNorm and GroupNorm, for one set
 * of n = runs * run values normalised together, gamma[c] applying to run c:
 * with xhat = (x - mean) * rstd and e = dy * gamma,
 *   dx = rstd * (e - mean(e) - xhat * mean(e * xhat)).
 * Every pass reads x[i] and dy[i] before dx[i] is written, so dx may alias
 * either.
 */
static void norm_backward(float *dx, const float *dy, const float *x, const float *gamma,
                          int64_t runs, int64_t run, float eps)
{
    int64_t n = runs * run;
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < n; i++)
        sum += x[i];
    double mean = sum / (double)n;
    for (int64_t i = 0; i < n; i++)
        sq += (x[i] - mean) * (x[i] - mean);
    /* The forward's biased variance and eps. */
    double rstd = 1.0 / sqrt(sq / (double)n + eps);
    double se = 0, sex = 0;
    for (int64_t c = 0; c < runs; c++)
        for (int64_t i = c * run; i < (c + 1) * run; i++) {
            double e = (double)dy[i] * gamma[c];
            se += e;
            sex += e * (x[i] - mean) * rstd;
        }
    double me = se / (double)n, mex = sex / (double)n;
    for (int64_t c = 0; c < runs; c++)
        for (int64_t i = c * run; i < (c + 1) * run; i++) {
            double xhat = (x[i] - mean) * rstd;
            dx[i] = (float)(rstd * ((double)dy[i] * gamma[c] - me - xhat * mex));
        }
}

static int cpu_layernorm_backward(tensor *dx, const tensor *dy, const tensor *x,
                                  const tensor *g, float eps)
{
    if (!x->n)
        return 0;
    int64_t D = x->shape[x->ndim - 1], M = x->n / D;
    /* One run per element: gamma varies along the row. */
#pragma omp parallel for if (M * D > 65536)
    for (int64_t i = 0; i < M; i++)
        norm_backward(F(dx) + i * D, CF(dy) + i * D, CF(x) + i * D, CF(g), D, 1, eps);
    return 0;
}

static int cpu_group_norm_backward(tensor *dx, const tensor *dy, const tensor *x,
                                   const tensor *g, int groups, float eps)
{
    if (!x->n)
        return 0;
    int64_t B = x->shape[0], C = x->shape[1], S = x->n / (B * C), cg = C / groups;
    /* One run per channel of the group. */
#pragma omp parallel for collapse(2) if (x->n > 65536)
    for (int64_t n = 0; n < B; n++)
        for (int64_t grp = 0; grp < groups; grp++) {
            int64_t off = (n * C + grp * cg) * S;
            norm_backward(F(dx) + off, CF(dy) + off, CF(x) + off, CF(g) + grp * cg, cg, S,
                          eps);
        }
    return 0;
}

/* d/dx of x Phi(x) = Phi(x) + x phi(x), phi the standard normal density. */
static float gelu_grad(float x)
{
    const float inv_sqrt_2pi = 0.3989422804014327f;
    return 0.5f * (1.0f + erff(x * (float)M_SQRT1_2)) + x * inv_sqrt_2pi * expf(-0.5f * x * x);
}

static int cpu_gelu_backward(tensor *dx, const tensor *dy, const tensor *x)
{
#pragma omp parallel for if (dx->n > 65536)
    for (int64_t i = 0; i < dx->n; i++)
        F(dx)[i] = CF(dy)[i] * gelu_grad(CF(x)[i]);
    return 0;
}

/* d/dx of x s(ax) = s + a x s (1 - s), s the logistic sigmoid. */
static float sigmoid_gate_grad(float x, float a)
{
    float s = 1.0f / (1.0f + expf(-a * x));
    return s + a * x * s * (1.0f - s);
}

static int cpu_quick_gelu_backward(tensor *dx, const tensor *dy, const tensor *x)
{
#pragma omp parallel for if (dx->n > 65536)
    for (int64_t i = 0; i < dx->n; i++)
        F(dx)[i] = CF(dy)[i] * sigmoid_gate_grad(CF(x)[i], 1.702f);
    return 0;
}

static int cpu_silu_backward(tensor *dx, const tensor *dy, const tensor *x)
{
#pragma omp parallel for if (dx->n > 65536)
    for (int64_t i = 0; i < dx->n; i++)
        F(dx)[i] = CF(dy)[i] * sigmoid_gate_grad(CF(x)[i], 1.0f);
    return 0;
}

/* y = val * gelu(gate): dval = dy gelu(gate), dgate = dy val gelu'(gate). */
static int cpu_geglu_backward(tensor *dx, const tensor *dy, const tensor *x)
{
    if (!dy->n)
        return 0;
    int64_t width = dy->shape[dy->ndim - 1], M = dy->n / width;
#pragma omp parallel for if (dy->n > 65536)
    for (int64_t r = 0; r < M; r++) {
        const float *val = CF(x) + r * 2 * width, *gate = val + width;
        const float *grad = CF(dy) + r * width;
        float *dval = F(dx) + r * 2 * width, *dgate = dval + width;
        for (int64_t j = 0; j < width; j++) {
            /* Both halves read before either is written: dx may alias x. */
            float v = val[j], gt = gate[j];
            dval[j] = grad[j] * 0.5f * gt * (1.0f + erff(gt * (float)M_SQRT1_2));
            dgate[j] = grad[j] * v * gelu_grad(gt);
        }
    }
    return 0;
}

/*
 * Attention backward, flash-attention style: per (batch, head), blocks of
 * query rows as in attention_blocks.  For a block, with s = 1/sqrt(hd),
 *   P  = softmax(s Q K^T)            recomputed, [n, S]
 *   dV += P^T dO                     [S, hdv]
 *   dP = dO V^T                      [n, S]
 *   dZ = P * (dP - rowsum(P * dP))   the softmax backward (rowsum(P * dP) is
 *                                    rowsum(dO * O), without needing O)
 *   dQ = s dZ K,   dK += s dZ^T Q
 * Two blocks of at most ATTN_BLOCK_FLOATS are the only scratch, however long
 * the sequence.  Causal blocks stop at their last query's key.
 */
static int cpu_attention_backward(tensor *dq, tensor *dk, tensor *dv, const tensor *dout,
                                  const tensor *q, const tensor *k, const tensor *v,
                                  int heads, int causal)
{
    int64_t B = q->shape[0], T = q->shape[1], S = k->shape[1];
    int64_t C = q->shape[2], Cv = v->shape[2];
    int64_t hd = C / heads, hdv = Cv / heads;
    memset(F(dk), 0, (size_t)dk->n * sizeof(float));
    memset(F(dv), 0, (size_t)dv->n * sizeof(float));
    if (!T || !S) {
        memset(F(dq), 0, (size_t)dq->n * sizeof(float));
        return 0;
    }
    int64_t rows = ATTN_BLOCK_FLOATS / S;
    if (rows < 1)
        rows = 1;
    if (rows > T)
        rows = T;
    float *p = cpu_alloc((size_t)(rows * S) * sizeof(float));
    float *dp = cpu_alloc((size_t)(rows * S) * sizeof(float));
    if (!p || !dp) {
        cpu_free(p);
        cpu_free(dp);
        return COIN_ENOMEM;
    }
    float scale = 1.0f / sqrtf((float)hd);
    for (int64_t b = 0; b < B; b++)
        for (int h = 0; h < heads; h++)
            for (int64_t i0 = 0; i0 < T; i0 += rows) {
                int64_t n = T - i0 < rows ? T - i0 : rows;
                /* Keys this block sees (causal: T == S, so this is <= S). */
                int64_t keys = causal ? i0 + n : S;
                const float *qb = CF(q) + (b * T + i0) * C + h * hd;
                const float *kb = CF(k) + b * S * C + h * hd;
                const float *vb = CF(v) + b * S * Cv + h * hdv;
                const float *dob = CF(dout) + (b * T + i0) * Cv + h * hdv;
                float *dqb = F(dq) + (b * T + i0) * C + h * hd;
                float *dkb = F(dk) + b * S * C + h * hd;
                float *dvb = F(dv) + b * S * Cv + h * hdv;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)keys,
                            (int)hd, scale, qb, (int)C, kb, (int)C, 0.0f, p, (int)keys);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)keys,
                            (int)hdv, 1.0f, dob, (int)Cv, vb, (int)Cv, 0.0f, dp, (int)keys);
#pragma omp parallel for if (n * keys > 65536)
                for (int64_t r = 0; r < n; r++) {
                    float *pr = p + r * keys, *dpr = dp + r * keys;
                    int64_t seen = causal ? i0 + r + 1 : keys;
                    softmax_row(pr, seen);
                    double dot = 0;
                    for (int64_t j = 0; j < seen; j++)
                        dot += (double)pr[j] * dpr[j];
                    /* dZ, with the score scale folded in for dQ and dK. */
                    for (int64_t j = 0; j < seen; j++)
                        dpr[j] = pr[j] * (float)(dpr[j] - dot) * scale;
                    for (int64_t j = seen; j < keys; j++)
                        pr[j] = dpr[j] = 0.0f;
                }
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)keys, (int)hdv,
                            (int)n, 1.0f, p, (int)keys, dob, (int)Cv, 1.0f, dvb, (int)Cv);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)hd,
                            (int)keys, 1.0f, dp, (int)keys, kb, (int)C, 0.0f, dqb, (int)C);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)keys, (int)hd,
                            (int)n, 1.0f, dp, (int)keys, qb, (int)C, 1.0f, dkb, (int)C);
            }
    cpu_free(p);
    cpu_free(dp);
    return 0;
}

/*
 * The convolution's input gradient: per band of output rows (as in
 * cpu_conv2d, so the column buffer stays under CONV_BAND_FLOATS), the
 * column gradient dcols[K, band*Wo] = w^T dy_band by GEMM, then col2im adds
 * each column entry back onto the input pixel it was read from.  Bands
 * overlap in input rows, so col2im adds rather than stores; it runs one
 * input channel per thread, since only that channel's kernel taps touch its
 * plane.  Stride and asymmetric padding enter only through the index map,
 * the same one im2col uses.
 */
static int cpu_conv2d_backward_input(tensor *dx, const tensor *dy, const tensor *w,
                                     int stride, const int pad[4])
{
    int64_t B = dx->shape[0], Ci = dx->shape[1], H = dx->shape[2], W = dx->shape[3];
    int64_t Co = w->shape[0], KH = w->shape[2], KW = w->shape[3];
    int64_t Ho = dy->shape[2], Wo = dy->shape[3], K = Ci * KH * KW;
    int pointwise = KH == 1 && KW == 1 && stride == 1 && !pad[0] && !pad[1] && !pad[2] && !pad[3];
    if (!dx->n)
        return 0;
    if (use_winograd(B, H, W, KH, KW, stride, pad))
        return winograd_conv3x3(F(dx), CF(dy), CF(w), NULL, B, Co, Ci, H, W, 1);
    if (pointwise) {
        /* dx[Ci, HW] = w^T[Ci, Co] dy[Co, HW] per image. */
        for (int64_t n = 0; n < B; n++)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)Ci, (int)(H * W),
                        (int)Co, 1.0f, CF(w), (int)Ci, CF(dy) + n * Co * H * W, (int)(H * W),
                        0.0f, F(dx) + n * Ci * H * W, (int)(H * W));
        return 0;
    }
    int64_t band = CONV_BAND_FLOATS / (K * Wo);
    if (band < 1)
        band = 1;
    if (band > Ho)
        band = Ho;
    float *cols = cpu_alloc((size_t)(K * band * Wo) * sizeof(float));
    if (!cols)
        return COIN_ENOMEM;
    /* Pixels no tap reads (stride 2 past the last window) get no gradient. */
    memset(F(dx), 0, (size_t)dx->n * sizeof(float));
    for (int64_t n = 0; n < B; n++) {
        const float *dyn = CF(dy) + n * Co * Ho * Wo;
        float *dxn = F(dx) + n * Ci * H * W;
        for (int64_t r0 = 0; r0 < Ho; r0 += band) {
            int64_t rows = Ho - r0 < band ? Ho - r0 : band, width = rows * Wo;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)K, (int)width, (int)Co,
                        1.0f, CF(w), (int)K, dyn + r0 * Wo, (int)(Ho * Wo), 0.0f, cols,
                        (int)width);
#pragma omp parallel for if (K * width > 65536)
            for (int64_t c = 0; c < Ci; c++)
                for (int64_t ky = 0; ky < KH; ky++)
                    for (int64_t kx = 0; kx < KW; kx++) {
                        const float *src = cols + ((c * KH + ky) * KW + kx) * width;
                        float *plane = dxn + c * H * W;
                        for (int64_t oy = 0; oy < rows; oy++) {
                            int64_t iy = (r0 + oy) * stride + ky - pad[0];
                            if (iy < 0 || iy >= H)
                                continue;
                            for (int64_t ox = 0; ox < Wo; ox++) {
                                int64_t ix = ox * stride + kx - pad[2];
                                if (ix >= 0 && ix < W)
                                    plane[iy * W + ix] += src[oy * Wo + ox];
                            }
                        }
                    }
        }
    }
    cpu_free(cols);
    return 0;
}

static int cpu_upsample2x_backward(tensor *dx, const tensor *dy)
{
    int64_t BC = dx->shape[0] * dx->shape[1], H = dx->shape[2], W = dx->shape[3];
#pragma omp parallel for if (dy->n > 65536)
    for (int64_t p = 0; p < BC; p++) {
        const float *in = CF(dy) + p * 4 * H * W;
        float *out = F(dx) + p * H * W;
        for (int64_t i = 0; i < H; i++)
            for (int64_t j = 0; j < W; j++) {
                const float *top = in + 2 * i * 2 * W + 2 * j, *bottom = top + 2 * W;
                out[i * W + j] = (top[0] + top[1]) + (bottom[0] + bottom[1]);
            }
    }
    return 0;
}

static int cpu_split(tensor *a, tensor *b, const tensor *y)
{
    int64_t B = a->shape[0], na = a->n / B, nb = b->n / B;
    for (int64_t n = 0; n < B; n++) {
        memcpy(F(a) + n * na, CF(y) + n * (na + nb), (size_t)na * sizeof(float));
        memcpy(F(b) + n * nb, CF(y) + n * (na + nb) + na, (size_t)nb * sizeof(float));
    }
    return 0;
}

/* Serial over positions: there are at most a few hundred, and positions that
 * share an id would race on its row. */
static int cpu_embed_backward(tensor *drows, const tensor *dy, const int32_t *ids,
                              int first_id)
{
    int64_t BT = dy->shape[0] * dy->shape[1], D = dy->shape[2], R = drows->shape[0];
    for (int64_t i = 0; i < BT; i++) {
        int64_t row = (int64_t)ids[i] - first_id;
        if (row < 0 || row >= R)
            continue;
        float *dst = F(drows) + row * D;
        const float *src = CF(dy) + i * D;
        for (int64_t d = 0; d < D; d++)
            dst[d] += src[d];
    }
    return 0;
}

static int cpu_axpy(tensor *y, const tensor *x, float a)
{
#pragma omp parallel for if (y->n > 65536)
    for (int64_t i = 0; i < y->n; i++)
        F(y)[i] += a * CF(x)[i];
    return 0;
}

static const coin_backend cpu_backend = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .free_derived = cpu_free_derived,
#define COIN_OP_INIT(name, args) .name = cpu_##name,
    COIN_BACKEND_OPS(COIN_OP_INIT)
#undef COIN_OP_INIT
};

const coin_backend *backend_cpu(void) { return &cpu_backend; }
