/*
 * wb_run.c - the screen of one training run: its hyperparameters, the live
 * loss curve, speed and time left, its checkpoints with their preview
 * images, and the controls (pause, resume, stop, sample, clone) (wb.h).
 *
 * The curve is read once and then only its new tail at each refresh
 * (ledger_losses_after), so a long run costs the same to watch at step 100,000
 * as at step 100.
 */
#include <cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <ncurses.h>

#include "tui/wb.h"

#define EMA_ALPHA 0.05f

static void free_curve(wb_run_state *s)
{
    free(s->xs);
    s->xs = NULL;
    free(s->steps);
    free(s->loss);
    free(s->lr);
    free(s->smooth);
    s->steps = NULL;
    s->loss = s->lr = s->smooth = NULL;
    s->n = 0;
}

static void free_overlay(wb_run_state *s)
{
    free(s->o_xs);
    s->o_xs = NULL;
    free(s->o_steps);
    free(s->o_loss);
    s->o_steps = NULL;
    s->o_loss = NULL;
    s->o_n = 0;
}

void run_free(wb *w)
{
    wb_run_state *s = &w->run;
    free_curve(s);
    free_overlay(s);
    ledger_run_free(&s->run);
    free(s->ck);
    s->ck = NULL;
    s->n_ck = 0;
    s->loaded = 0;
}

void run_open(wb *w, int64_t id)
{
    wb_run_state *s = &w->run;
    if (s->id != id || !s->loaded) {
        int64_t overlay = s->id == id ? s->overlay : 0;
        int log_y = s->log_y, mode = s->mode, window = s->window;
        run_free(w);
        memset(s, 0, sizeof *s);
        s->id = id;
        s->overlay = overlay;
        s->log_y = log_y;
        s->mode = mode;
        s->window = window;
        s->ck_sel = -1;
    }
    wb_open_screen(w, SCR_RUN);
}

void checkpoint_embedding(const lq_checkpoint *c, char *out, size_t len)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", c->path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    /* The trainer records the checkpoint under the name of the latest
     * embedding, which the next checkpoint overwrites; the per-step copy
     * beside it is the checkpoint itself. */
    struct stat sb;
    snprintf(out, len, "%s/learned_embeds-steps-%d.safetensors", dir, c->step);
    if (stat(out, &sb) != 0)
        snprintf(out, len, "%s", c->path);
}

/* The preview images written with a checkpoint: previews/step-N-K.png. */
static int preview_paths(const lq_checkpoint *c, char paths[][1100], int max)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", c->path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    int n = 0;
    for (int k = 0; k < 8 && n < max; k++) {
        struct stat sb;
        snprintf(paths[n], 1100, "%s/previews/step-%d-%d.png", dir, c->step, k);
        if (stat(paths[n], &sb) == 0)
            n++;
    }
    return n;
}

void run_reload(wb *w)
{
    wb_run_state *s = &w->run;
    coin_error err = {0};
    ledger_run_free(&s->run);
    if (ledger_get_run(w->l, s->id, &s->run, &err) ||
        ledger_run_summary(w->l, s->id, &s->row, &err)) {
        wb_message(w, 1, "%s", err.msg);
        wb_open_screen(w, SCR_RUNS);
        return;
    }
    /* A resumed run trains the steps after its checkpoint again and
     * overwrites their losses: read its curve afresh when it starts again. */
    if (s->loaded && strcmp(s->last_status, "running") && !strcmp(s->run.status, "running"))
        free_curve(s);
    snprintf(s->last_status, sizeof s->last_status, "%s", s->run.status);
    /* the new tail of the curve */
    size_t old = s->n;
    int last = s->n ? s->steps[s->n - 1] : 0;
    if (ledger_losses_after(w->l, s->id, last, &s->steps, &s->loss, &s->lr, &s->n, &err)) {
        wb_message(w, 1, "%s", err.msg);
    } else if (s->n > old) {
        /* the plot wants its x as floats: kept beside the steps */
        float *xs = realloc(s->xs, s->n * sizeof *xs);
        if (xs) {
            s->xs = xs;
            for (size_t i = old; i < s->n; i++)
                xs[i] = (float)s->steps[i];
        }
        float *sm = realloc(s->smooth, s->n * sizeof *sm);
        if (sm) {
            s->smooth = sm;
            /* continue the average from where it was */
            float prev = NAN;
            for (size_t i = old; i-- > 0;)
                if (!isnan(sm[i])) {
                    prev = sm[i];
                    break;
                }
            for (size_t i = old; i < s->n; i++) {
                float v = s->loss[i];
                if (!isfinite(v)) {
                    sm[i] = NAN;
                    continue;
                }
                prev = isnan(prev) ? v : EMA_ALPHA * v + (1 - EMA_ALPHA) * prev;
                sm[i] = prev;
            }
        }
    }
    if (s->overlay && !s->o_n &&
        ledger_losses_after(w->l, s->overlay, 0, &s->o_steps, &s->o_loss, NULL, &s->o_n,
                            &err) == 0 &&
        s->o_n && (s->o_xs = malloc(s->o_n * sizeof *s->o_xs)))
        for (size_t i = 0; i < s->o_n; i++)
            s->o_xs[i] = (float)s->o_steps[i];
    /* a selection on the newest checkpoint follows the new ones */
    int on_newest = s->ck_sel < 0 || s->ck_sel == (int)s->n_ck - 1;
    free(s->ck);
    s->ck = NULL;
    if (lq_checkpoints(w->l, s->id, &s->ck, &s->n_ck, &err))
        wb_message(w, 1, "%s", err.msg);
    if (on_newest || s->ck_sel >= (int)s->n_ck)
        s->ck_sel = s->n_ck ? (int)s->n_ck - 1 : -1;
    /* it/s from what we have watched; before that, from the start time */
    double now = wb_now();
    if (!s->loaded || s->row.step < s->rate_s0) {
        s->rate_t0 = now;
        s->rate_s0 = s->row.step;
        s->rate = NAN;
    } else if (s->row.step > s->rate_s0 && now - s->rate_t0 > 1.0) {
        s->rate = (s->row.step - s->rate_s0) / (now - s->rate_t0);
    }
    if (isnan(s->rate) && !strcmp(s->row.status, "running") && s->row.started_at &&
        s->row.step > 0) {
        double el = (double)(time(NULL) - s->row.started_at);
        if (el > 0)
            s->rate = s->row.step / el;
    }
    s->loaded = 1;
}

static void draw_params(wb *w, int y, int x, int h, int wd)
{
    wb_run_state *s = &w->run;
    cJSON *c = cJSON_Parse(s->run.config_json ? s->run.config_json : "{}");
    static const char *const shown[][2] = {
        {"init_word", "init"}, {"steps", "steps"}, {"lr", "lr"}, {"scale_lr", "scale lr"},
        {"schedule", "schedule"}, {"warmup", "warmup"}, {"batch", "batch"},
        {"grad_accum", "grad accum"}, {"max_grad_norm", "clip grad"}, {"vectors", "vectors"},
        {"resolution", "resolution"}, {"templates", "templates"}, {"center_crop", "crop"},
        {"save_every", "ckpt every"}, {"seed", "seed"}, {"checkpointing", "grad ckpt"},
        {"n_previews", "previews"}, {"preview_prompt", "preview"}, {"images", "images"},
        {"out_dir", "out"},
    };
    int row = 0;
    draw_text(w, y + row++, x, wd, A_BOLD, "Hyperparameters");
    for (size_t i = 0; i < sizeof shown / sizeof *shown && row < h; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, shown[i][0]);
        char val[1100];
        if (cJSON_IsString(v))
            snprintf(val, sizeof val, "%s", v->valuestring);
        else if (cJSON_IsNumber(v))
            snprintf(val, sizeof val, "%g", v->valuedouble);
        else if (cJSON_IsBool(v))
            snprintf(val, sizeof val, "%s", cJSON_IsTrue(v) ? "yes" : "no");
        else
            continue;
        int lw = draw_textf(w, y + row, x, 11, draw_attr(w, CP_DIM, A_NORMAL), "%-11s",
                            shown[i][1]);
        /* paths: the end says more than the start */
        const char *p = val;
        if ((int)strlen(val) > wd - lw - 1 && strchr(val, '/'))
            p = val + strlen(val) - (wd - lw - 1);
        draw_text(w, y + row, x + lw, wd - lw, A_NORMAL, p);
        row++;
    }
    cJSON_Delete(c);
}

void run_draw(wb *w)
{
    wb_run_state *s = &w->run;
    if (!s->loaded) {
        draw_title(w, " coin  Run %lld", (long long)s->id);
        return;
    }
    const ledger_run_row *r = &s->row;
    char eta[32] = "-", rate[32] = "-";
    if (!isnan(s->rate) && s->rate > 0) {
        snprintf(rate, sizeof rate, "%.2f it/s", s->rate);
        if (!strcmp(r->status, "running"))
            fmt_duration((r->steps - r->step) / s->rate, eta, sizeof eta);
    }
    float lr = s->n ? s->lr[s->n - 1] : NAN;
    draw_title(w, " coin  Run %lld  %s  %s  step %d/%d  lr %.3g  %s  ETA %s", (long long)s->id,
               r->trigger[0] ? r->trigger : "-", r->status, r->step, r->steps, lr, rate, eta);
    int y = 1;
    draw_textf(w, y, 1, w->cols - 2, draw_attr(w, CP_DIM, A_NORMAL), "model %s   loss %s%.4f",
               r->model_path[0] ? r->model_path : "-", s->n ? "" : "-",
               s->n ? (double)s->loss[s->n - 1] : 0.0);
    if (s->run.error && s->run.error[0])
        draw_textf(w, y, 1, w->cols - 2, draw_attr(w, CP_BAD, A_BOLD), "error: %s", s->run.error);
    int left = 30, top = 2;
    int body = w->rows - 2 - top;                   /* rows above the message line */
    int ph = body * 11 / 20;                        /* plot */
    if (ph < 8)
        ph = 8;
    draw_params(w, top, 0, ph, left - 1);
    /* the plot */
    char head[160];
    snprintf(head, sizeof head, "Loss  %s  %s  %s", s->log_y ? "log" : "linear",
             s->mode == 0 ? "raw + smoothed" : s->mode == 1 ? "raw" : "smoothed",
             s->window ? "last " : "whole run");
    int hx = draw_text(w, top, left + 1, w->cols - left - 1, A_BOLD, head);
    if (s->window)
        hx += draw_textf(w, top, left + 1 + hx, 20, A_BOLD, "%d steps", s->window);
    if (s->overlay)
        draw_textf(w, top, left + 2 + hx, w->cols - left - hx - 2,
                   draw_attr(w, CP_OVERLAY, A_UNDERLINE), "  vs run %lld", (long long)s->overlay);
    draw_plot(w, top + 1, left, ph - 1, w->cols - left, s->xs, s->loss, s->smooth, s->n, s->o_xs,
              s->o_loss, s->o_n, s->log_y, s->window, s->mode);
    /* checkpoints and previews */
    int cy = top + ph + 1, ch = w->rows - 2 - cy;
    draw_hline(w, cy - 1, 0, w->cols);
    draw_textf(w, cy, 0, left, A_BOLD, "Checkpoints (%zu)", s->n_ck);
    if (!s->n_ck)
        draw_text(w, cy + 1, 1, left - 1, draw_attr(w, CP_DIM, A_DIM), "none yet");
    int list_h = ch - 1, first = 0;
    if (s->ck_sel >= list_h)
        first = s->ck_sel - list_h + 1;
    for (int i = 0; i < list_h && first + i < (int)s->n_ck; i++) {
        const lq_checkpoint *c = &s->ck[first + i];
        int sel = first + i == s->ck_sel;
        char when[24];
        fmt_time(c->created_at, when, sizeof when);
        draw_textf(w, cy + 1 + i, 0, left - 1, sel ? draw_attr(w, CP_SEL, A_REVERSE) : A_NORMAL,
                   "%s step %-7d %s", sel ? ">" : " ", c->step, when);
    }
    if (s->ck_sel >= 0 && s->ck_sel < (int)s->n_ck) {
        char paths[8][1100];
        int np = preview_paths(&s->ck[s->ck_sel], paths, 8);
        int ix = left + 1, iw = wb_cols_for_rows(w, ch - 1);
        draw_textf(w, cy, left + 1, w->cols - left - 1, A_BOLD, "Previews at step %d%s",
                   s->ck[s->ck_sel].step, np ? "" : ": none (previews 0, or not written yet)");
        for (int k = 0; k < np && ix + iw <= w->cols; k++) {
            draw_image(w, cy + 1, ix, ch - 1, iw, paths[k]);
            ix += iw + 1;
        }
    }
    static const char *const keys[] = {"Esc", "Back", "l", "Log", "m", "Mode", "w", "Window",
                                       "v", "Overlay", "s", "Sample", "p", "Pause", "r", "Resume",
                                       "x", "Stop", "c", "Clone", "?", "Help", NULL};
    draw_keybar(w, keys);
}

/* ---- controls ---- */

static void control_done(wb *w, void *ctx, int status, const char *out, const char *errs)
{
    const char *verb = ctx;
    char line[300];
    if (status == 0 && !strcmp(verb, "resume")) {
        snprintf(line, sizeof line, "run %lld queued to go on from its last checkpoint",
                 atoll(out));
    } else if (status == 0) {
        snprintf(line, sizeof line, "%s", out);
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
    } else {
        wb_last_error(errs, line, sizeof line);
    }
    wb_message(w, status != 0, "%s", line[0] ? line : status ? "the command failed" : "done");
}

static void control(wb *w, const char *verb)
{
    char id[24];
    snprintf(id, sizeof id, "%lld", (long long)w->run.id);
    /* resume queues the run again: without --no-follow it would follow it */
    char *args[] = {(char *)verb, id, !strcmp(verb, "resume") ? "--no-follow" : NULL, NULL};
    if (wb_command(w, args, control_done, (void *)verb) == 0)
        wb_message(w, 0, "coin %s %s ...", verb, id);
}

static void do_stop(wb *w, void *ctx)
{
    (void)ctx;
    control(w, "stop");
}

static void set_overlay(wb *w, const char *text)
{
    wb_run_state *s = &w->run;
    long long id = atoll(text);
    free_overlay(s);
    s->overlay = 0;
    if (id > 0 && id != s->id) {
        ledger_run_row row;
        coin_error err = {0};
        if (ledger_run_summary(w->l, id, &row, &err)) {
            wb_message(w, 1, "%s", err.msg);
            return;
        }
        s->overlay = id;
    }
    w->reload = 1;
}

int run_key(wb *w, int is_key, wint_t ch)
{
    wb_run_state *s = &w->run;
    if (is_key) {
        if (ch == KEY_UP && s->ck_sel > 0)
            s->ck_sel--;
        else if (ch == KEY_DOWN && s->ck_sel + 1 < (int)s->n_ck)
            s->ck_sel++;
        else if (ch == KEY_HOME && s->n_ck)
            s->ck_sel = 0;
        else if (ch == KEY_END && s->n_ck)
            s->ck_sel = (int)s->n_ck - 1;
        else
            return 0;
        return 1;
    }
    switch (ch) {
    case 'l': s->log_y = !s->log_y; return 1;
    case 'm': s->mode = (s->mode + 1) % 3; return 1;
    case 'w': s->window = s->window == 0 ? 100 : s->window == 100 ? 1000 : 0; return 1;
    case 'v':
        w->dlg.kind = DLG_INPUT;
        snprintf(w->dlg.title, sizeof w->dlg.title, "Overlay a run");
        snprintf(w->dlg.text, sizeof w->dlg.text, "Draw the loss of which run over this one?\n"
                 "(its id from the Runs screen; 0 or empty removes the overlay)");
        w->dlg.input[0] = '\0';
        w->dlg.on_input = set_overlay;
        return 1;
    case 'p': control(w, "pause"); return 1;
    case 'r': control(w, "resume"); return 1;
    case 'x':
        if (strcmp(s->row.status, "running")) {
            wb_message(w, 1, "run %lld is %s, not running", (long long)s->id, s->row.status);
            return 1;
        }
        w->dlg.kind = DLG_CONFIRM;
        snprintf(w->dlg.title, sizeof w->dlg.title, "Stop run %lld?", (long long)s->id);
        snprintf(w->dlg.text, sizeof w->dlg.text,
                 "It writes a checkpoint after its current step and ends.\n"
                 "coin resume (r here) can continue it later.");
        w->dlg.on_yes = do_stop;
        return 1;
    case 'c': form_new_run(w, s->id); return 1;
    case 's': {
        if (s->ck_sel < 0 || s->ck_sel >= (int)s->n_ck) {
            wb_message(w, 1, "this run has no checkpoint yet to sample from");
            return 1;
        }
        char emb[1100];
        checkpoint_embedding(&s->ck[s->ck_sel], emb, sizeof emb);
        sample_open(w, s->id, emb, s->row.trigger, s->row.model_path);
        return 1;
    }
    case 'k': if (s->ck_sel > 0) s->ck_sel--; return 1;
    case 'j': if (s->ck_sel + 1 < (int)s->n_ck) s->ck_sel++; return 1;
    default: return 0;
    }
}

void run_click(wb *w, int y, int x)
{
    wb_run_state *s = &w->run;
    int body = w->rows - 4, ph = body * 11 / 20;
    if (ph < 8)
        ph = 8;
    int cy = 2 + ph + 1;
    if (x < 30 && y > cy && y < w->rows - 2) {
        int i = y - cy - 1;
        int list_h = w->rows - 2 - cy - 1, first = s->ck_sel >= list_h ? s->ck_sel - list_h + 1 : 0;
        if (first + i < (int)s->n_ck)
            s->ck_sel = first + i;
    }
}
