/*
 * termimg.h - pictures in a text terminal: what the terminal can show, and
 * images turned into the bytes that show them.
 *
 * The workbench asks the terminal once, before curses starts, what it can do
 * (termcaps_query): sixel graphics (from the primary device attributes),
 * the size of a character cell in pixels, colours (COLORTERM, TERM, NO_COLOR)
 * and UTF-8.  COIN_GRAPHICS=sixel|blocks|none overrides the graphics mode.
 *
 * An image is rendered to a byte string (termimg_render) that the caller
 * writes to the terminal itself, with the cursor at the image's top-left
 * cell, after curses has refreshed: curses does not know about these cells,
 * so the caller blanks the area in curses and writes the image again after
 * every full redraw, and never while a dialog covers it.  Sixel output is
 * made with libsixel and wrapped for tmux's passthrough when inside tmux;
 * half-block output uses U+2580 with 24-bit or 256-colour SGR codes, one
 * row of cells per two rows of pixels, each row ending by moving the cursor
 * back to the image's left column (so it needs no knowledge of the screen).
 */
#ifndef COIN_TERMIMG_H
#define COIN_TERMIMG_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef enum { GFX_NONE = 0, GFX_BLOCKS, GFX_SIXEL } gfx_mode;

typedef struct {
    gfx_mode gfx;   /* what images are drawn with */
    int cell_w;     /* pixels per character cell; 0 when the terminal did not say */
    int cell_h;
    int colors;     /* 0 (monochrome or NO_COLOR), 8, 256 or 16777216 */
    int utf8;       /* 1 when the locale is UTF-8; else ASCII fallbacks */
    int in_tmux;    /* sixel needs tmux's DCS passthrough */
} term_caps;

/* Asks the terminal on in_fd/out_fd (a tty, not yet in curses mode) and
 * reads the environment.  Waits at most timeout_ms for answers, so a silent
 * terminal costs that long and no more.  Never fails: what cannot be learnt
 * takes the safe value (blocks when colours exist, else none). */
void termcaps_query(int in_fd, int out_fd, int timeout_ms, term_caps *caps);

/* The part of termcaps_query that reads the terminal's answer bytes
 * (device attributes "\033[?...c", cell size "\033[6;H;Wt", text area
 * "\033[4;H;Wt"), so canned answers can be tested.  n may be 0. */
void termcaps_parse_answer(const char *answer, size_t n, term_caps *caps);

/* Renders rgb [h, w, 3] (row-major, 8-bit) to fit in cols x rows cells,
 * keeping the aspect ratio, in caps->gfx's form.  *out is malloc'd
 * (NUL-terminated, *out_len bytes without the NUL); *used_cols/*used_rows
 * get the cells the picture covers.  GFX_NONE gives an empty string. */
int termimg_render(const term_caps *caps, const uint8_t *rgb, int w, int h,
                   int cols, int rows, char **out, size_t *out_len,
                   int *used_cols, int *used_rows, coin_error *err);

#endif
