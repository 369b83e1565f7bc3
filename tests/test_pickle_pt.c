/*
 * test_pickle_pt.c - the restricted torch.save reader (core/pickle_pt.c).
 *
 * The golden files (tests/golden/pt/, made by tools/reference/make_pt_goldens.py) pin the
 * reader to torch 2.5.1: every valid file must give torch's vectors bit for bit, and every
 * malicious or broken one must be refused with its status and message (manifest.txt).  The
 * pickle machine's own rules (stack, memo, limits, argument shapes) are tested on pickles
 * assembled here and wrapped in a zip built here, and every truncation and byte flip of a
 * few valid files must end in success or a clean error.
 */
#include "test.h"

#include "core/pickle_pt.h"
#include "core/safetensors.h"

#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <zlib.h>

#define GOLDEN "tests/golden/pt/"

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *b = malloc(sz > 0 ? (size_t)sz : 1);
    *n = b && sz >= 0 ? fread(b, 1, (size_t)sz, fp) : 0;
    fclose(fp);
    return b;
}

/* Runs the in-memory reader; checks the failure contract when it fails. */
static int parse(const void *buf, size_t len, const char *name, char **tok, float **v, int *n,
                 int64_t *w, coin_error *e)
{
    int rc = pt_parse_embedding(buf, len, name, tok, v, n, w, e);
    if (rc)
        CHECK_MSG(rc < 0 && e->code == rc && strstr(e->msg, name) && !*tok && !*v && !*n && !*w,
                  "%s: rc %d, outputs kept or message '%s' lacks the name", name, rc, e->msg);
    return rc;
}

TEST(pickle_pt_goldens_load)
{
    st_file *exp;
    coin_error e = {0};
    REQUIRE_OK(st_open(&exp, GOLDEN "expected.safetensors", &e), &e);
    FILE *fp = fopen(GOLDEN "manifest.txt", "r");
    REQUIRE(fp);
    char line[512];
    int ok = 0;
    while (fgets(line, sizeof line, fp)) {
        char file[128], token[128], path[300];
        int n_exp, w_exp;
        if (sscanf(line, "ok %127s %127s %d %d", file, token, &n_exp, &w_exp) != 4)
            continue;
        snprintf(path, sizeof path, GOLDEN "%s", file);
        char *tok;
        float *v;
        int n;
        int64_t w;
        int rc = pt_load_embedding(path, &tok, &v, &n, &w, &e);
        CHECK_MSG(rc == 0, "%s: %s", file, e.msg);
        if (rc)
            continue;
        ok++;
        CHECK_MSG(n == n_exp && w == w_exp, "%s: [%d, %lld], expected [%d, %d]", file, n,
                  (long long)w, n_exp, w_exp);
        CHECK_MSG(strcmp(token, "-") == 0 ? tok == NULL : tok && strcmp(tok, token) == 0,
                  "%s: token '%s', expected '%s'", file, tok ? tok : "(null)", token);
        const st_tensor *t = st_find(exp, file);
        CHECK_MSG(t && t->nelem == (uint64_t)n * (uint64_t)w, "%s: no expected tensor", file);
        if (t && t->nelem == (uint64_t)n * (uint64_t)w)  /* bit for bit: inf, -0 and subnormals too */
            CHECK_MSG(memcmp(t->data, v, t->nelem * sizeof *v) == 0, "%s: vectors differ", file);
        free(tok);
        free(v);
    }
    fclose(fp);
    st_close(exp);
    CHECK(ok >= 14);
}

TEST(pickle_pt_goldens_refused)
{
    FILE *fp = fopen(GOLDEN "manifest.txt", "r");
    REQUIRE(fp);
    char line[512];
    int bad = 0;
    while (fgets(line, sizeof line, fp)) {
        char file[128], path[300];
        int code, used = 0;
        if (sscanf(line, "bad %127s %d %n", file, &code, &used) != 2 || !used)
            continue;
        char *msg = line + used;
        msg[strcspn(msg, "\n")] = '\0';
        snprintf(path, sizeof path, GOLDEN "%s", file);
        char *tok = (char *)1;
        float *v = (float *)1;
        int n = 1;
        int64_t w = 1;
        coin_error e = {0};
        int rc = pt_load_embedding(path, &tok, &v, &n, &w, &e);
        CHECK_MSG(rc == code && e.code == rc, "%s: rc %d, expected %d (%s)", file, rc, code, e.msg);
        CHECK_MSG(!tok && !v && !n && !w, "%s: outputs not cleared", file);
        CHECK_STR_CONTAINS(e.msg, path);
        CHECK_STR_CONTAINS(e.msg, msg);
        bad++;
    }
    fclose(fp);
    CHECK(bad >= 30);
}

TEST(pickle_pt_open_errors)
{
    char *tok;
    float *v;
    int n;
    int64_t w;
    coin_error e = {0};
    CHECK_EQ_INT(pt_load_embedding(GOLDEN "no_such_file.pt", &tok, &v, &n, &w, &e), COIN_ENOTFOUND);
    CHECK_STR_CONTAINS(e.msg, "no_such_file.pt");
    CHECK_EQ_INT(pt_load_embedding(GOLDEN, &tok, &v, &n, &w, &e), COIN_EINVAL);
    CHECK_STR_CONTAINS(e.msg, "not a regular file");
    char path[600];
    snprintf(path, sizeof path, "%s/empty.pt", test_tmpdir());
    FILE *fp = fopen(path, "wb");
    REQUIRE(fp);
    fclose(fp);
    CHECK_EQ_INT(pt_load_embedding(path, &tok, &v, &n, &w, &e), COIN_EFORMAT);
    CHECK_STR_CONTAINS(e.msg, "the file is empty");
}

/* Every prefix of a valid file is refused, and every one-byte change ends
 * in success or a clean error. */
TEST(pickle_pt_truncated_and_flipped)
{
    static const char *const files[] = {"a1111_param_bf16.pt", "zip64.pt", "pyzip.pt",
                                        "deflated.pt", "ti_parameterdict.pt"};
    for (size_t f = 0; f < sizeof files / sizeof *files; f++) {
        char path[300];
        size_t len;
        snprintf(path, sizeof path, GOLDEN "%s", files[f]);
        unsigned char *b = slurp(path, &len);
        REQUIRE(b && len > 100);
        int refused = 0, accepted = 0;
        for (size_t cut = 0; cut < len; cut++) {
            unsigned char *p = malloc(cut ? cut : 1);   /* exact size: ASan sees overreads */
            memcpy(p, b, cut);
            char *tok;
            float *v;
            int n;
            int64_t w;
            coin_error e = {0};
            refused += parse(p, cut, files[f], &tok, &v, &n, &w, &e) < 0;
            free(p);
        }
        CHECK_MSG(refused == (int)len, "%s: %d of %zu prefixes refused", files[f], refused, len);
        for (size_t k = 0; k < len; k++) {
            unsigned char *p = malloc(len);
            memcpy(p, b, len);
            p[k] ^= 0x5a;
            char *tok;
            float *v;
            int n;
            int64_t w;
            coin_error e = {0};
            if (parse(p, len, files[f], &tok, &v, &n, &w, &e) == 0) {
                accepted++;
                CHECK(v && n >= 1 && w >= 1);
                free(tok);
                free(v);
            }
            free(p);
        }
        /* only bytes no check covers (padding, timestamps, unused entries) may change */
        CHECK_MSG(accepted < (int)len / 2, "%s: %d of %zu flips accepted", files[f], accepted, len);
        free(b);
    }
}

TEST(pickle_pt_fuzz_corpus_regression)
{
    DIR *d = opendir("tests/fuzz/corpus_pt");
    REQUIRE(d);
    int files = 0, ok = 0;
    for (struct dirent *ent; (ent = readdir(d));) {
        if (ent->d_name[0] == '.')
            continue;
        char path[700];
        snprintf(path, sizeof path, "tests/fuzz/corpus_pt/%s", ent->d_name);
        size_t n;
        unsigned char *b = slurp(path, &n);
        CHECK(b != NULL);
        if (!b)
            continue;
        char *tok;
        float *v;
        int nv;
        int64_t w;
        coin_error e = {0};
        int rc = parse(b, n, ent->d_name, &tok, &v, &nv, &w, &e);
        CHECK_MSG((rc == 0) == (strncmp(ent->d_name, "valid_", 6) == 0), "%s: rc %d %s",
                  ent->d_name, rc, e.msg);
        ok += rc == 0;
        files++;
        free(tok);
        free(v);
        free(b);
    }
    closedir(d);
    CHECK(files >= 15 && ok >= 8);
}

/* ---- pickles assembled here ---- */

typedef struct pk {
    unsigned char b[1 << 16];
    size_t n;
} pk;

static void raw(pk *p, const void *s, size_t n)
{
    if (p->n + n <= sizeof p->b) {
        memcpy(p->b + p->n, s, n);
        p->n += n;
    }
}
static void op(pk *p, int c) { unsigned char x = (unsigned char)c; raw(p, &x, 1); }
static void str(pk *p, const char *s)
{
    uint32_t n = (uint32_t)strlen(s);
    unsigned char h[5] = {'X', (unsigned char)n, (unsigned char)(n >> 8), (unsigned char)(n >> 16),
                          (unsigned char)(n >> 24)};
    raw(p, h, 5);
    raw(p, s, n);
}
static void integer(pk *p, int64_t v)
{
    if (v >= 0 && v < 256) {
        op(p, 'K');
        op(p, (int)v);
    } else {
        op(p, 0x8a);       /* LONG1, 8 bytes */
        op(p, 8);
        for (int k = 0; k < 8; k++)
            op(p, (int)((uint64_t)v >> 8 * k & 0xff));
    }
}
static void global(pk *p, const char *mod, const char *name)
{
    op(p, 'c');
    raw(p, mod, strlen(mod));
    op(p, '\n');
    raw(p, name, strlen(name));
    op(p, '\n');
}
static void ituple(pk *p, int n, const int64_t *x)
{
    op(p, '(');
    for (int i = 0; i < n; i++)
        integer(p, x[i]);
    op(p, 't');
}
/* _rebuild_tensor_v2 of FloatStorage key "0" with numel elements. */
static void tensor(pk *p, int64_t numel, int64_t off, int nd, const int64_t *size,
                   const int64_t *stride)
{
    global(p, "torch._utils", "_rebuild_tensor_v2");
    op(p, '(');
    op(p, '(');
    str(p, "storage");
    global(p, "torch", "FloatStorage");
    str(p, "0");
    str(p, "cpu");
    integer(p, numel);
    op(p, 't');
    op(p, 'Q');
    integer(p, off);
    ituple(p, nd, size);
    ituple(p, nd, stride);
    op(p, 0x89);
    global(p, "collections", "OrderedDict");
    op(p, ')');
    op(p, 'R');
    op(p, 't');
    op(p, 'R');
}
static const int64_t SIZE_2x4[2] = {2, 4}, STRIDE_2x4[2] = {4, 1};

/* A stored zip of t/data.pkl, t/data/0 (floats 0, 1, 2, ...) and t/version,
 * laid out as Python's zipfile does. */
static unsigned char *make_pt(const pk *p, int nfloats, size_t *len)
{
    float data[64];
    for (int i = 0; i < nfloats && i < 64; i++)
        data[i] = (float)i;
    const struct { const char *name; const void *d; size_t n; } ent[3] = {
        {"t/data.pkl", p->b, p->n}, {"t/data/0", data, (size_t)nfloats * 4}, {"t/version", "3\n", 2}};
    unsigned char *z = malloc(p->n + 1024), *c = malloc(1024);
    size_t o = 0, co = 0;
#define PUT(buf, off, v, bytes) for (int k_ = 0; k_ < (bytes); k_++) (buf)[(off)++] = (unsigned char)((uint64_t)(v) >> 8 * k_)
    for (int i = 0; i < 3; i++) {
        uint32_t crc = (uint32_t)crc32(0, ent[i].d, (uInt)ent[i].n), nl = (uint32_t)strlen(ent[i].name);
        size_t lh = o;
        PUT(z, o, 0x04034b50, 4); PUT(z, o, 20, 2); PUT(z, o, 0, 2); PUT(z, o, 0, 2);
        PUT(z, o, 0, 4); PUT(z, o, crc, 4); PUT(z, o, ent[i].n, 4); PUT(z, o, ent[i].n, 4);
        PUT(z, o, nl, 2); PUT(z, o, 0, 2);
        memcpy(z + o, ent[i].name, nl);
        o += nl;
        memcpy(z + o, ent[i].d, ent[i].n);
        o += ent[i].n;
        PUT(c, co, 0x02014b50, 4); PUT(c, co, 20, 2); PUT(c, co, 20, 2); PUT(c, co, 0, 2);
        PUT(c, co, 0, 2); PUT(c, co, 0, 4); PUT(c, co, crc, 4); PUT(c, co, ent[i].n, 4);
        PUT(c, co, ent[i].n, 4); PUT(c, co, nl, 2); PUT(c, co, 0, 2); PUT(c, co, 0, 2);
        PUT(c, co, 0, 2); PUT(c, co, 0, 2); PUT(c, co, 0, 4); PUT(c, co, lh, 4);
        memcpy(c + co, ent[i].name, nl);
        co += nl;
    }
    size_t cd = o;
    memcpy(z + o, c, co);
    o += co;
    PUT(z, o, 0x06054b50, 4); PUT(z, o, 0, 4); PUT(z, o, 3, 2); PUT(z, o, 3, 2);
    PUT(z, o, co, 4); PUT(z, o, cd, 4); PUT(z, o, 0, 2);
#undef PUT
    free(c);
    *len = o;
    return z;
}

/* Wraps p (and 8 floats) in a zip and reads it; returns the status and
 * keeps the message in e. */
static int run_pk(const pk *p, coin_error *e, char **tok, float **v, int *n, int64_t *w)
{
    size_t len;
    unsigned char *z = make_pt(p, 8, &len);
    int rc = parse(z, len, "t.pt", tok, v, n, w, e);
    free(z);
    return rc;
}

/* Expects p to be refused with code and a message holding want. */
#define REFUSED(p, code, want)                                                        \
    do {                                                                              \
        char *tok_;                                                                   \
        float *v_;                                                                    \
        int n_;                                                                       \
        int64_t w_;                                                                   \
        coin_error e_ = {0};                                                          \
        int rc_ = run_pk(p, &e_, &tok_, &v_, &n_, &w_);                               \
        CHECK_MSG(rc_ == (code), "rc %d, expected %d: %s", rc_, (code), e_.msg);      \
        CHECK_STR_CONTAINS(e_.msg, want);                                             \
        if (!rc_) {                                                                   \
            free(tok_);                                                               \
            free(v_);                                                                 \
        }                                                                             \
    } while (0)

static void start(pk *p)
{
    p->n = 0;
    op(p, 0x80);
    op(p, 2);
}

/* Valid pickles using every opcode torch may emit: FRAME, MEMOIZE,
 * SHORT_BINUNICODE, LONG_BINPUT/GET, BINGET, BININT, LONG1, EMPTY_SET with
 * ADDITEMS, set() of a list, and containers the reader ignores, including
 * a dict that holds itself. */
TEST(pickle_pt_handmade_ok)
{
    pk *p = malloc(sizeof *p);
    start(p);
    op(p, 0x95);                        /* FRAME, length = the rest */
    size_t frame_at = p->n;
    for (int k = 0; k < 8; k++)
        op(p, 0);
    op(p, '}');
    op(p, 0x94);                        /* MEMOIZE -> slot 0 */
    op(p, '(');
    str(p, "string_to_param");
    op(p, '}');
    op(p, 0x8c); op(p, 1); raw(p, "*", 1);
    tensor(p, 8, 0, 2, SIZE_2x4, STRIDE_2x4);
    op(p, 'r'); raw(p, "\x10\x00\x00\x00", 4);     /* LONG_BINPUT 16 */
    op(p, 's');
    str(p, "again"); op(p, 0x8f); op(p, '('); op(p, 'j'); raw(p, "\x10\x00\x00\x00", 4); op(p, 0x90);
    str(p, "self"); op(p, 'h'); op(p, 0);
    op(p, 'u');
    op(p, '.');
    uint64_t fl = p->n - frame_at - 8;
    for (int k = 0; k < 8; k++)
        p->b[frame_at + k] = (unsigned char)(fl >> 8 * k);
    char *tok;
    float *v;
    int n;
    int64_t w;
    coin_error e = {0};
    int rc = run_pk(p, &e, &tok, &v, &n, &w);
    CHECK_MSG(rc == 0, "%s", e.msg);
    if (!rc) {
        CHECK(tok == NULL);             /* A1111: the file name is the trigger */
        CHECK(n == 2 && w == 4 && v[0] == 0 && v[7] == 7);
        free(v);
    }

    /* diffusers, with a SHORT_BINUNICODE key */
    start(p);
    op(p, '}');
    op(p, 0x8c); op(p, 3); raw(p, "<t>", 3);
    tensor(p, 8, 0, 2, SIZE_2x4, STRIDE_2x4);
    op(p, 's');
    op(p, '.');
    rc = run_pk(p, &e, &tok, &v, &n, &w);
    CHECK_MSG(rc == 0, "%s", e.msg);
    if (!rc) {
        CHECK(tok && strcmp(tok, "<t>") == 0);
        free(tok);
        free(v);
    }

    /* A1111 dict with a transposed view and extra fields of every kind. */
    start(p);
    op(p, '}');
    op(p, '(');
    str(p, "string_to_token"); op(p, '}'); str(p, "*"); integer(p, 265); op(p, 's');
    str(p, "string_to_param"); op(p, '}'); str(p, "*");
    {
        const int64_t size[2] = {4, 2}, stride[2] = {1, 4};     /* the transpose of [2, 4] */
        tensor(p, 8, 0, 2, size, stride);
    }
    op(p, 's');
    str(p, "name"); str(p, "cat");
    str(p, "step"); op(p, 'J'); raw(p, "\xff\xff\xff\x7f", 4);
    str(p, "sd_checkpoint"); op(p, 'N');
    str(p, "flags"); op(p, 0x8f); op(p, '('); op(p, 0x88); op(p, 0x89); op(p, 0x90);
    str(p, "list"); op(p, ']'); op(p, '('); integer(p, -5); integer(p, 1LL << 40); op(p, 'e');
    op(p, 'K'); op(p, 9); op(p, 'a');
    str(p, "set"); global(p, "__builtin__", "set"); op(p, ']'); op(p, 0x85); op(p, 'R');
    op(p, 'u');
    op(p, '.');
    rc = run_pk(p, &e, &tok, &v, &n, &w);
    CHECK_MSG(rc == 0, "%s", e.msg);
    if (!rc) {
        CHECK(tok == NULL);             /* A1111: the file name is the trigger */
        CHECK(n == 4 && w == 2 && v[0] == 0 && v[1] == 4 && v[2] == 1 && v[7] == 7);
        free(v);
    }

    /* kohya's key names no trigger */
    start(p);
    op(p, '}');
    str(p, "emb_params");
    tensor(p, 8, 0, 2, SIZE_2x4, STRIDE_2x4);
    op(p, 's');
    op(p, '.');
    rc = run_pk(p, &e, &tok, &v, &n, &w);
    CHECK_MSG(rc == 0 && tok == NULL, "%s", e.msg);
    if (!rc)
        free(v);
    free(p);
}

TEST(pickle_pt_machine_rules)
{
    pk *p = malloc(sizeof *p);
    start(p); op(p, 's'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "SETITEM: needs a value but the stack is empty");
    start(p); op(p, '}'); op(p, '('); op(p, 'N'); op(p, 'u'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "an odd number of items");
    start(p); op(p, '}'); str(p, "a"); op(p, 'N'); op(p, 's'); str(p, "a"); op(p, 'N'); op(p, 's'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "the dict key 'a' is set twice");
    start(p); op(p, '}'); op(p, ')'); op(p, 'N'); op(p, 's'); op(p, '.');
    REFUSED(p, COIN_EUNSUPPORTED, "a dict key is a tuple");
    start(p); op(p, 'h'); op(p, 3); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "BINGET: memo slot 3 was never set");
    start(p); op(p, 'N'); op(p, 'r'); raw(p, "\xff\xff\x00\x00", 4); op(p, '.');
    REFUSED(p, COIN_EUNSUPPORTED, "memo slot 65535 is beyond");
    start(p); for (int i = 0; i < 300; i++) op(p, '('); op(p, '.');
    REFUSED(p, COIN_EUNSUPPORTED, "more than 256 MARKs");
    start(p); for (int i = 0; i < 1100; i++) op(p, 'N'); op(p, '.');
    REFUSED(p, COIN_EUNSUPPORTED, "stack grows deeper than 1024");
    start(p);
    for (int l = 0; l < 5; l++) {
        op(p, ']');
        for (int i = 0; i < 3500; i++) { op(p, 'N'); op(p, 'a'); }
    }
    op(p, '.');
    REFUSED(p, COIN_EUNSUPPORTED, "more than 16384 objects");
    start(p); op(p, ']'); for (int i = 0; i < 4100; i++) { op(p, 'N'); op(p, 'a'); } op(p, '.');
    REFUSED(p, COIN_EUNSUPPORTED, "a list grows beyond 4096 items");
    /* set(list) copies: many sets of one long list hit the total */
    start(p); op(p, ']'); op(p, 'q'); op(p, 0);
    for (int i = 0; i < 4000; i++) { op(p, 'N'); op(p, 'a'); }
    for (int i = 0; i < 80; i++) {
        global(p, "builtins", "set"); op(p, 'h'); op(p, 0); op(p, 0x85); op(p, 'R'); op(p, 'a');
    }
    op(p, '.');
    REFUSED(p, COIN_EUNSUPPORTED, "containers hold more than 262144 items in all");
    start(p); op(p, 'N'); op(p, '.'); op(p, 'N');
    REFUSED(p, COIN_EFORMAT, "1 bytes follow the end of the pickle");
    start(p); op(p, 'N'); op(p, 'N'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "the pickle ends with 2 values on the stack");
    start(p); op(p, 'N');
    REFUSED(p, COIN_EFORMAT, "ends without a STOP opcode");
    p->n = 0; op(p, 0x80); op(p, 1); op(p, 'N'); op(p, '.');
    REFUSED(p, COIN_EUNSUPPORTED, "protocol 1");
    start(p); op(p, 0x80); op(p, 2); op(p, 'N'); op(p, '.');
    REFUSED(p, COIN_EUNSUPPORTED, "after the start");
    p->n = 0; op(p, 'N'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "expected a pickle beginning with PROTO");
    start(p); op(p, 0x8a); op(p, 9); raw(p, "123456789", 9); op(p, '.');
    REFUSED(p, COIN_EUNSUPPORTED, "an integer of 9 bytes");
    start(p); op(p, 'X'); raw(p, "\xff\x00\x00\x00", 4); raw(p, "abc", 3);
    REFUSED(p, COIN_EFORMAT, "BINUNICODE: data.pkl ends inside the opcode's argument");
    start(p); op(p, 0x95); raw(p, "\x00\x00\x00\x00\x00\x00\x01\x00", 8); op(p, 'N'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "FRAME: a frame of");
    start(p); op(p, 0xff); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "opcode 0xff: not a pickle opcode");
    start(p); op(p, 'G'); raw(p, "\0\0\0\0\0\0\0\0", 8); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "BINFLOAT: this opcode is not allowed");
    start(p); global(p, "collections", "OrderedDict"); op(p, ')'); op(p, 0x81); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "NEWOBJ: only torch.nn.ParameterDict");
    start(p); global(p, "collections", "OrderedDict"); op(p, '('); op(p, ']'); op(p, 't'); op(p, 'R'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "OrderedDict is called with 1 arguments");
    start(p); global(p, "torch._utils", "_rebuild_parameter"); op(p, '('); op(p, 'N'); op(p, 't'); op(p, 'R'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "_rebuild_parameter expects (tensor, bool, empty hooks)");
    start(p); op(p, 'N'); op(p, 'Q'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "expected a persistent id");
    start(p); op(p, 'N'); op(p, ')'); op(p, 'R'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "expected a whitelisted name and a tuple of arguments, found None");
    start(p); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "STOP: the pickle ends with 0 values");
    start(p); op(p, 'c'); raw(p, "os", 2);
    REFUSED(p, COIN_EFORMAT, "GLOBAL: expected a name");
    free(p);
}

TEST(pickle_pt_tensor_rules)
{
    pk *p = malloc(sizeof *p);
    /* a cyclic dict is harmless data: the reader neither recurses nor loops */
    start(p); op(p, '}'); op(p, 'q'); op(p, 0); str(p, "string_to_param"); op(p, 'h'); op(p, 0);
    op(p, 's'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "string_to_param's value is a dict, expected a tensor");
    const int64_t neg[2] = {-2, 4}, huge[2] = {1LL << 40, 1LL << 40}, zero[2] = {0, 0};
    const int64_t wide[2] = {100000, 100000}, three[3] = {1, 2, 4}, three_s[3] = {8, 4, 1};
    start(p); op(p, '}'); str(p, "<t>"); tensor(p, 8, 0, 2, neg, STRIDE_2x4); op(p, 's'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "the size holds a negative int");
    start(p); op(p, '}'); str(p, "<t>"); tensor(p, 8, 0, 2, huge, zero); op(p, 's'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "reaches beyond its storage");      /* 2^80 elements overflow */
    start(p); op(p, '}'); str(p, "<t>"); tensor(p, 8, 0, 2, wide, zero); op(p, 's'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "expected at least one vector and at most");
    start(p); op(p, '}'); str(p, "<t>"); tensor(p, 8, 0, 2, zero, STRIDE_2x4); op(p, 's'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "is [0, 0]");
    start(p); op(p, '}'); str(p, "<t>"); tensor(p, 8, 0, 3, three, three_s); op(p, 's'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "has 3 dimensions");
    start(p); op(p, '}'); str(p, "<t>"); tensor(p, 8, 1LL << 62, 2, SIZE_2x4, STRIDE_2x4); op(p, 's'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "reaches beyond its storage of 8 elements");
    start(p); op(p, '}'); str(p, "<t>"); tensor(p, 9, 0, 2, SIZE_2x4, STRIDE_2x4); op(p, 's'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "should hold 9 elements of 4 bytes, but its zip entry is 32 bytes");
    start(p); op(p, '}'); str(p, ""); tensor(p, 8, 0, 2, SIZE_2x4, STRIDE_2x4); op(p, 's'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "the trigger {''} is empty");
    start(p); op(p, '}'); str(p, "a\xff"); tensor(p, 8, 0, 2, SIZE_2x4, STRIDE_2x4); op(p, 's'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "{'a\\xff'} is empty, not valid UTF-8");
    start(p); op(p, '}'); integer(p, 7); tensor(p, 8, 0, 2, SIZE_2x4, STRIDE_2x4); op(p, 's'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "found a dict of 1 entries {7}");
    start(p); op(p, ']'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "not an embedding: the file holds a list");
    /* the storage key names a zip entry: nothing path-like */
    start(p); op(p, '('); str(p, "storage"); global(p, "torch", "FloatStorage"); str(p, "../0");
    str(p, "cpu"); integer(p, 8); op(p, 't'); op(p, 'Q'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "the storage key '../0' is not a short run");
    /* _rebuild_tensor_v2 with its arguments out of place */
    start(p); global(p, "torch._utils", "_rebuild_tensor_v2"); op(p, '('); op(p, 'N'); op(p, 'N');
    op(p, 'N'); op(p, 'N'); op(p, 'N'); op(p, 'N'); op(p, 't'); op(p, 'R'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "expects a storage, an offset >= 0, two tuples, a bool and empty "
            "hooks; found None");
    start(p); global(p, "torch._utils", "_rebuild_tensor_v2"); op(p, ')'); op(p, 'R'); op(p, '.');
    REFUSED(p, COIN_EFORMAT, "found 0 arguments");
    free(p);
}
