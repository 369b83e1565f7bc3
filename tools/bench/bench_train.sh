#!/bin/sh
# One textual-inversion training step, coin vs diffusers, full-size random SD 1.5 at 512x512
# (see bench_train.py).  Needs tools/reference/.venv, bin/coin, and the full-size pieces that
# tools/reference/make_fullsize.py, bench_unet.sh and bench_vae.sh leave in tools/reference/out/.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
make bin/coin >&2
exec tools/reference/.venv/bin/python tools/bench/bench_train.py --threads "${THREADS:-$(nproc)}" "$@"
