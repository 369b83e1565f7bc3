/*
 * test_ldm_names.c - LDM to diffusers names, against the correspondence
 * table of REFERENCE.md section 4 (SD's 4 levels, 2 layers per block) and
 * the general index rule for other sizes.
 */
#include "core/ldm_names.h"
#include "test.h"

static void unet(const char *ldm, int layers, const char *want)
{
    char out[256];
    int rc = ldm_unet_name(ldm, layers, out, sizeof out);
    CHECK_MSG(rc == 1 && !strcmp(out, want), "%s -> %s (rc %d), want %s", ldm, out, rc, want);
}

static void vae(const char *ldm, const char *want)
{
    char out[256];
    int rc = ldm_vae_name(ldm, 4, out, sizeof out);
    CHECK_MSG(rc == 1 && !strcmp(out, want), "%s -> %s (rc %d), want %s", ldm, out, rc, want);
}

TEST(ldm_names_unet_sd)
{
    unet("input_blocks.0.0.weight", 2, "conv_in.weight");
    unet("time_embed.0.weight", 2, "time_embedding.linear_1.weight");
    unet("time_embed.2.bias", 2, "time_embedding.linear_2.bias");
    unet("input_blocks.1.0.in_layers.0.weight", 2, "down_blocks.0.resnets.0.norm1.weight");
    unet("input_blocks.2.0.in_layers.2.bias", 2, "down_blocks.0.resnets.1.conv1.bias");
    unet("input_blocks.2.0.emb_layers.1.weight", 2, "down_blocks.0.resnets.1.time_emb_proj.weight");
    unet("input_blocks.4.0.out_layers.0.weight", 2, "down_blocks.1.resnets.0.norm2.weight");
    unet("input_blocks.4.0.out_layers.3.weight", 2, "down_blocks.1.resnets.0.conv2.weight");
    unet("input_blocks.4.0.skip_connection.weight", 2, "down_blocks.1.resnets.0.conv_shortcut.weight");
    unet("input_blocks.3.0.op.weight", 2, "down_blocks.0.downsamplers.0.conv.weight");
    unet("input_blocks.9.0.op.bias", 2, "down_blocks.2.downsamplers.0.conv.bias");
    unet("input_blocks.1.1.proj_in.weight", 2, "down_blocks.0.attentions.0.proj_in.weight");
    unet("input_blocks.8.1.transformer_blocks.0.attn2.to_k.weight", 2,
         "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight");
    unet("input_blocks.11.0.in_layers.0.bias", 2, "down_blocks.3.resnets.1.norm1.bias");
    unet("middle_block.0.in_layers.0.weight", 2, "mid_block.resnets.0.norm1.weight");
    unet("middle_block.1.transformer_blocks.0.ff.net.0.proj.weight", 2,
         "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight");
    unet("middle_block.2.out_layers.3.bias", 2, "mid_block.resnets.1.conv2.bias");
    unet("output_blocks.0.0.in_layers.0.weight", 2, "up_blocks.0.resnets.0.norm1.weight");
    unet("output_blocks.2.1.conv.weight", 2, "up_blocks.0.upsamplers.0.conv.weight");
    unet("output_blocks.3.1.norm.weight", 2, "up_blocks.1.attentions.0.norm.weight");
    unet("output_blocks.5.2.conv.bias", 2, "up_blocks.1.upsamplers.0.conv.bias");
    unet("output_blocks.8.2.conv.weight", 2, "up_blocks.2.upsamplers.0.conv.weight");
    unet("output_blocks.11.0.skip_connection.weight", 2, "up_blocks.3.resnets.2.conv_shortcut.weight");
    unet("output_blocks.11.1.proj_out.weight", 2, "up_blocks.3.attentions.2.proj_out.weight");
    unet("out.0.weight", 2, "conv_norm_out.weight");
    unet("out.2.bias", 2, "conv_out.bias");
    /* One layer per block: block_id = (k-1)//2 going down, k//2 going up. */
    unet("input_blocks.2.0.op.weight", 1, "down_blocks.0.downsamplers.0.conv.weight");
    unet("input_blocks.3.1.norm.weight", 1, "down_blocks.1.attentions.0.norm.weight");
    unet("output_blocks.3.0.in_layers.2.weight", 1, "up_blocks.1.resnets.1.conv1.weight");
    char out[64];
    CHECK_EQ_INT(ldm_unet_name("something.else", 2, out, sizeof out), 0);
    CHECK_EQ_INT(ldm_unet_name("input_blocks.1.0.in_layers.0.weight", 2, out, 10), -1);
}

TEST(ldm_names_vae_sd)
{
    vae("encoder.conv_in.weight", "encoder.conv_in.weight");
    vae("encoder.down.0.block.1.conv2.weight", "encoder.down_blocks.0.resnets.1.conv2.weight");
    vae("encoder.down.1.block.0.nin_shortcut.weight", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight");
    vae("encoder.down.2.downsample.conv.weight", "encoder.down_blocks.2.downsamplers.0.conv.weight");
    vae("encoder.mid.block_1.norm1.weight", "encoder.mid_block.resnets.0.norm1.weight");
    vae("decoder.mid.block_2.conv2.bias", "decoder.mid_block.resnets.1.conv2.bias");
    vae("encoder.mid.attn_1.q.weight", "encoder.mid_block.attentions.0.to_q.weight");
    vae("decoder.mid.attn_1.norm.bias", "decoder.mid_block.attentions.0.group_norm.bias");
    vae("decoder.mid.attn_1.proj_out.weight", "decoder.mid_block.attentions.0.to_out.0.weight");
    vae("encoder.norm_out.weight", "encoder.conv_norm_out.weight");
    /* The decoder's levels are reversed. */
    vae("decoder.up.3.block.0.conv1.weight", "decoder.up_blocks.0.resnets.0.conv1.weight");
    vae("decoder.up.0.block.2.norm2.bias", "decoder.up_blocks.3.resnets.2.norm2.bias");
    vae("decoder.up.3.upsample.conv.weight", "decoder.up_blocks.0.upsamplers.0.conv.weight");
    vae("decoder.up.1.upsample.conv.bias", "decoder.up_blocks.2.upsamplers.0.conv.bias");
    vae("post_quant_conv.weight", "post_quant_conv.weight");
    char out[128];
    CHECK_EQ_INT(vae_legacy_name("decoder.mid_block.attentions.0.query.weight", out, sizeof out), 1);
    CHECK(!strcmp(out, "decoder.mid_block.attentions.0.to_q.weight"));
    CHECK_EQ_INT(vae_legacy_name("encoder.mid_block.attentions.0.proj_attn.bias", out, sizeof out), 1);
    CHECK(!strcmp(out, "encoder.mid_block.attentions.0.to_out.0.bias"));
    CHECK_EQ_INT(vae_legacy_name("encoder.mid_block.attentions.0.to_k.weight", out, sizeof out), 0);
}
