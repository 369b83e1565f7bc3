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
#include <stdlib.h>
#include <string.h>

/* V and M of one chunk together: 32 MiB. */
#define CHUNK_FLOATS ((int64_t)1 << 23)

/*
 * The filter transform as one GEMM over every filter at once:
 * U[xi][p] = sum_k C[xi][k] w[p][k], p = (o, i) for a forward filter bank
 * [Co, Ci, 3, 3] and p = (i, o) for a transposed one [Ci, Co, 3, 3], with
 * C[4r + c][3a + b] = G[r][a] G[c][b] (taps flipped for the transposed case).
 * The coefficients are 0, 1/4, 1/2 and 1, so C w rounds like a sum of 9 terms.
 */
static void transform_filters(float *U, const float *w, int64_t Ci, int64_t Co, int transposed)
{
    static const float G[4][3] = {{1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0, 0, 1}};
    float C[16][9];
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++)
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++) {
                    int ta = transposed ? 2 - a : a, tb = transposed ? 2 - b : b;
                    C[r * 4 + c][3 * a + b] = G[r][ta] * G[c][tb];
                }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 16, (int)(Ci * Co), 9, 1.0f, &C[0][0],
                9, w, 9, 0.0f, U, (int)(Ci * Co));
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
    float *U = malloc((size_t)(16 * Ci * Co) * sizeof(float));
    float *V = malloc((size_t)(16 * Ci * chunk_rows * tw) * sizeof(float));
    float *M = malloc((size_t)(16 * Co * chunk_rows * tw) * sizeof(float));
    if (!U || !V || !M) {
        free(U);
        free(V);
        free(M);
        return COIN_ENOMEM;
    }
    transform_filters(U, w, Ci, Co, transposed);
    for (int64_t r0 = 0; r0 < tile_rows; r0 += chunk_rows) {
        int64_t nrows = tile_rows - r0 < chunk_rows ? tile_rows - r0 : chunk_rows;
        int64_t nt = nrows * tw;
        transform_input(V, x, Ci, H, W, th, tw, r0, nrows);
        for (int xi = 0; xi < 16; xi++)
            /* U[xi] is [Co, Ci], or [Ci, Co] for a transposed bank. */
            cblas_sgemm(CblasRowMajor, transposed ? CblasTrans : CblasNoTrans, CblasNoTrans,
                        (int)Co, (int)nt, (int)Ci, 1.0f, U + xi * Co * Ci,
                        transposed ? (int)Co : (int)Ci, V + xi * Ci * nt, (int)nt, 0.0f,
                        M + xi * Co * nt, (int)nt);
        transform_output(y, M, bias, Co, H, W, th, tw, r0, nrows);
    }
    free(U);
    free(V);
    free(M);
    return 0;
}
