/*
 * toyjudge.c - the toy world's judge (see toyjudge.h).
 */
#include "toyjudge.h"

#include <stdlib.h>
#include <string.h>

#include "toyworld.h"

_Static_assert(TOY_CLASSES <= 8, "toy_verdict.iou_class holds 8 classes");

static int nearest_colour(const uint8_t *p)
{
    int best = 0;
    long best_d = -1;
    for (int i = 0; i < TOY_COLOURS; i++) {
        long dr = p[0] - toy_palette[i][0], dg = p[1] - toy_palette[i][1],
             db = p[2] - toy_palette[i][2], d = dr * dr + dg * dg + db * db;
        if (best_d < 0 || d < best_d) {
            best_d = d;
            best = i;
        }
    }
    return best;
}

static int argmax(const int *votes, int n, int skip)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if (i != skip && (best < 0 || votes[i] > votes[best]))
            best = i;
    return best;
}

/* The extent of each class's outline in unit coordinates, measured once on a
 * fine grid (the outlines are fixed, so this is a property of the world). */
static double ext[TOY_CLASSES][4];   /* umin, umax, vmin, vmax */

static void measure_extents(void)
{
    const double step = 0.0025;
    for (int c = 0; c < TOY_CLASSES; c++) {
        double *e = ext[c];
        e[0] = e[2] = 9;
        e[1] = e[3] = -9;
        for (double v = -1.2; v <= 1.2; v += step)
            for (double u = -1.2; u <= 1.2; u += step)
                if (toy_inside(c, u, v)) {
                    if (u < e[0]) e[0] = u;
                    if (u > e[1]) e[1] = u;
                    if (v < e[2]) e[2] = v;
                    if (v > e[3]) e[3] = v;
                }
    }
}

/* Overlap of class c's outline, of half-size s centred at (cx, cy), with mask. */
static double iou_at(const uint8_t *mask, int w, int h, int c, double cx, double cy, double s)
{
    long inter = 0, uni = 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int a = mask[y * w + x];
            int b = toy_inside(c, (x + 0.5 - cx) / s, (y + 0.5 - cy) / s);
            inter += a && b;
            uni += a || b;
        }
    return uni ? (double)inter / (double)uni : 0.0;
}

void toy_judge(const uint8_t *rgb, int w, int h, toy_verdict *out)
{
    static int measured;
    if (!measured) {
        measure_extents();
        measured = 1;
    }
    memset(out, 0, sizeof *out);
    out->cls = out->fg = TOY_JUDGE_NONE;
    int n = w * h;
    uint8_t *idx = malloc((size_t)n), *mask = calloc((size_t)n, 1);
    if (!idx || !mask) {
        free(idx);
        free(mask);
        out->bg = TOY_JUDGE_NONE;
        return;
    }
    for (int i = 0; i < n; i++)
        idx[i] = (uint8_t)nearest_colour(rgb + 3 * i);

    /* background: the border ring, two pixels deep */
    int votes[TOY_COLOURS] = {0}, ring = 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            if (x < 2 || y < 2 || x >= w - 2 || y >= h - 2) {
                votes[idx[y * w + x]]++;
                ring++;
            }
    out->bg = argmax(votes, TOY_COLOURS, -1);
    /* a background that is not one colour is no toy-world background */
    int plain = votes[out->bg] >= TOY_JUDGE_MIN_PURITY * ring;

    /* object: other colours, without isolated specks */
    int x0 = w, x1 = -1, y0 = h, y1 = -1, count = 0;
    memset(votes, 0, sizeof votes);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            if (idx[y * w + x] == out->bg)
                continue;
            int nb = 0;
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) {
                    int xx = x + dx, yy = y + dy;
                    if ((dx || dy) && xx >= 0 && yy >= 0 && xx < w && yy < h &&
                        idx[yy * w + xx] != out->bg)
                        nb++;
                }
            if (nb < 2)
                continue;
            mask[y * w + x] = 1;
            votes[idx[y * w + x]]++;
            count++;
            if (x < x0) x0 = x;
            if (x > x1) x1 = x;
            if (y < y0) y0 = y;
            if (y > y1) y1 = y;
        }
    if (count >= 12) {
        out->fg = argmax(votes, TOY_COLOURS, out->bg);
        plain = plain && votes[out->fg] >= TOY_JUDGE_MIN_PURITY * count;
        /* Fit each class's outline to the bounding box: centre the outline's
         * extent on the box's centre; the half-size from the width, the
         * height, or their mean (a blurry sample's box is not exact). */
        double bw = x1 + 1 - x0, bh = y1 + 1 - y0, mx = (x0 + x1 + 1) / 2.0,
               my = (y0 + y1 + 1) / 2.0;
        out->iou = -1;
        for (int c = 0; c < TOY_CLASSES; c++) {
            const double *e = ext[c];
            double sw = bw / (e[1] - e[0]), sh = bh / (e[3] - e[2]);
            double sizes[3] = {sw, sh, (sw + sh) / 2};
            double best = 0;
            for (int k = 0; k < 3; k++) {
                double s = sizes[k];
                double cx = mx - (e[0] + e[1]) / 2 * s, cy = my - (e[2] + e[3]) / 2 * s;
                double v = iou_at(mask, w, h, c, cx, cy, s);
                if (v > best)
                    best = v;
            }
            out->iou_class[c] = best;
            if (best > out->iou) {
                out->iou = best;
                out->cls = c;
            }
        }
        if (out->iou < TOY_JUDGE_MIN_IOU || !plain)
            out->cls = TOY_JUDGE_NONE;
    }
    free(idx);
    free(mask);
}
