/*
 * bench_unet.c - times coin's UNet forward for tools/bench/bench_unet.py.
 *
 * A standalone program linked against build/libcoin.a (see bench_unet.sh
 * for the gcc line), so that the benchmark needs no hidden subcommand in
 * coin itself.  It loads MODEL (any layout checkpoint_open takes), reads
 * x [B, 4, H, W], ctx [B, T, D] and t [B] from INPUTS (safetensors), runs
 * WARMUP untimed and RUNS timed forwards, writes the last output to OUT as
 * tensor "out", and prints one line for the Python side to parse:
 *
 *   bench_unet: load 1234.5 ms, forward median 6789.0 ms over 3 runs,
 *   peak RSS 4567.8 MiB
 *
 * Usage: bench_unet MODEL INPUTS OUT [RUNS [WARMUP]]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "core/checkpoint.h"
#include "core/safetensors.h"
#include "core/unet.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Reads tensor name of f into a new tensor on be. */
static int read_input(tensor *dst, const st_file *f, const char *name, coin_error *err)
{
    const st_tensor *t = st_find(f, name);
    if (!t)
        return coin_fail(err, COIN_ENOTFOUND, "%s: no tensor '%s'", f->path, name);
    float *host = malloc(t->nelem * sizeof(float));
    if (!host)
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    int rc = st_tensor_to_f32(f, t, host, t->nelem, err);
    if (!rc)
        rc = tensor_alloc(dst, backend_cpu(), t->ndim, t->shape, err);
    if (!rc)
        rc = tensor_upload(dst, host, (int64_t)t->nelem, err);
    free(host);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL INPUTS OUT [RUNS [WARMUP]]\n", argv[0]);
        return 2;
    }
    int runs = argc > 4 ? atoi(argv[4]) : 3, warmup = argc > 5 ? atoi(argv[5]) : 1;
    if (runs < 1)
        runs = 1;
    coin_error err = {0};
    checkpoint *ck = NULL;
    unet_model *m = NULL;
    st_file *in = NULL;
    tensor x = {0}, ctx = {0}, t = {0}, out = {0};
    float *ts = NULL, *host = NULL;
    double *times = calloc((size_t)runs, sizeof *times);
    st_writer *w = NULL;
    int rc;

    double t0 = now_ms();
    if ((rc = checkpoint_open(&ck, argv[1], SD_UNKNOWN, &err)) ||
        (rc = unet_load(&m, ck, backend_cpu(), &err)))
        goto done;
    double load_ms = now_ms() - t0;
    if ((rc = st_open(&in, argv[2], &err)) || (rc = read_input(&x, in, "x", &err)) ||
        (rc = read_input(&ctx, in, "ctx", &err)) || (rc = read_input(&t, in, "t", &err)))
        goto done;
    if (t.n != x.shape[0]) {
        rc = coin_fail(&err, COIN_ESHAPE, "t has %lld values for a batch of %lld",
                       (long long)t.n, (long long)x.shape[0]);
        goto done;
    }
    ts = malloc((size_t)t.n * sizeof(float));
    if (!ts || !times || (rc = tensor_download(&t, ts, t.n, &err)))
        goto done;
    for (int i = 0; i < warmup + runs; i++) {
        tensor_free(&out);
        double s = now_ms();
        if ((rc = unet_forward(m, &x, ts, &ctx, &out, &err)))
            goto done;
        if (i >= warmup)
            times[i - warmup] = now_ms() - s;
        fprintf(stderr, "bench_unet: forward %d: %.1f ms%s\n", i + 1, now_ms() - s,
                i < warmup ? " (warm-up)" : "");
    }
    qsort(times, (size_t)runs, sizeof *times, cmp_double);
    double median = runs % 2 ? times[runs / 2] : (times[runs / 2 - 1] + times[runs / 2]) / 2;

    host = malloc((size_t)out.n * sizeof(float));
    if (!host || (rc = tensor_download(&out, host, out.n, &err)))
        goto done;
    w = st_writer_new();
    if (!w || (rc = st_writer_add(w, "out", ST_F32, out.ndim, out.shape, host, &err)) ||
        (rc = st_writer_save(w, argv[3], &err)))
        goto done;

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("bench_unet: load %.1f ms, forward median %.1f ms over %d runs, peak RSS %.1f MiB\n",
           load_ms, median, runs, ru.ru_maxrss / 1024.0);
done:
    if (rc)
        fprintf(stderr, "bench_unet: %s\n", err.msg[0] ? err.msg : "failed (out of memory?)");
    st_writer_free(w);
    free(host);
    free(ts);
    free(times);
    tensor_free(&x);
    tensor_free(&ctx);
    tensor_free(&t);
    tensor_free(&out);
    st_close(in);
    unet_free(m);
    checkpoint_close(ck);
    return rc ? 1 : 0;
}
