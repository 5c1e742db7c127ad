"""Per-op timings of the CPU backend on LFM2-350M shapes (lfm2.md §3.1), batch 1 x seq 256 by default.

Linear forward/backward are compared with a raw cblas sgemm call on the same shapes, made through ctypes on
the very OpenBLAS the core links (scipy-openblas32), in the same run, with OpenBLAS's own threads (as many as
the core uses). The ops run as the core is configured (OpenBLAS single-threaded, GEMMs split over the OpenMP
pool; see linear.c); --openblas-threads N forces OpenBLAS's pool for the ops too, for comparison.
Usage: python benchmarks/bench_ops.py [--tokens 256] [--reps 5] [--threads N]
"""

import argparse
import ctypes
import time

import numpy as np

from captionaura import _core

F32 = np.float32


def best_of(fn, reps):
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def raw_sgemm():
    import scipy_openblas32 as sob

    lib = ctypes.CDLL(f"{sob.get_lib_dir()}/lib{sob.get_library()}.so")
    f = lib.scipy_cblas_sgemm
    P = ctypes.c_void_p
    I = ctypes.c_int
    f.argtypes = [I, I, I, I, I, I, ctypes.c_float, P, I, P, I, ctypes.c_float, P, I]
    f.restype = None
    RowMajor, NoTrans, Trans = 101, 111, 112

    def sgemm(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, beta=0.0):
        f(RowMajor, Trans if ta else NoTrans, Trans if tb else NoTrans, M, N, K, 1.0, A.ctypes.data, lda,
          B.ctypes.data, ldb, beta, C.ctypes.data, ldc)

    return sgemm, lib.scipy_openblas_set_num_threads, lib.scipy_openblas_get_num_threads


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--openblas-threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        _core.set_num_threads(a.threads)
    N, H, FF, NH, NKV, HS, V = a.tokens, 1024, 4608, 16, 8, 64, 65536
    rng = np.random.default_rng(0)
    sgemm, ob_set, ob_get = raw_sgemm()
    nt = _core.get_num_threads()
    ob_ops = a.openblas_threads or ob_get()

    def raw(fn):  # the anchor: plain OpenBLAS with its own pool of nt threads
        def run():
            ob_set(nt)
            fn()
            ob_set(ob_ops)
        return run

    ob_set(ob_ops)
    print(f"threads {nt} (OpenBLAS inside ops: {ob_ops}), tokens {N}")
    print(f"{'linear (C -> OC)':22s} {'fwd GF/s':>9s} {'sgemm':>7s} {'ratio':>6s} {'bwd GF/s':>9s} {'sgemm':>7s} {'ratio':>6s}")
    tot_op = tot_raw = 0.0
    for name, C, OC in (("in_proj", H, 3 * H), ("out_proj / q", H, H), ("k / v", H, NKV * HS), ("w1 / w3", H, FF),
                        ("w2", FF, H)):
        x = rng.standard_normal((N, C), dtype=F32)
        W = rng.standard_normal((OC, C), dtype=F32) * 0.02
        dy = rng.standard_normal((N, OC), dtype=F32)
        out, dx, dW = np.empty((N, OC), F32), np.empty((N, C), F32), np.zeros((OC, C), F32)
        flops = 2.0 * N * C * OC
        t_f = best_of(lambda: _core.linear_forward(out, x, W, None), a.reps)
        r_f = best_of(raw(lambda: sgemm(0, 1, N, OC, C, x, C, W, C, out, OC)), a.reps)
        t_b = best_of(lambda: _core.linear_backward(dx, dW, None, dy, x, W), a.reps)

        def raw_b():
            sgemm(0, 0, N, C, OC, dy, OC, W, C, dx, C)
            sgemm(1, 0, OC, C, N, dy, OC, x, C, dW, C, beta=1.0)

        r_b = best_of(raw(raw_b), a.reps)
        tot_op += t_f + t_b
        tot_raw += r_f + r_b
        print(f"{name:22s} {flops / t_f / 1e9:9.1f} {flops / r_f / 1e9:7.1f} {r_f / t_f:6.2f} "
              f"{2 * flops / t_b / 1e9:9.1f} {2 * flops / r_b / 1e9:7.1f} {r_b / t_b:6.2f}")
    print(f"linear total: op time / raw sgemm time = {tot_op / tot_raw:.3f}")

    # attention: one layer's worth (B=1, T=N, 16 query heads over 8 KV heads)
    q = rng.standard_normal((1, N, NH, HS), dtype=F32)
    k = rng.standard_normal((1, N, NKV, HS), dtype=F32)
    v = rng.standard_normal((1, N, NKV, HS), dtype=F32)
    out, att = np.empty_like(q), np.empty((1, NH, N, N), F32)
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    t_af = best_of(lambda: _core.attention_forward(out, att, q, k, v, None, True, 0), a.reps)
    t_ab = best_of(lambda: _core.attention_backward(dq, dk, dv, out, q, k, v, att), a.reps)
    print(f"attention fwd {t_af * 1e3:.2f} ms, bwd {t_ab * 1e3:.2f} ms (per layer)")

    # the elementwise / normalisation ops on one layer's activations
    x = rng.standard_normal((N, H), dtype=F32)
    w = np.ones(H, F32)
    y, rstd, dx = np.empty_like(x), np.empty(N, F32), np.zeros_like(x)
    dw = np.zeros(H, F32)
    t_rf = best_of(lambda: _core.rmsnorm_forward(y, rstd, x, w, 1e-5), a.reps)
    t_rb = best_of(lambda: _core.rmsnorm_backward(dx, dw, y, x, w, rstd), a.reps)
    g = rng.standard_normal((N, FF), dtype=F32)
    u = rng.standard_normal((N, FF), dtype=F32)
    o, dg, du = np.empty_like(g), np.empty_like(g), np.empty_like(g)
    t_sf = best_of(lambda: _core.swiglu_forward(o, g, u), a.reps)
    t_sb = best_of(lambda: _core.swiglu_backward(dg, du, o, g, u), a.reps)
    z = rng.standard_normal((1, N, 3 * H), dtype=F32)
    cw = rng.standard_normal((H, 3), dtype=F32)
    cy, cu, cc, dz = (np.empty((1, N, H), F32), np.empty((1, N, H), F32), np.empty((1, N, H), F32),
                      np.empty_like(z))
    cdw = np.zeros_like(cw)
    t_cf = best_of(lambda: _core.shortconv_forward(cy, cu, cc, z, cw), a.reps)
    t_cb = best_of(lambda: _core.shortconv_backward(dz, cdw, cy, z, cu, cc, cw), a.reps)
    qn = rng.standard_normal((N, NH, HS), dtype=F32)
    pos = np.arange(N, dtype=np.int32)
    t_ro = best_of(lambda: _core.rope_forward(qn, qn, pos, 1e6), a.reps)
    logits = rng.standard_normal((N, V), dtype=F32)
    tg = rng.integers(0, V, size=N).astype(np.int32)
    dl = np.empty_like(logits)
    t_ef = best_of(lambda: _core.crossentropy_forward(None, logits, tg), a.reps)
    t_eb = best_of(lambda: _core.crossentropy_backward(dl, logits, tg, 1.0 / N), a.reps)
    print(f"rmsnorm (N,{H}) fwd {t_rf * 1e3:.3f} ms bwd {t_rb * 1e3:.3f} ms | swiglu (N,{FF}) fwd "
          f"{t_sf * 1e3:.3f} ms bwd {t_sb * 1e3:.3f} ms | shortconv fwd {t_cf * 1e3:.3f} ms bwd {t_cb * 1e3:.3f} ms")
    print(f"rope q (N,{NH},{HS}) {t_ro * 1e3:.3f} ms | cross-entropy (N,{V}) fwd {t_ef * 1e3:.2f} ms "
          f"bwd {t_eb * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
