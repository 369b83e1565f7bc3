/*
 * winograd.c - 3x3 convolutions by Winograd's F(2x2, 3x3); see winograd.h.
 *
 * With the 4x4 input tile d, the 3x3 filter g and the 2x2 output block y:
 *
 *   y = A^T [ (G g G^T) .* (B^T d B) ] A
 *
 *   B^T = | 1  0 -1  0 |   G = | 1    0    0  |   A^T = | 1  1  1  0 |
 *         | 0  1  1  0 |       | 1/2  1/2  1/2 |         | 0  1 -1 -1 |
 *         | 0 -1  1  0 |       | 1/2 -1/2  1/2 |
 *         | 0  1  0 -1 |       | 0    0    1  |
 *
 * Summed over input channels, the 16 element-wise products become 16 GEMMs
 * M[xi][Co, tiles] = U[xi][Co, Ci] V[xi][Ci, tiles] (OpenBLAS).  Tiles of
 * every image of the batch go into the same GEMMs, in chunks of whole tile
 * rows so that V and M stay under CHUNK_FLOATS.
 */
#include "winograd.h"
#include "error.h"

#include <cblas.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* V and M of one chunk together: 32 MiB. */
#define CHUNK_FLOATS ((int64_t)1 << 23)

/*
 * U[xi][o][i] = (G g G^T)[xi] for the filter g from input i to output o.
 * Per output channel, the taps of its Ci filters are first gathered into
 * nine rows of Ci floats, so that the transform runs along i in vector
 * registers (and, for a transposed bank, the flip is a matter of which tap
 * goes into which row).
 */
static int transform_filters(float *U, const float *w, int64_t Ci, int64_t Co, int transposed)
{
    int failed = 0;
#pragma omp parallel
    {
        float *g = malloc((size_t)(21 * Ci) * sizeof(float));   /* 9 tap rows, 12 of T */
        if (!g) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for
        for (int64_t o = 0; o < Co; o++) {
            if (!g)
                continue;
            /* Row k holds tap k of every filter (tap 8 - k, flipped, for a
             * transposed bank); rows are written in order, reads stride. */
            const float *f = transposed ? w + o * 9 : w + o * Ci * 9;
            int64_t step = transposed ? Co * 9 : 9;
            for (int k = 0; k < 9; k++) {
                const float *src = f + (transposed ? 8 - k : k);
                float *row = g + k * Ci;
                for (int64_t i = 0; i < Ci; i++)
                    row[i] = src[i * step];
            }
            /* T = G g (12 rows: T[r][b], row r of G, column b of the taps),
             * then U[4r + c] = (T G^T)[r][c], four output rows at a time. */
            float *T = g + 9 * Ci;
            for (int b = 0; b < 3; b++) {
                const float *g0 = g + b * Ci, *g1 = g + (3 + b) * Ci, *g2 = g + (6 + b) * Ci;
                float *t0 = T + b * Ci, *t1 = T + (3 + b) * Ci, *t2 = T + (6 + b) * Ci;
                float *t3 = T + (9 + b) * Ci;
#pragma omp simd
                for (int64_t i = 0; i < Ci; i++) {
                    t0[i] = g0[i];
                    t1[i] = 0.5f * (g0[i] + g1[i] + g2[i]);
                    t2[i] = 0.5f * (g0[i] - g1[i] + g2[i]);
                    t3[i] = g2[i];
                }
            }
            for (int r = 0; r < 4; r++) {
                const float *a = T + 3 * r * Ci, *b = a + Ci, *c = b + Ci;
                float *u0 = U + ((4 * r) * Co + o) * Ci, *u1 = u0 + Co * Ci;
                float *u2 = u1 + Co * Ci, *u3 = u2 + Co * Ci;
#pragma omp simd
                for (int64_t i = 0; i < Ci; i++) {
                    u0[i] = a[i];
                    u1[i] = 0.5f * (a[i] + b[i] + c[i]);
                    u2[i] = 0.5f * (a[i] - b[i] + c[i]);
                    u3[i] = c[i];
                }
            }
        }
        free(g);
    }
    return failed ? COIN_ENOMEM : 0;
}

/*
 * V[xi][i][t] = (B^T d B)[xi] for every input channel i and every tile t of
 * the tile rows [r0, r0 + nrows) (tile row r is row r % th of image r / th);
 * nt = nrows * tw tiles in all.
 */
static void transform_input(float *V, const float *x, int64_t Ci, int64_t H, int64_t W,
                            int64_t th, int64_t tw, int64_t r0, int64_t nrows)
{
    int64_t nt = nrows * tw, span = 2 * tw + 2;
#pragma omp parallel for collapse(2)
    for (int64_t i = 0; i < Ci; i++)
        for (int64_t rr = 0; rr < nrows; rr++) {
            int64_t n = (r0 + rr) / th, ty = (r0 + rr) % th;
            const float *plane = x + (n * Ci + i) * H * W;
            /* The four input rows 2ty-1 .. 2ty+2 of the tiles, zero-padded
             * to columns -1 .. 2tw, then B^T applied down the columns. */
            float rows[4][span], t[4][span];
            for (int r = 0; r < 4; r++) {
                int64_t iy = 2 * ty - 1 + r;
                memset(rows[r], 0, sizeof rows[r]);
                if (iy >= 0 && iy < H)
                    memcpy(rows[r] + 1, plane + iy * W, (size_t)W * sizeof(float));
            }
            for (int64_t c = 0; c < span; c++) {
                t[0][c] = rows[0][c] - rows[2][c];
                t[1][c] = rows[1][c] + rows[2][c];
                t[2][c] = rows[2][c] - rows[1][c];
                t[3][c] = rows[1][c] - rows[3][c];
            }
            float *out = V + i * nt + rr * tw;
            for (int r = 0; r < 4; r++) {
                float *v0 = out + (int64_t)(r * 4 + 0) * Ci * nt, *v1 = v0 + Ci * nt;
                float *v2 = v1 + Ci * nt, *v3 = v2 + Ci * nt;
                const float *tr = t[r];
                for (int64_t tx = 0; tx < tw; tx++) {
                    const float *d = tr + 2 * tx;
                    v0[tx] = d[0] - d[2];
                    v1[tx] = d[1] + d[2];
                    v2[tx] = d[2] - d[1];
                    v3[tx] = d[1] - d[3];
                }
            }
        }
}

/* y's 2x2 blocks of the chunk's tiles = A^T m A (+ bias), m from M[xi][o][t]. */
static void transform_output(float *y, const float *M, const float *bias, int64_t Co,
                             int64_t H, int64_t W, int64_t th, int64_t tw, int64_t r0,
                             int64_t nrows)
{
    int64_t nt = nrows * tw;
#pragma omp parallel for collapse(2)
    for (int64_t o = 0; o < Co; o++)
        for (int64_t rr = 0; rr < nrows; rr++) {
            int64_t n = (r0 + rr) / th, ty = (r0 + rr) % th;
            float *plane = y + (n * Co + o) * H * W;
            float b = bias ? bias[o] : 0.0f;
            float top[2 * tw], bottom[2 * tw];
            const float *m[16];
            for (int xi = 0; xi < 16; xi++)
                m[xi] = M + (xi * Co + o) * nt + rr * tw;
            for (int64_t tx = 0; tx < tw; tx++) {
                float t0[4], t1[4];
                for (int c = 0; c < 4; c++) {
                    t0[c] = m[c][tx] + m[4 + c][tx] + m[8 + c][tx];
                    t1[c] = m[4 + c][tx] - m[8 + c][tx] - m[12 + c][tx];
                }
                top[2 * tx] = t0[0] + t0[1] + t0[2] + b;
                top[2 * tx + 1] = t0[1] - t0[2] - t0[3] + b;
                bottom[2 * tx] = t1[0] + t1[1] + t1[2] + b;
                bottom[2 * tx + 1] = t1[1] - t1[2] - t1[3] + b;
            }
            memcpy(plane + 2 * ty * W, top, (size_t)W * sizeof(float));
            if (2 * ty + 1 < H)
                memcpy(plane + (2 * ty + 1) * W, bottom, (size_t)W * sizeof(float));
        }
}

/*
 * The scratch of the last call, kept for the next one: the transformed
 * filters of a 1280-channel layer are 105 MB, and a fresh allocation that
 * size costs more in page faults than the transform itself.  A call that
 * finds the scratch in use by another thread allocates its own.
 */
static pthread_mutex_t scratch_lock = PTHREAD_MUTEX_INITIALIZER;
static float *scratch;
static size_t scratch_floats;

/* Returns a buffer of n floats and whether it is the shared scratch (locked). */
static float *scratch_get(size_t n, int *shared)
{
    *shared = pthread_mutex_trylock(&scratch_lock) == 0;
    if (!*shared)
        return malloc(n * sizeof(float));
    if (scratch_floats < n) {
        free(scratch);
        scratch = malloc(n * sizeof(float));
        scratch_floats = scratch ? n : 0;
    }
    if (!scratch) {
        pthread_mutex_unlock(&scratch_lock);
        *shared = 0;
        return NULL;
    }
    return scratch;
}

static void scratch_put(float *buf, int shared)
{
    if (shared)
        pthread_mutex_unlock(&scratch_lock);
    else
        free(buf);
}

int winograd_conv3x3(float *y, const float *x, const float *w, const float *bias,
                     int64_t B, int64_t Ci, int64_t Co, int64_t H, int64_t W, int transposed)
{
    if (B <= 0 || Ci <= 0 || Co <= 0 || H <= 0 || W <= 0)
        return 0;
    int64_t th = (H + 1) / 2, tw = (W + 1) / 2, tile_rows = B * th;
    int64_t chunk_rows = CHUNK_FLOATS / (16 * (Ci + Co) * tw);
    if (chunk_rows < 1)
        chunk_rows = 1;
    if (chunk_rows > tile_rows)
        chunk_rows = tile_rows;
    int shared;
    size_t nu = (size_t)(16 * Ci * Co), nv = (size_t)(16 * Ci * chunk_rows * tw);
    float *U = scratch_get(nu + nv + (size_t)(16 * Co * chunk_rows * tw), &shared);
    if (!U)
        return COIN_ENOMEM;
    float *V = U + nu, *M = V + nv;
    if (transform_filters(U, w, Ci, Co, transposed)) {
        scratch_put(U, shared);
        return COIN_ENOMEM;
    }
    for (int64_t r0 = 0; r0 < tile_rows; r0 += chunk_rows) {
        int64_t nrows = tile_rows - r0 < chunk_rows ? tile_rows - r0 : chunk_rows;
        int64_t nt = nrows * tw;
        transform_input(V, x, Ci, H, W, th, tw, r0, nrows);
        for (int xi = 0; xi < 16; xi++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Co, (int)nt, (int)Ci,
                        1.0f, U + xi * Co * Ci, (int)Ci, V + xi * Ci * nt, (int)nt, 0.0f,
                        M + xi * Co * nt, (int)nt);
        transform_output(y, M, bias, Co, H, W, th, tw, r0, nrows);
    }
    scratch_put(U, shared);
    return 0;
}
