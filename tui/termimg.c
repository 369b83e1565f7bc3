/*
 * termimg.c - images turned into terminal bytes (termimg.h): sixel through
 * libsixel, Unicode half-blocks in 24-bit, 256 or 8 colours, and the ASCII
 * fallbacks for terminals without UTF-8 or without colour.
 */
#include "tui/termimg.h"

#include "core/image.h"

#include <math.h>
#include <pthread.h>
#include <sixel/sixel.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The cell size assumed when the terminal did not report one: a common
 * xterm/VTE default and, as 1:2, the shape half-blocks assume anyway. */
#define DEFAULT_CELL_W 10
#define DEFAULT_CELL_H 20

/* A growing NUL-terminated byte string; failed stays set after the first
 * allocation failure so callers check once at the end. */
typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} strbuf;

static void sb_append(strbuf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(strbuf *b, const char *s) { sb_append(b, s, strlen(s)); }

__attribute__((format(printf, 2, 3)))
static void sb_printf(strbuf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_append(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* The largest tw x th with tw / th as close as integers allow to
 * aspect_w / aspect_h that fits in area_w x area_h: one side fills the area,
 * the other is rounded to nearest (at least 1). */
static void fit_size(long long aspect_w, long long aspect_h, int area_w, int area_h,
                     int *tw, int *th)
{
    long long w, h;
    if (aspect_w * area_h <= aspect_h * area_w) {
        h = area_h;
        w = (aspect_w * area_h * 2 + aspect_h) / (2 * aspect_h);
    } else {
        w = area_w;
        h = (aspect_h * area_w * 2 + aspect_w) / (2 * aspect_w);
    }
    *tw = (int)(w < 1 ? 1 : w > area_w ? area_w : w);
    *th = (int)(h < 1 ? 1 : h > area_h ? area_h : h);
}

/* rgb [h, w, 3] resized to tw x th (Pillow's antialiased bicubic, the same
 * filter as the training pipeline's), or copied when the size already fits:
 * libsixel's error diffusion writes into its input, so it always gets a copy. */
static uint8_t *scaled_copy(const uint8_t *rgb, int w, int h, int tw, int th,
                            coin_error *err)
{
    if (tw == w && th == h) {
        uint8_t *p = malloc((size_t)w * h * 3);
        if (!p) {
            coin_fail(err, COIN_ENOMEM, "out of memory for a %dx%d image to show", w, h);
            return NULL;
        }
        memcpy(p, rgb, (size_t)w * h * 3);
        return p;
    }
    coin_image in = {.width = w, .height = h, .channels = 3, .pixels = (uint8_t *)rgb};
    coin_image out = {0};
    if (image_resize_bicubic(&in, tw, th, &out, err) != 0)
        return NULL;
    return out.pixels;
}

/* ---- sixel ---------------------------------------------------------- */

static int sixel_sink(char *data, int size, void *priv)
{
    sb_append(priv, data, (size_t)size);
    return size;
}

/* The distinct colours of px (n pixels) into pal (3 bytes each) when there
 * are at most max of them; returns their count, or -1 when there are more. */
static int exact_palette(const uint8_t *px, size_t n, uint8_t *pal, int max)
{
    enum { SLOTS = 1024 };      /* > 2 * 256: open addressing stays short */
    uint32_t keys[SLOTS];
    memset(keys, 0xff, sizeof keys);  /* 0xffffffff is no 24-bit colour */
    int count = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t k = (uint32_t)px[3 * i] << 16 | (uint32_t)px[3 * i + 1] << 8 | px[3 * i + 2];
        uint32_t s = (k * 2654435761u) >> 22;
        while (keys[s] != 0xffffffffu && keys[s] != k)
            s = (s + 1) & (SLOTS - 1);
        if (keys[s] == k)
            continue;
        if (count == max)
            return -1;
        keys[s] = k;
        memcpy(pal + 3 * count, px + 3 * i, 3);
        count++;
    }
    return count;
}

/* Sixel registers the encoder may use: 256 is what xterm (numColorRegisters),
 * mlterm, foot, WezTerm and tmux offer; a real VT340 has 16 and would show
 * the higher registers wrongly. */
#define SIXEL_COLORS 256

/*
 * px [th, tw, 3] as a DECSIXEL stream ("ESC P q" ... "ESC \", 7-bit only, as
 * UTF-8 terminals need).  Images of at most 256 colours get exactly their own
 * colours as the palette and no dithering (libsixel 1.10's histogram samples
 * only every third pixel and can miss small details); others are quantised
 * by libsixel's median cut with Floyd-Steinberg diffusion.  px is modified.
 */
static int encode_sixel(uint8_t *px, int tw, int th, strbuf *out, coin_error *err)
{
    sixel_dither_t *dither = NULL;
    sixel_output_t *output = NULL;
    uint8_t pal[SIXEL_COLORS * 3];
    int n = exact_palette(px, (size_t)tw * th, pal, SIXEL_COLORS);
    SIXELSTATUS st;
    if (n > 0) {
        st = sixel_dither_new(&dither, n, NULL);
        if (SIXEL_SUCCEEDED(st)) {
            sixel_dither_set_palette(dither, pal);
            sixel_dither_set_diffusion_type(dither, SIXEL_DIFFUSE_NONE);
        }
    } else {
        st = sixel_dither_new(&dither, SIXEL_COLORS, NULL);
        if (SIXEL_SUCCEEDED(st))
            st = sixel_dither_initialize(dither, px, tw, th, SIXEL_PIXELFORMAT_RGB888,
                                         SIXEL_LARGE_AUTO, SIXEL_REP_AUTO,
                                         SIXEL_QUALITY_AUTO);
        if (SIXEL_SUCCEEDED(st))
            sixel_dither_set_diffusion_type(dither, SIXEL_DIFFUSE_FS);
    }
    if (SIXEL_SUCCEEDED(st)) {
        sixel_dither_set_pixelformat(dither, SIXEL_PIXELFORMAT_RGB888);
        st = sixel_output_new(&output, sixel_sink, out, NULL);
    }
    if (SIXEL_SUCCEEDED(st)) {
        sixel_output_set_8bit_availability(output, 0);
        st = sixel_encode(px, tw, th, 3, dither, output);
    }
    if (output)
        sixel_output_unref(output);
    if (dither)
        sixel_dither_unref(dither);
    if (SIXEL_FAILED(st))
        return coin_fail(err, COIN_EIO, "libsixel could not encode a %dx%d image (status 0x%x)",
                         tw, th, (unsigned)st);
    return 0;
}

/* tmux's passthrough: "ESC P tmux;" + the bytes with every ESC doubled +
 * "ESC \".  tmux 3.3+ forwards it only with `set -g allow-passthrough on`. */
static void wrap_tmux(const strbuf *in, strbuf *out)
{
    sb_puts(out, "\033Ptmux;");
    size_t start = 0;
    for (size_t i = 0; i < in->len; i++) {
        if (in->p[i] == '\033') {
            sb_append(out, in->p + start, i + 1 - start);
            start = i;  /* the ESC goes out again with the next run */
        }
    }
    sb_append(out, in->p + start, in->len - start);
    sb_puts(out, "\033\\");
}

/* ---- half-blocks and their fallbacks --------------------------------- */

typedef struct { uint8_t r, g, b; } rgb8;

/* xterm's 256-colour palette beyond the 16 system colours: a 6x6x6 cube on
 * these levels, then 24 greys 8, 18, ..., 238.  The system colours 0..15
 * are not used: every terminal paints them differently. */
static const uint8_t cube_levels[6] = {0, 95, 135, 175, 215, 255};

/* xterm's default colours 0..7 (the 8-colour fallback's palette). */
static const rgb8 ansi8[8] = {
    {0, 0, 0}, {205, 0, 0}, {0, 205, 0}, {205, 205, 0},
    {0, 0, 238}, {205, 0, 205}, {0, 205, 205}, {229, 229, 229},
};

/*
 * Nearest is judged in CIELAB (CIE76 distance, D65 white), not in RGB: by
 * RGB distance the 24 closely spaced greys beat the coarse cube for every
 * muted colour, and a dusky sky or a green hill came out grey (seen in
 * xterm); in Lab, hue differences weigh as the eye weighs them.
 */
typedef struct { float l, a, b; } lab;

static float srgb_linear[256];
static lab pal256_lab[240], ansi8_lab[8];
static pthread_once_t lab_once = PTHREAD_ONCE_INIT;

static float lab_f(float t)
{
    const float d = 6.0f / 29.0f;
    return t > d * d * d ? cbrtf(t) : t / (3 * d * d) + 4.0f / 29.0f;
}

static lab to_lab(int r, int g, int b)
{
    float R = srgb_linear[r], G = srgb_linear[g], B = srgb_linear[b];
    float x = (0.4124f * R + 0.3576f * G + 0.1805f * B) / 0.95047f;
    float y = 0.2126f * R + 0.7152f * G + 0.0722f * B;
    float z = (0.0193f * R + 0.1192f * G + 0.9505f * B) / 1.08883f;
    float fx = lab_f(x), fy = lab_f(y), fz = lab_f(z);
    return (lab){116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)};
}

static void init_lab_tables(void)
{
    for (int i = 0; i < 256; i++) {
        float c = i / 255.0f;
        srgb_linear[i] = c <= 0.04045f ? c / 12.92f : powf((c + 0.055f) / 1.055f, 2.4f);
    }
    for (int i = 0; i < 216; i++)
        pal256_lab[i] = to_lab(cube_levels[i / 36], cube_levels[i / 6 % 6], cube_levels[i % 6]);
    for (int i = 0; i < 24; i++)
        pal256_lab[216 + i] = to_lab(8 + 10 * i, 8 + 10 * i, 8 + 10 * i);
    for (int i = 0; i < 8; i++)
        ansi8_lab[i] = to_lab(ansi8[i].r, ansi8[i].g, ansi8[i].b);
}

static int nearest_lab(lab c, const lab *pal, int n)
{
    int best = 0;
    float bd = 1e30f;
    for (int i = 0; i < n; i++) {
        float dl = c.l - pal[i].l, da = c.a - pal[i].a, db = c.b - pal[i].b;
        float d = dl * dl + da * da + db * db;
        if (d < bd) {
            bd = d;
            best = i;
        }
    }
    return best;
}

int termimg_xterm256_index(uint8_t r, uint8_t g, uint8_t b)
{
    pthread_once(&lab_once, init_lab_tables);
    return 16 + nearest_lab(to_lab(r, g, b), pal256_lab, 240);
}

static int nearest_ansi8(rgb8 c)
{
    pthread_once(&lab_once, init_lab_tables);
    return nearest_lab(to_lab(c.r, c.g, c.b), ansi8_lab, 8);
}

/* Appends the SGR parameters (no CSI, no 'm') that make c the foreground
 * (fg = 1) or background colour at this colour depth. */
static void sgr_color(strbuf *b, int colors, int fg, rgb8 c)
{
    if (colors >= 16777216)
        sb_printf(b, "%d;2;%d;%d;%d", fg ? 38 : 48, c.r, c.g, c.b);
    else if (colors >= 256)
        sb_printf(b, "%d;5;%d", fg ? 38 : 48, termimg_xterm256_index(c.r, c.g, c.b));
    else
        sb_printf(b, "%d", (fg ? 30 : 40) + nearest_ansi8(c));
}

/* The luminance ramp of the monochrome fallback, dark to light. */
static const char ramp[] = " .:-=+*#%@";

static rgb8 pixel_at(const uint8_t *px, int tw, int x, int y)
{
    const uint8_t *p = px + 3 * ((size_t)y * tw + x);
    return (rgb8){p[0], p[1], p[2]};
}

static rgb8 average2(rgb8 a, rgb8 b)
{
    return (rgb8){(uint8_t)((a.r + b.r + 1) / 2), (uint8_t)((a.g + b.g + 1) / 2),
                  (uint8_t)((a.b + b.b + 1) / 2)};
}

/*
 * px [th, tw, 3], two pixel rows per cell row, as cells.  Colour and UTF-8:
 * U+2580 with the top pixel as foreground and the bottom one as background
 * (an odd last row keeps the terminal's default background under its top
 * pixels).  Colour without UTF-8: a space whose background is the mean of
 * the two pixels.  No colour: a character of the luminance ramp " .:-=+*#%@"
 * for the mean of the two pixels (Rec. 601 weights).
 *
 * Cursor: DECSC (ESC 7) first; row r starts with DECRC (ESC 8) and CUD r
 * (ESC [ r B), so every row begins in the image's left column whatever the
 * screen width (a relative move back after the last column would be off by
 * one when the image touches the right margin, where the cursor stays in the
 * pending-wrap position); each row ends with SGR 0, and a final DECRC leaves
 * the cursor, and the attributes, as they were before.
 */
static void encode_blocks(const uint8_t *px, int tw, int th, int colors, int utf8,
                          strbuf *out)
{
    sb_puts(out, "\0337");
    for (int r = 0; r * 2 < th; r++) {
        if (r > 0)
            sb_printf(out, "\0338\033[%dB", r);
        sb_puts(out, "\033[0m");
        int have_bottom = r * 2 + 1 < th;
        /* the SGR last sent, so runs of equal colour cost nothing */
        int last_fg = -1, last_bg = -1;
        for (int x = 0; x < tw; x++) {
            rgb8 top = pixel_at(px, tw, x, 2 * r);
            rgb8 bot = have_bottom ? pixel_at(px, tw, x, 2 * r + 1) : top;
            if (colors <= 0) {
                rgb8 m = average2(top, bot);
                int lum = (299 * m.r + 587 * m.g + 114 * m.b + 500) / 1000;
                sb_append(out, &ramp[lum * 10 / 256], 1);
                continue;
            }
            if (!utf8) {
                rgb8 m = average2(top, bot);
                int key = m.r << 16 | m.g << 8 | m.b;
                if (key != last_bg) {
                    sb_puts(out, "\033[");
                    sgr_color(out, colors, 0, m);
                    sb_puts(out, "m");
                    last_bg = key;
                }
                sb_puts(out, " ");
                continue;
            }
            int fkey = top.r << 16 | top.g << 8 | top.b;
            int bkey = have_bottom ? bot.r << 16 | bot.g << 8 | bot.b : -2;
            if (fkey != last_fg || bkey != last_bg) {
                sb_puts(out, "\033[");
                if (fkey != last_fg)
                    sgr_color(out, colors, 1, top);
                if (bkey != last_bg) {
                    if (fkey != last_fg)
                        sb_puts(out, ";");
                    if (have_bottom)
                        sgr_color(out, colors, 0, bot);
                    else
                        sb_puts(out, "49");
                }
                sb_puts(out, "m");
                last_fg = fkey;
                last_bg = bkey;
            }
            sb_puts(out, "\xe2\x96\x80");  /* U+2580 UPPER HALF BLOCK */
        }
        sb_puts(out, "\033[0m");
    }
    sb_puts(out, "\0338");
}

/* ---- the entry point ------------------------------------------------- */

void termimg_fit(const term_caps *caps, int w, int h, int cols, int rows,
                 int *px_w, int *px_h, int *used_cols, int *used_rows)
{
    int cw = caps->cell_w > 0 ? caps->cell_w : DEFAULT_CELL_W;
    int ch = caps->cell_h > 0 ? caps->cell_h : DEFAULT_CELL_H;
    int tw = 0, th = 0, uc = 0, ur = 0;
    if (caps->gfx == GFX_SIXEL && w > 0 && h > 0 && cols > 0 && rows > 0) {
        fit_size(w, h, cols * cw, rows * ch, &tw, &th);
        uc = (tw + cw - 1) / cw;
        ur = (th + ch - 1) / ch;
    } else if (caps->gfx == GFX_BLOCKS && w > 0 && h > 0 && cols > 0 && rows > 0) {
        /* a block pixel is cw x ch/2 screen pixels: compare sizes in screen
         * pixels, scaled by 2 to stay in integers */
        fit_size((long long)w * ch, (long long)h * 2 * cw, cols, 2 * rows, &tw, &th);
        uc = tw;
        ur = (th + 1) / 2;
    }
    *px_w = tw;
    *px_h = th;
    if (used_cols)
        *used_cols = uc;
    if (used_rows)
        *used_rows = ur;
}

int termimg_render(const term_caps *caps, const uint8_t *rgb, int w, int h,
                   int cols, int rows, char **out, size_t *out_len,
                   int *used_cols, int *used_rows, coin_error *err)
{
    *out = NULL;
    *out_len = 0;
    *used_cols = *used_rows = 0;
    if (!rgb || w <= 0 || h <= 0 || w > IMAGE_MAX_SIDE || h > IMAGE_MAX_SIDE)
        return coin_fail(err, COIN_EINVAL, "cannot show an image of %dx%d pixels", w, h);
    if (cols <= 0 || rows <= 0 || cols > 10000 || rows > 10000)
        return coin_fail(err, COIN_EINVAL, "cannot show an image in %dx%d cells", cols, rows);

    strbuf b = {0};
    int tw, th, uc, ur;
    termimg_fit(caps, w, h, cols, rows, &tw, &th, &uc, &ur);
    if (tw > IMAGE_MAX_SIDE || th > IMAGE_MAX_SIDE)
        return coin_fail(err, COIN_EINVAL, "an image of %dx%d pixels is too large to show "
                         "(%dx%d cells of %dx%d)", tw, th, cols, rows, caps->cell_w, caps->cell_h);
    if (caps->gfx == GFX_SIXEL || caps->gfx == GFX_BLOCKS) {
        uint8_t *px = scaled_copy(rgb, w, h, tw, th, err);
        if (!px)
            return err ? err->code : COIN_ENOMEM;
        if (caps->gfx == GFX_BLOCKS) {
            encode_blocks(px, tw, th, caps->colors, caps->utf8, &b);
        } else {
            strbuf six = {0};
            sb_puts(&six, "\0337");
            int rc = encode_sixel(px, tw, th, &six, err);
            sb_puts(&six, "\0338");
            if (rc != 0) {
                free(six.p);
                free(px);
                return rc;
            }
            if (caps->tmux_passthrough) {
                wrap_tmux(&six, &b);
                free(six.p);
                b.failed |= six.failed;
            } else {
                b = six;
            }
        }
        free(px);
    } else {
        sb_append(&b, "", 0);
    }
    if (b.failed || !b.p) {
        free(b.p);
        return coin_fail(err, COIN_ENOMEM, "out of memory rendering a %dx%d image", w, h);
    }
    *out = b.p;
    *out_len = b.len;
    *used_cols = uc;
    *used_rows = ur;
    return 0;
}
