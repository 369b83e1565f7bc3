/*
 * checkpoint.h - one view of a Stable Diffusion model, whatever files it is in.
 *
 * Users have models as single-file checkpoints (the CompVis/LDM layout, with
 * SD1's Hugging Face CLIP under cond_stage_model.transformer. or SD2's
 * OpenCLIP under cond_stage_model.model.) and as diffusers folders
 * (text_encoder/, tokenizer/, unet/, vae/, scheduler/ with their configs).
 * checkpoint_open maps either onto one canonical naming, the diffusers names
 * of each component, so model code asks for "text_model.encoder.layers.0.
 * self_attn.q_proj.weight" and never cares where it came from.  Tensors are
 * not read here: an entry points into a memory-mapped safetensors file, with
 * the row slice to take when the source is fused (OpenCLIP's in_proj).
 *
 * It also works out what the model is: SD1 or SD2 (from names and shapes,
 * overridable), epsilon or v prediction where the files say, and the text
 * encoder's hyperparameters.  Anything odd is recorded as a problem for
 * `coin info` to show rather than silently ignored.  Pickle checkpoints
 * (.ckpt, .pt, .bin) are refused with the command that converts them.
 *
 * The text encoder is mapped tensor by tensor.  UNet and VAE tensors are
 * grouped and counted under their source names; their mapping comes with
 * the UNet and VAE.
 */
#ifndef COIN_CHECKPOINT_H
#define COIN_CHECKPOINT_H

#include <stdint.h>

#include "error.h"
#include "safetensors.h"

typedef enum ckpt_layout { CKPT_SINGLE_FILE, CKPT_DIFFUSERS } ckpt_layout;
typedef enum sd_version { SD_UNKNOWN = 0, SD_V1 = 1, SD_V2 = 2 } sd_version;
typedef enum sd_prediction { PRED_UNKNOWN, PRED_EPSILON, PRED_V } sd_prediction;
typedef enum ckpt_component {
    COMP_TEXT_ENCODER, COMP_UNET, COMP_VAE, COMP_OTHER, COMP_COUNT
} ckpt_component;

typedef enum clip_act { CLIP_ACT_QUICK_GELU, CLIP_ACT_GELU } clip_act;

/* The text encoder's hyperparameters, read from weights and configs. */
typedef struct clip_config {
    int64_t vocab;          /* rows of the token embedding */
    int64_t width;          /* hidden size D */
    int64_t positions;      /* rows of the position embedding (77) */
    int64_t intermediate;   /* MLP width */
    int heads;
    int layers_in_file;     /* transformer blocks present */
    int layers;             /* blocks run: all for SD1, all but the last for SD2 OpenCLIP */
    clip_act act;
    float eps;              /* LayerNorm epsilon */
    char heads_from[96];    /* where the head count came from, for info */
} clip_config;

typedef struct ckpt_tensor {
    char *name;                 /* canonical name within its component */
    ckpt_component comp;
    const st_file *file;
    const st_tensor *src;
    int64_t row_begin;          /* first row taken from src (fused in_proj) */
    int ndim;
    int64_t shape[ST_MAX_DIMS]; /* the canonical shape (rows sliced) */
    uint64_t nelem;
} ckpt_tensor;

#define CKPT_MAX_FILES 8
#define CKPT_MAX_PROBLEMS 32

typedef struct checkpoint {
    char *path;
    ckpt_layout layout;
    sd_version version;
    char version_from[160];     /* why we think so */
    sd_prediction prediction;
    char prediction_from[160];
    clip_config text;
    int has_text_encoder;
    char *tokenizer_dir;        /* a diffusers tokenizer/ folder, or NULL */
    int n_files;
    st_file *files[CKPT_MAX_FILES];
    size_t n_tensors;
    ckpt_tensor *tensors;       /* sorted by (component, name) */
    int n_problems;
    char *problems[CKPT_MAX_PROBLEMS];
} checkpoint;

/* Opens a single .safetensors file or a diffusers folder.  force, when not
 * SD_UNKNOWN, overrides the detected version (recorded as a problem when it
 * disagrees).  Errors name the file and say how to fix it. */
int checkpoint_open(checkpoint **out, const char *path, sd_version force,
                    coin_error *err);
void checkpoint_close(checkpoint *ck);

/* The tensor of a component under its canonical name, or NULL. */
const ckpt_tensor *checkpoint_find(const checkpoint *ck, ckpt_component comp,
                                   const char *name);

/* Reads t as n floats into dst (n must equal t->nelem), widening F16/BF16. */
int checkpoint_read_f32(const checkpoint *ck, const ckpt_tensor *t, float *dst,
                        uint64_t n, coin_error *err);

/* The file whose hash names the model: a single file itself, or a diffusers
 * folder's UNet weights (what AUTOMATIC1111 would hash). */
const char *checkpoint_main_file(const checkpoint *ck);

/* Parameters (elements) of a component's floating-point tensors. */
uint64_t checkpoint_param_count(const checkpoint *ck, ckpt_component comp);

/* Names for reports: "single-file (LDM)", "SD 1.x", "epsilon", "text encoder". */
const char *ckpt_layout_name(ckpt_layout l);
const char *sd_version_name(sd_version v);
const char *sd_prediction_name(sd_prediction p);
const char *ckpt_component_name(ckpt_component c);

/* Parses "sd1"/"1"/"v1" or "sd2"/"2"/"v2"; SD_UNKNOWN for anything else. */
sd_version sd_version_parse(const char *s);

/* The model's own tokenizer folder (diffusers) when it has one, else the
 * CLIP vocabulary built into coin. */
struct clip_tokenizer;
int checkpoint_load_tokenizer(const checkpoint *ck, struct clip_tokenizer **tok,
                              coin_error *err);

/* The tokenizer padding id the model was trained with: 49407 SD1, 0 SD2. */
int checkpoint_pad_id(const checkpoint *ck);

#endif
