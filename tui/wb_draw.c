/*
 * wb_draw.c - what every workbench screen draws with: clipped UTF-8 text
 * with an ASCII fallback, colours or attributes, the title and key bars,
 * dialogs, loss plots, and images written around curses (wb.h).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ncurses.h>

#include "core/image.h"
#include "tui/plot.h"
#include "tui/wb.h"

void draw_init_colors(wb *w)
{
    int rich = COLORS >= 256;
    init_pair(CP_TITLE, COLOR_BLACK, COLOR_CYAN);
    init_pair(CP_KEY, COLOR_BLACK, COLOR_CYAN);
    init_pair(CP_KEYTEXT, -1, -1);
    init_pair(CP_OK, COLOR_GREEN, -1);
    init_pair(CP_BAD, COLOR_RED, -1);
    init_pair(CP_WARN, COLOR_YELLOW, -1);
    init_pair(CP_DIM, rich ? 244 : COLOR_BLUE, -1);
    init_pair(CP_RAW, rich ? 67 : COLOR_BLUE, -1);
    init_pair(CP_SMOOTH, rich ? 214 : COLOR_YELLOW, -1);
    init_pair(CP_OVERLAY, rich ? 170 : COLOR_MAGENTA, -1);
    init_pair(CP_SEL, COLOR_BLACK, rich ? 117 : COLOR_CYAN);
    (void)w;
}

unsigned draw_attr(wb *w, int pair, unsigned fallback)
{
    return w->colors ? (unsigned)COLOR_PAIR(pair) : fallback;
}

/* Display width of one UTF-8 character starting at s (its byte length in
 * *len); -1 for a control character. */
static int char_width(const char *s, size_t n, size_t *len)
{
    mbstate_t ms = {0};
    wchar_t wc;
    size_t k = mbrtowc(&wc, s, n, &ms);
    if (k == (size_t)-1 || k == (size_t)-2 || k == 0) {
        *len = 1;
        return 1;
    }
    *len = k;
    int cw = wcwidth(wc);
    return cw < 0 ? 1 : cw;
}

int draw_text(wb *w, int y, int x, int width, unsigned attr, const char *s)
{
    if (y < 0 || y >= w->rows || x >= w->cols || width <= 0 || !s)
        return 0;
    if (x + width > w->cols)
        width = w->cols - x;
    attron(attr);
    move(y, x);
    int used = 0;
    size_t n = strlen(s);
    while (*s && used < width) {
        if ((unsigned char)*s < 0x80) {
            addch(*s == '\t' || (unsigned char)*s < 32 ? ' ' : (chtype)(unsigned char)*s);
            s++;
            n--;
            used++;
            continue;
        }
        size_t len;
        int cw = char_width(s, n, &len);
        if (used + cw > width)
            break;
        if (w->utf8)
            addnstr(s, (int)len);
        else
            for (int k = 0; k < cw; k++)
                addch('?');
        used += cw;
        s += len;
        n -= len;
    }
    attroff(attr);
    return used;
}

int draw_textf(wb *w, int y, int x, int width, unsigned attr, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return draw_text(w, y, x, width, attr, buf);
}

void draw_hline(wb *w, int y, int x, int width)
{
    move(y, x);
    for (int i = 0; i < width && x + i < w->cols; i++)
        addch(w->utf8 ? ACS_HLINE : '-');
}

void draw_title(wb *w, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    unsigned a = draw_attr(w, CP_TITLE, A_REVERSE);
    attron(a);
    move(0, 0);
    for (int i = 0; i < w->cols; i++)
        addch(' ');
    attroff(a);
    /* bold black on a colour turns grey in many terminals: bold only
     * where the title is reverse video */
    draw_text(w, 0, 0, w->cols, a | (w->colors ? 0 : A_BOLD), buf);
    char right[64];
    snprintf(right, sizeof right, "%d job%s active  ? help ", w->active_jobs,
             w->active_jobs == 1 ? "" : "s");
    int len = (int)strlen(right);
    if ((int)strlen(buf) + len + 2 < w->cols)
        draw_text(w, 0, w->cols - len, len, a, right);
}

/* keys: "key", "what", "key", "what", ..., NULL */
void draw_keybar(wb *w, const char *const *keys)
{
    int y = w->rows - 1, x = 0;
    move(y, 0);
    clrtoeol();
    for (int i = 0; keys[i] && keys[i + 1] && x < w->cols; i += 2) {
        int kl = (int)strlen(keys[i]), tl = (int)strlen(keys[i + 1]);
        if (x + kl + tl + 1 > w->cols)
            break;
        x += draw_text(w, y, x, kl, w->colors ? draw_attr(w, CP_KEY, 0) : A_REVERSE | A_BOLD,
                       keys[i]);
        x += draw_text(w, y, x, tl + 1, draw_attr(w, CP_KEYTEXT, A_NORMAL), keys[i + 1]);
        x += draw_text(w, y, x, 1, 0, " ");
    }
}

void draw_dialog(wb *w)
{
    wb_dialog *d = &w->dlg;
    /* size from the text */
    int lines = 0, longest = (int)strlen(d->title) + 4;
    for (const char *p = d->text; *p;) {
        const char *e = strchr(p, '\n');
        int len = e ? (int)(e - p) : (int)strlen(p);
        longest = len > longest ? len : longest;
        lines++;
        if (!e)
            break;
        p = e + 1;
    }
    if (d->kind == DLG_INPUT)
        lines += 2;
    int wd = longest + 4, ht = lines + 4;
    if (wd > w->cols - 2)
        wd = w->cols - 2;
    if (wd < 40)
        wd = 40;
    if (ht > w->rows - 2)
        ht = w->rows - 2;
    int y0 = (w->rows - ht) / 2, x0 = (w->cols - wd) / 2;
    unsigned a = A_NORMAL;
    for (int y = y0; y < y0 + ht; y++) {
        move(y, x0);
        for (int x = 0; x < wd; x++)
            addch(' ' | a);
    }
    /* frame */
    if (w->utf8) {
        mvaddch(y0, x0, ACS_ULCORNER);
        mvaddch(y0, x0 + wd - 1, ACS_URCORNER);
        mvaddch(y0 + ht - 1, x0, ACS_LLCORNER);
        mvaddch(y0 + ht - 1, x0 + wd - 1, ACS_LRCORNER);
        mvhline(y0, x0 + 1, ACS_HLINE, wd - 2);
        mvhline(y0 + ht - 1, x0 + 1, ACS_HLINE, wd - 2);
        mvvline(y0 + 1, x0, ACS_VLINE, ht - 2);
        mvvline(y0 + 1, x0 + wd - 1, ACS_VLINE, ht - 2);
    } else {
        mvhline(y0, x0, '-', wd);
        mvhline(y0 + ht - 1, x0, '-', wd);
        mvvline(y0 + 1, x0, '|', ht - 2);
        mvvline(y0 + 1, x0 + wd - 1, '|', ht - 2);
    }
    draw_textf(w, y0, x0 + 2, wd - 4, A_BOLD, " %s ", d->title);
    int y = y0 + 2, skip = d->top;
    for (const char *p = d->text; *p && y < y0 + ht - 2;) {
        const char *e = strchr(p, '\n');
        int len = e ? (int)(e - p) : (int)strlen(p);
        if (skip > 0) {
            skip--;
        } else {
            char line[1024];
            snprintf(line, sizeof line, "%.*s", len < 1023 ? len : 1023, p);
            draw_text(w, y++, x0 + 2, wd - 4, A_NORMAL, line);
        }
        if (!e)
            break;
        p = e + 1;
    }
    if (d->kind == DLG_INPUT) {
        draw_textf(w, y0 + ht - 3, x0 + 2, wd - 4, A_REVERSE, "%-*s", wd - 4, d->input);
        draw_text(w, y0 + ht - 1, x0 + 2, wd - 4, A_NORMAL, " Enter: OK  Esc: cancel ");
    } else if (d->kind == DLG_CONFIRM) {
        draw_text(w, y0 + ht - 1, x0 + 2, wd - 4, A_BOLD, " y: yes   n/Esc: no ");
    } else {
        draw_text(w, y0 + ht - 1, x0 + 2, wd - 4, A_NORMAL, " any key closes; Up/Down scroll ");
    }
}

/* The last plot computed: a redraw with the same data, options and size
 * (a key press, a message) reuses it instead of mapping every point again. */
static struct plot_memo {
    plot_canvas c;
    const float *xs, *raw, *smooth, *ox, *oy;
    size_t n, on, drawn;
    float last;
    int log_y, window, mode, pc, pr, ns, pair[3];
} plot_memo;

/* ---- images ---- */

typedef struct img_cache_entry {
    char path[1024];
    time_t mtime;
    int cols, rows;
    char *bytes;
    size_t len;
    int used_cols, used_rows;
    unsigned long age;
} img_cache_entry;

#define IMG_CACHE 48
static img_cache_entry cache[IMG_CACHE];
static unsigned long cache_clock;

void draw_free_image_cache(void)
{
    plot_canvas_free(&plot_memo.c);
    for (int i = 0; i < IMG_CACHE; i++) {
        free(cache[i].bytes);
        memset(&cache[i], 0, sizeof cache[i]);
    }
}

static img_cache_entry *rendered(wb *w, const wb_placement *p)
{
    struct stat sb;
    if (stat(p->path, &sb) != 0)
        return NULL;
    img_cache_entry *slot = &cache[0];
    for (int i = 0; i < IMG_CACHE; i++) {
        img_cache_entry *c = &cache[i];
        if (c->bytes && c->mtime == sb.st_mtime && c->cols == p->cols && c->rows == p->rows &&
            !strcmp(c->path, p->path)) {
            c->age = ++cache_clock;
            return c;
        }
        if (c->age < slot->age)
            slot = c;
    }
    coin_image img = {0};
    coin_error err = {0};
    char *bytes = NULL;
    size_t len = 0;
    int uc = 0, ur = 0;
    if (image_load(p->path, &img, &err) != 0)
        return NULL;
    int rc = termimg_render(&w->caps, img.pixels, img.width, img.height, p->cols, p->rows, &bytes,
                            &len, &uc, &ur, &err);
    image_free(&img);
    if (rc)
        return NULL;
    free(slot->bytes);
    snprintf(slot->path, sizeof slot->path, "%s", p->path);
    slot->mtime = sb.st_mtime;
    slot->cols = p->cols;
    slot->rows = p->rows;
    slot->bytes = bytes;
    slot->len = len;
    slot->used_cols = uc;
    slot->used_rows = ur;
    slot->age = ++cache_clock;
    return slot;
}

int wb_cols_for_rows(wb *w, int rows)
{
    if (w->caps.cell_w > 0 && w->caps.cell_h > 0)
        return (rows * w->caps.cell_h + w->caps.cell_w / 2) / w->caps.cell_w;
    return rows * 2;
}

void draw_image(wb *w, int y, int x, int rows, int cols, const char *path)
{
    if (rows < 1 || cols < 1 || y + rows > w->rows - 2 || x + cols > w->cols)
        return;
    for (int r = 0; r < rows; r++) {
        move(y + r, x);
        for (int c = 0; c < cols; c++)
            addch(' ');
    }
    if (w->caps.gfx == GFX_NONE) {
        /* No pictures on this terminal: say what would be there. */
        draw_textf(w, y + rows / 2, x, cols, draw_attr(w, CP_DIM, A_DIM), "[%s]", base_name(path));
        return;
    }
    if (w->n_img < (int)(sizeof w->img / sizeof *w->img)) {
        wb_placement *p = &w->img[w->n_img++];
        p->y = y;
        p->x = x;
        p->rows = rows;
        p->cols = cols;
        snprintf(p->path, sizeof p->path, "%s", path);
    }
}

static void write_all(const char *s, size_t n)
{
    while (n > 0) {
        ssize_t k = write(STDOUT_FILENO, s, n);
        if (k <= 0)
            return;
        s += k;
        n -= (size_t)k;
    }
}

void draw_flush_images(wb *w)
{
    /* What is on screen now, so unchanged pictures are not sent again
     * (over SSH a sixel image is tens of kilobytes). */
    char sig[sizeof w->img_sig];
    size_t n = 0;
    sig[0] = '\0';
    for (int i = 0; i < w->n_img && n + 1200 < sizeof sig; i++) {
        struct stat sb;
        long long mt = stat(w->img[i].path, &sb) == 0 ? (long long)sb.st_mtime : 0;
        n += (size_t)snprintf(sig + n, sizeof sig - n, "%d,%d,%d,%d,%lld,%s;", w->img[i].y,
                              w->img[i].x, w->img[i].rows, w->img[i].cols, mt, w->img[i].path);
    }
    int changed = strcmp(sig, w->img_sig) != 0;
    if (!changed && !w->full_redraw)
        return;
    if (changed && !w->full_redraw && w->img_sig[0]) {
        /* Old pictures are not curses' cells: only a repaint removes them. */
        clearok(curscr, TRUE);
        wnoutrefresh(stdscr);
        doupdate();
    }
    memcpy(w->img_sig, sig, n + 1);
    if (!w->n_img)
        return;
    for (int i = 0; i < w->n_img; i++) {
        img_cache_entry *c = rendered(w, &w->img[i]);
        if (!c)
            continue;
        char move_to[32];
        int k = snprintf(move_to, sizeof move_to, "\033[%d;%dH", w->img[i].y + 1, w->img[i].x + 1);
        write_all(move_to, (size_t)k);
        write_all(c->bytes, c->len);
    }
    /* Put the cursor and attributes back where curses believes they are. */
    char back[48];
    int k = snprintf(back, sizeof back, "\033[0m\033[%d;%dH", getcury(curscr) + 1,
                     getcurx(curscr) + 1);
    write_all(back, (size_t)k);
}

/* ---- plots ---- */


void draw_plot(wb *w, int y, int x, int rows, int cols, const float *xs, const float *raw,
               const float *smooth, size_t n, const float *ox, const float *oy, size_t on,
               int log_y, int window, int mode)
{
    int label_w = 9;
    int pc = cols - label_w, pr = rows - 1;
    if (pc < 4 || pr < 2)
        return;
    float last = n ? raw[n - 1] : NAN;
    struct plot_memo *m = &plot_memo;
    int same = m->c.dots && m->xs == xs && m->raw == raw && m->smooth == smooth && m->n == n &&
               m->ox == ox && m->oy == oy && m->on == on && m->log_y == log_y &&
               m->window == window && m->mode == mode && m->pc == pc && m->pr == pr &&
               (m->last == last || (isnan(m->last) && isnan(last)));
    if (!same) {
        plot_canvas_free(&m->c);
        if (plot_canvas_init(&m->c, pc, pr))
            return;
        plot_series s[3];
        int ns = 0;
        if (on) {
            s[ns] = (plot_series){ox, oy, on};
            m->pair[ns++] = CP_OVERLAY;
        }
        if (mode != 2) {
            s[ns] = (plot_series){xs, raw, n};
            m->pair[ns++] = CP_RAW;
        }
        if (mode != 1) {
            s[ns] = (plot_series){xs, smooth, n};
            m->pair[ns++] = CP_SMOOTH;
        }
        plot_opts o = {.log_y = log_y, .x_window = window};
        m->drawn = plot_braille(&m->c, s, ns, &o);
        m->xs = xs;
        m->raw = raw;
        m->smooth = smooth;
        m->n = n;
        m->ox = ox;
        m->oy = oy;
        m->on = on;
        m->last = last;
        m->log_y = log_y;
        m->window = window;
        m->mode = mode;
        m->pc = pc;
        m->pr = pr;
        m->ns = ns;
    }
    const plot_canvas *cv = &m->c;
    const int *pair = m->pair;
    if (!m->drawn) {
        draw_text(w, y + pr / 2, x + label_w, pc, draw_attr(w, CP_DIM, A_DIM),
                  "no losses recorded yet");
        return;
    }
    for (int r = 0; r < pr; r++) {
        move(y + r, x + label_w);
        for (int k = 0; k < pc; k++) {
            uint8_t m = cv->dots[r * pc + k];
            if (!m) {
                addch(' ');
                continue;
            }
            int owner = cv->owner[r * pc + k];
            unsigned a = draw_attr(w, pair[owner - 1], pair[owner - 1] == CP_SMOOTH ? A_BOLD : A_NORMAL);
            attron(a);
            if (w->utf8) {
                char u[4];
                plot_cell_utf8(m, u);
                addnstr(u, 3);
            } else {
                addch((chtype)plot_cell_ascii(m));
            }
            attroff(a);
        }
    }
    unsigned dim = draw_attr(w, CP_DIM, A_DIM);
    draw_textf(w, y, x, label_w - 1, dim, "%8.4g", cv->y_max);
    draw_textf(w, y + pr - 1, x, label_w - 1, dim, "%8.4g", cv->y_min);
    if (log_y)
        draw_text(w, y + pr / 2, x, label_w - 1, dim, "     log");
    draw_textf(w, y + pr, x + label_w, pc, dim, "step %.0f", cv->x_min);
    char right[32];
    int len = snprintf(right, sizeof right, "%.0f", cv->x_max);
    draw_text(w, y + pr, x + label_w + pc - len, len, dim, right);
}

/* ---- small formatting helpers ---- */

const char *status_glyph(wb *w, const char *status)
{
    if (!w->utf8)
        return !strcmp(status, "running") ? ">" : !strcmp(status, "done") ? "+"
               : !strcmp(status, "failed") ? "!" : !strcmp(status, "paused") ? "=" : " ";
    return !strcmp(status, "running") ? "\xe2\x96\xb6" : !strcmp(status, "done") ? "\xe2\x9c\x93"
           : !strcmp(status, "failed") ? "\xe2\x9c\x97" : !strcmp(status, "paused") ? "\xe2\x80\x96"
           : " ";
}

unsigned status_attr(wb *w, const char *status)
{
    if (!strcmp(status, "running"))
        return draw_attr(w, CP_OK, A_BOLD) | A_BOLD;
    if (!strcmp(status, "failed") || !strcmp(status, "interrupted"))
        return draw_attr(w, CP_BAD, A_BOLD);
    if (!strcmp(status, "paused") || !strcmp(status, "queued") || !strcmp(status, "stopped"))
        return draw_attr(w, CP_WARN, A_NORMAL);
    return A_NORMAL;
}

void fmt_time(int64_t t, char *buf, size_t len)
{
    if (!t) {
        snprintf(buf, len, "-");
        return;
    }
    time_t tt = (time_t)t;
    struct tm tm;
    localtime_r(&tt, &tm);
    strftime(buf, len, "%m-%d %H:%M", &tm);
}

void fmt_duration(double s, char *buf, size_t len)
{
    if (!isfinite(s) || s < 0) {
        snprintf(buf, len, "-");
        return;
    }
    long t = lround(s);
    if (t >= 3600)
        snprintf(buf, len, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, len, "%ld:%02ld", t / 60, t % 60);
}

const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}
