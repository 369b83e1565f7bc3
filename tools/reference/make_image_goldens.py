#!/usr/bin/env python3
"""Golden files for core/image.c, made with Pillow, numpy and diffusers.

    tools/reference/.venv/bin/python tools/reference/make_image_goldens.py

Writes tests/golden/image/ (deterministic: fixed seeds, no timestamps):

  manifest.txt   one case per line, read by tests/test_image.c:
     resize SRC.png W H EXPECTED.png       PIL Image.resize((W, H), BICUBIC)
     ti SRC.png SIZE CROP FLIP EXPECTED.png EXPECTED.f32
                                           diffusers TextualInversionDataset's
                                           pixel path (crop, resize, flip,
                                           /127.5 - 1), float32 [3,S,S]
     load FILE W H EXPECTED.rgb MAXDIFF    PIL Image.open(FILE).convert("RGB")
     u8 INPUT.f32 EXPECTED.u8              diffusers VaeImageProcessor
                                           postprocess + numpy_to_pil
  *.png *.jpg *.bmp *.gif  inputs; *.rgb raw RGB bytes; *.f32 little-endian.
  infotext.json  A1111 generation-parameter texts, read by tests/test_infotext.c:
                 "parse" cases (text -> prompt, negative prompt, parameters)
                 and "format" cases (parameters -> text), computed with the
                 functions of A1111's modules/infotext_utils.py and
                 processing.py create_infotext transcribed below (A1111 itself
                 needs gradio and a model to import).

PNG inputs of every colour type / depth are assembled chunk by chunk here
(PIL cannot write most of them), so each decodes to what PIL says it does.
MAXDIFF is 0 for lossless formats; for JPEG it is the largest difference
between stb_image (which coin uses) and PIL's libjpeg-turbo, as measured
when the goldens were made, so any change shows.
"""
import io
import json
import os
import re
import struct
import sys
import warnings
import zlib

import numpy as np
import torch
from PIL import Image
from diffusers.image_processor import VaeImageProcessor

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "golden", "image")
OUT = os.path.normpath(OUT)
warnings.filterwarnings("ignore", message="Palette images with Transparency")
# Measured stb_image (coin) vs PIL 13 / libjpeg-turbo maxima per JPEG file (see
# the module docstring).  The mean differences are 0.005-0.24 levels; 4:2:2
# is the worst because stb's horizontal chroma upsampling rounds differently.
JPEG_MAXDIFF = {"jpeg_420.jpg": 2, "jpeg_444.jpg": 2, "jpeg_422.jpg": 10,
                "jpeg_progressive.jpg": 2, "jpeg_grey.jpg": 1, "jpeg_cmyk.jpg": 1,
                "jpeg_odd33x17.jpg": 2}

lines = []


def path(name):
    return os.path.join(OUT, name)


def save_png(img, name):
    img.save(path(name), format="PNG", optimize=False, compress_level=9)


# ---------------------------------------------------------------- sources

def sources():
    rng = np.random.default_rng(1234)
    srcs = {}
    # Pure noise: every tap of every kernel matters.
    srcs["noise37x23"] = Image.fromarray(rng.integers(0, 256, (23, 37, 3), dtype=np.uint8))
    # Smooth ramps with a hard black/white checker block: the cubic's
    # negative lobes overshoot there, so clipping between passes is tested.
    y, x = np.mgrid[0:64, 0:50]
    a = np.stack([x * 5, y * 4, (x + y) * 2], -1).clip(0, 255).astype(np.uint8)
    a[20:36, 10:30] = ((((y[20:36, 10:30] // 2) + (x[20:36, 10:30] // 2)) % 2) * 255)[..., None]
    srcs["ramp50x64"] = Image.fromarray(a)
    # A smooth random field, large enough for a 9x reduction.
    f = rng.normal(size=(13, 19, 3))
    f = np.kron(f, np.ones((8, 8, 1)))[:100, :150]
    k = np.ones(9) / 9
    for ax in (0, 1):
        f = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), ax, f)
    f = ((f - f.min()) / (f.max() - f.min()) * 255).round().astype(np.uint8)
    srcs["field150x100"] = Image.fromarray(f)
    srcs["tiny1x1"] = Image.fromarray(np.array([[[200, 10, 90]]], dtype=np.uint8))
    srcs["tiny2x3"] = Image.fromarray(rng.integers(0, 256, (3, 2, 3), dtype=np.uint8))
    srcs["odd41x40"] = Image.fromarray(rng.integers(0, 256, (40, 41, 3), dtype=np.uint8))
    for name, img in srcs.items():
        save_png(img, f"src_{name}.png")
    return srcs


def resize_cases(srcs):
    """Pillow's bicubic resize is two separable passes with the image rounded
    to 8 bits in between, so their order shows.  Pillow 13 runs the vertical
    pass first exactly when the height shrinks by more than twice as many
    pixels as the width (h - oh > 2 * (w - ow), with oh < h); older Pillow
    always ran the horizontal pass first.  Established against this Pillow on
    706 random size pairs (1x1 to 4032x3024, both orders told apart by
    resizing in two explicit steps), all byte-exact in coin; the last four
    cases below pin it."""
    cases = [
        ("noise37x23", 16, 16), ("noise37x23", 64, 64), ("noise37x23", 111, 23),
        ("noise37x23", 37, 11), ("noise37x23", 1, 1), ("noise37x23", 7, 50),
        ("noise37x23", 38, 24),
        ("ramp50x64", 33, 47), ("ramp50x64", 100, 128), ("ramp50x64", 17, 17),
        ("field150x100", 16, 16), ("field150x100", 31, 11), ("field150x100", 149, 101),
        ("tiny1x1", 5, 4), ("tiny2x3", 9, 9), ("tiny2x3", 1, 2),
        ("odd41x40", 24, 24), ("odd41x40", 41, 40),
        # Pass order (see below): vertical first, then both sides of the rule.
        ("noise37x23", 40, 5), ("ramp50x64", 30, 9), ("ramp50x64", 40, 44),
        ("ramp50x64", 41, 45),
    ]
    for name, w, h in cases:
        out = srcs[name].resize((w, h), resample=Image.BICUBIC)
        exp = f"resize_{name}_{w}x{h}.png"
        save_png(out, exp)
        lines.append(f"resize src_{name}.png {w} {h} {exp}")


def ti_cases(srcs):
    """diffusers examples/textual_inversion/textual_inversion.py,
    TextualInversionDataset.__getitem__, pixel lines verbatim (the flip is
    RandomHorizontalFlip(p=flip_p), here applied deterministically)."""
    cases = [("noise37x23", 32, 1, 1), ("noise37x23", 24, 0, 0), ("ramp50x64", 16, 1, 0),
             ("odd41x40", 20, 1, 1), ("field150x100", 24, 1, 0), ("tiny2x3", 8, 1, 1)]
    for name, size, center_crop, flip in cases:
        image = srcs[name]
        if not image.mode == "RGB":
            image = image.convert("RGB")
        img = np.array(image).astype(np.uint8)
        if center_crop:
            crop = min(img.shape[0], img.shape[1])
            (h, w,) = (img.shape[0], img.shape[1],)
            img = img[(h - crop) // 2: (h + crop) // 2, (w - crop) // 2: (w + crop) // 2]
        image = Image.fromarray(img)
        image = image.resize((size, size), resample=Image.Resampling.BICUBIC)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        exp_png = f"ti_{name}_{size}_{center_crop}{flip}.png"
        save_png(image, exp_png)
        image = np.array(image).astype(np.uint8)
        image = (image / 127.5 - 1.0).astype(np.float32)
        chw = torch.from_numpy(image).permute(2, 0, 1).contiguous().numpy()
        exp_f32 = f"ti_{name}_{size}_{center_crop}{flip}.f32"
        chw.astype("<f4").tofile(path(exp_f32))
        lines.append(f"ti src_{name}.png {size} {center_crop} {flip} {exp_png} {exp_f32}")


# ---------------------------------------------------------------- PNG kinds

def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


def pack_row(samples, depth):
    if depth >= 8:
        return b"".join(int(s).to_bytes(depth // 8, "big") for s in samples)
    bits = "".join(format(int(s), f"0{depth}b") for s in samples)
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))


def png_bytes(w, h, depth, ctype, px, extra=b"", interlace=0, post=b""):
    """px: array [h, w, channels] of samples."""
    def rows_of(sub):
        return b"".join(b"\0" + pack_row(sub[y].reshape(-1), depth) for y in range(sub.shape[0]))
    if interlace:
        raw = b""
        for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4),
                               (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
            sub = px[y0::dy, x0::dx]
            if sub.shape[0] and sub.shape[1]:
                raw += rows_of(sub)
    else:
        raw = rows_of(px)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra +
            chunk(b"IDAT", zlib.compress(raw, 9)) + post + chunk(b"IEND", b""))


def load_case(name, data, maxdiff=0):
    with open(path(name), "wb") as f:
        f.write(data)
    im = Image.open(path(name))
    rgb = np.array(im.convert("RGB"))
    rgb.tofile(path(name + ".rgb"))
    h, w = rgb.shape[:2]
    lines.append(f"load {name} {w} {h} {name}.rgb {maxdiff}")


def png_kinds():
    rng = np.random.default_rng(99)
    w, h = 13, 11
    def r(hi, c):
        return rng.integers(0, hi + 1, (h, w, c))
    g16 = r(65535, 1)
    g16[0, :6, 0] = [0, 1, 254, 255, 256, 65535]    # PIL clips I;16 at 255
    g16[1:4] = rng.integers(0, 300, (3, w, 1))
    load_case("png_grey1.png", png_bytes(w, h, 1, 0, r(1, 1)))
    load_case("png_grey2.png", png_bytes(w, h, 2, 0, r(3, 1)))
    load_case("png_grey4.png", png_bytes(w, h, 4, 0, r(15, 1)))
    load_case("png_grey8.png", png_bytes(w, h, 8, 0, r(255, 1)))
    load_case("png_grey16.png", png_bytes(w, h, 16, 0, g16))
    load_case("png_grey8_trns.png", png_bytes(w, h, 8, 0, r(255, 1),
                                              chunk(b"tRNS", struct.pack(">H", 7))))
    load_case("png_ga8.png", png_bytes(w, h, 8, 4, r(255, 2)))
    load_case("png_ga16.png", png_bytes(w, h, 16, 4, r(65535, 2)))
    load_case("png_rgb8.png", png_bytes(w, h, 8, 2, r(255, 3)))
    load_case("png_rgb16.png", png_bytes(w, h, 16, 2, r(65535, 3)))
    load_case("png_rgba8.png", png_bytes(w, h, 8, 6, r(255, 4)))
    load_case("png_rgba16.png", png_bytes(w, h, 16, 6, r(65535, 4)))
    pal = bytes(rng.integers(0, 256, 3 * 5, dtype=np.uint8))
    for depth in (1, 2, 4, 8):
        idx = r(min(2 ** depth - 1, 6), 1)   # indices 5 and 6 are past the palette
        load_case(f"png_pal{depth}.png", png_bytes(w, h, depth, 3, idx,
                  chunk(b"PLTE", pal[:3 * min(5, 2 ** depth)]) + chunk(b"tRNS", b"\x00\x80")))
    load_case("png_rgb8_adam7.png", png_bytes(w, h, 8, 2, r(255, 3), interlace=1))
    load_case("png_grey2_adam7.png", png_bytes(w, h, 2, 0, r(3, 1), interlace=1))
    load_case("png_rgba16_adam7.png", png_bytes(w, h, 16, 6, r(65535, 4), interlace=1))
    # Text before and after the image data, each kind of text chunk.
    pre = (chunk(b"tEXt", b"parameters\0caf\xe9, Steps: 20") +
           chunk(b"zTXt", b"Comment\0\0" + zlib.compress("zipped text".encode("latin-1"))) +
           chunk(b"iTXt", b"Title\0\0\0en\0Titel\0" + "猫 ☃".encode("utf-8")))
    post = (chunk(b"iTXt", b"Zipped\0\1\0\0\0" + zlib.compress("ünïcode zipped ✓".encode())) +
            chunk(b"tEXt", b"parameters\0second wins"))
    load_case("png_text.png", png_bytes(w, h, 8, 2, r(255, 3), extra=pre, post=post))
    # Check what PIL reports, so the hard-coded expectations in test_image.c
    # are PIL's, not ours.
    im = Image.open(path("png_text.png"))
    im.load()
    want = {"parameters": "second wins", "Comment": "zipped text", "Title": "猫 ☃",
            "Zipped": "ünïcode zipped ✓"}
    got = {k: str(v) for k, v in im.text.items()}
    assert got == want, got


def other_formats():
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:40, 0:48]
    smooth = np.stack([x * 5, y * 6, 255 - x * 3], -1).astype(np.uint8)
    smooth = (smooth.astype(int) + rng.integers(-20, 21, smooth.shape)).clip(0, 255).astype(np.uint8)
    im = Image.fromarray(smooth)

    def jpeg(name, img, **kw):
        b = io.BytesIO()
        img.save(b, format="JPEG", **kw)
        load_case(name, b.getvalue(), JPEG_MAXDIFF.get(name, 255))

    jpeg("jpeg_420.jpg", im, quality=90)
    jpeg("jpeg_444.jpg", im, quality=90, subsampling=0)
    jpeg("jpeg_422.jpg", im, quality=85, subsampling=1)
    jpeg("jpeg_progressive.jpg", im, quality=80, progressive=True)
    jpeg("jpeg_grey.jpg", im.convert("L"), quality=90)
    jpeg("jpeg_cmyk.jpg", im.convert("CMYK"), quality=95)
    jpeg("jpeg_odd33x17.jpg", im.crop((3, 5, 36, 22)), quality=92)
    b = io.BytesIO()
    im.save(b, format="BMP")
    load_case("bmp_rgb24.bmp", b.getvalue())
    b = io.BytesIO()
    im.quantize(colors=32, dither=Image.Dither.NONE).save(b, format="GIF")
    load_case("gif_p.gif", b.getvalue())


# ---------------------------------------------------------------- uint8

def u8_case():
    vals = [-2.0, -1.0000001, -1.0, -0.9999999, 0.0, 1.0, 1.0000001, 2.0, 1e-8, -1e-8,
            0.5, -0.5, 0.25, 3.0e38, -3.0e38]
    vals += list(np.linspace(-1.1, 1.1, 401, dtype=np.float32))
    # Inputs whose y*255 lands on or next to k + 0.5 (the ties to even).
    for k in range(255):
        y = np.float32((k + 0.5) / 255)
        x = lo = hi = np.float32(2) * (y - np.float32(0.5))
        vals.append(x)
        for _ in range(3):
            lo = np.nextafter(lo, np.float32(-np.inf))
            hi = np.nextafter(hi, np.float32(np.inf))
            vals += [lo, hi]
    a = np.array(vals, dtype=np.float32)
    n = (len(a) + 2) // 3
    a = np.concatenate([a, np.zeros(3 * n - len(a), np.float32)])
    t = torch.from_numpy(a.reshape(1, 3, 1, n).copy())
    proc = VaeImageProcessor()
    pil = proc.numpy_to_pil(proc.postprocess(t, output_type="np"))[0]
    out = np.array(pil)                                   # [1, n, 3]
    a.astype("<f4").tofile(path("u8_input.f32"))
    out[0].T.copy().tofile(path("u8_expected.u8"))         # planar, like the input
    lines.append(f"u8 u8_input.f32 u8_expected.u8 {n}")


# ---------------------------------------------------------------- infotext

# AUTOMATIC1111 modules/infotext_utils.py (v1.10), verbatim where it matters.
re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)
re_imagesize = re.compile(r"^(\d+)x(\d+)$")


def quote(text):
    if ',' not in str(text) and '\n' not in str(text) and ':' not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str):
    """The first half of A1111's function: prompt, negative prompt and the
    findall pairs (the defaults it adds afterwards are not in the text)."""
    res = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ''
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for k, v in re_param.findall(lastline):
        try:
            if v[0] == '"' and v[-1] == '"':
                v = unquote(v)
            m = re_imagesize.match(v)
            if m is not None:
                res[f"{k}-1"] = m.group(1)
                res[f"{k}-2"] = m.group(2)
            else:
                res[k] = v
        except Exception:
            pass
    return prompt, negative_prompt, res


SCHEDULERS = [("automatic", "Automatic", []), ("uniform", "Uniform", []),
              ("karras", "Karras", []), ("exponential", "Exponential", []),
              ("polyexponential", "Polyexponential", []),
              ("sgm_uniform", "SGM Uniform", ["SGMUniform"]), ("kl_optimal", "KL Optimal", []),
              ("align_your_steps", "Align Your Steps", []), ("simple", "Simple", []),
              ("normal", "Normal", []), ("ddim", "DDIM", []), ("beta", "Beta", [])]


def split_sampler(name):
    """sd_samplers.get_sampler_and_scheduler's suffix loop (sd_schedulers
    list of v1.10): the schedule label found, or None."""
    found = None
    for sname, label, aliases in SCHEDULERS:
        for name_option in [label, sname, *aliases]:
            if name.endswith(" " + name_option):
                found = label
                name = name[0:-(len(name_option) + 1)]
                break
    return name, found


def create_infotext(prompt_text, negative_prompt, generation_params):
    """processing.py create_infotext's last three statements."""
    generation_params_text = ", ".join([k if k == v else f'{k}: {quote(v)}'
                                        for k, v in generation_params.items() if v is not None])
    negative_prompt_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt_text}{negative_prompt_text}\n{generation_params_text}".strip()


PARSE_TEXTS = [
    # REFERENCE.md 9.2, as posted in A1111 #7773
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1919484475, Size: 768x768, "
    "Model hash: ad2a33c361, Model: v2-1_768-ema-pruned, ENSD: 3",
    # parse_generation_parameters' docstring
    "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, "
    "heavy makeup, by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, "
    "intricate\nNegative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, "
    "disfigured, poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), "
    "messy drawing\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, "
    "Model hash: 45dee52b",
    # v1.10-style, multi-line prompt and negative with colons, TI hashes
    "a photo of <cat-toy>: detailed, 4k\nsecond line: yes\nNegative prompt: blurry, lowres\n"
    "more negative: (bad:1.2)\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, "
    "CFG scale: 7.5, Seed: 123, Size: 512x768, Model hash: 6ce0161689, "
    "Model: v1-5-pruned-emaonly, TI hashes: \"cat-toy: 0123456789ab, other: ba9876543210\", "
    "Version: v1.10.1",
    # quoted values with escapes, keys with '-' and '/'
    'x\nSteps: 25, Lora hashes: "add_detail: 7c6bad76eb54, more: 0123", '
    'Note: "say \\"hi\\", back\\\\slash\\nnew line", Hires upscale: 2, '
    'Hires upscaler: R-ESRGAN 4x+, Denoising strength: 0.7, Width/Height: 8x8, '
    'Discard penultimate sigma: True',
    # a last line with fewer than three pairs is prompt
    "a cat\nSteps: 20, Seed: 5",
    # old sampler names carry the schedule
    "p\nSteps: 20, Sampler: DPM++ 2M SDE Karras, CFG scale: 6, Seed: 1, Size: 64x64",
    "p\nSteps: 20, Sampler: DPM++ 2M sde_uniform, CFG scale: 6, Seed: 1, Size: 64x64, "
    "Other: SGMUniform",
    "p\nSteps: 20, Sampler: Euler SGMUniform, CFG scale: 6, Seed: 1, Size: 64x64",
    # empty values are dropped; repeated keys keep their first place
    "p\nVAE: , Steps: 20, Seed: 1, Clip skip: 2, Seed: 2, Size: 1x2, Clip skip: 3",
    # CRLF, surrounding whitespace, unicode
    "  a\r\nNegative prompt: b\r\nSteps: 1, Seed: 2, Size: 8x8\r\n  ",
    "猫, 東京\nNegative prompt: ñ\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 42, "
    "Size: 512x512, Model: モデル, 名前: 値",
    # a quote that does not close, and one followed by more text
    'p\nModel: "abc, Steps: 20, Seed: 1, Size: 1x1',
    'p\nFoo: "a" b, Steps: 1, Seed: 1, Size: 2x2, Bar: "", Baz: "\\x"',
    # JSON escapes: a surrogate pair, \u00e9, \/, control characters
    'p\nNote: "\\ud83d\\ude00 smile, ok", Acc: "caf\\u00e9\\/\\t", Steps: 3, Seed: 4',
    # Unicode spaces around keys and values (U+00A0, U+3000)
    "p\n\u00a0Steps:\u3000 20, Seed: 1,\u00a0Size: 5x6, CFG scale: 0.25",
    "just a prompt, with: a colon",
    "",
    "p\nSteps: many, Seed: 1.5, Size: 512x, CFG scale: abc, Sampler: Euler",
    "first\nNegative prompt: one\nNegative prompt: two\nSteps: 1, Seed: 1, Size: 1x1",
    "p\nSteps: 20, Seed: -1, Size: 0x0, RNG: NV, Tiling: True, Version: coin 0.1",
    "multi\n\nblank lines\nNegative prompt:\nnext\nSteps: 1, Seed: 1, Size: 1x1",
]

# Parameters in create_infotext's order, as coin's struct would hold them.
FORMAT_CASES = [
    ("a cat", "dog", {"Steps": "20", "Sampler": "Euler a", "Schedule type": "Karras",
                      "CFG scale": "7", "Seed": "1", "Size": "512x512",
                      "Model hash": "0123456789", "Model": "sd-v1-5", "RNG": "CPU",
                      "TI hashes": "tok: 0123456789ab", "Version": "coin 0.1"}),
    ("a cat, sitting: on a mat\nsecond line", "",
     {"Steps": "30", "Sampler": "DPM++ 2M", "CFG scale": "7.5", "Seed": "4294967295",
      "Size": "768x512", "Model": "my, model: v2", "Clip skip": "2",
      "TI hashes": "a: 000000000000, b: 111111111111", "Lora hashes": "x: 1, y: 2",
      "Version": "coin 0.1"}),
    (" spaced prompt", "neg\nwith \"quotes\" and \\ and\ttab",
     {"Steps": "1", "Sampler": "DDIM", "CFG scale": "1", "Seed": "-5", "Size": "64x64",
      "Tiling": "True", "Note": "quote \" in it", "Ctrl": "bell\u0007, ok"}),
    ("", "", {"Steps": "4", "Sampler": "PLMS", "CFG scale": "12.25", "Seed": "0",
              "Size": "8x16", "Model": "名前: モデル"}),
    ("only a prompt", "", {}),
]


def infotext_cases():
    parse = []
    for text in PARSE_TEXTS:
        prompt, neg, res = parse_generation_parameters(text)
        sched = None
        if "Sampler" in res and "Schedule type" not in res:
            res["Sampler"], sched = split_sampler(res["Sampler"])
        if sched:
            res["Schedule type"] = sched
        parse.append({"text": text, "prompt": prompt, "negative": neg,
                      "params": [[k, v] for k, v in res.items()]})
    fmt = []
    for prompt, neg, params in FORMAT_CASES:
        text = create_infotext(prompt, neg, params)
        # and A1111 reads back what it wrote
        p2, n2, res = parse_generation_parameters(text)
        assert p2 == prompt.strip() and n2 == neg.strip(), (p2, n2)
        fmt.append({"prompt": prompt, "negative": neg,
                    "params": [[k, v] for k, v in params.items()], "text": text})
    with open(path("infotext.json"), "w", encoding="utf-8") as f:
        json.dump({"parse": parse, "format": fmt}, f, ensure_ascii=False, indent=1)
        f.write("\n")


def main():
    global JPEG_MAXDIFF
    os.makedirs(OUT, exist_ok=True)
    if len(sys.argv) > 1:      # "name=maxdiff ..." from a measuring run
        JPEG_MAXDIFF = {k: int(v) for k, v in (a.split("=") for a in sys.argv[1:])}
    srcs = sources()
    resize_cases(srcs)
    ti_cases(srcs)
    png_kinds()
    other_formats()
    u8_case()
    infotext_cases()
    with open(path("manifest.txt"), "w") as f:
        f.write("# made by tools/reference/make_image_goldens.py; see its docstring\n")
        f.write("\n".join(lines) + "\n")
    total = sum(os.path.getsize(path(n)) for n in os.listdir(OUT))
    print(f"{len(lines)} cases, {len(os.listdir(OUT))} files, {total / 1024:.0f} KiB in {OUT}")


if __name__ == "__main__":
    main()
