#!/usr/bin/env python3
"""Train the toy model: a small Stable Diffusion 1 architecture model of the toy world.

Phases (all deterministic from --seed, CPU, torch with --threads threads):
  1. VAE: AutoencoderKL (3 levels: 64x64 pixels -> 16x16x4 latents) trained on world
     images (MSE + a small KL term); then its latent space is rescaled so that
     latents x 0.18215 (SD's scaling factor, which coin assumes for single files)
     have unit standard deviation: the quant_conv mean rows are multiplied by a and
     post_quant_conv's input weights divided by a, which leaves the autoencoder's
     function unchanged.
  2. Data: --n-data world scenes are rendered and encoded once (latent means).
  3. Diffusion: CLIPTextModel (real CLIP vocabulary, 49408 tokens) and
     UNet2DConditionModel trained jointly from scratch on the latents with DDPM
     epsilon prediction and SD's schedule (scaled_linear 0.00085..0.012, 1000 steps),
     10% of captions dropped (the world's own empty captions) for classifier-free
     guidance, AdamW, EMA weights.
Every --save-minutes the EMA weights are written as an LDM single-file checkpoint
(fp16 safetensors, the layout of SD 1.5 .safetensors files) to OUT/toy-sd1.safetensors,
with a preview grid OUT/preview-STEP.png, so that an interrupted run leaves a usable model.
Training stops after --steps steps, --minutes minutes or at --until (UTC), whichever comes
first; the learning rate follows a cosine over that time budget. --init-from continues from a
checkpoint this script wrote (fresh optimizer; the VAE from OUT/vae.pt with --reuse-vae, else
from the file); --te-lr gives the text encoder its own learning rate; --embed-scale multiplies
the token rows of the world's words at the start (a from-scratch text encoder whose output
hardly depends on the caption otherwise learns the conditioning very slowly); --probe-steps and
--probe-weight train the text encoder, first alone and then alongside the diffusion loss, to say
which colour, noun and background its caption asks for (see CaptionProbe): with it the model
learnt to follow prompts in an hour, where the diffusion loss alone had not in two.

Exact commands of the shipped model: assets/toy/MODEL_CARD.md. The simplest run (repo root):
    /work/main/tools/reference/.venv/bin/python tools/toyworld/train.py --out build/toy
"""
import argparse
import copy
import json
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tools", "reference"))
import world  # noqa: E402
import clip_vocab  # noqa: E402
from st_write import save as save_st  # noqa: E402
from make_tiny_pipelines import unet_to_ldm, vae_to_ldm  # noqa: E402

CTX = 77
SCALING = 0.18215
TE_CFG = dict(vocab_size=49408, max_position_embeddings=77, hidden_size=128, intermediate_size=512,
              num_hidden_layers=3, num_attention_heads=2, hidden_act="quick_gelu", layer_norm_eps=1e-5,
              bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
UNET_CFG = dict(sample_size=16, in_channels=4, out_channels=4,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                block_out_channels=(32, 64, 128), layers_per_block=1, norm_num_groups=8,
                cross_attention_dim=128, attention_head_dim=(1, 2, 4), use_linear_projection=False)
UNET_HEADS = [1, 2, 4]
VAE_CFG = dict(in_channels=3, out_channels=3,
               down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
               block_out_channels=(32, 64, 64), layers_per_block=1, act_fn="silu", latent_channels=4,
               norm_num_groups=8, sample_size=64, scaling_factor=SCALING)
PREVIEW_PROMPTS = ["a red star on a blue background", "a yellow circle on a black background",
                   "a white triangle on a green background", "a blue square on a yellow background",
                   "a green cross on a white background", "a black heart on a red background",
                   "a red shape on a white background", ""]


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def to_pixels(imgs):
    """uint8 [N, 64, 64, 3] -> float [N, 3, 64, 64] in [-1, 1]."""
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_vae(a, g):
    from diffusers import AutoencoderKL
    torch.manual_seed(a.seed)
    vae = AutoencoderKL(**VAE_CFG)
    opt = torch.optim.AdamW(vae.parameters(), lr=a.vae_lr, weight_decay=0.0)
    w = world.World(a.seed + 1)
    t0 = time.time()
    for step in range(a.vae_steps):
        imgs, _, _ = w.batch(a.vae_batch)
        x = to_pixels(imgs)
        post = vae.encode(x).latent_dist
        z = post.sample(generator=g)
        rec = vae.decode(z).sample
        mse = torch.mean((rec - x) ** 2)
        kl = post.kl().mean() / (4 * 16 * 16)
        loss = mse + a.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == a.vae_steps - 1:
            log(f"vae step {step} mse {mse.item():.5f} kl {kl.item():.3f} ({time.time() - t0:.0f}s)")
    vae.eval()
    # rescale the latent space: SD's scaling factor must bring latents to unit std
    with torch.no_grad():
        imgs, _, _ = world.World(a.seed + 2).batch(512)
        mu = vae.encode(to_pixels(imgs)).latent_dist.mean
        std = mu.std().item()
        s = 1.0 / (SCALING * std)
        C = VAE_CFG["latent_channels"]
        vae.quant_conv.weight[:C] *= s
        vae.quant_conv.bias[:C] *= s
        vae.quant_conv.bias[C:] += 2.0 * math.log(s)
        vae.post_quant_conv.weight[:] /= s
        mu2 = vae.encode(to_pixels(imgs[:64])).latent_dist.mean
        log(f"vae latent std {std:.4f}, rescaled by {s:.4f}: scaled latent std {(mu2 * SCALING).std().item():.3f}, "
            f"mean {(mu2 * SCALING).mean().item():.3f}")
    return vae


def encode_dataset(vae, a):
    w = world.World(a.seed + 3)
    lat, scenes = [], []
    t0 = time.time()
    with torch.no_grad():
        for i in range(0, a.n_data, 256):
            n = min(256, a.n_data - i)
            scs = [w.scene() for _ in range(n)]
            imgs = np.stack([world.render(s["cls"], s["fg"], s["bg"], s["cx"], s["cy"], s["s"]) for s in scs])
            lat.append(vae.encode(to_pixels(imgs)).latent_dist.mean * SCALING)
            scenes += scs
    log(f"encoded {a.n_data} scenes in {time.time() - t0:.0f}s")
    return torch.cat(lat), scenes, w


class Tokens:
    def __init__(self, tok):
        self.tok = tok
        self.cache = {}

    def __call__(self, caps):
        out = []
        for c in caps:
            if c not in self.cache:
                ids = self.tok(c, padding="max_length", max_length=CTX, truncation=True).input_ids
                self.cache[c] = ids
            out.append(self.cache[c])
        return torch.tensor(out, dtype=torch.int64)


class CaptionProbe(torch.nn.Module):
    """Training-only linear heads that read a caption's object colour, noun and background
    colour from the text encoder's output at the positions from the end token on (which, with
    CLIP's causal attention, see the whole caption). Their loss teaches the text encoder to
    say what the caption asks for, which the diffusion loss alone teaches very slowly; the
    heads are not part of the saved model."""
    NOUNS = world.SHAPES + [world.GENERIC]

    def __init__(self, width):
        super().__init__()
        self.fg = torch.nn.Linear(width, 1 + len(world.COLOUR_NAMES))
        self.noun = torch.nn.Linear(width, 1 + len(self.NOUNS))
        self.bg = torch.nn.Linear(width, 1 + len(world.COLOUR_NAMES))

    @classmethod
    def labels(cls, caption):
        """(fg, noun, bg) class indices of a caption; 0 = not said."""
        w = caption.split()
        noun = next((i for i, x in enumerate(w) if x in cls.NOUNS), None)
        fg = bg = 0
        if noun is not None and noun > 0 and w[noun - 1] in world.COLOUR_NAMES:
            fg = 1 + world.COLOUR_NAMES.index(w[noun - 1])
        if "background" in w:
            b = w.index("background")
            if b > 0 and w[b - 1] in world.COLOUR_NAMES:
                bg = 1 + world.COLOUR_NAMES.index(w[b - 1])
        return fg, 0 if noun is None else 1 + cls.NOUNS.index(w[noun]), bg

    def loss(self, hidden, ids, captions):
        """hidden: [B, 77, W] text encoder output; ids: [B, 77] token ids."""
        lab = torch.tensor([self.labels(c) for c in captions], dtype=torch.int64)      # [B, 3]
        eos = (ids == TE_CFG["eos_token_id"]).int().argmax(dim=1)                     # first end token
        mask = torch.arange(CTX).unsqueeze(0) >= eos.unsqueeze(1)                     # [B, 77]
        h = hidden[mask]                                                               # [M, W]
        rows = mask.sum(1)
        total = 0.0
        for k, head in enumerate((self.fg, self.noun, self.bg)):
            total = total + torch.nn.functional.cross_entropy(head(h), lab[:, k].repeat_interleave(rows))
        return total


def betas():
    return torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2


@torch.no_grad()
def ema_update(ema, model, decay):
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1 - decay)


def ldm_state(te, unet, vae):
    single = {}
    single.update(unet_to_ldm(unet.state_dict(), UNET_CFG))
    single.update(vae_to_ldm(vae.state_dict(), VAE_CFG))
    for k, v in te.state_dict().items():
        if k.endswith("position_ids"):
            continue
        single["cond_stage_model.transformer." + k] = v
    single = {k: v.detach().to(torch.float16).contiguous() for k, v in single.items()}
    single["cond_stage_model.transformer.text_model.embeddings.position_ids"] = \
        torch.arange(CTX, dtype=torch.int64).unsqueeze(0).contiguous()
    return single


def save_checkpoint(te, unet, vae, path, meta):
    tmp = path + ".tmp"
    save_st(ldm_state(te, unet, vae), tmp, metadata=meta)
    os.replace(tmp, path)


@torch.no_grad()
def preview(te, unet, vae, tokens, path, seed, steps=20, guidance=5.0):
    """DDIM samples of PREVIEW_PROMPTS, one row, to a PNG (for watching the run)."""
    from PIL import Image
    ab = torch.cumprod(1 - betas(), 0).float()
    n = len(PREVIEW_PROMPTS)
    cond = te(tokens(PREVIEW_PROMPTS))[0]
    unc = te(tokens([""] * n))[0]
    ctx = torch.cat([unc, cond])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 16, 16, generator=g)
    ts = list(range(999, -1, -1000 // steps))[:steps]
    for i, t in enumerate(ts):
        e = unet(torch.cat([x, x]), t, encoder_hidden_states=ctx).sample
        eu, ec = e.chunk(2)
        e = eu + guidance * (ec - eu)
        a_t = ab[t]
        a_p = ab[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
        x = a_p.sqrt() * x0 + (1 - a_p).sqrt() * e
    img = vae.decode(x / SCALING).sample
    img = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    Image.fromarray(np.concatenate(list(img), axis=1)).save(path)


def load_ldm(path, te, unet, work):
    """Loads the text encoder and UNet of an LDM single file written by this script
    (to continue a run from its shipped weights: the optimizer starts afresh)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file
    cfg = os.path.join(work, "config")
    os.makedirs(os.path.join(cfg, "unet"), exist_ok=True)
    UNet2DConditionModel(**UNET_CFG).save_config(os.path.join(cfg, "unet"))
    u = UNet2DConditionModel.from_single_file(path, config=cfg, subfolder="unet", local_files_only=True)
    unet.load_state_dict({k: v.float() for k, v in u.state_dict().items()})
    sd = load_file(path)
    P = "cond_stage_model.transformer."
    te.load_state_dict({k[len(P):]: v.float() for k, v in sd.items()
                        if k.startswith(P) and not k.endswith("position_ids")}, strict=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "build", "toy"))
    ap.add_argument("--vocab", default=None, help="CLIP BPE .txt.gz (default: build/vocab/...)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-kl", type=float, default=1e-4)
    ap.add_argument("--n-data", type=int, default=40000)
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--minutes", type=float, default=50.0, help="stop the diffusion phase after this long")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--until", default=None, help="UTC HH:MM: also stop the diffusion phase then")
    ap.add_argument("--reuse-vae", action="store_true", help="reuse OUT/vae.pt from an earlier run")
    ap.add_argument("--init-from", default=None, help="start the diffusion phase from this checkpoint's weights")
    ap.add_argument("--embed-scale", type=float, default=1.0, help="scale the world's token rows at the start")
    ap.add_argument("--te-lr", type=float, default=None, help="text encoder learning rate (default: --lr)")
    ap.add_argument("--save-minutes", type=float, default=4.0)
    ap.add_argument("--probe-weight", type=float, default=0.0,
                    help="weight of the caption-probe loss on the text encoder (see CaptionProbe)")
    ap.add_argument("--probe-steps", type=int, default=0,
                    help="train the text encoder on the probe loss alone for this many steps first")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = a.vocab or os.path.join(REPO, "build", "vocab", "bpe_simple_vocab_16e6.txt.gz")
    tok = clip_vocab.load_tokenizer(vocab, out_dir=os.path.join(a.out, "clip_tokenizer"))
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    tokens = Tokens(tok)
    g = torch.Generator().manual_seed(a.seed)

    vae_path = os.path.join(a.out, "vae.pt")
    if a.init_from and not os.path.exists(vae_path):
        # continuing a shipped model without its build folder: its own VAE
        from diffusers import AutoencoderKL
        cfg = os.path.join(a.out, "config")
        os.makedirs(os.path.join(cfg, "vae"), exist_ok=True)
        AutoencoderKL(**VAE_CFG).save_config(os.path.join(cfg, "vae"))
        vae = AutoencoderKL.from_single_file(a.init_from, config=cfg, subfolder="vae",
                                             local_files_only=True).float().eval()
        torch.save(vae.state_dict(), vae_path)
        log(f"the VAE of {a.init_from}")
    elif a.reuse_vae and os.path.exists(vae_path):
        from diffusers import AutoencoderKL
        vae = AutoencoderKL(**VAE_CFG)
        vae.load_state_dict(torch.load(vae_path))
        vae.eval()
        log(f"reusing the VAE of {vae_path}")
    else:
        vae = train_vae(a, g)
        torch.save(vae.state_dict(), vae_path)
    for p in vae.parameters():
        p.requires_grad_(False)
    lat, scenes, cap_world = encode_dataset(vae, a)

    torch.manual_seed(a.seed + 10)
    te = CLIPTextModel(CLIPTextConfig(**TE_CFG, attn_implementation="eager"))
    unet = UNet2DConditionModel(**UNET_CFG)
    if a.init_from:
        load_ldm(a.init_from, te, unet, a.out)
        log(f"continuing from the weights of {a.init_from}")
    if a.embed_scale != 1.0:
        # The world's words start far louder than the position embeddings and the
        # unused rows, so that the text encoder's output says which words a caption
        # has from the first step (from CLIP's init, std 0.02, it barely does).
        words = set(" ".join(world.COLOUR_NAMES + world.SHAPES + [world.GENERIC, "background", "a", "on"]
                             + world.load_templates()).replace("{}", " ").split())
        ids = sorted({i for w in words for i in tok(w).input_ids[1:-1]})
        with torch.no_grad():
            te.text_model.embeddings.token_embedding.weight[ids] *= a.embed_scale
        log(f"scaled {len(ids)} world-vocabulary token rows by {a.embed_scale}")
    n_te = sum(p.numel() for p in te.parameters())
    n_unet = sum(p.numel() for p in unet.parameters())
    n_vae = sum(p.numel() for p in vae.parameters())
    log(f"params: text encoder {n_te}, unet {n_unet}, vae {n_vae}")
    te_ema, unet_ema = copy.deepcopy(te).eval(), copy.deepcopy(unet).eval()
    for p in list(te_ema.parameters()) + list(unet_ema.parameters()):
        p.requires_grad_(False)
    params = list(te.parameters()) + list(unet.parameters())
    te_lr = a.te_lr or a.lr
    groups = [{"params": list(te.parameters()), "base": te_lr},
              {"params": list(unet.parameters()), "base": a.lr}]
    probe = None
    if a.probe_weight > 0 or a.probe_steps > 0:
        torch.manual_seed(a.seed + 20)
        probe = CaptionProbe(TE_CFG["hidden_size"])
        groups.append({"params": list(probe.parameters()), "base": te_lr})
        params += list(probe.parameters())
        popt = torch.optim.AdamW(list(te.parameters()) + list(probe.parameters()), lr=te_lr, weight_decay=0.0)
        for step in range(a.probe_steps):
            caps = [cap_world.caption(scenes[i]) for i in torch.randint(0, len(scenes), (256,), generator=g)]
            ids = tokens(caps)
            loss = probe.loss(te(ids)[0], ids, caps)
            popt.zero_grad(set_to_none=True)
            loss.backward()
            popt.step()
            if step % 50 == 0 or step == a.probe_steps - 1:
                log(f"probe step {step} loss {loss.item():.4f}")
        te_ema.load_state_dict(te.state_dict())
    opt = torch.optim.AdamW(groups, lr=a.lr, weight_decay=0.0, fused=True)
    ab = torch.cumprod(1 - betas(), 0).float()
    meta = {"format": "pt",
            "generator": "tools/toyworld/train.py " + " ".join(sys.argv[1:]),
            "text_encoder.num_attention_heads": str(TE_CFG["num_attention_heads"]),
            "text_encoder.hidden_act": TE_CFG["hidden_act"],
            "unet.num_attention_heads": json.dumps(UNET_HEADS),
            "unet.norm_num_groups": str(UNET_CFG["norm_num_groups"]),
            "vae.norm_num_groups": str(VAE_CFG["norm_num_groups"]),
            "modelspec.prediction_type": "epsilon"}
    ckpt = os.path.join(a.out, "toy-sd1.safetensors")
    t0 = last_save = time.time()
    if a.until:
        hh, mm = map(int, a.until.split(":"))
        now = time.gmtime(t0)
        left = ((hh * 60 + mm) - (now.tm_hour * 60 + now.tm_min)) * 60 - now.tm_sec
        a.minutes = min(a.minutes, max(1.0, left / 60))
        log(f"diffusion phase: {a.minutes:.1f} minutes")
    smooth = None
    step = 0
    perm = torch.randperm(len(scenes), generator=g)
    pos = 0
    while step < a.steps:
        if pos + a.batch > len(perm):
            perm = torch.randperm(len(scenes), generator=g)
            pos = 0
        idx = perm[pos:pos + a.batch]
        pos += a.batch
        x0 = lat[idx]
        caps = [cap_world.caption(scenes[i]) for i in idx.tolist()]
        ids = tokens(caps)
        ctx = te(ids)[0]
        t = torch.randint(0, 1000, (a.batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        at = ab[t].view(-1, 1, 1, 1)
        xt = at.sqrt() * x0 + (1 - at).sqrt() * eps
        pred = unet(xt, t, encoder_hidden_states=ctx).sample
        loss = torch.mean((pred - eps) ** 2)
        ploss = probe.loss(ctx, ids, caps) if probe is not None and a.probe_weight > 0 else None
        # warm-up, then a cosine decay to 10% over the time budget (the run is time-bounded)
        frac = min(1.0, (time.time() - t0) / (a.minutes * 60))
        lr = min(1.0, (step + 1) / a.warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))
        for grp in opt.param_groups:
            grp["lr"] = grp["base"] * lr
        opt.zero_grad(set_to_none=True)
        (loss if ploss is None else loss + a.probe_weight * ploss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = min(a.ema, (1 + step) / (10 + step))
        ema_update(te_ema, te, d)
        ema_update(unet_ema, unet, d)
        step += 1
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        elapsed = time.time() - t0
        if step % 20 == 0:
            pl = "" if ploss is None else f" probe {ploss.item():.4f}"
            log(f"step {step} loss {loss.item():.4f} smooth {smooth:.4f}{pl} ({elapsed / step:.2f}s/step)")
        done = step >= a.steps or elapsed > a.minutes * 60
        if done or time.time() - last_save > a.save_minutes * 60:
            meta["steps"] = str(step)
            save_checkpoint(te_ema, unet_ema, vae, ckpt, meta)
            preview(te_ema, unet_ema, vae, tokens, os.path.join(a.out, f"preview-{step:06d}.png"), a.seed)
            log(f"saved {ckpt} at step {step}")
            last_save = time.time()
        if done:
            break
    log(f"done: {step} steps in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
