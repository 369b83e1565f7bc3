/*
 * ldm_names.c - LDM to diffusers names for the UNet and VAE (ldm_names.h).
 */
#include "ldm_names.h"

#include <stdio.h>
#include <string.h>

/* Replaces the first matching prefix of rest from pairs, writing
 * head + replacement + remainder into out. */
static int emit(char *out, size_t len, const char *head, const char *rest,
                const char *const (*pairs)[2], size_t n_pairs)
{
    for (size_t i = 0; i < n_pairs; i++) {
        size_t l = strlen(pairs[i][0]);
        if (!strncmp(rest, pairs[i][0], l)) {
            int w = snprintf(out, len, "%s%s%s", head, pairs[i][1], rest + l);
            return w < 0 || (size_t)w >= len ? -1 : 1;
        }
    }
    int w = snprintf(out, len, "%s%s", head, rest);
    return w < 0 || (size_t)w >= len ? -1 : 1;
}

static const char *const unet_resnet[][2] = {
    {"in_layers.0.", "norm1."}, {"in_layers.2.", "conv1."},
    {"emb_layers.1.", "time_emb_proj."}, {"out_layers.0.", "norm2."},
    {"out_layers.3.", "conv2."}, {"skip_connection.", "conv_shortcut."},
};
#define N_RESNET (sizeof unet_resnet / sizeof unet_resnet[0])

static int unknown(const char *name, char *out, size_t len)
{
    int w = snprintf(out, len, "%s", name);
    return w < 0 || (size_t)w >= len ? -1 : 0;
}

int ldm_unet_name(const char *name, int layers, char *out, size_t len)
{
    static const char *const fixed[][2] = {
        {"time_embed.0.", "time_embedding.linear_1."},
        {"time_embed.2.", "time_embedding.linear_2."},
        {"input_blocks.0.0.", "conv_in."},
        {"out.0.", "conv_norm_out."},
        {"out.2.", "conv_out."},
        {"label_emb.0.0.", "add_embedding.linear_1."},
        {"label_emb.0.2.", "add_embedding.linear_2."},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (!strncmp(name, fixed[i][0], strlen(fixed[i][0])))
            return emit(out, len, "", name, &fixed[i], 1);

    char head[128];
    int k, part, used = 0;
    if (sscanf(name, "input_blocks.%d.%d.%n", &k, &part, &used) == 2 && used && k >= 1) {
        int block = (k - 1) / (layers + 1), layer = (k - 1) % (layers + 1);
        const char *rest = name + used;
        if (part == 0 && layer == layers && !strncmp(rest, "op.", 3)) {
            snprintf(head, sizeof head, "down_blocks.%d.downsamplers.0.conv.", block);
            return emit(out, len, head, rest + 3, NULL, 0);
        }
        if (part == 0) {
            snprintf(head, sizeof head, "down_blocks.%d.resnets.%d.", block, layer);
            return emit(out, len, head, rest, unet_resnet, N_RESNET);
        }
        if (part == 1) {
            snprintf(head, sizeof head, "down_blocks.%d.attentions.%d.", block, layer);
            return emit(out, len, head, rest, NULL, 0);
        }
    }
    if (sscanf(name, "middle_block.%d.%n", &part, &used) == 1 && used) {
        const char *rest = name + used;
        if (part == 0 || part == 2) {
            snprintf(head, sizeof head, "mid_block.resnets.%d.", part / 2);
            return emit(out, len, head, rest, unet_resnet, N_RESNET);
        }
        if (part == 1)
            return emit(out, len, "mid_block.attentions.0.", rest, NULL, 0);
    }
    if (sscanf(name, "output_blocks.%d.%d.%n", &k, &part, &used) == 2 && used) {
        int block = k / (layers + 1), layer = k % (layers + 1);
        const char *rest = name + used;
        if (part == 0) {
            snprintf(head, sizeof head, "up_blocks.%d.resnets.%d.", block, layer);
            return emit(out, len, head, rest, unet_resnet, N_RESNET);
        }
        /* The upsampler is part 1 where the level has no attention, else 2. */
        if ((part == 1 || part == 2) && !strncmp(rest, "conv.", 5)) {
            snprintf(head, sizeof head, "up_blocks.%d.upsamplers.0.conv.", block);
            return emit(out, len, head, rest + 5, NULL, 0);
        }
        if (part == 1) {
            snprintf(head, sizeof head, "up_blocks.%d.attentions.%d.", block, layer);
            return emit(out, len, head, rest, NULL, 0);
        }
    }
    return unknown(name, out, len);
}

int ldm_vae_name(const char *name, int levels, char *out, size_t len)
{
    static const char *const resnet[][2] = {{"nin_shortcut.", "conv_shortcut."}};
    static const char *const attn[][2] = {
        {"norm.", "group_norm."}, {"q.", "to_q."}, {"k.", "to_k."},
        {"v.", "to_v."}, {"proj_out.", "to_out.0."},
    };
    static const char *const fixed[][2] = {
        {"encoder.norm_out.", "encoder.conv_norm_out."},
        {"decoder.norm_out.", "decoder.conv_norm_out."},
        /* Named alike in both layouts. */
        {"encoder.conv_in.", "encoder.conv_in."},
        {"encoder.conv_out.", "encoder.conv_out."},
        {"decoder.conv_in.", "decoder.conv_in."},
        {"decoder.conv_out.", "decoder.conv_out."},
        {"quant_conv.", "quant_conv."},
        {"post_quant_conv.", "post_quant_conv."},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (!strncmp(name, fixed[i][0], strlen(fixed[i][0])))
            return emit(out, len, "", name, &fixed[i], 1);

    char head[128], coder[16];
    int level, j, used = 0;
    if (sscanf(name, "encoder.down.%d.block.%d.%n", &level, &j, &used) == 2 && used) {
        snprintf(head, sizeof head, "encoder.down_blocks.%d.resnets.%d.", level, j);
        return emit(out, len, head, name + used, resnet, 1);
    }
    if (sscanf(name, "encoder.down.%d.downsample.conv.%n", &level, &used) == 1 && used) {
        snprintf(head, sizeof head, "encoder.down_blocks.%d.downsamplers.0.conv.", level);
        return emit(out, len, head, name + used, NULL, 0);
    }
    /* The LDM decoder numbers its levels from the bottom up. */
    if (sscanf(name, "decoder.up.%d.block.%d.%n", &level, &j, &used) == 2 && used) {
        snprintf(head, sizeof head, "decoder.up_blocks.%d.resnets.%d.", levels - 1 - level, j);
        return emit(out, len, head, name + used, resnet, 1);
    }
    if (sscanf(name, "decoder.up.%d.upsample.conv.%n", &level, &used) == 1 && used) {
        snprintf(head, sizeof head, "decoder.up_blocks.%d.upsamplers.0.conv.",
                 levels - 1 - level);
        return emit(out, len, head, name + used, NULL, 0);
    }
    if (sscanf(name, "%7[a-z].mid.block_%d.%n", coder, &j, &used) == 2 && used &&
        (!strcmp(coder, "encoder") || !strcmp(coder, "decoder"))) {
        snprintf(head, sizeof head, "%s.mid_block.resnets.%d.", coder, j - 1);
        return emit(out, len, head, name + used, resnet, 1);
    }
    if (sscanf(name, "%7[a-z].mid.attn_1.%n", coder, &used) == 1 && used &&
        (!strcmp(coder, "encoder") || !strcmp(coder, "decoder"))) {
        snprintf(head, sizeof head, "%s.mid_block.attentions.0.", coder);
        return emit(out, len, head, name + used, attn, sizeof attn / sizeof attn[0]);
    }
    return unknown(name, out, len);
}

int vae_legacy_name(const char *name, char *out, size_t len)
{
    static const char *const legacy[][2] = {
        {"query.", "to_q."}, {"key.", "to_k."}, {"value.", "to_v."},
        {"proj_attn.", "to_out.0."},
    };
    const char *at = strstr(name, ".attentions.0.");
    if (!at)
        return unknown(name, out, len);
    at += strlen(".attentions.0.");
    for (size_t i = 0; i < sizeof legacy / sizeof legacy[0]; i++)
        if (!strncmp(at, legacy[i][0], strlen(legacy[i][0]))) {
            char head[256];
            size_t h = (size_t)(at - name);
            if (h >= sizeof head)
                return -1;
            memcpy(head, name, h);
            head[h] = '\0';
            return emit(out, len, head, at, &legacy[i], 1);
        }
    return unknown(name, out, len);
}
