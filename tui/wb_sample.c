/*
 * wb_sample.c - the Sample screen: a prompt and its parameters on the
 * left, the images of this screen's jobs on the right as the worker
 * records them, and the actions on an image that the Browse and Evaluate
 * screens share: rate, regenerate and compare, every parameter, the path
 * (wb.h).
 *
 * The screen knows its images by the file names it gave its jobs (one
 * prefix per visit), so results show up whether or not the job reported
 * its run id.
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

static const wb_field_spec SAMPLE_FIELDS[] = {
    {"prompt", "prompt", FT_TEXT, NULL, NULL},
    {"negative", "negative", FT_TEXT, NULL, NULL},
    {"seed", "seed", FT_INT, NULL, "42"},
    {"steps", "steps", FT_INT, NULL, "25"},
    {"guidance", "cfg", FT_FLOAT, NULL, "7.5"},
    {"sampler", "sampler", FT_CHOICE, "model's own|ddim|pndm|euler|euler_a|dpmpp_2m",
     "model's own"},
    {"schedule", "schedule", FT_CHOICE, "default|karras", "default"},
    {"width (0: native)", "width", FT_INT, NULL, "0"},
    {"height (0: native)", "height", FT_INT, NULL, "0"},
    {"images", "batch", FT_INT, NULL, "4"},
    {"grid rows", "grid", FT_INT, NULL, "1"},
    {"model", "model", FT_TEXT, NULL, NULL},
    {"embedding", "embedding", FT_TEXT, NULL, NULL},
};
#define N_SAMPLE_FIELDS ((int)(sizeof SAMPLE_FIELDS / sizeof *SAMPLE_FIELDS))

uint64_t wb_random_seed(void)
{
    uint64_t v = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        if (fread(&v, sizeof v, 1, f) != 1)
            v = 0;
        fclose(f);
    }
    if (!v) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        v = (uint64_t)ts.tv_nsec * 6364136223846793005ull + (uint64_t)ts.tv_sec;
    }
    return v % 4294967296ull;   /* what other tools take as a seed */
}

void sample_open(wb *w, int64_t run, const char *embedding, const char *trigger,
                 const char *model)
{
    wb_sample_state *s = &w->sample;
    if (!s->form.f) {
        form_init(&s->form, s->fields, sizeof s->fields / sizeof *s->fields, SAMPLE_FIELDS,
                  N_SAMPLE_FIELDS);
        char fallback[1024];
        if (w->runs.n && w->runs.rows[0].model_path[0])
            form_set(&s->form, "model", w->runs.rows[0].model_path);
        else if (wb_default_model(fallback, sizeof fallback) > 0)
            form_set(&s->form, "model", fallback);
    }
    if (model && *model)
        form_set(&s->form, "model", model);
    if (embedding) {
        form_set(&s->form, "embedding", embedding);
        snprintf(s->trigger, sizeof s->trigger, "%s", trigger ? trigger : "");
        if (trigger && *trigger) {
            char p[600];
            snprintf(p, sizeof p, "a photo of %s", trigger);
            if (!form_get(&s->form, "prompt")->value[0] || run != s->from_run)
                form_set(&s->form, "prompt", p);
        }
    }
    s->from_run = run;
    if (!s->prefix[0]) {
        snprintf(s->prefix, sizeof s->prefix, "%s/samples/wb-%lld-%d-", w->home,
                 (long long)time(NULL), (int)getpid());
    }
    s->focus = 0;
    s->form.sel = 0;
    wb_open_screen(w, SCR_SAMPLE);
}

void sample_reload(wb *w)
{
    wb_sample_state *s = &w->sample;
    free(s->res);
    s->res = NULL;
    s->n_res = 0;
    lq_sample_filter f = {.path_prefix = s->prefix, .rating = -1};
    coin_error err = {0};
    if (lq_samples(w->l, &f, &s->res, &s->n_res, &err))
        wb_message(w, 1, "%s", err.msg);
    if (s->sel >= (int)s->n_res)
        s->sel = s->n_res ? (int)s->n_res - 1 : 0;
}

/* The parameters column: wide enough for paths, the rest for images. */
static int form_width(wb *w)
{
    int fw = w->cols * 2 / 5;
    return fw < 46 ? 46 : fw > 70 ? 70 : fw;
}

/* Tiles of the grid: how many fit, and their size in cells. */
typedef struct grid {
    int y, x, h, wd, rows, per_row, th, tw, first;
} grid;

static void layout(wb *w, int n, int sel, int grid_rows, int y, int x, int h, int wd, grid *g)
{
    g->y = y;
    g->x = x;
    g->h = h;
    g->wd = wd;
    g->rows = grid_rows < 1 ? 1 : grid_rows > 4 ? 4 : grid_rows;
    /* as many per row as the images need, as large as the box allows */
    int want = (n + g->rows - 1) / g->rows;
    want = want < 1 ? 1 : want > 6 ? 6 : want;
    g->th = h / g->rows - 1;        /* a label row above each picture */
    if (g->th < 2)
        g->th = 2;
    g->tw = wb_cols_for_rows(w, g->th);
    if (g->tw > wd / want - 1) {
        g->tw = wd / want - 1;
        g->th = g->tw / 2;
    }
    if (g->tw < 4) {
        g->tw = 4;
        g->th = 2;
    }
    g->per_row = wd / (g->tw + 1);
    if (g->per_row < 1)
        g->per_row = 1;
    int page = g->rows * g->per_row;
    g->first = sel / page * page;
}

static void grid_cell(const grid *g, int i, int *ty, int *tx)
{
    int k = i - g->first;
    *ty = g->y + (k / g->per_row) * (g->th + 1);
    *tx = g->x + (k % g->per_row) * (g->tw + 1);
}

/* The results grid shared by the screens that show samples. */
static void draw_results(wb *w, const lq_sample_row *res, size_t n, int sel, int focused,
                         int grid_rows, int y, int x, int h, int wd)
{
    grid g;
    layout(w, (int)n, sel, grid_rows, y, x, h, wd, &g);
    int page = g.rows * g.per_row;
    for (int i = g.first; i < (int)n && i < g.first + page; i++) {
        int ty, tx;
        grid_cell(&g, i, &ty, &tx);
        const lq_sample_row *r = &res[i];
        int is_sel = i == sel;
        const char *mark = r->rating == 1 ? (w->utf8 ? "\xe2\x9c\x93" : "+")
                           : r->rating == 0 ? (w->utf8 ? "\xe2\x9c\x97" : "x") : " ";
        unsigned a = is_sel && focused ? draw_attr(w, CP_SEL, A_REVERSE)
                : is_sel ? A_BOLD | A_UNDERLINE : A_NORMAL;
        int lx = draw_textf(w, ty, tx, g.tw, a, "#%lld seed %llu ", (long long)r->id,
                            (unsigned long long)r->seed);
        draw_text(w, ty, tx + lx, g.tw - lx,
                  r->rating == 1 ? draw_attr(w, CP_OK, A_BOLD) : draw_attr(w, CP_BAD, A_BOLD), mark);
        draw_image(w, ty + 1, tx, g.th, g.tw, r->image_path);
    }
    if (n > (size_t)page)
        draw_textf(w, y + h, x, wd, draw_attr(w, CP_DIM, A_DIM), "images %d-%d of %zu", g.first + 1,
                   g.first + page < (int)n ? g.first + page : (int)n, n);
}

void sample_draw(wb *w)
{
    wb_sample_state *s = &w->sample;
    int good = 0, rated = 0;
    for (size_t i = 0; i < s->n_res; i++)
        if (s->res[i].rating >= 0) {
            rated++;
            good += s->res[i].rating;
        }
    draw_title(w, " coin  Sample%s%s  %zu image%s  %d rated, %d good", s->trigger[0] ? "  " : "",
               s->trigger, s->n_res, s->n_res == 1 ? "" : "s", rated, good);
    int fw = form_width(w);
    draw_text(w, 1, 0, fw, A_BOLD, s->focus == 0 ? "Parameters (Tab: to the images)"
                                                 : "Parameters");
    form_draw(w, &s->form, 2, 0, N_SAMPLE_FIELDS, fw - 1, s->focus == 0);
    int y = 2 + N_SAMPLE_FIELDS + 1;
    if (s->trigger[0])
        draw_textf(w, y++, 0, fw, draw_attr(w, CP_DIM, A_NORMAL), "trigger %s: Ctrl-T types it",
                   s->trigger);
    if (s->regen_result[0])
        draw_text(w, y++, 0, fw, draw_attr(w, CP_OK, A_BOLD), s->regen_result);
    if (s->sel >= 0 && s->sel < (int)s->n_res) {
        const lq_sample_row *r = &s->res[s->sel];
        draw_textf(w, y++, 0, fw, A_NORMAL, "#%lld: %s", (long long)r->id, r->prompt);
        draw_textf(w, y++, 0, fw, draw_attr(w, CP_DIM, A_NORMAL), "%d steps  cfg %g  %s  %dx%d",
                   r->steps, r->guidance, r->sampler, r->width, r->height);
    }
    draw_text(w, 1, fw + 1, w->cols - fw - 1, A_BOLD,
              s->focus == 1 ? "Images (y/n rate, r regenerate, i info, p path)" : "Images");
    if (!s->n_res)
        draw_text(w, 3, fw + 1, w->cols - fw - 1, draw_attr(w, CP_DIM, A_DIM),
                  "none yet: Ctrl-G (or F5) makes them; they appear as they finish");
    int grid_rows = atoi(form_get(&s->form, "grid")->value);
    draw_results(w, s->res, s->n_res, s->sel, s->focus == 1, grid_rows, 2, fw + 1,
                 w->rows - 5, w->cols - fw - 1);
    static const char *const form_keys[] = {"^G", "Generate", "Tab", "Images", "^R", "Seed",
                                            "^T", "Trigger", "PgUp/Dn", "Checkpoint", "Esc",
                                            "Back", "F1", "Help", NULL};
    static const char *const res_keys[] = {"y", "Good", "n", "Bad", "r", "Regen", "i", "Info",
                                           "p", "Path", "Tab", "Form", "Esc", "Back", "?", "Help",
                                           NULL};
    draw_keybar(w, s->focus == 0 ? form_keys : res_keys);
}

static void sample_started(wb *w, void *ctx, int status, const char *out, const char *errs)
{
    (void)ctx;
    if (status == 0) {
        long long id = atoll(out);
        if (id > 0)
            wb_message(w, 0, "sampling run %lld queued; images appear as they finish", id);
        else
            wb_message(w, 0, "sampling in the background; images appear as they finish");
        return;
    }
    char line[400];
    wb_last_error(errs, line, sizeof line);
    wb_message(w, 1, "coin sample failed: %s", line);
}

static void generate(wb *w)
{
    wb_sample_state *s = &w->sample;
    wb_form *f = &s->form;
    if (!form_get(f, "prompt")->value[0] || !form_get(f, "model")->value[0]) {
        wb_message(w, 1, "a prompt and a model are needed");
        return;
    }
    char out[1200], dir[1100];
    snprintf(dir, sizeof dir, "%s/samples", w->home);
    if (mkdir(dir, 0755) && errno != EEXIST) {
        wb_message(w, 1, "cannot create %s: %s", dir, strerror(errno));
        return;
    }
    snprintf(out, sizeof out, "%s%d.png", s->prefix, ++s->jobs);
    char *args[40];
    int n = 0;
    args[n++] = "sample";
    static const char *const opts[][2] = {
        {"model", "--model"}, {"prompt", "--prompt"}, {"negative", "--negative"},
        {"seed", "--seed"}, {"steps", "--steps"}, {"cfg", "--cfg"}, {"sampler", "--sampler"},
        {"schedule", "--schedule"}, {"width", "--width"}, {"height", "--height"},
        {"batch", "--batch"}, {"embedding", "--embedding"}};
    for (size_t i = 0; i < sizeof opts / sizeof *opts; i++) {
        wb_field *x = form_get(f, opts[i][0]);
        if (!x->value[0] || (x->type == FT_INT && !strcmp(x->key, "width") && atoi(x->value) == 0) ||
            (!strcmp(x->key, "height") && atoi(x->value) == 0) ||
            (!strcmp(x->key, "sampler") && !strcmp(x->value, "model's own")) ||
            (!strcmp(x->key, "negative") && !x->value[0]))
            continue;
        args[n++] = (char *)opts[i][1];
        args[n++] = x->value;
    }
    args[n++] = "--out";
    args[n++] = out;
    args[n] = NULL;
    if (wb_start_job(w, args, sample_started, NULL) == 0)
        wb_message(w, 0, "starting coin sample...");
}

/* ---- actions on one image (shared with Browse and Evaluate) ---- */

typedef struct regen_ctx {
    int64_t id;
} regen_ctx;

static void regen_done(wb *w, void *ctx, int status, const char *out, const char *errs)
{
    regen_ctx *r = ctx;
    char line[160];
    (void)status;
    if (strstr(out, "identical"))
        snprintf(line, sizeof line, "sample %lld regenerated: identical", (long long)r->id);
    else if (strstr(out, "differ"))
        snprintf(line, sizeof line, "sample %lld regenerated: different", (long long)r->id);
    else {
        char why[120];
        wb_last_error(errs, why, sizeof why);
        snprintf(line, sizeof line, "regenerating sample %lld failed: %s", (long long)r->id, why);
    }
    snprintf(w->sample.regen_result, sizeof w->sample.regen_result, "%s", line);
    wb_message(w, !strstr(line, "identical"), "%s", line);
    free(r);
}

/* OSC 52: terminals that allow it (xterm, kitty, iTerm2, tmux with
 * set-clipboard) put the text on the system clipboard, also over SSH. */
static void copy_to_clipboard(const char *text)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char out[1500];
    size_t n = (size_t)snprintf(out, sizeof out, "\033]52;c;");
    size_t len = strlen(text);
    for (size_t i = 0; i < len && n + 5 < sizeof out - 2; i += 3) {
        unsigned v = (unsigned char)text[i] << 16;
        if (i + 1 < len)
            v |= (unsigned char)text[i + 1] << 8;
        if (i + 2 < len)
            v |= (unsigned char)text[i + 2];
        out[n++] = b64[v >> 18 & 63];
        out[n++] = b64[v >> 12 & 63];
        out[n++] = i + 1 < len ? b64[v >> 6 & 63] : '=';
        out[n++] = i + 2 < len ? b64[v & 63] : '=';
    }
    out[n++] = '\a';
    ssize_t k = write(STDOUT_FILENO, out, n);
    (void)k;
}

int sample_action(wb *w, const lq_sample_row *s, wint_t ch)
{
    coin_error err = {0};
    switch (ch) {
    case 'y': case 'n':
        if (ledger_rate_sample(w->l, s->id, ch == 'y', NULL, &err))
            wb_message(w, 1, "%s", err.msg);
        else
            wb_message(w, 0, "sample %lld rated %s", (long long)s->id, ch == 'y' ? "good" : "bad");
        w->reload = 1;
        return 1;
    case 'r': {
        regen_ctx *r = malloc(sizeof *r);
        if (!r)
            return 1;
        r->id = s->id;
        char id[24];
        snprintf(id, sizeof id, "%lld", (long long)s->id);
        char *args[] = {"regen", id, NULL};
        if (wb_command(w, args, regen_done, r) == 0) {
            snprintf(w->sample.regen_result, sizeof w->sample.regen_result,
                     "regenerating sample %lld...", (long long)s->id);
            wb_message(w, 0, "regenerating sample %lld to compare...", (long long)s->id);
        } else {
            free(r);
        }
        return 1;
    }
    case 'i': {
        ledger_sample x;
        if (ledger_get_sample(w->l, s->id, &x, &err)) {
            wb_message(w, 1, "%s", err.msg);
            return 1;
        }
        w->dlg.kind = DLG_MESSAGE;
        w->dlg.top = 0;
        snprintf(w->dlg.title, sizeof w->dlg.title, "Sample %lld", (long long)s->id);
        snprintf(w->dlg.text, sizeof w->dlg.text,
                 "prompt    %s\nnegative  %s\nseed      %llu\nsteps     %d\nguidance  %g\n"
                 "sampler   %s\nschedule  %s\nsize      %dx%d\nrng       %s\nrun       %lld\n"
                 "checkpoint %lld\nmodel     %.16s...\nembeddings %s\nimage     %s\nsha256    %s\n"
                 "rating    %s",
                 x.prompt, x.negative ? x.negative : "", (unsigned long long)x.seed, x.steps,
                 x.guidance, x.sampler ? x.sampler : "-", x.schedule ? x.schedule : "-", x.width,
                 x.height, x.rng ? x.rng : "-", (long long)x.run, (long long)x.checkpoint,
                 x.model_sha256 ? x.model_sha256 : "-", x.embeddings_json ? x.embeddings_json : "[]",
                 x.image_path ? x.image_path : "-", x.image_sha256 ? x.image_sha256 : "-",
                 s->rating == 1 ? "good" : s->rating == 0 ? "bad" : "not rated");
        ledger_sample_free(&x);
        w->full_redraw = 1;
        return 1;
    }
    case 'p':
        w->dlg.kind = DLG_MESSAGE;
        w->dlg.top = 0;
        snprintf(w->dlg.title, sizeof w->dlg.title, "Path of sample %lld", (long long)s->id);
        snprintf(w->dlg.text, sizeof w->dlg.text, "%s\n\n(also sent to the clipboard, where the "
                 "terminal accepts OSC 52)", s->image_path);
        copy_to_clipboard(s->image_path);
        w->full_redraw = 1;
        return 1;
    default: return 0;
    }
}

/* Moves a grid selection with the arrow keys. */
static int grid_move(int *sel, int n, int per_row, wint_t ch)
{
    int s = *sel;
    if (ch == KEY_LEFT && s > 0)
        s--;
    else if (ch == KEY_RIGHT && s + 1 < n)
        s++;
    else if (ch == KEY_UP && s - per_row >= 0)
        s -= per_row;
    else if (ch == KEY_DOWN && s + per_row < n)
        s += per_row;
    else if (ch == KEY_HOME)
        s = 0;
    else if (ch == KEY_END && n)
        s = n - 1;
    else
        return 0;
    *sel = s;
    return 1;
}

/* PgUp / PgDn: the embedding of the run's previous or next checkpoint. */
static void step_checkpoint(wb *w, int dir)
{
    wb_sample_state *s = &w->sample;
    if (!s->from_run) {
        wb_message(w, 1, "open Sample from a training run (s on its screen) to choose among its "
                   "checkpoints");
        return;
    }
    lq_checkpoint *ck = NULL;
    size_t n = 0;
    coin_error err = {0};
    if (lq_checkpoints(w->l, s->from_run, &ck, &n, &err) || !n) {
        wb_message(w, 1, "%s", n ? err.msg : "the run has no checkpoint yet");
        free(ck);
        return;
    }
    /* where the field is now, by its file */
    const char *now = form_get(&s->form, "embedding")->value;
    int at = -1;
    char emb[1100];
    for (size_t i = 0; i < n; i++) {
        checkpoint_embedding(&ck[i], emb, sizeof emb);
        if (!strcmp(emb, now))
            at = (int)i;
    }
    at = at < 0 ? (int)n - 1 : at + dir;
    at = at < 0 ? 0 : at >= (int)n ? (int)n - 1 : at;
    checkpoint_embedding(&ck[at], emb, sizeof emb);
    form_set(&s->form, "embedding", emb);
    wb_message(w, 0, "checkpoint at step %d of run %lld", ck[at].step, (long long)s->from_run);
    free(ck);
}

int sample_key(wb *w, int is_key, wint_t ch)
{
    wb_sample_state *s = &w->sample;
    if ((!is_key && ch == 7) || (is_key && ch == KEY_F(5))) {
        generate(w);
        return 1;
    }
    if (!is_key && ch == 18) {
        char seed[32];
        snprintf(seed, sizeof seed, "%llu", (unsigned long long)wb_random_seed());
        form_set(&s->form, "seed", seed);
        return 1;
    }
    if (is_key && (ch == KEY_PPAGE || ch == KEY_NPAGE)) {
        step_checkpoint(w, ch == KEY_NPAGE ? 1 : -1);
        return 1;
    }
    if (s->focus == 0) {
        if (!is_key && ch == 20 && s->trigger[0]) {      /* Ctrl-T */
            wb_field *x = &s->form.f[s->form.sel];
            if (x->type == FT_TEXT)
                for (const char *p = s->trigger; *p; p++)
                    form_key(&s->form, 0, (wint_t)(unsigned char)*p);
            return 1;
        }
        if (!is_key && ch == '\t') {
            s->focus = 1;
            return 1;
        }
        if (!is_key && ch == '\r' && s->form.sel == s->form.n - 1) {
            generate(w);
            return 1;
        }
        if (form_key(&s->form, is_key, ch))
            return 1;
        return 0;
    }
    /* the images */
    if ((!is_key && ch == '\t') || (is_key && ch == KEY_BTAB)) {
        s->focus = 0;
        return 1;
    }
    grid g;
    int fw = form_width(w);
    layout(w, (int)s->n_res, s->sel, atoi(form_get(&s->form, "grid")->value), 2, fw + 1,
           w->rows - 5, w->cols - fw - 1, &g);
    if (is_key)
        return grid_move(&s->sel, (int)s->n_res, g.per_row, ch);
    if (s->sel >= 0 && s->sel < (int)s->n_res && sample_action(w, &s->res[s->sel], ch))
        return 1;
    return 0;
}

int sample_results_hit(wb *w, size_t n, int sel, int grid_rows, int y, int x, int h, int wd,
                       int cy, int cx)
{
    grid g;
    layout(w, (int)n, sel, grid_rows, y, x, h, wd, &g);
    for (int i = g.first; i < (int)n && i < g.first + g.rows * g.per_row; i++) {
        int ty, tx;
        grid_cell(&g, i, &ty, &tx);
        if (cy >= ty && cy <= ty + g.th && cx >= tx && cx < tx + g.tw)
            return i;
    }
    return -1;
}

void sample_click(wb *w, int y, int x)
{
    wb_sample_state *s = &w->sample;
    int fw = form_width(w);
    if (x < fw) {
        int i = s->form.top + y - 2;
        if (y >= 2 && i < s->form.n) {
            s->form.sel = i;
            s->focus = 0;
        }
        return;
    }
    int i = sample_results_hit(w, s->n_res, s->sel, atoi(form_get(&s->form, "grid")->value), 2,
                               fw + 1, w->rows - 5, w->cols - fw - 1, y, x);
    if (i >= 0) {
        s->sel = i;
        s->focus = 1;
    }
}

void sample_results_draw(wb *w, const lq_sample_row *res, size_t n, int sel, int focused,
                         int grid_rows, int y, int x, int h, int wd)
{
    draw_results(w, res, n, sel, focused, grid_rows, y, x, h, wd);
}

int sample_results_key(wb *w, int *sel, size_t n, int grid_rows, int h, int wd, wint_t ch)
{
    grid g;
    layout(w, (int)n, *sel, grid_rows, 0, 0, h, wd, &g);
    return grid_move(sel, (int)n, g.per_row, ch);
}
