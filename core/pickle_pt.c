/*
 * pickle_pt.c - a restricted reader of torch.save embeddings (pickle_pt.h).
 *
 * Two layers, both written for hostile input.  The zip layer parses the end
 * records and the central directory itself (zip64 included, since torch's
 * miniz writer emits a zip64 end record even for tiny files), checks that
 * every entry lies inside the file, before the central directory and apart
 * from the others, refuses duplicate or path-like names, and hands out an
 * entry's bytes only after its CRC matched (deflated entries are inflated
 * into a buffer of their declared size, capped).  The pickle layer is a
 * stack machine for the opcodes torch.save emits; its values are plain data
 * (ints, strings, tuples, lists, dicts, sets, storages, tensors) held in one
 * array and referenced by index, so shared (memoized) and even cyclic
 * structures cost nothing to free and cannot recurse.  "Calling" a name
 * means one of a few built-in constructions, chosen from a whitelist by
 * name; nothing in the file is ever executed.  Every count and size is
 * bounded (pickle_pt.h) and every offset computed with checked arithmetic.
 */
#include "pickle_pt.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "safetensors.h"    /* the half-precision converters */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "torch.save data is little-endian and coin reads it in place"
#endif

#define NOREF UINT32_MAX
#define MAX32 0xFFFFFFFFu

/* ---- messages ---- */

/* Names come from the file and end up on a terminal: control bytes (C0 and
 * C1) and bytes that are not UTF-8 are shown as \xNN, long names are cut. */
#define SHOW_MAX 100
static const char *show(char out[SHOW_MAX], const unsigned char *s, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        if (o > SHOW_MAX - 16) {
            memcpy(out + o, "...", 4);
            return out;
        }
        unsigned c = s[i];
        size_t k = c >= 0xC2 && c <= 0xDF ? 1 : c >= 0xE0 && c <= 0xEF ? 2 :
                   c >= 0xF0 && c <= 0xF4 ? 3 : 0;
        int ok = c >= 0x20 && c != 0x7f && (c < 0x80 || (k && len - i > k));
        for (size_t j = 1; ok && j <= k; j++)
            ok = (s[i + j] & 0xC0) == 0x80;
        if (ok && c == 0xC2 && s[i + 1] < 0xA0)
            ok = 0;                         /* U+0080..U+009F: C1 controls */
        if (!ok) {
            o += (size_t)snprintf(out + o, SHOW_MAX - o, "\\x%02x", c);
            i++;
        } else {
            memcpy(out + o, s + i, k + 1);
            o += k + 1;
            i += k + 1;
        }
    }
    out[o] = '\0';
    return out;
}

/* Strict UTF-8 (no overlongs, surrogates or values above U+10FFFF). */
static int utf8_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], lo = 0x80, hi = 0xBF;
        size_t need;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else
            return 0;
        if (n - i <= need || s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
        i += need + 1;
    }
    return 1;
}

/* ---- the reader's state ---- */

typedef struct zentry {
    const unsigned char *name;
    size_t name_len;
    uint16_t method, flags;
    uint32_t crc;
    uint64_t lh_off, data_off, csize, usize;
    const unsigned char *data;  /* set once read and checked */
    unsigned char *owned;       /* inflated bytes */
} zentry;

enum { K_NONE, K_BOOL, K_INT, K_STR, K_TUPLE, K_LIST, K_DICT, K_SET, K_GLOBAL,
       K_STORAGE, K_TENSOR, K_OBJECT };

/* One pickle value.  Containers own their items array (dicts hold key,
 * value pairs); strings point into data.pkl. */
typedef struct pv {
    uint8_t kind;
    uint8_t sub;                /* K_GLOBAL, K_STORAGE, K_OBJECT: a G_ id */
    uint32_t n, cap;            /* containers: items (dict: pairs) */
    union {
        int64_t i;
        struct { const unsigned char *p; size_t len; } s;
        uint32_t *items;
        struct { const unsigned char *data; uint64_t numel; } st;
        struct {
            uint32_t storage;
            int ndim;
            int64_t off, size[PT_MAX_DIMS], stride[PT_MAX_DIMS];
        } t;
        uint32_t state;         /* K_OBJECT: its BUILD dict, or NOREF */
    } u;
} pv;

typedef struct pt {
    const char *path;
    const unsigned char *buf;
    uint64_t len;
    coin_error *err;
    zentry *e;
    size_t ne;
    const unsigned char *prefix;    /* "<archive>/" */
    size_t prefix_len;
    /* the pickle machine */
    const unsigned char *pk;
    size_t pk_len, pos, op_at;
    unsigned op;
    pv *v;
    size_t nv, vcap;
    uint32_t stack[PT_MAX_STACK];
    size_t sp;
    size_t marks[PT_MAX_MARKS];
    size_t nmarks;
    uint32_t *memo;
    size_t memo_cap, memo_count;
    size_t all_items;           /* against PT_MAX_ALL_ITEMS */
} pt;

static uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const unsigned char *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

/* "<path>: <problem>" */
__attribute__((format(printf, 3, 4)))
static int zfail(pt *r, int code, const char *fmt, ...)
{
    char problem[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(problem, sizeof problem, fmt, ap);
    va_end(ap);
    return coin_fail(r->err, code, "%s: %s", r->path, problem);
}

static const char *ename(const zentry *e, char buf[SHOW_MAX])
{
    return show(buf, e->name, e->name_len);
}

/* ---- the zip container ---- */

static const char LEGACY_HELP[] =
    "re-save it in the current format where torch is installed: python3 -c \"import sys,torch; "
    "torch.save(torch.load(sys.argv[1],map_location='cpu',weights_only=True),sys.argv[2])\" "
    "IN.pt OUT.pt";

/* Says what the file is when it is not a zip archive. */
static int not_zip(pt *r)
{
    const unsigned char *b = r->buf;
    if (r->len >= 2 && b[0] == 0x80 && b[1] <= 5)
        return zfail(r, COIN_EUNSUPPORTED, "this is a pickle without a zip container, the legacy "
                     "torch.save format (torch before 1.6, or _use_new_zipfile_serialization=False), "
                     "which coin does not read; %s", LEGACY_HELP);
    if (r->len >= 262 && memcmp(b + 257, "ustar", 5) == 0)
        return zfail(r, COIN_EUNSUPPORTED, "this is a tar archive, the oldest torch.save format, "
                     "which coin does not read; %s", LEGACY_HELP);
    if (r->len >= 10 && b[8] == '{' && rd64(b) <= r->len - 8)
        return zfail(r, COIN_EFORMAT, "this looks like a safetensors file, not a torch.save "
                     "file; rename it to .safetensors");
    char hex[64] = "";
    for (size_t i = 0, o = 0; i < 4 && i < r->len; i++)
        o += (size_t)snprintf(hex + o, sizeof hex - o, "%s%02x", i ? " " : "", b[i]);
    if (r->len == 0)
        return zfail(r, COIN_EFORMAT, "the file is empty; expected a torch.save zip archive");
    return zfail(r, COIN_EFORMAT, "not a torch.save file: expected a zip archive (beginning with "
                 "50 4b 03 04, \"PK\\3\\4\"), found %s", hex);
}

/* The zip64 end records: the locator just before the classic end record
 * points at the zip64 record, which must end where the locator begins. */
static int read_zip64_end(pt *r, uint64_t eocd, uint64_t *n, uint64_t *cd_size,
                          uint64_t *cd_off, uint64_t *cd_end)
{
    const unsigned char *b = r->buf;
    uint64_t loc = eocd - 20;
    if (rd32(b + loc + 4) != 0 || rd32(b + loc + 16) != 1)
        return zfail(r, COIN_EUNSUPPORTED, "the zip archive spans several disks, which coin "
                     "does not read");
    uint64_t z = rd64(b + loc + 8);
    if (z > loc || loc - z < 56 || rd32(b + z) != 0x06064b50)
        return zfail(r, COIN_EFORMAT, "the zip64 end record is missing at byte %" PRIu64
                     " (its locator points there)", z);
    uint64_t rec = rd64(b + z + 4);
    if (rec != loc - z - 12)
        return zfail(r, COIN_EFORMAT, "the zip64 end record says it is %" PRIu64 " bytes long, "
                     "but %" PRIu64 " bytes lie between it and its locator", rec, loc - z - 12);
    if (rd32(b + z + 16) != 0 || rd32(b + z + 20) != 0 || rd64(b + z + 24) != rd64(b + z + 32))
        return zfail(r, COIN_EUNSUPPORTED, "the zip archive spans several disks, which coin "
                     "does not read");
    uint64_t n64 = rd64(b + z + 32), size64 = rd64(b + z + 40), off64 = rd64(b + z + 48);
    /* The classic record's fields must agree unless they say "see zip64". */
    if ((*n != 0xFFFF && *n != n64) || (*cd_size != MAX32 && *cd_size != size64) ||
        (*cd_off != MAX32 && *cd_off != off64))
        return zfail(r, COIN_EFORMAT, "the zip end record and the zip64 end record disagree "
                     "about the central directory");
    *n = n64;
    *cd_size = size64;
    *cd_off = off64;
    *cd_end = z;
    return 0;
}

/* Reads the zip64 extra field of a central entry: the 64-bit values of the
 * fields whose 32-bit slots hold the "see zip64" sentinel, in spec order. */
static int zip64_extra(pt *r, zentry *e, const unsigned char *x, size_t xl, uint32_t *disk)
{
    char nb[SHOW_MAX];
    int seen = 0;
    for (size_t i = 0; i < xl;) {
        if (xl - i < 4)
            return zfail(r, COIN_EFORMAT, "zip entry '%s' has a truncated extra field",
                         ename(e, nb));
        unsigned id = rd16(x + i), sz = rd16(x + i + 2);
        if (sz > xl - i - 4)
            return zfail(r, COIN_EFORMAT, "zip entry '%s' has an extra field that runs past "
                         "its header", ename(e, nb));
        if (id == 1) {
            const unsigned char *f = x + i + 4;
            size_t need = (e->usize == MAX32) * 8 + (e->csize == MAX32) * 8 +
                          (e->lh_off == MAX32) * 8 + (*disk == 0xFFFF) * 4;
            if (seen++ || sz < need)
                return zfail(r, COIN_EFORMAT, "zip entry '%s' has a %s zip64 extra field",
                             ename(e, nb), seen > 1 ? "second" : "short");
            if (e->usize == MAX32) { e->usize = rd64(f); f += 8; }
            if (e->csize == MAX32) { e->csize = rd64(f); f += 8; }
            if (e->lh_off == MAX32) { e->lh_off = rd64(f); f += 8; }
            if (*disk == 0xFFFF) *disk = rd32(f);
        }
        i += 4 + sz;
    }
    if (!seen && (e->usize == MAX32 || e->csize == MAX32 || e->lh_off == MAX32 || *disk == 0xFFFF))
        return zfail(r, COIN_EFORMAT, "zip entry '%s' needs a zip64 extra field and has none",
                     ename(e, nb));
    return 0;
}

/* Names are relative paths inside one top folder, "<archive>/...": coin
 * never writes them to disk, but a name that could climb out of a folder
 * or hide control bytes has no business in a torch file. */
static int check_name(pt *r, zentry *e)
{
    char nb[SHOW_MAX];
    const unsigned char *s = e->name;
    size_t n = e->name_len;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] == 0x7f || s[i] == '\\')
            return zfail(r, COIN_EFORMAT, "zip entry '%s' has a control character or a "
                         "backslash in its name", ename(e, nb));
    for (size_t i = 0; i <= n;) {
        size_t j = i;
        while (j < n && s[j] != '/')
            j++;
        if (j == i || (j - i == 1 && s[i] == '.') || (j - i == 2 && s[i] == '.' && s[i + 1] == '.'))
            return zfail(r, COIN_EFORMAT, "zip entry '%s' is not a plain relative path (it has "
                         "an empty, '.' or '..' component, or begins with '/')", ename(e, nb));
        i = j + 1;
    }
    const unsigned char *slash = memchr(s, '/', n);
    if (!slash)
        return zfail(r, COIN_EFORMAT, "zip entry '%s' is not inside a folder; torch.save puts "
                     "every entry under '<archive>/'", ename(e, nb));
    size_t pl = (size_t)(slash - s) + 1;
    if (!r->prefix) {
        r->prefix = s;
        r->prefix_len = pl;
    } else if (pl != r->prefix_len || memcmp(s, r->prefix, pl) != 0) {
        char pb[SHOW_MAX];
        return zfail(r, COIN_EFORMAT, "zip entry '%s' is outside the archive folder '%s'; "
                     "torch.save puts every entry in one folder", ename(e, nb),
                     show(pb, r->prefix, r->prefix_len));
    }
    return 0;
}

static int cmp_name(const void *a, const void *b)
{
    const zentry *x = *(zentry *const *)a, *y = *(zentry *const *)b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

static int cmp_offset(const void *a, const void *b)
{
    const zentry *x = *(zentry *const *)a, *y = *(zentry *const *)b;
    return (x->lh_off > y->lh_off) - (x->lh_off < y->lh_off);
}

/* The local header of e: same name and method as the central entry, and
 * the data after it ends before the central directory. */
static int read_local(pt *r, zentry *e, uint64_t cd_off)
{
    char nb[SHOW_MAX];
    const unsigned char *b = r->buf;
    if (e->lh_off > cd_off || cd_off - e->lh_off < 30 || rd32(b + e->lh_off) != 0x04034b50)
        return zfail(r, COIN_EFORMAT, "zip entry '%s': no local header at byte %" PRIu64
                     " (expected one before the central directory at byte %" PRIu64 ")",
                     ename(e, nb), e->lh_off, cd_off);
    const unsigned char *h = b + e->lh_off;
    uint64_t nl = rd16(h + 26), xl = rd16(h + 28), data = e->lh_off + 30 + nl + xl;
    if (data > cd_off)
        return zfail(r, COIN_EFORMAT, "zip entry '%s': its local header runs into the central "
                     "directory", ename(e, nb));
    if (nl != e->name_len || memcmp(h + 30, e->name, nl) != 0 || rd16(h + 8) != e->method)
        return zfail(r, COIN_EFORMAT, "zip entry '%s': the local header names another file or "
                     "method than the central directory", ename(e, nb));
    /* Without a data descriptor (flag bit 3) the local sizes are real. */
    if (!(rd16(h + 6) & 8) && (rd32(h + 14) != e->crc ||
                               (rd32(h + 18) != MAX32 && rd32(h + 18) != e->csize) ||
                               (rd32(h + 22) != MAX32 && rd32(h + 22) != e->usize)))
        return zfail(r, COIN_EFORMAT, "zip entry '%s': the local header's CRC or sizes differ "
                     "from the central directory's", ename(e, nb));
    if (e->csize > cd_off - data)
        return zfail(r, COIN_EFORMAT, "zip entry '%s' claims %" PRIu64 " bytes of data, but "
                     "only %" PRIu64 " lie between its header and the central directory",
                     ename(e, nb), e->csize, cd_off - data);
    e->data_off = data;
    return 0;
}

static int zip_open(pt *r)
{
    const unsigned char *b = r->buf;
    if (r->len < 4 || rd32(b) != 0x04034b50)
        return not_zip(r);
    if (r->len < 22)
        return zfail(r, COIN_EFORMAT, "the zip archive is truncated: it is %" PRIu64 " bytes, "
                     "too short to hold an end record", r->len);
    /* The end record is the last 22 bytes plus a comment of its stated
     * length; search back at most the longest comment. */
    uint64_t eocd = r->len - 22, lowest = r->len > 22 + 65535 ? r->len - 22 - 65535 : 0;
    while (!(rd32(b + eocd) == 0x06054b50 && rd16(b + eocd + 20) == r->len - eocd - 22)) {
        if (eocd == lowest)
            return zfail(r, COIN_EFORMAT, "the zip archive has no end record (the file is "
                         "truncated or not a zip archive)");
        eocd--;
    }
    if (rd16(b + eocd + 4) != 0 || rd16(b + eocd + 6) != 0 ||
        rd16(b + eocd + 8) != rd16(b + eocd + 10))
        return zfail(r, COIN_EUNSUPPORTED, "the zip archive spans several disks, which coin "
                     "does not read");
    uint64_t n = rd16(b + eocd + 10), cd_size = rd32(b + eocd + 12), cd_off = rd32(b + eocd + 16);
    uint64_t cd_end = eocd;
    int rc;
    if (eocd >= 20 && rd32(b + eocd - 20) == 0x07064b50) {
        if ((rc = read_zip64_end(r, eocd, &n, &cd_size, &cd_off, &cd_end)))
            return rc;
    } else if (n == 0xFFFF || cd_size == MAX32 || cd_off == MAX32) {
        return zfail(r, COIN_EFORMAT, "the zip end record refers to a zip64 record that is "
                     "missing");
    }
    if (cd_off > cd_end || cd_end - cd_off != cd_size)
        return zfail(r, COIN_EFORMAT, "the zip central directory (%" PRIu64 " bytes at byte %"
                     PRIu64 ") does not end where the end record begins (byte %" PRIu64 ")",
                     cd_size, cd_off, cd_end);
    if (n == 0 || n > PT_MAX_ENTRIES || n > cd_size / 46)
        return zfail(r, COIN_EFORMAT, "the zip archive lists %" PRIu64 " entries in a central "
                     "directory of %" PRIu64 " bytes; expected 1 to %d", n, cd_size, PT_MAX_ENTRIES);
    if (!(r->e = calloc((size_t)n, sizeof *r->e)))
        return zfail(r, COIN_ENOMEM, "out of memory reading the zip directory");
    uint64_t p = cd_off;
    for (uint64_t k = 0; k < n; k++) {
        zentry *e = &r->e[r->ne];
        char nb[SHOW_MAX];
        if (cd_end - p < 46 || rd32(b + p) != 0x02014b50)
            return zfail(r, COIN_EFORMAT, "zip central directory entry %" PRIu64 " of %" PRIu64
                         " is missing or damaged at byte %" PRIu64, k + 1, n, p);
        const unsigned char *c = b + p;
        uint64_t nl = rd16(c + 28), xl = rd16(c + 30), cl = rd16(c + 32);
        if (cd_end - p - 46 < nl + xl + cl)
            return zfail(r, COIN_EFORMAT, "zip central directory entry %" PRIu64 " runs past "
                         "the directory", k + 1);
        e->name = c + 46;
        e->name_len = (size_t)nl;
        e->flags = rd16(c + 8);
        e->method = rd16(c + 10);
        e->crc = rd32(c + 16);
        e->csize = rd32(c + 20);
        e->usize = rd32(c + 24);
        e->lh_off = rd32(c + 42);
        uint32_t disk = rd16(c + 34);
        r->ne++;
        if ((rc = zip64_extra(r, e, c + 46 + nl, (size_t)xl, &disk)))
            return rc;
        if (disk != 0)
            return zfail(r, COIN_EUNSUPPORTED, "zip entry '%s' is on another disk; coin reads "
                         "single-file archives", ename(e, nb));
        if (e->flags & (1 | 0x40 | 0x2000))
            return zfail(r, COIN_EUNSUPPORTED, "zip entry '%s' is encrypted", ename(e, nb));
        if (e->method != 0 && e->method != 8)
            return zfail(r, COIN_EUNSUPPORTED, "zip entry '%s' uses compression method %u; "
                         "expected 0 (stored, as torch.save writes) or 8 (deflate)",
                         ename(e, nb), e->method);
        if (e->method == 0 && e->csize != e->usize)
            return zfail(r, COIN_EFORMAT, "zip entry '%s' is stored but its sizes differ (%"
                         PRIu64 " and %" PRIu64 " bytes)", ename(e, nb), e->csize, e->usize);
        if ((rc = check_name(r, e)) || (rc = read_local(r, e, cd_off)))
            return rc;
        p += 46 + nl + xl + cl;
    }
    if (p != cd_end)
        return zfail(r, COIN_EFORMAT, "the zip central directory has %" PRIu64 " bytes after "
                     "its last entry", cd_end - p);
    /* No two entries with one name (which would a reader pick?) and no two
     * sharing bytes (the overlapping-entries zip bomb). */
    zentry **ord = malloc(r->ne * sizeof *ord);
    if (!ord)
        return zfail(r, COIN_ENOMEM, "out of memory reading the zip directory");
    for (size_t i = 0; i < r->ne; i++)
        ord[i] = &r->e[i];
    qsort(ord, r->ne, sizeof *ord, cmp_name);
    rc = 0;
    for (size_t i = 1; i < r->ne && !rc; i++)
        if (cmp_name(&ord[i - 1], &ord[i]) == 0) {
            char nb[SHOW_MAX];
            rc = zfail(r, COIN_EFORMAT, "the zip archive has two entries named '%s'",
                       ename(ord[i], nb));
        }
    qsort(ord, r->ne, sizeof *ord, cmp_offset);
    for (size_t i = 1; i < r->ne && !rc; i++)
        if (ord[i - 1]->data_off + ord[i - 1]->csize > ord[i]->lh_off) {
            char n1[SHOW_MAX], n2[SHOW_MAX];
            rc = zfail(r, COIN_EFORMAT, "zip entries '%s' and '%s' overlap in the file",
                       ename(ord[i - 1], n1), ename(ord[i], n2));
        }
    free(ord);
    return rc;
}

/* The entry "<archive>/<rest>", or NULL. */
static zentry *find_entry(pt *r, const char *rest, size_t rest_len)
{
    for (size_t i = 0; i < r->ne; i++) {
        zentry *e = &r->e[i];
        if (e->name_len == r->prefix_len + rest_len &&
            memcmp(e->name + r->prefix_len, rest, rest_len) == 0)
            return e;
    }
    return NULL;
}

static uint32_t crc_of(const unsigned char *p, uint64_t n)
{
    uLong c = crc32(0L, Z_NULL, 0);
    while (n) {
        uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
        c = crc32(c, p, k);
        p += k;
        n -= k;
    }
    return (uint32_t)c;
}

/* The bytes of e, inflated if need be, once their CRC matched. */
static int entry_read(pt *r, zentry *e, const unsigned char **out)
{
    char nb[SHOW_MAX];
    if (e->data) {
        *out = e->data;
        return 0;
    }
    const unsigned char *raw = r->buf + e->data_off, *d = raw;
    if (e->method == 8) {
        /* A tiny deflate stream can claim gigabytes: the declared size is
         * capped, and the stream must produce exactly that. */
        if (e->usize > PT_MAX_INFLATED || e->csize > UINT32_MAX)
            return zfail(r, COIN_EUNSUPPORTED, "zip entry '%s' is compressed and would unpack "
                         "to %" PRIu64 " bytes; coin unpacks at most %u (torch.save stores "
                         "entries uncompressed; re-save the file with torch)", ename(e, nb),
                         e->usize, PT_MAX_INFLATED);
        if (!(e->owned = malloc(e->usize ? (size_t)e->usize : 1)))
            return zfail(r, COIN_ENOMEM, "out of memory unpacking zip entry '%s'", ename(e, nb));
        z_stream z;
        memset(&z, 0, sizeof z);
        if (inflateInit2(&z, -15) != Z_OK)
            return zfail(r, COIN_ENOMEM, "out of memory unpacking zip entry '%s'", ename(e, nb));
        z.next_in = (Bytef *)raw;
        z.avail_in = (uInt)e->csize;
        z.next_out = e->owned;
        z.avail_out = (uInt)e->usize;
        int zr = inflate(&z, Z_FINISH);
        const char *why = zr == Z_DATA_ERROR ? "the deflate stream is damaged" :
            zr != Z_STREAM_END ? (z.avail_out == 0 ? "it unpacks to more" : "it is truncated") :
            z.total_out != e->usize ? "it unpacks to less" :
            z.avail_in != 0 ? "bytes follow the deflate stream" : NULL;
        inflateEnd(&z);
        if (why)
            return zfail(r, COIN_EFORMAT, "zip entry '%s' does not unpack to its declared %"
                         PRIu64 " bytes from its %" PRIu64 ": %s", ename(e, nb), e->usize,
                         e->csize, why);
        d = e->owned;
    }
    uint32_t crc = crc_of(d, e->usize);
#ifdef COIN_FUZZING     /* the fuzzer could never forge a CRC; see the Makefile */
    crc = e->crc;
#endif
    if (crc != e->crc)
        return zfail(r, COIN_EFORMAT, "zip entry '%s' is damaged: its CRC-32 is %08x, the "
                     "directory says %08x", ename(e, nb), crc, e->crc);
    *out = e->data = d;
    return 0;
}

/* byteorder and version, as torch's reader checks them. */
static int check_records(pt *r)
{
    const unsigned char *d;
    zentry *e = find_entry(r, "byteorder", 9);
    int rc;
    char shown[SHOW_MAX];
    if (e) {
        if ((rc = entry_read(r, e, &d)))
            return rc;
        if (e->usize != 6 || memcmp(d, "little", 6) != 0)
            return zfail(r, COIN_EUNSUPPORTED, "the tensors are stored with byte order '%s'; "
                         "coin reads 'little'", show(shown, d, (size_t)e->usize));
    }   /* torch before 2.1 wrote no byteorder: little-endian */
    if (!(e = find_entry(r, "version", 7)) && !(e = find_entry(r, ".data/version", 13)))
        return zfail(r, COIN_EFORMAT, "not a torch.save archive: it has no '%sversion' entry",
                     show(shown, r->prefix, r->prefix_len));
    if ((rc = entry_read(r, e, &d)))
        return rc;
    uint64_t n = e->usize, v = 0, i = 0;
    if (n && d[n - 1] == '\n')
        n--;
    for (; i < n && i < 3 && d[i] >= '0' && d[i] <= '9'; i++)
        v = v * 10 + (d[i] - '0');
    /* torch's own reader takes format versions 1 to 10 */
    if (n == 0 || i != n || v < 1 || v > 10)
        return zfail(r, COIN_EUNSUPPORTED, "the torch file format version is '%s'; coin reads "
                     "versions 1 to 10", show(shown, d, (size_t)e->usize));
    return 0;
}

/* ---- the pickle machine ---- */

static const char *op_name(unsigned op)
{
    static const struct { unsigned char op; const char *name; } names[] = {
        {'(', "MARK"}, {'.', "STOP"}, {'0', "POP"}, {'1', "POP_MARK"}, {'2', "DUP"},
        {'F', "FLOAT"}, {'I', "INT"}, {'J', "BININT"}, {'K', "BININT1"}, {'L', "LONG"},
        {'M', "BININT2"}, {'N', "NONE"}, {'P', "PERSID"}, {'Q', "BINPERSID"}, {'R', "REDUCE"},
        {'S', "STRING"}, {'T', "BINSTRING"}, {'U', "SHORT_BINSTRING"}, {'V', "UNICODE"},
        {'X', "BINUNICODE"}, {'a', "APPEND"}, {'b', "BUILD"}, {'c', "GLOBAL"}, {'d', "DICT"},
        {'}', "EMPTY_DICT"}, {'e', "APPENDS"}, {'g', "GET"}, {'h', "BINGET"}, {'i', "INST"},
        {'j', "LONG_BINGET"}, {'l', "LIST"}, {']', "EMPTY_LIST"}, {'o', "OBJ"}, {'p', "PUT"},
        {'q', "BINPUT"}, {'r', "LONG_BINPUT"}, {'s', "SETITEM"}, {'t', "TUPLE"},
        {')', "EMPTY_TUPLE"}, {'u', "SETITEMS"}, {'G', "BINFLOAT"}, {'B', "BINBYTES"},
        {'C', "SHORT_BINBYTES"}, {0x80, "PROTO"}, {0x81, "NEWOBJ"}, {0x82, "EXT1"},
        {0x83, "EXT2"}, {0x84, "EXT4"}, {0x85, "TUPLE1"}, {0x86, "TUPLE2"}, {0x87, "TUPLE3"},
        {0x88, "NEWTRUE"}, {0x89, "NEWFALSE"}, {0x8a, "LONG1"}, {0x8b, "LONG4"},
        {0x8c, "SHORT_BINUNICODE"}, {0x8d, "BINUNICODE8"}, {0x8e, "BINBYTES8"},
        {0x8f, "EMPTY_SET"}, {0x90, "ADDITEMS"}, {0x91, "FROZENSET"}, {0x92, "NEWOBJ_EX"},
        {0x93, "STACK_GLOBAL"}, {0x94, "MEMOIZE"}, {0x95, "FRAME"}, {0x96, "BYTEARRAY8"},
        {0x97, "NEXT_BUFFER"}, {0x98, "READONLY_BUFFER"},
    };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (names[i].op == op)
            return names[i].name;
    return NULL;
}

/* "<path>: <archive>/data.pkl byte <n>, <OPCODE>: <problem>" */
__attribute__((format(printf, 3, 4)))
static int pfail(pt *r, int code, const char *fmt, ...)
{
    char problem[800], pb[SHOW_MAX], opb[16];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(problem, sizeof problem, fmt, ap);
    va_end(ap);
    const char *on = op_name(r->op);
    if (!on) {
        snprintf(opb, sizeof opb, "opcode 0x%02x", r->op);
        on = opb;
    }
    return coin_fail(r->err, code, "%s: %sdata.pkl byte %zu, %s: %s", r->path,
                     show(pb, r->prefix, r->prefix_len), r->op_at, on, problem);
}

static const char *kind_name(pt *r, uint32_t i)
{
    static const char *const names[] = {"None", "a bool", "an int", "a string", "a tuple",
        "a list", "a dict", "a set", "a global name", "a storage", "a tensor", "an object"};
    return i == NOREF ? "nothing" : names[r->v[i].kind];
}

/* r->v never moves (run_pickle sizes it once), so a pv pointer stays valid
 * across new_value. */
static int new_value(pt *r, int kind, uint32_t *out)
{
    if (r->nv == r->vcap)
        return pfail(r, COIN_EUNSUPPORTED, "the pickle makes more than %d objects, far more "
                     "than an embedding has", PT_MAX_VALUES);
    memset(&r->v[r->nv], 0, sizeof *r->v);
    r->v[r->nv].kind = (uint8_t)kind;
    *out = (uint32_t)r->nv++;
    return 0;
}

static size_t stack_base(pt *r) { return r->nmarks ? r->marks[r->nmarks - 1] : 0; }

static int push(pt *r, uint32_t i)
{
    if (r->sp == PT_MAX_STACK)
        return pfail(r, COIN_EUNSUPPORTED, "the pickle stack grows deeper than %d",
                     PT_MAX_STACK);
    r->stack[r->sp++] = i;
    return 0;
}

static int pop(pt *r, uint32_t *i)
{
    if (r->sp == stack_base(r))
        return pfail(r, COIN_EFORMAT, "needs a value but the stack is empty%s",
                     r->nmarks ? " above the last MARK" : "");
    *i = r->stack[--r->sp];
    return 0;
}

static int top(pt *r, uint32_t *i)
{
    if (r->sp == stack_base(r))
        return pfail(r, COIN_EFORMAT, "needs a value but the stack is empty%s",
                     r->nmarks ? " above the last MARK" : "");
    *i = r->stack[r->sp - 1];
    return 0;
}

/* Counts one more container item: set(list) copies a list, so without a
 * total a few bytes of pickle could make many large copies. */
static int count_item(pt *r)
{
    if (r->all_items == PT_MAX_ALL_ITEMS)
        return pfail(r, COIN_EUNSUPPORTED, "the pickle's containers hold more than %u items "
                     "in all, far more than an embedding has", PT_MAX_ALL_ITEMS);
    r->all_items++;
    return 0;
}

/* Appends item to container c (a tuple, list or set), within the limits. */
static int add_item(pt *r, uint32_t c, uint32_t item)
{
    pv *v = &r->v[c];
    int rc = count_item(r);
    if (rc)
        return rc;
    if (v->n == PT_MAX_ITEMS)
        return pfail(r, COIN_EUNSUPPORTED, "%s grows beyond %d items", kind_name(r, c),
                     PT_MAX_ITEMS);
    if (v->n == v->cap) {
        uint32_t nc = v->cap ? v->cap * 2 : 4;
        uint32_t *q = realloc(v->u.items, nc * sizeof *q);
        if (!q)
            return pfail(r, COIN_ENOMEM, "out of memory");
        v->u.items = q;
        v->cap = nc;
    }
    v->u.items[v->n++] = item;
    return 0;
}

static int same_key(pt *r, uint32_t a, uint32_t b)
{
    const pv *x = &r->v[a], *y = &r->v[b];
    if (x->kind != y->kind)
        return 0;
    if (x->kind == K_INT)
        return x->u.i == y->u.i;
    return x->u.s.len == y->u.s.len && memcmp(x->u.s.p, y->u.s.p, x->u.s.len) == 0;
}

/* d[k] = val.  Keys are strings or ints; torch never writes a key twice,
 * so a repeated key is refused rather than silently replaced. */
static int dict_set(pt *r, uint32_t d, uint32_t k, uint32_t val)
{
    int kk = r->v[k].kind;
    if (kk != K_STR && kk != K_INT)
        return pfail(r, COIN_EUNSUPPORTED, "a dict key is %s; coin reads dicts keyed by "
                     "strings or ints", kind_name(r, k));
    pv *v = &r->v[d];
    for (uint32_t i = 0; i < v->n; i++)
        if (same_key(r, v->u.items[2 * i], k)) {
            char kb[SHOW_MAX];
            if (kk == K_STR)
                show(kb, r->v[k].u.s.p, r->v[k].u.s.len);
            else
                snprintf(kb, sizeof kb, "%" PRId64, r->v[k].u.i);
            return pfail(r, COIN_EFORMAT, "the dict key '%s' is set twice", kb);
        }
    if (v->n == PT_MAX_DICT)
        return pfail(r, COIN_EUNSUPPORTED, "a dict grows beyond %d entries", PT_MAX_DICT);
    int rc = count_item(r);
    if (rc)
        return rc;
    if (v->n == v->cap) {
        uint32_t nc = v->cap ? v->cap * 2 : 4;
        uint32_t *q = realloc(v->u.items, 2 * (size_t)nc * sizeof *q);
        if (!q)
            return pfail(r, COIN_ENOMEM, "out of memory");
        v->u.items = q;
        v->cap = nc;
    }
    v->u.items[2 * v->n] = k;
    v->u.items[2 * v->n + 1] = val;
    v->n++;
    return 0;
}

/* The value of d[key], or NOREF. */
static uint32_t dict_get(pt *r, uint32_t d, const char *key)
{
    const pv *v = &r->v[d];
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < v->n; i++) {
        const pv *k = &r->v[v->u.items[2 * i]];
        if (k->kind == K_STR && k->u.s.len == kl && memcmp(k->u.s.p, key, kl) == 0)
            return v->u.items[2 * i + 1];
    }
    return NOREF;
}

/* The whitelist: every name a pickle may refer to. */
enum { G_REBUILD_TENSOR_V2, G_REBUILD_PARAMETER, G_ORDERED_DICT, G_SET, G_PARAMETER_DICT,
       G_STORAGE_F32, G_STORAGE_F16, G_STORAGE_BF16, G_STORAGE_F64 };
static const struct { const char *module, *name; uint8_t id; } allowed[] = {
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_TENSOR_V2},
    {"torch._utils", "_rebuild_parameter", G_REBUILD_PARAMETER},
    {"collections", "OrderedDict", G_ORDERED_DICT},
    {"__builtin__", "set", G_SET},      /* protocol 2 spells builtins so */
    {"builtins", "set", G_SET},
    {"torch.nn.modules.container", "ParameterDict", G_PARAMETER_DICT},
    {"torch", "FloatStorage", G_STORAGE_F32},
    {"torch", "HalfStorage", G_STORAGE_F16},
    {"torch", "BFloat16Storage", G_STORAGE_BF16},
    {"torch", "DoubleStorage", G_STORAGE_F64},
};

static int is_storage(int g) { return g >= G_STORAGE_F32 && g <= G_STORAGE_F64; }
static int elem_size(int g) { return g == G_STORAGE_F32 ? 4 : g == G_STORAGE_F64 ? 8 : 2; }

static int push_global(pt *r, const unsigned char *mod, size_t ml, const unsigned char *name,
                       size_t nl)
{
    for (size_t i = 0; i < sizeof allowed / sizeof *allowed; i++)
        if (strlen(allowed[i].module) == ml && memcmp(allowed[i].module, mod, ml) == 0 &&
            strlen(allowed[i].name) == nl && memcmp(allowed[i].name, name, nl) == 0) {
            uint32_t g = NOREF;
            int rc = new_value(r, K_GLOBAL, &g);
            if (rc)
                return rc;
            r->v[g].sub = allowed[i].id;
            return push(r, g);
        }
    char mb[SHOW_MAX], nb[SHOW_MAX];
    show(mb, mod, ml);
    show(nb, name, nl);
    if (ml == 5 && memcmp(mod, "torch", 5) == 0 && nl > 7 && memcmp(name + nl - 7, "Storage", 7) == 0)
        return pfail(r, COIN_EUNSUPPORTED, "'torch.%s' is not a float storage; coin reads "
                     "float32, float16, bfloat16 and float64 tensors", nb);
    return pfail(r, COIN_EFORMAT, "refusing the name '%s.%s': an embedding needs only torch "
                 "storages, torch._utils._rebuild_tensor_v2/_rebuild_parameter and "
                 "collections.OrderedDict, and loading this file in Python would call it "
                 "(the file may be malicious)", mb, nb);
}

static int need(pt *r, size_t n)
{
    if (r->pk_len - r->pos < n)
        return pfail(r, COIN_EFORMAT, "data.pkl ends inside the opcode's argument (%zu bytes "
                     "needed, %zu left)", n, r->pk_len - r->pos);
    return 0;
}

static int push_new(pt *r, int kind)
{
    uint32_t i = NOREF;
    int rc = new_value(r, kind, &i);
    return rc ? rc : push(r, i);
}

static int push_int(pt *r, int64_t x)
{
    uint32_t i = NOREF;
    int rc = new_value(r, K_INT, &i);
    if (rc)
        return rc;
    r->v[i].u.i = x;
    return push(r, i);
}

static int push_str(pt *r, uint64_t len)
{
    uint32_t i = NOREF;
    int rc = need(r, len > SIZE_MAX ? SIZE_MAX : (size_t)len);
    if (rc || (rc = new_value(r, K_STR, &i)))
        return rc;
    r->v[i].u.s.p = r->pk + r->pos;
    r->v[i].u.s.len = (size_t)len;
    r->pos += (size_t)len;
    return push(r, i);
}

static int memo_put(pt *r, uint64_t idx)
{
    uint32_t t = NOREF;
    int rc = top(r, &t);
    if (rc)
        return rc;
    if (idx >= PT_MAX_MEMO)
        return pfail(r, COIN_EUNSUPPORTED, "memo slot %" PRIu64 " is beyond the %d an "
                     "embedding could need", idx, PT_MAX_MEMO);
    if (idx >= r->memo_cap) {
        size_t nc = r->memo_cap ? r->memo_cap : 64;
        while (nc <= idx)
            nc *= 2;
        uint32_t *q = realloc(r->memo, nc * sizeof *q);
        if (!q)
            return pfail(r, COIN_ENOMEM, "out of memory");
        for (size_t i = r->memo_cap; i < nc; i++)
            q[i] = NOREF;
        r->memo = q;
        r->memo_cap = nc;
    }
    r->memo_count += r->memo[idx] == NOREF;
    r->memo[idx] = t;
    return 0;
}

static int memo_get(pt *r, uint64_t idx)
{
    if (idx >= r->memo_cap || r->memo[idx] == NOREF)
        return pfail(r, COIN_EFORMAT, "memo slot %" PRIu64 " was never set", idx);
    return push(r, r->memo[idx]);
}

/* Items above the innermost MARK become a tuple; the MARK goes. */
static int tuple_from_mark(pt *r)
{
    if (!r->nmarks)
        return pfail(r, COIN_EFORMAT, "no MARK is open");
    size_t m = r->marks[--r->nmarks];
    uint32_t t = NOREF;
    int rc = new_value(r, K_TUPLE, &t);
    for (size_t i = m; !rc && i < r->sp; i++)
        rc = add_item(r, t, r->stack[i]);
    r->sp = m;
    return rc ? rc : push(r, t);
}

static int tuple_of(pt *r, int k)
{
    uint32_t t = NOREF, items[3];
    int rc = 0;
    for (int i = k - 1; i >= 0 && !rc; i--)
        rc = pop(r, &items[i]);
    if (rc || (rc = new_value(r, K_TUPLE, &t)))
        return rc;
    for (int i = 0; i < k && !rc; i++)
        rc = add_item(r, t, items[i]);
    return rc ? rc : push(r, t);
}

/* SETITEMS, APPENDS, ADDITEMS: the items above the MARK go into the
 * container just below it. */
static int fill_from_mark(pt *r, int kind)
{
    if (!r->nmarks)
        return pfail(r, COIN_EFORMAT, "no MARK is open");
    size_t m = r->marks[r->nmarks - 1];
    size_t outer = r->nmarks > 1 ? r->marks[r->nmarks - 2] : 0;
    if (m == outer || r->v[r->stack[m - 1]].kind != kind)
        return pfail(r, COIN_EFORMAT, "expected %s below the MARK, found %s",
                     kind == K_DICT ? "a dict" : kind == K_LIST ? "a list" : "a set",
                     m == outer ? "nothing" : kind_name(r, r->stack[m - 1]));
    uint32_t c = r->stack[m - 1];
    int rc = 0;
    if (kind == K_DICT) {
        if ((r->sp - m) % 2)
            return pfail(r, COIN_EFORMAT, "an odd number of items (%zu) for key, value pairs",
                         r->sp - m);
        for (size_t i = m; i < r->sp && !rc; i += 2)
            rc = dict_set(r, c, r->stack[i], r->stack[i + 1]);
    } else {
        for (size_t i = m; i < r->sp && !rc; i++)
            rc = add_item(r, c, r->stack[i]);
    }
    r->sp = m;
    r->nmarks--;
    return rc;
}

/* A tuple of ints >= 0 (sizes, strides), at most PT_MAX_DIMS of them. */
static int int_tuple(pt *r, uint32_t t, int64_t *out, int *n, const char *what)
{
    const pv *v = &r->v[t];
    if (v->kind != K_TUPLE)
        return pfail(r, COIN_EFORMAT, "_rebuild_tensor_v2: the %s is %s, expected a tuple of "
                     "ints", what, kind_name(r, t));
    if (v->n > PT_MAX_DIMS)
        return pfail(r, COIN_EUNSUPPORTED, "_rebuild_tensor_v2: the tensor has %u dimensions; "
                     "coin reads at most %d", v->n, PT_MAX_DIMS);
    for (uint32_t i = 0; i < v->n; i++) {
        const pv *x = &r->v[v->u.items[i]];
        if (x->kind != K_INT || x->u.i < 0)
            return pfail(r, COIN_EFORMAT, "_rebuild_tensor_v2: the %s holds %s, expected ints "
                         ">= 0", what, x->kind == K_INT ? "a negative int" :
                         kind_name(r, v->u.items[i]));
        out[i] = x->u.i;
    }
    *n = (int)v->n;
    return 0;
}

static int is_empty_dict(pt *r, uint32_t i) { return r->v[i].kind == K_DICT && r->v[i].n == 0; }

/* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
 * backward_hooks[, metadata]): a view of the storage, which must hold every
 * element the view can reach. */
static int rebuild_tensor(pt *r, uint32_t args, uint32_t *out)
{
    const pv *a = &r->v[args];
    if (a->n != 6 && !(a->n == 7 && (r->v[a->u.items[6]].kind == K_NONE ||
                                      is_empty_dict(r, a->u.items[6]))))
        return pfail(r, COIN_EFORMAT, "_rebuild_tensor_v2 takes (storage, offset, size, stride, "
                     "requires_grad, backward_hooks), found %u arguments", a->n);
    const uint32_t *x = a->u.items;
    if (r->v[x[0]].kind != K_STORAGE || r->v[x[1]].kind != K_INT || r->v[x[1]].u.i < 0 ||
        r->v[x[4]].kind != K_BOOL || !is_empty_dict(r, x[5]))
        return pfail(r, COIN_EFORMAT, "_rebuild_tensor_v2 expects a storage, an offset >= 0, "
                     "two tuples, a bool and empty hooks; found %s, %s, %s, %s, %s, %s",
                     kind_name(r, x[0]), kind_name(r, x[1]), kind_name(r, x[2]),
                     kind_name(r, x[3]), kind_name(r, x[4]), kind_name(r, x[5]));
    int64_t size[PT_MAX_DIMS], stride[PT_MAX_DIMS];
    int nd, ns, rc;
    if ((rc = int_tuple(r, x[2], size, &nd, "size")) ||
        (rc = int_tuple(r, x[3], stride, &ns, "stride")))
        return rc;
    if (nd != ns)
        return pfail(r, COIN_EFORMAT, "_rebuild_tensor_v2: %d sizes but %d strides", nd, ns);
    /* The highest element index the view reaches, in checked arithmetic. */
    uint64_t numel = r->v[x[0]].u.st.numel, off = (uint64_t)r->v[x[1]].u.i, last = off, count = 1;
    int overflow = 0;
    for (int d = 0; d < nd; d++) {
        uint64_t step;
        overflow |= __builtin_mul_overflow(count, (uint64_t)size[d], &count);
        if (size[d] > 0) {
            overflow |= __builtin_mul_overflow((uint64_t)(size[d] - 1), (uint64_t)stride[d], &step);
            overflow |= __builtin_add_overflow(last, step, &last);
        }
    }
    if (overflow || (count > 0 && last >= numel) || (count == 0 && off > numel))
        return pfail(r, COIN_EFORMAT, "_rebuild_tensor_v2: the tensor reaches beyond its "
                     "storage of %" PRIu64 " elements (offset %" PRIu64 ")", numel, off);
    uint32_t t = NOREF;
    if ((rc = new_value(r, K_TENSOR, &t)))
        return rc;
    pv *tv = &r->v[t];
    tv->u.t.storage = x[0];
    tv->u.t.ndim = nd;
    tv->u.t.off = (int64_t)off;
    memcpy(tv->u.t.size, size, sizeof size);
    memcpy(tv->u.t.stride, stride, sizeof stride);
    *out = t;
    return 0;
}

static int op_reduce(pt *r)
{
    uint32_t args = NOREF, fn = NOREF, res = NOREF;
    int rc;
    if ((rc = pop(r, &args)) || (rc = pop(r, &fn)))
        return rc;
    if (r->v[fn].kind != K_GLOBAL || r->v[args].kind != K_TUPLE)
        return pfail(r, COIN_EFORMAT, "expected a whitelisted name and a tuple of arguments, "
                     "found %s and %s", kind_name(r, fn), kind_name(r, args));
    const pv *a = &r->v[args];
    switch (r->v[fn].sub) {
    case G_REBUILD_TENSOR_V2:
        rc = rebuild_tensor(r, args, &res);
        break;
    case G_REBUILD_PARAMETER:   /* (tensor, requires_grad, backward_hooks) */
        if (a->n != 3 || r->v[a->u.items[0]].kind != K_TENSOR ||
            r->v[a->u.items[1]].kind != K_BOOL || !is_empty_dict(r, a->u.items[2]))
            return pfail(r, COIN_EFORMAT, "_rebuild_parameter expects (tensor, bool, empty "
                         "hooks), found %u arguments", a->n);
        res = a->u.items[0];
        break;
    case G_ORDERED_DICT:        /* OrderedDict(); items come by SETITEMS */
        if (a->n != 0)
            return pfail(r, COIN_EFORMAT, "OrderedDict is called with %u arguments; torch "
                         "passes none", a->n);
        rc = new_value(r, K_DICT, &res);
        break;
    case G_SET:                 /* set() or set([items]) */
        if (a->n > 1 || (a->n == 1 && r->v[a->u.items[0]].kind != K_LIST))
            return pfail(r, COIN_EFORMAT, "set expects nothing or one list");
        if (!(rc = new_value(r, K_SET, &res)) && a->n == 1) {
            uint32_t list = r->v[args].u.items[0];
            for (uint32_t i = 0; !rc && i < r->v[list].n; i++)
                rc = add_item(r, res, r->v[list].u.items[i]);
        }
        break;
    default:
        return pfail(r, COIN_EFORMAT, "a storage type or class is called like a function; "
                     "torch.save never does that");
    }
    return rc ? rc : push(r, res);
}

/* BINPERSID with ('storage', <storage type>, key, location, numel): the
 * bytes of the zip entry data/<key>, which must be exactly numel elements. */
static int op_persid(pt *r)
{
    uint32_t pid = NOREF;
    int rc = pop(r, &pid);
    if (rc)
        return rc;
    const pv *t = &r->v[pid];
    const uint32_t *x = t->u.items;
    if (t->kind != K_TUPLE || t->n != 5 || r->v[x[0]].kind != K_STR || r->v[x[0]].u.s.len != 7 ||
        memcmp(r->v[x[0]].u.s.p, "storage", 7) != 0 || r->v[x[1]].kind != K_GLOBAL ||
        !is_storage(r->v[x[1]].sub) || r->v[x[2]].kind != K_STR || r->v[x[3]].kind != K_STR ||
        r->v[x[4]].kind != K_INT || r->v[x[4]].u.i < 0)
        return pfail(r, COIN_EFORMAT, "expected a persistent id ('storage', <float storage "
                     "type>, key, location, size), found %s", kind_name(r, pid));
    const unsigned char *key = r->v[x[2]].u.s.p;
    size_t kl = r->v[x[2]].u.s.len;
    char kb[SHOW_MAX], pb[SHOW_MAX], name[80];
    for (size_t i = 0; i < kl; i++)
        if (!((key[i] >= '0' && key[i] <= '9') || (key[i] >= 'a' && key[i] <= 'z') ||
              (key[i] >= 'A' && key[i] <= 'Z') || key[i] == '_'))
            kl = 0;
    if (kl == 0 || kl > 64)
        return pfail(r, COIN_EFORMAT, "the storage key '%s' is not a short run of letters and "
                     "digits", show(kb, r->v[x[2]].u.s.p, r->v[x[2]].u.s.len));
    int g = r->v[x[1]].sub, n = snprintf(name, sizeof name, "data/%.*s", (int)kl, key);
    uint64_t numel = (uint64_t)r->v[x[4]].u.i, bytes;
    zentry *e = find_entry(r, name, (size_t)n);
    if (!e)
        return pfail(r, COIN_EFORMAT, "the storage '%s' has no zip entry '%s%s'",
                     show(kb, key, kl), show(pb, r->prefix, r->prefix_len), name);
    if (__builtin_mul_overflow(numel, (uint64_t)elem_size(g), &bytes) || bytes != e->usize)
        return pfail(r, COIN_EFORMAT, "the storage '%s' should hold %" PRIu64 " elements of %d "
                     "bytes, but its zip entry is %" PRIu64 " bytes", show(kb, key, kl), numel,
                     elem_size(g), e->usize);
    const unsigned char *d;
    uint32_t s = NOREF;
    if ((rc = entry_read(r, e, &d)) || (rc = new_value(r, K_STORAGE, &s)))
        return rc;
    r->v[s].sub = (uint8_t)g;
    r->v[s].u.st.data = d;
    r->v[s].u.st.numel = numel;
    return push(r, s);
}

/* GLOBAL's "module\nname\n" lines. */
static int read_line(pt *r, const unsigned char **s, size_t *len)
{
    size_t left = r->pk_len - r->pos, max = left < 256 ? left : 256;
    const unsigned char *nl = memchr(r->pk + r->pos, '\n', max);
    if (!nl)
        return pfail(r, COIN_EFORMAT, "expected a name of at most 255 bytes ending in a newline");
    *s = r->pk + r->pos;
    *len = (size_t)(nl - *s);
    r->pos += *len + 1;
    return 0;
}

/* One opcode at r->pos. */
static int step(pt *r, int *stop)
{
    uint32_t a = NOREF, b = NOREF, c = NOREF;
    uint64_t u;
    int rc = 0;
    r->op_at = r->pos;
    r->op = r->pk[r->pos++];
    switch (r->op) {
    case 0x80:                  /* PROTO */
        if ((rc = need(r, 1)))
            return rc;
        if (r->op_at != 0 || r->pk[r->pos] < 2 || r->pk[r->pos] > 5)
            return pfail(r, COIN_EUNSUPPORTED, "protocol %u%s; coin reads protocols 2 to 5 "
                         "declared at the start", r->pk[r->pos], r->op_at ? " after the start" : "");
        r->pos++;
        return 0;
    case 0x95:                  /* FRAME: only a read-ahead hint */
        if ((rc = need(r, 8)))
            return rc;
        u = rd64(r->pk + r->pos);
        r->pos += 8;
        return u > r->pk_len - r->pos ? pfail(r, COIN_EFORMAT, "a frame of %" PRIu64 " bytes "
                                              "runs past the end", u) : 0;
    case '}': return push_new(r, K_DICT);
    case ']': return push_new(r, K_LIST);
    case ')': return push_new(r, K_TUPLE);
    case 0x8f: return push_new(r, K_SET);
    case 'N': return push_new(r, K_NONE);
    case 0x88: case 0x89:       /* NEWTRUE, NEWFALSE */
        if ((rc = new_value(r, K_BOOL, &a)))
            return rc;
        r->v[a].u.i = r->op == 0x88;
        return push(r, a);
    case '(':                   /* MARK */
        if (r->nmarks == PT_MAX_MARKS)
            return pfail(r, COIN_EUNSUPPORTED, "more than %d MARKs are open", PT_MAX_MARKS);
        r->marks[r->nmarks++] = r->sp;
        return 0;
    case 'X':                   /* BINUNICODE */
        if ((rc = need(r, 4)))
            return rc;
        r->pos += 4;
        return push_str(r, rd32(r->pk + r->pos - 4));
    case 0x8c:                  /* SHORT_BINUNICODE */
        if ((rc = need(r, 1)))
            return rc;
        return push_str(r, r->pk[r->pos++]);
    case 0x8d:                  /* BINUNICODE8 */
        if ((rc = need(r, 8)))
            return rc;
        r->pos += 8;
        return push_str(r, rd64(r->pk + r->pos - 8));
    case 'K':
        if ((rc = need(r, 1)))
            return rc;
        return push_int(r, r->pk[r->pos++]);
    case 'M':
        if ((rc = need(r, 2)))
            return rc;
        r->pos += 2;
        return push_int(r, rd16(r->pk + r->pos - 2));
    case 'J':
        if ((rc = need(r, 4)))
            return rc;
        r->pos += 4;
        return push_int(r, (int32_t)rd32(r->pk + r->pos - 4));
    case 0x8a: {                /* LONG1: little-endian two's complement */
        if ((rc = need(r, 1)))
            return rc;
        unsigned n = r->pk[r->pos++];
        if (n > 8)
            return pfail(r, COIN_EUNSUPPORTED, "an integer of %u bytes is larger than coin "
                         "reads (8)", n);
        if ((rc = need(r, n)))
            return rc;
        u = 0;
        for (unsigned i = 0; i < n; i++)
            u |= (uint64_t)r->pk[r->pos + i] << 8 * i;
        if (n && n < 8 && (r->pk[r->pos + n - 1] & 0x80))
            u |= ~(uint64_t)0 << 8 * n;     /* sign-extend */
        r->pos += n;
        int64_t s;
        memcpy(&s, &u, sizeof s);
        return push_int(r, s);
    }
    case 't': return tuple_from_mark(r);
    case 0x85: return tuple_of(r, 1);
    case 0x86: return tuple_of(r, 2);
    case 0x87: return tuple_of(r, 3);
    case 's':                   /* SETITEM */
        if ((rc = pop(r, &c)) || (rc = pop(r, &b)) || (rc = top(r, &a)))
            return rc;
        if (r->v[a].kind != K_DICT)
            return pfail(r, COIN_EFORMAT, "expected a dict, found %s", kind_name(r, a));
        return dict_set(r, a, b, c);
    case 'u': return fill_from_mark(r, K_DICT);
    case 'e': return fill_from_mark(r, K_LIST);
    case 0x90: return fill_from_mark(r, K_SET);
    case 'a':                   /* APPEND */
        if ((rc = pop(r, &b)) || (rc = top(r, &a)))
            return rc;
        if (r->v[a].kind != K_LIST)
            return pfail(r, COIN_EFORMAT, "expected a list, found %s", kind_name(r, a));
        return add_item(r, a, b);
    case 'q':
        if ((rc = need(r, 1)))
            return rc;
        return memo_put(r, r->pk[r->pos++]);
    case 'r':
        if ((rc = need(r, 4)))
            return rc;
        r->pos += 4;
        return memo_put(r, rd32(r->pk + r->pos - 4));
    case 0x94: return memo_put(r, r->memo_count);   /* MEMOIZE: memo[len(memo)] */
    case 'h':
        if ((rc = need(r, 1)))
            return rc;
        return memo_get(r, r->pk[r->pos++]);
    case 'j':
        if ((rc = need(r, 4)))
            return rc;
        r->pos += 4;
        return memo_get(r, rd32(r->pk + r->pos - 4));
    case 'c': {                 /* GLOBAL */
        const unsigned char *m = NULL, *n = NULL;
        size_t ml = 0, nl = 0;
        if ((rc = read_line(r, &m, &ml)) || (rc = read_line(r, &n, &nl)))
            return rc;
        return push_global(r, m, ml, n, nl);
    }
    case 0x93:                  /* STACK_GLOBAL */
        if ((rc = pop(r, &b)) || (rc = pop(r, &a)))
            return rc;
        if (r->v[a].kind != K_STR || r->v[b].kind != K_STR)
            return pfail(r, COIN_EFORMAT, "expected two strings, found %s and %s",
                         kind_name(r, a), kind_name(r, b));
        return push_global(r, r->v[a].u.s.p, r->v[a].u.s.len, r->v[b].u.s.p, r->v[b].u.s.len);
    case 'Q': return op_persid(r);
    case 'R': return op_reduce(r);
    case 0x81:                  /* NEWOBJ: cls.__new__(cls), for ParameterDict only */
        if ((rc = pop(r, &b)) || (rc = pop(r, &a)))
            return rc;
        if (r->v[a].kind != K_GLOBAL || r->v[a].sub != G_PARAMETER_DICT ||
            r->v[b].kind != K_TUPLE || r->v[b].n != 0)
            return pfail(r, COIN_EFORMAT, "only torch.nn.ParameterDict may be created this "
                         "way, with no arguments; found %s", kind_name(r, a));
        if ((rc = new_value(r, K_OBJECT, &c)))
            return rc;
        r->v[c].sub = G_PARAMETER_DICT;
        r->v[c].u.state = NOREF;
        return push(r, c);
    case 'b':                   /* BUILD: the object's __dict__, set once */
        if ((rc = pop(r, &b)) || (rc = top(r, &a)))
            return rc;
        if (r->v[a].kind != K_OBJECT || r->v[a].u.state != NOREF || r->v[b].kind != K_DICT)
            return pfail(r, COIN_EFORMAT, "only a new ParameterDict may be given state, as a "
                         "dict; found %s and %s", kind_name(r, a), kind_name(r, b));
        r->v[a].u.state = b;
        return 0;
    case '.':                   /* STOP */
        if (r->nmarks || r->sp != 1)
            return pfail(r, COIN_EFORMAT, "the pickle ends with %zu values on the stack and %zu "
                         "open MARKs; expected one value", r->sp, r->nmarks);
        if (r->pos != r->pk_len)
            return pfail(r, COIN_EFORMAT, "%zu bytes follow the end of the pickle",
                         r->pk_len - r->pos);
        *stop = 1;
        return 0;
    default:
        if (op_name(r->op))
            return pfail(r, COIN_EFORMAT, "this opcode is not allowed: torch.save does not "
                         "write it for an embedding, and it could build objects coin cannot "
                         "check");
        return pfail(r, COIN_EFORMAT, "not a pickle opcode; data.pkl is damaged");
    }
}

static int run_pickle(pt *r, uint32_t *result)
{
    char shown[SHOW_MAX];
    zentry *e = find_entry(r, "data.pkl", 8);
    if (!e)
        return zfail(r, COIN_EFORMAT, "not a torch.save archive: it has no '%sdata.pkl' entry",
                     show(shown, r->prefix, r->prefix_len));
    if (e->usize > PT_MAX_PICKLE_BYTES)
        return zfail(r, COIN_EUNSUPPORTED, "its data.pkl is %" PRIu64 " bytes, more than the %u "
                     "an embedding needs; this is a model or training checkpoint, not an "
                     "embedding", e->usize, PT_MAX_PICKLE_BYTES);
    int rc = entry_read(r, e, &r->pk), stop = 0;
    r->pk_len = (size_t)e->usize;
    if (rc)
        return rc;
    /* No opcode makes more than one value, so this is enough, and the
     * array is allocated once: pointers into it stay valid. */
    r->vcap = r->pk_len < PT_MAX_VALUES ? r->pk_len : PT_MAX_VALUES;
    if (!(r->v = malloc((r->vcap + 1) * sizeof *r->v)))
        return zfail(r, COIN_ENOMEM, "out of memory");
    if (r->pk_len == 0 || r->pk[0] != 0x80)
        return zfail(r, COIN_EFORMAT, "its data.pkl is %s; expected a pickle beginning with "
                     "PROTO (0x80)", r->pk_len ? "not a pickle" : "empty");
    while (!stop && !rc) {
        if (r->pos == r->pk_len) {
            r->op_at = r->pos;
            return zfail(r, COIN_EFORMAT, "its data.pkl ends without a STOP opcode (the file "
                         "is truncated)");
        }
        rc = step(r, &stop);
    }
    if (rc)
        return rc;
    *result = r->stack[0];
    return 0;
}

/* ---- from the pickle's value to the embedding ---- */

static float element(int g, const unsigned char *d, uint64_t k)
{
    switch (g) {
    case G_STORAGE_F32: { float f; memcpy(&f, d + 4 * k, 4); return f; }
    case G_STORAGE_F64: { double x; memcpy(&x, d + 8 * k, 8); return (float)x; }
    case G_STORAGE_F16: { uint16_t h; memcpy(&h, d + 2 * k, 2); return st_f16_to_f32(h); }
    default: { uint16_t h; memcpy(&h, d + 2 * k, 2); return st_bf16_to_f32(h); }
    }
}

static int tensor_out(pt *r, uint32_t t, const char *where, float **vectors, int *n, int64_t *width)
{
    if (r->v[t].kind != K_TENSOR)
        return zfail(r, COIN_EFORMAT, "not an embedding: %s is %s, expected a tensor", where,
                     kind_name(r, t));
    const pv *tv = &r->v[t];
    const pv *st = &r->v[tv->u.t.storage];
    int nd = tv->u.t.ndim;
    if (nd != 1 && nd != 2)
        return zfail(r, COIN_EFORMAT, "not an embedding: %s has %d dimensions, expected [N, D] "
                     "or [D]", where, nd);
    int64_t rows = nd == 2 ? tv->u.t.size[0] : 1, cols = tv->u.t.size[nd - 1];
    int64_t rs = nd == 2 ? tv->u.t.stride[0] : 0, cs = tv->u.t.stride[nd - 1];
    uint64_t total;
    if (rows < 1 || cols < 1 || rows > INT32_MAX ||
        __builtin_mul_overflow((uint64_t)rows, (uint64_t)cols, &total) || total > PT_MAX_FLOATS)
        return zfail(r, COIN_EFORMAT, "not an embedding: %s is [%" PRId64 ", %" PRId64 "]; "
                     "expected at least one vector and at most %u values", where, rows, cols,
                     PT_MAX_FLOATS);
    float *out = malloc((size_t)total * sizeof *out);
    if (!out)
        return zfail(r, COIN_ENOMEM, "out of memory");
    /* rebuild_tensor proved every index below lies inside the storage */
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++)
            out[i * cols + j] = element(st->sub, st->u.st.data,
                                        (uint64_t)(tv->u.t.off + i * rs + j * cs));
    *vectors = out;
    *n = (int)rows;
    *width = cols;
    return 0;
}

/* Up to four keys of dict d, for messages. */
static void list_keys(pt *r, uint32_t d, char *buf, size_t size)
{
    const pv *v = &r->v[d];
    size_t o = 0;
    buf[0] = '\0';
    for (uint32_t i = 0; i < v->n && i < 4 && o < size; i++) {
        const pv *k = &r->v[v->u.items[2 * i]];
        char kb[SHOW_MAX];
        if (k->kind == K_STR)
            o += (size_t)snprintf(buf + o, size - o, "%s'%s'", i ? ", " : "",
                                  show(kb, k->u.s.p, k->u.s.len));
        else
            o += (size_t)snprintf(buf + o, size - o, "%s%" PRId64, i ? ", " : "", k->u.i);
    }
    if (v->n > 4 && o < size)
        snprintf(buf + o, size - o, ", ...");
}

static int extract(pt *r, uint32_t obj, char **token, float **vectors, int *n, int64_t *width)
{
    if (r->v[obj].kind == K_TENSOR)
        return tensor_out(r, obj, "the tensor", vectors, n, width);
    if (r->v[obj].kind != K_DICT)
        return zfail(r, COIN_EFORMAT, "not an embedding: the file holds %s; expected a dict "
                     "with 'string_to_param' (AUTOMATIC1111), a dict of one tensor (diffusers) "
                     "or a tensor", kind_name(r, obj));
    char keys[400];
    uint32_t p = dict_get(r, obj, "string_to_param");
    if (p != NOREF) {
        /* The original textual-inversion code saved an nn.ParameterDict;
         * AUTOMATIC1111 reads its _parameters, and so does coin. */
        if (r->v[p].kind == K_OBJECT) {
            uint32_t state = r->v[p].u.state;
            p = state == NOREF ? NOREF : dict_get(r, state, "_parameters");
            if (p == NOREF)
                return zfail(r, COIN_EFORMAT, "not an embedding: its string_to_param "
                             "ParameterDict has no _parameters");
        }
        if (r->v[p].kind != K_DICT || r->v[p].n != 1)
            return zfail(r, COIN_EFORMAT, "not an embedding: string_to_param is %s%s; expected "
                         "a dict of one tensor ({'*': tensor})", kind_name(r, p),
                         r->v[p].kind == K_DICT ? (r->v[p].n ? " of several entries" :
                                                   " that is empty") : "");
        return tensor_out(r, r->v[p].u.items[1], "string_to_param's value", vectors, n, width);
    }
    if (dict_get(r, obj, "clip_g") != NOREF || dict_get(r, obj, "clip_l") != NOREF)
        return zfail(r, COIN_EUNSUPPORTED, "this is an SDXL embedding (clip_g/clip_l); coin "
                     "trains and uses Stable Diffusion 1.x and 2.x, whose embeddings hold one "
                     "tensor");
    list_keys(r, obj, keys, sizeof keys);
    const pv *d = &r->v[obj];
    if (d->n != 1 || r->v[d->u.items[0]].kind != K_STR || r->v[d->u.items[1]].kind != K_TENSOR)
        return zfail(r, COIN_EFORMAT, "not an embedding: expected a dict with 'string_to_param' "
                     "(AUTOMATIC1111) or one string key and a tensor (diffusers), found a dict "
                     "of %u entries {%s}", d->n, keys);
    const pv *k = &r->v[d->u.items[0]];
    if (!utf8_valid(k->u.s.p, k->u.s.len) || memchr(k->u.s.p, 0, k->u.s.len) || !k->u.s.len)
        return zfail(r, COIN_EFORMAT, "the trigger {%s} is empty, not valid UTF-8 or holds a "
                     "NUL character", keys);
    int rc = tensor_out(r, d->u.items[1], "the dict's tensor", vectors, n, width);
    /* kohya's key names no trigger: the file name does, as for safetensors */
    if (!rc && !(k->u.s.len == 10 && memcmp(k->u.s.p, "emb_params", 10) == 0) &&
        !(*token = strndup((const char *)k->u.s.p, k->u.s.len))) {
        free(*vectors);
        *vectors = NULL;
        rc = zfail(r, COIN_ENOMEM, "out of memory");
    }
    return rc;
}

int pt_parse_embedding(const void *buf, size_t len, const char *name, char **token,
                       float **vectors, int *n, int64_t *width, coin_error *err)
{
    *token = NULL;
    *vectors = NULL;
    *n = 0;
    *width = 0;
    pt *r = calloc(1, sizeof *r);
    if (!r)
        return coin_fail(err, COIN_ENOMEM, "%s: out of memory", name ? name : "(unnamed)");
    r->path = name ? name : "(unnamed)";
    r->buf = buf;
    r->len = len;
    r->err = err;
    uint32_t obj = NOREF;
    int rc = zip_open(r);
    if (!rc)
        rc = check_records(r);
    if (!rc)
        rc = run_pickle(r, &obj);
    if (!rc)
        rc = extract(r, obj, token, vectors, n, width);
    if (rc) {
        free(*token);
        free(*vectors);
        *token = NULL;
        *vectors = NULL;
        *n = 0;
        *width = 0;
    }
    for (size_t i = 0; i < r->ne; i++)
        free(r->e[i].owned);
    for (size_t i = 0; i < r->nv; i++)
        if (r->v[i].kind >= K_TUPLE && r->v[i].kind <= K_SET)
            free(r->v[i].u.items);
    free(r->e);
    free(r->v);
    free(r->memo);
    free(r);
    return rc;
}

int pt_load_embedding(const char *path, char **token, float **vectors, int *n,
                      int64_t *width, coin_error *err)
{
    *token = NULL;
    *vectors = NULL;
    *n = 0;
    *width = 0;
    struct stat sb;
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return coin_fail(err, e == ENOENT ? COIN_ENOTFOUND : COIN_EIO, "%s: cannot open: %s",
                         path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return coin_fail(err, COIN_EINVAL, "%s: not a regular file", path);
    }
    if (sb.st_size == 0) {
        close(fd);
        return pt_parse_embedding("", 0, path, token, vectors, n, width, err);
    }
    /* Mapped, not read: a diffusers file saved on the CPU carries the
     * whole 150 MB token matrix, of which coin reads a few rows. */
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED)
        return coin_fail(err, e == ENOMEM ? COIN_ENOMEM : COIN_EIO, "%s: cannot map the file: %s",
                         path, strerror(e));
    rc = pt_parse_embedding(m, (size_t)sb.st_size, path, token, vectors, n, width, err);
    munmap(m, (size_t)sb.st_size);
    return rc;
}
