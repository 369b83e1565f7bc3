/*
 * infotext.c - A1111 generation parameters, and SHA-256.
 *
 * Formatting follows modules/processing.py create_infotext and
 * modules/infotext_utils.py quote(); parsing follows
 * parse_generation_parameters, including its regex
 *     \s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)
 * applied with findall.  That regex has no ambiguity a backtracking engine
 * could resolve differently (the key run is maximal and must meet ':'; the
 * quoted form has one possible end), so it is matched here directly, with
 * Python's Unicode \s and \w (utf8proc for the categories).
 *
 * Python's numbers are reproduced in the C locale whatever the front end's
 * locale is: "%d" for ints, repr for floats (shortest round-trip digits).
 *
 * SHA-256 is FIPS 180-4, portable C, with the x86 SHA extensions used when
 * the CPU has them (about 4x faster on a multi-GB checkpoint).
 */
#include "infotext.h"

#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_SHA_NI_CODE 1
#endif

/* ------------------------------------------------------------------ */
/* SHA-256                                                             */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
};

static inline uint32_t ror32(uint32_t x, int n)
{
    return x >> n | x << (32 - n);
}

/* One round with the working variables renamed instead of shifted; eight
 * of them in a row bring the names back to where they started. */
#define SHA_ROUND(a, b, c, d, e, f, g, h, i)                                        \
    do {                                                                           \
        uint32_t t1_ = h + (ror32(e, 6) ^ ror32(e, 11) ^ ror32(e, 25)) +           \
                       ((e & f) ^ (~e & g)) + K256[i] + w[i];                      \
        uint32_t t2_ = (ror32(a, 2) ^ ror32(a, 13) ^ ror32(a, 22)) +               \
                       ((a & b) ^ (a & c) ^ (b & c));                              \
        d += t1_;                                                                  \
        h = t1_ + t2_;                                                             \
    } while (0)

static void sha256_blocks_c(uint32_t st[8], const uint8_t *p, size_t nblocks)
{
    for (; nblocks--; p += 64) {
        uint32_t w[64];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
                   (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
        for (int i = 16; i < 64; i++) {
            uint32_t s0 = ror32(w[i - 15], 7) ^ ror32(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = ror32(w[i - 2], 17) ^ ror32(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = st[0], b = st[1], c = st[2], d = st[3];
        uint32_t e = st[4], f = st[5], g = st[6], h = st[7];
        for (int i = 0; i < 64; i += 8) {
            SHA_ROUND(a, b, c, d, e, f, g, h, i);
            SHA_ROUND(h, a, b, c, d, e, f, g, i + 1);
            SHA_ROUND(g, h, a, b, c, d, e, f, i + 2);
            SHA_ROUND(f, g, h, a, b, c, d, e, i + 3);
            SHA_ROUND(e, f, g, h, a, b, c, d, i + 4);
            SHA_ROUND(d, e, f, g, h, a, b, c, i + 5);
            SHA_ROUND(c, d, e, f, g, h, a, b, i + 6);
            SHA_ROUND(b, c, d, e, f, g, h, a, i + 7);
        }
        st[0] += a, st[1] += b, st[2] += c, st[3] += d;
        st[4] += e, st[5] += f, st[6] += g, st[7] += h;
    }
}

#ifdef HAVE_SHA_NI_CODE
/* The SHA extensions: each sha256rnds2 does two rounds on the state held as
 * ABEF / CDGH, sha256msg1/msg2 extend the message schedule four words at a
 * time (Intel's published instruction sequence). */
__attribute__((target("sha,sse4.1")))
static void sha256_blocks_ni(uint32_t st[8], const uint8_t *p, size_t nblocks)
{
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i tmp = _mm_loadu_si128((const __m128i *)&st[0]);
    __m128i s1 = _mm_loadu_si128((const __m128i *)&st[4]);
    tmp = _mm_shuffle_epi32(tmp, 0xB1);                 /* CDAB */
    s1 = _mm_shuffle_epi32(s1, 0x1B);                   /* EFGH */
    __m128i s0 = _mm_alignr_epi8(tmp, s1, 8);           /* ABEF */
    s1 = _mm_blend_epi16(s1, tmp, 0xF0);                /* CDGH */
    for (; nblocks--; p += 64) {
        __m128i save0 = s0, save1 = s1, m[4];
        for (int i = 0; i < 4; i++)
            m[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), bswap);
        for (int g = 0; g < 16; g++) {
            __m128i cur = m[g & 3];
            __m128i msg = _mm_add_epi32(cur, _mm_loadu_si128((const __m128i *)&K256[4 * g]));
            s1 = _mm_sha256rnds2_epu32(s1, s0, msg);
            if (g >= 3 && g <= 14) {
                /* W[4g+4..4g+7] from the words four and one groups back */
                __m128i next = _mm_add_epi32(m[(g + 1) & 3], _mm_alignr_epi8(cur, m[(g - 1) & 3], 4));
                m[(g + 1) & 3] = _mm_sha256msg2_epu32(next, cur);
            }
            msg = _mm_shuffle_epi32(msg, 0x0E);
            s0 = _mm_sha256rnds2_epu32(s0, s1, msg);
            if (g >= 1 && g <= 12)
                m[(g - 1) & 3] = _mm_sha256msg1_epu32(m[(g - 1) & 3], cur);
        }
        s0 = _mm_add_epi32(s0, save0);
        s1 = _mm_add_epi32(s1, save1);
    }
    tmp = _mm_shuffle_epi32(s0, 0x1B);                  /* FEBA */
    s1 = _mm_shuffle_epi32(s1, 0xB1);                   /* DCHG */
    s0 = _mm_blend_epi16(tmp, s1, 0xF0);                /* DCBA */
    s1 = _mm_alignr_epi8(s1, tmp, 8);                   /* HGFE */
    _mm_storeu_si128((__m128i *)&st[0], s0);
    _mm_storeu_si128((__m128i *)&st[4], s1);
}

static int cpu_has_sha(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 19)) || !(c & (1u << 9)))
        return 0;       /* SSE4.1, SSSE3 */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (b >> 29) & 1;
}
#endif

/* -1: not decided yet; 0: portable; 1: SHA extensions. */
static atomic_int hw_state = -1;
static atomic_int hw_allowed = 1;

int sha256_allow_hw(int allow)
{
    return atomic_exchange(&hw_allowed, allow ? 1 : 0);
}

static void sha256_blocks(uint32_t st[8], const uint8_t *p, size_t nblocks)
{
#ifdef HAVE_SHA_NI_CODE
    int hw = atomic_load(&hw_state);
    if (hw < 0) {
        hw = cpu_has_sha();
        atomic_store(&hw_state, hw);
    }
    if (hw && atomic_load(&hw_allowed)) {
        sha256_blocks_ni(st, p, nblocks);
        return;
    }
#endif
    sha256_blocks_c(st, p, nblocks);
}

void sha256_init(sha256_ctx *c)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, iv, sizeof iv);
    c->bytes = 0;
    c->nbuf = 0;
}

void sha256_update(sha256_ctx *c, const void *data, size_t n)
{
    const uint8_t *p = data;
    c->bytes += n;
    if (c->nbuf) {
        size_t take = 64 - c->nbuf < n ? 64 - c->nbuf : n;
        memcpy(c->buf + c->nbuf, p, take);
        c->nbuf += take, p += take, n -= take;
        if (c->nbuf < 64)
            return;
        sha256_blocks(c->h, c->buf, 1);
        c->nbuf = 0;
    }
    if (n >= 64) {
        sha256_blocks(c->h, p, n / 64);
        p += n / 64 * 64;
        n %= 64;
    }
    memcpy(c->buf, p, n);
    c->nbuf = n;
}

void sha256_final(sha256_ctx *c, uint8_t digest[32])
{
    uint64_t bits = c->bytes * 8;
    uint8_t pad[72] = {0x80};
    size_t padlen = (c->nbuf < 56 ? 56 : 120) - c->nbuf;
    for (int i = 0; i < 8; i++)
        pad[padlen + i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_update(c, pad, padlen + 8);
    for (int i = 0; i < 8; i++)
        for (int k = 0; k < 4; k++)
            digest[4 * i + k] = (uint8_t)(c->h[i] >> (24 - 8 * k));
}

void sha256_buffer(const void *data, size_t n, uint8_t digest[32])
{
    sha256_ctx c;
    sha256_init(&c);
    sha256_update(&c, data, n);
    sha256_final(&c, digest);
}

void sha256_hex(const uint8_t digest[32], char hex[65])
{
    static const char x[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++)
        hex[2 * i] = x[digest[i] >> 4], hex[2 * i + 1] = x[digest[i] & 15];
    hex[64] = '\0';
}

int sha256_file(const char *path, uint8_t digest[32], sha256_progress_fn progress,
                void *user, coin_error *err)
{
    if (!path || !digest)
        return coin_fail(err, COIN_EINVAL, "sha256_file: no path or no output");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return coin_fail(err, errno == ENOENT ? COIN_ENOTFOUND : COIN_EIO, "%s: %s", path,
                         strerror(errno));
    struct stat stt;
    uint64_t total = fstat(fd, &stt) == 0 && S_ISREG(stt.st_mode) ? (uint64_t)stt.st_size : 0;
#ifdef POSIX_FADV_SEQUENTIAL
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
    enum { CHUNK = 4 << 20 };
    uint8_t *buf = malloc(CHUNK);
    if (!buf) {
        close(fd);
        return coin_fail(err, COIN_ENOMEM, "%s: out of memory for hashing", path);
    }
    sha256_ctx c;
    sha256_init(&c);
    uint64_t done = 0;
    int rc = 0;
    for (;;) {
        ssize_t k = read(fd, buf, CHUNK);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            rc = coin_fail(err, COIN_EIO, "%s: read error while hashing: %s", path,
                           strerror(errno));
            break;
        }
        if (k == 0)
            break;
        sha256_update(&c, buf, (size_t)k);
        done += (uint64_t)k;
        if (progress && progress(done, total > done ? total : done, user)) {
            rc = coin_fail(err, COIN_EINVAL, "%s: hashing was cancelled", path);
            break;
        }
    }
    free(buf);
    close(fd);
    if (!rc)
        sha256_final(&c, digest);
    return rc;
}

static int short_hash(const char *path, char *out, int nhex, sha256_progress_fn progress,
                      void *user, coin_error *err)
{
    uint8_t d[32];
    char hex[65];
    int rc = sha256_file(path, d, progress, user, err);
    if (rc)
        return rc;
    sha256_hex(d, hex);
    memcpy(out, hex, (size_t)nhex);
    out[nhex] = '\0';
    return 0;
}

int infotext_model_hash(const char *path, char out[11], sha256_progress_fn progress,
                        void *user, coin_error *err)
{
    return short_hash(path, out, 10, progress, user, err);
}

int infotext_ti_hash(const char *path, char out[13], sha256_progress_fn progress,
                     void *user, coin_error *err)
{
    return short_hash(path, out, 12, progress, user, err);
}

/* ------------------------------------------------------------------ */
/* Text helpers                                                        */

/* One code point of valid UTF-8 (checked once per input up front). */
static uint32_t cp_at(const char *s, size_t n, size_t i, size_t *len)
{
    utf8proc_int32_t cp = 0;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i,
                                          (utf8proc_ssize_t)(n - i), &cp);
    *len = k > 0 ? (size_t)k : 1;
    return k > 0 ? (uint32_t)cp : 0xFFFD;
}

/* Python's str.isspace, which is also re's \s for str patterns. */
static int py_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* re's \w for str patterns: str.isalnum() or '_'; letters and numbers. */
static int py_word(uint32_t c)
{
    if (c < 0x80)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               c == '_';
    utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)c);
    return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
           (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

/* str.strip() of s[*b, *e). */
static void py_strip(const char *s, size_t *b, size_t *e)
{
    size_t len;
    while (*b < *e && py_space(cp_at(s, *e, *b, &len)))
        *b += len;
    while (*e > *b) {
        size_t st = *e - 1;
        while (st > *b && ((unsigned char)s[st] & 0xC0) == 0x80)
            st--;
        if (!py_space(cp_at(s, *e, st, &len)))
            break;
        *e = st;
    }
}

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *g = realloc(b->p, cap);
        if (!g) {
            b->oom = 1;
            return;
        }
        b->p = g, b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_puts(sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static char *sb_take(sbuf *b)
{
    if (b->oom) {
        free(b->p);
        return NULL;
    }
    if (!b->p)
        return strdup("");
    return b->p;
}

static char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static int nonempty(const char *s)
{
    return s && *s;
}

/* ------------------------------------------------------------------ */
/* JSON strings (json.dumps(ensure_ascii=False) / json.loads)          */

static void json_quote(sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        char esc[8];
        switch (c) {
        case '"': sb_put(b, "\\\"", 2); break;
        case '\\': sb_put(b, "\\\\", 2); break;
        case '\n': sb_put(b, "\\n", 2); break;
        case '\r': sb_put(b, "\\r", 2); break;
        case '\t': sb_put(b, "\\t", 2); break;
        case '\b': sb_put(b, "\\b", 2); break;
        case '\f': sb_put(b, "\\f", 2); break;
        default:
            if (c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                sb_put(b, esc, 6);
            } else {
                sb_put(b, p, 1);
            }
        }
    }
    sb_put(b, "\"", 1);
}

static int hex4(const char *s, uint32_t *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
                c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        *v = *v << 4 | (uint32_t)d;
    }
    return 0;
}

/* json.loads of s[0..n) when it is exactly one JSON string; NULL when it is
 * not (A1111's unquote then keeps the text as it is).  A lone surrogate,
 * which Python would keep but UTF-8 cannot hold, also counts as not. */
static char *json_unquote(const char *s, size_t n)
{
    if (n < 2 || s[0] != '"' || s[n - 1] != '"')
        return NULL;
    sbuf b = {0};
    size_t i = 1;
    for (; i < n - 1; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c < 0x20)
            break;      /* the string ends early, or a raw control character */
        if (c != '\\') {
            sb_put(&b, s + i, 1);
            continue;
        }
        if (++i >= n - 1)
            break;
        char e = s[i], out[4];
        uint32_t cp;
        switch (e) {
        case '"': case '\\': case '/': sb_put(&b, &e, 1); continue;
        case 'b': sb_put(&b, "\b", 1); continue;
        case 'f': sb_put(&b, "\f", 1); continue;
        case 'n': sb_put(&b, "\n", 1); continue;
        case 'r': sb_put(&b, "\r", 1); continue;
        case 't': sb_put(&b, "\t", 1); continue;
        case 'u':
            if (n - 1 - (i + 1) < 4 || hex4(s + i + 1, &cp))
                goto bad;
            i += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                if (n - 1 - (i + 1) < 6 || s[i + 1] != '\\' || s[i + 2] != 'u' ||
                    hex4(s + i + 3, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                    goto bad;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                i += 6;
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                goto bad;
            }
            sb_put(&b, out, (size_t)utf8proc_encode_char((utf8proc_int32_t)cp,
                                                         (utf8proc_uint8_t *)out));
            continue;
        default:
            goto bad;
        }
    }
    if (i != n - 1)
        goto bad;
    return sb_take(&b);
bad:
    free(b.p);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Python numbers in the C locale                                      */

/* Python's repr of a float: the shortest digits that read back the same,
 * positional for exponents -4..15, else d.ddde+XX. */
static void py_float_repr(double x, char *out, size_t n)
{
    if (isnan(x)) {
        snprintf(out, n, "nan");
        return;
    }
    if (isinf(x)) {
        snprintf(out, n, x < 0 ? "-inf" : "inf");
        return;
    }
    char tmp[40];
    int p;
    for (p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*e", p - 1, x);
        if (strtod(tmp, NULL) == x)
            break;
    }
    /* tmp = [-]d[.ddd]e(+|-)XX */
    const char *m = tmp + (tmp[0] == '-');
    char digits[24];
    int nd = 0;
    const char *q = m;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9')
            digits[nd++] = *q;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';
    int exp = atoi(q + 1);
    char *o = out, *end = out + n - 1;
#define PUT(ch) do { if (o < end) *o++ = (ch); } while (0)
    if (x < 0 || (x == 0 && signbit(x)))
        PUT('-');
    if (exp >= -4 && exp < 16) {
        if (exp < 0) {
            PUT('0');
            PUT('.');
            for (int i = 0; i < -exp - 1; i++)
                PUT('0');
            for (int i = 0; i < nd; i++)
                PUT(digits[i]);
        } else {
            for (int i = 0; i <= exp; i++)
                PUT(i < nd ? digits[i] : '0');
            PUT('.');
            if (nd > exp + 1)
                for (int i = exp + 1; i < nd; i++)
                    PUT(digits[i]);
            else
                PUT('0');
        }
    } else {
        PUT(digits[0]);
        if (nd > 1) {
            PUT('.');
            for (int i = 1; i < nd; i++)
                PUT(digits[i]);
        }
        char e[16];     /* a double's exponent has at most 3 digits */
        snprintf(e, sizeof e, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
        for (char *c = e; *c; c++)
            PUT(*c);
    }
#undef PUT
    *o = '\0';
}

/* gradio hands A1111 an int when the slider value is integral, so its
 * infotexts say "CFG scale: 7" and "CFG scale: 7.5". */
static void format_cfg(double x, char *out, size_t n)
{
    if (isfinite(x) && x == floor(x) && fabs(x) < 1e16)
        snprintf(out, n, "%.0f", x == 0 ? 0.0 : x);
    else
        py_float_repr(x, out, n);
}

/* int(s) for a decimal integer with optional sign and surrounding
 * whitespace (ASCII); 0 on success. */
static int parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    while (*s == ' ' || *s == '\t')
        s++;
    int neg = *s == '-';
    if (*s == '-' || *s == '+')
        s++;
    if (*s < '0' || *s > '9')
        return -1;
    uint64_t v = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (v > (UINT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s || v > (uint64_t)INT64_MAX + neg)
        return -1;
    int64_t r = neg ? (int64_t)(0 - v) : (int64_t)v;
    if (r < lo || r > hi)
        return -1;
    *out = r;
    return 0;
}

/* A finite decimal number (Python float() without inf/nan/underscores). */
static int parse_double(const char *s, double *out)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    while (n && (*s == ' ' || *s == '\t'))
        s++, n--;
    if (!n || n > 64)
        return -1;
    char tmp[65];
    int digits = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-'))
            return -1;
        digits += c >= '0' && c <= '9';
        tmp[i] = c;
    }
    tmp[n] = '\0';
    if (!digits)
        return -1;
    char *end;
    double v = strtod(tmp, &end);
    if (*end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------ */
/* The parameter regex                                                 */

typedef struct param_match {
    size_t kb, ke, vb, ve, end;
} param_match;

/* One match of \s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$) at
 * s[i]; 0 when there is none there. */
static int param_at(const char *s, size_t n, size_t i, param_match *m)
{
    size_t len;
    while (i < n && py_space(cp_at(s, n, i, &len)))
        i += len;
    if (i >= n || !py_word(cp_at(s, n, i, &len)))
        return 0;
    m->kb = i;
    i += len;
    size_t run = 0;
    for (;;) {
        if (i >= n)
            return 0;
        uint32_t c = cp_at(s, n, i, &len);
        if (!(py_word(c) || c == ' ' || c == '-' || c == '/'))
            break;
        i += len, run++;
    }
    if (!run || s[i] != ':')
        return 0;
    m->ke = i++;
    while (i < n && py_space(cp_at(s, n, i, &len)))
        i += len;
    m->vb = i;
    if (i < n && s[i] == '"') {
        /* "(?:\\.|[^\\"])+" then , or $ ('.' is any character but \n) */
        size_t j = i + 1, items = 0;
        while (j < n && s[j] != '"') {
            if (s[j] == '\\') {
                if (j + 1 >= n || s[j + 1] == '\n')
                    break;
                j += 2;
            } else {
                j++;
            }
            items++;
        }
        if (items && j < n && s[j] == '"') {
            size_t k = j + 1;
            int at_end = k == n || (k == n - 1 && s[k] == '\n');
            if (at_end || s[k] == ',') {
                m->ve = k;
                m->end = k < n && s[k] == ',' ? k + 1 : k;
                return 1;
            }
        }
    }
    size_t j = i;       /* [^,]* then , or $ */
    while (j < n && s[j] != ',')
        j++;
    m->ve = j;
    m->end = j < n ? j + 1 : j;
    return 1;
}

/* re.findall over s[0..n): calls fn for each match (when fn is not NULL)
 * and returns the count. */
static int param_findall(const char *s, size_t n,
                         int (*fn)(const char *, const param_match *, void *), void *user)
{
    int count = 0;
    size_t i = 0, len;
    while (i <= n) {
        param_match m;
        if (param_at(s, n, i, &m)) {
            count++;
            if (fn && fn(s, &m, user))
                return -1;
            i = m.end;
            continue;
        }
        if (i == n)
            break;
        cp_at(s, n, i, &len);
        i += len;
    }
    return count;
}

/* ------------------------------------------------------------------ */
/* Struct helpers                                                      */

void infotext_free(infotext *it)
{
    if (!it)
        return;
    free(it->prompt);
    free(it->negative_prompt);
    free(it->sampler);
    free(it->schedule_type);
    free(it->model_hash);
    free(it->model_name);
    free(it->rng);
    free(it->version);
    for (size_t i = 0; i < it->n_ti; i++) {
        free(it->ti[i].name);
        free(it->ti[i].hash);
    }
    free(it->ti);
    for (size_t i = 0; i < it->n_extra; i++) {
        free(it->extra[i].key);
        free(it->extra[i].value);
    }
    free(it->extra);
    memset(it, 0, sizeof *it);
}

int infotext_add_ti(infotext *it, const char *name, const char *hash, coin_error *err)
{
    if (!it || !name || !hash)
        return coin_fail(err, COIN_EINVAL, "infotext_add_ti: no name or hash");
    infotext_ti *g = realloc(it->ti, (it->n_ti + 1) * sizeof *g);
    if (!g)
        return coin_fail(err, COIN_ENOMEM, "out of memory for the infotext");
    it->ti = g;
    char *nm = strdup(name), *hs = strdup(hash);
    if (!nm || !hs) {
        free(nm);
        free(hs);
        return coin_fail(err, COIN_ENOMEM, "out of memory for the infotext");
    }
    it->ti[it->n_ti].name = nm;
    it->ti[it->n_ti].hash = hs;
    it->n_ti++;
    return 0;
}

const char *infotext_get_extra(const infotext *it, const char *key)
{
    if (!it || !key)
        return NULL;
    for (size_t i = 0; i < it->n_extra; i++)
        if (!strcmp(it->extra[i].key, key))
            return it->extra[i].value;
    return NULL;
}

static int set_extra_n(infotext *it, const char *key, size_t kn, const char *value,
                       size_t vn)
{
    char *v = dup_n(value, vn);
    if (!v)
        return -1;
    for (size_t i = 0; i < it->n_extra; i++)
        if (strlen(it->extra[i].key) == kn && !memcmp(it->extra[i].key, key, kn)) {
            free(it->extra[i].value);
            it->extra[i].value = v;
            return 0;
        }
    infotext_kv *g = realloc(it->extra, (it->n_extra + 1) * sizeof *g);
    char *k = dup_n(key, kn);
    if (!g || !k) {
        if (g)
            it->extra = g;
        free(k);
        free(v);
        return -1;
    }
    it->extra = g;
    it->extra[it->n_extra].key = k;
    it->extra[it->n_extra].value = v;
    it->n_extra++;
    return 0;
}

int infotext_set_extra(infotext *it, const char *key, const char *value, coin_error *err)
{
    if (!it || !key || !value)
        return coin_fail(err, COIN_EINVAL, "infotext_set_extra: no key or value");
    if (set_extra_n(it, key, strlen(key), value, strlen(value)))
        return coin_fail(err, COIN_ENOMEM, "out of memory for the infotext");
    return 0;
}

const char *infotext_rng_from_coin(const char *coin_rng)
{
    if (!coin_rng)
        return NULL;
    if (!strcmp(coin_rng, "cuda"))
        return "NV";
    if (!strcmp(coin_rng, "cpu"))
        return "CPU";
    return NULL;
}

const char *infotext_rng_to_coin(const char *a1111_rng)
{
    if (!a1111_rng || !strcmp(a1111_rng, "GPU") || !strcmp(a1111_rng, "NV"))
        return "cuda";
    if (!strcmp(a1111_rng, "CPU"))
        return "cpu";
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Formatting                                                          */

enum {
    F_EXTRA, F_STEPS, F_SAMPLER, F_SCHED, F_CFG, F_SEED, F_SIZE, F_MHASH, F_MODEL,
    F_RNG, F_EXTRAS, F_VERSION,
};

/* create_infotext's keys in order.  F_EXTRA slots hold keys coin has no
 * field for, written from extra[] when present; F_EXTRAS is where
 * **p.extra_generation_params goes (TI hashes and everything else). */
static const struct {
    const char *key;
    int field;
} SLOTS[] = {
    {"Steps", F_STEPS}, {"Sampler", F_SAMPLER}, {"Schedule type", F_SCHED},
    {"CFG scale", F_CFG}, {"Image CFG scale", F_EXTRA}, {"Seed", F_SEED},
    {"Face restoration", F_EXTRA}, {"Size", F_SIZE}, {"Model hash", F_MHASH},
    {"Model", F_MODEL}, {"FP8 weight", F_EXTRA}, {"Cache FP16 weight for LoRA", F_EXTRA},
    {"VAE hash", F_EXTRA}, {"VAE", F_EXTRA}, {"Variation seed", F_EXTRA},
    {"Variation seed strength", F_EXTRA}, {"Seed resize from", F_EXTRA},
    {"Denoising strength", F_EXTRA}, {"Conditional mask weight", F_EXTRA},
    {"Clip skip", F_EXTRA}, {"ENSD", F_EXTRA}, {"Token merging ratio", F_EXTRA},
    {"Token merging ratio hr", F_EXTRA}, {"Init image hash", F_EXTRA}, {"RNG", F_RNG},
    {"Tiling", F_EXTRA}, {"TI hashes", F_EXTRAS}, {"Version", F_VERSION}, {"User", F_EXTRA},
};

static int slot_key(const char *key)
{
    for (size_t i = 0; i < sizeof SLOTS / sizeof *SLOTS; i++)
        if (!strcmp(SLOTS[i].key, key))
            return 1;
    return 0;
}

typedef struct fmt_state {
    sbuf *b;
    int first;
} fmt_state;

/* One "Key: value": the key alone when equal to its value (A1111's
 * `k if k == v`), else the value quoted when it holds ',', ':' or '\n'. */
static void emit(fmt_state *f, const char *key, const char *value)
{
    if (!f->first)
        sb_put(f->b, ", ", 2);
    f->first = 0;
    sb_puts(f->b, key);
    if (!strcmp(key, value))
        return;
    sb_put(f->b, ": ", 2);
    if (strpbrk(value, ",:\n"))
        json_quote(f->b, value);
    else
        sb_puts(f->b, value);
}

static void emit_extra(fmt_state *f, const infotext *it, const char *key)
{
    const char *v = infotext_get_extra(it, key);
    if (v)
        emit(f, key, v);
}

/* "name: hash, ..." with ':' and ',' taken out of names, entries without a
 * hash left out, as A1111's sd_hijack does; NULL when none is left. */
static char *ti_value(const infotext *it)
{
    sbuf b = {0};
    int any = 0;
    for (size_t i = 0; i < it->n_ti; i++) {
        if (!nonempty(it->ti[i].hash) || !it->ti[i].name)
            continue;
        if (any)
            sb_put(&b, ", ", 2);
        for (const char *p = it->ti[i].name; *p; p++)
            if (*p != ':' && *p != ',')
                sb_put(&b, p, 1);
        sb_put(&b, ": ", 2);
        sb_puts(&b, it->ti[i].hash);
        any = 1;
    }
    if (!any || b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

int infotext_format(const infotext *it, char **out, coin_error *err)
{
    if (!it || !out)
        return coin_fail(err, COIN_EINVAL, "infotext_format: no parameters or no output");
    locale_t c = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (!c)
        return coin_fail(err, COIN_ENOMEM, "infotext_format: cannot create the C locale");
    locale_t prev = uselocale(c);
    sbuf b = {0};
    fmt_state f = {&b, 1};
    char num[64], *ti = ti_value(it);
    if (it->prompt)
        sb_puts(&b, it->prompt);
    if (nonempty(it->negative_prompt)) {
        sb_puts(&b, "\nNegative prompt: ");
        sb_puts(&b, it->negative_prompt);
    }
    sb_put(&b, "\n", 1);
    for (size_t s = 0; s < sizeof SLOTS / sizeof *SLOTS; s++) {
        const char *key = SLOTS[s].key;
        const char *str = NULL;
        int have = 1;
        switch (SLOTS[s].field) {
        case F_STEPS:
            have = it->have & INFOTEXT_STEPS;
            snprintf(num, sizeof num, "%d", it->steps);
            str = num;
            break;
        case F_CFG:
            have = it->have & INFOTEXT_CFG;
            format_cfg(it->cfg_scale, num, sizeof num);
            str = num;
            break;
        case F_SEED:
            have = it->have & INFOTEXT_SEED;
            snprintf(num, sizeof num, "%lld", (long long)it->seed);
            str = num;
            break;
        case F_SIZE:
            have = it->have & INFOTEXT_SIZE;
            snprintf(num, sizeof num, "%dx%d", it->width, it->height);
            str = num;
            break;
        case F_SAMPLER: str = it->sampler; break;
        case F_SCHED: str = it->schedule_type; break;
        case F_MHASH: str = it->model_hash; break;
        case F_MODEL: str = it->model_name; break;
        case F_VERSION: str = it->version; break;
        case F_RNG:
            /* A1111 writes RNG only when it is not its default, GPU */
            str = it->rng && strcmp(it->rng, "GPU") ? it->rng : NULL;
            if (!str && it->rng)
                continue;
            break;
        case F_EXTRAS: {
            const char *tiv = ti ? ti : infotext_get_extra(it, "TI hashes");
            size_t at = it->ti_at < it->n_extra ? it->ti_at : it->n_extra;
            for (size_t i = 0; i <= it->n_extra; i++) {
                if (i == at && tiv)
                    emit(&f, "TI hashes", tiv);
                if (i < it->n_extra && !slot_key(it->extra[i].key))
                    emit(&f, it->extra[i].key, it->extra[i].value);
            }
            continue;
        }
        default:
            emit_extra(&f, it, key);
            continue;
        }
        if (have && nonempty(str))
            emit(&f, key, str);
        else
            emit_extra(&f, it, key);    /* kept from a parse it could not read */
    }
    uselocale(prev);
    freelocale(c);
    free(ti);
    char *text = sb_take(&b);
    if (!text)
        return coin_fail(err, COIN_ENOMEM, "out of memory formatting the infotext");
    /* create_infotext returns the whole text .strip()ped */
    size_t tb = 0, te = strlen(text);
    py_strip(text, &tb, &te);
    memmove(text, text + tb, te - tb);
    text[te - tb] = '\0';
    *out = text;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Parsing                                                             */

typedef struct parse_state {
    infotext *it;
    int oom;
} parse_state;

static int set_str(char **field, const char *v)
{
    char *d = strdup(v);
    if (!d)
        return -1;
    free(*field);
    *field = d;
    return 0;
}

/* "a: 0123, b: 4567" into it->ti; -1 when some entry has no ':'. */
static int parse_ti(infotext *it, const char *v)
{
    infotext tmp = {0};
    const char *p = v;
    int rc = 0;
    while (!rc) {
        const char *e = strchr(p, ',');
        size_t b = 0, n = e ? (size_t)(e - p) : strlen(p);
        py_strip(p, &b, &n);
        const char *colon = NULL;
        for (size_t i = b; i < n; i++)
            if (p[i] == ':')
                colon = p + i;
        if (!colon) {
            rc = -1;
            break;
        }
        size_t nb = b, ne = (size_t)(colon - p), hb = ne + 1, he = n;
        py_strip(p, &nb, &ne);
        py_strip(p, &hb, &he);
        char *name = dup_n(p + nb, ne - nb), *hash = dup_n(p + hb, he - hb);
        if (!name || !hash || infotext_add_ti(&tmp, name, hash, NULL))
            rc = -2;
        free(name);
        free(hash);
        if (!e)
            break;
        p = e + 1;
    }
    if (rc) {
        infotext_free(&tmp);
        return rc;
    }
    for (size_t i = 0; i < it->n_ti; i++) {
        free(it->ti[i].name);
        free(it->ti[i].hash);
    }
    free(it->ti);
    it->ti = tmp.ti;
    it->n_ti = tmp.n_ti;
    return 0;
}

/* ^(\d+)x(\d+)$ */
static int parse_size(const char *v, int *w, int *h)
{
    const char *x = strchr(v, 'x');
    if (!x || x == v || !x[1])
        return -1;
    for (const char *p = v; *p; p++)
        if (p != x && (*p < '0' || *p > '9'))
            return -1;
    int64_t a, b;
    char buf[32];
    size_t n = (size_t)(x - v);
    if (n >= sizeof buf)
        return -1;
    memcpy(buf, v, n);
    buf[n] = '\0';
    if (parse_i64(buf, 0, INT32_MAX, &a) || parse_i64(x + 1, 0, INT32_MAX, &b))
        return -1;
    *w = (int)a, *h = (int)b;
    return 0;
}

static int take_param(const char *s, const param_match *m, void *user)
{
    parse_state *ps = user;
    infotext *it = ps->it;
    if (m->ve == m->vb)
        return 0;       /* v[0] raises IndexError in A1111: the key is dropped */
    size_t vn = m->ve - m->vb;
    char *v = NULL;
    if (s[m->vb] == '"' && s[m->ve - 1] == '"')
        v = json_unquote(s + m->vb, vn);
    if (!v)
        v = dup_n(s + m->vb, vn);
    char *k = dup_n(s + m->kb, m->ke - m->kb);
    if (!v || !k) {
        free(v);
        free(k);
        return ps->oom = -1;
    }
    int64_t i64;
    double d;
    int w, h, rc = 0, known = 1;
    if (!strcmp(k, "Steps") && !parse_i64(v, INT32_MIN, INT32_MAX, &i64)) {
        it->steps = (int)i64;
        it->have |= INFOTEXT_STEPS;
    } else if (!strcmp(k, "CFG scale") && !parse_double(v, &d)) {
        it->cfg_scale = d;
        it->have |= INFOTEXT_CFG;
    } else if (!strcmp(k, "Seed") && !parse_i64(v, INT64_MIN, INT64_MAX, &i64)) {
        it->seed = i64;
        it->have |= INFOTEXT_SEED;
    } else if (!strcmp(k, "Size") && !parse_size(v, &w, &h)) {
        it->width = w, it->height = h;
        it->have |= INFOTEXT_SIZE;
    } else if (!strcmp(k, "Sampler")) {
        rc = set_str(&it->sampler, v);
    } else if (!strcmp(k, "Schedule type")) {
        rc = set_str(&it->schedule_type, v);
    } else if (!strcmp(k, "Model hash")) {
        rc = set_str(&it->model_hash, v);
    } else if (!strcmp(k, "Model")) {
        rc = set_str(&it->model_name, v);
    } else if (!strcmp(k, "RNG")) {
        rc = set_str(&it->rng, v);
    } else if (!strcmp(k, "Version")) {
        rc = set_str(&it->version, v);
    } else if (!strcmp(k, "TI hashes")) {
        it->ti_at = it->n_extra;    /* its place among the extra parameters */
        int tr = parse_ti(it, v);
        if (tr == -2)
            rc = -1;
        else if (tr == -1)
            known = 0;              /* kept verbatim, written back in place */
    } else {
        known = 0;
    }
    if (!known)
        rc = set_extra_n(it, k, strlen(k), v, strlen(v));
    free(k);
    free(v);
    return rc ? (ps->oom = -1) : 0;
}

/* sd_samplers.get_sampler_and_scheduler: an old-style sampler name ending
 * in a schedule ("DPM++ 2M Karras") is split into both. */
static int split_sampler(infotext *it)
{
    static const char *const sched[][4] = {
        {"Automatic", "automatic"}, {"Uniform", "uniform"}, {"Karras", "karras"},
        {"Exponential", "exponential"}, {"Polyexponential", "polyexponential"},
        {"SGM Uniform", "sgm_uniform", "SGMUniform"}, {"KL Optimal", "kl_optimal"},
        {"Align Your Steps", "align_your_steps"}, {"Simple", "simple"},
        {"Normal", "normal"}, {"DDIM", "ddim"}, {"Beta", "beta"},
    };
    if (nonempty(it->schedule_type) || !it->sampler)
        return 0;
    const char *found = NULL;
    for (size_t s = 0; s < sizeof sched / sizeof *sched; s++)
        for (int o = 0; o < 4 && sched[s][o]; o++) {
            size_t n = strlen(it->sampler), l = strlen(sched[s][o]);
            if (n > l + 1 && it->sampler[n - l - 1] == ' ' &&
                !strcmp(it->sampler + n - l, sched[s][o])) {
                it->sampler[n - l - 1] = '\0';
                found = sched[s][0];
                break;
            }
        }
    return found ? set_str(&it->schedule_type, found) : 0;
}

int infotext_parse(const char *text, infotext *out, coin_error *err)
{
    if (!text || !out)
        return coin_fail(err, COIN_EINVAL, "infotext_parse: no text or no output");
    memset(out, 0, sizeof *out);
    size_t n = strlen(text);
    if (utf8proc_decompose((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)n, NULL, 0, 0) < 0)
        return coin_fail(err, COIN_EINVAL, "the generation parameters are not valid UTF-8");
    locale_t c = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (!c)
        return coin_fail(err, COIN_ENOMEM, "infotext_parse: cannot create the C locale");
    locale_t prev = uselocale(c);

    /* *lines, lastline = x.strip().split("\n") */
    size_t b = 0, e = n;
    py_strip(text, &b, &e);
    size_t last = e;
    while (last > b && text[last - 1] != '\n')
        last--;
    size_t lines_end = last > b ? last - 1 : b;
    if (param_findall(text + last, e - last, NULL, NULL) < 3) {
        lines_end = e;      /* the last line is prompt too */
        last = e;
    }
    sbuf prompt = {0}, neg = {0};
    int done_with_prompt = 0;
    for (size_t p = b; p <= lines_end && b < lines_end;) {
        size_t q = p;
        while (q < lines_end && text[q] != '\n')
            q++;
        size_t lb = p, le = q;
        py_strip(text, &lb, &le);
        if (le - lb >= 16 && !memcmp(text + lb, "Negative prompt:", 16)) {
            done_with_prompt = 1;
            lb += 16;
            py_strip(text, &lb, &le);
        }
        sbuf *dst = done_with_prompt ? &neg : &prompt;
        if (dst->n)
            sb_put(dst, "\n", 1);
        sb_put(dst, text + lb, le - lb);
        p = q + 1;
    }
    out->prompt = sb_take(&prompt);
    out->negative_prompt = sb_take(&neg);
    parse_state ps = {out, 0};
    if (out->prompt && out->negative_prompt && last < e)
        param_findall(text + last, e - last, take_param, &ps);
    if (!ps.oom && out->prompt && out->negative_prompt && split_sampler(out))
        ps.oom = -1;
    uselocale(prev);
    freelocale(c);
    if (ps.oom || !out->prompt || !out->negative_prompt) {
        infotext_free(out);
        return coin_fail(err, COIN_ENOMEM, "out of memory parsing the generation parameters");
    }
    return 0;
}
