/*
 * vae.h - the Stable Diffusion autoencoder (AutoencoderKL): the decoder turns
 * latents into images for sampling, the encoder turns training images into
 * latents.
 *
 * Sizes (levels, channels, layers per block, groups) are read from the
 * weights, so tiny test models and the full-size VAE run the same code.
 * Weights are canonical (diffusers) names from checkpoint.h, which also maps
 * the LDM names and old diffusers attention names.
 */
#ifndef COIN_VAE_H
#define COIN_VAE_H

#include "checkpoint.h"
#include "tensor.h"

#define VAE_MAX_LEVELS 8

typedef struct vae_config {
    int in_channels, latent_channels;   /* image channels (3), latent channels (4) */
    int levels;
    int channels[VAE_MAX_LEVELS];   /* block_out_channels */
    int layers_per_block;           /* encoder; the decoder has one more */
    int norm_groups;                /* 32 unless vae/config.json norm_num_groups or, in a
                                     * single file, metadata vae.norm_num_groups says */
    float scaling_factor;           /* 0.18215 unless vae/config.json says otherwise */
} vae_config;

typedef struct vae_model vae_model;

/* Loads the decoder, and the encoder when the file has one (some VAE-only
 * files carry just the decoder: they load, and vae_encode says why it
 * cannot).  Every tensor's shape is checked; errors name the tensor. */
int vae_load(vae_model **out, const checkpoint *ck, const coin_backend *be,
             coin_error *err);

/* As vae_load, but only the halves asked for (VAE_DECODER, VAE_ENCODER or
 * both): sampling needs only the decoder, about 60% of the weights.  The
 * config is still read from the whole file.  Asking for an encoder the file
 * lacks is an error. */
#define VAE_DECODER 1
#define VAE_ENCODER 2
int vae_load_parts(vae_model **out, const checkpoint *ck, const coin_backend *be,
                   int parts, coin_error *err);
void vae_free(vae_model *m);
const vae_config *vae_get_config(const vae_model *m);

/* img[B, 3, H*f, W*f] in about [-1, 1] = decoder(post_quant_conv(z)), with
 * z[B, latent_ch, H, W] already divided by the scaling factor and f =
 * 2^(levels-1).  img is allocated here. */
int vae_decode(const vae_model *m, const tensor *z, tensor *img, coin_error *err);

/* mean, logvar [B, latent_ch, H/f, W/f] = quant_conv(encoder(img[B, 3, H, W]))
 * split on channels; logvar is clamped to [-30, 20] as diffusers does.  Not
 * scaled.  mean and logvar are allocated here. */
int vae_encode(const vae_model *m, const tensor *img, tensor *mean,
               tensor *logvar, coin_error *err);

#endif
