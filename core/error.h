/*
 * error.h - how the core reports failure.
 *
 * The core never prints and never exits: every function that can fail returns
 * 0 on success or a negative coin_status, and, when the caller passes a
 * coin_error, writes one human-readable sentence into it that names the file,
 * tensor or argument at fault and, where there is one, the fix.  The front end
 * decides how to show it.
 */
#ifndef COIN_ERROR_H
#define COIN_ERROR_H

#include <stddef.h>

typedef enum coin_status {
    COIN_OK = 0,
    COIN_EINVAL = -1,      /* bad argument from the caller or the user */
    COIN_EIO = -2,         /* the operating system refused a read or write */
    COIN_EFORMAT = -3,     /* a file is malformed or hostile */
    COIN_ENOMEM = -4,      /* an allocation failed */
    COIN_EUNSUPPORTED = -5,/* well-formed, but not something coin handles */
    COIN_ENOTFOUND = -6,   /* a named file, tensor or token does not exist */
    COIN_ESHAPE = -7,      /* tensor shapes do not fit together */
} coin_status;

#define COIN_ERROR_MSG_MAX 1024

typedef struct coin_error {
    coin_status code;
    char msg[COIN_ERROR_MSG_MAX];
} coin_error;

/* Records a failure in err (which may be NULL) and returns code, so that a
 * caller can write `return coin_fail(err, COIN_EFORMAT, "...", ...);`.
 * A message already in err is replaced. */
int coin_fail(coin_error *err, coin_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes the message already in err with "<context>: ", for callers that
 * add where the failure happened (a file name, a component).  Returns the
 * code already recorded, or COIN_EINVAL when err is NULL or empty. */
int coin_error_prefix(coin_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Clears err (which may be NULL). */
void coin_error_clear(coin_error *err);

/* A short name for a status code, e.g. "format error". */
const char *coin_status_name(coin_status code);

#endif
