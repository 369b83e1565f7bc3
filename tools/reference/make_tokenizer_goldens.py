#!/usr/bin/env python3
"""Make tests/golden/tokenizer/cases.json: CLIP tokenizer goldens for SD1 and SD2 padding.

For every case, ids come from transformers' slow CLIPTokenizer WITHOUT ftfy (its
BasicTokenizer fallback), built from bpe_simple_vocab_16e6.txt.gz by clip_vocab.py:
  ids_sd1 = CLIPTokenizer(pad_token="<|endoftext|>")(text, padding="max_length",
            max_length=77, truncation=True).input_ids
            with tokenizer.add_tokens(added_tokens) first (ids 49408, 49409, ... in list
            order) on a fresh tokenizer per case;
  n_tokens = number of ids before padding, BOS and EOS included (77 when truncated);
  ids_sd2 = ids_sd1 with every position >= n_tokens set to 0 (open_clip.tokenize's
            zero padding, which SD2 was trained with; NOT the HF SD2 tokenizer, whose
            pad_token="!" also maps a literal "!" to 0).

Each case is cross-checked three ways: the batch call above, tokenizer.encode() framed
by hand, and an independent pure-Python re-implementation of the same algorithm
(`ref_encode` below, the algorithm the C code implements). The script fails if any
disagree. Output is deterministic (no randomness involved).

Exact command (from the repo root):
    tools/reference/.venv/bin/python tools/reference/make_tokenizer_goldens.py \
        [--vocab PATH_TO/bpe_simple_vocab_16e6.txt.gz] [--out tests/golden/tokenizer/cases.json]
"""
import argparse
import json
import os
import sys
import unicodedata

import regex

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_vocab  # noqa: E402

CTX = 77
BOS, EOS = 49406, 49407
GENERATOR = "tools/reference/.venv/bin/python tools/reference/make_tokenizer_goldens.py"

TU = "<thumbs-up>"

LONG_PROMPT = (
    "masterpiece, best quality, ultra detailed, 8k uhd, dslr, soft lighting, high quality, film grain, "
    "Fujifilm XT3, portrait of a young woman standing in a sunlit meadow, wildflowers, golden hour, "
    "wind in her hair, freckles, green eyes, looking at the camera, shallow depth of field, bokeh, "
    "cinematic composition, rule of thirds, volumetric light, lens flare, intricate details, "
    "trending on artstation, award winning photograph, sharp focus, 85mm lens, f/1.8, natural skin texture"
)


def base_cases():
    """(text, added_tokens) pairs; boundary cases are appended in main() once the tokenizer exists."""
    c = []
    add = lambda text, added=(): c.append((text, list(added)))  # noqa: E731
    # REFERENCE.md section 2 test vectors
    for text, _ in clip_vocab.TEST_VECTORS:
        add(text)
    # empty / whitespace
    add("")
    add(" ")
    add("   \t  ")
    add("a\tphoto\nof\r\na  cat")
    add("  leading and trailing spaces  ")
    # punctuation runs
    add("!!!")
    add("...")
    add("?!")
    add("--")
    add("hello, world... what?! yes -- no!!!")
    add("!")
    add("a photo of a cat!")
    add("(((best quality))), [worst quality], {{detailed}}, <lora:foo:0.8>")
    # digits and numbers
    add("1234")
    add("4k")
    add("3.14")
    add("1e-5")
    add("2023 was year 2023, 100% sure, $5.99")
    # apostrophes / contractions
    add("it's")
    add("we'll")
    add("they're")
    add("I'VE")
    add("'s alone")
    add("rock'n'roll")
    add("she'd I'm you've can't")
    add("\u2019s curly apostrophe don\u2019t")
    # mixed case
    add("A PHOTO Of A CaT")
    add("iPhone McDonald's NASA")
    # non-ASCII Latin
    add("café")
    add("naïve")
    add("Café Naïve")
    add("Ångström")
    add("straße")
    add("ÉCOLE")
    add("Ærøskøbing façade señor")
    # other scripts
    add("Καλημέρα κόσμε")
    add("Привет мир")
    add("日本語のテキスト")
    add("中文")
    add("한국어 텍스트")
    add("مرحبا بالعالم")
    add("a photo of 猫 in Tokyo")
    # emoji
    add("👍")
    add("👍🏽")
    add("🤷\u200d♀️")
    add("🇯🇵 🇺🇸")
    add("a cat 🐱 giving a thumbs up 👍!")
    # combining characters (NFC)
    add("cafe\u0301")
    add("e\u0301")
    add("A\u030angstro\u0308m")
    # control / special whitespace characters
    add("bell\x07ring")
    add("esc\x1b[0mape")
    add("zero\u200bwidth")
    add("non\u00a0breaking space")
    add("ideographic\u3000space")
    add("soft\u00adhyphen")
    add("nul\x00char")
    add("replacement\ufffdchar")
    add("del\x7fchar")
    # html entities are NOT unescaped by HF CLIPTokenizer
    add("&amp;")
    add("tom &amp; jerry &lt;3 &quot;cat&quot;")
    # special tokens typed literally (matched as added/special tokens by HF)
    add("a <|endoftext|> b")
    add("<|startoftext|>cat")
    # long prompt (> 77 tokens)
    add(LONG_PROMPT)
    # real SD prompts
    add("masterpiece, best quality, (extremely detailed:1.2), 8k uhd")
    add("A painting of a squirrel eating a burger")
    add("a photograph of an astronaut riding a horse")
    add("portrait of a woman, oil on canvas, by Greg Rutkowski and Alphonse Mucha, artstation")
    add("ugly, blurry, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, "
        "fewer digits, cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, "
        "watermark, username")
    # trigger words (added tokens)
    add("a photo of <thumbs-up>", [TU])
    add("<thumbs-up> <thumbs-up>", [TU])
    add("<thumbs-up><thumbs-up>", [TU])
    add("a<thumbs-up>b", [TU])
    add("A photo of <Thumbs-Up>", [TU])
    add("a photo of <thumbs-up>, 4k", [TU])
    add("  <thumbs-up>  ", [TU])
    add("<thumbs-up>", [TU])
    add("a <cat-toy> giving a <thumbs-up>", [TU, "<cat-toy>"])
    add("a <cat-toy> giving a <thumbs-up>", ["<cat-toy>", TU])
    add("a photo of <cat-toy> <cat-toy>_1", ["<cat-toy>", "<cat-toy>_1"])
    add("a photo of <cat-toy>_1 and <cat-toy>", ["<cat-toy>", "<cat-toy>_1"])
    add("a photo of sks dog, he asks", ["sks"])
    add("a photo of <thumbs-up> without the token added")
    add(LONG_PROMPT.replace("portrait of a young woman", "portrait of a young woman giving a <thumbs-up>"), [TU])
    add(LONG_PROMPT + ", <thumbs-up>", [TU])
    return c


# ---------------------------------------------------------------------------
# Independent re-implementation (what coin's C tokenizer does)
# ---------------------------------------------------------------------------
PAT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)


def _is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or
            0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or
            0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _clean(text):
    """BasicTokenizer(strip_accents=False, do_split_on_punc=False) followed by ' '.join."""
    out = []
    for ch in text:
        cp = ord(ch)
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            out.append(" ")
        elif cp == 0 or cp == 0xFFFD or unicodedata.category(ch).startswith("C"):
            continue
        elif _is_cjk(cp):
            out.append(" " + ch + " ")
        else:
            out.append(ch)
    text = unicodedata.normalize("NFC", "".join(out))
    return " ".join(w.lower() for w in text.split(" ") if w)


class RefTokenizer:
    def __init__(self, vocab_gz):
        merges = clip_vocab.read_merges(vocab_gz)
        self.b2u = clip_vocab.bytes_to_unicode()
        vocab = list(self.b2u.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.enc = {v: i for i, v in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}

    def bpe(self, word):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            best, best_rank = None, None
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = (parts[i], parts[i + 1]), r
            if best is None:
                break
            out, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    out.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            parts = out
        return parts

    def encode_segment(self, text):
        ids = []
        for tok in PAT.findall(_clean(text)):
            word = "".join(self.b2u[b] for b in tok.encode("utf-8"))
            ids.extend(self.enc[p] for p in self.bpe(word))
        return ids

    def encode(self, text, added):
        """Content ids (no BOS/EOS): added and special tokens matched on the raw text first
        (leftmost, then longest), the rest cleaned and BPE'd segment by segment."""
        specials = {"<|startoftext|>": BOS, "<|endoftext|>": EOS}
        for i, t in enumerate(added):
            specials.setdefault(t, 49408 + i)
        keys = sorted(specials, key=len, reverse=True)
        ids, seg, i = [], [], 0
        while i < len(text):
            m = next((k for k in keys if text.startswith(k, i)), None)
            if m is None:
                seg.append(text[i])
                i += 1
                continue
            ids.extend(self.encode_segment("".join(seg)))
            seg = []
            ids.append(specials[m])
            i += len(m)
        ids.extend(self.encode_segment("".join(seg)))
        return ids

    def frame(self, content, pad):
        ids = [BOS] + content[:CTX - 2] + [EOS]
        n = len(ids)
        return ids + [pad] * (CTX - n), n


def content_len(tok, text):
    return len(tok(text).input_ids) - 2


def boundary_cases(vocab_gz, out_dir):
    """Prompts with exactly 74, 75 and 76 content tokens (75 is the last that fits)."""
    tok = clip_vocab.load_tokenizer(vocab_gz, out_dir)
    words = LONG_PROMPT.split(" ")
    res = {}
    for n in (74, 75, 76):
        k = max(k for k in range(1, len(words) + 1) if content_len(tok, " ".join(words[:k])) <= n)
        t = " ".join(words[:k])
        while content_len(tok, t) < n:
            t += " cat"
        assert content_len(tok, t) == n, (n, t)
        res[n] = t
    return [(res[74], []), (res[75], []), (res[76], []),
            (" ".join(["cat"] * 75), []), (" ".join(["cat"] * 76), []),
            # added token as the 75th content token (kept) and as the 76th (cut)
            (" ".join(["cat"] * 74 + [TU]), [TU]), (" ".join(["cat"] * 75 + [TU]), [TU])]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", default=clip_vocab.default_vocab_path())
    ap.add_argument("--out", default=os.path.join(clip_vocab.REPO, "tests", "golden", "tokenizer", "cases.json"))
    ap.add_argument("--tok-dir", default=clip_vocab.default_out_dir())
    a = ap.parse_args()

    import transformers
    clip_vocab.write_tokenizer_files(a.vocab, a.tok_dir)
    if not clip_vocab.self_check(clip_vocab.load_tokenizer(a.vocab, a.tok_dir)):
        sys.exit("clip_vocab self-check failed")
    ref = RefTokenizer(a.vocab)

    cases = base_cases() + boundary_cases(a.vocab, a.tok_dir)
    seen = set()
    out, bad = [], 0
    for text, added in cases:
        key = (text, tuple(added))
        assert key not in seen, key
        seen.add(key)
        tok = clip_vocab.load_tokenizer(a.vocab, a.tok_dir)  # fresh per case
        if added:
            n_added = tok.add_tokens(list(added))
            assert n_added == len(added), (added, n_added)
            for i, t in enumerate(added):
                assert tok.convert_tokens_to_ids(t) == 49408 + i
        ids_sd1 = tok(text, padding="max_length", max_length=CTX, truncation=True).input_ids
        assert len(ids_sd1) == CTX
        # cross-check 1: unpadded encode, framed and padded by hand
        raw = tok.encode(text)
        n_tokens = min(len(raw), CTX)
        manual = raw[:CTX - 1] + [EOS] if len(raw) > CTX else raw
        manual = manual + [EOS] * (CTX - len(manual))
        # cross-check 2: independent implementation
        mine, n_mine = ref.frame(ref.encode(text, added), EOS)
        if ids_sd1 != manual or ids_sd1 != mine or n_mine != n_tokens:
            bad += 1
            print(f"MISMATCH {text!r} {added}\n hf     {ids_sd1[:n_tokens]}\n manual {manual[:n_tokens]}\n"
                  f" ref    {mine[:n_mine]}", file=sys.stderr)
        assert ids_sd1[0] == BOS and ids_sd1[n_tokens - 1] == EOS
        ids_sd2 = ids_sd1[:n_tokens] + [0] * (CTX - n_tokens)
        out.append({"text": text, "added_tokens": list(added), "ids_sd1": ids_sd1,
                    "ids_sd2": ids_sd2, "n_tokens": n_tokens})
    if bad:
        sys.exit(f"{bad} cases disagree")

    cmd = GENERATOR
    if a.out != os.path.join(clip_vocab.REPO, "tests", "golden", "tokenizer", "cases.json"):
        cmd += f" --out {a.out}"
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        f.write("{\n")
        f.write(f'"generator": {json.dumps(cmd)},\n')
        f.write(f'"transformers": {json.dumps(transformers.__version__)},\n')
        f.write('"cases": [\n')
        f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in out))
        f.write("\n]\n}\n")
    json.load(open(a.out, encoding="utf-8"))  # sanity
    print(f"make_tokenizer_goldens: wrote {len(out)} cases to {a.out}")


if __name__ == "__main__":
    main()
