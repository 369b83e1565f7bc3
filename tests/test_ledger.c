/*
 * test_ledger.c - the run ledger (db/ledger.c) against real SQLite files:
 * schema creation and upgrade, refusal of a newer schema, round trips of
 * runs, losses, samples and ratings, a reader beside a writer in another
 * process, and the errors a user would see.
 */
#include "test.h"

#include "db/ledger.h"

#include <sqlite3.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void db_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", test_tmpdir(), name);
}

/* Reads one integer with a plain sqlite3 connection, beside the ledger's. */
static long long raw_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    long long v = -1;
    if (sqlite3_open(path, &db) == SQLITE_OK) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
            if (sqlite3_step(st) == SQLITE_ROW)
                v = sqlite3_column_int64(st, 0);
            sqlite3_finalize(st);
        }
    }
    sqlite3_close(db);
    return v;
}

static int raw_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open(path, &db);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    sqlite3_close(db);
    return rc;
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int64_t add_train_run(ledger *l, coin_error *err)
{
    ledger_run r = {.kind = "train", .trigger = "<cat-toy>", .steps_planned = 100};
    int64_t id = 0;
    if (ledger_insert_run(l, &r, &id, err))
        return 0;
    return id;
}

TEST(ledger_open_creates_schema_and_reopens)
{
    char path[1024];
    db_path(path, sizeof path, "ledger.db");
    coin_error err = {0};
    ledger *l = NULL;
    REQUIRE_OK(ledger_open(&l, path, &err), &err);
    CHECK_STR_CONTAINS(ledger_path(l), "ledger.db");
    int64_t id = add_train_run(l, &err);
    CHECK(id > 0);
    ledger_close(l);

    CHECK_EQ_INT(raw_int(path, "PRAGMA user_version"), LEDGER_SCHEMA_VERSION);
    CHECK_EQ_INT(raw_int(path, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND "
                               "name IN ('models','runs','losses','checkpoints','samples',"
                               "'ratings')"),
                 6);
    /* WAL is a property of the file: a plain connection sees it too. */
    sqlite3 *db;
    REQUIRE(sqlite3_open(path, &db) == SQLITE_OK);
    sqlite3_stmt *st;
    REQUIRE(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL) == SQLITE_OK);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    CHECK_STR_CONTAINS((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    sqlite3_close(db);

    /* Reopening changes nothing and keeps the data. */
    REQUIRE_OK(ledger_open(&l, path, &err), &err);
    ledger_run r;
    REQUIRE_OK(ledger_get_run(l, id, &r, &err), &err);
    CHECK_STR_CONTAINS(r.trigger, "<cat-toy>");
    ledger_run_free(&r);
    ledger_close(l);
    CHECK_EQ_INT(raw_int(path, "PRAGMA user_version"), LEDGER_SCHEMA_VERSION);
    CHECK_EQ_INT(raw_int(path, "SELECT COUNT(*) FROM runs"), 1);
}

TEST(ledger_newer_schema_refused)
{
    char path[1024];
    db_path(path, sizeof path, "newer.db");
    REQUIRE(raw_exec(path, "CREATE TABLE runs(id INTEGER); PRAGMA user_version = 99") ==
            SQLITE_OK);
    coin_error err = {0};
    ledger *l = (ledger *)1;
    int rc = ledger_open(&l, path, &err);
    CHECK_EQ_INT(rc, COIN_EUNSUPPORTED);
    CHECK(l == NULL);
    CHECK_STR_CONTAINS(err.msg, "newer.db");
    CHECK_STR_CONTAINS(err.msg, "version 99");
    char want[32];
    snprintf(want, sizeof want, "version %d", LEDGER_SCHEMA_VERSION);
    CHECK_STR_CONTAINS(err.msg, want);
    /* Refusing must not touch the file. */
    CHECK_EQ_INT(raw_int(path, "PRAGMA user_version"), 99);
}

TEST(ledger_old_schema_upgrades)
{
    char path[1024];
    db_path(path, sizeof path, "old.db");
    /* A version-0 database with something in it that must survive. */
    REQUIRE(raw_exec(path, "CREATE TABLE notes(x TEXT); INSERT INTO notes VALUES('kept')") ==
            SQLITE_OK);
    CHECK_EQ_INT(raw_int(path, "PRAGMA user_version"), 0);
    coin_error err = {0};
    ledger *l = NULL;
    REQUIRE_OK(ledger_open(&l, path, &err), &err);
    CHECK(add_train_run(l, &err) > 0);
    ledger_close(l);
    CHECK_EQ_INT(raw_int(path, "PRAGMA user_version"), LEDGER_SCHEMA_VERSION);
    CHECK_EQ_INT(raw_int(path, "SELECT COUNT(*) FROM notes"), 1);
}

TEST(ledger_run_roundtrip)
{
    char path[1024];
    db_path(path, sizeof path, "runs.db");
    coin_error err = {0};
    ledger *l = NULL;
    REQUIRE_OK(ledger_open(&l, path, &err), &err);

    int64_t model = 0, again = 0;
    REQUIRE_OK(ledger_upsert_model(l, "/models/sd15.safetensors", "ab12", 1, &model, &err), &err);
    /* The same content under a new path is the same model. */
    REQUIRE_OK(ledger_upsert_model(l, "/moved/sd15.safetensors", "ab12", 0, &again, &err), &err);
    CHECK_EQ_INT(again, model);

    const char *cfg = "{\"lr\":0.0005,\"steps\":2000,\"batch\":4,\"seed\":42,"
                      "\"schedule\":\"constant\",\"trigger\":\"it's \\\"quoted\\\"\"}";
    ledger_run in = {
        .kind = "train", .config_json = cfg, .trigger = "<it's>", .initializer = "toy",
        .model_id = model, .images_dir = "/data/cat toy", .image_hashes_json = "[\"aa\",\"bb\"]",
        .backend = "cuda", .precision = "fp32", .threads = 16, .coin_version = "0.1.0",
        .host = "box", .steps_planned = 2000,
    };
    int64_t id = 0;
    REQUIRE_OK(ledger_insert_run(l, &in, &id, &err), &err);

    ledger_run r;
    REQUIRE_OK(ledger_get_run(l, id, &r, &err), &err);
    CHECK_EQ_INT(r.id, id);
    CHECK(!strcmp(r.kind, "train"));
    CHECK(!strcmp(r.config_json, cfg));
    CHECK(!strcmp(r.trigger, "<it's>"));
    CHECK(!strcmp(r.initializer, "toy"));
    CHECK_EQ_INT(r.model_id, model);
    CHECK(!strcmp(r.model_path, "/moved/sd15.safetensors"));
    CHECK(!strcmp(r.images_dir, "/data/cat toy"));
    CHECK(!strcmp(r.image_hashes_json, "[\"aa\",\"bb\"]"));
    CHECK(!strcmp(r.backend, "cuda") && !strcmp(r.precision, "fp32"));
    CHECK_EQ_INT(r.threads, 16);
    CHECK(!strcmp(r.coin_version, "0.1.0") && !strcmp(r.host, "box"));
    CHECK(!strcmp(r.status, "queued"));
    CHECK_EQ_INT(r.steps_planned, 2000);
    CHECK_EQ_INT(r.step_reached, 0);
    CHECK(r.created_at > 0);
    CHECK_EQ_INT(r.started_at, 0);
    CHECK(r.error == NULL);
    ledger_run_free(&r);
    /* The JSON is queryable in SQL, which is why it is checked on the way in. */
    CHECK_EQ_INT(raw_int(path, "SELECT json_extract(config_json, '$.batch') FROM runs"), 4);

    REQUIRE_OK(ledger_set_run_status(l, id, "running", NULL, &err), &err);
    REQUIRE_OK(ledger_set_run_status(l, id, "failed", "out of GPU memory", &err), &err);
    REQUIRE_OK(ledger_get_run(l, id, &r, &err), &err);
    CHECK(!strcmp(r.status, "failed"));
    CHECK(r.started_at > 0 && r.ended_at >= r.started_at);
    CHECK(r.error && !strcmp(r.error, "out of GPU memory"));
    ledger_run_free(&r);

    ledger_run_row row;
    REQUIRE_OK(ledger_run_summary(l, id, &row, &err), &err);
    CHECK(!strcmp(row.kind, "train") && !strcmp(row.status, "failed"));
    CHECK(!strcmp(row.model_path, "/moved/sd15.safetensors"));
    CHECK_EQ_INT(row.steps, 2000);
    CHECK(isnan(row.last_loss));

    /* Refusals, each with a sentence. */
    CHECK_EQ_INT(ledger_set_run_status(l, id, "finished", NULL, &err), COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "finished");
    CHECK_EQ_INT(ledger_set_run_status(l, id + 100, "done", NULL, &err), COIN_ENOTFOUND);
    ledger_run bad = in;
    bad.config_json = "{\"lr\":";
    CHECK_EQ_INT(ledger_insert_run(l, &bad, NULL, &err), COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "runs.db");
    bad = in;
    bad.kind = "eval";
    CHECK_EQ_INT(ledger_insert_run(l, &bad, NULL, &err), COIN_EINVAL);
    CHECK_EQ_INT(ledger_get_run(l, id + 100, &r, &err), COIN_ENOTFOUND);
    ledger_close(l);
}

TEST(ledger_loss_curve_100k)
{
    char path[1024];
    db_path(path, sizeof path, "loss.db");
    coin_error err = {0};
    ledger *l = NULL;
    REQUIRE_OK(ledger_open(&l, path, &err), &err);
    int64_t run = add_train_run(l, &err);
    REQUIRE(run > 0);

    enum { N = 100000, BATCH = 500 };
    int *steps = malloc(N * sizeof *steps);
    float *loss = malloc(N * sizeof *loss), *lr = malloc(N * sizeof *lr);
    REQUIRE(steps && loss && lr);
    uint32_t x = 12345;
    for (int i = 0; i < N; i++) {
        x = x * 1664525u + 1013904223u;
        steps[i] = i + 1;
        loss[i] = (float)(x >> 8) / (float)(1u << 24);   /* arbitrary bits, exactly stored */
        lr[i] = 5e-4f * (float)(N - i) / N;
    }
    loss[777] = NAN;   /* a skipped step: NaN must come back as NaN, not 0 */
    double t0 = now_ms();
    for (int i = 0; i < N; i += BATCH) {
        int rc = ledger_record_losses(l, run, steps + i, loss + i, lr + i, BATCH, &err);
        if (rc) {
            test_failed(__FILE__, __LINE__, "batch at %d: %s", i, err.msg);
            break;
        }
    }
    double t_write = now_ms() - t0;

    int *rs = NULL;
    float *rl = NULL, *rr = NULL;
    size_t n = 0;
    t0 = now_ms();
    int rc = ledger_loss_curve(l, run, &rs, &rl, &rr, &n, &err);
    double t_read = now_ms() - t0;
    printf("    ledger: 100000 loss rows written in %.0f ms (%d batches), curve read in %.1f ms\n",
           t_write, N / BATCH, t_read);
    if (rc == 0 && n == N) {
        int bad = 0;
        for (int i = 0; i < N && bad < 5; i++) {
            int same = rs[i] == steps[i] && rr[i] == lr[i] &&
                       (isnan(loss[i]) ? isnan(rl[i]) : rl[i] == loss[i]);
            if (!same) {
                test_failed(__FILE__, __LINE__, "row %d differs", i);
                bad++;
            }
        }
    } else {
        test_failed(__FILE__, __LINE__, "curve: rc %d, %zu rows: %s", rc, n, err.msg);
    }
    free(rs);
    free(rl);
    free(rr);

    ledger_run_row row;
    REQUIRE_OK(ledger_run_summary(l, run, &row, &err), &err);
    CHECK_EQ_INT(row.step, N);
    CHECK(row.last_loss == loss[N - 1]);

    /* A resumed run repeats steps: the new values replace the old. */
    int s2[2] = {10, 11};
    float l2[2] = {9.0f, 8.0f}, r2[2] = {1e-3f, 1e-3f};
    REQUIRE_OK(ledger_record_losses(l, run, s2, l2, r2, 2, &err), &err);
    REQUIRE_OK(ledger_loss_curve(l, run, &rs, &rl, NULL, &n, &err), &err);
    CHECK_EQ_INT(n, N);
    CHECK(rl[9] == 9.0f && rl[10] == 8.0f && rs[9] == 10);
    free(rs);
    free(rl);

    /* A run with no losses reads as empty. */
    int64_t empty = add_train_run(l, &err);
    REQUIRE_OK(ledger_loss_curve(l, empty, &rs, &rl, &rr, &n, &err), &err);
    CHECK(n == 0 && !rs && !rl && !rr);

    free(steps);
    free(loss);
    free(lr);
    ledger_close(l);
}

struct count_ctx {
    int runs;
};

static int count_run(void *ctx, const ledger_run_row *row)
{
    (void)row;
    ((struct count_ctx *)ctx)->runs++;
    return 0;
}

/* The TUI's case: the worker (a child process) writes loss batches and
 * status changes while this process reads the curve and the run list and
 * writes a status of its own.  No call may fail with "database is locked",
 * and a reader sees whole batches only. */
TEST(ledger_reader_beside_writer)
{
    char path[1024];
    db_path(path, sizeof path, "shared.db");
    coin_error err = {0};
    ledger *l = NULL;
    REQUIRE_OK(ledger_open(&l, path, &err), &err);
    int64_t run = add_train_run(l, &err), other = add_train_run(l, &err);
    REQUIRE(run > 0 && other > 0);

    enum { BATCHES = 200, BATCH = 250 };
    fflush(NULL);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        /* The child opens its own connection and leaves with _exit, so that
         * the parent's connection and the harness's clean-up are untouched. */
        ledger *w = NULL;
        coin_error werr = {0};
        if (ledger_open(&w, path, &werr))
            _exit(2);
        int st[BATCH];
        float lo[BATCH], lr[BATCH];
        for (int b = 0; b < BATCHES; b++) {
            for (int i = 0; i < BATCH; i++) {
                st[i] = b * BATCH + i;
                lo[i] = 1.0f / (1 + st[i]);
                lr[i] = 1e-4f;
            }
            if (ledger_record_losses(w, run, st, lo, lr, BATCH, &werr))
                _exit(3);
            if (b % 20 == 0 && ledger_set_run_status(w, run, "running", NULL, &werr))
                _exit(4);
        }
        _exit(0);
    }

    /* The parent's reader is a second ledger_open, as the TUI's would be. */
    ledger *r = NULL;
    int ok = ledger_open(&r, path, &err) == 0;
    CHECK_MSG(ok, "reader open: %s", err.msg);
    int status = 0, polls = 0, failures = 0;
    size_t last = 0;
    for (;;) {
        pid_t done = waitpid(pid, &status, WNOHANG);
        if (ok) {
            size_t n = 0;
            float *lo = NULL;
            if (ledger_loss_curve(r, run, NULL, &lo, NULL, &n, &err)) {
                if (failures++ < 3)
                    test_failed(__FILE__, __LINE__, "reader: %s", err.msg);
            } else {
                CHECK_MSG(n % BATCH == 0, "a reader saw half a batch (%zu rows)", n);
                CHECK_MSG(n >= last, "the curve shrank from %zu to %zu", last, n);
                last = n;
            }
            free(lo);
            struct count_ctx c = {0};
            if (ledger_list_runs(r, count_run, &c, &err) && failures++ < 3)
                test_failed(__FILE__, __LINE__, "list: %s", err.msg);
            /* And a write of the parent's own, contending for the lock. */
            if (ledger_set_run_status(r, other, polls % 2 ? "paused" : "running", NULL, &err) &&
                failures++ < 3)
                test_failed(__FILE__, __LINE__, "parent write: %s", err.msg);
            polls++;
        }
        if (done == pid)
            break;
    }
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the writer failed (exit status %d)", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    printf("    ledger: reader polled %d times while the writer wrote %d batches\n", polls,
           BATCHES);
    if (ok) {
        size_t n = 0;
        float *lo = NULL;
        REQUIRE_OK(ledger_loss_curve(r, run, NULL, &lo, NULL, &n, &err), &err);
        CHECK_EQ_INT(n, BATCHES * BATCH);
        free(lo);
        ledger_close(r);
    }
    ledger_close(l);
}

TEST(ledger_mark_interrupted_after_crash)
{
    char path[1024];
    db_path(path, sizeof path, "crash.db");
    coin_error err = {0};
    ledger *l = NULL;
    REQUIRE_OK(ledger_open(&l, path, &err), &err);
    int64_t a = add_train_run(l, &err), b = add_train_run(l, &err), c = add_train_run(l, &err);
    REQUIRE(a && b && c);
    REQUIRE_OK(ledger_set_run_status(l, a, "running", NULL, &err), &err);
    REQUIRE_OK(ledger_set_run_status(l, b, "running", NULL, &err), &err);
    REQUIRE_OK(ledger_set_run_status(l, b, "done", NULL, &err), &err);
    ledger_close(l);   /* the "crash" */

    REQUIRE_OK(ledger_open(&l, path, &err), &err);
    int n = -1;
    REQUIRE_OK(ledger_mark_interrupted(l, &n, &err), &err);
    CHECK_EQ_INT(n, 1);
    ledger_run r;
    REQUIRE_OK(ledger_get_run(l, a, &r, &err), &err);
    CHECK(!strcmp(r.status, "interrupted") && r.ended_at > 0);
    ledger_run_free(&r);
    REQUIRE_OK(ledger_get_run(l, b, &r, &err), &err);
    CHECK(!strcmp(r.status, "done"));
    ledger_run_free(&r);
    REQUIRE_OK(ledger_get_run(l, c, &r, &err), &err);
    CHECK(!strcmp(r.status, "queued"));
    ledger_run_free(&r);
    REQUIRE_OK(ledger_mark_interrupted(l, &n, &err), &err);
    CHECK_EQ_INT(n, 0);
    /* Resuming clears the end time again. */
    REQUIRE_OK(ledger_set_run_status(l, a, "running", NULL, &err), &err);
    REQUIRE_OK(ledger_get_run(l, a, &r, &err), &err);
    CHECK_EQ_INT(r.ended_at, 0);
    ledger_run_free(&r);
    ledger_close(l);
}

TEST(ledger_samples_ratings_acceptance)
{
    char path[1024];
    db_path(path, sizeof path, "rate.db");
    coin_error err = {0};
    ledger *l = NULL;
    REQUIRE_OK(ledger_open(&l, path, &err), &err);
    int64_t run = add_train_run(l, &err), other = add_train_run(l, &err);
    REQUIRE(run && other);
    int64_t ck = 0;
    REQUIRE_OK(ledger_insert_checkpoint(l, run, 250, "/out/step-250.safetensors", "cc", &ck, &err),
               &err);
    /* Rewriting a step's checkpoint keeps its id. */
    int64_t ck2 = 0;
    REQUIRE_OK(ledger_insert_checkpoint(l, run, 250, "/out/step-250b.safetensors", "dd", &ck2,
                                        &err), &err);
    CHECK_EQ_INT(ck2, ck);

    ledger_sample s = {
        .run = run, .prompt = "a photo of <cat-toy>", .negative = "blurry",
        .seed = UINT64_MAX, .steps = 30, .guidance = 7.5, .sampler = "euler_a",
        .schedule = "karras", .width = 512, .height = 768, .rng = "cuda",
        .model_sha256 = "ab12", .embeddings_json = "[\"ee\"]", .image_path = "/out/a.png",
        .image_sha256 = "ff",
    };
    int64_t ids[5];
    for (int i = 0; i < 5; i++) {
        s.checkpoint = i >= 3 ? ck : 0;   /* two through the checkpoint only */
        s.run = i >= 3 ? 0 : run;
        REQUIRE_OK(ledger_insert_sample(l, &s, &ids[i], &err), &err);
    }
    ledger_sample got;
    REQUIRE_OK(ledger_get_sample(l, ids[0], &got, &err), &err);
    CHECK(got.seed == UINT64_MAX);
    CHECK(got.run == run && got.checkpoint == 0);
    CHECK(!strcmp(got.prompt, "a photo of <cat-toy>") && !strcmp(got.negative, "blurry"));
    CHECK(got.steps == 30 && got.guidance == 7.5 && got.width == 512 && got.height == 768);
    CHECK(!strcmp(got.sampler, "euler_a") && !strcmp(got.schedule, "karras"));
    CHECK(!strcmp(got.rng, "cuda") && !strcmp(got.model_sha256, "ab12"));
    CHECK(!strcmp(got.embeddings_json, "[\"ee\"]") && !strcmp(got.image_path, "/out/a.png"));
    CHECK(got.created_at > 0);
    ledger_sample_free(&got);
    REQUIRE_OK(ledger_get_sample(l, ids[4], &got, &err), &err);
    CHECK(got.run == 0 && got.checkpoint == ck);
    ledger_sample_free(&got);

    double share = 0;
    int n = -1;
    REQUIRE_OK(ledger_acceptance(l, run, &share, &n, &err), &err);
    CHECK(isnan(share) && n == 0);

    REQUIRE_OK(ledger_rate_sample(l, ids[0], 1, "great", &err), &err);
    REQUIRE_OK(ledger_rate_sample(l, ids[1], 0, NULL, &err), &err);
    REQUIRE_OK(ledger_rate_sample(l, ids[3], 1, NULL, &err), &err);
    REQUIRE_OK(ledger_rate_sample(l, ids[4], 0, "wrong colour", &err), &err);
    REQUIRE_OK(ledger_acceptance(l, run, &share, &n, &err), &err);
    CHECK_EQ_INT(n, 4);
    CHECK(share == 0.5);
    /* A second opinion replaces the first. */
    REQUIRE_OK(ledger_rate_sample(l, ids[4], 1, "on reflection", &err), &err);
    REQUIRE_OK(ledger_acceptance(l, run, &share, &n, &err), &err);
    CHECK_EQ_INT(n, 4);
    CHECK(share == 0.75);
    REQUIRE_OK(ledger_acceptance(l, other, &share, &n, &err), &err);
    CHECK(n == 0 && isnan(share));

    CHECK_EQ_INT(ledger_rate_sample(l, 99999, 1, NULL, &err), COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "rate.db");
    ledger_close(l);
}

TEST(ledger_foreign_keys_enforced)
{
    char path[1024];
    db_path(path, sizeof path, "fk.db");
    coin_error err = {0};
    ledger *l = NULL;
    REQUIRE_OK(ledger_open(&l, path, &err), &err);
    int64_t run = add_train_run(l, &err);
    REQUIRE(run > 0);
    int st[3] = {1, 2, 3};
    float lo[3] = {1, 2, 3}, lr[3] = {0, 0, 0};
    int rc = ledger_record_losses(l, run + 1000, st, lo, lr, 3, &err);
    CHECK_EQ_INT(rc, COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "fk.db");
    CHECK_STR_CONTAINS(err.msg, "FOREIGN KEY");
    CHECK_EQ_INT(ledger_insert_checkpoint(l, run + 1000, 1, "/x", NULL, NULL, &err), COIN_EINVAL);
    ledger_run r = {.kind = "train", .model_id = 4242};
    CHECK_EQ_INT(ledger_insert_run(l, &r, NULL, &err), COIN_EINVAL);
    ledger_close(l);
    CHECK_EQ_INT(raw_int(path, "SELECT COUNT(*) FROM losses"), 0);
    CHECK_EQ_INT(raw_int(path, "SELECT COUNT(*) FROM checkpoints"), 0);
    CHECK_EQ_INT(raw_int(path, "SELECT COUNT(*) FROM runs"), 1);
}

TEST(ledger_missing_folder_and_bad_file)
{
    char path[1024];
    db_path(path, sizeof path, "no-such-folder/ledger.db");
    coin_error err = {0};
    ledger *l = (ledger *)1;
    CHECK_EQ_INT(ledger_open(&l, path, &err), COIN_ENOTFOUND);
    CHECK(l == NULL);
    CHECK_STR_CONTAINS(err.msg, "no-such-folder");
    CHECK_STR_CONTAINS(err.msg, "does not exist");

    /* A file that is not a database at all. */
    db_path(path, sizeof path, "notes.txt");
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    for (int i = 0; i < 200; i++)
        fputs("this is not an SQLite database, just some notes\n", f);
    fclose(f);
    CHECK_EQ_INT(ledger_open(&l, path, &err), COIN_EFORMAT);
    CHECK_STR_CONTAINS(err.msg, "notes.txt");
}

TEST(ledger_default_path_uses_coin_home)
{
    char home[1024], buf[1200];
    snprintf(home, sizeof home, "%s/ws/deep/coin", test_tmpdir());
    const char *saved = getenv("COIN_HOME");
    char *keep = saved ? strdup(saved) : NULL;
    setenv("COIN_HOME", home, 1);
    coin_error err = {0};
    int rc = ledger_default_path(buf, sizeof buf, &err);
    /* Still under COIN_HOME: without it this would create ~/.local/share/coin. */
    char tiny[8];
    coin_error terr = {0};
    int tiny_rc = ledger_default_path(tiny, sizeof tiny, &terr);
    if (keep) {
        setenv("COIN_HOME", keep, 1);
        free(keep);
    } else {
        unsetenv("COIN_HOME");
    }
    REQUIRE_OK(rc, &err);
    char want[1200];
    snprintf(want, sizeof want, "%s/ledger.db", home);
    CHECK(!strcmp(buf, want));
    struct stat sb;
    CHECK(stat(home, &sb) == 0 && S_ISDIR(sb.st_mode));
    CHECK_EQ_INT(tiny_rc, COIN_EINVAL);
    /* And the path opens. */
    ledger *l = NULL;
    REQUIRE_OK(ledger_open(&l, buf, &err), &err);
    ledger_close(l);
}

TEST(ledger_dead_runs_are_marked_interrupted)
{
    char path[700], sql[256];
    db_path(path, sizeof path, "dead.db");
    coin_error err = {0};
    ledger *l;
    REQUIRE_OK(ledger_open(&l, path, &err), &err);
    /* Two runs of host "here": one of this (live) process, one whose
     * process has exited. */
    ledger_run r = {.kind = "train", .host = "here", .steps_planned = 10};
    int64_t live, dead, other;
    REQUIRE_OK(ledger_insert_run(l, &r, &live, &err), &err);
    REQUIRE_OK(ledger_insert_run(l, &r, &dead, &err), &err);
    r.host = "elsewhere";
    REQUIRE_OK(ledger_insert_run(l, &r, &other, &err), &err);
    REQUIRE_OK(ledger_set_run_status(l, live, "running", NULL, &err), &err);
    REQUIRE_OK(ledger_set_run_status(l, dead, "running", NULL, &err), &err);
    REQUIRE_OK(ledger_set_run_status(l, other, "running", NULL, &err), &err);
    CHECK_EQ_INT(raw_int(path, "SELECT pid FROM runs WHERE id = 1"), getpid());
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    waitpid(child, NULL, 0);
    snprintf(sql, sizeof sql, "UPDATE runs SET pid = %d WHERE id = %lld", (int)child,
             (long long)dead);
    REQUIRE(raw_exec(path, sql) == SQLITE_OK);
    int n = -1;
    REQUIRE_OK(ledger_mark_dead_runs(l, "here", &n, &err), &err);
    CHECK_EQ_INT(n, 1);
    ledger_run got;
    REQUIRE_OK(ledger_get_run(l, dead, &got, &err), &err);
    CHECK(!strcmp(got.status, "interrupted"));
    ledger_run_free(&got);
    REQUIRE_OK(ledger_get_run(l, live, &got, &err), &err);
    CHECK(!strcmp(got.status, "running"));
    ledger_run_free(&got);
    /* Another host's runs are not this machine's to judge. */
    REQUIRE_OK(ledger_get_run(l, other, &got, &err), &err);
    CHECK(!strcmp(got.status, "running"));
    ledger_run_free(&got);
    ledger_close(l);
}

TEST(ledger_version_2_database_upgrades_keeping_its_runs)
{
    char path[700];
    db_path(path, sizeof path, "v2.db");
    coin_error err = {0};
    ledger *l;
    REQUIRE_OK(ledger_open(&l, path, &err), &err);
    int64_t run = add_train_run(l, &err);
    ledger_close(l);
    /* Back to what schema 2 was: no jobs, no out_dir, no trigger. */
    REQUIRE(raw_exec(path, "DROP TRIGGER samples_step; DROP TABLE jobs; DROP INDEX runs_out_dir; "
                     "ALTER TABLE runs DROP COLUMN out_dir; PRAGMA user_version = 2") == SQLITE_OK);
    REQUIRE_OK(ledger_open(&l, path, &err), &err);
    CHECK_EQ_INT(raw_int(path, "PRAGMA user_version"), 3);
    ledger_run r;
    REQUIRE_OK(ledger_get_run(l, run, &r, &err), &err);
    CHECK(!strcmp(r.trigger, "<cat-toy>"));
    CHECK(r.out_dir == NULL);
    ledger_run_free(&r);
    char args[] = "[\"train\",\"--resume\",\"/x\"]";
    CHECK(ledger_enqueue_job(l, run, args, "/", "cpu", &err) == 0);
    ledger_close(l);
}

TEST(ledger_job_queue_hands_out_each_job_once_in_order)
{
    char path[700];
    db_path(path, sizeof path, "queue.db");
    coin_error err = {0};
    ledger *l;
    REQUIRE_OK(ledger_open(&l, path, &err), &err);
    int64_t a = add_train_run(l, &err), b = add_train_run(l, &err), c = add_train_run(l, &err);
    REQUIRE(a > 0 && b > 0 && c > 0);
    REQUIRE_OK(ledger_enqueue_job(l, a, "[\"train\",\"a\"]", "/tmp", "cpu", &err), &err);
    REQUIRE_OK(ledger_enqueue_job(l, b, "[\"train\",\"b\"]", "/tmp", "cuda", &err), &err);
    REQUIRE_OK(ledger_enqueue_job(l, c, "[\"train\",\"c\"]", "/tmp", "cpu", &err), &err);
    CHECK(ledger_enqueue_job(l, c, "not json", "/tmp", "cpu", &err) != 0);
    int n = 0;
    REQUIRE_OK(ledger_count_queued(l, "cpu", &n, &err), &err);
    CHECK_EQ_INT(n, 2);
    REQUIRE_OK(ledger_count_queued(l, NULL, &n, &err), &err);
    CHECK_EQ_INT(n, 3);
    /* Two processes drain the cpu queue at once: each job goes to one. */
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    pid_t child = fork();
    if (child == 0) {
        ledger *cl;
        ledger_job j;
        int64_t got = 0;
        if (ledger_open(&cl, path, NULL) == 0 && ledger_claim_job(cl, "cpu", &j, NULL) == 0) {
            got = j.run;
            ledger_job_free(&j);
        }
        ledger_close(cl);
        _exit(write(fds[1], &got, sizeof got) == sizeof got ? 0 : 1);
    }
    ledger_job j;
    REQUIRE_OK(ledger_claim_job(l, "cpu", &j, &err), &err);
    int64_t mine = j.run;
    if (mine)
        CHECK(strstr(j.argv_json, mine == a ? "\"a\"" : "\"c\"") && !strcmp(j.cwd, "/tmp") &&
              j.attempts == 1);
    ledger_job_free(&j);
    int64_t theirs = -1;
    waitpid(child, NULL, 0);
    CHECK(read(fds[0], &theirs, sizeof theirs) == sizeof theirs);
    close(fds[0]);
    close(fds[1]);
    CHECK((mine == a && theirs == c) || (mine == c && theirs == a));
    /* The cpu queue is empty; the cuda job waits for its own worker. */
    REQUIRE_OK(ledger_claim_job(l, "cpu", &j, &err), &err);
    CHECK_EQ_INT(j.run, 0);
    REQUIRE_OK(ledger_claim_job(l, "cuda", &j, &err), &err);
    CHECK_EQ_INT(j.run, b);
    ledger_job_free(&j);
    ledger_run r;
    REQUIRE_OK(ledger_get_run(l, a, &r, &err), &err);
    CHECK(!strcmp(r.status, "running"));
    ledger_run_free(&r);
    /* A paused job is not handed out; queued again, it is. */
    REQUIRE_OK(ledger_set_run_status(l, a, "paused", NULL, &err), &err);
    REQUIRE_OK(ledger_claim_job(l, "cpu", &j, &err), &err);
    CHECK_EQ_INT(j.run, 0);
    REQUIRE_OK(ledger_get_job(l, a, &j, &err), &err);
    char *argv_json = strdup(j.argv_json), *cwd = strdup(j.cwd);
    ledger_job_free(&j);
    REQUIRE_OK(ledger_enqueue_job(l, a, argv_json, cwd, "cpu", &err), &err);
    free(argv_json);
    free(cwd);
    REQUIRE_OK(ledger_claim_job(l, "cpu", &j, &err), &err);
    CHECK_EQ_INT(j.run, a);
    CHECK_EQ_INT(j.attempts, 2);
    ledger_job_free(&j);
    CHECK(ledger_get_job(l, 999, &j, &err) == COIN_ENOTFOUND);
    ledger_close(l);
}

TEST(ledger_resumed_run_forgets_what_came_after_its_checkpoint)
{
    char path[700];
    db_path(path, sizeof path, "resume.db");
    coin_error err = {0};
    ledger *l;
    REQUIRE_OK(ledger_open(&l, path, &err), &err);
    ledger_run in = {.kind = "train", .trigger = "<r>", .steps_planned = 20, .out_dir = "/runs/r"};
    int64_t run;
    REQUIRE_OK(ledger_insert_run(l, &in, &run, &err), &err);
    int64_t found = 0;
    REQUIRE_OK(ledger_find_run_by_dir(l, "/runs/r", &found, &err), &err);
    CHECK_EQ_INT(found, run);
    REQUIRE_OK(ledger_find_run_by_dir(l, "/runs/other", &found, &err), &err);
    CHECK_EQ_INT(found, 0);
    int steps[12];
    float loss[12];
    for (int i = 0; i < 12; i++) {
        steps[i] = i + 1;
        loss[i] = 1.0f / (float)(i + 1);
    }
    REQUIRE_OK(ledger_record_losses(l, run, steps, loss, NULL, 12, &err), &err);
    REQUIRE_OK(ledger_insert_checkpoint(l, run, 5, "/runs/r/5", "aa", NULL, &err), &err);
    REQUIRE_OK(ledger_insert_checkpoint(l, run, 10, "/runs/r/10", "bb", NULL, &err), &err);
    REQUIRE_OK(ledger_set_run_status(l, run, "interrupted", "killed", &err), &err);
    /* The trainer resumes from the checkpoint at step 5 (the one at 10
     * was recorded, then lost with its state, say). */
    REQUIRE_OK(ledger_resume_run(l, run, 5, 0, &err), &err);
    ledger_run r;
    REQUIRE_OK(ledger_get_run(l, run, &r, &err), &err);
    CHECK(!strcmp(r.status, "running"));
    CHECK_EQ_INT(r.step_reached, 5);
    CHECK(r.error == NULL && r.ended_at == 0 && r.pid == getpid());
    ledger_run_free(&r);
    size_t n;
    int *got;
    REQUIRE_OK(ledger_loss_curve(l, run, &got, NULL, NULL, &n, &err), &err);
    CHECK_EQ_INT(n, 5);
    CHECK(n == 5 && got[4] == 5);
    free(got);
    ledger_checkpoint *c;
    REQUIRE_OK(ledger_list_checkpoints(l, run, &c, &n, &err), &err);
    CHECK(n == 1 && c[0].step == 5 && !strcmp(c[0].path, "/runs/r/5"));
    ledger_checkpoints_free(c, n);
    /* A pause asked meanwhile stands for a job (keep_request). */
    REQUIRE_OK(ledger_set_run_status(l, run, "paused", NULL, &err), &err);
    REQUIRE_OK(ledger_resume_run(l, run, 5, 1, &err), &err);
    REQUIRE_OK(ledger_get_run(l, run, &r, &err), &err);
    CHECK(!strcmp(r.status, "paused"));
    ledger_run_free(&r);
    CHECK(ledger_resume_run(l, 777, 0, 0, &err) == COIN_ENOTFOUND);
    ledger_close(l);
}

TEST(ledger_finish_run_leaves_a_run_queued_again_alone)
{
    char path[700];
    db_path(path, sizeof path, "finish.db");
    coin_error err = {0};
    ledger *l;
    REQUIRE_OK(ledger_open(&l, path, &err), &err);
    int64_t run = add_train_run(l, &err);
    REQUIRE_OK(ledger_set_run_status(l, run, "running", NULL, &err), &err);
    /* coin pause, then coin resume before this process ended: queued. */
    REQUIRE_OK(ledger_enqueue_job(l, run, "[\"train\"]", "/", "cpu", &err), &err);
    int changed = -1;
    REQUIRE_OK(ledger_finish_run(l, run, "paused", NULL, &changed, &err), &err);
    CHECK_EQ_INT(changed, 0);
    char status[16];
    REQUIRE_OK(ledger_get_status(l, run, status, &err), &err);
    CHECK(!strcmp(status, "queued"));
    /* Its own running run it finishes. */
    REQUIRE_OK(ledger_set_run_status(l, run, "running", NULL, &err), &err);
    REQUIRE_OK(ledger_finish_run(l, run, "done", NULL, &changed, &err), &err);
    CHECK_EQ_INT(changed, 1);
    REQUIRE_OK(ledger_get_status(l, run, status, &err), &err);
    CHECK(!strcmp(status, "done"));
    CHECK(ledger_get_status(l, 4242, status, &err) == COIN_ENOTFOUND);
    /* Models by the start of their hash, as AUTOMATIC1111 names them. */
    REQUIRE_OK(ledger_upsert_model(l, "/m/a.safetensors",
                                   "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                                   1, NULL, &err), &err);
    char *model;
    REQUIRE_OK(ledger_find_model(l, "0123456789", &model, &err), &err);
    CHECK(!strcmp(model, "/m/a.safetensors"));
    free(model);
    CHECK(ledger_find_model(l, "fedcba9876", &model, &err) == COIN_ENOTFOUND);
    CHECK_STR_CONTAINS(err.msg, "--model");
    CHECK(ledger_find_model(l, "xyz", &model, &err) == COIN_EINVAL);
    ledger_close(l);
}
