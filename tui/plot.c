/*
 * plot.c - braille line plots and sparklines (plot.h).
 */
#include "tui/plot.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int plot_canvas_init(plot_canvas *c, int cols, int rows)
{
    memset(c, 0, sizeof *c);
    if (cols < 1 || rows < 1)
        return -1;
    c->dots = calloc((size_t)cols * rows, 1);
    c->owner = calloc((size_t)cols * rows, 1);
    if (!c->dots || !c->owner) {
        plot_canvas_free(c);
        return -1;
    }
    c->cols = cols;
    c->rows = rows;
    return 0;
}

void plot_canvas_free(plot_canvas *c)
{
    free(c->dots);
    free(c->owner);
    memset(c, 0, sizeof *c);
}

/* Blanks every dot. */
static void plot_canvas_clear(plot_canvas *c)
{
    memset(c->dots, 0, (size_t)c->cols * c->rows);
    memset(c->owner, 0, (size_t)c->cols * c->rows);
}

/* Sets dot (px, py), px in [0, 2 cols) from the left and py in [0, 4 rows)
 * from the top; dots outside are ignored.  owner: 1 + series index. */
static void plot_set_dot(plot_canvas *c, int px, int py, int owner)
{
    if (px < 0 || py < 0 || px >= 2 * c->cols || py >= 4 * c->rows)
        return;
    size_t cell = (size_t)(py / 4) * c->cols + px / 2;
    c->dots[cell] |= PLOT_DOT(px % 2, py % 4);
    c->owner[cell] = (uint8_t)owner;
}

/* Bresenham's line, both ends included. */
static void line(plot_canvas *c, int x0, int y0, int x1, int y1, int owner)
{
    int dx = abs(x1 - x0), dy = -abs(y1 - y0);
    int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1, e = dx + dy;
    for (;;) {
        plot_set_dot(c, x0, y0, owner);
        if (x0 == x1 && y0 == y1)
            break;
        int e2 = 2 * e;
        if (e2 >= dy) {
            e += dy;
            x0 += sx;
        }
        if (e2 <= dx) {
            e += dx;
            y0 += sy;
        }
    }
}

/* The value a point has on the y axis, or NaN when it cannot be shown. */
static double axis_y(float y, int log_y)
{
    if (!isfinite(y))
        return NAN;
    if (log_y)
        return y > 0 ? log10(y) : NAN;
    return y;
}

size_t plot_braille(plot_canvas *c, const plot_series *s, int n_series, const plot_opts *o)
{
    plot_canvas_clear(c);
    int log_y = o && o->log_y;
    double x0 = INFINITY, x1 = -INFINITY;
    for (int k = 0; k < n_series; k++)
        if (s[k].n) {
            x0 = fmin(x0, s[k].x[0]);
            x1 = fmax(x1, s[k].x[s[k].n - 1]);
        }
    if (!(x0 <= x1))
        return 0;
    if (o && o->x_window > 0 && x1 - o->x_window > x0)
        x0 = x1 - o->x_window;
    double y0 = INFINITY, y1 = -INFINITY;
    for (int k = 0; k < n_series; k++)
        for (size_t i = 0; i < s[k].n; i++) {
            double v = axis_y(s[k].y[i], log_y);
            if (s[k].x[i] >= x0 && !isnan(v)) {
                y0 = fmin(y0, v);
                y1 = fmax(y1, v);
            }
        }
    if (!(y0 <= y1))
        return 0;
    if (y0 == y1) {
        /* one value: put it in the middle */
        y0 -= 0.5;
        y1 += 0.5;
    }
    c->x_min = x0;
    c->x_max = x1;
    c->y_min = log_y ? pow(10, y0) : y0;
    c->y_max = log_y ? pow(10, y1) : y1;
    int w = 2 * c->cols - 1, h = 4 * c->rows - 1;
    size_t drawn = 0;
    for (int k = 0; k < n_series; k++) {
        int have = 0, px_prev = 0, py_prev = 0;
        for (size_t i = 0; i < s[k].n; i++) {
            double v = axis_y(s[k].y[i], log_y);
            if (s[k].x[i] < x0 || isnan(v)) {
                have = 0;
                continue;
            }
            int px = x1 > x0 ? (int)lround((s[k].x[i] - x0) / (x1 - x0) * w) : 0;
            int py = (int)lround((y1 - v) / (y1 - y0) * h);
            if (have)
                line(c, px_prev, py_prev, px, py, k + 1);
            else
                plot_set_dot(c, px, py, k + 1);
            px_prev = px;
            py_prev = py;
            have = 1;
            drawn++;
        }
    }
    return drawn;
}

size_t plot_cell_utf8(uint8_t mask, char out[4])
{
    unsigned cp = 0x2800u + mask;
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    out[3] = '\0';
    return 3;
}

char plot_cell_ascii(uint8_t mask)
{
    int top = (mask & (PLOT_DOT(0, 0) | PLOT_DOT(0, 1) | PLOT_DOT(1, 0) | PLOT_DOT(1, 1))) != 0;
    int bottom = (mask & (PLOT_DOT(0, 2) | PLOT_DOT(0, 3) | PLOT_DOT(1, 2) | PLOT_DOT(1, 3))) != 0;
    return top && bottom ? ':' : top ? '\'' : bottom ? '.' : ' ';
}

void plot_ema(const float *y, size_t n, float alpha, float *out)
{
    float avg = NAN;
    for (size_t i = 0; i < n; i++) {
        float v = y[i];
        if (!isfinite(v)) {
            out[i] = NAN;
            continue;
        }
        avg = isnan(avg) ? v : alpha * v + (1 - alpha) * avg;
        out[i] = avg;
    }
}

size_t plot_sparkline(const float *y, size_t n, int width, int utf8, char *out, size_t cap)
{
    static const char ascii[] = " .:-=+*#";
    size_t len = 0;
    out[0] = '\0';
    if (n == 0 || width < 1)
        return 0;
    if ((size_t)width > n)
        width = (int)n;
    double means[512];
    if (width > 512)
        width = 512;
    double lo = INFINITY, hi = -INFINITY;
    for (int b = 0; b < width; b++) {
        size_t from = n * (size_t)b / width, to = n * (size_t)(b + 1) / width;
        double sum = 0;
        int k = 0;
        for (size_t i = from; i < to; i++)
            if (isfinite(y[i])) {
                sum += y[i];
                k++;
            }
        means[b] = k ? sum / k : NAN;
        if (k) {
            lo = fmin(lo, means[b]);
            hi = fmax(hi, means[b]);
        }
    }
    for (int b = 0; b < width && len + 4 < cap; b++) {
        int level = 0;
        if (isnan(means[b])) {
            out[len++] = ' ';
            continue;
        }
        if (hi > lo)
            level = (int)lround((means[b] - lo) / (hi - lo) * 7);
        if (utf8) {
            unsigned cp = 0x2581u + (unsigned)level;
            out[len++] = (char)(0xE0 | (cp >> 12));
            out[len++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[len++] = (char)(0x80 | (cp & 0x3F));
        } else {
            out[len++] = ascii[level];
        }
    }
    out[len] = '\0';
    return len;
}
