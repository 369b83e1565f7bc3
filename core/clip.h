/*
 * clip.h - the CLIP text encoder that conditions Stable Diffusion.
 *
 * Token ids in, hidden states out: token plus position embedding, pre-norm
 * transformer blocks (LayerNorm, causal multi-head self-attention with
 * biases, residual; LayerNorm, MLP with quick-GELU (SD1) or exact GELU (SD2),
 * residual), then the final LayerNorm.  SD1 runs every block; SD2 runs all
 * but the last OpenCLIP block (the "penultimate layer") and still applies the
 * final LayerNorm.  Sizes come from the weights (checkpoint.h's clip_config),
 * so the tiny test models and the full-size ones run the same code.
 *
 * The weights live on a backend (tensor.h); this file never touches their
 * memory directly.
 */
#ifndef COIN_CLIP_H
#define COIN_CLIP_H

#include <stdint.h>

#include "checkpoint.h"
#include "tensor.h"

typedef struct clip_layer {
    tensor ln1_w, ln1_b;            /* [D] */
    tensor q_w, k_w, v_w, o_w;      /* [D, D] */
    tensor q_b, k_b, v_b, o_b;      /* [D] */
    tensor ln2_w, ln2_b;            /* [D] */
    tensor fc1_w;                   /* [I, D] */
    tensor fc1_b;                   /* [I] */
    tensor fc2_w;                   /* [D, I] */
    tensor fc2_b;                   /* [D] */
} clip_layer;

typedef struct clip_model {
    clip_config cfg;
    const coin_backend *be;
    tensor tok_emb;                 /* [V, D] */
    tensor pos_emb;                 /* [P, D] */
    clip_layer *layers;             /* cfg.layers of them */
    tensor lnf_w, lnf_b;            /* [D] */
} clip_model;

/* Loads the text encoder of ck onto be, checking every tensor's shape
 * against the configuration; errors name the missing or misshapen tensor. */
int clip_load(clip_model **out, const checkpoint *ck, const coin_backend *be,
              coin_error *err);
void clip_free(clip_model *m);

/* Appends n token-embedding rows (host rows[n, D]) to the vocabulary, for
 * trigger words; they get ids cfg.vocab .. cfg.vocab + n - 1, which must be
 * the ids the tokenizer gave them (first_id). */
int clip_add_tokens(clip_model *m, const float *rows, int n, int first_id,
                    coin_error *err);

/* Encodes B sequences of cfg.positions token ids (host memory, ids[B*P])
 * into out, which it allocates as [B, P, D] on the model's backend. */
int clip_forward(const clip_model *m, const int32_t *ids, int B, tensor *out,
                 coin_error *err);

/* The activations one forward pass keeps for the backward pass. */
typedef struct clip_trace clip_trace;

/* clip_forward that also keeps, in *trace, what clip_backward needs. */
int clip_forward_trace(const clip_model *m, const int32_t *ids, int B, tensor *out,
                       clip_trace **trace, coin_error *err);
void clip_trace_free(clip_trace *t);

/* Textual inversion's backward pass: from dout[B, P, D] (the gradient of
 * the loss with respect to clip_forward's output) to the gradient of the
 * token-embedding rows first_id .. first_id + R - 1, added into
 * drows[R, D].  No weight gradient is computed. */
int clip_backward(const clip_model *m, const clip_trace *t, const tensor *dout,
                  int first_id, tensor *drows, coin_error *err);

/* Reads or writes n token-embedding rows from first_id (host rows[n, D]):
 * the trainer's trigger vectors. */
int clip_set_token_rows(clip_model *m, int first_id, const float *rows, int n,
                        coin_error *err);
int clip_get_token_rows(const clip_model *m, int first_id, float *rows, int n,
                        coin_error *err);

#endif
