#!/usr/bin/env python3
"""Benchmark coin's CLIP text-encoder forward against transformers' CLIPTextModel (CPU, fp32).

For each full-size random model made by tools/reference/make_fullsize.py (SD1.5-shaped and
SD2.1-shaped single files in tools/reference/out/), on the same machine in one run:
  transformers: the single file loaded with diffusers' converter into CLIPTextModel (fp32),
                torch.set_num_threads(T), torch.no_grad, batch 1, 2 warm-up forwards, then the
                median of N timed forwards;
  coin:         `bin/coin encode --model M --prompt P --out F --repeat N`; coin prints to stderr
                `encode: forward median 123.4 ms over 10 runs (load 456.7 ms)`, which is parsed;
                F (safetensors, tensor "hidden_states" [1,77,D]) is compared with the reference
                hidden states (tools/reference/out/sdN_full_reference.safetensors, row of prompt P).
Prints a table with both medians, the ratio coin/transformers, coin's load time and coin's (and
transformers') max abs error against the reference.

Usage (from the repo root; normally through tools/bench/bench_text_encoder.sh):
    tools/reference/.venv/bin/python tools/bench/bench_text_encoder.py \
        [--coin bin/coin] [--models sd1,sd2] [--runs 10] [--warmup 2] [--threads $(nproc)] \
        [--prompt "a photo of a cat"] [--no-coin] [--no-torch]
coin is run with OMP_NUM_THREADS and COIN_THREADS set to --threads.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
REF = os.path.join(REPO, "tools", "reference")
sys.path.insert(0, REF)

COIN_LINE = re.compile(r"encode: forward median ([0-9.]+) ms over ([0-9]+) runs \(load ([0-9.]+) ms\)")
PAD = {"sd1": 49407, "sd2": 0}


def reference(out_dir, which, prompt):
    from safetensors import safe_open
    path = os.path.join(out_dir, f"{which}_full_reference.safetensors")
    with safe_open(path, "pt") as f:
        prompts = json.loads(f.metadata()["prompts"])
        if prompt not in prompts:
            sys.exit(f"bench: prompt {prompt!r} has no reference in {path}; choose one of {prompts}")
        i = prompts.index(prompt)
        return f.get_tensor("input_ids")[i:i + 1], f.get_tensor("hidden_states")[i:i + 1]


def bench_torch(out_dir, which, ids, ref_hs, runs, warmup):
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPTextModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    cfg_dir = os.path.join(out_dir, f"{which}_full_config")
    t0 = time.perf_counter()
    ckpt = load_file(os.path.join(out_dir, f"{which}_full.safetensors"))
    model = create_diffusers_clip_model_from_ldm(CLIPTextModel, ckpt, subfolder="text_encoder",
                                                 config=cfg_dir, local_files_only=True)
    del ckpt
    model = model.float().eval()
    load_ms = (time.perf_counter() - t0) * 1e3
    times = []
    with torch.no_grad():
        for i in range(warmup + runs):
            t = time.perf_counter()
            hs = model(input_ids=ids).last_hidden_state
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1e3)
    err = (hs.float() - ref_hs).abs().max().item()
    del model
    return statistics.median(times), load_ms, err


def bench_coin(coin, out_dir, which, prompt, ref_hs, runs, threads):
    from safetensors import safe_open
    model = os.path.join(out_dir, f"{which}_full.safetensors")
    with tempfile.TemporaryDirectory() as td:
        out = os.path.join(td, "hs.safetensors")
        cmd = [coin, "encode", "--model", model, "--prompt", prompt, "--out", out, "--repeat", str(runs)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), COIN_THREADS=str(threads))
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            return None, None, None, f"exit {p.returncode}: {p.stderr.strip()[-300:]}"
        m = COIN_LINE.search(p.stderr)
        if not m:
            return None, None, None, f"no 'encode: forward median' line in stderr: {p.stderr.strip()[-300:]}"
        fwd, n, load = float(m.group(1)), int(m.group(2)), float(m.group(3))
        note = "" if n == runs else f"coin reported {n} runs"
        try:
            with safe_open(out, "pt") as f:
                hs = f.get_tensor("hidden_states").float()
            if tuple(hs.shape) != tuple(ref_hs.shape):
                err, note = None, f"hidden_states shape {tuple(hs.shape)} != {tuple(ref_hs.shape)}"
            else:
                err = (hs - ref_hs).abs().max().item()
        except Exception as e:  # noqa: BLE001
            err, note = None, f"could not read {out}: {e}"
        return fwd, load, err, note


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--coin", default=os.path.join(REPO, "bin", "coin"))
    ap.add_argument("--out-dir", default=os.path.join(REF, "out"))
    ap.add_argument("--models", default="sd1,sd2")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt", default="a photo of a cat")
    ap.add_argument("--no-coin", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    a = ap.parse_args()

    import torch
    import transformers
    import diffusers
    torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()

    rows = []
    for which in a.models.split(","):
        ids, ref_hs = reference(a.out_dir, which, a.prompt)
        t_fwd = t_load = t_err = None
        if not a.no_torch:
            t_fwd, t_load, t_err = bench_torch(a.out_dir, which, ids, ref_hs, a.runs, a.warmup)
        c_fwd = c_load = c_err = None
        note = ""
        if not a.no_coin:
            if not os.access(a.coin, os.X_OK):
                note = f"{a.coin} not found (build it with make)"
            else:
                c_fwd, c_load, c_err, note = bench_coin(a.coin, a.out_dir, which, a.prompt, ref_hs, a.runs, a.threads)
        ratio = c_fwd / t_fwd if (c_fwd and t_fwd) else None
        rows.append((which, t_fwd, c_fwd, ratio, t_load, c_load, t_err, c_err, note))

    print(f"text encoder forward, CPU fp32, batch 1, prompt {a.prompt!r}, threads {a.threads}, "
          f"median of {a.runs} (transformers after {a.warmup} warm-ups), torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    hdr = ("model", "transformers ms", "coin ms", "coin/transf", "transf load ms", "coin load ms",
           "transf max err", "coin max err")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "|".join("---" for _ in hdr) + "|")
    for which, t_fwd, c_fwd, ratio, t_load, c_load, t_err, c_err, note in rows:
        print(f"| {which} | {fmt(t_fwd, '.1f')} | {fmt(c_fwd, '.1f')} | {fmt(ratio, '.2f')} | "
              f"{fmt(t_load, '.0f')} | {fmt(c_load, '.0f')} | {fmt(t_err, '.2e')} | {fmt(c_err, '.2e')} |")
    for r in rows:
        if r[-1]:
            print(f"note ({r[0]}): {r[-1]}")
    bad = [r for r in rows if not a.no_coin and (r[2] is None or r[7] is None)]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
