/*
 * gemm.h - coin's own fp32 GEMM for linear layers whose weight is packed
 * once and reused on every call.
 *
 * For a linear layer y[M,N] = x[M,K] w[N,K]^T + b[N] with few rows (the text
 * encoder's 77 tokens, the UNet's cross-attention keys), OpenBLAS spends
 * about a fifth of the time re-packing w on every call.  Here w is packed
 * once into panels of GEMM_NR output columns, k-major, and an AVX-512
 * micro-kernel computes tiles of up to 12 rows x 32 columns from it.
 *
 * Each output is summed over k in one fixed order (k ascending, one
 * accumulator) by exactly one thread, and K is never split between threads,
 * so results are bit-identical whatever the thread count.
 *
 * The packed path needs AVX-512F at run time (gemm_packed_available); the
 * CPU backend falls back to cblas_sgemm elsewhere.
 */
#ifndef COIN_GEMM_H
#define COIN_GEMM_H

#include <stdint.h>

/* Output columns per packed panel (two 16-float AVX-512 vectors). */
#define GEMM_NR 32

typedef struct gemm_packed gemm_packed;

/* 1 when this CPU runs the packed kernel (AVX-512F), else 0. */
int gemm_packed_available(void);

/* Packs w[N,K] (row-major) into panels of GEMM_NR columns, the last one
 * zero-padded.  Returns NULL when out of memory or when the packed kernel is
 * unavailable.  The copy does not follow later changes to w. */
gemm_packed *gemm_pack(const float *w, int64_t N, int64_t K);

/* Frees a packed weight; NULL is fine. */
void gemm_packed_free(gemm_packed *p);

/* The packed weight's N and K. */
int64_t gemm_packed_rows(const gemm_packed *p);
int64_t gemm_packed_cols(const gemm_packed *p);

/* y[M,N] = x[M,K] w[N,K]^T + b[N], w being p (b may be NULL).  x and y are
 * row-major with row strides K and N and must not overlap.  Runs OpenMP
 * threads over (column panel, row block) pairs.  p must come from
 * gemm_pack on this machine (gemm_packed_available() true). */
void gemm_packed_linear(float *y, const float *x, const gemm_packed *p,
                        const float *b, int64_t M);

#endif
