/* CPU ops: one file per op family in csrc/cpu/, forward and backward, llm.c argument order
 * (outputs, caches, inputs, weights, sizes). The CUDA backend (kernels/) mirrors these signatures with a
 * ca_cuda_ prefix. Sizes: N rows (= B*T tokens), C channels.
 *
 * Gradient conventions:
 *   - parameter gradients (dweight, dbias, dwte) ACCUMULATE (+=): callers zero them once per step;
 *   - activation gradients are WRITTEN (=), except where noted (rmsnorm's dinp feeds the residual stream
 *     and accumulates; linear's dinp accumulates when `accumulate` is set, for inputs shared by several
 *     projections).
 * Ops never fail: callers validate sizes and indices before calling. */
#ifndef CA_OPS_H
#define CA_OPS_H

#include <stddef.h>
#include <stdint.h>

#define CA_IGNORE_INDEX (-100)

/* ---- embedding.c: out[n] = wte[ids[n]] ---- */
void ca_cpu_embedding_forward(float *out,           /* (N, C) */
                              const int32_t *ids,   /* (N) in [0, V) */
                              const float *wte,     /* (V, C) */
                              int N, int C);
void ca_cpu_embedding_backward(float *dwte,         /* (V, C) += */
                               const float *dout,   /* (N, C) */
                               const int32_t *ids,  /* (N) */
                               int N, int C);

/* ---- rmsnorm.c: y = w ⊙ x · rstd,  rstd = 1/sqrt(mean(x²) + eps)  (plain w, not 1+w) ---- */
void ca_cpu_rmsnorm_forward(float *out,          /* (N, C) */
                            float *rstd,         /* (N) cache */
                            const float *inp,    /* (N, C) */
                            const float *weight, /* (C) */
                            int N, int C, float eps);
void ca_cpu_rmsnorm_backward(float *dinp,         /* (N, C) += (residual stream) */
                             float *dweight,      /* (C) += ; NULL to skip */
                             const float *dout,   /* (N, C) */
                             const float *inp,    /* (N, C) */
                             const float *weight, /* (C) */
                             const float *rstd,   /* (N) */
                             int N, int C);

/* ---- linear.c: out = inp · Wᵀ + b  (W stored [out, in] as in torch), cblas_sgemm ---- */
void ca_cpu_linear_forward(float *out,          /* (N, OC) */
                           const float *inp,    /* (N, C) */
                           const float *weight, /* (OC, C) */
                           const float *bias,   /* (OC) or NULL */
                           int N, int C, int OC);
void ca_cpu_linear_backward(float *dinp,         /* (N, C): = dout·W, or += when accumulate; NULL to skip */
                            float *dweight,      /* (OC, C) += doutᵀ·inp; NULL to skip (frozen) */
                            float *dbias,        /* (OC) += Σ_n dout; NULL to skip */
                            const float *dout,   /* (N, OC) */
                            const float *inp,    /* (N, C) */
                            const float *weight, /* (OC, C) */
                            int N, int C, int OC, int accumulate);

/* ---- linear_lowp.c: decoding GEMV with bf16 weights (fp32 input and sums) or int8 weights (input quantised per
 * block of 32, integer block sums); the N inputs go four at a time, each row's result independent of N ---- */
void ca_cpu_bf16_from_f32(uint16_t *out, /* (n) round to nearest even */
                          const float *in, /* (n) */
                          size_t n);
void ca_cpu_f32_from_bf16(float *out, const uint16_t *in, size_t n);
void ca_cpu_linear_bf16_forward(float *out,             /* (N, OC) */
                                const float *inp,       /* (N, C) */
                                const uint16_t *weight, /* (OC, C) bf16 */
                                int N, int C, int OC);
/* The same row-streaming GEMV on fp32 weights (decoding steps of the fp32 model) */
void ca_cpu_linear_f32_gemv_forward(float *out,          /* (N, OC) */
                                    const float *inp,    /* (N, C) */
                                    const float *weight, /* (OC, C) */
                                    int N, int C, int OC);
/* int8 weights with one scale per row: q = round(W / scale), scale = max|W[o]| / 127; W becomes scale · q */
void ca_cpu_q8_quantize_rows(int8_t *q,    /* (OC, C) */
                             float *scale, /* (OC) */
                             float *W,     /* (OC, C) rounded in place */
                             int OC, int C);
void ca_cpu_linear_q8_forward(float *out,           /* (N, OC) */
                              const float *inp,     /* (N, C) */
                              const int8_t *weight, /* (OC, C) */
                              const float *scale,   /* (OC) */
                              int N, int C, int OC);
/* The bf16 GEMMs of prompts and of training on a frozen bf16 base: out (N, OC) = bf16(inp) · Wᵀ, and its input
 * gradient dinp (N, C) = or += bf16(dout) · W, with fp32 sums (AVX512-BF16; else the fp32 GEMM on the rounded
 * operand and weight_f32, W's values in fp32). Return −1 (outputs untouched) when a workspace cannot be
 * allocated. */
int ca_cpu_linear_bf16_gemm_forward(float *out,             /* (N, OC) */
                                    const float *inp,       /* (N, C) */
                                    const uint16_t *weight, /* (OC, C) bf16 */
                                    const float *weight_f32, /* (OC, C) */
                                    int N, int C, int OC);
/* int8 weights' prompts through the same bf16 GEMM: out (N, OC) = scale[o] · Σ_k bf16(inp)[n, k] · q[o, k] (q is exact
 * in bf16; else the fp32 GEMM on bf16(inp) and weight_f32 = scale · q). −1 when a workspace cannot be allocated. */
int ca_cpu_linear_q8_gemm_forward(float *out,             /* (N, OC) */
                                  const float *inp,       /* (N, C) */
                                  const int8_t *q,        /* (OC, C) */
                                  const float *scale,     /* (OC) */
                                  const float *weight_f32, /* (OC, C) */
                                  int N, int C, int OC);
/* The weight gradient of a bf16 model's trained base: dW (OC, C) += bf16(dout)ᵀ · bf16(inp), fp32 sums. */
int ca_cpu_linear_bf16_gemm_weight_grad(float *dweight,    /* (OC, C) */
                                        const float *dout, /* (N, OC) */
                                        const float *inp,  /* (N, C) */
                                        int N, int C, int OC);
int ca_cpu_linear_bf16_gemm_backward(float *dinp,             /* (N, C) */
                                     const float *dout,       /* (N, OC) */
                                     const uint16_t *weight,  /* (OC, C) bf16 */
                                     const float *weight_f32, /* (OC, C) */
                                     int N, int C, int OC, int accumulate);
/* "auto" | "avx512" | "avx2": the GEMV variant; -1 for an unknown name or an ISA this CPU lacks */
int ca_cpu_lowp_set_isa(const char *isa);
const char *ca_cpu_lowp_isa(void);

/* ---- shortconv.c: the gated depthwise causal convolution inside the LFM2 conv block (lfm2.md §2.4)
 *   z = [Bg | Cg | xv] (the in_proj output, chunked in that order)
 *   u[t] = Bg[t] ⊙ xv[t]
 *   c[t,h] = Σ_{k=0}^{L-1} w[h,k] · u[t-(L-1)+k, h]    (w[h,L-1] multiplies the current token;
 *            u before t=0 comes from `state`, zeros when state is NULL)
 *   y[t] = Cg[t] ⊙ c[t]                                                                          */
void ca_cpu_shortconv_forward(float *y,            /* (B, T, C) */
                              float *u,            /* (B, T, C) cache */
                              float *c,            /* (B, T, C) cache */
                              const float *z,      /* (B, T, 3C) */
                              const float *weight, /* (C, L)  (HF conv.weight [C,1,L]) */
                              const float *state,  /* (B, L-1, C) preceding u columns, or NULL */
                              int B, int T, int C, int L);
void ca_cpu_shortconv_backward(float *dz,           /* (B, T, 3C) = */
                               float *dweight,      /* (C, L) += ; NULL to skip */
                               const float *dy,     /* (B, T, C) */
                               const float *z,      /* (B, T, 3C) */
                               const float *u,      /* (B, T, C) */
                               const float *c,      /* (B, T, C) */
                               const float *weight, /* (C, L) */
                               int B, int T, int C, int L);

/* ---- rope.c: NEOX rotary embedding (rotate_half pairs i with i+HS/2)
 *   θ_i = theta^(-2i/HS), a = pos·θ_i:  x'[i] = x[i]cos a − x[i+HS/2] sin a;  x'[i+HS/2] = x[i+HS/2]cos a + x[i] sin a
 *   out may alias inp; backward rotates by −a (dinp may alias dout). */
void ca_cpu_rope_forward(float *out,          /* (N, NH, HS) */
                         const float *inp,    /* (N, NH, HS) */
                         const int32_t *pos,  /* (N) absolute positions */
                         int N, int NH, int HS, float theta);
void ca_cpu_rope_backward(float *dinp,        /* (N, NH, HS) = */
                          const float *dout,  /* (N, NH, HS) */
                          const int32_t *pos, /* (N) */
                          int N, int NH, int HS, float theta);

/* ---- attention.c: softmax(q·kᵀ/sqrt(HS) + mask)·v with grouped KV heads (query head h uses KV head
 *   h / (NH/NKV)). Query t sits at absolute position q_offset+t; with `causal` it sees keys j ≤ q_offset+t.
 *   key_mask (B, Tk): 0 excludes a key (padding). A query that sees no key outputs zeros. ---- */
void ca_cpu_attention_forward(float *out,             /* (B, Tq, NH, HS) */
                              float *att,             /* (B, NH, Tq, Tk) cache: probabilities */
                              const float *q,         /* (B, Tq, NH, HS) */
                              const float *k,         /* (B, Tk, NKV, HS) */
                              const float *v,         /* (B, Tk, NKV, HS) */
                              const int32_t *key_mask,/* (B, Tk) or NULL */
                              int B, int Tq, int Tk, int NH, int NKV, int HS, int causal, int q_offset);
void ca_cpu_attention_backward(float *dq,             /* (B, Tq, NH, HS) = */
                               float *dk,             /* (B, Tk, NKV, HS) = */
                               float *dv,             /* (B, Tk, NKV, HS) = */
                               const float *dout,     /* (B, Tq, NH, HS) */
                               const float *q, const float *k, const float *v,
                               const float *att,      /* (B, NH, Tq, Tk) */
                               int B, int Tq, int Tk, int NH, int NKV, int HS);

/* ---- swiglu.c: out = silu(gate) ⊙ up,  silu(a) = a·σ(a) ---- */
void ca_cpu_swiglu_forward(float *out,        /* (N, F) */
                           const float *gate, /* (N, F)  w1 output */
                           const float *up,   /* (N, F)  w3 output */
                           int N, int F);
void ca_cpu_swiglu_backward(float *dgate,       /* (N, F) = */
                            float *dup,         /* (N, F) = */
                            const float *dout,  /* (N, F) */
                            const float *gate, const float *up,
                            int N, int F);

/* ---- crossentropy.c: loss_n = logsumexp(logits_n) − logits_n[target_n], rows with target −100 skipped.
 *   forward returns Σ loss_n over counted rows (float64) and writes per-row losses (0 for skipped) when
 *   `losses` is non-NULL; backward writes dlogits = (softmax − onehot)·scale for counted rows and 0
 *   elsewhere (dlogits may alias logits). ---- */
double ca_cpu_crossentropy_forward(float *losses,          /* (N) or NULL */
                                   const float *logits,    /* (N, V) */
                                   const int32_t *targets, /* (N) in [0,V) or -100 */
                                   int N, int V);
void ca_cpu_crossentropy_backward(float *dlogits,         /* (N, V) = */
                                  const float *logits,    /* (N, V) */
                                  const int32_t *targets, /* (N) */
                                  float scale,            /* dloss/dloss_n, e.g. 1/count for a mean */
                                  int N, int V);

/* ---- elementwise.c ---- */
void ca_cpu_add_inplace(float *y, const float *x, size_t n);     /* y += x */
void ca_cpu_scale_inplace(float *y, float s, size_t n);          /* y *= s */
void ca_cpu_zero(float *y, size_t n);                            /* y = 0  */
/* dst[idx[p]] = src[p] (rows of C floats): image features into their <image> positions */
void ca_cpu_scatter_rows(float *dst /* (N, C) */, const float *src /* (P, C) */, const int32_t *idx /* (P) */, int P, int C);
/* dst[p] = src[idx[p]]: the gradient of those features */
void ca_cpu_gather_rows(float *dst /* (P, C) */, const float *src /* (N, C) */, const int32_t *idx /* (P) */, int P, int C);

/* ---- lora.c: the low-rank term of a LoRA-adapted linear, y = W·x + s·B(A·x̃)  (PEFT's lora.Linear) ---- */
void ca_cpu_lora_forward(float *out,       /* (N, OC) += s·h·Bᵀ */
                         float *h,         /* (N, r) cache: x̃·Aᵀ */
                         const float *x,   /* (N, C) the (dropped-out) input x̃ */
                         const float *A,   /* (r, C)  lora_A.weight */
                         const float *B,   /* (OC, r) lora_B.weight */
                         float scale, int N, int C, int OC, int r);
void ca_cpu_lora_backward(float *dx,        /* (N, C) += dh·A; NULL to skip */
                          float *dA,        /* (r, C) += ; NULL to skip (frozen A, e.g. FFA-LoRA) */
                          float *dB,        /* (OC, r) += ; NULL to skip */
                          float *dh,        /* (N, r) scratch = s·dout·B */
                          const float *dout,/* (N, OC) */
                          const float *x, const float *h, const float *A, const float *B,
                          float scale, int N, int C, int OC, int r);
void ca_cpu_lora_merge(float *W,        /* (OC, C) += scale·B·A */
                       const float *A,  /* (r, C) */
                       const float *B,  /* (OC, r) */
                       float scale, int C, int OC, int r);
/* inverted dropout with a mask regenerated from (seed, index): out = x·keep/(1−p); out may alias inp */
void ca_cpu_dropout_forward(float *out, const float *inp, size_t n, float p, uint64_t seed);
void ca_cpu_dropout_backward(float *dinp, const float *dout, size_t n, float p, uint64_t seed);

/* ---- adamw.c: torch.optim.AdamW on a flat buffer; grad_scale folds in global-norm clipping ---- */
void ca_cpu_adamw_update(float *p,        /* (n) parameters, updated */
                         float *m,        /* (n) first moment */
                         float *v,        /* (n) second moment */
                         const float *g,  /* (n) gradients */
                         size_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
                         int step /* 1-based */, float grad_scale);
double ca_cpu_sum_squares(const float *x, size_t n);

/* ================================================================================================
 * Vision ops (LFM2-VL SigLIP2 tower and projector, lfm2.md §4.3–4.6). The patch embedding is the linear op
 * above with bias over pre-extracted patch vectors (N, 16·16·3) in (py, px, c) order, exactly the
 * nn.Linear transformers' Siglip2VisionEmbeddings applies; the encoder attention is mha.c (GEMM-based,
 * every key visible), run per tile on its valid patches only (equivalent to masking the padded keys).
 * ================================================================================================ */

/* ---- layernorm.c: y = (x − mean)·rstd·w + b,  rstd = 1/sqrt(var_biased + eps) ---- */
void ca_cpu_layernorm_forward(float *out,          /* (N, C) */
                              float *mean,         /* (N) cache */
                              float *rstd,         /* (N) cache */
                              const float *inp,    /* (N, C) */
                              const float *weight, /* (C) */
                              const float *bias,   /* (C) */
                              int N, int C, float eps);
void ca_cpu_layernorm_backward(float *dinp,         /* (N, C) += (residual stream) */
                               float *dweight,      /* (C) += ; NULL to skip */
                               float *dbias,        /* (C) += ; NULL to skip */
                               const float *dout,   /* (N, C) */
                               const float *inp,    /* (N, C) */
                               const float *weight, /* (C) */
                               const float *mean,   /* (N) */
                               const float *rstd,   /* (N) */
                               int N, int C);

/* ---- gelu.c: tanh_form ? 0.5x(1 + tanh(√(2/π)(x + 0.044715x³)))  (SigLIP2 MLP, gelu_pytorch_tanh)
 *                        : 0.5x(1 + erf(x/√2))                      (projector, exact) ---- */
void ca_cpu_gelu_forward(float *out,       /* (N) */
                         const float *inp, /* (N) */
                         size_t N, int tanh_form);
void ca_cpu_gelu_backward(float *dinp,       /* (N) = */
                          const float *dout, /* (N) */
                          const float *inp,  /* (N) */
                          size_t N, int tanh_form);

/* ---- posresize.c: antialiased bilinear resize of a (Hi, Wi, C) table to (Ho, Wo, C), exactly
 *   F.interpolate(mode="bilinear", align_corners=False, antialias=True) (up- and downsampling) ---- */
void ca_cpu_posresize_forward(float *out,         /* (Ho, Wo, C) */
                              const float *table, /* (Hi, Wi, C) */
                              int Hi, int Wi, int Ho, int Wo, int C);
void ca_cpu_posresize_backward(float *dtable,     /* (Hi, Wi, C) += */
                               const float *dout, /* (Ho, Wo, C) */
                               int Hi, int Wi, int Ho, int Wo, int C);

/* ---- mha.c: bidirectional multi-head self-attention of one sequence (no mask, NKV = NH), per-head sgemm:
 *   o_h = softmax(q_h·k_hᵀ/sqrt(HS))·v_h,  heads = contiguous HS-slices of each row ---- */
void ca_cpu_mha_forward(float *out,     /* (T, NH, HS) */
                        float *att,     /* (NH, T, T) cache: probabilities */
                        const float *q, /* (T, NH, HS) */
                        const float *k, /* (T, NH, HS) */
                        const float *v, /* (T, NH, HS) */
                        int T, int NH, int HS);
/* The same with bf16 GEMMs (q·scale, k, P, v rounded to bf16; fp32 sums, softmax and probabilities); −1 (nothing
 * written) without AVX512-BF16 or memory: the caller runs ca_cpu_mha_forward */
int ca_cpu_mha_bf16_forward(float *out, float *att, const float *q, const float *k, const float *v, int T, int NH,
                            int HS);
void ca_cpu_mha_backward(float *dq,         /* (T, NH, HS) = */
                         float *dk,         /* (T, NH, HS) = */
                         float *dv,         /* (T, NH, HS) = */
                         float *scratch,    /* (NH, T, T) workspace */
                         const float *dout, /* (T, NH, HS) */
                         const float *q, const float *k, const float *v,
                         const float *att,  /* (NH, T, T) */
                         int T, int NH, int HS);

/* ---- unshuffle.c: pixel unshuffle by f (H, W divisible by f):
 *   out[i·(W/f) + j] = concat_{dy<f} concat_{dx<f} inp[(f·i+dy)·W + f·j+dx]   (f=2: TL, TR, BL, BR) ---- */
void ca_cpu_unshuffle_forward(float *out,       /* (H/f · W/f, f·f·C) */
                              const float *inp, /* (H · W, C) */
                              int H, int W, int C, int f);
void ca_cpu_unshuffle_backward(float *dinp,       /* (H · W, C) = */
                               const float *dout, /* (H/f · W/f, f·f·C) */
                               int H, int W, int C, int f);

#endif
