/*
 * test_winograd.c - the F(2x2, 3x3) convolution (core/winograd.c) against a
 * direct convolution summed in double: forward and input gradient, odd and
 * tiny sizes, several chunks of tiles, bias, no stores outside the output,
 * and bit-identical results at any thread count.
 */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "core/winograd.h"
#include "test.h"

/* The weight of the tap (ky, kx) from input channel i to output channel o of
 * the convolution being computed (the flipped, transposed filter for the
 * input gradient, whose w is the forward's [Ci_out, Ci_in] = [i, o] bank). */
static float tap(const float *w, int64_t Ci, int64_t Co, int64_t o, int64_t i, int ky, int kx,
                 int transposed)
{
    return transposed ? w[((i * Co + o) * 3 + (2 - ky)) * 3 + (2 - kx)]
                      : w[((o * Ci + i) * 3 + ky) * 3 + kx];
}

/*
 * Compares y with the direct sum in double.  F(2x2, 3x3) rounds the
 * transformed tiles and filters: every intermediate of an output's 2x2 block
 * is a signed sum of at most 16 inputs of its 4x4 tile times at most 9 taps
 * with coefficients of magnitude at most 1, so the error is bounded by a
 * small multiple of (9 Ci + 2) u sum_i (sum of |taps| of filter i)
 * (max |x| over the tile in channel i); 8 is that multiple.
 */
static int matches_direct(const float *y, const float *x, const float *w, const float *b,
                          int64_t B, int64_t Ci, int64_t Co, int64_t H, int64_t W,
                          int transposed)
{
    double u = FLT_EPSILON / 2;
    for (int64_t n = 0; n < B; n++)
        for (int64_t o = 0; o < Co; o++)
            for (int64_t py = 0; py < H; py++)
                for (int64_t px = 0; px < W; px++) {
                    double s = b ? b[o] : 0, mag = b ? fabs(b[o]) : 0;
                    int64_t ty = py / 2, tx = px / 2;
                    for (int64_t i = 0; i < Ci; i++) {
                        const float *plane = x + (n * Ci + i) * H * W;
                        double taps = 0, tile_max = 0;
                        for (int ky = 0; ky < 3; ky++)
                            for (int kx = 0; kx < 3; kx++) {
                                float g = tap(w, Ci, Co, o, i, ky, kx, transposed);
                                taps += fabs(g);
                                int64_t iy = py + ky - 1, ix = px + kx - 1;
                                if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                                    s += (double)g * plane[iy * W + ix];
                            }
                        for (int64_t iy = 2 * ty - 1; iy <= 2 * ty + 2; iy++)
                            for (int64_t ix = 2 * tx - 1; ix <= 2 * tx + 2; ix++)
                                if (iy >= 0 && iy < H && ix >= 0 && ix < W &&
                                    fabs(plane[iy * W + ix]) > tile_max)
                                    tile_max = fabs(plane[iy * W + ix]);
                        mag += taps * tile_max;
                    }
                    double tol = 8.0 * (double)(9 * Ci + 2) * u * mag;
                    float got = y[((n * Co + o) * H + py) * W + px];
                    if (!(fabs(got - s) <= tol)) {
                        test_failed(__FILE__, __LINE__,
                                    "B=%lld Ci=%lld Co=%lld %lldx%lld%s: y[%lld,%lld,%lld,%lld] "
                                    "= %.9g, expected %.9g (tol %.3g)",
                                    (long long)B, (long long)Ci, (long long)Co, (long long)H,
                                    (long long)W, transposed ? " transposed" : "", (long long)n,
                                    (long long)o, (long long)py, (long long)px, got, s, tol);
                        return 0;
                    }
                }
    return 1;
}

static void check_shape(int64_t B, int64_t Ci, int64_t Co, int64_t H, int64_t W)
{
    for (int transposed = 0; transposed < 2; transposed++) {
        float *x = test_filled(B * Ci * H * W, 21), *w = test_filled(Co * Ci * 9, 22);
        float *b = transposed ? NULL : test_filled(Co, 23);
        int64_t n = B * Co * H * W;
        /* One spare float past y on each side to catch stores outside it. */
        float *buf = malloc(sizeof(float) * (size_t)(n + 2));
        REQUIRE(buf);
        float *y = buf + 1;
        buf[0] = buf[n + 1] = 12345.0f;
        REQUIRE(winograd_conv3x3(y, x, w, b, B, Ci, Co, H, W, transposed) == 0);
        CHECK(matches_direct(y, x, w, b, B, Ci, Co, H, W, transposed));
        CHECK_MSG(buf[0] == 12345.0f && buf[n + 1] == 12345.0f, "a store outside y");
        free(x);
        free(w);
        free(b);
        free(buf);
    }
}

TEST(winograd_conv3x3_equals_the_direct_sum)
{
    check_shape(2, 3, 5, 8, 8);
    check_shape(1, 4, 7, 7, 9);    /* odd sizes: the last tiles hang over the edge */
    check_shape(2, 6, 3, 1, 1);    /* one pixel: only the centre tap sees data */
    check_shape(1, 1, 1, 2, 3);
    check_shape(2, 33, 17, 13, 6);
    check_shape(3, 5, 4, 3, 2);    /* tiles from three images in one GEMM */
}

TEST(winograd_conv3x3_in_several_chunks)
{
    /* 16 (96 + 96) 129 floats per tile row: 21 rows per chunk of 2^23
     * floats, and 25 tile rows, so the second chunk is a partial one. */
    check_shape(1, 96, 96, 50, 258);
}

TEST(winograd_conv3x3_is_bit_identical_across_thread_counts)
{
    int64_t B = 2, Ci = 40, Co = 24, H = 30, W = 22, n = B * Co * H * W;
    float *x = test_filled(B * Ci * H * W, 31), *w = test_filled(Co * Ci * 9, 32), *b = test_filled(Co, 33);
    float *y1 = malloc(sizeof(float) * (size_t)n), *y2 = malloc(sizeof(float) * (size_t)n);
    REQUIRE(y1 && y2);
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    REQUIRE(winograd_conv3x3(y1, x, w, b, B, Ci, Co, H, W, 0) == 0);
    omp_set_num_threads(threads > 1 ? threads : 2);
    REQUIRE(winograd_conv3x3(y2, x, w, b, B, Ci, Co, H, W, 0) == 0);
    omp_set_num_threads(threads);
    CHECK(memcmp(y1, y2, sizeof(float) * (size_t)n) == 0);
    free(x);
    free(w);
    free(b);
    free(y1);
    free(y2);
}

typedef struct conv_job {
    const float *x, *w, *b;
    float *y;
    int rc;
} conv_job;

enum { JOB_B = 2, JOB_CI = 24, JOB_CO = 16, JOB_H = 20, JOB_W = 18 };

static void *run_conv(void *arg)
{
    conv_job *j = arg;
    for (int rep = 0; rep < 20 && !j->rc; rep++)
        j->rc = winograd_conv3x3(j->y, j->x, j->w, j->b, JOB_B, JOB_CI, JOB_CO, JOB_H, JOB_W, 0);
    return NULL;
}

TEST(winograd_conv3x3_from_two_threads_at_once)
{
    /* One thread holds the shared scratch while the other allocates its own;
     * both must still get the single-threaded answer. */
    int64_t nx = JOB_B * JOB_CI * JOB_H * JOB_W, ny = JOB_B * JOB_CO * JOB_H * JOB_W;
    float *x = test_filled(nx, 41), *w = test_filled(JOB_CO * JOB_CI * 9, 42), *b = test_filled(JOB_CO, 43);
    float *want = malloc(sizeof(float) * (size_t)ny);
    conv_job jobs[2];
    REQUIRE(want);
    REQUIRE(winograd_conv3x3(want, x, w, b, JOB_B, JOB_CI, JOB_CO, JOB_H, JOB_W, 0) == 0);
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        jobs[i] = (conv_job){x, w, b, malloc(sizeof(float) * (size_t)ny), 0};
        REQUIRE(jobs[i].y);
        REQUIRE(pthread_create(&th[i], NULL, run_conv, &jobs[i]) == 0);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_INT(jobs[i].rc, 0);
        CHECK(memcmp(jobs[i].y, want, sizeof(float) * (size_t)ny) == 0);
        free(jobs[i].y);
    }
    free(x);
    free(w);
    free(b);
    free(want);
}
