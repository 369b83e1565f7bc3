/*
 * fuzz_pickle_pt.c - libFuzzer target for the torch.save embedding reader.
 *
 * Every input goes through pt_parse_embedding, which reads the input in
 * place: libFuzzer's buffer is exactly the input's size, so ASan sees any
 * read past the end of the file.  A rejected input must come back with a
 * negative code, a message that names the file, and every output cleared;
 * an accepted one must hold together: at least one vector, a sane width,
 * all N * D floats readable (ASan watches the allocation), and a token, if
 * any, that is a non-empty C string.  Built with -DCOIN_FUZZING, which skips
 * only the comparison of zip CRCs (no fuzzer could forge them, and every
 * path behind them would stay unexplored).
 * Built by `make bin/fuzz_pickle_pt`, run by `make fuzz`.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/pickle_pt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *tok = NULL;
    float *v = NULL;
    int n = -1;
    int64_t w = -1;
    coin_error err = {0};
    int rc = pt_parse_embedding(data, size, "fuzz.pt", &tok, &v, &n, &w, &err);
    if (rc != 0) {
        if (rc > 0 || err.code != rc || !strstr(err.msg, "fuzz.pt") || tok || v || n || w)
            abort();        /* a failure must be reported, and leave nothing */
        return 0;
    }
    if (!v || n < 1 || w < 1 || (uint64_t)n * (uint64_t)w > PT_MAX_FLOATS)
        abort();
    if (tok && (!tok[0] || strlen(tok) > size))
        abort();
    volatile float sum = 0;
    for (uint64_t k = 0; k < (uint64_t)n * (uint64_t)w; k++)
        sum += v[k];
    (void)sum;
    free(tok);
    free(v);
    return 0;
}
