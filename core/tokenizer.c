/*
 * tokenizer.c - the CLIP byte-level BPE tokenizer (see tokenizer.h).
 *
 * The reference is transformers 4.46's slow CLIPTokenizer without ftfy, which
 * is what the goldens record.  Encoding a prompt goes:
 *   1. split the raw text on added tokens with a literal port of
 *      transformers' Trie.split (its greedy longest-match has quirks that a
 *      plain "longest match at each position" does not share); the pieces
 *      that are added tokens become their ids, "<|startoftext|>" and
 *      "<|endoftext|>" included, since transformers registers them as added
 *      tokens too;
 *   2. every other piece is cleaned by unicode.c (BasicTokenizer) and cut by
 *      the CLIP pattern; a piece "<|startoftext|>"/"<|endoftext|>" that the
 *      pattern itself recognises (any letter case) is its own id, as in
 *      CLIPTokenizer.bpe's cache;
 *   3. each pre-token's UTF-8 bytes become byte-unicode symbols ('</w>' on the
 *      last) and are merged by rank.
 * Symbols are interned strings: the vocabulary plus anything the merges or the
 * byte alphabet produce that the vocabulary lacks (those encode as the unknown
 * token, <|endoftext|>).  Merge ranks sit in a hash keyed by the symbol pair,
 * so a merge step costs one probe.
 *
 * BPE uses a heap instead of CLIPTokenizer's "find the lowest-ranked pair,
 * merge all its occurrences, repeat" loop, which is quadratic in the word
 * length.  To give identical results the heap pops all entries of the lowest
 * rank as one batch, left to right, and only then pushes the pairs those
 * merges created: a new pair of lower rank must not jump ahead of the
 * remaining occurrences of the batch, because Python merges those first.
 */
#include "tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <zlib.h>

#include "unicode.h"

#define N_MERGES (49152 - 256 - 2) /* CLIPTokenizer reads this many, at most */
#define MAX_FILE (256u << 20)      /* vocabulary files bigger than this are hostile */
#define MAX_ID (1 << 24)
#define NONE UINT32_MAX

extern const unsigned char coin_vocab_gz[], coin_vocab_gz_end[];

typedef struct merge_slot {
    uint64_t key; /* symbol a << 32 | symbol b; ~0 when empty */
    uint32_t rank, result;
} merge_slot;

typedef struct added_token {
    char *text;
    uint32_t *cps;
    int n_cps, id;
} added_token;

typedef struct trie_node {
    uint32_t cp;
    int32_t child, sibling;
    int term;
} trie_node;

struct clip_tokenizer {
    /* symbols: strings in one arena, NUL-terminated */
    char *arena;
    size_t arena_len, arena_cap;
    uint32_t *sym_off, *sym_len;
    int32_t *sym_id; /* vocabulary id, or -1 */
    uint32_t n_sym, sym_cap;
    uint32_t *str_slot; /* string hash: symbol + 1, 0 when empty */
    uint32_t str_mask;

    int32_t *id_sym; /* base vocabulary id -> symbol, or -1 */
    int n_base;      /* largest base id + 1 */
    int n_ids;       /* next free id */

    uint32_t (*merges)[3]; /* a, b, result, in rank order */
    int n_merges;
    merge_slot *merge_slot;
    uint64_t merge_mask;

    uint32_t byte_sym[256], byte_sym_end[256];
    int bos_id, eos_id, unk_id;

    added_token *added;
    int n_added, added_cap;
    trie_node *trie; /* node 0 is the root */
    int n_trie, trie_cap;
};

/* ---- bytes_to_unicode -------------------------------------------------- */

/* CLIP's reversible byte -> code point map: printable Latin-1 bytes map to
 * themselves, the other 68 to U+0100 upwards in byte order. */
static void bytes_to_unicode(uint32_t map[256], uint8_t order[256])
{
    int k = 0, extra = 0;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) ||
                   (b >= 0xAE && b <= 0xFF);
        map[b] = keep ? (uint32_t)b : 0;
    }
    for (int b = 0; b < 256; b++)
        if (map[b])
            order[k++] = (uint8_t)b;
    for (int b = 0; b < 256; b++)
        if (!map[b]) {
            map[b] = 256 + extra++;
            order[k++] = (uint8_t)b;
        }
}

/* ---- symbols and the string hash -------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static const char *sym_str(const clip_tokenizer *t, uint32_t s)
{
    return t->arena + t->sym_off[s];
}

static uint32_t sym_find(const clip_tokenizer *t, const char *s, size_t n)
{
    if (!t->str_slot)
        return NONE;
    for (uint64_t i = hash_bytes(s, n) & t->str_mask;; i = (i + 1) & t->str_mask) {
        uint32_t v = t->str_slot[i];
        if (!v)
            return NONE;
        v--;
        if (t->sym_len[v] == n && !memcmp(sym_str(t, v), s, n))
            return v;
    }
}

static int str_rehash(clip_tokenizer *t, uint32_t cap)
{
    uint32_t *slot = calloc(cap, sizeof *slot);
    if (!slot)
        return COIN_ENOMEM;
    free(t->str_slot);
    t->str_slot = slot;
    t->str_mask = cap - 1;
    for (uint32_t s = 0; s < t->n_sym; s++) {
        uint64_t i = hash_bytes(sym_str(t, s), t->sym_len[s]) & t->str_mask;
        while (slot[i])
            i = (i + 1) & t->str_mask;
        slot[i] = s + 1;
    }
    return 0;
}

/* Finds or adds the symbol for s[0..n).  id >= 0 makes it that vocabulary
 * id's string (a later id for the same string wins, as in a Python dict). */
static int sym_intern(clip_tokenizer *t, const char *s, size_t n, int32_t id,
                      uint32_t *out)
{
    uint32_t v = sym_find(t, s, n);
    if (v == NONE) {
        if (t->n_sym == t->sym_cap) {
            uint32_t cap = t->sym_cap ? t->sym_cap * 2 : 1024;
            uint32_t *off = realloc(t->sym_off, cap * sizeof *off);
            if (off)
                t->sym_off = off;
            uint32_t *len = realloc(t->sym_len, cap * sizeof *len);
            if (len)
                t->sym_len = len;
            int32_t *sid = realloc(t->sym_id, cap * sizeof *sid);
            if (sid)
                t->sym_id = sid;
            if (!off || !len || !sid)
                return COIN_ENOMEM;
            t->sym_cap = cap;
        }
        if (t->arena_len + n + 1 > t->arena_cap) {
            size_t cap = t->arena_cap ? t->arena_cap : 1 << 16;
            while (cap < t->arena_len + n + 1)
                cap *= 2;
            if (cap > UINT32_MAX)
                return COIN_ENOMEM;
            char *a = realloc(t->arena, cap);
            if (!a)
                return COIN_ENOMEM;
            t->arena = a;
            t->arena_cap = cap;
        }
        v = t->n_sym++;
        t->sym_off[v] = (uint32_t)t->arena_len;
        t->sym_len[v] = (uint32_t)n;
        t->sym_id[v] = -1;
        memcpy(t->arena + t->arena_len, s, n);
        t->arena[t->arena_len + n] = '\0';
        t->arena_len += n + 1;
        if ((uint64_t)t->n_sym * 2 > (uint64_t)t->str_mask + (t->str_slot ? 1 : 0)) {
            uint32_t cap = t->str_slot ? (t->str_mask + 1) * 2 : 4096;
            if (str_rehash(t, cap))
                return COIN_ENOMEM;
        } else {
            uint64_t i = hash_bytes(s, n) & t->str_mask;
            while (t->str_slot[i])
                i = (i + 1) & t->str_mask;
            t->str_slot[i] = v + 1;
        }
    }
    if (id >= 0)
        t->sym_id[v] = id;
    *out = v;
    return 0;
}

/* ---- merges ------------------------------------------------------------ */

static uint64_t hash_pair(uint64_t key)
{
    key *= 0x9E3779B97F4A7C15ull;
    return key ^ (key >> 32);
}

static const merge_slot *merge_find(const clip_tokenizer *t, uint32_t a,
                                    uint32_t b)
{
    uint64_t key = (uint64_t)a << 32 | b;
    for (uint64_t i = hash_pair(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const merge_slot *m = &t->merge_slot[i];
        if (m->key == key)
            return m;
        if (m->key == UINT64_MAX)
            return NULL;
    }
}

/* Builds the pair -> rank hash from t->merges; a pair listed twice keeps its
 * last rank, as dict(zip(merges, range(...))) does. */
static int merge_build(clip_tokenizer *t)
{
    uint64_t cap = 1024;
    while (cap < (uint64_t)t->n_merges * 2)
        cap *= 2;
    t->merge_slot = malloc(cap * sizeof *t->merge_slot);
    if (!t->merge_slot)
        return COIN_ENOMEM;
    for (uint64_t i = 0; i < cap; i++)
        t->merge_slot[i].key = UINT64_MAX;
    t->merge_mask = cap - 1;
    for (int r = 0; r < t->n_merges; r++) {
        uint64_t key = (uint64_t)t->merges[r][0] << 32 | t->merges[r][1];
        uint64_t i = hash_pair(key) & t->merge_mask;
        while (t->merge_slot[i].key != UINT64_MAX && t->merge_slot[i].key != key)
            i = (i + 1) & t->merge_mask;
        t->merge_slot[i].key = key;
        t->merge_slot[i].rank = (uint32_t)r;
        t->merge_slot[i].result = t->merges[r][2];
    }
    return 0;
}

static int merge_add(clip_tokenizer *t, const char *a, size_t na,
                     const char *b, size_t nb, int *cap)
{
    if (t->n_merges == *cap) {
        int c = *cap ? *cap * 2 : 4096;
        void *m = realloc(t->merges, (size_t)c * sizeof *t->merges);
        if (!m)
            return COIN_ENOMEM;
        t->merges = m;
        *cap = c;
    }
    char stack[256], *ab = na + nb <= sizeof stack ? stack : malloc(na + nb);
    if (!ab)
        return COIN_ENOMEM;
    memcpy(ab, a, na);
    memcpy(ab + na, b, nb);
    uint32_t *m = t->merges[t->n_merges];
    int rc = sym_intern(t, a, na, -1, &m[0]);
    rc = rc ? rc : sym_intern(t, b, nb, -1, &m[1]);
    rc = rc ? rc : sym_intern(t, ab, na + nb, -1, &m[2]);
    if (ab != stack)
        free(ab);
    if (!rc)
        t->n_merges++;
    return rc;
}

/* ---- the merges file ---------------------------------------------------- */

static int is_ascii_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' ||
           c == '\f';
}

/* Calls fn on each of the first N_MERGES merge lines of text (the first line
 * is a header and is skipped whatever it says, as in CLIPTokenizer: the
 * file is read as text.strip().split("\n")[1:48895]).  parts/np are the
 * line's whitespace-separated fields, up to 3. */
typedef int (*merge_line_fn)(clip_tokenizer *t, int index, const char **part,
                             size_t *part_len, int n_parts, void *ctx);

static int for_each_merge_line(clip_tokenizer *t, const char *text, size_t n,
                               merge_line_fn fn, void *ctx)
{
    size_t i = 0;
    while (i < n && is_ascii_space(text[i]))
        i++;
    while (n > i && is_ascii_space(text[n - 1]))
        n--;
    while (i < n && text[i] != '\n') /* the header */
        i++;
    if (i < n)
        i++;
    else
        return 0;
    for (int line = 0; line < N_MERGES && i <= n; line++) {
        size_t end = i;
        while (end < n && text[end] != '\n')
            end++;
        const char *part[3];
        size_t part_len[3];
        int np = 0;
        for (size_t k = i; k < end;) {
            while (k < end && is_ascii_space(text[k]))
                k++;
            if (k == end)
                break;
            size_t s = k;
            while (k < end && !is_ascii_space(text[k]))
                k++;
            if (np < 3) {
                part[np] = text + s;
                part_len[np] = k - s;
            }
            np++;
        }
        int rc = fn(t, line, part, part_len, np, ctx);
        if (rc)
            return rc;
        i = end + 1;
    }
    return 0;
}

/* For the openai-style file: the vocabulary is built from the merges. */
static int bpe_line(clip_tokenizer *t, int index, const char **part,
                    size_t *part_len, int np, void *ctx)
{
    int *cap = ctx;
    /* vocab.append("".join(merge)): the joined string gets id 512 + index
     * whatever the line holds */
    char stack[512], *joined = stack;
    stack[0] = 0;
    size_t n = 0;
    for (int k = 0; k < np && k < 3; k++)
        n += part_len[k];
    if (n > sizeof stack && !(joined = malloc(n)))
        return COIN_ENOMEM;
    n = 0;
    for (int k = 0; k < np && k < 3; k++) {
        memcpy(joined + n, part[k], part_len[k]);
        n += part_len[k];
    }
    uint32_t s;
    int rc = sym_intern(t, joined, n, 512 + index, &s);
    if (joined != stack)
        free(joined);
    if (!rc && np == 2)
        rc = merge_add(t, part[0], part_len[0], part[1], part_len[1], cap);
    if (!rc)
        t->n_base = 512 + index + 1;
    return rc;
}

static int hf_line(clip_tokenizer *t, int index, const char **part,
                   size_t *part_len, int np, void *ctx)
{
    (void)index;
    if (np != 2) /* a pair never matches a tuple of another length */
        return 0;
    return merge_add(t, part[0], part_len[0], part[1], part_len[1], ctx);
}

/* ---- loading ------------------------------------------------------------ */

static clip_tokenizer *tok_new(void)
{
    clip_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->trie = calloc(16, sizeof *t->trie);
    if (!t->trie) {
        free(t);
        return NULL;
    }
    t->trie_cap = 16;
    t->n_trie = 1;
    t->trie[0].child = t->trie[0].sibling = -1;
    return t;
}

void tokenizer_free(clip_tokenizer *t)
{
    if (!t)
        return;
    free(t->arena);
    free(t->sym_off);
    free(t->sym_len);
    free(t->sym_id);
    free(t->str_slot);
    free(t->id_sym);
    free(t->merges);
    free(t->merge_slot);
    for (int i = 0; i < t->n_added; i++) {
        free(t->added[i].text);
        free(t->added[i].cps);
    }
    free(t->added);
    free(t->trie);
    free(t);
}

static int trie_insert(clip_tokenizer *t, const uint32_t *cps, int n);

/* Everything that follows reading the vocabulary and merges: the byte
 * alphabet, id -> symbol, special ids, the merge hash and the trie. */
static int tok_finish(clip_tokenizer *t, const char *source, coin_error *err)
{
    uint32_t map[256];
    uint8_t order[256];
    bytes_to_unicode(map, order);
    for (int b = 0; b < 256; b++) {
        char s[8];
        int n = uni_encode(map[b], (unsigned char *)s);
        memcpy(s + n, "</w>", 4);
        if (sym_intern(t, s, n, -1, &t->byte_sym[b]) ||
            sym_intern(t, s, n + 4, -1, &t->byte_sym_end[b]))
            return coin_fail(err, COIN_ENOMEM, "out of memory loading %s", source);
    }
    t->id_sym = malloc((size_t)(t->n_base ? t->n_base : 1) * sizeof *t->id_sym);
    if (!t->id_sym)
        return coin_fail(err, COIN_ENOMEM, "out of memory loading %s", source);
    for (int i = 0; i < t->n_base; i++)
        t->id_sym[i] = -1;
    for (uint32_t s = 0; s < t->n_sym; s++)
        if (t->sym_id[s] >= 0)
            t->id_sym[t->sym_id[s]] = (int32_t)s;
    t->n_ids = t->n_base;
    uint32_t s;
    if ((s = sym_find(t, "<|startoftext|>", 15)) == NONE || t->sym_id[s] < 0)
        return coin_fail(err, COIN_EFORMAT,
                         "%s has no <|startoftext|> token; it is not a CLIP vocabulary",
                         source);
    t->bos_id = t->sym_id[s];
    if ((s = sym_find(t, "<|endoftext|>", 13)) == NONE || t->sym_id[s] < 0)
        return coin_fail(err, COIN_EFORMAT,
                         "%s has no <|endoftext|> token; it is not a CLIP vocabulary",
                         source);
    t->eos_id = t->unk_id = t->sym_id[s];
    if (merge_build(t))
        return coin_fail(err, COIN_ENOMEM, "out of memory loading %s", source);
    /* transformers registers the special tokens as added tokens, so the
     * trie splits them out of the raw text */
    static const uint32_t bos[] = {'<', '|', 's', 't', 'a', 'r', 't', 'o', 'f',
                                   't', 'e', 'x', 't', '|', '>'};
    static const uint32_t eos[] = {'<', '|', 'e', 'n', 'd', 'o', 'f', 't', 'e',
                                   'x', 't', '|', '>'};
    if (trie_insert(t, bos, 15) || trie_insert(t, eos, 13))
        return coin_fail(err, COIN_ENOMEM, "out of memory loading %s", source);
    return 0;
}

/* Parses an openai-style merges text (header line, then "a b" lines): ids
 * 0-255 are the byte alphabet, 256-511 the same with </w>, then one per merge
 * line, then <|startoftext|> and <|endoftext|>. */
static int load_bpe_text(clip_tokenizer **out, const char *text, size_t n,
                         const char *source, coin_error *err)
{
    size_t bad;
    const char *why;
    if (!uni_utf8_valid(text, n, &bad, &why))
        return coin_fail(err, COIN_EFORMAT,
                         "%s is not valid UTF-8 (%s at byte %zu); is it a CLIP merges file?",
                         source, why, bad);
    clip_tokenizer *t = tok_new();
    if (!t)
        return coin_fail(err, COIN_ENOMEM, "out of memory loading %s", source);
    uint32_t map[256];
    uint8_t order[256];
    bytes_to_unicode(map, order);
    int rc = 0, cap = 0;
    for (int i = 0; i < 512 && !rc; i++) {
        char s[8];
        int len = uni_encode(map[order[i & 255]], (unsigned char *)s);
        if (i >= 256) {
            memcpy(s + len, "</w>", 4);
            len += 4;
        }
        uint32_t sym;
        rc = sym_intern(t, s, len, i, &sym);
    }
    t->n_base = 512;
    rc = rc ? rc : for_each_merge_line(t, text, n, bpe_line, &cap);
    if (!rc && t->n_merges == 0)
        rc = coin_fail(err, COIN_EFORMAT, "%s holds no merges; is it a CLIP merges file?",
                       source);
    else if (rc)
        rc = coin_fail(err, COIN_ENOMEM, "out of memory loading %s", source);
    uint32_t sym;
    if (!rc && (sym_intern(t, "<|startoftext|>", 15, t->n_base, &sym) ||
                sym_intern(t, "<|endoftext|>", 13, t->n_base + 1, &sym)))
        rc = coin_fail(err, COIN_ENOMEM, "out of memory loading %s", source);
    if (!rc) {
        t->n_base += 2;
        rc = tok_finish(t, source, err);
    }
    if (rc) {
        tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

/* Inflates a gzip stream (at most MAX_FILE bytes out) into *out. */
static int gunzip(const unsigned char *src, size_t n, char **out, size_t *out_n,
                  const char *source, coin_error *err)
{
    size_t cap = n >= 4 ? (size_t)src[n - 4] | (size_t)src[n - 3] << 8 |
                              (size_t)src[n - 2] << 16 | (size_t)src[n - 1] << 24
                        : 0;
    cap = cap < 4096 || cap > MAX_FILE ? 1 << 20 : cap + 1;
    char *buf = malloc(cap);
    if (!buf)
        return coin_fail(err, COIN_ENOMEM, "out of memory inflating %s", source);
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) {
        free(buf);
        return coin_fail(err, COIN_ENOMEM, "zlib could not start inflating %s", source);
    }
    z.next_in = (unsigned char *)src;
    z.avail_in = (uInt)n;
    size_t len = 0;
    int zr;
    do {
        if (len == cap) {
            if (cap >= MAX_FILE) {
                inflateEnd(&z);
                free(buf);
                return coin_fail(err, COIN_EFORMAT,
                                 "%s inflates to more than %u MiB; it is not a CLIP merges file",
                                 source, MAX_FILE >> 20);
            }
            char *b = realloc(buf, cap * 2);
            if (!b) {
                inflateEnd(&z);
                free(buf);
                return coin_fail(err, COIN_ENOMEM, "out of memory inflating %s", source);
            }
            buf = b;
            cap *= 2;
        }
        z.next_out = (unsigned char *)buf + len;
        z.avail_out = (uInt)(cap - len);
        zr = inflate(&z, Z_NO_FLUSH);
        len = cap - z.avail_out;
    } while (zr == Z_OK);
    inflateEnd(&z);
    if (zr != Z_STREAM_END) {
        free(buf);
        return coin_fail(err, COIN_EFORMAT, "%s is not a valid gzip file (%s)", source,
                         zr == Z_BUF_ERROR ? "it ends early" : "corrupt data");
    }
    *out = buf;
    *out_n = len;
    return 0;
}

int tokenizer_load_builtin(clip_tokenizer **out, coin_error *err)
{
    char *text;
    size_t n;
    const char *source = "the built-in CLIP vocabulary";
    *out = NULL;
    int rc = gunzip(coin_vocab_gz, (size_t)(coin_vocab_gz_end - coin_vocab_gz),
                    &text, &n, source, err);
    if (rc)
        return rc;
    rc = load_bpe_text(out, text, n, source, err);
    free(text);
    return rc;
}

/* Reads a whole file (NUL-terminated); COIN_ENOTFOUND when it is not there. */
static int read_file(const char *path, char **out, size_t *out_n,
                     coin_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return coin_fail(err, errno == ENOENT ? COIN_ENOTFOUND : COIN_EIO,
                         "cannot open %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            if (cap >= MAX_FILE) {
                fclose(f);
                free(buf);
                return coin_fail(err, COIN_EFORMAT,
                                 "%s is larger than %u MiB; it is not a tokenizer file",
                                 path, MAX_FILE >> 20);
            }
            cap = cap ? cap * 2 : 1 << 16;
            char *b = realloc(buf, cap + 1);
            if (!b) {
                fclose(f);
                free(buf);
                return coin_fail(err, COIN_ENOMEM, "out of memory reading %s", path);
            }
            buf = b;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return coin_fail(err, COIN_EIO, "error reading %s", path);
    }
    buf[len] = '\0';
    *out = buf;
    *out_n = len;
    return 0;
}

int tokenizer_load_bpe(clip_tokenizer **out, const char *path, coin_error *err)
{
    char *raw, *text;
    size_t n_raw, n;
    *out = NULL;
    int rc = read_file(path, &raw, &n_raw, err);
    if (rc)
        return rc;
    if (n_raw >= 2 && (unsigned char)raw[0] == 0x1F && (unsigned char)raw[1] == 0x8B) {
        rc = gunzip((unsigned char *)raw, n_raw, &text, &n, path, err);
        free(raw);
        if (rc)
            return rc;
    } else {
        text = raw;
        n = n_raw;
    }
    rc = load_bpe_text(out, text, n, path, err);
    free(text);
    return rc;
}

/* Reads a JSON object of string -> integer id (vocab.json, added_tokens.json)
 * and calls fn for each entry, in file order. */
typedef int (*json_entry_fn)(clip_tokenizer *t, const char *key, int id,
                             const char *path, coin_error *err);

static int read_json_ids(clip_tokenizer *t, const char *path, json_entry_fn fn,
                         coin_error *err)
{
    char *text;
    size_t n;
    int rc = read_file(path, &text, &n, err);
    if (rc)
        return rc;
    cJSON *root = cJSON_ParseWithLength(text, n);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return coin_fail(err, COIN_EFORMAT, "%s is not a JSON object of token -> id", path);
    }
    for (cJSON *e = root->child; e && !rc; e = e->next) {
        size_t bad;
        const char *why;
        if (!cJSON_IsNumber(e) || !(e->valuedouble >= 0 && e->valuedouble < MAX_ID) ||
            e->valuedouble != (double)(int)e->valuedouble)
            rc = coin_fail(err, COIN_EFORMAT,
                           "%s: the id of token \"%.64s\" is not an integer in 0..%d",
                           path, e->string ? e->string : "", MAX_ID - 1);
        else if (!uni_utf8_valid(e->string, strlen(e->string), &bad, &why))
            rc = coin_fail(err, COIN_EFORMAT, "%s: a token is not valid UTF-8 (%s)",
                           path, why);
        else
            rc = fn(t, e->string, (int)e->valuedouble, path, err);
    }
    cJSON_Delete(root);
    return rc;
}

static int vocab_entry(clip_tokenizer *t, const char *key, int id,
                       const char *path, coin_error *err)
{
    uint32_t s;
    if (sym_intern(t, key, strlen(key), id, &s))
        return coin_fail(err, COIN_ENOMEM, "out of memory loading %s", path);
    if (id + 1 > t->n_base)
        t->n_base = id + 1;
    return 0;
}

static int add_token_id(clip_tokenizer *t, const char *word, int id,
                        coin_error *err);

static int added_entry(clip_tokenizer *t, const char *key, int id,
                       const char *path, coin_error *err)
{
    int have = tokenizer_token_to_id(t, key);
    if (have == id || !*key) /* transformers skips empty ones too */
        return 0;
    if (have >= 0 || id < t->n_base)
        return coin_fail(err, COIN_EFORMAT,
                         "%s: added token \"%.64s\" with id %d clashes with the vocabulary",
                         path, key, id);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id == id)
            return coin_fail(err, COIN_EFORMAT, "%s: two added tokens have id %d",
                             path, id);
    int rc = add_token_id(t, key, id, err);
    return rc ? coin_error_prefix(err, "%s", path) : 0;
}

int tokenizer_load_hf(clip_tokenizer **out, const char *dir, coin_error *err)
{
    *out = NULL;
    size_t dl = strlen(dir);
    char *path = malloc(dl + 32);
    clip_tokenizer *t = tok_new();
    if (!path || !t) {
        free(path);
        tokenizer_free(t);
        return coin_fail(err, COIN_ENOMEM, "out of memory loading %s", dir);
    }
    char *text = NULL;
    size_t n;
    int cap = 0;
    snprintf(path, dl + 32, "%s/vocab.json", dir);
    int rc = read_json_ids(t, path, vocab_entry, err);
    if (!rc) {
        snprintf(path, dl + 32, "%s/merges.txt", dir);
        rc = read_file(path, &text, &n, err);
    }
    if (!rc) {
        size_t bad;
        const char *why;
        if (!uni_utf8_valid(text, n, &bad, &why))
            rc = coin_fail(err, COIN_EFORMAT, "%s is not valid UTF-8 (%s at byte %zu)",
                           path, why, bad);
        else if (for_each_merge_line(t, text, n, hf_line, &cap))
            rc = coin_fail(err, COIN_ENOMEM, "out of memory loading %s", path);
    }
    free(text);
    if (!rc) {
        snprintf(path, dl + 32, "%s/vocab.json", dir);
        rc = tok_finish(t, path, err);
    }
    if (!rc) {
        /* optional: what textual-inversion tools save beside vocab.json */
        snprintf(path, dl + 32, "%s/added_tokens.json", dir);
        rc = read_json_ids(t, path, added_entry, err);
        if (rc == COIN_ENOTFOUND) {
            coin_error_clear(err);
            rc = 0;
        }
    }
    free(path);
    if (rc) {
        tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

/* ---- added tokens ------------------------------------------------------- */

static int trie_child(const clip_tokenizer *t, int node, uint32_t cp)
{
    for (int c = t->trie[node].child; c >= 0; c = t->trie[c].sibling)
        if (t->trie[c].cp == cp)
            return c;
    return -1;
}

static int trie_insert(clip_tokenizer *t, const uint32_t *cps, int n)
{
    int node = 0;
    for (int i = 0; i < n; i++) {
        int c = trie_child(t, node, cps[i]);
        if (c < 0) {
            if (t->n_trie == t->trie_cap) {
                trie_node *nt = realloc(t->trie, 2 * (size_t)t->trie_cap * sizeof *nt);
                if (!nt)
                    return COIN_ENOMEM;
                t->trie = nt;
                t->trie_cap *= 2;
            }
            c = t->n_trie++;
            t->trie[c].cp = cps[i];
            t->trie[c].child = -1;
            t->trie[c].term = 0;
            t->trie[c].sibling = t->trie[node].child;
            t->trie[node].child = c;
        }
        node = c;
    }
    t->trie[node].term = 1;
    return 0;
}

static int add_token_id(clip_tokenizer *t, const char *word, int id,
                        coin_error *err)
{
    uni_buf cps = {0};
    int rc = uni_decode(word, strlen(word), "the added token", &cps, err);
    if (rc) {
        uni_buf_free(&cps);
        return rc;
    }
    if (t->n_added == t->added_cap) {
        int cap = t->added_cap ? t->added_cap * 2 : 8;
        added_token *a = realloc(t->added, (size_t)cap * sizeof *a);
        if (!a) {
            uni_buf_free(&cps);
            return coin_fail(err, COIN_ENOMEM, "out of memory adding a token");
        }
        t->added = a;
        t->added_cap = cap;
    }
    added_token *a = &t->added[t->n_added];
    a->text = strdup(word);
    a->cps = malloc((cps.n ? cps.n : 1) * sizeof *a->cps);
    a->n_cps = (int)cps.n;
    a->id = id;
    for (size_t i = 0; a->cps && i < cps.n; i++)
        a->cps[i] = cps.v[i].cp;
    uni_buf_free(&cps);
    if (!a->text || !a->cps || trie_insert(t, a->cps, a->n_cps)) {
        free(a->text);
        free(a->cps);
        return coin_fail(err, COIN_ENOMEM, "out of memory adding a token");
    }
    t->n_added++;
    if (id + 1 > t->n_ids)
        t->n_ids = id + 1;
    return 0;
}

int tokenizer_add_token(clip_tokenizer *t, const char *word, int *id,
                        coin_error *err)
{
    if (!word || !*word)
        return coin_fail(err, COIN_EINVAL, "the token to add is empty");
    for (int i = 0; i < t->n_added; i++)
        if (!strcmp(t->added[i].text, word)) {
            *id = t->added[i].id;
            return 0;
        }
    int have = tokenizer_token_to_id(t, word);
    if (have >= 0)
        return coin_fail(err, COIN_EINVAL,
                         "\"%.200s\" is already in the tokenizer's vocabulary (id %d); "
                         "choose a placeholder token that is not, such as \"<%.200s>\"",
                         word, have, word);
    int rc = add_token_id(t, word, t->n_ids, err);
    if (!rc)
        *id = t->added[t->n_added - 1].id;
    return rc;
}

/* The id of the added token (specials included) spelled t[0..n), or -1. */
static int added_id(const clip_tokenizer *tok, const uni_cp *t, size_t n)
{
    static const char *const special[2] = {"<|startoftext|>", "<|endoftext|>"};
    for (int k = 0; k < 2; k++) {
        size_t i = 0;
        while (i < n && special[k][i] && t[i].cp == (unsigned char)special[k][i])
            i++;
        if (i == n && !special[k][i])
            return k ? tok->eos_id : tok->bos_id;
    }
    for (int a = 0; a < tok->n_added; a++) {
        const added_token *at = &tok->added[a];
        if ((size_t)at->n_cps != n)
            continue;
        size_t i = 0;
        while (i < n && t[i].cp == at->cps[i])
            i++;
        if (i == n)
            return at->id;
    }
    return -1;
}

/* transformers' Trie.split, line for line: appends the cut offsets (pairs of
 * start, end of each match) to cut.  Quirks kept on purpose: the match is
 * only seen one character after it ends, earlier partial matches win over
 * later complete ones, and the lookahead walks from states that did not
 * advance on the current character as if they had. */
typedef struct state {
    size_t start;
    int node;
} state;

static int trie_split(const clip_tokenizer *tok, const uni_cp *text, size_t n,
                      size_t **cut, size_t *n_cut)
{
    const trie_node *tr = tok->trie;
    state *st = malloc((n + 1) * sizeof *st);
    size_t *off = malloc((2 * n + 4) * sizeof *off);
    if (!st || !off) {
        free(st);
        free(off);
        return COIN_ENOMEM;
    }
    size_t ns = 0, no = 0, skip = 0;
    off[no++] = 0;
    for (size_t cur = 0; cur < n; cur++) {
        if (skip && cur < skip)
            continue;
        int reset = 0;
        for (size_t si = 0; si < ns; si++) {
            if (st[si].node < 0)
                continue; /* marked for removal */
            size_t start = st[si].start;
            if (tr[st[si].node].term) {
                size_t end = cur;
                for (size_t li = 0; li < ns; li++) {
                    size_t lookstart = st[li].start, la;
                    int lnode = st[li].node;
                    if (lookstart > start)
                        break;
                    if (lnode < 0)
                        lnode = -lnode - 2; /* removed: its stale pointer */
                    if (lookstart < start)
                        la = end = cur + 1;
                    else
                        la = end = cur;
                    if (tr[lnode].term) {
                        start = lookstart;
                        end = la;
                        skip = la;
                    }
                    while (la < n) {
                        int c = trie_child(tok, lnode, text[la].cp);
                        if (c < 0)
                            break;
                        lnode = c;
                        la++;
                        if (tr[lnode].term) {
                            start = lookstart;
                            end = la;
                            skip = la;
                        }
                        if (la == n)
                            break;
                    }
                }
                off[no++] = start;
                off[no++] = end;
                reset = 1;
                break;
            }
            int c = trie_child(tok, st[si].node, text[cur].cp);
            if (c >= 0)
                st[si].node = c;
            else
                st[si].node = -st[si].node - 2; /* to_remove, pointer kept */
        }
        if (reset) {
            ns = 0;
        } else {
            size_t k = 0;
            for (size_t si = 0; si < ns; si++)
                if (st[si].node >= 0)
                    st[k++] = st[si];
            ns = k;
        }
        if (cur >= skip) {
            int c = trie_child(tok, 0, text[cur].cp);
            if (c >= 0) {
                st[ns].start = cur;
                st[ns].node = c;
                ns++;
            }
        }
    }
    for (size_t si = 0; si < ns; si++)
        if (tr[st[si].node].term) {
            off[no++] = st[si].start;
            off[no++] = n;
            break;
        }
    off[no++] = n;
    free(st);
    *cut = off;
    *n_cut = no;
    return 0;
}

/* ---- encoding ----------------------------------------------------------- */

typedef struct heap_entry {
    uint32_t rank, pos, a, b, result;
} heap_entry;

/* Scratch space for one call; nothing in the tokenizer is written. */
typedef struct work {
    uni_buf text, clean, tmp;
    uint32_t *sym;
    int32_t *next, *prev, *origin;
    unsigned char *bytes;
    size_t cap;
    heap_entry *heap;
    size_t n_heap, heap_cap;
    uint32_t *pending;
    size_t n_pending;
    /* the sink */
    int32_t *ids;
    int max, n, mark;
    int32_t mark_at;
} work;

static void emit(work *w, int32_t id, int32_t at)
{
    if (w->n < w->max)
        w->ids[w->n] = id;
    if (w->n == w->mark)
        w->mark_at = at;
    if (w->n < INT32_MAX)
        w->n++;
}

static int work_reserve(work *w, size_t n)
{
    if (n <= w->cap)
        return 0;
    size_t cap = w->cap ? w->cap : 64;
    while (cap < n)
        cap *= 2;
    void *p;
    if (!(p = realloc(w->sym, cap * sizeof *w->sym))) return COIN_ENOMEM;
    w->sym = p;
    if (!(p = realloc(w->next, cap * sizeof *w->next))) return COIN_ENOMEM;
    w->next = p;
    if (!(p = realloc(w->prev, cap * sizeof *w->prev))) return COIN_ENOMEM;
    w->prev = p;
    if (!(p = realloc(w->origin, cap * sizeof *w->origin))) return COIN_ENOMEM;
    w->origin = p;
    if (!(p = realloc(w->bytes, cap))) return COIN_ENOMEM;
    w->bytes = p;
    if (!(p = realloc(w->pending, 2 * cap * sizeof *w->pending))) return COIN_ENOMEM;
    w->pending = p;
    if (!(p = realloc(w->heap, 3 * cap * sizeof *w->heap))) return COIN_ENOMEM;
    w->heap = p;
    w->heap_cap = 3 * cap;
    w->cap = cap;
    return 0;
}

static void work_free(work *w)
{
    uni_buf_free(&w->text);
    uni_buf_free(&w->clean);
    uni_buf_free(&w->tmp);
    free(w->sym);
    free(w->next);
    free(w->prev);
    free(w->origin);
    free(w->bytes);
    free(w->pending);
    free(w->heap);
}

static int heap_less(const heap_entry *x, const heap_entry *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static void heap_push(work *w, heap_entry e)
{
    size_t i = w->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &w->heap[p]))
            break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = e;
}

static heap_entry heap_pop(work *w)
{
    heap_entry top = w->heap[0], last = w->heap[--w->n_heap];
    size_t i = 0, n = w->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && heap_less(&w->heap[c + 1], &w->heap[c]))
            c++;
        if (!heap_less(&w->heap[c], &last))
            break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n)
        w->heap[i] = last;
    return top;
}

/* Queues the pair starting at symbol i, if it has a merge. */
static void push_pair(const clip_tokenizer *t, work *w, int32_t i)
{
    if (i < 0 || w->next[i] < 0 || w->n_heap == w->heap_cap)
        return;
    const merge_slot *m = merge_find(t, w->sym[i], w->sym[w->next[i]]);
    if (m) {
        heap_entry e = {m->rank, (uint32_t)i, w->sym[i], w->sym[w->next[i]],
                        m->result};
        heap_push(w, e);
    }
}

/* BPE on the m bytes in w->bytes (origins in w->origin); emits the ids. */
static void bpe_word(const clip_tokenizer *t, work *w, size_t m)
{
    for (size_t i = 0; i < m; i++) {
        w->sym[i] = i + 1 == m ? t->byte_sym_end[w->bytes[i]] : t->byte_sym[w->bytes[i]];
        w->next[i] = i + 1 == m ? -1 : (int32_t)(i + 1);
        w->prev[i] = (int32_t)i - 1;
    }
    w->n_heap = 0;
    for (size_t i = 0; i + 1 < m; i++)
        push_pair(t, w, (int32_t)i);
    while (w->n_heap) {
        uint32_t rank = w->heap[0].rank;
        w->n_pending = 0;
        while (w->n_heap && w->heap[0].rank == rank) {
            heap_entry e = heap_pop(w);
            int32_t i = (int32_t)e.pos, j = w->next[i];
            if (w->sym[i] != e.a || j < 0 || w->sym[j] != e.b)
                continue; /* stale: a symbol changed since it was queued */
            w->sym[i] = e.result;
            w->sym[j] = NONE;
            w->next[i] = w->next[j];
            if (w->next[j] >= 0)
                w->prev[w->next[j]] = i;
            if (w->prev[i] >= 0)
                w->pending[w->n_pending++] = (uint32_t)w->prev[i];
            w->pending[w->n_pending++] = (uint32_t)i;
        }
        for (size_t k = 0; k < w->n_pending; k++) {
            int32_t i = (int32_t)w->pending[k];
            if (w->sym[i] != NONE)
                push_pair(t, w, i);
        }
    }
    for (int32_t i = 0; i >= 0; i = w->next[i]) {
        int32_t id = t->sym_id[w->sym[i]];
        emit(w, id >= 0 ? id : t->unk_id, w->origin[i]);
    }
}

/* Tokenizes a piece of text that holds no added token. */
static int encode_piece(const clip_tokenizer *t, work *w, const uni_cp *p,
                        size_t n)
{
    if (uni_clip_clean(p, n, &w->clean, &w->tmp))
        return COIN_ENOMEM;
    const uni_cp *c = w->clean.v;
    size_t pos = 0, start, len;
    while (uni_clip_pretoken(c, w->clean.n, &pos, &start, &len)) {
        if (work_reserve(w, 4 * len + 1))
            return COIN_ENOMEM;
        /* the pattern's own special tokens: CLIPTokenizer.bpe's cache maps
         * them to themselves, so they are one vocabulary entry each */
        int special = c[start].cp == '<' ? added_id(t, c + start, len) : -1;
        if (special == t->bos_id || special == t->eos_id) {
            emit(w, special, c[start].at);
            continue;
        }
        size_t m = 0;
        for (size_t k = start; k < start + len; k++) {
            int b = uni_encode(c[k].cp, w->bytes + m);
            for (int q = 0; q < b; q++)
                w->origin[m + q] = c[k].at;
            m += b;
        }
        bpe_word(t, w, m);
    }
    return 0;
}

static int encode_all(const clip_tokenizer *t, const char *text, size_t len,
                      work *w, coin_error *err)
{
    if (!text)
        return coin_fail(err, COIN_EINVAL, "the prompt is NULL");
    int rc = uni_decode(text, len, "the prompt", &w->text, err);
    if (rc)
        return rc;
    size_t *cut, n_cut;
    if (trie_split(t, w->text.v, w->text.n, &cut, &n_cut))
        return coin_fail(err, COIN_ENOMEM, "out of memory tokenizing the prompt");
    size_t start = 0;
    for (size_t k = 0; k < n_cut && !rc; k++) {
        size_t end = cut[k];
        if (start >= end) /* zero-width cuts, and the Trie's "bug" case */
            continue;
        const uni_cp *p = w->text.v + start;
        int id = added_id(t, p, end - start);
        if (id >= 0)
            emit(w, id, p->at);
        else if (encode_piece(t, w, p, end - start))
            rc = coin_fail(err, COIN_ENOMEM, "out of memory tokenizing the prompt");
        start = end;
    }
    free(cut);
    return rc;
}

int tokenizer_tokenize(const clip_tokenizer *t, const char *text, int32_t *ids,
                       int max, int *n, coin_error *err)
{
    work w = {0};
    w.ids = ids;
    w.max = ids && max > 0 ? max : 0;
    w.mark = -1;
    int rc = encode_all(t, text, text ? strlen(text) : 0, &w, err);
    *n = rc ? 0 : w.n;
    work_free(&w);
    return rc;
}

int tokenizer_encode(const clip_tokenizer *t, const char *text, int pad_id,
                     tokenizer_result *out, coin_error *err)
{
    return tokenizer_encode_len(t, text, text ? strlen(text) : 0, pad_id, out,
                                err);
}

int tokenizer_encode_len(const clip_tokenizer *t, const char *text, size_t len,
                         int pad_id, tokenizer_result *out, coin_error *err)
{
    enum { ROOM = CLIP_CONTEXT - 2 };
    work w = {0};
    w.ids = out->ids + 1;
    w.max = ROOM;
    w.mark = ROOM;
    w.mark_at = -1;
    int rc = encode_all(t, text, len, &w, err);
    work_free(&w);
    if (rc)
        return rc;
    int kept = w.n < ROOM ? w.n : ROOM;
    out->ids[0] = t->bos_id;
    out->ids[kept + 1] = t->eos_id;
    for (int i = kept + 2; i < CLIP_CONTEXT; i++)
        out->ids[i] = pad_id;
    out->n_tokens = kept + 2;
    out->n_dropped = w.n - kept;
    out->dropped_at = w.n > ROOM ? w.mark_at : -1;
    return 0;
}

/* ---- lookups ------------------------------------------------------------ */

int tokenizer_vocab_size(const clip_tokenizer *t)
{
    return t->n_ids;
}

const char *tokenizer_id_to_token(const clip_tokenizer *t, int id)
{
    if (id >= 0 && id < t->n_base && t->id_sym[id] >= 0)
        return sym_str(t, (uint32_t)t->id_sym[id]);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id == id)
            return t->added[i].text;
    return NULL;
}

int tokenizer_token_to_id(const clip_tokenizer *t, const char *token)
{
    if (!token)
        return -1;
    for (int i = 0; i < t->n_added; i++)
        if (!strcmp(t->added[i].text, token))
            return t->added[i].id;
    uint32_t s = sym_find(t, token, strlen(token));
    return s == NONE ? -1 : t->sym_id[s];
}

/* ---- export ------------------------------------------------------------- */

static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f); /* UTF-8 passes through: JSON text is UTF-8 */
    }
    fputc('"', f);
}

static int write_done(FILE *f, const char *path, coin_error *err)
{
    int bad = ferror(f);
    if (fclose(f) || bad)
        return coin_fail(err, COIN_EIO, "error writing %s", path);
    return 0;
}

int tokenizer_export_hf(const clip_tokenizer *t, const char *dir,
                        coin_error *err)
{
    size_t dl = strlen(dir);
    char *path = malloc(dl + 32);
    if (!path)
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    int rc = 0;

    snprintf(path, dl + 32, "%s/vocab.json", dir);
    FILE *f = fopen(path, "wb");
    if (!f) {
        rc = coin_fail(err, COIN_EIO, "cannot create %s: %s", path, strerror(errno));
        goto out;
    }
    fputc('{', f);
    int first = 1;
    for (int id = 0; id < t->n_base; id++) {
        int32_t s = t->id_sym[id];
        if (s < 0 || t->sym_id[s] != id) /* a gap, or a string given a later id */
            continue;
        fputs(first ? "\n  " : ",\n  ", f);
        json_string(f, sym_str(t, (uint32_t)s));
        fprintf(f, ": %d", id);
        first = 0;
    }
    fputs("\n}\n", f);
    if ((rc = write_done(f, path, err)))
        goto out;

    snprintf(path, dl + 32, "%s/merges.txt", dir);
    if (!(f = fopen(path, "wb"))) {
        rc = coin_fail(err, COIN_EIO, "cannot create %s: %s", path, strerror(errno));
        goto out;
    }
    fputs("#version: 0.2\n", f);
    for (int r = 0; r < t->n_merges; r++) {
        const merge_slot *m = merge_find(t, t->merges[r][0], t->merges[r][1]);
        if (m->rank != (uint32_t)r) /* superseded by a later duplicate */
            continue;
        fprintf(f, "%s %s\n", sym_str(t, t->merges[r][0]), sym_str(t, t->merges[r][1]));
    }
    if ((rc = write_done(f, path, err)))
        goto out;

    snprintf(path, dl + 32, "%s/added_tokens.json", dir);
    if (!t->n_added) {
        remove(path); /* a stale one would add tokens this tokenizer lacks */
        goto out;
    }
    if (!(f = fopen(path, "wb"))) {
        rc = coin_fail(err, COIN_EIO, "cannot create %s: %s", path, strerror(errno));
        goto out;
    }
    fputc('{', f);
    for (int i = 0; i < t->n_added; i++) {
        fputs(i ? ", " : "", f);
        json_string(f, t->added[i].text);
        fprintf(f, ": %d", t->added[i].id);
    }
    fputs("}\n", f);
    rc = write_done(f, path, err);
out:
    free(path);
    return rc;
}
