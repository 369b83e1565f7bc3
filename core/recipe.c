/*
 * recipe.c - the regeneration recipe as JSON (recipe.h).
 */
#include "recipe.h"

#include <cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static cJSON *file_json(const recipe_file *f)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddStringToObject(o, "path", f->path ? f->path : "");
    cJSON_AddStringToObject(o, "sha256", f->sha256);
    if (f->token)
        cJSON_AddStringToObject(o, "token", f->token);
    return o;
}

int recipe_to_json(const recipe *r, char **out, coin_error *err)
{
    cJSON *o = cJSON_CreateObject(), *embs = cJSON_CreateArray();
    char seed[24];
    if (!o || !embs) {
        cJSON_Delete(o);
        cJSON_Delete(embs);
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    }
    cJSON_AddStringToObject(o, "coin", r->version);
    cJSON_AddItemToObject(o, "model", file_json(&r->model));
    for (int i = 0; i < r->n_embeddings; i++)
        cJSON_AddItemToArray(embs, file_json(&r->embeddings[i]));
    cJSON_AddItemToObject(o, "embeddings", embs);
    cJSON_AddStringToObject(o, "prompt", r->prompt ? r->prompt : "");
    cJSON_AddStringToObject(o, "negative", r->negative ? r->negative : "");
    /* A string: JSON numbers lose 64-bit seeds in most readers. */
    snprintf(seed, sizeof seed, "%" PRIu64, r->seed);
    cJSON_AddStringToObject(o, "seed", seed);
    cJSON_AddNumberToObject(o, "steps", r->steps);
    /* Printed with enough digits to come back as the same float. */
    char cfg[32];
    snprintf(cfg, sizeof cfg, "%.9g", r->cfg);
    cJSON_AddRawToObject(o, "cfg", cfg);
    cJSON_AddStringToObject(o, "sampler", r->sampler);
    cJSON_AddBoolToObject(o, "karras", r->karras);
    cJSON_AddNumberToObject(o, "width", r->width);
    cJSON_AddNumberToObject(o, "height", r->height);
    cJSON_AddStringToObject(o, "rng", r->rng);
    cJSON_AddStringToObject(o, "backend", r->backend);
    cJSON_AddStringToObject(o, "precision", r->precision);
    cJSON_AddStringToObject(o, "prediction", r->prediction);
    *out = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return *out ? 0 : coin_fail(err, COIN_ENOMEM, "out of memory");
}

static int get_string(const cJSON *o, const char *key, char **dst, coin_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v))
        return coin_fail(err, COIN_EFORMAT, "recipe: \"%s\" is missing or not a string", key);
    *dst = strdup(v->valuestring);
    return *dst ? 0 : coin_fail(err, COIN_ENOMEM, "out of memory");
}

static int get_fixed(const cJSON *o, const char *key, char *dst, size_t len, coin_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= len)
        return coin_fail(err, COIN_EFORMAT, "recipe: \"%s\" is missing or too long", key);
    strcpy(dst, v->valuestring);
    return 0;
}

static int get_int(const cJSON *o, const char *key, int *dst, coin_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || v->valuedouble != (int)v->valuedouble)
        return coin_fail(err, COIN_EFORMAT, "recipe: \"%s\" is missing or not an integer", key);
    *dst = (int)v->valuedouble;
    return 0;
}

static int get_file(const cJSON *o, recipe_file *f, int with_token, coin_error *err)
{
    if (!cJSON_IsObject(o))
        return coin_fail(err, COIN_EFORMAT, "recipe: a file entry is not an object");
    int rc = get_string(o, "path", &f->path, err);
    if (!rc)
        rc = get_fixed(o, "sha256", f->sha256, sizeof f->sha256, err);
    if (!rc && with_token)
        rc = get_string(o, "token", &f->token, err);
    return rc;
}

int recipe_from_json(const char *json, recipe *r, coin_error *err)
{
    memset(r, 0, sizeof *r);
    cJSON *o = cJSON_Parse(json);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return coin_fail(err, COIN_EFORMAT, "recipe: not a JSON object");
    }
    char *seed = NULL, *end;
    int rc = get_fixed(o, "coin", r->version, sizeof r->version, err);
    if (!rc)
        rc = get_file(cJSON_GetObjectItemCaseSensitive(o, "model"), &r->model, 0, err);
    const cJSON *embs = cJSON_GetObjectItemCaseSensitive(o, "embeddings"), *e;
    if (!rc && !cJSON_IsArray(embs))
        rc = coin_fail(err, COIN_EFORMAT, "recipe: \"embeddings\" is missing");
    if (!rc && cJSON_GetArraySize(embs) > RECIPE_MAX_EMBEDDINGS)
        rc = coin_fail(err, COIN_EFORMAT, "recipe: more than %d embeddings",
                       RECIPE_MAX_EMBEDDINGS);
    if (!rc)
        cJSON_ArrayForEach(e, embs) {
            if ((rc = get_file(e, &r->embeddings[r->n_embeddings], 1, err)))
                break;
            r->n_embeddings++;
        }
    if (!rc)
        rc = get_string(o, "prompt", &r->prompt, err);
    if (!rc)
        rc = get_string(o, "negative", &r->negative, err);
    if (!rc && !(rc = get_string(o, "seed", &seed, err))) {
        r->seed = strtoull(seed, &end, 10);
        if (!*seed || *end)
            rc = coin_fail(err, COIN_EFORMAT, "recipe: seed \"%s\" is not a number", seed);
    }
    if (!rc)
        rc = get_int(o, "steps", &r->steps, err);
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(o, "cfg");
    if (!rc && !cJSON_IsNumber(cfg))
        rc = coin_fail(err, COIN_EFORMAT, "recipe: \"cfg\" is missing");
    if (!rc)
        r->cfg = (float)cfg->valuedouble;
    if (!rc)
        rc = get_fixed(o, "sampler", r->sampler, sizeof r->sampler, err);
    const cJSON *karras = cJSON_GetObjectItemCaseSensitive(o, "karras");
    if (!rc && !cJSON_IsBool(karras))
        rc = coin_fail(err, COIN_EFORMAT, "recipe: \"karras\" is missing");
    if (!rc)
        r->karras = cJSON_IsTrue(karras);
    if (!rc)
        rc = get_int(o, "width", &r->width, err);
    if (!rc)
        rc = get_int(o, "height", &r->height, err);
    if (!rc)
        rc = get_fixed(o, "rng", r->rng, sizeof r->rng, err);
    if (!rc)
        rc = get_fixed(o, "backend", r->backend, sizeof r->backend, err);
    if (!rc)
        rc = get_fixed(o, "precision", r->precision, sizeof r->precision, err);
    if (!rc)
        rc = get_fixed(o, "prediction", r->prediction, sizeof r->prediction, err);
    free(seed);
    cJSON_Delete(o);
    if (rc)
        recipe_free(r);
    return rc;
}

void recipe_free(recipe *r)
{
    free(r->model.path);
    free(r->model.token);
    for (int i = 0; i < r->n_embeddings; i++) {
        free(r->embeddings[i].path);
        free(r->embeddings[i].token);
    }
    free(r->prompt);
    free(r->negative);
    memset(r, 0, sizeof *r);
}
