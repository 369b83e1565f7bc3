/*
 * test_workbench.c - the workbench end to end: the real bin/coin driven in
 * a private tmux server (send-keys in, capture-pane out) on the tiny test
 * model, as an operator would use it: a run created from the form, its loss
 * curve moving, a checkpoint and its previews, sampling, rating,
 * regenerating ("identical"), resizing, quitting with the job running and
 * coming back to it live, stopping it with confirmation.
 *
 * Skipped only when tmux is missing.  Each wait polls the screen, so the
 * test takes as long as the jobs take, within generous limits.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "db/ledger.h"
#include "db/ledger_query.h"
#include "cli_helpers.h"
#include "test.h"

static char sock[800], repo[1024];

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The visible screen, one line per row. */
static void screen(char *buf, size_t len)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "tmux -S %s capture-pane -p -t wb 2>/dev/null", sock);
    test_capture(cmd, buf, len);
}

static char scr[65536];

/* Polls the screen until it holds want (up to seconds); 1 when it did. */
static int wait_for(const char *want, double seconds)
{
    for (int i = 0; i < seconds * 10; i++) {
        screen(scr, sizeof scr);
        if (strstr(scr, want))
            return 1;
        usleep(100000);
    }
    return 0;
}

/* A wait that, when it fails, shows what was on the screen instead. */
#define WAIT(want, seconds)                                                              \
    do {                                                                                 \
        if (!wait_for(want, seconds))                                                    \
            test_failed(__FILE__, __LINE__, "no \"%s\" within %g s; the screen:\n%s", want, \
                        (double)(seconds), scr);                                          \
    } while (0)

static void keys(const char *k)
{
    sh("tmux -S %s send-keys -t wb %s", sock, k);
    usleep(60000);
}

/* The number after "step " on the title line, -1 when not shown. */
static int title_step(void)
{
    screen(scr, sizeof scr);
    const char *p = strstr(scr, " step ");
    return p && p < strchr(scr, '\n') ? atoi(p + 6) : -1;
}

static int count_braille(const char *s)
{
    int n = 0;
    for (; *s; s++)   /* U+2801..U+28FF: E2 A0 81 .. E2 A3 BF */
        if ((unsigned char)s[0] == 0xE2 && ((unsigned char)s[1] & 0xFC) == 0xA0 &&
            !((unsigned char)s[1] == 0xA0 && (unsigned char)s[2] == 0x80))
            n++;
    return n;
}

static void start_coin(const char *home)
{
    sh("tmux -S %s respawn-pane -k -t wb -c %s \"env COIN_HOME=%s COIN_GRAPHICS=blocks "
       "LANG=C.UTF-8 LC_ALL=C.UTF-8 sh -c '%s/bin/coin; echo WB-EXIT=\\$?; sleep 600'\"",
       sock, repo, home, repo);
}

TEST(workbench_end_to_end_in_tmux)
{
    if (sh("tmux -V >/dev/null 2>&1") != 0) {
        test_skip("tmux is not installed");
        return;
    }
    const char *dir = test_tmpdir();
    char home[900], images[900];
    REQUIRE(getcwd(repo, sizeof repo));
    snprintf(sock, sizeof sock, "%s/tmux.sock", dir);
    snprintf(home, sizeof home, "%s/home", dir);
    snprintf(images, sizeof images, "%s/images", dir);
    REQUIRE(sh("mkdir -p %s %s && cp tests/golden/image/png_ga8.png %s/a.png", home, images,
               images) == 0);
    setenv("LANG", "C.UTF-8", 1);
    REQUIRE(sh("tmux -S %s -f /dev/null new-session -d -s wb -x 100 -y 30 'sleep 600'", sock) == 0);
    sh("tmux -S %s set-option -g status off", sock);
    sh("tmux -S %s set-option -s set-clipboard on", sock);
    start_coin(home);
    WAIT("No runs yet", 20);

    /* 1. a run from the form: model, images, trigger, init, then steps,
     * batch, checkpoint interval, previews and their steps */
    keys("n");
    WAIT("New training run", 5);
    /* with no runs yet, the form offers the toy model coin ships, its glyph
     * images and trigger (what a newcomer starts with one key) */
    screen(scr, sizeof scr);
    CHECK_STR_CONTAINS(scr, "/assets/toy/toy-sd1.safetensors");
    CHECK_STR_CONTAINS(scr, "/assets/toy/glyph-images");
    CHECK_STR_CONTAINS(scr, "<thumbs-up>");
    char k[2048];
    snprintf(k, sizeof k, "C-u '%s/tests/golden/sd1/model.safetensors' Down C-u '%s' Down C-u '<tmx>' "
             "Down C-u hand Down Down C-u 3000", repo, images);
    keys(k);
    keys("Down Down Down Down Down C-u 1");                         /* batch */
    keys("Down Down Down Down Down Down Down C-u 20");              /* checkpoint every */
    keys("Down Down Down C-u 1 Down Down C-u 2");                   /* previews, their steps */
    screen(scr, sizeof scr);
    CHECK_STR_CONTAINS(scr, "<tmx>");
    keys("C-g");
    WAIT("<tmx>", 30);
    WAIT("running", 60);
    keys("Enter");
    WAIT("Run 1  <tmx>", 10);

    /* 2. the loss curve moves: more steps and braille dots on a later look */
    WAIT("Loss  linear", 10);
    int s1 = title_step();
    int dots1 = count_braille(scr);
    int s2 = s1, dots2 = dots1;
    for (int i = 0; i < 300 && (s2 <= s1 + 20 || dots2 <= dots1); i++) {
        usleep(100000);
        s2 = title_step();
        dots2 = count_braille(scr);
    }
    CHECK_MSG(s2 > s1, "the step did not move: %d then %d", s1, s2);
    CHECK_MSG(dots2 > 0, "no braille plot on screen:\n%s", scr);
    CHECK(strstr(scr, "it/s") != NULL);

    /* clone: the form holds the run's hyperparameters, with a new folder */
    keys("c");
    WAIT("New training run", 5);
    screen(scr, sizeof scr);
    CHECK_STR_CONTAINS(scr, "<tmx>");
    CHECK_STR_CONTAINS(scr, "steps                    3000");
    CHECK_STR_CONTAINS(scr, "batch                    1\n");
    CHECK_STR_CONTAINS(scr, "checkpoint every         20\n");
    CHECK_STR_CONTAINS(scr, "preview steps            2\n");
    CHECK_STR_CONTAINS(scr, "/runs/tmx-2");
    keys("Escape");
    WAIT("Runs: 1", 5);
    keys("Enter");
    WAIT("Run 1  <tmx>", 10);

    /* 3. a checkpoint and its preview image, drawn in half blocks.  The
     * selection follows the newest checkpoint, and a fast run may be well
     * past step 20 by now: Home selects the first once it is there. */
    int first_ck = 0;
    for (int i = 0; i < 30 && !first_ck; i++) {
        keys("Home");
        first_ck = wait_for("Previews at step 20", 1);
    }
    WAIT("Previews at step 20", 5);
    /* the picture in U+2580 upper half blocks: a 64x64 image in the rows
     * below the heading, at least a few cells' worth */
    int have_blocks = 0;
    for (int i = 0; i < 50 && have_blocks < 20; i++) {
        screen(scr, sizeof scr);
        have_blocks = 0;
        for (const char *p = strstr(scr, "Previews at step 20"); p && (p = strstr(p, "\xe2\x96\x80"));
             p += 3)
            have_blocks++;
        usleep(100000);
    }
    CHECK_MSG(have_blocks >= 20, "no preview image (%d half blocks):\n%s", have_blocks, scr);

    /* 4. pause (the worker runs one job at a time), then sample from that
     * checkpoint: 2 images of 2 steps */
    keys("p");
    WAIT("paused", 60);
    keys("s");
    WAIT("Sample  <tmx>", 5);
    keys("Down Down Down C-u 2 Down Down Down Down Down Down C-u 2");
    keys("C-g");
    WAIT("seed 43", 60);
    keys("Tab");
    keys("y");
    WAIT("1 rated, 1 good", 10);
    keys("Right");
    keys("n");
    WAIT("2 rated, 1 good", 10);
    /* regenerate the selected image and compare */
    keys("r");
    WAIT("regenerated: identical", 60);
    screen(scr, sizeof scr);

    /* the path, on screen and (OSC 52) in tmux's clipboard */
    keys("p");
    WAIT("Path of sample", 5);
    char buf_cmd[1024], clip[1024] = "";
    snprintf(buf_cmd, sizeof buf_cmd, "tmux -S %s show-buffer 2>/dev/null", sock);
    test_capture(buf_cmd, clip, sizeof clip);
    CHECK_MSG(strstr(clip, "/samples/") && strstr(clip, ".png") && strstr(scr, clip),
              "clipboard \"%s\" is not the path on screen", clip);
    keys("Escape");

    /* back to the run, which goes on from its checkpoint */
    keys("Escape");
    WAIT("Run 1  <tmx>", 5);
    keys("r");
    WAIT("running", 60);

    /* 5. resize: too small says so, larger redraws whole */
    sh("tmux -S %s resize-window -t wb -x 70 -y 20", sock);
    WAIT("needs at least 80x24", 5);
    sh("tmux -S %s resize-window -t wb -x 120 -y 35", sock);
    WAIT("Run 1  <tmx>", 5);
    screen(scr, sizeof scr);
    /* 35 rows: the key bar on the last one */
    int lines = 0;
    const char *last = scr;
    for (const char *p = scr; *p; p++)
        if (*p == '\n' && p[1]) {
            lines++;
            last = p + 1;
        }
    CHECK_EQ_INT(lines, 34);
    CHECK_STR_CONTAINS(last, "Overlay");

    /* 6. quit with the job running; it goes on; coin again shows it live */
    keys("q");
    WAIT("WB-EXIT=0", 10);
    char cmd[1200], out[4096] = "";
    snprintf(cmd, sizeof cmd, "COIN_HOME=%s bin/coin runs", home);
    test_capture(cmd, out, sizeof out);
    CHECK_STR_CONTAINS(out, "running");
    start_coin(home);
    WAIT("running", 20);
    keys("End Enter");      /* run 1 is the oldest; the sampling run came after it */
    WAIT("Run 1  <tmx>", 10);
    int s3 = title_step(), s4 = s3;
    for (int i = 0; i < 200 && s4 <= s3; i++) {
        usleep(100000);
        s4 = title_step();
    }
    CHECK_MSG(s4 > s3, "after reopening the step did not move: %d then %d", s3, s4);

    /* 7. stop asks first, then stops */
    keys("x");
    WAIT("Stop run 1?", 5);
    keys("y");
    WAIT("stopped", 60);

    /* 8. delete the sampling run (asks first): its two images go, the
     * training run and its files stay */
    keys("Escape");
    WAIT("Runs: 2", 5);
    keys("Home d");
    WAIT("Delete run 2?", 5);
    keys("y");
    WAIT("run 2 deleted, 2 files only it used removed", 10);
    WAIT("Runs: 1", 5);
    CHECK(sh("ls %s/samples/*-0.png %s/samples/*-1.png >/dev/null 2>&1", home, home) != 0);
    CHECK(sh("ls %s/runs/tmx-1/learned_embeds.safetensors >/dev/null 2>&1", home) == 0);

    keys("q");
    WAIT("WB-EXIT=0", 10);

    /* 9. killed by a signal (a crash among them), the terminal comes back:
     * the alternate screen and mouse reporting off */
    static const struct { const char *sig, *code; } sigs[] = {{"TERM", "WB-EXIT=143"},
                                                              {"SEGV", "WB-EXIT=139"}};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) {
        start_coin(home);
        WAIT("Runs:", 20);
        CHECK(sh("test \"$(tmux -S %s display -p -t wb '#{alternate_on}#{mouse_any_flag}')\" "
                 "= 11", sock) == 0);
        /* coin is the only child of the pane's shell */
        sh("pkill -%s -P \"$(tmux -S %s display -p -t wb '#{pane_pid}')\"", sigs[i].sig, sock);
        CHECK_MSG(wait_for(sigs[i].code, 10), "no %s after SIG%s:\n%s", sigs[i].code,
                  sigs[i].sig, scr);
        CHECK(sh("test \"$(tmux -S %s display -p -t wb '#{alternate_on}#{mouse_any_flag}')\" "
                 "= 00", sock) == 0);
    }
    sh("tmux -S %s kill-server 2>/dev/null", sock);
    /* whatever happened above, no training outlives the test */
    snprintf(cmd, sizeof cmd, "COIN_HOME=%s bin/coin stop 1 >/dev/null 2>&1", home);
    sh("%s", cmd);
}

/* ---- the workbench's ledger queries (db/ledger_query.c) ---- */

static ledger *fresh_ledger(const char *name)
{
    char path[900];
    snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
    return test_open_ledger(path);
}

static int64_t add_run(ledger *l, const char *status)
{
    ledger_run r = {.kind = "train", .trigger = "<t>", .status = status, .steps_planned = 10};
    int64_t id = 0;
    coin_error err = {0};
    if (ledger_insert_run(l, &r, &id, &err))
        test_failed(__FILE__, __LINE__, "%s", err.msg);
    return id;
}

static int64_t add_sample(ledger *l, int64_t run, const char *prompt, uint64_t seed,
                          const char *path)
{
    ledger_sample s = {.run = run, .prompt = prompt, .seed = seed, .steps = 2, .guidance = 7.5,
                       .width = 64, .height = 64, .image_path = path};
    int64_t id = 0;
    coin_error err = {0};
    if (ledger_insert_sample(l, &s, &id, &err))
        test_failed(__FILE__, __LINE__, "%s", err.msg);
    return id;
}

TEST(ledger_query_reads_curves_by_their_tail_and_in_spans)
{
    ledger *l = fresh_ledger("curve.db");
    REQUIRE(l);
    coin_error err = {0};
    int64_t run = add_run(l, "running");
    int steps[] = {1, 2, 3, 4};
    float loss[] = {1, 2, 3, 4};
    REQUIRE_OK(ledger_record_losses(l, run, steps, loss, NULL, 4, &err), &err);
    int *s = NULL;
    float *lo = NULL;
    size_t n = 0;
    REQUIRE_OK(ledger_losses_after(l, run, 0, &s, &lo, NULL, &n, &err), &err);
    CHECK_EQ_INT(n, 4);
    int more_steps[] = {5, 6};
    float more[] = {5, 6};
    REQUIRE_OK(ledger_record_losses(l, run, more_steps, more, NULL, 2, &err), &err);
    REQUIRE_OK(ledger_losses_after(l, run, s[n - 1], &s, &lo, NULL, &n, &err), &err);
    CHECK_EQ_INT(n, 6);
    CHECK(s[4] == 5 && s[5] == 6 && lo[5] == 6.0f && lo[0] == 1.0f);
    free(s);
    free(lo);
    /* steps 1..4 in 2 spans: (1+2)/2 and (3+4)/2; in 8 spans every other is empty */
    float spans[8];
    REQUIRE_OK(lq_loss_spans(l, run, 4, 2, spans, &err), &err);
    CHECK(spans[0] == 1.5f && spans[1] == 3.5f);
    REQUIRE_OK(lq_loss_spans(l, run, 4, 8, spans, &err), &err);
    CHECK(spans[0] == 1.0f && isnan(spans[1]) && spans[2] == 2.0f && spans[6] == 4.0f);
    ledger_close(l);
}

TEST(ledger_query_filters_samples)
{
    ledger *l = fresh_ledger("samples.db");
    REQUIRE(l);
    coin_error err = {0};
    int64_t a = add_run(l, "done"), b = add_run(l, "done");
    int64_t s1 = add_sample(l, a, "A photo of Brad Pitt", 42, "/w/x-1.png");
    int64_t s2 = add_sample(l, a, "a photo of a cat", 43, "/w/x-2.png");
    int64_t s3 = add_sample(l, b, "brad pitt again", 42, "/v/y.png");
    REQUIRE_OK(ledger_rate_sample(l, s1, 1, NULL, &err), &err);
    REQUIRE_OK(ledger_rate_sample(l, s2, 0, NULL, &err), &err);
    lq_sample_row *r = NULL;
    size_t n = 0;
    lq_sample_filter f = {.text = "BRAD", .rating = -1};
    REQUIRE_OK(lq_samples(l, &f, &r, &n, &err), &err);
    CHECK(n == 2 && r[0].id == s1 && r[1].id == s3 && r[0].rating == 1 && r[1].rating == -1);
    free(r);
    lq_sample_filter g = {.has_seed = 1, .seed = 42, .run = a, .rating = -1};
    REQUIRE_OK(lq_samples(l, &g, &r, &n, &err), &err);
    CHECK(n == 1 && r[0].id == s1);
    free(r);
    lq_sample_filter h = {.path_prefix = "/w/x-", .rating = 2, .newest_first = 1};
    REQUIRE_OK(lq_samples(l, &h, &r, &n, &err), &err);
    CHECK_EQ_INT(n, 0);     /* both under /w/x- are rated */
    free(r);
    h.rating = -1;
    REQUIRE_OK(lq_samples(l, &h, &r, &n, &err), &err);
    CHECK(n == 2 && r[0].id == s2);
    free(r);
    int good = 0, rated = 0;
    REQUIRE_OK(lq_sample_acceptance(l, &h, &good, &rated, &err), &err);
    CHECK(good == 1 && rated == 2);
    ledger_close(l);
}

TEST(ledger_query_delete_keeps_files_others_use)
{
    ledger *l = fresh_ledger("delete.db");
    REQUIRE(l);
    coin_error err = {0};
    int64_t a = add_run(l, "done"), b = add_run(l, "done"), live = add_run(l, "running");
    REQUIRE_OK(ledger_insert_checkpoint(l, a, 10, "/r/shared.safetensors", NULL, NULL, &err), &err);
    REQUIRE_OK(ledger_insert_checkpoint(l, a, 20, "/r/a-20.safetensors", NULL, NULL, &err), &err);
    REQUIRE_OK(ledger_insert_checkpoint(l, b, 10, "/r/shared.safetensors", NULL, NULL, &err), &err);
    int64_t sa = add_sample(l, a, "p", 1, "/r/a.png");
    add_sample(l, b, "p", 1, "/r/b.png");
    REQUIRE_OK(ledger_rate_sample(l, sa, 1, NULL, &err), &err);
    char **orphans = NULL;
    size_t n = 0;
    CHECK(lq_delete_run(l, live, &orphans, &n, &err) == COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "running");
    REQUIRE_OK(lq_delete_run(l, a, &orphans, &n, &err), &err);
    /* a's own checkpoint and image go; the shared checkpoint stays */
    CHECK_EQ_INT(n, 2);
    int own_ck = 0, own_img = 0;
    for (size_t i = 0; i < n; i++) {
        own_ck += !strcmp(orphans[i], "/r/a-20.safetensors");
        own_img += !strcmp(orphans[i], "/r/a.png");
        CHECK(strcmp(orphans[i], "/r/shared.safetensors") != 0);
    }
    CHECK(own_ck == 1 && own_img == 1);
    lq_free_paths(orphans, n);
    ledger_run r;
    CHECK(ledger_get_run(l, a, &r, &err) == COIN_ENOTFOUND);
    ledger_sample s;
    CHECK(ledger_get_sample(l, sa, &s, &err) == COIN_ENOTFOUND);
    lq_checkpoint *ck = NULL;
    REQUIRE_OK(lq_checkpoints(l, b, &ck, &n, &err), &err);
    CHECK(n == 1 && !strcmp(ck[0].path, "/r/shared.safetensors"));
    free(ck);
    ledger_close(l);
}

TEST(ledger_query_data_version_sees_other_connections_only)
{
    ledger *l = fresh_ledger("version.db");
    REQUIRE(l);
    coin_error err = {0};
    char path[900];
    snprintf(path, sizeof path, "%s", ledger_path(l));
    ledger *other = NULL;
    REQUIRE_OK(ledger_open(&other, path, &err), &err);
    int64_t v0, v1, v2;
    REQUIRE_OK(lq_data_version(l, &v0, &err), &err);
    add_run(l, "done");     /* our own write */
    REQUIRE_OK(lq_data_version(l, &v1, &err), &err);
    CHECK(v1 == v0);
    add_run(other, "done");
    REQUIRE_OK(lq_data_version(l, &v2, &err), &err);
    CHECK(v2 != v1);
    int64_t max_id;
    int active;
    REQUIRE_OK(lq_run_counts(l, &max_id, &active, &err), &err);
    CHECK(max_id == 2 && active == 0);
    add_run(l, "running");
    add_run(l, "paused");   /* waits for the operator: nothing moves */
    add_run(l, "queued");
    REQUIRE_OK(lq_run_counts(l, &max_id, &active, &err), &err);
    CHECK(max_id == 5 && active == 2);
    ledger_close(other);
    ledger_close(l);
}

/* The ASCII and monochrome fallbacks: with LANG=C and NO_COLOR the screen
 * holds no byte above 0x7f and no colour code, yet shows the run. */
TEST(workbench_ascii_and_no_color_in_tmux)
{
    if (sh("tmux -V >/dev/null 2>&1") != 0) {
        test_skip("tmux is not installed");
        return;
    }
    const char *dir = test_tmpdir();
    char home[900], path[1000];
    REQUIRE(getcwd(repo, sizeof repo));
    snprintf(sock, sizeof sock, "%s/tmux-ascii.sock", dir);
    snprintf(home, sizeof home, "%s/home", dir);
    REQUIRE(sh("mkdir -p %s", home) == 0);
    snprintf(path, sizeof path, "%s/ledger.db", home);
    ledger *l = NULL;
    coin_error err = {0};
    REQUIRE_OK(ledger_open(&l, path, &err), &err);
    ledger_run r = {.kind = "train", .trigger = "<asc>", .status = "done", .steps_planned = 40};
    int64_t id;
    REQUIRE_OK(ledger_insert_run(l, &r, &id, &err), &err);
    int steps[40];
    float loss[40];
    for (int i = 0; i < 40; i++) {
        steps[i] = i + 1;
        loss[i] = 1.0f / (i + 1);
    }
    REQUIRE_OK(ledger_record_losses(l, id, steps, loss, NULL, 40, &err), &err);
    ledger_close(l);
    REQUIRE(sh("tmux -S %s -f /dev/null new-session -d -s wb -x 100 -y 30 'sleep 600'", sock) == 0);
    sh("tmux -S %s set-option -g status off", sock);
    sh("tmux -S %s respawn-pane -k -t wb -c %s \"env COIN_HOME=%s NO_COLOR=1 LANG=C LC_ALL=C "
       "%s/bin/coin\"", sock, repo, home, repo);
    WAIT("<asc>", 20);
    keys("Enter");
    WAIT("Run 1  <asc>", 10);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "tmux -S %s capture-pane -e -p -t wb", sock);
    test_capture(cmd, scr, sizeof scr);
    size_t n = strlen(scr);
    int high = 0, colour = 0;
    for (size_t i = 0; i < n; i++) {
        high += (unsigned char)scr[i] >= 0x80;
        /* SGR 30-37/38 (foreground) or 40-47/48 (background) */
        if (scr[i] == '\033' && scr[i + 1] == '[')
            for (size_t k = i + 2; k < n && scr[k] != 'm' && k < i + 40; k++)
                if ((scr[k] == '3' || scr[k] == '4') && scr[k + 1] >= '0' && scr[k + 1] <= '8' &&
                    (scr[k - 1] == '[' || scr[k - 1] == ';'))
                    colour++;
    }
    CHECK_MSG(high == 0, "%d bytes above 0x7f on an ASCII screen", high);
    CHECK_MSG(colour == 0, "%d colour codes with NO_COLOR", colour);
    /* the plot is drawn with ASCII dots instead of braille */
    CHECK(strstr(scr, "Loss  linear") != NULL);
    CHECK(strchr(scr, ':') != NULL && strchr(scr, '\'') != NULL);
    keys("q");
    usleep(200000);
    sh("tmux -S %s kill-server 2>/dev/null", sock);
}
