/*
 * rng.h - torch-compatible random normal generators, so that a seed gives the
 * same image in coin as in the tools users compare with (REFERENCE.md 6).
 *
 *   RNG_CUDA  torch.randn on a CUDA device after manual_seed: Philox4x32-10
 *             with Box-Muller, as AUTOMATIC1111 (rng_philox.py) and
 *             stable-diffusion.cpp reproduce it on the CPU.  The default.
 *   RNG_CPU   torch.randn on the CPU after manual_seed: mt19937, with
 *             torch's 16-at-a-time Box-Muller for tensors of 16 or more
 *             elements and its double-precision path below that (diffusers
 *             with a CPU generator, ComfyUI).
 *
 * A generator is a value: seeding and drawing never touch global state, so
 * image i of a batch can own the generator seeded with seed+i.
 */
#ifndef COIN_RNG_H
#define COIN_RNG_H

#include <stdint.h>

#include "error.h"

typedef enum rng_kind { RNG_CUDA, RNG_CPU } rng_kind;

typedef struct coin_rng {
    rng_kind kind;
    uint64_t seed;
    uint32_t offset;        /* Philox: calls made so far */
    uint32_t mt[624];       /* mt19937 state */
    int mti;
    int has_cached;         /* torch's cached second normal (small tensors) */
    double cached;
} coin_rng;

/* torch.manual_seed(seed) for the given kind. */
void rng_seed(coin_rng *r, rng_kind kind, uint64_t seed);

/* One torch.randn(n) call (any shape with n elements, row-major). */
void rng_randn(coin_rng *r, float *out, int64_t n);

/* torch.rand(n) (float32) on the CPU generator: each value is 24 bits of
 * one mt19937 draw times 2^-24.  Uses the mt19937 state whatever the kind:
 * manual_seed seeds torch's CPU generator too, and a trainer whose noise is
 * CUDA randn still draws CPU rand/randint there. */
void rng_rand(coin_rng *r, float *out, int64_t n);

/* torch.randint(low, high, (n,)) (int64) on the CPU generator, same state as
 * rng_rand: (draw % (high - low)) + low, where draw is one 32-bit mt19937
 * output when high - low < 2^32 and a 64-bit one (two outputs, first = high
 * word) otherwise.  COIN_EINVAL unless low < high, as torch refuses too. */
int rng_randint(coin_rng *r, int64_t low, int64_t high, int64_t *out,
                int64_t n, coin_error *err);

/* "cuda" / "cpu", and back (-1 for anything else). */
const char *rng_kind_name(rng_kind k);
int rng_kind_parse(const char *s);

#endif
