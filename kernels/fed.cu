/* Federated aggregation on device vectors, the per-coordinate arithmetic of csrc/fed.c (Flower's order of
 * float32/float64 roundings): the streaming weighted sum Σ_k n_k·x_k in float64, its mean, the FedAvgM and
 * FedOpt server steps, and norm clipping for differential privacy. */
#include "cuda_internal.cuh"

extern "C" {
#include "captionaura/ca_fed.h"
}

__global__ void fed_acc_add_kernel(double *sum, const float *x, double w, size_t n) {
    CA_GRID_STRIDE(i, n) sum[i] += w * (double)x[i];
}

/* a true division, as on the CPU: the float64 mean is correctly rounded before the float32 rounding */
__global__ void fed_acc_mean_kernel(float *out, const double *sum, double weight, size_t n) {
    CA_GRID_STRIDE(i, n) out[i] = (float)(sum[i] / weight);
}

/* g = x − x̄ (float32), v = first ? g : μ·v + g, x ← x − η·g */
__global__ void fed_fedavgm_kernel(float *x, float *v, const double *sum, double weight, size_t n, double server_lr,
                                   double momentum, int first_round) {
    CA_GRID_STRIDE(i, n) {
        float mean = (float)(sum[i] / weight);
        float g = (float)((double)x[i] - (double)mean);
        if (momentum != 0.0) {
            v[i] = first_round ? g : (float)(momentum * (double)v[i] + (double)g);
            g = v[i];
        }
        x[i] = (float)((double)x[i] - server_lr * (double)g);
    }
}

/* Δ = x̄ − x;  m ← β1·m + (1−β1)Δ;  v ← Adam: β2·v + (1−β2)Δ² | Yogi: v − (1−β2)Δ²·sign(v − Δ²) | Adagrad: v + Δ²;
 * x ← x + η·m/(sqrt(v) + τ), with the float32 state just stored (as Flower) */
__global__ void fed_fedopt_kernel(float *x, float *m, float *v, const double *sum, double weight, size_t n, int kind,
                                  double eta, double beta1, double beta2, double tau) {
    CA_GRID_STRIDE(i, n) {
        float mean = (float)(sum[i] / weight);
        double d = (double)mean - (double)x[i];
        double mi = beta1 * (double)m[i] + (1.0 - beta1) * d;
        double d2 = d * d, vi = (double)v[i];
        if (kind == CA_FEDOPT_ADAM) vi = beta2 * vi + (1.0 - beta2) * d2;
        else if (kind == CA_FEDOPT_YOGI) vi = vi - (1.0 - beta2) * d2 * (double)((vi > d2) - (vi < d2));
        else vi = vi + d2;
        m[i] = (float)mi;
        v[i] = (float)vi;
        x[i] = (float)((double)x[i] + eta * (double)m[i] / (sqrt((double)v[i]) + tau));
    }
}

/* out = ref + s·(x − ref) (or s·x without ref), passed through bit-exactly when s = 1 */
__global__ void fed_clip_kernel(float *out, const float *x, const float *ref, size_t n, double scale) {
    CA_GRID_STRIDE(i, n) {
        if (scale == 1.0) out[i] = x[i];
        else if (ref) out[i] = (float)((double)ref[i] + scale * ((double)x[i] - (double)ref[i]));
        else out[i] = (float)(scale * (double)x[i]);
    }
}

extern "C" void ca_cuda_fed_acc_add(double *sum, const float *x, double w, size_t n) {
    if (!n || ca_cuda_failed()) return;
    fed_acc_add_kernel<<<ca_blocks(n, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(sum, x, w, n);
    CA_CUDA_LAUNCHED("fed_acc_add");
}

extern "C" void ca_cuda_fed_acc_mean(float *out, const double *sum, double weight, size_t n) {
    if (!n || ca_cuda_failed()) return;
    fed_acc_mean_kernel<<<ca_blocks(n, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(out, sum, weight, n);
    CA_CUDA_LAUNCHED("fed_acc_mean");
}

extern "C" double ca_cuda_fed_l2norm(const float *x, const float *ref, size_t n) {
    return sqrt(ca_cuda_sum_squares_diff(x, ref, n));
}

extern "C" void ca_cuda_fed_fedavgm_step(float *x, float *v, const double *sum, double weight, size_t n,
                                         double server_lr, double momentum, int first_round) {
    if (!n || ca_cuda_failed()) return;
    fed_fedavgm_kernel<<<ca_blocks(n, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(x, v, sum, weight, n, server_lr,
                                                                                 momentum, first_round);
    CA_CUDA_LAUNCHED("fed_fedavgm_step");
}

extern "C" void ca_cuda_fed_fedopt_step(float *x, float *m, float *v, const double *sum, double weight, size_t n,
                                        int kind, double eta, double beta1, double beta2, double tau) {
    if (!n || ca_cuda_failed()) return;
    fed_fedopt_kernel<<<ca_blocks(n, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(x, m, v, sum, weight, n, kind, eta,
                                                                                beta1, beta2, tau);
    CA_CUDA_LAUNCHED("fed_fedopt_step");
}

extern "C" void ca_cuda_fed_clip(float *out, const float *x, const float *ref, size_t n, double clip_norm,
                                 double *norm) {
    if (!n || ca_cuda_failed()) return;
    double u = ca_cuda_fed_l2norm(x, ref, n);
    if (norm) *norm = u;
    double scale = (u > clip_norm && u > 0.0) ? clip_norm / u : 1.0; /* min(1, C/‖u‖) */
    fed_clip_kernel<<<ca_blocks(n, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(out, x, ref, n, scale);
    CA_CUDA_LAUNCHED("fed_clip");
}
