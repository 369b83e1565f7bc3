#!/usr/bin/env python3
"""Make textual-inversion training goldens for the tiny pipelines: tests/golden/train/.

For N in sd1 (epsilon), sd2 (v_prediction), from tests/golden/sdN/diffusers (fp32, eager attention:
transformers attn_implementation="eager", diffusers AttnProcessor for UNet and VAE), reproducing the
math of diffusers examples/textual_inversion/textual_inversion.py (REFERENCE.md 9.1) on one fixed
batch of 2:

  grads_sdN.safetensors   one forward/backward: VAE posterior sample, add_noise, target, UNet
                          prediction, mse loss, d loss / d encoder_hidden_states, d loss / d the
                          token-embedding output, d loss / d the two trigger rows.
  adamw_sdN.safetensors   three optimizer steps as textual_inversion.py takes them (AdamW over the
                          whole token-embedding matrix, then every row outside the placeholder id
                          range restored from the original), same batch every step.

See tests/golden/README.md ("train/") for every tensor and the exact recipe.

Exact command (repo root; CPU, one torch thread, deterministic, ~7 s):
    tools/reference/.venv/bin/python tools/reference/make_train_goldens.py [--vocab PATH] [--out tests/golden]
It needs tests/golden/sdN/diffusers (make_tiny_pipelines.py) and the CLIP vocabulary (clip_vocab.py).
"""
import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_vocab  # noqa: E402
from st_write import save as save_file  # noqa: E402

GENERATOR = "tools/reference/.venv/bin/python tools/reference/make_train_goldens.py"
CTX = 77
PLACEHOLDER = "<thumbs-up>"
NUM_VECTORS = 2
INITIALIZER = "hand"
TEMPLATES = ["a photo of a {}", "a rendering of a {}"]  # imagenet_templates_small[0], [1]
TIMESTEPS = [17, 803]
BATCH = 2
GRAD_ACCUM = 1
BASE_LR = 5e-4
LR = BASE_LR * GRAD_ACCUM * BATCH * 1  # --scale_lr: lr * grad_accum * batch * num_processes = 1e-3
BETAS = (0.9, 0.999)
WEIGHT_DECAY = 1e-2
ADAM_EPS = 1e-8
N_STEPS = 3
VERSIONS = {"sd1": dict(seed=51, pad_id=49407), "sd2": dict(seed=52, pad_id=0)}


def tokenize(tok, text, pad_id):
    """textual_inversion.py's tokenizer call; pad_id 0 = open_clip zero padding (see README)."""
    ids = tok(text, padding="max_length", truncation=True, max_length=CTX).input_ids
    n = ids.index(49407) + 1  # first EOS (the prompts here are short)
    if pad_id != 49407:
        ids = ids[:n] + [pad_id] * (CTX - n)
    return ids, n


class TriggerEmbedding(torch.nn.Module):
    """Token embedding = frozen rows 0..49407 + a separate trainable [2,16] parameter (the
    'AdamW on the trigger rows only' cross-check)."""

    def __init__(self, base, trig):
        super().__init__()
        self.register_buffer("base", base)
        self.trig = torch.nn.Parameter(trig)

    @property
    def weight(self):
        return torch.cat([self.base, self.trig], 0)

    def forward(self, ids):
        return F.embedding(ids, self.weight)


def load_models(dd):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    from transformers import CLIPTextModel
    te = CLIPTextModel.from_pretrained(os.path.join(dd, "text_encoder"), attn_implementation="eager")
    unet = UNet2DConditionModel.from_pretrained(dd, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(dd, subfolder="vae")
    unet.set_attn_processor(AttnProcessor())
    vae.set_attn_processor(AttnProcessor())
    sched = DDPMScheduler.from_pretrained(dd, subfolder="scheduler")  # as textual_inversion.py
    for m in (te, unet, vae):
        assert all(p.dtype == torch.float32 for p in m.parameters())
    return te, unet, vae, sched


def setup_text_encoder(te, tok):
    """textual_inversion.py: add tokens, resize, init from the initializer, freeze."""
    placeholder_tokens = [PLACEHOLDER] + [f"{PLACEHOLDER}_{i}" for i in range(1, NUM_VECTORS)]
    assert tok.add_tokens(placeholder_tokens) == NUM_VECTORS
    token_ids = tok.encode(INITIALIZER, add_special_tokens=False)
    assert len(token_ids) == 1
    init_id = token_ids[0]
    pids = tok.convert_tokens_to_ids(placeholder_tokens)
    assert pids == [49408, 49409], pids
    torch.manual_seed(0)  # resize_token_embeddings' mean_resizing draws from the global RNG; overwritten below
    te.resize_token_embeddings(len(tok))
    token_embeds = te.get_input_embeddings().weight.data
    with torch.no_grad():
        for token_id in pids:
            token_embeds[token_id] = token_embeds[init_id].clone()
    te.text_model.encoder.requires_grad_(False)
    te.text_model.final_layer_norm.requires_grad_(False)
    te.text_model.embeddings.position_embedding.requires_grad_(False)
    return placeholder_tokens, pids, init_id


def make_batch(V, tok, vae, sched, placeholder_tokens, pad_id):
    g = torch.Generator().manual_seed(V["seed"])
    # two fixed random RGB 64x64 uint8 images, converted as TextualInversionDataset does
    images_u8 = torch.randint(0, 256, (BATCH, 64, 64, 3), generator=g, dtype=torch.int64).to(torch.uint8)
    px = torch.from_numpy((images_u8.numpy() / 127.5 - 1.0).astype(np.float32)).permute(0, 3, 1, 2).contiguous()
    placeholder_string = " ".join(placeholder_tokens)  # tok.convert_ids_to_tokens(placeholder_token_ids)
    prompts = [t.format(placeholder_string) for t in TEMPLATES]
    ids, ns = [], []
    for p in prompts:
        i, n = tokenize(tok, p, pad_id)
        ids.append(i)
        ns.append(n)
    input_ids = torch.tensor(ids, dtype=torch.int64)
    with torch.no_grad():
        dist = vae.encode(px).latent_dist
        state = g.get_state()
        eps = torch.randn(dist.mean.shape, generator=g)
        g.set_state(state)
        sample = dist.sample(generator=g)
        assert torch.equal(sample, dist.mean + dist.std * eps)
        latents = sample * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=g)  # textual_inversion.py: randn_like(latents)
        timesteps = torch.tensor(TIMESTEPS, dtype=torch.int64)
        noisy = sched.add_noise(latents, noise, timesteps)
        if sched.config.prediction_type == "epsilon":
            target = noise
        elif sched.config.prediction_type == "v_prediction":
            target = sched.get_velocity(latents, noise, timesteps)
        else:
            raise ValueError(sched.config.prediction_type)
    # float32 bit checks of the formulas the C side reproduces
    f = np.float32
    m, s, e = dist.mean.numpy(), dist.std.numpy(), eps.numpy()
    assert np.array_equal(latents.numpy(), ((m + s * e).astype(f) * f(0.18215)).astype(f))
    ac = sched.alphas_cumprod.numpy().astype(f)[TIMESTEPS]
    sa = np.sqrt(ac).astype(f)[:, None, None, None]
    sb = np.sqrt((f(1) - ac).astype(f)).astype(f)[:, None, None, None]
    L, N = latents.numpy(), noise.numpy()
    assert np.array_equal(noisy.numpy(), (sa * L).astype(f) + (sb * N).astype(f))
    if sched.config.prediction_type == "v_prediction":
        assert np.array_equal(target.numpy(), (sa * N).astype(f) - (sb * L).astype(f))
    return dict(images_u8=images_u8, pixel_values=px, prompts=prompts, n_tokens=ns, input_ids=input_ids,
                vae_mean=dist.mean.contiguous(), vae_logvar=dist.logvar.contiguous(), vae_std=dist.std.contiguous(),
                vae_eps=eps, latents=latents, noise=noise, timesteps=timesteps, noisy_latents=noisy,
                target=target.contiguous(), alphas_cumprod_t=sched.alphas_cumprod[timesteps].float().contiguous())


def forward_loss(te, unet, batch, capture=None):
    """One textual_inversion.py forward: encoder_hidden_states, pred, loss."""
    cap = {}
    if capture is not None:
        def hook(mod, inp, out):
            out.retain_grad()
            cap["tok_emb"] = out
        h = te.text_model.embeddings.token_embedding.register_forward_hook(hook)
    ehs = te(batch["input_ids"])[0]
    if capture is not None:
        h.remove()
        ehs.retain_grad()
    pred = unet(batch["noisy_latents"], batch["timesteps"], ehs).sample
    loss = F.mse_loss(pred.float(), batch["target"].float(), reduction="mean")
    return loss, ehs, pred, cap


def run_steps(te, unet, batch, params, get_rows, restore):
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, eps=ADAM_EPS)
    out = []
    for _ in range(N_STEPS):
        loss, _, _, _ = forward_loss(te, unet, batch)
        loss.backward()
        grad = get_rows(params[0].grad).clone()
        opt.step()
        st = opt.state[params[0]]
        exp_avg, exp_avg_sq = get_rows(st["exp_avg"]).clone(), get_rows(st["exp_avg_sq"]).clone()
        opt.zero_grad()
        restore()
        out.append(dict(loss=loss.detach().clone(), grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
                        rows=get_rows(params[0].data).clone(), step=float(st["step"])))
    return out


def emulate_adamw(steps, rows0):
    """numpy float32 re-implementation of torch 2.5.1 _single_tensor_adamw (the CPU default) on the
    trigger rows; returns per-step max |diff| and mismatch counts for the variants checked."""
    f = np.float32
    b1, b2 = BETAS

    def fma(a, b, c):  # float32 fma via exact double product (double rounding is harmless here)
        return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(f)

    res = {}
    for variant in ("fma", "no_fma"):
        p = rows0.numpy().astype(f).copy()
        m = np.zeros_like(p)
        v = np.zeros_like(p)
        mism = []
        for k, s in enumerate(steps, start=1):
            g = s["grad"].numpy()
            p = (p * f(1 - LR * WEIGHT_DECAY)).astype(f)
            w = f(1 - b1)
            v = (v * f(b2)).astype(f)
            vg = (f(1 - b2) * g).astype(f)
            if variant == "fma":  # what the vectorized CPU kernels compute (contracted to FMA)
                m = fma(np.full_like(p, w), (g - m).astype(f), m)  # lerp_: fmadd(w, g - m, m)
                v = fma(vg, g, v)                                  # addcmul_: fma(value * g, g, v)
            else:
                m = (m + (w * (g - m).astype(f)).astype(f)).astype(f)
                v = (v + (vg * g).astype(f)).astype(f)
            bc1 = 1 - b1 ** k
            bc2 = 1 - b2 ** k
            step_size = LR / bc1
            denom = ((np.sqrt(v).astype(f) / f(bc2 ** 0.5)).astype(f) + f(ADAM_EPS)).astype(f)
            p = (p + ((f(-step_size) * m).astype(f) / denom).astype(f)).astype(f)
            mism.append(dict(step=k,
                             exp_avg=int((m != s["exp_avg"].numpy()).sum()),
                             exp_avg_sq=int((v != s["exp_avg_sq"].numpy()).sum()),
                             rows=int((p != s["rows"].numpy()).sum()),
                             rows_maxdiff=float(np.abs(p - s["rows"].numpy()).max())))
            # continue from torch's state so that each step is checked on its own
            p, m, v = s["rows"].numpy().copy(), s["exp_avg"].numpy().copy(), s["exp_avg_sq"].numpy().copy()
        res[variant] = mism
    return res


def make_version(name, out_dir, vocab, generator):
    V = VERSIONS[name]
    dd = os.path.join(clip_vocab.REPO, "tests", "golden", name, "diffusers")
    pad_id = V["pad_id"]

    te, unet, vae, sched = load_models(dd)
    tok = clip_vocab.load_tokenizer(vocab)  # pad_token <|endoftext|> = 49407
    tok.model_max_length = CTX
    placeholder_tokens, pids, init_id = setup_text_encoder(te, tok)
    if name == "sd2":  # the HF SD2 tokenizer convention (pad_token "!" = id 0) gives the same ids
        tok2 = clip_vocab.load_tokenizer(vocab, pad_token="!")
        tok2.model_max_length = CTX
        tok2.add_tokens(placeholder_tokens)
        assert tok2.pad_token_id == 0
    emb = te.get_input_embeddings()
    assert emb.weight.shape == (49410, 16)
    orig = emb.weight.data.clone()
    trigger_init = orig[49408:49410].clone()
    trainable = sorted(n for n, p in te.named_parameters() if p.requires_grad)
    frozen_te = sorted(n for n, p in te.named_parameters() if not p.requires_grad)
    assert trainable == ["text_model.embeddings.token_embedding.weight"], trainable
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    te.train()  # textual_inversion.py; CLIP dropout/attention_dropout are 0, so = eval
    assert te.config.attention_dropout == 0 and not any(isinstance(m, torch.nn.Dropout) and m.p for m in te.modules())
    assert not any(isinstance(m, torch.nn.Dropout) and m.p for m in unet.modules())

    batch = make_batch(V, tok, vae, sched, placeholder_tokens, pad_id)
    if name == "sd2":
        for p, i in zip(batch["prompts"], batch["input_ids"].tolist()):
            assert tok2(p, padding="max_length", truncation=True, max_length=CTX).input_ids == i
    ids = batch["input_ids"]
    for row in ids.tolist():
        assert row.count(49408) == 1 and row.count(49409) == 1 and row.index(49409) == row.index(49408) + 1

    # ---- grads: one forward/backward on the real (whole-matrix) setup
    loss, ehs, pred, cap = forward_loss(te, unet, batch, capture=True)
    loss.backward()
    grad_rows = emb.weight.grad[49408:49410].clone()
    # d loss / d trigger rows = sum over the positions holding the id of d loss / d token-embedding output
    ge = cap["tok_emb"].grad
    for j, tid in enumerate(pids):
        s = sum(ge[b, ids[b].tolist().index(tid)] for b in range(BATCH))
        assert torch.allclose(s, grad_rows[j], atol=0, rtol=1e-6)
    emb.weight.grad = None
    # cross-check: the loss of an independent recomputation with pred from a leaf ehs (UNet backward alone)
    ehs_leaf = ehs.detach().clone().requires_grad_(True)
    pred2 = unet(batch["noisy_latents"], batch["timesteps"], ehs_leaf).sample
    loss2 = F.mse_loss(pred2.float(), batch["target"].float(), reduction="mean")
    loss2.backward()
    assert torch.equal(loss2, loss) and torch.equal(ehs_leaf.grad, ehs.grad)
    # d loss / d pred = 2 (pred - target) / numel
    gmin = grad_rows.abs().min().item()
    gmax = grad_rows.abs().max().item()

    grads = {k: batch[k] for k in ("images_u8", "pixel_values", "input_ids", "vae_mean", "vae_logvar", "vae_std",
                                   "vae_eps", "latents", "noise", "timesteps", "noisy_latents", "target",
                                   "alphas_cumprod_t")}
    grads.update(trigger_init=trigger_init, encoder_hidden_states=ehs.detach().contiguous(),
                 pred=pred.detach().contiguous(), loss=loss.detach().reshape(()).clone(),
                 grad_encoder_hidden_states=ehs.grad.contiguous(), grad_token_embeds=ge.contiguous(),
                 grad_trigger=grad_rows.contiguous())
    for k, v in grads.items():
        assert v.dtype in (torch.float32, torch.int64, torch.uint8), (k, v.dtype)

    common_meta = {
        "generator": generator,
        "pipeline": f"tests/golden/{name}/diffusers (fp32; CLIPTextModel attn_implementation='eager'; "
                    "UNet and VAE set_attn_processor(AttnProcessor()))",
        "placeholder_tokens": json.dumps(placeholder_tokens), "placeholder_ids": json.dumps(pids),
        "initializer_token": INITIALIZER, "initializer_id": str(init_id),
        "prompts": json.dumps(batch["prompts"]), "n_tokens": json.dumps(batch["n_tokens"]),
        "pad_id": str(pad_id), "timesteps": json.dumps(TIMESTEPS),
        "prediction_type": sched.config.prediction_type,
        "scaling_factor": str(vae.config.scaling_factor),
        "seed": f"torch.Generator().manual_seed({V['seed']}): images_u8 = randint(0,256,[2,64,64,3]) (int64 -> u8), "
                "vae_eps = randn([2,4,16,16]) (DiagonalGaussianDistribution.sample(generator)), "
                "noise = randn([2,4,16,16])",
        "trainable": json.dumps(trainable), "frozen_text_encoder": json.dumps(frozen_te),
    }
    save_file(grads, os.path.join(out_dir, f"grads_{name}.safetensors"), metadata=common_meta)

    # ---- adamw: 3 steps over the whole embedding matrix + restore (textual_inversion.py)
    index_no_updates = torch.ones((len(tok),), dtype=torch.bool)
    index_no_updates[min(pids): max(pids) + 1] = False
    assert int((~index_no_updates).sum()) == 2

    def restore():
        with torch.no_grad():
            emb.weight[index_no_updates] = orig[index_no_updates]

    full = run_steps(te, unet, batch, [emb.weight], lambda t: t[49408:49410], restore)
    assert torch.equal(emb.weight.data[:49408], orig[:49408])
    assert torch.equal(full[0]["loss"], loss) and torch.equal(full[0]["grad"], grad_rows)

    # ---- cross-check: AdamW on a separate [2,16] parameter holding only the trigger rows
    te_b, unet_b, _, _ = load_models(dd)
    tok_b = clip_vocab.load_tokenizer(vocab)
    setup_text_encoder(te_b, tok_b)
    te_b.requires_grad_(False)
    unet_b.requires_grad_(False)
    trig_mod = TriggerEmbedding(orig[:49408].clone(), trigger_init.clone())
    te_b.text_model.embeddings.token_embedding = trig_mod
    sep = run_steps(te_b, unet_b, batch, [trig_mod.trig], lambda t: t, lambda: None)
    same = all(torch.equal(a[k], b[k]) for a, b in zip(full, sep) for k in ("loss", "grad", "exp_avg", "exp_avg_sq",
                                                                           "rows"))
    sep_maxdiff = max((a["rows"] - b["rows"]).abs().max().item() for a, b in zip(full, sep))

    emu = emulate_adamw(full, trigger_init)

    adam = {"rows_init": trigger_init.contiguous(), "input_ids": ids}
    for k, s in enumerate(full, start=1):
        adam[f"step{k}.loss"] = s["loss"].reshape(()).clone()
        adam[f"step{k}.grad"] = s["grad"].contiguous()
        adam[f"step{k}.exp_avg"] = s["exp_avg"].contiguous()
        adam[f"step{k}.exp_avg_sq"] = s["exp_avg_sq"].contiguous()
        adam[f"step{k}.rows"] = s["rows"].contiguous()
    meta = dict(common_meta)
    meta.update({
        "optimizer": json.dumps({"class": "torch.optim.AdamW", "lr": LR, "betas": list(BETAS),
                                 "weight_decay": WEIGHT_DECAY, "eps": ADAM_EPS, "foreach": None, "fused": None,
                                 "implementation": "_single_tensor_adamw (CPU default: foreach is CUDA/XPU-only)",
                                 "params": "text_encoder.get_input_embeddings().parameters() = [weight 49410x16]"}),
        "lr": repr(LR),
        "restore": "after optimizer.step() and zero_grad(): weight[index_no_updates] = orig[index_no_updates], "
                   "index_no_updates = all rows except min(ids)..max(ids) = 49408..49409",
        "batch": "the grads_<v> batch every step (same latents, noise, timesteps); only the trigger rows change",
        "separate_param_identical": str(same),
    })
    save_file(adam, os.path.join(out_dir, f"adamw_{name}.safetensors"), metadata=meta)

    # loads back
    for fn, t in ((f"grads_{name}.safetensors", grads), (f"adamw_{name}.safetensors", adam)):
        back = load_file(os.path.join(out_dir, fn))
        assert set(back) == set(t) and all(torch.equal(back[k], t[k].contiguous()) for k in t)

    print(f"{name}: ids {ids[0, :12].tolist()} / {ids[1, :12].tolist()} n_tokens {batch['n_tokens']}")
    print(f"{name}: loss {loss.item():.9g}  |grad_trigger| min {gmin:.3g} max {gmax:.3g}  "
          f"|grad_ehs| max {ehs.grad.abs().max().item():.3g}  latents |max| {batch['latents'].abs().max().item():.3g}")
    print(f"{name}: step losses {[round(s['loss'].item(), 9) for s in full]}  "
          f"rows moved {[(s['rows'] - trigger_init).abs().max().item() for s in full]}")
    print(f"{name}: separate-parameter AdamW identical: {same} (max row diff {sep_maxdiff:.3g})")
    for var, mm in emu.items():
        print(f"{name}: numpy AdamW emulation [{var}] mismatches per step: {mm}")
    return same, emu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", default=clip_vocab.default_vocab_path())
    ap.add_argument("--out", default=os.path.join(clip_vocab.REPO, "tests", "golden"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    import diffusers
    import transformers
    diffusers.utils.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    out_dir = os.path.join(a.out, "train")
    os.makedirs(out_dir, exist_ok=True)
    gen = GENERATOR if a.out == os.path.join(clip_vocab.REPO, "tests", "golden") else f"{GENERATOR} --out {a.out}"
    clip_vocab.write_tokenizer_files(a.vocab, clip_vocab.default_out_dir())
    print(f"torch {torch.__version__} cpu capability {torch.backends.cpu.get_cpu_capability()}")
    for name in sorted(VERSIONS):
        make_version(name, out_dir, a.vocab, gen)
    for f in sorted(os.listdir(out_dir)):
        print(f"  train/{f} {os.path.getsize(os.path.join(out_dir, f))}")


if __name__ == "__main__":
    main()
