#!/bin/sh
# Times one classifier-free-guided UNet step (batch 2, 64x64 latents = 512x512 images) of a
# full-size random-weight SD1.5-shaped UNet: diffusers on the CPU in fp32 against coin's
# unet_forward, same weights and inputs, and prints both medians, the ratio coin/diffusers, the
# peak RSS of each and the max abs difference of the outputs (see bench_unet.py).
#
# Usage (from anywhere):  sh tools/bench/bench_unet.sh [--runs 3] [--warmup 1] [--threads N]
# Needs tools/reference/.venv (sh tools/reference/setup.sh).  The model (3.4 GB, ignored by git)
# is made on first use in tools/reference/out/unet_sd15_full/.  Slow on few cores: each forward
# is about 1.6 TFLOP.
#
# On a machine shared with other work, run it as  OMP_WAIT_POLICY=passive sh tools/bench/...:
# with the default (spinning) OpenMP waits, an oversubscribed CPU made coin's forward 2.5x slower
# in one A/B run (95 s against 37 s at load average 6).  The environment reaches both sides.
#
# coin's side is tools/bench/bench_unet.c, a standalone program linked against build/libcoin.a
# with the same libraries as bin/coin (the Makefile's LDLIBS: OpenMP OpenBLAS where installed);
# this script builds it with
#   make build/libcoin.a
#   gcc -std=c11 -D_GNU_SOURCE -O2 -fopenmp -I. -I/usr/include/cjson \
#       tools/bench/bench_unet.c build/libcoin.a \
#       [-L$BLAS -Wl,-rpath,$BLAS] -lopenblas -lcjson -lutf8proc -lpng -lz -lm \
#       -o build/bench_unet
# with BLAS=/usr/lib/x86_64-linux-gnu/openblas-openmp when that folder exists.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
py="$root/tools/reference/.venv/bin/python"
[ -x "$py" ] || { echo "bench: $py missing; run: sh tools/reference/setup.sh" >&2; exit 1; }
cd "$root"
make build/libcoin.a >&2
blas=/usr/lib/x86_64-linux-gnu/openblas-openmp
blas_flags=
[ -d "$blas" ] && blas_flags="-L$blas -Wl,-rpath,$blas"
# shellcheck disable=SC2086
gcc -std=c11 -D_GNU_SOURCE -O2 -fopenmp -I. -I/usr/include/cjson \
    tools/bench/bench_unet.c build/libcoin.a \
    $blas_flags -lopenblas -lcjson -lutf8proc -lpng -lz -lm \
    -o build/bench_unet
exec "$py" tools/bench/bench_unet.py --coin build/bench_unet --threads "${THREADS:-$(nproc)}" "$@"
