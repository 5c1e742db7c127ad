"""LoRA against PEFT + transformers (fixtures written by tests/reference/make_lora_reference.py):
forward, loss, every LoRA gradient, one AdamW step (plain and clipped), merge, disable, PEFT file format;
plus the training behaviour and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import captionaura as ca
from captionaura import _core

REFERENCE = Path(__file__).parent / "reference" / "fixtures"
CASES = {"mixed_all": "mixed", "untied_rslora_regex": "untied", "odd_gaussian": "odd"}


def load_case(name: str):
    folder = REFERENCE / "lora" / name
    ref = dict(np.load(folder / "reference.npz"))
    model = ca.Lfm2Model.from_pretrained(REFERENCE / "lfm2" / CASES[name])
    model.load_adapter(folder / "adapter")
    return folder, ref, model


@pytest.fixture(params=sorted(CASES))
def case(request):
    return load_case(request.param)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def test_forward_matches_peft(case):
    _, ref, model = case
    m = ref["attention_mask"].astype(bool)
    logits = model.forward(ref["input_ids"], ref["attention_mask"]).logits
    np.testing.assert_allclose(logits[m], ref["logits"][m], atol=1e-4, rtol=0)
    for module in model.lora_modules():
        assert module["scaling"] == pytest.approx(float(ref["scaling." + module["module"]]), rel=1e-6)


def test_loss_and_lora_gradients_match_peft(case):
    _, ref, model = case
    loss = model.loss_and_grad(ref["input_ids"], ref["labels"], ref["attention_mask"])
    assert abs(loss - float(ref["loss"])) <= 1e-5 * abs(float(ref["loss"]))
    grads = model.lora_gradients()
    expected = {k[len("grad."):]: v for k, v in ref.items() if k.startswith("grad.")}
    assert set(grads) == set(expected)
    for key, g in expected.items():
        assert rel(grads[key], g) <= 1e-3, key
    assert model.num_trainable_parameters() == sum(v.size for v in expected.values())


ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


@pytest.mark.parametrize("clip", [None, 0.05])
def test_adamw_update_equals_torch_on_the_same_gradients(case, clip):
    """The optimiser alone: torch's gradients in, torch's parameters out."""
    _, ref, model = case
    params = model.lora_parameters()
    grads = {k: ref["grad." + k].copy() for k in params}
    opt = ca.AdamW([params[k] for k in params], [grads[k] for k in params], ca.AdamWConfig(**ADAMW, max_grad_norm=clip))
    assert opt.step() == pytest.approx(float(ref["grad_norm"]), rel=1e-6)
    prefix = "after_adamw." if clip is None else "after_clipped_adamw."
    for key, value in params.items():
        np.testing.assert_allclose(value, ref[prefix + key], atol=1e-6, rtol=0, err_msg=key)


@pytest.mark.parametrize("clip", [None, 0.05])
def test_one_train_step_matches_torch(case, clip):
    """Our gradients and our optimiser together. AdamW's first step moves each parameter by
    lr·g/(|g|+eps): where the (clipped) gradient is near eps that map amplifies float32 gradient
    differences ~lr/eps-fold, so those few ill-conditioned entries are compared only within lr."""
    _, ref, model = case
    model.set_optimizer(ca.AdamWConfig(**ADAMW, max_grad_norm=clip))
    model.train_step({"input_ids": ref["input_ids"], "labels": ref["labels"],
                      "attention_mask": ref["attention_mask"]})
    scale = 1.0 if clip is None else min(1.0, clip / (float(ref["grad_norm"]) + 1e-6))
    prefix = "after_adamw." if clip is None else "after_clipped_adamw."
    compared = total = 0
    for key, value in model.lora_parameters().items():
        expected = ref[prefix + key]
        conditioned = np.abs(ref["grad." + key]) * scale > 10 * ADAMW["eps"]
        compared, total = compared + conditioned.sum(), total + conditioned.size
        np.testing.assert_allclose(value[conditioned], expected[conditioned], atol=1e-5, rtol=0, err_msg=key)
        assert np.abs(value - expected).max() <= ADAMW["lr"], key
    assert compared > 0.9 * total


def test_merge_and_disable(case):
    _, ref, model = case
    m = ref["attention_mask"].astype(bool)
    ids, mask = ref["input_ids"], ref["attention_mask"]
    unmerged = model.forward(ids, mask).logits
    with model.disable_lora():
        np.testing.assert_allclose(model.forward(ids, mask).logits[m], ref["logits_disabled"][m], atol=1e-4, rtol=0)
    model.merge_lora()
    merged = model.forward(ids, mask).logits
    scale = np.abs(unmerged[m]).max()
    assert np.abs(merged[m] - unmerged[m]).max() <= 1e-5 * scale  # merging reorders float32 sums
    np.testing.assert_allclose(merged[m], ref["merged_logits"][m], atol=1e-4, rtol=0)
    model.unmerge_lora()  # W + s·BA − s·BA: float32 rounding of the same size
    np.testing.assert_allclose(model.forward(ids, mask).logits, unmerged, atol=1e-5 * scale, rtol=0)


def test_prompt_labels_do_not_count(case):
    _, ref, model = case
    loss = model.loss_and_grad(ref["input_ids"], ref["labels_prompt"], ref["attention_mask"])
    assert loss == pytest.approx(float(ref["loss_prompt"]), rel=1e-5)


def test_saved_adapter_is_peft_format_and_round_trips(case, tmp_path):
    folder, ref, model = case
    model.save_adapter(tmp_path)
    ours = {n: tuple(s) for n, _, s, *_ in _core.safetensors_header(str(tmp_path / "adapter_model.safetensors"))}
    theirs = {n: tuple(s) for n, _, s, *_ in _core.safetensors_header(str(folder / "adapter" / "adapter_model.safetensors"))}
    assert ours == theirs
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    peft_config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    for key in ("peft_type", "r", "lora_alpha", "use_rslora", "target_modules", "lora_dropout", "bias"):
        assert config[key] == peft_config[key], key
    fresh = ca.Lfm2Model.from_pretrained(REFERENCE / "lfm2" / CASES[folder.name])
    fresh.load_adapter(tmp_path)
    np.testing.assert_array_equal(fresh.forward(ref["input_ids"]).logits, model.forward(ref["input_ids"]).logits)
    assert not list(tmp_path.glob("*.tmp"))


def test_merged_checkpoint_equals_peft_merge_and_unload(tmp_path):
    folder, ref, model = load_case("untied_rslora_regex")
    model.merge_lora()
    model.save_pretrained(tmp_path)
    plain = ca.Lfm2Model.from_pretrained(tmp_path)
    theirs = ca.Lfm2Model.from_pretrained(folder / "merged")
    for name, value in theirs.parameters().items():
        np.testing.assert_allclose(plain.parameters()[name], value, atol=1e-6, rtol=0, err_msg=name)


# ---- behaviour -----------------------------------------------------------------------------------------

def tiny_model(seed: int = 0) -> ca.Lfm2Model:
    # weights of a trained model's scale (std 0.3): LoRA adapts features, and a std-0.02 random base has none
    cfg = ca.Lfm2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, block_auto_adjust_ff_dim=False,
                        layer_types=["conv", "full_attention", "conv"], initializer_range=0.3)
    return ca.Lfm2Model.from_config(cfg, seed=seed)


def test_new_adapter_is_a_no_op_and_freezes_the_base():
    model = tiny_model()
    ids = np.arange(1, 13, dtype=np.int32)[None]
    before = model.forward(ids).logits
    base = {k: v.copy() for k, v in model.parameters().items()}
    model.add_lora(ca.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), seed=1)
    np.testing.assert_array_equal(model.forward(ids).logits, before)  # B = 0
    a = next(v for k, v in model.lora_parameters().items() if k.endswith("lora_A.weight"))
    bound = 1 / np.sqrt(a.shape[1])
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.5 * bound  # kaiming-uniform(a=sqrt(5))
    for _ in range(3):
        model.train_step({"input_ids": ids, "labels": ids})
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(v, base[k], err_msg=k)


def test_lora_learns_captions_with_prompt_masked():
    rng = np.random.default_rng(0)
    model = tiny_model()
    model.add_lora(ca.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    model.set_optimizer(ca.AdamWConfig(lr=1e-2, weight_decay=0.0))
    # 8 "images": a shared prompt, one key token per image, and its 6-token caption
    prompt = np.tile(np.array([1, 5, 9, 13], np.int32), (8, 1))
    key = (20 + np.arange(8, dtype=np.int32))[:, None]
    ids = np.concatenate([prompt, key, rng.integers(30, 64, size=(8, 6)).astype(np.int32)], axis=1)
    labels = ids.copy()
    labels[:, :5] = -100  # only caption tokens count
    losses = [model.train_step({"input_ids": ids, "labels": labels}) for _ in range(100)]
    assert losses[-1] < 0.05 < losses[0]


def test_lora_vector_round_trip_and_validation():
    model = tiny_model()
    model.add_lora(ca.LoraConfig(r=2, target_modules=["w1"]))
    v = np.random.default_rng(0).normal(size=model.lora_vector().size).astype(np.float32)
    model.set_lora_vector(v)
    np.testing.assert_array_equal(model.lora_vector(), v)
    assert model.lora_vector().size == sum(p.size for p in model.lora_parameters().values())
    with pytest.raises(ValueError, match="NaN"):
        model.set_lora_vector(np.full_like(v, np.nan))
    with pytest.raises(ValueError, match="shape"):
        model.set_lora_vector(v[:-1])


def test_dropout_is_training_only_and_reproducible():
    ids = np.arange(1, 17, dtype=np.int32)[None]
    losses = []
    for _ in range(2):
        model = tiny_model()
        model.add_lora(ca.LoraConfig(r=4, lora_dropout=0.5, target_modules="all-linear", init_lora_weights=False), seed=3)
        losses.append([model.loss_and_grad(ids, ids) for _ in range(2)])
        a = model.forward(ids).logits
        np.testing.assert_array_equal(a, model.forward(ids).logits)  # no dropout at inference
    assert losses[0] == losses[1]          # same seed, same masks
    assert losses[0][0] != losses[0][1]    # a fresh mask each step


def test_dropout_gradient_matches_finite_differences():
    """With dropout the mask is fixed by (seed, step): replaying a step gives a deterministic loss, so the
    analytic LoRA gradient can be checked by central differences."""
    model = tiny_model()
    model.add_lora(ca.LoraConfig(r=2, lora_dropout=0.3, target_modules=["w2", "q_proj"], init_lora_weights=False), seed=5)
    ids = np.arange(3, 15, dtype=np.int32)[None]
    vec = model.lora_vector()

    def loss_at_step(seed: int) -> float:
        model._core.set_dropout_seed(seed)  # loss_and_grad advances the seed by one before drawing masks
        return model.loss_and_grad(ids, ids)

    loss_at_step(41)
    grad = model._core.lora_grads().copy()
    for i in np.random.default_rng(0).choice(vec.size, 12, replace=False):
        old = vec[i]
        vec[i] = old + 1e-2
        up = loss_at_step(41)
        vec[i] = old - 1e-2
        down = loss_at_step(41)
        vec[i] = old
        assert (up - down) / 2e-2 == pytest.approx(grad[i], abs=2e-3, rel=2e-2)


def test_ffa_lora_trains_only_b():
    model = tiny_model()
    model.add_lora(ca.LoraConfig(r=4, target_modules=["w1", "w2"]))
    model.freeze_lora_A()
    ids = np.arange(1, 11, dtype=np.int32)[None]
    a_before = {k: v.copy() for k, v in model.lora_parameters().items() if "lora_A" in k}
    for _ in range(3):
        model.train_step({"input_ids": ids, "labels": ids})
    for k, v in model.lora_parameters().items():
        if "lora_A" in k:
            np.testing.assert_array_equal(v, a_before[k])
        else:
            assert np.abs(v).max() > 0


def test_modules_to_save_train_and_are_saved(tmp_path):
    model = tiny_model()
    model.add_lora(ca.LoraConfig(r=2, target_modules=["w1"], modules_to_save=["embedding_norm"]))
    ids = np.arange(1, 11, dtype=np.int32)[None]
    norm_before = model.parameters()["model.embedding_norm.weight"].copy()
    model.train_step({"input_ids": ids, "labels": ids})
    assert not np.array_equal(model.parameters()["model.embedding_norm.weight"], norm_before)
    model.save_adapter(tmp_path)
    names = {n for n, *_ in _core.safetensors_header(str(tmp_path / "adapter_model.safetensors"))}
    assert "base_model.model.model.embedding_norm.weight" in names


# ---- bad input -----------------------------------------------------------------------------------------

def test_rank_zero():
    with pytest.raises(ValueError, match="rank"):
        ca.LoraConfig(r=0, target_modules=["q_proj"])


def test_target_matching_nothing():
    with pytest.raises(ValueError, match="matches no"):
        tiny_model().add_lora(ca.LoraConfig(r=2, target_modules=["not_a_module"]))
    with pytest.raises(ValueError, match="matches no"):
        tiny_model().add_lora(ca.LoraConfig(r=2, target_modules="q_proj"))  # a regex must match the whole path


def test_depthwise_conv_is_refused():
    with pytest.raises(NotImplementedError, match="conv.conv"):
        tiny_model().add_lora(ca.LoraConfig(r=2, target_modules=["conv"]))


def test_adapter_for_another_model(tmp_path):
    model = ca.Lfm2Model.from_pretrained(REFERENCE / "lfm2" / "untied")
    with pytest.raises((KeyError, ValueError)):
        model.load_adapter(REFERENCE / "lora" / "mixed_all" / "adapter")
    assert model.lora_config is None  # nothing half-loaded


def test_adapter_with_missing_key(tmp_path):
    folder = REFERENCE / "lora" / "odd_gaussian" / "adapter"
    shutil.copy(folder / "adapter_config.json", tmp_path)
    tensors = _core.safetensors_load(str(folder / "adapter_model.safetensors"))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    _core.safetensors_save(str(tmp_path / "adapter_model.safetensors"), tensors, None)
    model = ca.Lfm2Model.from_pretrained(REFERENCE / "lfm2" / "odd")
    with pytest.raises(KeyError, match="missing"):
        model.load_adapter(tmp_path)


def test_peft_features_we_do_not_implement_are_refused():
    with pytest.raises(NotImplementedError):
        ca.LoraConfig(r=2, target_modules=["w1"], bias="all")
    with pytest.raises(NotImplementedError):
        ca.LoraConfig.from_dict({"peft_type": "LORA", "r": 2, "target_modules": ["w1"], "use_dora": True})


def test_cli_merge_writes_a_plain_checkpoint(tmp_path):
    from captionaura.cli import main

    folder = REFERENCE / "lora" / "untied_rslora_regex"
    assert main(["merge", "--base", str(REFERENCE / "lfm2" / "untied"), "--adapter", str(folder / "adapter"),
                 "--out", str(tmp_path)]) == 0
    merged = ca.Lfm2Model.from_pretrained(tmp_path)
    theirs = ca.Lfm2Model.from_pretrained(folder / "merged")
    for name, value in theirs.parameters().items():
        np.testing.assert_allclose(merged.parameters()[name], value, atol=1e-6, rtol=0, err_msg=name)
    assert main(["merge", "--base", str(REFERENCE / "lfm2" / "mixed"), "--adapter", str(folder / "adapter"),
                 "--out", str(tmp_path / "x")]) == 2  # an adapter for another model: a clean error
