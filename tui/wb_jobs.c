/*
 * wb_jobs.c - how the workbench gets work done: by running coin's own
 * command line in other processes (wb.h).
 *
 * A command's stdout and stderr come back through pipes that the main loop
 * polls, so nothing it prints can reach the curses screen; stderr is also
 * appended to workbench.log in the ledger's folder.  Commands run in a
 * session of their own, so a Ctrl-C or a hang-up of the workbench's
 * terminal never reaches them.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tui/wb.h"

static char **copy_args(char *const args[], const char *extra)
{
    int n = 0;
    while (args[n])
        n++;
    char **v = calloc((size_t)n + 3, sizeof *v);
    if (!v)
        return NULL;
    v[0] = strdup("coin");
    for (int i = 0; i < n; i++)
        v[i + 1] = strdup(args[i]);
    if (extra)
        v[n + 1] = strdup(extra);
    return v;
}

static void free_args(char **v)
{
    for (int i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

static void append_log(wb *w, const char *text, size_t n)
{
    if (!n)
        return;
    int fd = open(w->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    ssize_t k = write(fd, text, n);
    (void)k;
    close(fd);
}

/* Starts argv (argv[0] "coin") with stdout and stderr piped back. */
static int spawn(wb *w, char **argv, wb_cmd_done done, void *ctx)
{
    int slot = -1;
    for (int i = 0; i < WB_MAX_CMDS && slot < 0; i++)
        if (!w->cmds[i].pid)
            slot = i;
    if (slot < 0) {
        wb_message(w, 1, "too many commands at once; wait for one to finish");
        return -1;
    }
    int out[2] = {-1, -1}, errp[2] = {-1, -1};
    if (pipe2(out, O_CLOEXEC) || pipe2(errp, O_CLOEXEC)) {
        wb_message(w, 1, "cannot start coin %s: %s", argv[1], strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        wb_message(w, 1, "cannot start coin %s: %s", argv[1], strerror(errno));
        return -1;
    }
    if (pid == 0) {
        setsid();
        int null = open("/dev/null", O_RDWR);
        dup2(null, STDIN_FILENO);
        dup2(out[1], STDOUT_FILENO);
        dup2(errp[1], STDERR_FILENO);
        signal(SIGPIPE, SIG_DFL);
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(out[1]);
    close(errp[1]);
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(errp[0], F_SETFL, O_NONBLOCK);
    wb_cmd *c = &w->cmds[slot];
    memset(c, 0, sizeof *c);
    c->pid = pid;
    c->out_fd = out[0];
    c->err_fd = errp[0];
    c->done = done;
    c->ctx = ctx;
    c->argv = argv;
    return 0;
}

int wb_command(wb *w, char *const args[], wb_cmd_done done, void *ctx)
{
    char **argv = copy_args(args, NULL);
    if (!argv)
        return -1;
    if (spawn(w, argv, done, ctx)) {
        free_args(argv);
        return -1;
    }
    return 0;
}

int wb_start_job(wb *w, char *const args[], wb_cmd_done done, void *ctx)
{
    /* --no-follow: queue the job, make sure a worker runs it, print the id */
    char **argv = copy_args(args, "--no-follow");
    if (!argv) {
        wb_message(w, 1, "out of memory");
        return -1;
    }
    if (spawn(w, argv, done, ctx)) {
        free_args(argv);
        return -1;
    }
    return 0;
}

int wb_cmd_fds(wb *w, int *fds, int cap)
{
    int n = 0;
    for (int i = 0; i < WB_MAX_CMDS; i++) {
        wb_cmd *c = &w->cmds[i];
        if (!c->pid)
            continue;
        if (c->out_fd >= 0 && n < cap)
            fds[n++] = c->out_fd;
        if (c->err_fd >= 0 && n < cap)
            fds[n++] = c->err_fd;
    }
    return n;
}

/* Reads what is there; closes the fd at end of file. */
static void drain(int *fd, char **buf, size_t *n)
{
    if (*fd < 0)
        return;
    for (;;) {
        char tmp[4096];
        ssize_t k = read(*fd, tmp, sizeof tmp);
        if (k > 0) {
            char *nb = realloc(*buf, *n + (size_t)k + 1);
            if (!nb)
                return;
            memcpy(nb + *n, tmp, (size_t)k);
            *n += (size_t)k;
            nb[*n] = '\0';
            *buf = nb;
            continue;
        }
        if (k == 0 || (errno != EAGAIN && errno != EINTR)) {
            close(*fd);
            *fd = -1;
        }
        return;
    }
}

void wb_cmd_service(wb *w)
{
    for (int i = 0; i < WB_MAX_CMDS; i++) {
        wb_cmd *c = &w->cmds[i];
        if (!c->pid)
            continue;
        size_t before = c->n_err;
        drain(&c->out_fd, &c->out, &c->n_out);
        drain(&c->err_fd, &c->errs, &c->n_err);
        if (c->n_err > before)
            append_log(w, c->errs + before, c->n_err - before);
        if (c->out_fd >= 0 || c->err_fd >= 0)
            continue;
        int st;
        pid_t r = waitpid(c->pid, &st, WNOHANG);
        if (r == 0)
            continue;
        int status = r < 0 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        wb_cmd done = *c;
        memset(c, 0, sizeof *c);
        c->out_fd = c->err_fd = -1;
        if (done.done)
            done.done(w, done.ctx, status, done.out ? done.out : "", done.errs ? done.errs : "");
        free(done.out);
        free(done.errs);
        free_args(done.argv);
        w->reload = 1;
        w->dirty = 1;
    }
}

void wb_cmd_free_all(wb *w)
{
    /* The commands go on; only our ends of their pipes close. */
    for (int i = 0; i < WB_MAX_CMDS; i++) {
        wb_cmd *c = &w->cmds[i];
        if (!c->pid)
            continue;
        if (c->out_fd >= 0)
            close(c->out_fd);
        if (c->err_fd >= 0)
            close(c->err_fd);
        free(c->out);
        free(c->errs);
        free_args(c->argv);
        memset(c, 0, sizeof *c);
    }
}

void wb_last_error(const char *errs, char *buf, size_t len)
{
    /* the last line that says something: coin ends usage errors with a
     * pointer to --help, and warnings come before the error */
    buf[0] = '\0';
    const char *end = errs + strlen(errs);
    while (end > errs) {
        while (end > errs && end[-1] == '\n')
            end--;
        const char *b = end;
        while (b > errs && b[-1] != '\n')
            b--;
        if (end > b && strncmp(b, "(see ", 5) != 0) {
            if (!strncmp(b, "coin: ", 6))
                b += 6;
            snprintf(buf, len, "%.*s", (int)(end - b), b);
            return;
        }
        end = b;
    }
    snprintf(buf, len, "no message (see workbench.log in the ledger's folder)");
}
