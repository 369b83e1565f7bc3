/*
 * test_image.c - image files, PNG text, the pixel conversions and Pillow's
 * bicubic resize.
 *
 * Expected pixels come from Pillow, numpy and diffusers through
 * tests/golden/image/ (made by tools/reference/make_image_goldens.py; the
 * manifest there lists every case): the resize and the textual-inversion
 * pixel path must match byte for byte, PNG decoding of every colour type and
 * depth exactly, JPEG within the difference measured between stb_image and
 * PIL's libjpeg-turbo.  The writer is checked by reading back what it wrote,
 * the chunk kinds it chose, and what is left on disk after a failed write.
 */
#include "test.h"

#include "core/image.h"

#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zlib.h>

#define GOLDEN "tests/golden/image/"

static unsigned char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)len + 1);
    if (b && fread(b, 1, (size_t)len, f) != (size_t)len) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (n)
        *n = (size_t)len;
    return b;
}

static int write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    int ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

/* The manifest lines whose first word is kind, one at a time: returns the
 * next such line (words split into w[], up to 8) or 0 at the end. */
typedef struct manifest {
    FILE *f;
    char line[512];
    char *w[8];
    int nw;
} manifest;

static int manifest_next(manifest *m, const char *kind)
{
    if (!m->f && !(m->f = fopen(GOLDEN "manifest.txt", "r")))
        return 0;
    while (fgets(m->line, sizeof m->line, m->f)) {
        m->nw = 0;
        for (char *t = strtok(m->line, " \n"); t && m->nw < 8; t = strtok(NULL, " \n"))
            m->w[m->nw++] = t;
        if (m->nw && !strcmp(m->w[0], kind))
            return 1;
    }
    fclose(m->f);
    m->f = NULL;
    return 0;
}

static void golden_path(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, GOLDEN "%s", name);
}

/* Largest absolute byte difference and how many bytes differ. */
static int max_diff(const uint8_t *a, const uint8_t *b, size_t n, size_t *ndiff)
{
    int m = 0;
    *ndiff = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        m = d > m ? d : m;
        *ndiff += d != 0;
    }
    return m;
}

TEST(image_resize_matches_pillow_bicubic)
{
    manifest m = {0};
    int cases = 0;
    coin_error e;
    char p[300];
    while (manifest_next(&m, "resize")) {
        REQUIRE(m.nw == 5);
        coin_image src = {0}, want = {0}, got = {0};
        golden_path(p, sizeof p, m.w[1]);
        REQUIRE_OK(image_load(p, &src, &e), &e);
        golden_path(p, sizeof p, m.w[4]);
        REQUIRE_OK(image_load(p, &want, &e), &e);
        int w = atoi(m.w[2]), h = atoi(m.w[3]);
        REQUIRE_OK(image_resize_bicubic(&src, w, h, &got, &e), &e);
        CHECK_EQ_INT(got.width, w);
        CHECK_EQ_INT(got.height, h);
        size_t nd;
        int md = max_diff(got.pixels, want.pixels, (size_t)w * h * 3, &nd);
        CHECK_MSG(md == 0, "%s -> %dx%d: %zu bytes differ from Pillow, by up to %d",
                  m.w[1], w, h, nd, md);
        image_free(&src);
        image_free(&want);
        image_free(&got);
        cases++;
    }
    CHECK(cases >= 15);
}

/* The whole TextualInversionDataset pixel path, down to the float32 tensor. */
TEST(image_prepare_ti_matches_diffusers_dataset)
{
    manifest m = {0};
    int cases = 0;
    coin_error e;
    char p[300];
    while (manifest_next(&m, "ti")) {
        REQUIRE(m.nw == 7);
        coin_image src = {0}, want = {0}, got = {0};
        golden_path(p, sizeof p, m.w[1]);
        REQUIRE_OK(image_load(p, &src, &e), &e);
        golden_path(p, sizeof p, m.w[5]);
        REQUIRE_OK(image_load(p, &want, &e), &e);
        int size = atoi(m.w[2]);
        REQUIRE_OK(image_prepare_ti(&src, size, atoi(m.w[3]), atoi(m.w[4]), &got, &e), &e);
        REQUIRE(got.width == size && got.height == size);
        size_t nd, n = (size_t)size * size * 3;
        int md = max_diff(got.pixels, want.pixels, n, &nd);
        CHECK_MSG(md == 0, "%s size %d crop %s flip %s: %zu bytes differ, by up to %d",
                  m.w[1], size, m.w[3], m.w[4], nd, md);
        float *chw = malloc(n * sizeof *chw);
        golden_path(p, sizeof p, m.w[6]);
        size_t flen = 0;
        unsigned char *wantf = read_file(p, &flen);
        REQUIRE(chw && wantf && flen == n * sizeof(float));
        REQUIRE_OK(image_to_chw_float(&got, chw, &e), &e);
        CHECK_MSG(memcmp(chw, wantf, flen) == 0, "%s: the float32 tensor differs from "
                  "diffusers'", m.w[1]);
        free(chw);
        free(wantf);
        image_free(&src);
        image_free(&want);
        image_free(&got);
        cases++;
    }
    CHECK(cases >= 5);
}

/* Every PNG colour type and depth (and JPEG, BMP, GIF) against PIL's
 * .convert("RGB"). */
TEST(image_load_matches_pil_convert_rgb)
{
    manifest m = {0};
    int cases = 0, jpegs = 0;
    coin_error e;
    char p[300];
    while (manifest_next(&m, "load")) {
        REQUIRE(m.nw == 6);
        coin_image got = {0};
        golden_path(p, sizeof p, m.w[1]);
        int rc = image_load(p, &got, &e);
        CHECK_MSG(rc == 0, "%s: %s", m.w[1], e.msg);
        if (rc)
            continue;
        int w = atoi(m.w[2]), h = atoi(m.w[3]), tol = atoi(m.w[5]);
        CHECK_EQ_INT(got.width, w);
        CHECK_EQ_INT(got.height, h);
        CHECK_EQ_INT(got.channels, 3);
        golden_path(p, sizeof p, m.w[4]);
        size_t n = 0, nd;
        unsigned char *want = read_file(p, &n);
        REQUIRE(want && n == (size_t)w * h * 3);
        if (got.width == w && got.height == h) {
            int md = max_diff(got.pixels, want, n, &nd);
            CHECK_MSG(md <= tol, "%s: %zu of %zu bytes differ from PIL, by up to %d "
                      "(allowed %d)", m.w[1], nd, n, md, tol);
        }
        jpegs += strstr(m.w[1], ".jpg") != NULL;
        free(want);
        image_free(&got);
        cases++;
    }
    CHECK(cases >= 25);
    CHECK(jpegs >= 6);
}

/* The PIL rules, spelled out on a few pixels the golden covers too, so a
 * failure says which rule broke. */
TEST(image_load_png_rules)
{
    coin_error e;
    coin_image img = {0};
    /* 16-bit grey, first row: 0, 1, 254, 255, 256, 65535 -> clipped at 255. */
    REQUIRE_OK(image_load(GOLDEN "png_grey16.png", &img, &e), &e);
    const uint8_t want16[6] = {0, 1, 254, 255, 255, 255};
    for (int x = 0; x < 6; x++)
        for (int c = 0; c < 3; c++)
            CHECK_EQ_INT(img.pixels[x * 3 + c], want16[x]);
    image_free(&img);
    /* Palette indices past the 5-entry palette are black. */
    REQUIRE_OK(image_load(GOLDEN "png_pal8.png", &img, &e), &e);
    size_t n = 0;
    unsigned char *raw = read_file(GOLDEN "png_pal8.png", &n);
    REQUIRE(raw);
    int black = 0;
    for (int i = 0; i < img.width * img.height; i++)
        black += !img.pixels[i * 3] && !img.pixels[i * 3 + 1] && !img.pixels[i * 3 + 2];
    CHECK(black > 0);
    free(raw);
    image_free(&img);
}

TEST(image_from_chw_float_rounds_like_diffusers)
{
    manifest m = {0};
    REQUIRE(manifest_next(&m, "u8"));
    REQUIRE(m.nw == 4);
    int n = atoi(m.w[3]);
    char p[300];
    size_t fl = 0, ul = 0;
    golden_path(p, sizeof p, m.w[1]);
    unsigned char *fin = read_file(p, &fl);
    golden_path(p, sizeof p, m.w[2]);
    unsigned char *want = read_file(p, &ul);
    while (manifest_next(&m, "u8"))
        ;
    REQUIRE(fin && want && fl == (size_t)n * 3 * 4 && ul == (size_t)n * 3);
    coin_image img = {0};
    coin_error e;
    REQUIRE_OK(image_from_chw_float((const float *)fin, n, 1, &img, &e), &e);
    int bad = 0;
    for (int i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) {
            uint8_t g = img.pixels[i * 3 + c], w = want[c * n + i];
            if (g != w && bad++ < 5) {
                float x;
                memcpy(&x, fin + (size_t)(c * n + i) * 4, 4);
                CHECK_MSG(0, "x = %.9g: got %d, diffusers %d", x, g, w);
            }
        }
    CHECK_EQ_INT(bad, 0);
    image_free(&img);
    free(fin);
    free(want);
    /* The rules in person: 0 -> 127.5 -> 128 (ties to even), ends, NaN. */
    CHECK_EQ_INT(image_float_to_u8(0.0f), 128);
    CHECK_EQ_INT(image_float_to_u8(-1.0f), 0);
    CHECK_EQ_INT(image_float_to_u8(1.0f), 255);
    CHECK_EQ_INT(image_float_to_u8(5.0f), 255);
    CHECK_EQ_INT(image_float_to_u8(-INFINITY), 0);
    CHECK_EQ_INT(image_float_to_u8(NAN), 0);
}

TEST(image_to_chw_float_layout)
{
    coin_image img = {0};
    coin_error e;
    REQUIRE_OK(image_alloc(&img, 2, 1, 4, &e), &e);
    const uint8_t px[8] = {0, 255, 128, 9, 127, 1, 254, 9};
    memcpy(img.pixels, px, 8);
    float chw[6];
    REQUIRE_OK(image_to_chw_float(&img, chw, &e), &e);
    /* planar: R of both pixels, then G, then B; alpha ignored */
    CHECK(chw[0] == -1.0f && chw[1] == (float)(127 / 127.5 - 1.0));
    CHECK(chw[2] == 1.0f && chw[3] == (float)(1 / 127.5 - 1.0));
    CHECK(chw[4] == (float)(128 / 127.5 - 1.0) && chw[5] == (float)(254 / 127.5 - 1.0));
    image_free(&img);
}

TEST(image_center_crop_uses_floor_offsets)
{
    coin_image img = {0}, out = {0};
    coin_error e;
    /* 7 wide, 4 high: crop 4, columns (7-4)//2 = 1 .. (7+4)//2 = 5. */
    REQUIRE_OK(image_alloc(&img, 7, 4, 3, &e), &e);
    for (int i = 0; i < 7 * 4; i++)
        img.pixels[i * 3] = (uint8_t)i;
    REQUIRE_OK(image_center_crop(&img, &out, &e), &e);
    CHECK(out.width == 4 && out.height == 4);
    CHECK_EQ_INT(out.pixels[0], 1);
    CHECK_EQ_INT(out.pixels[3 * 3], 4);
    CHECK_EQ_INT(out.pixels[(4 * 3 + 3) * 3], 3 * 7 + 4);
    image_free(&out);
    image_free(&img);
    /* 3 wide, 6 high: rows (6-3)//2 = 1 .. 4. */
    REQUIRE_OK(image_alloc(&img, 3, 6, 3, &e), &e);
    for (int i = 0; i < 3 * 6; i++)
        img.pixels[i * 3] = (uint8_t)i;
    REQUIRE_OK(image_center_crop(&img, &out, &e), &e);
    CHECK(out.width == 3 && out.height == 3);
    CHECK_EQ_INT(out.pixels[0], 3);
    CHECK_EQ_INT(out.pixels[(2 * 3 + 2) * 3], 3 * 3 + 2);
    image_free(&out);
    image_free(&img);
}

TEST(image_flip_horizontal_mirrors_rows)
{
    coin_image img = {0};
    coin_error e;
    REQUIRE_OK(image_alloc(&img, 3, 2, 3, &e), &e);
    for (int i = 0; i < 18; i++)
        img.pixels[i] = (uint8_t)i;
    image_flip_horizontal(&img);
    const uint8_t want[18] = {6, 7, 8, 3, 4, 5, 0, 1, 2, 15, 16, 17, 12, 13, 14, 9, 10, 11};
    CHECK(memcmp(img.pixels, want, 18) == 0);
    image_free(&img);
}

/* Finds the chunk of this type whose body starts with key\0. */
static int has_chunk(const unsigned char *b, size_t n, const char *type, const char *key)
{
    size_t kl = strlen(key);
    for (size_t i = 8; i + 12 <= n;) {
        size_t len = (size_t)b[i] << 24 | (size_t)b[i + 1] << 16 | b[i + 2] << 8 | b[i + 3];
        if (!memcmp(b + i + 4, type, 4) && len > kl && !memcmp(b + i + 8, key, kl) &&
            b[i + 8 + kl] == 0)
            return 1;
        i += 12 + len;
    }
    return 0;
}

TEST(image_png_round_trip_pixels_and_text)
{
    const char *dir = test_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/out.png", dir);
    coin_error e;
    for (int ch = 3; ch <= 4; ch++) {
        coin_image img = {0}, back = {0};
        REQUIRE_OK(image_alloc(&img, 67, 45, ch, &e), &e);
        for (size_t i = 0; i < (size_t)67 * 45 * ch; i++)
            img.pixels[i] = (uint8_t)(i * 7 + i / 67);
        char *big = malloc(10241);
        for (int i = 0; i < 10240; i++)
            big[i] = "abc, def: 12\n"[i % 13];
        big[10240] = 0;
        image_text text[] = {
            {"parameters", "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a"},
            {"latin", "caf\xc3\xa9 \xc2\xb5"},           /* é µ: Latin-1 -> tEXt */
            {"utf8", "\xe7\x8c\xab \xe2\x98\x83"},       /* 猫 ☃: not Latin-1 -> iTXt */
            {"big", big},
            {"Caf\xc3\xa9 key", "v"},                   /* Latin-1 key */
        };
        REQUIRE_OK(image_write_png(path, &img, text, 5, &e), &e);
        CHECK_EQ_INT(count_entries(dir), 1);    /* no temporary left */
        REQUIRE_OK(image_load(path, &back, &e), &e);
        REQUIRE(back.width == 67 && back.height == 45 && back.channels == 3);
        int same = 1;
        for (size_t i = 0; i < (size_t)67 * 45; i++)
            same &= !memcmp(back.pixels + i * 3, img.pixels + i * ch, 3);
        CHECK_MSG(same, "pixels differ after a round trip with %d channels", ch);
        image_text_list l = {0};
        REQUIRE_OK(image_read_png_text(path, &l, &e), &e);
        REQUIRE(l.n == 5);
        for (int i = 0; i < 5; i++) {
            CHECK_MSG(!strcmp(l.items[i].key, text[i].key), "key %d: %s", i, l.items[i].key);
            CHECK_MSG(!strcmp(l.items[i].value, text[i].value), "value of %s differs",
                      text[i].key);
        }
        CHECK(!strcmp(image_text_get(&l, "utf8"), "\xe7\x8c\xab \xe2\x98\x83"));
        CHECK(image_text_get(&l, "missing") == NULL);
        image_text_list_free(&l);
        size_t n = 0;
        unsigned char *raw = read_file(path, &n);
        REQUIRE(raw);
        CHECK(has_chunk(raw, n, "tEXt", "parameters"));
        CHECK(has_chunk(raw, n, "tEXt", "latin"));
        CHECK(has_chunk(raw, n, "iTXt", "utf8"));
        CHECK(has_chunk(raw, n, "tEXt", "Caf\xe9 key"));
        /* tEXt holds Latin-1 bytes: "caf\xe9 \xb5" */
        CHECK(memmem(raw, n, "latin\0caf\xe9 \xb5", 12) != NULL);
        free(raw);
        free(big);
        image_free(&img);
        image_free(&back);
    }
}

TEST(image_png_text_read_like_pil)
{
    image_text_list l = {0};
    coin_error e;
    REQUIRE_OK(image_read_png_text(GOLDEN "png_text.png", &l, &e), &e);
    /* tEXt, zTXt, iTXt before IDAT; compressed iTXt and tEXt after it. */
    const char *want[][2] = {
        {"parameters", "caf\xc3\xa9, Steps: 20"},
        {"Comment", "zipped text"},
        {"Title", "\xe7\x8c\xab \xe2\x98\x83"},
        {"Zipped", "\xc3\xbcn\xc3\xaf" "code zipped \xe2\x9c\x93"},
        {"parameters", "second wins"},
    };
    REQUIRE(l.n == 5);
    for (int i = 0; i < 5; i++) {
        CHECK_MSG(!strcmp(l.items[i].key, want[i][0]), "%d: key %s", i, l.items[i].key);
        CHECK_MSG(!strcmp(l.items[i].value, want[i][1]), "%d: value %s", i, l.items[i].value);
    }
    /* PIL's Image.info keeps the later chunk. */
    CHECK(!strcmp(image_text_get(&l, "parameters"), "second wins"));
    image_text_list_free(&l);
}

static void expect_load_error(const char *path, int code, const char *what)
{
    coin_image img = {0};
    coin_error e = {0};
    int rc = image_load(path, &img, &e);
    CHECK_MSG(rc == code, "%s: got %d (%s), want %d", path, rc, e.msg, code);
    CHECK_STR_CONTAINS(e.msg, path);
    if (what)
        CHECK_STR_CONTAINS(e.msg, what);
    CHECK(img.pixels == NULL);
    image_free(&img);
}

/* Truncated files of every format are errors naming the file; so are
 * garbage, empty and missing files. */
TEST(image_load_refuses_truncated_and_corrupt_files)
{
    const char *dir = test_tmpdir();
    const char *srcs[] = {"png_rgb8.png", "png_rgb8_adam7.png", "png_pal4.png",
                          "jpeg_420.jpg", "jpeg_progressive.jpg", "jpeg_grey.jpg",
                          "gif_p.gif", "bmp_rgb24.bmp"};
    char p[512], q[512];
    for (size_t s = 0; s < sizeof srcs / sizeof *srcs; s++) {
        golden_path(p, sizeof p, srcs[s]);
        size_t n = 0;
        unsigned char *b = read_file(p, &n);
        REQUIRE(b && n > 100);
        /* The cuts end inside the image data: PNG's last 12 bytes are IEND
         * and GIF's last byte the trailer, which PIL does not need either. */
        size_t keep = strstr(srcs[s], ".png") ? 13 : strstr(srcs[s], ".gif") ? 2 : 1;
        size_t cuts[] = {9, 40, n / 2, n - keep - 1, n - keep};
        for (size_t c = 0; c < sizeof cuts / sizeof *cuts; c++) {
            snprintf(q, sizeof q, "%s/cut%zu_%s", dir, cuts[c], srcs[s]);
            REQUIRE(write_file(q, b, cuts[c]) == 0);
            coin_image img = {0};
            coin_error e = {0};
            int rc = image_load(q, &img, &e);
            CHECK_MSG(rc == COIN_EFORMAT, "%s cut to %zu of %zu bytes: rc %d (%s)", srcs[s],
                      cuts[c], n, rc, e.msg);
            CHECK_STR_CONTAINS(e.msg, q);
            image_free(&img);
        }
        /* A flipped bit in the image data breaks PNG's CRC. */
        if (strstr(srcs[s], ".png")) {
            b[n - 20] ^= 0x10;
            snprintf(q, sizeof q, "%s/flip_%s", dir, srcs[s]);
            REQUIRE(write_file(q, b, n) == 0);
            expect_load_error(q, COIN_EFORMAT, "corrupt");
        }
        free(b);
    }
    snprintf(q, sizeof q, "%s/garbage.png", dir);
    REQUIRE(write_file(q, "this is not an image at all", 27) == 0);
    expect_load_error(q, COIN_EUNSUPPORTED, "not a PNG, JPEG");
    snprintf(q, sizeof q, "%s/empty.jpg", dir);
    REQUIRE(write_file(q, "", 0) == 0);
    expect_load_error(q, COIN_EFORMAT, "empty");
    snprintf(q, sizeof q, "%s/pic.webp", dir);
    REQUIRE(write_file(q, "RIFF\x10\0\0\0WEBPVP8 ", 16) == 0);
    expect_load_error(q, COIN_EUNSUPPORTED, "WebP");
    snprintf(q, sizeof q, "%s/missing.png", dir);
    expect_load_error(q, COIN_ENOTFOUND, NULL);
}

/* Two JPEGs that overrun memory inside stb_image 2.27 (found by fuzzing):
 * a Huffman table claiming more than 256 codes, and a scan decoding with a
 * table slot no DHT defined.  Both are refused before stb sees them. */
TEST(image_load_refuses_hostile_jpeg_tables)
{
    const char *dir = test_tmpdir();
    char q[512];
    size_t n = 0;
    unsigned char *b = read_file(GOLDEN "jpeg_420.jpg", &n);
    REQUIRE(b);
    unsigned char *dht = memmem(b, n, "\xff\xc4", 2);
    REQUIRE(dht && dht + 21 < b + n);
    unsigned char save[16];
    memcpy(save, dht + 5, 16);
    memset(dht + 5, 0x40, 16);          /* 16 x 64 = 1024 codes */
    snprintf(q, sizeof q, "%s/bigtable.jpg", dir);
    REQUIRE(write_file(q, b, n) == 0);
    expect_load_error(q, COIN_EFORMAT, "Huffman");
    memcpy(dht + 5, save, 16);
    unsigned char *sos = memmem(b, n, "\xff\xda", 2);
    REQUIRE(sos && sos + 7 < b + n);
    sos[6] = 0x33;                      /* component 1: DC table 3, AC table 3 */
    snprintf(q, sizeof q, "%s/notable.jpg", dir);
    REQUIRE(write_file(q, b, n) == 0);
    expect_load_error(q, COIN_EFORMAT, "Huffman");
    free(b);
}

/* Headers claiming more than 16384 pixels a side are refused before any
 * pixel memory is allocated. */
TEST(image_load_refuses_huge_dimensions)
{
    const char *dir = test_tmpdir();
    char q[512];
    size_t n = 0;
    /* PNG: IHDR width 20000 (the CRC is fixed up by hand below). */
    unsigned char *b = read_file(GOLDEN "png_rgb8.png", &n);
    REQUIRE(b);
    b[16] = 0, b[17] = 0, b[18] = 0x4E, b[19] = 0x20;
    uLong crc = crc32(crc32(0, NULL, 0), b + 12, 17);
    b[29] = (unsigned char)(crc >> 24), b[30] = (unsigned char)(crc >> 16);
    b[31] = (unsigned char)(crc >> 8), b[32] = (unsigned char)crc;
    snprintf(q, sizeof q, "%s/wide.png", dir);
    REQUIRE(write_file(q, b, n) == 0);
    expect_load_error(q, COIN_EUNSUPPORTED, "16384");
    free(b);
    /* JPEG: the SOF0 height. */
    b = read_file(GOLDEN "jpeg_420.jpg", &n);
    REQUIRE(b);
    unsigned char *sof = memmem(b, n, "\xff\xc0", 2);
    REQUIRE(sof);
    sof[5] = 0x4E, sof[6] = 0x20;
    snprintf(q, sizeof q, "%s/tall.jpg", dir);
    REQUIRE(write_file(q, b, n) == 0);
    expect_load_error(q, COIN_EUNSUPPORTED, "16384");
    free(b);
    /* GIF: the logical screen width. */
    b = read_file(GOLDEN "gif_p.gif", &n);
    REQUIRE(b);
    b[6] = 0x20, b[7] = 0x4E;
    snprintf(q, sizeof q, "%s/wide.gif", dir);
    REQUIRE(write_file(q, b, n) == 0);
    expect_load_error(q, COIN_EUNSUPPORTED, "16384");
    free(b);
}

/* A write that fails part way (here: the file-size limit, standing in for a
 * full disk) leaves the old file as it was and no temporary behind. */
TEST(image_write_png_failure_leaves_old_file)
{
    const char *dir = test_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/keep.png", dir);
    REQUIRE(write_file(path, "old contents", 12) == 0);
    coin_image img = {0};
    coin_error e = {0};
    REQUIRE_OK(image_alloc(&img, 300, 300, 3, &e), &e);
    for (size_t i = 0; i < (size_t)300 * 300 * 3; i++)
        img.pixels[i] = (uint8_t)(i * 2654435761u >> 13);    /* incompressible */
    struct rlimit old, lim;
    REQUIRE(getrlimit(RLIMIT_FSIZE, &old) == 0);
    lim = old;
    lim.rlim_cur = 4096;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    int rc = image_write_png(path, &img, NULL, 0, &e);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    CHECK_EQ_INT(rc, COIN_EIO);
    CHECK_STR_CONTAINS(e.msg, path);
    size_t n = 0;
    unsigned char *got = read_file(path, &n);
    CHECK(got && n == 12 && !memcmp(got, "old contents", 12));
    free(got);
    CHECK_EQ_INT(count_entries(dir), 1);
    /* And a directory that does not exist is an error naming the path. */
    snprintf(path, sizeof path, "%s/no/such/dir.png", dir);
    rc = image_write_png(path, &img, NULL, 0, &e);
    CHECK(rc == COIN_ENOTFOUND || rc == COIN_EIO);
    CHECK_STR_CONTAINS(e.msg, path);
    image_free(&img);
}

TEST(image_write_png_refuses_bad_text)
{
    const char *dir = test_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/t.png", dir);
    coin_image img = {0};
    coin_error e = {0};
    REQUIRE_OK(image_alloc(&img, 2, 2, 3, &e), &e);
    const char *bad_keys[] = {"", " lead", "trail ", "dou  ble", "\xe7\x8c\xab",
                              ("0123456789012345678901234567890123456789"
                               "0123456789012345678901234567890123456789")};
    for (size_t i = 0; i < sizeof bad_keys / sizeof *bad_keys; i++) {
        image_text t = {(char *)bad_keys[i], "v"};
        CHECK_EQ_INT(image_write_png(path, &img, &t, 1, &e), COIN_EINVAL);
    }
    image_text t = {"k", "bad \xff utf-8"};
    CHECK_EQ_INT(image_write_png(path, &img, &t, 1, &e), COIN_EINVAL);
    CHECK_STR_CONTAINS(e.msg, "UTF-8");
    CHECK_EQ_INT(count_entries(dir), 0);
    image_free(&img);
}
