/*
 * showimg.c - shows PNG images in the terminal the way the workbench does
 * (termcaps_query, then termimg_render), so the screenshot script can prove
 * sixel and half-blocks work in a real terminal whether or not the
 * workbench is built.  Not part of coin; tools/screenshots/make_screenshots.sh
 * builds it.
 *
 *   showimg [--cols N] [--rows N] [--wait] [--report FILE] IMAGE.png...
 *   showimg --curses IMAGE.png
 *
 * Prints what the terminal said, then the images side by side, each in
 * N x N cells (default: as large as the terminal allows), with a caption.
 * --wait keeps the picture on the screen until a key or 60 s pass.
 * --report writes the capabilities and, for each image, where the terminal
 * says the cursor is after the image's bytes (a cursor position report):
 * termimg.h promises the top-left cell it started at.
 * --curses follows termimg.h's recipe for a curses screen: a framed image
 * beside text, a bottom bar; `d` opens a dialog over the image (which must
 * vanish cleanly), any key closes it and the image comes back; `q` quits.
 */
#include "core/image.h"
#include "tui/termimg.h"

#include <curses.h>
#include <locale.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

/* The cursor position as the terminal reports it (CSI 6n), 1-based, or
 * 0,0 when it does not answer within half a second. */
static void cursor_position(int *row, int *col)
{
    struct termios t, saved;
    *row = *col = 0;
    if (tcgetattr(STDIN_FILENO, &saved) != 0)
        return;
    t = saved;
    t.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
    t.c_cc[VMIN] = 0;
    t.c_cc[VTIME] = 0;
    tcsetattr(STDIN_FILENO, TCSANOW, &t);
    if (write(STDOUT_FILENO, "\033[6n", 4) == 4) {
        char buf[64];
        size_t n = 0;
        struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
        while (n < sizeof buf - 1 && poll(&p, 1, 500) > 0) {
            ssize_t r = read(STDIN_FILENO, buf + n, sizeof buf - 1 - n);
            if (r <= 0)
                break;
            n += (size_t)r;
            buf[n] = '\0';
            char *esc = strstr(buf, "\033[");
            if (esc && strchr(esc, 'R')) {
                sscanf(esc, "\033[%d;%dR", row, col);
                break;
            }
        }
    }
    tcsetattr(STDIN_FILENO, TCSANOW, &saved);
}

static const char *gfx_name(gfx_mode g)
{
    return g == GFX_SIXEL ? "sixel" : g == GFX_BLOCKS ? "blocks" : "none";
}

/* Writes the rendered bytes at cell (y, x) and puts the cursor back where
 * curses believes it is (termimg.h's recipe). */
static void put_image(const char *bytes, size_t len, int y, int x)
{
    int cy, cx;
    doupdate();
    getyx(curscr, cy, cx);
    printf("\033[%d;%dH", y + 1, x + 1);
    fwrite(bytes, 1, len, stdout);
    printf("\033[%d;%dH", cy + 1, cx + 1);
    fflush(stdout);
}

static int curses_demo(const term_caps *caps, const char *path)
{
    coin_image img = {0};
    coin_error err = {0};
    if (image_load(path, &img, &err) != 0) {
        fprintf(stderr, "showimg: %s\n", err.msg);
        return 1;
    }
    setlocale(LC_CTYPE, "");
    initscr();
    cbreak();
    noecho();
    curs_set(0);
    int H = LINES, W = COLS;
    /* the image box: left half, below a title row, above the bottom bar */
    int bx = 1, by = 2, bcols = W / 2 - 2, brows = H - 5;
    char *bytes = NULL;
    size_t len = 0;
    int uc = 0, ur = 0;
    if (termimg_render(caps, img.pixels, img.width, img.height, bcols, brows, &bytes, &len,
                       &uc, &ur, &err) != 0) {
        endwin();
        fprintf(stderr, "showimg: %s\n", err.msg);
        return 1;
    }
    mvprintw(0, 1, "coin - curses with an inline image (%s, cell %dx%d)",
             gfx_name(caps->gfx), caps->cell_w, caps->cell_h);
    WINDOW *frame = newwin(ur + 2, uc + 2, by - 1, bx - 1);
    box(frame, 0, 0);
    const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    mvwprintw(frame, 0, 2, " %s ", name);
    int tx = bx + uc + 3;
    mvprintw(by, tx, "file    %s", name);
    mvprintw(by + 1, tx, "size    %dx%d", img.width, img.height);
    mvprintw(by + 2, tx, "shown   %dx%d cells", uc, ur);
    mvprintw(by + 4, tx, "The picture is written after curses'");
    mvprintw(by + 5, tx, "refresh; a dialog hides it cleanly.");
    attron(A_REVERSE);
    mvprintw(H - 1, 0, " d dialog   q quit %*s", W - 20, "");
    attroff(A_REVERSE);
    wnoutrefresh(stdscr);
    wnoutrefresh(frame);
    put_image(bytes, len, by, bx);
    for (;;) {
        int k = getch();
        if (k == 'q' || k == ERR)
            break;
        if (k != 'd')
            continue;
        /* the image goes first: curses repaints its cells, which erases it
         * (windows over those lines are touched again, or stdscr's blanks
         * would replace them) */
        wredrawln(stdscr, by, ur);
        wnoutrefresh(stdscr);
        touchwin(frame);
        wnoutrefresh(frame);
        int dh = 7, dw = 44;
        WINDOW *dlg = newwin(dh, dw, by + ur / 2 - dh / 2, bx + uc / 2 - dw / 4);
        box(dlg, 0, 0);
        mvwprintw(dlg, 0, 2, " Stop run 12? ");
        mvwprintw(dlg, 2, 3, "The run stops after its current step.");
        mvwprintw(dlg, 4, 3, "[y] stop      [any other key] keep");
        wnoutrefresh(dlg);
        doupdate();
        getch();
        delwin(dlg);
        touchwin(stdscr);
        wnoutrefresh(stdscr);
        touchwin(frame);
        wnoutrefresh(frame);
        put_image(bytes, len, by, bx);
    }
    delwin(frame);
    endwin();
    free(bytes);
    image_free(&img);
    return 0;
}

int main(int argc, char **argv)
{
    int cols = 0, rows = 0, wait = 0, first = 1, use_curses = 0;
    const char *report_path = NULL;
    for (; first < argc && strncmp(argv[first], "--", 2) == 0; first++) {
        if (strcmp(argv[first], "--cols") == 0 && first + 1 < argc)
            cols = atoi(argv[++first]);
        else if (strcmp(argv[first], "--rows") == 0 && first + 1 < argc)
            rows = atoi(argv[++first]);
        else if (strcmp(argv[first], "--wait") == 0)
            wait = 1;
        else if (strcmp(argv[first], "--report") == 0 && first + 1 < argc)
            report_path = argv[++first];
        else if (strcmp(argv[first], "--curses") == 0)
            use_curses = 1;
        else {
            fprintf(stderr, "showimg: unknown option %s\n", argv[first]);
            return 2;
        }
    }
    int n = argc - first;
    if (n <= 0) {
        fprintf(stderr, "usage: showimg [--cols N] [--rows N] [--wait] [--report FILE] "
                "IMAGE.png...\n       showimg --curses IMAGE.png\n");
        return 2;
    }
    term_caps caps;
    termcaps_query(STDIN_FILENO, STDOUT_FILENO, 500, &caps);
    if (use_curses)
        return curses_demo(&caps, argv[first]);
    struct winsize ws = {0};
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) != 0 || ws.ws_col == 0) {
        ws.ws_col = 80;
        ws.ws_row = 24;
    }
    if (cols <= 0)
        cols = (ws.ws_col - 2 * n) / n;
    if (rows <= 0)
        rows = ws.ws_row - 5;
    FILE *report = report_path ? fopen(report_path, "w") : NULL;
    if (report_path && !report) {
        perror(report_path);
        return 1;
    }
    if (report)
        fprintf(report, "gfx=%s cell=%dx%d colors=%d utf8=%d tmux=%d passthrough=%d\n",
                gfx_name(caps.gfx), caps.cell_w, caps.cell_h, caps.colors, caps.utf8,
                caps.in_tmux, caps.tmux_passthrough);
    printf("\033[H\033[2J");
    printf("coin terminal graphics: gfx=%s cell=%dx%d colors=%d utf8=%d tmux=%d\r\n",
           gfx_name(caps.gfx), caps.cell_w, caps.cell_h, caps.colors, caps.utf8, caps.in_tmux);
    int max_rows = 0;
    for (int i = 0; i < n; i++) {
        coin_image img = {0};
        coin_error err = {0};
        if (image_load(argv[first + i], &img, &err) != 0) {
            fprintf(stderr, "showimg: %s\n", err.msg);
            return 1;
        }
        char *out;
        size_t len;
        int uc, ur;
        if (termimg_render(&caps, img.pixels, img.width, img.height, cols, rows, &out, &len,
                           &uc, &ur, &err) != 0) {
            fprintf(stderr, "showimg: %s\n", err.msg);
            return 1;
        }
        int col = 1 + i * (cols + 2);
        printf("\033[%d;%dH%.*s (%dx%d)", 2, col, cols - 12, strrchr(argv[first + i], '/')
               ? strrchr(argv[first + i], '/') + 1 : argv[first + i], img.width, img.height);
        printf("\033[%d;%dH", 3, col);
        fflush(stdout);
        if (write(STDOUT_FILENO, out, len) != (ssize_t)len)
            return 1;
        if (report) {
            int r, c;
            cursor_position(&r, &c);
            fprintf(report, "image %d: %zu bytes, %dx%d cells, cursor after it at %d;%d, "
                    "expected 3;%d: %s\n", i + 1, len, uc, ur, r, c, col,
                    r == 3 && c == col ? "ok" : "WRONG");
        }
        if (ur > max_rows)
            max_rows = ur;
        free(out);
        image_free(&img);
    }
    printf("\033[%d;1H", 3 + max_rows);
    fflush(stdout);
    if (report)
        fclose(report);
    if (wait) {
        struct termios t, saved;
        tcgetattr(STDIN_FILENO, &saved);
        t = saved;
        t.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
        tcsetattr(STDIN_FILENO, TCSANOW, &t);
        struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
        poll(&p, 1, 60000);
        tcsetattr(STDIN_FILENO, TCSANOW, &saved);
    }
    return 0;
}
