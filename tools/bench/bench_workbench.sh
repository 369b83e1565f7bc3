#!/bin/sh
# Builds and runs the workbench benchmark (bench_workbench.c) against the
# objects of a normal build: make bin/coin first.  DIR: where the big
# ledger goes (default /tmp/coin-bench-workbench, about 100 MB).
set -e
cd "$(dirname "$0")/../.."
make -j2 bin/coin >/dev/null
objs=$(ls build/tui/*.o build/db/*.o | grep -v 'build/tui/main.o')
BLAS=/usr/lib/x86_64-linux-gnu/openblas-openmp
gcc -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -fopenmp -I. -I/usr/include/cjson \
    -o build/bench_workbench tools/bench/bench_workbench.c $objs build/libcoin.a \
    -L$BLAS -Wl,-rpath,$BLAS -lopenblas -lcjson -lutf8proc -lpng -lsqlite3 -lncursesw -lsixel \
    -lz -lm -fopenmp
exec build/bench_workbench "${DIR:-/tmp/coin-bench-workbench}"
