#!/usr/bin/env python3
"""Build a transformers CLIPTokenizer from the CLIP BPE file bpe_simple_vocab_16e6.txt.gz.

What it makes: vocab.json + merges.txt (the HF tokenizer-folder form of the
CLIP vocabulary) in an ignored directory (default tools/reference/out/clip_tokenizer/),
and, as a library, `load_tokenizer(...)` returning a CLIPTokenizer built from them.
Nothing derived from the vocabulary is ever written into tracked parts of the repo.

Vocabulary layout (openai/CLIP simple_tokenizer.py):
  ids 0..255     the 256 bytes_to_unicode characters, in bytes_to_unicode order
  ids 256..511   the same characters + '</w>'
  ids 512..      the first 48894 merges joined ("a b" -> "ab"), in file order
  49406 <|startoftext|>, 49407 <|endoftext|>   (49408 in total)

The tokenizer is the slow (Python) CLIPTokenizer; ftfy must NOT be installed
(the goldens are those of the BasicTokenizer fallback path).

Exact command (self-check against the REFERENCE.md section 2 vectors):
    tools/reference/.venv/bin/python tools/reference/clip_vocab.py \
        [--vocab /work/shared/data/clip/bpe_simple_vocab_16e6.txt.gz] [--out tools/reference/out/clip_tokenizer]
Default --vocab: build/vocab/bpe_simple_vocab_16e6.txt.gz if it exists (the copy the
build fetches with tools/fetch_vocab.sh), else /work/shared/data/clip/bpe_simple_vocab_16e6.txt.gz.
"""
import argparse
import gzip
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
N_MERGES = 49152 - 256 - 2  # 48894
BOS_ID, EOS_ID = 49406, 49407

TEST_VECTORS = [
    ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407]),
    ("Brad Pitt giving a thumbs up, 4k, highly detailed",
     [49406, 9405, 15599, 2339, 320, 17599, 705, 267, 275, 330, 267, 5302, 12609, 49407]),
    ("hello world!!", [49406, 3306, 1002, 748, 49407]),
    ("don't", [49406, 847, 713, 49407]),
    ("1234 dogs", [49406, 272, 273, 274, 275, 3255, 49407]),
    ("café naïve", [49406, 15304, 1097, 35689, 563, 49407]),
]


def default_vocab_path():
    built = os.path.join(REPO, "build", "vocab", "bpe_simple_vocab_16e6.txt.gz")
    if os.path.exists(built):
        return built
    return "/work/shared/data/clip/bpe_simple_vocab_16e6.txt.gz"


def default_out_dir():
    return os.path.join(HERE, "out", "clip_tokenizer")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def read_merges(vocab_gz):
    raw = open(vocab_gz, "rb").read()
    sha = hashlib.sha256(raw).hexdigest()
    if sha != VOCAB_SHA256:
        print(f"clip_vocab: warning: {vocab_gz} sha256 {sha} != expected {VOCAB_SHA256}", file=sys.stderr)
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = lines[1:N_MERGES + 1]
    assert len(merges) == N_MERGES, len(merges)
    return [tuple(m.split()) for m in merges]


def write_tokenizer_files(vocab_gz, out_dir):
    """Write vocab.json and merges.txt for the CLIP BPE into out_dir; return out_dir."""
    merges = read_merges(vocab_gz)
    b2u = bytes_to_unicode()
    vocab = list(b2u.values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        vocab.append("".join(m))
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    assert len(vocab) == 49408
    enc = {v: i for i, v in enumerate(vocab)}
    assert len(enc) == 49408, "duplicate vocab entries"
    assert enc["<|startoftext|>"] == BOS_ID and enc["<|endoftext|>"] == EOS_ID
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(enc, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    return out_dir


def load_tokenizer(vocab_gz=None, out_dir=None, pad_token="<|endoftext|>"):
    """Return a fresh slow transformers CLIPTokenizer built from vocab_gz.

    pad_token defaults to <|endoftext|> (the SD1 tokenizer). Files are (re)written to out_dir.
    """
    from transformers import CLIPTokenizer
    try:
        import ftfy  # noqa: F401
        raise RuntimeError("ftfy is installed; the goldens must be made without ftfy")
    except ImportError:
        pass
    vocab_gz = vocab_gz or default_vocab_path()
    out_dir = out_dir or default_out_dir()
    if not (os.path.exists(os.path.join(out_dir, "vocab.json")) and
            os.path.exists(os.path.join(out_dir, "merges.txt"))):
        write_tokenizer_files(vocab_gz, out_dir)
    return CLIPTokenizer(os.path.join(out_dir, "vocab.json"), os.path.join(out_dir, "merges.txt"),
                         pad_token=pad_token)


def self_check(tok):
    ok = True
    for text, want in TEST_VECTORS:
        got = tok(text).input_ids
        if got != want:
            print(f"MISMATCH {text!r}: got {got} want {want}", file=sys.stderr)
            ok = False
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", default=default_vocab_path())
    ap.add_argument("--out", default=default_out_dir())
    a = ap.parse_args()
    write_tokenizer_files(a.vocab, a.out)
    tok = load_tokenizer(a.vocab, a.out)
    if not self_check(tok):
        sys.exit(1)
    print(f"clip_vocab: wrote {a.out}/vocab.json, merges.txt; {len(TEST_VECTORS)} test vectors OK")


if __name__ == "__main__":
    main()
