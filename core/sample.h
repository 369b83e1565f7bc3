/*
 * sample.h - text to image: a loaded Stable Diffusion pipeline and the
 * sampling loop with classifier-free guidance.
 *
 * A pipeline holds what sampling needs from one model: tokenizer, text
 * encoder, UNet, VAE, the prediction type, and any trigger words added from
 * embedding files.  sample_image makes one image from one seed: its own
 * generator (seeded seed) draws the initial latents and, for ancestral
 * samplers, the per-step noise, so image i of a batch (seed + i) can be
 * regenerated alone, bit for bit (AUTOMATIC1111's rule).  Images of a batch
 * go through the UNet one at a time for that reason: batching would change
 * GEMM blocking and with it the last bits.
 */
#ifndef COIN_SAMPLE_H
#define COIN_SAMPLE_H

#include <stdint.h>

#include "checkpoint.h"
#include "clip.h"
#include "embedding.h"
#include "rng.h"
#include "sched.h"
#include "tensor.h"
#include "tokenizer.h"
#include "unet.h"
#include "vae.h"

#define PIPELINE_MAX_EMBEDDINGS 16

typedef struct sd_pipeline {
    checkpoint *ck;
    const coin_backend *be;
    clip_tokenizer *tok;
    clip_model *clip;
    unet_model *unet;
    vae_model *vae;
    sd_prediction prediction;
    char prediction_from[160];
    int vae_factor;                 /* image pixels per latent pixel (8 for SD) */
    int unet_multiple;              /* latent sides must be multiples of this */
    int n_embeddings;
    ti_embedding embeddings[PIPELINE_MAX_EMBEDDINGS];
} sd_pipeline;

/* Opens model (file or folder) and loads all components onto be.
 * force_version / force_prediction override detection when not UNKNOWN.
 * When the files do not record the prediction type (SD 2.x single files),
 * it is found by running the UNet once, as AUTOMATIC1111 does. */
int pipeline_open(sd_pipeline **out, const char *model, sd_version force_version,
                  sd_prediction force_prediction, const coin_backend *be,
                  coin_error *err);
void pipeline_free(sd_pipeline *p);

/* Adds a trigger word from an embedding file (its vectors become new
 * token rows).  A width that differs from the text encoder's is an error
 * that names both (an SD 1.x embedding on an SD 2.x model). */
int pipeline_add_embedding(sd_pipeline *p, const char *path, coin_error *err);

/* Token ids for a prompt, with trigger words expanded to all their vectors;
 * r->n_dropped tells whether it was truncated. */
int pipeline_tokenize(const sd_pipeline *p, const char *prompt, tokenizer_result *r,
                      coin_error *err);

typedef struct sample_params {
    const char *prompt;
    const char *negative;           /* "" for none */
    int steps;
    float cfg;                      /* guidance scale; <= 1 runs without guidance */
    sampler_kind sampler;
    int karras;
    int width, height;              /* pixels */
    uint64_t seed;
    rng_kind rng;
} sample_params;

/* The model's usual settings: its scheduler's sampler (PNDM for SD 1.x,
 * DDIM for SD 2.x unless the folder says otherwise), 50 steps, guidance
 * 7.5, the native size (512 for SD 1.x, 768 for SD 2.x v, 512 otherwise,
 * or sample_size x factor for small models). */
void sample_defaults(const sd_pipeline *p, sample_params *sp);

/* Checks everything that can be checked before any work: steps 1..1000,
 * finite guidance, sizes the model can take (the message names the nearest
 * that work). */
int sample_validate(const sd_pipeline *p, const sample_params *sp, coin_error *err);

/* Called after each sampler step; return non-zero to stop. */
typedef int (*sample_progress_fn)(void *ctx, int step, int total);

/* Makes one image: pixels[3, H, W] (host, floats in about [-1, 1], as the
 * VAE decodes) and, if latents is not NULL, the final latents
 * [C, H/f, W/f].  The image's seed is sp->seed. */
int sample_image(sd_pipeline *p, const sample_params *sp, sample_progress_fn progress,
                 void *progress_ctx, float *pixels, float *latents, coin_error *err);

#endif
