/*
 * worker.c - `coin worker`: drains the job queue of one device.
 *
 * One worker per device at a time: it holds an flock on
 * $COIN_HOME/worker-DEVICE.lock for as long as it runs (the kernel lets it
 * go however the process ends, so a crashed worker never blocks the next).
 * Each job runs as `coin ARGS --foreground --job RUN` in a process of its
 * own, in the folder it was queued from, with its output in
 * $COIN_HOME/logs/run-RUN.log: the job records its own progress and end in
 * the ledger; the worker only notices a job whose process died without
 * saying how it ended, and marks it interrupted.
 */
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "db/ledger.h"
#include "tui/cli.h"
#include "tui/job.h"
#include "tui/record.h"

static const char WORKER_HELP[] =
    "usage: coin worker [--device cpu|cuda]\n"
    "\n"
    "Runs the queued jobs of a device (default cpu) one at a time, oldest first,\n"
    "and exits when the queue is empty.  coin train and coin sample queue their\n"
    "job and start a worker themselves (detached from the terminal, output in\n"
    "$COIN_HOME/logs/worker-DEVICE.log), so this is needed only to drain a queue\n"
    "by hand, e.g. after a reboot.  Only one worker per device runs: a second one\n"
    "says so and exits.  Each job's output goes to $COIN_HOME/logs/run-N.log.\n";

static void stamp(void)
{
    char when[32];
    time_t t = time(NULL);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", localtime(&t));
    fprintf(stderr, "%s ", when);
}

/* Turns the job's JSON argument list into argv for exec: "coin", the
 * arguments, "--foreground", "--job", RUN.  NULL when it is not a list of
 * strings.  Free with free_args. */
static char **job_args(const ledger_job *j, char *run_text)
{
    cJSON *list = cJSON_Parse(j->argv_json);
    int n = cJSON_IsArray(list) ? cJSON_GetArraySize(list) : 0;
    char **args = n > 0 ? calloc((size_t)n + 5, sizeof *args) : NULL;
    int k = 0, ok = args != NULL;
    if (ok) {
        args[k++] = strdup("coin");
        const cJSON *item;
        cJSON_ArrayForEach(item, list) {
            if (!cJSON_IsString(item) || k > n)
                ok = 0;
            else
                args[k++] = strdup(item->valuestring);
        }
        args[k++] = strdup("--foreground");
        args[k++] = strdup("--job");
        args[k++] = strdup(run_text);
        for (int i = 0; i < k; i++)
            ok = ok && args[i];
    }
    cJSON_Delete(list);
    if (!ok && args) {
        for (int i = 0; i < k; i++)
            free(args[i]);
        free(args);
        args = NULL;
    }
    return args;
}

static void free_args(char **args)
{
    for (int i = 0; args && args[i]; i++)
        free(args[i]);
    free(args);
}

/* Runs one job to its end; returns after marking it interrupted when its
 * process ended without recording how. */
static void run_job(ledger *l, const ledger_job *j)
{
    char run_text[24], name[40], log[4096];
    coin_error err = {0};
    snprintf(run_text, sizeof run_text, "%lld", (long long)j->run);
    snprintf(name, sizeof name, "run-%lld", (long long)j->run);
    char **args = job_args(j, run_text);
    if (!args || job_log_path(log, sizeof log, name, &err)) {
        const char *why = args ? err.msg : "its stored command line is not a list of arguments";
        stamp();
        fprintf(stderr, "run %lld: cannot start: %s\n", (long long)j->run, why);
        ledger_set_run_status(l, j->run, "failed", why, NULL);
        free_args(args);
        return;
    }
    stamp();
    fprintf(stderr, "run %lld: starting coin", (long long)j->run);
    for (int i = 1; args[i]; i++)
        fprintf(stderr, " %s", args[i]);
    fprintf(stderr, " (in %s; output: %s)\n", j->cwd, log);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int out = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (out < 0 || chdir(j->cwd) != 0) {
            fprintf(stderr, "run %lld: cannot start in %s: %s\n", (long long)j->run, j->cwd,
                    strerror(errno));
            _exit(127);
        }
        dup2(out, STDOUT_FILENO);
        dup2(out, STDERR_FILENO);
        execv("/proc/self/exe", args);
        fprintf(stderr, "run %lld: cannot start coin: %s\n", (long long)j->run, strerror(errno));
        _exit(127);
    }
    free_args(args);
    if (pid < 0) {
        char why[200];
        snprintf(why, sizeof why, "the worker could not start a process for it: %s",
                 strerror(errno));
        ledger_set_run_status(l, j->run, "failed", why, NULL);
        return;
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    ledger_run r;
    if (ledger_get_run(l, j->run, &r, &err)) {
        stamp();
        fprintf(stderr, "run %lld: ended; the ledger cannot say how: %s\n", (long long)j->run,
                err.msg);
        return;
    }
    /* The job records its own end; one still 'running' as this job died on
     * the way.  (One queued again meanwhile, by coin resume, is not ours.) */
    if (!strcmp(r.status, "running") && (r.pid == pid || r.pid == getpid())) {
        char why[4400];
        if (WIFSIGNALED(status))
            snprintf(why, sizeof why, "its process was killed by signal %d (%s); see %s",
                     WTERMSIG(status), strsignal(WTERMSIG(status)), log);
        else
            snprintf(why, sizeof why, "its process ended (exit status %d) without finishing "
                     "it; see %s", WEXITSTATUS(status), log);
        ledger_set_run_status(l, j->run, "interrupted", why, NULL);
        stamp();
        fprintf(stderr, "run %lld: interrupted: %s\n", (long long)j->run, why);
    } else {
        stamp();
        fprintf(stderr, "run %lld: %s\n", (long long)j->run, r.status);
    }
    ledger_run_free(&r);
}

int cmd_worker(int argc, char **argv)
{
    const char *device = "cpu";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(WORKER_HELP, stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--device") && i + 1 < argc)
            device = argv[++i];
        else
            return cli_usage_error("worker", "unexpected argument '%s'", argv[i]);
    }
    if (strcmp(device, "cpu") && strcmp(device, "cuda"))
        return cli_usage_error("worker", "--device takes cpu or cuda, not '%s'", device);
    coin_error err = {0};
    char lock_path[4096];
    if (job_lock_path(lock_path, sizeof lock_path, device, &err))
        return cli_report(&err);
    int fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        coin_fail(&err, COIN_EIO, "cannot open the worker lock %s: %s", lock_path,
                  strerror(errno));
        return cli_report(&err);
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        fprintf(stderr, "coin worker: a worker for %s is already running%s%s%s; it takes the "
                "queued jobs\n", device, pid[0] ? " (process " : "", pid, pid[0] ? ")" : "");
        close(fd);
        return 0;
    }
    char me[32];
    int len = snprintf(me, sizeof me, "%d\n", (int)getpid());
    if (ftruncate(fd, 0) == 0 && pwrite(fd, me, (size_t)len, 0) < 0)
        fprintf(stderr, "warning: cannot write the worker's process id into %s\n", lock_path);
    /* Closing the terminal that started it does not end the worker. */
    signal(SIGHUP, SIG_IGN);
    ledger *l;
    if (cli_open_ledger(&l, &err)) {
        close(fd);
        return cli_report(&err);
    }
    stamp();
    fprintf(stderr, "worker for %s: started (process %d)\n", device, (int)getpid());
    int jobs = 0, status = 0;
    for (;;) {
        ledger_job j;
        if (ledger_claim_job(l, device, &j, &err)) {
            status = cli_report(&err);
            break;
        }
        if (j.run) {
            run_job(l, &j);
            ledger_job_free(&j);
            jobs++;
            continue;
        }
        /* The queue looks empty.  Let the lock go first, then look again:
         * a job queued in between was queued before its coin found the
         * lock held, so it is seen here. */
        flock(fd, LOCK_UN);
        int n = 0;
        if (ledger_count_queued(l, device, &n, &err)) {
            status = cli_report(&err);
            break;
        }
        if (n == 0 || flock(fd, LOCK_EX | LOCK_NB) != 0)
            break;
    }
    stamp();
    fprintf(stderr, "worker for %s: queue empty after %d job%s; exiting\n", device, jobs,
            jobs == 1 ? "" : "s");
    ledger_close(l);
    close(fd);
    return status;
}
