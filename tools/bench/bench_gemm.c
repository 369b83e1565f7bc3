/*
 * bench_gemm.c - times a linear layer y[M,N] = x[M,K] w[N,K]^T + b two ways on
 * the shapes of SD's text encoders and UNet: OpenBLAS (cblas_sgemm, then the
 * bias) and coin's packed-weight kernel (core/gemm.c, packing not timed: it
 * happens once per weight).  Prints the minimum over the repetitions of each
 * (the minimum, since the machine may be shared), GFLOP/s and the ratio
 * packed/OpenBLAS, so the CPU backend's choice of path can be checked.
 *
 * Usage: sh tools/bench/bench_gemm.sh [reps] [M,N,K ...]   (THREADS=n sets OpenMP threads)
 */
#include "core/gemm.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void blas_linear(float *y, const float *x, const float *w, const float *b,
                        int64_t M, int64_t N, int64_t K)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, x,
                (int)K, w, (int)K, 0.0f, y, (int)N);
#pragma omp parallel for if (M * N > 65536)
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++)
            y[i * N + j] += b[j];
}

static void run(int64_t M, int64_t N, int64_t K, int reps)
{
    float *x = malloc(sizeof(float) * (size_t)(M * K));
    float *w = malloc(sizeof(float) * (size_t)(N * K));
    float *b = malloc(sizeof(float) * (size_t)N);
    float *y1 = malloc(sizeof(float) * (size_t)(M * N));
    float *y2 = malloc(sizeof(float) * (size_t)(M * N));
    if (!x || !w || !b || !y1 || !y2) {
        fprintf(stderr, "bench_gemm: out of memory\n");
        exit(1);
    }
    srand(1);
    for (int64_t i = 0; i < M * K; i++)
        x[i] = (float)rand() / RAND_MAX - 0.5f;
    for (int64_t i = 0; i < N * K; i++)
        w[i] = (float)rand() / RAND_MAX - 0.5f;
    for (int64_t i = 0; i < N; i++)
        b[i] = (float)rand() / RAND_MAX;
    double t0 = now_ms();
    gemm_packed *p = gemm_pack(w, N, K);
    double pack_ms = now_ms() - t0;
    double best_blas = 1e30, best_packed = 1e30;
    for (int r = 0; r < reps; r++) {
        t0 = now_ms();
        blas_linear(y1, x, w, b, M, N, K);
        double t = now_ms() - t0;
        best_blas = t < best_blas ? t : best_blas;
        if (p) {
            t0 = now_ms();
            gemm_packed_linear(y2, x, p, b, M);
            t = now_ms() - t0;
            best_packed = t < best_packed ? t : best_packed;
        }
    }
    double maxdiff = 0;
    for (int64_t i = 0; p && i < M * N; i++) {
        double d = y1[i] > y2[i] ? y1[i] - y2[i] : y2[i] - y1[i];
        maxdiff = d > maxdiff ? d : maxdiff;
    }
    double gf = 2.0 * M * N * K / 1e6;
    printf("%5lld %5lld %5lld | blas %8.3f ms %6.1f GF/s | packed %8.3f ms %6.1f GF/s | "
           "packed/blas %.2f | pack %.1f ms | max diff %.1e\n",
           (long long)M, (long long)N, (long long)K, best_blas, gf / best_blas,
           p ? best_packed : 0, p ? gf / best_packed : 0, p ? best_packed / best_blas : 0,
           pack_ms, maxdiff);
    gemm_packed_free(p);
    free(x), free(w), free(b), free(y1), free(y2);
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    printf("threads %d, min of %d reps, packed kernel %s\n", omp_get_max_threads(), reps,
           gemm_packed_available() ? "available" : "unavailable (no AVX-512)");
    if (argc > 2) {
        for (int i = 2; i < argc; i++) {
            long long M, N, K;
            if (sscanf(argv[i], "%lld,%lld,%lld", &M, &N, &K) != 3) {
                fprintf(stderr, "bench_gemm: shape '%s' is not M,N,K\n", argv[i]);
                return 2;
            }
            run(M, N, K, reps);
        }
        return 0;
    }
    /* SD1.5 / SD2.1 text encoder (77 tokens), UNet cross-attention keys,
     * UNet self-attention and feed-forward at 64x64 and 32x32 latents. */
    static const int64_t shapes[][3] = {
        {77, 768, 768},    {77, 3072, 768},  {77, 768, 3072},   {77, 1024, 1024},
        {77, 4096, 1024},  {77, 1024, 4096}, {77, 320, 768},    {77, 1280, 768},
        {1, 1280, 320},    {2, 1280, 1280},  {4096, 320, 320},  {4096, 2560, 320},
        {4096, 320, 1280}, {1024, 640, 640}, {1024, 5120, 640}, {256, 1280, 1280},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        run(shapes[i][0], shapes[i][1], shapes[i][2], reps);
    return 0;
}
