/* libFuzzer target: the safetensors header/offset parser on arbitrary bytes; when a buffer parses, every
 * tensor is looked up by name and read (floats converted to f32, others refused), and the metadata is
 * queried, so the validated offsets are exercised too. Built by `make fuzz-smoke`. */
#include <stdint.h>
#include <stdlib.h>

#include "captionaura/ca_safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ca_safetensors st;
    if (ca_safetensors_parse(&st, data, size) == CA_OK) {
        for (int i = 0; i < st.num_tensors; i++) {
            const ca_st_tensor *t = ca_safetensors_find(&st, st.tensors[i].name);
            if (!t) abort(); /* every parsed name must be found */
            size_t n = ca_st_tensor_numel(t);
            /* validated: n * dtype size == end - begin <= size, so this allocation is bounded by the input */
            float *out = malloc(n * sizeof *out + 1);
            if (!out) continue;
            (void)ca_safetensors_read_f32(&st, t, out, n);
            free(out);
        }
        for (int i = 0; i < st.num_metadata; i++) (void)ca_safetensors_metadata(&st, st.metadata[2 * i]);
    }
    ca_safetensors_close(&st);
    ca_clear_error();
    return 0;
}
