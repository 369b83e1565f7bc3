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
 * every full redraw, and never while a dialog covers it.  Every non-empty
 * output starts with DECSC (ESC 7) and ends with DECRC (ESC 8): the cursor
 * and the SGR attributes are back where they were, at the top-left cell,
 * when the bytes are written, so the caller only has to put the cursor back
 * where curses believes it is.  The image never touches cells outside
 * used_cols x used_rows; keep it off the screen's last row (xterm scrolls
 * the whole screen by a line after a sixel image that reaches the last
 * row; measured with tools/screenshots).
 *
 * The sequence for a curses caller, per image (y, x 0-based):
 *   doupdate();                           curses' bytes are out
 *   getyx(curscr, cy, cx);                where curses thinks the cursor is
 *   printf("\033[%d;%dH", y + 1, x + 1);  fwrite(bytes); printf("\033[%d;%dH",
 *   cy + 1, cx + 1); fflush(stdout);
 * To remove an image (dialog, screen change, resize), make curses repaint
 * its cells: wredrawln(stdscr, y, used_rows) (then touchwin every window
 * drawn over those lines before its wnoutrefresh, or stdscr's blanks win)
 * or clearok(curscr, TRUE), then refresh; text written over sixel pixels
 * erases them (xterm, checked; tools/screenshots/showimg --curses does all
 * this).
 * Rendering costs ~50 ms for a 512x512 image in sixel (quantisation),
 * ~3 ms in blocks: keep the bytes per image and area, and write them again
 * after each redraw rather than rendering again.
 *
 * Sixel output is made with libsixel (7-bit DCS, up to 256 colour
 * registers), wrapped in tmux's passthrough when tmux itself cannot show
 * sixel.  Half-block output uses U+2580 with 24-bit, 256 or 8-colour SGR
 * codes (the nearest palette colour in CIELAB), one row of cells per two
 * rows of pixels; each row starts with
 * DECRC + CUD so it needs no knowledge of the screen's width or position.
 * Without UTF-8 a cell is a space coloured with the mean of its two pixels;
 * without colour (forced blocks) a character of the ramp " .:-=+*#%@".
 */
#ifndef COIN_TERMIMG_H
#define COIN_TERMIMG_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef enum { GFX_NONE = 0, GFX_BLOCKS, GFX_SIXEL } gfx_mode;

typedef struct {
    gfx_mode gfx;   /* what images are drawn with */
    int cell_w;     /* pixels per character cell; 0 when the terminal did not say
                     * (16t answer, else 14t / 18t, else TIOCGWINSZ pixels) */
    int cell_h;
    int colors;     /* 0 (monochrome or NO_COLOR), 8, 256 or 16777216 */
    int utf8;       /* 1 when the locale is UTF-8; else ASCII fallbacks */
    int in_tmux;    /* TMUX is set: the answers came from tmux, not the terminal */
    int tmux_passthrough; /* sixel goes out wrapped in tmux's DCS passthrough:
                           * inside a tmux that does not show sixel itself
                           * (needs `set -g allow-passthrough on`, tmux 3.3+) */
} term_caps;

/*
 * Asks the terminal on in_fd/out_fd (a tty, not yet in curses mode) and
 * reads the environment.  Sends XTWINOPS 16t (cell size), 14t (text area in
 * pixels), 18t (text area in cells) and DA1 last; terminals answer in order,
 * so the DA1 answer ends the wait.  Waits at most timeout_ms for it, so a
 * silent terminal costs that long and no more; the tty is in non-canonical
 * no-echo mode only meanwhile, with SIGINT/SIGTERM/SIGTSTP... held back, and
 * is always restored.  Without a tty on both fds nothing is sent.  The
 * cell size falls back to the tty's window size in pixels (TIOCGWINSZ),
 * which tmux panes and ssh sessions carry.  timeout_ms <= 0 asks nothing.
 * Never fails: what cannot be learnt takes the safe value.
 *   gfx: sixel when the DA1 answer lists attribute 4 (NO_COLOR does not
 *        turn it off: it is about coloured text, and the pictures are the
 *        content), else blocks when colors > 0, else none;
 *        COIN_GRAPHICS=sixel|blocks|none overrides (inside tmux, forced
 *        sixel goes through the passthrough).  500 ms is a fair timeout:
 *        the answer needs one round trip, which over SSH can take 300.
 *   colors: 0 when NO_COLOR is non-empty or TERM is unset or "dumb";
 *        16777216 for COLORTERM truecolor/24bit; 256 for TERM *256color*;
 *        else 8.
 *   utf8: the codeset of the LC_ALL/LC_CTYPE/LANG locale, read with
 *        newlocale(), so the process locale is not changed.
 * Late answers (after the timeout) may reach curses as keys: the input
 * queue is flushed before returning, which catches most of them.
 */
void termcaps_query(int in_fd, int out_fd, int timeout_ms, term_caps *caps);

/* Fills caps from the environment alone (what termcaps_query does before
 * asking): colours, utf8, in_tmux, cell size 0, gfx blocks or none, then
 * COIN_GRAPHICS.  Never fails. */
void termcaps_from_env(term_caps *caps);

/* The part of termcaps_query that reads the terminal's answer bytes
 * (device attributes "\033[?...c", cell size "\033[6;H;Wt", text area
 * "\033[4;H;Wt", text area in cells "\033[8;R;Ct"), so canned answers can
 * be tested.  n may be 0.  Updates caps as termcaps_query does after
 * termcaps_from_env (which applies COIN_GRAPHICS again afterwards; this
 * function does not read the environment): a complete DA1 ("?63;...c";
 * tmux 3.4+ built with sixel: "?1;2;4c") listing attribute 4 turns gfx to sixel and clears
 * tmux_passthrough (inside tmux the answer came from a tmux that shows sixel
 * itself); a cell size is taken from 6;H;W, else from the text area's
 * pixels divided by its cells.  Other sequences, bytes outside sequences,
 * incomplete sequences and absurd numbers are ignored. */
void termcaps_parse_answer(const char *answer, size_t n, term_caps *caps);

/* Renders rgb [h, w, 3] (row-major, 8-bit) to fit in cols x rows cells,
 * keeping the aspect ratio, in caps->gfx's form.  *out is malloc'd
 * (NUL-terminated, *out_len bytes without the NUL); *used_cols and
 * *used_rows get the cells the picture covers, counted from the top-left
 * cell (see termimg_fit for the size).  GFX_NONE gives an empty string and
 * 0 x 0 cells.  COIN_EINVAL for an empty or oversized image or area,
 * COIN_ENOMEM, or COIN_EIO when libsixel fails; *out is NULL then. */
int termimg_render(const term_caps *caps, const uint8_t *rgb, int w, int h,
                   int cols, int rows, char **out, size_t *out_len,
                   int *used_cols, int *used_rows, coin_error *err);

/* The size termimg_render scales a w x h image to, without rendering it:
 * sixel: pixels fitting cols*cell_w x rows*cell_h (10 x 20 when the cell
 * size is unknown); blocks: block pixels (1 per column, 2 per row) fitting
 * cols x 2*rows, each block pixel taken as cell_w x cell_h/2 screen pixels.
 * One side fills its bound, the other is rounded to nearest; images are
 * scaled up as well as down (Pillow-style bicubic).  used_cols/used_rows
 * may be NULL.  Everything is 0 for GFX_NONE or empty sizes. */
void termimg_fit(const term_caps *caps, int w, int h, int cols, int rows,
                 int *px_w, int *px_h, int *used_cols, int *used_rows);

/* The xterm 256-colour index (16..255: the 6x6x6 cube on 0,95,135,175,215,
 * 255 and the grey ramp 8..238) nearest to an sRGB colour in CIELAB (CIE76),
 * as the 256-colour half-blocks use it; the 8-colour ones pick among xterm's
 * default colours 0..7 the same way.  Thread-safe. */
int termimg_xterm256_index(uint8_t r, uint8_t g, uint8_t b);

#endif
