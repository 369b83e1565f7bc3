/*
 * progress.h - the progress line long jobs print on stderr: step, rate and
 * time left.  On a terminal it rewrites one line; into a file or pipe it
 * prints a line every few seconds, so logs stay readable.
 */
#ifndef COIN_PROGRESS_H
#define COIN_PROGRESS_H

typedef struct progress {
    char what[96];
    int total;
    double start, last;
    int tty;
    int printed;
    int base;           /* units already done at start (a follower joining a
                         * run midway): the rate counts only those after */
} progress;

/* Starts a progress line for `total` units of work called `what`. */
void progress_start(progress *p, const char *what, int total);
/* Reports that `done` units are finished. */
void progress_update(progress *p, int done);
/* Finishes the line with the total time. */
void progress_end(progress *p);
/* Seconds on a monotonic clock. */
double progress_now(void);

#endif
