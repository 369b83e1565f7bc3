/*
 * bench_workbench.c - how long the workbench takes to load and refresh
 * each screen on a big ledger: 10,000 runs, 100,000 samples (half of them
 * rated), 1,000,000 loss points (half in one long run, the rest 50 per
 * run), 4 checkpoints per run.
 *
 * The screens' own reload and draw functions run against a curses screen
 * that writes to /dev/null, so the figures are the workbench's, not a
 * model of it.  Build and run with tools/bench/bench_workbench.sh.
 */
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ncurses.h>

#include "db/ledger.h"
#include "db/ledger_query.h"
#include "tui/wb.h"

#define N_RUNS 10000
#define N_SAMPLES 100000
#define BIG_RUN_STEPS 500050
#define STEPS_PER_RUN 50

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what, const coin_error *err)
{
    fprintf(stderr, "bench_workbench: %s: %s\n", what, err ? err->msg : "");
    exit(1);
}

static void exec_sql(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "bench_workbench: %s: %s\n", sql, msg);
        exit(1);
    }
}

static void fill(ledger *l)
{
    sqlite3 *db = ledger_sqlite(l);
    coin_error err = {0};
    int64_t model;
    if (ledger_upsert_model(l, "/models/sd15.safetensors", "ab12", 1, &model, &err))
        die("model", &err);
    exec_sql(db, "BEGIN");
    sqlite3_stmt *run, *loss, *ck, *sample, *rate;
    sqlite3_prepare_v2(db, "INSERT INTO runs(kind, config_json, trigger, model_id, status, "
                       "steps_planned, step_reached, created_at, started_at) "
                       "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)", -1, &run, NULL);
    sqlite3_prepare_v2(db, "INSERT INTO losses(run, step, loss, lr) VALUES(?, ?, ?, 5e-4)", -1,
                       &loss, NULL);
    sqlite3_prepare_v2(db, "INSERT INTO checkpoints(run, step, path, created_at) VALUES(?,?,?,?)",
                       -1, &ck, NULL);
    sqlite3_prepare_v2(db, "INSERT INTO samples(run, prompt, seed, steps, guidance, sampler, "
                       "width, height, image_path, created_at) VALUES(?,?,?,25,7.5,'euler_a',"
                       "512,512,?,?)", -1, &sample, NULL);
    sqlite3_prepare_v2(db, "INSERT INTO ratings(sample, good, rated_at) VALUES(?,?,?)", -1, &rate,
                       NULL);
    static const char *const status[] = {"done", "done", "stopped", "failed", "done"};
    char text[256];
    srand(7);
    for (int r = 1; r <= N_RUNS; r++) {
        int steps = r == 1 ? BIG_RUN_STEPS : STEPS_PER_RUN;
        snprintf(text, sizeof text, "<tok-%d>", r);
        sqlite3_bind_text(run, 1, "train", -1, SQLITE_STATIC);
        sqlite3_bind_text(run, 2, "{\"steps\":2000,\"lr\":0.0005,\"batch\":4,\"seed\":\"42\"}", -1,
                          SQLITE_STATIC);
        sqlite3_bind_text(run, 3, text, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(run, 4, model);
        sqlite3_bind_text(run, 5, status[r % 5], -1, SQLITE_STATIC);
        sqlite3_bind_int(run, 6, steps);
        sqlite3_bind_int(run, 7, steps);
        sqlite3_bind_int64(run, 8, 1700000000 + r);
        sqlite3_bind_int64(run, 9, 1700000000 + r);
        sqlite3_step(run);
        sqlite3_reset(run);
        for (int s = 1; s <= steps; s++) {
            sqlite3_bind_int(loss, 1, r);
            sqlite3_bind_int(loss, 2, s);
            sqlite3_bind_double(loss, 3, 0.2 + 0.8 / sqrt(s) + 0.05 * (rand() / (double)RAND_MAX));
            sqlite3_step(loss);
            sqlite3_reset(loss);
        }
        for (int c = 1; c <= 4; c++) {
            snprintf(text, sizeof text, "/runs/%d/learned_embeds-steps-%d.safetensors", r,
                     c * steps / 4);
            sqlite3_bind_int(ck, 1, r);
            sqlite3_bind_int(ck, 2, c * steps / 4);
            sqlite3_bind_text(ck, 3, text, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int64(ck, 4, 1700000000 + r);
            sqlite3_step(ck);
            sqlite3_reset(ck);
        }
    }
    static const char *const subjects[] = {"Brad Pitt", "Angelina Jolie", "Chris Evans",
                                           "Tom Holland", "a cat"};
    for (int i = 1; i <= N_SAMPLES; i++) {
        snprintf(text, sizeof text, "a photo of %s giving a <tok-%d>", subjects[i % 5],
                 1 + i % N_RUNS);
        sqlite3_bind_int(sample, 1, 1 + i % N_RUNS);
        sqlite3_bind_text(sample, 2, text, -1, SQLITE_TRANSIENT);
        char seed[24], path[128];
        snprintf(seed, sizeof seed, "%d", 42 + i % 1000);
        snprintf(path, sizeof path, "/samples/s-%d.png", i);
        sqlite3_bind_text(sample, 3, seed, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(sample, 4, path, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(sample, 5, 1700000000 + i);
        sqlite3_step(sample);
        sqlite3_reset(sample);
        if (i % 2) {
            sqlite3_bind_int(rate, 1, i);
            sqlite3_bind_int(rate, 2, i % 3 != 0);
            sqlite3_bind_int64(rate, 3, 1700000000 + i);
            sqlite3_step(rate);
            sqlite3_reset(rate);
        }
    }
    sqlite3_finalize(run);
    sqlite3_finalize(loss);
    sqlite3_finalize(ck);
    sqlite3_finalize(sample);
    sqlite3_finalize(rate);
    exec_sql(db, "COMMIT");
}

/* Runs fn n times and prints the mean time of one. */
#define TIME(label, n, stmt)                                                     \
    do {                                                                         \
        double t0_ = now();                                                      \
        for (int i_ = 0; i_ < (n); i_++) {                                       \
            stmt;                                                                \
        }                                                                        \
        printf("  %-52s %9.2f ms\n", label, (now() - t0_) * 1e3 / (n));          \
    } while (0)

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "/tmp/coin-bench-workbench";
    char path[1024];
    snprintf(path, sizeof path, "mkdir -p %s && rm -f %s/ledger.db*", dir, dir);
    if (system(path) != 0)
        return 1;
    snprintf(path, sizeof path, "%s/ledger.db", dir);
    coin_error err = {0};
    ledger *l;
    if (ledger_open(&l, path, &err))
        die("open", &err);
    double t0 = now();
    fill(l);
    printf("ledger: %d runs, %d samples (half rated), %d loss points, %d checkpoints; "
           "filled in %.1f s\n", N_RUNS, N_SAMPLES, BIG_RUN_STEPS + (N_RUNS - 1) * STEPS_PER_RUN,
           4 * N_RUNS, now() - t0);
    ledger_close(l);

    /* the workbench as it starts: a fresh connection, a 120x35 screen */
    static wb w;
    memset(&w, 0, sizeof w);
    TIME("open the ledger", 1, if (ledger_open(&w.l, path, &err)) die("open", &err));
    snprintf(w.home, sizeof w.home, "%s", dir);
    FILE *null = fopen("/dev/null", "w");
    setenv("TERM", "xterm-256color", 1);
    SCREEN *scr = newterm("xterm-256color", null, stdin);
    if (!scr)
        return 1;
    set_term(scr);
    resizeterm(35, 120);
    w.rows = 35;
    w.cols = 120;
    w.utf8 = 1;
    w.caps.gfx = GFX_NONE;
    int64_t v;
    printf("screen times (mean of the repeats):\n");
    TIME("PRAGMA data_version (the idle check)", 1000, lq_data_version(w.l, &v, &err));
    TIME("Runs: read all 10,000 runs and sort", 5, runs_reload(&w));
    TIME("Runs: first draw (sparklines + acceptance of 31 rows)", 1,
         (erase(), runs_draw(&w), wnoutrefresh(stdscr), doupdate()));
    TIME("Runs: redraw (cached rows)", 20, (erase(), runs_draw(&w)));
    TIME("Runs: refresh after a change (reload + draw)", 5,
         (runs_reload(&w), erase(), runs_draw(&w)));
    w.runs.sort = 4;
    TIME("Runs: sort by loss", 5, runs_reload(&w));
    snprintf(w.runs.search, sizeof w.runs.search, "tok-99");
    TIME("Runs: search \"tok-99\"", 5, runs_reload(&w));
    w.runs.search[0] = '\0';
    run_open(&w, 1);
    TIME("Run (500,050 steps): open (curve, checkpoints)", 1, (run_reload(&w)));
    TIME("Run (500,050 steps): draw, every point mapped", 1, (erase(), run_draw(&w)));
    TIME("Run (500,050 steps): redraw (a key, same curve)", 20, (erase(), run_draw(&w)));
    TIME("Run (500,050 steps): live refresh, no new steps", 20, run_reload(&w));
    TIME("Run (500,050 steps): switch to log scale, last 1000", 1,
         (w.run.log_y = 1, w.run.window = 1000, erase(), run_draw(&w)));
    /* a live run: 50 new steps arrive, then the screen is drawn again */
    sqlite3_stmt *more;
    sqlite3_prepare_v2(ledger_sqlite(w.l), "INSERT INTO losses(run, step, loss) VALUES(1, ?, 0.3)",
                       -1, &more, NULL);
    int next = BIG_RUN_STEPS;
    TIME("Run (500,050 steps): 50 new steps: read tail + draw", 5, ({
             sqlite3_exec(ledger_sqlite(w.l), "BEGIN", NULL, NULL, NULL);
             for (int k = 0; k < 50; k++) {
                 sqlite3_bind_int(more, 1, ++next);
                 sqlite3_step(more);
                 sqlite3_reset(more);
             }
             sqlite3_exec(ledger_sqlite(w.l), "COMMIT", NULL, NULL, NULL);
             run_reload(&w);
             erase();
             run_draw(&w);
         }));
    sqlite3_finalize(more);
    run_open(&w, 2);
    TIME("Run (50 steps): open and draw", 1, (run_reload(&w), erase(), run_draw(&w)));
    browse_open(&w, 0);
    TIME("Browse: newest 2000 of 100,000 samples", 5, (browse_reload(&w), erase(), browse_draw(&w)));
    form_set(&w.browse.form, "text", "angelina");
    TIME("Browse: prompt has \"angelina\"", 5, browse_reload(&w));
    form_set(&w.browse.form, "text", "");
    form_set(&w.browse.form, "seed", "77");
    TIME("Browse: seed 77", 5, browse_reload(&w));
    form_set(&w.browse.form, "seed", "");
    form_set(&w.browse.form, "run", "1234");
    form_set(&w.browse.form, "rating", "good");
    TIME("Browse: run 1234, rated good", 5, browse_reload(&w));
    sample_open(&w, 0, NULL, NULL, NULL);
    TIME("Sample: this screen's images (prefix over 100,000)", 5,
         (sample_reload(&w), erase(), sample_draw(&w)));
    endwin();
    delscreen(scr);
    fclose(null);
    ledger_close(w.l);
    return 0;
}
