/*
 * bpe.c - symbols, merge ranks and the BPE merge loop (see bpe.h).
 *
 * CLIPTokenizer.bpe repeats "find the lowest-ranked pair in the word, merge
 * all its occurrences left to right", which is quadratic in the word length.
 * This uses a heap of candidate pairs instead.  To give identical results it
 * pops all entries of the lowest rank as one batch, left to right, and only
 * then queues the pairs those merges created: a new pair of lower rank must
 * not jump ahead of the batch's remaining occurrences, which Python merges
 * first.  Stale entries (a symbol changed since the pair was queued) are
 * skipped when popped.
 */
#include "bpe.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "unicode.h"

void bpe_bytes_to_unicode(uint32_t map[256], uint8_t order[256])
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

void bpe_free(bpe_model *m)
{
    free(m->arena);
    free(m->sym_off);
    free(m->sym_len);
    free(m->sym_id);
    free(m->str_slot);
    free(m->merges);
    free(m->merge_slot);
    memset(m, 0, sizeof *m);
}

/* ---- symbols ------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

uint32_t bpe_find(const bpe_model *m, const char *s, size_t n)
{
    if (!m->str_slot)
        return BPE_NONE;
    for (uint64_t i = hash_bytes(s, n) & m->str_mask;; i = (i + 1) & m->str_mask) {
        uint32_t v = m->str_slot[i];
        if (!v)
            return BPE_NONE;
        v--;
        if (m->sym_len[v] == n && !memcmp(bpe_str(m, v), s, n))
            return v;
    }
}

static void str_insert(bpe_model *m, uint32_t sym)
{
    uint64_t i = hash_bytes(bpe_str(m, sym), m->sym_len[sym]) & m->str_mask;
    while (m->str_slot[i])
        i = (i + 1) & m->str_mask;
    m->str_slot[i] = sym + 1;
}

int bpe_intern(bpe_model *m, const char *s, size_t n, int32_t id, uint32_t *out)
{
    uint32_t v = bpe_find(m, s, n);
    if (v == BPE_NONE) {
        if (m->n_sym == m->sym_cap) {
            uint32_t cap = m->sym_cap ? m->sym_cap * 2 : 1024;
            uint32_t *off = realloc(m->sym_off, cap * sizeof *off);
            if (off)
                m->sym_off = off;
            uint32_t *len = realloc(m->sym_len, cap * sizeof *len);
            if (len)
                m->sym_len = len;
            int32_t *sid = realloc(m->sym_id, cap * sizeof *sid);
            if (sid)
                m->sym_id = sid;
            if (!off || !len || !sid)
                return COIN_ENOMEM;
            m->sym_cap = cap;
        }
        if (m->arena_len + n + 1 > m->arena_cap) {
            size_t cap = m->arena_cap ? m->arena_cap : 1 << 16;
            while (cap < m->arena_len + n + 1)
                cap *= 2;
            if (cap > UINT32_MAX)
                return COIN_ENOMEM;
            char *a = realloc(m->arena, cap);
            if (!a)
                return COIN_ENOMEM;
            m->arena = a;
            m->arena_cap = cap;
        }
        v = m->n_sym++;
        m->sym_off[v] = (uint32_t)m->arena_len;
        m->sym_len[v] = (uint32_t)n;
        m->sym_id[v] = -1;
        memcpy(m->arena + m->arena_len, s, n);
        m->arena[m->arena_len + n] = '\0';
        m->arena_len += n + 1;
        uint64_t slots = m->str_slot ? (uint64_t)m->str_mask + 1 : 0;
        if ((uint64_t)m->n_sym * 2 > slots) { /* keep the load under 1/2 */
            uint32_t cap = slots ? (uint32_t)slots * 2 : 1 << 16;
            uint32_t *slot = calloc(cap, sizeof *slot);
            if (!slot)
                return COIN_ENOMEM;
            free(m->str_slot);
            m->str_slot = slot;
            m->str_mask = cap - 1;
            for (uint32_t k = 0; k < m->n_sym; k++)
                str_insert(m, k);
        } else {
            str_insert(m, v);
        }
    }
    if (id >= 0)
        m->sym_id[v] = id;
    *out = v;
    return 0;
}

/* ---- merges -------------------------------------------------------------- */

static uint64_t hash_pair(uint64_t key)
{
    key *= 0x9E3779B97F4A7C15ull;
    return key ^ (key >> 32);
}

static const bpe_merge_slot *merge_find(const bpe_model *m, uint32_t a,
                                        uint32_t b)
{
    uint64_t key = (uint64_t)a << 32 | b;
    for (uint64_t i = hash_pair(key) & m->merge_mask;; i = (i + 1) & m->merge_mask) {
        const bpe_merge_slot *s = &m->merge_slot[i];
        if (s->key == key)
            return s;
        if (s->key == UINT64_MAX)
            return NULL;
    }
}

int bpe_rank(const bpe_model *m, uint32_t a, uint32_t b)
{
    const bpe_merge_slot *s = merge_find(m, a, b);
    return s ? (int)s->rank : -1;
}

int bpe_add_merge(bpe_model *m, const char *a, size_t na, const char *b,
                  size_t nb)
{
    if (m->n_merges == m->merges_cap) {
        int c = m->merges_cap ? m->merges_cap * 2 : 4096;
        void *p = realloc(m->merges, (size_t)c * sizeof *m->merges);
        if (!p)
            return COIN_ENOMEM;
        m->merges = p;
        m->merges_cap = c;
    }
    char stack[256], *ab = na + nb <= sizeof stack ? stack : malloc(na + nb);
    if (!ab)
        return COIN_ENOMEM;
    memcpy(ab, a, na);
    memcpy(ab + na, b, nb);
    uint32_t *mg = m->merges[m->n_merges];
    int rc = bpe_intern(m, a, na, -1, &mg[0]);
    rc = rc ? rc : bpe_intern(m, b, nb, -1, &mg[1]);
    rc = rc ? rc : bpe_intern(m, ab, na + nb, -1, &mg[2]);
    if (ab != stack)
        free(ab);
    if (!rc)
        m->n_merges++;
    return rc;
}

int bpe_finish(bpe_model *m)
{
    uint32_t map[256];
    uint8_t order[256];
    bpe_bytes_to_unicode(map, order);
    for (int b = 0; b < 256; b++) {
        char s[8];
        int n = uni_encode(map[b], (unsigned char *)s);
        memcpy(s + n, "</w>", 4);
        if (bpe_intern(m, s, (size_t)n, -1, &m->byte_sym[b]) ||
            bpe_intern(m, s, (size_t)n + 4, -1, &m->byte_sym_end[b]))
            return COIN_ENOMEM;
    }
    uint64_t cap = 1024;
    while (cap < (uint64_t)m->n_merges * 2)
        cap *= 2;
    m->merge_slot = malloc(cap * sizeof *m->merge_slot);
    if (!m->merge_slot)
        return COIN_ENOMEM;
    for (uint64_t i = 0; i < cap; i++)
        m->merge_slot[i].key = UINT64_MAX;
    m->merge_mask = cap - 1;
    for (int r = 0; r < m->n_merges; r++) {
        uint64_t key = (uint64_t)m->merges[r][0] << 32 | m->merges[r][1];
        uint64_t i = hash_pair(key) & m->merge_mask;
        while (m->merge_slot[i].key != UINT64_MAX && m->merge_slot[i].key != key)
            i = (i + 1) & m->merge_mask;
        m->merge_slot[i].key = key;
        m->merge_slot[i].rank = (uint32_t)r;
        m->merge_slot[i].result = m->merges[r][2];
    }
    return 0;
}

/* ---- the merge loop -------------------------------------------------------- */

int bpe_reserve(bpe_work *w, size_t n)
{
    if (n <= w->cap)
        return 0;
    size_t cap = w->cap ? w->cap : 64;
    while (cap < n)
        cap *= 2;
    void *p;
    if (!(p = realloc(w->bytes, cap)))
        return COIN_ENOMEM;
    w->bytes = p;
    if (!(p = realloc(w->origin, cap * sizeof *w->origin)))
        return COIN_ENOMEM;
    w->origin = p;
    if (!(p = realloc(w->sym, cap * sizeof *w->sym)))
        return COIN_ENOMEM;
    w->sym = p;
    if (!(p = realloc(w->next, cap * sizeof *w->next)))
        return COIN_ENOMEM;
    w->next = p;
    if (!(p = realloc(w->prev, cap * sizeof *w->prev)))
        return COIN_ENOMEM;
    w->prev = p;
    /* each merge queues at most two pairs: 3n entries bound the heap */
    if (!(p = realloc(w->pending, 2 * cap * sizeof *w->pending)))
        return COIN_ENOMEM;
    w->pending = p;
    if (!(p = realloc(w->heap, 3 * cap * sizeof *w->heap)))
        return COIN_ENOMEM;
    w->heap = p;
    w->heap_cap = 3 * cap;
    w->cap = cap;
    return 0;
}

void bpe_work_free(bpe_work *w)
{
    free(w->bytes);
    free(w->origin);
    free(w->sym);
    free(w->next);
    free(w->prev);
    free(w->pending);
    free(w->heap);
    memset(w, 0, sizeof *w);
}

/* Heap order: rank, then position, so that one rank pops left to right. */
static int heap_less(const bpe_heap_entry *x, const bpe_heap_entry *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static void heap_push(bpe_work *w, bpe_heap_entry e)
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

static bpe_heap_entry heap_pop(bpe_work *w)
{
    bpe_heap_entry top = w->heap[0], last = w->heap[--w->n_heap];
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

/* Queues the pair that starts at symbol i, if it has a merge. */
static void push_pair(const bpe_model *m, bpe_work *w, int32_t i)
{
    if (i < 0 || w->next[i] < 0 || w->n_heap == w->heap_cap)
        return;
    uint32_t a = w->sym[i], b = w->sym[w->next[i]];
    const bpe_merge_slot *s = merge_find(m, a, b);
    if (s) {
        bpe_heap_entry e = {s->rank, (uint32_t)i, a, b, s->result};
        heap_push(w, e);
    }
}

void bpe_word(const bpe_model *m, bpe_work *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        w->sym[i] = i + 1 == n ? m->byte_sym_end[w->bytes[i]] : m->byte_sym[w->bytes[i]];
        w->next[i] = i + 1 == n ? -1 : (int32_t)(i + 1);
        w->prev[i] = (int32_t)i - 1;
    }
    w->n_heap = 0;
    for (size_t i = 0; i + 1 < n; i++)
        push_pair(m, w, (int32_t)i);
    while (w->n_heap) {
        uint32_t rank = w->heap[0].rank;
        w->n_pending = 0;
        while (w->n_heap && w->heap[0].rank == rank) {
            bpe_heap_entry e = heap_pop(w);
            int32_t i = (int32_t)e.pos, j = w->next[i];
            if (w->sym[i] != e.a || j < 0 || w->sym[j] != e.b)
                continue; /* stale */
            w->sym[i] = e.result;
            w->sym[j] = BPE_NONE;
            w->next[i] = w->next[j];
            if (w->next[j] >= 0)
                w->prev[w->next[j]] = i;
            if (w->prev[i] >= 0)
                w->pending[w->n_pending++] = (uint32_t)w->prev[i];
            w->pending[w->n_pending++] = (uint32_t)i;
        }
        for (size_t k = 0; k < w->n_pending; k++) {
            int32_t i = (int32_t)w->pending[k];
            if (w->sym[i] != BPE_NONE)
                push_pair(m, w, i);
        }
    }
}
