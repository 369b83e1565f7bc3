/*
 * wb_form.c - form fields (typing, choices, switches) and the new training
 * run form, which a clone fills from a run's recorded configuration
 * (wb.h).
 *
 * Starting a run turns the fields into `coin train` options and hands them
 * to wb_start_job: the form checks numbers and required fields itself so
 * that the common mistakes are caught before a process is started, and
 * whatever coin train still refuses is shown from its stderr.
 */
#include <cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ncurses.h>

#include "tui/wb.h"

/* ---- fields ---- */

wb_field *form_get(wb_form *f, const char *key)
{
    /* an unknown key is a programming error; a blank field keeps it harmless */
    static wb_field none;
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->f[i].key, key))
            return &f->f[i];
    memset(&none, 0, sizeof none);
    none.label = none.key = "";
    return &none;
}

static void set_value(wb_field *x, const char *value)
{
    snprintf(x->value, sizeof x->value, "%s", value ? value : "");
    x->cur = strlen(x->value);
}

void form_set(wb_form *f, const char *key, const char *value)
{
    wb_field *x = form_get(f, key);
    if (x->key[0])
        set_value(x, value);
}

void form_init(wb_form *f, wb_field *fields, int cap, const wb_field_spec *spec, int n)
{
    if (n > cap)
        n = cap;
    memset(f, 0, sizeof *f);
    f->f = fields;
    f->n = n;
    for (int i = 0; i < n; i++) {
        memset(&fields[i], 0, sizeof fields[i]);
        fields[i].label = spec[i].label;
        fields[i].key = spec[i].key;
        fields[i].type = spec[i].type;
        fields[i].choices = spec[i].choices;
        set_value(&fields[i], spec[i].value);
    }
}

static void cycle_choice(wb_field *x, int dir)
{
    if (x->type == FT_BOOL) {
        snprintf(x->value, sizeof x->value, "%s", !strcmp(x->value, "yes") ? "no" : "yes");
        return;
    }
    /* find the current choice, move dir */
    const char *c = x->choices;
    int n = 0, at = 0;
    char opts[16][64];
    while (*c && n < 16) {
        const char *e = strchr(c, '|');
        int len = e ? (int)(e - c) : (int)strlen(c);
        snprintf(opts[n], sizeof opts[n], "%.*s", len, c);
        if (!strcmp(opts[n], x->value))
            at = n;
        n++;
        if (!e)
            break;
        c = e + 1;
    }
    if (!n)
        return;
    at = ((at + dir) % n + n) % n;
    snprintf(x->value, sizeof x->value, "%s", opts[at]);
    x->cur = strlen(x->value);
}

int form_key(wb_form *f, int is_key, wint_t ch)
{
    if (!f->n)
        return 0;
    wb_field *x = &f->f[f->sel];
    size_t len = strlen(x->value);
    if (x->cur > len)
        x->cur = len;
    if ((is_key && ch == KEY_DOWN) || (!is_key && (ch == '\t' || ch == '\r'))) {
        if (f->sel + 1 < f->n) {
            f->sel++;
            return 1;
        }
        return 0;   /* past the last field: the caller may move on */
    }
    if (is_key && (ch == KEY_UP || ch == KEY_BTAB)) {
        if (f->sel > 0) {
            f->sel--;
            return 1;
        }
        return 0;
    }
    if (x->type == FT_CHOICE || x->type == FT_BOOL) {
        if ((is_key && (ch == KEY_RIGHT || ch == KEY_LEFT)) || (!is_key && ch == ' ')) {
            cycle_choice(x, is_key && ch == KEY_LEFT ? -1 : 1);
            return 1;
        }
        return 0;
    }
    if (is_key) {
        switch (ch) {
        case KEY_LEFT:
            while (x->cur > 0 && (x->value[--x->cur] & 0xC0) == 0x80)
                ;
            return 1;
        case KEY_RIGHT:
            if (x->cur < len)
                while (++x->cur < len && (x->value[x->cur] & 0xC0) == 0x80)
                    ;
            return 1;
        case KEY_HOME: x->cur = 0; return 1;
        case KEY_END: x->cur = len; return 1;
        case KEY_BACKSPACE: break;
        case KEY_DC:
            if (x->cur < len) {
                size_t e = x->cur + 1;
                while (e < len && (x->value[e] & 0xC0) == 0x80)
                    e++;
                memmove(x->value + x->cur, x->value + e, len - e + 1);
            }
            return 1;
        default: return 0;
        }
    }
    if ((is_key && ch == KEY_BACKSPACE) || (!is_key && (ch == 127 || ch == 8))) {
        if (x->cur > 0) {
            size_t s = x->cur - 1;
            while (s > 0 && (x->value[s] & 0xC0) == 0x80)
                s--;
            memmove(x->value + s, x->value + x->cur, len - x->cur + 1);
            x->cur = s;
        }
        return 1;
    }
    if (!is_key && ch == 21) {      /* Ctrl-U */
        x->value[0] = '\0';
        x->cur = 0;
        return 1;
    }
    if (!is_key && ch == 1) {       /* Ctrl-A */
        x->cur = 0;
        return 1;
    }
    if (!is_key && ch == 5) {       /* Ctrl-E */
        x->cur = len;
        return 1;
    }
    if (!is_key && ch >= 32 && ch != 127) {
        if ((x->type == FT_INT && !(ch >= '0' && ch <= '9') && ch != '-') ||
            (x->type == FT_FLOAT && !strchr("0123456789.-+eE", (int)ch)))
            return 1;   /* swallowed: numbers only */
        char mb[MB_LEN_MAX];
        mbstate_t ms = {0};
        size_t k = wcrtomb(mb, (wchar_t)ch, &ms);
        if (k == (size_t)-1 || len + k >= sizeof x->value)
            return 1;
        memmove(x->value + x->cur + k, x->value + x->cur, len - x->cur + 1);
        memcpy(x->value + x->cur, mb, k);
        x->cur += k;
        return 1;
    }
    return 0;
}

int form_draw(wb *w, wb_form *f, int y, int x, int h, int wd, int focused)
{
    int label_w = 0;
    for (int i = 0; i < f->n; i++) {
        int l = (int)strlen(f->f[i].label);
        label_w = l > label_w ? l : label_w;
    }
    label_w += 1;
    if (f->sel < f->top)
        f->top = f->sel;
    if (f->sel >= f->top + h)
        f->top = f->sel - h + 1;
    int rows = 0;
    for (int i = f->top; i < f->n && rows < h; i++, rows++) {
        wb_field *fd = &f->f[i];
        int sel = focused && i == f->sel;
        draw_text(w, y + rows, x, label_w, sel ? A_BOLD : draw_attr(w, CP_DIM, A_NORMAL),
                  fd->label);
        int vx = x + label_w + 1, vw = wd - label_w - 1;
        char shown[1100];
        if (fd->type == FT_CHOICE || fd->type == FT_BOOL)
            snprintf(shown, sizeof shown, "%s %s %s", w->utf8 ? "\xe2\x97\x82" : "<", fd->value,
                     w->utf8 ? "\xe2\x96\xb8" : ">");
        else
            snprintf(shown, sizeof shown, "%s", fd->value);
        /* long text: show the end that holds the cursor; a long path shows
         * its end (the file name) when not being edited */
        const char *from = shown;
        if (!sel && fd->type == FT_TEXT && strchr(shown, '/') && (int)strlen(shown) > vw - 1) {
            size_t keep = (size_t)(vw - 2);
            char tail[1100];
            const char *t = shown + strlen(shown) - keep;
            while ((*t & 0xC0) == 0x80)
                t++;
            snprintf(tail, sizeof tail, "%s%s", w->utf8 ? "\xe2\x80\xa6" : "<", t);
            snprintf(shown, sizeof shown, "%s", tail);
        }
        if (sel && (fd->type == FT_TEXT || fd->type == FT_INT || fd->type == FT_FLOAT) &&
            (int)fd->cur > vw - 2) {
            from = shown + fd->cur - (size_t)(vw - 2);
            while ((*from & 0xC0) == 0x80)
                from++;
        }
        unsigned a = sel ? draw_attr(w, CP_SEL, A_REVERSE) : A_UNDERLINE;
        attron(a);
        move(y + rows, vx);
        for (int k = 0; k < vw && vx + k < w->cols; k++)
            addch(' ');
        attroff(a);
        draw_text(w, y + rows, vx, vw, a, from);
        if (sel && fd->type != FT_CHOICE && fd->type != FT_BOOL) {
            /* a visible cursor: the cell after the text before it */
            char before[1100];
            size_t off = (size_t)(from - shown);
            snprintf(before, sizeof before, "%.*s", (int)(fd->cur - off), from);
            int cx = vx;
            mbstate_t ms = {0};
            const char *p = before;
            wchar_t wc;
            size_t k;
            while (*p && (k = mbrtowc(&wc, p, strlen(p), &ms)) > 0 && k < (size_t)-2) {
                int cw = wcwidth(wc);
                cx += cw > 0 ? cw : 1;
                p += k;
            }
            if (cx < vx + vw)
                mvchgat(y + rows, cx, 1, A_NORMAL, 0, NULL);
        }
    }
    return rows;
}

/* ---- the new training run form ---- */

/* Each field starts with coin train's default (coin train --help). */
static const wb_field_spec TRAIN_FIELDS[] = {
    {"model", "model", FT_TEXT, NULL, NULL},
    {"images folder", "images", FT_TEXT, NULL, NULL},
    {"trigger word", "token", FT_TEXT, NULL, NULL},
    {"initializer word", "init", FT_TEXT, NULL, NULL},
    {"output folder", "out", FT_TEXT, NULL, NULL},
    {"steps", "steps", FT_INT, NULL, "2000"},
    {"learning rate", "lr", FT_FLOAT, NULL, "0.0005"},
    {"scale lr by batch", "scale-lr", FT_BOOL, NULL, "yes"},
    {"lr schedule", "lr-schedule", FT_CHOICE, "constant|constant_with_warmup|linear|cosine",
     "constant"},
    {"warm-up steps", "warmup", FT_INT, NULL, "0"},
    {"batch", "batch", FT_INT, NULL, "4"},
    {"gradient accumulation", "grad-accum", FT_INT, NULL, "1"},
    {"clip gradient (0: off)", "clip-grad", FT_FLOAT, NULL, "0"},
    {"vectors per trigger", "vectors", FT_INT, NULL, "1"},
    {"templates", "templates", FT_TEXT, NULL, "object"},
    {"resolution (0: native)", "resolution", FT_INT, NULL, "0"},
    {"center crop", "center-crop", FT_BOOL, NULL, "no"},
    {"checkpoint every", "save-every", FT_INT, NULL, "250"},
    {"seed", "seed", FT_INT, NULL, "42"},
    {"gradient checkpointing", "grad-checkpointing", FT_BOOL, NULL, "no"},
    {"previews per checkpoint", "previews", FT_INT, NULL, "4"},
    {"preview prompt", "preview-prompt", FT_TEXT, NULL, "a photo of a {}"},
    {"preview steps", "preview-steps", FT_INT, NULL, "25"},
    {"preview seed", "preview-seed", FT_INT, NULL, "42"},
    {"backend", "backend", FT_CHOICE, "auto|cpu|cuda", "auto"},
};
#define N_TRAIN_FIELDS ((int)(sizeof TRAIN_FIELDS / sizeof *TRAIN_FIELDS))

/* An output folder under the workspace that does not exist yet. */
static void fresh_out_dir(wb *w, const char *token, char *out, size_t len)
{
    char name[96];
    size_t n = 0;
    for (const char *s = token; *s && n < 60; s++)
        if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
            *s == '-' || *s == '_')
            name[n++] = *s;
    name[n] = '\0';
    for (int k = 1; k < 10000; k++) {
        struct stat sb;
        snprintf(out, len, "%s/runs/%s%s%d", w->home, name, n ? "-" : "run-", k);
        if (stat(out, &sb) != 0)
            return;
    }
}

static void set_num(wb_form *f, const char *key, const cJSON *v, int is_float)
{
    char buf[64];
    if (cJSON_IsNumber(v)) {
        if (is_float)
            snprintf(buf, sizeof buf, "%.6g", v->valuedouble);
        else
            snprintf(buf, sizeof buf, "%.0f", v->valuedouble);
        form_set(f, key, buf);
    } else if (cJSON_IsString(v)) {
        form_set(f, key, v->valuestring);
    }
}

/* A file of the toy world shipped in assets/toy/, found beside the binary
 * (bin/coin in a clone: ../assets/toy/NAME); 0 when it is not there. */
static int toy_asset(const char *name, char *out, size_t len)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return 0;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return 0;
    *slash = '\0';
    struct stat sb;
    snprintf(out, len, "%s/../assets/toy/%s", exe, name);
    char *real = realpath(out, NULL);
    if (!real)
        return 0;
    snprintf(out, len, "%s", real);
    free(real);
    return stat(out, &sb) == 0;
}

int wb_default_model(char *out, size_t len)
{
    const char *env = getenv("COIN_MODEL");
    if (env && *env) {
        snprintf(out, len, "%s", env);
        return 1;
    }
    return toy_asset("toy-sd1.safetensors", out, len) ? 2 : 0;
}

/* A newcomer's first run: the toy model, its five glyph images and the
 * settings tests/test_toyworld.c trains with (the users' batch, learning
 * rate and seed; steps and resolution scaled to 64x64 pictures). */
static void toy_run_defaults(wb_form *f, const char *model)
{
    char images[1024];   /* a form value holds that much */
    form_set(f, "model", model);
    if (toy_asset("glyph-images", images, sizeof images))
        form_set(f, "images", images);
    form_set(f, "token", "<thumbs-up>");
    form_set(f, "init", "shape");
    form_set(f, "steps", "300");
    form_set(f, "resolution", "64");
    form_set(f, "save-every", "50");
    form_set(f, "preview-prompt", "a blue {} on a yellow background");
}

void form_new_run(wb *w, int64_t clone_from)
{
    wb_form *f = &w->form;
    form_init(f, w->form_fields, sizeof w->form_fields / sizeof *w->form_fields, TRAIN_FIELDS,
              N_TRAIN_FIELDS);
    char model[1024];
    /* the model of the newest run is the likeliest one */
    if (w->runs.n && w->runs.rows[0].model_path[0]) {
        form_set(f, "model", w->runs.rows[0].model_path);
    } else {
        int which = wb_default_model(model, sizeof model);
        if (which == 2)
            toy_run_defaults(f, model);
        else if (which == 1)
            form_set(f, "model", model);
    }
    if (clone_from) {
        ledger_run r;
        coin_error err = {0};
        if (ledger_get_run(w->l, clone_from, &r, &err)) {
            wb_message(w, 1, "%s", err.msg);
        } else {
            cJSON *c = cJSON_Parse(r.config_json ? r.config_json : "{}");
            static const char *const strs[][2] = {
                {"model", "model"}, {"images", "images"}, {"token", "token"},
                {"init_word", "init"}, {"templates", "templates"},
                {"preview_prompt", "preview-prompt"}, {"seed", "seed"},
                {"preview_seed", "preview-seed"}, {"schedule", "lr-schedule"}};
            for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, strs[i][0]);
                if (cJSON_IsString(v))
                    form_set(f, strs[i][1], v->valuestring);
            }
            static const char *const nums[][2] = {
                {"steps", "steps"}, {"warmup", "warmup"}, {"batch", "batch"},
                {"grad_accum", "grad-accum"}, {"vectors", "vectors"},
                {"resolution", "resolution"}, {"save_every", "save-every"},
                {"n_previews", "previews"}, {"preview_steps", "preview-steps"}};
            for (size_t i = 0; i < sizeof nums / sizeof *nums; i++)
                set_num(f, nums[i][1], cJSON_GetObjectItemCaseSensitive(c, nums[i][0]), 0);
            set_num(f, "lr", cJSON_GetObjectItemCaseSensitive(c, "lr"), 1);
            set_num(f, "clip-grad", cJSON_GetObjectItemCaseSensitive(c, "max_grad_norm"), 1);
            static const char *const bools[][2] = {
                {"scale_lr", "scale-lr"}, {"center_crop", "center-crop"},
                {"checkpointing", "grad-checkpointing"}};
            for (size_t i = 0; i < sizeof bools / sizeof *bools; i++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, bools[i][0]);
                if (cJSON_IsBool(v))
                    form_set(f, bools[i][1], cJSON_IsTrue(v) ? "yes" : "no");
            }
            if (r.model_path)
                form_set(f, "model", r.model_path);
            if (r.backend && (!strcmp(r.backend, "cpu") || !strcmp(r.backend, "cuda")))
                form_set(f, "backend", r.backend);
            cJSON_Delete(c);
            wb_message(w, 0, "run %lld cloned: change what you want to try, then Ctrl-G starts it",
                       (long long)clone_from);
            ledger_run_free(&r);
        }
    }
    fresh_out_dir(w, form_get(f, "token")->value, w->form_auto_out, sizeof w->form_auto_out);
    form_set(f, "out", w->form_auto_out);
    f->sel = 0;
    wb_open_screen(w, SCR_FORM);
}

static void run_started(wb *w, void *ctx, int status, const char *out, const char *errs)
{
    (void)ctx;
    long long id = 0;
    if (status == 0 && sscanf(out, "%lld", &id) == 1 && id > 0) {
        wb_message(w, 0, "run %lld queued", id);
        if (w->screen == SCR_RUNS || w->screen == SCR_FORM)
            run_open(w, id);
    } else if (status == 0) {
        wb_message(w, 0, "training started in the background");
    } else {
        char last[400];
        wb_last_error(errs, last, sizeof last);
        wb_message(w, 1, "coin train failed: %s", last);
    }
}

static void start_training(wb *w)
{
    wb_form *f = &w->form;
    /* an output folder the operator left alone follows the trigger word */
    if (!strcmp(form_get(f, "out")->value, w->form_auto_out)) {
        fresh_out_dir(w, form_get(f, "token")->value, w->form_auto_out, sizeof w->form_auto_out);
        form_set(f, "out", w->form_auto_out);
    }
    char runs_dir[1000];
    snprintf(runs_dir, sizeof runs_dir, "%s/runs", w->home);
    if (mkdir(runs_dir, 0755) && errno != EEXIST) {
        wb_message(w, 1, "cannot create %s: %s", runs_dir, strerror(errno));
        return;
    }
    static const char *const required[] = {"model", "images", "token", "init", "out"};
    for (size_t i = 0; i < sizeof required / sizeof *required; i++)
        if (!form_get(f, required[i])->value[0]) {
            wb_message(w, 1, "the %s is needed", form_get(f, required[i])->label);
            for (int k = 0; k < f->n; k++)
                if (!strcmp(f->f[k].key, required[i]))
                    f->sel = k;
            return;
        }
    char *args[80];
    char opt[N_TRAIN_FIELDS][48];
    int n = 0;
    args[n++] = "train";
    for (int i = 0; i < f->n; i++) {
        wb_field *x = &f->f[i];
        if (x->type == FT_INT || x->type == FT_FLOAT) {
            char *end;
            double v = strtod(x->value, &end);
            if (!x->value[0] || *end || !isfinite(v)) {
                wb_message(w, 1, "%s: '%s' is not a number", x->label, x->value);
                f->sel = i;
                return;
            }
            if ((!strcmp(x->key, "resolution") || !strcmp(x->key, "clip-grad")) && v == 0)
                continue;   /* 0: coin's default */
        }
        if (x->type == FT_BOOL) {
            if (!strcmp(x->key, "scale-lr")) {
                if (!strcmp(x->value, "no"))
                    args[n++] = "--no-scale-lr";
            } else if (!strcmp(x->value, "yes")) {
                snprintf(opt[i], sizeof opt[i], "--%s", x->key);
                args[n++] = opt[i];
            }
            continue;
        }
        if (!x->value[0])
            continue;
        snprintf(opt[i], sizeof opt[i], "--%s", x->key);
        args[n++] = opt[i];
        args[n++] = x->value;
    }
    args[n] = NULL;
    int64_t newest = 0;
    coin_error err = {0};
    lq_run_counts(w->l, &newest, NULL, &err);
    w->runs.select_after = newest > 0 ? newest : -1;
    if (wb_start_job(w, args, run_started, NULL) == 0) {
        wb_message(w, 0, "starting the training run...");
        wb_open_screen(w, SCR_RUNS);
    }
}

void form_screen_draw(wb *w)
{
    draw_title(w, " coin  New training run");
    int h = w->rows - 5;
    form_draw(w, &w->form, 2, 2, h, w->cols - 4 > 100 ? 100 : w->cols - 4, 1);
    draw_text(w, w->rows - 3, 2, w->cols - 4, draw_attr(w, CP_DIM, A_DIM),
              "{} in the preview prompt stands for the trigger word; the run goes on when coin "
              "is closed");
    static const char *const keys[] = {"^G", "Start", "Tab", "Next", "^U", "Clear", "Spc",
                                       "Choice", "Esc", "Cancel", "F1", "Help", NULL};
    draw_keybar(w, keys);
}

int form_screen_key(wb *w, int is_key, wint_t ch)
{
    if ((!is_key && ch == 7) || (is_key && ch == KEY_F(5))) {
        start_training(w);
        return 1;
    }
    if (!is_key && ch == 18) {  /* Ctrl-R: a new seed */
        char s[32];
        snprintf(s, sizeof s, "%llu", (unsigned long long)wb_random_seed());
        form_set(&w->form, "seed", s);
        return 1;
    }
    if (form_key(&w->form, is_key, ch))
        return 1;
    if (!is_key && ch == 27) {
        wb_open_screen(w, SCR_RUNS);
        return 1;
    }
    return 0;
}
