#include "fileio.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <stdatomic.h>

int file_read_all(const char *path, size_t max, char **out, size_t *len,
                  coin_error *err)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return coin_fail(err, errno == ENOENT ? COIN_ENOTFOUND : COIN_EIO,
                         "%s: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        if (n == cap) {
            if (cap >= max)
                break;
            cap = cap * 2 > max ? max : cap * 2;
            char *grown = realloc(buf, cap + 1);
            if (!grown) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = grown;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    int io_error = ferror(f), more = buf && n == cap && fgetc(f) != EOF;
    fclose(f);
    if (!buf)
        return coin_fail(err, COIN_ENOMEM, "%s: out of memory reading the file", path);
    if (io_error) {
        free(buf);
        return coin_fail(err, COIN_EIO, "%s: read error", path);
    }
    if (more) {
        free(buf);
        return coin_fail(err, COIN_EFORMAT, "%s: larger than %zu bytes, which is "
                         "too large for this kind of file", path, max);
    }
    buf[n] = '\0';
    *out = buf;
    if (len)
        *len = n;
    return 0;
}

int path_is_dir(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    return S_ISDIR(st.st_mode) ? 1 : 0;
}

int path_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

int path_join(char *buf, size_t len, const char *dir, const char *name,
              coin_error *err)
{
    size_t dl = strlen(dir);
    int slash = dl > 0 && dir[dl - 1] == '/';
    int n = snprintf(buf, len, "%s%s%s", dir, slash ? "" : "/", name);
    if (n < 0 || (size_t)n >= len)
        return coin_fail(err, COIN_EINVAL, "path too long: %s/%s", dir, name);
    return 0;
}

void path_stem(const char *path, char *buf, size_t len)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t start = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (path[i] == '/')
            start = i + 1;
    size_t end = n;
    for (size_t i = n; i > start + 1; i--)
        if (path[i - 1] == '.') {
            end = i - 1;
            break;
        }
    snprintf(buf, len, "%.*s", (int)(end - start), path + start);
}

const char *path_ext(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    return dot && dot != base ? dot + 1 : "";
}

int fileio_test_enospc(size_t n)
{
    /* -2: not read yet, -1: no budget (the variable is unset). */
    static _Atomic long long budget = -2;
    long long b = atomic_load(&budget);
    if (b == -2) {
        const char *v = getenv("COIN_TEST_ENOSPC_AFTER_BYTES");
        char *end;
        long long parsed = v && *v ? strtoll(v, &end, 10) : -1;
        if (!v || !*v || *end || parsed < 0)
            parsed = -1;
        long long expected = -2;
        atomic_compare_exchange_strong(&budget, &expected, parsed);
        b = atomic_load(&budget);
    }
    if (b < 0)
        return 0;
    for (;;) {
        if ((unsigned long long)b < n) {
            atomic_store(&budget, 0);
            errno = ENOSPC;
            return 1;
        }
        if (atomic_compare_exchange_weak(&budget, &b, b - (long long)n))
            return 0;
    }
}

int path_make_dirs(const char *path, coin_error *err)
{
    char buf[4096];
    if (!*path || strlen(path) >= sizeof buf)
        return coin_fail(err, COIN_EINVAL, "cannot create the folder \"%.200s\": the path is "
                         "empty or too long", path);
    strcpy(buf, path);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST) {
            int e = errno;
            return coin_fail(err, COIN_EIO, "cannot create the folder %s: %s", buf,
                             strerror(e));
        }
        *p = c;
        if (!c)
            break;
    }
    if (!path_is_dir(path))
        return coin_fail(err, COIN_EIO, "%s is not a folder", path);
    return 0;
}
