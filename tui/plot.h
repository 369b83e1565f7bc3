/*
 * plot.h - line plots drawn with Unicode braille characters, for the loss
 * curves of the workbench.
 *
 * A canvas of cols x rows character cells is a grid of 2 x 4 dots per cell
 * (braille's U+2800 block: each of the 256 patterns is one character), so
 * an 80-column plot has 160 dots across.  plot_braille maps series of
 * (x, y) points onto the dots, linear or logarithmic in y, and joins
 * consecutive points with straight lines so a sparse curve stays
 * continuous.  The canvas remembers which series drew last in each cell so
 * the caller can colour raw, smoothed and overlaid curves apart.  Nothing
 * here knows about curses: the caller turns masks into characters with
 * plot_cell_utf8 (or plot_cell_ascii where the terminal has no UTF-8).
 */
#ifndef COIN_PLOT_H
#define COIN_PLOT_H

#include <stddef.h>
#include <stdint.h>

/* Braille dot bits (Unicode's numbering): column 0 has dots 1, 2, 3, 7 from
 * the top, column 1 has dots 4, 5, 6, 8. */
#define PLOT_DOT(col, row) ((uint8_t)((col) == 0 ? ((row) < 3 ? 1u << (row) : 0x40u) \
                                                 : ((row) < 3 ? 8u << (row) : 0x80u)))

typedef struct plot_series {
    const float *x, *y;     /* [n] points in ascending x; NaN y breaks the line */
    size_t n;
} plot_series;

typedef struct plot_opts {
    int log_y;              /* 1: y on a log10 axis (points <= 0 are left out) */
    int x_window;           /* > 0: show only the last x_window units of x */
} plot_opts;

typedef struct plot_canvas {
    int cols, rows;
    uint8_t *dots;          /* [rows * cols] braille bit masks */
    uint8_t *owner;         /* [rows * cols] 1 + index of the series that drew last, 0: none */
    double x_min, x_max;    /* the ranges plot_braille used, in data units */
    double y_min, y_max;
} plot_canvas;

/* Allocates a blank cols x rows canvas (both at least 1).  0 or -1 when out
 * of memory. */
int plot_canvas_init(plot_canvas *c, int cols, int rows);
/* Frees c's dots and leaves it empty (freeing it again does nothing). */
void plot_canvas_free(plot_canvas *c);

/* Draws the series onto c (which is cleared first) with one shared x and y
 * range: x from the smallest to the largest x of all series (or the last
 * o->x_window units), y from the smallest to the largest y shown.  A single
 * value is centred.  Returns the number of points drawn. */
size_t plot_braille(plot_canvas *c, const plot_series *s, int n_series, const plot_opts *o);

/* The UTF-8 bytes of the braille character for mask (3 bytes, U+2800 +
 * mask) into out[0..2]; returns 3. */
size_t plot_cell_utf8(uint8_t mask, char out[4]);
/* A stand-in for terminals without UTF-8: ' ', '\'' (top half only), '.'
 * (bottom half only) or ':' (both). */
char plot_cell_ascii(uint8_t mask);

/* Exponential moving average: out[i] = alpha * y[i] + (1 - alpha) *
 * out[i-1], starting from the first finite value; NaN inputs give NaN and
 * leave the average where it was.  out may be y. */
void plot_ema(const float *y, size_t n, float alpha, float *out);

/* Sparkline of y[n] in width cells: each cell the mean of its share of the
 * points, scaled between the smallest and largest mean, written as one of
 * U+2581..U+2588 (or " .:-=+*#" in ASCII).  out gets at most width * 3
 * bytes plus a NUL; returns its length. */
size_t plot_sparkline(const float *y, size_t n, int width, int utf8, char *out, size_t cap);

#endif
