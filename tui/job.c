/*
 * job.c - queueing jobs, starting the worker, following a run (job.h).
 */
#include "tui/job.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tui/cli.h"
#include "tui/progress.h"
#include "tui/record.h"

int job_take_flags(int *argc, char **argv, job_flags *f, const char *cmd)
{
    memset(f, 0, sizeof *f);
    int out = 1;
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--")) {
            /* everything after belongs to the command */
            while (i < *argc)
                argv[out++] = argv[i++];
            break;
        }
        if (!strcmp(a, "--foreground")) {
            f->foreground = 1;
        } else if (!strcmp(a, "--no-follow")) {
            f->no_follow = 1;
        } else if (!strcmp(a, "--detach")) {
            f->detach = 1;
        } else if (!strcmp(a, "--job")) {
            char *end;
            long long v = i + 1 < *argc ? strtoll(argv[i + 1], &end, 10) : 0;
            if (i + 1 >= *argc || !*argv[i + 1] || *end || v < 1)
                return cli_usage_error(cmd, "--job takes a run id");
            f->job_run = v;
            f->foreground = 1;
            i++;
        } else {
            argv[out++] = argv[i];
        }
    }
    argv[out] = NULL;
    *argc = out;
    if (f->foreground + (f->no_follow | f->detach) > 1 && !f->job_run)
        return cli_usage_error(cmd, "--foreground runs the job here; it cannot be combined with "
                               "--no-follow or --detach");
    return 0;
}

char **job_copy_argv(int argc, char **argv)
{
    char **copy = calloc((size_t)argc + 1, sizeof *copy);
    if (copy)
        memcpy(copy, argv, (size_t)argc * sizeof *argv);
    else
        fprintf(stderr, "coin: out of memory\n");
    return copy;
}

/* The workspace folder: where the ledger lives. */
static int workspace_dir(char *buf, size_t len, coin_error *err)
{
    int rc = ledger_default_path(buf, len, err);
    if (rc)
        return rc;
    char *slash = strrchr(buf, '/');
    if (slash)
        *slash = '\0';
    return 0;
}

int job_log_path(char *buf, size_t len, const char *name, coin_error *err)
{
    char dir[4096];
    int rc = workspace_dir(dir, sizeof dir, err);
    if (rc)
        return rc;
    size_t n = strlen(dir);
    if (n + 6 >= sizeof dir)
        return coin_fail(err, COIN_EINVAL, "the workspace path is too long");
    strcat(dir, "/logs");
    if (mkdir(dir, 0755) && errno != EEXIST)
        return coin_fail(err, COIN_EIO, "cannot create the log folder %s: %s", dir,
                         strerror(errno));
    int w = snprintf(buf, len, "%s/%s.log", dir, name);
    if (w < 0 || (size_t)w >= len)
        return coin_fail(err, COIN_EINVAL, "the log path %s/%s.log is too long", dir, name);
    return 0;
}

int job_lock_path(char *buf, size_t len, const char *device, coin_error *err)
{
    char dir[4096];
    int rc = workspace_dir(dir, sizeof dir, err);
    if (rc)
        return rc;
    int w = snprintf(buf, len, "%s/worker-%s.lock", dir, device);
    if (w < 0 || (size_t)w >= len)
        return coin_fail(err, COIN_EINVAL, "the worker lock path %s/worker-%s.lock is too long",
                         dir, device);
    return 0;
}

const char *job_device(const char *backend_name)
{
    return backend_name && !strcmp(backend_name, "cuda") ? "cuda" : "cpu";
}

int job_queue(ledger *l, int64_t run, int argc, char **argv, const char *device,
              coin_error *err)
{
    cJSON *list = cJSON_CreateArray();
    for (int i = 0; list && i < argc; i++) {
        cJSON *s = cJSON_CreateString(argv[i]);
        if (!s || !cJSON_AddItemToArray(list, s)) {
            cJSON_Delete(s);
            cJSON_Delete(list);
            list = NULL;
        }
    }
    char *json = list ? cJSON_PrintUnformatted(list) : NULL;
    cJSON_Delete(list);
    char cwd[4096];
    int rc;
    if (!json)
        rc = coin_fail(err, COIN_ENOMEM, "out of memory queueing the job");
    else if (!getcwd(cwd, sizeof cwd))
        rc = coin_fail(err, COIN_EIO, "cannot tell the current folder: %s", strerror(errno));
    else
        rc = ledger_enqueue_job(l, run, json, cwd, device, err);
    free(json);
    return rc;
}

/* Closes every descriptor above stderr: a worker must not hold the pipe of
 * a shell that waits for the command's output, nor a terminal. */
static void close_other_fds(void)
{
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536)
        max = 65536;
    for (int fd = 3; fd < max; fd++)
        close(fd);
}

/* Makes sure a worker for device is running, starting one detached from
 * the terminal when none holds the device's lock. */
static int job_ensure_worker(const char *device, coin_error *err)
{
    char lock[4096], log[4096], name[4200];
    int rc = job_lock_path(lock, sizeof lock, device, err);
    if (rc)
        return rc;
    snprintf(name, sizeof name, "worker-%s", device);
    if ((rc = job_log_path(log, sizeof log, name, err)))
        return rc;
    int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return coin_fail(err, COIN_EIO, "cannot open the worker lock %s: %s", lock,
                         strerror(errno));
    /* A held lock is a live worker: it takes the job (it looks at the queue
     * again after letting the lock go, so a job queued while it was about
     * to leave is not stranded). */
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        close(fd);
        return 0;
    }
    flock(fd, LOCK_UN);
    close(fd);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return coin_fail(err, COIN_EIO, "cannot start the worker: %s", strerror(errno));
    if (pid == 0) {
        /* A new session without a terminal; the second fork makes sure the
         * worker, not being a session leader, can never get one. */
        setsid();
        signal(SIGHUP, SIG_IGN);
        signal(SIGINT, SIG_IGN);
        if (fork() != 0)
            _exit(0);
        int in = open("/dev/null", O_RDONLY), out = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (in < 0 || out < 0)
            _exit(1);
        dup2(in, STDIN_FILENO);
        dup2(out, STDOUT_FILENO);
        dup2(out, STDERR_FILENO);
        close_other_fds();
        /* SIGINT back to default: `coin stop` is the way to end a job, but
         * the worker itself may be ended like any daemon. */
        signal(SIGINT, SIG_DFL);
        char *args[] = {"coin", "worker", "--device", (char *)device, NULL};
        execv("/proc/self/exe", args);
        fprintf(stderr, "coin: cannot start the worker: %s\n", strerror(errno));
        _exit(1);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return 0;
}

/* ---- following a run ---------------------------------------------------- */

static volatile sig_atomic_t stop_following;

static void on_sigint(int sig)
{
    (void)sig;
    stop_following = 1;
}

static int print_sample(void *ctx, const ledger_sample *s)
{
    int64_t *last = ctx;
    printf("%s\n", s->image_path ? s->image_path : "(no file)");
    fflush(stdout);
    *last = s->id;
    return 0;
}

static int terminal_status(const char *s)
{
    return !strcmp(s, "done") || !strcmp(s, "failed") || !strcmp(s, "paused") ||
           !strcmp(s, "stopped") || !strcmp(s, "interrupted");
}

/* Follows run from the ledger until it ends or Ctrl-C is pressed: its
 * status, a progress line with loss and ETA for training, the path of each
 * image as it is recorded for sampling.  Returns 0 when the run is done (or
 * the user stopped following), 1 when it failed, was interrupted, or paused
 * with an error. */
static int job_follow(int64_t run)
{
    coin_error err = {0};
    ledger *l;
    if (cli_open_ledger(&l, &err))
        return cli_report(&err);
    struct sigaction sa = {.sa_handler = on_sigint}, old;
    sigaction(SIGINT, &sa, &old);
    stop_following = 0;
    fprintf(stderr, "run %lld: following it here; Ctrl-C stops following, not the run "
            "(coin stop %lld stops it)\n", (long long)run, (long long)run);
    progress bar;
    int started = 0, status = 1, last_step = -1, polls = 0, dead_polls = 0;
    int64_t last_sample = 0;
    char last_status[16] = "";
    for (;;) {
        ledger_run r;
        ledger_run_row row;
        if (ledger_get_run(l, run, &r, &err) || ledger_run_summary(l, run, &row, &err)) {
            status = cli_report(&err);
            break;
        }
        int is_train = !strcmp(r.kind, "train");
        if (strcmp(last_status, r.status)) {
            if (started && bar.tty)
                fputc('\n', stderr);
            started = 0;
            if (!strcmp(r.status, "queued"))
                fprintf(stderr, "run %lld: queued, waiting for the worker\n", (long long)run);
            else if (!strcmp(r.status, "running")) {
                char log[4096], name[32];
                snprintf(name, sizeof name, "run-%lld", (long long)run);
                if (job_log_path(log, sizeof log, name, NULL))
                    snprintf(log, sizeof log, "$COIN_HOME/logs/%s.log", name);
                fprintf(stderr, "run %lld: running (its output: %s)\n", (long long)run, log);
            }
            snprintf(last_status, sizeof last_status, "%s", r.status);
        }
        if (!is_train && ledger_list_samples(l, run, last_sample, print_sample, &last_sample,
                                             &err))
            fprintf(stderr, "warning: %s\n", err.msg);
        if (is_train && !strcmp(r.status, "running") && row.step != last_step) {
            if (!started) {
                progress_start(&bar, "train", row.steps);
                bar.base = row.step;
                started = 1;
            }
            if (!isnan(row.last_loss))
                snprintf(bar.what, sizeof bar.what, "loss %.4f", row.last_loss);
            bar.total = row.steps;
            progress_update(&bar, row.step);
            last_step = row.step;
        }
        if (terminal_status(r.status)) {
            if (started && bar.tty)
                fputc('\n', stderr);
            if (!strcmp(r.status, "done")) {
                if (is_train && r.out_dir)
                    printf("%s/learned_embeds.safetensors\n", r.out_dir);
                fprintf(stderr, "run %lld: done, step %d of %d\n", (long long)run, row.step,
                        row.steps);
                status = 0;
            } else {
                fprintf(stderr, "run %lld: %s at step %d of %d%s%s\n", (long long)run, r.status,
                        row.step, row.steps, r.error ? ": " : "", r.error ? r.error : "");
                if (strcmp(r.status, "failed") && strcmp(r.status, "done"))
                    fprintf(stderr, "continue it with: coin resume %lld\n", (long long)run);
                status = (!strcmp(r.status, "failed") || !strcmp(r.status, "interrupted") ||
                          r.error) ? 1 : 0;
            }
            ledger_run_free(&r);
            break;
        }
        /* Its process is gone but the ledger still says running: the
         * ledger could not be written (a full disk) or is not ours to fix
         * (another host).  Say so rather than wait for ever. */
        if (!strcmp(r.status, "running") && r.pid > 0 && kill((pid_t)r.pid, 0) == -1 &&
            errno == ESRCH && r.host && polls % 10 == 9) {
            char host[256];
            cli_host_name(host, sizeof host);
            if (!strcmp(host, r.host) && ++dead_polls >= 3) {
                fprintf(stderr, "run %lld: its process (%lld) has ended, but the ledger still "
                        "says running and cannot be updated (is the disk full?); see its log "
                        "and coin show run %lld\n", (long long)run, (long long)r.pid,
                        (long long)run);
                ledger_run_free(&r);
                break;
            }
        }
        ledger_run_free(&r);
        if (stop_following) {
            if (started && bar.tty)
                fputc('\n', stderr);
            fprintf(stderr, "stopped following; run %lld goes on in the background "
                    "(coin show run %lld, coin stop %lld)\n", (long long)run, (long long)run,
                    (long long)run);
            status = 0;
            break;
        }
        /* A worker that died leaves its run 'running': look every few
         * seconds, as any coin start does.  A job still queued with no
         * worker holding its device (one that crashed, or was killed)
         * gets a new worker. */
        if (++polls % 10 == 0) {
            char host[256];
            cli_host_name(host, sizeof host);
            ledger_mark_dead_runs(l, host, NULL, NULL);
            ledger_job job;
            if (!strcmp(last_status, "queued") && ledger_get_job(l, run, &job, NULL) == 0) {
                job_ensure_worker(job.device, NULL);
                ledger_job_free(&job);
            }
        }
        usleep(200000);
    }
    sigaction(SIGINT, &old, NULL);
    ledger_close(l);
    fflush(stdout);
    return status;
}

int job_hand_over(int64_t run, const char *device, const job_flags *f)
{
    coin_error err = {0};
    if (job_ensure_worker(device, &err)) {
        fprintf(stderr, "coin: run %lld is queued, but %s; start one with: coin worker\n",
                (long long)run, err.msg);
        if (f->no_follow)
            printf("%lld\n", (long long)run);
        return 1;
    }
    if (f->no_follow) {
        printf("%lld\n", (long long)run);
        return 0;
    }
    if (f->detach) {
        char log[4096], name[32];
        snprintf(name, sizeof name, "run-%lld", (long long)run);
        if (job_log_path(log, sizeof log, name, &err))
            snprintf(log, sizeof log, "(%s)", err.msg);
        printf("run %lld: in the background (a worker runs it); its output: %s\n"
               "follow it with coin show run %lld or coin runs; coin pause / coin stop %lld\n",
               (long long)run, log, (long long)run, (long long)run);
        return 0;
    }
    return job_follow(run);
}

int job_disk_full(const char *msg)
{
    return msg && (strstr(msg, "disk is full") || strstr(msg, strerror(ENOSPC)) ||
                   strstr(msg, strerror(EDQUOT)));
}
