/* AdamW over one flat buffer, in exactly the order of operations of torch.optim.AdamW (single-tensor path),
 * so trained parameters agree with PyTorch to float32 rounding:
 *   g ← grad_scale·g                                  (grad_scale carries global-norm clipping)
 *   p ← p·(1 − lr·wd)                                 (decoupled weight decay)
 *   m ← m + (1 − β1)(g − m);   v ← β2·v + (1 − β2)·g²
 *   p ← p − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + eps) */
#include <math.h>

#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

void ca_cpu_adamw_update(float *p, float *m, float *v, const float *g, size_t n, float lr, float beta1, float beta2,
                         float eps, float weight_decay, int step, float grad_scale) {
    const float decay = 1.0f - lr * weight_decay;
    const float step_size = lr / (float)(1.0 - pow(beta1, step));
    const float bias_correction2_sqrt = sqrtf((float)(1.0 - pow(beta2, step)));
#pragma omp parallel for simd schedule(static) if (n > 4 * CA_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * grad_scale;
        float pi = p[i] * decay;
        float mi = m[i] + (1.0f - beta1) * (gi - m[i]);
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step_size * (mi / (sqrtf(vi) / bias_correction2_sqrt + eps));
    }
}

/* Σ x² in float64 (the squared global gradient norm for clipping). */
double ca_cpu_sum_squares(const float *x, size_t n) {
    double total = 0.0;
#pragma omp parallel for simd reduction(+ : total) schedule(static) if (n > 4 * CA_PAR_MIN)
    for (size_t i = 0; i < n; i++) total += (double)x[i] * x[i];
    return total;
}
