#!/bin/sh
# Obtains the CLIP BPE merges file (bpe_simple_vocab_16e6.txt.gz) from a pinned
# PyPI package that ships it, checks both hashes, and puts it in $1.
# The project does not commit the file; the build embeds it into coin.
set -eu
dest=${1:?usage: fetch_vocab.sh DEST_DIR}
pkg=open_clip_torch
ver=2.24.0
wheel_sha=2537dbe76c8008caa46652bc97cb32bceeae56baff6289e7b4eb22539a80c801
file_sha=924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a
name=bpe_simple_vocab_16e6.txt.gz

mkdir -p "$dest"
if [ -f "$dest/$name" ] && echo "$file_sha  $dest/$name" | sha256sum -c --status; then
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching the CLIP vocabulary from PyPI ($pkg==$ver)"
if command -v pip3 >/dev/null 2>&1; then pip=pip3; else pip="python3 -m pip"; fi
$pip download --quiet --no-deps --only-binary=:all: "$pkg==$ver" -d "$tmp" ||
    { echo "fetch_vocab: could not download $pkg==$ver from PyPI; check the network or pip" >&2; exit 1; }
whl=$(ls "$tmp"/*.whl)
echo "$wheel_sha  $whl" | sha256sum -c --status ||
    { echo "fetch_vocab: $whl does not have the pinned sha256 $wheel_sha" >&2; exit 1; }
python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); open(sys.argv[2], "wb").write(z.read("open_clip/" + sys.argv[3]))' \
    "$whl" "$tmp/$name" "$name"
echo "$file_sha  $tmp/$name" | sha256sum -c --status ||
    { echo "fetch_vocab: $name in the wheel does not have the sha256 $file_sha" >&2; exit 1; }
mv "$tmp/$name" "$dest/$name"
