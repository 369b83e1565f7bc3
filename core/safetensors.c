/*
 * safetensors.c - the strict safetensors reader and the reference-layout writer.
 *
 * The reader enforces every rule of the reference reader (huggingface/safetensors
 * `read_metadata` + `Metadata::validate`, REFERENCE.md section 5); where the
 * rules are serde_json's (whitespace, escapes, numbers, nesting) the behaviour
 * was settled by probing the reference's Python package, version 0.8.  The
 * header is parsed by a small JSON parser of our own rather than cJSON, which
 * silently accepts duplicate keys and reads every number as a double, while
 * offsets need exact 64-bit integers.  The header is flat (an object of objects
 * and arrays), so the parser is plain functions; only values that coin ignores
 * (unknown fields) may nest, and those are skipped with an explicit stack.
 *
 * Where the reference is looser than coin can afford, coin is stricter: it
 * refuses duplicate tensor names and __metadata__ keys (the reference keeps the
 * last silently, though its README says duplicates are disallowed), NULs in
 * names and metadata (coin uses C strings), a tensor entry written as a JSON
 * array instead of an object (serde takes that form), more than ST_MAX_DIMS
 * dimensions and dimensions above INT64_MAX.  Unknown fields inside a tensor
 * entry are accepted and ignored, as the reference does (its TensorInfo has no
 * deny_unknown_fields), but they must still be valid JSON.
 */
#include "safetensors.h"
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian and coin reads it in place"
#endif

static const struct { const char *name; int bits; } dtypes[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", 8}, [ST_F4] = {"F4", 4}, [ST_F6_E2M3] = {"F6_E2M3", 6},
    [ST_F6_E3M2] = {"F6_E3M2", 6}, [ST_U8] = {"U8", 8}, [ST_I8] = {"I8", 8},
    [ST_F8_E5M2] = {"F8_E5M2", 8}, [ST_F8_E4M3] = {"F8_E4M3", 8},
    [ST_F8_E8M0] = {"F8_E8M0", 8}, [ST_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8},
    [ST_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8}, [ST_I16] = {"I16", 16},
    [ST_U16] = {"U16", 16}, [ST_F16] = {"F16", 16}, [ST_BF16] = {"BF16", 16},
    [ST_I32] = {"I32", 32}, [ST_U32] = {"U32", 32}, [ST_F32] = {"F32", 32},
    [ST_C64] = {"C64", 64}, [ST_F64] = {"F64", 64}, [ST_I64] = {"I64", 64},
    [ST_U64] = {"U64", 64},
};

const char *st_dtype_name(st_dtype d)
{
    return (unsigned)d < ST_DTYPE_COUNT ? dtypes[d].name : "?";
}

/* Length-aware so that a name holding a NUL never matches. */
static int dtype_lookup(const char *s, size_t len)
{
    for (int d = 0; d < ST_DTYPE_COUNT; d++)
        if (strlen(dtypes[d].name) == len && memcmp(dtypes[d].name, s, len) == 0)
            return d;
    return -1;
}

int st_dtype_parse(const char *s) { return s ? dtype_lookup(s, strlen(s)) : -1; }

int st_dtype_bits(st_dtype d) { return (unsigned)d < ST_DTYPE_COUNT ? dtypes[d].bits : 0; }

/* ---- error messages ---- */

/* Names come from strangers and end up on a terminal: control bytes are shown
 * as \xNN (no escape sequences reach the screen) and long names are cut at a
 * character boundary. */
#define SHOW_MAX 96
static const char *show(char out[SHOW_MAX], const char *s, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c & 0xC0) != 0x80 && o > SHOW_MAX - 16) {
            memcpy(out + o, "...", 4);
            return out;
        }
        if (c < 0x20 || c == 0x7f)
            o += (size_t)snprintf(out + o, SHOW_MAX - o, "\\x%02x", c);
        else
            out[o++] = (char)c;
    }
    out[o] = '\0';
    return out;
}

static int vfail(coin_error *err, int code, const char *path, const char *name,
                 size_t name_len, const char *fmt, va_list ap)
{
    char problem[768], shown[SHOW_MAX];
    vsnprintf(problem, sizeof problem, fmt, ap);
    if (name)
        return coin_fail(err, code, "%s: tensor '%s': %s", path,
                         show(shown, name, name_len), problem);
    return coin_fail(err, code, "%s: %s", path, problem);
}

/* "<path>: tensor '<name>': <problem>", or without the tensor when name is NULL. */
__attribute__((format(printf, 6, 7)))
static int fail_at(coin_error *err, int code, const char *path, const char *name,
                   size_t name_len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vfail(err, code, path, name, name_len, fmt, ap);
    va_end(ap);
    return rc;
}

static void fmt_shape(char *buf, size_t size, int ndim, const int64_t *shape)
{
    size_t o = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && o < size; i++)
        o += (size_t)snprintf(buf + o, size - o, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (o < size)
        snprintf(buf + o, size - o, "]");
}

/* Index of the first byte that breaks strict UTF-8 (no overlong forms, no
 * surrogates, nothing above U+10FFFF), or n when s is valid. */
static size_t utf8_bad_at(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t need;
        unsigned lo = 0x80, hi = 0xBF;   /* allowed range of the 2nd byte */
        if (c < 0x80) { i++; continue; }
        else if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;       /* overlong */
            if (c == 0xED) hi = 0x9F;       /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;       /* overlong */
            if (c == 0xF4) hi = 0x8F;       /* above U+10FFFF */
        } else
            return i;
        if (n - i <= need || s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
        i += need + 1;
    }
    return n;
}

/* ---- the header's JSON ---- */

/* serde_json, the reference's parser, refuses to nest deeper than this. */
#define JSON_MAX_DEPTH 127

typedef struct jp {
    const unsigned char *s;
    size_t n, i;                /* header text, its length, the read position */
    const char *path;
    coin_error *err;
    const char *cur;            /* the tensor being read, named in messages */
    size_t cur_len;
    size_t tensor_cap, key_cap, value_cap;
} jp;

__attribute__((format(printf, 3, 4)))
static int jfail(jp *p, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vfail(p->err, code, p->path, p->cur, p->cur_len, fmt, ap);
    va_end(ap);
    return rc;
}

static int nomem(jp *p)
{
    return fail_at(p->err, COIN_ENOMEM, p->path, NULL, 0, "out of memory reading the header");
}

/* The next byte after JSON whitespace (not form feeds or BOMs, which the
 * reference refuses), or -1 at the end. */
static int at(jp *p)
{
    while (p->i < p->n && p->s[p->i] && strchr(" \t\n\r", p->s[p->i]))
        p->i++;
    return p->i < p->n ? p->s[p->i] : -1;
}

static const char *describe(int c, char buf[16])
{
    if (c < 0)
        return "the end of the header";
    snprintf(buf, 16, c >= 0x20 && c < 0x7f ? "'%c'" : "byte 0x%02x", c);
    return buf;
}

static int syntax(jp *p, const char *expected)
{
    char b[16];
    return jfail(p, COIN_EFORMAT, "the header is not valid JSON: expected %s at byte %zu of "
                 "the header, found %s", expected, p->i, describe(p->i < p->n ? p->s[p->i] : -1, b));
}

/* "<what>, found a number" when the value is JSON of the wrong type; a
 * syntax error when it is not JSON at all. */
static int bad_type(jp *p, const char *what)
{
    static const char *const kinds[][2] = {{"{", "an object"}, {"[", "an array"},
        {"\"", "a string"}, {"tf", "a boolean"}, {"n", "null"}, {"-0123456789", "a number"}};
    int c = at(p);
    for (size_t k = 0; c > 0 && k < sizeof kinds / sizeof *kinds; k++)
        if (strchr(kinds[k][0], c))
            return jfail(p, COIN_EFORMAT, "%s, found %s", what, kinds[k][1]);
    return syntax(p, "a JSON value");
}

static int expect(jp *p, int c, const char *what)
{
    if (at(p) != c)
        return syntax(p, what);
    p->i++;
    return 0;
}

/* After a member of an object or array: 1 when close ends it, 0 after a ','. */
static int next(jp *p, int close)
{
    int c = at(p);
    if (c == close || c == ',') {
        p->i++;
        return c == close;
    }
    return syntax(p, close == '}' ? "',' or '}'" : "',' or ']'");
}

static int hex4(const unsigned char *s, unsigned *v)
{
    *v = 0;
    for (int k = 0; k < 4; k++) {
        unsigned c = s[k] | 0x20;   /* lower-cases letters, keeps digits */
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return -1;
        *v = *v << 4 | (c <= '9' ? c - '0' : c - 'a' + 10);
    }
    return 0;
}

/* Reads the string at the read position.  With out, decodes it into a new
 * NUL-terminated buffer; *len excludes the terminator, and the text may hold
 * NULs from \u0000, which callers refuse where they need C strings. */
static int read_string(jp *p, char **out, size_t *len)
{
    if (at(p) != '"')
        return syntax(p, "a string");
    size_t j = ++p->i, o = 0;
    /* Find the closing quote first to size the buffer: no escape decodes
     * to more bytes than it is written with. */
    while (j < p->n && p->s[j] != '"')
        j += p->s[j] == '\\' ? 2 : 1;
    if (j >= p->n) {
        p->i = p->n;
        return syntax(p, "'\"' to close a string");
    }
    char *buf = out ? malloc(j - p->i + 1) : NULL;
    if (out && !buf)
        return nomem(p);
    while (p->i < j) {
        unsigned c = p->s[p->i], cp, lo;
        size_t esc = p->i;
        if (c < 0x20) {
            free(buf);
            return jfail(p, COIN_EFORMAT, "the header is not valid JSON: control character 0x%02x "
                         "inside a string at byte %zu of the header", c, p->i);
        }
        if (c != '\\') {
            if (buf) buf[o++] = (char)c;
            p->i++;
            continue;
        }
        c = p->s[p->i + 1];         /* the scan above saw to it that p->i + 1 < j */
        p->i += 2;
        static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
        const char *e = c ? strchr(from, (int)c) : NULL;
        if (e) {
            cp = (unsigned char)to[e - from];
        } else if (c != 'u' || j - p->i < 4 || hex4(p->s + p->i, &cp) ||
                   (cp >= 0xDC00 && cp <= 0xDFFF)) {
            goto bad_escape;        /* not an escape, or a lone low surrogate */
        } else if ((p->i += 4, cp >= 0xD800 && cp <= 0xDBFF)) {
            /* a high surrogate must pair with a low one */
            if (j - p->i < 6 || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u' ||
                hex4(p->s + p->i + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                goto bad_escape;
            p->i += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        if (!buf)
            continue;
        /* UTF-8: a lead byte with extra + 1 high bits set, then extra
         * continuation bytes of 6 bits each */
        int extra = cp < 0x80 ? 0 : cp < 0x800 ? 1 : cp < 0x10000 ? 2 : 3;
        buf[o++] = (char)(extra ? (0xFF << (7 - extra) & 0xFF) | cp >> 6 * extra : cp);
        while (extra--)
            buf[o++] = (char)(0x80 | (cp >> 6 * extra & 0x3F));
        continue;
    bad_escape:
        free(buf);
        return jfail(p, COIN_EFORMAT, "the header is not valid JSON: bad escape (or a lone "
                     "UTF-16 surrogate) at byte %zu of the header", esc);
    }
    p->i = j + 1;
    if (out) {
        buf[o] = '\0';
        *out = buf;
        *len = o;
    }
    return 0;
}

/* A key and its ':'. */
static int read_key(jp *p, char **key, size_t *len)
{
    int rc = read_string(p, key, len);
    if (!rc && (rc = expect(p, ':', "':' after a key")) && key)
        free(*key);
    return rc;
}

static int digit_at(jp *p, size_t i) { return i < p->n && p->s[i] >= '0' && p->s[i] <= '9'; }

/* Scans a number by JSON's grammar; *start is where it began and *integer
 * says it has neither a fraction nor an exponent. */
static int scan_number(jp *p, size_t *start, int *integer)
{
    *start = p->i;
    *integer = 1;
    p->i += p->i < p->n && p->s[p->i] == '-';
    if (!digit_at(p, p->i))
        return syntax(p, "a digit");
    if (p->s[p->i] == '0' && digit_at(p, p->i + 1))
        return jfail(p, COIN_EFORMAT, "the header is not valid JSON: a number has a leading zero "
                     "at byte %zu of the header", p->i);
    while (digit_at(p, p->i))
        p->i++;
    if (p->i < p->n && p->s[p->i] == '.') {
        *integer = 0;
        if (!digit_at(p, ++p->i))
            return syntax(p, "a digit after '.'");
        while (digit_at(p, p->i))
            p->i++;
    }
    if (p->i < p->n && (p->s[p->i] | 0x20) == 'e') {
        *integer = 0;
        p->i++;
        p->i += p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-');
        if (!digit_at(p, p->i))
            return syntax(p, "a digit in an exponent");
        while (digit_at(p, p->i))
            p->i++;
    }
    return 0;
}

/* A non-negative integer that fits in 64 bits (shapes and offsets); what
 * names the field in messages. */
static int read_u64(jp *p, const char *what, uint64_t *v)
{
    char w[64];
    int c = at(p), integer, rc;
    size_t st;
    snprintf(w, sizeof w, "%s must hold non-negative integers", what);
    if (c != '-' && (c < '0' || c > '9'))
        return bad_type(p, w);
    if ((rc = scan_number(p, &st, &integer)))
        return rc;
    int tl = (int)(p->i - st < 40 ? p->i - st : 40);
    const char *tok = (const char *)p->s + st;
    if (*tok == '-' || !integer)
        return jfail(p, COIN_EFORMAT, "%s holds %.*s, which is %s", what, tl, tok,
                     *tok == '-' ? "negative" : "not written as a whole number");
    for (*v = 0; st < p->i; st++) {
        unsigned d = p->s[st] - '0';
        if (*v > (UINT64_MAX - d) / 10)
            return jfail(p, COIN_EFORMAT, "%s holds %.*s%s, which does not fit in 64 bits",
                         what, tl, tok, tl == 40 ? "..." : "");
        *v = *v * 10 + d;
    }
    return 0;
}

/* serde_json refuses numbers that overflow a double (1e400) even in fields
 * it then ignores.  strtod_l in the C locale, because the front end may set
 * a locale whose decimal point is a comma. */
static int number_in_range(jp *p, size_t st)
{
    char *tmp = strndup((const char *)p->s + st, p->i - st);
    locale_t c = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    double d = tmp && c ? strtod_l(tmp, NULL, c) : 0;
    free(tmp);
    if (c)
        freelocale(c);
    if (!tmp || !c)
        return nomem(p);
    return isinf(d) ? jfail(p, COIN_EFORMAT, "the header is not valid JSON: the number at byte "
                            "%zu of the header is out of range", st) : 0;
}

/* Skips one JSON value of any shape (a field coin ignores), checking its
 * syntax.  Iterative, so hostile nesting costs no C stack; depth is the
 * nesting already open around it. */
static int skip_value(jp *p, int depth)
{
    char stack[JSON_MAX_DEPTH];
    int sp = 0, rc = 0, c;
    for (;;) {
        c = at(p);
        if (c == '{' || c == '[') {
            if (depth + sp >= JSON_MAX_DEPTH)
                return jfail(p, COIN_EFORMAT, "the header nests deeper than %d levels at byte %zu",
                             JSON_MAX_DEPTH, p->i);
            stack[sp++] = (char)(c + 2);    /* '{' + 2 == '}', '[' + 2 == ']' */
            p->i++;
            if (at(p) != c + 2) {
                if (c == '{' && (rc = read_key(p, NULL, NULL)))
                    return rc;
                continue;                   /* on to the first member */
            }
            p->i++;
            sp--;
        } else if (c == '"') {
            if ((rc = read_string(p, NULL, NULL)))
                return rc;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t st;
            int integer;
            if ((rc = scan_number(p, &st, &integer)) ||
                ((!integer || p->i - st > 19) && (rc = number_in_range(p, st))))
                return rc;
        } else {
            static const char *const lit[] = {"true", "false", "null"};
            size_t k = 0;
            while (k < 3 && (p->n - p->i < strlen(lit[k]) ||
                             memcmp(p->s + p->i, lit[k], strlen(lit[k]))))
                k++;
            if (k == 3)
                return syntax(p, "a JSON value");
            p->i += strlen(lit[k]);
        }
        /* A value is complete: close containers until one wants another. */
        while (sp > 0 && (rc = next(p, stack[sp - 1])) == 1)
            sp--;
        if (sp == 0)
            return 0;
        if (rc < 0 || (stack[sp - 1] == '}' && (rc = read_key(p, NULL, NULL))))
            return rc;
    }
}

/* Grows *arr (*cap elements of sz bytes) to hold at least n + 1. */
static int grow(void **arr, size_t *cap, size_t n, size_t sz)
{
    if (n < *cap)
        return 0;
    size_t nc = *cap ? *cap * 2 : 16;
    void *q = nc < SIZE_MAX / sz ? realloc(*arr, nc * sz) : NULL;
    if (!q)
        return -1;
    *arr = q;
    *cap = nc;
    return 0;
}

/* __metadata__: an object of strings, or null (which the reference reads as
 * no metadata). */
static int read_metadata(jp *p, st_file *f)
{
    int rc = 0;
    if (at(p) == 'n' && p->n - p->i >= 4 && memcmp(p->s + p->i, "null", 4) == 0) {
        p->i += 4;
        return 0;
    }
    if (at(p) != '{')
        return bad_type(p, "__metadata__ must be an object of strings");
    p->i++;
    if (at(p) == '}') {
        p->i++;
        return 0;
    }
    do {
        char *k, *v = NULL, s1[SHOW_MAX], what[SHOW_MAX + 40];
        size_t kl, vl;
        if ((rc = read_key(p, &k, &kl)))
            return rc;
        snprintf(what, sizeof what, "__metadata__ entry '%s' must be a string", show(s1, k, kl));
        if (at(p) != '"')
            rc = bad_type(p, what);
        else if (!(rc = read_string(p, &v, &vl)) && (memchr(k, 0, kl) || memchr(v, 0, vl)))
            rc = jfail(p, COIN_EFORMAT, "__metadata__ entry '%s' contains a NUL character "
                       "(\\u0000), which coin cannot handle", s1);
        else if (!rc && (grow((void **)&f->meta_keys, &p->key_cap, f->n_meta, sizeof(char *)) ||
                         grow((void **)&f->meta_values, &p->value_cap, f->n_meta, sizeof(char *))))
            rc = nomem(p);
        if (rc) {
            free(k);
            free(v);
            return rc;
        }
        f->meta_keys[f->n_meta] = k;
        f->meta_values[f->n_meta++] = v;
    } while (!(rc = next(p, '}')));
    return rc < 0 ? rc : 0;
}

enum { F_DTYPE, F_SHAPE, F_OFFSETS, F_COUNT };
static const char *const field_names[F_COUNT] = {"dtype", "shape", "data_offsets"};

static int read_field(jp *p, st_tensor *t, int which)
{
    int rc;
    if (which == F_DTYPE) {
        char *s, shown[SHOW_MAX];
        size_t len;
        if (at(p) != '"')
            return bad_type(p, "dtype must be a string");
        if ((rc = read_string(p, &s, &len)))
            return rc;
        int d = dtype_lookup(s, len);
        if (d < 0)
            rc = jfail(p, COIN_EFORMAT, "unknown dtype '%s'", show(shown, s, len));
        free(s);
        t->dtype = (st_dtype)d;
        return rc;
    }
    if (at(p) != '[')
        return bad_type(p, which == F_SHAPE ? "shape must be an array of integers"
                                            : "data_offsets must be an array of 2 integers");
    p->i++;
    if (which == F_OFFSETS) {
        int count = 0;              /* exactly two: [b] and [b, e, x] are refused */
        do {
            if (count == 2)
                return jfail(p, COIN_EFORMAT, "data_offsets must hold exactly 2 integers, "
                             "found more");
            if ((rc = read_u64(p, "data_offsets", count++ ? &t->end : &t->begin)))
                return rc;
        } while (!(rc = next(p, ']')));
        if (rc < 0 || count == 2)
            return rc < 0 ? rc : 0;
        return jfail(p, COIN_EFORMAT, "data_offsets must hold exactly 2 integers, found 1");
    }
    if (at(p) == ']') {
        p->i++;
        return 0;                           /* a scalar */
    }
    do {
        uint64_t v;
        if ((rc = read_u64(p, "shape", &v)))
            return rc;
        if (t->ndim == ST_MAX_DIMS)
            return jfail(p, COIN_EUNSUPPORTED, "has more than %d dimensions, which coin does "
                         "not support", ST_MAX_DIMS);
        if (v > INT64_MAX)
            return jfail(p, COIN_EUNSUPPORTED, "dimension %d is %" PRIu64 ", larger than coin "
                         "supports", t->ndim, v);
        t->shape[t->ndim++] = (int64_t)v;
    } while (!(rc = next(p, ']')));
    return rc < 0 ? rc : 0;
}

static int read_tensor(jp *p, st_tensor *t, size_t name_len)
{
    int rc = 0, have[F_COUNT] = {0};
    p->cur = t->name;
    p->cur_len = name_len;
    if (at(p) != '{')
        return bad_type(p, "must be an object with dtype, shape and data_offsets");
    p->i++;
    if (at(p) == '}')
        p->i++;
    else
        do {
            char *key;
            size_t kl;
            int which = 0;
            if ((rc = read_key(p, &key, &kl)))
                return rc;
            while (which < F_COUNT && (strlen(field_names[which]) != kl ||
                                       memcmp(key, field_names[which], kl)))
                which++;
            free(key);
            if (which == F_COUNT)
                rc = skip_value(p, 2);      /* the reference ignores unknown fields */
            else if (have[which]++)
                rc = jfail(p, COIN_EFORMAT, "has two '%s' fields", field_names[which]);
            else
                rc = read_field(p, t, which);
        } while (!rc && !(rc = next(p, '}')));
    if (rc < 0)
        return rc;
    for (int k = 0; k < F_COUNT; k++)
        if (!have[k])
            return jfail(p, COIN_EFORMAT, "has no '%s' field", field_names[k]);
    p->cur = NULL;
    return 0;
}

static int read_header(jp *p, st_file *f)
{
    int rc = 0, have_meta = 0, c = at(p);
    char b[16];
    if (c != '{')
        return jfail(p, COIN_EFORMAT, "the header must be a JSON object (beginning with '{') but "
                     "%s%s", c < 0 ? "it is empty" : "it begins with ", c < 0 ? "" : describe(c, b));
    p->i++;
    if (at(p) == '}')
        p->i++;
    else
        do {
            char *key;
            size_t kl;
            if ((rc = read_key(p, &key, &kl)))
                return rc;
            if (kl == 12 && memcmp(key, "__metadata__", 12) == 0) {
                free(key);
                rc = have_meta++ ? jfail(p, COIN_EFORMAT, "the header has two __metadata__ "
                                         "entries") : read_metadata(p, f);
            } else if (memchr(key, 0, kl)) {
                rc = fail_at(p->err, COIN_EFORMAT, p->path, key, kl, "the name contains a NUL "
                             "character (\\u0000), which coin cannot handle");
                free(key);
            } else if (grow((void **)&f->tensors, &p->tensor_cap, f->n_tensors, sizeof(st_tensor))) {
                free(key);
                rc = nomem(p);
            } else {
                st_tensor *t = &f->tensors[f->n_tensors++];
                memset(t, 0, sizeof *t);
                t->name = key;              /* owned by f from here on */
                rc = read_tensor(p, t, kl);
            }
        } while (!rc && !(rc = next(p, '}')));
    if (rc < 0)
        return rc;
    if ((c = at(p)) >= 0)
        return jfail(p, COIN_EFORMAT, "unexpected %s after the JSON header at byte %zu of the "
                     "header; only whitespace may pad it", describe(c, b), p->i);
    return 0;
}

/* ---- layout validation ---- */

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_offsets(const void *a, const void *b)
{
    const st_tensor *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);    /* only empty tensors tie; keep the order stable */
}

/* Sets *dup to a name that occurs twice among n, or NULL.  Sorting a copy
 * keeps this n log n, so a header of a million names cannot stall us. */
static int find_duplicate(char *const *names, size_t n, const char **dup)
{
    char **tmp = malloc((n + 1) * sizeof *tmp);
    *dup = NULL;
    if (!tmp)
        return -1;
    if (n)
        memcpy(tmp, names, n * sizeof *tmp);
    qsort(tmp, n, sizeof *tmp, cmp_str_ptr);
    for (size_t i = 1; i < n && !*dup; i++)
        if (strcmp(tmp[i - 1], tmp[i]) == 0)
            *dup = tmp[i];
    free(tmp);
    return 0;
}

/* Metadata::validate of the reference: sorted by offset, the tensors must
 * be contiguous from 0, each exactly as long as its dtype and shape need,
 * and the last must end where the file ends. */
static int check_layout(st_file *f, const unsigned char *data, uint64_t data_len, coin_error *err)
{
    const char *dup = NULL, *dup_meta = NULL, *path = f->path;
    char sh[200], prev[SHOW_MAX];
    char **names = malloc((f->n_tensors + 1) * sizeof *names);
    for (size_t i = 0; names && i < f->n_tensors; i++)
        names[i] = f->tensors[i].name;
    int rc = !names || find_duplicate(names, f->n_tensors, &dup) ||
             find_duplicate(f->meta_keys, f->n_meta, &dup_meta);
    free(names);
    if (rc)
        return fail_at(err, COIN_ENOMEM, path, NULL, 0, "out of memory checking the header");
    if (dup)
        return fail_at(err, COIN_EFORMAT, path, dup, strlen(dup), "the name appears twice in the "
                       "header");
    if (dup_meta)
        return fail_at(err, COIN_EFORMAT, path, NULL, 0, "__metadata__ has the key '%s' twice",
                       show(prev, dup_meta, strlen(dup_meta)));
    if (f->n_tensors)
        qsort(f->tensors, f->n_tensors, sizeof *f->tensors, cmp_offsets);

    uint64_t pos = 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        st_tensor *t = &f->tensors[i];
        const char *nm = t->name, *dt = dtypes[t->dtype].name;
        size_t nl = strlen(nm);
        if (t->end < t->begin)
            return fail_at(err, COIN_EFORMAT, path, nm, nl, "data_offsets [%" PRIu64 ", %" PRIu64
                           "] end before they begin", t->begin, t->end);
        if (t->begin != pos && i == 0)
            return fail_at(err, COIN_EFORMAT, path, nm, nl, "data_offsets [%" PRIu64 ", %" PRIu64
                           "] leave a gap: the first tensor must begin at 0", t->begin, t->end);
        if (t->begin != pos)
            return fail_at(err, COIN_EFORMAT, path, nm, nl, "data_offsets [%" PRIu64 ", %" PRIu64
                           "] %s the previous tensor '%s', which ends at %" PRIu64, t->begin,
                           t->end, t->begin > pos ? "leave a gap after" : "overlap",
                           show(prev, t[-1].name, strlen(t[-1].name)), pos);
        pos = t->end;
        /* In the reference's order, so [2^32, 2^32, 0] overflows on the way
         * as it does there, though its product is 0. */
        uint64_t nel = 1, bits = (uint64_t)dtypes[t->dtype].bits;
        int ovf = 0;
        for (int d = 0; d < t->ndim && !ovf; d++) {
            uint64_t v = (uint64_t)t->shape[d];
            ovf = v && nel > UINT64_MAX / v;
            nel *= v;
        }
        fmt_shape(sh, sizeof sh, t->ndim, t->shape);
        if (ovf || nel > UINT64_MAX / bits)
            return fail_at(err, COIN_EFORMAT, path, nm, nl, "%s %s has more elements or bits than "
                           "fit in 64 bits", dt, sh);
        if (nel * bits % 8)
            return fail_at(err, COIN_EFORMAT, path, nm, nl, "%s %s is %" PRIu64 " bits, which is "
                           "not a whole number of bytes", dt, sh, nel * bits);
        if (t->end - t->begin != nel * bits / 8)
            return fail_at(err, COIN_EFORMAT, path, nm, nl, "data_offsets [%" PRIu64 ", %" PRIu64
                           "] hold %" PRIu64 " bytes but %s %s needs %" PRIu64, t->begin, t->end,
                           t->end - t->begin, dt, sh, nel * bits / 8);
        t->nelem = nel;
    }
    if (pos != data_len) {
        const char *ln = f->n_tensors ? f->tensors[f->n_tensors - 1].name : NULL;
        if (pos > data_len)
            return fail_at(err, COIN_EFORMAT, path, ln, ln ? strlen(ln) : 0, "data_offsets end at %"
                           PRIu64 ", past the end of the file (the data section holds %" PRIu64
                           " bytes)", pos, data_len);
        return fail_at(err, COIN_EFORMAT, path, ln, ln ? strlen(ln) : 0, "the tensors end at byte %"
                       PRIu64 " of the data section but %" PRIu64 " more bytes follow; safetensors "
                       "files may not carry trailing bytes", pos, data_len - pos);
    }
    for (size_t i = 0; i < f->n_tensors; i++)
        f->tensors[i].data = data + f->tensors[i].begin;
    return 0;
}

/* The reference's read_metadata, then check_layout, over a whole file image. */
static int load(st_file *f, const unsigned char *buf, size_t len, coin_error *err)
{
    uint64_t n = 0;
    if (len < 8)
        return fail_at(err, COIN_EFORMAT, f->path, NULL, 0, "the file is %s%zu bytes, too small "
                       "to hold a safetensors header", len ? "only " : "", len);
    for (int k = 7; k >= 0; k--)
        n = n << 8 | buf[k];
    /* Torch's zip and raw pickle checkpoints are a common mistake: name them. */
    if (n > ST_MAX_HEADER_SIZE && (memcmp(buf, "PK\3\4", 4) == 0 ||
                                   (buf[0] == 0x80 && buf[1] >= 2 && buf[1] <= 5)))
        return fail_at(err, COIN_EFORMAT, f->path, NULL, 0, "this is a PyTorch pickle checkpoint "
                       "(.ckpt/.pt), not safetensors; convert it to .safetensors first (for "
                       "example with safetensors.torch.save_file)");
    if (n > ST_MAX_HEADER_SIZE)
        return fail_at(err, COIN_EFORMAT, f->path, NULL, 0, "the header length %" PRIu64 " is "
                       "over the %llu-byte limit", n, ST_MAX_HEADER_SIZE);
    if (n > len - 8)
        return fail_at(err, COIN_EFORMAT, f->path, NULL, 0, "the header length %" PRIu64 " runs "
                       "past the end of the %zu-byte file", n, len);
    size_t bad = utf8_bad_at(buf + 8, (size_t)n);
    if (bad != n)
        return fail_at(err, COIN_EFORMAT, f->path, NULL, 0, "the header is not valid UTF-8 (byte "
                       "%zu of the header)", bad);
    jp p = {.s = buf + 8, .n = (size_t)n, .path = f->path, .err = err};
    int rc = read_header(&p, f);
    return rc ? rc : check_layout(f, buf + 8 + n, len - 8 - n, err);
}

static st_file *new_file(const char *path, coin_error *err)
{
    st_file *f = calloc(1, sizeof *f);
    if (f && !(f->path = strdup(path ? path : "(unnamed)"))) {
        free(f);
        f = NULL;
    }
    if (!f)
        coin_fail(err, COIN_ENOMEM, "%s: out of memory", path ? path : "(unnamed)");
    return f;
}

int st_open(st_file **out, const char *path, coin_error *err)
{
    st_file *f = *out = NULL;
    struct stat sb;
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc, e = errno;
    if (fd < 0 || fstat(fd, &sb) != 0)
        rc = (e = errno, fail_at(err, e == ENOENT ? COIN_ENOTFOUND : COIN_EIO, path, NULL, 0,
                                 "cannot open: %s", strerror(e)));
    else if (!S_ISREG(sb.st_mode))
        rc = fail_at(err, COIN_EINVAL, path, NULL, 0, "not a regular file");
    else if (!(f = new_file(path, err)))
        rc = COIN_ENOMEM;
    else if (sb.st_size < 8)
        rc = load(f, (const unsigned char *)"", (size_t)sb.st_size, err);   /* too small */
    else {
        /* Read-only and private: nothing done through the map reaches the
         * file.  A file truncated by someone else meanwhile still raises
         * SIGBUS; that is the price of not copying gigabytes. */
        void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            rc = fail_at(err, errno == ENOMEM ? COIN_ENOMEM : COIN_EIO, path, NULL, 0,
                         "cannot map the file: %s", strerror(errno));
        } else {
            f->map = m;
            f->map_len = (size_t)sb.st_size;
            rc = load(f, m, f->map_len, err);
        }
    }
    if (fd >= 0)
        close(fd);
    if (rc)
        st_close(f);
    else
        *out = f;
    return rc;
}

int st_parse(st_file **out, const void *buf, size_t len, const char *name, coin_error *err)
{
    st_file *f = *out = new_file(name, err);
    if (!f)
        return COIN_ENOMEM;
    int rc;
    if (len >= 8 && !(f->owned = malloc(len)))
        rc = fail_at(err, COIN_ENOMEM, f->path, NULL, 0, "out of memory copying %zu bytes", len);
    else
        rc = load(f, f->owned ? memcpy(f->owned, buf, len) : buf, len, err);
    if (rc) {
        st_close(f);
        *out = NULL;
    }
    return rc;
}

void st_release_pages(const st_file *f, const st_tensor *t)
{
    /* The mapping is read-only and file-backed: dropped pages come back from
     * the file (or the page cache) if a tensor is read again.  Only whole
     * pages inside the tensor's bytes are dropped, never a neighbour's. */
    if (!f || !f->map || !t)
        return;
    uintptr_t lo = (uintptr_t)t->data, hi = lo + (uintptr_t)(t->end - t->begin);
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    lo = (lo + page - 1) & ~(page - 1);
    hi &= ~(page - 1);
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

void st_close(st_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n_tensors; i++)
        free(f->tensors[i].name);
    for (size_t i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->tensors);
    free(f->meta_keys);
    free(f->meta_values);
    if (f->map)
        munmap(f->map, f->map_len);
    free(f->owned);
    free(f->path);
    free(f);
}

/* Linear: a checkpoint has about a thousand tensors and is looked up once. */
const st_tensor *st_find(const st_file *f, const char *name)
{
    for (size_t i = 0; f && name && i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

const char *st_meta(const st_file *f, const char *key)
{
    for (size_t i = 0; f && key && i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0)
            return f->meta_values[i];
    return NULL;
}

/* ---- conversions ---- */

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float st_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = h >> 10 & 0x1F, man = h & 0x3FF;
    if (exp == 0)   /* zero or subnormal: man * 2^-24 is exact in a float */
        return u2f(sign | f2u((float)man * 0x1p-24f));
    if (exp == 31)  /* inf, or nan with its payload kept */
        return u2f(sign | 0x7F800000 | man << 13);
    return u2f(sign | (exp + 112) << 23 | man << 13);
}

float st_bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t st_f32_to_f16(float f)
{
    uint32_t x = f2u(f), sign = x >> 16 & 0x8000;
    x &= 0x7FFFFFFF;
    if (x > 0x7F800000)     /* nan: keep the top payload bits, force quiet */
        return (uint16_t)(sign | 0x7E00 | (x >> 13 & 0x3FF));
    if (x >= 0x477FF000)    /* 65520 and up round to inf (65504 is odd) */
        return (uint16_t)(sign | 0x7C00);
    if (x >= 0x38800000)    /* normal: rebias, round to nearest even */
        return (uint16_t)(sign | (x - 0x38000000 + 0xFFF + (x >> 13 & 1)) >> 13);
    /* Subnormal or zero in f16: units of 2^-24, so shift the 24-bit
     * significand right by 126 - exp and round to nearest even. */
    uint32_t e = x >> 23;
    if (e < 102)            /* below 2^-25: rounds to zero */
        return (uint16_t)sign;
    uint32_t m = (x & 0x7FFFFF) | 0x800000, s = 126 - e;
    uint32_t q = m >> s, rem = m & ((1u << s) - 1), half = 1u << (s - 1);
    if (rem > half || (rem == half && (q & 1)))
        q++;
    return (uint16_t)(sign | q);
}

uint16_t st_f32_to_bf16(float f)
{
    uint32_t x = f2u(f);
    if ((x & 0x7FFFFFFF) > 0x7F800000)
        return (uint16_t)(x >> 16 | 0x40);  /* quiet, so a low payload stays nan */
    return (uint16_t)((x + 0x7FFF + (x >> 16 & 1)) >> 16);
}

/* Elements [lo, hi) of src, whose dtype is one of the four float types. */
static void convert_range(st_dtype d, const unsigned char *src, float *dst, uint64_t lo, uint64_t hi)
{
    for (uint64_t i = lo; i < hi; i++) {
        /* memcpy, since headers of any length leave data unaligned */
        if (d == ST_F32) {
            memcpy(&dst[i], src + 4 * i, 4);
        } else if (d == ST_F64) {
            double v;
            memcpy(&v, src + 8 * i, 8);
            dst[i] = (float)v;
        } else {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = d == ST_F16 ? st_f16_to_f32(h) : st_bf16_to_f32(h);
        }
    }
}

int st_tensor_to_f32(const st_file *f, const st_tensor *t, float *dst, uint64_t n, coin_error *err)
{
    const char *path = f ? f->path : "(tensor)";
    if (n != t->nelem)
        return fail_at(err, COIN_EINVAL, path, t->name, strlen(t->name), "asked to convert %"
                       PRIu64 " elements but the tensor holds %" PRIu64, n, t->nelem);
    st_dtype d = t->dtype;
    if (d != ST_F32 && d != ST_F16 && d != ST_BF16 && d != ST_F64)
        return fail_at(err, COIN_EUNSUPPORTED, path, t->name, strlen(t->name), "dtype %s cannot "
                       "be converted to F32 (only F32, F16, BF16 and F64 can)", st_dtype_name(d));
    const uint64_t chunk = 1 << 16;
    int64_t nchunks = (int64_t)((n + chunk - 1) / chunk);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (nchunks > 1)
#endif
    for (int64_t c = 0; c < nchunks; c++) {
        uint64_t lo = (uint64_t)c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        convert_range(d, t->data, dst, lo, hi);
    }
    return 0;
}

/* ---- writer ---- */

typedef struct wtensor {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;
    void *data;
} wtensor;

typedef struct wmeta { char *key, *value; } wmeta;

struct st_writer {
    wtensor *t;
    wmeta *m;
    size_t n, cap, nm, mcap;
};

st_writer *st_writer_new(void) { return calloc(1, sizeof(st_writer)); }

void st_writer_free(st_writer *w)
{
    for (size_t i = 0; w && i < w->n; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    for (size_t i = 0; w && i < w->nm; i++) {
        free(w->m[i].key);
        free(w->m[i].value);
    }
    if (w) {
        free(w->t);
        free(w->m);
        free(w);
    }
}

static int utf8_ok(const char *s) { return utf8_bad_at((const unsigned char *)s, strlen(s)) == strlen(s); }

int st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim,
                  const int64_t *shape, const void *data, coin_error *err)
{
    const char *who = "st_writer_add";
    if (!w || !name)
        return fail_at(err, COIN_EINVAL, who, NULL, 0, "no writer or no name");
    size_t nl = strlen(name);
    if ((unsigned)dtype >= ST_DTYPE_COUNT || ndim < 0 || ndim > ST_MAX_DIMS || (ndim && !shape))
        return fail_at(err, COIN_EINVAL, who, name, nl, "bad dtype %d or %d dimensions (at most "
                       "%d)", (int)dtype, ndim, ST_MAX_DIMS);
    if (!utf8_ok(name) || strcmp(name, "__metadata__") == 0)
        return fail_at(err, COIN_EINVAL, who, name, nl, "a name must be UTF-8 and not __metadata__");
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return fail_at(err, COIN_EINVAL, who, name, nl, "added twice");
    uint64_t nel = 1, bits = (uint64_t)dtypes[dtype].bits;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || (shape[d] && nel > UINT64_MAX / (uint64_t)shape[d]))
            return fail_at(err, COIN_EINVAL, who, name, nl, "dimension %d is %" PRId64 ", negative "
                           "or too large", d, shape[d]);
        nel *= (uint64_t)shape[d];
    }
    if (nel > UINT64_MAX / bits || nel * bits % 8 || nel * bits / 8 > SIZE_MAX)
        return fail_at(err, COIN_EINVAL, who, name, nl, "the shape is too large, or not a whole "
                       "number of bytes of %s", dtypes[dtype].name);
    uint64_t nbytes = nel * bits / 8;
    if (nbytes && !data)
        return fail_at(err, COIN_EINVAL, who, name, nl, "no data");
    wtensor t = {.name = strdup(name), .dtype = dtype, .ndim = ndim, .nbytes = nbytes,
                 .data = malloc(nbytes ? (size_t)nbytes : 1)};
    if (!t.name || !t.data || grow((void **)&w->t, &w->cap, w->n, sizeof t)) {
        free(t.name);
        free(t.data);
        return fail_at(err, COIN_ENOMEM, who, name, nl, "out of memory copying %" PRIu64
                       " bytes", nbytes);
    }
    if (nbytes)
        memcpy(t.data, data, (size_t)nbytes);
    if (ndim)
        memcpy(t.shape, shape, (size_t)ndim * sizeof *shape);
    w->t[w->n++] = t;
    return 0;
}

int st_writer_meta(st_writer *w, const char *key, const char *value, coin_error *err)
{
    const char *who = "st_writer_meta";
    char s[SHOW_MAX];
    if (!w || !key || !value)
        return fail_at(err, COIN_EINVAL, who, NULL, 0, "no writer, key or value");
    show(s, key, strlen(key));
    if (!utf8_ok(key) || !utf8_ok(value))
        return fail_at(err, COIN_EINVAL, who, NULL, 0, "metadata '%s' is not UTF-8", s);
    for (size_t i = 0; i < w->nm; i++)
        if (strcmp(w->m[i].key, key) == 0)
            return fail_at(err, COIN_EINVAL, who, NULL, 0, "metadata key '%s' added twice", s);
    wmeta m = {strdup(key), strdup(value)};
    if (!m.key || !m.value || grow((void **)&w->m, &w->mcap, w->nm, sizeof m)) {
        free(m.key);
        free(m.value);
        return fail_at(err, COIN_ENOMEM, who, NULL, 0, "out of memory");
    }
    w->m[w->nm++] = m;
    return 0;
}

/* A JSON string escaped as serde_json escapes it, so that headers come out
 * byte for byte as the reference writer's. */
static void json_str(FILE *fp, const char *s)
{
    static const char ctl[] = "\b\f\n\r\t", letter[] = "bfnrt";
    fputc('"', fp);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(fp, "\\%c", c);
        else if (c < 0x20 && strchr(ctl, c))
            fprintf(fp, "\\%c", letter[strchr(ctl, c) - ctl]);
        else if (c < 0x20)
            fprintf(fp, "\\u%04x", c);
        else
            fputc(c, fp);
    }
    fputc('"', fp);
}

static int cmp_layout(const void *a, const void *b)
{
    const wtensor *x = *(wtensor *const *)a, *y = *(wtensor *const *)b;
    if (x->dtype != y->dtype)
        return x->dtype > y->dtype ? -1 : 1;    /* widest alignment first */
    return strcmp(x->name, y->name);
}

static int cmp_meta(const void *a, const void *b)
{
    return strcmp(((const wmeta *)a)->key, ((const wmeta *)b)->key);
}

/* The header text, padded with spaces to a multiple of 8 so the data starts
 * 8-aligned; order is the layout (dtype descending, then name). */
static char *header_json(st_writer *w, wtensor **order, size_t *len)
{
    char *h = NULL;
    FILE *fp = open_memstream(&h, len);
    if (!fp)
        return NULL;
    if (w->nm)
        qsort(w->m, w->nm, sizeof *w->m, cmp_meta);     /* deterministic bytes */
    fputc('{', fp);
    if (w->nm) {
        fputs("\"__metadata__\":{", fp);
        for (size_t i = 0; i < w->nm; i++) {
            fputs(i ? "," : "", fp);
            json_str(fp, w->m[i].key);
            fputc(':', fp);
            json_str(fp, w->m[i].value);
        }
        fputs(w->n ? "}," : "}", fp);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n; i++) {
        const wtensor *t = order[i];
        fputs(i ? "," : "", fp);
        json_str(fp, t->name);
        fprintf(fp, ":{\"dtype\":\"%s\",\"shape\":[", dtypes[t->dtype].name);
        for (int d = 0; d < t->ndim; d++)
            fprintf(fp, "%s%" PRId64, d ? "," : "", t->shape[d]);
        fprintf(fp, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + t->nbytes);
        off += t->nbytes;
    }
    fputc('}', fp);
    long n = ftell(fp);
    fprintf(fp, "%*s", (int)((8 - n % 8) % 8), "");
    if (ferror(fp) | fclose(fp)) {
        free(h);
        return NULL;
    }
    return h;
}

static int write_all(int fd, const void *p, uint64_t len)
{
    if (fileio_test_enospc((size_t)len))
        return -1;
    for (const char *c = p; len;) {
        ssize_t k = write(fd, c, len < (1u << 30) ? (size_t)len : (1u << 30));
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            errno = k ? errno : EIO;
            return -1;
        }
        c += k;
        len -= (uint64_t)k;
    }
    return 0;
}

int st_writer_save(st_writer *w, const char *path, coin_error *err)
{
    if (!w || !path)
        return fail_at(err, COIN_EINVAL, "st_writer_save", NULL, 0, "no writer or no path");
    wtensor **order = malloc((w->n + 1) * sizeof *order);
    char *tmp = malloc(strlen(path) + 32), *dir = strdup(path), *hdr = NULL;
    size_t hlen = 0;
    int rc = COIN_ENOMEM, stage = 0, fd;
    for (size_t i = 0; order && i < w->n; i++)
        order[i] = &w->t[i];
    if (order)
        qsort(order, w->n, sizeof *order, cmp_layout);
    if (!order || !tmp || !dir || !(hdr = header_json(w, order, &hlen))) {
        rc = fail_at(err, COIN_ENOMEM, path, NULL, 0, "out of memory preparing the file");
        goto out;
    }
    /* Atomic: a temporary beside the target, made durable, then renamed
     * over it, so a crash leaves the old file or the new, never half. */
    sprintf(tmp, "%s.tmp.%ld", path, (long)getpid());
    unsigned char len8[8];
    for (int k = 0; k < 8; k++)
        len8[k] = (unsigned char)((uint64_t)hlen >> 8 * k);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int ok = fd >= 0 && ++stage && !write_all(fd, len8, 8) && !write_all(fd, hdr, hlen);
    for (size_t i = 0; ok && i < w->n; i++)
        ok = !write_all(fd, order[i]->data, order[i]->nbytes);
    ok = ok && ++stage && !fsync(fd);
    if (fd >= 0 && close(fd) != 0 && ok)
        ok = 0;
    ok = ok && ++stage && !rename(tmp, path);
    if (!ok) {
        static const char *const what[] = {"create", "write", "flush", "rename into place"};
        int e = errno;
        unlink(tmp);
        rc = fail_at(err, COIN_EIO, path, NULL, 0, "cannot %s %s: %s%s", what[stage], tmp,
                     e == ENOSPC || e == EDQUOT ? "the disk is full: " : "", strerror(e));
        goto out;
    }
    /* Make the rename durable too.  Some filesystems cannot fsync a
     * directory (EINVAL); the file is in place regardless. */
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[slash == dir] = '\0';         /* "/x" keeps its "/" */
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    rc = dfd >= 0 && fsync(dfd) != 0 && errno != EINVAL ?
         fail_at(err, COIN_EIO, path, NULL, 0, "written, but its directory could not be synced: "
                 "%s", strerror(errno)) : 0;
    if (dfd >= 0)
        close(dfd);
out:
    free(order);
    free(tmp);
    free(dir);
    free(hdr);
    return rc;
}
