"""bf16 inference weights (``to_inference_dtype("bf16")``): the rounding is IEEE round-to-nearest-even as torch's
``.to(torch.bfloat16)``; the bf16 decoding GEMV equals the fp32 GEMM on the same rounded weights; logits stay
close to the fp32 model's and greedy tokens equal transformers' (fp32) for a short horizon on the fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import captionaura as ca
from captionaura import _core

FIXTURES = Path(__file__).parent / "reference" / "fixtures"
NAMES = ["mixed", "odd", "conv_only", "attn_only"]


def load(name: str) -> ca.Lfm2Model:
    return ca.Lfm2Model.from_pretrained(FIXTURES / "lfm2" / name)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even to the top 16 bits of each float32 (finite inputs)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32)


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


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("name", NAMES)
def test_bf16_steps_equal_fp32_gemm_on_rounded_weights(name, isa):
    """One-token steps run the bf16 GEMV; the full forward runs fp32 GEMMs on the same rounded weights."""
    if isa == "avx512":
        try:
            _core.lowp_isa("avx512")
        except ValueError:
            pytest.skip("this CPU has no AVX-512")
    else:
        _core.lowp_isa(isa)
    try:
        model = load(name).to_inference_dtype("bf16")
        ids = np.random.default_rng(0).integers(1, model.config.vocab_size, 20).astype(np.int32)
        np.testing.assert_allclose(steps(model, ids, 5), model.forward(ids).logits[0], atol=1e-4, rtol=0)
    finally:
        _core.lowp_isa("auto")


@pytest.mark.parametrize("name", NAMES)
def test_bf16_logits_close_to_fp32(name):
    """bf16 weights round each weight by up to 2⁻⁹ relative; through the layers that moves the fixtures' step
    logits by about 1% of their spread on average (measured 0.6–1.2%, worst 3.6–8.3%). Bounds: mean 2%, worst 15%
    of the spread, and the same argmax at every step."""
    fp32 = load(name)
    ids = np.random.default_rng(1).integers(1, fp32.config.vocab_size, 20).astype(np.int32)
    want = steps(fp32, ids, 5)
    got = steps(load(name).to_inference_dtype("bf16"), ids, 5)
    err = np.abs(got - want)
    assert err.mean() <= 0.02 * want.std() and err.max() <= 0.15 * want.std()
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.parametrize("name", ["mixed", "odd", "attn_only"])
def test_bf16_greedy_tokens_equal_transformers_fp32(name):
    """transformers' fp32 greedy tokens (tests/reference/make_generate_reference.py) up to the first step whose
    fp32 top-2 margin is under 5% of the logit spread (4x the mean bf16 error above), at most 16 steps."""
    fp32, bf16 = load(name), load(name).to_inference_dtype("bf16")
    ref = dict(np.load(FIXTURES / "generate" / f"{name}.npz"))
    checked = 0
    for i in range(3):
        prompt, new = ref[f"prompt.{i}"].ravel().astype(np.int32), ref[f"greedy__new.{i}"][0, :16].astype(np.int32)
        logits = steps(fp32, np.concatenate([prompt, new]), len(prompt))[len(prompt) - 1:-1]  # (16, V)
        top2 = np.sort(logits, axis=-1)[:, -2:]
        small = np.flatnonzero(top2[:, 1] - top2[:, 0] < 0.05 * logits.std())
        horizon = int(small[0]) if len(small) else len(new)
        out = bf16.generate(prompt, max_new_tokens=16, min_new_tokens=16, eos_token_id=ref["eos.greedy"].tolist(),
                            pad_token_id=0)
        np.testing.assert_array_equal(out[0, :horizon], new[:horizon])
        checked += horizon
    assert checked >= 12  # the margins leave enough steps for the test to mean something


def test_bf16_batched_equals_one_by_one():
    model = load("mixed").to_inference_dtype("bf16")
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
    model.to_inference_dtype("bf16")
    ids = np.arange(1, 9, dtype=np.int32)[None]
    with pytest.raises(ValueError, match="before training"):
        model.loss_and_grad(ids, ids)
    model.to_inference_dtype("fp32")
    assert np.isfinite(model.loss_and_grad(ids, ids))
