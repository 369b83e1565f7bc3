/* The runner behind tests/test.h: runs every registered test (or those whose
 * name contains argv[1]) and prints the summary line that CI reads. */
#include "test.h"

#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>
#include <ftw.h>

#define MAX_TESTS 1024

static struct {
    const char *name, *file;
    test_fn fn;
} tests[MAX_TESTS];
static int n_tests;
static int current_failed, current_skipped;
static char current_skip_why[256];
static char tmp_root[512];
static int tmp_count;

void test_register(const char *name, const char *file, test_fn fn)
{
    if (n_tests < MAX_TESTS) {
        tests[n_tests].name = name;
        tests[n_tests].file = file;
        tests[n_tests].fn = fn;
        n_tests++;
    }
}

void test_failed(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "    %s:%d: ", file, line);
    vfprintf(stdout, fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    current_failed++;
}

void test_skip(const char *why)
{
    current_skipped = 1;
    snprintf(current_skip_why, sizeof current_skip_why, "%s", why);
}

int test_has_failed(void) { return current_failed > 0; }

const char *test_tmpdir(void)
{
    char dir[600];
    if (!tmp_root[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmp_root, sizeof tmp_root, "%s/coin-tests-XXXXXX",
                 base && *base ? base : "/tmp");
        if (!mkdtemp(tmp_root)) {
            perror("mkdtemp");
            exit(2);
        }
    }
    snprintf(dir, sizeof dir, "%s/t%d", tmp_root, ++tmp_count);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    if (system(cmd) != 0) {
        perror("mkdir");
        exit(2);
    }
    /* A copy per call: a test keeps its folder's name while helpers it calls
     * (test_cli.c's run() makes its COIN_HOME on first use) ask for more. */
    char *copy = strdup(dir);
    if (!copy) {
        perror("strdup");
        exit(2);
    }
    return copy;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

int main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : NULL;
    int passed = 0, failed = 0, skipped = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < n_tests; i++) {
        if (filter && !strstr(tests[i].name, filter))
            continue;
        current_failed = current_skipped = 0;
        current_skip_why[0] = '\0';
        tests[i].fn();
        if (current_failed) {
            failed++;
            printf("FAIL %s (%s)\n", tests[i].name, tests[i].file);
        } else if (current_skipped) {
            skipped++;
            printf("SKIP %s: %s\n", tests[i].name, current_skip_why);
        } else {
            passed++;
            printf("ok   %s\n", tests[i].name);
        }
    }
    if (tmp_root[0])
        nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (skipped)
        printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    else
        printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

float test_frand(unsigned *state)
{
    *state = *state * 1103515245u + 12345u;
    return ((*state >> 8) & 0xffff) / 32768.0f - 1.0f;
}

float *test_filled(int64_t n, unsigned seed)
{
    float *x = malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (!x) {
        test_failed(__FILE__, __LINE__, "out of memory");
        exit(2);
    }
    for (int64_t i = 0; i < n; i++)
        x[i] = test_frand(&seed);
    return x;
}
