/*
 * wb_main.c - the workbench's life: terminal set-up and restore, the main
 * loop, change detection, and the keys every screen shares (wb.h).
 *
 * The loop sleeps in poll() on the keyboard and the pipes of running
 * commands.  On waking it asks the ledger for PRAGMA data_version (no disk
 * read) and re-reads the current screen's data only when that changed, or
 * every half second while a job is active so that rates and clocks move.
 * Idle, it wakes twice a second and does almost nothing.  Keys are read
 * until none is left before drawing, so a burst of keys costs one redraw.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <langinfo.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ncurses.h>

#include "tui/record.h"
#include "tui/wb.h"


static volatile sig_atomic_t curses_on;
static int saved_stderr = -1;  /* the terminal's stderr while ours goes to the log */

double wb_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void wb_message(wb *w, int bad, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->msg, sizeof w->msg, fmt, ap);
    va_end(ap);
    w->msg_bad = bad;
    w->msg_until = wb_now() + (bad ? 8 : 5);
    w->dirty = 1;
}

/* ---- the terminal, restored on every way out ---- */

static void restore_terminal(void)
{
    if (curses_on) {
        curses_on = 0;
        /* Mouse reporting and the alternate screen go with endwin. */
        endwin();
        fputs("\033[?1000l\033[?1002l\033[?1006l\033[0m", stdout);
        fflush(stdout);
    }
    if (saved_stderr >= 0) {
        dup2(saved_stderr, STDERR_FILENO);
        close(saved_stderr);
        saved_stderr = -1;
    }
}

static void on_fatal(int sig)
{
    /* endwin is not async-signal-safe, but the process is ending anyway and
     * a terminal left in raw mode without echo is worse than the risk. */
    restore_terminal();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void install_handlers(void)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGSEGV, SIGBUS, SIGFPE,
                               SIGABRT, SIGILL};
    struct sigaction sa = {0};
    sa.sa_handler = on_fatal;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        sigaction(sigs[i], &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    atexit(restore_terminal);
}

static void query_caps(wb *w)
{
    memset(&w->caps, 0, sizeof w->caps);
    const char *cs = nl_langinfo(CODESET);
    int utf8 = cs && (!strcmp(cs, "UTF-8") || !strcmp(cs, "utf8"));
    termcaps_query(STDIN_FILENO, STDOUT_FILENO, 300, &w->caps);
    w->utf8 = utf8;
    const char *nc = getenv("NO_COLOR");
    w->colors = nc && *nc ? 0 : w->caps.colors;
}

static int start_curses(wb *w)
{
    if (!initscr())
        return -1;
    curses_on = 1;
    raw();
    noecho();
    nonl();
    keypad(stdscr, TRUE);
    nodelay(stdscr, TRUE);
    curs_set(0);
    set_escdelay(25);
    if (w->colors && has_colors()) {
        start_color();
        use_default_colors();
        draw_init_colors(w);
    } else {
        w->colors = 0;
    }
    mousemask(BUTTON1_CLICKED | BUTTON1_PRESSED | BUTTON4_PRESSED | BUTTON5_PRESSED, NULL);
    mouseinterval(0);
    getmaxyx(stdscr, w->rows, w->cols);
    return 0;
}

/* ---- screens ---- */

void wb_open_screen(wb *w, wb_screen s)
{
    if (s != w->screen && (s == SCR_SAMPLE || s == SCR_FORM || s == SCR_EVAL))
        w->back = w->screen;
    w->screen = s;
    w->reload = 1;
    w->dirty = 1;
    w->full_redraw = 1;
}

static void reload_screen(wb *w)
{
    int64_t max_id;
    coin_error err = {0};
    if (lq_run_counts(w->l, &max_id, &w->active_jobs, &err))
        wb_message(w, 1, "%s", err.msg);
    switch (w->screen) {
    case SCR_RUNS: runs_reload(w); break;
    case SCR_RUN: run_reload(w); break;
    case SCR_SAMPLE: sample_reload(w); break;
    case SCR_BROWSE: browse_reload(w); break;
    case SCR_EVAL: eval_reload(w); break;
    default: break;
    }
    w->last_reload = wb_now();
    w->dirty = 1;
}

static const char HELP[] =
    "Everywhere\n"
    "  ?  F1       this help                 q  F10  quit (jobs go on running)\n"
    "  Esc         back to the previous screen\n"
    "  R  Ctrl-L   re-read the ledger and repaint the screen\n"
    "  1 2 3 4     Runs, Browse, Evaluate, Sample screens (not while typing)\n"
    "  mouse click selects a row or an image where the terminal reports clicks\n"
    "\n"
    "Runs\n"
    "  Up Down PgUp PgDn Home End   move     Enter  open the run\n"
    "  n  new training run (form)            c      clone the selected run into the form\n"
    "  s  sample with the selected run       d Del  delete the run (asks first; files other\n"
    "  /  search (trigger, model, status)           rows use are kept)\n"
    "  o  sort by the next column            O      reverse the order\n"
    "\n"
    "A training run\n"
    "  l  linear / log loss axis             m      raw + smoothed / raw / smoothed\n"
    "  w  whole run / last 100 / last 1000 steps\n"
    "  v  overlay another run (asks for its id; 0 removes it)\n"
    "  Up Down  choose a checkpoint (its preview images are shown)\n"
    "  s  sample from the selected checkpoint\n"
    "  p  pause   r  resume   x  stop (asks first)   c  clone into the form\n"
    "\n"
    "Forms (new run, sample, evaluate, browse filter)\n"
    "  Up Down Enter  move between fields    type to edit; Left Right Home End move\n"
    "  Tab          next field (new run form); fields <-> images (other screens)\n"
    "  Ctrl-U clear the field                Space or Left/Right change a choice\n"
    "  Ctrl-G  F5   start the job            Ctrl-T insert the trigger word (prompts)\n"
    "  Ctrl-R       a new random seed\n"
    "  PgUp PgDn    (Sample, opened from a run) the run's previous / next checkpoint\n"
    "\n"
    "Browse: Tab moves between the filter and the list; the list follows the filter\n"
    "Evaluate: Ctrl-G queues every subject x count from the run's checkpoint;\n"
    "  rate as images arrive: the acceptance is drawn against the 75% bar\n"
    "\n"
    "Images (sample, browse, evaluate screens; Tab moves to the results)\n"
    "  arrows  choose an image               y / n  rate it good / bad\n"
    "  r   regenerate it and compare: identical or different\n"
    "  i   every parameter of the image      p      its file path (to copy)\n";

static void show_help(wb *w)
{
    w->dlg.kind = DLG_MESSAGE;
    w->dlg.top = 0;
    snprintf(w->dlg.title, sizeof w->dlg.title, "Keys");
    snprintf(w->dlg.text, sizeof w->dlg.text, "%s", HELP);
    w->full_redraw = 1;
    w->dirty = 1;
}

static void draw_too_small(wb *w)
{
    erase();
    char line[128];
    snprintf(line, sizeof line, "coin needs at least 80x24; this terminal is %dx%d", w->cols,
             w->rows);
    mvaddnstr(w->rows / 2, 0, line, w->cols);
    mvaddnstr(w->rows / 2 + 1, 0, "enlarge it, or press q to quit", w->cols);
}

static void draw_all(wb *w)
{
    w->n_img = 0;
    if (w->rows < 24 || w->cols < 80) {
        draw_too_small(w);
    } else {
        erase();
        switch (w->screen) {
        case SCR_RUNS: runs_draw(w); break;
        case SCR_RUN: run_draw(w); break;
        case SCR_FORM: form_screen_draw(w); break;
        case SCR_SAMPLE: sample_draw(w); break;
        case SCR_BROWSE: browse_draw(w); break;
        case SCR_EVAL: eval_draw(w); break;
        default: break;
        }
        /* the message line sits above the key bar */
        if (w->msg[0] && wb_now() < w->msg_until) {
            move(w->rows - 2, 0);
            clrtoeol();
            draw_text(w, w->rows - 2, 0, w->cols, w->msg_bad ? draw_attr(w, CP_BAD, A_BOLD)
                                                             : draw_attr(w, CP_OK, A_BOLD), w->msg);
        }
        if (w->dlg.kind) {
            /* Pictures are not curses' cells: the first frame of a dialog
             * repaints the whole screen to wipe them, and none is drawn
             * until the dialog closes (which repaints again). */
            if (!w->dlg_shown)
                w->full_redraw = 1;
            w->n_img = 0;
            draw_dialog(w);
        }
        w->dlg_shown = w->dlg.kind != DLG_NONE;
    }
    if (w->full_redraw)
        clearok(curscr, TRUE);
    wnoutrefresh(stdscr);
    doupdate();
    draw_flush_images(w);
    w->full_redraw = 0;
    w->dirty = 0;
}

/* ---- keys ---- */

static void dialog_key(wb *w, int is_key, wint_t ch)
{
    wb_dialog *d = &w->dlg;
    if (d->kind == DLG_MESSAGE) {
        if (is_key && (ch == KEY_DOWN || ch == KEY_NPAGE))
            d->top += ch == KEY_DOWN ? 1 : 10;
        else if (is_key && (ch == KEY_UP || ch == KEY_PPAGE))
            d->top = d->top > (ch == KEY_UP ? 1 : 10) ? d->top - (ch == KEY_UP ? 1 : 10) : 0;
        else
            d->kind = DLG_NONE;
    } else if (d->kind == DLG_CONFIRM) {
        if (!is_key && (ch == 'y' || ch == 'Y')) {
            d->kind = DLG_NONE;
            if (d->on_yes)
                d->on_yes(w, d->ctx);
        } else if (is_key || ch == 'n' || ch == 'N' || ch == 27 || ch == 'q') {
            d->kind = DLG_NONE;
        }
    } else if (d->kind == DLG_INPUT) {
        size_t n = strlen(d->input);
        if (!is_key && (ch == '\r' || ch == '\n')) {
            d->kind = DLG_NONE;
            if (d->on_input)
                d->on_input(w, d->input);
        } else if (!is_key && ch == 27) {
            d->kind = DLG_NONE;
        } else if ((is_key && ch == KEY_BACKSPACE) || (!is_key && (ch == 127 || ch == 8))) {
            while (n > 0 && (d->input[n - 1] & 0xC0) == 0x80)
                n--;
            if (n > 0)
                n--;
            d->input[n] = '\0';
        } else if (!is_key && ch == 21) {
            d->input[0] = '\0';
        } else if (!is_key && ch >= 32) {
            char mb[MB_LEN_MAX];
            mbstate_t ms = {0};
            size_t k = wcrtomb(mb, (wchar_t)ch, &ms);
            if (k != (size_t)-1 && n + k < sizeof d->input) {
                memcpy(d->input + n, mb, k);
                d->input[n + k] = '\0';
            }
        }
    }
    w->dirty = 1;
    if (!d->kind)
        w->full_redraw = 1;
}

/* Screens whose keys are mostly typing: digits and letters go to them. */
static int typing(wb *w)
{
    return (w->screen == SCR_FORM) ||
           (w->screen == SCR_SAMPLE && w->sample.focus == 0) ||
           (w->screen == SCR_BROWSE && w->browse.focus == 0) ||
           (w->screen == SCR_EVAL && w->eval.focus == 0);
}

static void handle_mouse(wb *w)
{
    MEVENT ev;
    if (getmouse(&ev) != OK)
        return;
    if (w->dlg.kind) {
        if (w->dlg.kind == DLG_MESSAGE)
            w->dlg.kind = DLG_NONE;
        w->full_redraw = 1;
        return;
    }
    if (ev.bstate & (BUTTON4_PRESSED | BUTTON5_PRESSED)) {
        wint_t k = ev.bstate & BUTTON4_PRESSED ? KEY_UP : KEY_DOWN;
        if (w->screen == SCR_RUNS)
            runs_key(w, 1, k);
        else if (w->screen == SCR_RUN)
            run_key(w, 1, k);
        return;
    }
    if (w->screen == SCR_RUNS)
        runs_click(w, ev.y, ev.x);
    else if (w->screen == SCR_RUN)
        run_click(w, ev.y, ev.x);
    else if (w->screen == SCR_SAMPLE)
        sample_click(w, ev.y, ev.x);
    else if (w->screen == SCR_BROWSE)
        browse_click(w, ev.y, ev.x);
    else if (w->screen == SCR_EVAL)
        eval_click(w, ev.y, ev.x);
}

static void handle_key(wb *w, int is_key, wint_t ch)
{
    w->dirty = 1;
    if (is_key && ch == KEY_RESIZE) {
        getmaxyx(stdscr, w->rows, w->cols);
        w->full_redraw = 1;
        return;
    }
    if (is_key && ch == KEY_MOUSE) {
        handle_mouse(w);
        return;
    }
    if (w->dlg.kind) {
        dialog_key(w, is_key, ch);
        return;
    }
    if (w->rows < 24 || w->cols < 80) {
        if (!is_key && (ch == 'q' || ch == 3))
            w->quit = 1;
        return;
    }
    /* keys that mean the same everywhere */
    if ((is_key && ch == KEY_F(10)) || (!is_key && ch == 3)) {
        w->quit = 1;
        return;
    }
    if ((is_key && ch == KEY_F(1)) || (!is_key && ch == '?' && !typing(w))) {
        show_help(w);
        return;
    }
    if (!is_key && ch == 12) {      /* Ctrl-L */
        w->reload = 1;
        w->full_redraw = 1;
        return;
    }
    int used = 0;
    switch (w->screen) {
    case SCR_RUNS: used = runs_key(w, is_key, ch); break;
    case SCR_RUN: used = run_key(w, is_key, ch); break;
    case SCR_FORM: used = form_screen_key(w, is_key, ch); break;
    case SCR_SAMPLE: used = sample_key(w, is_key, ch); break;
    case SCR_BROWSE: used = browse_key(w, is_key, ch); break;
    case SCR_EVAL: used = eval_key(w, is_key, ch); break;
    default: break;
    }
    if (used)
        return;
    if (!is_key && ch == 27) {
        if (w->screen == SCR_RUN || w->screen == SCR_BROWSE)
            wb_open_screen(w, SCR_RUNS);
        else if (w->screen != SCR_RUNS)
            wb_open_screen(w, w->back == w->screen ? SCR_RUNS : w->back);
        return;
    }
    if (typing(w))
        return;
    switch (is_key ? 0 : ch) {
    case 'q': w->quit = 1; break;
    case 'R': w->reload = 1; w->full_redraw = 1; break;
    case '1': wb_open_screen(w, SCR_RUNS); break;
    case '2': browse_open(w, 0); break;
    case '3': eval_open(w, 0); break;
    case '4': sample_open(w, 0, NULL, NULL, NULL); break;
    default: break;
    }
}

/* ---- the loop ---- */

static void check_ledger(wb *w)
{
    double now = wb_now();
    int64_t v = 0;
    coin_error err = {0};
    if (lq_data_version(w->l, &v, &err) == 0 && v != w->data_version) {
        w->data_version = v;
        w->reload = 1;
    }
    /* A run's rate and time left move between the worker's commits; the
     * other screens show nothing that changes without a commit. */
    if (w->active_jobs && w->screen == SCR_RUN && now - w->last_reload > 0.5)
        w->reload = 1;
    if (w->msg[0] && now >= w->msg_until) {
        w->msg[0] = '\0';
        w->dirty = 1;
    }
}

static void loop(wb *w)
{
    w->reload = 1;
    w->dirty = 1;
    w->full_redraw = 1;
    while (!w->quit) {
        check_ledger(w);
        if (w->reload) {
            w->reload = 0;
            reload_screen(w);
        }
        if (w->dirty)
            draw_all(w);
        struct pollfd pfd[1 + 2 * WB_MAX_CMDS];
        int fds[2 * WB_MAX_CMDS];
        int nf = wb_cmd_fds(w, fds, 2 * WB_MAX_CMDS);
        pfd[0].fd = STDIN_FILENO;
        pfd[0].events = POLLIN;
        for (int i = 0; i < nf; i++) {
            pfd[1 + i].fd = fds[i];
            pfd[1 + i].events = POLLIN;
        }
        /* Half a second idle; a command that has closed its pipes but not
         * been reaped yet is looked at again soon. */
        int timeout = 500;
        for (int i = 0; i < WB_MAX_CMDS; i++)
            if (w->cmds[i].pid && w->cmds[i].out_fd < 0 && w->cmds[i].err_fd < 0)
                timeout = 50;
        int r = poll(pfd, (nfds_t)(1 + nf), timeout);
        if (r < 0 && errno != EINTR)
            break;
        wb_cmd_service(w);
        wint_t ch;
        int got;
        while ((got = get_wch(&ch)) != ERR) {
            handle_key(w, got == KEY_CODE_YES, ch);
            if (w->quit)
                break;
        }
        if (isendwin() && !w->quit) {
            /* back from a suspend or a lost terminal: repaint */
            w->full_redraw = 1;
            w->dirty = 1;
        }
    }
}

static void usage(void)
{
    fputs("usage: coin              the workbench: every run, its loss curve, checkpoints,\n"
          "                         images, sampling and rating (press ? inside for keys)\n"
          "       coin COMMAND ...  the same jobs from the command line (coin help)\n", stdout);
}

int workbench_main(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage();
        return 0;
    }
    setlocale(LC_ALL, "");
    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
        fputs("coin: the workbench needs a terminal; for scripts use the commands (coin help)\n",
              stderr);
        return 1;
    }
    static wb w;
    memset(&w, 0, sizeof w);
    coin_error err = {0};
    if (cli_open_ledger(&w.l, &err)) {
        fprintf(stderr, "coin: %s\n", err.msg);
        return 1;
    }
    snprintf(w.home, sizeof w.home, "%s", ledger_path(w.l));
    char *slash = strrchr(w.home, '/');
    if (slash)
        *slash = '\0';
    snprintf(w.log_path, sizeof w.log_path, "%s/workbench.log", w.home);
    query_caps(&w);
    install_handlers();
    if (start_curses(&w)) {
        fputs("coin: cannot start the terminal screen (is TERM set?)\n", stderr);
        ledger_close(w.l);
        return 1;
    }
    /* Whatever a library might print would tear the curses screen: while
     * it is up, stderr goes to the log. */
    int log = open(w.log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log >= 0) {
        saved_stderr = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
        dup2(log, STDERR_FILENO);
        close(log);
    }
    runs_reload(&w);
    loop(&w);
    restore_terminal();
    wb_cmd_free_all(&w);
    runs_free(&w);
    run_free(&w);
    browse_free(&w);
    draw_free_image_cache();
    ledger_close(w.l);
    return 0;
}
