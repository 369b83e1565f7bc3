/*
 * test_tokenizer.c - the CLIP tokenizer against transformers.
 *
 * The main test, tokenizer_golden, runs every case of
 * tests/golden/tokenizer/cases.json (made by
 * tools/reference/make_tokenizer_goldens.py with transformers' slow
 * CLIPTokenizer, no ftfy) through the built-in vocabulary, SD1 and SD2
 * padding, and again through a tokenizer exported to a Hugging Face folder and
 * loaded back.  The smaller tests pin down single behaviours with vectors
 * taken from the same transformers: REFERENCE.md section 2, padding, added
 * tokens, Unicode corner cases, truncation, invalid UTF-8 and file errors.
 */
#include "test.h"

#include <stdint.h>
#include <stdlib.h>

#include <cJSON.h>

#include "core/tokenizer.h"

#define GOLDEN "tests/golden/tokenizer/cases.json"

/* One tokenizer with the built-in vocabulary and no added tokens, loaded
 * once: tokenizing never changes a tokenizer, so tests that add no tokens
 * share it. */
static clip_tokenizer *builtin(void)
{
    static clip_tokenizer *tok;
    if (!tok) {
        coin_error err = {0};
        if (tokenizer_load_builtin(&tok, &err))
            test_failed(__FILE__, __LINE__, "tokenizer_load_builtin: %s", err.msg);
    }
    return tok;
}

/* Checks that text encodes to BOS, want[0..n), EOS and padding. */
static void check_encode(const clip_tokenizer *tok, const char *text,
                         const int *want, int n, int pad, int line)
{
    coin_error err = {0};
    tokenizer_result r;
    int rc = tokenizer_encode(tok, text, pad, &r, &err);
    if (rc) {
        test_failed(__FILE__, line, "encode \"%s\": %s", text, err.msg);
        return;
    }
    int ok = r.n_tokens == n + 2 && r.ids[0] == CLIP_BOS &&
             r.ids[n + 1] == CLIP_EOS && r.n_dropped == 0 && r.dropped_at == -1;
    for (int i = 0; ok && i < n; i++)
        ok = r.ids[i + 1] == want[i];
    for (int i = n + 2; ok && i < CLIP_CONTEXT; i++)
        ok = r.ids[i] == pad;
    if (!ok) {
        char got[1024];
        int k = 0;
        for (int i = 0; i < r.n_tokens && k < 1000; i++)
            k += snprintf(got + k, sizeof got - k, " %d", (int)r.ids[i]);
        test_failed(__FILE__, line, "encode \"%s\" gave%s (n_tokens %d, pad %d)",
                    text, got, r.n_tokens, r.ids[CLIP_CONTEXT - 1]);
    }
}

#define ENC(tok, text, ...)                                                   \
    do {                                                                      \
        static const int want_[] = {__VA_ARGS__};                             \
        check_encode(tok, text, want_, (int)(sizeof want_ / sizeof want_[0]), \
                     CLIP_PAD_SD1, __LINE__);                                 \
    } while (0)
#define ENC_NONE(tok, text) check_encode(tok, text, NULL, 0, CLIP_PAD_SD1, __LINE__)

TEST(tokenizer_reference_vectors)
{
    clip_tokenizer *t = builtin();
    REQUIRE(t);
    ENC(t, "a photo of a cat", 320, 1125, 539, 320, 2368);
    ENC(t, "Brad Pitt giving a thumbs up, 4k, highly detailed", 9405, 15599,
        2339, 320, 17599, 705, 267, 275, 330, 267, 5302, 12609);
    ENC(t, "hello world!!", 3306, 1002, 748);
    ENC(t, "don't", 847, 713);
    ENC(t, "1234 dogs", 272, 273, 274, 275, 3255);
    ENC(t, "caf\xc3\xa9 na\xc3\xafve", 15304, 1097, 35689, 563);
}

TEST(tokenizer_vocab_layout)
{
    clip_tokenizer *t = builtin();
    REQUIRE(t);
    CHECK_EQ_INT(tokenizer_vocab_size(t), CLIP_VOCAB);
    CHECK(!strcmp(tokenizer_id_to_token(t, 0), "!"));
    CHECK(!strcmp(tokenizer_id_to_token(t, 256), "!</w>"));
    CHECK(!strcmp(tokenizer_id_to_token(t, 188), "\xc4\x80")); /* byte 0 -> U+0100 */
    CHECK(!strcmp(tokenizer_id_to_token(t, 320), "a</w>"));
    CHECK(!strcmp(tokenizer_id_to_token(t, CLIP_BOS), "<|startoftext|>"));
    CHECK(!strcmp(tokenizer_id_to_token(t, CLIP_EOS), "<|endoftext|>"));
    CHECK(tokenizer_id_to_token(t, -1) == NULL);
    CHECK(tokenizer_id_to_token(t, CLIP_VOCAB) == NULL);
    CHECK_EQ_INT(tokenizer_token_to_id(t, "cat</w>"), 2368);
    CHECK_EQ_INT(tokenizer_token_to_id(t, "<|endoftext|>"), CLIP_EOS);
    CHECK_EQ_INT(tokenizer_token_to_id(t, "<thumbs-up>"), -1);
    CHECK_EQ_INT(tokenizer_token_to_id(t, ""), -1);
}

TEST(tokenizer_padding_sd1_sd2)
{
    clip_tokenizer *t = builtin();
    REQUIRE(t);
    coin_error err = {0};
    tokenizer_result r;
    REQUIRE_OK(tokenizer_encode(t, "a photo of a cat", CLIP_PAD_SD2, &r, &err), &err);
    static const int want[] = {49406, 320, 1125, 539, 320, 2368, 49407};
    for (int i = 0; i < CLIP_CONTEXT; i++)
        CHECK_EQ_INT(r.ids[i], i < 7 ? want[i] : 0);
    CHECK_EQ_INT(r.n_tokens, 7);
    /* the unconditional prompt, and prompts with nothing left after cleaning */
    const char *empty[] = {"", " ", " \t\r\n ", "\xe2\x80\x8b", "\x01\x7f", "\xe3\x80\x80"};
    for (size_t k = 0; k < sizeof empty / sizeof empty[0]; k++) {
        for (int pad = 0; pad < 2; pad++) {
            int pad_id = pad ? CLIP_PAD_SD1 : CLIP_PAD_SD2;
            REQUIRE_OK(tokenizer_encode(t, empty[k], pad_id, &r, &err), &err);
            CHECK_EQ_INT(r.n_tokens, 2);
            CHECK_EQ_INT(r.ids[0], CLIP_BOS);
            CHECK_EQ_INT(r.ids[1], CLIP_EOS);
            for (int i = 2; i < CLIP_CONTEXT; i++)
                CHECK_EQ_INT(r.ids[i], pad_id);
        }
    }
}

/* Vectors from transformers 4.46.3 (slow CLIPTokenizer, no ftfy) for
 * behaviours that are easy to get wrong. */
TEST(tokenizer_unicode_and_specials)
{
    clip_tokenizer *t = builtin();
    REQUIRE(t);
    /* str.lower: U+0130 becomes "i" + U+0307; capital sigma at a word's end
     * becomes final sigma (CF 82 -> 139 480) */
    ENC(t, "\xc4\xb0stanbul \xce\xa3\xce\x91\xce\xa3 \xce\x9f\xce\x94\xce\x9f\xce\xa3",
        328, 16384, 11231, 139, 225, 138, 109, 139, 480, 138, 123, 138, 112, 138,
        123, 139, 480);
    /* special tokens: split out of the raw text, and recognised by the
     * pattern in any case after lower-casing */
    ENC(t, "a<|endoftext|>b", 320, 49407, 321);
    ENC(t, "<|ENDOFTEXT|>", 49407);
    ENC(t, "!<|endoftext|>", 256, 49407);
    /* IGNORECASE: long s (U+017F) matches the 's of "'s" and of the start
     * token, which then goes through BPE since it is not spelled exactly */
    ENC(t, "'\xc5\xbf", 6, 129, 379);
    ENC(t, "<|\xc5\xbftartoftext|>", 27, 91, 129, 123, 2002, 6659, 18169, 91, 285);
    /* U+0345 matches no branch of the pattern and vanishes */
    ENC(t, "ab\xcd\x85" "c", 3937, 322);
    /* NFC, including a singleton (U+212B ANGSTROM SIGN) */
    ENC(t, "e\xcc\x81 \xe2\x84\xab", 4166, 127, 354);
    /* CJK ideographs are spaced out */
    ENC(t, "\xe6\x97\xa5\xe6\x9c\xac", 37156, 19277, 361);
    /* U+2028 splits words; VT is a control character and is dropped */
    ENC(t, "a\xe2\x80\xa8" "b\x0b" "c", 320, 2162);
    /* Python 3.11 is Unicode 14.0: U+1342F (Unicode 15) is unassigned, dropped */
    ENC(t, "a\xf0\x93\x90\xaf" "b", 3937);
    /* a long word, and U+0000 (only reachable through tokenizer_encode_len) */
    coin_error err = {0};
    tokenizer_result r;
    REQUIRE_OK(tokenizer_encode_len(t, "nul\0char", 8, CLIP_PAD_SD1, &r, &err), &err);
    CHECK_EQ_INT(r.n_tokens, 4);
    CHECK_EQ_INT(r.ids[1], 29358);
    CHECK_EQ_INT(r.ids[2], 16017);
    char x[301];
    memset(x, 'x', 300);
    x[300] = '\0';
    int32_t ids[100];
    int n;
    REQUIRE_OK(tokenizer_tokenize(t, x, ids, 100, &n, &err), &err);
    CHECK_EQ_INT(n, 75);
    for (int i = 0; i < 74; i++)
        CHECK_EQ_INT(ids[i], 32035);
    CHECK_EQ_INT(ids[74], 22819);
}

TEST(tokenizer_added_tokens)
{
    coin_error err = {0};
    clip_tokenizer *t;
    REQUIRE_OK(tokenizer_load_builtin(&t, &err), &err);
    int id = 0;
    CHECK_EQ_INT(tokenizer_add_token(t, "<thumbs-up>", &id, &err), 0);
    CHECK_EQ_INT(id, 49408);
    CHECK_EQ_INT(tokenizer_add_token(t, "<thumbs-up>", &id, &err), 0);
    CHECK_EQ_INT(id, 49408);
    CHECK_EQ_INT(tokenizer_vocab_size(t), 49409);
    CHECK(!strcmp(tokenizer_id_to_token(t, 49408), "<thumbs-up>"));
    CHECK_EQ_INT(tokenizer_token_to_id(t, "<thumbs-up>"), 49408);
    /* words of the vocabulary, and nonsense, are refused */
    CHECK_EQ_INT(tokenizer_add_token(t, "cat", &id, &err), COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "already in");
    CHECK_EQ_INT(tokenizer_add_token(t, "<|endoftext|>", &id, &err), COIN_EINVAL);
    CHECK_EQ_INT(tokenizer_add_token(t, "", &id, &err), COIN_EINVAL);
    CHECK_EQ_INT(tokenizer_add_token(t, "<bad\xff>", &id, &err), COIN_EINVAL);
    CHECK_EQ_INT(tokenizer_vocab_size(t), 49409);

    ENC(t, "a <thumbs-up> cat", 320, 49408, 2368);
    ENC(t, "x<thumbs-up>y", 343, 49408, 344);
    ENC(t, "<THUMBS-UP>", 283, 17599, 268, 705, 285); /* case-sensitive */
    ENC(t, "<thumbs-up><thumbs-up>", 49408, 49408);
    tokenizer_free(t);

    /* transformers' Trie: "ABC" is taken from the earliest start although
     * "CAB" ends first ("ABCD" never completes) */
    REQUIRE_OK(tokenizer_load_builtin(&t, &err), &err);
    const char *words[] = {"ABCD", "CAB", "BCA"};
    for (int i = 0; i < 3; i++) {
        REQUIRE_OK(tokenizer_add_token(t, words[i], &id, &err), &err);
        CHECK_EQ_INT(id, 49408 + i);
    }
    ENC(t, "ABCABCD", 320, 49410, 3116, 323);
    tokenizer_free(t);
}

TEST(tokenizer_truncation)
{
    clip_tokenizer *t = builtin();
    REQUIRE(t);
    coin_error err = {0};
    tokenizer_result r;
    char text[1024] = "";
    for (int i = 0; i < 100; i++)
        strcat(text, "cat ");
    REQUIRE_OK(tokenizer_encode(t, text, CLIP_PAD_SD1, &r, &err), &err);
    CHECK_EQ_INT(r.n_tokens, 77);
    CHECK_EQ_INT(r.n_dropped, 25);
    CHECK_EQ_INT(r.dropped_at, 75 * 4);
    CHECK_EQ_INT(r.ids[0], CLIP_BOS);
    CHECK_EQ_INT(r.ids[75], 2368);
    CHECK_EQ_INT(r.ids[76], CLIP_EOS);

    /* exactly 75 fit */
    text[75 * 4] = '\0';
    REQUIRE_OK(tokenizer_encode(t, text, CLIP_PAD_SD2, &r, &err), &err);
    CHECK_EQ_INT(r.n_tokens, 77);
    CHECK_EQ_INT(r.n_dropped, 0);
    CHECK_EQ_INT(r.dropped_at, -1);

    /* the cut inside a multi-token word: "\xc3\xa9" is 2 BPE tokens after
     * 74 cats, so its second byte's token is dropped; dropped_at points at
     * the character it came from */
    text[74 * 4] = '\0';
    strcat(text, "  \xe2\x84\xab!");
    REQUIRE_OK(tokenizer_encode(t, text, CLIP_PAD_SD1, &r, &err), &err);
    CHECK_EQ_INT(r.n_dropped, 2);
    CHECK_EQ_INT(r.dropped_at, 74 * 4 + 2);
    CHECK_EQ_INT(r.ids[75], 127);

    /* an added token as the first one cut */
    clip_tokenizer *ta;
    int id;
    REQUIRE_OK(tokenizer_load_builtin(&ta, &err), &err);
    REQUIRE_OK(tokenizer_add_token(ta, "<thumbs-up>", &id, &err), &err);
    text[75 * 4] = '\0';
    for (int i = 0; i < 75; i++)
        memcpy(text + 4 * i, "cat ", 4);
    strcat(text, "<thumbs-up> cat");
    REQUIRE_OK(tokenizer_encode(ta, text, CLIP_PAD_SD1, &r, &err), &err);
    CHECK_EQ_INT(r.n_dropped, 2);
    CHECK_EQ_INT(r.dropped_at, 75 * 4);
    text[74 * 4] = '\0';
    strcat(text, "<thumbs-up> cat");
    REQUIRE_OK(tokenizer_encode(ta, text, CLIP_PAD_SD1, &r, &err), &err);
    CHECK_EQ_INT(r.ids[75], id);
    CHECK_EQ_INT(r.n_dropped, 1);
    CHECK_EQ_INT(r.dropped_at, 74 * 4 + 12);
    tokenizer_free(ta);

    /* tokenize reports the full count even when ids has less room */
    int32_t ids[4];
    int n;
    REQUIRE_OK(tokenizer_tokenize(t, "a photo of a cat", ids, 4, &n, &err), &err);
    CHECK_EQ_INT(n, 5);
    CHECK_EQ_INT(ids[3], 320);
    REQUIRE_OK(tokenizer_tokenize(t, "a photo of a cat", NULL, 0, &n, &err), &err);
    CHECK_EQ_INT(n, 5);
}

TEST(tokenizer_invalid_utf8)
{
    clip_tokenizer *t = builtin();
    REQUIRE(t);
    static const struct {
        const char *text, *offset;
    } bad[] = {
        {"ab\xc3", "byte offset 2"},                 /* truncated at the end */
        {"a\xe2\x82z", "byte offset 1"},             /* truncated mid-text */
        {"\xf0\x9f\x98", "byte offset 0"},           /* truncated 4-byte */
        {"xy\xc0\xaf", "byte offset 2"},             /* overlong '/' */
        {"x\xe0\x80\xaf", "byte offset 1"},          /* overlong, 3 bytes */
        {"\xf0\x82\x82\xac", "byte offset 0"},       /* overlong, 4 bytes */
        {"abc\x80", "byte offset 3"},                /* lone continuation */
        {"a\xbf" "b", "byte offset 1"},
        {"s\xed\xa0\x80", "byte offset 1"},          /* surrogate U+D800 */
        {"\xed\xbf\xbf", "byte offset 0"},           /* surrogate U+DFFF */
        {"ok \xf4\x90\x80\x80", "byte offset 3"},    /* U+110000 */
        {"\xf5\x80\x80\x80", "byte offset 0"},
        {"\xff", "byte offset 0"},
        {"<thumbs-up>\xfe", "byte offset 11"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        coin_error err = {0};
        tokenizer_result r;
        int32_t ids[8];
        int n = -1;
        CHECK_EQ_INT(tokenizer_encode(t, bad[k].text, CLIP_PAD_SD1, &r, &err), COIN_EINVAL);
        CHECK_STR_CONTAINS(err.msg, "UTF-8");
        CHECK_STR_CONTAINS(err.msg, bad[k].offset);
        coin_error err2 = {0};
        CHECK_EQ_INT(tokenizer_tokenize(t, bad[k].text, ids, 8, &n, &err2), COIN_EINVAL);
        CHECK_STR_CONTAINS(err2.msg, bad[k].offset);
    }
    /* the largest code points and a BOM are fine */
    coin_error err = {0};
    tokenizer_result r;
    REQUIRE_OK(tokenizer_encode(t, "\xf4\x8f\xbf\xbf \xef\xbb\xbf" "a \xf0\x9f\x91\x8d",
                                CLIP_PAD_SD1, &r, &err), &err);
}

/* The strings that tokenizer_hf_roundtrip and the golden test run through an
 * exported and re-loaded tokenizer. */
static const char *const roundtrip_texts[] = {
    "a photo of a <thumbs-up> cat", "\"quoted\" \\backslash\\ caf\xc3\xa9 \xe6\x97\xa5",
    "hello world!! 1234 don't", "<|endoftext|> x <cat-toy>", "\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd",
};

static int same_encoding(const clip_tokenizer *a, const clip_tokenizer *b,
                         const char *text)
{
    coin_error err = {0};
    tokenizer_result ra, rb;
    if (tokenizer_encode(a, text, CLIP_PAD_SD1, &ra, &err) ||
        tokenizer_encode(b, text, CLIP_PAD_SD1, &rb, &err))
        return 0;
    return !memcmp(ra.ids, rb.ids, sizeof ra.ids) && ra.n_tokens == rb.n_tokens;
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)len + 1);
    if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[len] = '\0';
        *n = (size_t)len;
    }
    return buf;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(data, 1, n, f);
        fclose(f);
    }
}

TEST(tokenizer_hf_roundtrip)
{
    coin_error err = {0};
    clip_tokenizer *a, *b, *c;
    REQUIRE_OK(tokenizer_load_builtin(&a, &err), &err);
    int id;
    REQUIRE_OK(tokenizer_add_token(a, "<thumbs-up>", &id, &err), &err);
    REQUIRE_OK(tokenizer_add_token(a, "<cat-toy>", &id, &err), &err);
    char dir[600], dir2[600], path[700];
    snprintf(dir, sizeof dir, "%s", test_tmpdir());
    REQUIRE_OK(tokenizer_export_hf(a, dir, &err), &err);
    REQUIRE_OK(tokenizer_load_hf(&b, dir, &err), &err);
    CHECK_EQ_INT(tokenizer_vocab_size(b), tokenizer_vocab_size(a));
    for (int i = 0; i < tokenizer_vocab_size(a); i++) {
        const char *sa = tokenizer_id_to_token(a, i), *sb = tokenizer_id_to_token(b, i);
        if (!sa || !sb || strcmp(sa, sb)) {
            CHECK_MSG(0, "id %d: \"%s\" vs \"%s\"", i, sa ? sa : "(null)", sb ? sb : "(null)");
            break;
        }
    }
    for (size_t k = 0; k < sizeof roundtrip_texts / sizeof roundtrip_texts[0]; k++)
        CHECK_MSG(same_encoding(a, b, roundtrip_texts[k]), "round trip changed \"%s\"",
                  roundtrip_texts[k]);

    /* exporting what was loaded gives the same files, byte for byte */
    snprintf(dir2, sizeof dir2, "%s", test_tmpdir());
    REQUIRE_OK(tokenizer_export_hf(b, dir2, &err), &err);
    const char *files[] = {"vocab.json", "merges.txt", "added_tokens.json"};
    for (int k = 0; k < 3; k++) {
        size_t n1 = 0, n2 = 0;
        snprintf(path, sizeof path, "%s/%s", dir, files[k]);
        char *f1 = slurp(path, &n1);
        snprintf(path, sizeof path, "%s/%s", dir2, files[k]);
        char *f2 = slurp(path, &n2);
        CHECK_MSG(f1 && f2 && n1 == n2 && !memcmp(f1, f2, n1), "%s differs", files[k]);
        free(f1);
        free(f2);
    }

    /* merges.txt alone, through the openai-style loader, builds the same
     * vocabulary (its "#version" header is skipped like any first line) */
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    REQUIRE_OK(tokenizer_load_bpe(&c, path, &err), &err);
    CHECK_EQ_INT(tokenizer_vocab_size(c), CLIP_VOCAB);
    CHECK(same_encoding(builtin(), c, "a photo of a cat, \xe6\x97\xa5 caf\xc3\xa9!!"));
    tokenizer_free(c);
    tokenizer_free(b);
    tokenizer_free(a);
}

extern const unsigned char coin_vocab_gz[], coin_vocab_gz_end[];

TEST(tokenizer_load_files_and_errors)
{
    coin_error err = {0};
    clip_tokenizer *t = NULL;
    const char *dir = test_tmpdir();
    char path[700];

    /* the gzip file itself */
    snprintf(path, sizeof path, "%s/bpe_simple_vocab_16e6.txt.gz", dir);
    write_file(path, coin_vocab_gz, (size_t)(coin_vocab_gz_end - coin_vocab_gz));
    REQUIRE_OK(tokenizer_load_bpe(&t, path, &err), &err);
    CHECK(same_encoding(builtin(), t, "Brad Pitt giving a thumbs up, 4k"));
    tokenizer_free(t);

    /* truncated gzip, missing files, junk */
    write_file(path, coin_vocab_gz, 1000);
    CHECK_EQ_INT(tokenizer_load_bpe(&t, path, &err), COIN_EFORMAT);
    CHECK_STR_CONTAINS(err.msg, path);
    snprintf(path, sizeof path, "%s/nope.txt", dir);
    CHECK_EQ_INT(tokenizer_load_bpe(&t, path, &err), COIN_ENOTFOUND);
    CHECK_EQ_INT(tokenizer_load_hf(&t, dir, &err), COIN_ENOTFOUND);
    CHECK_STR_CONTAINS(err.msg, "vocab.json");
    snprintf(path, sizeof path, "%s/junk.txt", dir);
    write_file(path, "\xff\xfe junk", 7);
    CHECK_EQ_INT(tokenizer_load_bpe(&t, path, &err), COIN_EFORMAT);
    write_file(path, "#version: 0.2\n", 14);
    CHECK_EQ_INT(tokenizer_load_bpe(&t, path, &err), COIN_EFORMAT);

    snprintf(path, sizeof path, "%s/vocab.json", dir);
    write_file(path, "[1, 2]", 6);
    CHECK_EQ_INT(tokenizer_load_hf(&t, dir, &err), COIN_EFORMAT);
    write_file(path, "{\"a\": -1}", 9);
    CHECK_EQ_INT(tokenizer_load_hf(&t, dir, &err), COIN_EFORMAT);
    write_file(path, "{\"a\": 0.5}", 10);
    CHECK_EQ_INT(tokenizer_load_hf(&t, dir, &err), COIN_EFORMAT);
    /* a tiny but complete vocabulary: merges missing, then present */
    const char *vocab = "{\"a\": 0, \"b\": 1, \"a</w>\": 2, \"b</w>\": 3, \"ab</w>\": 4, "
                        "\"<|startoftext|>\": 5, \"<|endoftext|>\": 6}";
    write_file(path, vocab, strlen(vocab));
    CHECK_EQ_INT(tokenizer_load_hf(&t, dir, &err), COIN_ENOTFOUND);
    CHECK_STR_CONTAINS(err.msg, "merges.txt");
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    write_file(path, "#version: 0.2\na b</w>\n", 22);
    REQUIRE_OK(tokenizer_load_hf(&t, dir, &err), &err);
    CHECK_EQ_INT(tokenizer_vocab_size(t), 7);
    int32_t ids[8];
    int n;
    REQUIRE_OK(tokenizer_tokenize(t, "ab ba c", ids, 8, &n, &err), &err);
    /* "ab" merges; "ba" does not; "c" is not in this vocabulary: unknown is
     * <|endoftext|>, as in CLIPTokenizer */
    CHECK_EQ_INT(n, 4);
    CHECK_EQ_INT(ids[0], 4);
    CHECK_EQ_INT(ids[1], 1);
    CHECK_EQ_INT(ids[2], 2);
    CHECK_EQ_INT(ids[3], 6);
    tokenizer_free(t);
    /* added_tokens.json that clashes with the vocabulary */
    snprintf(path, sizeof path, "%s/added_tokens.json", dir);
    write_file(path, "{\"<x>\": 3}", 10);
    CHECK_EQ_INT(tokenizer_load_hf(&t, dir, &err), COIN_EFORMAT);
    write_file(path, "{\"<x>\": 7, \"<y>\": 8}", 20);
    REQUIRE_OK(tokenizer_load_hf(&t, dir, &err), &err);
    CHECK_EQ_INT(tokenizer_vocab_size(t), 9);
    CHECK_EQ_INT(tokenizer_token_to_id(t, "<y>"), 8);
    tokenizer_free(t);
}

/* ---- the golden cases ---------------------------------------------------- */

/* Decodes the JSON string at s (just past its opening quote) into out, with
 * its length: cJSON stops C strings at a \u0000, which the goldens contain.
 * Returns the end of the string, or NULL. */
static const char *json_string_bytes(const char *s, char *out, size_t *n)
{
    size_t k = 0;
    while (*s && *s != '"') {
        if (*s != '\\') {
            out[k++] = *s++;
            continue;
        }
        s++;
        switch (*s) {
        case 'n': out[k++] = '\n'; break;
        case 't': out[k++] = '\t'; break;
        case 'r': out[k++] = '\r'; break;
        case 'b': out[k++] = '\b'; break;
        case 'f': out[k++] = '\f'; break;
        case '/': case '"': case '\\': out[k++] = *s; break;
        case 'u': {
            unsigned cp = 0;
            for (int i = 1; i <= 4; i++) {
                char c = s[i];
                cp = cp * 16 + (unsigned)(c <= '9' ? c - '0' : (c | 32) - 'a' + 10);
            }
            if (cp >= 0xD800 && cp <= 0xDFFF)
                return NULL; /* the generator never writes surrogate pairs */
            if (cp < 0x80) {
                out[k++] = (char)cp;
            } else if (cp < 0x800) {
                out[k++] = (char)(0xC0 | cp >> 6);
                out[k++] = (char)(0x80 | (cp & 0x3F));
            } else {
                out[k++] = (char)(0xE0 | cp >> 12);
                out[k++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                out[k++] = (char)(0x80 | (cp & 0x3F));
            }
            s += 4;
            break;
        }
        default:
            return NULL;
        }
        s++;
    }
    *n = k;
    return *s == '"' ? s : NULL;
}

typedef struct tok_cache {
    char key[512];
    clip_tokenizer *tok, *hf; /* built-in, and exported + reloaded */
} tok_cache;

/* A tokenizer with the given added tokens, as fresh as a new one (encoding
 * changes nothing), shared between cases with the same list. */
static tok_cache *cached_tokenizer(tok_cache *cache, int *n_cache, cJSON *added)
{
    char key[512] = "";
    cJSON *a;
    cJSON_ArrayForEach(a, added) {
        if (!cJSON_IsString(a) || strlen(key) + strlen(a->valuestring) + 2 > sizeof key)
            return NULL;
        strcat(key, a->valuestring);
        strcat(key, "\n");
    }
    for (int i = 0; i < *n_cache; i++)
        if (!strcmp(cache[i].key, key))
            return &cache[i];
    if (*n_cache == 32)
        return NULL;
    tok_cache *c = &cache[(*n_cache)++];
    memset(c, 0, sizeof *c);
    snprintf(c->key, sizeof c->key, "%s", key);
    coin_error err = {0};
    if (tokenizer_load_builtin(&c->tok, &err)) {
        test_failed(__FILE__, __LINE__, "%s", err.msg);
        return NULL;
    }
    int want = 49408;
    cJSON_ArrayForEach(a, added) {
        int id;
        if (tokenizer_add_token(c->tok, a->valuestring, &id, &err)) {
            test_failed(__FILE__, __LINE__, "adding \"%s\": %s", a->valuestring, err.msg);
            return NULL;
        }
        CHECK_EQ_INT(id, want++);
    }
    const char *dir = test_tmpdir();
    if (tokenizer_export_hf(c->tok, dir, &err) || tokenizer_load_hf(&c->hf, dir, &err)) {
        test_failed(__FILE__, __LINE__, "HF round trip: %s", err.msg);
        return NULL;
    }
    return c;
}

static int check_ids(const char *what, int index, const char *text,
                     const tokenizer_result *r, cJSON *want, int n_tokens)
{
    int bad = cJSON_GetArraySize(want) != CLIP_CONTEXT || r->n_tokens != n_tokens;
    for (int i = 0; !bad && i < CLIP_CONTEXT; i++)
        bad = cJSON_GetArrayItem(want, i)->valueint != r->ids[i];
    if (bad) {
        char got[1024], exp[1024];
        int k = 0, m = 0;
        for (int i = 0; i < CLIP_CONTEXT; i++) {
            k += snprintf(got + k, sizeof got - k, " %d", (int)r->ids[i]);
            cJSON *w = cJSON_GetArrayItem(want, i);
            m += snprintf(exp + m, sizeof exp - m, " %d", w ? w->valueint : -1);
        }
        test_failed(__FILE__, __LINE__,
                    "case %d (%s) \"%.200s\": n_tokens %d (want %d)\n      got %s\n      want%s",
                    index, what, text, r->n_tokens, n_tokens, got, exp);
    }
    return !bad;
}

TEST(tokenizer_golden)
{
    const char *path = GOLDEN;
    size_t size;
    char *raw = slurp(path, &size);
    if (!raw) {
        test_failed(__FILE__, __LINE__,
                    "%s is missing; make it with tools/reference/make_tokenizer_goldens.py", path);
        return;
    }
    cJSON *root = cJSON_Parse(raw);
    cJSON *cases = cJSON_GetObjectItem(root, "cases");
    if (!cJSON_IsArray(cases) || cJSON_GetArraySize(cases) == 0) {
        test_failed(__FILE__, __LINE__, "%s has no \"cases\" array", path);
        cJSON_Delete(root);
        free(raw);
        return;
    }
    tok_cache cache[32];
    int n_cache = 0, index = 0, passed = 0;
    char *text = malloc(size + 1);
    const char *scan = raw;
    cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        cJSON *jt = cJSON_GetObjectItem(c, "text"), *sd1 = cJSON_GetObjectItem(c, "ids_sd1"),
              *sd2 = cJSON_GetObjectItem(c, "ids_sd2"), *nt = cJSON_GetObjectItem(c, "n_tokens");
        /* the case's text with its length, from the raw file, in order */
        size_t len = 0;
        const char *at = strstr(scan, "\"text\": \"");
        const char *end = at ? json_string_bytes(at + 9, text, &len) : NULL;
        if (!cJSON_IsString(jt) || !cJSON_IsArray(sd1) || !cJSON_IsArray(sd2) ||
            !cJSON_IsNumber(nt) || !end || strncmp(text, jt->valuestring, len) ||
            strlen(jt->valuestring) != strnlen(text, len)) {
            test_failed(__FILE__, __LINE__, "%s: case %d is malformed", path, index);
            break;
        }
        scan = end;
        tok_cache *tc = cached_tokenizer(cache, &n_cache, cJSON_GetObjectItem(c, "added_tokens"));
        if (!tc) {
            test_failed(__FILE__, __LINE__, "case %d: cannot set up its tokenizer", index);
            break;
        }
        coin_error err = {0};
        tokenizer_result r;
        int ok = 1;
        if (tokenizer_encode_len(tc->tok, text, len, CLIP_PAD_SD1, &r, &err)) {
            test_failed(__FILE__, __LINE__, "case %d: %s", index, err.msg);
            ok = 0;
        } else {
            ok &= check_ids("SD1", index, jt->valuestring, &r, sd1, nt->valueint);
            ok &= r.n_tokens < CLIP_CONTEXT ? r.n_dropped == 0 && r.dropped_at == -1
                                            : r.dropped_at >= -1;
        }
        if (!tokenizer_encode_len(tc->tok, text, len, CLIP_PAD_SD2, &r, &err))
            ok &= check_ids("SD2", index, jt->valuestring, &r, sd2, nt->valueint);
        if (!tokenizer_encode_len(tc->hf, text, len, CLIP_PAD_SD1, &r, &err))
            ok &= check_ids("SD1 via export_hf + load_hf", index, jt->valuestring, &r, sd1,
                            nt->valueint);
        else
            ok = 0;
        passed += ok;
        index++;
    }
    printf("    %d of %d golden cases match\n", passed, cJSON_GetArraySize(cases));
    CHECK_EQ_INT(passed, cJSON_GetArraySize(cases));
    for (int i = 0; i < n_cache; i++) {
        tokenizer_free(cache[i].tok);
        tokenizer_free(cache[i].hf);
    }
    free(text);
    cJSON_Delete(root);
    free(raw);
}
