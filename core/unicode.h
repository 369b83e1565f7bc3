/*
 * unicode.h - the text side of the CLIP tokenizer (private to core/tokenizer.c).
 *
 * Strict UTF-8 decoding, and the text clean-up that transformers'
 * CLIPTokenizer performs without ftfy (BasicTokenizer: drop control
 * characters, space out CJK ideographs, NFC, whitespace split, str.lower),
 * followed by the CLIP pre-tokenizer pattern.  Every code point carries the
 * byte offset in the caller's string it came from, so that the tokenizer can
 * say where truncation cut a prompt.
 */
#ifndef COIN_UNICODE_H
#define COIN_UNICODE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* A code point and the byte offset in the original text it came from. */
typedef struct uni_cp {
    uint32_t cp;
    int32_t at;
} uni_cp;

/* A growable array of code points. */
typedef struct uni_buf {
    uni_cp *v;
    size_t n, cap;
} uni_buf;

void uni_buf_free(uni_buf *b);

/* Checks that s[0..n) is valid UTF-8 (no overlongs, surrogates or code
 * points past U+10FFFF).  Returns 1 when it is; else 0 with the offset of the
 * first bad byte in *bad_at and a short description in *why. */
int uni_utf8_valid(const char *s, size_t n, size_t *bad_at, const char **why);

/* Decodes the UTF-8 string s[0..n) into out (which it resets).  Invalid
 * UTF-8 is COIN_EINVAL naming `what` ("the prompt") and the byte offset. */
int uni_decode(const char *s, size_t n, const char *what, uni_buf *out,
               coin_error *err);

/* Writes cp as UTF-8 into out (4 bytes of room) and returns the length. */
int uni_encode(uint32_t cp, unsigned char *out);

/* Turns in[0..n) into what CLIPTokenizer's BasicTokenizer produces: control
 * characters dropped, whitespace collapsed to single ' ' between words
 * (none at either end), CJK ideographs spaced out, NFC, lower case (Python's
 * str.lower, final sigma included).  out is reset; tmp is scratch space.
 * Returns 0 or COIN_ENOMEM. */
int uni_clip_clean(const uni_cp *in, size_t n, uni_buf *out, uni_buf *tmp);

/* The CLIP pre-tokenizer: finds the next match of
 *   <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * (regex module, IGNORECASE) in t[*pos..n) of cleaned text.  Returns 1 with
 * the match in t[*start .. *start + *len) and *pos moved past it, or 0 when
 * there are no more. */
int uni_clip_pretoken(const uni_cp *t, size_t n, size_t *pos, size_t *start,
                      size_t *len);

#endif
