/* Secure-aggregation mask arithmetic (ca_fed.h): fixed-point quantisation, masking modulo 2^bits and the
 * dequantisation of the server's sum. The keystreams themselves (ChaCha20 keyed by HKDF of an X25519 secret)
 * come from the Python layer; this file only does the per-coordinate integer arithmetic, which is
 * branch-free and data-independent in time (no secret-dependent branches or table lookups). */
#include <math.h>

#include "captionaura/ca_fed.h"

#define PAR_MIN 32768

static ca_status check_bits(int bits) {
    if (bits < 1 || bits > 32) return ca_error(CA_ERR_VALUE, "secure aggregation: bits=%d outside [1, 32]", bits);
    return CA_OK;
}

/* 2^bits − 1 as a 32-bit mask; bits = 32 wraps natively. */
static uint32_t mod_mask(int bits) { return bits == 32 ? 0xffffffffu : ((1u << bits) - 1u); }

ca_status ca_secagg_quantize(uint32_t *q, const float *x, const uint32_t *rnd, size_t n, double scale, double clip,
                             uint64_t levels, int bits) {
    CA_TRY(check_bits(bits));
    if (!(clip > 0.0) || !isfinite(clip)) return ca_error(CA_ERR_VALUE, "quantize: clip range %g must be > 0", clip);
    if (levels < 2 || levels - 1 > (uint64_t)mod_mask(bits))
        return ca_error(CA_ERR_VALUE, "quantize: %llu levels do not fit modulo 2^%d", (unsigned long long)levels,
                        bits);
    if (!isfinite(scale)) return ca_error(CA_ERR_VALUE, "quantize: scale must be finite");
    double inv_step = (double)(levels - 1) / (2.0 * clip); /* 1/Δ, Δ = 2c/(Q−1) */
    double top = (double)(levels - 1);
    const double two32 = 4294967296.0;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        double v = scale * (double)x[i];
        v = v < -clip ? -clip : (v > clip ? clip : v); /* NaN compares false both ways: validated upstream */
        double u = rnd ? (double)rnd[i] / two32 : 0.5; /* u ∈ [0,1): ⌊t + u⌋ rounds t up with prob. frac(t) */
        double t = floor((v + clip) * inv_step + u);
        t = t > top ? top : t;
        q[i] = (uint32_t)t;
    }
    return CA_OK;
}

ca_status ca_secagg_add_mod(uint32_t *y, const uint32_t *mask, size_t n, int sign, int bits) {
    CA_TRY(check_bits(bits));
    if (sign != 1 && sign != -1) return ca_error(CA_ERR_VALUE, "add_mod: sign must be +1 or -1, got %d", sign);
    uint32_t mm = mod_mask(bits);
    /* Unsigned 32-bit arithmetic is arithmetic mod 2^32; masking the result reduces it mod 2^bits because
     * 2^bits divides 2^32. Subtraction is the addition of the two's complement. */
    if (sign > 0) {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
        for (size_t i = 0; i < n; i++) y[i] = (y[i] + mask[i]) & mm;
    } else {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
        for (size_t i = 0; i < n; i++) y[i] = (y[i] - mask[i]) & mm;
    }
    return CA_OK;
}

ca_status ca_secagg_dequantize(float *out, const uint32_t *sum, size_t n, int num_clients, double clip,
                               uint64_t levels, int bits) {
    CA_TRY(check_bits(bits));
    if (num_clients < 1) return ca_error(CA_ERR_VALUE, "dequantize: num_clients=%d must be >= 1", num_clients);
    if (levels < 2) return ca_error(CA_ERR_VALUE, "dequantize: levels must be >= 2");
    /* The sum is only meaningful when it cannot have wrapped: K·(Q−1) < 2^bits. */
    if ((double)num_clients * (double)(levels - 1) > (double)mod_mask(bits))
        return ca_error(CA_ERR_VALUE, "dequantize: %d clients x %llu levels overflow modulo 2^%d", num_clients,
                        (unsigned long long)levels, bits);
    double step = 2.0 * clip / (double)(levels - 1);
    double offset = (double)num_clients * clip; /* each client's q carries +c/Δ */
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = (float)((double)sum[i] * step - offset);
    return CA_OK;
}
