#!/usr/bin/env python3
"""Make the tiny random-weight CLIP text-encoder goldens tests/golden/te_sd1/ and tests/golden/te_sd2/.

Both models: transformers CLIPTextModel, vocab_size 49408 (real CLIP token ids work),
max_position_embeddings 77, hidden_size 16, intermediate_size 37, layer_norm_eps 1e-5,
projection_dim 8. Weights are drawn with torch.manual_seed (every tensor, including
LayerNorm weights/biases and linear biases, is random and non-trivial; see randomize()).

SD1-like (te_sd1/): 2 heads, 3 layers, quick_gelu.
  sd1_tiny.safetensors   single-file LDM layout: "cond_stage_model.transformer." + the
                         transformers key, plus ...text_model.embeddings.position_ids (I64 [1,77]);
                         token embedding F16, everything else F32.
  diffusers/             model_index.json + text_encoder/{config.json, model.safetensors}
                         (token embedding F16, rest F32; no position_ids; no tokenizer/ folder).
SD2-like (te_sd2/): 4 heads, gelu (erf). The OpenCLIP model has 4 blocks; SD2 uses the
  penultimate one, so the diffusers CLIPTextModel has 3 layers (blocks 0..2) + final LayerNorm.
  sd2_tiny.safetensors   single-file OpenCLIP layout, prefix "cond_stage_model.model.":
                         token_embedding.weight, positional_embedding (both BF16),
                         transformer.resblocks.{0..3}.{ln_1,attn.in_proj_weight,attn.in_proj_bias,
                         attn.out_proj,ln_2,mlp.c_fc,mlp.c_proj}, ln_final, text_projection
                         ([16,8] = CLIPTextModelWithProjection.text_projection.weight transposed;
                         unused by SD), logit_scale (F32 scalar, shape []); all F32 except the two
                         embeddings. Resblock 3 is random and must be ignored.
  diffusers/             as for SD1 but 3 layers; token embedding BF16 (its values are
                         bf16-rounded, so this is exact), everything else F32 (the position
                         embedding holds the same bf16-representable values as the single file,
                         so both layouts describe one model).
Both single files carry __metadata__ "text_encoder.num_attention_heads" ("2" / "4") and
"text_encoder.hidden_act" ("quick_gelu" / "gelu"): the head count cannot be inferred from tensor
shapes for these tiny models (real checkpoints lack these keys; there head_dim is 64).

Reference outputs te_sdN/reference.safetensors:
  input_ids     I64 [4,77]   (real CLIP tokenizer from clip_vocab.py; SD1 pads with 49407, SD2 with 0)
  hidden_states F32 [4,77,16] = CLIPTextModel(input_ids).last_hidden_state, fp32, no attention mask
  __metadata__  {"prompts": JSON list, "pad_id": "49407"|"0", "generator": command}

Each single file is verified by loading it back through diffusers 0.31.0's own converter
(diffusers.loaders.single_file_utils.create_diffusers_clip_model_from_ldm, which calls
convert_ldm_clip_checkpoint / convert_open_clip_checkpoint) into a fresh CLIPTextModel and
asserting its state dict and outputs equal the reference model's. The diffusers folders are
verified with CLIPTextModel.from_pretrained.

Exact command (from the repo root; deterministic, CPU, a few seconds):
    tools/reference/.venv/bin/python tools/reference/make_text_encoders.py [--vocab PATH] [--out tests/golden]
"""
import argparse
import json
import math
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_vocab  # noqa: E402
from st_write import save as save_file  # noqa: E402

GENERATOR = "tools/reference/.venv/bin/python tools/reference/make_text_encoders.py"
CTX = 77
PROMPTS = [
    "a photo of a cat",
    "Brad Pitt giving a thumbs up, 4k, highly detailed",
    "",
    "masterpiece, best quality, ultra detailed, 8k uhd, dslr, soft lighting, high quality, film grain, "
    "Fujifilm XT3, portrait of a young woman standing in a sunlit meadow, wildflowers, golden hour, "
    "wind in her hair, freckles, green eyes, looking at the camera, shallow depth of field, bokeh, "
    "cinematic composition, rule of thirds, volumetric light, lens flare, intricate details, "
    "trending on artstation, award winning photograph, sharp focus, 85mm lens, f/1.8, natural skin texture",
]
TINY = dict(vocab_size=49408, max_position_embeddings=77, hidden_size=16, intermediate_size=37,
            layer_norm_eps=1e-5, projection_dim=8)
SD1_CFG = dict(TINY, num_attention_heads=2, num_hidden_layers=3, hidden_act="quick_gelu")
SD2_CFG = dict(TINY, num_attention_heads=4, num_hidden_layers=3, hidden_act="gelu")
SEED_SD1, SEED_SD2 = 1, 2


def tokenize(prompts, pad_id, vocab=None):
    tok = clip_vocab.load_tokenizer(vocab)
    rows = []
    for p in prompts:
        ids = tok(p, padding="max_length", max_length=CTX, truncation=True).input_ids
        n = min(len(tok(p).input_ids), CTX)
        rows.append(ids[:n] + [pad_id] * (CTX - n))
    return torch.tensor(rows, dtype=torch.int64)


def randomize(model, seed):
    """Overwrite every parameter with seeded random values (deterministic, name-sorted order).

    Linear weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2); LayerNorm weight ~ 1 + N(0, 0.2^2),
    bias ~ N(0, 0.1^2); token embedding ~ N(0, 1); position embedding ~ N(0, 0.5^2);
    text_projection ~ N(0, 1/16).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            shape = p.shape
            if name.endswith("token_embedding.weight"):
                v = torch.randn(shape, generator=g)
            elif name.endswith("position_embedding.weight"):
                v = 0.5 * torch.randn(shape, generator=g)
            elif "layer_norm" in name and name.endswith(".weight"):
                v = 1.0 + 0.2 * torch.randn(shape, generator=g)
            elif name.endswith(".bias"):
                v = 0.1 * torch.randn(shape, generator=g)
            elif name.endswith(".weight"):
                v = torch.randn(shape, generator=g) / math.sqrt(shape[1])
            else:
                raise ValueError(name)
            p.copy_(v)


def make_model(cfg, seed, n_layers=None, with_projection=False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    c = dict(cfg)
    if n_layers is not None:
        c["num_hidden_layers"] = n_layers
    config = CLIPTextConfig(**c, attn_implementation="eager")
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    m = cls(config).eval()
    randomize(m, seed)
    return m


def round_to(t, dtype):
    return t.to(dtype).to(torch.float32)


def model_index():
    import diffusers
    return {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"]}


def write_diffusers(model, out_dir, dtypes):
    """model_index.json + text_encoder/{config.json, model.safetensors}; dtypes: key -> torch dtype."""
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    te = os.path.join(out_dir, "text_encoder")
    os.makedirs(te)
    model.save_pretrained(te, safe_serialization=True)  # config.json (+ architectures, torch_dtype)
    os.remove(os.path.join(te, "model.safetensors"))  # rewritten below with the chosen dtypes
    sd = {k: v.detach().to(dtypes.get(k, torch.float32)).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(te, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "model_index.json"), "w") as f:
        json.dump(model_index(), f, indent=2, sort_keys=True)
        f.write("\n")


def forward(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state.float().contiguous()


def write_reference(path, ids, hs, prompts, pad_id, generator):
    save_file({"input_ids": ids.contiguous(), "hidden_states": hs.contiguous()}, path,
              metadata={"prompts": json.dumps(prompts, ensure_ascii=False), "pad_id": str(pad_id),
                        "generator": generator})


def check_state_equal(a, b, what):
    ka, kb = set(a), set(b)
    if ka != kb:
        raise AssertionError(f"{what}: key sets differ: only-a {sorted(ka - kb)[:8]} only-b {sorted(kb - ka)[:8]}")
    for k in sorted(ka):
        if a[k].shape != b[k].shape or not torch.equal(a[k].float(), b[k].float()):
            raise AssertionError(f"{what}: {k} differs")


def load_via_diffusers_single_file(ckpt_path, diffusers_dir):
    """Load a single file with diffusers' own converter into a fresh CLIPTextModel."""
    from transformers import CLIPTextModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    ckpt = load_file(ckpt_path)
    m = create_diffusers_clip_model_from_ldm(CLIPTextModel, ckpt, subfolder="text_encoder",
                                             config=diffusers_dir, local_files_only=True)
    return m.eval()


def dtypes_of(path):
    import struct
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    return {k: v["dtype"] for k, v in h.items() if k != "__metadata__"}


# ---------------------------------------------------------------------------
WORK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def make_sd1(out_root, vocab, generator):
    from transformers import CLIPTextModel
    d = os.path.join(out_root, "te_sd1")
    os.makedirs(d, exist_ok=True)
    # The model files are inputs of make_tiny_pipelines.py, which puts the same
    # text encoder into tests/golden/sdN/; only the reference outputs are golden.
    m = os.path.join(WORK_DIR, "te_sd1")
    os.makedirs(m, exist_ok=True)
    model = make_model(SD1_CFG, SEED_SD1)
    tok_key = "text_model.embeddings.token_embedding.weight"
    with torch.no_grad():
        emb = model.text_model.embeddings.token_embedding.weight
        emb.copy_(round_to(emb, torch.float16))
    sd = model.state_dict()

    # single file (LDM layout)
    single = {"cond_stage_model.transformer." + k: v.detach().clone().contiguous() for k, v in sd.items()}
    single["cond_stage_model.transformer." + tok_key] = sd[tok_key].to(torch.float16).contiguous()
    single["cond_stage_model.transformer.text_model.embeddings.position_ids"] = \
        torch.arange(CTX, dtype=torch.int64).unsqueeze(0).contiguous()
    sf = os.path.join(m, "sd1_tiny.safetensors")
    # A single file cannot say its head count (real ones use width/64, which
    # the tiny model does not): coin reads these keys from its own test files.
    save_file(single, sf, metadata={"format": "pt", "generator": generator,
                                    "text_encoder.num_attention_heads": str(SD1_CFG["num_attention_heads"]),
                                    "text_encoder.hidden_act": SD1_CFG["hidden_act"]})

    # diffusers folder
    dd = os.path.join(m, "diffusers")
    write_diffusers(model, dd, {tok_key: torch.float16})

    # reference
    ids = tokenize(PROMPTS, 49407, vocab)
    hs = forward(model, ids)
    write_reference(os.path.join(d, "reference.safetensors"), ids, hs, PROMPTS, 49407, generator)

    # verification: diffusers folder, single file through diffusers' converter
    m2 = CLIPTextModel.from_pretrained(os.path.join(dd, "text_encoder"), attn_implementation="eager").eval()
    check_state_equal(m2.state_dict(), sd, "sd1 diffusers folder")
    m3 = load_via_diffusers_single_file(sf, dd)
    check_state_equal(m3.state_dict(), sd, "sd1 single file via convert_ldm_clip_checkpoint")
    for m, what in ((m2, "diffusers folder"), (m3, "single file")):
        h = forward(m, ids)
        err = (h - hs).abs().max().item()
        assert err < 1e-5, (what, err)
    assert dtypes_of(sf)["cond_stage_model.transformer." + tok_key] == "F16"
    assert dtypes_of(os.path.join(dd, "text_encoder", "model.safetensors"))[tok_key] == "F16"
    return d, hs


def make_sd2(out_root, vocab, generator):
    from transformers import CLIPTextModel
    d = os.path.join(out_root, "te_sd2")
    os.makedirs(d, exist_ok=True)
    # The model files are inputs of make_tiny_pipelines.py, which puts the same
    # text encoder into tests/golden/sdN/; only the reference outputs are golden.
    m = os.path.join(WORK_DIR, "te_sd2")
    os.makedirs(m, exist_ok=True)
    # The OpenCLIP tower: 4 blocks (with a projection head, unused by SD).
    full = make_model(SD2_CFG, SEED_SD2, n_layers=4, with_projection=True)
    tok_key = "text_model.embeddings.token_embedding.weight"
    pos_key = "text_model.embeddings.position_embedding.weight"
    with torch.no_grad():
        for p in (full.text_model.embeddings.token_embedding.weight,
                  full.text_model.embeddings.position_embedding.weight):
            p.copy_(round_to(p, torch.bfloat16))
    fsd = full.state_dict()

    # the SD2 text encoder = blocks 0..2 + final LayerNorm (diffusers CLIPTextModel, 3 layers)
    model = make_model(SD2_CFG, SEED_SD2)
    sd = {k: v for k, v in fsd.items() if not k.startswith("text_model.encoder.layers.3.")
          and not k.startswith("text_projection")}
    model.load_state_dict(sd, strict=True)
    sd = model.state_dict()

    # single file (OpenCLIP layout)
    P = "cond_stage_model.model."
    single = {
        P + "token_embedding.weight": fsd[tok_key].to(torch.bfloat16),
        P + "positional_embedding": fsd[pos_key].to(torch.bfloat16),
        P + "ln_final.weight": fsd["text_model.final_layer_norm.weight"],
        P + "ln_final.bias": fsd["text_model.final_layer_norm.bias"],
        P + "text_projection": fsd["text_projection.weight"].T,
        P + "logit_scale": torch.tensor(math.log(100.0), dtype=torch.float32),
    }
    for i in range(4):
        s = f"text_model.encoder.layers.{i}."
        o = f"{P}transformer.resblocks.{i}."
        single[o + "ln_1.weight"] = fsd[s + "layer_norm1.weight"]
        single[o + "ln_1.bias"] = fsd[s + "layer_norm1.bias"]
        single[o + "attn.in_proj_weight"] = torch.cat([fsd[s + f"self_attn.{x}_proj.weight"] for x in "qkv"], 0)
        single[o + "attn.in_proj_bias"] = torch.cat([fsd[s + f"self_attn.{x}_proj.bias"] for x in "qkv"], 0)
        single[o + "attn.out_proj.weight"] = fsd[s + "self_attn.out_proj.weight"]
        single[o + "attn.out_proj.bias"] = fsd[s + "self_attn.out_proj.bias"]
        single[o + "ln_2.weight"] = fsd[s + "layer_norm2.weight"]
        single[o + "ln_2.bias"] = fsd[s + "layer_norm2.bias"]
        single[o + "mlp.c_fc.weight"] = fsd[s + "mlp.fc1.weight"]
        single[o + "mlp.c_fc.bias"] = fsd[s + "mlp.fc1.bias"]
        single[o + "mlp.c_proj.weight"] = fsd[s + "mlp.fc2.weight"]
        single[o + "mlp.c_proj.bias"] = fsd[s + "mlp.fc2.bias"]
    single = {k: v.detach().clone().contiguous() for k, v in single.items()}
    sf = os.path.join(m, "sd2_tiny.safetensors")
    save_file(single, sf, metadata={"format": "pt", "generator": generator,
                                    "text_encoder.num_attention_heads": str(SD2_CFG["num_attention_heads"]),
                                    "text_encoder.hidden_act": SD2_CFG["hidden_act"]})

    dd = os.path.join(m, "diffusers")
    # The token embedding is bf16-rounded, so BF16 stores it exactly (and small).
    write_diffusers(model, dd, {tok_key: torch.bfloat16})

    ids = tokenize(PROMPTS, 0, vocab)
    hs = forward(model, ids)
    write_reference(os.path.join(d, "reference.safetensors"), ids, hs, PROMPTS, 0, generator)

    # verification
    m2 = CLIPTextModel.from_pretrained(os.path.join(dd, "text_encoder"), attn_implementation="eager").eval()
    check_state_equal(m2.state_dict(), sd, "sd2 diffusers folder")
    # diffusers' converter ignores only resblocks.23 (real SD2) and text_projection; for the tiny
    # 4-block model resblocks.3 becomes unexpected layers.3.* keys (warned about, not loaded).
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    conv = convert_open_clip_checkpoint(model, load_file(sf), prefix=P)
    extra = sorted(k for k in conv if k not in sd)
    assert all(k.startswith("text_model.encoder.layers.3.") for k in extra), extra
    assert len(extra) == 16, extra
    for k in extra:  # the extra block must be exactly the 4th OpenCLIP block
        assert torch.equal(conv[k], fsd[k]), k
    check_state_equal({k: v for k, v in conv.items() if k in sd}, sd, "sd2 single file via convert_open_clip_checkpoint")
    m3 = load_via_diffusers_single_file(sf, dd)
    check_state_equal(m3.state_dict(), sd, "sd2 single file via create_diffusers_clip_model_from_ldm")
    # independent check of the penultimate rule: 4-block model's hidden_states[3] + final LN
    with torch.no_grad():
        out = full.text_model(input_ids=ids, output_hidden_states=True)
        pen = full.text_model.final_layer_norm(out.hidden_states[3])
    assert (pen - hs).abs().max().item() < 1e-5
    assert (out.last_hidden_state - hs).abs().max().item() > 1e-2  # the last block does matter
    # text_projection layout check: OpenCLIP x @ text_projection == diffusers Linear
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x @ single[P + "text_projection"], full.text_projection(x), atol=1e-6)
    for m, what in ((m2, "diffusers folder"), (m3, "single file")):
        h = forward(m, ids)
        err = (h - hs).abs().max().item()
        assert err < 1e-5, (what, err)
    assert dtypes_of(sf)[P + "token_embedding.weight"] == "BF16"
    return d, hs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", default=clip_vocab.default_vocab_path())
    ap.add_argument("--out", default=os.path.join(clip_vocab.REPO, "tests", "golden"))
    a = ap.parse_args()
    torch.set_num_threads(1)  # bit-reproducible reference
    import diffusers
    diffusers.utils.logging.set_verbosity_error()  # the expected unused-key warnings
    import transformers
    transformers.logging.set_verbosity_error()
    gen = GENERATOR if a.out == os.path.join(clip_vocab.REPO, "tests", "golden") else f"{GENERATOR} --out {a.out}"
    clip_vocab.write_tokenizer_files(a.vocab, clip_vocab.default_out_dir())
    for fn in (make_sd1, make_sd2):
        d, hs = fn(a.out, a.vocab, gen)
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
        print(f"make_text_encoders: {d}: {size} bytes; hidden_states abs max {hs.abs().max():.4f}")


if __name__ == "__main__":
    main()
