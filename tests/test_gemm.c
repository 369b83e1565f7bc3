/*
 * test_gemm.c - the packed-weight GEMM (core/gemm.c) against a naive sum in
 * double on awkward shapes, its bit-identity across thread counts, and the
 * CPU backend's cache of packed weights (made on first use, dropped when the
 * weight changes).
 */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/gemm.h"
#include "core/tensor.h"
#include "test.h"

/*
 * Checks y[M,N] against x w^T + b summed in double.  The bound is the
 * classical one for a float sum of K + 1 terms: (K + 1) u sum |terms| with u
 * the unit roundoff, so any wrong index, missed row or stray column fails.
 */
static int matches_definition(const float *y, const float *x, const float *w,
                              const float *b, int64_t M, int64_t N, int64_t K)
{
    double u = FLT_EPSILON / 2;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = b ? b[j] : 0, mag = b ? fabs(b[j]) : 0;
            for (int64_t k = 0; k < K; k++) {
                s += (double)x[i * K + k] * w[j * K + k];
                mag += fabs((double)x[i * K + k] * w[j * K + k]);
            }
            double tol = (double)(K + 2) * u * mag;
            if (!(fabs(y[i * N + j] - s) <= tol)) {
                test_failed(__FILE__, __LINE__,
                            "M=%lld N=%lld K=%lld: y[%lld,%lld] = %.9g, expected %.9g (tol %.3g)",
                            (long long)M, (long long)N, (long long)K, (long long)i,
                            (long long)j, y[i * N + j], s, tol);
                return 0;
            }
        }
    return 1;
}

/* Runs the packed kernel on one shape, with and without bias. */
static void check_shape(int64_t M, int64_t N, int64_t K)
{
    float *x = test_filled(M * K, 11), *w = test_filled(N * K, 12), *b = test_filled(N, 13);
    /* One spare float past y on each side to catch stores outside it. */
    float *buf = malloc(sizeof(float) * (size_t)(M * N + 2));
    REQUIRE(buf);
    float *y = buf + 1;
    gemm_packed *p = gemm_pack(w, N, K);
    REQUIRE(p);
    CHECK(gemm_packed_rows(p) == N && gemm_packed_cols(p) == K);
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        buf[0] = buf[M * N + 1] = 12345.0f;
        gemm_packed_linear(y, x, p, with_bias ? b : NULL, M);
        CHECK(matches_definition(y, x, w, with_bias ? b : NULL, M, N, K));
        CHECK_MSG(buf[0] == 12345.0f && buf[M * N + 1] == 12345.0f,
                  "M=%lld N=%lld K=%lld: a store outside y", (long long)M, (long long)N,
                  (long long)K);
    }
    gemm_packed_free(p);
    free(x), free(w), free(b), free(buf);
}

TEST(gemm_packed_matches_definition_on_awkward_shapes)
{
    if (!gemm_packed_available()) {
        test_skip("this CPU has no AVX-512F; the backend uses OpenBLAS");
        return;
    }
    /* 1s, single partial tiles, exact panel and tile multiples, one past
     * them, K across several K blocks (256), rows across row blocks (192 for
     * K >= 256) and the text encoder's 77 rows. */
    static const int64_t shapes[][3] = {
        {1, 1, 1},     {1, 1, 300},   {1, 33, 1},     {2, 5, 3},     {12, 32, 16},
        {13, 31, 17},  {11, 64, 256}, {25, 65, 257},  {24, 96, 512}, {7, 17, 513},
        {77, 100, 77}, {77, 768, 96}, {193, 40, 260}, {400, 70, 300}, {3, 1000, 1},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        check_shape(shapes[i][0], shapes[i][1], shapes[i][2]);
}

TEST(gemm_packed_is_bit_identical_across_thread_counts)
{
    if (!gemm_packed_available()) {
        test_skip("this CPU has no AVX-512F; the backend uses OpenBLAS");
        return;
    }
    static const int64_t shapes[][3] = {{77, 200, 300}, {400, 70, 520}, {5, 129, 700}};
    int saved = omp_get_max_threads();
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *x = test_filled(M * K, 21), *w = test_filled(N * K, 22), *b = test_filled(N, 23);
        float *y1 = malloc(sizeof(float) * (size_t)(M * N));
        float *yt = malloc(sizeof(float) * (size_t)(M * N));
        REQUIRE(y1 && yt);
        gemm_packed *p = gemm_pack(w, N, K);
        REQUIRE(p);
        omp_set_num_threads(1);
        gemm_packed_linear(y1, x, p, b, M);
        for (int threads = 2; threads <= 3; threads++) {
            omp_set_num_threads(threads);
            gemm_packed_linear(yt, x, p, b, M);
            CHECK_MSG(!memcmp(y1, yt, sizeof(float) * (size_t)(M * N)),
                      "M=%lld N=%lld K=%lld: %d threads differ from 1", (long long)M,
                      (long long)N, (long long)K, threads);
        }
        gemm_packed_free(p);
        free(x), free(w), free(b), free(y1), free(yt);
    }
    omp_set_num_threads(saved);
}

/* The backend packs w at the first op_linear; new contents uploaded into w
 * (or a new shape) must be seen by the next call, not the stale copy. */
TEST(gemm_backend_repacks_a_changed_weight)
{
    enum { M = 9, N = 40, K = 50 };
    coin_error err = {0};
    tensor x, w, b, y;
    REQUIRE_OK(tensor_alloc2(&x, backend_cpu(), M, K, &err), &err);
    REQUIRE_OK(tensor_alloc2(&w, backend_cpu(), N, K, &err), &err);
    REQUIRE_OK(tensor_alloc1(&b, backend_cpu(), N, &err), &err);
    REQUIRE_OK(tensor_alloc2(&y, backend_cpu(), M, N, &err), &err);
    float *hx = test_filled(M * K, 31), *hw = test_filled(N * K, 32), *hb = test_filled(N, 33);
    float hy[M * N];
    REQUIRE_OK(tensor_upload(&x, hx, M * K, &err), &err);
    REQUIRE_OK(tensor_upload(&b, hb, N, &err), &err);
    for (int round = 0; round < 3; round++) {
        if (round == 1) /* whole new contents */
            for (int64_t i = 0; i < N * K; i++)
                hw[i] = -2 * hw[i];
        if (round != 2) {
            REQUIRE_OK(tensor_upload(&w, hw, N * K, &err), &err);
        } else { /* one row changed through a ranged upload */
            for (int64_t k = 0; k < K; k++)
                hw[7 * K + k] += 1.0f;
            REQUIRE_OK(tensor_upload_range(&w, 7 * K, hw + 7 * K, K, &err), &err);
        }
        REQUIRE_OK(op_linear(&y, &x, &w, &b, &err), &err);
        REQUIRE_OK(op_linear(&y, &x, &w, &b, &err), &err); /* from the cache */
        REQUIRE_OK(tensor_download(&y, hy, M * N, &err), &err);
        CHECK_MSG(matches_definition(hy, hx, hw, hb, M, N, K), "round %d", round);
    }
    /* A weight reshaped to [N/2, 2K] is a different matrix. */
    REQUIRE_OK(tensor_reshape(&w, 2, (int64_t[]){N / 2, 2 * K}, &err), &err);
    tensor x2, y2;
    REQUIRE_OK(tensor_alloc2(&x2, backend_cpu(), M, 2 * K, &err), &err);
    REQUIRE_OK(tensor_alloc2(&y2, backend_cpu(), M, N / 2, &err), &err);
    float *hx2 = test_filled(M * 2 * K, 34);
    REQUIRE_OK(tensor_upload(&x2, hx2, M * 2 * K, &err), &err);
    REQUIRE_OK(op_linear(&y2, &x2, &w, NULL, &err), &err);
    REQUIRE_OK(tensor_download(&y2, hy, M * N / 2, &err), &err);
    CHECK(matches_definition(hy, hx2, hw, NULL, M, N / 2, 2 * K));
    tensor_free(&x), tensor_free(&w), tensor_free(&b), tensor_free(&y);
    tensor_free(&x2), tensor_free(&y2);
    CHECK(w.derived == NULL);
    free(hx), free(hw), free(hb), free(hx2);
}

TEST(cpu_backend_reuses_freed_large_blocks)
{
    /* A freed block of a UNet activation's size comes back for the next
     * allocation of that size (no fresh pages to fault in), aligned and
     * whole; small blocks and other sizes get their own memory. */
    const coin_backend *be = backend_cpu();
    size_t big = (size_t)3 << 20;
    float *a = be->alloc(big);
    REQUIRE(a);
    CHECK(((uintptr_t)a & 63) == 0);
    memset(a, 0x5a, big);
    be->free(a);
    float *b = be->alloc(big);
    REQUIRE(b);
    CHECK(b == a);
    memset(b, 0, big);   /* the whole block is still ours */
    float *c = be->alloc(big + 4096);
    REQUIRE(c);
    CHECK(c != b && ((uintptr_t)c & 63) == 0);
    be->free(c);
    be->free(b);
    float *s = be->alloc(100);
    REQUIRE(s);
    CHECK(((uintptr_t)s & 63) == 0);
    be->free(s);
    be->free(NULL);
}
