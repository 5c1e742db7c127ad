"""bf16 / int8 inference weights (``to_inference_dtype``): the bf16 rounding is IEEE round-to-nearest-even as
torch's ``.to(torch.bfloat16)``, int8 is symmetric per-row absmax (as a NumPy version here); the bf16 decoding
GEMV equals the fp32 GEMM on the same rounded weights; the int8 GEMV (activations quantised per block of 32,
integer dot products) equals a NumPy version of that scheme; logits stay close to the fp32 model's and greedy
tokens equal transformers' (fp32) for a short horizon where the margins allow, on the fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import captionaura as ca
from captionaura import _core

FIXTURES = Path(__file__).parent / "reference" / "fixtures"
NAMES = ["mixed", "odd", "conv_only", "attn_only"]
# step-logit error vs fp32, as fractions of the logits' spread: (mean bound, worst bound). Measured on the
# fixtures: bf16 mean 0.6-1.2%, worst 3.6-8.3%; int8 (per-row scales over rows of 32-64) mean 1.7-3.4%,
# worst 12-25%.
ERROR_BOUND = {"bf16": (0.02, 0.15), "int8": (0.05, 0.35)}
# greedy steps are compared while fp32's top-2 margin exceeds this fraction of the spread (about 4x the mean
# error), and at least this many steps must be compared over the three prompts
GREEDY_MARGIN = {"bf16": (0.05, 12), "int8": (0.15, 4)}


def load(name: str) -> ca.Lfm2Model:
    return ca.Lfm2Model.from_pretrained(FIXTURES / "lfm2" / name)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even to the top 16 bits of each float32 (finite inputs)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32)


def q8_round(w: np.ndarray) -> np.ndarray:
    """Rows rounded to scale * q, q = rint(w * 127 / max|row|) in [-127, 127], scale = max|row| / 127."""
    amax = np.abs(w).max(axis=1, keepdims=True).astype(np.float32)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.clip(np.rint(w * inv), -127, 127).astype(np.float32)
    return (amax / np.float32(127)) * q


def steps(model, ids: np.ndarray, prefill: int) -> np.ndarray:
    """Logits of a prefill of `prefill` tokens then one-token steps over the rest of `ids`, (T, V)."""
    V = model.config.vocab_size
    cache = model._core.new_cache(len(ids))
    out = []
    for lo, hi in [(0, prefill)] + [(t, t + 1) for t in range(prefill, len(ids))]:
        logits = np.empty((1, hi - lo, V), np.float32)
        model._core.forward_cached([cache], ids[None, lo:hi], np.array([hi - lo], np.int32), logits, True)
        out.append(logits[0])
    return np.concatenate(out)


def test_rounding_is_round_to_nearest_even():
    model = load("mixed")
    before = model._core.params().copy()
    model.to_inference_dtype("bf16")
    assert model.inference_dtype == "bf16"
    np.testing.assert_array_equal(model._core.params(), bf16_round(before))
    # hand-checked values: ties go to the even neighbour, others to the nearest
    one = np.float32(1.0)
    cases = {1 + 2.0**-8: one, 1 + 3 * 2.0**-8: 1 + 2.0**-6, 1 + 2.0**-8 + 2.0**-20: 1 + 2.0**-7, -2.5: -2.5}
    for x, want in cases.items():
        assert bf16_round(np.array([x], np.float32))[0] == np.float32(want)
    model.to_inference_dtype("fp32")  # keeps the rounded values
    assert model.inference_dtype == "fp32"
    np.testing.assert_array_equal(model._core.params(), bf16_round(before))


def test_int8_rounds_each_matrix_row():
    model = load("odd")
    before = {name: w.copy() for name, w in model.parameters().items()}
    model.to_inference_dtype("int8")
    assert model.inference_dtype == "int8"
    for name, w in model.parameters().items():
        want = q8_round(before[name]) if w.ndim == 2 else before[name]
        np.testing.assert_allclose(w, want, rtol=1e-6, atol=0, err_msg=name)


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
@pytest.mark.parametrize("name", NAMES)
def test_lowp_prefill_equals_forward_and_steps_stay_close(name, isa, dtype):
    """A cached prefill runs the same GEMMs as the full forward (inputs rounded to bf16, the bf16 GEMM on the bf16
    or int8 weights): equal logits. (The AVX2 fallback's OpenBLAS sums in an order that depends on the row count,
    and rounding to bf16 turns a last-bit difference into a bf16 step: there, within the dtype's bounds.)
    One-token steps run the GEMVs (bf16: fp32 inputs; int8: inputs quantised per block of 32, relative error up
    to 1/254 of the block's max): close, within the dtype's bounds vs fp32 (ERROR_BOUND; measured: mean
    0.3-3.4%, worst 2-24% of the spread on the fixtures)."""
    model = load(name).to_inference_dtype(dtype)
    ids = np.random.default_rng(0).integers(1, model.config.vocab_size, 20).astype(np.int32)
    got, want = steps(model, ids, 5), model.forward(ids).logits[0]
    mean_bound, worst_bound = ERROR_BOUND[dtype]
    spread = want.std()
    if isa == "avx512":
        np.testing.assert_allclose(got[:5], want[:5], atol=1e-4, rtol=0)
    else:
        assert np.abs(got - want)[:5].max() <= worst_bound * spread
    err = np.abs(got - want)[5:]
    assert err.mean() <= mean_bound * spread and err.max() <= worst_bound * spread


def q8_gemv_reference(x: np.ndarray, q: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The int8 GEMV's scheme in NumPy: x (N, C) quantised per block of 32 (d = max|x_b| / 127, qx =
    rint(x · 127 / max|x_b|), float32 as the C does), exact integer block sums, out = scale · Σ_b d_b · Σ q·qx.
    Returns out (float64) and the sum of the terms' magnitudes (the scale of the float32 rounding error)."""
    N, C = x.shape
    nb = -(-C // 32)
    xp = np.zeros((N, nb * 32), np.float32)
    xp[:, :C] = x
    xb = xp.reshape(N, nb, 32)
    amax = np.abs(xb).max(-1, keepdims=True)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    qx = np.clip(np.rint(xb * inv), -127, 127).astype(np.int64)
    d = (amax / np.float32(127)).astype(np.float64)[..., 0]  # (N, nb)
    qp = np.zeros((q.shape[0], nb * 32), np.int64)
    qp[:, :C] = q
    qb = qp.reshape(-1, nb, 32)
    dots = np.einsum("nbk,obk->nob", qx, qb)  # exact integers (N, OC, nb)
    mags = np.einsum("nbk,obk->nob", np.abs(qx), np.abs(qb))
    out = scale[None, :] * (dots * d[:, None, :]).sum(-1)
    return out, np.abs(scale)[None, :] * (mags * d[:, None, :]).sum(-1)


@pytest.mark.parametrize("C", [1024, 4608, 96, 40, 7])
def test_q8_gemv_equals_numpy_scheme(isa, C):
    rng = np.random.default_rng(C)
    N, OC = 6, 67  # inputs go four at a time: a group of 4, then one of 2
    x = rng.standard_normal((N, C)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block (d = 0)
    x[1, 3] = 40.0  # one large entry: its block's other values round coarsely
    q = rng.integers(-127, 128, (OC, C)).astype(np.int8)
    q[5] = 0
    q[6] = 127
    q[7] = -127
    scale = rng.uniform(0.001, 0.1, OC).astype(np.float32)
    out = np.full((N, OC), np.nan, np.float32)
    _core.linear_q8_forward(out, x, q, scale)
    want, mag = q8_gemv_reference(x, q, scale)
    assert np.all(np.abs(out - want) <= 1e-5 * mag + 1e-30), np.abs(out - want).max()
    assert_rows_equal_one_by_one(_core.linear_q8_forward, out, x, q, scale)
    # the activations' quantisation is what separates it from the fp32 product (guards the test's power)
    assert np.abs(want - (x.astype(np.float64) @ (q * scale[:, None]).T)).max() > 1e-4 * mag.max()


@pytest.mark.parametrize("C", [1024, 4608, 40, 7])
def test_bf16_gemm_equals_numpy(isa, C):
    """The prefill GEMM: bf16(x) · W with fp32 sums, 19 rows (tiles of 8 and a tail) × 45 columns (a panel of
    32 and a partial one). The AVX512-BF16 kernel gives each row bit for bit what the row alone gives (the AVX2
    fallback calls OpenBLAS, whose order depends on the row count)."""
    rng = np.random.default_rng(C + 1)
    w = bf16_round(rng.standard_normal((45, C)).astype(np.float32))
    bits = (w.view(np.uint32) >> 16).astype(np.uint16)
    x = rng.standard_normal((19, C)).astype(np.float32)
    out = np.full((19, 45), np.nan, np.float32)
    _core.linear_bf16_gemm_forward(out, x, bits, w)
    xr = bf16_round(x).astype(np.float64)
    want = xr @ w.astype(np.float64).T
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-5 * (np.abs(xr) @ np.abs(w).T).max())
    assert np.abs(want - x.astype(np.float64) @ w.astype(np.float64).T).max() > 1e-3  # x's rounding shows
    if isa == "avx512":
        assert_rows_equal_one_by_one(_core.linear_bf16_gemm_forward, out, x, bits, w)


@pytest.mark.parametrize("C", [1024, 40, 7])
def test_q8_gemm_equals_numpy(isa, C):
    """int8 weights' prompts: scale[o] · Σ_k bf16(x)[n, k] · q[o, k] with fp32 sums (q is exact in bf16), rows
    bit for bit as alone on AVX512-BF16."""
    rng = np.random.default_rng(C + 2)
    q = rng.integers(-127, 128, (45, C)).astype(np.int8)
    q[3] = 0
    scale = rng.uniform(0.001, 0.1, 45).astype(np.float32)
    w = (scale[:, None] * q).astype(np.float32)
    x = rng.standard_normal((19, C)).astype(np.float32)
    out = np.full((19, 45), np.nan, np.float32)
    _core.linear_q8_gemm_forward(out, x, q, scale, w)
    xr = bf16_round(x).astype(np.float64)
    want = (xr @ q.T.astype(np.float64)) * scale
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-5 * ((np.abs(xr) @ np.abs(q).T) * scale).max())
    assert np.abs(want - x.astype(np.float64) @ w.T.astype(np.float64)).max() > 1e-4  # x's rounding shows
    if isa == "avx512":
        assert_rows_equal_one_by_one(_core.linear_q8_gemm_forward, out, x, q, scale, w)


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("C, OC", [(1024, 45), (45, 1024), (7, 4101), (40, 9)])
def test_bf16_gemm_backward_equals_numpy(isa, C, OC, accumulate):
    """The input gradient through a frozen bf16 weight: dinp (=, or += with accumulate) bf16(dout) · W with fp32
    sums, 19 rows × C columns (a panel of 32 and a partial one); OC = 4101 is odd and spans two chunks of the
    reduction. Each row gets bit for bit what the row alone gets."""
    rng = np.random.default_rng(C * OC)
    w = bf16_round(rng.standard_normal((OC, C)).astype(np.float32))
    bits = (w.view(np.uint32) >> 16).astype(np.uint16)
    dout = rng.standard_normal((19, OC)).astype(np.float32)
    start = rng.standard_normal((19, C)).astype(np.float32)
    dinp = start.copy()
    _core.linear_bf16_gemm_backward(dinp, dout, bits, w, accumulate)
    dr = bf16_round(dout).astype(np.float64)
    want = dr @ w.astype(np.float64) + (start if accumulate else 0)
    np.testing.assert_allclose(dinp, want, rtol=0, atol=1e-5 * (np.abs(dr) @ np.abs(w)).max() + 1e-6)
    assert np.abs(dr @ w - dout.astype(np.float64) @ w).max() > 1e-3  # dout's rounding shows
    if isa == "avx512":
        for n in range(19):
            one = start[n:n + 1].copy()
            _core.linear_bf16_gemm_backward(one, dout[n:n + 1], bits, w, accumulate)
            np.testing.assert_array_equal(one[0], dinp[n])


@pytest.mark.parametrize("N, C, OC", [(256, 45, 70), (19, 1024, 33), (4101, 7, 9), (1, 40, 3)])
def test_bf16_weight_grad_equals_numpy(isa, N, C, OC):
    """A bf16 model's weight gradient: dW += bf16(dout)ᵀ · bf16(inp) with fp32 sums over the N rows (N = 4101:
    odd, two chunks of the reduction)."""
    rng = np.random.default_rng(N + C + OC)
    dout = rng.standard_normal((N, OC)).astype(np.float32)
    inp = rng.standard_normal((N, C)).astype(np.float32)
    start = rng.standard_normal((OC, C)).astype(np.float32)
    dw = start.copy()
    _core.linear_bf16_gemm_weight_grad(dw, dout, inp)
    dr, xr = bf16_round(dout).astype(np.float64), bf16_round(inp).astype(np.float64)
    want = start + dr.T @ xr
    np.testing.assert_allclose(dw, want, rtol=0, atol=1e-5 * (np.abs(dr).T @ np.abs(xr)).max() + 1e-6)
    assert np.abs(dr.T @ xr - dout.T.astype(np.float64) @ inp).max() > 1e-4  # the rounding shows


@pytest.mark.parametrize("weights", ["bf16", "fp32"])
@pytest.mark.parametrize("C", [1024, 4608, 40, 7])
def test_gemv_equals_numpy(isa, C, weights):
    """The decoding GEMV on bf16 weights (the bf16 mode) and on fp32 weights (the fp32 model's steps)."""
    rng = np.random.default_rng(C)
    w = rng.standard_normal((53, C)).astype(np.float32)
    if weights == "bf16":
        w = bf16_round(w)
        gemv, operand = _core.linear_bf16_forward, (w.view(np.uint32) >> 16).astype(np.uint16)
    else:
        gemv, operand = _core.linear_f32_gemv_forward, w
    x = rng.standard_normal((5, C)).astype(np.float32)
    out = np.full((5, 53), np.nan, np.float32)
    gemv(out, x, operand)
    want = x.astype(np.float64) @ w.astype(np.float64).T
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-5 * (np.abs(x) @ np.abs(w).T).max())
    assert_rows_equal_one_by_one(gemv, out, x, operand)


def assert_rows_equal_one_by_one(gemv, out: np.ndarray, x: np.ndarray, *weights: np.ndarray) -> None:
    """A batch of inputs (read four at a time) gives each row bit for bit what the input alone gives: batched
    decoding equals one-by-one decoding."""
    for n in range(len(x)):
        one = np.empty((1, out.shape[1]), np.float32)
        gemv(one, x[n:n + 1], *weights)
        np.testing.assert_array_equal(one[0], out[n])


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
@pytest.mark.parametrize("name", NAMES)
def test_lowp_logits_close_to_fp32(name, dtype):
    """bf16 rounds each weight by up to 2⁻⁹ relative, int8 by up to half a step of max|row| / 127; the step
    logits' error is bounded by ERROR_BOUND, and the argmax agrees wherever fp32's top-2 margin exceeds the
    worst-case bound."""
    mean_bound, worst_bound = ERROR_BOUND[dtype]
    fp32 = load(name)
    ids = np.random.default_rng(1).integers(1, fp32.config.vocab_size, 20).astype(np.int32)
    want = steps(fp32, ids, 5)
    got = steps(load(name).to_inference_dtype(dtype), ids, 5)
    err, spread = np.abs(got - want), want.std()
    assert err.mean() <= mean_bound * spread and err.max() <= worst_bound * spread
    top2 = np.sort(want, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * worst_bound * spread
    np.testing.assert_array_equal(got.argmax(-1)[clear], want.argmax(-1)[clear])


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
@pytest.mark.parametrize("name", ["mixed", "odd", "attn_only"])
def test_lowp_greedy_tokens_equal_transformers_fp32(name, dtype):
    """transformers' fp32 greedy tokens (tests/reference/make_generate_reference.py) up to the first step whose
    fp32 top-2 margin is under GREEDY_MARGIN, at most 16 steps."""
    margin, at_least = GREEDY_MARGIN[dtype]
    fp32, lowp = load(name), load(name).to_inference_dtype(dtype)
    ref = dict(np.load(FIXTURES / "generate" / f"{name}.npz"))
    checked = 0
    for i in range(3):
        prompt, new = ref[f"prompt.{i}"].ravel().astype(np.int32), ref[f"greedy__new.{i}"][0, :16].astype(np.int32)
        logits = steps(fp32, np.concatenate([prompt, new]), len(prompt))[len(prompt) - 1:-1]  # (16, V)
        top2 = np.sort(logits, axis=-1)[:, -2:]
        small = np.flatnonzero(top2[:, 1] - top2[:, 0] < margin * logits.std())
        horizon = int(small[0]) if len(small) else len(new)
        out = lowp.generate(prompt, max_new_tokens=16, min_new_tokens=16, eos_token_id=ref["eos.greedy"].tolist(),
                            pad_token_id=0)
        np.testing.assert_array_equal(out[0, :horizon], new[:horizon])
        checked += horizon
    assert checked >= at_least  # the margins leave enough steps for the test to mean something


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_lowp_batched_equals_one_by_one(dtype):
    model = load("mixed").to_inference_dtype(dtype)
    rng = np.random.default_rng(2)
    prompts = [rng.integers(1, model.config.vocab_size, n).astype(np.int32) for n in (5, 9, 3)]
    one = [model.generate(p, max_new_tokens=12, min_new_tokens=12, eos_token_id=0)[0] for p in prompts]
    width = max(len(p) for p in prompts)
    ids = np.zeros((3, width), np.int32)
    mask = np.zeros((3, width), np.int32)
    for b, p in enumerate(prompts):  # left padding, as transformers batches decoder-only prompts
        ids[b, width - len(p):], mask[b, width - len(p):] = p, 1
    batched = model.generate(ids, mask, max_new_tokens=12, min_new_tokens=12, eos_token_id=0)
    for b in range(3):
        np.testing.assert_array_equal(batched[b], one[b])


def test_bad_settings_raise():
    model = load("mixed")
    with pytest.raises(ValueError, match="inference dtype"):
        model.to_inference_dtype("fp16")
    with pytest.raises(ValueError, match="instruction set"):
        _core.lowp_isa("neon")
    model.to_inference_dtype("int8")
    ids = np.arange(1, 9, dtype=np.int32)[None]
    with pytest.raises(ValueError, match="before training"):
        model.loss_and_grad(ids, ids)
    model.to_inference_dtype("fp32")
    assert np.isfinite(model.loss_and_grad(ids, ids))
