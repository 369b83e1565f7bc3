#!/usr/bin/env python3
"""Make tiny random-weight SD1-like / SD2-like pipelines and diffusers reference outputs:
tests/golden/sd1/ and tests/golden/sd2/.

Per version N (sd1, sd2):
  model.safetensors         single-file LDM layout: model.diffusion_model.* (UNet, LDM names),
                            first_stage_model.* (VAE, LDM names), cond_stage_model.* (the text
                            encoder of te_sdN/, same tensors, same dtypes). F32 except
                            model.diffusion_model.out.2.weight and first_stage_model.decoder.conv_in.weight
                            (F16; both layouts hold the same f16-rounded values) and the text
                            encoder's embeddings (F16 for SD1, BF16 for SD2, as in te_sdN/).
  diffusers/                model_index.json, text_encoder/ (byte copies of te_sdN/diffusers/text_encoder/),
                            unet/, vae/ (config.json + diffusion_pytorch_model.safetensors, all F32),
                            scheduler/scheduler_config.json (SD1.5 PNDM / SD2.1 DDIM v_prediction).
  unet_reference.safetensors    UNet outputs for 4 timestep pairs.
  vae_reference.safetensors     VAE decode / encode outputs.
  sample_reference.safetensors  full StableDiffusionPipeline runs for 7 samplers.
See tests/golden/README.md ("sd1/ and sd2/") for the exact contents.

Every single file is verified by loading it back with diffusers 0.31.0's own single-file code
(StableDiffusionPipeline.from_single_file(path, config=<diffusers folder>, ...) and the per-model
UNet2DConditionModel / AutoencoderKL.from_single_file(path, config=..., subfolder=...)) and asserting
that every UNet / VAE / text-encoder parameter equals the original model's.

Exact command (repo root; deterministic, CPU, one torch thread, ~10 s):
    tools/reference/.venv/bin/python tools/reference/make_tiny_pipelines.py [--vocab PATH] [--out tests/golden]
It needs the text encoders that make_text_encoders.py leaves in tools/reference/out/te_sdN/
(run that first); they go into the pipelines unchanged.
"""
import argparse
import json
import math
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_vocab  # noqa: E402
from st_write import save as save_file  # noqa: E402

GENERATOR = "tools/reference/.venv/bin/python tools/reference/make_tiny_pipelines.py"
CTX = 77

UNET_COMMON = dict(
    sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(8, 16, 24), layers_per_block=2, norm_num_groups=4, cross_attention_dim=16,
)
VAE_CFG = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(8, 16, 16), layers_per_block=2, act_fn="silu", latent_channels=4,
    norm_num_groups=4, sample_size=64, scaling_factor=0.18215,
)
VERSIONS = {
    "sd1": dict(
        unet=dict(UNET_COMMON, attention_head_dim=2, use_linear_projection=False),
        heads=[2, 2, 2], unet_seed=11, vae_seed=21, ref_seed=31,
        scheduler={"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
                   "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
                   "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
                   "trained_betas": None, "clip_sample": False},
        pad_id=49407, te_single="te_sd1/sd1_tiny.safetensors",
    ),
    "sd2": dict(
        unet=dict(UNET_COMMON, attention_head_dim=(2, 4, 4), use_linear_projection=True, upcast_attention=True),
        heads=[2, 4, 4], unet_seed=12, vae_seed=22, ref_seed=32,
        scheduler={"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
                   "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
                   "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
                   "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None},
        pad_id=0, te_single="te_sd2/sd2_tiny.safetensors",
    ),
}
# single-file tensors stored as F16 (values f16-rounded in the model, so both layouts agree)
F16_KEYS = ["model.diffusion_model.out.2.weight", "first_stage_model.decoder.conv_in.weight"]

UNET_T = [[999.0, 999.0], [500.0, 500.0], [1.0, 1.0], [10.5, 700.25]]
PROMPT, NEGATIVE = "a photo of a cat", "blurry"
GUIDANCE, STEPS, SIZE = 6.0, 4, 64
SAMPLERS = [  # name, class, from_config kwargs
    ("ddim", "DDIMScheduler", {}),
    ("pndm", "PNDMScheduler", {"skip_prk_steps": True}),
    ("euler", "EulerDiscreteScheduler", {}),
    ("euler_karras", "EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("euler_a", "EulerAncestralDiscreteScheduler", {}),
    ("dpmpp_2m", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    ("dpmpp_2m_karras", "DPMSolverMultistepScheduler",
     {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
]
# EulerAncestralDiscreteScheduler has no use_karras_sigmas in diffusers 0.31.0 (from_config would
# silently ignore it), so there is no euler_a_karras reference.


# ---------------------------------------------------------------------------

TE_WORK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")

def randomize_trivial(model, seed):
    """Replace every parameter that is constant after diffusers' init (norm gains = 1, zero biases,
    zero-initialised weights) by seeded random values: 1-D '...weight' -> 1 + 0.2 N, '...bias' -> 0.1 N,
    other weights -> N / sqrt(fan_in). Name-sorted, deterministic."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            flat = p.reshape(-1)
            if p.numel() > 1 and not torch.all(flat == flat[0]):
                continue
            if name.endswith(".bias"):
                v = 0.1 * torch.randn(p.shape, generator=g)
            elif p.dim() == 1:
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=g)
            else:
                v = torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel())
            p.copy_(v)
            n += 1
    return n


def make_unet(cfg, seed):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    m = UNet2DConditionModel(**cfg).eval()
    randomize_trivial(m, seed + 1000)
    with torch.no_grad():
        m.conv_out.weight.copy_(m.conv_out.weight.half().float())
    return m


def make_vae(seed):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    m = AutoencoderKL(**VAE_CFG).eval()
    randomize_trivial(m, seed + 1000)
    with torch.no_grad():
        m.decoder.conv_in.weight.copy_(m.decoder.conv_in.weight.half().float())
    return m


# --------------------------- diffusers -> LDM names --------------------------
RESNET_UNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
               ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]


def _sub(rest, table):
    for a, b in table:
        if rest == a or rest.startswith(a + "."):
            return b + rest[len(a):]
    return rest


def unet_to_ldm(sd, cfg):
    """diffusers UNet2DConditionModel state dict -> LDM names (prefix model.diffusion_model.)."""
    L = cfg["layers_per_block"]
    nlev = len(cfg["block_out_channels"])
    up_has_attn = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        if p[0] == "conv_in":
            n = "input_blocks.0.0." + ".".join(p[1:])
        elif p[0] == "time_embedding":
            n = {"linear_1": "time_embed.0", "linear_2": "time_embed.2"}[p[1]] + "." + ".".join(p[2:])
        elif p[0] == "conv_norm_out":
            n = "out.0." + ".".join(p[1:])
        elif p[0] == "conv_out":
            n = "out.2." + ".".join(p[1:])
        elif p[0] == "down_blocks":
            i, kind = int(p[1]), p[2]
            if kind == "resnets":
                j = int(p[3])
                n = f"input_blocks.{(L + 1) * i + j + 1}.0." + _sub(".".join(p[4:]), RESNET_UNET)
            elif kind == "attentions":
                j = int(p[3])
                n = f"input_blocks.{(L + 1) * i + j + 1}.1." + ".".join(p[4:])
            elif kind == "downsamplers":
                assert p[3] == "0" and p[4] == "conv" and i < nlev - 1
                n = f"input_blocks.{(L + 1) * (i + 1)}.0.op." + ".".join(p[5:])
            else:
                raise KeyError(k)
        elif p[0] == "mid_block":
            kind, j = p[1], int(p[2])
            idx = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(kind, j)]
            rest = ".".join(p[3:])
            n = f"middle_block.{idx}." + (_sub(rest, RESNET_UNET) if kind == "resnets" else rest)
        elif p[0] == "up_blocks":
            i, kind = int(p[1]), p[2]
            if kind == "resnets":
                j = int(p[3])
                n = f"output_blocks.{(L + 1) * i + j}.0." + _sub(".".join(p[4:]), RESNET_UNET)
            elif kind == "attentions":
                j = int(p[3])
                n = f"output_blocks.{(L + 1) * i + j}.1." + ".".join(p[4:])
            elif kind == "upsamplers":
                assert p[3] == "0" and p[4] == "conv" and i < nlev - 1
                n = f"output_blocks.{(L + 1) * i + L}.{2 if up_has_attn[i] else 1}.conv." + ".".join(p[5:])
            else:
                raise KeyError(k)
        else:
            raise KeyError(k)
        out["model.diffusion_model." + n] = v
    assert len(out) == len(sd)
    return out


def vae_to_ldm(sd, cfg):
    """diffusers AutoencoderKL state dict -> LDM names (prefix first_stage_model.)."""
    nlev = len(cfg["block_out_channels"])
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        top = p[0]
        if top in ("quant_conv", "post_quant_conv"):
            n = k
        else:
            assert top in ("encoder", "decoder"), k
            q = p[1:]
            if q[0] in ("conv_in", "conv_out"):
                n = top + "." + ".".join(q)
            elif q[0] == "conv_norm_out":
                n = top + ".norm_out." + ".".join(q[1:])
            elif q[0] == "mid_block":
                if q[1] == "resnets":
                    n = f"{top}.mid.block_{int(q[2]) + 1}." + ".".join(q[3:]).replace("conv_shortcut", "nin_shortcut")
                else:
                    assert q[1] == "attentions" and q[2] == "0", k
                    rest = ".".join(q[3:])
                    name, leaf = rest.rsplit(".", 1)
                    n = f"{top}.mid.attn_1.{attn[name]}.{leaf}"
                    if leaf == "weight" and name != "group_norm":
                        v = v.reshape(v.shape[0], v.shape[1], 1, 1)  # linear -> 1x1 conv
            elif q[0] in ("down_blocks", "up_blocks"):
                i = int(q[1])
                lvl, word = (i, "down") if q[0] == "down_blocks" else (nlev - 1 - i, "up")
                if q[2] == "resnets":
                    n = f"{top}.{word}.{lvl}.block.{q[3]}." + ".".join(q[4:]).replace("conv_shortcut", "nin_shortcut")
                else:
                    assert q[2] in ("downsamplers", "upsamplers") and q[3] == "0" and q[4] == "conv", k
                    n = f"{top}.{word}.{lvl}.{'downsample' if word == 'down' else 'upsample'}.conv." + ".".join(q[5:])
            else:
                raise KeyError(k)
        out["first_stage_model." + n] = v
    assert len(out) == len(sd)
    return out


# ---------------------------------------------------------------------------
def model_index():
    import diffusers
    return {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
            "feature_extractor": [None, None], "image_encoder": [None, None],
            "requires_safety_checker": False, "safety_checker": [None, None],
            "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}


def write_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def write_model_folder(model, path):
    """config.json (diffusers save_config) + diffusion_pytorch_model.safetensors (canonical, F32)."""
    os.makedirs(path)
    model.save_config(path)
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    write_json(cfg, os.path.join(path, "config.json"))
    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(path, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})


def check_state_equal(a, b, what):
    ka, kb = set(a), set(b)
    if ka != kb:
        raise AssertionError(f"{what}: key sets differ: only-a {sorted(ka - kb)[:8]} only-b {sorted(kb - ka)[:8]}")
    for k in sorted(ka):
        if a[k].shape != b[k].shape or not torch.equal(a[k].float(), b[k].float()):
            raise AssertionError(f"{what}: {k} differs")


def dtypes_of(path):
    import struct
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    return {k: v["dtype"] for k, v in h.items() if k != "__metadata__"}


def tokenize(prompt, pad_id, tok):
    ids = tok(prompt, padding="max_length", max_length=CTX, truncation=True).input_ids
    n = min(len(tok(prompt).input_ids), CTX)
    return torch.tensor([ids[:n] + [pad_id] * (CTX - n)], dtype=torch.int64)


# ---------------------------------------------------------------------------
def make_version(name, out_root, vocab, generator):
    from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel)
    from transformers import CLIPTextModel
    V = VERSIONS[name]
    d = os.path.join(out_root, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    te_dir = os.path.join(TE_WORK_DIR, "te_" + name, "diffusers", "text_encoder")

    unet = make_unet(V["unet"], V["unet_seed"])
    vae = make_vae(V["vae_seed"])
    n_unet = sum(p.numel() for p in unet.parameters())
    n_vae = sum(p.numel() for p in vae.parameters())
    print(f"{name}: unet {n_unet} params, vae {n_vae} params")

    # ---- diffusers folder
    dd = os.path.join(d, "diffusers")
    os.makedirs(dd)
    mi = model_index()
    mi["scheduler"] = ["diffusers", V["scheduler"]["_class_name"]]
    write_json(mi, os.path.join(dd, "model_index.json"))
    shutil.copytree(te_dir, os.path.join(dd, "text_encoder"))
    write_model_folder(unet, os.path.join(dd, "unet"))
    write_model_folder(vae, os.path.join(dd, "vae"))
    os.makedirs(os.path.join(dd, "scheduler"))
    write_json(V["scheduler"], os.path.join(dd, "scheduler", "scheduler_config.json"))

    # ---- single file
    te_single_path = os.path.join(TE_WORK_DIR, V["te_single"])
    te_single = load_file(te_single_path)
    single = {}
    single.update(unet_to_ldm(unet.state_dict(), V["unet"]))
    single.update(vae_to_ldm(vae.state_dict(), VAE_CFG))
    single = {k: v.detach().float().clone().contiguous() for k, v in single.items()}
    for k in F16_KEYS:
        t16 = single[k].half()
        assert torch.equal(t16.float(), single[k]), k
        single[k] = t16
    assert not (set(single) & set(te_single))
    single.update(te_single)
    with open(te_single_path, "rb") as f:
        import struct
        te_meta = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))["__metadata__"]
    meta = {"format": "pt", "generator": generator,
            "text_encoder.num_attention_heads": te_meta["text_encoder.num_attention_heads"],
            "text_encoder.hidden_act": te_meta["text_encoder.hidden_act"],
            "unet.num_attention_heads": json.dumps(V["heads"]),
            # Real checkpoints use 32 groups, which the tiny models cannot divide.
            "unet.norm_num_groups": str(unet.config.norm_num_groups),
            "vae.norm_num_groups": str(vae.config.norm_num_groups)}
    sf = os.path.join(d, "model.safetensors")
    save_file(single, sf, metadata=meta)

    # ---- load everything back
    te = CLIPTextModel.from_pretrained(os.path.join(dd, "text_encoder")).eval()
    tok = clip_vocab.load_tokenizer(vocab)  # pad_token <|endoftext|> (49407)
    tok.model_max_length = CTX  # the pipeline pads to tokenizer.model_max_length
    pipe = StableDiffusionPipeline.from_pretrained(dd, tokenizer=tok, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    check_state_equal(pipe.unet.state_dict(), unet.state_dict(), f"{name} diffusers unet")
    check_state_equal(pipe.vae.state_dict(), vae.state_dict(), f"{name} diffusers vae")
    check_state_equal(pipe.text_encoder.state_dict(), te.state_dict(), f"{name} diffusers text_encoder")
    assert type(pipe.scheduler).__name__ == V["scheduler"]["_class_name"]

    # single file via diffusers' loader (pipeline-level and per-model)
    sp = StableDiffusionPipeline.from_single_file(sf, config=dd, tokenizer=tok, safety_checker=None,
                                                  feature_extractor=None, requires_safety_checker=False,
                                                  local_files_only=True)
    check_state_equal(sp.unet.state_dict(), unet.state_dict(), f"{name} single file unet (pipeline)")
    check_state_equal(sp.vae.state_dict(), vae.state_dict(), f"{name} single file vae (pipeline)")
    check_state_equal(sp.text_encoder.state_dict(), te.state_dict(), f"{name} single file text_encoder (pipeline)")
    u2 = UNet2DConditionModel.from_single_file(sf, config=dd, subfolder="unet", local_files_only=True)
    check_state_equal(u2.state_dict(), unet.state_dict(), f"{name} single file unet")
    v2 = AutoencoderKL.from_single_file(sf, config=dd, subfolder="vae", local_files_only=True)
    check_state_equal(v2.state_dict(), vae.state_dict(), f"{name} single file vae")
    del sp, u2, v2
    dt = dtypes_of(sf)
    for k in F16_KEYS:
        assert dt[k] == "F16", k
    assert sum(1 for x in dt.values() if x == "F32") == len(dt) - len(F16_KEYS) - sum(
        1 for k, x in dtypes_of(te_single_path).items() if x != "F32")

    unet, vae, te = pipe.unet, pipe.vae, pipe.text_encoder
    g = torch.Generator().manual_seed(V["ref_seed"])

    # ---- UNet reference
    x = torch.randn(2, 4, 16, 16, generator=g)
    ctx = torch.randn(2, CTX, 16, generator=g)
    ts = torch.tensor(UNET_T, dtype=torch.float32)
    outs = []
    with torch.no_grad():
        for row in ts:
            outs.append(unet(x, row, encoder_hidden_states=ctx).sample.float())
        # integer timesteps (as PNDM/DDIM pass them) give the same result as their float value
        o_int = unet(x, torch.tensor([999, 999]), encoder_hidden_states=ctx).sample
        assert torch.equal(o_int, outs[0])
        o_scalar = unet(x, 500, encoder_hidden_states=ctx).sample
        assert torch.equal(o_scalar, outs[1])
    out = torch.stack(outs)
    save_file({"x": x, "ctx": ctx, "t": ts, "out": out.contiguous()}, os.path.join(d, "unet_reference.safetensors"),
              metadata={"generator": generator, "model": f"{name}/diffusers/unet",
                        "call": "out[k] = unet(x, t[k], encoder_hidden_states=ctx).sample, fp32",
                        "seed": f"torch.Generator().manual_seed({V['ref_seed']}): x = randn(2,4,16,16), ctx = randn(2,77,16)"})
    print(f"{name}: unet out abs max {out.abs().max():.4f}, std {out.std():.4f}")

    # ---- VAE reference
    z = torch.randn(1, 4, 16, 16, generator=g)
    img = (torch.rand(1, 3, 64, 64, generator=g) * 2 - 1)
    with torch.no_grad():
        dec = vae.decode(z).sample.float()
        dist = vae.encode(img).latent_dist
        mean, logvar = dist.mean.float(), dist.logvar.float()
    save_file({"z": z, "decoded": dec.contiguous(), "image": img, "mean": mean.contiguous(),
               "logvar": logvar.contiguous()}, os.path.join(d, "vae_reference.safetensors"),
              metadata={"generator": generator, "model": f"{name}/diffusers/vae",
                        "seed": f"torch.Generator().manual_seed({V['ref_seed']}) continued after the UNet inputs: "
                                "z = randn(1,4,16,16), image = rand(1,3,64,64)*2-1",
                        "call": "decoded = vae.decode(z).sample; d = vae.encode(image).latent_dist; "
                                "mean = d.mean; logvar = d.logvar (clamped to [-30, 20]), fp32"})
    print(f"{name}: vae decoded abs max {dec.abs().max():.4f}; mean abs max {mean.abs().max():.4f}; "
          f"logvar range [{logvar.min():.3f}, {logvar.max():.3f}]")

    # ---- sampler references
    ids_pos = tokenize(PROMPT, V["pad_id"], tok)
    ids_neg = tokenize(NEGATIVE, V["pad_id"], tok)
    with torch.no_grad():
        emb_pos = te(ids_pos)[0].float()
        emb_neg = te(ids_neg)[0].float()
    if name == "sd1":
        # the pipeline tokenizes itself (pad 49407): check it produces these embeddings
        pe, ne = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
        assert torch.equal(pe, emb_pos) and torch.equal(ne, emb_neg)
        call_text = {"prompt": PROMPT, "negative_prompt": NEGATIVE}
    else:
        # zero padding: pass embeddings computed from ids padded with 0. Cross-check: the HF SD2
        # tokenizer convention (pad_token "!" = id 0) gives the same for these prompts.
        tok2 = clip_vocab.load_tokenizer(vocab, pad_token="!")
        tok2.model_max_length = CTX
        assert tok2.pad_token_id == 0
        assert tok2(PROMPT, padding="max_length", max_length=CTX).input_ids == ids_pos[0].tolist()
        assert tok2(NEGATIVE, padding="max_length", max_length=CTX).input_ids == ids_neg[0].tolist()
        call_text = {"prompt_embeds": emb_pos, "negative_prompt_embeds": emb_neg}
    tensors = {"prompt_ids": ids_pos, "negative_prompt_ids": ids_neg, "prompt_embeds": emb_pos.contiguous(),
               "negative_prompt_embeds": emb_neg.contiguous()}
    classes = {c.__name__: c for c in (DDIMScheduler, PNDMScheduler, EulerDiscreteScheduler,
                                       EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler)}
    base_config = pipe.scheduler.config
    info = {}
    for sname, cls, kw in SAMPLERS:
        pipe.scheduler = classes[cls].from_config(base_config, **kw)
        cap = {"steps": []}
        orig = StableDiffusionPipeline.prepare_latents

        def prep(*a, **k):
            r = orig(pipe, *a, **k)
            cap["init"] = r.detach().clone()
            return r
        pipe.prepare_latents = prep

        def cb(p, i, t, kws):
            cap["steps"].append(kws["latents"].detach().clone())
            return kws
        with torch.no_grad():
            res = pipe(**call_text, guidance_scale=GUIDANCE, width=SIZE, height=SIZE, num_inference_steps=STEPS,
                       generator=torch.Generator("cpu").manual_seed(0), output_type="np",
                       callback_on_step_end=cb)
        del pipe.prepare_latents
        image = torch.from_numpy(res.images).float()
        final = cap["steps"][-1]
        with torch.no_grad():  # the image is the decode of the final latents
            chk = (vae.decode(final / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
        assert (chk - image).abs().max().item() < 1e-6
        sch = pipe.scheduler
        tensors[f"{sname}.latents_init"] = cap["init"].float().contiguous()
        tensors[f"{sname}.latents_steps"] = torch.stack(cap["steps"]).float().contiguous()
        tensors[f"{sname}.latents_final"] = final.float().contiguous()
        tensors[f"{sname}.image"] = image.contiguous()
        tensors[f"{sname}.timesteps"] = sch.timesteps.detach().float().contiguous()
        assert torch.equal(sch.timesteps.double(), tensors[f"{sname}.timesteps"].double())
        if getattr(sch, "sigmas", None) is not None and cls != "DDIMScheduler" and cls != "PNDMScheduler":
            tensors[f"{sname}.sigmas"] = sch.sigmas.detach().float().contiguous()
        info[sname] = {"class": cls, "from_config_kwargs": kw, "init_noise_sigma": float(sch.init_noise_sigma),
                       "timesteps_dtype": str(sch.timesteps.dtype).replace("torch.", "")}
        sat = ((image == 0) | (image == 1)).float().mean().item()
        print(f"{name} {sname:16s} t={[round(float(x), 3) for x in sch.timesteps]} "
              f"init_sigma={float(sch.init_noise_sigma):.4f} final abs max {final.abs().max():.3f} "
              f"image mean {image.mean():.4f} saturated {sat:.3f}")
    cfg = dict(base_config)
    if "_use_default_values" in cfg:  # a list in set (hash) order: sort it for byte-identical reruns
        cfg["_use_default_values"] = sorted(cfg["_use_default_values"])
    meta = {"generator": generator, "pipeline": f"StableDiffusionPipeline.from_pretrained('{name}/diffusers', "
            "tokenizer=<clip_vocab.load_tokenizer()>, safety_checker=None, feature_extractor=None, "
            "requires_safety_checker=False)",
            "call": ("pipe(" + ("prompt='a photo of a cat', negative_prompt='blurry'" if name == "sd1" else
                                "prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds") +
                     ", guidance_scale=6.0, width=64, height=64, num_inference_steps=4, "
                     "generator=torch.Generator('cpu').manual_seed(0), output_type='np')"),
            "prompt": PROMPT, "negative_prompt": NEGATIVE, "pad_id": str(V["pad_id"]),
            "scheduler_config": json.dumps({k: cfg[k] for k in sorted(cfg)}),
            "samplers": json.dumps(info, sort_keys=True)}
    save_file(tensors, os.path.join(d, "sample_reference.safetensors"), metadata=meta)
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", default=clip_vocab.default_vocab_path())
    ap.add_argument("--out", default=os.path.join(clip_vocab.REPO, "tests", "golden"))
    ap.add_argument("--only", choices=sorted(VERSIONS), default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)  # bit-reproducible reference
    import diffusers
    diffusers.utils.logging.set_verbosity_error()
    import transformers
    transformers.logging.set_verbosity_error()
    gen = GENERATOR if a.out == os.path.join(clip_vocab.REPO, "tests", "golden") else f"{GENERATOR} --out {a.out}"
    clip_vocab.write_tokenizer_files(a.vocab, clip_vocab.default_out_dir())
    for name in ([a.only] if a.only else sorted(VERSIONS)):
        d = make_version(name, a.out, a.vocab, gen)
        for r, _, fs in sorted(os.walk(d)):
            for f in sorted(fs):
                p = os.path.join(r, f)
                print(f"  {os.path.relpath(p, a.out)} {os.path.getsize(p)}")


if __name__ == "__main__":
    main()
