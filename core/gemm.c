/*
 * gemm.c - the packed-weight GEMM behind the CPU backend's linear layers
 * with few rows (see gemm.h).
 *
 * Layout: panel p holds output columns [32p, 32p + 32) of w, k-major: float
 * data[p][k][j] = w[32p + j][k], zero past N.  One k step of the kernel then
 * loads two AVX-512 vectors of weights and broadcasts one x value per row.
 *
 * Blocking: rows are cut into blocks of at most ~GEMM_XBLOCK_FLOATS /
 * GEMM_KC (all 77 of the text encoder's in one), a row block into balanced
 * tiles of at most GEMM_MR rows (77 rows become 7 tiles of 11, not 6 of 12
 * and one of 5), and a task is one (row block, panel) pair.  A task walks K
 * in blocks of GEMM_KC so that the panel's block (32 KiB) stays in L1 while
 * every tile of the row block uses it; the x rows come from L2.  Each K
 * block is summed from zero and then added to the earlier blocks' total in
 * y: a blocked sum, whose rounding error grows with K / GEMM_KC + GEMM_KC
 * rather than K (measured on the SD text encoders: the max error against
 * the reference halved against one running sum).  The thread count and the
 * schedule change no bit, since every output is computed by exactly one
 * task, in the same order.
 */
#include "gemm.h"

#include <immintrin.h>
#include <stdlib.h>
#include <sys/mman.h>

#define GEMM_MR 12
#ifndef GEMM_KC /* a -D for tuning with tools/bench/bench_gemm.c */
#define GEMM_KC 256
#endif
#define GEMM_XBLOCK_FLOATS (48 * 1024)
/* Below this many multiply-adds a call stays on one thread. */
#define GEMM_PARALLEL_MIN (1 << 18)

struct gemm_packed {
    int64_t N, K, panels;
    float *data; /* [panels][K][GEMM_NR], 64-byte aligned */
};

int gemm_packed_available(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
    return 0;
#endif
}

gemm_packed *gemm_pack(const float *w, int64_t N, int64_t K)
{
    if (N <= 0 || K <= 0 || !gemm_packed_available())
        return NULL;
    gemm_packed *p = malloc(sizeof *p);
    if (!p)
        return NULL;
    p->N = N;
    p->K = K;
    p->panels = (N + GEMM_NR - 1) / GEMM_NR;
    size_t bytes = (size_t)(p->panels * K * GEMM_NR) * sizeof(float);
    /* Large copies on 2 MiB pages where the kernel allows it: packing a text
     * encoder (hundreds of MiB) otherwise spends most of its time faulting
     * in 4 KiB pages, and the kernel's reads miss the TLB less. */
    size_t huge = (size_t)1 << 21, whole = bytes / huge * huge;
    /* Only whole huge pages are advised, so the tail costs no extra memory;
     * the alignment slack is address space, never touched. */
    p->data = aligned_alloc(whole ? huge : 64, (bytes + 63) & ~(size_t)63);
    if (!p->data) {
        free(p);
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    if (whole)
        madvise(p->data, whole, MADV_HUGEPAGE); /* advice only: failure is fine */
#endif
    int64_t panels = p->panels;
    float *data = p->data;
#pragma omp parallel for schedule(static) if (N * K > (1 << 16))
    for (int64_t pi = 0; pi < panels; pi++) {
        float *dst = data + pi * K * GEMM_NR;
        int64_t cols = N - pi * GEMM_NR < GEMM_NR ? N - pi * GEMM_NR : GEMM_NR;
        for (int64_t k = 0; k < K; k++) {
            for (int64_t j = 0; j < cols; j++)
                dst[k * GEMM_NR + j] = w[(pi * GEMM_NR + j) * K + k];
            for (int64_t j = cols; j < GEMM_NR; j++)
                dst[k * GEMM_NR + j] = 0.0f;
        }
    }
    return p;
}

void gemm_packed_free(gemm_packed *p)
{
    if (!p)
        return;
    free(p->data);
    free(p);
}

int64_t gemm_packed_rows(const gemm_packed *p) { return p->N; }
int64_t gemm_packed_cols(const gemm_packed *p) { return p->K; }

#if defined(__x86_64__) && defined(__GNUC__)

/*
 * One tile: rows y[0..mr) x the panel's 32 columns (masked by m0, m1), over
 * kc steps of k.  The block's sums start at zero and are added to y's
 * unless first; b: add the bias (the last K block only; NULL otherwise).  mr is a constant in each
 * instantiation below, so the accumulators live in registers.
 */
__attribute__((target("avx512f"), always_inline)) static inline void
tile(int mr, int64_t kc, const float *x, int64_t ldx, const float *pw,
     float *y, int64_t ldy, int first, const float *b, __mmask16 m0, __mmask16 m1)
{
    __m512 c0[GEMM_MR], c1[GEMM_MR];
#pragma GCC unroll 12
    for (int r = 0; r < mr; r++) {
        c0[r] = _mm512_setzero_ps();
        c1[r] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < kc; k++) {
        __m512 w0 = _mm512_load_ps(pw + k * GEMM_NR);
        __m512 w1 = _mm512_load_ps(pw + k * GEMM_NR + 16);
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            __m512 xv = _mm512_set1_ps(x[r * ldx + k]);
            c0[r] = _mm512_fmadd_ps(xv, w0, c0[r]);
            c1[r] = _mm512_fmadd_ps(xv, w1, c1[r]);
        }
    }
    if (!first) { /* this K block's sum onto the earlier blocks' */
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            c0[r] = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, y + r * ldy), c0[r]);
            c1[r] = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, y + r * ldy + 16), c1[r]);
        }
    }
    if (b) {
        __m512 b0 = _mm512_maskz_loadu_ps(m0, b), b1 = _mm512_maskz_loadu_ps(m1, b + 16);
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            c0[r] = _mm512_add_ps(c0[r], b0);
            c1[r] = _mm512_add_ps(c1[r], b1);
        }
    }
#pragma GCC unroll 12
    for (int r = 0; r < mr; r++) {
        _mm512_mask_storeu_ps(y + r * ldy, m0, c0[r]);
        _mm512_mask_storeu_ps(y + r * ldy + 16, m1, c1[r]);
    }
}

typedef void tile_fn(int64_t kc, const float *x, int64_t ldx, const float *pw,
                     float *y, int64_t ldy, int first, const float *b,
                     __mmask16 m0, __mmask16 m1);

#define TILE_ROWS(R)                                                              \
    __attribute__((target("avx512f"))) static void tile_##R(                      \
        int64_t kc, const float *x, int64_t ldx, const float *pw, float *y,       \
        int64_t ldy, int first, const float *b, __mmask16 m0, __mmask16 m1)       \
    {                                                                             \
        tile(R, kc, x, ldx, pw, y, ldy, first, b, m0, m1);                        \
    }
TILE_ROWS(1)
TILE_ROWS(2)
TILE_ROWS(3)
TILE_ROWS(4)
TILE_ROWS(5)
TILE_ROWS(6)
TILE_ROWS(7)
TILE_ROWS(8)
TILE_ROWS(9)
TILE_ROWS(10)
TILE_ROWS(11)
TILE_ROWS(12)
#undef TILE_ROWS

static tile_fn *const tiles[GEMM_MR + 1] = {
    NULL, tile_1, tile_2, tile_3, tile_4, tile_5, tile_6,
    tile_7, tile_8, tile_9, tile_10, tile_11, tile_12,
};

static __mmask16 low_mask(int64_t n)
{
    if (n <= 0)
        return 0;
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
}

/* Rows [r0, r0 + rows) x panel pi over K block [k0, k0 + kc). */
static void block(float *y, const float *x, const gemm_packed *p, const float *b,
                  int64_t r0, int64_t rows, int64_t pi, int64_t k0, int64_t kc)
{
    int64_t N = p->N, K = p->K, c0 = pi * GEMM_NR;
    int64_t cols = N - c0 < GEMM_NR ? N - c0 : GEMM_NR;
    __mmask16 m0 = low_mask(cols), m1 = low_mask(cols - 16);
    const float *pw = p->data + pi * K * GEMM_NR + k0 * GEMM_NR;
    int first = k0 == 0;
    const float *bias = b && k0 + kc == K ? b + c0 : NULL;
    int64_t ntiles = (rows + GEMM_MR - 1) / GEMM_MR;
    int64_t mr = (rows + ntiles - 1) / ntiles;
    for (int64_t r = r0; r < r0 + rows; r += mr) {
        int64_t n = r0 + rows - r < mr ? r0 + rows - r : mr;
        tiles[n](kc, x + r * K + k0, K, pw, y + r * N + c0, N, first, bias, m0, m1);
    }
}

void gemm_packed_linear(float *y, const float *x, const gemm_packed *p,
                        const float *b, int64_t M)
{
    int64_t N = p->N, K = p->K, panels = p->panels;
    if (M <= 0)
        return;
    int64_t kc_max = K < GEMM_KC ? K : GEMM_KC;
    int64_t mb = GEMM_XBLOCK_FLOATS / kc_max / GEMM_MR * GEMM_MR;
    if (mb < GEMM_MR)
        mb = GEMM_MR;
    if (mb > M)
        mb = M;
    int64_t mblocks = (M + mb - 1) / mb, tasks = mblocks * panels;
    int parallel = M * N * K >= GEMM_PARALLEL_MIN && tasks > 1;
    /* Each task runs all of K itself: no barrier between K blocks, and
     * dynamic scheduling lets a thread whose core is busy with other work
     * take fewer tasks, without changing any result. */
#pragma omp parallel for schedule(dynamic) if (parallel)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t r0 = t / panels * mb;
        int64_t rows = M - r0 < mb ? M - r0 : mb;
        for (int64_t k0 = 0; k0 < K; k0 += GEMM_KC) {
            int64_t kc = K - k0 < GEMM_KC ? K - k0 : GEMM_KC;
            block(y, x, p, b, r0, rows, t % panels, k0, kc);
        }
    }
}

#else /* no AVX-512 build: gemm_pack never returns a packed weight */

void gemm_packed_linear(float *y, const float *x, const gemm_packed *p,
                        const float *b, int64_t M)
{
    (void)y, (void)x, (void)p, (void)b, (void)M;
}

#endif
