/*
 * wb_runs.c - the Runs screen: every run of the ledger in a table, sorted
 * and searched in memory (10,000 runs sort in a millisecond), with the
 * loss sparkline and acceptance read only for the rows on screen and kept
 * until the ledger changes (wb.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <ncurses.h>

#include "tui/plot.h"
#include "tui/wb.h"

#define SPARK_W 12

typedef struct runs_extra {
    int64_t id;
    int step;                   /* the step it was read at */
    char spark[SPARK_W * 3 + 1];
    double accept;              /* NaN: nothing rated */
    int rated;
} runs_extra;

static const char *const SORT_NAMES[] = {"id", "status", "trigger", "model", "loss", "started"};
#define N_SORTS 6

static int collect(void *ctx, const ledger_run_row *row)
{
    wb_runs_state *s = ctx;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 256;
        ledger_run_row *p = realloc(s->rows, cap * sizeof *p);
        if (!p)
            return -1;
        s->rows = p;
        s->cap = cap;
    }
    s->rows[s->n++] = *row;
    return 0;
}

static wb_runs_state *sort_state;

static int cmp_rows(const void *a, const void *b)
{
    const ledger_run_row *x = &sort_state->rows[*(const int *)a];
    const ledger_run_row *y = &sort_state->rows[*(const int *)b];
    int c = 0;
    switch (sort_state->sort) {
    case 1: c = strcmp(x->status, y->status); break;
    case 2: c = strcasecmp(x->trigger, y->trigger); break;
    case 3: c = strcmp(base_name(x->model_path), base_name(y->model_path)); break;
    case 4:
        c = isnan(x->last_loss) ? (isnan(y->last_loss) ? 0 : 1)
            : isnan(y->last_loss) ? -1 : (x->last_loss > y->last_loss) - (x->last_loss < y->last_loss);
        break;
    case 5: c = (x->started_at > y->started_at) - (x->started_at < y->started_at); break;
    default: break;
    }
    if (!c)
        c = (x->id < y->id) - (x->id > y->id);     /* newest first */
    return sort_state->reverse ? -c : c;
}

static int matches(const ledger_run_row *r, const char *q)
{
    if (!q[0])
        return 1;
    char id[24];
    snprintf(id, sizeof id, "%lld", (long long)r->id);
    return strcasestr(r->trigger, q) || strcasestr(r->model_path, q) || strcasestr(r->status, q) ||
           strcasestr(r->kind, q) || !strcmp(id, q);
}

static void rebuild_order(wb *w)
{
    wb_runs_state *s = &w->runs;
    free(s->order);
    s->order = malloc((s->n ? s->n : 1) * sizeof *s->order);
    s->n_order = 0;
    for (size_t i = 0; s->order && i < s->n; i++)
        if (matches(&s->rows[i], s->search))
            s->order[s->n_order++] = (int)i;
    sort_state = s;
    if (s->order)
        qsort(s->order, s->n_order, sizeof *s->order, cmp_rows);
    /* keep the selected run selected */
    s->sel = 0;
    for (size_t i = 0; i < s->n_order; i++)
        if (s->rows[s->order[i]].id == s->sel_id)
            s->sel = (int)i;
}

void runs_reload(wb *w)
{
    wb_runs_state *s = &w->runs;
    coin_error err = {0};
    s->n = 0;
    if (ledger_list_runs(w->l, collect, s, &err))
        wb_message(w, 1, "%s", err.msg[0] ? err.msg : "out of memory reading the runs");
    /* a run this screen started (without learning its id) is selected once it shows */
    for (size_t i = 0; s->select_after && i < s->n; i++)
        if (s->rows[i].id > s->select_after) {
            s->sel_id = s->rows[i].id;
            s->select_after = 0;
        }
    rebuild_order(w);
    /* the extras are read again for what is on screen */
    s->n_extra = 0;
}

void runs_free(wb *w)
{
    wb_runs_state *s = &w->runs;
    free(s->rows);
    free(s->order);
    free(s->extra);
    memset(s, 0, sizeof *s);
}

static runs_extra *extra_of(wb *w, const ledger_run_row *r)
{
    wb_runs_state *s = &w->runs;
    for (size_t i = 0; i < s->n_extra; i++)
        if (s->extra[i].id == r->id && s->extra[i].step == r->step)
            return &s->extra[i];
    runs_extra *p = realloc(s->extra, (s->n_extra + 1) * sizeof *p);
    if (!p)
        return NULL;
    s->extra = p;
    runs_extra *e = &s->extra[s->n_extra++];
    memset(e, 0, sizeof *e);
    e->id = r->id;
    e->step = r->step;
    coin_error err = {0};
    float spans[SPARK_W];
    if (!strcmp(r->kind, "train") &&
        lq_loss_spans(w->l, r->id, r->step, SPARK_W, spans, &err) == 0)
        plot_sparkline(spans, SPARK_W, SPARK_W, w->utf8, e->spark, sizeof e->spark);
    if (ledger_acceptance(w->l, r->id, &e->accept, &e->rated, &err))
        e->accept = NAN;
    return e;
}

void runs_draw(wb *w)
{
    wb_runs_state *s = &w->runs;
    draw_title(w, " coin  Runs: %zu%s%s%s  sorted by %s%s", s->n_order,
               s->search[0] ? " matching \"" : "", s->search, s->search[0] ? "\"" : "",
               SORT_NAMES[s->sort], s->reverse ? " (reversed)" : "");
    int y0 = 2, h = w->rows - 4;
    unsigned head = draw_attr(w, CP_DIM, A_BOLD) | A_BOLD;
    /* id kind trigger model status step/steps loss accept [started]: the
     * model column takes what is left; the start time only on wide screens */
    int show_started = w->cols >= 100;
    int model_w = w->cols - 73 - (show_started ? 12 : 0);
    if (model_w < 6)
        model_w = 6;
    int x_model = 28, x_status = x_model + model_w + 1, x_steps = x_status + 12;
    int x_spark = x_steps + 12, x_acc = x_spark + SPARK_W + 1, x_start = x_acc + 7;
    draw_textf(w, 1, 0, w->cols, head, "%5s %-6s %-14s", "id", "kind", "trigger");
    draw_text(w, 1, x_model, model_w, head, "model");
    draw_text(w, 1, x_status, 11, head, "  status");
    draw_textf(w, 1, x_steps, 11, head, "%11s", "step/steps");
    draw_text(w, 1, x_spark, SPARK_W, head, "loss");
    draw_textf(w, 1, x_acc, 6, head, "%6s", "accept");
    if (show_started)
        draw_textf(w, 1, x_start, 11, head, "%11s", "started");
    if (!s->n_order) {
        draw_text(w, y0 + 1, 2, w->cols - 4, A_NORMAL,
                  s->n ? "no run matches the search (Esc clears it)"
                       : "No runs yet.  Press n to start a training run, or 4 to sample.");
    }
    if (s->sel >= (int)s->n_order)
        s->sel = s->n_order ? (int)s->n_order - 1 : 0;
    if (s->sel < s->top)
        s->top = s->sel;
    if (s->sel >= s->top + h)
        s->top = s->sel - h + 1;
    for (int i = 0; i < h && s->top + i < (int)s->n_order; i++) {
        const ledger_run_row *r = &s->rows[s->order[s->top + i]];
        runs_extra *e = extra_of(w, r);
        int sel = s->top + i == s->sel;
        unsigned base = sel ? draw_attr(w, CP_SEL, A_REVERSE) : A_NORMAL;
        int y = y0 + i;
        if (sel) {
            s->sel_id = r->id;
            attron(base);
            mvhline(y, 0, ' ', w->cols);
            attroff(base);
        }
        char steps[24], accept[16] = "-", started[24];
        snprintf(steps, sizeof steps, "%d/%d", r->step, r->steps);
        if (e && e->rated)
            snprintf(accept, sizeof accept, "%.0f%%", 100 * e->accept);
        fmt_time(r->started_at, started, sizeof started);
        draw_textf(w, y, 0, x_model, base, "%5lld %-6s %-14s", (long long)r->id, r->kind,
                   r->trigger[0] ? r->trigger : "-");
        draw_text(w, y, x_model, model_w, base,
                  r->model_path[0] ? base_name(r->model_path) : "-");
        draw_text(w, y, x_status, 1, base, status_glyph(w, r->status));
        draw_text(w, y, x_status + 2, 10, sel ? base : status_attr(w, r->status), r->status);
        draw_textf(w, y, x_steps, 11, base, "%11s", steps);
        draw_text(w, y, x_spark, SPARK_W, sel ? base : draw_attr(w, CP_SMOOTH, A_NORMAL),
                  e ? e->spark : "");
        unsigned acc_attr = e && e->rated ? (e->accept >= 0.75 ? draw_attr(w, CP_OK, A_BOLD)
                                                          : draw_attr(w, CP_WARN, A_NORMAL))
                                     : base;
        draw_textf(w, y, x_acc, 6, sel ? base : acc_attr, "%6s", accept);
        if (show_started)
            draw_textf(w, y, x_start, 11, base, "%11s", started);
    }
    static const char *const keys[] = {"Enter", "Open", "n", "New", "c", "Clone", "s", "Sample",
                                       "d", "Delete", "/", "Search", "o", "Sort", "2", "Browse",
                                       "3", "Eval", "?", "Help", "q", "Quit", NULL};
    draw_keybar(w, keys);
}

static const ledger_run_row *selected(wb *w)
{
    wb_runs_state *s = &w->runs;
    if (!s->n_order || s->sel < 0 || s->sel >= (int)s->n_order)
        return NULL;
    return &s->rows[s->order[s->sel]];
}

static void set_search(wb *w, const char *text)
{
    snprintf(w->runs.search, sizeof w->runs.search, "%s", text);
    rebuild_order(w);
}

static void do_delete(wb *w, void *ctx)
{
    int64_t id = (int64_t)(intptr_t)ctx;
    char **orphans = NULL;
    size_t n = 0;
    coin_error err = {0};
    if (lq_delete_run(w->l, id, &orphans, &n, &err)) {
        wb_message(w, 1, "%s", err.msg);
        return;
    }
    int removed = 0;
    for (size_t i = 0; i < n; i++)
        removed += unlink(orphans[i]) == 0;
    lq_free_paths(orphans, n);
    wb_message(w, 0, "run %lld deleted, %d file%s only it used removed", (long long)id, removed,
               removed == 1 ? "" : "s");
    w->reload = 1;
}

static void ask_delete(wb *w, const ledger_run_row *r)
{
    wb_dialog *d = &w->dlg;
    d->kind = DLG_CONFIRM;
    snprintf(d->title, sizeof d->title, "Delete run %lld?", (long long)r->id);
    snprintf(d->text, sizeof d->text,
             "Run %lld (%s %s, %s) and its losses, checkpoints, samples and\n"
             "ratings leave the ledger.  Files only this run points at are removed;\n"
             "files any other run or sample still uses are kept.",
             (long long)r->id, r->kind, r->trigger[0] ? r->trigger : "", r->status);
    d->on_yes = do_delete;
    d->ctx = (void *)(intptr_t)r->id;
    w->full_redraw = 1;
}

int runs_key(wb *w, int is_key, wint_t ch)
{
    wb_runs_state *s = &w->runs;
    int h = w->rows - 4;
    const ledger_run_row *r = selected(w);
    if (is_key) {
        switch (ch) {
        case KEY_UP: if (s->sel > 0) s->sel--; return 1;
        case KEY_DOWN: if (s->sel + 1 < (int)s->n_order) s->sel++; return 1;
        case KEY_PPAGE: s->sel = s->sel > h ? s->sel - h : 0; return 1;
        case KEY_NPAGE:
            s->sel = s->sel + h < (int)s->n_order ? s->sel + h : (int)s->n_order - 1;
            return 1;
        case KEY_HOME: s->sel = 0; return 1;
        case KEY_END: s->sel = s->n_order ? (int)s->n_order - 1 : 0; return 1;
        case KEY_ENTER: if (r) run_open(w, r->id); return 1;
        case KEY_DC: if (r) ask_delete(w, r); return 1;
        default: return 0;
        }
    }
    switch (ch) {
    case '\r': case '\n':
        if (r) {
            if (!strcmp(r->kind, "train"))
                run_open(w, r->id);
            else
                browse_open(w, r->id);
        }
        return 1;
    case 'k': if (s->sel > 0) s->sel--; return 1;
    case 'j': if (s->sel + 1 < (int)s->n_order) s->sel++; return 1;
    case 'n': form_new_run(w, 0); return 1;
    case 'c':
        if (r && !strcmp(r->kind, "train"))
            form_new_run(w, r->id);
        else
            wb_message(w, 1, "only a training run can be cloned into the form");
        return 1;
    case 's':
        if (r && !strcmp(r->kind, "train"))
            run_open(w, r->id), wb_message(w, 0, "choose a checkpoint, then s samples from it");
        else
            sample_open(w, 0, NULL, NULL, r ? r->model_path : NULL);
        return 1;
    case 'd': if (r) ask_delete(w, r); return 1;
    case 'o': s->sort = (s->sort + 1) % N_SORTS; rebuild_order(w); return 1;
    case 'O': s->reverse = !s->reverse; rebuild_order(w); return 1;
    case '/':
        w->dlg.kind = DLG_INPUT;
        snprintf(w->dlg.title, sizeof w->dlg.title, "Search runs");
        snprintf(w->dlg.text, sizeof w->dlg.text, "Trigger word, model, status, kind or run id:");
        snprintf(w->dlg.input, sizeof w->dlg.input, "%s", s->search);
        w->dlg.on_input = set_search;
        return 1;
    case 27:
        if (s->search[0]) {
            set_search(w, "");
            return 1;
        }
        return 0;
    default: return 0;
    }
}

void runs_click(wb *w, int y, int x)
{
    (void)x;
    wb_runs_state *s = &w->runs;
    int i = s->top + y - 2;
    if (y >= 2 && y < w->rows - 2 && i < (int)s->n_order) {
        if (i == s->sel && selected(w))
            run_open(w, selected(w)->id);
        s->sel = i;
    }
}
