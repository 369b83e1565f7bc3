/*
 * ledger_query.c - the workbench's queries over the run ledger
 * (ledger_query.h).  Statements are prepared per call: each screen asks a
 * handful of times per refresh, and preparing costs microseconds next to
 * the reads themselves.
 */
#include "db/ledger_query.h"

#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(ledger *l, coin_error *err, const char *what)
{
    sqlite3 *db = ledger_sqlite(l);
    int rc = sqlite3_errcode(db) & 0xff;
    return coin_fail(err, rc == SQLITE_NOMEM ? COIN_ENOMEM : COIN_EIO, "ledger %s: %s: %s",
                     ledger_path(l), what, sqlite3_errmsg(db));
}

static int prepare(ledger *l, const char *sql, sqlite3_stmt **st, const char *what,
                   coin_error *err)
{
    if (sqlite3_prepare_v2(ledger_sqlite(l), sql, -1, st, NULL) != SQLITE_OK)
        return fail(l, err, what);
    return 0;
}

static void copy_text(sqlite3_stmt *st, int i, char *dst, size_t cap)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(dst, cap, "%s", t ? (const char *)t : "");
}

int lq_data_version(ledger *l, int64_t *version, coin_error *err)
{
    sqlite3_stmt *st;
    int rc = prepare(l, "PRAGMA data_version", &st, "checking for changes", err);
    if (rc)
        return rc;
    if (sqlite3_step(st) == SQLITE_ROW)
        *version = sqlite3_column_int64(st, 0);
    else
        rc = fail(l, err, "checking for changes");
    sqlite3_finalize(st);
    return rc;
}

int lq_run_counts(ledger *l, int64_t *max_id, int *active, coin_error *err)
{
    sqlite3_stmt *st;
    int rc = prepare(l, "SELECT COALESCE(MAX(id), 0), (SELECT COUNT(*) FROM runs WHERE status "
                     "IN ('queued','running')) FROM runs", &st, "counting runs", err);
    if (rc)
        return rc;
    if (sqlite3_step(st) == SQLITE_ROW) {
        *max_id = sqlite3_column_int64(st, 0);
        if (active)
            *active = sqlite3_column_int(st, 1);
    } else {
        rc = fail(l, err, "counting runs");
    }
    sqlite3_finalize(st);
    return rc;
}

int lq_loss_spans(ledger *l, int64_t run, int last_step, int width, float *out,
                  coin_error *err)
{
    for (int i = 0; i < width; i++)
        out[i] = NAN;
    if (width < 1 || last_step < 1)
        return 0;
    sqlite3_stmt *st;
    /* span of step s (1-based): (s - 1) * width / last_step */
    int rc = prepare(l, "SELECT ((step - 1) * ?2) / ?3 AS span, AVG(loss) FROM losses "
                     "WHERE run = ?1 AND step >= 1 AND step <= ?3 GROUP BY span", &st,
                     "summarising a loss curve", err);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, run);
    sqlite3_bind_int(st, 2, width);
    sqlite3_bind_int(st, 3, last_step);
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        int span = sqlite3_column_int(st, 0);
        if (span >= 0 && span < width && sqlite3_column_type(st, 1) != SQLITE_NULL)
            out[span] = (float)sqlite3_column_double(st, 1);
    }
    if (s != SQLITE_DONE)
        rc = fail(l, err, "summarising a loss curve");
    sqlite3_finalize(st);
    return rc;
}

int lq_checkpoints(ledger *l, int64_t run, lq_checkpoint **out, size_t *n, coin_error *err)
{
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st;
    int rc = prepare(l, "SELECT id, step, path, created_at FROM checkpoints WHERE run = ? "
                     "ORDER BY step", &st, "listing checkpoints", err);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, run);
    size_t cap = 0;
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            lq_checkpoint *p = realloc(*out, cap * sizeof *p);
            if (!p) {
                rc = coin_fail(err, COIN_ENOMEM, "out of memory listing checkpoints");
                break;
            }
            *out = p;
        }
        lq_checkpoint *c = &(*out)[(*n)++];
        c->id = sqlite3_column_int64(st, 0);
        c->step = sqlite3_column_int(st, 1);
        copy_text(st, 2, c->path, sizeof c->path);
        c->created_at = sqlite3_column_int64(st, 3);
    }
    if (!rc && s != SQLITE_DONE)
        rc = fail(l, err, "listing checkpoints");
    sqlite3_finalize(st);
    return rc;
}

/* The WHERE clause of a sample filter; bind_filter binds its parameters in
 * the same order. */
static void filter_sql(const lq_sample_filter *f, char *sql, size_t cap)
{
    snprintf(sql, cap, " WHERE 1");
    size_t n = strlen(sql);
#define ADD(s) (n += (size_t)snprintf(sql + n, cap - n, "%s", s))
    if (f->text && *f->text)
        ADD(" AND instr(lower(s.prompt), lower(?)) > 0");
    if (f->path_prefix && *f->path_prefix)
        ADD(" AND substr(s.image_path, 1, length(?1000)) = ?1000");
    if (f->run)
        ADD(" AND (s.run = ?1001 OR s.checkpoint IN (SELECT id FROM checkpoints WHERE run = ?1001))");
    if (f->checkpoint)
        ADD(" AND s.checkpoint = ?1002");
    if (f->has_seed)
        ADD(" AND s.seed = ?1003");
    if (f->rating == 0 || f->rating == 1)
        ADD(" AND g.good = ?1004");
    else if (f->rating == 2)
        ADD(" AND g.good IS NULL");
#undef ADD
}

static void bind_filter(sqlite3_stmt *st, const lq_sample_filter *f)
{
    if (f->text && *f->text)
        sqlite3_bind_text(st, 1, f->text, -1, SQLITE_TRANSIENT);
    if (f->path_prefix && *f->path_prefix)
        sqlite3_bind_text(st, 1000, f->path_prefix, -1, SQLITE_TRANSIENT);
    if (f->run)
        sqlite3_bind_int64(st, 1001, f->run);
    if (f->checkpoint)
        sqlite3_bind_int64(st, 1002, f->checkpoint);
    if (f->has_seed) {
        char seed[24];
        snprintf(seed, sizeof seed, "%llu", (unsigned long long)f->seed);
        sqlite3_bind_text(st, 1003, seed, -1, SQLITE_TRANSIENT);
    }
    if (f->rating == 0 || f->rating == 1)
        sqlite3_bind_int(st, 1004, f->rating);
}

int lq_samples(ledger *l, const lq_sample_filter *f, lq_sample_row **out, size_t *n,
               coin_error *err)
{
    *out = NULL;
    *n = 0;
    char sql[2048], where[1024];
    filter_sql(f, where, sizeof where);
    snprintf(sql, sizeof sql,
             "SELECT s.id, s.run, s.checkpoint, s.prompt, s.seed, s.steps, s.guidance, s.sampler, "
             "s.width, s.height, s.image_path, g.good, s.created_at FROM samples s "
             "LEFT JOIN ratings g ON g.sample = s.id%s ORDER BY s.id %s LIMIT ?1005",
             where, f->newest_first ? "DESC" : "ASC");
    sqlite3_stmt *st;
    int rc = prepare(l, sql, &st, "listing samples", err);
    if (rc)
        return rc;
    bind_filter(st, f);
    sqlite3_bind_int64(st, 1005, f->limit ? (int64_t)f->limit : -1);
    size_t cap = 0;
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? 2 * cap : 64;
            lq_sample_row *p = realloc(*out, cap * sizeof *p);
            if (!p) {
                rc = coin_fail(err, COIN_ENOMEM, "out of memory listing samples");
                break;
            }
            *out = p;
        }
        lq_sample_row *r = &(*out)[(*n)++];
        r->id = sqlite3_column_int64(st, 0);
        r->run = sqlite3_column_int64(st, 1);
        r->checkpoint = sqlite3_column_int64(st, 2);
        copy_text(st, 3, r->prompt, sizeof r->prompt);
        const unsigned char *seed = sqlite3_column_text(st, 4);
        r->seed = seed ? strtoull((const char *)seed, NULL, 10) : 0;
        r->steps = sqlite3_column_int(st, 5);
        r->guidance = sqlite3_column_double(st, 6);
        copy_text(st, 7, r->sampler, sizeof r->sampler);
        r->width = sqlite3_column_int(st, 8);
        r->height = sqlite3_column_int(st, 9);
        copy_text(st, 10, r->image_path, sizeof r->image_path);
        r->rating = sqlite3_column_type(st, 11) == SQLITE_NULL ? -1 : sqlite3_column_int(st, 11);
        r->created_at = sqlite3_column_int64(st, 12);
    }
    if (!rc && s != SQLITE_DONE)
        rc = fail(l, err, "listing samples");
    sqlite3_finalize(st);
    if (rc) {
        free(*out);
        *out = NULL;
        *n = 0;
    }
    return rc;
}

int lq_sample_acceptance(ledger *l, const lq_sample_filter *f, int *good, int *rated,
                         coin_error *err)
{
    char sql[2048], where[1024];
    filter_sql(f, where, sizeof where);
    snprintf(sql, sizeof sql,
             "SELECT COUNT(g.good), COALESCE(SUM(g.good), 0) FROM samples s "
             "LEFT JOIN ratings g ON g.sample = s.id%s", where);
    sqlite3_stmt *st;
    int rc = prepare(l, sql, &st, "counting ratings", err);
    if (rc)
        return rc;
    bind_filter(st, f);
    if (sqlite3_step(st) == SQLITE_ROW) {
        *rated = sqlite3_column_int(st, 0);
        *good = sqlite3_column_int(st, 1);
    } else {
        rc = fail(l, err, "counting ratings");
    }
    sqlite3_finalize(st);
    return rc;
}

void lq_free_paths(char **paths, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(paths[i]);
    free(paths);
}

/* Steps a statement with run bound to ?1 to its end. */
static int exec_run(ledger *l, const char *sql, int64_t run, const char *what, coin_error *err)
{
    sqlite3_stmt *st;
    int rc = prepare(l, sql, &st, what, err);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, run);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = fail(l, err, what);
    sqlite3_finalize(st);
    return rc;
}

int lq_delete_run(ledger *l, int64_t run, char ***orphans, size_t *n_orphans, coin_error *err)
{
    sqlite3 *db = ledger_sqlite(l);
    char **paths = NULL;
    size_t n = 0, cap = 0;
    if (orphans) {
        *orphans = NULL;
        *n_orphans = 0;
    }
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return fail(l, err, "locking the ledger to delete a run");
    sqlite3_stmt *st = NULL;
    int rc = prepare(l, "SELECT status FROM runs WHERE id = ?", &st, "deleting a run", err);
    if (!rc) {
        sqlite3_bind_int64(st, 1, run);
        if (sqlite3_step(st) != SQLITE_ROW)
            rc = coin_fail(err, COIN_ENOTFOUND, "ledger %s has no run %lld", ledger_path(l),
                           (long long)run);
        else if (!strcmp((const char *)sqlite3_column_text(st, 0), "running") ||
                 !strcmp((const char *)sqlite3_column_text(st, 0), "queued"))
            rc = coin_fail(err, COIN_EINVAL, "run %lld is %s: stop it before deleting it",
                           (long long)run, (const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
    }
    /* The files the run's rows name, before the rows go. */
    if (!rc && !(rc = prepare(l, "SELECT path FROM checkpoints WHERE run = ?1 UNION "
                              "SELECT image_path FROM samples WHERE run = ?1 AND image_path "
                              "IS NOT NULL", &st, "deleting a run", err))) {
        sqlite3_bind_int64(st, 1, run);
        while (!rc && sqlite3_step(st) == SQLITE_ROW) {
            if (n == cap) {
                cap = cap ? 2 * cap : 32;
                char **p = realloc(paths, cap * sizeof *p);
                if (!p) {
                    rc = coin_fail(err, COIN_ENOMEM, "out of memory deleting a run");
                    break;
                }
                paths = p;
            }
            if (!(paths[n] = strdup((const char *)sqlite3_column_text(st, 0))))
                rc = coin_fail(err, COIN_ENOMEM, "out of memory deleting a run");
            else
                n++;
        }
        sqlite3_finalize(st);
    }
    if (!rc)
        rc = exec_run(l, "DELETE FROM samples WHERE run = ?1", run, "deleting a run's samples",
                      err);
    if (!rc)
        rc = exec_run(l, "DELETE FROM runs WHERE id = ?1", run, "deleting a run", err);
    /* Keep only the files no remaining row names. */
    size_t kept = 0;
    if (!rc && !(rc = prepare(l, "SELECT EXISTS(SELECT 1 FROM checkpoints WHERE path = ?1) OR "
                              "EXISTS(SELECT 1 FROM samples WHERE image_path = ?1)", &st,
                              "deleting a run", err))) {
        for (size_t i = 0; i < n; i++) {
            sqlite3_bind_text(st, 1, paths[i], -1, SQLITE_STATIC);
            int used = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0);
            sqlite3_reset(st);
            if (used)
                free(paths[i]);
            else
                paths[kept++] = paths[i];
        }
        n = kept;
        sqlite3_finalize(st);
    }
    if (!rc && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = fail(l, err, "committing the deletion");
    if (rc) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        lq_free_paths(paths, n);
        return rc;
    }
    if (orphans) {
        *orphans = paths;
        *n_orphans = n;
    } else {
        lq_free_paths(paths, n);
    }
    return 0;
}
