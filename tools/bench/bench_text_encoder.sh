#!/bin/sh
# Times coin's CLIP text-encoder forward against transformers' CLIPTextModel (CPU, fp32, batch 1)
# for full-size random SD1.5- and SD2.1-shaped models, on this machine in one run, and prints a
# table: transformers median ms, coin median ms, ratio coin/transformers, load times, and the max
# abs error of each against the reference hidden states.
#
# Usage (from anywhere):  sh tools/bench/bench_text_encoder.sh [extra args for bench_text_encoder.py]
#   e.g.  sh tools/bench/bench_text_encoder.sh --runs 10 --threads 2 --models sd1
# Needs: tools/reference/.venv (sh tools/reference/setup.sh) and bin/coin (make).
# The full-size models (~1 GB, ignored) are made on first use by tools/reference/make_fullsize.py.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
py="$root/tools/reference/.venv/bin/python"
out="$root/tools/reference/out"
[ -x "$py" ] || { echo "bench: $py missing; run: sh tools/reference/setup.sh" >&2; exit 1; }
need=
for f in sd1_full.safetensors sd2_full.safetensors sd1_full_reference.safetensors \
         sd2_full_reference.safetensors sd1_full_config/text_encoder/config.json \
         sd2_full_config/text_encoder/config.json; do
    [ -f "$out/$f" ] || need=1
done
if [ -n "$need" ]; then
    echo "bench: making the full-size random models (tools/reference/make_fullsize.py)" >&2
    (cd "$root" && "$py" tools/reference/make_fullsize.py)
fi
cd "$root"
exec "$py" tools/bench/bench_text_encoder.py --threads "${THREADS:-$(nproc)}" "$@"
