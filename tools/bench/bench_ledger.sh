#!/bin/sh
# The ledger's cost: its share of a training step's time on the tiny test model (where steps
# are shortest, so the share is largest) and the time to read a 100,000-point loss curve.
# See bench_ledger.c for what is measured.
#
# Usage (from anywhere):  sh tools/bench/bench_ledger.sh [STEPS] [SAVE_EVERY]
# Needs build/libcoin.a and the ledger and recorder objects (make bin/coin builds them).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
make -s bin/coin >/dev/null
blas=/usr/lib/x86_64-linux-gnu/openblas-openmp
gcc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -fopenmp -I. -I/usr/include/cjson \
    tools/bench/bench_ledger.c build/tui/record.o build/tui/progress.o build/db/ledger.o \
    build/libcoin.a \
    -L$blas -Wl,-rpath,$blas -lopenblas -lcjson -lutf8proc -lpng -lsqlite3 -lz -lm \
    -o build/bench_ledger
work=$(mktemp -d "${TMPDIR:-/tmp}/coin-bench-ledger-XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/images"
cp tests/golden/image/png_ga8.png "$work/images/a.png"
OMP_WAIT_POLICY=passive build/bench_ledger tests/golden/sd1/model.safetensors "$work/images" \
    "$work" "$@"
