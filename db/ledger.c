/*
 * ledger.c - the run ledger on SQLite (see ledger.h).
 *
 * The schema lives in the migrations table below: migration i takes a
 * database from user_version i to i + 1, so a database from any older coin
 * is brought forward step by step inside one IMMEDIATE transaction, and two
 * processes opening a fresh file at once cannot both migrate it.  Every
 * statement that carries user data is prepared and bound; only the fixed
 * schema text goes through sqlite3_exec.  Write transactions start with
 * BEGIN IMMEDIATE: a deferred transaction that later wants to write can fail
 * with SQLITE_BUSY at once, without the busy handler being consulted, when
 * another connection wrote in between; taking the write lock up front lets
 * the busy timeout do its job.
 */
#include "db/ledger.h"
#include "core/fileio.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <sqlite3.h>
#include <signal.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* How long a writer waits for another writer before giving up.  Loss batches
 * commit in milliseconds, so this is only reached when something is wrong. */
#define LEDGER_BUSY_MS 10000

struct ledger {
    sqlite3 *db;
    char *path;
    sqlite3_stmt *status_st;    /* ledger_get_status's, prepared once: it runs every step */
};

static const char *const migrations[LEDGER_SCHEMA_VERSION] = {
    /* 0 -> 1: the first schema. */
    "CREATE TABLE models("
    "  id INTEGER PRIMARY KEY,"
    "  path TEXT NOT NULL,"
    "  sha256 TEXT NOT NULL UNIQUE,"
    "  version INTEGER NOT NULL DEFAULT 0,"
    "  added_at INTEGER NOT NULL);"
    "CREATE TABLE runs("
    "  id INTEGER PRIMARY KEY,"
    "  kind TEXT NOT NULL CHECK(kind IN ('train','sample')),"
    "  config_json TEXT NOT NULL DEFAULT '{}' CHECK(json_valid(config_json)),"
    "  trigger TEXT,"
    "  initializer TEXT,"
    "  model_id INTEGER REFERENCES models(id),"
    "  images_dir TEXT,"
    "  image_hashes_json TEXT NOT NULL DEFAULT '[]' CHECK(json_valid(image_hashes_json)),"
    "  backend TEXT,"
    "  precision TEXT,"
    "  threads INTEGER NOT NULL DEFAULT 0,"
    "  coin_version TEXT,"
    "  host TEXT,"
    "  status TEXT NOT NULL DEFAULT 'queued' CHECK(status IN"
    "    ('queued','running','paused','stopped','done','failed','interrupted')),"
    "  steps_planned INTEGER NOT NULL DEFAULT 0,"
    "  step_reached INTEGER NOT NULL DEFAULT 0,"
    "  created_at INTEGER NOT NULL,"
    "  started_at INTEGER,"
    "  ended_at INTEGER,"
    "  error TEXT);"
    "CREATE INDEX runs_status ON runs(status);"
    /* WITHOUT ROWID: the (run, step) key is the table's own b-tree, so a
     * curve is one range scan with the values in the leaves. */
    "CREATE TABLE losses("
    "  run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,"
    "  step INTEGER NOT NULL,"
    "  loss REAL,"              /* NULL: a NaN loss (SQLite stores NaN as NULL) */
    "  lr REAL,"
    "  PRIMARY KEY(run, step)) WITHOUT ROWID;"
    "CREATE TABLE checkpoints("
    "  id INTEGER PRIMARY KEY,"
    "  run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,"
    "  step INTEGER NOT NULL,"
    "  path TEXT NOT NULL,"
    "  sha256 TEXT,"
    "  created_at INTEGER NOT NULL,"
    "  UNIQUE(run, step));"
    "CREATE TABLE samples("
    "  id INTEGER PRIMARY KEY,"
    "  run INTEGER REFERENCES runs(id) ON DELETE SET NULL,"
    "  checkpoint INTEGER REFERENCES checkpoints(id) ON DELETE SET NULL,"
    "  prompt TEXT NOT NULL,"
    "  negative TEXT,"
    "  seed TEXT NOT NULL,"     /* decimal uint64: INTEGER would wrap past 2^63 */
    "  steps INTEGER NOT NULL,"
    "  guidance REAL NOT NULL,"
    "  sampler TEXT,"
    "  schedule TEXT,"
    "  width INTEGER NOT NULL,"
    "  height INTEGER NOT NULL,"
    "  rng TEXT,"
    "  model_sha256 TEXT,"
    "  embeddings_json TEXT NOT NULL DEFAULT '[]' CHECK(json_valid(embeddings_json)),"
    "  image_path TEXT,"
    "  image_sha256 TEXT,"
    "  created_at INTEGER NOT NULL);"
    "CREATE INDEX samples_run ON samples(run);"
    "CREATE INDEX samples_checkpoint ON samples(checkpoint);"
    "CREATE INDEX checkpoints_run ON checkpoints(run);"
    "CREATE TABLE ratings("
    "  sample INTEGER PRIMARY KEY REFERENCES samples(id) ON DELETE CASCADE,"
    "  good INTEGER NOT NULL CHECK(good IN (0,1)),"
    "  note TEXT,"
    "  rated_at INTEGER NOT NULL);",
    /* 1 -> 2: the process that runs a run, to tell a crash from a live job. */
    "ALTER TABLE runs ADD COLUMN pid INTEGER NOT NULL DEFAULT 0;",
    /* 2 -> 3: the job queue.  A job is the command line that makes a run,
     * kept so that a worker started later (or again, after a crash) can run
     * it; its state is the run's status.  out_dir finds the run that a
     * training folder belongs to, so a resumed run continues its own row. */
    "CREATE TABLE jobs("
    "  run INTEGER PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,"
    "  argv_json TEXT NOT NULL CHECK(json_valid(argv_json)),"
    "  cwd TEXT NOT NULL,"
    "  device TEXT NOT NULL DEFAULT 'cpu',"
    "  queued_at INTEGER NOT NULL,"
    "  attempts INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX jobs_device ON jobs(device, queued_at);"
    "ALTER TABLE runs ADD COLUMN out_dir TEXT;"
    "CREATE INDEX runs_out_dir ON runs(out_dir);"
    /* A sampling run's step is the number of images it has recorded. */
    "CREATE TRIGGER samples_step AFTER INSERT ON samples "
    "WHEN NEW.run IS NOT NULL BEGIN "
    "  UPDATE runs SET step_reached = (SELECT COUNT(*) FROM samples WHERE run = NEW.run) "
    "  WHERE id = NEW.run AND kind = 'sample'; END;",
};

static const char *const run_statuses[] = {
    "queued", "running", "paused", "stopped", "done", "failed", "interrupted",
};

/* ---- errors ------------------------------------------------------------ */

static coin_status status_of(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_NOMEM: return COIN_ENOMEM;
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_RANGE: return COIN_EINVAL;
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT: return COIN_EFORMAT;
    default: return COIN_EIO;
    }
}

/* "ledger PATH: WHAT: sqlite's message", with the code that fits rc. */
static int db_fail(ledger *l, coin_error *err, int rc, const char *what)
{
    return coin_fail(err, status_of(rc), "ledger %s: %s: %s", l->path, what,
                     sqlite3_errmsg(l->db));
}

/* ---- small helpers ----------------------------------------------------- */

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

static int exec(ledger *l, const char *sql, const char *what, coin_error *err)
{
    int rc = sqlite3_exec(l->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : db_fail(l, err, rc, what);
}

static int prepare(ledger *l, const char *sql, sqlite3_stmt **st, const char *what,
                   coin_error *err)
{
    int rc = sqlite3_prepare_v2(l->db, sql, -1, st, NULL);
    return rc == SQLITE_OK ? 0 : db_fail(l, err, rc, what);
}

static int begin(ledger *l, const char *what, coin_error *err)
{
    return exec(l, "BEGIN IMMEDIATE", what, err);
}

static int commit(ledger *l, const char *what, coin_error *err)
{
    int rc = sqlite3_exec(l->db, "COMMIT", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        return 0;
    db_fail(l, err, rc, what);
    sqlite3_exec(l->db, "ROLLBACK", NULL, NULL, NULL);
    return err ? err->code : status_of(rc);
}

static void rollback(ledger *l)
{
    /* Keeps the caller's error message: the rollback's own outcome adds
     * nothing (it fails only when there is no transaction left). */
    sqlite3_exec(l->db, "ROLLBACK", NULL, NULL, NULL);
}

/* Binds s, or NULL when s is NULL. */
static int bind_text(sqlite3_stmt *st, int i, const char *s)
{
    return s ? sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i);
}

/* Binds id, or NULL when id is 0 (the API's "none"). */
static int bind_id(sqlite3_stmt *st, int i, int64_t id)
{
    return id ? sqlite3_bind_int64(st, i, id) : sqlite3_bind_null(st, i);
}

/* A malloc'd copy of column i, NULL for NULL (or out of memory, which the
 * caller cannot tell apart; the readers below treat a missing string as
 * absent rather than failing the whole read). */
static char *col_dup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? strdup((const char *)t) : NULL;
}

static void col_copy(sqlite3_stmt *st, int i, char *dst, size_t cap)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(dst, cap, "%s", t ? (const char *)t : "");
}

static int valid_status(const char *s)
{
    for (size_t i = 0; i < sizeof run_statuses / sizeof *run_statuses; i++)
        if (!strcmp(s, run_statuses[i]))
            return 1;
    return 0;
}

/* "ledger PATH has no NOUN ID", for a lookup that found nothing. */
static int no_such(ledger *l, coin_error *err, const char *noun, int64_t id)
{
    return coin_fail(err, COIN_ENOTFOUND, "ledger %s has no %s %lld", l->path, noun,
                     (long long)id);
}

/* Steps st to its first row: 0 when there is one to read, else no_such's
 * error when the query found nothing, SQLite's when it failed.  The caller
 * finalizes or resets st. */
static int step_row(ledger *l, sqlite3_stmt *st, const char *noun, int64_t id, const char *what,
                    coin_error *err)
{
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW)
        return 0;
    return s == SQLITE_DONE ? no_such(l, err, noun, id) : db_fail(l, err, s, what);
}

/* Steps a statement that returns no rows (inside a transaction the caller
 * holds) and finalizes it. */
static int step_done(ledger *l, sqlite3_stmt *st, const char *what, coin_error *err)
{
    int s = sqlite3_step(st);
    int rc = s == SQLITE_DONE ? 0 : db_fail(l, err, s, what);
    sqlite3_finalize(st);
    return rc;
}

/* Ends the transaction begun with begin(): commits when rc is 0, rolls back
 * (keeping rc and its message) otherwise. */
static int end_tx(ledger *l, int rc, const char *what, coin_error *err)
{
    if (rc) {
        rollback(l);
        return rc;
    }
    return commit(l, what, err);
}

/* A one-row query of one integer column with text as its ?1 (NULL binds
 * NULL; a query without parameters ignores it): *v gets the value, and
 * keeps what it had when there is no row. */
static int query_int64(ledger *l, const char *sql, const char *text, int64_t *v,
                       const char *what, coin_error *err)
{
    sqlite3_stmt *st;
    int rc = prepare(l, sql, &st, what, err);
    if (rc)
        return rc;
    if (sqlite3_bind_parameter_count(st) > 0)
        bind_text(st, 1, text);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW)
        *v = sqlite3_column_int64(st, 0);
    else if (s != SQLITE_DONE)
        rc = db_fail(l, err, s, what);
    sqlite3_finalize(st);
    return rc;
}

/* ---- paths ------------------------------------------------------------- */


int ledger_default_path(char *buf, size_t len, coin_error *err)
{
    const char *home = getenv("COIN_HOME"), *user = getenv("HOME");
    char dir[4096];
    int n;
    if (home && *home)
        n = snprintf(dir, sizeof dir, "%s", home);
    else if (user && *user)
        n = snprintf(dir, sizeof dir, "%s/.local/share/coin", user);
    else
        return coin_fail(err, COIN_EINVAL,
                         "neither COIN_HOME nor HOME is set, so there is no place for the "
                         "ledger; set COIN_HOME to a folder");
    if (n < 0 || (size_t)n >= sizeof dir)
        return coin_fail(err, COIN_EINVAL, "the ledger folder name is too long");
    while (n > 1 && dir[n - 1] == '/')
        dir[--n] = '\0';
    int rc = path_make_dirs(dir, err);
    if (rc)
        return rc;
    n = snprintf(buf, len, "%s/ledger.db", dir);
    if (n < 0 || (size_t)n >= len)
        return coin_fail(err, COIN_EINVAL, "the ledger path %s/ledger.db does not fit in %zu bytes",
                         dir, len);
    return 0;
}

/* ---- open and migrate -------------------------------------------------- */

static int read_user_version(ledger *l, int *v, coin_error *err)
{
    int64_t got = 0;
    int rc = query_int64(l, "PRAGMA user_version", NULL, &got, "reading the schema version", err);
    *v = (int)got;
    return rc;
}

static int migrate(ledger *l, coin_error *err)
{
    /* The common case, an up-to-date ledger, needs no write lock: a reader
     * opening while the worker commits should not queue behind it. */
    int v = 0;
    int rc = read_user_version(l, &v, err);
    if (rc || v == LEDGER_SCHEMA_VERSION)
        return rc;
    rc = begin(l, "locking the database to upgrade its schema", err);
    if (rc)
        return rc;
    /* Read again under the lock: another process may have migrated since. */
    rc = read_user_version(l, &v, err);
    if (!rc && v > LEDGER_SCHEMA_VERSION)
        rc = coin_fail(err, COIN_EUNSUPPORTED,
                       "ledger %s has schema version %d, newer than version %d that this coin "
                       "understands; it was written by a newer coin: upgrade coin, or set "
                       "COIN_HOME to use another ledger",
                       l->path, v, LEDGER_SCHEMA_VERSION);
    for (; !rc && v < LEDGER_SCHEMA_VERSION; v++) {
        char what[96], pragma[48];
        snprintf(what, sizeof what, "upgrading the schema from version %d to %d", v, v + 1);
        rc = exec(l, migrations[v], what, err);
        /* PRAGMA takes no bound parameters; v + 1 is ours, not user data. */
        snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", v + 1);
        if (!rc)
            rc = exec(l, pragma, what, err);
    }
    return end_tx(l, rc, "committing the schema", err);
}

int ledger_open(ledger **out, const char *path, coin_error *err)
{
    *out = NULL;
    if (!path || !*path)
        return coin_fail(err, COIN_EINVAL, "no ledger path given");

    /* SQLite only says "unable to open database file" for a missing folder;
     * name the folder instead. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) {
        if (slash == dir)
            slash[1] = '\0';
        else
            *slash = '\0';
        struct stat sb;
        if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
            return coin_fail(err, COIN_ENOTFOUND,
                             "cannot open ledger %s: the folder %s does not exist", path, dir);
    }

    ledger *l = calloc(1, sizeof *l);
    if (!l || !(l->path = strdup(path))) {
        free(l);
        return coin_fail(err, COIN_ENOMEM, "out of memory opening ledger %s", path);
    }
    int rc = sqlite3_open_v2(path, &l->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             NULL);
    if (rc != SQLITE_OK) {
        rc = l->db ? db_fail(l, err, rc, "opening")
                   : coin_fail(err, COIN_ENOMEM, "out of memory opening ledger %s", path);
        ledger_close(l);
        return rc;
    }
    sqlite3_extended_result_codes(l->db, 1);
    sqlite3_busy_timeout(l->db, LEDGER_BUSY_MS);

    /* journal_mode=WAL is the first real read of the file, so a file that is
     * not SQLite fails here. */
    sqlite3_stmt *st = NULL;
    rc = prepare(l, "PRAGMA journal_mode = WAL", &st, "switching to WAL mode", err);
    if (!rc) {
        int s = sqlite3_step(st);
        if (s != SQLITE_ROW)
            rc = db_fail(l, err, s, "switching to WAL mode");
        else if (strcmp((const char *)sqlite3_column_text(st, 0), "wal") != 0)
            rc = coin_fail(err, COIN_EIO, "ledger %s: the database refused WAL mode (got %s)",
                           path, (const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
    }
    /* synchronous=NORMAL is durable across application crashes in WAL mode
     * and makes each loss batch commit without an fsync. */
    if (!rc)
        rc = exec(l, "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL",
                  "setting up the connection", err);
    if (!rc)
        rc = migrate(l, err);
    if (rc) {
        ledger_close(l);
        return rc;
    }
    *out = l;
    return 0;
}

void ledger_close(ledger *l)
{
    if (!l)
        return;
    sqlite3_finalize(l->status_st);
    sqlite3_close_v2(l->db);
    free(l->path);
    free(l);
}

const char *ledger_path(const ledger *l)
{
    return l->path;
}

/* ---- one-statement writes ---------------------------------------------- */

/* Steps a prepared write to its end inside BEGIN IMMEDIATE ... COMMIT and
 * finalizes it.  When id is not NULL the statement returns one row (RETURNING
 * id) whose first column goes to *id once the write has committed; changes
 * gets the number of rows changed. */
static int run_write(ledger *l, sqlite3_stmt *st, int64_t *id, int *changes, const char *what,
                     coin_error *err)
{
    int rc = begin(l, what, err);
    if (rc) {
        sqlite3_finalize(st);
        return rc;
    }
    int64_t got = 0;
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW)
        got = sqlite3_column_int64(st, 0);
    if (s != SQLITE_DONE)
        rc = db_fail(l, err, s, what);
    else if (changes)
        *changes = sqlite3_changes(l->db);
    sqlite3_finalize(st);
    rc = end_tx(l, rc, what, err);
    if (!rc && id)
        *id = got;
    return rc;
}

int ledger_upsert_model(ledger *l, const char *path, const char *sha256, int version,
                        int64_t *id, coin_error *err)
{
    if (!path || !sha256)
        return coin_fail(err, COIN_EINVAL, "ledger %s: a model needs a path and a sha256",
                         l->path);
    sqlite3_stmt *st;
    int rc = prepare(l,
                     "INSERT INTO models(path, sha256, version, added_at) VALUES(?,?,?,?) "
                     "ON CONFLICT(sha256) DO UPDATE SET path = excluded.path, "
                     "version = CASE WHEN excluded.version != 0 THEN excluded.version "
                     "ELSE version END RETURNING id",
                     &st, "recording a model", err);
    if (rc)
        return rc;
    bind_text(st, 1, path);
    bind_text(st, 2, sha256);
    sqlite3_bind_int(st, 3, version);
    sqlite3_bind_int64(st, 4, now_s());
    return run_write(l, st, id, NULL, "recording a model", err);
}

/* ---- runs -------------------------------------------------------------- */

int ledger_insert_run(ledger *l, const ledger_run *r, int64_t *id, coin_error *err)
{
    if (!r->kind || (strcmp(r->kind, "train") && strcmp(r->kind, "sample")))
        return coin_fail(err, COIN_EINVAL, "ledger %s: a run's kind is 'train' or 'sample', not '%s'",
                         l->path, r->kind ? r->kind : "(none)");
    if (r->status && !valid_status(r->status))
        return coin_fail(err, COIN_EINVAL, "ledger %s: unknown run status '%s'", l->path,
                         r->status);
    sqlite3_stmt *st;
    int rc = prepare(l,
                     "INSERT INTO runs(kind, config_json, trigger, initializer, model_id, "
                     "images_dir, image_hashes_json, backend, precision, threads, coin_version, "
                     "host, status, steps_planned, created_at, out_dir) "
                     "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
                     &st, "recording a run", err);
    if (rc)
        return rc;
    bind_text(st, 1, r->kind);
    bind_text(st, 2, r->config_json ? r->config_json : "{}");
    bind_text(st, 3, r->trigger);
    bind_text(st, 4, r->initializer);
    bind_id(st, 5, r->model_id);
    bind_text(st, 6, r->images_dir);
    bind_text(st, 7, r->image_hashes_json ? r->image_hashes_json : "[]");
    bind_text(st, 8, r->backend);
    bind_text(st, 9, r->precision);
    sqlite3_bind_int(st, 10, r->threads);
    bind_text(st, 11, r->coin_version);
    bind_text(st, 12, r->host);
    bind_text(st, 13, r->status ? r->status : "queued");
    sqlite3_bind_int(st, 14, r->steps_planned);
    sqlite3_bind_int64(st, 15, now_s());
    bind_text(st, 16, r->out_dir);
    return run_write(l, st, id, NULL, "recording a run", err);
}

void ledger_run_free(ledger_run *r)
{
    if (!r)
        return;
    const char *owned[] = {r->kind,          r->config_json, r->trigger,      r->initializer,
                           r->model_path,    r->images_dir,  r->image_hashes_json,
                           r->backend,       r->precision,   r->coin_version, r->host,
                           r->status,        r->error,       r->out_dir};
    for (size_t i = 0; i < sizeof owned / sizeof *owned; i++)
        free((char *)owned[i]);
    memset(r, 0, sizeof *r);
}

int ledger_get_run(ledger *l, int64_t id, ledger_run *out, coin_error *err)
{
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st;
    int rc = prepare(l,
                     "SELECT r.id, r.kind, r.config_json, r.trigger, r.initializer, r.model_id, "
                     "m.path, r.images_dir, r.image_hashes_json, r.backend, r.precision, "
                     "r.threads, r.coin_version, r.host, r.status, r.steps_planned, "
                     "r.step_reached, r.created_at, r.started_at, r.ended_at, r.error, "
                     "r.out_dir, r.pid "
                     "FROM runs r LEFT JOIN models m ON m.id = r.model_id WHERE r.id = ?",
                     &st, "reading a run", err);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, id);
    rc = step_row(l, st, "run", id, "reading a run", err);
    if (!rc) {
        out->id = sqlite3_column_int64(st, 0);
        out->kind = col_dup(st, 1);
        out->config_json = col_dup(st, 2);
        out->trigger = col_dup(st, 3);
        out->initializer = col_dup(st, 4);
        out->model_id = sqlite3_column_int64(st, 5);
        out->model_path = col_dup(st, 6);
        out->images_dir = col_dup(st, 7);
        out->image_hashes_json = col_dup(st, 8);
        out->backend = col_dup(st, 9);
        out->precision = col_dup(st, 10);
        out->threads = sqlite3_column_int(st, 11);
        out->coin_version = col_dup(st, 12);
        out->host = col_dup(st, 13);
        out->status = col_dup(st, 14);
        out->steps_planned = sqlite3_column_int(st, 15);
        out->step_reached = sqlite3_column_int(st, 16);
        out->created_at = sqlite3_column_int64(st, 17);
        out->started_at = sqlite3_column_int64(st, 18);
        out->ended_at = sqlite3_column_int64(st, 19);
        out->error = col_dup(st, 20);
        out->out_dir = col_dup(st, 21);
        out->pid = sqlite3_column_int64(st, 22);
    }
    sqlite3_finalize(st);
    return rc;
}

/* The status update shared by ledger_set_run_status and ledger_finish_run:
 * sql takes ?1 status, ?2 error, ?3 now, ?4 run and ?5 this process's id;
 * *changed gets the rows it changed. */
static int write_status(ledger *l, const char *sql, int64_t run, const char *status,
                        const char *error_text, int *changed, const char *what,
                        coin_error *err)
{
    if (!status || !valid_status(status))
        return coin_fail(err, COIN_EINVAL,
                         "ledger %s: unknown run status '%s' (one of queued, running, paused, "
                         "stopped, done, failed, interrupted)",
                         l->path, status ? status : "(none)");
    sqlite3_stmt *st;
    int rc = prepare(l, sql, &st, what, err);
    if (rc)
        return rc;
    bind_text(st, 1, status);
    bind_text(st, 2, error_text);
    sqlite3_bind_int64(st, 3, now_s());
    sqlite3_bind_int64(st, 4, run);
    sqlite3_bind_int64(st, 5, (int64_t)getpid());
    return run_write(l, st, NULL, changed, what, err);
}

int ledger_set_run_status(ledger *l, int64_t run, const char *status,
                          const char *error_text, coin_error *err)
{
    /* A run that runs again after an interruption loses its old end time. */
    int changed = 0;
    int rc = write_status(l,
                          "UPDATE runs SET status = ?1, error = ?2, "
                          "started_at = CASE WHEN ?1 = 'running' THEN COALESCE(started_at, ?3) "
                          "ELSE started_at END, "
                          "pid = CASE WHEN ?1 = 'running' THEN ?5 ELSE pid END, "
                          "ended_at = CASE WHEN ?1 IN ('stopped','done','failed','interrupted') "
                          "THEN ?3 ELSE NULL END WHERE id = ?4",
                          run, status, error_text, &changed, "setting a run's status", err);
    return !rc && !changed ? no_such(l, err, "run", run) : rc;
}

int ledger_mark_interrupted(ledger *l, int *n, coin_error *err)
{
    sqlite3_stmt *st;
    int rc = prepare(l,
                     "UPDATE runs SET status = 'interrupted', ended_at = ? "
                     "WHERE status = 'running'",
                     &st, "marking interrupted runs", err);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, now_s());
    int changed = 0;
    rc = run_write(l, st, NULL, &changed, "marking interrupted runs", err);
    if (!rc && n)
        *n = changed;
    return rc;
}

int ledger_mark_dead_runs(ledger *l, const char *host, int *n, coin_error *err)
{
    /* A run is dead when its process on this host is gone: kill(pid, 0)
     * asks without sending anything. */
    sqlite3_stmt *st;
    int64_t dead[256];
    int n_dead = 0;
    int rc = prepare(l, "SELECT id, pid FROM runs WHERE status = 'running' AND host = ?",
                     &st, "looking for crashed runs", err);
    if (rc)
        return rc;
    bind_text(st, 1, host);
    while (sqlite3_step(st) == SQLITE_ROW && n_dead < 256) {
        pid_t pid = (pid_t)sqlite3_column_int64(st, 1);
        if (pid <= 0 || (kill(pid, 0) == -1 && errno == ESRCH))
            dead[n_dead++] = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    for (int i = 0; i < n_dead && !rc; i++)
        rc = ledger_set_run_status(l, dead[i], "interrupted",
                                   "the process running it ended without finishing it", err);
    if (!rc && n)
        *n = n_dead;
    return rc;
}

/* ---- losses ------------------------------------------------------------ */

static int write_losses(ledger *l, int64_t run, const int *steps, const float *loss,
                        const float *lr, size_t n, int only_missing, coin_error *err)
{
    if (n == 0)
        return 0;
    const char *what = "recording losses";
    sqlite3_stmt *ins = NULL, *up = NULL;
    int rc = prepare(l, only_missing
                     ? "INSERT OR IGNORE INTO losses(run, step, loss, lr) VALUES(?,?,?,?)"
                     : "INSERT INTO losses(run, step, loss, lr) VALUES(?,?,?,?) "
                       "ON CONFLICT(run, step) DO UPDATE SET loss = excluded.loss, "
                       "lr = excluded.lr",
                     &ins, what, err);
    if (!rc)
        rc = prepare(l, "UPDATE runs SET step_reached = MAX(step_reached, ?) WHERE id = ?", &up,
                     what, err);
    if (!rc)
        rc = begin(l, what, err);
    if (rc) {
        sqlite3_finalize(ins);
        sqlite3_finalize(up);
        return rc;
    }
    /* One statement, re-bound per row, in one transaction: the cost per row
     * is a b-tree insert, not a parse or a journal commit. */
    int top = steps[0];
    sqlite3_bind_int64(ins, 1, run);
    for (size_t i = 0; i < n && !rc; i++) {
        sqlite3_bind_int(ins, 2, steps[i]);
        if (isnan(loss[i]))
            sqlite3_bind_null(ins, 3);
        else
            sqlite3_bind_double(ins, 3, loss[i]);
        if (lr)
            sqlite3_bind_double(ins, 4, lr[i]);
        else
            sqlite3_bind_null(ins, 4);
        int s = sqlite3_step(ins);
        if (s != SQLITE_DONE) {
            char msg[96];
            snprintf(msg, sizeof msg, "recording the loss of run %lld at step %d",
                     (long long)run, steps[i]);
            rc = db_fail(l, err, s, msg);
        }
        sqlite3_reset(ins);
        if (steps[i] > top)
            top = steps[i];
    }
    if (!rc) {
        sqlite3_bind_int(up, 1, top);
        sqlite3_bind_int64(up, 2, run);
        rc = step_done(l, up, "raising the run's step", err);
    } else {
        sqlite3_finalize(up);
    }
    sqlite3_finalize(ins);
    return end_tx(l, rc, what, err);
}

int ledger_record_losses(ledger *l, int64_t run, const int *steps, const float *loss,
                         const float *lr, size_t n, coin_error *err)
{
    return write_losses(l, run, steps, loss, lr, n, 0, err);
}

int ledger_fill_losses(ledger *l, int64_t run, const int *steps, const float *loss,
                       const float *lr, size_t n, coin_error *err)
{
    return write_losses(l, run, steps, loss, lr, n, 1, err);
}

int ledger_losses_after(ledger *l, int64_t run, int after, int **steps, float **loss,
                        float **lr, size_t *n, coin_error *err)
{
    sqlite3_stmt *st;
    int rc = prepare(l, "SELECT step, loss, lr FROM losses WHERE run = ? AND step > ? "
                     "ORDER BY step", &st, "reading a loss curve", err);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, run);
    sqlite3_bind_int(st, 2, after);
    size_t cap = *n;
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 1024;
            int *ns = steps ? realloc(*steps, cap * sizeof **steps) : NULL;
            if (ns)
                *steps = ns;
            float *nl = loss ? realloc(*loss, cap * sizeof **loss) : NULL;
            if (nl)
                *loss = nl;
            float *nr = lr ? realloc(*lr, cap * sizeof **lr) : NULL;
            if (nr)
                *lr = nr;
            if ((steps && !ns) || (loss && !nl) || (lr && !nr)) {
                rc = coin_fail(err, COIN_ENOMEM, "ledger %s: out of memory reading the loss "
                               "curve of run %lld", l->path, (long long)run);
                break;
            }
        }
        if (steps)
            (*steps)[*n] = sqlite3_column_int(st, 0);
        if (loss)
            (*loss)[*n] = sqlite3_column_type(st, 1) == SQLITE_NULL
                              ? NAN : (float)sqlite3_column_double(st, 1);
        if (lr)
            (*lr)[*n] = sqlite3_column_type(st, 2) == SQLITE_NULL
                            ? NAN : (float)sqlite3_column_double(st, 2);
        (*n)++;
    }
    if (!rc && s != SQLITE_DONE)
        rc = db_fail(l, err, s, "reading a loss curve");
    sqlite3_finalize(st);
    return rc;
}

int ledger_loss_curve(ledger *l, int64_t run, int **steps, float **loss, float **lr,
                      size_t *n, coin_error *err)
{
    int *ps = NULL;
    float *pl = NULL, *pr = NULL;
    *n = 0;
    int rc = ledger_losses_after(l, run, INT_MIN, steps ? &ps : NULL, loss ? &pl : NULL,
                                 lr ? &pr : NULL, n, err);
    if (rc) {
        free(ps);
        free(pl);
        free(pr);
        ps = NULL;
        pl = pr = NULL;
        *n = 0;
    }
    if (steps)
        *steps = ps;
    if (loss)
        *loss = pl;
    if (lr)
        *lr = pr;
    return rc;
}

/* ---- checkpoints, samples, ratings ------------------------------------- */

int ledger_insert_checkpoint(ledger *l, int64_t run, int step, const char *path,
                             const char *sha256, int64_t *id, coin_error *err)
{
    if (!path)
        return coin_fail(err, COIN_EINVAL, "ledger %s: a checkpoint needs a path", l->path);
    sqlite3_stmt *st;
    int rc = prepare(l,
                     "INSERT INTO checkpoints(run, step, path, sha256, created_at) "
                     "VALUES(?,?,?,?,?) ON CONFLICT(run, step) DO UPDATE SET "
                     "path = excluded.path, sha256 = excluded.sha256, "
                     "created_at = excluded.created_at RETURNING id",
                     &st, "recording a checkpoint", err);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, run);
    sqlite3_bind_int(st, 2, step);
    bind_text(st, 3, path);
    bind_text(st, 4, sha256);
    sqlite3_bind_int64(st, 5, now_s());
    return run_write(l, st, id, NULL, "recording a checkpoint", err);
}

int ledger_insert_sample(ledger *l, const ledger_sample *s, int64_t *id, coin_error *err)
{
    if (!s->prompt)
        return coin_fail(err, COIN_EINVAL, "ledger %s: a sample needs a prompt", l->path);
    sqlite3_stmt *st;
    int rc = prepare(l,
                     "INSERT INTO samples(run, checkpoint, prompt, negative, seed, steps, "
                     "guidance, sampler, schedule, width, height, rng, model_sha256, "
                     "embeddings_json, image_path, image_sha256, created_at) "
                     "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
                     &st, "recording a sample", err);
    if (rc)
        return rc;
    char seed[24];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)s->seed);
    bind_id(st, 1, s->run);
    bind_id(st, 2, s->checkpoint);
    bind_text(st, 3, s->prompt);
    bind_text(st, 4, s->negative);
    bind_text(st, 5, seed);
    sqlite3_bind_int(st, 6, s->steps);
    sqlite3_bind_double(st, 7, s->guidance);
    bind_text(st, 8, s->sampler);
    bind_text(st, 9, s->schedule);
    sqlite3_bind_int(st, 10, s->width);
    sqlite3_bind_int(st, 11, s->height);
    bind_text(st, 12, s->rng);
    bind_text(st, 13, s->model_sha256);
    bind_text(st, 14, s->embeddings_json ? s->embeddings_json : "[]");
    bind_text(st, 15, s->image_path);
    bind_text(st, 16, s->image_sha256);
    sqlite3_bind_int64(st, 17, now_s());
    return run_write(l, st, id, NULL, "recording a sample", err);
}

void ledger_sample_free(ledger_sample *s)
{
    if (!s)
        return;
    const char *owned[] = {s->prompt, s->negative,     s->sampler,         s->schedule,
                           s->rng,    s->model_sha256, s->embeddings_json, s->image_path,
                           s->image_sha256};
    for (size_t i = 0; i < sizeof owned / sizeof *owned; i++)
        free((char *)owned[i]);
    memset(s, 0, sizeof *s);
}

#define SAMPLE_SQL                                                                    \
    "SELECT id, run, checkpoint, prompt, negative, seed, steps, guidance, "           \
    "sampler, schedule, width, height, rng, model_sha256, embeddings_json, "          \
    "image_path, image_sha256, created_at FROM samples "

static void read_sample(sqlite3_stmt *st, ledger_sample *out)
{
    out->id = sqlite3_column_int64(st, 0);
    out->run = sqlite3_column_int64(st, 1);
    out->checkpoint = sqlite3_column_int64(st, 2);
    out->prompt = col_dup(st, 3);
    out->negative = col_dup(st, 4);
    const unsigned char *seed = sqlite3_column_text(st, 5);
    out->seed = seed ? strtoull((const char *)seed, NULL, 10) : 0;
    out->steps = sqlite3_column_int(st, 6);
    out->guidance = sqlite3_column_double(st, 7);
    out->sampler = col_dup(st, 8);
    out->schedule = col_dup(st, 9);
    out->width = sqlite3_column_int(st, 10);
    out->height = sqlite3_column_int(st, 11);
    out->rng = col_dup(st, 12);
    out->model_sha256 = col_dup(st, 13);
    out->embeddings_json = col_dup(st, 14);
    out->image_path = col_dup(st, 15);
    out->image_sha256 = col_dup(st, 16);
    out->created_at = sqlite3_column_int64(st, 17);
}

int ledger_get_sample(ledger *l, int64_t id, ledger_sample *out, coin_error *err)
{
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st;
    int rc = prepare(l, SAMPLE_SQL "WHERE id = ?", &st, "reading a sample", err);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, id);
    rc = step_row(l, st, "sample", id, "reading a sample", err);
    if (!rc)
        read_sample(st, out);
    sqlite3_finalize(st);
    return rc;
}

int ledger_list_samples(ledger *l, int64_t run, int64_t after, ledger_sample_fn fn, void *ctx,
                        coin_error *err)
{
    sqlite3_stmt *st;
    int rc = prepare(l, SAMPLE_SQL "WHERE run = ? AND id > ? ORDER BY id", &st,
                     "listing a run's samples", err);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, run);
    sqlite3_bind_int64(st, 2, after);
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        ledger_sample one;
        memset(&one, 0, sizeof one);
        read_sample(st, &one);
        rc = fn(ctx, &one);
        ledger_sample_free(&one);
        if (rc)
            break;
    }
    if (!rc && s != SQLITE_DONE)
        rc = db_fail(l, err, s, "listing a run's samples");
    sqlite3_finalize(st);
    return rc;
}

int ledger_rate_sample(ledger *l, int64_t sample, int good, const char *note, coin_error *err)
{
    sqlite3_stmt *st;
    int rc = prepare(l,
                     "INSERT INTO ratings(sample, good, note, rated_at) VALUES(?,?,?,?) "
                     "ON CONFLICT(sample) DO UPDATE SET good = excluded.good, "
                     "note = excluded.note, rated_at = excluded.rated_at",
                     &st, "rating a sample", err);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, sample);
    sqlite3_bind_int(st, 2, good ? 1 : 0);
    bind_text(st, 3, note);
    sqlite3_bind_int64(st, 4, now_s());
    return run_write(l, st, NULL, NULL, "rating a sample", err);
}

int ledger_acceptance(ledger *l, int64_t run, double *share, int *n_rated, coin_error *err)
{
    *share = NAN;
    if (n_rated)
        *n_rated = 0;
    sqlite3_stmt *st;
    int rc = prepare(l,
                     "SELECT COUNT(*), COALESCE(SUM(g.good), 0) FROM ratings g "
                     "JOIN samples s ON s.id = g.sample "
                     "WHERE s.run = ?1 OR s.checkpoint IN "
                     "(SELECT id FROM checkpoints WHERE run = ?1)",
                     &st, "reading a run's ratings", err);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, run);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        int total = sqlite3_column_int(st, 0), good = sqlite3_column_int(st, 1);
        if (total)
            *share = (double)good / total;
        if (n_rated)
            *n_rated = total;
    } else {
        rc = db_fail(l, err, s, "reading a run's ratings");
    }
    sqlite3_finalize(st);
    return rc;
}

/* ---- the run list ------------------------------------------------------ */

/* The last loss comes from the end of the run's (run, step) range: one
 * index probe per run, however long the curve. */
#define RUN_ROW_SQL                                                                   \
    "SELECT r.id, r.kind, r.trigger, m.path, r.status, r.step_reached, "              \
    "r.steps_planned, (SELECT loss FROM losses WHERE run = r.id ORDER BY step DESC "  \
    "LIMIT 1), r.started_at FROM runs r LEFT JOIN models m ON m.id = r.model_id "

static void read_row(sqlite3_stmt *st, ledger_run_row *row)
{
    memset(row, 0, sizeof *row);
    row->id = sqlite3_column_int64(st, 0);
    col_copy(st, 1, row->kind, sizeof row->kind);
    col_copy(st, 2, row->trigger, sizeof row->trigger);
    col_copy(st, 3, row->model_path, sizeof row->model_path);
    col_copy(st, 4, row->status, sizeof row->status);
    row->step = sqlite3_column_int(st, 5);
    row->steps = sqlite3_column_int(st, 6);
    row->last_loss = sqlite3_column_type(st, 7) == SQLITE_NULL
                         ? NAN : (float)sqlite3_column_double(st, 7);
    row->started_at = sqlite3_column_int64(st, 8);
}

int ledger_run_summary(ledger *l, int64_t run, ledger_run_row *out, coin_error *err)
{
    sqlite3_stmt *st;
    int rc = prepare(l, RUN_ROW_SQL "WHERE r.id = ?", &st, "reading a run's summary", err);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, run);
    rc = step_row(l, st, "run", run, "reading a run's summary", err);
    if (!rc)
        read_row(st, out);
    sqlite3_finalize(st);
    return rc;
}

int ledger_list_runs(ledger *l, ledger_run_fn fn, void *ctx, coin_error *err)
{
    sqlite3_stmt *st;
    int rc = prepare(l, RUN_ROW_SQL "ORDER BY r.id DESC", &st, "listing runs", err);
    if (rc)
        return rc;
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        ledger_run_row row;
        read_row(st, &row);
        rc = fn(ctx, &row);
        if (rc)
            break;
    }
    if (!rc && s != SQLITE_DONE)
        rc = db_fail(l, err, s, "listing runs");
    sqlite3_finalize(st);
    return rc;
}

/* ---- resuming, checkpoints of a run, models by hash -------------------- */

int ledger_update_run(ledger *l, int64_t run, const ledger_run *r, coin_error *err)
{
    sqlite3_stmt *st;
    /* NULL (or 0) keeps what is there: the caller names what it knows. */
    int rc = prepare(l,
                     "UPDATE runs SET config_json = COALESCE(?1, config_json), "
                     "trigger = COALESCE(?2, trigger), initializer = COALESCE(?3, initializer), "
                     "model_id = COALESCE(?4, model_id), images_dir = COALESCE(?5, images_dir), "
                     "image_hashes_json = COALESCE(?6, image_hashes_json), "
                     "backend = COALESCE(?7, backend), precision = COALESCE(?8, precision), "
                     "threads = CASE WHEN ?9 > 0 THEN ?9 ELSE threads END, "
                     "coin_version = COALESCE(?10, coin_version), host = COALESCE(?11, host), "
                     "steps_planned = CASE WHEN ?12 > 0 THEN ?12 ELSE steps_planned END, "
                     "out_dir = COALESCE(?13, out_dir) WHERE id = ?14",
                     &st, "updating a run", err);
    if (rc)
        return rc;
    bind_text(st, 1, r->config_json);
    bind_text(st, 2, r->trigger);
    bind_text(st, 3, r->initializer);
    bind_id(st, 4, r->model_id);
    bind_text(st, 5, r->images_dir);
    bind_text(st, 6, r->image_hashes_json);
    bind_text(st, 7, r->backend);
    bind_text(st, 8, r->precision);
    sqlite3_bind_int(st, 9, r->threads);
    bind_text(st, 10, r->coin_version);
    bind_text(st, 11, r->host);
    sqlite3_bind_int(st, 12, r->steps_planned);
    bind_text(st, 13, r->out_dir);
    sqlite3_bind_int64(st, 14, run);
    int changed = 0;
    rc = run_write(l, st, NULL, &changed, "updating a run", err);
    return !rc && !changed ? no_such(l, err, "run", run) : rc;
}

int ledger_find_run_by_dir(ledger *l, const char *out_dir, int64_t *run, coin_error *err)
{
    *run = 0;
    return query_int64(l, "SELECT id FROM runs WHERE kind = 'train' AND out_dir = ? "
                       "ORDER BY id DESC LIMIT 1", out_dir, run, "looking up a training folder",
                       err);
}

int ledger_resume_run(ledger *l, int64_t run, int from_step, int keep_request, coin_error *err)
{
    const char *what = "resuming a run";
    static const char *const sql[] = {
        "DELETE FROM losses WHERE run = ?1 AND step > ?2",
        "DELETE FROM checkpoints WHERE run = ?1 AND step > ?2",
        "UPDATE runs SET step_reached = ?2, status = CASE WHEN ?5 AND status IN "
        "('paused','stopped') THEN status ELSE 'running' END, pid = ?3, error = NULL, "
        "ended_at = NULL, started_at = COALESCE(started_at, ?4) WHERE id = ?1",
    };
    int rc = begin(l, what, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < sizeof sql / sizeof *sql && !rc; i++) {
        sqlite3_stmt *st;
        if ((rc = prepare(l, sql[i], &st, what, err)))
            break;
        sqlite3_bind_int64(st, 1, run);
        sqlite3_bind_int(st, 2, from_step);
        if (i == 2) {
            sqlite3_bind_int64(st, 3, (int64_t)getpid());
            sqlite3_bind_int64(st, 4, now_s());
            sqlite3_bind_int(st, 5, keep_request != 0);
        }
        rc = step_done(l, st, what, err);
        if (!rc && i == 2 && sqlite3_changes(l->db) == 0)
            rc = no_such(l, err, "run", run);
    }
    return end_tx(l, rc, what, err);
}

int ledger_find_checkpoint(ledger *l, const char *sha256, int64_t *id, coin_error *err)
{
    *id = 0;
    /* The newest: a run resumed past a step re-records identical files. */
    return query_int64(l, "SELECT id FROM checkpoints WHERE sha256 = ? ORDER BY id DESC LIMIT 1",
                       sha256, id, "looking up a checkpoint by its hash", err);
}

int ledger_list_checkpoints(ledger *l, int64_t run, ledger_checkpoint **out, size_t *n,
                            coin_error *err)
{
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st;
    int rc = prepare(l, "SELECT id, step, path, sha256 FROM checkpoints WHERE run = ? "
                     "ORDER BY step", &st, "listing a run's checkpoints", err);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, run);
    ledger_checkpoint *list = NULL;
    size_t count = 0, cap = 0;
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            ledger_checkpoint *grown = realloc(list, cap * sizeof *list);
            if (!grown) {
                rc = coin_fail(err, COIN_ENOMEM, "out of memory listing checkpoints");
                break;
            }
            list = grown;
        }
        ledger_checkpoint *c = &list[count++];
        c->id = sqlite3_column_int64(st, 0);
        c->step = sqlite3_column_int(st, 1);
        c->path = col_dup(st, 2);
        c->sha256 = col_dup(st, 3);
    }
    if (!rc && s != SQLITE_DONE)
        rc = db_fail(l, err, s, "listing a run's checkpoints");
    sqlite3_finalize(st);
    if (rc) {
        ledger_checkpoints_free(list, count);
        return rc;
    }
    *out = list;
    *n = count;
    return 0;
}

void ledger_checkpoints_free(ledger_checkpoint *c, size_t n)
{
    for (size_t i = 0; c && i < n; i++) {
        free(c[i].path);
        free(c[i].sha256);
    }
    free(c);
}

int ledger_find_model(ledger *l, const char *sha_prefix, char **path, coin_error *err)
{
    *path = NULL;
    size_t n = strlen(sha_prefix);
    if (n < 8 || n > 64 || sha_prefix[strspn(sha_prefix, "0123456789abcdefABCDEF")])
        return coin_fail(err, COIN_EINVAL, "'%s' is not a model hash (8 to 64 hex digits)",
                         sha_prefix);
    sqlite3_stmt *st;
    int rc = prepare(l, "SELECT path FROM models WHERE substr(sha256, 1, ?1) = lower(?2) "
                     "ORDER BY added_at DESC LIMIT 1", &st, "looking up a model", err);
    if (rc)
        return rc;
    sqlite3_bind_int(st, 1, (int)n);
    bind_text(st, 2, sha_prefix);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW)
        *path = col_dup(st, 0);
    else if (s == SQLITE_DONE)
        rc = coin_fail(err, COIN_ENOTFOUND, "no model with hash %s is in the ledger %s; give "
                       "it with --model", sha_prefix, l->path);
    else
        rc = db_fail(l, err, s, "looking up a model");
    sqlite3_finalize(st);
    return rc;
}

/* ---- the job queue ----------------------------------------------------- */

int ledger_enqueue_job(ledger *l, int64_t run, const char *argv_json, const char *cwd,
                       const char *device, coin_error *err)
{
    const char *what = "queueing a job";
    if (!argv_json || !cwd || !device)
        return coin_fail(err, COIN_EINVAL, "ledger %s: a job needs its arguments, folder and "
                         "device", l->path);
    int rc = begin(l, what, err);
    if (rc)
        return rc;
    sqlite3_stmt *st;
    rc = prepare(l, "INSERT INTO jobs(run, argv_json, cwd, device, queued_at) "
                 "VALUES(?1,?2,?3,?4,?5) ON CONFLICT(run) DO UPDATE SET "
                 "argv_json = excluded.argv_json, cwd = excluded.cwd, "
                 "device = excluded.device, queued_at = excluded.queued_at", &st, what, err);
    if (!rc) {
        sqlite3_bind_int64(st, 1, run);
        bind_text(st, 2, argv_json);
        bind_text(st, 3, cwd);
        bind_text(st, 4, device);
        sqlite3_bind_int64(st, 5, now_s());
        rc = step_done(l, st, what, err);
    }
    if (!rc)
        rc = prepare(l, "UPDATE runs SET status = 'queued', error = NULL, ended_at = NULL "
                     "WHERE id = ?", &st, what, err);
    if (!rc) {
        sqlite3_bind_int64(st, 1, run);
        rc = step_done(l, st, what, err);
    }
    return end_tx(l, rc, what, err);
}

static int read_job(ledger *l, const char *sql, int64_t key_id, const char *key_text,
                    ledger_job *out, coin_error *err)
{
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st;
    int rc = prepare(l, sql, &st, "reading a job", err);
    if (rc)
        return rc;
    if (key_text)
        bind_text(st, 1, key_text);
    else
        sqlite3_bind_int64(st, 1, key_id);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        out->run = sqlite3_column_int64(st, 0);
        out->argv_json = col_dup(st, 1);
        out->cwd = col_dup(st, 2);
        out->device = col_dup(st, 3);
        out->attempts = sqlite3_column_int(st, 4);
        if (!out->argv_json || !out->cwd || !out->device) {
            ledger_job_free(out);
            rc = coin_fail(err, COIN_ENOMEM, "out of memory reading a job");
        }
    } else if (s != SQLITE_DONE) {
        rc = db_fail(l, err, s, "reading a job");
    }
    sqlite3_finalize(st);
    return rc;
}

int ledger_get_job(ledger *l, int64_t run, ledger_job *out, coin_error *err)
{
    int rc = read_job(l, "SELECT run, argv_json, cwd, device, attempts FROM jobs WHERE run = ?",
                      run, NULL, out, err);
    if (!rc && !out->run)
        rc = coin_fail(err, COIN_ENOTFOUND, "run %lld has no job in ledger %s (it was not "
                       "started through the queue)", (long long)run, l->path);
    return rc;
}

int ledger_claim_job(ledger *l, const char *device, ledger_job *out, coin_error *err)
{
    const char *what = "taking a job from the queue";
    memset(out, 0, sizeof *out);
    /* Under the write lock, so that two workers never take the same job. */
    int rc = begin(l, what, err);
    if (rc)
        return rc;
    rc = read_job(l, "SELECT j.run, j.argv_json, j.cwd, j.device, j.attempts FROM jobs j "
                  "JOIN runs r ON r.id = j.run WHERE r.status = 'queued' AND j.device = ? "
                  "ORDER BY j.queued_at, j.run LIMIT 1", 0, device, out, err);
    if (!rc && out->run) {
        sqlite3_stmt *st;
        rc = prepare(l, "UPDATE runs SET status = 'running', pid = ?2, ended_at = NULL, "
                     "error = NULL, started_at = COALESCE(started_at, ?3) WHERE id = ?1; ",
                     &st, what, err);
        if (!rc) {
            sqlite3_bind_int64(st, 1, out->run);
            sqlite3_bind_int64(st, 2, (int64_t)getpid());
            sqlite3_bind_int64(st, 3, now_s());
            rc = step_done(l, st, what, err);
        }
        if (!rc)
            rc = prepare(l, "UPDATE jobs SET attempts = attempts + 1 WHERE run = ?", &st, what,
                         err);
        if (!rc) {
            sqlite3_bind_int64(st, 1, out->run);
            rc = step_done(l, st, what, err);
        }
        out->attempts++;
    }
    rc = end_tx(l, rc, what, err);
    if (rc)
        ledger_job_free(out);
    return rc;
}

void ledger_job_free(ledger_job *j)
{
    if (!j)
        return;
    free(j->argv_json);
    free(j->cwd);
    free(j->device);
    memset(j, 0, sizeof *j);
}

int ledger_count_queued(ledger *l, const char *device, int *n, coin_error *err)
{
    int64_t count = 0;
    int rc = query_int64(l, "SELECT COUNT(*) FROM jobs j JOIN runs r ON r.id = j.run "
                         "WHERE r.status = 'queued' AND (?1 IS NULL OR j.device = ?1)", device,
                         &count, "counting queued jobs", err);
    *n = (int)count;
    return rc;
}

sqlite3 *ledger_sqlite(ledger *l)
{
    return l->db;
}

int ledger_finish_run(ledger *l, int64_t run, const char *status, const char *error_text,
                      int *changed, coin_error *err)
{
    if (changed)
        *changed = 0;
    return write_status(l,
                        "UPDATE runs SET status = ?1, error = ?2, "
                        "ended_at = CASE WHEN ?1 IN ('stopped','done','failed','interrupted') "
                        "THEN ?3 ELSE NULL END WHERE id = ?4 AND pid = ?5 "
                        "AND status IN ('running','paused','stopped')",
                        run, status, error_text, changed, "recording the end of a run", err);
}

int ledger_get_status(ledger *l, int64_t run, char status[16], coin_error *err)
{
    status[0] = '\0';
    if (!l->status_st &&
        prepare(l, "SELECT status FROM runs WHERE id = ?", &l->status_st, "reading a run's status",
                err))
        return err ? err->code : COIN_EIO;
    sqlite3_stmt *st = l->status_st;
    sqlite3_bind_int64(st, 1, run);
    int rc = step_row(l, st, "run", run, "reading a run's status", err);
    if (!rc)
        col_copy(st, 0, status, 16);
    sqlite3_reset(st);
    return rc;
}
