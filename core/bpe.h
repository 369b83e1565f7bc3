/*
 * bpe.h - the byte-level BPE model behind the CLIP tokenizer (private to
 * core/tokenizer.c).
 *
 * Symbols are interned strings: every vocabulary entry, plus any string the
 * merges or the byte alphabet produce that the vocabulary lacks (those have
 * no id and encode as the unknown token).  Merge ranks sit in a hash keyed by
 * the pair of symbols, so one merge step costs one probe.
 */
#ifndef COIN_BPE_H
#define COIN_BPE_H

#include <stddef.h>
#include <stdint.h>

#define BPE_NONE UINT32_MAX

typedef struct bpe_merge_slot {
    uint64_t key; /* symbol a << 32 | symbol b; UINT64_MAX when empty */
    uint32_t rank, result;
} bpe_merge_slot;

typedef struct bpe_model {
    /* symbols: NUL-terminated strings in one arena */
    char *arena;
    size_t arena_len, arena_cap;
    uint32_t *sym_off, *sym_len;
    int32_t *sym_id; /* vocabulary id, or -1 */
    uint32_t n_sym, sym_cap;
    uint32_t *str_slot; /* string hash: symbol + 1, 0 when empty */
    uint32_t str_mask;
    /* merges in rank order: a, b, result */
    uint32_t (*merges)[3];
    int n_merges, merges_cap;
    bpe_merge_slot *merge_slot;
    uint64_t merge_mask;
    /* the symbol of each byte, alone and at the end of a word ("</w>") */
    uint32_t byte_sym[256], byte_sym_end[256];
} bpe_model;

/* CLIP's reversible byte -> code point map: printable Latin-1 bytes map to
 * themselves, the other 68 to U+0100 upwards in byte order.  order[] lists
 * the bytes in bytes_to_unicode's dict order (the vocabulary's ids 0-255). */
void bpe_bytes_to_unicode(uint32_t map[256], uint8_t order[256]);

void bpe_free(bpe_model *m);

/* Finds or adds the symbol for s[0..n).  id >= 0 makes it that vocabulary
 * id's string (a later id for the same string wins, as in a Python dict).
 * Returns 0 or COIN_ENOMEM. */
int bpe_intern(bpe_model *m, const char *s, size_t n, int32_t id, uint32_t *sym);
/* The symbol spelled s[0..n), or BPE_NONE. */
uint32_t bpe_find(const bpe_model *m, const char *s, size_t n);
static inline const char *bpe_str(const bpe_model *m, uint32_t sym)
{
    return m->arena + m->sym_off[sym];
}

/* Appends the merge "a b" with the next rank.  Returns 0 or COIN_ENOMEM. */
int bpe_add_merge(bpe_model *m, const char *a, size_t na, const char *b,
                  size_t nb);
/* Call once all vocabulary and merges are in: interns the byte alphabet and
 * builds the merge hash (a pair listed twice keeps its last rank, as
 * dict(zip(merges, range(...))) does).  Returns 0 or COIN_ENOMEM. */
int bpe_finish(bpe_model *m);
/* The rank of merge (a, b), or -1. */
int bpe_rank(const bpe_model *m, uint32_t a, uint32_t b);

typedef struct bpe_heap_entry {
    uint32_t rank, pos, a, b, result;
} bpe_heap_entry;

/* Scratch space for encoding words; zero-initialise it. */
typedef struct bpe_work {
    unsigned char *bytes; /* the word to encode */
    int32_t *origin;      /* caller's tag of each byte (a text offset) */
    uint32_t *sym;        /* after bpe_word: the symbols ... */
    int32_t *next, *prev; /* ... as a list from index 0 along next, to -1 */
    size_t cap;
    bpe_heap_entry *heap;
    size_t n_heap, heap_cap;
    uint32_t *pending;
    size_t n_pending;
} bpe_work;

/* Makes room for words of n bytes.  Returns 0 or COIN_ENOMEM. */
int bpe_reserve(bpe_work *w, size_t n);
void bpe_work_free(bpe_work *w);
/* BPE on w->bytes[0..n) (n >= 1): the word is split into byte symbols,
 * "</w>" joined to the last, and merged by rank until no pair has one.
 * The result is the list w->sym[i] for i = 0, w->next[0], ... while i >= 0;
 * symbol i began at byte i, so w->origin[i] tags it. */
void bpe_word(const bpe_model *m, bpe_work *w, size_t n);

#endif
