/* libFuzzer target: the JSON parser and the LFM2 config reader (aliases, layer types, FFN rule) on
 * arbitrary bytes; a config that resolves is also validated. Built by `make fuzz-smoke`. */
#include <stdint.h>
#include <stdlib.h>

#include "captionaura/ca_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ca_lfm2_config cfg;
    if (ca_lfm2_config_from_json(&cfg, (const char *)data, size) == CA_OK) {
        if (cfg.num_hidden_layers < 1 || cfg.num_hidden_layers > CA_MAX_LAYERS) abort();
        (void)ca_lfm2_config_validate(&cfg);
    }
    ca_clear_error();
    return 0;
}
