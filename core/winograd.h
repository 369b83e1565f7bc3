/*
 * winograd.h - 3x3 convolutions (stride 1, padding 1) by Winograd's
 * minimal filtering algorithm F(2x2, 3x3).
 *
 * Nearly every convolution of the UNet and the VAE is 3x3 with stride 1
 * and padding 1.  As im2col + GEMM each output costs 9 Ci multiply-adds;
 * F(2x2, 3x3) computes a 2x2 block of outputs from a 4x4 input tile with
 * 16 Ci multiply-adds instead of 36, as 16 independent GEMMs
 * M[xi] = U[xi] V[xi] over transformed weights U and transformed input
 * tiles V, followed by a cheap output transform.  The GEMMs carry 2.25x
 * fewer flops than im2col's, and no im2col buffer is built.
 *
 * Accuracy: the transforms only add, subtract and halve, so the result
 * differs from the direct sum by rounding alone (a few ulps of the
 * summands); tests/test_winograd.c checks it against a double-precision
 * direct convolution.  Sums over channels are never split between threads,
 * so results do not depend on the thread count.
 *
 * The same routine computes the input gradient of such a convolution
 * (a 3x3 correlation of the output gradient with the flipped, transposed
 * filters), which textual-inversion training spends much of its time in.
 */
#ifndef COIN_WINOGRAD_H
#define COIN_WINOGRAD_H

#include <stdint.h>

/*
 * y[B, Co, H, W] = conv3x3(x[B, Ci, H, W]) + bias[Co], stride 1, zero
 * padding 1 on every side.  With transposed == 0, w is a forward filter
 * bank [Co, Ci, 3, 3]; with transposed == 1, w is [Ci, Co, 3, 3], the filters
 * of a convolution from Co to Ci channels, and y is that convolution's input
 * gradient for the output gradient x (taps flipped, channels swapped).
 * bias may be NULL.  y must not overlap x.  Returns 0, or COIN_ENOMEM when
 * the scratch (the transformed filters, 16 Ci Co floats, and at most 2^23
 * floats of transformed tiles) cannot be allocated.  The scratch of the
 * largest call so far is kept for the next one (a fresh 100 MB allocation
 * costs more in page faults than the filter transform); a call made while
 * another thread holds it allocates its own.  Safe to call from several
 * threads at once.
 */
int winograd_conv3x3(float *y, const float *x, const float *w, const float *bias,
                     int64_t B, int64_t Ci, int64_t Co, int64_t H, int64_t W, int transposed);

#endif
