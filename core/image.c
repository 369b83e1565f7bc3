/*
 * image.c - image files in and out, and the textual-inversion pixel path.
 *
 * PNG goes through libpng with no libpng transforms at all: rows arrive as
 * stored (packed bits, 16-bit big-endian samples, palette indices) and are
 * turned into RGB here, following PIL's per-mode rules, so the result is
 * what PIL's .convert("RGB") gives and does not depend on libpng's
 * transform semantics.  JPEG, BMP and GIF go through stb_image (restricted
 * to those formats, its warnings kept out of -Wall -Wextra), after checks
 * stb does not make itself: that the file is not truncated (stb would decode
 * zeros) and that a JPEG's Huffman tables are sound (stb 2.27 overruns memory
 * on some malformed ones; found by fuzzing).
 * Dimensions are checked against the hostile-file limits from the header
 * before any pixel memory is allocated.
 *
 * PNG text is read by walking the chunk list directly (skipping the image
 * data), which is cheaper than decoding the image and lets every text chunk
 * be handled as PIL handles it.
 *
 * The resize is Pillow's Resample.c re-derived in the same arithmetic
 * (double-precision coefficients, 22-bit fixed point, clip after each pass)
 * and the same choice of pass order, which is what makes it byte-exact.
 */
#include "image.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "fileio.h"

/* stb_image's one implementation in coin (another file may include
 * <stb/stb_image.h> for the declarations, never with STB_IMAGE_IMPLEMENTATION):
 * only the formats libpng does not cover, and no stdio (files are read here
 * with bounded size).  Its own dimension cap stays at the default: stbi_info
 * must report a too-large size so that check_size can say so (with a lower
 * cap it only says "unknown image type"); nothing is decoded before that
 * check. */
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#define STBI_NO_STDIO
#define STBI_NO_LINEAR
#define STBI_NO_HDR
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wmisleading-indentation"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wtype-limits"
#pragma GCC diagnostic ignored "-Wshift-negative-value"
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

/* Text chunks: per chunk (raw or decompressed) and in total, as PIL bounds
 * them (MAX_TEXT_CHUNK / MAX_TEXT_MEMORY), with more room per chunk. */
#define TEXT_CHUNK_MAX ((size_t)16 << 20)
#define TEXT_TOTAL_MAX ((size_t)64 << 20)

/* ------------------------------------------------------------------ */
/* Allocation                                                          */

int image_alloc(coin_image *img, int width, int height, int channels,
                coin_error *err)
{
    if (!img || width <= 0 || height <= 0 || (channels != 3 && channels != 4))
        return coin_fail(err, COIN_EINVAL, "image_alloc: bad image %dx%d with %d channels",
                         width, height, channels);
    if (width > IMAGE_MAX_SIDE || height > IMAGE_MAX_SIDE ||
        (int64_t)width * height > IMAGE_MAX_PIXELS)
        return coin_fail(err, COIN_EINVAL, "image_alloc: %dx%d is larger than the %d-pixel "
                         "limit per side", width, height, IMAGE_MAX_SIDE);
    uint8_t *p = calloc((size_t)width * height, (size_t)channels);
    if (!p)
        return coin_fail(err, COIN_ENOMEM, "out of memory for a %dx%d image", width, height);
    img->width = width;
    img->height = height;
    img->channels = channels;
    img->pixels = p;
    return 0;
}

void image_free(coin_image *img)
{
    if (!img)
        return;
    free(img->pixels);
    memset(img, 0, sizeof *img);
}

static int check_image(const coin_image *img, const char *fn, coin_error *err)
{
    if (!img || !img->pixels || img->width <= 0 || img->height <= 0 ||
        (img->channels != 3 && img->channels != 4))
        return coin_fail(err, COIN_EINVAL, "%s: no image, or not an RGB/RGBA image", fn);
    return 0;
}

static int check_size(int w, int h, const char *name, coin_error *err)
{
    if (w <= 0 || h <= 0)
        return coin_fail(err, COIN_EFORMAT, "%s: the image has no pixels (%dx%d)", name, w, h);
    if (w > IMAGE_MAX_SIDE || h > IMAGE_MAX_SIDE || (int64_t)w * h > IMAGE_MAX_PIXELS)
        return coin_fail(err, COIN_EUNSUPPORTED, "%s: the image is %dx%d, larger than coin "
                         "accepts (%d pixels per side at most); shrink it first",
                         name, w, h, IMAGE_MAX_SIDE);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Text encodings                                                      */

/* Decodes one strict UTF-8 sequence at s[*i] (no overlongs, surrogates or
 * code points past U+10FFFF).  Returns 0 and advances *i, or -1. */
static int utf8_next(const unsigned char *s, size_t n, size_t *i, uint32_t *cp)
{
    unsigned char c = s[*i];
    int len;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        (*i)++;
        return 0;
    } else if ((c & 0xE0) == 0xC0) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return -1;
    }
    if (n - *i < (size_t)len)
        return -1;
    for (int k = 1; k < len; k++) {
        if ((s[*i + k] & 0xC0) != 0x80)
            return -1;
        v = v << 6 | (s[*i + k] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return -1;
    *cp = v;
    *i += len;
    return 0;
}

static int utf8_valid(const unsigned char *s, size_t n)
{
    uint32_t cp;
    for (size_t i = 0; i < n;)
        if (utf8_next(s, n, &i, &cp))
            return 0;
    return 1;
}

/* UTF-8 s to Latin-1 in a new buffer.  Returns 1 when every character is
 * U+0000..U+00FF (then *out is set), 0 when some is not (PIL then writes
 * iTXt), -1 for invalid UTF-8, -2 when out of memory. */
static int latin1_from_utf8(const char *s, char **out, size_t *out_len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t n = strlen(s), k = 0;
    char *b = malloc(n + 1);
    if (!b)
        return -2;
    int rc = 1;
    uint32_t cp;
    for (size_t i = 0; i < n;) {
        if (utf8_next(u, n, &i, &cp)) {
            rc = -1;
            break;
        }
        if (cp > 0xFF)
            rc = 0;     /* keep going: invalid UTF-8 later still matters */
        b[k++] = (char)(unsigned char)cp;
    }
    if (rc != 1) {
        free(b);
        return rc;
    }
    b[k] = '\0';
    *out = b;
    if (out_len)
        *out_len = k;
    return 1;
}

/* Latin-1 bytes to a new UTF-8 string, stopping at a NUL. */
static char *utf8_from_latin1(const unsigned char *s, size_t n)
{
    char *o = malloc(2 * n + 1), *p = o;
    if (!o)
        return NULL;
    for (size_t i = 0; i < n && s[i]; i++) {
        if (s[i] < 0x80) {
            *p++ = (char)s[i];
        } else {
            *p++ = (char)(0xC0 | s[i] >> 6);
            *p++ = (char)(0x80 | (s[i] & 0x3F));
        }
    }
    *p = '\0';
    return o;
}

/* ------------------------------------------------------------------ */
/* PNG decoding                                                        */

/* libpng reports errors through a callback that must not return; it
 * longjmps back to png_decode_rows.  Everything that must survive the jump
 * lives in this struct, owned by the caller of the function that calls
 * setjmp, so no local of that function is read after a longjmp. */
typedef struct png_job {
    const uint8_t *data;
    size_t len, at;
    png_structp png;
    png_infop info;
    uint8_t *raw;       /* interlaced images: the whole stored image */
    uint8_t *row;       /* otherwise one stored row */
    coin_image img;
    png_uint_32 w, h;
    int depth, ctype;
    char msg[200];
    int why;            /* PNGJ_* */
} png_job;

enum { PNGJ_LIBPNG = 1, PNGJ_SIZE, PNGJ_NOMEM };

static void png_error_cb(png_structp png, png_const_charp msg)
{
    png_job *j = png_get_error_ptr(png);
    if (j && !j->msg[0])
        snprintf(j->msg, sizeof j->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_warning_cb(png_structp png, png_const_charp msg)
{
    (void)png;  /* the core never prints; libpng's warnings are benign */
    (void)msg;
}

static void png_read_cb(png_structp png, png_bytep out, size_t n)
{
    png_job *j = png_get_io_ptr(png);
    if (n > j->len - j->at)
        png_error(png, "the file ends before the image data does (truncated)");
    memcpy(out, j->data + j->at, n);
    j->at += n;
}

/* Sample s (0-based) of a packed row with depth < 8, MSB first. */
static unsigned packed_sample(const uint8_t *row, size_t s, int depth)
{
    size_t bit = s * (size_t)depth;
    unsigned shift = 8 - depth - (unsigned)(bit & 7);
    return (row[bit >> 3] >> shift) & ((1u << depth) - 1);
}

/* One stored row to RGB, following PIL: PNG modes "1", "L;2", "L;4" scale
 * grey to 0..255, "P" looks up the (zero-padded) palette, "I;16" (16-bit grey
 * without alpha) clips to 255, every other 16-bit mode keeps the high byte,
 * and alpha is dropped. */
static void png_row_to_rgb(const uint8_t *src, uint8_t *dst, int w, int ctype,
                           int depth, const uint8_t *pal)
{
    int bps = depth == 16 ? 2 : 1;
    for (int x = 0; x < w; x++, dst += 3) {
        unsigned r, g, b;
        switch (ctype) {
        case PNG_COLOR_TYPE_PALETTE: {
            unsigned i = depth < 8 ? packed_sample(src, (size_t)x, depth) : src[x];
            r = pal[3 * i], g = pal[3 * i + 1], b = pal[3 * i + 2];
            break;
        }
        case PNG_COLOR_TYPE_GRAY:
            if (depth < 8) {
                r = packed_sample(src, (size_t)x, depth) * (255u / ((1u << depth) - 1));
            } else if (depth == 16) {
                unsigned v = (unsigned)src[2 * x] << 8 | src[2 * x + 1];
                r = v > 255 ? 255 : v;
            } else {
                r = src[x];
            }
            g = b = r;
            break;
        case PNG_COLOR_TYPE_GRAY_ALPHA:
            r = g = b = src[(size_t)x * 2 * bps];
            break;
        case PNG_COLOR_TYPE_RGB:
            r = src[(size_t)x * 3 * bps];
            g = src[(size_t)x * 3 * bps + bps];
            b = src[(size_t)x * 3 * bps + 2 * bps];
            break;
        default: /* RGBA */
            r = src[(size_t)x * 4 * bps];
            g = src[(size_t)x * 4 * bps + bps];
            b = src[(size_t)x * 4 * bps + 2 * bps];
            break;
        }
        dst[0] = (uint8_t)r, dst[1] = (uint8_t)g, dst[2] = (uint8_t)b;
    }
}

/* The part that libpng may longjmp out of.  Returns 0 or PNGJ_*. */
static int png_decode_rows(png_job *j)
{
    if (setjmp(png_jmpbuf(j->png))) {
        j->why = j->why ? j->why : PNGJ_LIBPNG;
        return j->why;
    }
    /* Text, profiles and the like are not needed for pixels.  num_chunks -1
     * makes libpng skip every ancillary chunk but tRNS, compressed ones
     * included, so a zip bomb in a zTXt or iCCP costs nothing here. */
    png_set_keep_unknown_chunks(j->png, PNG_HANDLE_CHUNK_NEVER, NULL, -1);
    png_read_info(j->png, j->info);
    int ilace;
    png_get_IHDR(j->png, j->info, &j->w, &j->h, &j->depth, &j->ctype, &ilace, NULL, NULL);
    if (j->w > IMAGE_MAX_SIDE || j->h > IMAGE_MAX_SIDE ||
        (int64_t)j->w * j->h > IMAGE_MAX_PIXELS)
        return j->why = PNGJ_SIZE;
    uint8_t pal[256 * 3];
    memset(pal, 0, sizeof pal);
    if (j->ctype == PNG_COLOR_TYPE_PALETTE) {
        png_colorp p;
        int np = 0;
        if (png_get_PLTE(j->png, j->info, &p, &np))
            for (int i = 0; i < np && i < 256; i++)
                pal[3 * i] = p[i].red, pal[3 * i + 1] = p[i].green, pal[3 * i + 2] = p[i].blue;
    }
    int passes = png_set_interlace_handling(j->png);
    png_read_update_info(j->png, j->info);
    size_t rowbytes = png_get_rowbytes(j->png, j->info);
    int w = (int)j->w, h = (int)j->h;
    j->img.pixels = malloc((size_t)w * h * 3);
    if (!j->img.pixels)
        return j->why = PNGJ_NOMEM;
    j->img.width = w, j->img.height = h, j->img.channels = 3;
    if (passes > 1) {
        /* Adam7: libpng fills the rows over seven passes, so keep them all. */
        j->raw = calloc((size_t)h, rowbytes);
        png_bytep *rows = j->raw ? malloc((size_t)h * sizeof *rows) : NULL;
        if (!rows)
            return j->why = PNGJ_NOMEM;
        for (int y = 0; y < h; y++)
            rows[y] = j->raw + (size_t)y * rowbytes;
        j->row = (uint8_t *)rows;       /* freed by the caller */
        png_read_image(j->png, rows);
        for (int y = 0; y < h; y++)
            png_row_to_rgb(rows[y], j->img.pixels + (size_t)y * w * 3, w, j->ctype, j->depth, pal);
    } else {
        j->row = malloc(rowbytes);
        if (!j->row)
            return j->why = PNGJ_NOMEM;
        for (int y = 0; y < h; y++) {
            png_read_row(j->png, j->row, NULL);
            png_row_to_rgb(j->row, j->img.pixels + (size_t)y * w * 3, w, j->ctype, j->depth, pal);
        }
    }
    /* No png_read_end: like PIL, a file whose image data is complete but
     * whose trailing chunks (or IEND) are missing still loads. */
    return 0;
}

static int png_decode(const uint8_t *data, size_t len, const char *name,
                      coin_image *out, coin_error *err)
{
    png_job j;
    memset(&j, 0, sizeof j);
    j.data = data, j.len = len;
    j.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &j, png_error_cb, png_warning_cb);
    j.info = j.png ? png_create_info_struct(j.png) : NULL;
    if (!j.info) {
        png_destroy_read_struct(&j.png, NULL, NULL);
        return coin_fail(err, COIN_ENOMEM, "%s: out of memory starting the PNG decoder", name);
    }
    png_set_read_fn(j.png, &j, png_read_cb);
    int why = png_decode_rows(&j);
    png_destroy_read_struct(&j.png, &j.info, NULL);
    free(j.raw);
    free(j.row);
    if (why) {
        free(j.img.pixels);
        if (why == PNGJ_SIZE)
            return check_size((int)(j.w > INT_MAX ? INT_MAX : j.w),
                              (int)(j.h > INT_MAX ? INT_MAX : j.h), name, err);
        if (why == PNGJ_NOMEM)
            return coin_fail(err, COIN_ENOMEM, "%s: out of memory decoding a %ux%u PNG",
                             name, (unsigned)j.w, (unsigned)j.h);
        return coin_fail(err, COIN_EFORMAT, "%s: corrupt or truncated PNG (%s)", name,
                         j.msg[0] ? j.msg : "libpng error");
    }
    *out = j.img;
    return 0;
}

/* ------------------------------------------------------------------ */
/* JPEG, BMP, GIF through stb_image                                    */

/* stb_image reads past the end of its input as zeros, so a truncated file
 * would decode into a half-grey picture without complaint, where PIL says
 * "image file is truncated".  These walks check that the data the decoder
 * needs is all there first. */

/* Huffman tables as stb_image 2.27 needs them.  It trusts the 16 code-length
 * counts and writes one byte per code into a 257-byte array, so a table
 * claiming more than 256 codes overruns its heap block; and it decodes a
 * scan with whatever table slot the scan names, defined or not (the slots
 * are uninitialised memory), reading symbols out of bounds.  So: counts at
 * most 256, and every table a scan decodes with defined before it.
 * *defined has bit th for DC table th and bit 4 + th for AC. */
static int jpeg_dht_ok(const uint8_t *d, size_t len, unsigned *defined)
{
    while (len > 0) {
        if (len < 17)
            return 0;
        size_t n = 0;
        for (int i = 1; i <= 16; i++)
            n += d[i];
        int tc = d[0] >> 4, th = d[0] & 15;
        if (tc > 1 || th > 3 || n > 256 || len - 17 < n)
            return 0;
        *defined |= 1u << (tc * 4 + th);
        d += 17 + n;
        len -= 17 + n;
    }
    return 1;
}

/* A scan header (after its length): the tables its components decode with
 * must be defined.  Baseline scans use both; progressive DC first scans
 * (Ss = 0, Ah = 0) only the DC table, DC refinements none, AC scans only
 * the AC table. */
static int jpeg_sos_ok(const uint8_t *d, size_t len, unsigned defined, int progressive)
{
    if (len < 1 || len != 4 + 2 * (size_t)d[0])
        return 0;
    int ns = d[0], ss = d[1 + 2 * ns], ah = d[3 + 2 * ns] >> 4;
    for (int c = 0; c < ns; c++) {
        int td = d[2 + 2 * c] >> 4, ta = d[2 + 2 * c] & 15;
        int need_dc = !progressive || (ss == 0 && ah == 0), need_ac = !progressive || ss > 0;
        if ((need_dc && (td > 3 || !(defined >> td & 1))) ||
            (need_ac && (ta > 3 || !(defined >> (4 + ta) & 1))))
            return 0;
    }
    return 1;
}

/* The marker structure up to EOI: segments skipped by their lengths (so an
 * EXIF thumbnail's EOI does not count), entropy-coded data scanned for the
 * next marker (FF 00 is a stuffed byte, FF D0-D7 a restart).  Returns 0
 * when the file is whole, 1 when it is truncated, 2 when its Huffman tables
 * are malformed or missing. */
static int jpeg_check(const uint8_t *d, size_t n)
{
    size_t i = 2;
    unsigned defined = 0;
    int progressive = 0;
    for (;;) {
        while (i < n && d[i] != 0xFF)
            i++;        /* stray bytes between segments: libjpeg skips them */
        while (i < n && d[i] == 0xFF)
            i++;
        if (i >= n)
            return 1;
        uint8_t m = d[i++];
        if (m == 0xD9)
            return 0;
        if (m == 0x01 || (m >= 0xD0 && m <= 0xD7))
            continue;
        if (n - i < 2)
            return 1;
        size_t len = (size_t)d[i] << 8 | d[i + 1];
        if (len < 2 || n - i < len)
            return 1;
        if (m == 0xC2)
            progressive = 1;
        if (m == 0xC4 && !jpeg_dht_ok(d + i + 2, len - 2, &defined))
            return 2;
        if (m == 0xDA && !jpeg_sos_ok(d + i + 2, len - 2, defined, progressive))
            return 2;
        i += len;
        if (m == 0xDA)
            for (;; i++) {
                if (n - i < 2)
                    return 1;
                uint8_t c = d[i + 1];
                if (d[i] == 0xFF && c != 0x00 && c != 0xFF && !(c >= 0xD0 && c <= 0xD7))
                    break;
            }
    }
}

/* Skips GIF data sub-blocks at d[*i]; 0 if the terminator is missing. */
static int gif_skip_blocks(const uint8_t *d, size_t n, size_t *i)
{
    for (;;) {
        if (*i >= n)
            return 0;
        size_t s = d[(*i)++];
        if (!s)
            return 1;
        if (n - *i < s)
            return 0;
        *i += s;
    }
}

/* The first image (all stb decodes) is complete: its descriptor, colour
 * table and every LZW sub-block up to the terminator are in the file. */
static int gif_complete(const uint8_t *d, size_t n)
{
    if (n < 13)
        return 0;
    size_t i = 13;
    if (d[10] & 0x80)
        i += (size_t)3 << ((d[10] & 7) + 1);
    for (;;) {
        if (i >= n)
            return 0;
        uint8_t b = d[i++];
        if (b == 0x21) {
            if (++i > n || !gif_skip_blocks(d, n, &i))
                return 0;
        } else if (b == 0x2C) {
            if (n - i < 10)
                return 0;
            uint8_t flags = d[i + 8];
            i += 9;
            if (flags & 0x80)
                i += (size_t)3 << ((flags & 7) + 1);
            i++;        /* LZW minimum code size */
            return i <= n && gif_skip_blocks(d, n, &i);
        } else {
            return 0;   /* trailer or junk before any image */
        }
    }
}

static uint32_t le32(const uint8_t *p)
{
    return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* An uncompressed BMP holds all its rows (4-byte aligned) after the pixel
 * data offset.  Compressed ones are left to stb (which refuses RLE). */
static int bmp_complete(const uint8_t *d, size_t n)
{
    if (n < 26)
        return 0;
    uint32_t off = le32(d + 10), hsz = le32(d + 14), comp = 0;
    int64_t w, h;
    unsigned bpp;
    if (hsz == 12) {
        w = d[18] | d[19] << 8, h = d[20] | d[21] << 8, bpp = d[24] | d[25] << 8;
    } else {
        if (n < 34)
            return 0;
        w = (int32_t)le32(d + 18), h = (int32_t)le32(d + 22);
        bpp = d[28] | d[29] << 8, comp = le32(d + 30);
    }
    w = w < 0 ? -w : w, h = h < 0 ? -h : h;
    if (w > IMAGE_MAX_SIDE || h > IMAGE_MAX_SIDE || bpp > 64)
        return 1;       /* the size check refuses it with a better message */
    if (comp != 0 && comp != 3 && comp != 6)
        return 1;
    uint64_t row = ((uint64_t)bpp * (uint64_t)w + 31) / 32 * 4;
    return off <= n && n - off >= row * (uint64_t)h;
}

static int stb_decode(const uint8_t *data, size_t len, const char *name, const char *kind,
                      coin_image *out, coin_error *err)
{
    int w = 0, h = 0, comp = 0;
    if (len > INT_MAX)
        return coin_fail(err, COIN_EUNSUPPORTED, "%s: the file is too large", name);
    /* Checked before stb sees any byte: even stbi_info parses the JPEG
     * tables up to the frame header. */
    int jpeg = !strcmp(kind, "JPEG") ? jpeg_check(data, len) : 0;
    if (jpeg == 2)
        return coin_fail(err, COIN_EFORMAT, "%s: corrupt JPEG (a Huffman table is malformed or "
                         "missing)",
                         name);
    int whole = !strcmp(kind, "JPEG") ? jpeg == 0 :
                !strcmp(kind, "GIF") ? gif_complete(data, len) : bmp_complete(data, len);
    if (!whole)
        return coin_fail(err, COIN_EFORMAT, "%s: the %s is truncated (the file ends before "
                         "the image data does)", name, kind);
    if (!stbi_info_from_memory(data, (int)len, &w, &h, &comp)) {
        const char *why = stbi_failure_reason();
        return coin_fail(err, COIN_EFORMAT, "%s: corrupt or unsupported %s (%s)", name, kind,
                         why ? why : "unreadable header");
    }
    int rc = check_size(w, h, name, err);
    if (rc)
        return rc;
    uint8_t *p = stbi_load_from_memory(data, (int)len, &w, &h, &comp, 3);
    if (!p) {
        const char *why = stbi_failure_reason();
        if (why && !strcmp(why, "outofmem"))
            return coin_fail(err, COIN_ENOMEM, "%s: out of memory decoding a %dx%d %s",
                             name, w, h, kind);
        return coin_fail(err, COIN_EFORMAT, "%s: corrupt or truncated %s (%s)", name, kind,
                         why ? why : "decoder error");
    }
    /* stb allocates with malloc (STBI_MALLOC), so the pixels are ours. */
    out->width = w, out->height = h, out->channels = 3, out->pixels = p;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Loading                                                             */

int image_load_memory(const void *data, size_t len, const char *name,
                      coin_image *out, coin_error *err)
{
    const uint8_t *d = data;
    if (!name)
        name = "image";
    if (!out || (!data && len))
        return coin_fail(err, COIN_EINVAL, "image_load: no output or no data");
    if (len == 0)
        return coin_fail(err, COIN_EFORMAT, "%s: the file is empty", name);
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    if (len >= 8 && !memcmp(d, png_sig, 8))
        return png_decode(d, len, name, out, err);
    if (len >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF)
        return stb_decode(d, len, name, "JPEG", out, err);
    if (len >= 6 && (!memcmp(d, "GIF87a", 6) || !memcmp(d, "GIF89a", 6)))
        return stb_decode(d, len, name, "GIF", out, err);
    if (len >= 2 && d[0] == 'B' && d[1] == 'M')
        return stb_decode(d, len, name, "BMP", out, err);
    const char *kind = NULL;
    if (len >= 12 && !memcmp(d, "RIFF", 4) && !memcmp(d + 8, "WEBP", 4))
        kind = "WebP";
    else if (len >= 4 && (!memcmp(d, "II*\0", 4) || !memcmp(d, "MM\0*", 4)))
        kind = "TIFF";
    else if (len >= 12 && !memcmp(d + 4, "ftyp", 4))
        kind = !memcmp(d + 8, "avif", 4) || !memcmp(d + 8, "avis", 4) ? "AVIF" : "HEIC/ISO-media";
    else if (len >= 4 && !memcmp(d, "8BPS", 4))
        kind = "Photoshop";
    else if (len >= 2 && d[0] == 0xFF && d[1] == 0x0A)
        kind = "JPEG XL";
    if (kind)
        return coin_fail(err, COIN_EUNSUPPORTED, "%s: %s images are not supported; convert it "
                         "to PNG or JPEG", name, kind);
    return coin_fail(err, COIN_EUNSUPPORTED, "%s: not a PNG, JPEG, BMP or GIF image "
                     "(unrecognised file signature)", name);
}

int image_load(const char *path, coin_image *out, coin_error *err)
{
    if (!path || !out)
        return coin_fail(err, COIN_EINVAL, "image_load: no path or no output");
    char *buf = NULL;
    size_t len = 0;
    int rc = file_read_all(path, IMAGE_MAX_FILE_BYTES, &buf, &len, err);
    if (rc)
        return rc;
    rc = image_load_memory(buf, len, path, out, err);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------------ */
/* PNG writing                                                         */

typedef struct png_out {
    FILE *f;
    int write_errno;
    char msg[200];
} png_out;

static void png_write_cb(png_structp png, png_bytep d, size_t n)
{
    png_out *o = png_get_io_ptr(png);
    if (fileio_test_enospc(n) || fwrite(d, 1, n, o->f) != n) {
        o->write_errno = errno ? errno : EIO;
        png_error(png, "write failed");
    }
}

static void png_flush_cb(png_structp png)
{
    (void)png;  /* the file is flushed and synced once, at the end */
}

static void png_out_error_cb(png_structp png, png_const_charp msg)
{
    png_out *o = png_get_error_ptr(png);
    if (o && !o->msg[0])
        snprintf(o->msg, sizeof o->msg, "%s", msg);
    png_longjmp(png, 1);
}

typedef struct png_wjob {
    png_out out;
    png_structp png;
    png_infop info;
    const coin_image *img;
    png_text *text;
    size_t n_text;
} png_wjob;

static int png_encode(png_wjob *j)
{
    if (setjmp(png_jmpbuf(j->png)))
        return -1;
    const coin_image *img = j->img;
    png_set_write_fn(j->png, &j->out, png_write_cb, png_flush_cb);
    png_set_IHDR(j->png, j->info, (png_uint_32)img->width, (png_uint_32)img->height, 8,
                 img->channels == 4 ? PNG_COLOR_TYPE_RGBA : PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (j->n_text)
        png_set_text(j->png, j->info, j->text, (int)j->n_text);
    png_write_info(j->png, j->info);
    size_t stride = (size_t)img->width * img->channels;
    for (int y = 0; y < img->height; y++)
        png_write_row(j->png, img->pixels + (size_t)y * stride);
    png_write_end(j->png, NULL);
    return 0;
}

/* A PNG keyword: 1-79 Latin-1 characters, printable (32-126, 161-255), no
 * leading, trailing or consecutive spaces (PNG spec 11.3.4.2). */
static int keyword_ok(const char *k, size_t n)
{
    if (n < 1 || n > 79 || k[0] == ' ' || k[n - 1] == ' ')
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)k[i];
        if (!((c >= 32 && c <= 126) || c >= 161) || (c == ' ' && k[i + 1] == ' '))
            return 0;
    }
    return 1;
}

static int sync_parent_dir(const char *path, coin_error *err)
{
    char *dir = strdup(path);
    if (!dir)
        return coin_fail(err, COIN_ENOMEM, "%s: out of memory", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[slash == dir] = '\0';         /* "/x" keeps its "/" */
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    /* Some filesystems cannot fsync a directory (EINVAL); the file is in
     * place regardless. */
    int rc = dfd >= 0 && fsync(dfd) != 0 && errno != EINVAL ?
             coin_fail(err, COIN_EIO, "%s: written, but its directory could not be synced: "
                       "%s", path, strerror(errno)) : 0;
    if (dfd >= 0)
        close(dfd);
    free(dir);
    return rc;
}

int image_write_png(const char *path, const coin_image *img,
                    const image_text *text, size_t n_text, coin_error *err)
{
    static atomic_uint seq;
    if (!path)
        return coin_fail(err, COIN_EINVAL, "image_write_png: no path");
    int rc = check_image(img, "image_write_png", err);
    if (rc)
        return rc;
    if (n_text && !text)
        return coin_fail(err, COIN_EINVAL, "image_write_png: %zu text entries but no array",
                         n_text);
    if (n_text > INT_MAX / 2)
        return coin_fail(err, COIN_EINVAL, "image_write_png: too many text entries");

    png_wjob j;
    memset(&j, 0, sizeof j);
    j.img = img;
    j.n_text = n_text;
    char *tmp = malloc(strlen(path) + 48);
    j.text = calloc(n_text ? n_text : 1, sizeof *j.text);
    if (!tmp || !j.text) {
        rc = coin_fail(err, COIN_ENOMEM, "%s: out of memory preparing the PNG", path);
        goto out;
    }
    /* Text: the key always Latin-1; the value Latin-1 in tEXt when it can
     * be, else UTF-8 in iTXt (PIL's PngInfo.add_text rule). */
    for (size_t i = 0; i < n_text; i++) {
        png_text *t = &j.text[i];
        char *k = NULL, *v = NULL;
        size_t klen = 0, vlen = 0;
        if (!text[i].key || !text[i].value) {
            rc = coin_fail(err, COIN_EINVAL, "%s: text entry %zu has no key or no value",
                           path, i);
            goto out;
        }
        int kr = latin1_from_utf8(text[i].key, &k, &klen);
        if (kr == -2)
            goto nomem;
        if (kr != 1 || !keyword_ok(k, klen)) {
            free(k);
            rc = coin_fail(err, COIN_EINVAL, "%s: \"%s\" cannot be a PNG text key (1-79 "
                           "printable Latin-1 characters, no leading, trailing or double "
                           "spaces)", path, text[i].key);
            goto out;
        }
        t->key = k;
        int vr = latin1_from_utf8(text[i].value, &v, &vlen);
        if (vr == -2)
            goto nomem;
        if (vr == -1) {
            rc = coin_fail(err, COIN_EINVAL, "%s: the value of text key \"%s\" is not valid "
                           "UTF-8", path, text[i].key);
            goto out;
        }
        if (vr == 1) {
            t->compression = PNG_TEXT_COMPRESSION_NONE;
            t->text = v;
            t->text_length = vlen;
        } else {
            t->compression = PNG_ITXT_COMPRESSION_NONE;
            if (!(t->text = strdup(text[i].value)))
                goto nomem;
            t->itxt_length = strlen(t->text);
            t->lang = NULL;
            t->lang_key = NULL;
        }
    }

    /* Atomic: a temporary beside the target, made durable, then renamed
     * over it, so a crash or a full disk leaves the old file or none. */
    sprintf(tmp, "%s.tmp.%ld.%u", path, (long)getpid(), atomic_fetch_add(&seq, 1));
    j.out.f = fopen(tmp, "wbe");
    if (!j.out.f) {
        int e = errno;
        rc = coin_fail(err, e == ENOENT ? COIN_ENOTFOUND : COIN_EIO, "%s: cannot create %s: %s",
                       path, tmp, strerror(e));
        goto out;
    }
    j.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &j.out, png_out_error_cb,
                                    png_warning_cb);
    j.info = j.png ? png_create_info_struct(j.png) : NULL;
    if (!j.info) {
        png_destroy_write_struct(&j.png, NULL);
        fclose(j.out.f);
        unlink(tmp);
        goto nomem;
    }
    int enc = png_encode(&j);
    png_destroy_write_struct(&j.png, &j.info);
    int e = 0;
    if (enc == 0 && fflush(j.out.f) != 0)
        e = errno;
    else if (enc)
        e = j.out.write_errno;
    if (enc == 0 && !e && fsync(fileno(j.out.f)) != 0)
        e = errno;
    if (fclose(j.out.f) != 0 && enc == 0 && !e)
        e = errno;
    if (enc == 0 && !e && rename(tmp, path) != 0)
        e = errno;
    if (enc || e) {
        unlink(tmp);
        if (enc && !e)
            rc = coin_fail(err, COIN_EIO, "%s: PNG encoding failed: %s", path,
                           j.out.msg[0] ? j.out.msg : "libpng error");
        else
            rc = coin_fail(err, COIN_EIO, "%s: cannot write the PNG: %s%s", path,
                           e == ENOSPC || e == EDQUOT ? "the disk is full: " : "", strerror(e));
        goto out;
    }
    rc = sync_parent_dir(path, err);
    goto out;
nomem:
    rc = coin_fail(err, COIN_ENOMEM, "%s: out of memory writing the PNG", path);
out:
    if (j.text)
        for (size_t i = 0; i < n_text; i++) {
            free(j.text[i].key);
            free(j.text[i].text);
        }
    free(j.text);
    free(tmp);
    return rc;
}

/* ------------------------------------------------------------------ */
/* PNG text chunks                                                     */

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Inflates src into a new buffer of at most TEXT_CHUNK_MAX bytes.
 * Returns 0, 1 (corrupt stream), 2 (too large) or 3 (no memory). */
static int inflate_capped(const uint8_t *src, size_t n, uint8_t **out, size_t *out_len)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit(&z) != Z_OK)
        return 3;
    size_t cap = n * 4 + 256, len = 0;
    if (cap > TEXT_CHUNK_MAX)
        cap = TEXT_CHUNK_MAX;
    uint8_t *buf = malloc(cap + 1);
    int rc = buf ? 0 : 3, zr = Z_OK;
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)n;
    while (!rc) {
        if (len == cap) {
            if (cap >= TEXT_CHUNK_MAX) {
                rc = 2;
                break;
            }
            cap = cap * 2 > TEXT_CHUNK_MAX ? TEXT_CHUNK_MAX : cap * 2;
            uint8_t *g = realloc(buf, cap + 1);
            if (!g) {
                rc = 3;
                break;
            }
            buf = g;
        }
        z.next_out = buf + len;
        z.avail_out = (uInt)(cap - len);
        zr = inflate(&z, Z_NO_FLUSH);
        len = cap - z.avail_out;
        if (zr == Z_STREAM_END)
            break;
        if (zr != Z_OK && !(zr == Z_BUF_ERROR && z.avail_out == 0))
            rc = 1;     /* corrupt, or the input ran out before the end */
    }
    inflateEnd(&z);
    if (rc) {
        free(buf);
        return rc;
    }
    buf[len] = 0;
    *out = buf;
    *out_len = len;
    return 0;
}

static int text_push(image_text_list *l, char *key, char *value)
{
    if (!key || !value) {
        free(key);
        free(value);
        return -1;
    }
    image_text *g = realloc(l->items, (l->n + 1) * sizeof *g);
    if (!g) {
        free(key);
        free(value);
        return -1;
    }
    l->items = g;
    l->items[l->n].key = key;
    l->items[l->n].value = value;
    l->n++;
    return 0;
}

/* Handles one text chunk body d[0..n) as PIL's chunk_tEXt / chunk_zTXt /
 * chunk_iTXt do.  Returns 0 (stored or skipped) or a coin_status. */
static int text_chunk(const char *path, const char *type, const uint8_t *d, size_t n,
                      image_text_list *l, coin_error *err)
{
    const uint8_t *nul = memchr(d, 0, n);
    size_t klen = nul ? (size_t)(nul - d) : n;
    const uint8_t *rest = nul ? nul + 1 : d + n;
    size_t rlen = (size_t)(d + n - rest);
    if (!strcmp(type, "tEXt")) {
        if (!klen)
            return 0;
        return text_push(l, utf8_from_latin1(d, klen), utf8_from_latin1(rest, rlen)) ?
               coin_fail(err, COIN_ENOMEM, "%s: out of memory reading text", path) : 0;
    }
    if (!strcmp(type, "zTXt")) {
        if (rlen && rest[0] != 0)
            return coin_fail(err, COIN_EFORMAT, "%s: a zTXt chunk uses unknown compression "
                             "method %d", path, rest[0]);
        uint8_t *v = NULL;
        size_t vlen = 0;
        int zr = rlen > 1 ? inflate_capped(rest + 1, rlen - 1, &v, &vlen) : 1;
        if (zr == 3)
            return coin_fail(err, COIN_ENOMEM, "%s: out of memory reading text", path);
        if (zr)
            return coin_fail(err, COIN_EFORMAT, "%s: a zTXt chunk is %s", path,
                             zr == 2 ? "larger than 16 MiB when decompressed" : "corrupt");
        int rc = klen ? text_push(l, utf8_from_latin1(d, klen), utf8_from_latin1(v, vlen)) : 0;
        free(v);
        return rc ? coin_fail(err, COIN_ENOMEM, "%s: out of memory reading text", path) : 0;
    }
    /* iTXt: key \0 flag method lang \0 translated-key \0 text */
    if (!nul || rlen < 2)
        return 0;
    int flag = rest[0], method = rest[1];
    const uint8_t *p = rest + 2, *end = d + n;
    const uint8_t *z1 = memchr(p, 0, (size_t)(end - p));
    const uint8_t *z2 = z1 ? memchr(z1 + 1, 0, (size_t)(end - z1 - 1)) : NULL;
    if (!z2)
        return 0;
    const uint8_t *lang = p, *tkey = z1 + 1, *v = z2 + 1;
    size_t vlen = (size_t)(end - v);
    uint8_t *inflated = NULL;
    if (flag) {
        if (method != 0)
            return 0;
        int zr = inflate_capped(v, vlen, &inflated, &vlen);
        if (zr == 2)
            return coin_fail(err, COIN_EFORMAT, "%s: an iTXt chunk is larger than 16 MiB "
                             "when decompressed", path);
        if (zr == 3)
            return coin_fail(err, COIN_ENOMEM, "%s: out of memory reading text", path);
        if (zr)
            return 0;
        v = inflated;
    }
    int rc = 0;
    if (utf8_valid(lang, (size_t)(z1 - lang)) && utf8_valid(tkey, (size_t)(z2 - tkey)) &&
        utf8_valid(v, vlen)) {
        size_t cut = strnlen((const char *)v, vlen);
        char *val = malloc(cut + 1);
        if (val) {
            memcpy(val, v, cut);
            val[cut] = 0;
        }
        if (text_push(l, utf8_from_latin1(d, klen), val))
            rc = coin_fail(err, COIN_ENOMEM, "%s: out of memory reading text", path);
    }
    free(inflated);
    return rc;
}

void image_text_list_free(image_text_list *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++) {
        free(l->items[i].key);
        free(l->items[i].value);
    }
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

const char *image_text_get(const image_text_list *l, const char *key)
{
    if (!l || !key)
        return NULL;
    for (size_t i = l->n; i-- > 0;)
        if (!strcmp(l->items[i].key, key))
            return l->items[i].value;
    return NULL;
}

int image_read_png_text(const char *path, image_text_list *out, coin_error *err)
{
    if (!path || !out)
        return coin_fail(err, COIN_EINVAL, "image_read_png_text: no path or no output");
    out->items = NULL;
    out->n = 0;
    FILE *f = fopen(path, "rbe");
    if (!f)
        return coin_fail(err, errno == ENOENT ? COIN_ENOTFOUND : COIN_EIO, "%s: %s", path,
                         strerror(errno));
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    uint8_t hdr[8];
    int rc = 0;
    size_t total = 0;
    uint8_t *body = NULL;
    if (fread(hdr, 1, 8, f) != 8 || memcmp(hdr, sig, 8)) {
        rc = coin_fail(err, COIN_EFORMAT, "%s: not a PNG file (bad signature)", path);
        goto out;
    }
    for (;;) {
        if (fread(hdr, 1, 8, f) != 8) {
            rc = coin_fail(err, COIN_EFORMAT, "%s: the PNG ends before its IEND chunk "
                           "(truncated)", path);
            goto out;
        }
        uint32_t len = be32(hdr);
        char type[5];
        memcpy(type, hdr + 4, 4);
        type[4] = 0;
        if (len > 0x7FFFFFFFu) {
            rc = coin_fail(err, COIN_EFORMAT, "%s: corrupt PNG (chunk length %u)", path, len);
            goto out;
        }
        if (!strcmp(type, "IEND"))
            break;
        if (strcmp(type, "tEXt") && strcmp(type, "zTXt") && strcmp(type, "iTXt")) {
            if (fseeko(f, (off_t)len + 4, SEEK_CUR) != 0) {
                rc = coin_fail(err, COIN_EIO, "%s: %s", path, strerror(errno));
                goto out;
            }
            continue;
        }
        if (len > TEXT_CHUNK_MAX || (total += len) > TEXT_TOTAL_MAX) {
            rc = coin_fail(err, COIN_EFORMAT, "%s: a %s chunk of %u bytes is larger than coin "
                           "reads (16 MiB per chunk, 64 MiB in all)", path, type, len);
            goto out;
        }
        body = malloc((size_t)len + 4);
        if (!body) {
            rc = coin_fail(err, COIN_ENOMEM, "%s: out of memory reading text", path);
            goto out;
        }
        if (fread(body, 1, (size_t)len + 4, f) != (size_t)len + 4) {
            rc = coin_fail(err, COIN_EFORMAT, "%s: the PNG ends inside a %s chunk (truncated)",
                           path, type);
            goto out;
        }
        uLong crc = crc32(crc32(0L, hdr + 4, 4), body, len);
        if ((uint32_t)crc != be32(body + len)) {
            rc = coin_fail(err, COIN_EFORMAT, "%s: corrupt PNG (CRC mismatch in a %s chunk)",
                           path, type);
            goto out;
        }
        if ((rc = text_chunk(path, type, body, len, out, err)))
            goto out;
        free(body);
        body = NULL;
    }
out:
    free(body);
    fclose(f);
    if (rc)
        image_text_list_free(out);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Tensor conversions                                                  */

int image_to_chw_float(const coin_image *img, float *chw, coin_error *err)
{
    int rc = check_image(img, "image_to_chw_float", err);
    if (rc)
        return rc;
    if (!chw)
        return coin_fail(err, COIN_EINVAL, "image_to_chw_float: no output buffer");
    size_t plane = (size_t)img->width * img->height;
    /* Numpy's uint8 / 127.5 is float64; - 1.0 likewise; then one rounding
     * to float32.  A table gives the same 256 values. */
    float lut[256];
    for (int v = 0; v < 256; v++)
        lut[v] = (float)((double)v / 127.5 - 1.0);
    for (size_t i = 0; i < plane; i++)
        for (int c = 0; c < 3; c++)
            chw[c * plane + i] = lut[img->pixels[i * img->channels + c]];
    return 0;
}

uint8_t image_float_to_u8(float x)
{
    /* torch float32: x / 2 + 0.5, clamp(0, 1); numpy float32: * 255,
     * .round() (half to even: rintf in the default rounding mode). */
    float y = x / 2.0f + 0.5f;
    if (!(y > 0.0f))
        return 0;       /* also NaN */
    if (y > 1.0f)
        y = 1.0f;
    float z = y * 255.0f;
    return (uint8_t)rintf(z);
}

int image_from_chw_float(const float *chw, int width, int height,
                         coin_image *out, coin_error *err)
{
    if (!chw || !out)
        return coin_fail(err, COIN_EINVAL, "image_from_chw_float: no input or no output");
    coin_image img;
    int rc = image_alloc(&img, width, height, 3, err);
    if (rc)
        return rc;
    size_t plane = (size_t)width * height;
    for (size_t i = 0; i < plane; i++)
        for (int c = 0; c < 3; c++)
            img.pixels[i * 3 + c] = image_float_to_u8(chw[c * plane + i]);
    *out = img;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Pillow's bicubic resample                                           */

/* Pillow: 32 bits less 8 for the result and 2 for overshoot of the cubic's
 * negative lobes. */
#define PRECISION_BITS (32 - 8 - 2)

static double bicubic(double x)
{
    /* Keys' cubic with a = -0.5, in Pillow's exact operation order. */
    const double a = -0.5;
    if (x < 0.0)
        x = -x;
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0)
        return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

typedef struct resample_coeffs {
    int ksize;
    int *bounds;        /* per output: first input index, count */
    int32_t *k;         /* per output: ksize fixed-point weights */
} resample_coeffs;

static void coeffs_free(resample_coeffs *c)
{
    free(c->bounds);
    free(c->k);
}

/* Pillow's precompute_coeffs followed by normalize_coeffs_8bpc, for the box
 * [0, in_size) mapped onto out_size samples. */
static int precompute_coeffs(int in_size, int out_size, resample_coeffs *c)
{
    float in0 = 0.0f, in1 = (float)in_size;
    double scale = (double)(in1 - in0) / out_size, filterscale = scale;
    if (filterscale < 1.0)
        filterscale = 1.0;
    double support = 2.0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *kk = malloc((size_t)out_size * ksize * sizeof *kk);
    c->ksize = ksize;
    c->bounds = malloc((size_t)out_size * 2 * sizeof *c->bounds);
    c->k = malloc((size_t)out_size * ksize * sizeof *c->k);
    if (!kk || !c->bounds || !c->k) {
        free(kk);
        coeffs_free(c);
        return -1;
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = in0 + (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);     /* truncation, as Pillow */
        if (xmin < 0)
            xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size)
            xmax = in_size;
        xmax -= xmin;
        double *k = &kk[(size_t)xx * ksize];
        int x;
        for (x = 0; x < xmax; x++) {
            double w = bicubic((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0)
                k[x] /= ww;
        for (; x < ksize; x++)
            k[x] = 0;
        c->bounds[xx * 2] = xmin;
        c->bounds[xx * 2 + 1] = xmax;
    }
    for (size_t i = 0; i < (size_t)out_size * ksize; i++)
        c->k[i] = kk[i] < 0 ? (int32_t)(-0.5 + kk[i] * (1 << PRECISION_BITS))
                            : (int32_t)(0.5 + kk[i] * (1 << PRECISION_BITS));
    free(kk);
    return 0;
}

static inline uint8_t clip8(int v)
{
    v >>= PRECISION_BITS;       /* arithmetic shift, as Pillow's lookup table */
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* out rows [0, out_h) from in rows [offset, offset + out_h), columns
 * resampled. */
static void resample_horizontal(const coin_image *in, coin_image *out, int offset,
                                const resample_coeffs *c)
{
    int ch = in->channels;
    size_t in_stride = (size_t)in->width * ch, out_stride = (size_t)out->width * ch;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if ((int64_t)out->width * out->height > 65536)
#endif
    for (int yy = 0; yy < out->height; yy++) {
        const uint8_t *src = in->pixels + (size_t)(yy + offset) * in_stride;
        uint8_t *dst = out->pixels + (size_t)yy * out_stride;
        for (int xx = 0; xx < out->width; xx++) {
            int xmin = c->bounds[xx * 2], xmax = c->bounds[xx * 2 + 1];
            const int32_t *k = &c->k[(size_t)xx * c->ksize];
            for (int ci = 0; ci < ch; ci++) {
                int ss = 1 << (PRECISION_BITS - 1);
                for (int x = 0; x < xmax; x++)
                    ss += src[(size_t)(x + xmin) * ch + ci] * k[x];
                dst[(size_t)xx * ch + ci] = clip8(ss);
            }
        }
    }
}

/* out rows from in rows through the vertical coefficients, out columns
 * [0, out_w) from in columns [col_offset, col_offset + out_w). */
static void resample_vertical(const coin_image *in, coin_image *out, int col_offset,
                              const resample_coeffs *c)
{
    int ch = in->channels;
    size_t in_stride = (size_t)in->width * ch, out_stride = (size_t)out->width * ch;
    const uint8_t *base = in->pixels + (size_t)col_offset * ch;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if ((int64_t)out->width * out->height > 65536)
#endif
    for (int yy = 0; yy < out->height; yy++) {
        const int32_t *k = &c->k[(size_t)yy * c->ksize];
        int ymin = c->bounds[yy * 2], ymax = c->bounds[yy * 2 + 1];
        uint8_t *dst = out->pixels + (size_t)yy * out_stride;
        for (size_t i = 0; i < out_stride; i++) {
            int ss = 1 << (PRECISION_BITS - 1);
            for (int y = 0; y < ymax; y++)
                ss += base[(size_t)(y + ymin) * in_stride + i] * k[y];
            dst[i] = clip8(ss);
        }
    }
}

int image_resize_bicubic(const coin_image *in, int width, int height,
                         coin_image *out, coin_error *err)
{
    int rc = check_image(in, "image_resize_bicubic", err);
    if (rc)
        return rc;
    if (!out)
        return coin_fail(err, COIN_EINVAL, "image_resize_bicubic: no output");
    coin_image res = {0}, tmp = {0};
    if ((rc = image_alloc(&res, width, height, in->channels, err)))
        return rc;
    int need_h = width != in->width, need_v = height != in->height;
    resample_coeffs cv = {0}, ch = {0};
    if ((need_v && precompute_coeffs(in->height, height, &cv)) ||
        (need_h && precompute_coeffs(in->width, width, &ch))) {
        rc = coin_fail(err, COIN_ENOMEM, "out of memory resizing a %dx%d image to %dx%d",
                       in->width, in->height, width, height);
        goto out;
    }
    /* The 8-bit image between the passes is rounded and clipped, so the
     * order of the passes shows in the result.  Pillow 13 (the reference
     * here; measured on 700 random size pairs, see make_image_goldens.py)
     * runs the vertical pass first exactly when the height shrinks by more
     * than twice as many pixels as the width does; otherwise, and in every
     * Pillow before that rule, horizontal first.  The first pass covers only
     * the rows (columns) the second reads, with the second's bounds shifted
     * to match, as in ImagingResampleInner. */
    int vertical_first = need_h && need_v && height < in->height &&
                         in->height - height > 2 * (in->width - width);
    if (need_h && need_v && !vertical_first) {
        int first = cv.bounds[0];
        int last = cv.bounds[height * 2 - 2] + cv.bounds[height * 2 - 1];
        for (int i = 0; i < height; i++)
            cv.bounds[i * 2] -= first;
        if ((rc = image_alloc(&tmp, width, last - first, in->channels, err)))
            goto out;
        resample_horizontal(in, &tmp, first, &ch);
        resample_vertical(&tmp, &res, 0, &cv);
    } else if (need_h && need_v) {
        int first = ch.bounds[0];
        int last = ch.bounds[width * 2 - 2] + ch.bounds[width * 2 - 1];
        for (int i = 0; i < width; i++)
            ch.bounds[i * 2] -= first;
        if ((rc = image_alloc(&tmp, last - first, height, in->channels, err)))
            goto out;
        resample_vertical(in, &tmp, first, &cv);
        resample_horizontal(&tmp, &res, 0, &ch);
    } else if (need_h) {
        resample_horizontal(in, &res, 0, &ch);
    } else if (need_v) {
        resample_vertical(in, &res, 0, &cv);
    } else {
        memcpy(res.pixels, in->pixels, (size_t)width * height * in->channels);
    }
out:
    coeffs_free(&cv);
    coeffs_free(&ch);
    image_free(&tmp);
    if (rc)
        image_free(&res);
    else
        *out = res;
    return rc;
}

int image_center_crop(const coin_image *in, coin_image *out, coin_error *err)
{
    int rc = check_image(in, "image_center_crop", err);
    if (rc)
        return rc;
    if (!out)
        return coin_fail(err, COIN_EINVAL, "image_center_crop: no output");
    int h = in->height, w = in->width, c = h < w ? h : w, ch = in->channels;
    int y0 = (h - c) / 2, x0 = (w - c) / 2;     /* == (h - c) // 2: non-negative */
    coin_image res;
    if ((rc = image_alloc(&res, c, c, ch, err)))
        return rc;
    for (int y = 0; y < c; y++)
        memcpy(res.pixels + (size_t)y * c * ch,
               in->pixels + ((size_t)(y + y0) * w + x0) * ch, (size_t)c * ch);
    *out = res;
    return 0;
}

void image_flip_horizontal(coin_image *img)
{
    if (!img || !img->pixels)
        return;
    int ch = img->channels;
    for (int y = 0; y < img->height; y++) {
        uint8_t *row = img->pixels + (size_t)y * img->width * ch;
        for (int a = 0, b = img->width - 1; a < b; a++, b--)
            for (int c = 0; c < ch; c++) {
                uint8_t t = row[a * ch + c];
                row[a * ch + c] = row[b * ch + c];
                row[b * ch + c] = t;
            }
    }
}

int image_prepare_ti(const coin_image *in, int size, int center_crop, int flip,
                     coin_image *out, coin_error *err)
{
    int rc = check_image(in, "image_prepare_ti", err);
    if (rc)
        return rc;
    if (!out || size <= 0 || size > IMAGE_MAX_SIDE)
        return coin_fail(err, COIN_EINVAL, "image_prepare_ti: bad resolution %d", size);
    coin_image cropped = {0}, res = {0};
    const coin_image *src = in;
    if (center_crop) {
        if ((rc = image_center_crop(in, &cropped, err)))
            return rc;
        src = &cropped;
    }
    rc = image_resize_bicubic(src, size, size, &res, err);
    image_free(&cropped);
    if (rc)
        return rc;
    if (flip)
        image_flip_horizontal(&res);
    *out = res;
    return 0;
}
