/*
 * ti.h - the textual-inversion trainer: learns the embedding of a new
 * trigger word from a folder of images, as diffusers' textual_inversion.py
 * does, with the frozen UNet and VAE and only the trigger's rows trainable.
 *
 * A step: for each image of the batch, a latent sampled from its cached VAE
 * distribution (each image and its mirror image are encoded once), DDPM
 * noise at a uniform random timestep, a random prompt template with the
 * trigger; the UNet's prediction against epsilon (or v) by MSE; the
 * gradient flows back through the UNet to the text encoder's output and
 * through the text encoder to the trigger rows only (no weight gradients);
 * AdamW updates those rows.  All randomness comes from one torch-compatible
 * generator whose state is saved with each checkpoint, so a run resumed from
 * a checkpoint continues exactly as if it had never stopped.
 *
 * Output folder:
 *   learned_embeds.safetensors               the latest embedding (diffusers
 *   learned_embeds-steps-N.safetensors       format, with metadata)
 *   state.safetensors                        resume state (Adam moments, RNG,
 *                                            step, the whole configuration)
 *   loss.csv                                 step, loss, learning rate
 *   previews/step-N-K.png                    fixed prompts and seeds per checkpoint
 * Every file is written to a temporary name, flushed and renamed.
 */
#ifndef COIN_TI_H
#define COIN_TI_H

#include <stdint.h>

#include "error.h"
#include "tensor.h"

typedef enum ti_lr_schedule {
    LR_CONSTANT, LR_CONSTANT_WARMUP, LR_LINEAR, LR_COSINE
} ti_lr_schedule;

#define TI_MAX_PREVIEWS 8

typedef struct ti_config {
    char model[1024];
    char images[1024];          /* a folder of PNG/JPEG images (+ optional NAME.txt captions) */
    char out_dir[1024];
    char token[128];            /* the trigger, e.g. "<thumbs-up>" */
    char init_word[128];        /* one token of the vocabulary */
    int vectors;                /* vectors per trigger: <tok>, <tok>_1, ... */
    char templates[1024];       /* "object", "style", or a file with one "{}" per line */
    int resolution;             /* 0: the model's native size */
    int center_crop;
    float lr;                   /* before scale-lr */
    int scale_lr;               /* lr *= batch * grad_accum, as diffusers --scale_lr */
    ti_lr_schedule schedule;
    int warmup;
    int steps;                  /* optimizer steps */
    int batch;
    int grad_accum;
    float max_grad_norm;        /* 0: no clipping */
    int save_every;
    uint64_t seed;
    int checkpointing;          /* gradient checkpointing in the UNet */
    int n_previews;             /* preview images per checkpoint (0: none) */
    int preview_steps;
    uint64_t preview_seed;
    char preview_prompt[512];   /* "{}" stands for the trigger */
    int version;                /* 0 detect, 1 or 2 */
    int poison_from_step;       /* tests only: treat steps from this one on as
                                 * non-finite (0: never); not saved */
    char model_sha256[65];      /* the model file's sha256 when the caller has
                                 * it already ("" to compute); not saved */
} ti_config;

/* Our users' defaults (REFERENCE.md and the issue): lr 5e-4 with scale-lr,
 * 2000 steps, batch 4, a checkpoint every 250 steps, seed 42, object
 * templates, one vector, constant schedule, no clipping. */
void ti_config_defaults(ti_config *c);

/* The configuration as one line of JSON (caller frees), as the resume state
 * and the embeddings' metadata store it; NULL when out of memory. */
char *ti_config_to_json(const ti_config *c);

/* lambda(step) of diffusers' get_scheduler (constant, constant_with_warmup,
 * linear, cosine), the factor on the learning rate at optimizer step
 * `step` (0-based) of `total`. */
double ti_lr_factor(ti_lr_schedule s, int step, int warmup, int total);

const char *ti_lr_schedule_name(ti_lr_schedule s);
int ti_lr_schedule_parse(const char *s);   /* -1 if unknown */

typedef struct ti_report {
    int step, total;            /* optimizer steps done / planned */
    float loss;                 /* this step's mean loss */
    float smooth;               /* exponential moving average */
    double lr;
    int skipped;                /* non-finite steps skipped so far */
    const char *event;          /* NULL, or "checkpoint <path>", "preview <path>", "encoding images" */
} ti_report;

/* Called after every step and at events; return non-zero to stop (a
 * checkpoint is written first, so the run can be resumed). */
typedef int (*ti_report_fn)(void *ctx, const ti_report *r);

typedef struct ti_result {
    int steps_done;
    int stopped;                /* stopped early on request */
    char embedding[1200];       /* path of the last embedding written */
} ti_result;

/* Trains from scratch into c->out_dir (created; refused if it already holds
 * a state.safetensors: resume that instead). */
int ti_train(const ti_config *c, const coin_backend *be, ti_report_fn report, void *ctx,
             ti_result *res, coin_error *err);

/* Waits up to wait_s seconds until no trainer works in dir (a run asked to
 * pause finishes its step and checkpoint first). */
int ti_wait_for_folder(const char *dir, int wait_s, coin_error *err);

/* Continues the run whose state is in dir, to `steps` optimizer steps in
 * total (0: the planned number). */
int ti_resume(const char *dir, int steps, const coin_backend *be, ti_report_fn report,
              void *ctx, ti_result *res, coin_error *err);

/* One AdamW update of n parameters p with gradient g and moments m, v at
 * optimizer step `step` (1-based), weight decay 1e-2, betas 0.9 / 0.999,
 * eps 1e-8: torch 2.5's CPU arithmetic, rounding for rounding. */
void ti_adamw_step(float *p, const float *g, float *m, float *v, int64_t n, int step,
                   double lr);

#endif
