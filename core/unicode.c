/*
 * unicode.c - UTF-8 decoding and CLIPTokenizer's text clean-up, in C.
 *
 * The reference is transformers 4.46 CLIPTokenizer without ftfy, running on
 * Python 3.11.  Its _tokenize does " ".join(BasicTokenizer.tokenize(text))
 * and then regex.findall(pattern, text); BasicTokenizer (strip_accents=False,
 * do_split_on_punc=False) does, in this order:
 *   _clean_text     drop U+0000, U+FFFD and every category C* character
 *                   (Cc, Cf, Cs, Co and unassigned Cn) except \t \n \r, and
 *                   turn \t \n \r and category Zs into ' ';
 *   _tokenize_chinese_chars   put ' ' on both sides of each CJK ideograph;
 *   NFC;
 *   str.split()     (after cleaning only ' ', U+2028 and U+2029 are left
 *                   that Python counts as whitespace);
 *   str.lower() on each word (full mapping: U+0130 becomes "i\u0307"; a
 *                   capital sigma at the end of a word becomes final sigma).
 * utf8proc provides categories, NFC and simple lower-casing.  Two points where
 * utf8proc and Python 3.11 differ are patched here: Python's unicodedata is
 * Unicode 14.0, so characters assigned later are "Cn" to it and dropped (see
 * post14[]), and U+0345, which the regex module's IGNORECASE matching lets no
 * branch of the pattern match, so findall skips it.
 */
#include "unicode.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

void uni_buf_free(uni_buf *b)
{
    free(b->v);
    b->v = NULL;
    b->n = b->cap = 0;
}

static int buf_reserve(uni_buf *b, size_t need)
{
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    uni_cp *v = realloc(b->v, cap * sizeof *v);
    if (!v)
        return COIN_ENOMEM;
    b->v = v;
    b->cap = cap;
    return 0;
}

static int buf_push(uni_buf *b, uint32_t cp, int32_t at)
{
    if (b->n == b->cap && buf_reserve(b, b->n + 1))
        return COIN_ENOMEM;
    b->v[b->n].cp = cp;
    b->v[b->n].at = at;
    b->n++;
    return 0;
}

/* ---- UTF-8 ------------------------------------------------------------ */

/* Decodes one code point at s[i] (i < n).  Returns its length, or 0 with a
 * reason in *why. */
static int utf8_one(const unsigned char *s, size_t n, size_t i, uint32_t *cp,
                    const char **why)
{
    unsigned b = s[i];
    int len;
    uint32_t c;
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    if (b < 0xC0) {
        *why = "a continuation byte with no lead byte";
        return 0;
    }
    if (b < 0xC2) {
        *why = "an overlong encoding";
        return 0;
    }
    if (b < 0xE0) {
        len = 2;
        c = b & 0x1F;
    } else if (b < 0xF0) {
        len = 3;
        c = b & 0x0F;
    } else if (b < 0xF5) {
        len = 4;
        c = b & 0x07;
    } else {
        *why = "a byte that would start a code point past U+10FFFF";
        return 0;
    }
    for (int k = 1; k < len; k++) {
        if (i + k >= n || (s[i + k] & 0xC0) != 0x80) {
            *why = "a truncated multi-byte sequence";
            return 0;
        }
        c = (c << 6) | (s[i + k] & 0x3F);
    }
    if ((len == 3 && c < 0x800) || (len == 4 && c < 0x10000)) {
        *why = "an overlong encoding";
        return 0;
    }
    if (c >= 0xD800 && c <= 0xDFFF) {
        *why = "a UTF-16 surrogate (U+D800..U+DFFF)";
        return 0;
    }
    if (c > 0x10FFFF) {
        *why = "a code point past U+10FFFF";
        return 0;
    }
    *cp = c;
    return len;
}

int uni_utf8_valid(const char *s, size_t n, size_t *bad_at, const char **why)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) { /* the common case, kept cheap for big files */
            i++;
            continue;
        }
        uint32_t cp;
        int len = utf8_one(u, n, i, &cp, why);
        if (!len) {
            *bad_at = i;
            return 0;
        }
        i += len;
    }
    return 1;
}

int uni_decode(const char *s, size_t n, const char *what, uni_buf *out,
               coin_error *err)
{
    const unsigned char *u = (const unsigned char *)s;
    out->n = 0;
    if (n > INT32_MAX / 2)
        return coin_fail(err, COIN_EINVAL, "%s is too long (%zu bytes)", what, n);
    if (buf_reserve(out, n + 1))
        return coin_fail(err, COIN_ENOMEM, "out of memory decoding %s", what);
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        const char *why = "";
        int len = utf8_one(u, n, i, &cp, &why);
        if (!len)
            return coin_fail(err, COIN_EINVAL,
                             "%s is not valid UTF-8: %s at byte offset %zu "
                             "(byte 0x%02X)", what, why, i, u[i]);
        out->v[out->n].cp = cp;
        out->v[out->n].at = (int32_t)i;
        out->n++;
        i += len;
    }
    return 0;
}

int uni_encode(uint32_t cp, unsigned char *o)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- character classes ------------------------------------------------ */

/* Code points assigned after Unicode 14.0 (up to 17.0), which Python 3.11's
 * unicodedata calls Cn, so that BasicTokenizer drops them.  Ranges may span
 * code points unassigned in every version.  Generated by comparing
 * unicodedata.category (14.0) with the regex module's \P{Cn}. */
static const uint32_t post14[][2] = {
    {0x558, 0x558}, {0x58B, 0x58C}, {0x5C8, 0x5C9}, {0x88F, 0x88F},
    {0x897, 0x897}, {0xB53, 0xB54}, {0xC5C, 0xC5C}, {0xCDC, 0xCDC},
    {0xCF3, 0xCF3}, {0xECE, 0xECE}, {0x1ACF, 0x1AF0}, {0x1B4E, 0x1B4F},
    {0x1B7F, 0x1B7F}, {0x1C89, 0x1C8A}, {0x208F, 0x208F}, {0x209D, 0x209F},
    {0x20C1, 0x20C4}, {0x2427, 0x2429}, {0x2B96, 0x2B96}, {0x2E60, 0x2E63},
    {0x2FFC, 0x2FFF}, {0x31E4, 0x31EF}, {0xA7CB, 0xA7CF}, {0xA7D2, 0xA7D2},
    {0xA7D4, 0xA7D4}, {0xA7DA, 0xA7F1}, {0xAB6C, 0xAB6D}, {0xFBC3, 0xFBD2},
    {0xFD90, 0xFD91}, {0xFDC8, 0xFDCE}, {0x105C0, 0x105F3}, {0x107BB, 0x107BF},
    {0x10940, 0x10959}, {0x10D40, 0x10D8F}, {0x10EC2, 0x10EFF},
    {0x1123F, 0x11241}, {0x11380, 0x113E2}, {0x116D0, 0x116E3},
    {0x11B00, 0x11BF9}, {0x11DB0, 0x11DF1}, {0x11F00, 0x11F5A},
    {0x1246F, 0x1246F}, {0x12475, 0x1247F}, {0x12550, 0x12686},
    {0x1342F, 0x1342F}, {0x13439, 0x143FA}, {0x16100, 0x16139},
    {0x16D40, 0x16D79}, {0x16EA0, 0x16ED3}, {0x16FF2, 0x16FF6},
    {0x187F8, 0x187FF}, {0x18CD6, 0x18CFF}, {0x18D09, 0x191D2},
    {0x1B123, 0x1B132}, {0x1B155, 0x1B155}, {0x1B168, 0x1B168},
    {0x1CC00, 0x1CEFD}, {0x1D127, 0x1D128}, {0x1D1EB, 0x1D1FF},
    {0x1D250, 0x1D2D3}, {0x1D6A6, 0x1D6A6}, {0x1DB00, 0x1DB1C},
    {0x1DF1F, 0x1DFFF}, {0x1E030, 0x1E08F}, {0x1E4D0, 0x1E6FF},
    {0x1F1AE, 0x1F1AE}, {0x1F6D8, 0x1F6DC}, {0x1F774, 0x1F77F},
    {0x1F7D9, 0x1F7DB}, {0x1F7F1, 0x1F7FF}, {0x1F8B2, 0x1F8D8},
    {0x1FA54, 0x1FA57}, {0x1FA75, 0x1FA77}, {0x1FA87, 0x1FA8F},
    {0x1FAAD, 0x1FAAF}, {0x1FABB, 0x1FABF}, {0x1FAC6, 0x1FACF},
    {0x1FADA, 0x1FADF}, {0x1FAE8, 0x1FAEF}, {0x1FAF7, 0x1FAFA},
    {0x1FBCB, 0x1FBEF}, {0x1FBFA, 0x1FBFA}, {0x2B739, 0x2B73F},
    {0x2B81E, 0x2B81E}, {0x2CEA2, 0x2CEAD}, {0x2EBF0, 0x2EE5D},
    {0x31350, 0x3FC3F},
};

static int assigned_after_14(uint32_t c)
{
    size_t lo = 0, hi = sizeof post14 / sizeof post14[0];
    if (c < post14[0][0])
        return 0;
    while (lo < hi) { /* first range whose end is >= c */
        size_t mid = (lo + hi) / 2;
        if (post14[mid][1] < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < sizeof post14 / sizeof post14[0] && post14[lo][0] <= c;
}

/* BasicTokenizer._clean_text drops these: NUL, U+FFFD and _is_control. */
static int dropped_by_clean(uint32_t c)
{
    if (c == 0 || c == 0xFFFD)
        return 1;
    if (c == '\t' || c == '\n' || c == '\r')
        return 0;
    if (c < 0x80)
        return c < 0x20 || c == 0x7F;
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
        return 1;
    default:
        return assigned_after_14(c);
    }
}

/* _is_whitespace: ' ', \t, \n, \r and category Zs. */
static int clean_space(uint32_t c)
{
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
        return 1;
    return c >= 0x80 && utf8proc_category((utf8proc_int32_t)c) ==
                            UTF8PROC_CATEGORY_ZS;
}

/* BasicTokenizer._is_chinese_char: the CJK ideograph blocks BERT uses. */
static int is_cjk(uint32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* Whether NFC can be computed separately on the text before and from c:
 * c must be a starter that never composes with what precedes it.  All
 * characters that compose as a second element are combining marks, the
 * Hangul medial vowels and final consonants, or (U+0B3E and the like)
 * category Mc/Mn, so a ccc=0 character outside those is a safe cut. */
static int nfc_boundary(uint32_t c)
{
    if (c < 0x300)
        return 1;
    if ((c >= 0x1161 && c <= 0x1175) || (c >= 0x11A8 && c <= 0x11C2))
        return 0;
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)c);
    if (p->combining_class != 0)
        return 0;
    return p->category != UTF8PROC_CATEGORY_MN &&
           p->category != UTF8PROC_CATEGORY_MC &&
           p->category != UTF8PROC_CATEGORY_ME;
}

/* Python's Cased property (CPython _PyUnicode_IsCased), from categories and
 * case mappings plus the Other_Lowercase/Other_Uppercase characters that
 * have neither.  (Lm members of Other_Lowercase do not matter here: they are
 * case-ignorable, which the final-sigma test checks first.) */
static int is_cased(uint32_t c)
{
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    if (k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL ||
        k == UTF8PROC_CATEGORY_LT)
        return 1;
    if (utf8proc_tolower((utf8proc_int32_t)c) != (utf8proc_int32_t)c ||
        utf8proc_toupper((utf8proc_int32_t)c) != (utf8proc_int32_t)c)
        return 1;
    return c == 0xAA || c == 0xBA || (c >= 0x1F130 && c <= 0x1F149) ||
           (c >= 0x1F150 && c <= 0x1F169) || (c >= 0x1F170 && c <= 0x1F189);
}

/* Python's Case_Ignorable: Mn Me Cf Lm Sk, and Word_Break MidLetter,
 * MidNumLet or Single_Quote. */
static int is_case_ignorable(uint32_t c)
{
    static const uint32_t word_break[] = {
        0x27, 0x2E, 0x3A, 0xB7, 0x387, 0x55F, 0x5F4, 0x2018, 0x2019,
        0x2024, 0x2027, 0xFE13, 0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A,
    };
    for (size_t i = 0; i < sizeof word_break / sizeof word_break[0]; i++)
        if (c == word_break[i])
            return 1;
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK:
        return 1;
    default:
        return 0;
    }
}

/* CPython's handle_capital_sigma: U+03A3 at w[i] lowers to final sigma when
 * a cased letter precedes it and none follows (case-ignorables skipped). */
static int final_sigma(const uni_cp *w, size_t n, size_t i)
{
    size_t j = i;
    while (j > 0 && is_case_ignorable(w[j - 1].cp))
        j--;
    if (j == 0 || !is_cased(w[j - 1].cp))
        return 0;
    for (j = i + 1; j < n && is_case_ignorable(w[j].cp); j++)
        ;
    return j == n || !is_cased(w[j].cp);
}

/* ---- the clean-up --------------------------------------------------------- */

static int ccc(utf8proc_int32_t c)
{
    return c < 0x300 ? 0 : utf8proc_get_property(c)->combining_class;
}

/* Canonical ordering: a stable sort by combining class of each run of
 * non-starters.  utf8proc_decompose does this with a bubble sort, which a
 * long run of alternating marks turns quadratic (64 KB took 1.6 s); this is a
 * counting sort for long runs, insertion sort for the usual short ones. */
static int canonical_order(utf8proc_int32_t *d, size_t n)
{
    for (size_t a = 0; a < n;) {
        if (!ccc(d[a])) {
            a++;
            continue;
        }
        size_t b = a + 1;
        while (b < n && ccc(d[b]))
            b++;
        if (b - a <= 32) {
            for (size_t i = a + 1; i < b; i++) {
                utf8proc_int32_t c = d[i];
                int k = ccc(c);
                size_t j = i;
                for (; j > a && ccc(d[j - 1]) > k; j--)
                    d[j] = d[j - 1];
                d[j] = c;
            }
        } else {
            size_t count[257] = {0};
            utf8proc_int32_t *tmp = malloc((b - a) * sizeof *tmp);
            if (!tmp)
                return COIN_ENOMEM;
            for (size_t i = a; i < b; i++)
                count[ccc(d[i]) + 1]++;
            for (int k = 1; k < 257; k++)
                count[k] += count[k - 1];
            for (size_t i = a; i < b; i++)
                tmp[count[ccc(d[i])]++] = d[i];
            memcpy(d + a, tmp, (b - a) * sizeof *tmp);
            free(tmp);
        }
        a = b;
    }
    return 0;
}

/* Appends NFC of seg[0..n) to out; every output code point gets the origin
 * of the segment's first one. */
static int nfc_segment(const uni_cp *seg, size_t n, uni_buf *out)
{
    if (n == 1 && seg[0].cp < 0x300) /* nothing below U+0300 changes alone */
        return buf_push(out, seg[0].cp, seg[0].at);
    const utf8proc_option_t opt = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    utf8proc_int32_t stack[64], *d = stack;
    size_t cap = sizeof stack / sizeof stack[0], len = 0;
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        for (;;) { /* canonical decomposition, growing d as needed */
            utf8proc_ssize_t m = utf8proc_decompose_char(
                (utf8proc_int32_t)seg[i].cp, d + len, (utf8proc_ssize_t)(cap - len),
                opt, NULL);
            if (m < 0) { /* not on valid code points; keep the character */
                d[len] = (utf8proc_int32_t)seg[i].cp;
                m = 1;
            }
            if ((size_t)m <= cap - len) {
                len += (size_t)m;
                break;
            }
            size_t c2 = 2 * cap + (size_t)m;
            utf8proc_int32_t *nd = malloc(c2 * sizeof *nd);
            if (!nd) {
                rc = COIN_ENOMEM;
                break;
            }
            memcpy(nd, d, len * sizeof *d);
            if (d != stack)
                free(d);
            d = nd;
            cap = c2;
        }
    }
    rc = rc ? rc : canonical_order(d, len);
    if (!rc) {
        utf8proc_ssize_t m = utf8proc_normalize_utf32(d, (utf8proc_ssize_t)len, opt);
        for (utf8proc_ssize_t i = 0; i < m && !rc; i++)
            rc = buf_push(out, (uint32_t)d[i], seg[0].at);
    }
    if (d != stack)
        free(d);
    return rc;
}

/* Appends Python's word.lower() of w[0..n) to out. */
static int lower_word(const uni_cp *w, size_t n, uni_buf *out)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t c = w[i].cp;
        int rc;
        if (c < 0x80) {
            rc = buf_push(out, c >= 'A' && c <= 'Z' ? c + 32 : c, w[i].at);
        } else if (c == 0x130) { /* SpecialCasing: İ -> i + combining dot */
            rc = buf_push(out, 'i', w[i].at);
            if (!rc)
                rc = buf_push(out, 0x307, w[i].at);
        } else if (c == 0x3A3) {
            rc = buf_push(out, final_sigma(w, n, i) ? 0x3C2 : 0x3C3, w[i].at);
        } else {
            rc = buf_push(out, (uint32_t)utf8proc_tolower((utf8proc_int32_t)c),
                          w[i].at);
        }
        if (rc)
            return rc;
    }
    return 0;
}

/* The separators of Python's str.split() that survive _clean_text. */
static int split_space(uint32_t c)
{
    return c == ' ' || c == 0x2028 || c == 0x2029;
}

int uni_clip_clean(const uni_cp *in, size_t n, uni_buf *out, uni_buf *tmp)
{
    /* _clean_text and _tokenize_chinese_chars, into out */
    out->n = 0;
    if (buf_reserve(out, n + 16))
        return COIN_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = in[i].cp;
        int rc = 0;
        if (dropped_by_clean(c))
            continue;
        if (clean_space(c)) {
            rc = buf_push(out, ' ', in[i].at);
        } else if (is_cjk(c)) {
            rc = buf_push(out, ' ', in[i].at);
            rc = rc ? rc : buf_push(out, c, in[i].at);
            rc = rc ? rc : buf_push(out, ' ', in[i].at);
        } else {
            rc = buf_push(out, c, in[i].at);
        }
        if (rc)
            return rc;
    }
    /* NFC, segment by segment, into tmp */
    tmp->n = 0;
    if (buf_reserve(tmp, out->n + 16))
        return COIN_ENOMEM;
    for (size_t i = 0; i < out->n;) {
        size_t j = i + 1;
        while (j < out->n && !nfc_boundary(out->v[j].cp))
            j++;
        int rc = nfc_segment(out->v + i, j - i, tmp);
        if (rc)
            return rc;
        i = j;
    }
    /* split, lower-case each word, join with ' ', back into out */
    out->n = 0;
    for (size_t i = 0; i < tmp->n;) {
        while (i < tmp->n && split_space(tmp->v[i].cp))
            i++;
        size_t j = i;
        while (j < tmp->n && !split_space(tmp->v[j].cp))
            j++;
        if (j == i)
            break;
        int rc = 0;
        if (out->n)
            rc = buf_push(out, ' ', tmp->v[i].at);
        rc = rc ? rc : lower_word(tmp->v + i, j - i, out);
        if (rc)
            return rc;
        i = j;
    }
    return 0;
}

/* ---- the CLIP pattern --------------------------------------------------- */

enum { CLS_SPACE, CLS_LETTER, CLS_NUMBER, CLS_OTHER };

/* Which of \s, \p{L}, \p{N} or the rest a code point of cleaned text is.
 * U+0345 counts as space: under IGNORECASE the regex module treats it as a
 * case variant of iota, so [^\s\p{L}\p{N}] refuses it, yet [\p{L}] does not
 * take it either; findall steps over it. */
static int char_class(uint32_t c)
{
    if (c < 0x80) {
        if (c == ' ')
            return CLS_SPACE;
        if ((c | 32) >= 'a' && (c | 32) <= 'z')
            return CLS_LETTER;
        if (c >= '0' && c <= '9')
            return CLS_NUMBER;
        return CLS_OTHER;
    }
    if (c == 0x345)
        return CLS_SPACE;
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
        return CLS_LETTER;
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
        return CLS_NUMBER;
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
        return CLS_SPACE; /* cannot survive the clean-up; here for safety */
    default:
        return CLS_OTHER;
    }
}

/* Whether t[i..n) starts with the lower-case ASCII string lit under the
 * regex module's IGNORECASE.  Cleaned text has no upper-case ASCII left, and
 * of the letters in the pattern's literals only 's' has a non-ASCII case
 * variant, U+017F LATIN SMALL LETTER LONG S; so "'ſ" is a match for 's and
 * "<|ſtartoftext|>" one for the start token (which then, not being spelled
 * exactly, goes through BPE like any word). */
static int starts_with(const uni_cp *t, size_t n, size_t i, const char *lit)
{
    for (; *lit; lit++, i++)
        if (i >= n || (t[i].cp != (unsigned char)*lit &&
                       !(*lit == 's' && t[i].cp == 0x17F)))
            return 0;
    return 1;
}

int uni_clip_pretoken(const uni_cp *t, size_t n, size_t *pos, size_t *start,
                      size_t *len)
{
    static const char *const literal[] = {
        "<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m",
        "'ll", "'d",
    };
    for (size_t i = *pos; i < n; i++) {
        for (size_t k = 0; k < sizeof literal / sizeof literal[0]; k++) {
            if (starts_with(t, n, i, literal[k])) {
                *start = i;
                *len = strlen(literal[k]);
                *pos = i + *len;
                return 1;
            }
        }
        int cls = char_class(t[i].cp);
        if (cls == CLS_SPACE)
            continue;
        size_t j = i + 1;
        if (cls != CLS_NUMBER) /* letters and "other" come in runs */
            while (j < n && char_class(t[j].cp) == cls)
                j++;
        *start = i;
        *len = j - i;
        *pos = j;
        return 1;
    }
    *pos = n;
    return 0;
}
