/*
 * toyworld.h - the toy world of tools/toyworld/world.py, drawn in C.
 *
 * The toy model coin ships (assets/toy/toy-sd1.safetensors) was trained on
 * this world: one object (six named shapes, or the unnamed thumbs-up glyph)
 * in one palette colour on a background of another, at a random place and
 * size, 64x64 pixels, hard-edged.  The geometry here is the same as in
 * world.py (a pixel takes the object's colour when its centre is inside the
 * object), so the judge (toyjudge.h) can be measured on freshly drawn
 * ground truth, and so the judge can compare what it sees against each
 * class's exact outline.  The random scenes follow world.py's distribution
 * but not its random number stream.
 */
#ifndef COIN_TOYWORLD_H
#define COIN_TOYWORLD_H

#include <stdint.h>

#define TOY_SIZE 64

enum {
    TOY_CIRCLE, TOY_SQUARE, TOY_TRIANGLE, TOY_STAR, TOY_CROSS, TOY_HEART,
    TOY_GLYPH,          /* the thumbs-up pictogram, never named in captions */
    TOY_CLASSES
};
#define TOY_COLOURS 6

/* "circle" ... "heart", "thumbsup" (world.py's CLASSES). */
extern const char *const toy_class_names[TOY_CLASSES];
/* "red", "green", "blue", "yellow", "white", "black". */
extern const char *const toy_colour_names[TOY_COLOURS];
extern const uint8_t toy_palette[TOY_COLOURS][3];

/* One scene: class, foreground and background palette indices (different),
 * the object's centre in pixels and its half-size s in pixels. */
typedef struct toy_scene {
    int cls, fg, bg;
    double cx, cy, s;
} toy_scene;

/* 1 when the unit-square point (u, v) (v downwards; the object spans about
 * [-1, 1]^2) lies inside class cls, else 0. */
int toy_inside(int cls, double u, double v);

/* Draws sc into rgb[TOY_SIZE * TOY_SIZE * 3] (row-major RGB). */
void toy_render(const toy_scene *sc, uint8_t *rgb);

/* A random scene from world.py's distribution (the glyph 0.35 times as often
 * as each named shape, half-size 11..24, fully inside the image), drawn
 * from *state (any seed; advanced). */
void toy_random_scene(uint64_t *state, toy_scene *sc);

/* Index of a class or colour name, or -1. */
int toy_class_index(const char *name);
int toy_colour_index(const char *name);

#endif
