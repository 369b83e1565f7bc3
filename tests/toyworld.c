/*
 * toyworld.c - the toy world's geometry and scenes (see toyworld.h); every
 * outline here mirrors inside() in tools/toyworld/world.py.
 */
#include "toyworld.h"

#include <math.h>
#include <string.h>

const char *const toy_class_names[TOY_CLASSES] = {
    "circle", "square", "triangle", "star", "cross", "heart", "thumbsup",
};
const char *const toy_colour_names[TOY_COLOURS] = {
    "red", "green", "blue", "yellow", "white", "black",
};
const uint8_t toy_palette[TOY_COLOURS][3] = {
    {220, 30, 30}, {30, 170, 40}, {30, 60, 220}, {240, 220, 30}, {245, 245, 245}, {15, 15, 15},
};

#define GLYPH_WEIGHT 0.35
#define MIN_HALF 11.0
#define MAX_HALF 24.0

static const double triangle[3][2] = {{0.0, -0.95}, {0.95, 0.75}, {-0.95, 0.75}};

/* Even-odd rule, the same crossing test as world.py's in_polygon. */
static int in_polygon(double u, double v, const double (*poly)[2], int n)
{
    int in = 0;
    for (int i = 0; i < n; i++) {
        double x1 = poly[i][0], y1 = poly[i][1];
        double x2 = poly[(i + 1) % n][0], y2 = poly[(i + 1) % n][1];
        if ((y1 > v) != (y2 > v)) {
            double xs = x1 + (v - y1) * (x2 - x1) / (y2 - y1);
            if (u < xs)
                in = !in;
        }
    }
    return in;
}

static int in_star(double u, double v)
{
    double star[10][2];
    for (int i = 0; i < 10; i++) {
        double a = -M_PI / 2 + i * M_PI / 5, r = i % 2 ? 0.45 : 1.0;
        star[i][0] = r * cos(a);
        star[i][1] = r * sin(a);
    }
    return in_polygon(u, v, (const double (*)[2])star, 10);
}

static double clampd(double x, double lo, double hi)
{
    return x < lo ? lo : x > hi ? hi : x;
}

static int rounded_rect(double u, double v, double x0, double y0, double x1, double y1,
                        double r)
{
    double cx = clampd(u, x0 + r, x1 - r), cy = clampd(v, y0 + r, y1 - r);
    return u >= x0 && u <= x1 && v >= y0 && v <= y1 &&
           (u - cx) * (u - cx) + (v - cy) * (v - cy) <= r * r;
}

int toy_inside(int cls, double u, double v)
{
    switch (cls) {
    case TOY_CIRCLE:
        return u * u + v * v <= 1.0;
    case TOY_SQUARE:
        return fabs(u) <= 0.85 && fabs(v) <= 0.85;
    case TOY_TRIANGLE:
        return in_polygon(u, v, triangle, 3);
    case TOY_STAR:
        return in_star(u, v);
    case TOY_CROSS:
        return (fabs(u) <= 0.3 && fabs(v) <= 0.95) || (fabs(v) <= 0.3 && fabs(u) <= 0.95);
    case TOY_HEART: {
        double x = 1.15 * u, y = -1.15 * v + 0.15, q = x * x + y * y - 1.0;
        return q * q * q - x * x * y * y * y <= 0.0;
    }
    case TOY_GLYPH: {
        int fist = rounded_rect(u, v, -0.45, -0.2, 0.95, 0.95, 0.25);
        int gap = u >= 0.45 && ((v >= 0.18 && v <= 0.32) || (v >= 0.53 && v <= 0.67));
        int thumb = rounded_rect(u, v, -0.45, -0.95, 0.12, -0.1, 0.28);
        int cuff = u >= -0.95 && u <= -0.62 && v >= -0.15 && v <= 0.95;
        return (fist && !gap) || thumb || cuff;
    }
    default:
        return 0;
    }
}

void toy_render(const toy_scene *sc, uint8_t *rgb)
{
    for (int y = 0; y < TOY_SIZE; y++)
        for (int x = 0; x < TOY_SIZE; x++) {
            double u = (x + 0.5 - sc->cx) / sc->s, v = (y + 0.5 - sc->cy) / sc->s;
            const uint8_t *c = toy_palette[toy_inside(sc->cls, u, v) ? sc->fg : sc->bg];
            memcpy(rgb + 3 * (y * TOY_SIZE + x), c, 3);
        }
}

/* splitmix64: small, good enough for scene parameters. */
static uint64_t next_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double uniform(uint64_t *s)
{
    return (double)(next_u64(s) >> 11) * (1.0 / 9007199254740992.0);
}

void toy_random_scene(uint64_t *state, toy_scene *sc)
{
    double total = (TOY_CLASSES - 1) + GLYPH_WEIGHT, x = uniform(state) * total;
    sc->cls = x < TOY_CLASSES - 1 ? (int)x : TOY_GLYPH;
    sc->fg = (int)(uniform(state) * TOY_COLOURS);
    sc->bg = (sc->fg + 1 + (int)(uniform(state) * (TOY_COLOURS - 1))) % TOY_COLOURS;
    sc->s = MIN_HALF + uniform(state) * (MAX_HALF - MIN_HALF);
    double lo = sc->s + 1, hi = TOY_SIZE - sc->s - 1;
    sc->cx = lo + uniform(state) * (hi - lo);
    sc->cy = lo + uniform(state) * (hi - lo);
}

int toy_class_index(const char *name)
{
    for (int i = 0; i < TOY_CLASSES; i++)
        if (!strcmp(name, toy_class_names[i]))
            return i;
    return -1;
}

int toy_colour_index(const char *name)
{
    for (int i = 0; i < TOY_COLOURS; i++)
        if (!strcmp(name, toy_colour_names[i]))
            return i;
    return -1;
}
