/* libFuzzer target: the JSON parser, the LFM2 config reader (aliases, layer types, FFN rule) and the
 * sharded-checkpoint index reader on arbitrary bytes; a config that resolves is also validated.
 * Built by `make fuzz-smoke`. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "captionaura/ca_config.h"
#include "captionaura/ca_safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ca_lfm2_config cfg;
    if (ca_lfm2_config_from_json(&cfg, (const char *)data, size) == CA_OK) {
        if (cfg.num_hidden_layers < 1 || cfg.num_hidden_layers > CA_MAX_LAYERS) abort();
        (void)ca_lfm2_config_validate(&cfg);
    }
    ca_st_index idx;
    if (ca_safetensors_index_parse(&idx, (const char *)data, size, "index") == CA_OK) {
        for (int i = 0; i < idx.num_names; i++) {
            const char *file = ca_safetensors_index_file(&idx, idx.names[i]);
            if (!file || strchr(file, '/')) abort(); /* every name maps to a plain file name */
        }
    }
    ca_safetensors_index_free(&idx);
    ca_clear_error();
    return 0;
}
