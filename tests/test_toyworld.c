/*
 * test_toyworld.c - the toy world's measurements: the judge's accuracy on
 * freshly drawn ground truth, and, on the toy model coin ships
 * (assets/toy/toy-sd1.safetensors), the rates of issue 7:
 *   prompt following   "a {colour} {shape}" shows that shape in that colour
 *                      in at least 80% of samples;
 *   held-out glyph     with the trigger "<thumbs-up>" set to its initializer
 *                      word's embedding and not trained, the judge finds the
 *                      glyph in at most 20% of samples of the context prompts;
 *   after training     `bin/coin train` on the five glyph images of
 *                      assets/toy/glyph-images, the same context prompts
 *                      ("a blue <thumbs-up> on a yellow background", ...)
 *                      show the glyph in at least 90% of samples.
 * COIN_TOY_MEASURE=1 runs a small version (a fixed subset of prompts and
 * seeds, about a minute of sampling plus a one-minute training run);
 * COIN_TOY_FULL=1 the full measurement (every prompt of each set, three
 * seeds); COIN_TOY_OUT=DIR keeps every judged sample as DIR/<set>-NNN-....png
 * with the verdict in the name; COIN_TOY_MODEL=FILE measures another model
 * (a candidate from tools/toyworld/train.py) in place of the shipped one.
 * tools/toyworld/measure.sh does the full one.
 * The model measurements are opt-in, not part of a plain make test, while the
 * shipped model does not reach the bars (see assets/toy/MODEL_CARD.md): they
 * fail then, and every commit keeps the test suite green.  The judge tests
 * always run.
 *
 * Sampling goes through the core (pipeline_open, sample_image) as coin
 * sample does; the training runs bin/coin train as a user runs it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "core/embedding.h"
#include "core/image.h"
#include "core/sample.h"
#include "test.h"
#include "toyjudge.h"
#include "toyworld.h"

#define TOY_MODEL "assets/toy/toy-sd1.safetensors"

/* The model measured: COIN_TOY_MODEL, or the shipped one. */
static const char *toy_model(void)
{
    const char *m = getenv("COIN_TOY_MODEL");
    return m && *m ? m : TOY_MODEL;
}
#define TOY_GLYPH_IMAGES "assets/toy/glyph-images"
#define TRIGGER "<thumbs-up>"
#define INIT_WORD "shape"

/* The bars of issue 7; never lowered to make a model pass. */
#define JUDGE_BAR 0.98
#define PROMPT_BAR 0.80
#define UNTRAINED_MAX 0.20
#define TRAINED_BAR 0.90

/* Sampling as a user samples: the model's own sampler (PNDM), guidance 7.5. */
#define SAMPLE_STEPS 25
#define SAMPLE_CFG 7.5f

/* The training: the users' settings (batch 4, learning rate 5e-4 scaled by
 * the batch, constant schedule, seed 42) with the step count scaled to the
 * toy model, whose 64x64 images and tiny UNet learn in minutes. */
#define TI_STEPS 300
#define TI_ARGS "--batch 4 --lr 5e-4 --seed 42 --resolution 64 --previews 0"

static int full_run(void)
{
    const char *v = getenv("COIN_TOY_FULL");
    return v && *v && strcmp(v, "0");
}

/* The model measurements run on request only (see the top of the file). */
static int measuring(void)
{
    const char *v = getenv("COIN_TOY_MEASURE");
    if (full_run() || (v && *v && strcmp(v, "0")))
        return 1;
    test_skip("model measurements: set COIN_TOY_MEASURE=1 (or run tools/toyworld/measure.sh)");
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

TEST(toyjudge_names_fresh_renders)
{
    enum { N = 1000 };
    uint64_t state = 20261125;
    uint8_t rgb[TOY_SIZE * TOY_SIZE * 3];
    int right = 0, right_cls = 0, right_fg = 0, right_bg = 0;
    int per_class[TOY_CLASSES] = {0}, per_class_right[TOY_CLASSES] = {0};
    for (int i = 0; i < N; i++) {
        toy_scene sc;
        toy_verdict v;
        toy_random_scene(&state, &sc);
        toy_render(&sc, rgb);
        toy_judge(rgb, TOY_SIZE, TOY_SIZE, &v);
        per_class[sc.cls]++;
        right_cls += v.cls == sc.cls;
        right_fg += v.fg == sc.fg;
        right_bg += v.bg == sc.bg;
        if (v.cls == sc.cls && v.fg == sc.fg && v.bg == sc.bg) {
            right++;
            per_class_right[sc.cls]++;
        }
    }
    printf("    judge on %d fresh renders: all right %.1f%% (class %.1f%%, colour %.1f%%, "
           "background %.1f%%)\n", N, 100.0 * right / N, 100.0 * right_cls / N,
           100.0 * right_fg / N, 100.0 * right_bg / N);
    CHECK_MSG(right >= JUDGE_BAR * N, "the judge names %d of %d fresh renders right, below %.0f%%",
              right, N, 100 * JUDGE_BAR);
    for (int c = 0; c < TOY_CLASSES; c++)
        CHECK_MSG(per_class[c] > 10 && per_class_right[c] >= JUDGE_BAR * per_class[c],
                  "%s: %d of %d right", toy_class_names[c], per_class_right[c], per_class[c]);
}

/* Samples are soft-edged (the VAE decodes blurry edges): the judge must name
 * renders softened by a 3x3 box filter as well. */
TEST(toyjudge_names_softened_renders)
{
    enum { N = 500 };
    uint64_t state = 4242;
    uint8_t rgb[TOY_SIZE * TOY_SIZE * 3], soft[TOY_SIZE * TOY_SIZE * 3];
    int right = 0;
    for (int i = 0; i < N; i++) {
        toy_scene sc;
        toy_verdict v;
        toy_random_scene(&state, &sc);
        toy_render(&sc, rgb);
        for (int y = 0; y < TOY_SIZE; y++)
            for (int x = 0; x < TOY_SIZE; x++)
                for (int c = 0; c < 3; c++) {
                    int sum = 0, n = 0;
                    for (int dy = -1; dy <= 1; dy++)
                        for (int dx = -1; dx <= 1; dx++) {
                            int xx = x + dx, yy = y + dy;
                            if (xx >= 0 && yy >= 0 && xx < TOY_SIZE && yy < TOY_SIZE) {
                                sum += rgb[3 * (yy * TOY_SIZE + xx) + c];
                                n++;
                            }
                        }
                    soft[3 * (y * TOY_SIZE + x) + c] = (uint8_t)((sum + n / 2) / n);
                }
        toy_judge(soft, TOY_SIZE, TOY_SIZE, &v);
        right += v.cls == sc.cls && v.fg == sc.fg && v.bg == sc.bg;
    }
    printf("    judge on %d softened renders: all right %.1f%%\n", N, 100.0 * right / N);
    CHECK_MSG(right >= JUDGE_BAR * N, "the judge names %d of %d softened renders right", right, N);
}

/* The glyph images were drawn by tools/toyworld/world.py: the C outline must
 * match the Python one (the judge sees them as the glyph, almost exactly). */
TEST(toyjudge_sees_the_glyph_in_the_python_renders)
{
    for (int i = 1; i <= 5; i++) {
        char path[256];
        coin_image img = {0};
        coin_error err = {0};
        snprintf(path, sizeof path, TOY_GLYPH_IMAGES "/glyph-%02d.png", i);
        REQUIRE_OK(image_load(path, &img, &err), &err);
        toy_verdict v;
        toy_judge(img.pixels, img.width, img.height, &v);
        CHECK_MSG(v.cls == TOY_GLYPH && v.iou > 0.95, "%s: %s, overlap %.3f", path,
                  v.cls >= 0 ? toy_class_names[v.cls] : "nothing", v.iou);
        image_free(&img);
    }
}

TEST(toyjudge_sees_nothing_in_a_plain_image)
{
    uint8_t rgb[TOY_SIZE * TOY_SIZE * 3];
    toy_scene sc = {TOY_CIRCLE, 2, 3, 32, 32, 0.001};   /* an object smaller than a pixel */
    toy_render(&sc, rgb);
    toy_verdict v;
    toy_judge(rgb, TOY_SIZE, TOY_SIZE, &v);
    CHECK_EQ_INT(v.cls, TOY_JUDGE_NONE);
    CHECK_EQ_INT(v.bg, 3);
    /* blotches of every colour are no shape, though they fill a square box */
    uint64_t st = 7;
    for (int i = 0; i < TOY_SIZE * TOY_SIZE; i++) {
        toy_scene any;
        toy_random_scene(&st, &any);
        memcpy(rgb + 3 * i, toy_palette[any.fg], 3);
    }
    toy_judge(rgb, TOY_SIZE, TOY_SIZE, &v);
    CHECK_EQ_INT(v.cls, TOY_JUDGE_NONE);
    /* and a shape drawn where the outline says, but the wrong one, is not that shape */
    toy_scene star = {TOY_STAR, 0, 4, 32, 32, 20};
    toy_render(&star, rgb);
    toy_judge(rgb, TOY_SIZE, TOY_SIZE, &v);
    CHECK_EQ_INT(v.cls, TOY_STAR);
    CHECK(v.iou_class[TOY_CIRCLE] < v.iou_class[TOY_STAR]);
}

/* ---- sampling the toy model ---- */

typedef struct judged {
    int n, hits, colour_hits;
} judged;

/* Samples prompt at seed, judges it, keeps it under COIN_TOY_OUT. */
static int sample_and_judge(sd_pipeline *p, const char *set, int index, const char *prompt,
                            uint64_t seed, toy_verdict *v, coin_error *err)
{
    sample_params sp;
    sample_defaults(p, &sp);
    sp.prompt = prompt;
    sp.steps = SAMPLE_STEPS;
    sp.cfg = SAMPLE_CFG;
    sp.width = sp.height = TOY_SIZE;
    sp.seed = seed;
    float *pixels = malloc(sizeof(float) * 3 * TOY_SIZE * TOY_SIZE);
    coin_image img = {0};
    int rc = pixels ? 0 : coin_fail(err, COIN_ENOMEM, "out of memory");
    if (!rc)
        rc = sample_image(p, &sp, NULL, NULL, pixels, NULL, err);
    if (!rc)
        rc = image_from_chw_float(pixels, TOY_SIZE, TOY_SIZE, &img, err);
    if (!rc) {
        toy_judge(img.pixels, img.width, img.height, v);
        const char *keep = getenv("COIN_TOY_OUT");
        if (keep && *keep) {
            char path[1024];
            snprintf(path, sizeof path, "%s/%s-%03d-%s-%s.png", keep, set, index,
                     v->cls >= 0 ? toy_class_names[v->cls] : "none",
                     v->fg >= 0 ? toy_colour_names[v->fg] : "none");
            image_text t = {"prompt", (char *)prompt};
            rc = image_write_png(path, &img, &t, 1, err);
        }
    }
    image_free(&img);
    free(pixels);
    return rc;
}

static int open_toy(sd_pipeline **p, coin_error *err)
{
    return pipeline_open(p, toy_model(), SD_UNKNOWN, PRED_UNKNOWN, backend_cpu(), err);
}

TEST(toyworld_prompt_following)
{
    if (!measuring())
        return;
    coin_error err = {0};
    sd_pipeline *p = NULL;
    REQUIRE_OK(open_toy(&p, &err), &err);
    /* small: each shape in two colours; full: every colour x shape, three seeds */
    int full = full_run(), seeds = full ? 3 : 1, n = 0, hits = 0, shape_hits = 0, colour_hits = 0;
    double t0 = now_s();
    for (int s = 0; s < TOY_CLASSES - 1; s++)
        for (int c = 0; c < TOY_COLOURS; c++) {
            if (!full && c != (2 * s) % TOY_COLOURS && c != (2 * s + 3) % TOY_COLOURS)
                continue;
            for (int k = 0; k < seeds; k++) {
                char prompt[128];
                toy_verdict v;
                snprintf(prompt, sizeof prompt, "a %s %s", toy_colour_names[c], toy_class_names[s]);
                if (sample_and_judge(p, "prompt", n, prompt, 1000 + 100 * k + n, &v, &err)) {
                    test_failed(__FILE__, __LINE__, "%s: %s", prompt, err.msg);
                    pipeline_free(p);
                    return;
                }
                n++;
                shape_hits += v.cls == s;
                colour_hits += v.fg == c;
                hits += v.cls == s && v.fg == c;
            }
        }
    pipeline_free(p);
    printf("    \"a {colour} {shape}\": right shape and colour in %d of %d samples (%.1f%%; "
           "shape %.1f%%, colour %.1f%%), %.0f s\n", hits, n, 100.0 * hits / n,
           100.0 * shape_hits / n, 100.0 * colour_hits / n, now_s() - t0);
    CHECK_MSG(hits >= PROMPT_BAR * n, "prompt following %d of %d is below %.0f%%", hits, n,
              100 * PROMPT_BAR);
}

/* The context prompts: the trigger in every colour on every other background. */
static int glyph_rate(sd_pipeline *p, const char *set, judged *out, coin_error *err)
{
    int full = full_run(), seeds = full ? 3 : 1, n = 0;
    memset(out, 0, sizeof *out);
    for (int a = 0; a < TOY_COLOURS; a++)
        for (int b = 0; b < TOY_COLOURS; b++) {
            if (a == b || (!full && b != (a + 2) % TOY_COLOURS && b != (a + 3) % TOY_COLOURS))
                continue;
            for (int k = 0; k < seeds; k++) {
                char prompt[160];
                toy_verdict v;
                snprintf(prompt, sizeof prompt, "a %s " TRIGGER " on a %s background",
                         toy_colour_names[a], toy_colour_names[b]);
                int rc = sample_and_judge(p, set, n, prompt, 5000 + 100 * k + n, &v, err);
                if (rc)
                    return rc;
                n++;
                out->hits += v.cls == TOY_GLYPH;
                out->colour_hits += v.cls == TOY_GLYPH && v.fg == a && v.bg == b;
            }
        }
    out->n = n;
    return 0;
}

TEST(toyworld_glyph_without_textual_inversion)
{
    if (!measuring())
        return;
    coin_error err = {0};
    sd_pipeline *p = NULL;
    REQUIRE_OK(open_toy(&p, &err), &err);
    /* The trigger as coin train starts it: the initializer word's embedding. */
    int32_t ids[4];
    int n = 0;
    float row[1024];
    char path[700];
    snprintf(path, sizeof path, "%s/untrained.safetensors", test_tmpdir());
    int rc = tokenizer_tokenize(p->tok, INIT_WORD, ids, 4, &n, &err);
    if (!rc && (n != 1 || p->clip == NULL))
        rc = coin_fail(&err, COIN_EINVAL, "\"" INIT_WORD "\" is %d tokens", n);
    if (!rc)
        rc = clip_get_token_rows(p->clip, ids[0], row, 1, &err);
    int64_t width = 0;
    if (!rc) {
        width = p->ck->text.width;
        if (width > 1024)
            rc = coin_fail(&err, COIN_EINVAL, "text encoder width %lld", (long long)width);
    }
    if (!rc)
        rc = embedding_save(path, EMB_DIFFUSERS, TRIGGER, row, 1, width, NULL, 0, &err);
    if (!rc)
        rc = pipeline_add_embedding(p, path, &err);
    judged j;
    double t0 = now_s();
    if (!rc)
        rc = glyph_rate(p, "untrained", &j, &err);
    pipeline_free(p);
    REQUIRE_OK(rc, &err);
    printf("    untrained trigger (= \"" INIT_WORD "\"): the glyph in %d of %d samples (%.1f%%), "
           "%.0f s\n", j.hits, j.n, 100.0 * j.hits / j.n, now_s() - t0);
    CHECK_MSG(j.hits <= UNTRAINED_MAX * j.n,
              "the glyph appears in %d of %d samples without training, above %.0f%%: the "
              "held-out concept is not held out", j.hits, j.n, 100 * UNTRAINED_MAX);
}

TEST(toyworld_glyph_after_textual_inversion)
{
    if (!measuring())
        return;
    const char *dir = test_tmpdir();
    char cmd[2048], out[700], emb[800];
    snprintf(out, sizeof out, "%s/ti-thumbs-up", dir);
    snprintf(cmd, sizeof cmd,
             "COIN_HOME='%s/coin-home' bin/coin train --model '%s' --images "
             TOY_GLYPH_IMAGES " --token '" TRIGGER "' --init " INIT_WORD " --steps %d "
             "--save-every %d " TI_ARGS " --out '%s' > '%s/train.log' 2>&1",
             dir, toy_model(), TI_STEPS, TI_STEPS, out, dir);
    double t0 = now_s();
    int status = system(cmd);
    double train_s = now_s() - t0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char tail[4096] = "";
        snprintf(emb, sizeof emb, "%s/train.log", dir);
        FILE *f = fopen(emb, "r");
        if (f) {
            size_t got = fread(tail, 1, sizeof tail - 1, f);
            tail[got] = '\0';
            fclose(f);
        }
        test_failed(__FILE__, __LINE__, "bin/coin train failed (%d):\n%s", status, tail);
        return;
    }
    snprintf(emb, sizeof emb, "%s/learned_embeds.safetensors", out);
    coin_error err = {0};
    sd_pipeline *p = NULL;
    REQUIRE_OK(open_toy(&p, &err), &err);
    int rc = pipeline_add_embedding(p, emb, &err);
    judged j;
    t0 = now_s();
    if (!rc)
        rc = glyph_rate(p, "trained", &j, &err);
    pipeline_free(p);
    REQUIRE_OK(rc, &err);
    printf("    after coin train (%d steps, %.0f s): the glyph in %d of %d samples (%.1f%%; "
           "in the prompt's colours %.1f%%), %.0f s\n", TI_STEPS, train_s, j.hits, j.n,
           100.0 * j.hits / j.n, 100.0 * j.colour_hits / j.n, now_s() - t0);
    CHECK_MSG(j.hits >= TRAINED_BAR * j.n,
              "after textual inversion the glyph appears in %d of %d samples, below %.0f%%",
              j.hits, j.n, 100 * TRAINED_BAR);
}
