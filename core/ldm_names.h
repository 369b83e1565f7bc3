/*
 * ldm_names.h - CompVis/LDM single-file names of the UNet and VAE, turned
 * into the diffusers names the rest of coin uses (REFERENCE.md section 4).
 *
 * The mapping is by rule, not by table, so models with any number of levels
 * and layers per block (coin's tiny test models as well as SD 1.x and 2.x)
 * map the same way diffusers' converter maps them.
 */
#ifndef COIN_LDM_NAMES_H
#define COIN_LDM_NAMES_H

#include <stddef.h>

/* Maps a UNet name without "model.diffusion_model." (e.g.
 * "input_blocks.1.0.in_layers.0.weight") to its diffusers name (e.g.
 * "down_blocks.0.resnets.0.norm1.weight").  layers is the number of ResNet
 * layers per down block.  Returns 1 when mapped, 0 for an unknown name
 * (out is then a copy of name), -1 when out is too small. */
int ldm_unet_name(const char *name, int layers, char *out, size_t len);

/* Maps a VAE name without "first_stage_model." to its diffusers name;
 * levels is the number of decoder levels (the LDM decoder counts them in
 * the opposite order).  Returns as ldm_unet_name. */
int ldm_vae_name(const char *name, int levels, char *out, size_t len);

/* Renames the attention of VAE files saved by old diffusers versions
 * (query, key, value, proj_attn) to the current names (to_q, to_k, to_v,
 * to_out.0).  Returns 1 when renamed, 0 when the name is current. */
int vae_legacy_name(const char *name, char *out, size_t len);

#endif
