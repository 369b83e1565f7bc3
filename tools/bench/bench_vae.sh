#!/bin/sh
# Times coin's VAE decode against diffusers' AutoencoderKL (CPU, fp32, batch 1) on a full-size
# random-weight SD VAE, each in its own process, and prints decode time, RSS after load, peak RSS
# and the max abs difference of the decoded images (see bench_vae.py for the details).
#
# Usage (from anywhere):  sh tools/bench/bench_vae.sh [extra args for bench_vae.py]
#   e.g.  sh tools/bench/bench_vae.sh --sizes 512,768 --runs 1 --threads 2 --encode
# Needs: tools/reference/.venv (sh tools/reference/setup.sh) and build/libcoin.a (make).
# The model (~335 MB, ignored) is made on first use in tools/reference/out/vae_full/.
#
# The C side is one small program linked against the library, built here rather than by the
# Makefile:
#   gcc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -fopenmp -I. -I/usr/include/cjson \
#       tools/bench/bench_vae.c build/libcoin.a -lopenblas -lcjson -lutf8proc -lz -lm \
#       -o build/bench_vae
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
py="$root/tools/reference/.venv/bin/python"
[ -x "$py" ] || { echo "bench: $py missing; run: sh tools/reference/setup.sh" >&2; exit 1; }
cd "$root"
[ -f build/libcoin.a ] || make build/libcoin.a
gcc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -fopenmp -I. -I/usr/include/cjson \
    tools/bench/bench_vae.c build/libcoin.a -lopenblas -lcjson -lutf8proc -lz -lm \
    -o build/bench_vae
exec "$py" tools/bench/bench_vae.py --threads "${THREADS:-$(nproc)}" "$@"
