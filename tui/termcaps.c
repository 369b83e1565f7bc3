/*
 * termcaps.c - what the terminal can show (termimg.h): the environment
 * (TERM, COLORTERM, NO_COLOR, the locale, TMUX, COIN_GRAPHICS) and the
 * terminal's own answers to the device-attributes and XTWINOPS queries,
 * asked once before curses starts.
 */
#include "tui/termimg.h"

#include <errno.h>
#include <langinfo.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* ---- the environment ------------------------------------------------- */

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

static int env_colors(void)
{
    if (env_nonempty("NO_COLOR"))       /* https://no-color.org: any non-empty value */
        return 0;
    const char *term = env_nonempty("TERM");
    if (!term || strcmp(term, "dumb") == 0)
        return 0;
    const char *ct = env_nonempty("COLORTERM");
    if (ct && (strcasecmp(ct, "truecolor") == 0 || strcasecmp(ct, "24bit") == 0))
        return 16777216;
    if (strstr(term, "256color") || strstr(term, "256colour"))
        return 256;
    return 8;
}

static int name_says_utf8(const char *s)
{
    return s && (strcasestr(s, "utf-8") || strcasestr(s, "utf8"));
}

/* The codeset of the locale the environment selects for LC_CTYPE, asked of
 * a private locale object: setlocale(LC_ALL, "") here would also switch
 * LC_NUMERIC and make printf write "0,5" in the files coin writes.  When
 * the locale is not installed, the name (LC_ALL, LC_CTYPE, LANG, first
 * non-empty wins as in POSIX) decides. */
static int env_utf8(void)
{
    locale_t loc = newlocale(LC_CTYPE_MASK, "", (locale_t)0);
    if (loc != (locale_t)0) {
        const char *cs = nl_langinfo_l(CODESET, loc);
        int utf8 = cs && (strcasecmp(cs, "UTF-8") == 0 || strcasecmp(cs, "utf8") == 0);
        freelocale(loc);
        return utf8;
    }
    const char *name = env_nonempty("LC_ALL");
    if (!name)
        name = env_nonempty("LC_CTYPE");
    if (!name)
        name = env_nonempty("LANG");
    return name_says_utf8(name);
}

/* COIN_GRAPHICS as a mode, or -1 when unset or not one of the three names
 * (an unknown value is ignored rather than fatal: a typo must not keep the
 * workbench from starting). */
static int env_forced_gfx(void)
{
    const char *v = env_nonempty("COIN_GRAPHICS");
    if (!v)
        return -1;
    if (strcasecmp(v, "sixel") == 0)
        return GFX_SIXEL;
    if (strcasecmp(v, "blocks") == 0)
        return GFX_BLOCKS;
    if (strcasecmp(v, "none") == 0)
        return GFX_NONE;
    return -1;
}

static void apply_forced_gfx(term_caps *caps)
{
    int forced = env_forced_gfx();
    if (forced >= 0)
        caps->gfx = (gfx_mode)forced;
}

void termcaps_from_env(term_caps *caps)
{
    memset(caps, 0, sizeof *caps);
    caps->colors = env_colors();
    caps->utf8 = env_utf8();
    caps->in_tmux = env_nonempty("TMUX") != NULL;
    /* until tmux says it shows sixel itself, sixel must bypass it */
    caps->tmux_passthrough = caps->in_tmux;
    caps->gfx = caps->colors > 0 ? GFX_BLOCKS : GFX_NONE;
    apply_forced_gfx(caps);
}

/* ---- the answers ----------------------------------------------------- */

#define MAX_PARAMS 64   /* real DA1 answers list about 10 */

/* What one batch of answer bytes said. */
typedef struct {
    int da1;                /* a complete primary device attributes answer */
    int sixel;              /* ... listing attribute 4 */
    int cell_w, cell_h;     /* from "6;H;W t" */
    int area_w, area_h;     /* text area in pixels, "4;H;W t" */
    int area_cols, area_rows; /* text area in cells, "8;R;C t" */
} answers;

static int sane(long v, long max) { return v > 0 && v <= max; }

static void take_sequence(char private_mark, const long *p, int np, char final,
                          answers *a)
{
    if (final == 'c' && private_mark == '?') {
        a->da1 = 1;
        /* The first number is the conformance level (61..65), the
         * attributes follow, 4 being sixel.  tmux built with sixel answers
         * in the VT100 form "?1;2;4c" with the same meaning (a real VT100's
         * "4" was its graphics processor option, a museum piece). */
        if (np > 0)
            for (int i = 1; i < np; i++)
                if (p[i] == 4)
                    a->sixel = 1;
    } else if (final == 't' && private_mark == 0 && np == 3) {
        if (p[0] == 6 && sane(p[1], 1000) && sane(p[2], 1000)) {
            a->cell_h = (int)p[1];
            a->cell_w = (int)p[2];
        } else if (p[0] == 4 && sane(p[1], 100000) && sane(p[2], 100000)) {
            a->area_h = (int)p[1];
            a->area_w = (int)p[2];
        } else if (p[0] == 8 && sane(p[1], 10000) && sane(p[2], 10000)) {
            a->area_rows = (int)p[1];
            a->area_cols = (int)p[2];
        }
    }
}

/* Scans s for CSI sequences (ESC [ [?>=] digits and ';' final-byte); a
 * sequence cut by another ESC or by the end of the bytes is dropped. */
static void scan_answers(const char *s, size_t n, answers *a)
{
    memset(a, 0, sizeof *a);
    size_t i = 0;
    while (i < n) {
        if (s[i] != '\033' || i + 1 >= n || s[i + 1] != '[') {
            i++;
            continue;
        }
        i += 2;
        char mark = 0;
        if (i < n && (s[i] == '?' || s[i] == '>' || s[i] == '='))
            mark = s[i++];
        long p[MAX_PARAMS];
        int np = 0, digits = 0;
        long cur = 0;
        for (; i < n; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c >= '0' && c <= '9') {
                if (cur < 10000000)
                    cur = cur * 10 + (c - '0');
                digits = 1;
            } else if (c == ';') {
                if (np < MAX_PARAMS)
                    p[np++] = digits ? cur : 0;
                cur = 0;
                digits = 0;
            } else {
                break;
            }
        }
        if (i >= n)
            break;                      /* incomplete at the end */
        unsigned char final = (unsigned char)s[i];
        if (final < 0x40 || final > 0x7e)
            continue;                   /* an ESC or garbage cut it: rescan from here */
        i++;
        if (np < MAX_PARAMS && (digits || np > 0))
            p[np++] = digits ? cur : 0;
        take_sequence(mark, p, np, (char)final, a);
    }
}

static void apply_answers(const answers *a, term_caps *caps)
{
    if (a->sixel) {
        caps->gfx = GFX_SIXEL;
        /* the answer came from tmux itself when inside it: it shows sixel */
        caps->tmux_passthrough = 0;
    }
    if (a->cell_w && a->cell_h) {
        caps->cell_w = a->cell_w;
        caps->cell_h = a->cell_h;
    } else if (a->area_w && a->area_h && a->area_cols && a->area_rows &&
               a->area_w / a->area_cols > 0 && a->area_h / a->area_rows > 0) {
        caps->cell_w = a->area_w / a->area_cols;
        caps->cell_h = a->area_h / a->area_rows;
    }
}

void termcaps_parse_answer(const char *answer, size_t n, term_caps *caps)
{
    answers a;
    scan_answers(answer ? answer : "", answer ? n : 0, &a);
    apply_answers(&a, caps);
}

/* ---- asking ---------------------------------------------------------- */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int write_all(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Sends the queries and collects answers into buf until a DA1 answer ends
 * them or timeout_ms pass.  The tty is already in non-canonical mode. */
static size_t ask(int in_fd, int out_fd, int timeout_ms, char *buf, size_t cap, int *got_da1)
{
    /* XTWINOPS first and DA1 last: every terminal answers DA1, and answers
     * come in order, so DA1's answer means nothing else is coming. */
    static const char query[] = "\033[16t\033[14t\033[18t\033[c";
    *got_da1 = 0;
    if (write_all(out_fd, query, sizeof query - 1) != 0)
        return 0;
    size_t len = 0;
    double deadline = now_ms() + timeout_ms;
    while (len < cap) {
        int left = (int)(deadline - now_ms() + 0.999);
        if (left <= 0)
            break;
        struct pollfd pfd = {.fd = in_fd, .events = POLLIN};
        int r = poll(&pfd, 1, left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        ssize_t got = read(in_fd, buf + len, cap - len);
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got <= 0)
            break;                      /* hang-up: nobody will answer */
        len += (size_t)got;
        answers a;
        scan_answers(buf, len, &a);
        if (a.da1) {
            *got_da1 = 1;
            break;
        }
    }
    return len;
}

/* The cell size from the tty's window size in pixels, which xterm, VTE,
 * tmux 3.3+ (for its panes) and sshd (from the client's pty request) fill
 * in; many terminals leave the pixel fields 0. */
static void cell_size_from_winsize(int fd, term_caps *caps)
{
    struct winsize ws;
    if (ioctl(fd, TIOCGWINSZ, &ws) != 0 || ws.ws_col == 0 || ws.ws_row == 0)
        return;
    int w = ws.ws_xpixel / ws.ws_col, h = ws.ws_ypixel / ws.ws_row;
    if (w > 0 && h > 0 && w <= 1000 && h <= 1000) {
        caps->cell_w = w;
        caps->cell_h = h;
    }
}

void termcaps_query(int in_fd, int out_fd, int timeout_ms, term_caps *caps)
{
    termcaps_from_env(caps);
    if (!isatty(in_fd) || !isatty(out_fd))
        return;
    cell_size_from_winsize(out_fd, caps);
    if (timeout_ms <= 0)
        return;
    /* A background job must not touch the terminal (it would be stopped,
     * or steal the foreground's input).  ENOTTY: not our controlling
     * terminal, e.g. a pty we were handed; asking it is fine. */
    pid_t fg = tcgetpgrp(in_fd);
    if (fg >= 0 && fg != getpgrp())
        return;

    struct termios saved, raw;
    if (tcgetattr(in_fd, &saved) != 0)
        return;
    /* No signal may leave the tty without echo: hold them until restored. */
    sigset_t hold, old_mask;
    sigemptyset(&hold);
    sigaddset(&hold, SIGINT);
    sigaddset(&hold, SIGQUIT);
    sigaddset(&hold, SIGTERM);
    sigaddset(&hold, SIGHUP);
    sigaddset(&hold, SIGTSTP);
    sigaddset(&hold, SIGTTIN);
    sigaddset(&hold, SIGTTOU);
    sigprocmask(SIG_BLOCK, &hold, &old_mask);

    raw = saved;
    raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    if (tcsetattr(in_fd, TCSANOW, &raw) == 0) {
        char buf[4096];
        int got_da1;
        size_t n = ask(in_fd, out_fd, timeout_ms, buf, sizeof buf, &got_da1);
        /* A slow terminal's answer arriving now would read as keys. */
        if (!got_da1)
            tcflush(in_fd, TCIFLUSH);
        tcsetattr(in_fd, TCSANOW, &saved);
        termcaps_parse_answer(buf, n, caps);
    }
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    /* the terminal's word about sixel yields to the operator's */
    apply_forced_gfx(caps);
}
