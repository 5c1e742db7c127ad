"""Trainer: schedules, gradient accumulation, checkpoints and exact resume, collation errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import captionaura as ca
from captionaura.trainer import Trainer, TrainingConfig, collate, lr_factor


def tiny_model() -> ca.Lfm2Model:
    cfg = ca.Lfm2Config(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, block_auto_adjust_ff_dim=False,
                        layer_types=["conv", "full_attention"], initializer_range=0.3)
    model = ca.Lfm2Model.from_config(cfg, seed=0)
    model.add_lora(ca.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"), seed=1)
    return model


def examples(n: int = 12, length: int | None = None) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        ids = rng.integers(1, 48, length or int(rng.integers(6, 12))).astype(np.int32)
        labels = ids.copy()
        labels[:3] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


def test_schedules_follow_their_definitions():
    assert lr_factor("constant", 0, 4, 10) == 0.0 and lr_factor("constant", 2, 4, 10) == 0.5
    assert lr_factor("linear", 4, 4, 10) == 1.0 and lr_factor("linear", 10, 4, 10) == 0.0
    assert lr_factor("linear", 7, 4, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 7, 4, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 5, 4, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 6)))


@pytest.mark.reference
def test_schedules_equal_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    for name, make in (("linear", transformers.get_linear_schedule_with_warmup),
                       ("cosine", transformers.get_cosine_schedule_with_warmup)):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make(opt, 3, 11)
        for step in range(11):
            assert opt.param_groups[0]["lr"] == pytest.approx(lr_factor(name, step, 3, 11)), (name, step)
            opt.step()
            sched.step()


def test_training_reduces_loss_and_freezes_base():
    model = tiny_model()
    base = model.parameters()["model.layers.0.feed_forward.w1.weight"].copy()
    cfg = TrainingConfig(max_steps=30, batch_size=4, optimizer=ca.AdamWConfig(lr=1e-2), progressbar=False)
    history = Trainer(model, examples(), cfg).train()
    assert len(history) == 30 and history[-1]["loss"] < 0.5 * history[0]["loss"]
    np.testing.assert_array_equal(model.parameters()["model.layers.0.feed_forward.w1.weight"], base)


def test_gradient_accumulation_equals_one_big_batch():
    data = examples(8, length=9)  # equal lengths: the mean over micro-batches is the mean over the batch
    results = []
    for bs, accum in ((4, 1), (2, 2)):
        model = tiny_model()
        model.add_lora(ca.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), seed=1)  # no dropout
        cfg = TrainingConfig(max_steps=2, batch_size=bs, gradient_accumulation_steps=accum,
                             optimizer=ca.AdamWConfig(lr=1e-2), progressbar=False)
        history = Trainer(model, data, cfg).train()
        results.append((history, model.lora_vector().copy()))
    (h1, v1), (h2, v2) = results
    assert h1[0]["loss"] == pytest.approx(h2[0]["loss"], rel=1e-5)
    np.testing.assert_allclose(v1, v2, atol=1e-5)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    cfg = dict(max_steps=6, batch_size=4, optimizer=ca.AdamWConfig(lr=1e-2), lr_scheduler="cosine", warmup_steps=2,
               save_every=3, progressbar=False)
    straight = tiny_model()
    Trainer(straight, examples(), TrainingConfig(**cfg, output_dir=str(tmp_path / "a"))).train()

    first = tiny_model()
    part = Trainer(first, examples(), TrainingConfig(**{**cfg, "max_steps": 6}, output_dir=str(tmp_path / "b")))
    part.total_steps = 3  # stop after the first checkpoint, as a killed run would
    part.train()
    assert (tmp_path / "b" / "checkpoint-3").is_dir()
    resumed = tiny_model()
    history = Trainer(resumed, examples(), TrainingConfig(**cfg, output_dir=str(tmp_path / "b"))).train(resume=True)
    assert [h["step"] for h in history] == list(range(1, 7))
    np.testing.assert_array_equal(resumed.lora_vector(), straight.lora_vector())
    assert not list((tmp_path / "b").glob(".checkpoint-*"))  # no temporary folder left behind


def test_eval_hook_and_bad_configs():
    calls = []
    cfg = TrainingConfig(max_steps=4, batch_size=4, eval_every=2, progressbar=False)
    history = Trainer(tiny_model(), examples(), cfg, eval_fn=lambda m: calls.append(1) or {"score": 1.0}).train()
    assert len(calls) == 2 and "eval_score" in history[1] and "eval_score" not in history[0]
    with pytest.raises(ValueError, match="exactly one"):
        TrainingConfig()
    with pytest.raises(ValueError, match="lr_scheduler"):
        TrainingConfig(max_steps=1, lr_scheduler="step")


def test_collate():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], 0)
    np.testing.assert_array_equal(batch["input_ids"], [[5, 6, 7], [8, 0, 0]])
    np.testing.assert_array_equal(batch["labels"], [[-100, 6, 7], [8, -100, -100]])
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match="labels"):
        collate([{"input_ids": [1, 2], "labels": [1]}])
    with pytest.raises(ValueError, match="empty"):
        collate([])
