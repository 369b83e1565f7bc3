#!/bin/sh
# Times a linear layer through OpenBLAS and through coin's packed-weight kernel (core/gemm.c) on
# the shapes of SD's text encoders and UNet, min over repetitions (see bench_gemm.c).
#
# Usage (from anywhere):  sh tools/bench/bench_gemm.sh [reps] [M,N,K ...]
#   THREADS=n sets the OpenMP thread count (default: nproc).
# Builds build/bench_gemm from tools/bench/bench_gemm.c and core/gemm.c with the same OpenBLAS
# as bin/coin (the OpenMP build where installed).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
mkdir -p build
blas=/usr/lib/x86_64-linux-gnu/openblas-openmp
blas_flags=
[ -d "$blas" ] && blas_flags="-L$blas -Wl,-rpath,$blas"
# shellcheck disable=SC2086
gcc -std=c11 -D_GNU_SOURCE -O2 -fopenmp -Wall -Wextra -I. \
    tools/bench/bench_gemm.c core/gemm.c $blas_flags -lopenblas -lm -o build/bench_gemm
export OMP_NUM_THREADS="${THREADS:-$(nproc)}"
exec build/bench_gemm "$@"
