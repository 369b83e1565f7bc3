/*
 * test.h - the project's small test harness.
 *
 * Every tests/test_*.c file is linked into one binary, bin/coin_tests.  A file
 * declares tests with TEST(name) { ... }; they register themselves before main
 * runs.  CHECK* macros record a failure with file and line and let the test go
 * on; REQUIRE* macros also end the test.  The runner prints one line per test
 * and closes with "N passed, N failed" (and ", N skipped").  Tests run from the
 * repository root, so golden files are at tests/golden/...
 */
#ifndef COIN_TEST_H
#define COIN_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef void (*test_fn)(void);
void test_register(const char *name, const char *file, test_fn fn);
void test_failed(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Marks the running test as skipped, with the reason shown in the report. */
void test_skip(const char *why);
/* 1 once the running test has failed. */
int test_has_failed(void);
/* A fresh empty directory for this test (under $TMPDIR), removed at exit. */
const char *test_tmpdir(void);
/* The tests' pseudo-random numbers: a 32-bit LCG step on *state, giving a
 * float in [-1, 1) with 16 random bits. */
float test_frand(unsigned *state);
/* n floats from test_frand seeded with seed, in a new malloc'd buffer (at
 * least one float; fails the test when out of memory). */
float *test_filled(int64_t n, unsigned seed);

#define TEST(name)                                                        \
    static void name(void);                                               \
    __attribute__((constructor)) static void name##_register(void)        \
    {                                                                     \
        test_register(#name, __FILE__, name);                             \
    }                                                                     \
    static void name(void)

#define CHECK(cond)                                                       \
    do {                                                                  \
        if (!(cond))                                                      \
            test_failed(__FILE__, __LINE__, "CHECK(%s)", #cond);          \
    } while (0)

#define CHECK_MSG(cond, ...)                                              \
    do {                                                                  \
        if (!(cond))                                                      \
            test_failed(__FILE__, __LINE__, __VA_ARGS__);                 \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                \
    do {                                                                  \
        long long a_ = (long long)(a), b_ = (long long)(b);               \
        if (a_ != b_)                                                     \
            test_failed(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, \
                        #b, a_, b_);                                      \
    } while (0)

#define CHECK_STR_CONTAINS(hay, needle)                                   \
    do {                                                                  \
        const char *h_ = (hay), *n_ = (needle);                           \
        if (!h_ || !strstr(h_, n_))                                       \
            test_failed(__FILE__, __LINE__, "\"%s\" does not contain \"%s\"", \
                        h_ ? h_ : "(null)", n_);                          \
    } while (0)

/* Ends the test at once when cond fails. */
#define REQUIRE(cond)                                                     \
    do {                                                                  \
        if (!(cond)) {                                                    \
            test_failed(__FILE__, __LINE__, "REQUIRE(%s)", #cond);        \
            return;                                                       \
        }                                                                 \
    } while (0)

#define REQUIRE_OK(expr, errp)                                            \
    do {                                                                  \
        int rc_ = (expr);                                                 \
        if (rc_ != 0) {                                                   \
            test_failed(__FILE__, __LINE__, "%s failed (%d): %s", #expr,  \
                        rc_, (errp)->msg);                                \
            return;                                                       \
        }                                                                 \
    } while (0)

#endif
