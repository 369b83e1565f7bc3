/*
 * wb.h - the workbench: `coin` with no arguments, an ncurses front end over
 * the run ledger in the manner of htop.
 *
 * The workbench only reads the ledger and draws; jobs (training, sampling,
 * regenerating) run in other processes that it starts through coin's own
 * command line (wb_jobs.c), so quitting never stops a job and a job started
 * anywhere shows up live.  The main loop (wb_main.c) sleeps in poll() on the
 * keyboard and the pipes of the commands it started, asks SQLite whether
 * the ledger changed (PRAGMA data_version) a few times a second, and
 * re-reads and redraws only then.  Each screen is one file: wb_runs.c (the
 * run table), wb_run.c (one training run: curve, checkpoints, previews),
 * wb_sample.c (sampling and rating), wb_browse.c (every sample; the
 * evaluation protocol), wb_form.c (form fields and the new-run form),
 * wb_draw.c (text, colours, dialogs, inline images).
 */
#ifndef COIN_WB_H
#define COIN_WB_H

#include <stddef.h>
#include <stdint.h>
#include <wchar.h>

#include "db/ledger.h"
#include "db/ledger_query.h"
#include "tui/termimg.h"

/* `coin` without arguments: runs the workbench until the operator quits;
 * returns the process exit status (0, or 1 when the terminal or the ledger
 * could not be used, with the reason on stderr). */
int workbench_main(int argc, char **argv);

typedef enum { SCR_RUNS, SCR_RUN, SCR_FORM, SCR_SAMPLE, SCR_BROWSE, SCR_EVAL, SCR_COUNT } wb_screen;

/* Colour pairs (attributes stand in where there are no colours). */
enum { CP_TITLE = 1, CP_KEY, CP_KEYTEXT, CP_OK, CP_BAD, CP_WARN, CP_DIM, CP_RAW, CP_SMOOTH,
       CP_OVERLAY, CP_SEL, CP_COUNT };

/* ---- form fields (wb_form.c) ---- */
typedef enum { FT_TEXT, FT_INT, FT_FLOAT, FT_CHOICE, FT_BOOL } wb_field_type;

typedef struct wb_field {
    const char *label;
    const char *key;            /* the option or config key it stands for */
    wb_field_type type;
    const char *choices;        /* FT_CHOICE: "a|b|c" */
    char value[1024];           /* UTF-8; FT_BOOL: "yes" / "no" */
    size_t cur;                 /* cursor, a byte offset into value */
} wb_field;

typedef struct wb_form {
    wb_field *f;
    int n, sel, top;
} wb_form;

/* A field as a form declares it, with the value it starts with (NULL:
 * empty). */
typedef struct wb_field_spec {
    const char *label, *key;
    wb_field_type type;
    const char *choices;        /* FT_CHOICE: "a|b|c" */
    const char *value;
} wb_field_spec;

struct wb;
/* Draws the fields in the box (y, x, h rows, w cols); the selected one is
 * highlighted when focused.  Returns the rows used. */
int form_draw(struct wb *w, wb_form *f, int y, int x, int h, int wd, int focused);
/* Offers a key to the selected field; 1 when it was used (an edit or a
 * move between fields), 0 when the caller should handle it. */
int form_key(wb_form *f, int is_key, wint_t ch);
/* The field for key; a blank one that nothing shows when there is none. */
/* The model a workbench without runs offers: $COIN_MODEL (returns 1), else
 * the toy model shipped in assets/toy/ beside the binary (returns 2), else
 * 0.  out gets its path. */
int wb_default_model(char *out, size_t len);
wb_field *form_get(wb_form *f, const char *key);
/* Sets key's field to value (NULL: empty), the cursor at its end. */
void form_set(wb_form *f, const char *key, const char *value);
/* Sets f up with the n fields of spec, held in fields (room for cap), each
 * with its starting value, the first one selected. */
void form_init(wb_form *f, wb_field *fields, int cap, const wb_field_spec *spec, int n);

/* ---- jobs started through coin's command line (wb_jobs.c) ---- */

/* Called when a command the workbench started has ended: status is its
 * exit status (-1 if it could not run), out its stdout, errs its stderr. */
typedef void (*wb_cmd_done)(struct wb *w, void *ctx, int status, const char *out,
                            const char *errs);

#define WB_MAX_CMDS 16
typedef struct wb_cmd {
    int pid;                    /* 0: free slot */
    int out_fd, err_fd;
    char *out, *errs;
    size_t n_out, n_err;
    wb_cmd_done done;
    void *ctx;
    char **argv;                /* freed when the command ends */
} wb_cmd;

/* Runs `coin ARGS...` (this very binary) in the background with its output
 * captured; done is called from the main loop when it ends.  0 or -1 (with
 * a message shown). */
int wb_command(struct wb *w, char *const args[], wb_cmd_done done, void *ctx);
/* Starts a job: `coin train|sample|resume ARGS --no-follow`, which queues
 * it in the ledger for a detached worker and prints the run's id; done gets
 * the id in out.  The one place that knows how a job is started. */
int wb_start_job(struct wb *w, char *const args[], wb_cmd_done done, void *ctx);
/* The fds to poll and, after poll, reads them and finishes ended commands. */
int wb_cmd_fds(struct wb *w, int *fds, int cap);
/* The line of a command's stderr that says what went wrong, into buf. */
void wb_last_error(const char *errs, char *buf, size_t len);
/* Reads what the running commands printed (stderr also into the log) and
 * calls done for each one whose output has ended. */
void wb_cmd_service(struct wb *w);
/* Lets go of every command on quitting: the processes go on, only our ends
 * of their pipes close. */
void wb_cmd_free_all(struct wb *w);

/* ---- screens ---- */

typedef struct wb_runs_state {
    ledger_run_row *rows;
    size_t n, cap;
    int *order;                 /* visible rows (search, sort), indexes into rows */
    size_t n_order;
    int sel, top;
    int sort;                   /* column to sort by */
    int reverse;
    char search[128];
    int64_t sel_id;             /* keeps the selection across reloads */
    int64_t select_after;       /* >0: select the first run newer than this id */
    /* per-run extras for the visible rows, cached until the ledger changes */
    struct runs_extra *extra;
    size_t n_extra;
} wb_runs_state;

typedef struct wb_run_state {
    int64_t id;
    ledger_run run;
    ledger_run_row row;
    int *steps;
    float *xs, *loss, *lr, *smooth;   /* xs: the steps as floats, for the plot */
    size_t n;
    int64_t overlay;            /* run drawn for comparison, 0: none */
    int *o_steps;
    float *o_xs, *o_loss;
    size_t o_n;
    int log_y, mode;            /* mode 0 raw + smoothed, 1 raw, 2 smoothed */
    int window;                 /* 0 whole run, else last N steps */
    lq_checkpoint *ck;
    size_t n_ck;
    int ck_sel;
    double rate_t0;             /* it/s: step and time of the first sight */
    int rate_s0;
    double rate;
    char last_status[16];       /* to notice a run that starts again */
    int loaded;
} wb_run_state;

typedef struct wb_sample_state {
    wb_form form;
    wb_field fields[16];
    int focus;                  /* 0 the form, 1 the results */
    char prefix[1024];          /* image path prefix of this screen's jobs */
    char trigger[128];
    int64_t from_run;
    lq_sample_row *res;
    size_t n_res;
    int sel;
    char regen_result[160];
    int jobs;                   /* counter for unique output names */
} wb_sample_state;

typedef struct wb_browse_state {
    wb_form form;               /* the filter */
    wb_field fields[4];
    int focus;
    lq_sample_row *res;
    size_t n_res;
    int sel, top;
} wb_browse_state;

typedef struct wb_eval_state {
    wb_form form;
    wb_field fields[8];
    int focus;
    char prefix[1024];
    lq_sample_row *res;
    size_t n_res;
    int sel;
    int good, rated;
} wb_eval_state;

/* A picture to put on the screen after curses has drawn it. */
typedef struct wb_placement {
    int y, x, rows, cols;
    char path[1024];
} wb_placement;

enum { DLG_NONE, DLG_MESSAGE, DLG_CONFIRM, DLG_INPUT };

typedef struct wb_dialog {
    int kind;                   /* DLG_*; DLG_NONE: no dialog open */
    char title[128];
    char text[4096];
    char input[256];
    void (*on_yes)(struct wb *w, void *ctx);
    void (*on_input)(struct wb *w, const char *text);
    void *ctx;
    int top;
} wb_dialog;

typedef struct wb {
    ledger *l;
    term_caps caps;
    int utf8, colors;
    int rows, cols;
    wb_screen screen, back;     /* back: where Esc goes from the sample/form screens */
    int dirty;                  /* redraw before sleeping */
    int reload;                 /* re-read the ledger */
    int64_t data_version;
    double last_reload;
    int active_jobs;            /* runs queued or running */
    char msg[512];
    int msg_bad;
    double msg_until;
    wb_dialog dlg;
    int dlg_shown;              /* the last frame had a dialog */
    wb_placement img[16];
    int n_img;
    char img_sig[4096];         /* what was drawn last time, to redraw only on change */
    int full_redraw;
    wb_cmd cmds[WB_MAX_CMDS];
    char home[900];             /* $COIN_HOME or the default folder */
    char log_path[1100];        /* where commands' stderr is kept */
    wb_runs_state runs;
    wb_run_state run;
    wb_form form;               /* the new-run form */
    wb_field form_fields[28];
    char form_auto_out[1100];   /* the output folder the form proposed */
    wb_sample_state sample;
    wb_browse_state browse;
    wb_eval_state eval;
    int quit;
} wb;

/* wb_main.c */
/* Seconds on the monotonic clock. */
double wb_now(void);
/* The message line: a note for 5 s, or a problem (bad) in red for 8 s. */
void wb_message(wb *w, int bad, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Goes to screen s, to be reloaded and fully redrawn.  Esc from the
 * sample, form and evaluate screens goes back to the screen they were
 * opened from. */
void wb_open_screen(wb *w, wb_screen s);

/* wb_draw.c */
/* Sets up the colour pairs CP_*, for a terminal that has colours. */
void draw_init_colors(wb *w);
/* Text at (y, x) clipped to width columns (UTF-8 aware; '?' for what an
 * ASCII terminal cannot show); returns the columns used. */
int draw_text(wb *w, int y, int x, int width, unsigned attr, const char *s);
/* draw_text of a printf format. */
int draw_textf(wb *w, int y, int x, int width, unsigned attr, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Colour pair pair's attribute, or fallback without colours (NO_COLOR). */
unsigned draw_attr(wb *w, int pair, unsigned fallback);
/* A horizontal rule of width columns at (y, x). */
void draw_hline(wb *w, int y, int x, int width);
/* The bottom line: keys is "key", "what it does", ..., NULL; pairs that
 * do not fit are left out. */
void draw_keybar(wb *w, const char *const *keys);
/* The top line, the whole width, with the active job count at its right
 * when it fits. */
void draw_title(wb *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The open dialog (w->dlg), centred and sized to its text. */
void draw_dialog(wb *w);
/* Blanks the cells and queues path to be drawn there after the refresh. */
void draw_image(wb *w, int y, int x, int rows, int cols, const char *path);
/* After doupdate(): writes the queued images (only when they changed or the
 * screen was repainted). */
void draw_flush_images(wb *w);
/* Frees the rendered pictures and the memo of the last plot. */
void draw_free_image_cache(void);
/* The columns a picture rows cells tall takes for a square image: the
 * terminal's cell size when it said, else cells twice as tall as wide. */
int wb_cols_for_rows(wb *w, int rows);
/* The loss plot in the box (y, x, rows, cols), braille dots with the y
 * range at the left and the step range below: raw[n] and smooth[n] at
 * steps xs[n] (mode 0 both, 1 raw, 2 smoothed), an overlay run oy[on] at
 * ox[on] (on 0: none), a log y axis, the last window steps (0: all).  The
 * mapping is kept while its arguments stay the same, so a redraw is cheap. */
void draw_plot(wb *w, int y, int x, int rows, int cols, const float *xs, const float *raw,
               const float *smooth, size_t n, const float *ox, const float *oy, size_t on,
               int log_y, int window, int mode);
/* One cell that shows a run's status (ASCII on an ASCII terminal). */
const char *status_glyph(wb *w, const char *status);
/* The attribute a run's status is drawn in. */
unsigned status_attr(wb *w, const char *status);
/* "MM-DD HH:MM" in local time, "-" for 0. */
void fmt_time(int64_t t, char *buf, size_t len);
/* "M:SS" or "H:MM:SS", "-" for a negative or non-finite s. */
void fmt_duration(double s, char *buf, size_t len);
/* The part of path after its last '/'. */
const char *base_name(const char *path);

/* Screens: each has a reload (read the ledger), a draw and a key handler
 * (1 when it used the key). */
void runs_reload(wb *w);
void runs_draw(wb *w);
int runs_key(wb *w, int is_key, wint_t ch);
void runs_click(wb *w, int y, int x);
void runs_free(wb *w);

/* Opens the run screen on run id, keeping the view settings when it is the
 * run already shown. */
void run_open(wb *w, int64_t id);
void run_reload(wb *w);
void run_draw(wb *w);
int run_key(wb *w, int is_key, wint_t ch);
void run_click(wb *w, int y, int x);
void run_free(wb *w);
/* The embedding file of a checkpoint: learned_embeds-steps-STEP beside it
 * when that exists, else the path itself. */
void checkpoint_embedding(const lq_checkpoint *c, char *out, size_t len);

/* The new-run form with coin train's defaults, or (clone_from not 0) filled
 * from that run's recorded configuration. */
void form_new_run(wb *w, int64_t clone_from);
void form_screen_draw(wb *w);
int form_screen_key(wb *w, int is_key, wint_t ch);

/* Opens the sample screen; an embedding (with its trigger word, which makes
 * the prompt "a photo of TRIGGER" when none is there or it came from
 * another run) and a model, each NULL to keep what the form holds. */
void sample_open(wb *w, int64_t run, const char *embedding, const char *trigger,
                 const char *model);
void sample_reload(wb *w);
void sample_draw(wb *w);
int sample_key(wb *w, int is_key, wint_t ch);
void sample_click(wb *w, int y, int x);
/* Shared by the screens that show samples: rate, regenerate, info, path. */
int sample_action(wb *w, const lq_sample_row *s, wint_t ch);
/* The grid of sample images in the box (y, x, h rows, wd cols), grid_rows
 * rows of pictures, and its arrow keys (1 when used). */
void sample_results_draw(wb *w, const lq_sample_row *res, size_t n, int sel, int focused,
                         int grid_rows, int y, int x, int h, int wd);
int sample_results_key(wb *w, int *sel, size_t n, int grid_rows, int h, int wd, wint_t ch);
/* The image at screen cell (cy, cx) in such a grid, or -1. */
int sample_results_hit(wb *w, size_t n, int sel, int grid_rows, int y, int x, int h, int wd,
                       int cy, int cx);
/* A random seed in [0, 2^32). */
uint64_t wb_random_seed(void);

/* Browse and Evaluate: opened on run's samples (0: all; for Evaluate, the
 * newest training run). */
void browse_open(wb *w, int64_t run);
void browse_reload(wb *w);
void browse_draw(wb *w);
int browse_key(wb *w, int is_key, wint_t ch);
void eval_open(wb *w, int64_t run);
void eval_reload(wb *w);
void eval_draw(wb *w);
int eval_key(wb *w, int is_key, wint_t ch);
void browse_click(wb *w, int y, int x);
void eval_click(wb *w, int y, int x);
void browse_free(wb *w);

#endif
