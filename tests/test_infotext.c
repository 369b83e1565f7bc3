/*
 * test_infotext.c - A1111 generation parameters and SHA-256.
 *
 * The infotext cases come from tests/golden/image/infotext.json, computed by
 * A1111's own parse_generation_parameters / quote / create_infotext code
 * (transcribed in tools/reference/make_image_goldens.py): every "parse" text
 * must give the same prompt, negative prompt and key/value pairs, every
 * "format" case the same text byte for byte.  SHA-256 is checked against the
 * FIPS 180-4 examples, in both the portable and the SHA-instruction code.
 */
#include "test.h"

#include "core/infotext.h"

#include <cJSON.h>
#include <stdint.h>
#include <stdlib.h>

static cJSON *load_cases(void)
{
    FILE *f = fopen("tests/golden/image/infotext.json", "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    cJSON *j = NULL;
    if (b && fread(b, 1, (size_t)n, f) == (size_t)n) {
        b[n] = 0;
        j = cJSON_Parse(b);
    }
    free(b);
    fclose(f);
    return j;
}

/* What the parse left for key k, as A1111's dict would hold it ("Size-1"
 * for the width, "Seed resize from-2" for the second half of a WxH extra),
 * in buf; NULL when nothing. */
static const char *lookup(const infotext *it, const char *k, char *buf, size_t n)
{
    size_t kl = strlen(k);
    if (kl > 2 && k[kl - 2] == '-' && (k[kl - 1] == '1' || k[kl - 1] == '2')) {
        char base[128];
        snprintf(base, sizeof base, "%.*s", (int)(kl - 2), k);
        int second = k[kl - 1] == '2';
        if (!strcmp(base, "Size") && (it->have & INFOTEXT_SIZE)) {
            snprintf(buf, n, "%d", second ? it->height : it->width);
            return buf;
        }
        const char *v = infotext_get_extra(it, base);
        const char *x = v ? strchr(v, 'x') : NULL;
        if (!x)
            return NULL;
        snprintf(buf, n, "%.*s", second ? (int)strlen(x + 1) : (int)(x - v), second ? x + 1 : v);
        return buf;
    }
    if (!strcmp(k, "Steps") && (it->have & INFOTEXT_STEPS)) {
        snprintf(buf, n, "%d", it->steps);
        return buf;
    }
    if (!strcmp(k, "Seed") && (it->have & INFOTEXT_SEED)) {
        snprintf(buf, n, "%lld", (long long)it->seed);
        return buf;
    }
    if (!strcmp(k, "CFG scale") && (it->have & INFOTEXT_CFG)) {
        snprintf(buf, n, "%.17g", it->cfg_scale);
        return buf;
    }
    const struct { const char *k; char *v; } strs[] = {
        {"Sampler", it->sampler}, {"Schedule type", it->schedule_type},
        {"Model hash", it->model_hash}, {"Model", it->model_name}, {"RNG", it->rng},
        {"Version", it->version},
    };
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++)
        if (!strcmp(k, strs[i].k) && strs[i].v)
            return strs[i].v;
    if (!strcmp(k, "TI hashes") && it->n_ti) {
        buf[0] = 0;
        for (size_t i = 0; i < it->n_ti; i++)
            snprintf(buf + strlen(buf), n - strlen(buf), "%s%s: %s", i ? ", " : "",
                     it->ti[i].name, it->ti[i].hash);
        return buf;
    }
    return infotext_get_extra(it, k);
}

/* How many A1111 dict entries the parse holds (WxH values count twice). */
static int entries(const infotext *it)
{
    int n = !!(it->have & INFOTEXT_STEPS) + !!(it->have & INFOTEXT_CFG) +
            !!(it->have & INFOTEXT_SEED) + 2 * !!(it->have & INFOTEXT_SIZE) + !!it->n_ti;
    n += !!it->sampler + !!it->schedule_type + !!it->model_hash + !!it->model_name +
         !!it->rng + !!it->version;
    for (size_t i = 0; i < it->n_extra; i++) {
        const char *v = it->extra[i].value, *x = strchr(v, 'x');
        int wxh = x && x != v && x[1] && strspn(v, "0123456789") == (size_t)(x - v) &&
                  strspn(x + 1, "0123456789") == strlen(x + 1);
        n += wxh ? 2 : 1;
    }
    return n;
}

TEST(infotext_parse_matches_a1111)
{
    cJSON *j = load_cases();
    REQUIRE(j);
    cJSON *cases = cJSON_GetObjectItem(j, "parse"), *c;
    int count = 0;
    cJSON_ArrayForEach(c, cases) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        infotext it;
        coin_error e;
        int rc = infotext_parse(text, &it, &e);
        CHECK_MSG(rc == 0, "parse failed: %s", e.msg);
        if (rc)
            continue;
        const char *wp = cJSON_GetObjectItem(c, "prompt")->valuestring;
        const char *wn = cJSON_GetObjectItem(c, "negative")->valuestring;
        CHECK_MSG(!strcmp(it.prompt, wp), "prompt \"%s\", A1111 \"%s\" (text \"%s\")",
                  it.prompt, wp, text);
        CHECK_MSG(!strcmp(it.negative_prompt, wn), "negative \"%s\", A1111 \"%s\"",
                  it.negative_prompt, wn);
        cJSON *params = cJSON_GetObjectItem(c, "params"), *p;
        cJSON_ArrayForEach(p, params) {
            const char *k = cJSON_GetArrayItem(p, 0)->valuestring;
            const char *v = cJSON_GetArrayItem(p, 1)->valuestring;
            char buf[512];
            const char *got = lookup(&it, k, buf, sizeof buf);
            if (got && !strcmp(k, "CFG scale") && (it.have & INFOTEXT_CFG))
                CHECK_MSG(strtod(v, NULL) == it.cfg_scale, "CFG scale %s vs %g", v,
                          it.cfg_scale);
            else
                CHECK_MSG(got && !strcmp(got, v), "\"%s\": got \"%s\", A1111 \"%s\" (text \"%s\")",
                          k, got ? got : "(none)", v, text);
        }
        CHECK_MSG(entries(&it) == cJSON_GetArraySize(params), "%d entries, A1111 %d (text \"%s\")",
                  entries(&it), cJSON_GetArraySize(params), text);
        infotext_free(&it);
        count++;
    }
    CHECK(count >= 20);
    cJSON_Delete(j);
}

/* Builds the struct a caller would from A1111-ordered parameters. */
static int build(cJSON *c, infotext *it, coin_error *e)
{
    memset(it, 0, sizeof *it);
    it->prompt = strdup(cJSON_GetObjectItem(c, "prompt")->valuestring);
    it->negative_prompt = strdup(cJSON_GetObjectItem(c, "negative")->valuestring);
    cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(c, "params")) {
        const char *k = cJSON_GetArrayItem(p, 0)->valuestring;
        const char *v = cJSON_GetArrayItem(p, 1)->valuestring;
        if (!strcmp(k, "Steps")) {
            it->steps = atoi(v);
            it->have |= INFOTEXT_STEPS;
        } else if (!strcmp(k, "CFG scale")) {
            it->cfg_scale = strtod(v, NULL);
            it->have |= INFOTEXT_CFG;
        } else if (!strcmp(k, "Seed")) {
            it->seed = strtoll(v, NULL, 10);
            it->have |= INFOTEXT_SEED;
        } else if (!strcmp(k, "Size")) {
            it->width = atoi(v);
            it->height = atoi(strchr(v, 'x') + 1);
            it->have |= INFOTEXT_SIZE;
        } else if (!strcmp(k, "Sampler")) {
            it->sampler = strdup(v);
        } else if (!strcmp(k, "Schedule type")) {
            it->schedule_type = strdup(v);
        } else if (!strcmp(k, "Model hash")) {
            it->model_hash = strdup(v);
        } else if (!strcmp(k, "Model")) {
            it->model_name = strdup(v);
        } else if (!strcmp(k, "RNG")) {
            it->rng = strdup(v);
        } else if (!strcmp(k, "Version")) {
            it->version = strdup(v);
        } else if (!strcmp(k, "TI hashes")) {
            it->ti_at = it->n_extra;
            char *s = strdup(v), *save = NULL;
            for (char *t = strtok_r(s, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                char *colon = strchr(t, ':');
                *colon = 0;
                int rc = infotext_add_ti(it, t + strspn(t, " "), colon + 2, e);
                if (rc) {
                    free(s);
                    return rc;
                }
            }
            free(s);
        } else {
            int rc = infotext_set_extra(it, k, v, e);
            if (rc)
                return rc;
        }
    }
    return 0;
}

TEST(infotext_format_matches_a1111)
{
    cJSON *j = load_cases();
    REQUIRE(j);
    cJSON *c;
    int count = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "format")) {
        infotext it;
        coin_error e;
        REQUIRE_OK(build(c, &it, &e), &e);
        char *text = NULL;
        REQUIRE_OK(infotext_format(&it, &text, &e), &e);
        const char *want = cJSON_GetObjectItem(c, "text")->valuestring;
        CHECK_MSG(!strcmp(text, want), "\n got  \"%s\"\n want \"%s\"", text, want);
        /* and back: the fields survive a parse of what was written */
        infotext back;
        REQUIRE_OK(infotext_parse(text, &back, &e), &e);
        char *again = NULL;
        REQUIRE_OK(infotext_format(&back, &again, &e), &e);
        CHECK_MSG(!strcmp(again, want), "round trip:\n got  \"%s\"\n want \"%s\"", again, want);
        CHECK_EQ_INT(back.have, it.have);
        CHECK_EQ_INT(back.n_ti, it.n_ti);
        CHECK_EQ_INT(back.n_extra, it.n_extra);
        free(text);
        free(again);
        infotext_free(&back);
        infotext_free(&it);
        count++;
    }
    CHECK(count >= 5);
    cJSON_Delete(j);
}

/* A1111-written texts come back unchanged through parse + format. */
TEST(infotext_round_trip_of_a1111_texts)
{
    const char *texts[] = {
        "a photo of <cat-toy>: detailed, 4k\nsecond line: yes\nNegative prompt: blurry, lowres\n"
        "more negative: (bad:1.2)\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, "
        "CFG scale: 7.5, Seed: 123, Size: 512x768, Model hash: 6ce0161689, "
        "Model: v1-5-pruned-emaonly, TI hashes: \"cat-toy: 0123456789ab, other: ba9876543210\", "
        "Version: v1.10.1",
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1919484475, Size: 768x768, "
        "Model hash: ad2a33c361, Model: v2-1_768-ema-pruned, ENSD: 3",
        "cat\nSteps: 28, Sampler: DPM++ 2M SDE, Schedule type: Exponential, CFG scale: 4.5, "
        "Seed: 7, Size: 832x1216, Model hash: 1234567890, Model: xl, Denoising strength: 0.4, "
        "Clip skip: 2, RNG: CPU, Hires upscale: 1.5, Hires upscaler: Latent (nearest-exact), "
        "Lora hashes: \"a: 0123456789ab\", TI hashes: \"emb: 0123456789ab\", "
        "Emphasis: No norm, Version: v1.10.1",
    };
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        infotext it;
        coin_error e;
        char *out = NULL;
        REQUIRE_OK(infotext_parse(texts[i], &it, &e), &e);
        REQUIRE_OK(infotext_format(&it, &out, &e), &e);
        CHECK_MSG(!strcmp(out, texts[i]), "\n got  \"%s\"\n want \"%s\"", out, texts[i]);
        free(out);
        infotext_free(&it);
    }
}

TEST(infotext_fields_from_parse)
{
    infotext it;
    coin_error e;
    REQUIRE_OK(infotext_parse("a cat\nNegative prompt: dog\nSteps: 20, Sampler: DPM++ 2M Karras, "
                              "CFG scale: 7, Seed: 4294967295, Size: 512x768, Model hash: "
                              "0123456789, TI hashes: \"tok: 0123456789ab\", RNG: CPU, "
                              "Version: coin 0.1", &it, &e), &e);
    CHECK(!strcmp(it.prompt, "a cat") && !strcmp(it.negative_prompt, "dog"));
    CHECK_EQ_INT(it.steps, 20);
    CHECK(it.cfg_scale == 7.0);
    CHECK_EQ_INT(it.seed, 4294967295LL);
    CHECK(it.width == 512 && it.height == 768);
    /* the old combined name is split as A1111 1.9+ reads it */
    CHECK(!strcmp(it.sampler, "DPM++ 2M") && !strcmp(it.schedule_type, "Karras"));
    REQUIRE(it.n_ti == 1);
    CHECK(!strcmp(it.ti[0].name, "tok") && !strcmp(it.ti[0].hash, "0123456789ab"));
    CHECK(!strcmp(infotext_rng_to_coin(it.rng), "cpu"));
    CHECK(!strcmp(it.version, "coin 0.1"));
    CHECK_EQ_INT(it.n_extra, 0);
    infotext_free(&it);
    CHECK(!strcmp(infotext_rng_to_coin(NULL), "cuda"));
    CHECK(!strcmp(infotext_rng_from_coin("cuda"), "NV"));
    CHECK(!strcmp(infotext_rng_from_coin("cpu"), "CPU"));
    CHECK(infotext_rng_from_coin("other") == NULL);
}

TEST(infotext_format_numbers_and_omissions)
{
    infotext it = {0};
    coin_error e;
    char *out = NULL;
    it.prompt = "p";
    it.negative_prompt = "";        /* empty: no Negative prompt line */
    it.sampler = "Euler";
    it.rng = "GPU";                 /* A1111's default: not written */
    it.have = INFOTEXT_CFG | INFOTEXT_SEED;
    const struct { double cfg; const char *want; } cases[] = {
        {7.0, "p\nSampler: Euler, CFG scale: 7, Seed: -1"},
        {7.5, "p\nSampler: Euler, CFG scale: 7.5, Seed: -1"},
        {0.1, "p\nSampler: Euler, CFG scale: 0.1, Seed: -1"},
        {1.0 / 3, "p\nSampler: Euler, CFG scale: 0.3333333333333333, Seed: -1"},
        {0.0001, "p\nSampler: Euler, CFG scale: 0.0001, Seed: -1"},
        {0.00001, "p\nSampler: Euler, CFG scale: 1e-05, Seed: -1"},
        {-2.5, "p\nSampler: Euler, CFG scale: -2.5, Seed: -1"},
    };
    it.seed = -1;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        it.cfg_scale = cases[i].cfg;
        REQUIRE_OK(infotext_format(&it, &out, &e), &e);
        CHECK_MSG(!strcmp(out, cases[i].want), "got \"%s\" want \"%s\"", out, cases[i].want);
        free(out);
    }
    /* A1111's `k if k == v`: a value equal to its key is the key alone */
    infotext q = {0};
    REQUIRE_OK(infotext_set_extra(&q, "Same", "Same", &e), &e);
    REQUIRE_OK(infotext_set_extra(&q, "Other", "x", &e), &e);
    REQUIRE_OK(infotext_format(&q, &out, &e), &e);
    CHECK(!strcmp(out, "Same, Other: x"));
    free(out);
    infotext_free(&q);
    /* nothing but a prompt: no trailing newline (the text is stripped) */
    infotext bare = {0};
    bare.prompt = "  only  ";
    REQUIRE_OK(infotext_format(&bare, &out, &e), &e);
    CHECK(!strcmp(out, "only"));
    free(out);
}

TEST(infotext_parse_refuses_invalid_utf8)
{
    infotext it;
    coin_error e;
    CHECK_EQ_INT(infotext_parse("bad \xff byte\nSteps: 1, Seed: 1, Size: 1x1", &it, &e),
                 COIN_EINVAL);
    CHECK_STR_CONTAINS(e.msg, "UTF-8");
}

/* ---- SHA-256 ---- */

static void hex_of(const void *p, size_t n, char hex[65])
{
    uint8_t d[32];
    sha256_buffer(p, n, d);
    sha256_hex(d, hex);
}

TEST(infotext_sha256_fips_vectors)
{
    static const struct { const char *msg; const char *hex; } v[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopq"
         "klmnopqrlmnopqrsmnopqrstnopqrstu",
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
    };
    char hex[65];
    for (int hw = 0; hw <= 1; hw++) {
        int prev = sha256_allow_hw(hw);
        for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
            hex_of(v[i].msg, strlen(v[i].msg), hex);
            CHECK_MSG(!strcmp(hex, v[i].hex), "hw=%d \"%s\": %s", hw, v[i].msg, hex);
        }
        /* one million 'a', fed in uneven pieces */
        sha256_ctx c;
        sha256_init(&c);
        char a[1000];
        memset(a, 'a', sizeof a);
        size_t left = 1000000;
        for (size_t k = 1; left; k = k % 997 + 1) {
            size_t take = k < left ? k : left;
            sha256_update(&c, a, take);
            left -= take;
        }
        uint8_t d[32];
        sha256_final(&c, d);
        sha256_hex(d, hex);
        CHECK_MSG(!strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
                  "hw=%d million a: %s", hw, hex);
        sha256_allow_hw(prev);
    }
}

/* The two block functions agree on every length around the block size. */
TEST(infotext_sha256_hw_matches_portable)
{
    uint8_t buf[700];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)((x = x * 1103515245 + 12345) >> 16);
    char a[65], b[65];
    int bad = 0;
    for (size_t n = 0; n <= sizeof buf; n++) {
        int prev = sha256_allow_hw(0);
        hex_of(buf, n, a);
        sha256_allow_hw(1);
        hex_of(buf, n, b);
        sha256_allow_hw(prev);
        bad += strcmp(a, b) != 0;
    }
    CHECK_EQ_INT(bad, 0);
}

typedef struct prog {
    uint64_t last, total;
    int calls, stop_after;
} prog;

static int on_progress(uint64_t done, uint64_t total, void *user)
{
    prog *p = user;
    if (done < p->last)
        p->last = UINT64_MAX;   /* went backwards: fail below */
    else
        p->last = done;
    p->total = total;
    p->calls++;
    return p->stop_after && p->calls >= p->stop_after;
}

TEST(infotext_file_hashes)
{
    const char *dir = test_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/model.bin", dir);
    size_t n = (9u << 20) + 12345;      /* three 4 MiB chunks, the last partial */
    uint8_t *data = malloc(n);
    REQUIRE(data);
    for (size_t i = 0; i < n; i++)
        data[i] = (uint8_t)(i * 31 + (i >> 11));
    FILE *f = fopen(path, "wb");
    REQUIRE(f && fwrite(data, 1, n, f) == n && fclose(f) == 0);
    uint8_t want[32], got[32];
    sha256_buffer(data, n, want);
    free(data);
    coin_error e;
    prog p = {0};
    REQUIRE_OK(sha256_file(path, got, on_progress, &p, &e), &e);
    CHECK(!memcmp(got, want, 32));
    CHECK_EQ_INT(p.calls, 3);
    CHECK(p.last == n && p.total == n);
    /* short hashes are prefixes of the full one */
    char hex[65], model[11], ti[13];
    sha256_hex(want, hex);
    REQUIRE_OK(infotext_model_hash(path, model, NULL, NULL, &e), &e);
    REQUIRE_OK(infotext_ti_hash(path, ti, NULL, NULL, &e), &e);
    CHECK(strlen(model) == 10 && !strncmp(model, hex, 10));
    CHECK(strlen(ti) == 12 && !strncmp(ti, hex, 12));
    /* "abc" gives the FIPS digest's prefixes */
    snprintf(path, sizeof path, "%s/abc", dir);
    f = fopen(path, "wb");
    REQUIRE(f && fwrite("abc", 1, 3, f) == 3 && fclose(f) == 0);
    REQUIRE_OK(infotext_model_hash(path, model, NULL, NULL, &e), &e);
    CHECK(!strcmp(model, "ba7816bf8f"));
    REQUIRE_OK(infotext_ti_hash(path, ti, NULL, NULL, &e), &e);
    CHECK(!strcmp(ti, "ba7816bf8f01"));
    /* cancelling through the callback, and a missing file */
    snprintf(path, sizeof path, "%s/model.bin", dir);
    prog stop = {.stop_after = 1};
    CHECK_EQ_INT(sha256_file(path, got, on_progress, &stop, &e), COIN_EINVAL);
    CHECK_STR_CONTAINS(e.msg, "cancelled");
    snprintf(path, sizeof path, "%s/none.safetensors", dir);
    CHECK_EQ_INT(infotext_model_hash(path, model, NULL, NULL, &e), COIN_ENOTFOUND);
    CHECK_STR_CONTAINS(e.msg, path);
}
