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
 *      last) and are merged by rank (bpe.c); a symbol the vocabulary lacks
 *      is the unknown token, <|endoftext|>, as in CLIPTokenizer.
 * Byte offsets travel with every code point, so truncation can say where in
 * the prompt it cut.  This file also loads the vocabulary (the embedded
 * openai merges file, such a file on disk, or a Hugging Face folder) and
 * writes the Hugging Face form.
 */
#include "tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <zlib.h>

#include "bpe.h"
#include "unicode.h"

#define N_MERGES (49152 - 256 - 2) /* CLIPTokenizer reads this many, at most */
#define MAX_FILE (256u << 20)      /* vocabulary files bigger than this are hostile */
#define MAX_ID (1 << 21)           /* ids in vocab.json; CLIP's end at 49407 */

extern const unsigned char coin_vocab_gz[], coin_vocab_gz_end[];

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
    bpe_model bpe;
    int32_t *id_sym; /* base vocabulary id -> symbol, or -1 */
    int n_base;      /* largest base id + 1 */
    int n_ids;       /* next free id */
    int bos_id, eos_id, unk_id;

    added_token *added;
    int n_added, added_cap;
    trie_node *trie; /* node 0 is the root */
    int n_trie, trie_cap;
};

/* ---- the merges file ---------------------------------------------------- */

static int is_ascii_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' ||
           c == '\f';
}

/* Calls fn on each of the first N_MERGES merge lines of text (the first line
 * is a header and is skipped whatever it says, as in CLIPTokenizer: the
 * file is read as text.strip().split("\n")[1:48895]).  line[0..len) is the
 * line; part/part_len its first whitespace-separated fields (up to 3), of
 * which there are n_parts in all. */
typedef int (*merge_line_fn)(clip_tokenizer *t, int index, const char *line,
                             size_t len, const char **part, size_t *part_len,
                             int n_parts);

static int for_each_merge_line(clip_tokenizer *t, const char *text, size_t n,
                               merge_line_fn fn)
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
        int rc = fn(t, line, text + i, end - i, part, part_len, np);
        if (rc)
            return rc;
        i = end + 1;
    }
    return 0;
}

/* For the openai-style file: the vocabulary is built from the merges. */
static int bpe_line(clip_tokenizer *t, int index, const char *line,
                    size_t len, const char **part, size_t *part_len, int np)
{
    /* vocab.append("".join(merge.split())): the joined string gets id
     * 512 + index whatever the line holds */
    char stack[512], *joined = stack;
    stack[0] = '\0';
    if (len > sizeof stack && !(joined = malloc(len)))
        return COIN_ENOMEM;
    size_t n = 0;
    for (size_t k = 0; k < len; k++)
        if (!is_ascii_space(line[k]))
            joined[n++] = line[k];
    uint32_t s;
    int rc = bpe_intern(&t->bpe, joined, n, 512 + index, &s);
    if (joined != stack)
        free(joined);
    if (!rc && np == 2)
        rc = bpe_add_merge(&t->bpe, part[0], part_len[0], part[1], part_len[1]);
    if (!rc)
        t->n_base = 512 + index + 1;
    return rc;
}

static int hf_line(clip_tokenizer *t, int index, const char *line, size_t len,
                   const char **part, size_t *part_len, int np)
{
    (void)index;
    (void)line;
    (void)len;
    if (np != 2) /* a pair never matches a tuple of another length */
        return 0;
    return bpe_add_merge(&t->bpe, part[0], part_len[0], part[1], part_len[1]);
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
    bpe_free(&t->bpe);
    free(t->id_sym);
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
    const bpe_model *m = &t->bpe;
    if (bpe_finish(&t->bpe))
        return coin_fail(err, COIN_ENOMEM, "out of memory loading %s", source);
    t->id_sym = malloc((size_t)(t->n_base ? t->n_base : 1) * sizeof *t->id_sym);
    if (!t->id_sym)
        return coin_fail(err, COIN_ENOMEM, "out of memory loading %s", source);
    for (int i = 0; i < t->n_base; i++)
        t->id_sym[i] = -1;
    for (uint32_t s = 0; s < m->n_sym; s++)
        if (m->sym_id[s] >= 0)
            t->id_sym[m->sym_id[s]] = (int32_t)s;
    t->n_ids = t->n_base;
    uint32_t s;
    if ((s = bpe_find(m, "<|startoftext|>", 15)) == BPE_NONE || m->sym_id[s] < 0)
        return coin_fail(err, COIN_EFORMAT,
                         "%s has no <|startoftext|> token; it is not a CLIP vocabulary",
                         source);
    t->bos_id = m->sym_id[s];
    if ((s = bpe_find(m, "<|endoftext|>", 13)) == BPE_NONE || m->sym_id[s] < 0)
        return coin_fail(err, COIN_EFORMAT,
                         "%s has no <|endoftext|> token; it is not a CLIP vocabulary",
                         source);
    t->eos_id = t->unk_id = m->sym_id[s];
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
    bpe_bytes_to_unicode(map, order);
    int rc = 0;
    for (int i = 0; i < 512 && !rc; i++) {
        char s[8];
        int len = uni_encode(map[order[i & 255]], (unsigned char *)s);
        if (i >= 256) {
            memcpy(s + len, "</w>", 4);
            len += 4;
        }
        uint32_t sym;
        rc = bpe_intern(&t->bpe, s, (size_t)len, i, &sym);
    }
    t->n_base = 512;
    rc = rc ? rc : for_each_merge_line(t, text, n, bpe_line);
    if (!rc && t->bpe.n_merges == 0)
        rc = coin_fail(err, COIN_EFORMAT, "%s holds no merges; is it a CLIP merges file?",
                       source);
    else if (rc)
        rc = coin_fail(err, COIN_ENOMEM, "out of memory loading %s", source);
    uint32_t sym;
    if (!rc && (bpe_intern(&t->bpe, "<|startoftext|>", 15, t->n_base, &sym) ||
                bpe_intern(&t->bpe, "<|endoftext|>", 13, t->n_base + 1, &sym)))
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
    if (bpe_intern(&t->bpe, key, strlen(key), id, &s))
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
        else if (for_each_merge_line(t, text, n, hf_line))
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

/* Scratch space and output of one call; nothing in the tokenizer changes,
 * so tokenizing from several threads at once is fine. */
typedef struct work {
    uni_buf text, clean, tmp;
    bpe_work bpe;
    int32_t *ids; /* the first max ids go here; n counts them all */
    int max, n;
    int mark;        /* the index of the first id that does not fit ... */
    int32_t mark_at; /* ... and the byte offset its text began at */
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

static void work_free(work *w)
{
    uni_buf_free(&w->text);
    uni_buf_free(&w->clean);
    uni_buf_free(&w->tmp);
    bpe_work_free(&w->bpe);
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
        if (bpe_reserve(&w->bpe, 4 * len))
            return COIN_ENOMEM;
        /* the pattern's own special tokens: CLIPTokenizer.bpe's cache maps
         * them to themselves, so they are one vocabulary entry each */
        int special = c[start].cp == '<' ? added_id(t, c + start, len) : -1;
        if (special == t->bos_id || special == t->eos_id) {
            emit(w, special, c[start].at);
            continue;
        }
        bpe_work *bw = &w->bpe;
        size_t m = 0;
        for (size_t k = start; k < start + len; k++) {
            int b = uni_encode(c[k].cp, bw->bytes + m);
            for (int q = 0; q < b; q++)
                bw->origin[m + q] = c[k].at;
            m += (size_t)b;
        }
        bpe_word(&t->bpe, bw, m);
        for (int32_t i = 0; i >= 0; i = bw->next[i]) {
            int32_t id = t->bpe.sym_id[bw->sym[i]];
            emit(w, id >= 0 ? id : t->unk_id, bw->origin[i]);
        }
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
        return bpe_str(&t->bpe, (uint32_t)t->id_sym[id]);
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
    uint32_t s = bpe_find(&t->bpe, token, strlen(token));
    return s == BPE_NONE ? -1 : t->bpe.sym_id[s];
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
        if (s < 0) /* a gap, or a string that a later id took over */
            continue;
        fputs(first ? "\n  " : ",\n  ", f);
        json_string(f, bpe_str(&t->bpe, (uint32_t)s));
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
    const bpe_model *m = &t->bpe;
    for (int r = 0; r < m->n_merges; r++) {
        if (bpe_rank(m, m->merges[r][0], m->merges[r][1]) != r)
            continue; /* superseded by a later duplicate */
        fprintf(f, "%s %s\n", bpe_str(m, m->merges[r][0]), bpe_str(m, m->merges[r][1]));
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
