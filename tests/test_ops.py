"""The CPU ops one at a time, against float64 NumPy references written here (lfm2.md §2).

For every op case, three checks:
  * forward: the fp32 C op against the float64 reference, relative to the output's norm;
  * reference gradients: central finite differences (float64) of <dout, f(x)> on a random subset of
    coordinates against the analytic float64 reference backward, so the reference backward is itself proven;
  * backward: the C backward against that analytic reference, in full, relative to each gradient's norm.
Accumulated outputs (+=) are prefilled with random values and written ones (=) with NaN, so the harness also
checks the accumulate/write conventions of ca_ops.h.
"""

import math

import numpy as np
import pytest

from captionaura import _core

F32 = np.float32
I32 = np.int32
NAN = float("nan")
TOL = 1e-5  # fp32 op vs fp64 reference, relative to the norm of the compared tensor
FD_EPS = 1e-5
FD_TOL = 1e-6  # float64 finite differences vs analytic float64 gradient, relative to max |gradient|
FD_COORDS = 10  # coordinates per input checked by finite differences


def f32(a):
    return np.ascontiguousarray(a, dtype=F32)


def rel_err(got, want):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    assert np.all(np.isfinite(got)), "non-finite values (an output left unwritten?)"
    return np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)


class Case:
    """One op at one shape.

    inputs: differentiable float64 arrays; consts: everything else (ids, masks, sizes, flags).
    ref_fwd(x, k) -> float64 output; ref_bwd(x, k, dout) -> {name: float64 gradient};
    c_fwd(x32, k) -> (float32 output, cache); c_bwd(x32, k, dout32, cache) -> {name: float32 gradient};
    dout(out_shape, rng) -> the upstream gradient (random unless the op fixes it, as cross-entropy does).
    """

    def __init__(self, name, inputs, consts, ref_fwd, ref_bwd, c_fwd, c_bwd, dout=None, tol=TOL):
        self.name, self.inputs, self.consts = name, inputs, consts
        self.ref_fwd, self.ref_bwd, self.c_fwd, self.c_bwd = ref_fwd, ref_bwd, c_fwd, c_bwd
        self.make_dout = dout or (lambda shape, rng: rng.standard_normal(shape))
        self.tol = tol

    def x32(self):
        return {k: f32(v) for k, v in self.inputs.items()}


def prefilled(shape, rng):
    """A random accumulator and a copy of its starting value."""
    a = f32(rng.standard_normal(shape))
    return a, a.copy()


def nans(shape):
    return np.full(shape, NAN, dtype=F32)


# ---------------------------------------------------------------------------------------------------------
# embedding: out[n] = wte[ids[n]]


def embedding_case(N, V, C, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=N).astype(I32)
    ids[: min(3, N)] = ids[0]  # repeated tokens must accumulate in the backward

    def ref_fwd(x, k):
        return x["wte"][k["ids"]]

    def ref_bwd(x, k, dout):
        g = np.zeros_like(x["wte"])
        np.add.at(g, k["ids"], dout)
        return {"wte": g}

    def c_fwd(x, k):
        out = nans((N, C))
        _core.embedding_forward(out, k["ids"], x["wte"])
        return out, None

    def c_bwd(x, k, dout, cache):
        dwte, start = prefilled((V, C), rng)
        _core.embedding_backward(dwte, dout, k["ids"])
        return {"wte": dwte - start}

    return Case(f"embedding N{N} V{V} C{C}", {"wte": rng.standard_normal((V, C))}, {"ids": ids}, ref_fwd,
                ref_bwd, c_fwd, c_bwd)


# ---------------------------------------------------------------------------------------------------------
# rmsnorm: y = w * x / sqrt(mean(x^2) + eps)


def rmsnorm_case(N, C, seed, eps=1e-5, skip_dweight=False):
    rng = np.random.default_rng(seed)

    def ref_fwd(x, k):
        ms = np.mean(x["x"] ** 2, axis=-1, keepdims=True)
        return x["w"] * x["x"] / np.sqrt(ms + eps)

    def ref_bwd(x, k, dout):
        xx, w = x["x"], x["w"]
        r = 1.0 / np.sqrt(np.mean(xx**2, axis=-1, keepdims=True) + eps)
        # y_i = w_i x_i r:  dy_i/dx_j = w_i (δ_ij r − x_i x_j r³ / C)
        gw = dout * w
        dx = gw * r - xx * r**3 * np.sum(gw * xx, axis=-1, keepdims=True) / C
        return {"x": dx, "w": np.sum(dout * xx * r, axis=0)}

    def c_fwd(x, k):
        out, rstd = nans((N, C)), nans((N,))
        _core.rmsnorm_forward(out, rstd, x["x"], x["w"], eps)
        return out, rstd

    def c_bwd(x, k, dout, rstd):
        dinp, s1 = prefilled((N, C), rng)  # dinp accumulates (residual stream)
        dw, s2 = prefilled((C,), rng)
        _core.rmsnorm_backward(dinp, None if skip_dweight else dw, dout, x["x"], x["w"], rstd)
        g = {"x": dinp - s1}
        if skip_dweight:
            assert np.array_equal(dw, s2)
        else:
            g["w"] = dw - s2
        return g

    inputs = {"x": rng.standard_normal((N, C)) * 2 + 0.3, "w": 1 + 0.3 * rng.standard_normal(C)}
    case = Case(f"rmsnorm N{N} C{C}", inputs, {}, ref_fwd, ref_bwd, c_fwd, c_bwd)
    if skip_dweight:
        case.name += " no-dweight"
    return case


# ---------------------------------------------------------------------------------------------------------
# linear: out = x W^T + b


def linear_case(N, C, OC, seed, bias=True, accumulate=False):
    rng = np.random.default_rng(seed)

    def ref_fwd(x, k):
        out = x["x"] @ x["W"].T
        return out + x["b"] if bias else out

    def ref_bwd(x, k, dout):
        g = {"x": dout @ x["W"], "W": dout.T @ x["x"]}
        if bias:
            g["b"] = dout.sum(axis=0)
        return g

    def c_fwd(x, k):
        out = nans((N, OC))
        _core.linear_forward(out, x["x"], x["W"], x["b"] if bias else None)
        return out, None

    def c_bwd(x, k, dout, cache):
        if accumulate:
            dinp, s0 = prefilled((N, C), rng)
        else:
            dinp, s0 = nans((N, C)), 0.0
        dW, s1 = prefilled((OC, C), rng)
        db, s2 = prefilled((OC,), rng)
        _core.linear_backward(dinp, dW, db if bias else None, dout, x["x"], x["W"], accumulate)
        g = {"x": dinp - s0, "W": dW - s1}
        if bias:
            g["b"] = db - s2
        else:
            assert np.array_equal(db, s2)
        return g

    inputs = {"x": rng.standard_normal((N, C)), "W": rng.standard_normal((OC, C)) / math.sqrt(C)}
    if bias:
        inputs["b"] = rng.standard_normal(OC)
    name = f"linear N{N} C{C} OC{OC}" + (" bias" if bias else "") + (" acc" if accumulate else "")
    return Case(name, inputs, {}, ref_fwd, ref_bwd, c_fwd, c_bwd)


# ---------------------------------------------------------------------------------------------------------
# shortconv: u = B*x, c[t] = sum_k w[:, k] u[t-(L-1)+k], y = C*c


def shortconv_ref(z, w, state=None):
    """float64 reference: returns y, and the zero/state-padded u sequence (B, L-1+T, C)."""
    B, T, C3 = z.shape
    C = C3 // 3
    L = w.shape[1]
    bg, cg, xv = z[..., :C], z[..., C : 2 * C], z[..., 2 * C :]
    u = bg * xv
    pad = np.zeros((B, L - 1, C)) if state is None else state
    up = np.concatenate([pad, u], axis=1)
    c = sum(w[:, kk] * up[:, kk : kk + T] for kk in range(L))
    return cg * c, up, c


def shortconv_case(B, T, C, L, seed):
    rng = np.random.default_rng(seed)

    def ref_fwd(x, k):
        return shortconv_ref(x["z"], x["w"])[0]

    def ref_bwd(x, k, dy):
        z, w = x["z"], x["w"]
        y, up, c = shortconv_ref(z, w)
        bg, cg, xv = z[..., :C], z[..., C : 2 * C], z[..., 2 * C :]
        dc = dy * cg
        dup = np.zeros_like(up)
        dw = np.zeros_like(w)
        for kk in range(L):  # c[t] += w[:, kk] * up[t + kk]
            dup[:, kk : kk + T] += w[:, kk] * dc
            dw[:, kk] = np.sum(dc * up[:, kk : kk + T], axis=(0, 1))
        du = dup[:, L - 1 :]
        return {"z": np.concatenate([du * xv, dy * c, du * bg], axis=-1), "w": dw}

    def c_fwd(x, k):
        y, u, c = nans((B, T, C)), nans((B, T, C)), nans((B, T, C))
        _core.shortconv_forward(y, u, c, x["z"], x["w"])
        return y, (u, c)

    def c_bwd(x, k, dy, cache):
        u, c = cache
        dz = nans((B, T, 3 * C))
        dw, s = prefilled((C, L), rng)
        _core.shortconv_backward(dz, dw, dy, x["z"], u, c, x["w"])
        return {"z": dz, "w": dw - s}

    inputs = {"z": rng.standard_normal((B, T, 3 * C)), "w": rng.standard_normal((C, L)) / math.sqrt(L)}
    return Case(f"shortconv B{B} T{T} C{C} L{L}", inputs, {}, ref_fwd, ref_bwd, c_fwd, c_bwd)


# ---------------------------------------------------------------------------------------------------------
# rope (NEOX): x'[i] = x[i] cos a - x[i+h] sin a, x'[i+h] = x[i+h] cos a + x[i] sin a


def rope_angles(pos, HS, theta):
    """Angles as transformers builds them (lfm2.md §2.5): fp32 exponent, fp32 theta**exponent, fp32
    reciprocal, fp32 pos*inv_freq; the spec defines the angle in fp32, cos/sin are then taken in float64.
    The fp32 power is rounded from float64 (correctly rounded, like glibc's powf): NumPy's own float32 power
    is off by an ulp for a third of these entries, which at position 5000 moves the angle by ~1e-4 rad."""
    expo = np.arange(0, HS, 2, dtype=np.int64).astype(F32) / F32(HS)
    inv_freq = F32(1.0) / np.power(np.float64(F32(theta)), expo.astype(np.float64)).astype(F32)
    ang = pos.astype(F32)[:, None] * inv_freq[None, :]  # (N, HS/2) fp32
    return ang.astype(np.float64)


def rope_rotate(x, ang, sign):
    half = x.shape[-1] // 2
    cs, sn = np.cos(ang)[:, None, :], sign * np.sin(ang)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cs - x2 * sn, x2 * cs + x1 * sn], axis=-1)


def rope_case(N, NH, HS, seed, theta=1e6, max_pos=200):
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, max_pos, size=N).astype(I32)
    ang = rope_angles(pos, HS, theta)

    def ref_fwd(x, k):
        return rope_rotate(x["x"], ang, 1.0)

    def ref_bwd(x, k, dout):
        # the rotation matrix is orthogonal: its transpose rotates by -a; written here as R^T dout explicitly
        half = HS // 2
        cs, sn = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        d1, d2 = dout[..., :half], dout[..., half:]
        return {"x": np.concatenate([cs * d1 + sn * d2, -sn * d1 + cs * d2], axis=-1)}

    def c_fwd(x, k):
        out = nans((N, NH, HS))
        _core.rope_forward(out, x["x"], pos, theta)
        return out, None

    def c_bwd(x, k, dout, cache):
        dinp = nans((N, NH, HS))
        _core.rope_backward(dinp, dout, pos, theta)
        return {"x": dinp}

    return Case(f"rope N{N} NH{NH} HS{HS} theta{theta:g}", {"x": rng.standard_normal((N, NH, HS))},
                {"pos": pos}, ref_fwd, ref_bwd, c_fwd, c_bwd)


# ---------------------------------------------------------------------------------------------------------
# attention: softmax(q k^T / sqrt(HS) + mask) v with GQA, causal with q_offset, key mask


def attention_visible(B, Tq, Tk, causal, q_offset, key_mask):
    vis = np.ones((B, Tq, Tk), dtype=bool)
    if causal:
        vis &= np.arange(Tk)[None, None, :] <= (q_offset + np.arange(Tq))[None, :, None]
    if key_mask is not None:
        vis &= key_mask[:, None, :] != 0
    return vis


def attention_ref(q, k, v, vis):
    """float64 reference on (B, heads, T, HS) layouts; KV heads repeated per group (repeat_interleave)."""
    B, Tq, NH, HS = q.shape
    NKV = k.shape[2]
    qh = q.transpose(0, 2, 1, 3)
    kh = np.repeat(k.transpose(0, 2, 1, 3), NH // NKV, axis=1)
    vh = np.repeat(v.transpose(0, 2, 1, 3), NH // NKV, axis=1)
    s = qh @ kh.transpose(0, 1, 3, 2) / math.sqrt(HS)
    m = vis[:, None]
    s = np.where(m, s, -np.inf)
    mx = np.max(s, axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    e = np.where(m, np.exp(s - mx), 0.0)
    den = e.sum(axis=-1, keepdims=True)
    p = e / np.where(den > 0, den, 1.0)  # a query with no visible key: P = 0, output 0
    return p @ vh, p, qh, kh, vh


def attention_case(B, Tq, Tk, NH, NKV, HS, seed, causal=True, q_offset=0, mask=None):
    rng = np.random.default_rng(seed)
    key_mask = None
    if mask == "padding":  # right padding, one sequence fully padded beyond its first key
        lens = rng.integers(1, Tk + 1, size=B)
        lens[0] = Tk
        key_mask = (np.arange(Tk)[None, :] < lens[:, None]).astype(I32)
    elif mask == "empty-rows":  # hide key 0 (and 1): early causal queries see nothing at all
        key_mask = np.ones((B, Tk), dtype=I32)
        key_mask[:, :2] = 0
        key_mask[-1, :] = 0  # and one whole sequence without any visible key
    vis = attention_visible(B, Tq, Tk, causal, q_offset, key_mask)
    group = NH // NKV

    def ref_fwd(x, k):
        o = attention_ref(x["q"], x["k"], x["v"], vis)[0]
        return o.transpose(0, 2, 1, 3)

    def ref_bwd(x, k, dout):
        o, p, qh, kh, vh = attention_ref(x["q"], x["k"], x["v"], vis)
        do = dout.transpose(0, 2, 1, 3)  # (B, NH, Tq, HS)
        dp = do @ vh.transpose(0, 1, 3, 2)
        ds = p * (dp - np.sum(p * dp, axis=-1, keepdims=True)) / math.sqrt(HS)
        dq = ds @ kh
        dkh = ds.transpose(0, 1, 3, 2) @ qh  # per query head, then summed over each KV group
        dvh = p.transpose(0, 1, 3, 2) @ do
        dk = dkh.reshape(B, NKV, group, Tk, HS).sum(axis=2)
        dv = dvh.reshape(B, NKV, group, Tk, HS).sum(axis=2)
        return {"q": dq.transpose(0, 2, 1, 3), "k": dk.transpose(0, 2, 1, 3), "v": dv.transpose(0, 2, 1, 3)}

    def c_fwd(x, k):
        out, att = nans((B, Tq, NH, HS)), nans((B, NH, Tq, Tk))
        _core.attention_forward(out, att, x["q"], x["k"], x["v"], key_mask, causal, q_offset)
        return out, att

    def c_bwd(x, k, dout, att):
        dq, dk, dv = nans((B, Tq, NH, HS)), nans((B, Tk, NKV, HS)), nans((B, Tk, NKV, HS))
        _core.attention_backward(dq, dk, dv, dout, x["q"], x["k"], x["v"], att)
        return {"q": dq, "k": dk, "v": dv}

    inputs = {
        "q": rng.standard_normal((B, Tq, NH, HS)),
        "k": rng.standard_normal((B, Tk, NKV, HS)),
        "v": rng.standard_normal((B, Tk, NKV, HS)),
    }
    name = f"attention B{B} Tq{Tq} Tk{Tk} NH{NH} NKV{NKV} HS{HS}" + (f" causal+{q_offset}" if causal else "")
    name += f" {mask}" if mask else ""
    case = Case(name, inputs, {"vis": vis}, ref_fwd, ref_bwd, c_fwd, c_bwd)
    case.key_mask, case.causal, case.q_offset = key_mask, causal, q_offset
    return case


# ---------------------------------------------------------------------------------------------------------
# swiglu: out = silu(gate) * up


def swiglu_case(N, F, seed):
    rng = np.random.default_rng(seed)

    def sig(a):
        return 1.0 / (1.0 + np.exp(-a))

    def ref_fwd(x, k):
        return x["gate"] * sig(x["gate"]) * x["up"]

    def ref_bwd(x, k, dout):
        g, s = x["gate"], sig(x["gate"])
        return {"gate": dout * x["up"] * (s + g * s * (1 - s)), "up": dout * g * s}

    def c_fwd(x, k):
        out = nans((N, F))
        _core.swiglu_forward(out, x["gate"], x["up"])
        return out, None

    def c_bwd(x, k, dout, cache):
        dg, du = nans((N, F)), nans((N, F))
        _core.swiglu_backward(dg, du, dout, x["gate"], x["up"])
        return {"gate": dg, "up": du}

    gate = rng.standard_normal((N, F)) * 3
    gate.flat[:4] = [-30.0, -90.0, 25.0, 95.0]  # saturated sigmoid, both sides
    return Case(f"swiglu N{N} F{F}", {"gate": gate, "up": rng.standard_normal((N, F))}, {}, ref_fwd, ref_bwd,
                c_fwd, c_bwd)


# ---------------------------------------------------------------------------------------------------------
# cross-entropy: loss_n = logsumexp(l_n) - l_n[t_n], targets -100 skipped


def crossentropy_case(N, V, seed, n_ignored=2, spread=4.0):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, V, size=N).astype(I32)
    targets[rng.choice(N, size=n_ignored, replace=False)] = -100
    counted = targets != -100
    scale = 1.0 / max(int(counted.sum()), 1)

    def ref_fwd(x, k):
        l = x["logits"]
        mx = l.max(axis=-1, keepdims=True)
        lse = (mx + np.log(np.exp(l - mx).sum(axis=-1, keepdims=True)))[:, 0]
        tgt = l[np.arange(N), np.where(counted, targets, 0)]
        return np.where(counted, lse - tgt, 0.0)

    def ref_bwd(x, k, dout):
        l = x["logits"]
        p = np.exp(l - l.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        p[np.arange(N)[counted], targets[counted]] -= 1.0
        return {"logits": np.where(counted[:, None], p * dout[:, None], 0.0)}

    def c_fwd(x, k):
        losses = nans((N,))
        total = _core.crossentropy_forward(losses, x["logits"], targets)
        assert math.isclose(total, float(np.sum(losses, dtype=np.float64)), rel_tol=1e-6)
        assert _core.crossentropy_forward(None, x["logits"], targets) == total
        return losses, None

    def c_bwd(x, k, dout, cache):
        dl = nans((N, V))
        _core.crossentropy_backward(dl, x["logits"], targets, scale)
        return {"logits": dl}

    case = Case(f"crossentropy N{N} V{V}", {"logits": rng.standard_normal((N, V)) * spread}, {"targets": targets},
                ref_fwd, ref_bwd, c_fwd, c_bwd, dout=lambda shape, rng: np.full(shape, scale))
    case.targets, case.scale = targets, scale
    return case


# ---------------------------------------------------------------------------------------------------------
# the cases: odd sizes (C not a multiple of 8, tiles and chunks crossing their boundaries), B > 1, HS=16 with
# NH=3/NKV=1, L=4, causal with q_offset > 0, key masks with fully masked rows, ignored targets, and sizes past
# the OpenMP thresholds so the threaded paths run too.

CASES = [
    embedding_case(N=7, V=11, C=13, seed=1),
    embedding_case(N=300, V=40, C=130, seed=2),  # threaded, channel slices
    rmsnorm_case(N=5, C=13, seed=3),
    rmsnorm_case(N=300, C=130, seed=4),  # threaded
    rmsnorm_case(N=6, C=16, seed=5, skip_dweight=True),
    linear_case(N=5, C=13, OC=7, seed=6, bias=True),
    linear_case(N=1, C=37, OC=9, seed=7, bias=True),  # sgemv path
    linear_case(N=1, C=37, OC=9, seed=8, bias=False, accumulate=True),
    linear_case(N=9, C=20, OC=11, seed=9, bias=False),
    linear_case(N=300, C=33, OC=130, seed=10, bias=True, accumulate=True),  # threaded dbias, split GEMMs
    linear_case(N=1, C=600, OC=501, seed=32, bias=True, accumulate=True),  # split GEMVs
    linear_case(N=40, C=200, OC=300, seed=33, bias=False),  # GEMMs split by output columns
    linear_case(N=64, C=300, OC=200, seed=34, bias=True),  # dW split by columns
    shortconv_case(B=2, T=7, C=13, L=3, seed=11),
    shortconv_case(B=3, T=5, C=70, L=4, seed=12),  # two channel tiles, L=4
    shortconv_case(B=1, T=3, C=9, L=5, seed=13),  # T < L
    shortconv_case(B=2, T=40, C=200, L=3, seed=14),  # threaded
    shortconv_case(B=1, T=22, C=5, L=20, seed=15),  # L beyond the stack tile: strided path
    rope_case(N=5, NH=3, HS=16, seed=16),
    rope_case(N=7, NH=2, HS=64, seed=17, theta=1e4, max_pos=5000),
    rope_case(N=3, NH=2, HS=300, seed=18),  # more pairs than one stack chunk
    rope_case(N=200, NH=4, HS=64, seed=19),  # threaded
    attention_case(B=1, Tq=6, Tk=6, NH=3, NKV=1, HS=16, seed=20),
    attention_case(B=2, Tq=5, Tk=9, NH=4, NKV=2, HS=12, seed=21, q_offset=4),  # decode-style: past keys
    attention_case(B=2, Tq=7, Tk=7, NH=3, NKV=3, HS=16, seed=22, causal=False, mask="padding"),
    attention_case(B=3, Tq=6, Tk=6, NH=4, NKV=1, HS=8, seed=23, mask="empty-rows"),
    attention_case(B=2, Tq=3, Tk=8, NH=2, NKV=1, HS=16, seed=24, q_offset=5, mask="padding"),
    attention_case(B=2, Tq=20, Tk=25, NH=4, NKV=2, HS=16, seed=25, q_offset=5),  # threaded
    attention_case(B=2, Tq=2, Tk=2100, NH=2, NKV=1, HS=8, seed=31, causal=False, mask="padding"),  # Tk > DP_KEEP
    swiglu_case(N=5, F=13, seed=26),
    swiglu_case(N=64, F=700, seed=27),  # threaded
    crossentropy_case(N=6, V=17, seed=28),
    crossentropy_case(N=9, V=5000, seed=29, n_ignored=3, spread=8.0),  # threaded
    crossentropy_case(N=3, V=10, seed=30, n_ignored=3),  # every row ignored
]
IDS = [c.name for c in CASES]


# The harness: each check runs on any Case (tests/test_vision_ops.py uses them too).

def check_forward(case):
    """The C forward equals the float64 reference."""
    got, _ = case.c_fwd(case.x32(), case.consts)
    want = case.ref_fwd(case.inputs, case.consts)
    if np.linalg.norm(want) == 0:
        assert np.array_equal(got, np.zeros_like(got))
    else:
        assert rel_err(got, want) < case.tol


def check_reference_gradients(case):
    """The float64 reference backward equals central finite differences of the reference forward."""
    rng = np.random.default_rng(1234)
    x = case.inputs
    out = case.ref_fwd(x, case.consts)
    dout = case.make_dout(out.shape, rng)
    grads = case.ref_bwd(x, case.consts, dout)
    assert set(grads) == set(x)

    def objective(xs):
        return float(np.sum(dout * case.ref_fwd(xs, case.consts)))

    for name, arr in x.items():
        g = grads[name]
        assert g.shape == arr.shape
        scale = max(float(np.max(np.abs(g))), 1e-3)
        for i in rng.choice(arr.size, size=min(FD_COORDS, arr.size), replace=False):
            plus = {k: v.copy() for k, v in x.items()}
            minus = {k: v.copy() for k, v in x.items()}
            plus[name].flat[i] += FD_EPS
            minus[name].flat[i] -= FD_EPS
            fd = (objective(plus) - objective(minus)) / (2 * FD_EPS)
            assert abs(fd - g.flat[i]) <= FD_TOL * scale, f"{name}[{i}]: fd {fd} vs analytic {g.flat[i]}"


def check_backward(case):
    """The C backward equals the float64 reference backward."""
    rng = np.random.default_rng(99)
    x32 = case.x32()
    out, cache = case.c_fwd(x32, case.consts)
    dout = case.make_dout(out.shape, rng)
    want = case.ref_bwd(case.inputs, case.consts, dout)
    got = case.c_bwd(x32, case.consts, f32(dout), cache)
    assert set(got) <= set(want)
    for name, g in got.items():
        if np.linalg.norm(want[name]) == 0:
            assert np.array_equal(g, np.zeros_like(g)), name
        else:
            assert rel_err(g, want[name]) < case.tol, name


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
# semantics the harness does not cover


def test_attention_probabilities_and_empty_rows():
    case = attention_case(B=3, Tq=6, Tk=6, NH=4, NKV=1, HS=8, seed=40, mask="empty-rows")
    out, att = case.c_fwd(case.x32(), case.consts)
    vis = case.consts["vis"]  # (B, Tq, Tk)
    want_p = attention_ref(case.inputs["q"], case.inputs["k"], case.inputs["v"], vis)[1]
    assert rel_err(att, want_p) < TOL
    assert np.all(att[~np.broadcast_to(vis[:, None], att.shape)] == 0)  # hidden keys get exactly 0
    empty = ~vis.any(axis=-1)  # (B, Tq)
    assert empty.any()
    assert np.all(out.transpose(0, 2, 1, 3)[np.broadcast_to(empty[:, None], (3, 4, 6))] == 0)


def test_attention_q_offset_equals_suffix_of_full_causal():
    """A chunk of queries at q_offset sees the same keys as the tail of the full causal sequence, and gets bit for
    bit the same outputs and probabilities (each is a fixed-order sum whatever the chunk): chunked prefill relies
    on it. T spans several query tiles and a partial one."""
    rng = np.random.default_rng(41)
    B, T, NH, NKV, HS = 2, 75, 4, 2, 20
    q, k, v = (f32(rng.standard_normal((B, T, n, HS))) for n in (NH, NKV, NKV))
    full, att = nans((B, T, NH, HS)), nans((B, NH, T, T))
    _core.attention_forward(full, att, q, k, v, None, True, 0)
    for off in (5, 70, 74):
        part, att2 = nans((B, T - off, NH, HS)), nans((B, NH, T - off, T))
        _core.attention_forward(part, att2, f32(q[:, off:]), k, v, None, True, off)
        np.testing.assert_array_equal(part, full[:, off:])
        np.testing.assert_array_equal(att2, att[:, :, off:])


def test_shortconv_state_continues_a_sequence():
    """Forward on [first | second] equals forward on `second` with state = the last L-1 u columns of `first`."""
    rng = np.random.default_rng(42)
    B, T, C, L, cut = 2, 9, 13, 4, 5
    z = f32(rng.standard_normal((B, T, 3 * C)))
    w = f32(rng.standard_normal((C, L)))
    y, u, c = nans((B, T, C)), nans((B, T, C)), nans((B, T, C))
    _core.shortconv_forward(y, u, c, z, w)
    state = f32(u[:, cut - (L - 1) : cut])
    y2, u2, c2 = nans((B, T - cut, C)), nans((B, T - cut, C)), nans((B, T - cut, C))
    _core.shortconv_forward(y2, u2, c2, f32(z[:, cut:]), w, state)
    np.testing.assert_allclose(y2, y[:, cut:], rtol=0, atol=1e-6)
    # and against the float64 reference with an explicit state
    want = shortconv_ref(z[:, cut:].astype(np.float64), w.astype(np.float64), state.astype(np.float64))[0]
    assert rel_err(y2, want) < TOL


def test_rope_in_place_and_inverse():
    rng = np.random.default_rng(43)
    x = f32(rng.standard_normal((6, 3, 16)))
    pos = np.arange(100, 106, dtype=I32)
    out = nans(x.shape)
    _core.rope_forward(out, x, pos, 1e6)
    y = x.copy()
    _core.rope_forward(y, y, pos, 1e6)  # out may alias inp
    np.testing.assert_array_equal(y, out)
    _core.rope_backward(y, y, pos, 1e6)  # rotating back recovers the input
    np.testing.assert_allclose(y, x, rtol=0, atol=1e-6)
    zero = nans(x.shape)
    _core.rope_forward(zero, x, np.zeros(6, dtype=I32), 1e6)  # position 0 is the identity
    np.testing.assert_array_equal(zero, x)


def test_crossentropy_backward_in_place_and_extremes():
    rng = np.random.default_rng(44)
    N, V = 4, 33
    logits = f32(rng.standard_normal((N, V)) * 50)  # wide spread: exp underflows for most entries
    logits[1, 3] = 1e4
    targets = np.array([0, 3, -100, 32], dtype=I32)
    want = nans((N, V))
    _core.crossentropy_backward(want, logits, targets, 0.5)
    dl = logits.copy()
    _core.crossentropy_backward(dl, dl, targets, 0.5)  # dlogits may alias logits
    np.testing.assert_array_equal(dl, want)
    assert np.all(want[2] == 0)
    np.testing.assert_allclose(want[[0, 1, 3]].sum(axis=-1), 0, atol=1e-6)  # softmax − onehot sums to 0
    losses = nans((N,))
    total = _core.crossentropy_forward(losses, logits, targets)
    assert np.all(np.isfinite(losses)) and losses[2] == 0 and abs(losses[1]) < 1e-3
    l64 = logits.astype(np.float64)
    ref = [np.log(np.exp(l64[n] - l64[n].max()).sum()) + l64[n].max() - l64[n, targets[n]] for n in (0, 1, 3)]
    assert math.isclose(total, sum(ref), rel_tol=1e-6)


def test_elementwise():
    rng = np.random.default_rng(45)
    for n in (5, 200_003):  # small, and past the threading threshold
        y = f32(rng.standard_normal(n))
        x = f32(rng.standard_normal(n))
        want = y + x
        _core.add_inplace(y, x)
        np.testing.assert_array_equal(y, want)
        _core.scale_inplace(y, 0.25)
        np.testing.assert_array_equal(y, want * F32(0.25))
        _core.zero(y)
        assert not y.any()
    m = f32(rng.standard_normal((3, 4)))
    with pytest.raises(ValueError, match="x"):
        _core.add_inplace(m, f32(np.ones((4, 3))))


def test_linear_skips_frozen_gradients():
    rng = np.random.default_rng(46)
    x, W, dout = f32(rng.standard_normal((4, 6))), f32(rng.standard_normal((5, 6))), f32(rng.standard_normal((4, 5)))
    dW = f32(rng.standard_normal((5, 6)))
    before = dW.copy()
    _core.linear_backward(None, dW, None, dout, x, W)  # only dW
    np.testing.assert_allclose(dW - before, dout.astype(np.float64).T @ x, rtol=0, atol=1e-5)
    dinp = nans((4, 6))
    _core.linear_backward(dinp, None, None, dout, x, W)  # only dinp (frozen weight, as under LoRA)
    np.testing.assert_allclose(dinp, dout.astype(np.float64) @ W, rtol=0, atol=1e-5)


def test_reductions_are_deterministic():
    """Reductions split work by channel or fixed row ranges: repeated calls give identical bits."""
    case = CASES[1]  # threaded embedding backward
    rng = np.random.default_rng(47)
    dout = f32(rng.standard_normal((300, 130)))
    ids = case.consts["ids"]
    a, b = np.zeros((40, 130), F32), np.zeros((40, 130), F32)
    _core.embedding_backward(a, dout, ids)
    _core.embedding_backward(b, dout, ids)
    np.testing.assert_array_equal(a, b)
    logits = f32(rng.standard_normal((64, 3000)))
    t = rng.integers(0, 3000, size=64).astype(I32)
    assert _core.crossentropy_forward(None, logits, t) == _core.crossentropy_forward(None, logits, t)


# ---------------------------------------------------------------------------------------------------------
# argument checking in the bindings: clear exceptions, never a crash


def test_bindings_reject_bad_arguments():
    x = np.zeros((4, 8), F32)
    w = np.ones(8, F32)
    with pytest.raises(TypeError, match="inp"):
        _core.rmsnorm_forward(x.copy(), np.zeros(4, F32), x.astype(np.float64), w, 1e-5)
    with pytest.raises(ValueError, match="rstd"):
        _core.rmsnorm_forward(x.copy(), np.zeros(5, F32), x, w, 1e-5)
    with pytest.raises(ValueError, match="contiguous"):
        _core.rmsnorm_forward(x.copy(), np.zeros(4, F32), np.zeros((8, 4), F32).T, w, 1e-5)
    with pytest.raises(ValueError, match="out"):
        _core.rmsnorm_forward(np.zeros((4, 8), F32)[:, :4], np.zeros(4, F32), x, w, 1e-5)
    ro = np.zeros((4, 8), F32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        _core.rmsnorm_forward(ro, np.zeros(4, F32), x, w, 1e-5)
    with pytest.raises(ValueError, match="inp"):
        _core.rmsnorm_forward(np.zeros((0, 8), F32), np.zeros(0, F32), np.zeros((0, 8), F32), w, 1e-5)
    wte = np.zeros((10, 8), F32)
    with pytest.raises(IndexError, match="ids"):
        _core.embedding_forward(np.zeros((2, 8), F32), np.array([3, 10], I32), wte)
    with pytest.raises(IndexError, match="ids"):
        _core.embedding_backward(wte, np.zeros((2, 8), F32), np.array([-1, 0], I32))
    with pytest.raises(TypeError, match="ids"):
        _core.embedding_forward(np.zeros((2, 8), F32), np.array([3, 1], np.int64), wte)
    logits = np.zeros((3, 10), F32)
    with pytest.raises(IndexError, match="targets"):
        _core.crossentropy_forward(None, logits, np.array([0, 10, -100], I32))
    with pytest.raises(IndexError, match="targets"):
        _core.crossentropy_backward(logits.copy(), logits, np.array([0, -2, 1], I32), 1.0)
    with pytest.raises(ValueError, match="weight"):
        _core.linear_forward(np.zeros((4, 3), F32), x, np.zeros((3, 7), F32))
    with pytest.raises(ValueError, match="multiple"):
        q = np.zeros((1, 2, 3, 4), F32)
        kv = np.zeros((1, 2, 2, 4), F32)
        _core.attention_forward(q.copy(), np.zeros((1, 3, 2, 2), F32), q, kv, kv)
    with pytest.raises(ValueError, match="key_mask"):
        q = np.zeros((1, 2, 2, 4), F32)
        kv = np.zeros((1, 3, 1, 4), F32)
        _core.attention_forward(q.copy(), np.zeros((1, 2, 2, 3), F32), q, kv, kv, np.ones((1, 2), I32))
    with pytest.raises(ValueError, match="even"):
        _core.rope_forward(np.zeros((2, 1, 5), F32), np.zeros((2, 1, 5), F32), np.zeros(2, I32), 1e6)
    with pytest.raises(ValueError, match="z"):
        _core.shortconv_forward(*(np.zeros((1, 2, 4), F32) for _ in range(3)), np.zeros((1, 2, 11), F32),
                                np.zeros((4, 3), F32))
    with pytest.raises(ValueError, match="state"):
        _core.shortconv_forward(*(np.zeros((1, 2, 4), F32) for _ in range(3)), np.zeros((1, 2, 12), F32),
                                np.zeros((4, 3), F32), np.zeros((1, 3, 4), F32))


# ---------------------------------------------------------------------------------------------------------
# optional: the same ops against torch autograd (pip install torch==2.13.0); skipped without torch


@pytest.mark.reference
def test_against_torch_autograd():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(50)
    # rmsnorm
    N, C, eps = 6, 24, 1e-5
    x, w = f32(rng.standard_normal((N, C))), f32(1 + 0.1 * rng.standard_normal(C))
    dout = f32(rng.standard_normal((N, C)))
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ty = tw * (tx * torch.rsqrt(tx.pow(2).mean(-1, keepdim=True) + eps))
    ty.backward(torch.tensor(dout))
    out, rstd = nans((N, C)), nans((N,))
    _core.rmsnorm_forward(out, rstd, x, w, eps)
    dx, dw = np.zeros((N, C), F32), np.zeros(C, F32)
    _core.rmsnorm_backward(dx, dw, dout, x, w, rstd)
    assert rel_err(out, ty.detach().numpy()) < TOL
    assert rel_err(dx, tx.grad.numpy()) < TOL and rel_err(dw, tw.grad.numpy()) < TOL
    # rope, as transformers builds it (rotate_half, fp32 inv_freq and angle)
    T, NH, HS, theta = 7, 3, 16, 1e6
    pos = np.array([0, 3, 100, 4095, 20000, 32767, 32000], dtype=I32)  # large positions: fp32 angles matter
    inv_freq = 1.0 / (theta ** (torch.arange(0, HS, 2, dtype=torch.int64).float() / HS))
    freqs = torch.tensor(pos).float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
    q = f32(rng.standard_normal((T, NH, HS)))
    tq = torch.tensor(q)
    rot = torch.cat([-tq[..., HS // 2 :], tq[..., : HS // 2]], dim=-1)
    want = (tq * cos + rot * sin).numpy()
    got = nans((T, NH, HS))
    _core.rope_forward(got, q, pos, theta)
    assert np.max(np.abs(got - want)) < 1e-5
    # attention: GQA, causal, eager softmax in fp32
    B, T, NH, NKV, HS = 2, 5, 4, 2, 8
    q, k, v = (f32(rng.standard_normal((B, T, n, HS))) for n in (NH, NKV, NKV))
    dout = f32(rng.standard_normal((B, T, NH, HS)))
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    qh = tq.transpose(1, 2)
    kh = tk.transpose(1, 2).repeat_interleave(NH // NKV, dim=1)
    vh = tv.transpose(1, 2).repeat_interleave(NH // NKV, dim=1)
    s = qh @ kh.transpose(-1, -2) * HS**-0.5
    s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    to = (torch.softmax(s, dim=-1) @ vh).transpose(1, 2)
    to.backward(torch.tensor(dout))
    out, att = nans((B, T, NH, HS)), nans((B, NH, T, T))
    _core.attention_forward(out, att, q, k, v, None, True, 0)
    dq, dk, dv = nans(q.shape), nans(k.shape), nans(v.shape)
    _core.attention_backward(dq, dk, dv, dout, q, k, v, att)
    assert rel_err(out, to.detach().numpy()) < TOL
    for got, t in ((dq, tq), (dk, tk), (dv, tv)):
        assert rel_err(got, t.grad.numpy()) < TOL


@pytest.mark.reference
def test_shortconv_swiglu_crossentropy_against_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(51)
    # shortconv exactly as transformers' Lfm2ShortConv slow path: chunk(3) as B, C, x; depthwise Conv1d with
    # padding L-1, first T outputs kept
    B, T, C, L = 2, 7, 12, 3
    z = f32(rng.standard_normal((B, T, 3 * C)))
    w = f32(rng.standard_normal((C, L)))
    dy = f32(rng.standard_normal((B, T, C)))
    tz, tw = torch.tensor(z, requires_grad=True), torch.tensor(w, requires_grad=True)
    bg, cg, xv = tz.transpose(-1, -2).chunk(3, dim=-2)
    conv = F.conv1d(bg * xv, tw[:, None, :], groups=C, padding=L - 1)[..., :T]
    ty = (cg * conv).transpose(-1, -2)
    ty.backward(torch.tensor(dy))
    y, u, c = nans((B, T, C)), nans((B, T, C)), nans((B, T, C))
    _core.shortconv_forward(y, u, c, z, w)
    dz, dw = nans(z.shape), np.zeros_like(w)
    _core.shortconv_backward(dz, dw, dy, z, u, c, w)
    assert rel_err(y, ty.detach().numpy()) < TOL
    assert rel_err(dz, tz.grad.numpy()) < TOL and rel_err(dw, tw.grad.numpy()) < TOL
    # swiglu = F.silu(w1 x) * (w3 x)
    g, up, d = (f32(rng.standard_normal((5, 33)) * 3) for _ in range(3))
    tg, tu = torch.tensor(g, requires_grad=True), torch.tensor(up, requires_grad=True)
    to = F.silu(tg) * tu
    to.backward(torch.tensor(d))
    out, dg, du = nans(g.shape), nans(g.shape), nans(g.shape)
    _core.swiglu_forward(out, g, up)
    _core.swiglu_backward(dg, du, d, g, up)
    assert rel_err(out, to.detach().numpy()) < TOL
    assert rel_err(dg, tg.grad.numpy()) < TOL and rel_err(du, tu.grad.numpy()) < TOL
    # cross-entropy, mean over counted tokens with ignore_index -100
    N, V = 8, 301
    logits = f32(rng.standard_normal((N, V)) * 5)
    targets = rng.integers(0, V, size=N).astype(I32)
    targets[[1, 6]] = -100
    tl = torch.tensor(logits, requires_grad=True)
    loss = F.cross_entropy(tl, torch.tensor(targets, dtype=torch.long), ignore_index=-100)
    loss.backward()
    count = int((targets != -100).sum())
    total = _core.crossentropy_forward(None, logits, targets)
    dl = nans(logits.shape)
    _core.crossentropy_backward(dl, logits, targets, 1.0 / count)
    assert math.isclose(total / count, loss.item(), rel_tol=1e-6)
    assert rel_err(dl, tl.grad.numpy()) < TOL
