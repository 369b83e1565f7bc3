/*
 * test_termimg.c - terminal capabilities and the image renderers.
 *
 * The renderers are checked by reading their output back the way a
 * terminal would: a small DECSIXEL decoder (colour definitions in percent,
 * colour selection, sixel characters, repeats, "$" and "-", raster
 * attributes) and a small screen emulator for the half-block output (DECSC,
 * DECRC, CUD, the SGR colour forms, U+2580 and ASCII), both written here from
 * the protocols, not from the code under test.  256 and 8-colour cells must
 * hold the palette colour nearest in CIELAB (computed here in double from
 * the CIE definitions).  The pixels they give back
 * are compared with the source image scaled by core/image.h's bicubic
 * resize (itself tested against Pillow in test_image.c).
 *
 * Tolerances: sixel colours travel as whole percents, so a channel value v
 * comes back as round(round(v / 2.55) * 2.55), never more than 1 level off
 * (exactly v for multiples of 51).  Images of at most 256 colours get their
 * own colours as the palette, so they must come back within that 1 level
 * everywhere.  A smooth photo-like gradient has thousands of colours and is
 * quantised to 256 by libsixel with error diffusion: each pixel may be off
 * by about the size of a palette cell, but diffusion keeps local means, so
 * 8x8-block means are checked as well as the mean error (bounds derived
 * where they are checked).
 *
 * The capability parser gets canned answers of real terminals (xterm with
 * and without sixel, cell-size reports), garbage, partial and empty answers;
 * termcaps_query runs against a pty whose other end plays a silent terminal
 * or an answering one that sends its answer in pieces.
 */
#include "test.h"

#include "core/image.h"
#include "tui/termimg.h"

#include <pty.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ---------------------------------------------------------- */

/* The environment variables the capability code reads, saved and restored
 * around each test that changes them. */
static const char *env_names[] = {"TERM", "COLORTERM", "NO_COLOR", "COIN_GRAPHICS",
                                  "TMUX", "LC_ALL", "LC_CTYPE", "LANG"};
#define N_ENV (sizeof env_names / sizeof env_names[0])
static char *env_saved[N_ENV];

static void env_save_clear(void)
{
    for (size_t i = 0; i < N_ENV; i++) {
        const char *v = getenv(env_names[i]);
        env_saved[i] = v ? strdup(v) : NULL;
        unsetenv(env_names[i]);
    }
}

static void env_restore(void)
{
    for (size_t i = 0; i < N_ENV; i++) {
        if (env_saved[i])
            setenv(env_names[i], env_saved[i], 1);
        else
            unsetenv(env_names[i]);
        free(env_saved[i]);
        env_saved[i] = NULL;
    }
}

static double ms_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static term_caps caps_of(gfx_mode g, int colors, int utf8, int cell_w, int cell_h)
{
    term_caps c;
    memset(&c, 0, sizeof c);
    c.gfx = g;
    c.colors = colors;
    c.utf8 = utf8;
    c.cell_w = cell_w;
    c.cell_h = cell_h;
    return c;
}

/* Sixel colour registers keep whole percents; this is the value a terminal
 * shows for v (xterm converts a percent p back as (p * 255 + 50) / 100). */
static int via_percent(int v)
{
    int p = (v * 100 + 127) / 255;
    return (p * 255 + 50) / 100;
}

/* ---- a DECSIXEL decoder ------------------------------------------------ */

typedef struct {
    int w, h;
    uint8_t *rgb;       /* [h, w, 3] */
    uint8_t *painted;   /* [h, w]: 1 where a sixel set the pixel */
    int outside;        /* sixel bits painted beyond the raster size */
} sixel_image;

static int read_num(const char *s, size_t n, size_t *i)
{
    int v = 0;
    while (*i < n && s[*i] >= '0' && s[*i] <= '9')
        v = v * 10 + (s[(*i)++] - '0');
    return v;
}

/* Decodes one DCS sixel image (ESC P ... q ... ESC \) from s; 0 on success,
 * -1 when the stream breaks the protocol. */
static int sixel_decode(const char *s, size_t n, sixel_image *img)
{
    memset(img, 0, sizeof *img);
    size_t i = 0;
    while (i + 1 < n && !(s[i] == '\033' && s[i + 1] == 'P'))
        i++;
    if (i + 1 >= n)
        return -1;
    i += 2;
    while (i < n && ((s[i] >= '0' && s[i] <= '9') || s[i] == ';'))
        i++;
    if (i >= n || s[i] != 'q')
        return -1;
    i++;
    int pal[256][3] = {{0}};
    int color = 0, x = 0, band = 0;
    while (i < n) {
        char c = s[i];
        if (c == '\033') {
            if (i + 1 < n && s[i + 1] == '\\')
                return img->rgb ? 0 : -1;
            return -1;
        } else if (c == '"') {
            i++;
            int v[4] = {0};
            for (int k = 0; k < 4; k++) {
                v[k] = read_num(s, n, &i);
                if (k < 3 && (i >= n || s[i++] != ';'))
                    return -1;
            }
            if (v[0] != 1 || v[1] != 1 || v[2] <= 0 || v[3] <= 0 || img->rgb)
                return -1;      /* square pixels, one size, set once */
            img->w = v[2];
            img->h = v[3];
            img->rgb = calloc((size_t)img->w * img->h, 3);
            img->painted = calloc((size_t)img->w * img->h, 1);
        } else if (c == '#') {
            i++;
            int reg = read_num(s, n, &i);
            if (reg < 0 || reg > 255)
                return -1;
            if (i < n && s[i] == ';') {
                i++;
                int v[4];
                for (int k = 0; k < 4; k++) {
                    v[k] = read_num(s, n, &i);
                    if (k < 3 && (i >= n || s[i++] != ';'))
                        return -1;
                }
                if (v[0] != 2 || v[1] > 100 || v[2] > 100 || v[3] > 100)
                    return -1;  /* only RGB in percent */
                for (int k = 0; k < 3; k++)
                    pal[reg][k] = (v[k + 1] * 255 + 50) / 100;
            }
            color = reg;
        } else if (c == '$') {
            x = 0;
            i++;
        } else if (c == '-') {
            x = 0;
            band++;
            i++;
        } else if (c == '!' || (c >= 63 && c <= 126)) {
            int rep = 1;
            if (c == '!') {
                i++;
                rep = read_num(s, n, &i);
                if (i >= n || s[i] < 63 || s[i] > 126)
                    return -1;
                c = s[i];
            }
            i++;
            if (!img->rgb)
                return -1;
            int bits = c - 63;
            for (int r = 0; r < rep; r++, x++)
                for (int b = 0; b < 6; b++) {
                    if (!(bits >> b & 1))
                        continue;
                    int y = band * 6 + b;
                    if (x >= img->w || y >= img->h) {
                        img->outside = 1;
                        continue;
                    }
                    size_t p = (size_t)y * img->w + x;
                    for (int k = 0; k < 3; k++)
                        img->rgb[3 * p + k] = (uint8_t)pal[color][k];
                    img->painted[p] = 1;
                }
        } else if (c == '\r' || c == '\n') {
            i++;
        } else {
            return -1;
        }
    }
    return -1;                  /* no string terminator */
}

static void sixel_free(sixel_image *img)
{
    free(img->rgb);
    free(img->painted);
}

/* Renders rgb [h, w, 3] as sixel and decodes it; checks the envelope (the
 * cursor saved first and restored last) and that every pixel was painted. */
static int render_sixel_decoded(const term_caps *caps, const uint8_t *rgb, int w, int h,
                                int cols, int rows, sixel_image *img, int *uc, int *ur)
{
    char *out = NULL;
    size_t len = 0;
    coin_error err = {0};
    int rc = termimg_render(caps, rgb, w, h, cols, rows, &out, &len, uc, ur, &err);
    if (rc != 0) {
        test_failed(__FILE__, __LINE__, "termimg_render: %s", err.msg);
        return -1;
    }
    CHECK(strlen(out) == len);
    CHECK(len > 4 && memcmp(out, "\0337", 2) == 0 && memcmp(out + len - 2, "\0338", 2) == 0);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)out[i] >= 0x80) {
            test_failed(__FILE__, __LINE__, "8-bit byte 0x%02x at %zu in a sixel stream",
                        (unsigned char)out[i], i);
            break;
        }
    rc = sixel_decode(out, len, img);
    free(out);
    if (rc != 0) {
        test_failed(__FILE__, __LINE__, "the sixel stream does not decode");
        return -1;
    }
    CHECK(!img->outside);
    size_t unpainted = 0;
    for (size_t p = 0; p < (size_t)img->w * img->h; p++)
        unpainted += !img->painted[p];
    CHECK_EQ_INT(unpainted, 0);
    return 0;
}

/* A 16-colour picture with details down to single pixels: quadrants of
 * flat colour, a one-pixel checkerboard, isolated dots and a thin line. */
static uint8_t *flat16_image(int w, int h, const uint8_t pal[16][3])
{
    uint8_t *img = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int c = (x * 2 / w) + 2 * (y * 2 / h);             /* 0..3 */
            if (y >= h / 3 && y < h / 2)
                c = 4 + ((x + y) & 1) * 3;                      /* checkerboard 4/7 */
            if (x % 7 == 3 && y % 5 == 1)
                c = 8 + (x + y) % 6;                            /* lone dots 8..13 */
            if (x == w - 2)
                c = 14 + (y & 1);                               /* a thin line 14/15 */
            memcpy(img + 3 * ((size_t)y * w + x), pal[c], 3);
        }
    return img;
}

/* ---- sixel ------------------------------------------------------------- */

TEST(termimg_sixel_flat_colours_exact)
{
    /* levels that are whole percents (multiples of 51) survive exactly */
    uint8_t pal[16][3];
    for (int c = 0; c < 16; c++) {
        pal[c][0] = (uint8_t)(51 * (c % 6));
        pal[c][1] = (uint8_t)(51 * ((c / 2) % 6));
        pal[c][2] = (uint8_t)(51 * ((c * 5 + 1) % 6));
    }
    /* 40 x 60 into 4 x 3 cells of 10 x 20: exactly the area, no scaling */
    uint8_t *src = flat16_image(40, 60, pal);
    term_caps caps = caps_of(GFX_SIXEL, 256, 1, 10, 20);
    sixel_image img;
    int uc, ur;
    if (render_sixel_decoded(&caps, src, 40, 60, 4, 3, &img, &uc, &ur) == 0) {
        CHECK_EQ_INT(img.w, 40);
        CHECK_EQ_INT(img.h, 60);
        CHECK_EQ_INT(uc, 4);
        CHECK_EQ_INT(ur, 3);
        if (img.w == 40 && img.h == 60) {
            size_t diff = 0;
            for (size_t i = 0; i < (size_t)40 * 60 * 3; i++)
                diff += img.rgb[i] != src[i];
            CHECK_EQ_INT(diff, 0);
        }
        sixel_free(&img);
    }
    free(src);
}

TEST(termimg_sixel_one_pixel_scaled_up)
{
    /* one colour, 1 x 1 into 3 x 2 cells of 10 x 20: 30 x 30 px of it */
    uint8_t px[3] = {204, 51, 153};
    term_caps caps = caps_of(GFX_SIXEL, 256, 1, 10, 20);
    sixel_image img;
    int uc, ur;
    if (render_sixel_decoded(&caps, px, 1, 1, 3, 2, &img, &uc, &ur) == 0) {
        CHECK(img.w == 30 && img.h == 30 && uc == 3 && ur == 2);
        size_t bad = 0;
        for (size_t i = 0; i < (size_t)img.w * img.h; i++)
            bad += memcmp(img.rgb + 3 * i, px, 3) != 0;
        CHECK_EQ_INT(bad, 0);
        sixel_free(&img);
    }
}

TEST(termimg_sixel_any_flat_colours_within_a_percent)
{
    /* arbitrary colours: only the percent rounding may change them */
    uint8_t pal[16][3];
    uint32_t s = 12345;
    for (int c = 0; c < 16; c++)
        for (int k = 0; k < 3; k++) {
            s = s * 1103515245u + 12345u;
            pal[c][k] = (uint8_t)(s >> 16);
        }
    uint8_t *src = flat16_image(37, 23, pal);
    /* unknown cell size: 10 x 20 is assumed, 4 x 2 cells hold 40 x 40 px;
     * 37 x 23 is width-bound: 40 x round(23 * 40 / 37 = 24.86) = 40 x 25 */
    term_caps caps = caps_of(GFX_SIXEL, 256, 1, 0, 0);
    int pw, ph, uc, ur;
    termimg_fit(&caps, 37, 23, 4, 2, &pw, &ph, &uc, &ur);
    CHECK_EQ_INT(pw, 40);
    CHECK_EQ_INT(ph, 25);
    /* no scaling for this check: a 37 x 23 area of 1 x 1 "cells" is not
     * possible, so use cells the image's own size */
    caps = caps_of(GFX_SIXEL, 256, 1, 37, 23);
    sixel_image img;
    if (render_sixel_decoded(&caps, src, 37, 23, 1, 1, &img, &uc, &ur) == 0) {
        REQUIRE(img.w == 37 && img.h == 23);
        int worst = 0;
        size_t off_rounding = 0;
        for (size_t i = 0; i < (size_t)37 * 23 * 3; i++) {
            int d = abs((int)img.rgb[i] - (int)src[i]);
            worst = d > worst ? d : worst;
            off_rounding += img.rgb[i] != via_percent(src[i]);
        }
        CHECK_MSG(worst <= 1, "a flat colour came back %d levels off", worst);
        CHECK_EQ_INT(off_rounding, 0);
        sixel_free(&img);
    }
    free(src);
}

/* A photo-like picture: smooth gradients in all three channels with soft
 * waves, so that it has thousands of colours and no flat areas. */
static uint8_t *photo_image(int w, int h)
{
    uint8_t *img = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double u = (double)x / w, v = (double)y / h;
            double r = 255 * (0.5 + 0.45 * sin(6.0 * u + 1.3 * v));
            double g = 255 * (0.15 + 0.8 * v * (0.6 + 0.4 * cos(9.0 * u)));
            double b = 255 * (0.5 + 0.5 * cos(4.0 * (u - v)) * (1 - 0.5 * u));
            uint8_t *p = img + 3 * ((size_t)y * w + x);
            p[0] = (uint8_t)lround(fmin(255, fmax(0, r)));
            p[1] = (uint8_t)lround(fmin(255, fmax(0, g)));
            p[2] = (uint8_t)lround(fmin(255, fmax(0, b)));
        }
    return img;
}

TEST(termimg_sixel_photo_scaled_and_quantised)
{
    int w = 200, h = 150;
    uint8_t *src = photo_image(w, h);
    /* 30 x 10 cells of 10 x 20 = 300 x 200 px; 4:3 is height-bound:
     * 200 high, round(200 * 4 / 3 = 266.7) = 267 wide, in 27 x 10 cells */
    term_caps caps = caps_of(GFX_SIXEL, 16777216, 1, 10, 20);
    coin_image in = {.width = w, .height = h, .channels = 3, .pixels = src}, want = {0};
    coin_error err = {0};
    REQUIRE_OK(image_resize_bicubic(&in, 267, 200, &want, &err), &err);
    sixel_image img;
    int uc, ur;
    if (render_sixel_decoded(&caps, src, w, h, 30, 10, &img, &uc, &ur) == 0) {
        CHECK_EQ_INT(uc, 27);
        CHECK_EQ_INT(ur, 10);
        if (img.w == 267 && img.h == 200) {
            double sum = 0, worst_block = 0;
            for (size_t i = 0; i < (size_t)267 * 200 * 3; i++)
                sum += fabs((double)img.rgb[i] - want.pixels[i]);
            double mae = sum / (267.0 * 200 * 3);
            /* 8x8 block means: error diffusion pushes each pixel's error to
             * its neighbours, so block means stay within ~1-2 levels */
            for (int by = 0; by + 8 <= 200; by += 8)
                for (int bx = 0; bx + 8 <= 267; bx += 8)
                    for (int k = 0; k < 3; k++) {
                        double d = 0;
                        for (int y = by; y < by + 8; y++)
                            for (int x = bx; x < bx + 8; x++) {
                                size_t p = 3 * ((size_t)y * 267 + x) + k;
                                d += (double)img.rgb[p] - want.pixels[p];
                            }
                        worst_block = fmax(worst_block, fabs(d / 64));
                    }
            /* Median cut splits the colours into 256 boxes, about
             * 255 / 256^(1/3) ~ 40 levels a side, each shown as its mean.
             * A dithered pixel lands on a neighbouring box's colour, a
             * quarter box (10 levels) off on average; inside the palette's
             * hull diffusion keeps local means, but at the gamut's edge (the
             * saturated corners) a box mean is up to half a box (20) inside,
             * and no mix of colours reaches further out: 20 + 1 (percent
             * rounding) + 3 (a block's share of diffusion at the border). */
            CHECK_MSG(mae < 10.0, "sixel photo mean abs error %.2f levels", mae);
            CHECK_MSG(worst_block < 24.0, "an 8x8 block mean is %.2f levels off", worst_block);
            printf("    sixel photo: mean abs error %.2f, worst 8x8 block mean %.2f levels\n",
                   mae, worst_block);
        } else {
            test_failed(__FILE__, __LINE__, "decoded %dx%d, want 267x200", img.w, img.h);
        }
        sixel_free(&img);
    }
    image_free(&want);
    free(src);
}

TEST(termimg_sixel_tmux_passthrough)
{
    uint8_t pal[16][3] = {{0}};
    for (int c = 0; c < 16; c++)
        pal[c][0] = pal[c][1] = pal[c][2] = (uint8_t)(17 * c);
    uint8_t *src = flat16_image(20, 12, pal);
    term_caps caps = caps_of(GFX_SIXEL, 256, 1, 10, 12);
    char *plain = NULL, *wrapped = NULL;
    size_t plen = 0, wlen = 0;
    int uc, ur;
    coin_error err = {0};
    REQUIRE_OK(termimg_render(&caps, src, 20, 12, 2, 1, &plain, &plen, &uc, &ur, &err), &err);
    caps.in_tmux = caps.tmux_passthrough = 1;
    REQUIRE_OK(termimg_render(&caps, src, 20, 12, 2, 1, &wrapped, &wlen, &uc, &ur, &err), &err);
    const char head[] = "\033Ptmux;", tail[] = "\033\\";
    REQUIRE(wlen > sizeof head + 2);
    CHECK(memcmp(wrapped, head, sizeof head - 1) == 0);
    CHECK(memcmp(wrapped + wlen - 2, tail, 2) == 0);
    /* inside: every ESC doubled; undoubling gives the plain stream back */
    char *inner = malloc(wlen);
    size_t n = 0;
    int ok = 1;
    for (size_t i = sizeof head - 1; i < wlen - 2; i++) {
        if (wrapped[i] == '\033') {
            if (i + 1 >= wlen - 2 || wrapped[i + 1] != '\033') {
                ok = 0;
                break;
            }
            i++;
        }
        inner[n++] = wrapped[i];
    }
    CHECK_MSG(ok, "a single ESC inside tmux's passthrough");
    CHECK(n == plen && memcmp(inner, plain, plen) == 0);
    /* inside a tmux that shows sixel itself, the plain stream goes out */
    caps.tmux_passthrough = 0;
    char *native = NULL;
    size_t nlen = 0;
    REQUIRE_OK(termimg_render(&caps, src, 20, 12, 2, 1, &native, &nlen, &uc, &ur, &err), &err);
    CHECK(nlen == plen && memcmp(native, plain, plen) == 0);
    free(native);
    free(inner);
    free(plain);
    free(wrapped);
    free(src);
}

/* ---- a screen for the half-block output --------------------------------- */

#define SCR_W 60
#define SCR_H 30
#define DEFAULT_COLOR (-1)

typedef struct {
    uint32_t ch;        /* 0: never written */
    int fg, bg;         /* 0xRRGGBB or DEFAULT_COLOR */
} cell;

typedef struct {
    cell c[SCR_H][SCR_W];
    int x, y, sx, sy, fg, bg, sfg, sbg;
    int errors;
    int max_written_x, max_written_y;
} screen;

static const uint8_t xterm_levels[6] = {0, 95, 135, 175, 215, 255};
/* xterm's default colours 0..7 */
static const int xterm_ansi8[8] = {0x000000, 0xcd0000, 0x00cd00, 0xcdcd00,
                                   0x0000ee, 0xcd00cd, 0x00cdcd, 0xe5e5e5};

static int xterm256_rgb(int i)
{
    if (i >= 232) {
        int v = 8 + 10 * (i - 232);
        return v << 16 | v << 8 | v;
    }
    i -= 16;
    return xterm_levels[i / 36] << 16 | xterm_levels[i / 6 % 6] << 8 | xterm_levels[i % 6];
}

static void scr_init(screen *s, int x, int y)
{
    memset(s, 0, sizeof *s);
    s->x = x;
    s->y = y;
    s->fg = s->bg = s->sfg = s->sbg = DEFAULT_COLOR;
    s->max_written_x = s->max_written_y = -1;
}

static void scr_sgr(screen *s, const int *p, int np)
{
    if (np == 0) {
        s->fg = s->bg = DEFAULT_COLOR;
        return;
    }
    for (int i = 0; i < np; i++) {
        int v = p[i];
        if (v == 0) {
            s->fg = s->bg = DEFAULT_COLOR;
        } else if (v >= 30 && v <= 37) {
            s->fg = xterm_ansi8[v - 30];
        } else if (v >= 40 && v <= 47) {
            s->bg = xterm_ansi8[v - 40];
        } else if (v == 39) {
            s->fg = DEFAULT_COLOR;
        } else if (v == 49) {
            s->bg = DEFAULT_COLOR;
        } else if ((v == 38 || v == 48) && i + 1 < np && p[i + 1] == 2 && i + 4 < np) {
            int c = p[i + 2] << 16 | p[i + 3] << 8 | p[i + 4];
            *(v == 38 ? &s->fg : &s->bg) = c;
            i += 4;
        } else if ((v == 38 || v == 48) && i + 2 < np && p[i + 1] == 5 && p[i + 2] >= 16 &&
                   p[i + 2] <= 255) {
            *(v == 38 ? &s->fg : &s->bg) = xterm256_rgb(p[i + 2]);
            i += 2;
        } else {
            s->errors++;
            return;
        }
    }
}

static void scr_put(screen *s, uint32_t ch)
{
    if (s->x >= SCR_W || s->y >= SCR_H) {
        s->errors++;
        return;
    }
    s->c[s->y][s->x] = (cell){ch, s->fg, s->bg};
    if (s->x > s->max_written_x)
        s->max_written_x = s->x;
    if (s->y > s->max_written_y)
        s->max_written_y = s->y;
    s->x++;
}

/* Plays bytes on the screen; anything this emulator does not know counts as
 * an error (the renderer must use only the sequences it documents). */
static void scr_play(screen *s, const char *b, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)b[i];
        if (c == '\033' && i + 1 < n && b[i + 1] == '7') {
            s->sx = s->x, s->sy = s->y, s->sfg = s->fg, s->sbg = s->bg;
            i += 2;
        } else if (c == '\033' && i + 1 < n && b[i + 1] == '8') {
            s->x = s->sx, s->y = s->sy, s->fg = s->sfg, s->bg = s->sbg;
            i += 2;
        } else if (c == '\033' && i + 1 < n && b[i + 1] == '[') {
            i += 2;
            int p[32], np = 0, cur = 0, digits = 0;
            while (i < n && ((b[i] >= '0' && b[i] <= '9') || b[i] == ';')) {
                if (b[i] == ';') {
                    if (np < 32)
                        p[np++] = cur;
                    cur = digits = 0;
                } else {
                    cur = cur * 10 + (b[i] - '0');
                    digits = 1;
                }
                i++;
            }
            if (digits && np < 32)
                p[np++] = cur;
            if (i >= n) {
                s->errors++;
                return;
            }
            char f = b[i++];
            if (f == 'm')
                scr_sgr(s, p, np);
            else if (f == 'B')
                s->y += np ? p[0] : 1;
            else
                s->errors++;
        } else if (c == 0xe2 && i + 2 < n && (unsigned char)b[i + 1] == 0x96 &&
                   (unsigned char)b[i + 2] == 0x80) {
            scr_put(s, 0x2580);
            i += 3;
        } else if (c >= 0x20 && c < 0x7f) {
            scr_put(s, c);
            i++;
        } else {
            s->errors++;
            i++;
        }
    }
}

static int rgb_at(const uint8_t *img, int w, int x, int y)
{
    const uint8_t *p = img + 3 * ((size_t)y * w + x);
    return p[0] << 16 | p[1] << 8 | p[2];
}

/* CIE76 colour difference (squared) of two 0xRRGGBB sRGB colours: sRGB to
 * linear, to XYZ (D65), to L*a*b*, from the CIE definitions. */
static void lab_of(int c, double out[3])
{
    double lin[3], xyz[3];
    for (int k = 0; k < 3; k++) {
        double v = (c >> (16 - 8 * k) & 255) / 255.0;
        lin[k] = v <= 0.04045 ? v / 12.92 : pow((v + 0.055) / 1.055, 2.4);
    }
    xyz[0] = (0.4124 * lin[0] + 0.3576 * lin[1] + 0.1805 * lin[2]) / 0.95047;
    xyz[1] = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2];
    xyz[2] = (0.0193 * lin[0] + 0.1192 * lin[1] + 0.9505 * lin[2]) / 1.08883;
    double f[3], d = 6.0 / 29;
    for (int k = 0; k < 3; k++)
        f[k] = xyz[k] > d * d * d ? cbrt(xyz[k]) : xyz[k] / (3 * d * d) + 4.0 / 29;
    out[0] = 116 * f[1] - 16;
    out[1] = 500 * (f[0] - f[1]);
    out[2] = 200 * (f[1] - f[2]);
}

static double de2(int a, int b)
{
    double la[3], lb[3];
    lab_of(a, la);
    lab_of(b, lb);
    return (la[0] - lb[0]) * (la[0] - lb[0]) + (la[1] - lb[1]) * (la[1] - lb[1]) +
           (la[2] - lb[2]) * (la[2] - lb[2]);
}

/* The least colour difference from c to any colour of xterm's 16..255. */
static double best256_dist(int c)
{
    double best = 1e30;
    for (int i = 16; i < 256; i++)
        best = fmin(best, de2(c, xterm256_rgb(i)));
    return best;
}

static double best8_dist(int c)
{
    double best = 1e30;
    for (int i = 0; i < 8; i++)
        best = fmin(best, de2(c, xterm_ansi8[i]));
    return best;
}

/* chosen is as near as the nearest, up to float rounding in the renderer
 * (a difference of 0.01 in Delta-E, far below what the eye sees) */
static int is_nearest(int c, int chosen, double (*best)(int))
{
    return sqrt(de2(c, chosen)) <= sqrt(best(c)) + 0.01;
}

/* Renders rgb in blocks and plays it on a screen with the cursor at (x0,y0). */
static int render_blocks_played(const term_caps *caps, const uint8_t *rgb, int w, int h,
                                int cols, int rows, screen *s, int x0, int y0,
                                int *uc, int *ur, char **raw, size_t *raw_len)
{
    char *out = NULL;
    size_t len = 0;
    coin_error err = {0};
    if (termimg_render(caps, rgb, w, h, cols, rows, &out, &len, uc, ur, &err) != 0) {
        test_failed(__FILE__, __LINE__, "termimg_render: %s", err.msg);
        return -1;
    }
    scr_init(s, x0, y0);
    scr_play(s, out, len);
    CHECK_EQ_INT(s->errors, 0);
    /* the cursor and colours end where they began */
    CHECK(s->x == x0 && s->y == y0 && s->fg == DEFAULT_COLOR && s->bg == DEFAULT_COLOR);
    /* nothing outside the cells it says it covers */
    for (int y = 0; y < SCR_H; y++)
        for (int x = 0; x < SCR_W; x++)
            if (s->c[y][x].ch && (x < x0 || y < y0 || x >= x0 + *uc || y >= y0 + *ur)) {
                test_failed(__FILE__, __LINE__, "cell %d,%d written outside the image", x, y);
                y = SCR_H;
                break;
            }
    if (raw) {
        *raw = out;
        *raw_len = len;
    } else {
        free(out);
    }
    return 0;
}

/* ---- half-blocks -------------------------------------------------------- */

TEST(termimg_blocks_truecolor_exact)
{
    /* 6 x 8 into 6 x 4 cells of 10 x 20: a block pixel is 10 x 10, so the
     * image fills 6 columns and 8 half-rows exactly, unscaled */
    uint8_t src[6 * 8 * 3];
    for (int i = 0; i < 6 * 8 * 3; i++)
        src[i] = (uint8_t)(i * 37 + 11);
    term_caps caps = caps_of(GFX_BLOCKS, 16777216, 1, 10, 20);
    screen s;
    int uc, ur;
    if (render_blocks_played(&caps, src, 6, 8, 6, 4, &s, 5, 2, &uc, &ur, NULL, NULL) != 0)
        return;
    CHECK_EQ_INT(uc, 6);
    CHECK_EQ_INT(ur, 4);
    int bad = 0;
    for (int r = 0; r < 4; r++)
        for (int x = 0; x < 6; x++) {
            cell c = s.c[2 + r][5 + x];
            bad += c.ch != 0x2580 || c.fg != rgb_at(src, 6, x, 2 * r) ||
                   c.bg != rgb_at(src, 6, x, 2 * r + 1);
        }
    CHECK_EQ_INT(bad, 0);
}

TEST(termimg_blocks_scaled_and_odd_height)
{
    /* 64 x 32 into 16 x 4 cells: 2:1 fills 16 x 8 block pixels exactly,
     * so the expected cells are the 16 x 8 bicubic resize */
    uint8_t *src = photo_image(64, 32);
    coin_image in = {.width = 64, .height = 32, .channels = 3, .pixels = src}, want = {0};
    coin_error err = {0};
    REQUIRE_OK(image_resize_bicubic(&in, 16, 8, &want, &err), &err);
    term_caps caps = caps_of(GFX_BLOCKS, 16777216, 1, 0, 0);
    screen s;
    int uc, ur;
    if (render_blocks_played(&caps, src, 64, 32, 16, 4, &s, 0, 0, &uc, &ur, NULL, NULL) == 0) {
        CHECK_EQ_INT(uc, 16);
        CHECK_EQ_INT(ur, 4);
        int bad = 0;
        for (int r = 0; r < 4; r++)
            for (int x = 0; x < 16; x++)
                bad += s.c[r][x].fg != rgb_at(want.pixels, 16, x, 2 * r) ||
                       s.c[r][x].bg != rgb_at(want.pixels, 16, x, 2 * r + 1);
        CHECK_EQ_INT(bad, 0);
    }
    image_free(&want);
    free(src);

    /* 5 x 5 in 5 x 3 cells: width-bound, 5 x 5 block pixels, so the last
     * row has only top pixels over the terminal's default background */
    uint8_t sq[5 * 5 * 3];
    for (int i = 0; i < 75; i++)
        sq[i] = (uint8_t)(200 - i);
    if (render_blocks_played(&caps, sq, 5, 5, 5, 3, &s, 1, 1, &uc, &ur, NULL, NULL) == 0) {
        CHECK_EQ_INT(uc, 5);
        CHECK_EQ_INT(ur, 3);
        for (int x = 0; x < 5; x++) {
            CHECK(s.c[3][1 + x].fg == rgb_at(sq, 5, x, 4));
            CHECK(s.c[3][1 + x].bg == DEFAULT_COLOR);
            CHECK(s.c[2][1 + x].bg == rgb_at(sq, 5, x, 3));
        }
    }
}

TEST(termimg_blocks_aspect_of_the_cell)
{
    /* tall cells of 10 x 30: a block pixel is 10 x 15 screen pixels.  A
     * square 20 x 20 image in 20 x 20 cells is 20 columns = 200 px wide, so
     * 200 px high = 13.3 -> 13 block pixels, 7 rows */
    term_caps caps = caps_of(GFX_BLOCKS, 256, 1, 10, 30);
    int pw, ph, uc, ur;
    termimg_fit(&caps, 20, 20, 20, 20, &pw, &ph, &uc, &ur);
    CHECK_EQ_INT(pw, 20);
    CHECK_EQ_INT(ph, 13);
    CHECK_EQ_INT(uc, 20);
    CHECK_EQ_INT(ur, 7);
    /* sixel in the same cells: 200 x 600 px area, 200 x 200 image, 7 rows */
    caps.gfx = GFX_SIXEL;
    termimg_fit(&caps, 20, 20, 20, 20, &pw, &ph, &uc, &ur);
    CHECK(pw == 200 && ph == 200 && uc == 20 && ur == 7);
    /* a tiny image is scaled up to the area */
    termimg_fit(&caps, 2, 1, 20, 20, &pw, &ph, &uc, &ur);
    CHECK(pw == 200 && ph == 100 && uc == 20 && ur == 4);
    caps.gfx = GFX_NONE;
    termimg_fit(&caps, 20, 20, 20, 20, &pw, &ph, &uc, &ur);
    CHECK(pw == 0 && ph == 0 && uc == 0 && ur == 0);
}

TEST(termimg_blocks_256_and_8_colours_nearest)
{
    uint8_t *src = photo_image(12, 10);
    for (int colors = 256; colors >= 8; colors -= 248) {
        term_caps caps = caps_of(GFX_BLOCKS, colors, 1, 10, 20);
        screen s;
        int uc, ur;
        if (render_blocks_played(&caps, src, 12, 10, 12, 5, &s, 0, 0, &uc, &ur, NULL, NULL))
            continue;
        REQUIRE(uc == 12 && ur == 5);
        int bad = 0;
        for (int r = 0; r < 5; r++)
            for (int x = 0; x < 12; x++) {
                int top = rgb_at(src, 12, x, 2 * r), bot = rgb_at(src, 12, x, 2 * r + 1);
                cell c = s.c[r][x];
                double (*best)(int) = colors == 256 ? best256_dist : best8_dist;
                bad += c.ch != 0x2580 || c.fg == DEFAULT_COLOR || c.bg == DEFAULT_COLOR ||
                       !is_nearest(top, c.fg, best) || !is_nearest(bot, c.bg, best);
            }
        CHECK_MSG(bad == 0, "%d cells not the nearest of %d colours", bad, colors);
    }
    /* muted colours keep their hue: a green hill is not a grey (by RGB
     * distance grey 68 would win over the cube's olive 95,95,0) */
    int hill = termimg_xterm256_index(59, 93, 42);
    CHECK_MSG(hill < 232, "a green hill became grey %d", hill);
    /* the index function itself, on colours with one right answer */
    CHECK_EQ_INT(termimg_xterm256_index(0, 0, 0), 16);
    CHECK_EQ_INT(termimg_xterm256_index(255, 255, 255), 231);
    CHECK_EQ_INT(termimg_xterm256_index(255, 0, 0), 196);
    CHECK_EQ_INT(termimg_xterm256_index(128, 128, 128), 244);  /* grey 128 */
    CHECK_EQ_INT(termimg_xterm256_index(95, 135, 175), 16 + 36 * 1 + 6 * 2 + 3);
    free(src);
}

TEST(termimg_blocks_ascii_fallbacks)
{
    uint8_t src[4 * 4 * 3];
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++)
            for (int k = 0; k < 3; k++)
                src[3 * (y * 4 + x) + k] = (uint8_t)(x * 85 * (k != 1) + y * 20);
    /* colour without UTF-8: spaces on the mean of the two pixels */
    term_caps caps = caps_of(GFX_BLOCKS, 16777216, 0, 10, 20);
    screen s;
    int uc, ur;
    char *raw = NULL;
    size_t len = 0;
    if (render_blocks_played(&caps, src, 4, 4, 4, 2, &s, 0, 0, &uc, &ur, &raw, &len) == 0) {
        for (size_t i = 0; i < len; i++)
            CHECK((unsigned char)raw[i] < 0x80);
        free(raw);
        REQUIRE(uc == 4 && ur == 2);
        for (int r = 0; r < 2; r++)
            for (int x = 0; x < 4; x++) {
                int t = rgb_at(src, 4, x, 2 * r), b = rgb_at(src, 4, x, 2 * r + 1);
                int ok = s.c[r][x].ch == ' ';
                for (int sh = 0; sh <= 16; sh += 8) {
                    int want2 = (t >> sh & 255) + (b >> sh & 255);   /* twice the mean */
                    ok &= abs(2 * (s.c[r][x].bg >> sh & 255) - want2) <= 1;
                }
                CHECK_MSG(ok, "cell %d,%d", x, r);
            }
    }
    /* no colour at all: a luminance ramp, black ' ' and white '@'; a 2 x 4
     * image is two cells tall, black over white */
    caps = caps_of(GFX_BLOCKS, 0, 1, 10, 20);
    uint8_t col4[2 * 4 * 3];
    memset(col4, 0, 12);        /* rows 0, 1 black */
    memset(col4 + 12, 255, 12); /* rows 2, 3 white */
    if (render_blocks_played(&caps, col4, 2, 4, 2, 2, &s, 0, 0, &uc, &ur, &raw, &len) == 0) {
        CHECK(strstr(raw, "\033[3") == NULL && strstr(raw, "\033[4") == NULL);
        free(raw);
        CHECK(s.c[0][0].ch == ' ' && s.c[0][1].ch == ' ');
        CHECK(s.c[1][0].ch == '@' && s.c[1][1].ch == '@');
        CHECK(s.c[0][0].fg == DEFAULT_COLOR && s.c[1][0].bg == DEFAULT_COLOR);
    }
    /* a grey ramp gives a non-decreasing ramp of characters */
    uint8_t ramp_img[10 * 2 * 3];
    for (int x = 0; x < 10; x++)
        for (int y = 0; y < 2; y++)
            memset(ramp_img + 3 * (y * 10 + x), x * 255 / 9, 3);
    static const char ramp[] = " .:-=+*#%@";
    if (render_blocks_played(&caps, ramp_img, 10, 2, 10, 1, &s, 0, 0, &uc, &ur, NULL, NULL) == 0) {
        REQUIRE(uc == 10 && ur == 1);
        int prev = -1, mono = 1;
        for (int x = 0; x < 10; x++) {
            const char *p = strchr(ramp, (int)s.c[0][x].ch);
            int idx = p && s.c[0][x].ch ? (int)(p - ramp) : -2;
            mono &= idx >= prev;
            prev = idx;
        }
        CHECK(mono);
        CHECK(s.c[0][0].ch == ' ' && s.c[0][9].ch == '@');
    }
}

TEST(termimg_none_and_bad_arguments)
{
    uint8_t px[3] = {1, 2, 3};
    term_caps caps = caps_of(GFX_NONE, 256, 1, 10, 20);
    char *out = (char *)1;
    size_t len = 99;
    int uc = 9, ur = 9;
    coin_error err = {0};
    REQUIRE_OK(termimg_render(&caps, px, 1, 1, 10, 10, &out, &len, &uc, &ur, &err), &err);
    CHECK(out && out[0] == '\0' && len == 0 && uc == 0 && ur == 0);
    free(out);
    caps.gfx = GFX_BLOCKS;
    CHECK_EQ_INT(termimg_render(&caps, px, 0, 1, 10, 10, &out, &len, &uc, &ur, &err), COIN_EINVAL);
    CHECK(out == NULL);
    CHECK_STR_CONTAINS(err.msg, "0x1");
    CHECK_EQ_INT(termimg_render(&caps, px, 1, 1, 0, 10, &out, &len, &uc, &ur, &err), COIN_EINVAL);
    CHECK_EQ_INT(termimg_render(&caps, NULL, 1, 1, 5, 5, &out, &len, &uc, &ur, &err), COIN_EINVAL);
    /* 5000 x 5000 cells of 100 x 100 px would be 500000 px a side */
    caps = caps_of(GFX_SIXEL, 256, 1, 100, 100);
    CHECK_EQ_INT(termimg_render(&caps, px, 1, 1, 5000, 5000, &out, &len, &uc, &ur, &err),
                 COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "too large");
}

/* ---- the capability parser ---------------------------------------------- */

static term_caps parsed(const char *answer, size_t n)
{
    term_caps c = caps_of(GFX_BLOCKS, 256, 1, 0, 0);
    termcaps_parse_answer(answer, n, &c);
    return c;
}
#define PARSED(s) parsed(s, sizeof(s) - 1)

TEST(termcaps_parse_canned_answers)
{
    term_caps c = PARSED("\033[?63;1;2;4;6;9;15;22c");      /* xterm -ti vt340 */
    CHECK_EQ_INT(c.gfx, GFX_SIXEL);
    c = PARSED("\033[?62;22c");                            /* xterm without sixel */
    CHECK_EQ_INT(c.gfx, GFX_BLOCKS);
    c = PARSED("\033[?65;4;6;18;22c");
    CHECK_EQ_INT(c.gfx, GFX_SIXEL);
    c = PARSED("\033[?1;2c");                              /* tmux without sixel */
    CHECK_EQ_INT(c.gfx, GFX_BLOCKS);
    c = PARSED("\033[?4;2c");                              /* 4 as the class is not sixel */
    CHECK_EQ_INT(c.gfx, GFX_BLOCKS);
    c = PARSED("\033[?64;1;2;6;9;15;18;21;22c");          /* "14" etc. are not 4 */
    CHECK_EQ_INT(c.gfx, GFX_BLOCKS);
    c = PARSED("\033[>41;354;0c");                         /* DA2 is not DA1 */
    CHECK_EQ_INT(c.gfx, GFX_BLOCKS);

    c = PARSED("\033[6;20;10t\033[4;480;800t\033[8;24;80t\033[?62;22c");
    CHECK(c.cell_w == 10 && c.cell_h == 20);
    c = PARSED("\033[4;408;720t\033[8;24;80t\033[?62;22c");  /* no 16t: 720/80, 408/24 */
    CHECK(c.cell_w == 9 && c.cell_h == 17);
    c = PARSED("\033[4;408;720t\033[?62;22c");             /* area without its cells */
    CHECK(c.cell_w == 0 && c.cell_h == 0);
    c = PARSED("\033[6;0;0t\033[6;99999;5t");              /* absurd sizes */
    CHECK(c.cell_w == 0 && c.cell_h == 0);

    /* inside tmux, a DA1 with sixel comes from tmux itself: no passthrough */
    c = caps_of(GFX_BLOCKS, 256, 1, 0, 0);
    c.in_tmux = c.tmux_passthrough = 1;
    termcaps_parse_answer("\033[?1;2c", 7, &c);            /* tmux 3.3 without sixel */
    CHECK(c.gfx == GFX_BLOCKS && c.tmux_passthrough == 1);
    termcaps_parse_answer("\033[?1;2;4c", 9, &c);          /* tmux 3.4 built with sixel */
    CHECK(c.gfx == GFX_SIXEL && c.tmux_passthrough == 0 && c.in_tmux == 1);
}

TEST(termcaps_parse_garbage_empty_and_partial)
{
    term_caps c = parsed(NULL, 0);
    CHECK(c.gfx == GFX_BLOCKS && c.cell_w == 0 && c.colors == 256);
    c = PARSED("");
    CHECK(c.gfx == GFX_BLOCKS && c.cell_w == 0);
    c = PARSED("hello \x01\xff\033\033[[[;;;;c 4 t");
    CHECK(c.gfx == GFX_BLOCKS && c.cell_w == 0);
    c = PARSED("\033[?63;1;2;4");                          /* cut before the 'c' */
    CHECK_EQ_INT(c.gfx, GFX_BLOCKS);
    c = PARSED("\033[6;20;1");
    CHECK_EQ_INT(c.cell_w, 0);
    c = PARSED("\033[?63;1\033[?62;22c");                  /* cut by another answer */
    CHECK_EQ_INT(c.gfx, GFX_BLOCKS);
    c = PARSED("\033[?63;1;2\033[6;18;9t4;6c");            /* pieces, one broken */
    CHECK(c.gfx == GFX_BLOCKS && c.cell_w == 9 && c.cell_h == 18);
    /* keys typed during the query mixed in, and 40 attributes in one answer */
    c = PARSED("jk\033[6;16;8tq\033[?62;1;2;3;5;6;7;8;9;10;11;12;13;14;15;16;17;18;19;"
               "20;21;22;23;24;25;26;27;28;29;30;31;32;33;34;35;36;37;38;39;4c");
    CHECK(c.cell_w == 8 && c.cell_h == 16);
    CHECK_EQ_INT(c.gfx, GFX_SIXEL);
    c = PARSED("x\033[?62;4;22cy");
    CHECK_EQ_INT(c.gfx, GFX_SIXEL);
}

/* ---- the environment ----------------------------------------------------- */

TEST(termcaps_environment)
{
    env_save_clear();
    term_caps c;
    setenv("TERM", "xterm-256color", 1);
    setenv("LC_ALL", "C", 1);
    termcaps_from_env(&c);
    CHECK(c.colors == 256 && c.gfx == GFX_BLOCKS && c.utf8 == 0 && !c.in_tmux);
    setenv("COLORTERM", "truecolor", 1);
    termcaps_from_env(&c);
    CHECK_EQ_INT(c.colors, 16777216);
    setenv("COLORTERM", "24bit", 1);
    termcaps_from_env(&c);
    CHECK_EQ_INT(c.colors, 16777216);
    unsetenv("COLORTERM");
    setenv("TERM", "xterm", 1);
    termcaps_from_env(&c);
    CHECK_EQ_INT(c.colors, 8);
    setenv("TERM", "dumb", 1);
    termcaps_from_env(&c);
    CHECK(c.colors == 0 && c.gfx == GFX_NONE);
    unsetenv("TERM");
    termcaps_from_env(&c);
    CHECK(c.colors == 0 && c.gfx == GFX_NONE);

    setenv("TERM", "xterm-256color", 1);
    setenv("COLORTERM", "truecolor", 1);
    setenv("NO_COLOR", "1", 1);
    termcaps_from_env(&c);
    CHECK(c.colors == 0 && c.gfx == GFX_NONE);
    setenv("NO_COLOR", "", 1);                  /* empty: not set, per no-color.org */
    termcaps_from_env(&c);
    CHECK_EQ_INT(c.colors, 16777216);

    setenv("COIN_GRAPHICS", "sixel", 1);
    termcaps_from_env(&c);
    CHECK_EQ_INT(c.gfx, GFX_SIXEL);
    setenv("COIN_GRAPHICS", "none", 1);
    termcaps_from_env(&c);
    CHECK_EQ_INT(c.gfx, GFX_NONE);
    setenv("COIN_GRAPHICS", "Blocks", 1);
    setenv("NO_COLOR", "yes", 1);
    termcaps_from_env(&c);
    CHECK(c.gfx == GFX_BLOCKS && c.colors == 0);
    setenv("COIN_GRAPHICS", "kitty", 1);        /* unknown: ignored */
    termcaps_from_env(&c);
    CHECK_EQ_INT(c.gfx, GFX_NONE);
    unsetenv("COIN_GRAPHICS");
    unsetenv("NO_COLOR");

    setenv("TMUX", "/tmp/tmux-0/default,123,0", 1);
    termcaps_from_env(&c);
    CHECK(c.in_tmux == 1 && c.tmux_passthrough == 1);
    unsetenv("TMUX");

    /* C.UTF-8 ships with glibc; a locale that is not installed is judged
     * by its name */
    setenv("LC_ALL", "C.UTF-8", 1);
    termcaps_from_env(&c);
    CHECK_EQ_INT(c.utf8, 1);
    unsetenv("LC_ALL");
    setenv("LANG", "xx_YY.UTF-8", 1);
    termcaps_from_env(&c);
    CHECK_EQ_INT(c.utf8, 1);
    setenv("LC_CTYPE", "POSIX", 1);             /* LC_CTYPE outranks LANG */
    termcaps_from_env(&c);
    CHECK_EQ_INT(c.utf8, 0);
    env_restore();
}

/* ---- asking a pty --------------------------------------------------------- */

/* The terminal side of a pty: reads the queries until the DA1 request, then
 * answers in pieces with pauses.  Exits 0 when the queries came with DA1
 * last, 3 when not. */
static void play_terminal(int master, const char *const *pieces, int n_pieces)
{
    char got[256];
    size_t len = 0;
    while (len < sizeof got - 1) {
        ssize_t r = read(master, got + len, sizeof got - 1 - len);
        if (r <= 0)
            _exit(2);
        len += (size_t)r;
        got[len] = '\0';
        if (strstr(got, "\033[c"))
            break;
    }
    const char *da = strstr(got, "\033[c");
    int order_ok = da && da[3] == '\0' && strstr(got, "\033[16t") && strstr(got, "\033[16t") < da;
    for (int i = 0; i < n_pieces; i++) {
        usleep(15000);
        if (write(master, pieces[i], strlen(pieces[i])) < 0)
            _exit(2);
    }
    usleep(200000);             /* keep the pty open while the answer is read */
    _exit(order_ok ? 0 : 3);
}

static int open_pty(int *master, int *slave)
{
    struct winsize ws = {.ws_row = 24, .ws_col = 80};
    if (openpty(master, slave, NULL, NULL, &ws) != 0) {
        test_skip("no pty available");
        return -1;
    }
    return 0;
}

TEST(termcaps_query_silent_terminal)
{
    int master, slave;
    if (open_pty(&master, &slave) != 0)
        return;
    env_save_clear();
    setenv("TERM", "xterm-256color", 1);
    struct termios before, after;
    tcgetattr(slave, &before);
    term_caps c;
    double t0 = ms_now();
    termcaps_query(slave, slave, 150, &c);
    double took = ms_now() - t0;
    CHECK_MSG(took >= 140 && took < 150 + 250, "a silent terminal took %.0f ms", took);
    CHECK(c.gfx == GFX_BLOCKS && c.cell_w == 0 && c.cell_h == 0 && c.colors == 256);
    tcgetattr(slave, &after);
    CHECK(after.c_lflag == before.c_lflag && after.c_cc[VMIN] == before.c_cc[VMIN]);
    /* the queries went out, DA1 last */
    char buf[128] = {0};
    ssize_t r = read(master, buf, sizeof buf - 1);
    CHECK(r > 0 && strstr(buf, "\033[16t") && strstr(buf, "\033[14t") &&
          strstr(buf, "\033[c") && strcmp(strstr(buf, "\033[c"), "\033[c") == 0);
    /* a tty that knows its size in pixels gives the cell size even when the
     * terminal says nothing */
    struct winsize ws = {.ws_row = 24, .ws_col = 80, .ws_xpixel = 640, .ws_ypixel = 384};
    REQUIRE(ioctl(slave, TIOCSWINSZ, &ws) == 0);
    termcaps_query(slave, slave, 20, &c);
    CHECK(c.cell_w == 8 && c.cell_h == 16);
    (void)!read(master, buf, sizeof buf - 1);
    /* COIN_GRAPHICS=none wins even when the terminal could; 0 ms asks nothing */
    setenv("COIN_GRAPHICS", "none", 1);
    t0 = ms_now();
    termcaps_query(slave, slave, 0, &c);
    CHECK(ms_now() - t0 < 50 && c.gfx == GFX_NONE);
    /* not a tty: nothing is sent, no wait */
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    unsetenv("COIN_GRAPHICS");
    t0 = ms_now();
    termcaps_query(fds[0], fds[1], 1000, &c);
    CHECK(ms_now() - t0 < 50 && c.gfx == GFX_BLOCKS);
    close(fds[0]);
    close(fds[1]);
    env_restore();
    close(master);
    close(slave);
}

static void query_answering(const char *const *pieces, int n, const char *graphics,
                            term_caps *c, double *took, int *child_status)
{
    int master, slave;
    memset(c, 0, sizeof *c);
    *child_status = -1;
    if (open_pty(&master, &slave) != 0)
        return;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(slave);
        play_terminal(master, pieces, n);
    }
    env_save_clear();
    setenv("TERM", "xterm-256color", 1);
    if (graphics)
        setenv("COIN_GRAPHICS", graphics, 1);
    double t0 = ms_now();
    termcaps_query(slave, slave, 2000, c);
    *took = ms_now() - t0;
    env_restore();
    waitpid(pid, child_status, 0);
    close(master);
    close(slave);
}

TEST(termcaps_query_answering_terminal)
{
    /* xterm -ti vt340's answers, split mid-sequence */
    const char *pieces[] = {"\033[6;17;9t\033[4;408;7", "20t\033[8;24;80t\033[?63;1;2;",
                            "4;6;9;15;22c"};
    term_caps c;
    double took;
    int status;
    query_answering(pieces, 3, NULL, &c, &took, &status);
    if (status == -1)
        return;
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the terminal saw the queries "
              "out of order (status %d)", status);
    CHECK_EQ_INT(c.gfx, GFX_SIXEL);
    CHECK(c.cell_w == 9 && c.cell_h == 17);
    /* DA1 ends the wait: far less than the 2 s timeout */
    CHECK_MSG(took < 1000, "took %.0f ms for an answering terminal", took);

    /* a terminal without sixel nor XTWINOPS answers DA1 alone */
    const char *plain[] = {"\033[?62;22c"};
    query_answering(plain, 1, NULL, &c, &took, &status);
    CHECK(c.gfx == GFX_BLOCKS && c.cell_w == 0 && took < 1000);
    /* the operator's COIN_GRAPHICS outranks the answer */
    query_answering(pieces, 3, "blocks", &c, &took, &status);
    CHECK(c.gfx == GFX_BLOCKS && c.cell_w == 9);
}
