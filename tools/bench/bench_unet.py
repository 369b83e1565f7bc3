#!/usr/bin/env python3
"""Benchmark one guided UNet step: coin's unet_forward against diffusers' UNet2DConditionModel.

A classifier-free-guided sampling step runs the UNet once on a batch of 2 (unconditional and
conditional rows).  This times exactly that at 512x512 (64x64 latents) for a full-size,
random-weight SD1.5-shaped UNet (860M parameters, fp32, CPU), with the same weights and inputs on
both sides, on this machine in one run:

  diffusers: UNet2DConditionModel.from_pretrained(<folder>/unet), fp32, torch.set_num_threads(T),
             torch.no_grad; WARMUP untimed forwards, then the median of RUNS timed ones.  Run in a
             subprocess of its own so that its peak RSS (getrusage ru_maxrss) is its own.
  coin:      build/bench_unet (tools/bench/bench_unet.c, linked against build/libcoin.a) on the
             same folder, OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = T; it prints its load time,
             median and peak RSS, and writes its output, which is compared with diffusers'.

Prints both medians, the ratio coin/diffusers, both peak RSS figures and the max abs difference
of the outputs.

The model (3.4 GB, ignored by git) is made on first use in tools/reference/out/unet_sd15_full/:
unet/ (save_pretrained, safetensors) and inputs.safetensors (x [2,4,64,64] ~ N(0,1),
ctx [2,77,768] ~ N(0,1), t = [500, 500]), all from torch.manual_seed(0).

Usage (from the repo root; normally through tools/bench/bench_unet.sh):
    tools/reference/.venv/bin/python tools/bench/bench_unet.py \
        [--coin build/bench_unet] [--runs 3] [--warmup 1] [--threads $(nproc)] [--no-coin] [--no-torch]
"""
import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(REPO, "tools", "reference", "out", "unet_sd15_full")
COIN_LINE = re.compile(r"bench_unet: load ([0-9.]+) ms, forward median ([0-9.]+) ms over ([0-9]+) runs, "
                       r"peak RSS ([0-9.]+) MiB")

# diffusers' SD1.5 unet/config.json values (REFERENCE.md section 3, "Full-size configs").
SD15 = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)


def make_model():
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    torch.manual_seed(0)
    print("bench: making a random SD1.5-shaped UNet in", OUT, file=sys.stderr)
    m = UNet2DConditionModel(**SD15).eval()
    m.save_pretrained(os.path.join(OUT, "unet"), safe_serialization=True)
    x = torch.randn(2, 4, 64, 64)
    ctx = torch.randn(2, 77, 768)
    t = torch.tensor([500.0, 500.0])
    save_file({"x": x, "ctx": ctx, "t": t}, os.path.join(OUT, "inputs.safetensors"))


def torch_child(args):
    """Runs in its own process: times diffusers and saves its output."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file, save_file
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    m = UNet2DConditionModel.from_pretrained(os.path.join(OUT, "unet")).eval()
    load_ms = (time.perf_counter() - t0) * 1e3
    inp = load_file(os.path.join(OUT, "inputs.safetensors"))
    times = []
    with torch.no_grad():
        for i in range(args.warmup + args.runs):
            s = time.perf_counter()
            out = m(inp["x"], inp["t"], encoder_hidden_states=inp["ctx"]).sample
            ms = (time.perf_counter() - s) * 1e3
            print(f"bench: diffusers forward {i + 1}: {ms:.1f} ms{' (warm-up)' if i < args.warmup else ''}",
                  file=sys.stderr)
            if i >= args.warmup:
                times.append(ms)
    save_file({"out": out.contiguous()}, args.child_out)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"load_ms": load_ms, "median_ms": statistics.median(times), "rss_mib": rss}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coin", default=os.path.join(REPO, "build", "bench_unet"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-coin", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_out:
        torch_child(args)
        return

    if not os.path.exists(os.path.join(OUT, "inputs.safetensors")):
        make_model()
    tmp = tempfile.mkdtemp(prefix="bench_unet.")
    torch_out, coin_out = os.path.join(tmp, "torch.safetensors"), os.path.join(tmp, "coin.safetensors")
    res = {}
    if not args.no_torch:
        r = subprocess.run([sys.executable, __file__, "--child-out", torch_out, "--runs", str(args.runs),
                            "--warmup", str(args.warmup), "--threads", str(args.threads)],
                           stdout=subprocess.PIPE, text=True, check=True)
        res["diffusers"] = json.loads(r.stdout.strip().splitlines()[-1])
    if not args.no_coin:
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))
        r = subprocess.run([args.coin, OUT, os.path.join(OUT, "inputs.safetensors"), coin_out,
                            str(args.runs), str(args.warmup)], stdout=subprocess.PIPE, text=True, env=env,
                           check=True)
        m = COIN_LINE.search(r.stdout)
        if not m:
            sys.exit(f"bench: cannot parse coin's output: {r.stdout!r}")
        res["coin"] = {"load_ms": float(m.group(1)), "median_ms": float(m.group(2)), "rss_mib": float(m.group(4))}

    print(f"One guided UNet step: SD1.5-shaped random UNet, batch 2, 64x64 latents (512x512), fp32, "
          f"{args.threads} threads, median of {args.runs} after {args.warmup} warm-up")
    print(f"{'':10} {'median ms':>10} {'load ms':>9} {'peak RSS MiB':>13}")
    for k, v in res.items():
        print(f"{k:10} {v['median_ms']:10.1f} {v['load_ms']:9.1f} {v['rss_mib']:13.1f}")
    if "coin" in res and "diffusers" in res:
        from safetensors.torch import load_file
        a, b = load_file(torch_out)["out"], load_file(coin_out)["out"]
        print(f"ratio coin/diffusers: {res['coin']['median_ms'] / res['diffusers']['median_ms']:.3f}")
        print(f"max abs difference of the outputs: {(a - b).abs().max().item():.3g} "
              f"(output abs max {a.abs().max().item():.3g})")


if __name__ == "__main__":
    main()
