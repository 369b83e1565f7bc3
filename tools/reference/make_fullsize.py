#!/usr/bin/env python3
"""Make full-size random-weight SD1.5 / SD2.1 text encoders + reference hidden states (not committed).

Writes into tools/reference/out/ (gitignored):
  sd1_full.safetensors            SD1.5-shaped CLIP text encoder (hidden 768, intermediate 3072,
                                  12 heads, 12 layers, quick_gelu, vocab 49408, 77 positions) in the
                                  single-file LDM layout "cond_stage_model.transformer.text_model.*",
                                  every float tensor F16 (like pruned fp16 checkpoints) plus
                                  ...embeddings.position_ids I64 [1,77].            (~246 MB)
  sd2_full.safetensors            SD2.1-shaped OpenCLIP ViT-H text tower (width 1024, MLP 4096,
                                  16 heads, 24 resblocks of which SD uses 23, gelu) in the OpenCLIP
                                  layout "cond_stage_model.model.*" (token_embedding.weight,
                                  positional_embedding, transformer.resblocks.0..23.*, ln_final,
                                  text_projection [1024,1024], logit_scale []), all F16.   (~709 MB)
  sd1_full_reference.safetensors  input_ids I64 [P,77], hidden_states F32 [P,77,768]
  sd2_full_reference.safetensors  input_ids I64 [P,77], hidden_states F32 [P,77,1024]
      (metadata prompts / pad_id / generator, the same format as tests/golden/te_sdN/reference.safetensors)
  sd1_full_config/text_encoder/config.json, sd2_full_config/text_encoder/config.json
                                  the transformers CLIPTextConfig of the model SD runs (SD2: 23 layers),
                                  used to load the single files with diffusers' converter.

Each single file is verified by loading it with diffusers 0.31.0's
create_diffusers_clip_model_from_ldm (convert_ldm_clip_checkpoint / convert_open_clip_checkpoint)
and comparing the resulting model's hidden states with the reference (must be equal).

Weights are seeded random values (same scheme as make_text_encoders.randomize), rounded to f16;
the references are computed in fp32 from exactly those f16-rounded values
(transformers CLIPTextModel, eager attention, no attention mask). SD1 pads with 49407, SD2 with 0;
SD2's output is block 22 of 0..23 followed by the final LayerNorm (the penultimate rule).
Runs with one torch thread so the output is bit-reproducible; needs ~4 GB RAM and ~1-2 min.

Exact command (from the repo root):
    tools/reference/.venv/bin/python tools/reference/make_fullsize.py [--which sd1,sd2] [--out tools/reference/out]
"""
import argparse
import gc
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_vocab  # noqa: E402
from st_write import save  # noqa: E402
from make_text_encoders import randomize, tokenize, write_reference  # noqa: E402

GENERATOR = "tools/reference/.venv/bin/python tools/reference/make_fullsize.py"
PROMPTS = ["a photo of a cat", "Brad Pitt giving a thumbs up, 4k, highly detailed"]
FULL = dict(vocab_size=49408, max_position_embeddings=77, layer_norm_eps=1e-5)
SD1 = dict(FULL, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
           hidden_act="quick_gelu", projection_dim=768)
SD2 = dict(FULL, hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
           hidden_act="gelu", projection_dim=1024)
SEED_SD1, SEED_SD2 = 15, 21


def build(cfg, seed, with_projection):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    config = CLIPTextConfig(**cfg, attn_implementation="eager")
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    m = cls(config).eval()
    randomize(m, seed)
    with torch.no_grad():  # the model computes with exactly the stored f16 values
        for p in m.parameters():
            p.copy_(p.to(torch.float16).to(torch.float32))
    return m


def make_sd1(out, vocab, gen):
    t0 = time.time()
    m = build(SD1, SEED_SD1, False)
    P = "cond_stage_model.transformer."
    single = {P + k: v.to(torch.float16) for k, v in m.state_dict().items()}
    single[P + "text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64).unsqueeze(0)
    path = os.path.join(out, "sd1_full.safetensors")
    save(single, path, metadata={"format": "pt", "generator": gen})
    del single
    ids = tokenize(PROMPTS, 49407, vocab)
    with torch.no_grad():
        hs = m(input_ids=ids).last_hidden_state.float()
    write_reference(os.path.join(out, "sd1_full_reference.safetensors"), ids, hs, PROMPTS, 49407, gen)
    print(f"make_fullsize: {path} ({os.path.getsize(path)} bytes), {time.time() - t0:.1f} s")
    return m, ids, hs


def make_sd2(out, vocab, gen):
    t0 = time.time()
    m = build(SD2, SEED_SD2, True)  # 24 blocks + text_projection
    sd = m.state_dict()
    P = "cond_stage_model.model."
    f16 = lambda t: t.to(torch.float16)  # noqa: E731
    single = {
        P + "token_embedding.weight": f16(sd["text_model.embeddings.token_embedding.weight"]),
        P + "positional_embedding": f16(sd["text_model.embeddings.position_embedding.weight"]),
        P + "ln_final.weight": f16(sd["text_model.final_layer_norm.weight"]),
        P + "ln_final.bias": f16(sd["text_model.final_layer_norm.bias"]),
        P + "text_projection": f16(sd["text_projection.weight"].T.contiguous()),
        P + "logit_scale": torch.tensor(math.log(100.0), dtype=torch.float16),
    }
    for i in range(SD2["num_hidden_layers"]):
        s, o = f"text_model.encoder.layers.{i}.", f"{P}transformer.resblocks.{i}."
        single[o + "ln_1.weight"] = f16(sd[s + "layer_norm1.weight"])
        single[o + "ln_1.bias"] = f16(sd[s + "layer_norm1.bias"])
        single[o + "attn.in_proj_weight"] = f16(torch.cat([sd[s + f"self_attn.{x}_proj.weight"] for x in "qkv"]))
        single[o + "attn.in_proj_bias"] = f16(torch.cat([sd[s + f"self_attn.{x}_proj.bias"] for x in "qkv"]))
        single[o + "attn.out_proj.weight"] = f16(sd[s + "self_attn.out_proj.weight"])
        single[o + "attn.out_proj.bias"] = f16(sd[s + "self_attn.out_proj.bias"])
        single[o + "ln_2.weight"] = f16(sd[s + "layer_norm2.weight"])
        single[o + "ln_2.bias"] = f16(sd[s + "layer_norm2.bias"])
        single[o + "mlp.c_fc.weight"] = f16(sd[s + "mlp.fc1.weight"])
        single[o + "mlp.c_fc.bias"] = f16(sd[s + "mlp.fc1.bias"])
        single[o + "mlp.c_proj.weight"] = f16(sd[s + "mlp.fc2.weight"])
        single[o + "mlp.c_proj.bias"] = f16(sd[s + "mlp.fc2.bias"])
    path = os.path.join(out, "sd2_full.safetensors")
    save(single, path, metadata={"format": "pt", "generator": gen})
    del single
    gc.collect()
    ids = tokenize(PROMPTS, 0, vocab)
    # SD2: drop the last block (= diffusers' 23-layer CLIPTextModel), then final LayerNorm
    tm = m.text_model
    tm.encoder.layers = tm.encoder.layers[:SD2["num_hidden_layers"] - 1]
    with torch.no_grad():
        hs = tm(input_ids=ids).last_hidden_state.float()
    write_reference(os.path.join(out, "sd2_full_reference.safetensors"), ids, hs, PROMPTS, 0, gen)
    print(f"make_fullsize: {path} ({os.path.getsize(path)} bytes), {time.time() - t0:.1f} s")
    return m, ids, hs


def write_config(out, name, cfg):
    from transformers import CLIPTextConfig
    c = CLIPTextConfig(**cfg)
    c.architectures = ["CLIPTextModel"]
    d = os.path.join(out, name)
    c.save_pretrained(os.path.join(d, "text_encoder"))
    return d


def verify(out, w, ids, hs):
    """Load the single file through diffusers' own converter and compare outputs."""
    from safetensors.torch import load_file
    from transformers import CLIPTextModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    cfg = dict(SD1) if w == "sd1" else dict(SD2, num_hidden_layers=SD2["num_hidden_layers"] - 1)
    d = write_config(out, f"{w}_full_config", cfg)
    ckpt = load_file(os.path.join(out, f"{w}_full.safetensors"))
    m = create_diffusers_clip_model_from_ldm(CLIPTextModel, ckpt, subfolder="text_encoder", config=d,
                                             local_files_only=True).eval()
    del ckpt
    with torch.no_grad():
        h = m(input_ids=ids).last_hidden_state.float()
    err = (h - hs).abs().max().item()
    print(f"make_fullsize: {w} single file via diffusers converter: max abs diff {err:.3g}")
    assert err < 1e-4, err


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", default=clip_vocab.default_vocab_path())
    ap.add_argument("--out", default=os.path.join(clip_vocab.HERE, "out"))
    ap.add_argument("--which", default="sd1,sd2")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = bit-reproducible)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import transformers
    transformers.logging.set_verbosity_error()
    import diffusers
    diffusers.utils.logging.set_verbosity_error()
    os.makedirs(a.out, exist_ok=True)
    clip_vocab.write_tokenizer_files(a.vocab, clip_vocab.default_out_dir())
    gen = GENERATOR + ("" if a.which == "sd1,sd2" else f" --which {a.which}")
    for w in a.which.split(","):
        m, ids, hs = {"sd1": make_sd1, "sd2": make_sd2}[w](a.out, a.vocab, gen)
        print(f"make_fullsize: {w} hidden_states {tuple(hs.shape)} abs max {hs.abs().max():.4f}")
        del m
        gc.collect()
        verify(a.out, w, ids, hs)
        gc.collect()


if __name__ == "__main__":
    main()
