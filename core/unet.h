/*
 * unet.h - the Stable Diffusion UNet (UNet2DConditionModel).
 *
 * Predicts the noise (or v) in a latent at a timestep, conditioned on the
 * text encoder's hidden states.  SD1: 8 heads per attention, 1x1-conv
 * proj_in/proj_out; SD2: 64-wide heads, linear projections, attention in
 * fp32.  Everything else - levels, channels, layers per block, which levels
 * have attention, head counts - is read from the weights and configs, so the
 * tiny test models and the full-size ones run the same code.  Weights are
 * canonical (diffusers) names from checkpoint.h.  For training, a traced
 * forward pass and the backward pass to the conditioning (unet_backward.c).
 */
#ifndef COIN_UNET_H
#define COIN_UNET_H

#include "checkpoint.h"
#include "tensor.h"

#define UNET_MAX_LEVELS 8

typedef struct unet_config {
    int in_channels, out_channels;
    int levels;                         /* len(block_out_channels) */
    int channels[UNET_MAX_LEVELS];      /* block_out_channels */
    int layers_per_block;
    int attention[UNET_MAX_LEVELS];     /* 1 where the level has cross-attention */
    int heads[UNET_MAX_LEVELS];         /* attention heads per level (mid uses the last) */
    int context_dim;                    /* cross_attention_dim */
    int linear_projection;              /* SD2: proj_in/proj_out are linear */
    int norm_groups;                    /* 32 */
    float norm_eps;                     /* ResNet GroupNorm eps (1e-5) */
    int time_dim;                       /* sinusoidal features = channels[0] */
    int temb_dim;                       /* time embedding width = 4 channels[0] */
    int up_attention[UNET_MAX_LEVELS];  /* per up block (0 = deepest); mirrors attention[] in SD */
    int transformer_depth;              /* BasicTransformerBlocks per spatial transformer (1 in SD) */
    char heads_from[96];                /* where the head counts came from, for info */
    char groups_from[96];               /* where norm_groups came from */
} unet_config;

typedef struct unet_model unet_model;

/* Loads the UNet of ck onto be, every weight as fp32 with its shape checked.
 * What the weights cannot say comes from unet/config.json in a diffusers
 * folder (norm_num_groups, norm_eps, and the head counts diffusers reads
 * from num_attention_heads or, for SD, attention_head_dim), else from the
 * file metadata "unet.norm_num_groups" and "unet.num_attention_heads" (a
 * number or a JSON list per level) of coin's test models, else from the SD
 * version: 8 heads (SD1) or 64-wide heads (SD2), 32 groups.  Options the
 * config sets that coin does not implement are refused.  Errors name the
 * missing or misshapen tensor. */
int unet_load(unet_model **out, const checkpoint *ck, const coin_backend *be,
              coin_error *err);
void unet_free(unet_model *m);
const unet_config *unet_get_config(const unet_model *m);

/* out[B, out_ch, H, W] = unet(x[B, in_ch, H, W], timesteps[B] (host, float:
 * the samplers pass fractional ones), ctx[B, T, context_dim]).  out is
 * allocated here on the model's backend.  H and W must be divisible by
 * 2^(levels-1). */
int unet_forward(const unet_model *m, const tensor *x, const float *timesteps,
                 const tensor *ctx, tensor *out, coin_error *err);

/*
 * Training: the gradient of a loss with respect to the conditioning, the
 * only one textual inversion needs (no weight gradients; the gradient with
 * respect to x flows through the network but is not returned).
 */
typedef struct unet_trace unet_trace;

/* unet_forward (the same output, bit for bit) that also keeps in *trace
 * what unet_backward_ctx needs.  checkpointing = 0 keeps every block's
 * activations; 1 keeps only the block inputs (ResNet, transformer and
 * resampler inputs, which include the skips) and the time embedding, and
 * recomputes each block's internals during the backward pass: less memory
 * for one more forward pass, and the same gradient bit for bit.  The trace
 * keeps its own copy of ctx; free it with unet_trace_free. */
int unet_forward_trace(const unet_model *m, const tensor *x, const float *timesteps,
                       const tensor *ctx, tensor *out, int checkpointing,
                       unet_trace **trace, coin_error *err);

/* dctx[B, T, context_dim] (allocated here) = d loss / d ctx, given
 * dout[B, out_ch, H, W] = d loss / d out of the traced forward pass. */
int unet_backward_ctx(const unet_model *m, const unet_trace *trace, const tensor *dout,
                      tensor *dctx, coin_error *err);
void unet_trace_free(unet_trace *t);

#endif
