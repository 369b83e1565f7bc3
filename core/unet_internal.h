/*
 * unet_internal.h - the UNet's layers as unet.c loads them, shared with
 * unet_backward.c (the training-time forward that keeps activations, and
 * the backward pass to the conditioning).  Not part of the public API.
 */
#ifndef COIN_UNET_INTERNAL_H
#define COIN_UNET_INTERNAL_H

#include "unet.h"

#define MAX_LAYERS 16           /* resnets per down block, a sanity bound */
#define MAX_DEPTH 16            /* transformer blocks per attention */

/* diffusers' fixed constants for these models (Transformer2DModel and
 * BasicTransformerBlock defaults). */
#define TRANSFORMER_GN_EPS 1e-6f
#define LAYERNORM_EPS 1e-5f
#define FF_MULT 4

/* ResnetBlock2D: norm1 -> SiLU -> conv1 -> + time_emb_proj(SiLU(temb)) ->
 * norm2 -> SiLU -> conv2 -> + (conv_shortcut of) the input. */
typedef struct resnet {
    int cin, cout;
    tensor norm1_w, norm1_b, conv1_w, conv1_b, temb_w, temb_b;
    tensor norm2_w, norm2_b, conv2_w, conv2_b;
    tensor skip_w, skip_b;      /* 1x1, only when cin != cout */
} resnet;

/* BasicTransformerBlock (layer_norm, self-attn, cross-attn, GEGLU FF). */
typedef struct tblock {
    tensor ln1_w, ln1_b, q1_w, k1_w, v1_w, o1_w, o1_b;
    tensor ln2_w, ln2_b, q2_w, k2_w, v2_w, o2_w, o2_b;
    tensor ln3_w, ln3_b, ff1_w, ff1_b, ff2_w, ff2_b;
} tblock;

/* Transformer2DModel over continuous input.  proj_in/proj_out are kept as
 * [C, C] matrices either way: a 1x1 convolution applied before the
 * flatten to tokens is the same product as a linear layer applied after. */
typedef struct transformer {
    int channels, heads, depth;
    tensor norm_w, norm_b, proj_in_w, proj_in_b, proj_out_w, proj_out_b;
    tblock blocks[MAX_DEPTH];
} transformer;

typedef struct level {
    int n_res;                  /* layers_per_block down, + 1 up */
    resnet res[MAX_LAYERS + 1];
    transformer *attn;          /* n_res of them, or NULL */
    tensor sample_w, sample_b;  /* downsampler / upsampler conv, if any */
    int has_sample;
} level;

struct unet_model {
    unet_config cfg;
    const coin_backend *be;
    tensor conv_in_w, conv_in_b, t1_w, t1_b, t2_w, t2_b;
    level down[UNET_MAX_LEVELS], up[UNET_MAX_LEVELS];
    resnet mid_res[2];
    transformer mid_attn;
    tensor norm_out_w, norm_out_b, conv_out_w, conv_out_b;
    /* Every loaded tensor, for unet_free. */
    tensor **owned;
    size_t n_owned, cap_owned;
};

/* The shape and backend checks of unet_forward; fn names the caller in
 * the error. */
int unet_check_inputs(const unet_model *m, const tensor *x, const tensor *ctx,
                      const char *fn, coin_error *err);

/* tact[B, temb_dim] (allocated here) = SiLU(time embedding of timesteps[B],
 * host floats): what every ResNet's time_emb_proj reads. */
int unet_time_embedding(const unet_model *m, const float *timesteps, int64_t B, tensor *tact,
                        coin_error *err);

#endif
