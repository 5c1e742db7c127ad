"""Decoding caches: the cached forward (prefill, chunked prefill, one-token steps, batches of sequences at
different positions) equals recomputing the whole sequence, on the transformers-checked fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import captionaura as ca

FIXTURES = Path(__file__).parent / "reference" / "fixtures" / "lfm2"
NAMES = ["mixed", "odd", "conv_only", "attn_only"]


@pytest.fixture(scope="module", params=NAMES)
def model(request):
    return ca.Lfm2Model.from_pretrained(FIXTURES / request.param)


def sequence(model, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, model.config.vocab_size, n).astype(np.int32)


def step(model, cache, tokens: np.ndarray) -> np.ndarray:
    logits = np.empty((1, len(tokens), model.config.vocab_size), np.float32)
    model._core.forward_cached([cache], tokens[None], np.array([len(tokens)], np.int32), logits, True)
    return logits[0]


def test_chunked_prefill_and_steps_equal_full_recomputation(model):
    ids = sequence(model, 24)
    full = model.forward(ids).logits[0]
    cache = model._core.new_cache(32)
    pieces = [step(model, cache, ids[:7]), step(model, cache, ids[7:11])]
    pieces += [step(model, cache, ids[t: t + 1]) for t in range(11, 24)]
    assert cache.length == 24
    np.testing.assert_allclose(np.concatenate(pieces), full, atol=1e-4, rtol=0)


def test_batch_of_sequences_at_different_positions(model):
    V = model.config.vocab_size
    a, b = sequence(model, 12, 1), sequence(model, 9, 2)
    ca_, cb = model._core.new_cache(16), model._core.new_cache(16)
    step(model, ca_, a[:5])  # sequence a is 5 tokens in, b is empty
    ids = np.zeros((2, 7), np.int32)
    ids[0, :7], ids[1, :4] = a[5:12], b[:4]
    last = np.empty((2, V), np.float32)
    model._core.forward_cached([ca_, cb], ids, np.array([7, 4], np.int32), last)
    np.testing.assert_allclose(last[0], model.forward(a).logits[0, -1], atol=1e-4, rtol=0)
    np.testing.assert_allclose(last[1], model.forward(b[:4]).logits[0, -1], atol=1e-4, rtol=0)
    assert (ca_.length, cb.length) == (12, 4)


def test_copy_and_reset(model):
    ids = sequence(model, 10, 3)
    c1, c2 = model._core.new_cache(12), model._core.new_cache(12)
    step(model, c1, ids[:8])
    c2.copy_from(c1)
    np.testing.assert_array_equal(step(model, c1, ids[8:9]), step(model, c2, ids[8:9]))
    c1.reset()
    assert c1.length == 0
    np.testing.assert_allclose(step(model, c1, ids[:3]), model.forward(ids[:3]).logits[0], atol=1e-4, rtol=0)


def test_cache_overflow_and_bad_ids(model):
    cache = model._core.new_cache(4)
    with pytest.raises(ValueError, match="cache holds 4"):
        step(model, cache, sequence(model, 5))
    assert cache.length == 0
    with pytest.raises(IndexError, match="vocabulary"):
        step(model, cache, np.array([model.config.vocab_size], np.int32))
