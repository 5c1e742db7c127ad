/* Sharded safetensors checkpoints: model.safetensors.index.json as written by transformers'
 * save_pretrained (max_shard_size): {"metadata": {"total_size": N, ...}, "weight_map": {name: "model-00001-of-00002.safetensors"}}.
 * Only weight_map is read. Shard names are checked to be plain file names so a crafted index cannot make
 * the loader open files outside the checkpoint folder. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "captionaura/ca_json.h"
#include "captionaura/ca_safetensors.h"

/* Largest index file read from disk: real ones are tens of KB. */
#define CA_INDEX_MAX_BYTES ((long)64 * 1024 * 1024)

void ca_safetensors_index_free(ca_st_index *idx) {
    if (!idx) return;
    for (int i = 0; i < idx->num_names; i++) free(idx->names[i]);
    for (int i = 0; i < idx->num_files; i++) free(idx->files[i]);
    free(idx->names);
    free(idx->file_of);
    free(idx->files);
    memset(idx, 0, sizeof *idx);
}

static int plain_file_name(const char *s, size_t len) {
    if (len == 0 || strlen(s) != len) return 0;
    if (strcmp(s, ".") == 0 || strcmp(s, "..") == 0) return 0;
    return strchr(s, '/') == NULL && strchr(s, '\\') == NULL;
}

static ca_status fill_index(ca_st_index *idx, const ca_json *root, const char *what) {
    if (root->type != CA_JSON_OBJECT)
        return ca_error(CA_ERR_FORMAT, "%s: expected a JSON object, got %s", what, ca_json_type_name(root->type));
    const ca_json *map = ca_json_get(root, "weight_map");
    if (!map) return ca_error(CA_ERR_KEY, "%s: missing key 'weight_map'", what);
    if (map->type != CA_JSON_OBJECT)
        return ca_error(CA_ERR_FORMAT, "%s: 'weight_map' must be an object, got %s", what,
                        ca_json_type_name(map->type));
    if (map->len > (size_t)INT32_MAX) return ca_error(CA_ERR_FORMAT, "%s: too many entries", what);
    size_t n = map->len ? map->len : 1;
    idx->names = calloc(n, sizeof *idx->names);
    idx->file_of = calloc(n, sizeof *idx->file_of);
    idx->files = calloc(n, sizeof *idx->files);
    if (!idx->names || !idx->file_of || !idx->files) return ca_error(CA_ERR_NOMEM, "out of memory reading %s", what);
    for (size_t i = 0; i < map->len; i++) {
        const ca_json_member *m = &map->items[i];
        if (strlen(m->key) != m->key_len)
            return ca_error(CA_ERR_FORMAT, "%s: tensor name '%.200s...' contains a NUL character", what, m->key);
        if (m->value.type != CA_JSON_STRING)
            return ca_error(CA_ERR_FORMAT, "%s: weight_map['%.200s'] must be a file name string, got %s", what, m->key,
                            ca_json_type_name(m->value.type));
        if (!plain_file_name(m->value.str, m->value.len))
            return ca_error(CA_ERR_FORMAT, "%s: weight_map['%.200s'] = '%.200s' is not a plain file name", what,
                            m->key, m->value.str);
        /* Shards are few (tens): a linear search keeps first-appearance order without a hash table. */
        int f = -1;
        for (int j = idx->num_files - 1; j >= 0 && f < 0; j--)
            if (strcmp(idx->files[j], m->value.str) == 0) f = j;
        if (f < 0) {
            idx->files[idx->num_files] = strdup(m->value.str);
            if (!idx->files[idx->num_files]) return ca_error(CA_ERR_NOMEM, "out of memory reading %s", what);
            f = idx->num_files++;
        }
        idx->names[i] = strdup(m->key);
        if (!idx->names[i]) return ca_error(CA_ERR_NOMEM, "out of memory reading %s", what);
        idx->file_of[i] = f;
        idx->num_names = (int)i + 1;
    }
    return CA_OK;
}

ca_status ca_safetensors_index_parse(ca_st_index *idx, const char *json, size_t len, const char *what) {
    memset(idx, 0, sizeof *idx);
    if (!what) what = "model.safetensors.index.json";
    ca_json_doc doc;
    ca_status status = ca_json_parse(&doc, json, len);
    if (status != CA_OK) {
        char inner[512];
        snprintf(inner, sizeof inner, "%s", ca_last_error());
        return ca_error(status, "%s: %s", what, inner);
    }
    status = fill_index(idx, &doc.root, what);
    ca_json_free(&doc);
    if (status != CA_OK) ca_safetensors_index_free(idx);
    return status;
}

ca_status ca_safetensors_index_read(ca_st_index *idx, const char *path) {
    memset(idx, 0, sizeof *idx);
    FILE *f = fopen(path, "rb");
    if (!f) return ca_error(CA_ERR_IO, "%s: cannot open", path);
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size < 0 || size > CA_INDEX_MAX_BYTES || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return ca_error(CA_ERR_IO, "%s: cannot read (or larger than 64 MB)", path);
    }
    char *buf = malloc((size_t)size + 1);
    if (!buf) {
        fclose(f);
        return ca_error(CA_ERR_NOMEM, "out of memory reading %s", path);
    }
    size_t got = fread(buf, 1, (size_t)size, f);
    fclose(f);
    ca_status status = got == (size_t)size ? ca_safetensors_index_parse(idx, buf, got, path)
                                           : ca_error(CA_ERR_IO, "%s: short read", path);
    free(buf);
    return status;
}

const char *ca_safetensors_index_file(const ca_st_index *idx, const char *name) {
    for (int i = 0; i < idx->num_names; i++)
        if (strcmp(idx->names[i], name) == 0) return idx->files[idx->file_of[i]];
    return NULL;
}
