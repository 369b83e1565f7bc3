/*
 * sched.c - SD's noise schedule and five samplers, reproducing diffusers
 * 0.31.0's DDIMScheduler, PNDMScheduler (PLMS), EulerDiscreteScheduler,
 * EulerAncestralDiscreteScheduler and DPMSolverMultistepScheduler (DPM++ 2M)
 * step for step (REFERENCE.md section 8).
 *
 * diffusers keeps alphas_cumprod, sigmas, the per-step coefficients and the
 * latents in float32 torch tensors; those are floats here, computed with the
 * same operations in the same order, so a run lands within a few float32 ulps
 * of diffusers'.  What diffusers computes in numpy float64 (timestep spacing,
 * np.interp, the Karras ramp, _sigma_to_t) is double here.  A sampler is a
 * plan (what set_timesteps leaves in the scheduler: timesteps, sigmas,
 * init_noise_sigma) and a step function; sampler_run is the pipeline's
 * denoising loop around them.  Each diffusers quirk kept on purpose is marked
 * "diffusers:" so nobody "fixes" it.  The float arithmetic assumes no FMA
 * contraction (GCC's default under -std=c11); with it, results still agree
 * to ~1e-6.
 */
#include "sched.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define T_MAX (SCHED_TRAIN_STEPS - 1)
#define MAX_STEPS SCHED_TRAIN_STEPS

/* What set_timesteps leaves in a scheduler. */
typedef struct plan {
    sampler_kind kind;
    prediction_kind pred;
    spacing_kind spacing;           /* resolved: never SPACING_DEFAULT */
    int calls;                      /* model calls */
    int ratio;                      /* DDIM/PNDM: 1000 // steps, the distance to prev_t */
    float ac[SCHED_TRAIN_STEPS];
    float final_ac;                 /* DDIM/PNDM alpha "before" t = 0 */
    float init_sigma;
    int ti[MAX_STEPS + 2];          /* integer timesteps (DDIM, PNDM, DPM++ 2M) */
    float t[MAX_STEPS + 2];         /* the timestep the model sees, per call */
    float sigma[MAX_STEPS + 2];     /* Euler family and DPM++ 2M: calls + 1, last 0 */
} plan;

/* ---- the schedule ---- */

sched_config sched_default(prediction_kind prediction)
{
    sched_config c = {
        .beta_start = 0.00085f, .beta_end = 0.012f, .steps_offset = 1,
        .spacing = SPACING_DEFAULT, .prediction = prediction,
        .set_alpha_to_one = 0, .karras = 0,
    };
    return c;
}

/* The double a Python config holds for a beta the config stores as a float:
 * the shortest decimal that rounds to the float, read back as a double
 * (0.00085f -> 0.00085, not 0.000850000011...), since sqrt of the two
 * differs in float32. */
static double config_double(float f)
{
    char buf[32];
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, (double)f);
        double d = strtod(buf, NULL);
        if ((float)d == f)
            return d;
    }
    return f;
}

void sched_alphas_cumprod(const sched_config *c, float *ac)
{
    /* torch.linspace(sqrt(b0), sqrt(b1), 1000, float32): the step is a float,
     * and torch's CPU kernel evaluates start + step * i (end - step * (999 - i)
     * in the upper half) with one rounding (a fused multiply-add), which double
     * arithmetic rounded to float reproduces - it matches all 1000 values. */
    const int n = SCHED_TRAIN_STEPS;
    float start = (float)sqrt(config_double(c->beta_start));
    float end = (float)sqrt(config_double(c->beta_end));
    float step = (end - start) / (float)(n - 1);
    /* torch.cumprod on the CPU accumulates in double (acc_type<float>) and
     * rounds each partial product to float. */
    double prod = 1.0;
    for (int i = 0; i < n; i++) {
        float lin = i < n / 2 ? (float)((double)start + (double)step * i)
                              : (float)((double)end - (double)step * (n - 1 - i));
        float beta = lin * lin;
        prod *= (double)(1.0f - beta);
        ac[i] = (float)prod;
    }
}

/* ((1 - ac) / ac) ** 0.5 in float32: the training sigmas. */
static void train_sigmas(const float *ac, float *s)
{
    for (int i = 0; i < SCHED_TRAIN_STEPS; i++)
        s[i] = sqrtf((1.0f - ac[i]) / ac[i]);
}

/* ---- numpy, as diffusers' set_timesteps uses it ---- */

/* np.linspace(start, stop, num)[i]: i * step + start, the last one exact. */
static double np_linspace(double start, double stop, int num, int i)
{
    if (num > 1 && i == num - 1)
        return stop;
    if (num <= 1)
        return (double)i * (stop - start) + start;
    double step = (stop - start) / (double)(num - 1);
    return (double)i * step + start;
}

/* np.round(np.arange(1000, 0, -1000 / steps)) - 1: "trailing" timesteps,
 * descending.  numpy fills an arange as start + i * (second - start).  Returns
 * how many there are: diffusers: for 62 values of steps (61, 103, 121, ...)
 * rounding makes that steps + 1, ending at -1. */
static int np_trailing(int steps, double *out)
{
    double r = (double)SCHED_TRAIN_STEPS / steps;
    double len = ceil((0.0 - SCHED_TRAIN_STEPS) / -r);
    int n = (int)len;
    double b0 = SCHED_TRAIN_STEPS, b1 = b0 + -r, d = b1 - b0;
    for (int i = 0; i < n && i < steps + 1; i++) {
        double v = i == 0 ? b0 : i == 1 ? b1 : b0 + (double)i * d;
        out[i] = rint(v) - 1.0;   /* np.round: half to even, as rint */
    }
    return n;
}

/* np.interp(x, arange(1000), sigmas) with float32 sigmas. */
static double np_interp(double x, const float *fp)
{
    if (x <= 0.0)
        return fp[0];
    if (x >= T_MAX)
        return fp[T_MAX];
    int j = (int)floor(x);
    if ((double)j == x)
        return fp[j];
    double slope = ((double)fp[j + 1] - (double)fp[j]) / 1.0;
    return slope * (x - (double)j) + (double)fp[j];
}

/* _convert_to_karras: rho = 7 between the given sigma_max and sigma_min. */
static double karras_sigma(double smin, double smax, int steps, int i)
{
    const double rho = 7.0;
    double ramp = np_linspace(0.0, 1.0, steps, i);
    double min_inv = pow(smin, 1.0 / rho), max_inv = pow(smax, 1.0 / rho);
    return pow(max_inv + ramp * (min_inv - max_inv), rho);
}

/* _sigma_to_t: the fractional training timestep of a sigma, interpolating
 * log sigma.  log_sigmas is numpy float32 (np.log of the float32 sigmas), so
 * low - high is a float32 difference; the rest is float64. */
static double sigma_to_t(double sigma, const float *log_sigmas)
{
    double ls = log(fmax(sigma, 1e-10));
    /* np.cumsum(dists >= 0).argmax(): the last index with log_sigmas <= ls,
     * or 0 when there is none. */
    int low = 0;
    for (int i = 0; i < SCHED_TRAIN_STEPS; i++)
        if (ls - (double)log_sigmas[i] >= 0.0)
            low = i;
    if (low > SCHED_TRAIN_STEPS - 2)
        low = SCHED_TRAIN_STEPS - 2;
    int high = low + 1;
    float lo = log_sigmas[low], hi = log_sigmas[high];
    double w = ((double)lo - ls) / (double)(lo - hi);
    w = w < 0.0 ? 0.0 : w > 1.0 ? 1.0 : w;
    return (1.0 - w) * low + w * high;
}

static void log_sigmas_f32(const float *sig, float *ls)
{
    /* numpy's float32 log: correctly rounded here; numpy's SIMD log differs
     * in the last bit for about a fifth of these values, which moves a
     * Karras timestep by ~1e-5 at most. */
    for (int i = 0; i < SCHED_TRAIN_STEPS; i++)
        ls[i] = (float)log((double)sig[i]);
}

/* ---- plans ---- */

static spacing_kind resolve_spacing(sampler_kind k, spacing_kind s)
{
    if (s != SPACING_DEFAULT)
        return s;
    /* diffusers: from_config drops the base scheduler's filled-in default
     * "leading"; Euler, Euler a and DPMSolverMultistep default to linspace. */
    return k == SAMPLER_DDIM || k == SAMPLER_PNDM ? SPACING_LEADING : SPACING_LINSPACE;
}

/* DDIM's (and, reversed, PNDM's) integer timesteps for `steps` steps,
 * descending. */
static int ddim_timesteps(const sched_config *c, spacing_kind sp, int steps, int *out,
                          coin_error *err)
{
    if (sp == SPACING_LEADING) {
        int ratio = SCHED_TRAIN_STEPS / steps;
        for (int i = 0; i < steps; i++)
            out[i] = (steps - 1 - i) * ratio + c->steps_offset;
    } else if (sp == SPACING_LINSPACE) {
        for (int i = 0; i < steps; i++)
            out[i] = (int)rint(np_linspace(0.0, T_MAX, steps, steps - 1 - i));
    } else {
        double v[MAX_STEPS + 2];
        if (np_trailing(steps, v) != steps)
            return coin_fail(err, COIN_EUNSUPPORTED,
                             "trailing spacing with %d steps: diffusers makes %d timesteps "
                             "ending at -1; choose another step count or spacing",
                             steps, steps + 1);
        for (int i = 0; i < steps; i++)
            out[i] = (int)v[i];
    }
    return 0;
}

static int check_range(const plan *p, coin_error *err)
{
    for (int i = 0; i < p->calls; i++)
        if (!(p->t[i] >= 0.0f && p->t[i] <= (float)T_MAX))
            return coin_fail(err, COIN_EUNSUPPORTED,
                             "%s: timestep %g is outside the schedule 0..%d "
                             "(steps_offset or the step count too large)",
                             sampler_name(p->kind), (double)p->t[i], T_MAX);
    return 0;
}

static int plan_ddim(plan *p, const sched_config *c, int steps, coin_error *err)
{
    int rc = ddim_timesteps(c, p->spacing, steps, p->ti, err);
    if (rc)
        return rc;
    p->calls = steps;
    for (int i = 0; i < steps; i++)
        p->t[i] = (float)p->ti[i];
    return 0;
}

static int plan_pndm(plan *p, const sched_config *c, int steps, coin_error *err)
{
    int d[MAX_STEPS + 2];
    int rc = ddim_timesteps(c, p->spacing, steps, d, err);
    if (rc)
        return rc;
    /* skip_prk_steps: concat(_t[:-1], _t[-2:-1], _t[-1:])[::-1] on the
     * ascending _t, i.e. the descending list with its second value doubled
     * (and a single step left alone). */
    p->calls = 0;
    p->ti[p->calls++] = d[0];
    if (steps > 1)
        p->ti[p->calls++] = d[1];
    for (int i = 1; i < steps; i++)
        p->ti[p->calls++] = d[i];
    for (int i = 0; i < p->calls; i++)
        p->t[i] = (float)p->ti[i];
    return 0;
}

static int plan_euler(plan *p, const sched_config *c, int steps, const float *sig,
                      coin_error *err)
{
    double in[MAX_STEPS + 2];
    if (p->spacing == SPACING_LEADING) {
        int ratio = SCHED_TRAIN_STEPS / steps;
        for (int i = 0; i < steps; i++)
            p->t[i] = (float)((steps - 1 - i) * ratio) + (float)c->steps_offset;
    } else if (p->spacing == SPACING_LINSPACE) {
        /* diffusers: float32 and not rounded, so e.g. 7 steps give 832.5 */
        for (int i = 0; i < steps; i++)
            p->t[i] = (float)np_linspace(0.0, T_MAX, steps, steps - 1 - i);
    } else {
        double v[MAX_STEPS + 2];
        if (np_trailing(steps, v) != steps)
            return coin_fail(err, COIN_EUNSUPPORTED,
                             "trailing spacing with %d steps: diffusers makes %d timesteps "
                             "ending at -1; choose another step count or spacing",
                             steps, steps + 1);
        /* rounded, cast to float32, then "-= 1" in float32 */
        for (int i = 0; i < steps; i++)
            p->t[i] = (float)(v[i] + 1.0) - 1.0f;
    }
    p->calls = steps;
    for (int i = 0; i < steps; i++)
        in[i] = np_interp((double)p->t[i], sig);
    if (c->karras) {
        /* diffusers: Euler's Karras range is that of the sigmas just chosen
         * (sigma(999) .. sigma(0) for linspace, but sigma(t_0) .. sigma(t_last)
         * for leading), not the training range DPM++ uses; the model sees
         * the fractional timesteps of the new sigmas. */
        float ls[SCHED_TRAIN_STEPS];
        log_sigmas_f32(sig, ls);
        double smin = in[steps - 1], smax = in[0];
        for (int i = 0; i < steps; i++) {
            double s = karras_sigma(smin, smax, steps, i);
            p->t[i] = (float)sigma_to_t(s, ls);
            p->sigma[i] = (float)s;
        }
    } else {
        for (int i = 0; i < steps; i++)
            p->sigma[i] = (float)in[i];
    }
    p->sigma[steps] = 0.0f;
    float m = 0.0f;
    for (int i = 0; i <= steps; i++)
        m = p->sigma[i] > m ? p->sigma[i] : m;
    /* diffusers: init_noise_sigma is max sigma, but sqrt(max^2 + 1) for
     * leading spacing. */
    p->init_sigma = p->spacing == SPACING_LEADING ? sqrtf(m * m + 1.0f) : m;
    return 0;
}

static int plan_dpm(plan *p, const sched_config *c, int steps, const float *sig,
                    coin_error *err)
{
    p->calls = steps;
    if (c->karras) {
        /* diffusers: DPM++ 2M's Karras range is the whole training range, the
         * spacing is ignored, and the model sees the timesteps rounded. */
        float ls[SCHED_TRAIN_STEPS];
        log_sigmas_f32(sig, ls);
        for (int i = 0; i < steps; i++) {
            double s = karras_sigma(sig[0], sig[T_MAX], steps, i);
            p->ti[i] = (int)rint(sigma_to_t(s, ls));
            p->sigma[i] = (float)s;
        }
    } else {
        if (p->spacing == SPACING_LEADING) {
            /* diffusers: steps + 1 points, the last (0) dropped */
            int ratio = SCHED_TRAIN_STEPS / (steps + 1);
            for (int i = 0; i < steps; i++)
                p->ti[i] = (steps - i) * ratio + c->steps_offset;
        } else if (p->spacing == SPACING_LINSPACE) {
            for (int i = 0; i < steps; i++)
                p->ti[i] = (int)rint(np_linspace(0.0, T_MAX, steps + 1, steps - i));
        } else {
            double v[MAX_STEPS + 2];
            if (np_trailing(steps, v) != steps)
                return coin_fail(err, COIN_EUNSUPPORTED,
                                 "trailing spacing with %d steps: diffusers makes %d timesteps "
                                 "ending at -1; choose another step count or spacing",
                                 steps, steps + 1);
            for (int i = 0; i < steps; i++)
                p->ti[i] = (int)v[i];
        }
        for (int i = 0; i < steps; i++) {
            int t = p->ti[i] < 0 ? 0 : p->ti[i] > T_MAX ? T_MAX : p->ti[i];
            p->sigma[i] = sig[t];
        }
    }
    p->sigma[steps] = 0.0f;   /* final_sigmas_type "zero" */
    for (int i = 0; i < steps; i++)
        p->t[i] = (float)p->ti[i];
    return 0;
}

static int make_plan(plan *p, sampler_kind k, const sched_config *c, int steps,
                     coin_error *err)
{
    if ((unsigned)k >= SAMPLER_COUNT)
        return coin_fail(err, COIN_EINVAL, "unknown sampler %d", (int)k);
    if (!c)
        return coin_fail(err, COIN_EINVAL, "%s: no scheduler configuration", sampler_name(k));
    if (steps < 1 || steps > MAX_STEPS)
        return coin_fail(err, COIN_EINVAL, "%s: %d steps; the schedule allows 1 to %d",
                         sampler_name(k), steps, MAX_STEPS);
    if (c->prediction != PREDICT_EPSILON && c->prediction != PREDICT_V)
        return coin_fail(err, COIN_EINVAL, "%s: unknown prediction type %d", sampler_name(k),
                         (int)c->prediction);
    if ((unsigned)c->spacing > SPACING_DEFAULT)
        return coin_fail(err, COIN_EINVAL, "%s: unknown timestep spacing %d", sampler_name(k),
                         (int)c->spacing);
    if (!(c->beta_start > 0.0f && c->beta_end > c->beta_start && c->beta_end < 1.0f))
        return coin_fail(err, COIN_EINVAL, "%s: betas %g..%g are not an increasing range in (0,1)",
                         sampler_name(k), (double)c->beta_start, (double)c->beta_end);
    if (c->steps_offset < 0)
        return coin_fail(err, COIN_EINVAL, "%s: negative steps_offset %d", sampler_name(k),
                         c->steps_offset);
    if (c->karras && (k == SAMPLER_DDIM || k == SAMPLER_PNDM))
        return coin_fail(err, COIN_EINVAL,
                         "%s: Karras sigmas apply to euler, euler_a and dpmpp_2m only",
                         sampler_name(k));
    memset(p, 0, sizeof *p);
    p->kind = k;
    p->pred = c->prediction;
    p->spacing = resolve_spacing(k, c->spacing);
    p->ratio = SCHED_TRAIN_STEPS / steps;
    p->init_sigma = 1.0f;
    sched_alphas_cumprod(c, p->ac);
    p->final_ac = c->set_alpha_to_one ? 1.0f : p->ac[0];
    float sig[SCHED_TRAIN_STEPS];
    train_sigmas(p->ac, sig);
    int rc;
    switch (k) {
    case SAMPLER_DDIM: rc = plan_ddim(p, c, steps, err); break;
    case SAMPLER_PNDM: rc = plan_pndm(p, c, steps, err); break;
    case SAMPLER_DPMPP_2M: rc = plan_dpm(p, c, steps, sig, err); break;
    default: rc = plan_euler(p, c, steps, sig, err); break;
    }
    return rc ? rc : check_range(p, err);
}

/* ---- steps ---- */

/* DDIMScheduler.step with eta 0 (so std_dev_t is 0 and drops out). */
static void step_ddim(const plan *p, int t, const float *e, float *x, int64_t n)
{
    int prev = t - p->ratio;
    float a_t = p->ac[t];
    float a_prev = prev >= 0 ? p->ac[prev] : p->final_ac;
    float sa = sqrtf(a_t), sb = sqrtf(1.0f - a_t);
    float sa_prev = sqrtf(a_prev), dir = sqrtf(1.0f - a_prev);
    for (int64_t i = 0; i < n; i++) {
        float x0, pe;
        if (p->pred == PREDICT_EPSILON) {
            x0 = (x[i] - sb * e[i]) / sa;
            pe = e[i];
        } else {
            x0 = sa * x[i] - sb * e[i];
            pe = sa * e[i] + sb * x[i];
        }
        x[i] = sa_prev * x0 + dir * pe;
    }
}

/* PNDMScheduler._get_prev_sample: x_prev from sample at t, writing x.  The
 * v -> epsilon conversion happens here, on the already combined output and
 * with this call's sample, as in diffusers. */
static void pndm_prev(const plan *p, const float *sample, int t, int prev, const float *mo,
                      float *x, int64_t n)
{
    float a_t = p->ac[t];
    float a_prev = prev >= 0 ? p->ac[prev] : p->final_ac;
    float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    float sa = sqrtf(a_t), sb = sqrtf(b_t);
    float coeff = sqrtf(a_prev / a_t);
    float denom = a_t * sqrtf(b_prev) + sqrtf(a_t * b_t * a_prev);
    float diff = a_prev - a_t;
    for (int64_t i = 0; i < n; i++) {
        float m = mo[i];
        if (p->pred == PREDICT_V)
            m = sa * m + sb * sample[i];
        x[i] = coeff * sample[i] - diff * m / denom;
    }
}

/* PNDM's running state: the last four outputs and the saved first sample. */
typedef struct pndm_state {
    float *ets[4];
    int n_ets;
    float *cur;
    float *mo;
    int counter;
} pndm_state;

/* PNDMScheduler.step_plms (skip_prk_steps). */
static void step_pndm(const plan *p, pndm_state *s, int t, const float *e, float *x, int64_t n)
{
    int prev = t - p->ratio;
    if (s->counter != 1) {
        if (s->n_ets == 4) {   /* ets = ets[-3:], reusing the dropped buffer */
            float *old = s->ets[0];
            memmove(s->ets, s->ets + 1, 3 * sizeof s->ets[0]);
            s->ets[3] = old;
            s->n_ets = 3;
        }
        memcpy(s->ets[s->n_ets++], e, (size_t)n * sizeof *e);
    } else {
        /* diffusers: the second call redoes the first interval (t + ratio ->
         * t) from the saved sample, with the mean of both outputs. */
        prev = t;
        t = t + p->ratio;
    }
    const float *sample = x;
    float *const *E = s->ets;
    float *mo = s->mo;
    if (s->n_ets == 1 && s->counter == 0) {
        memcpy(mo, e, (size_t)n * sizeof *e);
        memcpy(s->cur, x, (size_t)n * sizeof *x);
    } else if (s->n_ets == 1 && s->counter == 1) {
        for (int64_t i = 0; i < n; i++)
            mo[i] = (e[i] + E[0][i]) / 2.0f;
        sample = s->cur;
    } else if (s->n_ets == 2) {
        for (int64_t i = 0; i < n; i++)
            mo[i] = (3.0f * E[1][i] - E[0][i]) / 2.0f;
    } else if (s->n_ets == 3) {
        for (int64_t i = 0; i < n; i++)
            mo[i] = (23.0f * E[2][i] - 16.0f * E[1][i] + 5.0f * E[0][i]) / 12.0f;
    } else {
        const float c = (float)(1.0 / 24.0);
        for (int64_t i = 0; i < n; i++)
            mo[i] = c * (55.0f * E[3][i] - 59.0f * E[2][i] + 37.0f * E[1][i] - 9.0f * E[0][i]);
    }
    pndm_prev(p, sample, t, prev, mo, x, n);
    s->counter++;
}

/* The x0 prediction of the Euler schedulers. */
static float euler_x0(prediction_kind pred, float sigma, float x, float e)
{
    if (pred == PREDICT_EPSILON)
        return x - sigma * e;
    /* c_out = -sigma / sqrt(sigma^2 + 1), c_skip = 1 / (sigma^2 + 1) */
    return e * (-sigma / sqrtf(sigma * sigma + 1.0f)) + x / (sigma * sigma + 1.0f);
}

/* EulerDiscreteScheduler.step with s_churn 0 (sigma_hat = sigma). */
static void step_euler(const plan *p, int i, const float *e, float *x, int64_t n)
{
    float sigma = p->sigma[i] * (0.0f + 1.0f);
    float dt = p->sigma[i + 1] - sigma;
    for (int64_t j = 0; j < n; j++) {
        float x0 = euler_x0(p->pred, sigma, x[j], e[j]);
        float d = (x[j] - x0) / sigma;
        x[j] = x[j] + d * dt;
    }
}

/* EulerAncestralDiscreteScheduler.step: down to sigma_down, then noise of
 * sigma_up. */
static void step_euler_a(const plan *p, int i, const float *e, const float *noise, float *x,
                         int64_t n)
{
    float sf = p->sigma[i], st = p->sigma[i + 1];
    float up = sqrtf(st * st * (sf * sf - st * st) / (sf * sf));
    float down = sqrtf(st * st - up * up);
    float dt = down - sf;
    for (int64_t j = 0; j < n; j++) {
        float x0 = euler_x0(p->pred, sf, x[j], e[j]);
        float d = (x[j] - x0) / sf;
        float xn = x[j] + d * dt;
        x[j] = xn + noise[j] * up;
    }
}

/* _sigma_to_alpha_sigma_t */
static void dpm_alpha_sigma(float sigma, float *alpha, float *sig)
{
    *alpha = 1.0f / sqrtf(sigma * sigma + 1.0f);
    *sig = sigma * *alpha;
}

static float dpm_lambda(float sigma)
{
    float a, s;
    dpm_alpha_sigma(sigma, &a, &s);
    return logf(a) - logf(s);
}

/* DPMSolverMultistepScheduler.step, dpmsolver++ order 2 midpoint: m0 and m1
 * are this step's and the previous step's x0 predictions. */
static void step_dpm(const plan *p, int i, int first_order, const float *m0, const float *m1,
                     float *x, int64_t n)
{
    float a_t, s_t, a_s0, s_s0;
    dpm_alpha_sigma(p->sigma[i + 1], &a_t, &s_t);
    dpm_alpha_sigma(p->sigma[i], &a_s0, &s_s0);
    float l_t = dpm_lambda(p->sigma[i + 1]);
    float l_s0 = dpm_lambda(p->sigma[i]);
    float h = l_t - l_s0;
    float c_x = s_t / s_s0;
    float c_d0 = a_t * (expf(-h) - 1.0f);
    if (first_order) {
        for (int64_t j = 0; j < n; j++)
            x[j] = c_x * x[j] - c_d0 * m0[j];
        return;
    }
    float l_s1 = dpm_lambda(p->sigma[i - 1]);
    float h0 = l_s0 - l_s1;
    float r0 = h0 / h;
    float inv_r0 = 1.0f / r0;
    float c_d1 = 0.5f * c_d0;
    for (int64_t j = 0; j < n; j++) {
        float d1 = inv_r0 * (m0[j] - m1[j]);
        x[j] = c_x * x[j] - c_d0 * m0[j] - c_d1 * d1;
    }
}

/* convert_model_output for dpmsolver++: the x0 prediction. */
static void dpm_x0(const plan *p, int i, const float *x, const float *e, float *x0, int64_t n)
{
    float a, s;
    dpm_alpha_sigma(p->sigma[i], &a, &s);
    for (int64_t j = 0; j < n; j++)
        x0[j] = p->pred == PREDICT_EPSILON ? (x[j] - s * e[j]) / a : a * x[j] - s * e[j];
}

/* ---- the loop ---- */

static int call_model(const sched_callbacks *cb, const float *x_in, float t, float *out,
                      coin_error *err)
{
    int rc = cb->denoise(cb->ctx, x_in, t, out, err);
    if (rc == 0)
        return 0;
    if (rc > 0)
        rc = COIN_EINVAL;
    if (err && err->code == COIN_OK)
        coin_fail(err, (coin_status)rc, "the denoiser failed at timestep %g", (double)t);
    return rc;
}

static int report(const sched_callbacks *cb, int done, int total, coin_error *err)
{
    if (cb->progress && cb->progress(cb->ctx, done, total))
        return coin_fail(err, COIN_EINVAL, "interrupted");
    return 0;
}

int sampler_model_calls(sampler_kind k, int steps)
{
    if (steps < 1)
        return 0;
    return k == SAMPLER_PNDM && steps > 1 ? steps + 1 : steps;
}

float sampler_init_sigma(sampler_kind k, const sched_config *c, int steps)
{
    plan *p = malloc(sizeof *p);
    if (!p)
        return -1.0f;
    float s = make_plan(p, k, c, steps, NULL) ? -1.0f : p->init_sigma;
    free(p);
    return s;
}

int sampler_timesteps(sampler_kind k, const sched_config *c, int steps, float *t,
                      coin_error *err)
{
    plan *p = malloc(sizeof *p);
    if (!p)
        return coin_fail(err, COIN_ENOMEM, "out of memory planning %d steps", steps);
    int rc = make_plan(p, k, c, steps, err);
    if (!rc)
        memcpy(t, p->t, (size_t)p->calls * sizeof *t);
    free(p);
    return rc;
}

int sampler_run(sampler_kind k, const sched_config *c, int steps, float *x, int64_t n,
                const sched_callbacks *cb, coin_error *err)
{
    if (!x || n <= 0 || !cb || !cb->denoise)
        return coin_fail(err, COIN_EINVAL, "sampler_run: no latents or no denoiser");
    if (k == SAMPLER_EULER_A && !cb->noise)
        return coin_fail(err, COIN_EINVAL, "euler_a needs a noise source for its ancestral steps");
    plan *p = malloc(sizeof *p);
    if (!p)
        return coin_fail(err, COIN_ENOMEM, "out of memory planning %d steps", steps);
    int rc = make_plan(p, k, c, steps, err);
    if (rc) {
        free(p);
        return rc;
    }
    /* out, x_in, then per sampler: PNDM 4 ets + cur + mo; DPM m0, m1; Euler a noise */
    int nbuf = k == SAMPLER_PNDM ? 8 : 4;
    float *mem = malloc((size_t)nbuf * (size_t)n * sizeof *mem);
    if (!mem) {
        free(p);
        return coin_fail(err, COIN_ENOMEM, "out of memory for %d latent buffers of %lld floats",
                         nbuf, (long long)n);
    }
    float *out = mem, *buf = mem + n;
    int total = p->calls;
    switch (k) {
    case SAMPLER_DDIM:
        for (int i = 0; i < total && !rc; i++) {
            rc = call_model(cb, x, p->t[i], out, err);
            if (!rc) {
                step_ddim(p, p->ti[i], out, x, n);
                rc = report(cb, i + 1, total, err);
            }
        }
        break;
    case SAMPLER_PNDM: {
        pndm_state s = { .cur = mem + 5 * n, .mo = mem + 6 * n };
        for (int j = 0; j < 4; j++)
            s.ets[j] = mem + (1 + j) * n;
        for (int i = 0; i < total && !rc; i++) {
            rc = call_model(cb, x, p->t[i], out, err);
            if (!rc) {
                step_pndm(p, &s, p->ti[i], out, x, n);
                rc = report(cb, i + 1, total, err);
            }
        }
        break;
    }
    case SAMPLER_EULER:
    case SAMPLER_EULER_A: {
        float *noise = mem + 2 * n;
        for (int i = 0; i < total && !rc; i++) {
            /* scale_model_input: x / sqrt(sigma^2 + 1) */
            float sc = sqrtf(p->sigma[i] * p->sigma[i] + 1.0f);
            for (int64_t j = 0; j < n; j++)
                buf[j] = x[j] / sc;
            rc = call_model(cb, buf, p->t[i], out, err);
            if (rc)
                break;
            if (k == SAMPLER_EULER) {
                step_euler(p, i, out, x, n);
            } else {
                cb->noise(cb->ctx, noise, n);
                step_euler_a(p, i, out, noise, x, n);
            }
            rc = report(cb, i + 1, total, err);
        }
        break;
    }
    case SAMPLER_DPMPP_2M: {
        float *m0 = mem + 2 * n, *m1 = mem + 3 * n;
        int lower_order_nums = 0;
        for (int i = 0; i < total && !rc; i++) {
            rc = call_model(cb, x, p->t[i], out, err);
            if (rc)
                break;
            float *tmp = m1;   /* model_outputs shift: m1 <- m0, m0 <- new */
            m1 = m0;
            m0 = tmp;
            dpm_x0(p, i, x, out, m0, n);
            /* diffusers: with final_sigmas_type "zero" the last step is
             * always first order, whatever the step count. */
            int first = lower_order_nums < 1 || i == total - 1;
            step_dpm(p, i, first, m0, m1, x, n);
            if (lower_order_nums < 2)
                lower_order_nums++;
            rc = report(cb, i + 1, total, err);
        }
        break;
    }
    default:
        rc = coin_fail(err, COIN_EINVAL, "unknown sampler %d", (int)k);
    }
    free(mem);
    free(p);
    return rc;
}

/* ---- training ---- */

static int train_coefs(const float *ac, int t, float *sa, float *sb, coin_error *err)
{
    if (t < 0 || t > T_MAX)
        return coin_fail(err, COIN_EINVAL, "training timestep %d is outside 0..%d", t, T_MAX);
    *sa = sqrtf(ac[t]);
    *sb = sqrtf(1.0f - ac[t]);
    return 0;
}

int sched_noise_coefs(const sched_config *c, int t, float *sqrt_ac, float *sqrt_one_minus_ac,
                      coin_error *err)
{
    float ac[SCHED_TRAIN_STEPS];
    sched_alphas_cumprod(c, ac);
    return train_coefs(ac, t, sqrt_ac, sqrt_one_minus_ac, err);
}

/* out = a * u + s * w per sample (add_noise: u = x0, w = eps, s = +sqrt(1-ac);
 * get_velocity: u = eps, w = x0, s = -sqrt(1-ac)). */
static int train_mix(const sched_config *c, const float *x0, const float *eps, const int *t,
                     int batch, int64_t n, float *out, int velocity, coin_error *err)
{
    if (!c || !x0 || !eps || !t || !out || batch < 0 || n < 0)
        return coin_fail(err, COIN_EINVAL, "%s: missing argument",
                         velocity ? "sched_velocity" : "sched_add_noise");
    float ac[SCHED_TRAIN_STEPS];
    sched_alphas_cumprod(c, ac);
    for (int b = 0; b < batch; b++) {
        float sa = 0.0f, sb = 0.0f;
        int rc = train_coefs(ac, t[b], &sa, &sb, err);
        if (rc)
            return rc;
        const float *u = x0 + (int64_t)b * n, *w = eps + (int64_t)b * n;
        float *o = out + (int64_t)b * n;
        for (int64_t i = 0; i < n; i++)
            o[i] = velocity ? sa * w[i] - sb * u[i] : sa * u[i] + sb * w[i];
    }
    return 0;
}

int sched_add_noise(const sched_config *c, const float *x0, const float *eps, const int *t,
                    int batch, int64_t n, float *out, coin_error *err)
{
    return train_mix(c, x0, eps, t, batch, n, out, 0, err);
}

int sched_velocity(const sched_config *c, const float *x0, const float *eps, const int *t,
                   int batch, int64_t n, float *out, coin_error *err)
{
    return train_mix(c, x0, eps, t, batch, n, out, 1, err);
}

/* ---- names ---- */

static const char *const names[SAMPLER_COUNT] = { "ddim", "pndm", "euler", "euler_a", "dpmpp_2m" };
static const char *const a1111[SAMPLER_COUNT] = { "DDIM", "PLMS", "Euler", "Euler a", "DPM++ 2M" };

const char *sampler_name(sampler_kind k)
{
    return (unsigned)k < SAMPLER_COUNT ? names[k] : "unknown";
}

const char *sampler_a1111_name(sampler_kind k)
{
    return (unsigned)k < SAMPLER_COUNT ? a1111[k] : "unknown";
}

int sampler_parse(const char *s)
{
    if (!s)
        return -1;
    for (int k = 0; k < SAMPLER_COUNT; k++)
        if (!strcmp(s, names[k]) || !strcasecmp(s, a1111[k]))
            return k;
    return -1;
}
