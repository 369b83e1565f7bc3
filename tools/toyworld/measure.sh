#!/bin/sh
# The full toy-world measurement of issue 7, through coin itself:
#   the judge's accuracy on 1000 fresh renders,
#   prompt following ("a {colour} {shape}", every colour x shape, 3 seeds: 108 samples),
#   the held-out glyph without training (30 context prompts x 3 seeds: 90 samples),
#   the glyph after `bin/coin train` on assets/toy/glyph-images (the same 90 prompts and seeds).
# It is tests/test_toyworld.c run with COIN_TOY_FULL=1 (make test runs the small version);
# every judged sample is kept in OUT (default build/toy/measure) with the verdict in its name.
# Usage (repo root): tools/toyworld/measure.sh [OUT]
set -eu
out=${1:-build/toy/measure}
rm -rf "$out"
mkdir -p "$out"
make -j2 bin/coin bin/coin_tests >/dev/null
start=$(date +%s)
COIN_TOY_FULL=1 COIN_TOY_OUT="$out" bin/coin_tests toy | tee "$out/report.txt"
echo "measured in $(( $(date +%s) - start )) s; samples in $out" | tee -a "$out/report.txt"
