"""The vision ops (LayerNorm, GELU tanh/erf, antialiased position-table resize, pixel unshuffle) one at a time,
with the harness of test_ops.py: fp32 C op vs a float64 NumPy reference (forward and backward, relative to
the norm), and the reference backward itself checked by central finite differences. Accumulated outputs
(+=) are prefilled with random values, written ones (=) with NaN.

The references are written from the definitions (lfm2.md §4.3–4.6), not from the C code: the resize
reference builds PyTorch's per-axis AA weight matrices and applies them as matrix products; the unshuffle
reference replays transformers' reshape/permute sequence. The optional torch tests compare against
F.interpolate(antialias=True) and F.gelu directly.
"""

import math

import numpy as np
import pytest

from captionaura import _core
from test_ops import (TOL, Case, attention_ref, check_backward, check_forward, check_reference_gradients, f32, nans,
                      prefilled, rel_err)

F32 = np.float32

# ---------------------------------------------------------------------------------------------------------
# layernorm: y = (x - mean) / sqrt(var + eps) * w + b


def layernorm_case(N, C, seed, eps=1e-6, skip_params=False):
    rng = np.random.default_rng(seed)

    def ref_fwd(x, k):
        xx = x["x"]
        mu = xx.mean(axis=-1, keepdims=True)
        var = ((xx - mu) ** 2).mean(axis=-1, keepdims=True)
        return (xx - mu) / np.sqrt(var + eps) * x["w"] + x["b"]

    def ref_bwd(x, k, dout):
        xx, w = x["x"], x["w"]
        mu = xx.mean(axis=-1, keepdims=True)
        r = 1.0 / np.sqrt(((xx - mu) ** 2).mean(axis=-1, keepdims=True) + eps)
        xh = (xx - mu) * r
        g = dout * w
        dx = r * (g - g.mean(axis=-1, keepdims=True) - xh * (g * xh).mean(axis=-1, keepdims=True))
        return {"x": dx, "w": np.sum(dout * xh, axis=0), "b": np.sum(dout, axis=0)}

    def c_fwd(x, k):
        out, mean, rstd = nans((N, C)), nans((N,)), nans((N,))
        _core.layernorm_forward(out, mean, rstd, x["x"], x["w"], x["b"], eps)
        return out, (mean, rstd)

    def c_bwd(x, k, dout, cache):
        mean, rstd = cache
        dinp, s0 = prefilled((N, C), rng)  # accumulates (residual stream)
        dw, s1 = prefilled((C,), rng)
        db, s2 = prefilled((C,), rng)
        _core.layernorm_backward(dinp, None if skip_params else dw, None if skip_params else db, dout, x["x"],
                                 x["w"], mean, rstd)
        g = {"x": dinp - s0}
        if skip_params:
            assert np.array_equal(dw, s1) and np.array_equal(db, s2)
        else:
            g["w"], g["b"] = dw - s1, db - s2
        return g

    inputs = {"x": rng.standard_normal((N, C)) * 2 + 0.7, "w": 1 + 0.3 * rng.standard_normal(C),
              "b": 0.2 * rng.standard_normal(C)}
    name = f"layernorm N{N} C{C} eps{eps:g}" + (" no-params" if skip_params else "")
    return Case(name, inputs, {}, ref_fwd, ref_bwd, c_fwd, c_bwd)


# ---------------------------------------------------------------------------------------------------------
# gelu: tanh form 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3))), exact form 0.5x(1+erf(x/sqrt 2))

_erf = np.vectorize(math.erf)


def gelu_case(N, F, seed, tanh_form):
    rng = np.random.default_rng(seed)
    k0 = math.sqrt(2.0 / math.pi)

    def ref_fwd(x, k):
        a = x["x"]
        if tanh_form:
            return 0.5 * a * (1.0 + np.tanh(k0 * (a + 0.044715 * a**3)))
        return 0.5 * a * (1.0 + _erf(a / math.sqrt(2.0)))

    def ref_bwd(x, k, dout):
        a = x["x"]
        if tanh_form:
            t = np.tanh(k0 * (a + 0.044715 * a**3))
            d = 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t**2) * k0 * (1.0 + 3 * 0.044715 * a**2)
        else:
            d = 0.5 * (1.0 + _erf(a / math.sqrt(2.0))) + a * np.exp(-0.5 * a**2) / math.sqrt(2 * math.pi)
        return {"x": dout * d}

    def c_fwd(x, k):
        out = nans((N, F))
        _core.gelu_forward(out, x["x"], tanh_form)
        return out, None

    def c_bwd(x, k, dout, cache):
        dinp = nans((N, F))
        _core.gelu_backward(dinp, dout, x["x"], tanh_form)
        return {"x": dinp}

    a = rng.standard_normal((N, F)) * 2.5
    a.flat[:6] = [-12.0, -40.0, 9.0, 60.0, 1e-4, -3.2]  # saturated tails, tiny values
    return Case(f"gelu {'tanh' if tanh_form else 'erf'} N{N} F{F}", {"x": a}, {}, ref_fwd, ref_bwd, c_fwd, c_bwd)


# ---------------------------------------------------------------------------------------------------------
# posresize: F.interpolate(bilinear, align_corners=False, antialias=True), separable per-axis weights


def aa_matrix(S, T):
    """(T, S) weight matrix of PyTorch's antialiased bilinear filter along one axis (lfm2.md §4.3)."""
    scale = S / T
    support = scale if scale >= 1.0 else 1.0
    invs = 1.0 / scale if scale >= 1.0 else 1.0
    Wm = np.zeros((T, S))
    for o in range(T):
        center = scale * (o + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), S)
        w = np.array([max(0.0, 1.0 - abs((j - center + 0.5) * invs)) for j in range(lo, hi)])
        Wm[o, lo:hi] = w / w.sum()
    return Wm


def posresize_case(Hi, Wi, Ho, Wo, C, seed):
    rng = np.random.default_rng(seed)
    # strong downsampling spreads each output over many cells (weights ~ Ho·Wo/(Hi·Wi)): scale dout so the
    # gradient is not lost in the rounding of the O(1) prefilled accumulator
    dscale = max(1.0, (Hi * Wi) / (Ho * Wo))
    Ay, Ax = aa_matrix(Hi, Ho), aa_matrix(Wi, Wo)

    def ref_fwd(x, k):
        return np.einsum("yi,xj,ijc->yxc", Ay, Ax, x["t"])

    def ref_bwd(x, k, dout):
        return {"t": np.einsum("yi,xj,yxc->ijc", Ay, Ax, dout)}

    def c_fwd(x, k):
        out = nans((Ho, Wo, C))
        _core.posresize_forward(out, x["t"])
        return out, None

    def c_bwd(x, k, dout, cache):
        dt, s = prefilled((Hi, Wi, C), rng)
        _core.posresize_backward(dt, dout)
        return {"t": dt - s}

    return Case(f"posresize {Hi}x{Wi}->{Ho}x{Wo} C{C}", {"t": rng.standard_normal((Hi, Wi, C))}, {}, ref_fwd,
                ref_bwd, c_fwd, c_bwd, dout=lambda shape, r: r.standard_normal(shape) * dscale)


# ---------------------------------------------------------------------------------------------------------
# pixel unshuffle, replaying transformers' Lfm2VlMultiModalProjector.pixel_unshuffle reshape/permute steps


def hf_unshuffle(x, f):
    h, w, c = x.shape
    y = x.reshape(h, w // f, c * f).transpose(1, 0, 2)
    y = y.reshape(w // f, h // f, c * f * f).transpose(1, 0, 2)
    return y


def unshuffle_case(H, W, C, f, seed):
    rng = np.random.default_rng(seed)

    def ref_fwd(x, k):
        return hf_unshuffle(x["x"], f)

    def ref_bwd(x, k, dout):  # a permutation: scatter dout back through the same index map
        idx = hf_unshuffle(np.arange(H * W * C, dtype=np.float64).reshape(H, W, C), f).astype(np.int64)
        g = np.zeros(H * W * C)
        g[idx.ravel()] = dout.ravel()
        return {"x": g.reshape(H, W, C)}

    def c_fwd(x, k):
        out = nans((H // f, W // f, f * f * C))
        _core.unshuffle_forward(out, x["x"], f)
        return out, None

    def c_bwd(x, k, dout, cache):
        dinp = nans((H, W, C))
        _core.unshuffle_backward(dinp, dout, f)
        return {"x": dinp}

    return Case(f"unshuffle {H}x{W} C{C} f{f}", {"x": rng.standard_normal((H, W, C))}, {}, ref_fwd, ref_bwd,
                c_fwd, c_bwd)


# ---------------------------------------------------------------------------------------------------------
# mha: bidirectional multi-head self-attention of one sequence (the float64 reference of test_ops.py)


def mha_case(T, NH, HS, seed, spread=1.0):
    rng = np.random.default_rng(seed)
    vis = np.ones((1, T, T), dtype=bool)

    def ref_fwd(x, k):
        o = attention_ref(x["q"][None], x["k"][None], x["v"][None], vis)[0]
        return o.transpose(0, 2, 1, 3)[0]

    def ref_bwd(x, k, dout):
        o, p, qh, kh, vh = attention_ref(x["q"][None], x["k"][None], x["v"][None], vis)
        do = dout[None].transpose(0, 2, 1, 3)
        dp = do @ vh.transpose(0, 1, 3, 2)
        ds = p * (dp - np.sum(p * dp, axis=-1, keepdims=True)) / math.sqrt(HS)
        tr = lambda a: a.transpose(0, 2, 1, 3)[0]  # noqa: E731
        return {"q": tr(ds @ kh), "k": tr(ds.transpose(0, 1, 3, 2) @ qh), "v": tr(p.transpose(0, 1, 3, 2) @ do)}

    def c_fwd(x, k):
        out, att = nans((T, NH, HS)), nans((NH, T, T))
        _core.mha_forward(out, att, x["q"], x["k"], x["v"])
        return out, att

    def c_bwd(x, k, dout, att):
        dq, dk, dv = nans((T, NH, HS)), nans((T, NH, HS)), nans((T, NH, HS))
        _core.mha_backward(dq, dk, dv, nans((NH, T, T)), dout, x["q"], x["k"], x["v"], att)
        return {"q": dq, "k": dk, "v": dv}

    inputs = {n: rng.standard_normal((T, NH, HS)) * spread for n in ("q", "k", "v")}
    return Case(f"mha T{T} NH{NH} HS{HS}", inputs, {}, ref_fwd, ref_bwd, c_fwd, c_bwd)


CASES = [
    mha_case(T=1, NH=2, HS=8, seed=21),
    mha_case(T=7, NH=3, HS=16, seed=22),
    mha_case(T=40, NH=4, HS=12, seed=23, spread=2.0),  # peaked softmax
    mha_case(T=150, NH=2, HS=64, seed=24),  # threaded
    mha_case(T=300, NH=3, HS=8, seed=25),  # two query blocks (256 + 44): block-summed dk, dv
    layernorm_case(N=5, C=13, seed=1),
    layernorm_case(N=300, C=130, seed=2, eps=1e-5),  # threaded, channel slices for dw/db
    layernorm_case(N=6, C=16, seed=3, skip_params=True),
    gelu_case(N=5, F=13, seed=4, tanh_form=True),
    gelu_case(N=5, F=13, seed=5, tanh_form=False),
    gelu_case(N=64, F=700, seed=6, tanh_form=True),  # threaded
    gelu_case(N=64, F=700, seed=7, tanh_form=False),
    posresize_case(16, 16, 16, 16, 8, seed=8),  # identity
    posresize_case(16, 16, 12, 21, 8, seed=9),  # down x, up y (a 384x672 image)
    posresize_case(16, 16, 4, 6, 5, seed=10),  # strong downsampling, odd channel count
    posresize_case(16, 16, 32, 32, 8, seed=11),  # 512x512 tile: plain bilinear upsampling
    posresize_case(16, 16, 1, 1, 4, seed=12),  # everything averages into one cell
    posresize_case(16, 16, 2, 40, 6, seed=13),  # very wide
    posresize_case(16, 16, 7, 5, 3, seed=14),  # non-integer down factors
    posresize_case(8, 8, 10, 12, 4, seed=15),  # another table size
    posresize_case(16, 16, 32, 20, 100, seed=16),  # threaded
    unshuffle_case(4, 6, 3, 2, seed=17),
    unshuffle_case(2, 2, 5, 2, seed=18),
    unshuffle_case(6, 9, 2, 3, seed=19),  # factor 3
    unshuffle_case(32, 32, 40, 2, seed=20),  # threaded
]
IDS = [c.name for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_float64_reference(case):
    check_forward(case)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_gradients_by_finite_differences(case):
    check_reference_gradients(case)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backward_matches_analytic_reference(case):
    check_backward(case)


# ---------------------------------------------------------------------------------------------------------
# semantics


def test_unshuffle_block_order_is_tl_tr_bl_br():
    """lfm2.md §4.5: output token (i, j) = [X[2i,2j], X[2i,2j+1], X[2i+1,2j], X[2i+1,2j+1]]."""
    H, W = 4, 6
    grid = np.zeros((H, W, 2), F32)
    for r in range(H):
        for c in range(W):
            grid[r, c] = (r, c)
    out = nans((H // 2, W // 2, 8))
    _core.unshuffle_forward(out, grid, 2)
    for i in range(H // 2):
        for j in range(W // 2):
            want = [2 * i, 2 * j, 2 * i, 2 * j + 1, 2 * i + 1, 2 * j, 2 * i + 1, 2 * j + 1]
            assert out[i, j].tolist() == want


def test_posresize_identity_and_upsampling_is_plain_bilinear():
    rng = np.random.default_rng(30)
    t = f32(rng.standard_normal((16, 16, 7)))
    same = nans(t.shape)
    _core.posresize_forward(same, t)
    np.testing.assert_array_equal(same, t)  # one tap of weight 1: exact
    # upsampling x2 with align_corners=False: interior output 2k+1 = 0.75·in[k] + 0.25·in[k+1]
    up = nans((32, 32, 7))
    _core.posresize_forward(up, t)
    np.testing.assert_allclose(up[5, 9], (0.75 * (0.75 * t[2, 4] + 0.25 * t[2, 5]) + 0.25 * (0.75 * t[3, 4] + 0.25 * t[3, 5])),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(up[0, 0], t[0, 0], rtol=0, atol=1e-6)  # edge clamped
    # downsampling to one cell averages with the widened triangle (not a plain mean)
    one = nans((1, 1, 7))
    _core.posresize_forward(one, t)
    w = aa_matrix(16, 1)[0]
    np.testing.assert_allclose(one[0, 0], np.einsum("i,j,ijc->c", w, w, t.astype(np.float64)), rtol=0, atol=1e-6)
    assert not np.allclose(w, 1 / 16)


def test_gelu_forms_differ_and_saturate():
    x = f32(np.array([-50.0, -3.0, -0.5, 0.0, 0.5, 3.0, 50.0]))
    a, b = nans(x.shape), nans(x.shape)
    _core.gelu_forward(a, x, True)
    _core.gelu_forward(b, x, False)
    assert abs(a[0]) < 1e-30 and b[0] == 0.0 and a[-1] == 50.0 and b[-1] == 50.0 and a[3] == 0.0
    assert 1e-5 < abs(float(a[1] - b[1])) < 1e-2  # the tanh approximation is close but not equal


def test_bindings_reject_bad_arguments():
    x = np.zeros((4, 8), F32)
    with pytest.raises(ValueError, match="bias"):
        _core.layernorm_forward(x.copy(), np.zeros(4, F32), np.zeros(4, F32), x, np.ones(8, F32), np.ones(7, F32), 1e-6)
    with pytest.raises(ValueError, match="divisible"):
        _core.unshuffle_forward(np.zeros((1, 1, 32), F32), np.zeros((3, 4, 8), F32), 2)
    with pytest.raises(ValueError, match="channels"):
        _core.posresize_forward(np.zeros((4, 4, 3), F32), np.zeros((16, 16, 4), F32))
    with pytest.raises(ValueError, match="out"):
        _core.gelu_forward(np.zeros(5, F32), np.zeros(6, F32), True)


# ---------------------------------------------------------------------------------------------------------
# optional: against torch (pip install torch==2.13.0); skipped without torch


@pytest.mark.reference
def test_against_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(40)
    for (Ho, Wo) in [(12, 21), (4, 6), (32, 32), (1, 1), (2, 40), (7, 5), (20, 18), (16, 16)]:
        t = f32(rng.standard_normal((16, 16, 6)))
        tt = torch.tensor(t, requires_grad=True)
        ref = F.interpolate(tt.permute(2, 0, 1)[None], size=(Ho, Wo), mode="bilinear", align_corners=False,
                            antialias=True)[0].permute(1, 2, 0)
        g = f32(rng.standard_normal((Ho, Wo, 6)))
        ref.backward(torch.tensor(g))
        out = nans((Ho, Wo, 6))
        _core.posresize_forward(out, t)
        dt = np.zeros_like(t)
        _core.posresize_backward(dt, g)
        assert np.max(np.abs(out - ref.detach().numpy())) < 1e-5, (Ho, Wo)
        assert np.max(np.abs(dt - tt.grad.numpy())) < 1e-4, (Ho, Wo)
    x = f32(rng.standard_normal((9, 33)) * 3)
    for tanh_form, approx in ((True, "tanh"), (False, "none")):
        tx = torch.tensor(x, requires_grad=True)
        ty = F.gelu(tx, approximate=approx)
        d = f32(rng.standard_normal(x.shape))
        ty.backward(torch.tensor(d))
        out, dx = nans(x.shape), nans(x.shape)
        _core.gelu_forward(out, x, tanh_form)
        _core.gelu_backward(dx, d, x, tanh_form)
        assert np.max(np.abs(out - ty.detach().numpy())) < 1e-5
        assert np.max(np.abs(dx - tx.grad.numpy())) < 1e-5
    tx = torch.tensor(x, requires_grad=True)
    w, b = f32(1 + 0.2 * rng.standard_normal(33)), f32(rng.standard_normal(33))
    tw, tb = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    ty = F.layer_norm(tx, (33,), tw, tb, eps=1e-6)
    d = f32(rng.standard_normal(x.shape))
    ty.backward(torch.tensor(d))
    out, mean, rstd = nans(x.shape), nans((9,)), nans((9,))
    _core.layernorm_forward(out, mean, rstd, x, w, b, 1e-6)
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    _core.layernorm_backward(dx, dw, db, d, x, w, mean, rstd)
    assert rel_err(out, ty.detach().numpy()) < TOL
    for got, tt in ((dx, tx), (dw, tw), (db, tb)):
        assert rel_err(got, tt.grad.numpy()) < TOL


@pytest.mark.parametrize("T, NH, HS", [(300, 3, 64), (33, 2, 16), (7, 1, 8)])
def test_bf16_attention_equals_numpy_scheme(T, NH, HS):
    """A bf16 tower's attention: S = bf16(q·scale)·bf16(k)ᵀ, P = softmax(S) (fp32, stored as is),
    o = bf16(P)·bf16(v), fp32 sums (T = 300: two query blocks), against NumPy computing that scheme; the
    rounding is what separates it from the fp32 op."""
    from test_inference_dtype import bf16_round

    rng = np.random.default_rng(T)
    q, k, v = (f32(rng.standard_normal((T, NH, HS))) for _ in range(3))
    out, att = nans((T, NH, HS)), nans((NH, T, T))
    if not _core.mha_bf16_forward(out, att, q, k, v):
        pytest.skip("no AVX512-BF16 on this CPU")
    scale = np.float32(1 / math.sqrt(HS))
    qh, kh, vh = (bf16_round(a).astype(np.float64).transpose(1, 0, 2) for a in (q * scale, k, v))
    s = qh @ kh.transpose(0, 2, 1)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(att, p, rtol=0, atol=2e-6)
    want = (bf16_round(att.astype(np.float32)).astype(np.float64) @ vh).transpose(1, 0, 2)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-5)
    out32, att32 = nans((T, NH, HS)), nans((NH, T, T))
    _core.mha_forward(out32, att32, q, k, v)
    assert np.abs(out32 - want).max() > 1e-3
