/*
 * image.h - images in memory, the image files coin reads and writes, and the
 * pixel transforms of the textual-inversion data pipeline.
 *
 * Reading follows what the reference trainer sees: diffusers' textual
 * inversion script opens every file with PIL and calls .convert("RGB"), so
 * image_load returns exactly the RGB bytes PIL would (PNG of every colour
 * type and depth, via libpng) or as close as stb_image gets for JPEG, BMP and
 * GIF (see image_load).  The training transform (center crop, Pillow's
 * antialiased bicubic resize, horizontal flip, scaling to [-1, 1]) is
 * reproduced byte for byte, so a dataset prepared by coin equals the one
 * diffusers prepares.  Generated images go back to bytes with diffusers'
 * rounding, and are written as PNG with A1111-style text chunks, atomically.
 *
 * Nothing here prints or exits; every failure is a coin_status with one
 * sentence naming the file and the problem.
 */
#ifndef COIN_IMAGE_H
#define COIN_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* Hostile-file limits: a side longer than this, or more pixels than
 * IMAGE_MAX_PIXELS, is refused before any pixel memory is allocated. */
#ifndef IMAGE_MAX_SIDE          /* a fuzzing build may lower it */
#define IMAGE_MAX_SIDE 16384
#endif
#define IMAGE_MAX_PIXELS ((int64_t)256 << 20)
/* Image files larger than this are refused unread (image_load). */
#define IMAGE_MAX_FILE_BYTES ((size_t)1 << 30)

/* An 8-bit image: channels is 3 (RGB) or 4 (RGBA), pixels row-major and
 * interleaved, width * height * channels bytes, no row padding. */
typedef struct coin_image {
    int width, height, channels;
    uint8_t *pixels;
} coin_image;

/* Allocates a zeroed w x h image with 3 or 4 channels into *img.  COIN_EINVAL
 * for a bad size or channel count, COIN_ENOMEM when memory runs out. */
int image_alloc(coin_image *img, int width, int height, int channels,
                coin_error *err);
/* Frees the pixels and zeroes *img (NULL or an empty image is fine). */
void image_free(coin_image *img);

/*
 * Reads an image file into *out as RGB (channels = 3), as PIL's
 * Image.open(path).convert("RGB") would.  The format comes from the file's
 * first bytes, not its name.
 *   PNG (libpng; byte-exact with PIL): every colour type and bit depth,
 *     interlaced or not.  Alpha and tRNS are dropped (PIL drops them too);
 *     palettes are looked up with missing entries black; 1/2/4-bit grey is
 *     scaled to 0..255; 16-bit samples keep their high byte, except 16-bit
 *     greyscale without alpha, which PIL opens as mode "I;16" and clips to
 *     255 (so most such images come out nearly white: this is what the
 *     reference trainer trains on).  gAMA/iCCP/sRGB are ignored, as by PIL.
 *   JPEG (stb_image): baseline and progressive, greyscale, YCbCr, Adobe CMYK
 *     and YCCK.  stb's IDCT and upsampling differ from the libjpeg-turbo
 *     inside PIL: pixels differ from PIL's by up to 2 levels (10 for 4:2:2
 *     chroma), 0.1 level on average.  The marker structure is checked before
 *     stb reads anything, because stb 2.27 overruns memory on some malformed
 *     Huffman tables: a table of more than 256 codes, or a scan using a table
 *     no DHT defined, is refused (so are Motion-JPEG frames that rely on the
 *     standard tables, which PIL would decode).
 *   BMP, GIF (first frame) through stb_image, exact; in a GIF, transparent
 *     pixels come out black where PIL gives the palette colour.
 * EXIF orientation is NOT applied: diffusers' script does not call
 * ImageOps.exif_transpose, so a rotated phone photo trains sideways there
 * too.  Images over IMAGE_MAX_SIDE / IMAGE_MAX_PIXELS, unknown formats
 * (WebP, TIFF, HEIC, ...), truncated or corrupt files are errors naming the
 * file; they never crash.  *out is untouched on failure.
 */
int image_load(const char *path, coin_image *out, coin_error *err);

/* The same from a buffer already in memory; name is used in messages. */
int image_load_memory(const void *data, size_t len, const char *name,
                      coin_image *out, coin_error *err);

/* A PNG text entry: key and value are UTF-8. */
typedef struct image_text {
    char *key;
    char *value;
} image_text;

/*
 * Writes img (RGB or RGBA, 8-bit) to path as a PNG, with text entries in
 * the order given, all before the image data.  Each entry is written as PIL's
 * PngInfo.add_text does (and so as A1111 writes "parameters"): a tEXt chunk
 * when the value is Latin-1 encodable, else an uncompressed iTXt chunk with
 * UTF-8 text and empty language and translated keyword.  Keys must be 1-79
 * Latin-1 characters, printable, without leading, trailing or double spaces;
 * values valid UTF-8.  n_text may be 0 (text may then be NULL).
 * Atomic: written to a temporary beside path, fsynced and renamed over it, so
 * a crash or a full disk leaves the old file or none, never a partial one
 * (a full disk is reported as such).
 */
int image_write_png(const char *path, const coin_image *img,
                    const image_text *text, size_t n_text, coin_error *err);

/* The text chunks of a PNG file. */
typedef struct image_text_list {
    image_text *items;
    size_t n;
} image_text_list;

/*
 * Reads every tEXt, zTXt and iTXt chunk of a PNG (before and after the
 * image data) into *out, in file order, without decoding the image.  tEXt
 * and zTXt are Latin-1 and are returned converted to UTF-8; iTXt is UTF-8
 * (compressed or not).  As in PIL, an iTXt that is not valid UTF-8 or uses an
 * unknown compression is skipped, a value is cut at an embedded NUL, and a
 * decompressed text over 16 MiB is an error (a zip bomb).  A bad signature,
 * a chunk CRC mismatch in a text chunk, or a file that ends before IEND is
 * an error naming the file.  Free with image_text_list_free.
 */
int image_read_png_text(const char *path, image_text_list *out, coin_error *err);
void image_text_list_free(image_text_list *list);
/* The value of the last entry with this key (later chunks win, as in PIL's
 * Image.info), or NULL. */
const char *image_text_get(const image_text_list *list, const char *key);

/*
 * Tensor conversions (host memory; the caller moves data to a backend).
 * image_to_chw_float: the first three channels as planar float [3,H,W],
 *   value = v / 127.5 - 1 computed in double and rounded to float, exactly as
 *   diffusers' `(np.array(img) / 127.5 - 1.0).astype(np.float32)`.
 * image_from_chw_float: [3,H,W] floats (VAE output, about [-1,1]) to an RGB
 *   image, as diffusers' VaeImageProcessor.postprocess + numpy_to_pil do in
 *   float32: y = clamp(x / 2 + 0.5, 0, 1), then round(y * 255) with ties to
 *   even (numpy's .round()).  NaN becomes 0.  *out is allocated.
 */
int image_to_chw_float(const coin_image *img, float *chw, coin_error *err);
int image_from_chw_float(const float *chw, int width, int height,
                         coin_image *out, coin_error *err);

/* One float to a byte exactly as image_from_chw_float does. */
uint8_t image_float_to_u8(float x);

/*
 * Pillow's Image.resize(size, Image.BICUBIC) (reducing_gap None), byte for
 * byte: Resample.c's antialiased separable convolution (cubic a = -0.5,
 * support scaled by the reduction factor, coefficients normalised in double
 * and rounded to 22-bit fixed point, clipping to 0..255 after each pass).
 * The passes run in Pillow 13's order: vertical first when the height
 * shrinks by more than twice as many pixels as the width, else horizontal
 * first (older Pillow always went horizontal first; the two orders differ
 * by a level here and there).
 * Works on 3 or 4 channels alike (each independently, as Pillow does for RGB
 * and RGBX; Pillow premultiplies RGBA first, which is not done here).
 * *out is allocated.
 */
int image_resize_bicubic(const coin_image *in, int width, int height,
                         coin_image *out, coin_error *err);

/* The central min(w,h) square, as diffusers crops its numpy array:
 * rows (h - c) / 2 .. (h + c) / 2, columns likewise (integer division).
 * *out is allocated. */
int image_center_crop(const coin_image *in, coin_image *out, coin_error *err);

/* Mirrors img left to right in place (PIL's FLIP_LEFT_RIGHT). */
void image_flip_horizontal(coin_image *img);

/*
 * diffusers' TextualInversionDataset pixel path for one image: optional
 * center crop, bicubic resize to size x size (Pillow-exact; no resize when the
 * size already matches, as Pillow returns a copy), then an optional
 * horizontal flip (the caller draws flip_p = 0.5).  Feed the result to
 * image_to_chw_float.  *out is allocated.
 */
int image_prepare_ti(const coin_image *in, int size, int center_crop, int flip,
                     coin_image *out, coin_error *err);

#endif
