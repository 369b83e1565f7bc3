"""One textual-inversion training step, coin against diffusers' textual_inversion.py, on the
same machine: full-size random-weight SD 1.5 (the UNet, VAE and text encoder that
make_fullsize.py and the UNet / VAE benchmarks left in tools/reference/out/), 512x512, batch 1,
fp32, with and without gradient checkpointing.  Prints the seconds per step, the ratio
coin / diffusers and the peak resident memory of each.

diffusers' side is the loop body of examples/textual_inversion/textual_inversion.py (it is not
installed as a module, so its step is written out here, step for step): VAE encode and sample
(every step, as the script does), noise, timesteps, add_noise, text encoder, UNet, MSE, backward
into the token embedding, AdamW, restore of the other rows.  coin's side is `coin train`, timed as
(time of N+2 steps - time of 2 steps) / N, so set-up and image encoding cancel out.

Run:  sh tools/bench/bench_train.sh [--steps 3] [--threads N]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "tools", "reference", "out")
PIPE = os.path.join(OUT, "sd15_train")
IMAGES = os.path.join(OUT, "train_images")


def build_pipeline():
    """A diffusers folder from the full-size pieces (symlinks and one conversion)."""
    import torch
    from safetensors.torch import load_file, save_file
    from PIL import Image
    te = os.path.join(PIPE, "text_encoder")
    os.makedirs(te, exist_ok=True)
    if not os.path.exists(os.path.join(te, "model.safetensors")):
        sd = load_file(os.path.join(OUT, "sd1_full.safetensors"))
        p = "cond_stage_model.transformer."
        save_file({k[len(p):]: v.float().contiguous() for k, v in sd.items()
                   if k.startswith(p) and not k.endswith("position_ids")},
                  os.path.join(te, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(OUT, "sd1_full_config", "text_encoder", "config.json")) as f:
            cfg = f.read()
        with open(os.path.join(te, "config.json"), "w") as f:
            f.write(cfg)
    for name, src in (("unet", os.path.join(OUT, "unet_sd15_full", "unet")),
                      ("vae", os.path.join(OUT, "vae_full", "vae")),
                      ("tokenizer", os.path.join(OUT, "clip_tokenizer"))):
        dst = os.path.join(PIPE, name)
        if not os.path.exists(dst):
            os.symlink(src, dst)
    os.makedirs(os.path.join(PIPE, "scheduler"), exist_ok=True)
    with open(os.path.join(PIPE, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump({"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                   "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
                   "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False}, f)
    os.makedirs(IMAGES, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        path = os.path.join(IMAGES, f"img{i}.png")
        if not os.path.exists(path):
            a = (torch.rand(512, 512, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(a).save(path)


def diffusers_steps(n, checkpointing, threads):
    """Times n steps after one warm-up; runs in its own process (see main)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer
    torch.set_num_threads(threads)
    torch.manual_seed(42)
    tok = CLIPTokenizer.from_pretrained(PIPE, subfolder="tokenizer")
    te = CLIPTextModel.from_pretrained(PIPE, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(PIPE, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(PIPE, subfolder="unet")
    sched = DDPMScheduler.from_pretrained(PIPE, subfolder="scheduler")
    tok.add_tokens(["<tbench>"])
    tid = tok.convert_tokens_to_ids("<tbench>")
    te.resize_token_embeddings(len(tok))
    emb = te.get_input_embeddings().weight
    with torch.no_grad():
        emb[tid] = emb[tok.convert_tokens_to_ids("hand</w>")]
    vae.requires_grad_(False)
    unet.requires_grad_(False)
    te.text_model.encoder.requires_grad_(False)
    te.text_model.final_layer_norm.requires_grad_(False)
    te.text_model.embeddings.position_embedding.requires_grad_(False)
    if checkpointing:
        unet.enable_gradient_checkpointing()
        te.gradient_checkpointing_enable()
    unet.train()
    te.train()
    opt = torch.optim.AdamW(te.get_input_embeddings().parameters(), lr=5e-4, betas=(0.9, 0.999),
                            weight_decay=1e-2, eps=1e-8)
    orig = emb.data.clone()
    img = np.array(Image.open(os.path.join(IMAGES, "img0.png")).convert("RGB"))
    px = torch.from_numpy((img / 127.5 - 1.0).astype(np.float32)).permute(2, 0, 1)[None]
    ids = tok("a photo of a <tbench>", padding="max_length", max_length=77, truncation=True,
              return_tensors="pt").input_ids
    times = []
    for step in range(n + 1):
        t0 = time.perf_counter()
        latents = vae.encode(px).latent_dist.sample().detach() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        ts = torch.randint(0, 1000, (1,))
        noisy = sched.add_noise(latents, noise, ts)
        ehs = te(ids)[0]
        pred = unet(noisy, ts, ehs).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            keep = torch.ones(len(tok), dtype=torch.bool)
            keep[tid] = False
            emb[keep] = orig[keep]
        times.append(time.perf_counter() - t0)
    return times[1:]


def coin_time(coin, steps, checkpointing, threads, out):
    # --foreground: the training runs in this process, so /usr/bin/time sees its memory (a
    # queued job would run in a detached worker); a private COIN_HOME keeps the user's ledger clean.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), COIN_HOME=out + "-home")
    cmd = [coin, "train", "--foreground", "--model", PIPE, "--images", IMAGES, "--token", "<tbench>", "--init", "hand",
           "--steps", str(steps), "--batch", "1", "--resolution", "512", "--previews", "0",
           "--save-every", "1000", "--out", out]
    if checkpointing:
        cmd.append("--grad-checkpointing")
    subprocess.run(["rm", "-rf", out, out + "-home"], check=True)
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"coin failed: {r.stderr[-2000:]}")
    return time.perf_counter() - t0, int(r.stderr.strip().splitlines()[-1]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--coin", default=os.path.join(ROOT, "bin", "coin"))
    ap.add_argument("--diffusers-only", type=int, default=-1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.diffusers_only >= 0:
        times = diffusers_steps(a.steps, a.diffusers_only, a.threads)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"times": times, "peak": peak}))
        return
    build_pipeline()
    rows = []
    for ckpt in (0, 1):
        r = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, __file__, "--steps", str(a.steps),
                            "--threads", str(a.threads), "--diffusers-only", str(ckpt)],
                           capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"diffusers failed: {r.stderr[-3000:]}")
        d = json.loads(r.stdout.strip().splitlines()[-1])
        d_peak = int(r.stderr.strip().splitlines()[-1]) / 1024
        d_step = sorted(d["times"])[len(d["times"]) // 2]
        out = os.path.join(OUT, "bench_train_run")
        t_short, peak = coin_time(a.coin, 2, ckpt, a.threads, out)
        t_long, peak2 = coin_time(a.coin, 2 + a.steps, ckpt, a.threads, out)
        c_step = (t_long - t_short) / a.steps
        rows.append((ckpt, d_step, c_step, d_peak, max(peak, peak2)))
    print(f"one textual-inversion step, SD1.5-shaped random weights, 512x512, batch 1, fp32, "
          f"{a.threads} threads ({a.steps} steps timed per side)")
    print("| gradient checkpointing | diffusers s/step | coin s/step | coin/diffusers | diffusers peak MiB | coin peak MiB |")
    print("|---|---|---|---|---|---|")
    for ckpt, d, c, dp, cp in rows:
        print(f"| {'on' if ckpt else 'off'} | {d:.2f} | {c:.2f} | {c / d:.2f} | {dp:.0f} | {cp:.0f} |")


if __name__ == "__main__":
    main()
