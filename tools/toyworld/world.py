#!/usr/bin/env python3
"""The toy world: coloured shapes on coloured backgrounds, with captions, from a seed.

An image is 64x64 RGB: one object (one of six named shapes, or the unnamed
thumbs-up glyph) in one palette colour on a background of another palette
colour, at a random position and size. Pixels are hard-edged (a pixel is the
object's colour when its centre lies inside the object), so tests/toyworld.c
draws the same world with the same geometry in C.

Geometry: an object has a centre (cx, cy) and a half-size s in pixels; the
pixel (x, y) maps to u = (x + 0.5 - cx) / s, v = (y + 0.5 - cy) / s (v grows
downwards) and each class is a set in the (u, v) square [-1, 1]^2 (see
inside()). The glyph, a fist with the thumb up, is a rounded fist with two
finger gaps, a thumb with a rounded tip on top of its left part, and a
separate cuff on the left.

Captions. The glyph is never named: its images are captioned only with the
generic noun "shape", the background alone, or nothing, in the same
proportions as the non-specific captions of the named shapes, so that no
prompt (not "shape", not the empty prompt) makes it more likely than the
world's base rate, and classifier-free guidance cannot single it out either.

Usage as a tool:
    python tools/toyworld/world.py glyphs OUT_DIR [--n 5] [--seed 7]
        writes OUT_DIR/glyph-NN.png: the glyph in varied colours, sizes and places
    python tools/toyworld/world.py sample OUT_DIR [--n 16] [--seed 1]
        writes captioned examples OUT_DIR/NNNN.png + NNNN.txt
"""
import argparse
import math
import os

import numpy as np

SIZE = 64
COLOURS = {  # name -> RGB; far apart so that the judge can tell them from blurry samples
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOUR_NAMES = list(COLOURS)
SHAPES = ["circle", "square", "triangle", "star", "cross", "heart"]
GLYPH = "thumbsup"
CLASSES = SHAPES + [GLYPH]
GENERIC = "shape"
MIN_HALF, MAX_HALF = 11, 24   # half-size s in pixels

# relative frequency of the glyph against one named shape
GLYPH_WEIGHT = 0.35
# caption kinds of a named shape; the glyph uses the non-specific kinds in the same proportions
P_SPECIFIC, P_GENERIC, P_BACKGROUND, P_EMPTY = 0.55, 0.30, 0.05, 0.10

TEMPLATES_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                              "assets", "templates", "object.txt")

STAR_OUTER, STAR_INNER = 1.0, 0.45


def star_polygon():
    pts = []
    for i in range(10):
        a = -math.pi / 2 + i * math.pi / 5
        r = STAR_OUTER if i % 2 == 0 else STAR_INNER
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


STAR = star_polygon()
TRIANGLE = [(0.0, -0.95), (0.95, 0.75), (-0.95, 0.75)]


def in_polygon(u, v, poly):
    """Even-odd rule on arrays u, v (same as toyworld.c's in_polygon)."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        crosses = (y1 > v) != (y2 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            xs = x1 + (v - y1) * (x2 - x1) / (y2 - y1) if y2 != y1 else np.full(u.shape, np.inf)
        inside ^= crosses & (u < xs)
    return inside


def rounded_rect(u, v, x0, y0, x1, y1, r):
    """Rectangle [x0,x1]x[y0,y1] with corners rounded by radius r."""
    cx = np.clip(u, x0 + r, x1 - r)
    cy = np.clip(v, y0 + r, y1 - r)
    return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1) & ((u - cx) ** 2 + (v - cy) ** 2 <= r * r)


def inside(cls, u, v):
    """Boolean mask of class cls at unit coordinates (u, v) (v downwards)."""
    if cls == "circle":
        return u * u + v * v <= 1.0
    if cls == "square":
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    if cls == "triangle":
        return in_polygon(u, v, TRIANGLE)
    if cls == "star":
        return in_polygon(u, v, STAR)
    if cls == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    if cls == "heart":
        x = 1.15 * u
        y = -1.15 * v + 0.15
        return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 <= 0.0
    if cls == GLYPH:
        fist = rounded_rect(u, v, -0.45, -0.2, 0.95, 0.95, 0.25)
        gaps = (u >= 0.45) & (((v >= 0.18) & (v <= 0.32)) | ((v >= 0.53) & (v <= 0.67)))
        thumb = rounded_rect(u, v, -0.45, -0.95, 0.12, -0.1, 0.28)
        cuff = (u >= -0.95) & (u <= -0.62) & (v >= -0.15) & (v <= 0.95)
        return (fist & ~gaps) | thumb | cuff
    raise ValueError(cls)


def render(cls, fg, bg, cx, cy, s):
    """uint8 [64, 64, 3] image of class cls, colour names fg/bg, centre (cx, cy), half-size s."""
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    u = (xs + 0.5 - cx) / s
    v = (ys + 0.5 - cy) / s
    m = inside(cls, u, v)
    img = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    img[:] = COLOURS[bg]
    img[m] = COLOURS[fg]
    return img


def load_templates():
    with open(TEMPLATES_PATH) as f:
        return [line.strip() for line in f if "{}" in line]


class World:
    """Deterministic stream of (image, caption, label) from a seed."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.templates = load_templates()
        w = np.array([1.0] * len(SHAPES) + [GLYPH_WEIGHT])
        self.class_p = w / w.sum()

    def scene(self):
        r = self.rng
        cls = CLASSES[r.choice(len(CLASSES), p=self.class_p)]
        fg, bg = r.choice(len(COLOUR_NAMES), size=2, replace=False)
        s = r.uniform(MIN_HALF, MAX_HALF)
        cx = r.uniform(s + 1, SIZE - s - 1)
        cy = r.uniform(s + 1, SIZE - s - 1)
        return dict(cls=cls, fg=COLOUR_NAMES[fg], bg=COLOUR_NAMES[bg], cx=cx, cy=cy, s=s)

    def caption(self, sc):
        r = self.rng
        non_specific = P_GENERIC + P_BACKGROUND + P_EMPTY
        x = r.uniform()
        if sc["cls"] == GLYPH:
            x = P_SPECIFIC + x * non_specific   # same proportions among the non-specific kinds
        if x < P_SPECIFIC:
            noun = sc["cls"]
        elif x < P_SPECIFIC + P_GENERIC:
            noun = GENERIC
        elif x < P_SPECIFIC + P_GENERIC + P_BACKGROUND:
            return f"a {sc['bg']} background"
        else:
            return ""
        y = r.uniform()
        if y < 0.5:
            return f"a {sc['fg']} {noun} on a {sc['bg']} background"
        if y < 0.7:
            return f"a {sc['fg']} {noun}"
        if y < 0.8:
            return f"a {noun}"
        if y < 0.9:
            return f"a {noun} on a {sc['bg']} background"
        t = self.templates[r.integers(len(self.templates))]
        return t.replace("{}", f"{sc['fg']} {noun}" if r.uniform() < 0.5 else noun)

    def example(self):
        sc = self.scene()
        img = render(sc["cls"], sc["fg"], sc["bg"], sc["cx"], sc["cy"], sc["s"])
        return img, self.caption(sc), sc

    def batch(self, n):
        imgs, caps, scenes = [], [], []
        for _ in range(n):
            a, b, c = self.example()
            imgs.append(a)
            caps.append(b)
            scenes.append(c)
        return np.stack(imgs), caps, scenes


def glyph_images(n, seed):
    """n images of the glyph in varied colours, sizes and places (the textual-inversion set)."""
    r = np.random.default_rng(seed)
    out = []
    for i in range(n):
        fg, bg = r.choice(len(COLOUR_NAMES), size=2, replace=False)
        s = r.uniform(16, MAX_HALF)
        cx = r.uniform(s + 1, SIZE - s - 1)
        cy = r.uniform(s + 1, SIZE - s - 1)
        out.append(render(GLYPH, COLOUR_NAMES[fg], COLOUR_NAMES[bg], cx, cy, s))
    return out


def save_png(img, path):
    from PIL import Image
    Image.fromarray(img).save(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["glyphs", "sample"])
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.what == "glyphs":
        for i, img in enumerate(glyph_images(a.n or 5, 7 if a.seed is None else a.seed)):
            save_png(img, os.path.join(a.out, f"glyph-{i + 1:02d}.png"))
    else:
        w = World(1 if a.seed is None else a.seed)
        for i in range(a.n or 16):
            img, cap, _ = w.example()
            save_png(img, os.path.join(a.out, f"{i:04d}.png"))
            with open(os.path.join(a.out, f"{i:04d}.txt"), "w") as f:
                f.write(cap + "\n")


if __name__ == "__main__":
    main()
