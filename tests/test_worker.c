/*
 * test_worker.c - the job queue, the detached worker and what they promise
 * when things go wrong: bin/coin is run as a user runs it, killed with
 * SIGKILL at random moments, left by its terminal, and starved of disk
 * space, and the ledger and the files on disk are checked after each.
 *
 * The training runs use the tiny test model and one 8x8 image, so a step
 * takes milliseconds; every random choice comes from a fixed seed, so a
 * failure can be replayed.
 */
#include "test.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pty.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/embedding.h"
#include "core/infotext.h"
#include "core/safetensors.h"
#include "db/ledger.h"
#include "cli_helpers.h"

#define MODEL "tests/golden/sd1/model.safetensors"

/* The training that the interrupted-run trials make: the tiny model on the
 * one image, batch 1, no previews.  Takes the images folder, the steps, the
 * checkpoint interval and the output folder. */
#define TRAIN_CMD                                                                        \
    "bin/coin train --model " MODEL " --images %s --token '<k>' --init hand --steps %d " \
    "--batch 1 --save-every %d --previews 0 --out %s --foreground"

static char out[65536];

static int worker_gone(const char *home);

/* Runs a shell command with COIN_HOME=home, capturing stdout+stderr (or
 * only stdout with stdout_only); returns its exit status. */
static int sh(const char *home, int stdout_only, const char *fmt, ...)
{
    char cmd[6000], full[6400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "{ COIN_HOME='%s'; export COIN_HOME; %s; } %s", home, cmd,
             stdout_only ? "2>/dev/null" : "2>&1");
    return test_capture(full, out, sizeof out);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* A folder with one training image. */
static void make_images(const char *dir, char *images, size_t len)
{
    snprintf(images, len, "%s/images", dir);
    sh(dir, 0, "mkdir -p %s && cp tests/golden/image/png_ga8.png %s/a.png", images, images);
}

static ledger *open_ledger(const char *home)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/ledger.db", home);
    return test_open_ledger(path);
}

/* The run recorded for a training folder (0: none). */
static int64_t run_of(ledger *l, const char *dir)
{
    char real[4096];
    int64_t id = 0;
    if (realpath(dir, real))
        ledger_find_run_by_dir(l, real, &id, NULL);
    return id;
}

static int integrity_ok(const char *home)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/ledger.db", home);
    sqlite3 *db = NULL;
    int ok = 0;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL) == SQLITE_OK) {
            ok = sqlite3_step(st) == SQLITE_ROW &&
                 !strcmp((const char *)sqlite3_column_text(st, 0), "ok");
            sqlite3_finalize(st);
        }
    }
    sqlite3_close(db);
    return ok;
}

/* Every checkpoint the ledger records for run exists with its sha256;
 * returns the highest recorded step. */
static int check_checkpoints(ledger *l, int64_t run, const char *when)
{
    ledger_checkpoint *c;
    size_t n;
    coin_error err = {0};
    int top = 0;
    if (ledger_list_checkpoints(l, run, &c, &n, &err)) {
        test_failed(__FILE__, __LINE__, "%s: %s", when, err.msg);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        uint8_t digest[32];
        char hex[65] = "";
        if (sha256_file(c[i].path, digest, NULL, NULL, NULL) == 0)
            sha256_hex(digest, hex);
        CHECK_MSG(c[i].sha256 && !strcmp(hex, c[i].sha256),
                  "%s: checkpoint %s (step %d) is missing or not what was recorded", when,
                  c[i].path, c[i].step);
        if (c[i].step > top)
            top = c[i].step;
    }
    ledger_checkpoints_free(c, n);
    return top;
}

/* The loss curve is steps 1..n without a gap; returns n. */
static int check_losses(ledger *l, int64_t run, const char *when)
{
    int *steps = NULL;
    size_t n = 0;
    if (ledger_loss_curve(l, run, &steps, NULL, NULL, &n, NULL))
        test_failed(__FILE__, __LINE__, "%s: the loss curve cannot be read", when);
    for (size_t i = 0; i < n; i++)
        if (steps[i] != (int)i + 1) {
            test_failed(__FILE__, __LINE__, "%s: loss %zu is of step %d", when, i, steps[i]);
            break;
        }
    free(steps);
    return (int)n;
}

static int count_temp_files(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += strstr(e->d_name, ".tmp") != NULL;
    if (d)
        closedir(d);
    return n;
}

/* The learned vectors of a training folder's final embedding. */
static int load_rows(const char *dir, float *rows, int cap)
{
    char path[1200];
    ti_embedding e;
    coin_error err = {0};
    snprintf(path, sizeof path, "%s/learned_embeds.safetensors", dir);
    if (embedding_load(&e, path, NULL, &err))
        return 0;
    int n = (int)(e.n_vectors * e.width);
    if (n > cap)
        n = 0;
    memcpy(rows, e.vectors, (size_t)n * sizeof(float));
    embedding_free(&e);
    return n;
}

/* What the interrupted-run trials share: a ledger home, the images folder,
 * and the run they must all end up equal to, made without interruption. */
typedef struct reference {
    char home[700], images[700];
    float *loss;                /* [steps] */
    float rows[4096];           /* the final vectors, n_rows floats */
    int n_rows;
} reference;

/* A finished run: done, every step's loss recorded once and equal to the
 * uninterrupted reference run's, and the same final vectors. */
static void check_finished(ledger *l, const char *dir, int steps, const reference *ref)
{
    int64_t run = run_of(l, dir);
    ledger_run r;
    coin_error err = {0};
    if (!run || ledger_get_run(l, run, &r, &err)) {
        test_failed(__FILE__, __LINE__, "%s: no finished run in the ledger", dir);
        return;
    }
    CHECK_MSG(!strcmp(r.status, "done"), "%s: run %lld is %s", dir, (long long)run, r.status);
    CHECK_EQ_INT(r.step_reached, steps);
    ledger_run_free(&r);
    float *loss = NULL;
    size_t n = 0;
    CHECK_EQ_INT(check_losses(l, run, dir), steps);
    if (ledger_loss_curve(l, run, NULL, &loss, NULL, &n, NULL) == 0 && n == (size_t)steps)
        CHECK_MSG(!memcmp(loss, ref->loss, n * sizeof *loss),
                  "%s: the resumed run's losses differ from the uninterrupted run's", dir);
    free(loss);
    check_checkpoints(l, run, dir);
    float rows[4096];
    CHECK_MSG(load_rows(dir, rows, 4096) == ref->n_rows && ref->n_rows > 0 &&
              !memcmp(rows, ref->rows, (size_t)ref->n_rows * sizeof(float)),
              "%s: the final embedding differs from the uninterrupted run's", dir);
    CHECK_EQ_INT(count_temp_files(dir), 0);
}

/* Sets up a trial in dir (home/, images/) and makes its reference: the
 * same training in ref/, never interrupted.  1 when it worked; the caller
 * frees ref->loss. */
static int reference_run(reference *ref, const char *dir, int steps, int save_every)
{
    char ref_dir[800];
    snprintf(ref->home, sizeof ref->home, "%s/home", dir);
    snprintf(ref_dir, sizeof ref_dir, "%s/ref", dir);
    make_images(dir, ref->images, sizeof ref->images);
    ref->loss = NULL;
    ref->n_rows = 0;
    if (sh(ref->home, 0, TRAIN_CMD, ref->images, steps, save_every, ref_dir) != 0) {
        test_failed(__FILE__, __LINE__, "the reference run failed: %s", out);
        return 0;
    }
    ledger *l = open_ledger(ref->home);
    size_t n = 0;
    if (l)
        ledger_loss_curve(l, run_of(l, ref_dir), NULL, &ref->loss, NULL, &n, NULL);
    ledger_close(l);
    ref->n_rows = load_rows(ref_dir, ref->rows, 4096);
    return n == (size_t)steps && ref->n_rows > 0;
}

static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

/* Starts bin/coin with args (NULL-terminated) and COIN_HOME=home, its
 * output into log; returns the process id. */
static pid_t start_coin(const char *home, const char *log, char *const args[])
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
        }
        setenv("COIN_HOME", home, 1);
        execv("bin/coin", args);
        _exit(127);
    }
    return pid;
}

#define CRASH_STEPS 150
#define CRASH_SAVE 3
#define CRASH_KILLS 20

TEST(worker_kill_9_at_random_moments_leaves_a_consistent_ledger_and_resume_finishes)
{
    const char *dir = test_tmpdir();
    char log[700];
    snprintf(log, sizeof log, "%s/crash.log", dir);
    reference ref;
    REQUIRE(reference_run(&ref, dir, CRASH_STEPS, CRASH_SAVE));
    const char *home = ref.home;
    char *images = ref.images;
    char steps[16], every[16];
    snprintf(steps, sizeof steps, "%d", CRASH_STEPS);
    snprintf(every, sizeof every, "%d", CRASH_SAVE);
    uint64_t seed = 0x5eed2026;
    int kills = 0, chain = 0, trials = 0;
    char crash[700];
    snprintf(crash, sizeof crash, "%s/crash%d", dir, chain);
    while (kills < CRASH_KILLS && trials < 4 * CRASH_KILLS && !test_has_failed()) {
        trials++;
        char state[800];
        snprintf(state, sizeof state, "%s/state.safetensors", crash);
        char *fresh[] = {"bin/coin", "train", "--model", MODEL, "--images", images, "--token",
                         "<k>", "--init", "hand", "--steps", steps, "--batch", "1",
                         "--save-every", every, "--previews", "0", "--out", crash,
                         "--foreground", NULL};
        char *resume[] = {"bin/coin", "train", "--resume", crash, "--foreground", NULL};
        pid_t pid = start_coin(home, log, access(state, F_OK) == 0 ? resume : fresh);
        REQUIRE(pid > 0);
        /* A moment anywhere from start-up (loading, hashing, encoding) to
         * deep into training, checkpoints included. */
        double delay = (double)(lcg(&seed) % 1000) / 1000.0, t0 = now_s();
        int status = 0, ended = 0;
        while (now_s() - t0 < delay && !(ended = waitpid(pid, &status, WNOHANG) == pid))
            usleep(2000);
        if (!ended) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            kills++;
        } else {
            /* It finished before the kill: the chain is complete. */
            CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "trial %d ended on its own with status %d (see %s)", trials, status, log);
        }
        /* The next coin start, then the checks. */
        CHECK_EQ_INT(sh(home, 0, "bin/coin runs"), 0);
        CHECK_MSG(integrity_ok(home), "trial %d: PRAGMA integrity_check is not ok", trials);
        ledger *l = open_ledger(home);
        REQUIRE(l);
        int64_t run = run_of(l, crash);
        if (run) {
            ledger_run r;
            char when[64];
            snprintf(when, sizeof when, "trial %d (run %lld)", trials, (long long)run);
            if (ledger_get_run(l, run, &r, NULL) == 0) {
                /* A kill that lands after the run recorded its end, while
                 * the process was exiting, finds a finished run: it counts
                 * as one, and is checked as one below. */
                if (!ended && !strcmp(r.status, "done")) {
                    ended = 1;
                    kills--;
                }
                CHECK_MSG(!strcmp(r.status, ended ? "done" : "interrupted"),
                          "%s: status %s after %s", when, r.status, ended ? "its end" : "kill -9");
                ledger_run_free(&r);
            }
            int top = check_checkpoints(l, run, when);
            int losses = check_losses(l, run, when);
            CHECK_MSG(losses >= top, "%s: losses to step %d, a checkpoint at %d", when, losses,
                      top);
            /* The state on disk is whole, and no older than the ledger's
             * newest checkpoint. */
            st_file *f;
            if (access(state, F_OK) == 0) {
                coin_error err = {0};
                if (st_open(&f, state, &err)) {
                    test_failed(__FILE__, __LINE__, "%s: %s", when, err.msg);
                } else {
                    CHECK_MSG(atoi(st_meta(f, "step") ? st_meta(f, "step") : "0") >= top,
                              "%s: the state is older than the recorded checkpoint %d", when, top);
                    st_close(f);
                }
            }
        }
        if (ended) {
            check_finished(l, crash, CRASH_STEPS, &ref);
            snprintf(crash, sizeof crash, "%s/crash%d", dir, ++chain);
        }
        ledger_close(l);
    }
    printf("    %d kills in %d trials, %d chain%s finished before the last\n", kills, trials, chain,
           chain == 1 ? "" : "s");
    CHECK_EQ_INT(kills, CRASH_KILLS);
    /* The last chain resumed (or started again) to its end. */
    char state[800];
    snprintf(state, sizeof state, "%s/state.safetensors", crash);
    if (access(state, F_OK) == 0)
        CHECK_EQ_INT(sh(home, 0, "bin/coin train --resume %s --foreground", crash), 0);
    else
        CHECK_EQ_INT(sh(home, 0, TRAIN_CMD, images, CRASH_STEPS, CRASH_SAVE, crash), 0);
    ledger *l = open_ledger(home);
    if (l)
        check_finished(l, crash, CRASH_STEPS, &ref);
    ledger_close(l);
    CHECK(integrity_ok(home));
    free(ref.loss);
}

/* Waits until run's status is want (at most timeout_s); 1 when it is. */
static int wait_status(const char *home, int64_t run, const char *want, double timeout_s)
{
    double t0 = now_s();
    while (now_s() - t0 < timeout_s) {
        ledger *l = open_ledger(home);
        ledger_run r;
        int same = 0;
        if (l && ledger_get_run(l, run, &r, NULL) == 0) {
            same = !strcmp(r.status, want);
            ledger_run_free(&r);
        }
        ledger_close(l);
        if (same)
            return 1;
        usleep(100000);
    }
    return 0;
}

TEST(worker_queue_runs_jobs_one_at_a_time_and_no_follow_prints_only_the_id)
{
    const char *dir = test_tmpdir();
    char home[700], images[700];
    snprintf(home, sizeof home, "%s/home", dir);
    make_images(dir, images, sizeof images);
    for (int i = 0; i < 2; i++) {
        CHECK_EQ_INT(sh(home, 1, "bin/coin train --model " MODEL " --images %s --token '<q%d>' "
                        "--init hand --steps 40 --batch 1 --save-every 10 --previews 0 "
                        "--out %s/q%d --no-follow", images, i, dir, i), 0);
        CHECK_MSG(!strcmp(out, i ? "2\n" : "1\n"), "--no-follow printed \"%s\"", out);
    }
    /* One worker per device: a second one says so and leaves. */
    CHECK_EQ_INT(sh(home, 0, "bin/coin worker"), 0);
    CHECK_STR_CONTAINS(out, "already running");
    CHECK(wait_status(home, 2, "done", 60));
    ledger *l = open_ledger(home);
    REQUIRE(l);
    ledger_run a, b;
    if (ledger_get_run(l, 1, &a, NULL) == 0 && ledger_get_run(l, 2, &b, NULL) == 0) {
        CHECK(!strcmp(a.status, "done"));
        CHECK(a.ended_at > 0 && b.started_at >= a.ended_at);
        CHECK_EQ_INT(a.step_reached, 40);
        ledger_run_free(&a);
        ledger_run_free(&b);
    }
    CHECK_EQ_INT(check_losses(l, 2, "run 2"), 40);
    ledger_close(l);
    /* The worker's log tells the order it ran them in. */
    CHECK_EQ_INT(sh(home, 0, "cat %s/logs/worker-cpu.log", home), 0);
    char *one = strstr(out, "run 1: done"), *two = strstr(out, "run 2: starting");
    CHECK(one && two && one < two);
    /* A sampling job's images are printed as they are recorded. */
    CHECK_EQ_INT(sh(home, 1, "bin/coin sample --model " MODEL " --prompt cat --steps 2 "
                    "--batch 2 --out %s/s.png", dir), 0);
    char want[1600];
    snprintf(want, sizeof want, "%s/s-0.png\n%s/s-1.png\n", dir, dir);
    CHECK_STR_CONTAINS(out, want);
    CHECK_EQ_INT(sh(home, 0, "bin/coin worker --help"), 0);
    CHECK_STR_CONTAINS(out, "one at a time");
    /* A job left in the queue with no worker (after a reboot, say):
     * coin worker drains it and exits. */
    for (int i = 0; i < 50 && !worker_gone(home); i++)
        usleep(100000);
    l = open_ledger(home);
    REQUIRE(l);
    ledger_run lr = {.kind = "sample", .steps_planned = 1};
    int64_t id = 0;
    char cwd[600], args[1600];
    REQUIRE(getcwd(cwd, sizeof cwd));
    snprintf(args, sizeof args, "[\"sample\",\"--model\",\"" MODEL "\",\"--prompt\",\"cat\","
             "\"--steps\",\"2\",\"--out\",\"%s/left.png\"]", dir);
    coin_error err = {0};
    CHECK(ledger_insert_run(l, &lr, &id, &err) == 0 &&
          ledger_enqueue_job(l, id, args, cwd, "cpu", &err) == 0);
    ledger_close(l);
    CHECK_EQ_INT(sh(home, 0, "bin/coin worker"), 0);
    char done[64];
    snprintf(done, sizeof done, "run %lld: done", (long long)id);
    CHECK_STR_CONTAINS(out, done);
    CHECK_STR_CONTAINS(out, "queue empty after 1 job");
    snprintf(args, sizeof args, "%s/left.png", dir);
    CHECK(access(args, F_OK) == 0);
}

TEST(worker_job_keeps_running_when_its_terminal_closes)
{
    const char *dir = test_tmpdir();
    char home[700], images[700], run_dir[700];
    snprintf(home, sizeof home, "%s/home", dir);
    snprintf(run_dir, sizeof run_dir, "%s/pty", dir);
    make_images(dir, images, sizeof images);
    int master;
    fflush(NULL);
    pid_t pid = forkpty(&master, NULL, NULL, NULL);
    REQUIRE(pid >= 0);
    if (pid == 0) {
        setenv("COIN_HOME", home, 1);
        execl("bin/coin", "coin", "train", "--model", MODEL, "--images", images, "--token",
              "<pty>", "--init", "hand", "--steps", "120", "--batch", "1", "--save-every", "20",
              "--previews", "0", "--out", run_dir, (char *)NULL);
        _exit(127);
    }
    /* Read what the follower shows until the run is training. */
    char seen[8192] = "";
    size_t got = 0;
    double t0 = now_s();
    fcntl(master, F_SETFL, O_NONBLOCK);
    while (now_s() - t0 < 30 && !strstr(seen, "step ")) {
        ssize_t k = read(master, seen + got, sizeof seen - 1 - got);
        if (k > 0) {
            got += (size_t)k;
            seen[got] = '\0';
        }
        if (got > sizeof seen - 200) {
            memmove(seen, seen + got - 100, 100);
            got = 100;
            seen[got] = '\0';
        }
        usleep(20000);
    }
    CHECK_MSG(strstr(seen, "step "), "the follower showed no progress: %s", seen);
    /* The terminal goes away: the follower gets SIGHUP and ends. */
    close(master);
    kill(pid, SIGHUP);
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) || WIFEXITED(status));
    ledger *l = open_ledger(home);
    int64_t run = l ? run_of(l, run_dir) : 0;
    ledger_close(l);
    REQUIRE(run > 0);
    CHECK_MSG(wait_status(home, run, "done", 60), "run %lld did not finish after its terminal "
              "closed", (long long)run);
    l = open_ledger(home);
    ledger_run r;
    if (l && ledger_get_run(l, run, &r, NULL) == 0) {
        CHECK_EQ_INT(r.step_reached, 120);
        ledger_run_free(&r);
    }
    ledger_close(l);
}

#define FULL_STEPS 30
#define FULL_SAVE 5

/* One full-disk trial: the run in dir, with writes failing after budget
 * bytes (the test hook), pauses; nothing recorded is lost; coin resume
 * finishes it exactly as the reference run. */
static void full_disk_trial(const reference *ref, const char *dir, long budget,
                            const char *expect_file)
{
    const char *home = ref->home;
    int rc = sh(home, 0, "COIN_TEST_ENOSPC_AFTER_BYTES=%ld " TRAIN_CMD, budget, ref->images,
                FULL_STEPS, FULL_SAVE, dir);
    CHECK_MSG(rc == 1, "budget %ld: exit %d: %s", budget, rc, out);
    CHECK_STR_CONTAINS(out, "paused: the disk is full");
    if (expect_file)
        CHECK_STR_CONTAINS(out, expect_file);
    const char *why = strstr(out, "paused: ");
    printf("    budget %ld: %.*s\n", budget, why ? (int)strcspn(why, ";") : 0, why ? why : "");
    ledger *l = open_ledger(home);
    if (!l)
        return;
    int64_t run = run_of(l, dir);
    ledger_run r;
    char when[64];
    snprintf(when, sizeof when, "budget %ld", budget);
    if (run && ledger_get_run(l, run, &r, NULL) == 0) {
        CHECK_MSG(!strcmp(r.status, "paused"), "%s: status %s", when, r.status);
        CHECK_STR_CONTAINS(r.error, "the disk is full");
        char resume[64];
        snprintf(resume, sizeof resume, "coin resume %lld", (long long)run);
        CHECK_STR_CONTAINS(r.error, resume);
        ledger_run_free(&r);
    } else {
        test_failed(__FILE__, __LINE__, "%s: no run recorded", when);
    }
    int top = check_checkpoints(l, run, when);
    CHECK(check_losses(l, run, when) >= top);
    ledger_close(l);
    CHECK_EQ_INT(count_temp_files(dir), 0);
    /* Space again: the run goes on from its last checkpoint to the end. */
    CHECK_MSG(sh(home, 0, "bin/coin resume %lld --foreground", (long long)run) == 0,
              "%s: resume: %s", when, out);
    l = open_ledger(home);
    if (l)
        check_finished(l, dir, FULL_STEPS, ref);
    ledger_close(l);
}

TEST(worker_full_disk_pauses_the_job_and_resume_finishes_it)
{
    const char *dir = test_tmpdir();
    reference ref;
    REQUIRE(reference_run(&ref, dir, FULL_STEPS, FULL_SAVE));
    const char *home = ref.home;
    char *images = ref.images;
    /* Budgets past the first checkpoint (about 6 kB: loss lines, two
     * embeddings, the state) up to most of the run, so the failing write
     * falls on each kind of file in turn. */
    uint64_t seed = 0xd15cf011;
    for (int i = 0; i < 6 && !test_has_failed(); i++) {
        char run_dir[800];
        snprintf(run_dir, sizeof run_dir, "%s/full%d", dir, i);
        long budget = 7000 + (long)(lcg(&seed) % 25000);
        full_disk_trial(&ref, run_dir, budget, NULL);
    }
    /* And on a loss.csv line: the budget runs out just after the first
     * checkpoint.  A probe run of FULL_SAVE steps writes the same bytes up
     * to there, but for its "steps" (one digit, not two) in the
     * configuration that the two embeddings and the state carry. */
    char probe[800], path[900];
    snprintf(probe, sizeof probe, "%s/probe", dir);
    CHECK_EQ_INT(sh(home, 0, TRAIN_CMD, images, FULL_SAVE, FULL_SAVE, probe), 0);
    struct stat e, st, csv;
    snprintf(path, sizeof path, "%s/learned_embeds-steps-%d.safetensors", probe, FULL_SAVE);
    int ok = stat(path, &e) == 0;
    snprintf(path, sizeof path, "%s/state.safetensors", probe);
    ok = ok && stat(path, &st) == 0;
    snprintf(path, sizeof path, "%s/loss.csv", probe);
    ok = ok && stat(path, &csv) == 0;
    long header = (long)strlen("step,loss,lr\n");   /* written before the hook counts */
    if (ok && !test_has_failed()) {
        char run_dir[800];
        long budget = (long)csv.st_size - header + 2 * ((long)e.st_size + 1) +
                      ((long)st.st_size + 1) + 10;
        /* The safetensors headers are padded to 8 bytes and name the
         * folder, so the estimate can be off by a little: nudge it until
         * the failing write is a loss line (each try in a folder of its
         * own), then run the trial proper. */
        for (int tries = 0; tries < 10; tries++) {
            snprintf(run_dir, sizeof run_dir, "%s/csvtr-%d", dir, tries);   /* as long as "fullcsv" */
            sh(home, 0, "COIN_TEST_ENOSPC_AFTER_BYTES=%ld " TRAIN_CMD, budget, images, FULL_STEPS,
               FULL_SAVE, run_dir);
            if (strstr(out, "loss.csv: cannot write"))
                break;
            budget += strstr(out, "state.safetensors") ? 8 : -8;
        }
        snprintf(run_dir, sizeof run_dir, "%s/fullcsv", dir);
        full_disk_trial(&ref, run_dir, budget, "loss.csv: cannot write");
    }
    CHECK_MSG(ok, "the probe run wrote no checkpoint");
    free(ref.loss);
}

/* 1 when no worker holds the device's lock. */
static int worker_gone(const char *home)
{
    char path[800];
    snprintf(path, sizeof path, "%s/worker-cpu.lock", home);
    int fd = open(path, O_RDWR | O_CLOEXEC), free_now = 1;
    if (fd >= 0) {
        free_now = flock(fd, LOCK_EX | LOCK_NB) == 0;
        close(fd);
    }
    return free_now;
}

TEST(worker_full_disk_pauses_a_sampling_job_and_resume_makes_the_rest)
{
    const char *dir = test_tmpdir();
    char home[700], one[800];
    snprintf(home, sizeof home, "%s/home", dir);
    /* The size of one image: the budget lets the first through only. */
    CHECK_EQ_INT(sh(home, 0, "bin/coin sample --model " MODEL " --prompt cat --steps 2 "
                    "--seed 5 --out %s/one.png --foreground", dir), 0);
    snprintf(one, sizeof one, "%s/one.png", dir);
    struct stat st;
    REQUIRE(stat(one, &st) == 0);
    int rc = sh(home, 0, "COIN_TEST_ENOSPC_AFTER_BYTES=%ld bin/coin sample --model " MODEL
                " --prompt cat --steps 2 --seed 5 --batch 3 --out %s/b.png",
                (long)st.st_size + 100, dir);
    CHECK_EQ_INT(rc, 1);
    CHECK_STR_CONTAINS(out, "paused at step 1 of 3: the disk is full");
    CHECK_STR_CONTAINS(out, "coin resume 2");
    CHECK_EQ_INT(count_temp_files(dir), 0);
    for (int i = 0; i < 50 && !worker_gone(home); i++)
        usleep(100000);
    CHECK_EQ_INT(sh(home, 1, "bin/coin resume 2"), 0);
    char want[2000];
    snprintf(want, sizeof want, "%s/b-1.png\n%s/b-2.png\n", dir, dir);
    CHECK_STR_CONTAINS(out, want);
    ledger *l = open_ledger(home);
    ledger_run r;
    if (l && ledger_get_run(l, 2, &r, NULL) == 0) {
        CHECK(!strcmp(r.status, "done"));
        CHECK_EQ_INT(r.step_reached, 3);    /* three images, none twice */
        ledger_run_free(&r);
    }
    ledger_close(l);
}

TEST(worker_export_run_takes_its_checkpoints_from_the_ledger)
{
    const char *dir = test_tmpdir();
    char home[700], images[700], run_dir[700], path[900];
    snprintf(home, sizeof home, "%s/home", dir);
    snprintf(run_dir, sizeof run_dir, "%s/exp", dir);
    make_images(dir, images, sizeof images);
    REQUIRE(sh(home, 0, "bin/coin train --model " MODEL " --images %s --token '<ex-1>' "
               "--init hand --steps 6 --batch 1 --save-every 3 --previews 0 --out %s "
               "--foreground", images, run_dir) == 0);
    static const char *const formats[] = {"diffusers", "a1111", "kohya"};
    for (int f = 0; f < 3; f++) {
        CHECK_EQ_INT(sh(home, 0, "bin/coin export 1 --format %s", formats[f]), 0);
        snprintf(path, sizeof path, "%s/ex-1-steps-6-%s.safetensors", run_dir, formats[f]);
        CHECK_STR_CONTAINS(out, path);
        ti_embedding got, want;
        coin_error err = {0};
        char step6[900];
        snprintf(step6, sizeof step6, "%s/learned_embeds-steps-6.safetensors", run_dir);
        if (embedding_load(&got, path, NULL, &err) == 0) {
            if (embedding_load(&want, step6, NULL, &err) == 0) {
                CHECK(got.n_vectors == want.n_vectors && got.width == want.width &&
                      !memcmp(got.vectors, want.vectors,
                              (size_t)(got.n_vectors * got.width) * sizeof(float)));
                embedding_free(&want);
            }
            /* diffusers keeps the trigger as its key; the others name it by the file */
            if (f == 0)
                CHECK(!strcmp(got.token, "<ex-1>"));
            embedding_free(&got);
        } else {
            test_failed(__FILE__, __LINE__, "%s", err.msg);
        }
    }
    /* An earlier checkpoint, and one that does not exist. */
    CHECK_EQ_INT(sh(home, 0, "bin/coin export 1 --format kohya --step 3 --out %s/k3.safetensors",
                    dir), 0);
    CHECK_EQ_INT(sh(home, 0, "bin/coin export 1 --format kohya --step 4"), 1);
    CHECK_STR_CONTAINS(out, "no checkpoint at step 4 (it has: 3, 6)");
    /* A checkpoint file changed since it was recorded is refused. */
    snprintf(path, sizeof path, "%s/learned_embeds-steps-3.safetensors", run_dir);
    FILE *fp = fopen(path, "r+b");
    REQUIRE(fp);
    fseek(fp, -1, SEEK_END);
    int last = fgetc(fp);
    fseek(fp, -1, SEEK_END);
    fputc(last ^ 1, fp);
    fclose(fp);
    CHECK_EQ_INT(sh(home, 0, "bin/coin export 1 --format a1111 --step 3"), 1);
    CHECK_STR_CONTAINS(out, "has changed since run 1 recorded it");
}

/* In a child process of its own mount namespace: a real tmpfs of 24 kB (six 4 kB pages)
 * holds the training folder (the ledger stays outside), the run fills it
 * and pauses, the tmpfs is made bigger, and coin resume finishes the run.
 * Returns a sentence on failure, NULL on success; 77 from the child means
 * this machine cannot mount one (not root, no namespaces). */
static const char *tmpfs_trial(const reference *ref, const char *fs)
{
    const char *home = ref->home;
    static char why[2000];
    if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mkdir(fs, 0755) != 0 || mount("tmpfs", fs, "tmpfs", 0, "size=24k") != 0)
        _exit(77);
    char run_dir[800];
    snprintf(run_dir, sizeof run_dir, "%s/run", fs);
    int rc = sh(home, 0, TRAIN_CMD, ref->images, FULL_STEPS, FULL_SAVE, run_dir);
    if (rc != 1 || !strstr(out, "paused: the disk is full") || !strstr(out, "No space left")) {
        snprintf(why, sizeof why, "on a full tmpfs: exit %d: %.1500s", rc, out);
        return why;
    }
    const char *said = strstr(out, "paused: ");
    printf("    tmpfs: %.*s\n", said ? (int)strcspn(said, ";") : 0, said ? said : "");
    ledger *l = open_ledger(home);
    ledger_run r;
    int64_t run = l ? run_of(l, run_dir) : 0;
    int paused = run && ledger_get_run(l, run, &r, NULL) == 0 && !strcmp(r.status, "paused");
    if (run && paused)
        ledger_run_free(&r);
    ledger_close(l);
    if (!paused)
        return "on a full tmpfs: the run is not paused in the ledger";
    if (count_temp_files(run_dir))
        return "on a full tmpfs: temporary files were left behind";
    /* Space again. */
    if (mount(NULL, fs, NULL, MS_REMOUNT, "size=4m") != 0)
        return "cannot make the tmpfs bigger";
    if (sh(home, 0, "bin/coin resume %lld --foreground", (long long)run) != 0) {
        snprintf(why, sizeof why, "resume after the tmpfs grew: %.1500s", out);
        return why;
    }
    l = open_ledger(home);
    if (l)
        check_finished(l, run_dir, FULL_STEPS, ref);
    ledger_close(l);
    return test_has_failed() ? "the resumed run is not the uninterrupted one (see above)" : NULL;
}

TEST(worker_full_tmpfs_pauses_the_job_and_resume_finishes_it)
{
    const char *dir = test_tmpdir();
    char fs[700];
    snprintf(fs, sizeof fs, "%s/fs", dir);
    reference ref;
    REQUIRE(reference_run(&ref, dir, FULL_STEPS, FULL_SAVE));
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        const char *why = tmpfs_trial(&ref, fs);
        if (why)
            printf("    %s\n", why);
        fflush(NULL);
        _exit(why ? 1 : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    free(ref.loss);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
        test_skip("no tmpfs can be mounted here (needs root or user namespaces)");
        return;
    }
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the tmpfs trial failed (status %d)",
              status);
}

/* The contents of a small file ("" when unreadable). */
static const char *slurp(const char *path)
{
    static char buf[16384];
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    buf[n] = '\0';
    if (f)
        fclose(f);
    return buf;
}

TEST(worker_ctrl_c_stops_following_not_the_job)
{
    const char *dir = test_tmpdir();
    char home[700], images[700], run_dir[700], log[700];
    snprintf(home, sizeof home, "%s/home", dir);
    snprintf(run_dir, sizeof run_dir, "%s/ctrlc", dir);
    snprintf(log, sizeof log, "%s/follow.log", dir);
    make_images(dir, images, sizeof images);
    char *args[] = {"bin/coin", "train", "--model", MODEL, "--images", images, "--token", "<c>",
                    "--init", "hand", "--steps", "200", "--batch", "1", "--save-every", "50",
                    "--previews", "0", "--out", run_dir, NULL};
    pid_t pid = start_coin(home, log, args);
    REQUIRE(pid > 0);
    double t0 = now_s();
    while (now_s() - t0 < 30 && !strstr(slurp(log), "running (its output"))
        usleep(20000);
    CHECK_STR_CONTAINS(slurp(log), "Ctrl-C stops following, not the run");
    kill(pid, SIGINT);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK_STR_CONTAINS(slurp(log), "stopped following; run 1 goes on in the background");
    CHECK(wait_status(home, 1, "done", 60));
}

TEST(worker_resume_fills_loss_rows_a_failed_write_left_out)
{
    const char *dir = test_tmpdir();
    char home[700], images[700], run_dir[700], db[800];
    snprintf(home, sizeof home, "%s/home", dir);
    snprintf(run_dir, sizeof run_dir, "%s/gaps", dir);
    snprintf(db, sizeof db, "%s/ledger.db", home);
    make_images(dir, images, sizeof images);
    REQUIRE(sh(home, 0, "bin/coin train --model " MODEL " --images %s --token '<g>' --init hand "
               "--steps 10 --batch 1 --save-every 5 --previews 0 --out %s --foreground", images,
               run_dir) == 0);
    ledger *l = open_ledger(home);
    REQUIRE(l);
    float *before = NULL;
    size_t n = 0;
    REQUIRE(ledger_loss_curve(l, 1, NULL, &before, NULL, &n, NULL) == 0 && n == 10);
    ledger_close(l);
    /* Rows a full ledger disk refused (a batch written before the last
     * checkpoint) are missing. */
    sqlite3 *raw;
    REQUIRE(sqlite3_open(db, &raw) == SQLITE_OK);
    CHECK(sqlite3_exec(raw, "DELETE FROM losses WHERE step IN (3, 4, 8)", NULL, NULL, NULL) ==
          SQLITE_OK);
    sqlite3_close(raw);
    CHECK_EQ_INT(sh(home, 0, "bin/coin train --resume %s --steps 15 --foreground", run_dir), 0);
    l = open_ledger(home);
    REQUIRE(l);
    CHECK_EQ_INT(check_losses(l, 1, "after resume"), 15);
    float *after = NULL;
    if (ledger_loss_curve(l, 1, NULL, &after, NULL, &n, NULL) == 0 && n == 15)
        CHECK(!memcmp(after, before, 10 * sizeof(float)));
    free(after);
    free(before);
    ledger_close(l);
}

TEST(worker_sampling_job_stops_between_images_and_resume_makes_the_rest)
{
    const char *dir = test_tmpdir();
    char home[700];
    snprintf(home, sizeof home, "%s/home", dir);
    CHECK_EQ_INT(sh(home, 1, "bin/coin sample --model " MODEL " --prompt cat --steps 20 "
                    "--batch 12 --out %s/m.png --no-follow", dir), 0);
    CHECK(!strcmp(out, "1\n"));
    /* Stopped once it has made an image or two. */
    double t0 = now_s();
    int made = 0;
    while (now_s() - t0 < 30 && made < 1) {
        ledger *l = open_ledger(home);
        ledger_run r;
        if (l && ledger_get_run(l, 1, &r, NULL) == 0) {
            made = r.step_reached;
            ledger_run_free(&r);
        }
        ledger_close(l);
        usleep(50000);
    }
    CHECK_EQ_INT(sh(home, 0, "bin/coin stop 1"), 0);
    CHECK_STR_CONTAINS(out, "will stop after its current image");
    CHECK(wait_status(home, 1, "stopped", 30));
    ledger *l = open_ledger(home);
    ledger_run r;
    int before = 0;
    if (l && ledger_get_run(l, 1, &r, NULL) == 0) {
        before = r.step_reached;
        ledger_run_free(&r);
    }
    ledger_close(l);
    CHECK_MSG(before >= 1 && before < 12, "%d images before the stop", before);
    for (int i = 0; i < 50 && !worker_gone(home); i++)
        usleep(100000);
    CHECK_EQ_INT(sh(home, 1, "bin/coin resume 1"), 0);
    char last[800];
    snprintf(last, sizeof last, "%s/m-11.png\n", dir);
    CHECK_STR_CONTAINS(out, last);
    l = open_ledger(home);
    if (l && ledger_get_run(l, 1, &r, NULL) == 0) {
        CHECK(!strcmp(r.status, "done"));
        CHECK_EQ_INT(r.step_reached, 12);   /* each image recorded once */
        ledger_run_free(&r);
    }
    ledger_close(l);
}
