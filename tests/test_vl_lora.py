"""LoRA on the whole LFM2-VL model (language model, vision tower, projector) against Hugging Face PEFT
(fixtures from tests/reference/make_vl_lora_reference.py): target matching over the full module names,
logits, caption loss and every LoRA gradient, PEFT's adapter files both ways, disable/merge; plus finite
differences of vision LoRA gradients and a short vision-LoRA training run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import captionaura as ca
from captionaura import _core

HERE = Path(__file__).parent / "reference" / "fixtures"
BASE = HERE / "lfm2vl" / "base"
CASES = sorted(p.name for p in (HERE / "vl_lora").iterdir() if (p / "reference.npz").is_file())


def pixel_args():
    pixels = np.load(BASE / "reference.npz")
    return dict(pixel_values=pixels["pixel_values"], spatial_shapes=pixels["spatial_shapes"],
                pixel_attention_mask=pixels["pixel_attention_mask"])


@pytest.fixture(scope="module", params=CASES)
def case(request):
    folder = HERE / "vl_lora" / request.param
    model = ca.Lfm2VlModel.from_pretrained(BASE)
    model.load_adapter(folder / "adapter")
    return folder, dict(np.load(folder / "reference.npz")), model


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(ours.astype(np.float64) - ref) / np.linalg.norm(ref.astype(np.float64)))


def test_fixtures_exist():
    assert {"all_linear", "vision_regex_rslora"} <= set(CASES)


def test_targets_match_peft(case):
    folder, _, model = case
    ours = sorted(m["module"] for m in model.lora_modules())
    assert ours == json.loads((folder / "targets.json").read_text())
    assert any("vision_tower" in m for m in ours) and any("multi_modal_projector" in m for m in ours)


def test_all_linear_covers_every_linear_but_lm_head():
    model = ca.Lfm2VlModel.from_pretrained(BASE)
    model.add_lora(ca.LoraConfig(r=2, target_modules="all-linear"))
    modules = {m["module"] for m in model.lora_modules()}
    assert "model.vision_tower.embeddings.patch_embedding" in modules
    assert {"model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2"} <= modules
    assert not any("lm_head" in m for m in modules)


def test_logits_loss_and_every_lora_gradient_match_peft(case):
    _, ref, model = case
    logits = model.forward(ref["input_ids"], **pixel_args()).logits
    assert rel_err(logits, ref["logits"]) <= 1e-5
    loss = model.loss_and_grad(ref["input_ids"], ref["labels"], **pixel_args())
    assert abs(loss - float(ref["loss"])) <= 1e-5 * abs(float(ref["loss"]))
    grads = model.lora_gradients()
    expected = {k[len("grad."):]: v for k, v in ref.items() if k.startswith("grad.")}
    assert set(grads) == set(expected)
    for key, want in expected.items():
        err = rel_err(grads[key], want)
        assert err <= 1e-4, f"{key}: relative gradient error {err:.2e}"


def test_disable_and_merge_match_peft(case):
    _, ref, model = case
    with model.disable_lora():
        off = model.forward(ref["input_ids"], **pixel_args()).logits
    assert rel_err(off, ref["logits_disabled"]) <= 1e-5
    model.merge_lora()
    try:
        merged = model.forward(ref["input_ids"], **pixel_args()).logits
    finally:
        model.unmerge_lora()
    assert rel_err(merged, ref["merged_logits"]) <= 1e-5
    assert rel_err(model.forward(ref["input_ids"], **pixel_args()).logits, ref["logits"]) <= 1e-5


def test_saved_adapter_has_pefts_keys_and_reloads(case, tmp_path):
    folder, ref, model = case
    model.save_adapter(tmp_path)
    peft_file = {n: tuple(s) for n, _, s, *_ in _core.safetensors_header(str(folder / "adapter" /
                                                                            "adapter_model.safetensors"))}
    ours = {n: tuple(s) for n, _, s, *_ in _core.safetensors_header(str(tmp_path / "adapter_model.safetensors"))}
    assert ours == peft_file
    theirs = _core.safetensors_load(str(folder / "adapter" / "adapter_model.safetensors"))
    for name, array in _core.safetensors_load(str(tmp_path / "adapter_model.safetensors")).items():
        np.testing.assert_array_equal(array, theirs[name])
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    peft_config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    for key in ("r", "lora_alpha", "target_modules", "use_rslora", "peft_type"):
        assert config[key] == peft_config[key], key
    again = ca.Lfm2VlModel.from_pretrained(BASE)
    again.load_adapter(tmp_path)
    np.testing.assert_array_equal(again.lora_vector(), model.lora_vector())


def test_lora_vector_spans_text_and_vision(case):
    _, _, model = case
    vec = model.lora_vector()
    sizes = sum(a.size for a in model.lora_parameters().values())
    assert vec.shape == (sizes,)
    model.set_lora_vector(vec * 2)
    try:
        np.testing.assert_array_equal(model.lora_vector(), vec * 2)
    finally:
        model.set_lora_vector(vec)
    with pytest.raises(ValueError, match="shape"):
        model.set_lora_vector(vec[:-1])


def test_vision_lora_gradients_match_finite_differences():
    model = ca.Lfm2VlModel.from_pretrained(BASE)
    model.add_lora(ca.LoraConfig(r=2, lora_alpha=4, init_lora_weights=False,
                                 target_modules=["q_proj", "fc1", "fc2", "patch_embedding", "linear_1", "linear_2"]))
    ref = np.load(HERE / "vl_lora" / "all_linear" / "reference.npz")
    ids, labels = ref["input_ids"], ref["labels"]
    base_grads = model.vision._core.grads()
    base_grads[:] = 7.0
    model.loss_and_grad(ids, labels, **pixel_args())
    assert (base_grads == 7.0).all()  # the frozen tower's base weights take no gradient under LoRA
    params, grads = model.lora_parameters(), {k: v.copy() for k, v in model.lora_gradients().items()}
    checked = 0
    for key in sorted(k for k in params if "vision_tower" in k or "projector" in k):
        i = int(np.argmax(np.abs(grads[key])))
        flat, g = params[key].reshape(-1), grads[key].reshape(-1)[i]
        eps = 1e-2 * max(1.0, abs(float(flat[i])))
        old = float(flat[i])
        flat[i] = old + eps
        up = model.loss_and_grad(ids, labels, **pixel_args())
        flat[i] = old - eps
        down = model.loss_and_grad(ids, labels, **pixel_args())
        flat[i] = old
        fd = (up - down) / (2 * eps)
        assert abs(fd - g) <= 2e-2 * abs(g) + 1e-5, f"{key}: finite difference {fd:.6g} vs gradient {g:.6g}"
        checked += 1
    assert checked >= 8


def test_vision_lora_freezes_the_base_and_trains_the_adapters(tmp_path):
    model = ca.Lfm2VlModel.from_pretrained(BASE)
    model.add_lora(ca.LoraConfig(r=2, lora_alpha=4, target_modules=["fc1", "linear_1", "w2"]))
    base = {k: v.copy() for k, v in model.parameters().items()}
    ref = np.load(HERE / "vl_lora" / "all_linear" / "reference.npz")
    example = {"input_ids": ref["input_ids"][0], "labels": ref["labels"][0], **pixel_args()}
    start = model.lora_vector().copy()
    trainer = ca.Trainer(model, [example], ca.TrainingConfig(max_steps=8, train_vision=True, progressbar=False,
                                                             output_dir=str(tmp_path), save_every=8))
    history = trainer.train()
    assert history[-1]["loss"] < history[0]["loss"]
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(value, base[name], err_msg=name)
    moved = model.lora_vector() - start
    vision = [m for m in model.lora_modules() if "vision_tower" in m["module"] or "projector" in m["module"]]
    assert vision and all(np.abs(moved[m["a_offset"]: m["b_offset"] + m["out_features"] * m["r"]]).max() > 0
                          for m in vision)
    assert (tmp_path / "checkpoint-8" / "adapter" / "adapter_model.safetensors").is_file()


def test_moving_backends_keeps_vision_adapters_and_their_gradients():
    """ca_vision_set_backend with adapters, exercised on the CPU: the profiling table is a distinct backend, so
    to("cpu") from it allocates, copies and re-points the LoRA buffers exactly as a move to CUDA does."""
    ref = np.load(HERE / "vl_lora" / "all_linear" / "reference.npz")
    models = []
    for _ in range(2):
        m = ca.Lfm2VlModel.from_pretrained(BASE)
        m.load_adapter(HERE / "vl_lora" / "all_linear" / "adapter")
        m.loss_and_grad(ref["input_ids"], ref["labels"], **pixel_args())
        models.append(m)
    stay, moved = models
    moved.vision._core.set_profiling(True)
    old = moved.vision._core.lora_params()
    moved.vision.to("cpu")
    assert moved.vision._core.lora_params().ctypes.data != old.ctypes.data
    np.testing.assert_array_equal(moved.lora_vector(), stay.lora_vector())
    np.testing.assert_array_equal(moved.vision._core.lora_grads(), stay.vision._core.lora_grads())
    assert moved.loss_and_grad(ref["input_ids"], ref["labels"], **pixel_args()) == \
        stay.loss_and_grad(ref["input_ids"], ref["labels"], **pixel_args())
    for key, g in stay.lora_gradients().items():
        np.testing.assert_array_equal(moved.lora_gradients()[key], g, err_msg=key)


def test_training_resumes_from_a_vl_adapter_checkpoint(tmp_path):
    ref = np.load(HERE / "vl_lora" / "all_linear" / "reference.npz")
    example = {"input_ids": ref["input_ids"][0], "labels": ref["labels"][0], **pixel_args()}
    config = ca.LoraConfig(r=2, lora_alpha=4, target_modules=["fc2", "linear_2", "w1"])
    vectors = []
    for resume in (False, True):
        model = ca.Lfm2VlModel.from_pretrained(BASE)
        model.add_lora(config, seed=5 if resume else 0)  # resuming must overwrite this init
        trainer = ca.Trainer(model, [example], ca.TrainingConfig(max_steps=4, train_vision=True, progressbar=False,
                                                                 output_dir=str(tmp_path), save_every=2))
        if resume:
            shutil.rmtree(tmp_path / "checkpoint-4")
        trainer.train(resume=resume)
        vectors.append(model.lora_vector())
    np.testing.assert_allclose(vectors[1], vectors[0], rtol=0, atol=1e-6)
