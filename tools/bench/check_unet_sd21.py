"""Full-size check of coin's UNet on the SD 2.1 architecture at 768x768 (96x96 latents):
a random-weight UNet2DConditionModel with SD 2.1's config (64-wide heads as attention_head_dim
[5, 10, 20, 20], linear projections, cross-attention width 1024, upcast attention), one forward
in diffusers and one in coin (build/bench_unet, see bench_unet.sh), same weights and inputs;
prints both times and the max abs difference.  Not part of make test (3.5 GB of weights).

Run:  sh tools/bench/bench_unet.sh --no-torch --runs 0 >/dev/null 2>&1 || true   # builds build/bench_unet
      tools/reference/.venv/bin/python tools/bench/check_unet_sd21.py
"""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tools", "reference", "out", "unet_sd21_full")
SD21 = dict(sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, upcast_attention=True)


def main():
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file, save_file
    torch.set_num_threads(os.cpu_count())
    inputs = os.path.join(OUT, "inputs.safetensors")
    if not os.path.exists(inputs):
        torch.manual_seed(0)
        m = UNet2DConditionModel(**SD21).eval()
        m.save_pretrained(os.path.join(OUT, "unet"), safe_serialization=True)
        save_file({"x": torch.randn(1, 4, 96, 96), "ctx": torch.randn(1, 77, 1024),
                   "t": torch.tensor([500.0])}, inputs)
        del m
    inp = load_file(inputs)
    m = UNet2DConditionModel.from_pretrained(os.path.join(OUT, "unet")).eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = m(inp["x"], inp["t"], encoder_hidden_states=inp["ctx"]).sample
    t_ref = time.perf_counter() - t0
    del m
    out_path = os.path.join(OUT, "coin_out.safetensors")
    r = subprocess.run([os.path.join(ROOT, "build", "bench_unet"), OUT, inputs, out_path, "1", "0"],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr)
    got = load_file(out_path)["out"]
    print(json.dumps({"diffusers_s": round(t_ref, 2), "coin": r.stderr.strip().splitlines()[-1],
                      "max_abs_diff": float((got - ref).abs().max()),
                      "out_abs_max": float(ref.abs().max())}))


if __name__ == "__main__":
    main()
