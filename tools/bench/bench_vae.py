#!/usr/bin/env python3
"""Benchmark coin's VAE decode against diffusers' AutoencoderKL (CPU, fp32, batch 1).

A full-size random-weight SD VAE (block_out_channels [128,256,512,512], layers_per_block 2,
norm_num_groups 32, latent 4: SD1.5 and SD2.1 share it) is made on first use in
tools/reference/out/vae_full/vae/ (config.json + diffusion_pytorch_model.safetensors, F32,
diffusers' default init under torch.manual_seed(0)), with inputs
tools/reference/out/vae_full_inputs_<S>.safetensors: z = randn(1,4,S/8,S/8) and
image = rand(1,3,S,S)*2-1 (torch.Generator().manual_seed(S)).

Each side runs in its own process, so each peak RSS (/proc/self/status VmHWM) is its own:
  diffusers: AutoencoderKL.from_pretrained, torch.set_num_threads(T), torch.no_grad,
             median of N decodes (default attention processor, SDPA);
  coin:      tools/bench/bench_vae MODEL IN OUT N (see bench_vae.c / bench_vae.sh).
Prints decode time, RSS after load and peak RSS for both, and the max abs difference of the
decoded images (and of the encoded mean/logvar with --encode).

Usage (repo root; normally via tools/bench/bench_vae.sh, which builds the C side):
    tools/reference/.venv/bin/python tools/bench/bench_vae.py [--sizes 512,768] [--runs 1]
        [--threads $(nproc)] [--encode | --decoder-only] [--no-torch] [--no-coin]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(REPO, "tools", "reference", "out")
MODEL = os.path.join(OUT, "vae_full")
sys.path.insert(0, os.path.join(REPO, "tools", "reference"))

CONFIG = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
              layers_per_block=2, act_fn="silu", latent_channels=4, norm_num_groups=32,
              sample_size=512, scaling_factor=0.18215)
COIN_LINE = re.compile(r"vae: load ([0-9.]+) ms, decode median ([0-9.]+) ms over ([0-9]+) runs, "
                       r"rss after load ([0-9.]+) MiB, peak rss ([0-9.]+) MiB"
                       r"(?:, encode median ([0-9.]+) ms)?")


def peak_mib():
    # VmHWM, not getrusage's ru_maxrss, which survives fork + exec and so would start every
    # child at the size of this (parent) process.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return -1.0


def make_inputs(size):
    import torch
    from st_write import save
    path = os.path.join(OUT, f"vae_full_inputs_{size}.safetensors")
    if not os.path.exists(path):
        g = torch.Generator().manual_seed(size)
        z = torch.randn(1, 4, size // 8, size // 8, generator=g)
        image = torch.rand(1, 3, size, size, generator=g) * 2 - 1
        save({"z": z, "image": image}, path, {"generator": "tools/bench/bench_vae.py"})
    return path


def make_model():
    if os.path.exists(os.path.join(MODEL, "vae", "diffusion_pytorch_model.safetensors")):
        return
    import torch
    from diffusers import AutoencoderKL
    print("bench: making the full-size random VAE in", MODEL, file=sys.stderr)
    torch.manual_seed(0)
    AutoencoderKL(**CONFIG).save_pretrained(os.path.join(MODEL, "vae"), safe_serialization=True)


def worker_torch(args):
    """Runs in a child process: decode with diffusers, write the outputs, print JSON."""
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file
    from st_write import save
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    vae = AutoencoderKL.from_pretrained(os.path.join(MODEL, "vae")).eval()
    load_ms = (time.perf_counter() - t0) * 1e3
    rss_loaded = peak_mib()
    inputs = load_file(args.inputs)
    times, out = [], {}
    with torch.no_grad():
        for _ in range(args.runs):
            t0 = time.perf_counter()
            out["decoded"] = vae.decode(inputs["z"]).sample
            times.append((time.perf_counter() - t0) * 1e3)
        enc_ms = None
        if args.encode:
            t0 = time.perf_counter()
            dist = vae.encode(inputs["image"]).latent_dist
            enc_ms = (time.perf_counter() - t0) * 1e3
            out["mean"], out["logvar"] = dist.mean, dist.logvar
    save({k: v.contiguous() for k, v in out.items()}, args.worker_out)
    times.sort()
    print(json.dumps({"load_ms": load_ms, "decode_ms": times[len(times) // 2], "rss_loaded": rss_loaded,
                      "rss_peak": peak_mib(), "encode_ms": enc_ms}))


def run_torch(args, size, inputs, out_path):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--inputs", inputs, "--worker-out", out_path,
           "--runs", str(args.runs), "--threads", str(args.threads)] + (["--encode"] if args.encode else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_coin(args, size, inputs, out_path):
    cmd = [args.coin, MODEL, inputs, out_path, str(args.runs)]
    if args.encode:
        cmd.append("--encode")
    elif args.decoder_only:
        cmd.append("--decoder-only")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        sys.exit(f"bench: {' '.join(cmd)} failed:\n{res.stderr}")
    m = COIN_LINE.search(res.stdout)
    if not m:
        sys.exit(f"bench: unexpected output from bench_vae: {res.stdout!r}")
    return {"load_ms": float(m[1]), "decode_ms": float(m[2]), "rss_loaded": float(m[4]),
            "rss_peak": float(m[5]), "encode_ms": float(m[6]) if m[6] else None}


def max_diff(a_path, b_path, name):
    from safetensors.torch import load_file
    a, b = load_file(a_path)[name], load_file(b_path)[name]
    return (a - b).abs().max().item(), b.abs().max().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--coin", default=os.path.join(REPO, "build", "bench_vae"))
    ap.add_argument("--encode", action="store_true")
    ap.add_argument("--decoder-only", action="store_true",
                    help="coin loads only the decoder's weights, as sampling does")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-coin", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker_torch(args)
    os.makedirs(OUT, exist_ok=True)
    make_model()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            inputs = make_inputs(size)
            t_out, c_out = os.path.join(tmp, f"torch_{size}.safetensors"), os.path.join(tmp, f"coin_{size}.safetensors")
            t = None if args.no_torch else run_torch(args, size, inputs, t_out)
            c = None if args.no_coin else run_coin(args, size, inputs, c_out)
            diffs = {}
            if t and c:
                for name in ["decoded"] + (["mean", "logvar"] if args.encode else []):
                    diffs[name] = max_diff(c_out, t_out, name)
            rows.append((size, t, c, diffs))
    print(f"VAE decode, batch 1, fp32, {args.threads} threads, median of {args.runs}")
    print(f"{'size':>5} {'side':>9} {'load ms':>9} {'decode ms':>10} {'encode ms':>10} {'RSS load MiB':>13} {'peak RSS MiB':>13}")
    for size, t, c, diffs in rows:
        for side, r in (("diffusers", t), ("coin", c)):
            if r:
                enc = f"{r['encode_ms']:.0f}" if r["encode_ms"] else "-"
                print(f"{size:>5} {side:>9} {r['load_ms']:>9.0f} {r['decode_ms']:>10.0f} {enc:>10} "
                      f"{r['rss_loaded']:>13.0f} {r['rss_peak']:>13.0f}")
        if t and c:
            print(f"{size:>5} coin/diffusers decode time {c['decode_ms'] / t['decode_ms']:.2f}, "
                  f"peak RSS {c['rss_peak'] / t['rss_peak']:.2f}")
        for name, (d, mx) in diffs.items():
            print(f"{size:>5} {name}: max abs diff {d:.3g} (values up to {mx:.3g})")


if __name__ == "__main__":
    main()
