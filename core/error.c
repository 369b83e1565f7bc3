#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int coin_fail(coin_error *err, coin_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

int coin_error_prefix(coin_error *err, const char *fmt, ...)
{
    if (!err || err->code == COIN_OK)
        return COIN_EINVAL;
    char head[COIN_ERROR_MSG_MAX], old[COIN_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    /* head + ": " + old, cut to fit. */
    size_t h = strlen(head), o = strlen(old), cap = sizeof err->msg - 1;
    if (h > cap)
        h = cap;
    memcpy(err->msg, head, h);
    size_t used = h;
    for (const char *sep = ": "; *sep && used < cap; sep++)
        err->msg[used++] = *sep;
    if (o > cap - used)
        o = cap - used;
    memcpy(err->msg + used, old, o);
    err->msg[used + o] = '\0';
    return err->code;
}

void coin_error_clear(coin_error *err)
{
    if (err) {
        err->code = COIN_OK;
        err->msg[0] = '\0';
    }
}

const char *coin_status_name(coin_status code)
{
    switch (code) {
    case COIN_OK: return "ok";
    case COIN_EINVAL: return "invalid argument";
    case COIN_EIO: return "I/O error";
    case COIN_EFORMAT: return "format error";
    case COIN_ENOMEM: return "out of memory";
    case COIN_EUNSUPPORTED: return "unsupported";
    case COIN_ENOTFOUND: return "not found";
    case COIN_ESHAPE: return "shape mismatch";
    }
    return "unknown error";
}
