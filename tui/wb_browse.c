/*
 * wb_browse.c - the Browse screen (every sample across runs, filtered by
 * prompt text, seed, run and rating, with a preview) and the Evaluate
 * screen (our users' protocol: a checkpoint, a list of subjects, a count
 * per subject and a prompt template; coin queues the grid, the operator
 * rates as images arrive, and the screen holds the acceptance against the
 * 75% bar) (wb.h).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ncurses.h>

#include "tui/wb.h"

#define BROWSE_LIMIT 2000
#define ACCEPT_BAR 0.75

/* ---- Browse ---- */

void browse_open(wb *w, int64_t run)
{
    wb_browse_state *s = &w->browse;
    if (!s->form.f) {
        static const wb_field_spec F[] = {
            {"prompt has", "text", FT_TEXT, NULL, NULL}, {"seed", "seed", FT_INT, NULL, NULL},
            {"run", "run", FT_INT, NULL, NULL},
            {"rating", "rating", FT_CHOICE, "any|good|bad|not rated", "any"}};
        form_init(&s->form, s->fields, sizeof s->fields / sizeof *s->fields, F,
                  sizeof F / sizeof *F);
    }
    char id[24] = "";
    if (run)
        snprintf(id, sizeof id, "%lld", (long long)run);
    form_set(&s->form, "run", id);
    s->focus = 1;
    s->sel = 0;
    wb_open_screen(w, SCR_BROWSE);
}

void browse_reload(wb *w)
{
    wb_browse_state *s = &w->browse;
    wb_form *f = &s->form;
    lq_sample_filter q = {.newest_first = 1, .limit = BROWSE_LIMIT, .rating = -1};
    q.text = form_get(f, "text")->value;
    if (form_get(f, "seed")->value[0]) {
        q.has_seed = 1;
        q.seed = strtoull(form_get(f, "seed")->value, NULL, 10);
    }
    q.run = atoll(form_get(f, "run")->value);
    const char *r = form_get(f, "rating")->value;
    q.rating = !strcmp(r, "good") ? 1 : !strcmp(r, "bad") ? 0 : !strcmp(r, "not rated") ? 2 : -1;
    free(s->res);
    s->res = NULL;
    s->n_res = 0;
    coin_error err = {0};
    if (lq_samples(w->l, &q, &s->res, &s->n_res, &err))
        wb_message(w, 1, "%s", err.msg);
    if (s->sel >= (int)s->n_res)
        s->sel = s->n_res ? (int)s->n_res - 1 : 0;
}

void browse_draw(wb *w)
{
    wb_browse_state *s = &w->browse;
    draw_title(w, " coin  Browse: %zu sample%s%s", s->n_res, s->n_res == 1 ? "" : "s",
               s->n_res == BROWSE_LIMIT ? " (the newest; narrow the filter)" : "");
    int lw = w->cols * 3 / 5;
    form_draw(w, &s->form, 1, 0, 4, lw - 1, s->focus == 0);
    int y0 = 6, h = w->rows - 2 - y0;
    draw_textf(w, y0 - 1, 0, lw, draw_attr(w, CP_DIM, A_BOLD) | A_BOLD, "%6s %5s %10s %2s %s",
               "id", "run", "seed", "", "prompt");
    if (s->sel < s->top)
        s->top = s->sel;
    if (s->sel >= s->top + h)
        s->top = s->sel - h + 1;
    for (int i = 0; i < h && s->top + i < (int)s->n_res; i++) {
        const lq_sample_row *r = &s->res[s->top + i];
        int sel = s->top + i == s->sel;
        unsigned a = sel ? (s->focus ? draw_attr(w, CP_SEL, A_REVERSE) : A_BOLD) : A_NORMAL;
        const char *mark = r->rating == 1 ? (w->utf8 ? "\xe2\x9c\x93" : "+")
                           : r->rating == 0 ? (w->utf8 ? "\xe2\x9c\x97" : "x") : " ";
        if (sel) {
            attron(a);
            mvhline(y0 + i, 0, ' ', lw);
            attroff(a);
        }
        char run[16] = "-";
        if (r->run)
            snprintf(run, sizeof run, "%lld", (long long)r->run);
        int x = draw_textf(w, y0 + i, 0, lw, a, "%6lld %5s %10llu ", (long long)r->id, run,
                           (unsigned long long)r->seed);
        x += draw_text(w, y0 + i, x, 2, sel ? a : r->rating == 1 ? draw_attr(w, CP_OK, A_BOLD)
                                                               : draw_attr(w, CP_BAD, A_BOLD), mark);
        draw_text(w, y0 + i, x + 1, lw - x - 1, a, r->prompt);
    }
    if (!s->n_res)
        draw_text(w, y0 + 1, 2, lw - 2, draw_attr(w, CP_DIM, A_DIM), "no sample matches");
    /* the preview */
    if (s->sel >= 0 && s->sel < (int)s->n_res) {
        const lq_sample_row *r = &s->res[s->sel];
        int px = lw + 1, pw = w->cols - px, ph = h - 3;
        while (ph > 2 && wb_cols_for_rows(w, ph) > pw)
            ph--;
        draw_image(w, 1, px, ph, wb_cols_for_rows(w, ph), r->image_path);
        draw_textf(w, 2 + ph, px, pw, A_NORMAL, "#%lld %d steps cfg %g %s", (long long)r->id,
                   r->steps, r->guidance, r->sampler);
        draw_textf(w, 3 + ph, px, pw, draw_attr(w, CP_DIM, A_NORMAL), "%dx%d  %s", r->width,
                   r->height, base_name(r->image_path));
    }
    static const char *const keys[] = {"Tab", "Filter/list", "y", "Good", "n", "Bad", "r", "Regen",
                                       "i", "Info", "p", "Path", "Esc", "Back", "?", "Help", NULL};
    draw_keybar(w, keys);
}

int browse_key(wb *w, int is_key, wint_t ch)
{
    wb_browse_state *s = &w->browse;
    if ((!is_key && ch == '\t') || (is_key && ch == KEY_BTAB)) {
        s->focus = !s->focus;
        w->reload = 1;
        return 1;
    }
    if (s->focus == 0) {
        if (!is_key && ch == '\r') {
            s->focus = 1;
            w->reload = 1;
            return 1;
        }
        if (form_key(&s->form, is_key, ch)) {
            w->reload = 1;      /* the list follows the filter as it is typed */
            return 1;
        }
        return 0;
    }
    int h = w->rows - 8;
    if (is_key) {
        switch (ch) {
        case KEY_UP: if (s->sel > 0) s->sel--; return 1;
        case KEY_DOWN: if (s->sel + 1 < (int)s->n_res) s->sel++; return 1;
        case KEY_PPAGE: s->sel = s->sel > h ? s->sel - h : 0; return 1;
        case KEY_NPAGE:
            s->sel = s->sel + h < (int)s->n_res ? s->sel + h : (int)s->n_res - 1;
            return 1;
        default: return 0;
        }
    }
    if (s->sel >= 0 && s->sel < (int)s->n_res && sample_action(w, &s->res[s->sel], ch))
        return 1;
    return 0;
}

void browse_free(wb *w)
{
    free(w->browse.res);
    w->browse.res = NULL;
    free(w->eval.res);
    w->eval.res = NULL;
    free(w->sample.res);
    w->sample.res = NULL;
}

/* ---- Evaluate ---- */

void eval_open(wb *w, int64_t run)
{
    wb_eval_state *s = &w->eval;
    if (!s->form.f) {
        static const wb_field_spec F[] = {
            {"run", "run", FT_INT, NULL, NULL},
            {"checkpoint step (empty: latest)", "step", FT_INT, NULL, NULL},
            {"subjects (comma separated)", "subjects", FT_TEXT, NULL,
             "Brad Pitt, Angelina Jolie, Chris Evans, Tom Holland, Robert Downey Jr."},
            {"images per subject", "count", FT_INT, NULL, "4"},
            {"template", "template", FT_TEXT, NULL, "a photo of {subject} giving a {trigger}"},
            {"steps", "steps", FT_INT, NULL, "25"},
            {"first seed", "seed", FT_INT, NULL, "42"},
            {"grid rows", "grid", FT_INT, NULL, "2"}};
        form_init(&s->form, s->fields, sizeof s->fields / sizeof *s->fields, F,
                  sizeof F / sizeof *F);
    }
    if (!run && w->runs.n_order)
        for (size_t i = 0; i < w->runs.n && !run; i++)
            if (!strcmp(w->runs.rows[i].kind, "train"))
                run = w->runs.rows[i].id;
    if (run) {
        char id[24];
        snprintf(id, sizeof id, "%lld", (long long)run);
        form_set(&s->form, "run", id);
    }
    s->focus = 0;
    wb_open_screen(w, SCR_EVAL);
}

void eval_reload(wb *w)
{
    wb_eval_state *s = &w->eval;
    free(s->res);
    s->res = NULL;
    s->n_res = 0;
    s->good = s->rated = 0;
    if (!s->prefix[0])
        return;
    lq_sample_filter q = {.path_prefix = s->prefix, .rating = -1};
    coin_error err = {0};
    if (lq_samples(w->l, &q, &s->res, &s->n_res, &err) ||
        lq_sample_acceptance(w->l, &q, &s->good, &s->rated, &err))
        wb_message(w, 1, "%s", err.msg);
    if (s->sel >= (int)s->n_res)
        s->sel = s->n_res ? (int)s->n_res - 1 : 0;
}

static void eval_started(wb *w, void *ctx, int status, const char *out, const char *errs)
{
    (void)ctx;
    (void)out;
    if (status) {
        char line[400];
        wb_last_error(errs, line, sizeof line);
        wb_message(w, 1, "coin sample failed: %s", line);
    }
}

/* "a photo of {subject} giving a {trigger}" with both filled in. */
static void fill_template(const char *t, const char *subject, const char *trigger, char *out,
                          size_t len)
{
    size_t n = 0;
    while (*t && n + 1 < len) {
        const char *with = !strncmp(t, "{subject}", 9) ? subject
                           : !strncmp(t, "{trigger}", 9) ? trigger : NULL;
        if (with) {
            n += (size_t)snprintf(out + n, len - n, "%s", with);
            if (n >= len)
                n = len - 1;
            t += 9;
        } else {
            out[n++] = *t++;
        }
    }
    out[n] = '\0';
}

static void queue_grid(wb *w)
{
    wb_eval_state *s = &w->eval;
    wb_form *f = &s->form;
    int64_t run = atoll(form_get(f, "run")->value);
    ledger_run_row row;
    coin_error err = {0};
    if (!run || ledger_run_summary(w->l, run, &row, &err) || strcmp(row.kind, "train")) {
        wb_message(w, 1, "give the id of a training run (see the Runs screen)");
        return;
    }
    lq_checkpoint *ck = NULL;
    size_t n_ck = 0;
    if (lq_checkpoints(w->l, run, &ck, &n_ck, &err) || !n_ck) {
        wb_message(w, 1, "run %lld has no checkpoint yet", (long long)run);
        free(ck);
        return;
    }
    const lq_checkpoint *use = &ck[n_ck - 1];
    if (form_get(f, "step")->value[0]) {
        int step = atoi(form_get(f, "step")->value);
        use = NULL;
        for (size_t i = 0; i < n_ck; i++)
            if (ck[i].step == step)
                use = &ck[i];
        if (!use) {
            wb_message(w, 1, "run %lld has no checkpoint at step %d", (long long)run, step);
            free(ck);
            return;
        }
    }
    char emb[1100], dir[1100];
    checkpoint_embedding(use, emb, sizeof emb);
    free(ck);
    snprintf(dir, sizeof dir, "%s/samples", w->home);
    if (mkdir(dir, 0755) && errno != EEXIST) {
        wb_message(w, 1, "cannot create %s: %s", dir, strerror(errno));
        return;
    }
    snprintf(s->prefix, sizeof s->prefix, "%s/samples/eval-%lld-%lld-", w->home, (long long)run,
             (long long)time(NULL));
    char subjects[1024];
    snprintf(subjects, sizeof subjects, "%s", form_get(f, "subjects")->value);
    int k = 0, queued = 0;
    for (char *save, *sub = strtok_r(subjects, ",", &save); sub; sub = strtok_r(NULL, ",", &save)) {
        while (*sub == ' ')
            sub++;
        size_t len = strlen(sub);
        while (len && sub[len - 1] == ' ')
            sub[--len] = '\0';
        if (!len)
            continue;
        char prompt[1100], out[1200];
        fill_template(form_get(f, "template")->value, sub, row.trigger, prompt, sizeof prompt);
        snprintf(out, sizeof out, "%s%02d.png", s->prefix, k++);
        char *args[] = {"sample", "--model", row.model_path, "--embedding", emb, "--prompt", prompt,
                        "--batch", form_get(f, "count")->value, "--steps",
                        form_get(f, "steps")->value, "--seed", form_get(f, "seed")->value,
                        "--out", out, NULL};
        if (wb_start_job(w, args, eval_started, NULL) == 0)
            queued++;
    }
    wb_message(w, 0, "%d subject%s queued from step %d; rate with y / n as images arrive", queued,
               queued == 1 ? "" : "s", use ? use->step : 0);
    s->focus = 1;
    s->sel = 0;
    w->reload = 1;
}

void eval_draw(wb *w)
{
    wb_eval_state *s = &w->eval;
    double share = s->rated ? (double)s->good / s->rated : NAN;
    draw_title(w, " coin  Evaluate: %zu image%s, %d rated, %d good", s->n_res,
               s->n_res == 1 ? "" : "s", s->rated, s->good);
    int fw = w->cols - 2 < 110 ? w->cols - 2 : 110;
    form_draw(w, &s->form, 1, 0, 8, fw, s->focus == 0);
    /* acceptance against the bar */
    int y = 10, bw = 50;
    draw_text(w, y, 0, 14, A_BOLD, "acceptance");
    int fill = s->rated ? (int)lround(share * bw) : 0, bar = (int)lround(ACCEPT_BAR * bw);
    move(y, 14);
    for (int i = 0; i < bw; i++) {
        unsigned a = i < fill ? (share >= ACCEPT_BAR ? draw_attr(w, CP_OK, A_REVERSE)
                                                : draw_attr(w, CP_WARN, A_REVERSE)) | A_REVERSE
                         : A_NORMAL;
        attron(a);
        addch(i == bar ? '|' : i < fill ? ' ' : '.');
        attroff(a);
    }
    if (s->rated)
        draw_textf(w, y, 15 + bw, w->cols - 15 - bw, share >= ACCEPT_BAR ? draw_attr(w, CP_OK, A_BOLD)
                   : draw_attr(w, CP_WARN, A_BOLD), "%.0f%% %s 75%%", 100 * share,
                   share >= ACCEPT_BAR ? ">=" : "<");
    else
        draw_text(w, y, 15 + bw, w->cols - 15 - bw, draw_attr(w, CP_DIM, A_DIM), "(nothing rated)");
    draw_text(w, y + 1, 0, fw, draw_attr(w, CP_DIM, A_DIM),
              "the bar is 75% good: the trigger works for our users");
    int gy = 13, gh = w->rows - 2 - gy;
    if (s->prefix[0] && !s->n_res)
        draw_text(w, gy, 0, w->cols, draw_attr(w, CP_DIM, A_DIM), "queued: images appear as they finish");
    sample_results_draw(w, s->res, s->n_res, s->sel, s->focus == 1,
                        atoi(form_get(&s->form, "grid")->value), gy, 0, gh, w->cols);
    static const char *const keys[] = {"^G", "Queue", "Tab", "Form/images", "y", "Good", "n", "Bad",
                                       "r", "Regen", "i", "Info", "Esc", "Back", "F1", "Help", NULL};
    draw_keybar(w, keys);
}

int eval_key(wb *w, int is_key, wint_t ch)
{
    wb_eval_state *s = &w->eval;
    if ((!is_key && ch == 7) || (is_key && ch == KEY_F(5))) {
        queue_grid(w);
        return 1;
    }
    if ((!is_key && ch == '\t') || (is_key && ch == KEY_BTAB)) {
        s->focus = !s->focus;
        return 1;
    }
    if (s->focus == 0)
        return form_key(&s->form, is_key, ch);
    if (is_key)
        return sample_results_key(w, &s->sel, s->n_res, atoi(form_get(&s->form, "grid")->value),
                                  w->rows - 15, w->cols, ch);
    if (s->sel >= 0 && s->sel < (int)s->n_res && sample_action(w, &s->res[s->sel], ch))
        return 1;
    return 0;
}

void browse_click(wb *w, int y, int x)
{
    wb_browse_state *s = &w->browse;
    int lw = w->cols * 3 / 5;
    if (x < lw && y >= 1 && y < 5) {
        s->focus = 0;
        s->form.sel = s->form.top + y - 1 < s->form.n ? s->form.top + y - 1 : s->form.sel;
    } else if (x < lw && y >= 6 && y < w->rows - 2 && s->top + y - 6 < (int)s->n_res) {
        s->focus = 1;
        s->sel = s->top + y - 6;
    }
}

void eval_click(wb *w, int y, int x)
{
    wb_eval_state *s = &w->eval;
    if (y >= 1 && y < 9) {
        s->focus = 0;
        s->form.sel = y - 1;
        return;
    }
    int i = sample_results_hit(w, s->n_res, s->sel, atoi(form_get(&s->form, "grid")->value), 13,
                               0, w->rows - 15, w->cols, y, x);
    if (i >= 0) {
        s->sel = i;
        s->focus = 1;
    }
}
