/*
 * progress.c - the stderr progress line (progress.h).
 */
#include "tui/progress.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double progress_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void format_duration(char *buf, size_t len, double s)
{
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, len, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, len, "%ld:%02ld", t / 60, t % 60);
}

void progress_start(progress *p, const char *what, int total)
{
    memset(p, 0, sizeof *p);
    snprintf(p->what, sizeof p->what, "%s", what);
    p->total = total;
    p->start = p->last = progress_now();
    p->tty = isatty(STDERR_FILENO);
}

void progress_update(progress *p, int done)
{
    double now = progress_now(), elapsed = now - p->start;
    /* A terminal gets every step; a log gets a line every 5 s and the last. */
    if (!p->tty && now - p->last < 5.0 && done < p->total)
        return;
    p->last = now;
    double rate = elapsed > 0 && done > p->base ? (done - p->base) / elapsed : 0;
    char eta[32] = "?";
    if (rate > 0)
        format_duration(eta, sizeof eta, (p->total - done) / rate);
    char speed[32];
    if (rate >= 1 || rate == 0)
        snprintf(speed, sizeof speed, "%.2f it/s", rate);
    else
        snprintf(speed, sizeof speed, "%.2f s/it", 1 / rate);
    fprintf(stderr, "%s%s: step %d/%d, %s, ETA %s%s", p->tty ? "\r" : "", p->what, done,
            p->total, speed, eta, p->tty ? "\033[K" : "\n");
    p->printed = 1;
    fflush(stderr);
}

void progress_end(progress *p)
{
    char took[32];
    format_duration(took, sizeof took, progress_now() - p->start);
    if (p->tty && p->printed)
        fprintf(stderr, "\r%s: %d steps in %s\033[K\n", p->what, p->total, took);
    else
        fprintf(stderr, "%s: %d steps in %s\n", p->what, p->total, took);
}
