/*
 * sched.h - the noise schedule and the samplers, as pure functions over a
 * denoise callback (REFERENCE.md section 8).
 *
 * The schedule is SD's: betas scaled-linear from 0.00085 to 0.012 over 1000
 * training steps.  Samplers reproduce diffusers' schedulers step for step -
 * timestep spacing, PNDM's PLMS warm-up, DPM++ 2M's lower-order final steps,
 * v-prediction conversions - so that with the same noise they land on the
 * same latents.  They work on host memory (latents are small); the callback
 * runs the UNet wherever it lives.
 */
#ifndef COIN_SCHED_H
#define COIN_SCHED_H

#include <stdint.h>

#include "error.h"

#define SCHED_TRAIN_STEPS 1000

typedef enum sampler_kind {
    SAMPLER_DDIM, SAMPLER_PNDM, SAMPLER_EULER, SAMPLER_EULER_A, SAMPLER_DPMPP_2M,
    SAMPLER_COUNT
} sampler_kind;

/* SPACING_DEFAULT is what diffusers 0.31 gives a scheduler built with
 * Scheduler.from_config(pipe.scheduler.config) from SD's scheduler_config.json:
 * "leading" for DDIM and PNDM, but "linspace" for Euler, Euler a and DPM++ 2M.
 * The file has no timestep_spacing key, so the base scheduler's "leading" is a
 * filled-in default (listed in _use_default_values) that from_config drops,
 * and each class falls back to its own default.  SPACING_LEADING etc. force
 * one spacing on every sampler, as timestep_spacing="leading" passed to
 * from_config does.  steps_offset only matters for leading. */
typedef enum spacing_kind {
    SPACING_LEADING, SPACING_TRAILING, SPACING_LINSPACE, SPACING_DEFAULT
} spacing_kind;
typedef enum prediction_kind { PREDICT_EPSILON, PREDICT_V } prediction_kind;

typedef struct sched_config {
    float beta_start, beta_end;     /* 0.00085, 0.012 (scaled_linear) */
    int steps_offset;               /* 1 for SD's scheduler configs */
    spacing_kind spacing;           /* SPACING_DEFAULT for SD */
    prediction_kind prediction;
    int set_alpha_to_one;           /* 0 for SD (DDIM's final alpha) */
    int karras;                     /* Karras sigmas (Euler, Euler a, DPM++ 2M); for
                                       Euler a, which diffusers 0.31 cannot do, Euler's
                                       Karras sigmas with the ancestral step */
} sched_config;

/* SD's configuration: scaled-linear betas, offset 1, SPACING_DEFAULT, no
 * Karras sigmas, set_alpha_to_one 0. */
sched_config sched_default(prediction_kind prediction);

/* alphas_cumprod[1000] as diffusers computes it (float32). */
void sched_alphas_cumprod(const sched_config *c, float *ac);

/* The model is asked for its output on x at timestep t (fractional for
 * Euler-family samplers).  x_in is already scaled by the sampler where the
 * scheduler's scale_model_input would scale it.  out receives epsilon or v,
 * n floats. */
typedef int (*sched_denoise_fn)(void *ctx, const float *x_in, float t, float *out,
                                coin_error *err);
/* Fresh standard normal noise for ancestral steps (n floats). */
typedef void (*sched_noise_fn)(void *ctx, float *out, int64_t n);
/* Called after each step; return non-zero to stop early (the run then
 * returns COIN_EINVAL with "interrupted"). */
typedef int (*sched_progress_fn)(void *ctx, int step, int total);

typedef struct sched_callbacks {
    sched_denoise_fn denoise;
    sched_noise_fn noise;           /* only Euler a uses it */
    sched_progress_fn progress;     /* may be NULL */
    void *ctx;
} sched_callbacks;

/* Number of model calls the sampler makes for `steps` steps (PNDM makes
 * steps + 1, except 1 for a single step). */
int sampler_model_calls(sampler_kind k, int steps);

/* The initial latents' scale: latents = randn * init_noise_sigma.  -1 when
 * the arguments are invalid (sampler_run says why). */
float sampler_init_sigma(sampler_kind k, const sched_config *c, int steps);

/* The timestep the model sees at each call, sampler_model_calls() of them,
 * into t: integers for DDIM, PNDM and DPM++ 2M, fractional float32 values for
 * Euler and Euler a with Karras sigmas or linspace spacing. */
int sampler_timesteps(sampler_kind k, const sched_config *c, int steps, float *t,
                      coin_error *err);

/* Runs the sampler for `steps` steps on x (n floats, already noise *
 * init_noise_sigma), in place.  steps is 1..1000; plans that would take a
 * timestep past 999 (DDIM leading with 1000 steps, DPM++ 2M leading with 999
 * or more) or that diffusers gets wrong (trailing spacing for 61, 103, ...
 * steps) are refused with COIN_EUNSUPPORTED.  Euler a draws n values from cb->noise once per step,
 * the last step included, as diffusers' EulerAncestralDiscreteScheduler
 * does with the pipeline's generator.  Progress is reported after each model
 * call as (calls done, sampler_model_calls). */
int sampler_run(sampler_kind k, const sched_config *c, int steps, float *x, int64_t n,
                const sched_callbacks *cb, coin_error *err);

/* ---- training (diffusers DDPMScheduler.add_noise / get_velocity) ---- */

/* sqrt(alphas_cumprod[t]) and sqrt(1 - alphas_cumprod[t]) in float32, the two
 * factors of add_noise and get_velocity, for code that applies them on the
 * device; t in 0..999. */
int sched_noise_coefs(const sched_config *c, int t, float *sqrt_ac, float *sqrt_one_minus_ac,
                      coin_error *err);

/* For each of `batch` samples of n floats with timestep t[b]:
 *   sched_add_noise: out = sqrt(ac_t) * x0 + sqrt(1 - ac_t) * eps
 *   sched_velocity:  out = sqrt(ac_t) * eps - sqrt(1 - ac_t) * x0
 * out may alias neither input. */
int sched_add_noise(const sched_config *c, const float *x0, const float *eps, const int *t,
                    int batch, int64_t n, float *out, coin_error *err);
int sched_velocity(const sched_config *c, const float *x0, const float *eps, const int *t,
                   int batch, int64_t n, float *out, coin_error *err);

/* Names as the command line spells them ("ddim", "pndm", "euler",
 * "euler_a", "dpmpp_2m") and as AUTOMATIC1111 writes them ("DDIM", "PLMS",
 * "Euler", "Euler a", "DPM++ 2M"). */
const char *sampler_name(sampler_kind k);
const char *sampler_a1111_name(sampler_kind k);
int sampler_parse(const char *s);   /* either spelling; -1 if unknown */

#endif
