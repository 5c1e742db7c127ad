"""Training a bf16 model (``to_inference_dtype("bf16")``, then ``loss_and_grad`` / ``train_step``): LoRA on a
frozen bf16 base, and full fine-tuning in mixed precision (fp32 master weights, bf16 GEMMs). The GEMMs round
their activation or gradient operands to bf16 and sum in fp32; test_inference_dtype.py checks each kernel against
NumPy computing that scheme. Here whole steps stay close to fp32 on the same rounded weights, with both ISAs, for
the language model and for a captioner's tower and projector; training learns; the master weights keep what a
bf16 copy would lose; int8 weights and a bf16 tower's base do not train."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import captionaura as ca
from captionaura import _core
from test_inference_dtype import bf16_round
from test_lfm2 import FIXTURE_NAMES as LFM2_CASES
from test_lfm2 import FIXTURES as LFM2_FIXTURES
from test_lora import CASES, load_case, rel, tiny_model
from test_vl_lora import CASES as VL_CASES
from test_vl_lora import HERE as VL_FIXTURES
from test_vl_lora import pixel_args as vl_pixel_args

# Measured on the PEFT fixtures (bf16 against fp32 on the same rounded weights): loss 1.6e-4 to 9.6e-4
# relative, the worst adapter gradient 1.6e-2 to 2.4e-2 relative to its norm. Rounding the weights alone moves
# the gradients 2.9e-2 to 6.2e-2 from PEFT's.
LOSS_BOUND, GRAD_BOUND = 3e-3, 6e-2
# Full fine-tuning on transformers' fixtures: loss 5e-5 to 1e-3 relative, every parameter's gradient within
# 1.5e-2 to 2.6e-2 (worst per fixture) of fp32's.
FULL_GRAD_BOUND = 5e-2


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_and_adapter_gradients_close_to_fp32_on_the_same_weights(name, isa):
    _, ref, model = load_case(name)
    batch = ref["input_ids"], ref["labels"], ref["attention_mask"]
    model.to_inference_dtype("bf16")
    loss = model.loss_and_grad(*batch)
    grads = {k: v.copy() for k, v in model.lora_gradients().items()}
    model.to_inference_dtype("fp32")  # keeps the rounded weights; fp32 GEMMs
    loss32 = model.loss_and_grad(*batch)
    grads32 = model.lora_gradients()
    assert loss != loss32  # the activations' rounding is in play
    assert abs(loss - loss32) <= LOSS_BOUND * abs(loss32)
    for key, g in grads32.items():
        assert rel(grads[key], g) <= GRAD_BOUND, key


def test_bf16_lora_learns_and_keeps_the_base():
    rng = np.random.default_rng(0)
    model = tiny_model()
    model.add_lora(ca.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    model.to_inference_dtype("bf16")
    base = {k: v.copy() for k, v in model.parameters().items()}
    model.set_optimizer(ca.AdamWConfig(lr=1e-2, weight_decay=0.0))
    prompt = np.tile(np.array([1, 5, 9, 13], np.int32), (8, 1))
    key = (20 + np.arange(8, dtype=np.int32))[:, None]
    ids = np.concatenate([prompt, key, rng.integers(30, 64, size=(8, 6)).astype(np.int32)], axis=1)
    labels = ids.copy()
    labels[:, :5] = -100
    losses = [model.train_step({"input_ids": ids, "labels": labels}) for _ in range(100)]
    assert losses[-1] < 0.05 < losses[0]
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(v, base[k], err_msg=k)


@pytest.mark.parametrize("name", LFM2_CASES)
def test_full_fine_tuning_gradients_close_to_fp32_on_the_same_weights(name, isa):
    """Mixed precision for every parameter: the weight gradients through the bf16 GEMM, the norms' and the
    embedding's in fp32, against fp32 on the same rounded weights (transformers' fixtures)."""
    folder = LFM2_FIXTURES / name
    ref = dict(np.load(folder / "reference.npz"))
    batch = ref["input_ids"], ref["labels"], ref["attention_mask"]
    model = ca.Lfm2Model.from_pretrained(folder).to_inference_dtype("bf16")
    loss = model.loss_and_grad(*batch)
    grads = {k: v.copy() for k, v in model.gradients().items()}
    model.to_inference_dtype("fp32")
    loss32 = model.loss_and_grad(*batch)
    assert loss != loss32 and abs(loss - loss32) <= LOSS_BOUND * abs(loss32)
    for key, g in model.gradients().items():
        assert rel(grads[key], g) <= FULL_GRAD_BOUND, key


def test_master_weights_keep_small_updates_and_the_bf16_copy_follows():
    """After optimiser steps the parameters are fp32 master weights (updates far below a bf16 step survive), and
    the next pass uses their bf16 rounding: the logits equal those of a model given the same master weights."""
    ids = np.random.default_rng(1).integers(1, 64, (2, 12)).astype(np.int32)
    model = tiny_model().to_inference_dtype("bf16")
    start = {k: v.copy() for k, v in model.parameters().items()}
    model.set_optimizer(ca.AdamWConfig(lr=1e-5, weight_decay=0.0))
    for _ in range(3):
        model.train_step({"input_ids": ids, "labels": ids})
    masters = {k: v.copy() for k, v in model.parameters().items()}
    w = "model.layers.0.feed_forward.w1.weight"
    moved = masters[w] - start[w]
    assert np.abs(moved).max() > 0
    assert np.abs(masters[w] - bf16_round(masters[w])).max() > 0  # not re-rounded in place
    twin = tiny_model().to_inference_dtype("bf16")  # its bf16 copy: the rounding of what it is given
    for k, v in twin.parameters().items():
        v[...] = masters[k]
    twin.to_inference_dtype("bf16")
    for k, v in twin.parameters().items():  # params: the masters again (the copy keeps their rounding)
        v[...] = masters[k]
    np.testing.assert_array_equal(model.forward(ids).logits, twin.forward(ids).logits)


def test_bf16_full_training_learns():
    rng = np.random.default_rng(0)
    model = tiny_model().to_inference_dtype("bf16")
    model.set_optimizer(ca.AdamWConfig(lr=1e-2, weight_decay=0.0))
    ids = rng.integers(30, 64, size=(4, 10)).astype(np.int32)
    losses = [model.train_step({"input_ids": ids, "labels": ids}) for _ in range(60)]
    assert losses[-1] < 0.2 * losses[0]


def test_int8_weights_do_not_train():
    ids = np.arange(1, 9, dtype=np.int32)[None]
    model = tiny_model()
    model.add_lora(ca.LoraConfig(r=2, target_modules=["w1"]))
    model.to_inference_dtype("int8")
    with pytest.raises(ValueError, match="int8"):
        model.loss_and_grad(ids, ids)


@pytest.mark.parametrize("name", VL_CASES)
def test_captioner_tower_and_language_model_in_bf16(name, isa):
    """A captioner in bf16 (language model, tower and projector): image features, the caption loss and every
    adapter gradient (tower adapters included) stay close to fp32 on the same rounded weights."""
    folder = VL_FIXTURES / "vl_lora" / name
    ref = dict(np.load(folder / "reference.npz"))
    model = ca.Lfm2VlModel.from_pretrained(VL_FIXTURES / "lfm2vl" / "base")
    model.load_adapter(folder / "adapter")
    model.to_inference_dtype("bf16")
    assert model.vision.dtype == "bf16" and model.inference_dtype == "bf16"
    pixels = vl_pixel_args()
    features = model.image_features(**pixels)
    loss = model.loss_and_grad(ref["input_ids"], ref["labels"], **pixels)
    grads = {k: v.copy() for k, v in model.lora_gradients().items()}
    model.to_inference_dtype("fp32")
    assert model.vision.dtype == "fp32"
    features32 = model.image_features(**pixels)
    loss32 = model.loss_and_grad(ref["input_ids"], ref["labels"], **pixels)
    assert 0 < rel(features, features32) <= 1e-2
    assert abs(loss - loss32) <= LOSS_BOUND * abs(loss32)
    assert any("vision_tower" in k for k in grads)
    for key, g in model.lora_gradients().items():
        assert rel(grads[key], g) <= GRAD_BOUND, key


def test_bf16_tower_trains_adapters_only():
    model = ca.Lfm2VlModel.from_pretrained(VL_FIXTURES / "lfm2vl" / "base").to_inference_dtype("bf16")
    pixels = vl_pixel_args()
    features = model.vision.encode(pixels["pixel_values"], pixels["spatial_shapes"], pixels["pixel_attention_mask"],
                                   train=True)
    with pytest.raises(ValueError, match="LoRA adapters only"):
        model.vision.backward(np.ones_like(features))
    with pytest.raises(ValueError, match="'fp32', 'bf16'"):
        model.vision.to_dtype("int8")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(_core.lowp_isa("auto") != "avx512", reason="dropping the fp32 weights needs AVX512-BF16")
def test_dropping_the_fp32_weights_frees_them_and_changes_no_result(tmp_path):
    """keep_fp32=False: the matrices' fp32 pages go back to the system, while logits, a LoRA step (loss,
    gradients, updated adapters) and greedy decoding stay bit for bit those of the bf16 model that keeps them;
    what needs the fp32 values refuses until to_inference_dtype restores them, exactly."""
    cfg = ca.Lfm2Config(vocab_size=4096, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, block_auto_adjust_ff_dim=False,
                        layer_types=["conv", "full_attention", "conv", "full_attention"])
    ids = np.random.default_rng(3).integers(1, 4096, (2, 16)).astype(np.int32)
    lora = ca.LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    runs = []
    for keep in (True, False):
        model = ca.Lfm2Model.from_config(cfg, seed=0)
        model.add_lora(lora, seed=1)
        before = rss_bytes()
        model.to_inference_dtype("bf16", keep_fp32=keep)
        freed = before + model.num_parameters() * 2 - rss_bytes()  # + the bf16 copy it allocated
        model.set_optimizer(ca.AdamWConfig(lr=1e-3))
        loss = model.train_step({"input_ids": ids, "labels": ids})
        runs.append((freed, model.forward(ids).logits, loss, model.lora_vector().copy(),
                     model.generate(ids[:1, :5], max_new_tokens=6), model))
    (_, logits, loss, vector, tokens, _), (freed, logits_d, loss_d, vector_d, tokens_d, dropped) = runs
    matrices = sum(v.size for v in runs[0][5].parameters().values() if v.ndim == 2) * 4
    assert freed >= 0.8 * matrices, (freed, matrices)
    np.testing.assert_array_equal(logits_d, logits)
    assert loss_d == loss
    np.testing.assert_array_equal(vector_d, vector)
    np.testing.assert_array_equal(tokens_d, tokens)
    for refused in (dropped.parameters, dropped.merge_lora, lambda: dropped.save_pretrained(tmp_path / "m")):
        with pytest.raises((RuntimeError, ValueError), match="dropped"):
            refused()
    dropped.to_inference_dtype("bf16")
    for k, v in dropped.parameters().items():
        np.testing.assert_array_equal(v, runs[0][5].parameters()[k], err_msg=k)
    # a model without adapters gives back its fp32 weights for inference (the same logits, bit for bit), and
    # training its base then refuses: the optimiser needs the fp32 master weights
    kept = ca.Lfm2Model.from_config(cfg, seed=0).to_inference_dtype("bf16")
    full = ca.Lfm2Model.from_config(cfg, seed=0).to_inference_dtype("bf16", keep_fp32=False)
    np.testing.assert_array_equal(full.forward(ids).logits, kept.forward(ids).logits)
    np.testing.assert_array_equal(full.generate(ids[:1, :5], max_new_tokens=6), kept.generate(ids[:1, :5], max_new_tokens=6))
    with pytest.raises(ValueError, match="base parameters train .* add LoRA adapters"):
        full.loss_and_grad(ids, ids)


CONVERSION_PEAKS = """
import json
import captionaura as ca
from captionaura.vision import VisionConfig, VisionTower

def peak_rss_reset():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

def rss(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

def language_model():
    cfg = ca.Lfm2Config(vocab_size=4096, hidden_size=256, intermediate_size=1024, num_hidden_layers=12,
                        num_attention_heads=4, num_key_value_heads=2, block_auto_adjust_ff_dim=False,
                        layer_types=["conv", "full_attention"] * 6)
    model = ca.Lfm2Model.from_config(cfg, seed=0)
    model.add_lora(ca.LoraConfig(r=4, target_modules="all-linear"))
    return model

def vision_tower():
    cfg = VisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=10, num_attention_heads=4,
                       projector_hidden_size=512, text_hidden_size=256)
    return VisionTower.from_config(cfg, seed=0)

result = {}
for name, make, convert in (("language model", language_model, lambda m, keep: m.to_inference_dtype("bf16", keep)),
                            ("vision tower", vision_tower, lambda m, keep: m.to_dtype("bf16", keep))):
    for keep in (True, False):
        model = make()
        before = rss("VmRSS")
        peak_rss_reset()
        convert(model, keep)
        result[f"{name}, keep_fp32={keep}"] = (rss("VmHWM") - before, model.num_parameters() * 2)
        del model
print(json.dumps(result))
"""


@pytest.mark.skipif(_core.lowp_isa("auto") != "avx512", reason="dropping the fp32 weights needs AVX512-BF16")
def test_converting_with_keep_fp32_false_never_holds_both_copies():
    """keep_fp32=False gives each matrix's fp32 pages back as soon as it is packed: the conversion's peak stays far
    below the bf16 copy's size, which converting everything first and then giving back would add on top. Both the
    language model and the vision tower, in a fresh interpreter whose large allocations are always fresh pages
    (a fixed mmap threshold), so that the measurement does not depend on what earlier tests left in the heap."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("the peak resident memory cannot be reset here (/proc/self/clear_refs)")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, "-c", CONVERSION_PEAKS], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    for case, (growth, bf16_copy) in json.loads(proc.stdout).items():
        if case.endswith("keep_fp32=True"):
            assert growth >= 0.9 * bf16_copy, (case, growth, bf16_copy)  # the measurement sees the copy being made
        else:
            assert growth <= 0.35 * bf16_copy, (case, growth, bf16_copy)


@pytest.mark.skipif(_core.lowp_isa("auto") != "avx512", reason="dropping the fp32 weights needs AVX512-BF16")
def test_captioner_drops_both_sides_fp32_weights_without_changing_a_result():
    """A captioner with keep_fp32=False: image features, the caption loss and every adapter gradient (tower ones
    included) bit for bit those of the bf16 captioner that keeps its fp32 weights; the tower's linear weights'
    pages are given back; the tower refuses what needs them until to_dtype restores them, exactly."""
    folder = VL_FIXTURES / "vl_lora" / VL_CASES[0]
    ref = dict(np.load(folder / "reference.npz"))
    pixels = vl_pixel_args()
    results = []
    for keep in (True, False):
        model = ca.Lfm2VlModel.from_pretrained(VL_FIXTURES / "lfm2vl" / "base")
        model.load_adapter(folder / "adapter")
        model.to_inference_dtype("bf16", keep_fp32=keep)
        features = model.image_features(**pixels)
        loss = model.loss_and_grad(ref["input_ids"], ref["labels"], **pixels)
        results.append((features, loss, {k: v.copy() for k, v in model.lora_gradients().items()}, model))
    (features, loss, grads, kept), (features_d, loss_d, grads_d, dropped) = results
    np.testing.assert_array_equal(features_d, features)
    assert loss_d == loss
    for key, g in grads.items():
        np.testing.assert_array_equal(grads_d[key], g, err_msg=key)
    assert dropped.vision._core.fp32_dropped() and dropped.text._core.fp32_dropped()
    with pytest.raises(RuntimeError, match="dropped"):
        dropped.vision.parameters()
    with pytest.raises(ValueError, match="dropped"):
        dropped.merge_lora()
    dropped.to_inference_dtype("bf16")
    for k, v in dropped.vision.parameters().items():
        np.testing.assert_array_equal(v, kept.vision.parameters()[k], err_msg=k)


@pytest.mark.skipif(_core.lowp_isa("auto") != "avx512", reason="dropping the fp32 weights needs AVX512-BF16")
def test_a_captioner_gives_back_its_fp32_weights_and_captions_alike(tiny_captioner_dir):
    """keep_fp32=False on a captioner without adapters: the same tokens, scores and caption as the bf16 captioner
    that keeps its fp32 weights. (The prompt of an image caption embeds its tokens beside the image features;
    that embedding once read the given-back fp32 table.)"""
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    settings = ca.GenerationConfig(max_new_tokens=12, min_new_tokens=12, do_sample=False, eos_token_id=[])
    kept = ca.Lfm2VlModel.from_pretrained(tiny_captioner_dir).to_inference_dtype("bf16")
    dropped = ca.Lfm2VlModel.from_pretrained(tiny_captioner_dir).to_inference_dtype("bf16", keep_fp32=False)
    ids, features = kept._caption_inputs(image, None)
    want = kept.text.generate(ids, generation=settings, features=features, return_scores=True)
    got = dropped.text.generate(ids, generation=settings, features=features, return_scores=True)
    np.testing.assert_array_equal(got.sequences, want.sequences)
    np.testing.assert_array_equal(got.scores, want.scores)
    assert dropped.caption(image, generation=settings) == kept.caption(image, generation=settings)


LOADING_PEAKS = """
import json, sys
import numpy as np
import captionaura as ca
from captionaura import _core

folder = sys.argv[1]
config = {"vocab_size": 2048, "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 12,
          "num_attention_heads": 8, "num_key_value_heads": 4, "block_auto_adjust_ff_dim": False,
          "layer_types": ["conv", "full_attention"] * 6}
skeleton = _core.Lfm2(json.dumps(ca.Lfm2Config.from_dict(config).to_dict()))
rng = np.random.default_rng(0)
tensors = {name: rng.integers(0x3C00, 0x3D00, size=numel, dtype=np.uint16).reshape(shape)  # bf16 bits
           for name, shape, _, numel in skeleton.param_table()}
del skeleton
_core.safetensors_save(folder + "/model.safetensors", tensors, None, {name: "BF16" for name in tensors})
open(folder + "/config.json", "w").write(json.dumps(config))
del tensors

def rss(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

result = {}
for dtype, keep in (("fp32", True), ("bf16", False)):
    before = rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    model = ca.Lfm2Model.from_pretrained(folder, dtype=dtype, keep_fp32=keep)
    result[dtype] = (rss("VmHWM") - before, model.num_parameters() * 4)
    del model
print(json.dumps(result))
"""


@pytest.mark.skipif(_core.lowp_isa("auto") != "avx512", reason="dropping the fp32 weights needs AVX512-BF16")
def test_loading_straight_into_bf16_never_holds_the_fp32_model(tmp_path):
    """from_pretrained(dtype="bf16", keep_fp32=False) packs each tensor as it is read from a bf16 checkpoint: its
    peak stays near the bf16 model's size, where an fp32 load holds the fp32 model (in a fresh interpreter whose
    large allocations are fresh pages)."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("the peak resident memory cannot be reset here (/proc/self/clear_refs)")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, "-c", LOADING_PEAKS, str(tmp_path)], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    peaks = json.loads(proc.stdout)
    (fp32_peak, fp32_size), (bf16_peak, _) = peaks["fp32"], peaks["bf16"]
    assert fp32_peak >= 0.95 * fp32_size, peaks  # the measurement sees an fp32 load hold the fp32 model
    assert bf16_peak <= 0.7 * fp32_size, peaks


@pytest.mark.skipif(_core.lowp_isa("auto") != "avx512", reason="dropping the fp32 weights needs AVX512-BF16")
def test_loading_into_bf16_equals_converting_after_loading(tiny_captioner_dir, tmp_path):
    """The model packed while loading is the one converted after an fp32 load, bit for bit: the language model
    (transformers' fixtures, and an F32 checkpoint whose embedding is read in several chunks: logits, and the
    parameters once restored) and a captioner (its caption)."""
    big = ca.Lfm2Config(vocab_size=4096, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, block_auto_adjust_ff_dim=False,
                        layer_types=["conv", "full_attention"])
    ca.Lfm2Model.from_config(big, seed=3).save_pretrained(tmp_path / "big")  # F32, embedding 2.1M elements
    ids = np.random.default_rng(5).integers(1, 90, (2, 9)).astype(np.int32)
    for folder in [LFM2_FIXTURES / name for name in LFM2_CASES] + [tmp_path / "big"]:
        for keep in (True, False):
            loaded = ca.Lfm2Model.from_pretrained(folder, dtype="bf16", keep_fp32=keep)
            converted = ca.Lfm2Model.from_pretrained(folder).to_inference_dtype("bf16", keep_fp32=keep)
            assert loaded._core.fp32_dropped() == (not keep)
            np.testing.assert_array_equal(loaded.forward(ids).logits, converted.forward(ids).logits,
                                          err_msg=str(folder))
        loaded.to_inference_dtype("bf16")
        for key, value in converted.to_inference_dtype("bf16").parameters().items():
            np.testing.assert_array_equal(loaded.parameters()[key], value, err_msg=f"{folder}: {key}")
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    settings = ca.GenerationConfig(max_new_tokens=12, min_new_tokens=12, do_sample=False, eos_token_id=[])
    loaded = ca.Lfm2VlModel.from_pretrained(tiny_captioner_dir, dtype="bf16", keep_fp32=False)
    converted = ca.Lfm2VlModel.from_pretrained(tiny_captioner_dir).to_inference_dtype("bf16", keep_fp32=False)
    assert loaded.caption(image, generation=settings) == converted.caption(image, generation=settings)
    assert loaded.vision._core.fp32_dropped() and loaded.text._core.fp32_dropped()
    loaded.to_inference_dtype("bf16")
    converted.to_inference_dtype("bf16")
    for key, value in converted.vision.parameters().items():
        np.testing.assert_array_equal(loaded.vision.parameters()[key], value, err_msg=key)
