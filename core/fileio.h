/*
 * fileio.h - small file-system helpers the core shares: reading a whole
 * (bounded) file, joining paths, asking what a path is.  They exist so that
 * every module reports I/O failures the same way: the path and the reason.
 */
#ifndef COIN_FILEIO_H
#define COIN_FILEIO_H

#include <stddef.h>

#include "error.h"

/* Reads all of path into a new NUL-terminated buffer (*len excludes the
 * NUL).  A file larger than max bytes is a COIN_EFORMAT error: config files
 * are small, and a huge one is a mistake or an attack. */
int file_read_all(const char *path, size_t max, char **out, size_t *len,
                  coin_error *err);

/* 1 if path is a directory, 0 if it is something else, -1 if it does not
 * exist or cannot be examined. */
int path_is_dir(const char *path);
/* 1 if path exists (any kind), else 0. */
int path_exists(const char *path);

/* dir + "/" + name into buf; COIN_EINVAL if it does not fit. */
/* mkdir -p: creates path and every missing parent.  An existing folder is
 * fine; an existing file, or a part that cannot be made, is COIN_EIO naming
 * the part. */
int path_make_dirs(const char *path, coin_error *err);

int path_join(char *buf, size_t len, const char *dir, const char *name,
              coin_error *err);

/* The last component of path (trailing slashes ignored) without its
 * extension, into buf: "models/v1-5.safetensors" gives "v1-5". */
void path_stem(const char *path, char *buf, size_t len);

/* The extension of path's last component, without the dot ("" if none). */
const char *path_ext(const char *path);

/* A test hook for the full-disk handling: when the environment variable
 * COIN_TEST_ENOSPC_AFTER_BYTES is N, coin's file writers (safetensors
 * files, PNGs, the training loss.csv) may write N bytes in this process in
 * all, and every write after that fails as on a full disk.  Writers call
 * this before writing n bytes: it returns 1, with errno set to ENOSPC, when
 * the write must fail; without the variable it always returns 0.  Not for
 * users: tests set it on the processes they start. */
int fileio_test_enospc(size_t n);

#endif
