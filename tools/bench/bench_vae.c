/*
 * bench_vae.c - times coin's VAE decode (and optionally encode) on one
 * latent, for tools/bench/bench_vae.py, which compares it with diffusers.
 *
 *   bench_vae MODEL IN.safetensors OUT.safetensors [RUNS] [--encode | --decoder-only]
 *
 * MODEL is anything checkpoint_open takes.  IN holds "z" [B, 4, h, w] (and
 * "image" [B, 3, H, W] for --encode); OUT gets "decoded" (and "mean",
 * "logvar").  --decoder-only loads just the decoder's weights, as sampling
 * does (vae_load_parts).  Prints one line the Python side parses:
 *   vae: load L ms, decode median D ms over N runs, rss after load A MiB, peak rss P MiB
 * (then ", encode median E ms" with --encode).  Peak RSS is the process's
 * high-water mark (VmHWM), so it covers the weights, the mapped file pages
 * read while loading, and the largest set of live activations.  Built against build/libcoin.a; see bench_vae.sh.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/checkpoint.h"
#include "core/safetensors.h"
#include "core/vae.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* VmHWM, the resident high-water mark of this process's address space.
 * Not getrusage's ru_maxrss: that one survives exec, so a child started
 * by a big Python process would report the parent's size. */
static double peak_mib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %lf kB", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib / 1024.0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int die(const coin_error *err)
{
    fprintf(stderr, "bench_vae: %s\n", err->msg);
    return 1;
}

/* Reads a 4-d tensor of IN onto the CPU backend. */
static int read_input(tensor *t, const st_file *f, const char *name, coin_error *err)
{
    const st_tensor *s = st_find(f, name);
    if (!s || s->ndim != 4)
        return coin_fail(err, COIN_ENOTFOUND, "%s: no 4-d tensor '%s'", f->path, name);
    float *host = malloc(s->nelem * sizeof(float));
    if (!host)
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    int rc = st_tensor_to_f32(f, s, host, s->nelem, err);
    if (!rc)
        rc = tensor_alloc(t, backend_cpu(), 4, s->shape, err);
    if (!rc)
        rc = tensor_upload(t, host, t->n, err);
    free(host);
    return rc;
}

static int add_output(st_writer *w, const char *name, const tensor *t, coin_error *err)
{
    float *host = malloc((size_t)t->n * sizeof(float));
    if (!host)
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    int rc = tensor_download(t, host, t->n, err);
    if (!rc)
        rc = st_writer_add(w, name, ST_F32, t->ndim, t->shape, host, err);
    free(host);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: bench_vae MODEL IN.safetensors OUT.safetensors [RUNS] "
                "[--encode | --decoder-only]\n");
        return 2;
    }
    int runs = argc > 4 && argv[4][0] != '-' ? atoi(argv[4]) : 1;
    int encode = !strcmp(argv[argc - 1], "--encode");
    int parts = !strcmp(argv[argc - 1], "--decoder-only") ? VAE_DECODER : VAE_DECODER | VAE_ENCODER;
    if (runs < 1 || runs > 100)
        runs = 1;
    coin_error err = {0};
    checkpoint *ck = NULL;
    vae_model *m = NULL;
    st_file *in = NULL;
    tensor z = {0}, img = {0}, image = {0}, mean = {0}, logvar = {0};
    double *times = calloc((size_t)runs, sizeof *times);
    if (!times)
        return 1;

    double t0 = now_ms();
    if (checkpoint_open(&ck, argv[1], SD_UNKNOWN, &err) ||
        vae_load_parts(&m, ck, backend_cpu(), parts, &err))
        return die(&err);
    double load_ms = now_ms() - t0, rss_loaded = peak_mib();
    if (st_open(&in, argv[2], &err) || read_input(&z, in, "z", &err))
        return die(&err);
    for (int r = 0; r < runs; r++) {
        tensor_free(&img);
        t0 = now_ms();
        if (vae_decode(m, &z, &img, &err))
            return die(&err);
        times[r] = now_ms() - t0;
    }
    qsort(times, (size_t)runs, sizeof *times, cmp_double);
    double decode_ms = times[runs / 2], encode_ms = 0;
    if (encode) {
        if (read_input(&image, in, "image", &err))
            return die(&err);
        t0 = now_ms();
        if (vae_encode(m, &image, &mean, &logvar, &err))
            return die(&err);
        encode_ms = now_ms() - t0;
    }
    double rss_peak = peak_mib();

    st_writer *w = st_writer_new();
    if (!w || add_output(w, "decoded", &img, &err) ||
        (encode && (add_output(w, "mean", &mean, &err) || add_output(w, "logvar", &logvar, &err))) ||
        st_writer_save(w, argv[3], &err))
        return die(&err);
    st_writer_free(w);

    printf("vae: load %.1f ms, decode median %.1f ms over %d runs, rss after load %.1f MiB, "
           "peak rss %.1f MiB", load_ms, decode_ms, runs, rss_loaded, rss_peak);
    if (encode)
        printf(", encode median %.1f ms", encode_ms);
    printf("\n");
    tensor_free(&z);
    tensor_free(&img);
    tensor_free(&image);
    tensor_free(&mean);
    tensor_free(&logvar);
    vae_free(m);
    checkpoint_close(ck);
    st_close(in);
    free(times);
    return 0;
}
