/*
 * test_cli.c - the command line end to end: bin/coin is run as a user runs
 * it (make test builds it first), and its output files and exit codes are
 * checked.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <sqlite3.h>

#include "core/embedding.h"
#include "core/image.h"
#include "core/safetensors.h"
#include "db/ledger.h"
#include "cli_helpers.h"
#include "test.h"

/* Runs a shell command, captures stdout+stderr into out; returns the exit code. */
static int run(const char *cmd, char *out, size_t len)
{
    static char home[700];
    if (!home[0]) {
        /* The commands record into a ledger of the tests' own. */
        snprintf(home, sizeof home, "%s/coin-home", test_tmpdir());
        setenv("COIN_HOME", home, 1);
    }
    char full[4096];
    snprintf(full, sizeof full, "{ %s; } 2>&1", cmd);
    return test_capture(full, out, len);
}

static char out[65536];

TEST(cli_encode_matches_reference)
{
    static const struct { const char *model, *golden; } cases[] = {
        {"tests/golden/sd1/model.safetensors", "tests/golden/te_sd1/reference.safetensors"},
        {"tests/golden/sd1/diffusers", "tests/golden/te_sd1/reference.safetensors"},
        {"tests/golden/sd2/model.safetensors", "tests/golden/te_sd2/reference.safetensors"},
        {"tests/golden/sd2/diffusers", "tests/golden/te_sd2/reference.safetensors"},
    };
    const char *dir = test_tmpdir();
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char cmd[1024], path[700];
        snprintf(path, sizeof path, "%s/enc%zu.safetensors", dir, c);
        /* Prompt 1 of the golden file. */
        snprintf(cmd, sizeof cmd, "bin/coin encode --model %s --prompt "
                 "'Brad Pitt giving a thumbs up, 4k, highly detailed' --out %s",
                 cases[c].model, path);
        int rc = run(cmd, out, sizeof out);
        CHECK_MSG(rc == 0, "%s -> %d: %s", cmd, rc, out);
        if (rc)
            continue;
        coin_error err = {0};
        st_file *got = NULL, *ref = NULL;
        if (st_open(&got, path, &err) || st_open(&ref, cases[c].golden, &err)) {
            test_failed(__FILE__, __LINE__, "%s", err.msg);
        } else {
            const st_tensor *h = st_find(got, "hidden_states");
            const st_tensor *r = st_find(ref, "hidden_states");
            const st_tensor *ids = st_find(got, "input_ids"), *rids = st_find(ref, "input_ids");
            REQUIRE(h && r && ids && rids);
            CHECK_EQ_INT(h->ndim, 3);
            CHECK_EQ_INT(h->shape[0], 1);
            CHECK_EQ_INT(h->shape[1], 77);
            CHECK_EQ_INT(h->shape[2], r->shape[2]);
            int64_t row = 77 * r->shape[2];
            const float *hv = h->data, *rv = (const float *)r->data + row;
            float worst = 0;
            for (int64_t i = 0; i < row && h->nelem == (uint64_t)row; i++)
                worst = fmaxf(worst, fabsf(hv[i] - rv[i]));
            CHECK_MSG(worst <= 1e-4f, "%s: max abs error %g", cases[c].model, worst);
            CHECK(!memcmp(ids->data, (const int64_t *)rids->data + 77, 77 * sizeof(int64_t)));
            CHECK(st_meta(got, "prompt") && !strcmp(st_meta(got, "prompt"),
                  "Brad Pitt giving a thumbs up, 4k, highly detailed"));
        }
        st_close(got);
        st_close(ref);
    }
}

TEST(cli_info_reports_the_model)
{
    CHECK_EQ_INT(run("bin/coin info tests/golden/sd2/model.safetensors", out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "single-file (LDM)");
    CHECK_STR_CONTAINS(out, "SD 2.x (OpenCLIP");
    CHECK_STR_CONTAINS(out, "3 of 4 layers");
    CHECK_STR_CONTAINS(out, "BF16");
    CHECK_STR_CONTAINS(out, "padding:     0");
    CHECK_EQ_INT(run("bin/coin info tests/golden/sd1/diffusers", out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "diffusers folder");
    CHECK_STR_CONTAINS(out, "SD 1.x");
    CHECK_STR_CONTAINS(out, "quick-GELU");
    CHECK_STR_CONTAINS(out, "problems:    none");
    CHECK_EQ_INT(run("bin/coin info tests/golden/none.safetensors", out, sizeof out), 1);
    CHECK_STR_CONTAINS(out, "no such file");
}

TEST(cli_tokenize_prints_ids)
{
    CHECK_EQ_INT(run("bin/coin tokenize --no-pad 'a photo of a cat'", out, sizeof out), 0);
    CHECK(!strcmp(out, "49406 320 1125 539 320 2368 49407\n"));
    CHECK_EQ_INT(run("bin/coin tokenize --no-pad --token '<thumbs-up>' 'a <thumbs-up>'", out,
                     sizeof out), 0);
    CHECK(!strcmp(out, "49406 320 49408 49407\n"));
    /* SD2 pads with 0, SD1 with 49407: 77 ids either way. */
    CHECK_EQ_INT(run("bin/coin tokenize --sd2 'hello world!!'", out, sizeof out), 0);
    CHECK(!strncmp(out, "49406 3306 1002 748 49407 0 0 ", 29));
    int n = 0;
    for (char *s = strtok(out, " \n"); s; s = strtok(NULL, " \n"))
        n++;
    CHECK_EQ_INT(n, 77);
    CHECK_EQ_INT(run("bin/coin tokenize --model tests/golden/sd1/model.safetensors 'cat'",
                     out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "49406 2368 49407 49407 49407");
}

TEST(cli_bad_arguments_exit_2_with_a_message)
{
    CHECK_EQ_INT(run("bin/coin encode --model x", out, sizeof out), 2);
    CHECK_STR_CONTAINS(out, "--prompt");
    CHECK_EQ_INT(run("bin/coin encode --model x --prompt p --out o --repeat 0", out, sizeof out), 2);
    CHECK_EQ_INT(run("bin/coin frobnicate", out, sizeof out), 2);
    CHECK_STR_CONTAINS(out, "unknown command");
    CHECK_EQ_INT(run("bin/coin info --version sd3 m", out, sizeof out), 2);
    CHECK_EQ_INT(run("bin/coin encode --help", out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "hidden_states");
    CHECK_EQ_INT(run("bin/coin tokenize --sd2 --model m x", out, sizeof out), 2);
}

TEST(cli_long_prompt_warns_about_truncation)
{
    char cmd[4096] = "bin/coin tokenize '";
    for (int i = 0; i < 80; i++)
        strcat(cmd, "cat ");
    strcat(cmd, "dog'");
    CHECK_EQ_INT(run(cmd, out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "warning: the prompt is longer than 75 tokens; 6 tokens were dropped");
    CHECK_STR_CONTAINS(out, "cat cat cat cat cat dog\"");
}

static int files_equal(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb)
            same = 0;
        if (ca == EOF || cb == EOF)
            break;
    }
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    return same;
}

TEST(cli_sample_writes_pngs_that_show_their_recipe)
{
    const char *dir = test_tmpdir();
    char cmd[2048], a[700], b[700];
    snprintf(cmd, sizeof cmd, "bin/coin sample --model tests/golden/sd1/model.safetensors "
             "--prompt 'a photo of a cat' --negative blurry --steps 3 --sampler euler_a "
             "--seed 7 --batch 2 --out %s/cat.png --foreground", dir);
    REQUIRE(run(cmd, out, sizeof out) == 0);
    CHECK_STR_CONTAINS(out, "image 2/2 (seed 8)");
    snprintf(cmd, sizeof cmd, "bin/coin show %s/cat-1.png", dir);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "a photo of a cat\nNegative prompt: blurry\nSteps: 3, "
                       "Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 8, "
                       "Size: 64x64, Model hash: ");
    CHECK_STR_CONTAINS(out, "Model: model, RNG: NV, Version: coin ");
    CHECK_STR_CONTAINS(out, "sampler     euler_a");
    CHECK_STR_CONTAINS(out, "backend     cpu (fp32)");
    /* Image 1 of the batch made again alone, from its own seed: the same
     * bytes (pixels and text). */
    snprintf(cmd, sizeof cmd, "bin/coin sample --model tests/golden/sd1/model.safetensors "
             "--prompt 'a photo of a cat' --negative blurry --steps 3 --sampler euler_a "
             "--seed 8 --out %s/again.png", dir);
    REQUIRE(run(cmd, out, sizeof out) == 0);
    snprintf(a, sizeof a, "%s/cat-1.png", dir);
    snprintf(b, sizeof b, "%s/again.png", dir);
    CHECK(files_equal(a, b));
    snprintf(a, sizeof a, "%s/cat-0.png", dir);
    CHECK(!files_equal(a, b));
}

TEST(cli_sample_refuses_bad_values_before_work)
{
    const char *m = "bin/coin sample --model tests/golden/sd1/model.safetensors --prompt x "
                    "--out /tmp/coin-never-written.png";
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s --steps 0", m);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 2);
    CHECK_STR_CONTAINS(out, "--steps takes a whole number from 1 to 1000");
    snprintf(cmd, sizeof cmd, "%s --steps 1001", m);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 2);
    snprintf(cmd, sizeof cmd, "%s --cfg nan", m);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 2);
    snprintf(cmd, sizeof cmd, "%s --sampler lms", m);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 2);
    CHECK_STR_CONTAINS(out, "unknown sampler 'lms'");
    snprintf(cmd, sizeof cmd, "%s --width 70", m);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 1);
    CHECK_STR_CONTAINS(out, "width 70 does not work with this model");
    snprintf(cmd, sizeof cmd, "%s --schedule karras --sampler ddim", m);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 1);
    CHECK_STR_CONTAINS(out, "Karras");
    CHECK_EQ_INT(run("bin/coin show tests/golden/sd1/model.safetensors", out, sizeof out), 1);
}

TEST(cli_train_runs_resumes_and_refuses_bad_input)
{
    const char *dir = test_tmpdir();
    char images[700], out_dir[700], cmd[2048], path[800];
    snprintf(images, sizeof images, "%s/images", dir);
    snprintf(out_dir, sizeof out_dir, "%s/run", dir);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", images);
    REQUIRE(system(cmd) == 0);
    for (int i = 0; i < 2; i++) {
        coin_image img;
        coin_error err = {0};
        REQUIRE_OK(image_alloc(&img, 64, 64, 3, &err), &err);
        for (int p = 0; p < 64 * 64 * 3; p++)
            img.pixels[p] = (uint8_t)(p * (i + 3) % 251);
        snprintf(path, sizeof path, "%s/%d.png", images, i);
        int rc = image_write_png(path, &img, NULL, 0, &err);
        image_free(&img);
        REQUIRE_OK(rc, &err);
    }
    snprintf(cmd, sizeof cmd, "bin/coin train --model tests/golden/sd1/model.safetensors "
             "--images %s --token '<thumbs-up>' --init hand --steps 2 --batch 1 --save-every 1 "
             "--previews 0 --out %s --foreground", images, out_dir);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "encoding image 2/2");
    CHECK_STR_CONTAINS(out, "learned_embeds.safetensors");
    /* Through the queue: the worker continues the same run to step 3. */
    snprintf(cmd, sizeof cmd, "bin/coin train --resume %s --steps 3", out_dir);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "Ctrl-C stops following, not the run");
    CHECK_STR_CONTAINS(out, "done, step 3 of 3");
    snprintf(path, sizeof path, "%s/learned_embeds-steps-3.safetensors", out_dir);
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    if (f)
        fclose(f);
    /* The trained trigger works in coin sample. */
    snprintf(cmd, sizeof cmd, "bin/coin sample --model tests/golden/sd1/model.safetensors "
             "--prompt 'a <thumbs-up>' --steps 2 --embedding %s/learned_embeds.safetensors "
             "--out %s/s.png && bin/coin show %s/s.png", out_dir, dir, dir);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "TI hashes: \"<thumbs-up>: ");
    {
        /* Made with the run's final embedding, the sample counts for the
         * training run: it is recorded against the step-3 checkpoint, and
         * rating it moves the run's acceptance. */
        char db_path[800], image[800];
        coin_error err = {0};
        ledger *l = NULL;
        int64_t train_run = 0, sample = 0, ck_run = 0;
        int ck_step = 0;
        snprintf(image, sizeof image, "%s/s.png", dir);
        REQUIRE_OK(ledger_default_path(db_path, sizeof db_path, &err), &err);
        REQUIRE_OK(ledger_open(&l, db_path, &err), &err);
        REQUIRE_OK(ledger_find_run_by_dir(l, out_dir, &train_run, &err), &err);
        sqlite3_stmt *st = NULL;
        CHECK(sqlite3_prepare_v2(ledger_sqlite(l),
                                 "SELECT s.id, c.run, c.step FROM samples s JOIN checkpoints c "
                                 "ON c.id = s.checkpoint WHERE s.image_path LIKE '%' || ?",
                                 -1, &st, NULL) == SQLITE_OK);
        sqlite3_bind_text(st, 1, image, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            sample = sqlite3_column_int64(st, 0);
            ck_run = sqlite3_column_int64(st, 1);
            ck_step = sqlite3_column_int(st, 2);
        }
        sqlite3_finalize(st);
        CHECK(train_run > 0);
        CHECK_EQ_INT(ck_run, train_run);
        CHECK_EQ_INT(ck_step, 3);
        snprintf(cmd, sizeof cmd, "bin/coin rate %lld good", (long long)sample);
        CHECK_EQ_INT(run(cmd, out, sizeof out), 0);
        double share = 0;
        int rated = 0;
        REQUIRE_OK(ledger_acceptance(l, train_run, &share, &rated, &err), &err);
        CHECK_EQ_INT(rated, 1);
        CHECK(share == 1.0);
        ledger_close(l);
    }
    /* The run (one row: resuming continued it) and the sample are in the
     * ledger. */
    CHECK_EQ_INT(run("bin/coin runs", out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "train  <thumbs-up>      model.safetensors        done             3/3");
    const char *first = strstr(out, "<thumbs-up>");
    CHECK(first && !strstr(first + 1, "<thumbs-up>"));
    CHECK_STR_CONTAINS(out, "sample -");
    CHECK_EQ_INT(run("bin/coin train --model x", out, sizeof out), 2);
    CHECK_STR_CONTAINS(out, "--images");
    snprintf(cmd, sizeof cmd, "bin/coin train --resume %s/nowhere", dir);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 1);
    CHECK_STR_CONTAINS(out, "no run to resume");
}

TEST(cli_regen_makes_the_same_pixels_and_notices_changed_models)
{
    const char *dir = test_tmpdir();
    char cmd[2048];
    /* A private copy of the model, so the test can change it afterwards. */
    snprintf(cmd, sizeof cmd, "cp tests/golden/sd1/model.safetensors %s/m.safetensors && "
             "bin/coin sample --model %s/m.safetensors --prompt 'a photo of a cat' --steps 3 "
             "--sampler dpmpp_2m --schedule karras --rng cpu --seed 11 --batch 2 --out %s/a.png",
             dir, dir, dir);
    REQUIRE(run(cmd, out, sizeof out) == 0);
    snprintf(cmd, sizeof cmd, "bin/coin regen %s/a-1.png", dir);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "a-1-regen.png: identical to");
    snprintf(cmd, sizeof cmd, "cp tests/golden/sd2/model.safetensors %s/m.safetensors && "
             "bin/coin regen %s/a-0.png", dir, dir);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 1);
    CHECK_STR_CONTAINS(out, "is not the model that made");
    /* An image without a recipe. */
    CHECK_EQ_INT(run("bin/coin regen tests/golden/image/png_ga8.png", out, sizeof out), 1);
    CHECK_STR_CONTAINS(out, "has no coin recipe");
}

TEST(cli_rate_and_export)
{
    const char *dir = test_tmpdir();
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "bin/coin sample --model tests/golden/sd1/model.safetensors "
             "--prompt cat --steps 2 --batch 2 --out %s/not/yet/r.png", dir);
    REQUIRE(run(cmd, out, sizeof out) == 0);
    /* Sample 1 exists in this ledger whatever ran before. */
    CHECK_EQ_INT(run("bin/coin rate 1 good --note 'nice'", out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "% good (the bar is 75%)");
    CHECK_EQ_INT(run("bin/coin rate 1 meh", out, sizeof out), 2);
    /* What the ledger holds, and the stored image made again from it. */
    CHECK_EQ_INT(run("bin/coin show sample 1", out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "sample 1 of run ");
    CHECK_STR_CONTAINS(out, "image sha256 ");
    CHECK_EQ_INT(run("bin/coin show run 1", out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "run 1: sample, done");
    CHECK_EQ_INT(run("bin/coin regen 1", out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "-regen.png: identical to");
    CHECK_EQ_INT(run("bin/coin show run 99999", out, sizeof out), 1);
    CHECK_EQ_INT(run("bin/coin rate 999999 good", out, sizeof out), 1);
    /* AUTOMATIC1111 .pt -> diffusers -> a1111 -> kohya keeps the vectors. */
    snprintf(cmd, sizeof cmd, "bin/coin export tests/golden/pt/a1111_3vec_f16.pt --format "
             "diffusers --token '<x>' --out %s/d.safetensors && bin/coin export %s/d.safetensors "
             "--format a1111 --out %s/a.safetensors && bin/coin export %s/a.safetensors --format "
             "kohya --out %s/k.safetensors", dir, dir, dir, dir, dir);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 0);
    ti_embedding a, b;
    coin_error err = {0};
    char path[800];
    REQUIRE_OK(embedding_load(&a, "tests/golden/pt/a1111_3vec_f16.pt", NULL, &err), &err);
    snprintf(path, sizeof path, "%s/k.safetensors", dir);
    REQUIRE_OK(embedding_load(&b, path, NULL, &err), &err);
    CHECK_EQ_INT(b.n_vectors, 3);
    CHECK(!strcmp(b.token, "k"));
    CHECK(a.n_vectors * a.width == b.n_vectors * b.width &&
          !memcmp(a.vectors, b.vectors, (size_t)(a.n_vectors * a.width) * sizeof(float)));
    embedding_free(&a);
    embedding_free(&b);
    CHECK_EQ_INT(run("bin/coin export x --format onnx --out y", out, sizeof out), 2);
}

TEST(cli_killed_training_is_marked_interrupted_and_its_checkpoint_is_intact)
{
    const char *dir = test_tmpdir();
    char cmd[3000], images[700];
    snprintf(images, sizeof images, "%s/images", dir);
    snprintf(cmd, sizeof cmd, "mkdir -p %s && cp tests/golden/image/png_ga8.png %s/a.png", images,
             images);
    REQUIRE(run(cmd, out, sizeof out) == 0);
    /* kill -9 once the first checkpoint exists, as a crash would. */
    snprintf(cmd, sizeof cmd,
             "bin/coin train --model tests/golden/sd1/model.safetensors --images %s "
             "--token '<crash>' --init hand --steps 3000 --batch 1 --save-every 3 "
             "--previews 0 --out %s/run --foreground >/dev/null 2>&1 & pid=$!; "
             "for i in $(seq 300); do [ -f %s/run/state.safetensors ] && break; sleep 0.1; done; "
             "kill -9 $pid; wait $pid; bin/coin runs", images, dir, dir);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "<crash>");
    CHECK_STR_CONTAINS(out, "interrupted");
    ti_embedding e;
    coin_error err = {0};
    char path[800];
    snprintf(path, sizeof path, "%s/run/learned_embeds.safetensors", dir);
    REQUIRE_OK(embedding_load(&e, path, NULL, &err), &err);
    CHECK(!strcmp(e.token, "<crash>"));
    embedding_free(&e);
}

/* Polls `coin runs` until its output contains want (at most ~30 s). */
static int wait_for_runs(const char *want)
{
    for (int i = 0; i < 300; i++) {
        if (run("bin/coin runs", out, sizeof out) == 0 && strstr(out, want))
            return 1;
        usleep(100000);
    }
    return 0;
}

TEST(cli_detached_training_pauses_and_resumes_through_the_ledger)
{
    const char *dir = test_tmpdir();
    char cmd[3000], images[700], home[700];
    /* A ledger of its own, so run ids start at 1. */
    snprintf(home, sizeof home, "%s/home", dir);
    snprintf(images, sizeof images, "%s/images", dir);
    snprintf(cmd, sizeof cmd, "mkdir -p %s && cp tests/golden/image/png_ga8.png %s/a.png", images,
             images);
    REQUIRE(run(cmd, out, sizeof out) == 0);
    char *saved = getenv("COIN_HOME") ? strdup(getenv("COIN_HOME")) : NULL;
    setenv("COIN_HOME", home, 1);
    snprintf(cmd, sizeof cmd,
             "bin/coin train --model tests/golden/sd1/model.safetensors --images %s "
             "--token '<bg>' --init hand --steps 3000 --batch 1 --save-every 4 "
             "--previews 0 --out %s/run --detach", images, dir);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "run 1: in the background");
    CHECK(wait_for_runs("running"));
    CHECK_EQ_INT(run("bin/coin pause 1", out, sizeof out), 0);
    CHECK(wait_for_runs("paused"));
    /* Resumed, it is the same run 1 again, not a new one. */
    CHECK_EQ_INT(run("bin/coin resume 1 --detach", out, sizeof out), 0);
    CHECK(wait_for_runs("    1  train  <bg>             model.safetensors        running"));
    CHECK(!strstr(out, "    2  train"));
    CHECK_EQ_INT(run("bin/coin stop 1", out, sizeof out), 0);
    CHECK(wait_for_runs("stopped"));
    CHECK_EQ_INT(run("bin/coin stop 1", out, sizeof out), 1);   /* not running any more */
    CHECK_STR_CONTAINS(out, "is stopped, not running");
    if (saved) {
        setenv("COIN_HOME", saved, 1);
        free(saved);
    }
}

/* Writes the pixels of src into dst with only the "parameters" text
 * params: what AUTOMATIC1111 writes, without coin's recipe. */
static int write_a1111_png(const char *src, const char *dst, const char *params)
{
    coin_image img;
    coin_error err = {0};
    if (image_load(src, &img, &err))
        return -1;
    image_text t[1] = {{"parameters", (char *)params}};
    int rc = image_write_png(dst, &img, t, 1, &err);
    image_free(&img);
    return rc;
}

TEST(cli_regen_from_a1111_parameters)
{
    char dir[700];
    run("true", out, sizeof out);   /* the ledger's folder first: test_tmpdir reuses its buffer */
    snprintf(dir, sizeof dir, "%s", test_tmpdir());
    char cmd[2048], src[800], dst[800];
    /* An image made by coin; its parameters text is AUTOMATIC1111's. */
    snprintf(cmd, sizeof cmd, "bin/coin sample --model tests/golden/sd1/model.safetensors "
             "--prompt 'a photo of a dog' --negative blurry --steps 3 --sampler euler_a "
             "--schedule karras --seed 21 --out %s/d.png --foreground", dir);
    REQUIRE(run(cmd, out, sizeof out) == 0);
    snprintf(cmd, sizeof cmd, "bin/coin show %s/d.png", dir);
    REQUIRE(run(cmd, out, sizeof out) == 0);
    char *end = strstr(out, "\n\ncoin recipe");
    REQUIRE(end);
    *end = '\0';
    char params[4096];
    snprintf(params, sizeof params, "%.4000s", out);
    snprintf(src, sizeof src, "%s/d.png", dir);
    snprintf(dst, sizeof dst, "%s/a1111.png", dir);
    REQUIRE(write_a1111_png(src, dst, params) == 0);
    /* Without --from, only a coin recipe will do. */
    snprintf(cmd, sizeof cmd, "bin/coin regen %s", dst);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 1);
    CHECK_STR_CONTAINS(out, "coin regen --from IMAGE.png");
    /* The model is found in the ledger by its 10-digit hash; the same
     * settings on the same backend give the same pixels. */
    snprintf(cmd, sizeof cmd, "bin/coin regen --from %s", dst);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "a1111-regen.png: identical to");
    /* Settings coin does not have are named, and left out. */
    char more[4600];
    snprintf(more, sizeof more, "%s, Hires upscale: 2, Lora hashes: \"x: 0123456789ab\"", params);
    snprintf(dst, sizeof dst, "%s/hires.png", dir);
    REQUIRE(write_a1111_png(src, dst, more) == 0);
    snprintf(cmd, sizeof cmd, "bin/coin regen --from %s --model "
             "tests/golden/sd1/model.safetensors", dst);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 0);
    CHECK_STR_CONTAINS(out, "settings coin does not support, which are left out: "
                       "Hires upscale: 2, Lora hashes: x: 0123456789ab");
    /* Another model than the one named is refused. */
    snprintf(cmd, sizeof cmd, "bin/coin regen --from %s --model "
             "tests/golden/sd2/model.safetensors", dst);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 1);
    CHECK_STR_CONTAINS(out, "is not the model that made");
    /* A seed changed in the text: the result is reported as different. */
    char *seed = strstr(params, "Seed: 21");
    REQUIRE(seed);
    seed[7] = '2';
    snprintf(dst, sizeof dst, "%s/other.png", dir);
    REQUIRE(write_a1111_png(src, dst, params) == 0);
    snprintf(cmd, sizeof cmd, "bin/coin regen --from %s", dst);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 1);
    CHECK_STR_CONTAINS(out, "other-regen.png: differs from");
    /* A sampler coin does not have. */
    char *sampler = strstr(params, "Sampler: Euler a");
    REQUIRE(sampler);
    memcpy(sampler + 9, "Heun   ", 7);
    snprintf(dst, sizeof dst, "%s/heun.png", dir);
    REQUIRE(write_a1111_png(src, dst, params) == 0);
    snprintf(cmd, sizeof cmd, "bin/coin regen --from %s", dst);
    CHECK_EQ_INT(run(cmd, out, sizeof out), 1);
    CHECK_STR_CONTAINS(out, "which coin does not have");
}
