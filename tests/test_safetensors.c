/*
 * test_safetensors.c - the safetensors reader, converters and writer.
 *
 * The reader is pinned to the reference (huggingface/safetensors) by a file the
 * reference writer made, hard-coded here byte for byte, and by one test per
 * rule of the reference reader: each bad file must be refused with the right
 * code and a message that names the file, the tensor and the problem.  The
 * writer is pinned by producing that same file byte for byte.
 */
#include "test.h"

#include "core/safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* REFERENCE.md section 5: made by safetensors 0.8 `serialize` with metadata
 * {"format":"pt"}; sha256 3eb6b9e6ab5611e64333b628d06a264285e0c182f6e0ccf622866e3f09a8d9b6
 * (checked with sha256sum on the bytes below). */
static const char EX_HEADER[] =
    "{\"__metadata__\":{\"format\":\"pt\"},"
    "\"text_model.embeddings.position_ids\":{\"dtype\":\"I64\",\"shape\":[1,4],\"data_offsets\":[0,32]},"
    "\"weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[32,56]},"
    "\"bf\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[56,60]},"
    "\"bias16\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[60,68]}}    ";
static const unsigned char EX_DATA[68] = {
    0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,       /* I64 0, 1 */
    2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0,       /* I64 2, 3 */
    0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40,       /* F32 1, 2 */
    0x00, 0x00, 0x40, 0x40, 0x00, 0x00, 0xc0, 0xbf,       /* F32 3, -1.5 */
    0x00, 0x00, 0x80, 0x3e, 0x6f, 0x12, 0x83, 0x3a,       /* F32 0.25, 0.001 */
    0x80, 0x3f, 0x40, 0xc0,                               /* BF16 1, -3 */
    0x00, 0x38, 0x00, 0xc0, 0xff, 0x7b, 0x00, 0x00,       /* F16 0.5, -2, 65504, 0 */
};

/* 8-byte little-endian length, the header (hlen bytes, or strlen), the data. */
static unsigned char *image(const char *hdr, size_t hlen, const void *data, size_t dlen, size_t *len)
{
    if (hlen == (size_t)-1)
        hlen = strlen(hdr);
    *len = 8 + hlen + dlen;
    unsigned char *b = malloc(*len + 1);
    for (int k = 0; k < 8; k++)
        b[k] = (unsigned char)((uint64_t)hlen >> 8 * k);
    memcpy(b + 8, hdr, hlen);
    if (dlen)
        memcpy(b + 8 + hlen, data, dlen);
    return b;
}

static unsigned char *example(size_t *len)
{
    return image(EX_HEADER, (size_t)-1, EX_DATA, sizeof EX_DATA, len);
}

static int write_file(const char *path, const void *p, size_t n)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return -1;
    size_t w = fwrite(p, 1, n, fp);
    return fclose(fp) == 0 && w == n ? 0 : -1;
}

static unsigned char *read_file(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, fp);
    fclose(fp);
    return b;
}

static int parse_hdr(const char *hdr, size_t hlen, const void *data, size_t dlen, coin_error *e)
{
    size_t len;
    unsigned char *b = image(hdr, hlen, data, dlen, &len);
    st_file *f = NULL;
    coin_error_clear(e);
    int rc = st_parse(&f, b, len, "bad.safetensors", e);
    st_close(f);
    free(b);
    return rc;
}

static const unsigned char Z[64];   /* zero data for the bad files */

/* Parses a header (with dlen bytes of zero data), expects it refused with
 * code, and the message to name the file, the tensor (unless NULL) and to
 * contain word, which says which rule fired. */
#define REJECT(hdr, dlen, code, tensor, word)                                  \
    do {                                                                       \
        coin_error e_;                                                         \
        int rc_ = parse_hdr(hdr, (size_t)-1, Z, dlen, &e_);                    \
        CHECK_EQ_INT(rc_, code);                                               \
        CHECK_STR_CONTAINS(e_.msg, "bad.safetensors: ");                       \
        const char *t_ = (tensor);                                             \
        if (t_) {                                                              \
            char want_[256];                                                    \
            snprintf(want_, sizeof want_, "tensor '%s': ", t_);                      \
            CHECK_STR_CONTAINS(e_.msg, want_);                                \
        }                                                                      \
        CHECK_STR_CONTAINS(e_.msg, word);                                      \
    } while (0)

#define ACCEPT(hdr, dlen)                                                      \
    do {                                                                       \
        coin_error e_;                                                         \
        int rc_ = parse_hdr(hdr, (size_t)-1, Z, dlen, &e_);                    \
        CHECK_MSG(rc_ == 0, "refused %s: %s", hdr, e_.msg);                    \
    } while (0)

#define T1(name, body) "{\"" name "\":{" body "}}"
#define F32_1 "\"dtype\":\"F32\",\"shape\":[1]"

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (d)
        closedir(d);
    return n;
}

static float f32_at(const unsigned char *p) { float f; memcpy(&f, p, 4); return f; }

TEST(st_reference_example_parses)
{
    size_t len;
    unsigned char *b = example(&len);
    REQUIRE(len == 380);
    char path[700];
    snprintf(path, sizeof path, "%s/example.safetensors", test_tmpdir());
    REQUIRE(write_file(path, b, len) == 0);
    free(b);

    st_file *f;
    coin_error err = {0};
    REQUIRE_OK(st_open(&f, path, &err), &err);
    REQUIRE(f->n_tensors == 4);
    CHECK(strcmp(f->path, path) == 0);
    CHECK(f->n_meta == 1);
    CHECK(st_meta(f, "format") && strcmp(st_meta(f, "format"), "pt") == 0);
    CHECK(st_meta(f, "missing") == NULL);

    /* sorted by offset, which is the writer's dtype-descending order */
    static const char *names[] = {"text_model.embeddings.position_ids", "weight", "bf", "bias16"};
    static const st_dtype dts[] = {ST_I64, ST_F32, ST_BF16, ST_F16};
    static const uint64_t begins[] = {0, 32, 56, 60, 68}, nel[] = {4, 6, 2, 4};
    for (int i = 0; i < 4; i++) {
        const st_tensor *t = &f->tensors[i];
        CHECK(strcmp(t->name, names[i]) == 0);
        CHECK_EQ_INT(t->dtype, dts[i]);
        CHECK_EQ_INT(t->begin, begins[i]);
        CHECK_EQ_INT(t->end, begins[i + 1]);
        CHECK_EQ_INT(t->nelem, nel[i]);
        CHECK(st_find(f, names[i]) == t);
        CHECK((const unsigned char *)t->data == (const unsigned char *)f->tensors[0].data + begins[i]);
    }
    CHECK(st_find(f, "nope") == NULL);
    const st_tensor *ids = st_find(f, "text_model.embeddings.position_ids");
    CHECK(ids->ndim == 2 && ids->shape[0] == 1 && ids->shape[1] == 4);
    for (int k = 0; k < 4; k++) {
        int64_t v;
        memcpy(&v, (const char *)ids->data + 8 * k, 8);
        CHECK_EQ_INT(v, k);
    }
    /* the data section starts right after the 304-byte header */
    CHECK((const unsigned char *)ids->data - (const unsigned char *)f->map == 8 + 304);

    float out[6];
    const st_tensor *w = st_find(f, "weight");
    CHECK(w->ndim == 2 && w->shape[0] == 2 && w->shape[1] == 3);
    REQUIRE_OK(st_tensor_to_f32(f, w, out, 6, &err), &err);
    const float wv[] = {1, 2, 3, -1.5f, 0.25f, 0.001f};
    for (int k = 0; k < 6; k++)
        CHECK(out[k] == wv[k]);
    const st_tensor *bf = st_find(f, "bf");
    CHECK(bf->ndim == 1 && bf->shape[0] == 2);
    REQUIRE_OK(st_tensor_to_f32(f, bf, out, 2, &err), &err);
    CHECK(out[0] == 1.0f && out[1] == -3.0f);
    const st_tensor *h = st_find(f, "bias16");
    REQUIRE_OK(st_tensor_to_f32(f, h, out, 4, &err), &err);
    CHECK(out[0] == 0.5f && out[1] == -2.0f && out[2] == 65504.0f && out[3] == 0.0f);
    st_close(f);
}

TEST(st_writer_reproduces_reference_example)
{
    st_writer *w = st_writer_new();
    REQUIRE(w);
    coin_error err = {0};
    const int64_t s14[] = {1, 4}, s23[] = {2, 3}, s2[] = {2}, s4[] = {4};
    const int64_t ids[] = {0, 1, 2, 3};
    const float wv[] = {1, 2, 3, -1.5f, 0.25f, 0.001f};
    const uint16_t bf[] = {st_f32_to_bf16(1), st_f32_to_bf16(-3)};
    const uint16_t h[] = {st_f32_to_f16(0.5f), st_f32_to_f16(-2), st_f32_to_f16(65504), st_f32_to_f16(0)};
    /* added in an order unlike the layout, which the writer must impose */
    REQUIRE_OK(st_writer_add(w, "bias16", ST_F16, 1, s4, h, &err), &err);
    REQUIRE_OK(st_writer_add(w, "bf", ST_BF16, 1, s2, bf, &err), &err);
    REQUIRE_OK(st_writer_meta(w, "format", "pt", &err), &err);
    REQUIRE_OK(st_writer_add(w, "weight", ST_F32, 2, s23, wv, &err), &err);
    REQUIRE_OK(st_writer_add(w, "text_model.embeddings.position_ids", ST_I64, 2, s14, ids, &err), &err);
    char path[700];
    snprintf(path, sizeof path, "%s/out.safetensors", test_tmpdir());
    REQUIRE_OK(st_writer_save(w, path, &err), &err);
    st_writer_free(w);

    size_t n, elen;
    unsigned char *got = read_file(path, &n), *want = example(&elen);
    REQUIRE(got);
    CHECK_EQ_INT(n, 380);
    CHECK(n == elen && memcmp(got, want, n) == 0);
    free(got);
    free(want);
}

/* The byte vectors of the reference's own tests (tensor.rs test_serialization
 * and test_empty). */
TEST(st_writer_matches_reference_unit_vectors)
{
    static const unsigned char attn[] = {
        64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100,
        116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34,
        58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115,
        101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63,
        0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64};
    static const unsigned char empty[] = {8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32};
    coin_error err = {0};
    char path[700];
    snprintf(path, sizeof path, "%s/a.safetensors", test_tmpdir());
    st_writer *w = st_writer_new();
    const float v[] = {0, 1, 2, 3, 4, 5};
    const int64_t shape[] = {1, 2, 3};
    REQUIRE_OK(st_writer_add(w, "attn.0", ST_F32, 3, shape, v, &err), &err);
    REQUIRE_OK(st_writer_save(w, path, &err), &err);
    st_writer_free(w);
    size_t n;
    unsigned char *got = read_file(path, &n);
    CHECK(got && n == sizeof attn && memcmp(got, attn, n) == 0);
    free(got);

    w = st_writer_new();
    REQUIRE_OK(st_writer_save(w, path, &err), &err);   /* replaces the file */
    st_writer_free(w);
    got = read_file(path, &n);
    CHECK(got && n == sizeof empty && memcmp(got, empty, n) == 0);
    free(got);
}

TEST(st_parse_copies_the_buffer)
{
    size_t len;
    unsigned char *b = example(&len);
    st_file *f;
    coin_error err = {0};
    REQUIRE_OK(st_parse(&f, b, len, "mem", &err), &err);
    memset(b, 0xAB, len);
    free(b);
    float out[6];
    REQUIRE_OK(st_tensor_to_f32(f, st_find(f, "weight"), out, 6, &err), &err);
    CHECK(out[3] == -1.5f);
    CHECK(strcmp(f->path, "mem") == 0 && f->owned != NULL);
    st_close(f);
    st_close(NULL);
}

TEST(st_reject_header_too_small)
{
    static st_file sentinel;
    coin_error e = {0};
    st_file *f = &sentinel;     /* must be cleared on failure */
    CHECK_EQ_INT(st_parse(&f, "\x08\0\0\0\0\0\0", 7, "bad.safetensors", &e), COIN_EFORMAT);
    CHECK(f == NULL);
    CHECK_STR_CONTAINS(e.msg, "bad.safetensors: ");
    CHECK_STR_CONTAINS(e.msg, "too small");
    CHECK_EQ_INT(st_parse(&f, "", 0, "bad.safetensors", &e), COIN_EFORMAT);
    CHECK_STR_CONTAINS(e.msg, "0 bytes");

    char path[700];
    snprintf(path, sizeof path, "%s/empty.safetensors", test_tmpdir());
    REQUIRE(write_file(path, "", 0) == 0);
    CHECK_EQ_INT(st_open(&f, path, &e), COIN_EFORMAT);
    CHECK_STR_CONTAINS(e.msg, path);
    CHECK_STR_CONTAINS(e.msg, "too small");
    snprintf(path, sizeof path, "%s/short.safetensors", test_tmpdir());
    REQUIRE(write_file(path, "\2\0\0", 3) == 0);
    CHECK_EQ_INT(st_open(&f, path, &e), COIN_EFORMAT);
    CHECK_STR_CONTAINS(e.msg, "3 bytes");
}

TEST(st_reject_header_too_large)
{
    unsigned char b[16] = {0x01, 0xE1, 0xF5, 0x05, 0, 0, 0, 0, '{', '}'};   /* 100000001 */
    coin_error e = {0};
    st_file *f;
    CHECK_EQ_INT(st_parse(&f, b, sizeof b, "bad.safetensors", &e), COIN_EFORMAT);
    CHECK_STR_CONTAINS(e.msg, "bad.safetensors: the header length 100000001 is over");
    memset(b, 0xFF, 8);
    CHECK_EQ_INT(st_parse(&f, b, sizeof b, "bad.safetensors", &e), COIN_EFORMAT);
    CHECK_STR_CONTAINS(e.msg, "18446744073709551615");
    /* a torch zip checkpoint gets told what it is */
    memcpy(b, "PK\3\4\x14\0\0\0", 8);
    CHECK_EQ_INT(st_parse(&f, b, sizeof b, "model.ckpt", &e), COIN_EFORMAT);
    CHECK_STR_CONTAINS(e.msg, "model.ckpt: this is a PyTorch pickle checkpoint");
}

TEST(st_reject_header_length_beyond_file)
{
    unsigned char b[18] = {11, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
    coin_error e = {0};
    st_file *f;
    CHECK_EQ_INT(st_parse(&f, b, sizeof b, "bad.safetensors", &e), COIN_EFORMAT);
    CHECK_STR_CONTAINS(e.msg, "bad.safetensors: the header length 11 runs past the end of the 18-byte file");
    b[0] = 10;      /* exactly the rest of the file: fine */
    CHECK_EQ_INT(st_parse(&f, b, sizeof b, "ok", &e), 0);
    CHECK(f && f->n_tensors == 0);
    st_close(f);
}

TEST(st_reject_bad_utf8)
{
    static const char *bad[] = {
        "{\"a\xc0\x80\":{}}",           /* overlong NUL */
        "{\"a\xe0\x80\xaf\":{}}",       /* overlong '/' */
        "{\"a\xed\xa0\x80\":{}}",       /* encoded surrogate */
        "{\"a\xf4\x90\x80\x80\":{}}",   /* above U+10FFFF */
        "{\"a\xe2\x82\":{}}",           /* truncated */
        "{\"a\x80\":{}}",               /* stray continuation */
        "{\"a\xff\":{}}",
        "{}  \xfe",                     /* even in the padding */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        coin_error e;
        CHECK_EQ_INT(parse_hdr(bad[i], (size_t)-1, Z, 0, &e), COIN_EFORMAT);
        CHECK_STR_CONTAINS(e.msg, "bad.safetensors: the header is not valid UTF-8");
    }
    /* the largest code point is fine */
    ACCEPT(T1("a\xf4\x8f\xbf\xbf", F32_1 ",\"data_offsets\":[0,4]"), 4);
}

TEST(st_reject_bad_json)
{
    REJECT("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,],\"data_offsets\":[0,4]}}", 4,
           COIN_EFORMAT, "w", "not valid JSON");
    REJECT(T1("w", F32_1 ",\"data_offsets\":[0,4],") , 4, COIN_EFORMAT, "w", "not valid JSON");
    REJECT("{\"w\" {}}", 0, COIN_EFORMAT, NULL, "expected ':'");
    REJECT("{\"w\":{\"dtype\":\"F32}}", 0, COIN_EFORMAT, "w", "to close a string");
    REJECT(T1("w", "\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]"), 4, COIN_EFORMAT,
           "w", "leading zero");
    REJECT(T1("a\tb", F32_1 ",\"data_offsets\":[0,4]"), 4, COIN_EFORMAT, NULL, "control character");
    REJECT(T1("a\\xb", F32_1 ",\"data_offsets\":[0,4]"), 4, COIN_EFORMAT, NULL, "bad escape");
    REJECT(T1("a\\ud800", F32_1 ",\"data_offsets\":[0,4]"), 4, COIN_EFORMAT, NULL, "surrogate");
    REJECT(T1("a\\udc00\\ud800", F32_1 ",\"data_offsets\":[0,4]"), 4, COIN_EFORMAT, NULL, "surrogate");
    REJECT(T1("w", F32_1 ",\"data_offsets\":[0,4]") "}", 4, COIN_EFORMAT, NULL,
           "unexpected '}' after the JSON header");
    REJECT(T1("w", F32_1 ",\"data_offsets\":[0,4]") "\f", 4, COIN_EFORMAT, NULL,
           "only whitespace may pad");
    REJECT(T1("w", F32_1 ",\"data_offsets\":[0,4],\"x\":[tru]"), 4, COIN_EFORMAT, "w", "a JSON value");
    REJECT(T1("w", F32_1 ",\"data_offsets\":[0,4],\"x\":1e400"), 4, COIN_EFORMAT, "w", "out of range");
    /* found by the fuzzer: a key without ':' inside an ignored object */
    REJECT(T1("w", F32_1 ",\"data_offsets\":[0,4],\"x\":{\"k\" 1}"), 4, COIN_EFORMAT, "w", "expected ':'");
    REJECT(T1("w", F32_1 ",\"data_offsets\":[0,4],\"x\":{\"a\":1,\"k\"]}"), 4, COIN_EFORMAT, "w", "expected ':'");
    REJECT("", 0, COIN_EFORMAT, NULL, "it is empty");
    /* a NUL byte in the header text is a control character, not a terminator */
    coin_error e;
    CHECK_EQ_INT(parse_hdr("{\"a\0\":{}}", 9, Z, 0, &e), COIN_EFORMAT);
    CHECK_STR_CONTAINS(e.msg, "control character 0x00");
}

TEST(st_reject_non_object)
{
    REJECT("[1]", 0, COIN_EFORMAT, NULL, "must be a JSON object (beginning with '{') but it begins with '['");
    REJECT("\"x\"", 0, COIN_EFORMAT, NULL, "must be a JSON object");
    REJECT("\xef\xbb\xbf{}", 0, COIN_EFORMAT, NULL, "must be a JSON object");   /* a BOM */
    REJECT("{\"w\":[\"F32\",[1],[0,4]]}", 4, COIN_EFORMAT, "w",
           "must be an object with dtype, shape and data_offsets, found an array");
    REJECT("{\"w\":null}", 0, COIN_EFORMAT, "w", "found null");
    REJECT(T1("w", "\"dtype\":\"F32\",\"data_offsets\":[0,4]"), 4, COIN_EFORMAT, "w", "has no 'shape' field");
    REJECT(T1("w", "\"dtype\":1,\"shape\":[1],\"data_offsets\":[0,4]"), 4, COIN_EFORMAT, "w",
           "dtype must be a string, found a number");
    REJECT(T1("w", "\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]"), 4, COIN_EFORMAT, "w",
           "shape must be an array");
    REJECT(T1("w", "\"dtype\":\"F32\",\"shape\":[true],\"data_offsets\":[0,4]"), 4, COIN_EFORMAT, "w",
           "shape must hold non-negative integers, found a boolean");
}

TEST(st_reject_unknown_dtype)
{
    REJECT(T1("x.weight", "\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]"), 4,
           COIN_EFORMAT, "x.weight", "unknown dtype 'F33'");
    REJECT(T1("x.weight", "\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]"), 4,
           COIN_EFORMAT, "x.weight", "unknown dtype 'f32'");
    REJECT(T1("x.weight", "\"dtype\":\"F32\\u0000\",\"shape\":[1],\"data_offsets\":[0,4]"), 4,
           COIN_EFORMAT, "x.weight", "unknown dtype 'F32\\x00'");
    CHECK_EQ_INT(st_dtype_parse("F8_E4M3FNUZ"), ST_F8_E4M3FNUZ);
    CHECK_EQ_INT(st_dtype_parse("U64"), ST_U64);
    CHECK_EQ_INT(st_dtype_parse("F32 "), -1);
    CHECK_EQ_INT(st_dtype_bits(ST_F6_E3M2), 6);
    CHECK(strcmp(st_dtype_name(ST_BF16), "BF16") == 0);
}

TEST(st_reject_bad_offsets)
{
    REJECT(T1("w", F32_1 ",\"data_offsets\":[-1,4]"), 4, COIN_EFORMAT, "w",
           "data_offsets holds -1, which is negative");
    REJECT(T1("w", F32_1 ",\"data_offsets\":[-0,4]"), 4, COIN_EFORMAT, "w", "negative");
    REJECT(T1("w", F32_1 ",\"data_offsets\":[0,4.0]"), 4, COIN_EFORMAT, "w",
           "data_offsets holds 4.0, which is not written as a whole number");
    REJECT(T1("w", F32_1 ",\"data_offsets\":[0,4e0]"), 4, COIN_EFORMAT, "w", "whole number");
    REJECT(T1("w", F32_1 ",\"data_offsets\":[0,18446744073709551616]"), 4, COIN_EFORMAT, "w",
           "18446744073709551616, which does not fit in 64 bits");
    REJECT(T1("w", F32_1 ",\"data_offsets\":[0,18446744073709551615]"), 4, COIN_EFORMAT, "w",
           "hold 18446744073709551615 bytes but F32 [1] needs 4");
    REJECT(T1("w", F32_1 ",\"data_offsets\":[0,4,4]"), 4, COIN_EFORMAT, "w", "exactly 2 integers, found more");
    REJECT(T1("w", F32_1 ",\"data_offsets\":[0]"), 4, COIN_EFORMAT, "w", "exactly 2 integers, found 1");
    REJECT(T1("w", F32_1 ",\"data_offsets\":[\"0\",4]"), 4, COIN_EFORMAT, "w", "found a string");
    REJECT(T1("w", F32_1 ",\"data_offsets\":{\"0\":0}"), 4, COIN_EFORMAT, "w", "array of 2 integers");
    REJECT(T1("w", F32_1 ",\"data_offsets\":[4,0]"), 4, COIN_EFORMAT, "w",
           "data_offsets [4, 0] end before they begin");
}

TEST(st_reject_hole_between_tensors)
{
    REJECT("{\"a\":{" F32_1 ",\"data_offsets\":[0,4]},\"b\":{" F32_1 ",\"data_offsets\":[8,12]}}",
           12, COIN_EFORMAT, "b", "data_offsets [8, 12] leave a gap after the previous tensor 'a', which ends at 4");
    REJECT(T1("a", F32_1 ",\"data_offsets\":[4,8]"), 8, COIN_EFORMAT, "a", "the first tensor must begin at 0");
}

TEST(st_reject_overlapping_tensors)
{
    REJECT("{\"a\":{" F32_1 ",\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],"
           "\"data_offsets\":[2,10]}}", 10, COIN_EFORMAT, "b", "overlap the previous tensor 'a'");
    /* the same bytes claimed twice */
    REJECT("{\"a\":{" F32_1 ",\"data_offsets\":[0,4]},\"b\":{" F32_1 ",\"data_offsets\":[0,4]}}",
           4, COIN_EFORMAT, "b", "overlap");
}

TEST(st_reject_wrong_byte_count)
{
    REJECT(T1("x.weight", "\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]"), 12, COIN_EFORMAT,
           "x.weight", "bad.safetensors: tensor 'x.weight': data_offsets [0, 12] hold 12 bytes but F32 [2, 2] needs 16");
    REJECT(T1("s", "\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,4]"), 4, COIN_EFORMAT, "s",
           "hold 4 bytes but F64 [] needs 8");
    /* sub-byte dtypes must fill whole bytes */
    REJECT(T1("q", "\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]"), 2, COIN_EFORMAT, "q",
           "F4 [3] is 12 bits, which is not a whole number of bytes");
    ACCEPT(T1("q", "\"dtype\":\"F6_E2M3\",\"shape\":[4],\"data_offsets\":[0,3]"), 3);
}

TEST(st_reject_trailing_bytes)
{
    REJECT(T1("w", F32_1 ",\"data_offsets\":[0,4]"), 5, COIN_EFORMAT, "w",
           "the tensors end at byte 4 of the data section but 1 more bytes follow");
    REJECT("{}", 3, COIN_EFORMAT, NULL, "3 more bytes follow");
    /* and the other way: data missing at the end */
    REJECT(T1("w", F32_1 ",\"data_offsets\":[0,4]"), 3, COIN_EFORMAT, "w",
           "end at 4, past the end of the file (the data section holds 3 bytes)");
}

TEST(st_reject_shape_overflow)
{
    REJECT(T1("big", "\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]"), 0,
           COIN_EFORMAT, "big", "F32 [4294967296, 4294967296] has more elements or bits than fit in 64 bits");
    REJECT(T1("big", "\"dtype\":\"F32\",\"shape\":[2305843009213693952],\"data_offsets\":[0,0]"), 0,
           COIN_EFORMAT, "big", "than fit in 64 bits");   /* 2^61 elements, 2^66 bits */
    /* as in the reference, the product overflows on the way even if a 0 follows */
    REJECT(T1("big", "\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,0],\"data_offsets\":[0,0]"), 0,
           COIN_EFORMAT, "big", "than fit in 64 bits");
    ACCEPT(T1("ok", "\"dtype\":\"U8\",\"shape\":[0,4294967296,4294967296],\"data_offsets\":[0,0]"), 0);
    /* beyond what int64_t shape can hold: unsupported, not malformed */
    REJECT(T1("big", "\"dtype\":\"U8\",\"shape\":[0,9223372036854775808],\"data_offsets\":[0,0]"), 0,
           COIN_EUNSUPPORTED, "big", "larger than coin supports");
    REJECT(T1("deep", "\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]"), 1,
           COIN_EUNSUPPORTED, "deep", "more than 8 dimensions");
    ACCEPT(T1("deep", "\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]"), 1);
}

TEST(st_reject_duplicate_keys)
{
    REJECT("{\"a\":{" F32_1 ",\"data_offsets\":[0,4]},\"a\":{" F32_1 ",\"data_offsets\":[0,4]}}", 4,
           COIN_EFORMAT, "a", "the name appears twice");
    REJECT("{\"b\":{" F32_1 ",\"data_offsets\":[4,8]},\"a\":{" F32_1 ",\"data_offsets\":[0,4]},"
           "\"\\u0062\":{" F32_1 ",\"data_offsets\":[8,12]}}", 12, COIN_EFORMAT, "b", "appears twice");
    REJECT(T1("w", F32_1 ",\"dtype\":\"F32\",\"data_offsets\":[0,4]"), 4, COIN_EFORMAT, "w",
           "has two 'dtype' fields");
    REJECT(T1("w", F32_1 ",\"data_offsets\":[0,4],\"data_offsets\":[0,4]"), 4, COIN_EFORMAT, "w",
           "has two 'data_offsets' fields");
    REJECT("{\"__metadata__\":{},\"__metadata__\":{}}", 0, COIN_EFORMAT, NULL, "two __metadata__");
    REJECT("{\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"}}", 0, COIN_EFORMAT, NULL,
           "__metadata__ has the key 'k' twice");
}

TEST(st_reject_metadata_with_non_string_value)
{
    REJECT("{\"__metadata__\":{\"k\":1}}", 0, COIN_EFORMAT, NULL,
           "__metadata__ entry 'k' must be a string, found a number");
    REJECT("{\"__metadata__\":{\"k\":null}}", 0, COIN_EFORMAT, NULL, "must be a string, found null");
    REJECT("{\"__metadata__\":{\"k\":{\"x\":\"y\"}}}", 0, COIN_EFORMAT, NULL, "found an object");
    REJECT("{\"__metadata__\":[\"x\"]}", 0, COIN_EFORMAT, NULL,
           "__metadata__ must be an object of strings, found an array");
    REJECT("{\"__metadata__\":\"x\"}", 0, COIN_EFORMAT, NULL, "found a string");
    REJECT("{\"__metadata__\":{\"k\":\"a\\u0000b\"}}", 0, COIN_EFORMAT, NULL,
           "__metadata__ entry 'k' contains a NUL character");
}

TEST(st_reject_nul_in_name)
{
    REJECT(T1("a\\u0000b", F32_1 ",\"data_offsets\":[0,4]"), 4, COIN_EFORMAT, "a\\x00b",
           "the name contains a NUL character (\\u0000)");
    /* a hostile name cannot put escape sequences on the terminal */
    REJECT(T1("\\u001b[2J", "\"dtype\":\"Q\",\"shape\":[],\"data_offsets\":[0,0]"), 0, COIN_EFORMAT,
           "\\x1b[2J", "unknown dtype");
}

TEST(st_reject_deep_nesting)
{
    char hdr[600], deep[300];
    for (int depth = 100; depth <= 130; depth += 30) {
        memset(deep, '[', (size_t)depth);
        memset(deep + depth, ']', (size_t)depth);
        deep[2 * depth] = '\0';
        snprintf(hdr, sizeof hdr, T1("w", F32_1 ",\"data_offsets\":[0,4],\"x\":%s"), deep);
        coin_error e;
        int rc = parse_hdr(hdr, (size_t)-1, Z, 4, &e);
        if (depth == 100)
            CHECK_MSG(rc == 0, "%s", e.msg);
        else {
            CHECK_EQ_INT(rc, COIN_EFORMAT);
            CHECK_STR_CONTAINS(e.msg, "bad.safetensors: tensor 'w': the header nests deeper than 127 levels");
        }
    }
}

/* What the reference accepts, coin accepts too (checked against safetensors 0.8). */
TEST(st_accepts_what_the_reference_accepts)
{
    ACCEPT(" \t\r\n" T1("w", F32_1 ",\"data_offsets\":[0,4]") " \n\t\r", 4);
    ACCEPT("{}", 0);
    ACCEPT("{\"__metadata__\":null}", 0);
    ACCEPT("{\"__metadata__\":{}}", 0);
    ACCEPT(T1("", F32_1 ",\"data_offsets\":[0,4]"), 4);   /* an empty name */
    ACCEPT(T1("w", F32_1 ",\"data_offsets\":[0,4],\"extra\":{\"a\":[1,-2.5e-3,true,false,null,\"s\"]}"), 4);
    ACCEPT("{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},"
           "\"b\":{\"dtype\":\"U8\",\"shape\":[0,5],\"data_offsets\":[0,0]}}", 0);

    /* escapes are decoded; offsets sort the tensors */
    const char *hdr = "{ \"b\" : { \"shape\" : [ 2 ] , \"dtype\" : \"F\\u0031\\u0036\" , \"data_offsets\" : [ 4 , 8 ] } ,"
                      "\"\\u00e9\\ud83d\\ude00\\\"\\/\\n\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}";
    size_t len;
    const unsigned char data[8] = {0, 0, 0x20, 0x41, 0x00, 0x3c, 0x00, 0xbc};  /* 10.0f; 1, -1 */
    unsigned char *b = image(hdr, (size_t)-1, data, 8, &len);
    st_file *f;
    coin_error err = {0};
    REQUIRE_OK(st_parse(&f, b, len, "ok", &err), &err);
    free(b);
    REQUIRE(f->n_tensors == 2);
    CHECK(strcmp(f->tensors[0].name, "\xc3\xa9\xf0\x9f\x98\x80\"/\n") == 0);
    CHECK(f->tensors[0].ndim == 0 && f->tensors[0].nelem == 1);
    CHECK(strcmp(f->tensors[1].name, "b") == 0 && f->tensors[1].dtype == ST_F16);
    float out[2];
    REQUIRE_OK(st_tensor_to_f32(f, &f->tensors[0], out, 1, &err), &err);
    CHECK(out[0] == 10.0f);
    REQUIRE_OK(st_tensor_to_f32(f, &f->tensors[1], out, 2, &err), &err);
    CHECK(out[0] == 1.0f && out[1] == -1.0f);
    st_close(f);
}

/* Enough tensors and metadata entries to make every array grow many times. */
TEST(st_many_tensors_and_metadata)
{
    enum { N = 1000, M = 300 };
    size_t cap = 64 * (N + M) + 64, o = 0;
    char *hdr = malloc(cap);
    o += (size_t)snprintf(hdr + o, cap - o, "{\"__metadata__\":{");
    for (int i = 0; i < M; i++)
        o += (size_t)snprintf(hdr + o, cap - o, "%s\"key%d\":\"value%d\"", i ? "," : "", i, i);
    o += (size_t)snprintf(hdr + o, cap - o, "}");
    for (int i = N - 1; i >= 0; i--)    /* reverse order: the reader sorts */
        o += (size_t)snprintf(hdr + o, cap - o, ",\"t%d\":{\"dtype\":\"F16\",\"shape\":[1],"
                              "\"data_offsets\":[%d,%d]}", i, 2 * i, 2 * i + 2);
    snprintf(hdr + o, cap - o, "}");
    uint16_t *data = malloc(2 * N);
    for (int i = 0; i < N; i++)
        data[i] = st_f32_to_f16((float)i);     /* exact: F16 holds integers to 2048 */
    size_t len;
    unsigned char *b = image(hdr, (size_t)-1, data, 2 * N, &len);
    st_file *f;
    coin_error err = {0};
    REQUIRE_OK(st_parse(&f, b, len, "many", &err), &err);
    CHECK_EQ_INT(f->n_tensors, N);
    CHECK_EQ_INT(f->n_meta, M);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        char name[16];
        float v;
        snprintf(name, sizeof name, "t%d", i);
        const st_tensor *t = st_find(f, name);
        bad += !t || t != &f->tensors[i] || st_tensor_to_f32(f, t, &v, 1, &err) || v != (float)i;
    }
    for (int i = 0; i < M; i++) {
        char k[24], v[24];
        snprintf(k, sizeof k, "key%d", i);
        snprintf(v, sizeof v, "value%d", i);
        bad += !st_meta(f, k) || strcmp(st_meta(f, k), v) != 0;
    }
    CHECK_EQ_INT(bad, 0);
    st_close(f);
    free(b);
    free(data);
    free(hdr);
}

TEST(st_open_errors_name_the_file)
{
    st_file *f;
    coin_error e = {0};
    char path[700];
    snprintf(path, sizeof path, "%s/missing.safetensors", test_tmpdir());
    CHECK_EQ_INT(st_open(&f, path, &e), COIN_ENOTFOUND);
    CHECK(f == NULL);
    CHECK_STR_CONTAINS(e.msg, path);
    CHECK_STR_CONTAINS(e.msg, "No such file");
    CHECK_EQ_INT(st_open(&f, test_tmpdir(), &e), COIN_EINVAL);
    CHECK_STR_CONTAINS(e.msg, "not a regular file");
}

TEST(st_f16_conversion_edge_cases)
{
    CHECK(st_f16_to_f32(0x0001) == 0x1p-24f);           /* smallest subnormal */
    CHECK(st_f16_to_f32(0x03ff) == 0x3ffp-24f);         /* largest subnormal */
    CHECK(st_f16_to_f32(0x0400) == 0x1p-14f);           /* smallest normal */
    CHECK(st_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(st_f16_to_f32(0x3c00) == 1.0f && st_f16_to_f32(0xc000) == -2.0f);
    CHECK(isinf(st_f16_to_f32(0x7c00)) && st_f16_to_f32(0x7c00) > 0);
    CHECK(isinf(st_f16_to_f32(0xfc00)) && st_f16_to_f32(0xfc00) < 0);
    CHECK(isnan(st_f16_to_f32(0x7e00)) && isnan(st_f16_to_f32(0x7c01)) && isnan(st_f16_to_f32(0xfe00)));
    CHECK(st_f16_to_f32(0x8000) == 0.0f && signbit(st_f16_to_f32(0x8000)));
    CHECK(st_f16_to_f32(0x8001) == -0x1p-24f);

    CHECK_EQ_INT(st_f32_to_f16(65504.0f), 0x7bff);
    CHECK_EQ_INT(st_f32_to_f16(65519.99f), 0x7bff);
    CHECK_EQ_INT(st_f32_to_f16(65520.0f), 0x7c00);      /* the tie rounds to even: inf */
    CHECK_EQ_INT(st_f32_to_f16(-1e10f), 0xfc00);
    CHECK_EQ_INT(st_f32_to_f16(INFINITY), 0x7c00);
    CHECK_EQ_INT(st_f32_to_f16(-0.0f), 0x8000);
    CHECK_EQ_INT(st_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);         /* tie, to even */
    CHECK_EQ_INT(st_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);     /* tie, to even */
    CHECK_EQ_INT(st_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
    CHECK_EQ_INT(st_f32_to_f16(0x1p-25f), 0x0000);                /* tie, to even */
    CHECK_EQ_INT(st_f32_to_f16(0x1p-25f * 1.0001f), 0x0001);
    CHECK_EQ_INT(st_f32_to_f16(3 * 0x1p-25f), 0x0002);            /* 1.5 units, to even */
    CHECK_EQ_INT(st_f32_to_f16(0x1p-14f - 0x1p-25f), 0x0400);     /* tie up into the normals */
    CHECK_EQ_INT(st_f32_to_f16(1e-9f), 0x0000);
    CHECK_EQ_INT(st_f32_to_f16(-1e-45f), 0x8000);                 /* f32 subnormal */
    uint16_t n = st_f32_to_f16(NAN);
    CHECK((n & 0x7c00) == 0x7c00 && (n & 0x3ff) != 0);
    float snan;
    uint32_t snan_bits = 0x7f800001;                              /* payload only in low bits */
    memcpy(&snan, &snan_bits, 4);
    CHECK(isnan(st_f16_to_f32(st_f32_to_f16(snan))));

    /* every f16 survives f16 -> f32 -> f16, and f32 -> f16 is monotonic */
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = st_f16_to_f32((uint16_t)h);
        if (isnan(f) ? !isnan(st_f16_to_f32(st_f32_to_f16(f))) : st_f32_to_f16(f) != h)
            bad++;
        /* and the value matches the definition */
        int e = (int)(h >> 10 & 31), m = (int)(h & 1023);
        double want = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
        if (e != 31 && (double)fabsf(f) != want)
            bad++;
    }
    CHECK_EQ_INT(bad, 0);
}

#ifdef __FLT16_MAX__
/* The compiler's own float -> _Float16 conversion rounds to nearest even: an
 * independent check over a spread of bit patterns. */
TEST(st_f32_to_f16_matches_the_compiler)
{
    int bad = 0;
    for (uint64_t x = 0; x < 0x100000000ull; x += 4093) {
        uint32_t u = (uint32_t)x;
        float f;
        memcpy(&f, &u, 4);
        volatile _Float16 c = (_Float16)f;
        uint16_t want;
        memcpy(&want, (const void *)&c, 2);
        uint16_t got = st_f32_to_f16(f);
        if (isnan(f) ? (got & 0x7fff) <= 0x7c00 : got != want)
            bad++;
    }
    CHECK_EQ_INT(bad, 0);
}
#endif

TEST(st_bf16_conversion_edge_cases)
{
    CHECK(st_bf16_to_f32(0x3f80) == 1.0f && st_bf16_to_f32(0xc040) == -3.0f);
    CHECK(st_bf16_to_f32(0x0001) == 0x1p-133f);         /* subnormal */
    CHECK(isinf(st_bf16_to_f32(0x7f80)) && isnan(st_bf16_to_f32(0x7fc0)) && isnan(st_bf16_to_f32(0xff81)));
    CHECK_EQ_INT(st_f32_to_bf16(1.0f), 0x3f80);
    CHECK_EQ_INT(st_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);         /* tie, to even */
    CHECK_EQ_INT(st_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);     /* tie, to even */
    CHECK_EQ_INT(st_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
    CHECK_EQ_INT(st_f32_to_bf16(FLT_MAX), 0x7f80);                /* rounds to inf */
    CHECK_EQ_INT(st_f32_to_bf16(-INFINITY), 0xff80);
    CHECK_EQ_INT(st_f32_to_bf16(-0.0f), 0x8000);
    float snan;
    uint32_t bits = 0xff800001;     /* would truncate to -inf without care */
    memcpy(&snan, &bits, 4);
    CHECK(isnan(st_bf16_to_f32(st_f32_to_bf16(snan))));
    CHECK(st_f32_to_bf16(snan) & 0x8000);
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = st_bf16_to_f32((uint16_t)h);
        if (!isnan(f) && st_f32_to_bf16(f) != h)
            bad++;
    }
    CHECK_EQ_INT(bad, 0);
}

/* Large enough to be split across threads; every element must agree with the
 * scalar converter, at an unaligned address (header of odd length). */
TEST(st_convert_large_tensors)
{
    const uint64_t n = 300007;
    char hdr[256];
    unsigned char *data = malloc(n * 8);
    for (uint64_t i = 0; i < n * 8; i++)
        data[i] = (unsigned char)(i * 2654435761u >> 13);
    static const st_dtype dts[] = {ST_F16, ST_BF16, ST_F32, ST_F64};
    float *out = malloc(n * sizeof *out);
    for (int k = 0; k < 4; k++) {
        int bytes = st_dtype_bits(dts[k]) / 8;
        int hl = snprintf(hdr, sizeof hdr, T1("t", "\"dtype\":\"%s\",\"shape\":[%llu],\"data_offsets\":[0,%llu]") " ",
                          st_dtype_name(dts[k]), (unsigned long long)n, (unsigned long long)(n * bytes));
        if (hl % 2 == 0)
            hdr[hl - 1] = '\0';     /* odd length, so the data is misaligned */
        size_t len;
        unsigned char *b = image(hdr, (size_t)-1, data, n * (size_t)bytes, &len);
        st_file *f;
        coin_error err = {0};
        REQUIRE_OK(st_parse(&f, b, len, "big", &err), &err);
        free(b);
        const st_tensor *t = st_find(f, "t");
        CHECK((uintptr_t)t->data % 2 == 1);
        REQUIRE_OK(st_tensor_to_f32(f, t, out, n, &err), &err);
        int bad = 0;
        for (uint64_t i = 0; i < n; i++) {
            const unsigned char *p = data + i * (uint64_t)bytes;
            uint16_t h = (uint16_t)(p[0] | p[1] << 8);
            double d;
            memcpy(&d, p, 8);
            float want = dts[k] == ST_F16 ? st_f16_to_f32(h) : dts[k] == ST_BF16 ? st_bf16_to_f32(h)
                       : dts[k] == ST_F32 ? f32_at(p) : (float)d;
            if (memcmp(&want, &out[i], 4) != 0 && !(isnan(want) && isnan(out[i])))
                bad++;
        }
        CHECK_EQ_INT(bad, 0);
        st_close(f);
    }
    free(out);
    free(data);
}

TEST(st_convert_refuses_other_dtypes)
{
    size_t len;
    unsigned char *b = example(&len);
    st_file *f;
    coin_error err = {0};
    REQUIRE_OK(st_parse(&f, b, len, "model.safetensors", &err), &err);
    free(b);
    float out[8];
    CHECK_EQ_INT(st_tensor_to_f32(f, &f->tensors[0], out, 4, &err), COIN_EUNSUPPORTED);
    CHECK_STR_CONTAINS(err.msg, "model.safetensors: tensor 'text_model.embeddings.position_ids': dtype I64");
    CHECK_EQ_INT(st_tensor_to_f32(f, st_find(f, "weight"), out, 5, &err), COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "tensor 'weight': asked to convert 5 elements but the tensor holds 6");
    st_close(f);
}

TEST(st_writer_round_trip_with_metadata)
{
    st_writer *w = st_writer_new();
    coin_error err = {0};
    const int64_t s0[] = {0, 3}, s3[] = {3}, s22[] = {2, 2};
    const float sc = -7.25f, f3[] = {1.5f, -0.0f, 1e-3f};
    const uint16_t h4[] = {st_f32_to_f16(0.1f), st_f32_to_f16(-65504), 0x7c00, 0x0001};
    const double d3[] = {1e300, 2.5, -4};
    const unsigned char u3[] = {1, 2, 255};
    const char *odd = "quote\" back\\ nl\n tab\t bell\x07 \xc3\xa9\xe4\xb8\xad/";
    REQUIRE_OK(st_writer_add(w, "scalar", ST_F32, 0, NULL, &sc, &err), &err);
    REQUIRE_OK(st_writer_add(w, "empty", ST_F32, 2, s0, NULL, &err), &err);
    REQUIRE_OK(st_writer_add(w, odd, ST_F32, 1, s3, f3, &err), &err);
    REQUIRE_OK(st_writer_add(w, "h", ST_F16, 2, s22, h4, &err), &err);
    REQUIRE_OK(st_writer_add(w, "d", ST_F64, 1, s3, d3, &err), &err);
    REQUIRE_OK(st_writer_add(w, "u", ST_U8, 1, s3, u3, &err), &err);
    REQUIRE_OK(st_writer_meta(w, "format", "pt", &err), &err);
    REQUIRE_OK(st_writer_meta(w, "a \"key\"", "line1\nline2 \xe2\x82\xac \x01", &err), &err);
    REQUIRE_OK(st_writer_meta(w, "empty", "", &err), &err);
    char path[700];
    const char *dir = test_tmpdir();
    snprintf(path, sizeof path, "%s/rt.safetensors", dir);
    REQUIRE_OK(st_writer_save(w, path, &err), &err);
    st_writer_free(w);

    st_file *f;
    REQUIRE_OK(st_open(&f, path, &err), &err);
    REQUIRE(f->n_tensors == 6 && f->n_meta == 3);
    /* header padded to 8, so the data section is 8-aligned in the file */
    CHECK(((const unsigned char *)f->tensors[0].data - (const unsigned char *)f->map) % 8 == 0);
    /* layout: dtype descending (F64 > F32 > F16 > U8), then name */
    static const char *order[] = {"d", "empty", NULL, "scalar", "h", "u"};
    for (int i = 0; i < 6; i++)
        CHECK(strcmp(f->tensors[i].name, order[i] ? order[i] : odd) == 0);
    CHECK(strcmp(st_meta(f, "format"), "pt") == 0);
    CHECK(strcmp(st_meta(f, "a \"key\""), "line1\nline2 \xe2\x82\xac \x01") == 0);
    CHECK(strcmp(st_meta(f, "empty"), "") == 0);
    float out[4];
    const st_tensor *t = st_find(f, "scalar");
    CHECK(t->ndim == 0 && t->nelem == 1 && t->end - t->begin == 4);
    REQUIRE_OK(st_tensor_to_f32(f, t, out, 1, &err), &err);
    CHECK(out[0] == -7.25f);
    t = st_find(f, "empty");
    CHECK(t->ndim == 2 && t->shape[0] == 0 && t->shape[1] == 3 && t->nelem == 0 && t->begin == t->end);
    CHECK_EQ_INT(st_tensor_to_f32(f, t, out, 0, &err), 0);
    REQUIRE_OK(st_tensor_to_f32(f, st_find(f, odd), out, 3, &err), &err);
    CHECK(out[0] == 1.5f && out[1] == 0.0f && signbit(out[1]) && out[2] == 1e-3f);
    REQUIRE_OK(st_tensor_to_f32(f, st_find(f, "h"), out, 4, &err), &err);
    CHECK(fabsf(out[0] - 0.1f) < 1e-4f && out[1] == -65504.0f && isinf(out[2]) && out[3] == 0x1p-24f);
    REQUIRE_OK(st_tensor_to_f32(f, st_find(f, "d"), out, 3, &err), &err);
    CHECK(isinf(out[0]) && out[1] == 2.5f && out[2] == -4.0f);   /* 1e300 overflows a float */
    CHECK(memcmp(st_find(f, "u")->data, u3, 3) == 0);
    st_close(f);
    CHECK_EQ_INT(count_entries(dir), 1);    /* no temporary left behind */
}

TEST(st_writer_rejects_bad_input)
{
    st_writer *w = st_writer_new();
    coin_error e = {0};
    const int64_t neg[] = {-1}, one[] = {1}, odd[] = {3};
    const float v = 1;
    CHECK_EQ_INT(st_writer_add(w, "n", ST_F32, 1, neg, &v, &e), COIN_EINVAL);
    CHECK_STR_CONTAINS(e.msg, "tensor 'n': dimension 0 is -1");
    CHECK_EQ_INT(st_writer_add(w, "x", ST_F32, 9, one, &v, &e), COIN_EINVAL);
    CHECK_EQ_INT(st_writer_add(w, "__metadata__", ST_F32, 1, one, &v, &e), COIN_EINVAL);
    CHECK_EQ_INT(st_writer_add(w, "bad\xff", ST_F32, 1, one, &v, &e), COIN_EINVAL);
    CHECK_EQ_INT(st_writer_add(w, "q", ST_F4, 1, odd, &v, &e), COIN_EINVAL);
    CHECK_EQ_INT(st_writer_add(w, "nodata", ST_F32, 1, one, NULL, &e), COIN_EINVAL);
    REQUIRE_OK(st_writer_add(w, "x", ST_F32, 1, one, &v, &e), &e);
    CHECK_EQ_INT(st_writer_add(w, "x", ST_F32, 1, one, &v, &e), COIN_EINVAL);
    CHECK_STR_CONTAINS(e.msg, "tensor 'x': added twice");
    REQUIRE_OK(st_writer_meta(w, "k", "v", &e), &e);
    CHECK_EQ_INT(st_writer_meta(w, "k", "w", &e), COIN_EINVAL);
    CHECK_EQ_INT(st_writer_meta(w, "k2", "\xc0\x80", &e), COIN_EINVAL);
    st_writer_free(w);
    st_writer_free(NULL);
}

TEST(st_writer_into_missing_directory_fails_cleanly)
{
    st_writer *w = st_writer_new();
    coin_error e = {0};
    const float v = 1;
    REQUIRE_OK(st_writer_add(w, "x", ST_F32, 0, NULL, &v, &e), &e);
    char path[700];
    snprintf(path, sizeof path, "%s/no/such/dir/out.safetensors", test_tmpdir());
    CHECK_EQ_INT(st_writer_save(w, path, &e), COIN_EIO);
    CHECK_STR_CONTAINS(e.msg, path);
    CHECK_STR_CONTAINS(e.msg, "No such file or directory");
    st_writer_free(w);
}

TEST(st_writer_into_read_only_directory_fails_cleanly)
{
    if (geteuid() == 0) {
        test_skip("root ignores directory permissions");
        return;
    }
    const char *dir = test_tmpdir();
    char path[700];
    snprintf(path, sizeof path, "%s/out.safetensors", dir);
    REQUIRE(chmod(dir, 0555) == 0);
    st_writer *w = st_writer_new();
    coin_error e = {0};
    const float v = 1;
    st_writer_add(w, "x", ST_F32, 0, NULL, &v, &e);
    CHECK_EQ_INT(st_writer_save(w, path, &e), COIN_EIO);
    CHECK_STR_CONTAINS(e.msg, path);
    CHECK_STR_CONTAINS(e.msg, "Permission denied");
    chmod(dir, 0755);
    CHECK_EQ_INT(count_entries(dir), 0);
    st_writer_free(w);
}

/* A write that fails half-way (here: the file-size limit, as a full disk
 * would) leaves the old file untouched and no temporary behind. */
TEST(st_writer_failure_keeps_the_old_file)
{
    const char *dir = test_tmpdir();
    char path[700];
    snprintf(path, sizeof path, "%s/keep.safetensors", dir);
    REQUIRE(write_file(path, "old contents", 12) == 0);
    static float big[4096];
    const int64_t shape[] = {4096};
    st_writer *w = st_writer_new();
    coin_error e = {0};
    REQUIRE_OK(st_writer_add(w, "big", ST_F32, 1, shape, big, &e), &e);

    struct rlimit old, lim;
    REQUIRE(getrlimit(RLIMIT_FSIZE, &old) == 0);
    lim = old;
    lim.rlim_cur = 4096;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    int rc = st_writer_save(w, path, &e);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    st_writer_free(w);

    CHECK_EQ_INT(rc, COIN_EIO);
    CHECK_STR_CONTAINS(e.msg, path);
    CHECK_STR_CONTAINS(e.msg, "cannot write");
    size_t n;
    unsigned char *got = read_file(path, &n);
    CHECK(got && n == 12 && memcmp(got, "old contents", 12) == 0);
    free(got);
    CHECK_EQ_INT(count_entries(dir), 1);
}

/* Every seed of the fuzz corpus goes through the reader without harm: it is
 * accepted, or refused with a code and a message. */
TEST(st_fuzz_corpus_regression)
{
    DIR *d = opendir("tests/fuzz/corpus");
    REQUIRE(d);
    int files = 0, ok = 0;
    for (struct dirent *ent; (ent = readdir(d));) {
        if (ent->d_name[0] == '.')
            continue;
        char path[700];
        snprintf(path, sizeof path, "tests/fuzz/corpus/%s", ent->d_name);
        size_t n;
        unsigned char *b = read_file(path, &n);
        CHECK(b != NULL);
        if (!b)
            continue;
        st_file *f = NULL;
        coin_error e = {0};
        int rc = st_parse(&f, b, n, ent->d_name, &e);
        CHECK_MSG(rc == 0 || (rc < 0 && e.code == rc && strstr(e.msg, ent->d_name)),
                  "%s: rc %d, message '%s'", ent->d_name, rc, e.msg);
        /* the seeds say what they should do */
        CHECK_MSG((rc == 0) == (strncmp(ent->d_name, "valid_", 6) == 0), "%s: rc %d %s",
                  ent->d_name, rc, e.msg);
        ok += rc == 0;
        files++;
        st_close(f);
        free(b);
    }
    closedir(d);
    CHECK(files >= 10 && ok >= 5);
}
