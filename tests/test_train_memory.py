"""Training-memory layout: only the rows with a target reach the LM head, packed into blocks of rows (never the
whole (N, V) logits), and the layers' RMSNorm outputs, SwiGLU output, rotated q/k and short-conv buffers live
in shared buffers recomputed in backward. Checked where it matters: a vocabulary large enough that the
head takes several blocks, against the full logits' NumPy cross-entropy and central differences."""

from __future__ import annotations

import numpy as np
import pytest

import captionaura as ca

VOCAB = 131072  # 64 rows per 32 MB block of logits: the 139 positions with a target take three blocks


def big_vocab_model() -> ca.Lfm2Model:
    cfg = ca.Lfm2Config(vocab_size=VOCAB, hidden_size=8, intermediate_size=24, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, block_auto_adjust_ff_dim=False,
                        layer_types=["conv", "full_attention"], initializer_range=0.5)
    return ca.Lfm2Model.from_config(cfg, seed=0)


def numpy_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean causal-LM cross-entropy (position t predicts labels[t+1], -100 ignored) in float64."""
    y = labels[0, 1:]
    kept = np.flatnonzero(y != -100)
    z = logits[0, :-1].astype(np.float64)[kept]
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(kept.size), y[kept]].mean())


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, (1, 151)).astype(np.int32)
    labels = ids.copy()
    labels[0, :5] = labels[0, 30:36] = -100  # unscored rows before and inside the packed blocks
    return ids, labels


def test_blocked_loss_equals_the_full_logits_cross_entropy(batch):
    ids, labels = batch
    model = big_vocab_model()
    model.add_lora(ca.LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    loss = model.loss_and_grad(ids, labels)
    assert loss == pytest.approx(numpy_loss(model.forward(ids).logits, labels), rel=1e-5)


def finite_difference(loss_fn, values: np.ndarray, index: int, eps: float = 1e-2) -> float:
    old = values[index]
    values[index] = old + eps
    up = loss_fn()
    values[index] = old - eps
    down = loss_fn()
    values[index] = old
    return (up - down) / (2 * eps)


def test_lora_gradients_through_blocked_head_and_recomputed_swiglu_match_finite_differences(batch):
    ids, labels = batch
    model = big_vocab_model()
    model.add_lora(ca.LoraConfig(r=2, target_modules=["w2", "w1", "q_proj"], init_lora_weights=False), seed=1)
    vec = model.lora_vector()
    model.loss_and_grad(ids, labels)
    grad = model._core.lora_grads().copy()
    modules = {m["module"]: m for m in model.lora_modules()}
    picks = [modules[f"model.layers.{layer}.feed_forward.w2"]["a_offset"] + k for layer in (0, 1) for k in (0, 5)]
    picks += list(np.random.default_rng(1).choice(vec.size, 6, replace=False))
    for i in picks:
        fd = finite_difference(lambda: model.loss_and_grad(ids, labels), vec, int(i))
        assert fd == pytest.approx(grad[i], abs=2e-4, rel=2e-2)


def test_tied_head_gradient_adds_up_over_the_blocks(batch):
    """Full fine-tuning: the tied embedding / LM-head gradient collects every block's contribution."""
    ids, labels = batch
    model = big_vocab_model()
    model.loss_and_grad(ids, labels)
    weight = model.parameters()["model.embed_tokens.weight"].reshape(-1)
    grad = model.gradients()["model.embed_tokens.weight"].reshape(-1).copy()
    hidden = model.config.hidden_size
    rows = [int(ids[0, 6]), int(ids[0, 100]), int(ids[0, 150]), 7]  # targets in the first, second, last block; unused
    for row in rows:
        i = row * hidden + 3
        fd = finite_difference(lambda: model.loss_and_grad(ids, labels), weight, i)
        assert fd == pytest.approx(grad[i], abs=2e-4, rel=2e-2)
