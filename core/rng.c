/*
 * rng.c - torch-compatible random numbers (REFERENCE.md section 6).
 *
 * Two generators share one seed, as in torch, where manual_seed seeds the CPU
 * and the CUDA generator alike:
 *   - Philox4x32-10 for RNG_CUDA randn, as AUTOMATIC1111's rng_philox.py
 *     computes it;
 *   - mt19937 for RNG_CPU randn and, whatever the kind, for rng_rand and
 *     rng_randint, which follow torch's CPU generator (the trainer draws its
 *     timesteps there even when the noise comes from the GPU generator).
 * Where torch's result depends on floating-point details, the code copies the
 * operation order of the kernel that torch 2.5.1's x86-64 build runs, FMAs
 * included, and so matches it bit for bit (tests/golden/rng, README there);
 * that part uses no libm function, so it gives the same bits on every
 * platform.  The rest goes through libm's double log/sin/cos, as the
 * references do, and agrees with them to the last bit of the float result
 * save in very rare cases.  The comments say where the order matters.
 */
#include "core/rng.h"

#include <math.h>
#include <string.h>

/* Emulating torch's vector kernels needs every float operation rounded on
 * its own: a fused multiply-add here would change the last bit.  -std=c11
 * already turns contraction off for GCC; these make it hold for gnu11 builds
 * and for clang, whose default fuses within an expression. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* ---------------------------------------------------------------- Philox */

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

/* Ten rounds of Philox4x32 on counter c with key (k0, k1); c becomes the
 * output block. */
static void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1)
{
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)c[0] * PHILOX_M0;
        uint64_t p1 = (uint64_t)c[2] * PHILOX_M1;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k0;
        uint32_t n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k1;
        uint32_t n3 = (uint32_t)p0;
        c[0] = n0, c[1] = n1, c[2] = n2, c[3] = n3;
        k0 += PHILOX_W0;    /* the key bump after the last round is unused */
        k1 += PHILOX_W1;
    }
}

/* Box-Muller's sine branch, as rng_philox.py evaluates it.  Its constants
 * are float32 arrays (2^-32 written as 2.3283064e-10, and that times 2 pi
 * multiplied in double, then rounded), but numpy promotes uint32 * float32 to
 * float64, so all the arithmetic is double precision and only the result is
 * rounded to float.  REFERENCE.md and sd.cpp's port say float32: that
 * differs from this in the last bits of most values, and by up to 5.6e-5
 * where u is close to 1 (float32 rounding of u then dominates log u). */
static float philox_box_muller(uint32_t x, uint32_t y)
{
    const float inv32 = 2.3283064e-10f;
    const float inv32_2pi = (float)(2.3283064e-10 * 6.2831855);
    double u = (double)x * inv32 + (double)(inv32 / 2);
    double v = (double)y * inv32_2pi + (double)(inv32_2pi / 2);
    return (float)(sqrt(-2.0 * log(u)) * sin(v));
}

static void philox_randn(coin_rng *r, float *out, int64_t n)
{
    uint32_t k0 = (uint32_t)r->seed, k1 = (uint32_t)(r->seed >> 32);
    for (int64_t i = 0; i < n; i++) {
        /* rng_philox.py keeps the element index in 32 bits too. */
        uint32_t c[4] = { r->offset, 0, (uint32_t)i, 0 };
        philox4x32_10(c, k0, k1);
        out[i] = philox_box_muller(c[0], c[1]);
    }
    r->offset++;        /* once per call, even for an empty one, as A1111 */
}

/* --------------------------------------------------------------- mt19937 */

#define MT_N 624
#define MT_M 397

static void mt_seed(coin_rng *r, uint64_t seed)
{
    /* torch keeps the full 64-bit seed but feeds only its low word to the
     * engine: manual_seed(2**32 + 5) draws what manual_seed(5) draws. */
    r->mt[0] = (uint32_t)seed;
    for (int j = 1; j < MT_N; j++)
        r->mt[j] = 1812433253u * (r->mt[j - 1] ^ (r->mt[j - 1] >> 30)) + (uint32_t)j;
    r->mti = MT_N;
    r->has_cached = 0;
}

static void mt_twist(coin_rng *r)
{
    uint32_t *s = r->mt;
    for (int j = 0; j < MT_N; j++) {
        uint32_t y = (s[j] & 0x80000000u) | (s[(j + 1) % MT_N] & 0x7fffffffu);
        s[j] = s[(j + MT_M) % MT_N] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
    r->mti = 0;
}

/* torch's generator->random(). */
static uint32_t mt_u32(coin_rng *r)
{
    if (r->mti >= MT_N)
        mt_twist(r);
    uint32_t y = r->mt[r->mti++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* torch's generator->random64(): the first draw is the high word. */
static uint64_t mt_u64(coin_rng *r)
{
    uint64_t hi = mt_u32(r);
    return hi << 32 | mt_u32(r);
}

/* uniform_real_distribution<float>(0, 1): 24 bits of one draw. */
static float mt_uniform_f(coin_rng *r)
{
    return (float)(mt_u32(r) & 0xffffffu) * (1.0f / 16777216.0f);
}

/* uniform_real_distribution<double>(0, 1): 53 bits of one 64-bit draw. */
static double mt_uniform_d(coin_rng *r)
{
    return (double)(mt_u64(r) & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* at::normal_distribution<double>: the randn path for tensors of fewer than
 * 16 elements.  The second value of each pair waits in the generator, across
 * calls, until the next small draw (or manual_seed) takes it; the 16-wide
 * path neither uses nor clears it. */
static double mt_normal_d(coin_rng *r)
{
    if (r->has_cached) {
        r->has_cached = 0;
        return r->cached + 0.0;
    }
    double u1 = mt_uniform_d(r);
    double u2 = mt_uniform_d(r);
    double radius = sqrt(-2.0 * log1p(-u2));
    double theta = 2.0 * M_PI * u1;
    r->cached = radius * sin(theta);
    r->has_cached = 1;
    /* torch returns ret * std + mean; "+ 0.0" keeps what that does to a
     * negative zero. */
    return radius * cos(theta) + 0.0;
}

/* Float bit patterns, for the Cephes emulation. */
static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* log256_ps from torch's avx_mathfun.h (Cephes logf, after Julien Pommier's
 * sse_mathfun), one lane, for x in (0, 1].  The source is written as separate
 * multiplies and adds, but the compiler fused some of them into FMAs in the
 * shipped binary: the fmaf calls below are exactly the vfmadd/vfnmadd
 * instructions in the AVX2 normal_kernel of torch 2.5.1's libtorch_cpu.so
 * (x86-64 wheel), and every other operation is rounded on its own.  With
 * separate roundings throughout, about 1% of values were 1 ulp off. */
static float cephes_logf(float x)
{
    uint32_t bits = f2u(x);
    float e = (float)((int32_t)(bits >> 23) - 0x7f) + 1.0f;
    x = u2f((bits & ~0x7f800000u) | f2u(0.5f));  /* mantissa in [0.5, 1) */
    int below = x < 0.707106781186547524f;     /* then use 2x - 1, e - 1 */
    float tmp = below ? x : 0.0f;
    float xm1 = x - 1.0f;
    e = e - (below ? 1.0f : 0.0f);
    float e_q1 = e * -2.12194440e-4f;
    x = tmp + xm1;
    float y = 7.0376836292E-2f;
    y = fmaf(y, x, -1.1514610310E-1f);
    y = fmaf(y, x, 1.1676998740E-1f);
    y = fmaf(y, x, -1.2420140846E-1f);
    y = fmaf(y, x, 1.4249322787E-1f);
    y = fmaf(y, x, -1.6668057665E-1f);
    y = fmaf(y, x, 2.0000714765E-1f);
    y = fmaf(y, x, -2.4999993993E-1f);
    y = fmaf(y, x, 3.3333331174E-1f);
    float z = x * x;
    y = y * x;
    y = fmaf(y, z, e_q1);
    y = fmaf(-0.5f, z, y);
    x = x + y;
    return fmaf(e, 0.693359375f, x);
}

/* sincos256_ps from the same file, one lane, for x >= 0; fused as above. */
static void cephes_sincosf(float x, float *s, float *c)
{
    float y = x * 1.27323954473516f;           /* 4/pi */
    int32_t j = ((int32_t)y + 1) & ~1;
    y = (float)j;
    uint32_t sign_sin = (uint32_t)(j & 4) << 29;
    uint32_t sign_cos = (uint32_t)(~(j - 2) & 4) << 29;
    int sin_is_poly2 = (j & 2) == 0;
    /* Cody-Waite reduction by pi/4 in three float pieces. */
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    float z = x * x;
    float p1 = 2.443315711809948E-005f;        /* cosine polynomial */
    p1 = fmaf(p1, z, -1.388731625493765E-003f);
    p1 = fmaf(p1, z, 4.166664568298827E-002f);
    float half_z = z * 0.5f;
    p1 = p1 * z;
    p1 = fmaf(p1, z, -half_z);
    p1 = p1 + 1.0f;
    float p2 = -1.9515295891E-4f;              /* sine polynomial */
    p2 = fmaf(p2, z, 8.3321608736E-3f);
    p2 = fmaf(p2, z, -1.6666654611E-1f);
    p2 = p2 * z;
    p2 = fmaf(x, p2, x);
    /* The kernel selects with masks and adds the unselected lane as +0,
     * which turns a -0 into +0; adding 0.0f does the same. */
    float vs = sin_is_poly2 ? p2 + 0.0f : p1 + 0.0f;
    float vc = sin_is_poly2 ? p1 + 0.0f : p2 + 0.0f;
    *s = u2f(f2u(vs) ^ sign_sin);
    *c = u2f(f2u(vc) ^ sign_cos);
}

/* normal_fill_16_AVX2: Box-Muller on 16 uniforms in place, d[j] paired with
 * d[j+8].  torch's x86 builds run this for AVX2 and AVX512 CPUs alike (there
 * is no AVX512 copy of the kernel); builds or CPUs without AVX2 (and other
 * architectures) use libm's logf/sincosf instead, which differ from this by
 * up to about 2e-6. */
static void normal_fill_16(float *d)
{
    const float two_pi = (float)(2.0 * M_PI);
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];     /* (0, 1]: log(0) cannot happen */
        float theta = two_pi * d[j + 8];
        float radius = sqrtf(cephes_logf(u1) * -2.0f);
        float s, c;
        cephes_sincosf(theta, &s, &c);
        /* fmadd(radius * c, std, mean) with std 1, mean 0 is the product
         * plus 0, which only turns a -0 into +0. */
        d[j] = radius * c + 0.0f;
        d[j + 8] = radius * s + 0.0f;
    }
}

static void mt_randn(coin_rng *r, float *out, int64_t n)
{
    if (n < 16) {
        for (int64_t i = 0; i < n; i++)
            out[i] = (float)mt_normal_d(r);
        return;
    }
    for (int64_t i = 0; i < n; i++)
        out[i] = mt_uniform_f(r);
    for (int64_t i = 0; i + 16 <= n; i += 16)
        normal_fill_16(out + i);
    if (n % 16) {
        /* torch redoes the last 16 from fresh uniforms, overwriting the
         * normals already there. */
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++)
            tail[i] = mt_uniform_f(r);
        normal_fill_16(tail);
    }
}

/* ------------------------------------------------------------------- API */

void rng_seed(coin_rng *r, rng_kind kind, uint64_t seed)
{
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->seed = seed;
    r->offset = 0;
    mt_seed(r, seed);
}

void rng_randn(coin_rng *r, float *out, int64_t n)
{
    if (r->kind == RNG_CUDA)
        philox_randn(r, out, n);
    else
        mt_randn(r, out, n);
}

void rng_rand(coin_rng *r, float *out, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = mt_uniform_f(r);
}

int rng_randint(coin_rng *r, int64_t low, int64_t high, int64_t *out,
                int64_t n, coin_error *err)
{
    if (low >= high)
        return coin_fail(err, COIN_EINVAL,
                         "randint needs low < high, got low %lld, high %lld",
                         (long long)low, (long long)high);
    /* random_from_to: (draw % range) + low, with one 32-bit draw when the
     * range fits in 32 bits and one 64-bit draw otherwise.  The modulo bias
     * is torch's, kept for the same numbers. */
    uint64_t range = (uint64_t)high - (uint64_t)low;
    for (int64_t i = 0; i < n; i++) {
        uint64_t v = range >= (1ull << 32) ? mt_u64(r) % range
                                           : (uint64_t)mt_u32(r) % range;
        out[i] = (int64_t)(v + (uint64_t)low);
    }
    return 0;
}

const char *rng_kind_name(rng_kind k)
{
    switch (k) {
    case RNG_CUDA: return "cuda";
    case RNG_CPU: return "cpu";
    }
    return "unknown";
}

int rng_kind_parse(const char *s)
{
    if (!s)
        return -1;
    if (!strcmp(s, "cuda"))
        return RNG_CUDA;
    if (!strcmp(s, "cpu"))
        return RNG_CPU;
    return -1;
}
