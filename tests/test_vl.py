"""The whole LFM2-VL model against transformers' Lfm2VlForConditionalGeneration (fixtures written by
tests/reference/make_lfm2vl_model_reference.py): logits of a prompt with image tokens, the caption loss and
every gradient (vision tower, projector, language model); checkpoint round trip; bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import captionaura as ca

FIXTURES = Path(__file__).parent / "reference" / "fixtures" / "lfm2vl"
NAMES = sorted(p.name for p in FIXTURES.iterdir() if (p / "model_reference.npz").is_file())


@pytest.fixture(scope="module", params=NAMES)
def case(request):
    folder = FIXTURES / request.param
    ref = dict(np.load(folder / "model_reference.npz"))
    pixels = dict(np.load(folder / "reference.npz"))
    return folder, ref, pixels, ca.Lfm2VlModel.from_pretrained(folder)


def pixel_args(pixels):
    return dict(pixel_values=pixels["pixel_values"], spatial_shapes=pixels["spatial_shapes"],
                pixel_attention_mask=pixels["pixel_attention_mask"])


def test_fixtures_exist():
    assert len(NAMES) >= 3


def test_logits_match_transformers(case):
    _, ref, pixels, model = case
    logits = model.forward(ref["input_ids"], **pixel_args(pixels)).logits
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)


def test_caption_loss_and_every_gradient_match_transformers(case):
    _, ref, pixels, model = case
    loss = model.loss_and_grad(ref["input_ids"], ref["labels"], **pixel_args(pixels))
    assert abs(loss - float(ref["loss"])) <= 1e-5 * abs(float(ref["loss"]))
    grads = model.gradients()
    # transformers 5.23 names the tower model.vision_tower.*, hub checkpoints model.vision_tower.vision_model.*
    expected = {k[len("grad."):].replace("vision_tower.", "vision_tower.vision_model."): v
                for k, v in ref.items() if k.startswith("grad.")}
    # the key bias's true gradient is 0 (a constant added to every score of a query leaves softmax unchanged):
    # both sides hold rounding noise there, so norms are floored at 1e-4 of the whole model's gradient
    floor = 1e-4 * np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in expected.values()))
    checked = 0
    for name, g in grads.items():
        want = expected[name]
        err = np.linalg.norm(g - want) / max(np.linalg.norm(want), floor)
        assert err <= 1e-3, f"{name}: relative gradient error {err:.2e}"
        checked += 1
    vision = [n for n in grads if "vision_tower" in n or "multi_modal_projector" in n]
    assert checked == len(grads) and len(vision) > 10


def test_save_and_reload(case, tmp_path):
    _, ref, pixels, model = case
    model.save_pretrained(tmp_path)
    again = ca.Lfm2VlModel.from_pretrained(tmp_path)
    np.testing.assert_array_equal(again.forward(ref["input_ids"], **pixel_args(pixels)).logits,
                                  model.forward(ref["input_ids"], **pixel_args(pixels)).logits)


def test_image_tokens_must_match_the_images(case):
    _, ref, pixels, model = case
    short = ref["input_ids"][:, :-3].copy()
    extra = np.concatenate([short, np.full((1, 1), model.image_token_id, np.int32)], axis=1)
    with pytest.raises(ValueError, match="image tokens"):
        model.forward(extra, **pixel_args(pixels))
    with pytest.raises(ValueError, match="no image"):
        model.forward(ref["input_ids"])


def test_lora_on_the_language_model_trains_captions(case):
    """LoRA adapters on the language model see the image through the features; the base stays frozen."""
    _, ref, pixels, model = case
    model.text.add_lora(ca.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), seed=0)
    model.text.set_optimizer(ca.AdamWConfig(lr=3e-2, weight_decay=0.0))
    losses = []
    for _ in range(15):
        losses.append(model.loss_and_grad(ref["input_ids"], ref["labels"], train_vision=False, **pixel_args(pixels)))
        model.text.optimizer.step()
    model.text.remove_lora()
    assert losses[-1] < 0.5 * losses[0]


# ---- captioning --------------------------------------------------------------------------------------

def test_caption_equals_generating_from_the_prompt_and_features(captioner):
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    settings = ca.GenerationConfig(max_new_tokens=12, min_new_tokens=12, do_sample=False, eos_token_id=[])
    text = captioner.caption(image, generation=settings)
    ids, features = captioner._caption_inputs(image, None)
    tokens = captioner.text.generate(ids, generation=settings, features=features)[0]
    assert text == captioner.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    # the first generated token is the argmax of the full forward's last logits (image features included)
    logits = captioner.forward(images=[image], messages=[{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "Write a short caption for this image."}]}]).logits
    assert tokens[0] == int(np.argmax(logits[0, -1]))
    assert "".join(captioner.caption(image, generation=settings, stream=True)) == text
    assert captioner.caption([image, image], generation=settings) == [text, text]


def test_caption_needs_a_processor(case):
    _, _, _, model = case
    with pytest.raises(ValueError, match="processor"):
        model.caption(np.zeros((32, 32, 3), np.uint8))


def test_lora_learns_image_captions_with_only_caption_tokens_scored(captioner):
    """Image + caption pairs become chat examples scored on the caption only; LoRA on the language model
    (the vision tower frozen) learns 8 of them in 100 steps."""
    colours = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (240, 240, 240), (10, 10, 10), (250, 200, 0),
               (160, 40, 200), (0, 200, 200)]
    rng = np.random.default_rng(0)
    images = [np.clip(np.full((48, 64, 3), c) + rng.normal(0, 8, (48, 64, 3)), 0, 255).astype(np.uint8)
              for c in colours]
    captions = ["a red kite", "green grass field", "blue sea waves", "white snow", "night sky", "yellow sun",
                "purple flowers", "cyan lagoon"]
    examples = [captioner.caption_example(img, cap) for img, cap in zip(images, captions)]
    ex = examples[0]
    scored = ex["labels"] != -100
    tok = captioner.processor.tokenizer
    assert tok.decode(ex["input_ids"][scored]) == captions[0] + "<|im_end|>"
    assert not scored[ex["input_ids"] == captioner.image_token_id].any()
    assert scored.sum() < 0.2 * scored.size  # the prompt and image tokens are most of the sequence

    captioner.text.add_lora(ca.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"), seed=0)
    try:
        cfg = ca.TrainingConfig(max_steps=100, batch_size=8, progressbar=False,
                                optimizer=ca.AdamWConfig(lr=1e-2, weight_decay=0.0))
        history = ca.Trainer(captioner, examples, cfg).train()
    finally:
        captioner.text.remove_lora()
    assert history[0]["loss"] > 1.0 and history[-1]["loss"] < 0.05


def test_full_training_updates_every_parameter_and_resumes_exactly(captioner, tmp_path):
    """train_vision=True: one AdamW over the language model and the vision tower + projector; every tensor moves,
    the loss falls, and a run resumed from its checkpoint ends where the uninterrupted run ends."""
    colours = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (240, 240, 240)]
    images = [np.full((32, 32, 3), c, np.uint8) for c in colours]
    captions = ["a red kite", "green grass", "blue sea", "white snow"]

    def fresh():
        model = ca.Lfm2VlModel.from_config(captioner.config, seed=3)
        model.processor = captioner.processor
        return model, [model.caption_example(img, cap) for img, cap in zip(images, captions)]

    cfg = dict(max_steps=6, batch_size=2, train_vision=True, lr_scheduler="cosine", warmup_steps=2, save_every=3,
               progressbar=False, optimizer=ca.AdamWConfig(lr=3e-3, weight_decay=0.0))
    straight, data = fresh()
    before = {k: v.copy() for k, v in straight.parameters().items()}
    history = ca.Trainer(straight, data, ca.TrainingConfig(**cfg, output_dir=str(tmp_path / "a"))).train()
    assert history[-1]["loss"] < history[0]["loss"]
    unchanged = [k for k, v in straight.parameters().items() if np.array_equal(v, before[k])]
    assert not unchanged, f"not trained: {unchanged[:3]}"

    first, data = fresh()
    part = ca.Trainer(first, data, ca.TrainingConfig(**cfg, output_dir=str(tmp_path / "b")))
    part.total_steps = 3  # stop after the first checkpoint, as a killed run would (with 2 warmup steps the
    part.train()          # first 3 learning rates do not depend on the run's length)
    resumed, data = fresh()
    ca.Trainer(resumed, data, ca.TrainingConfig(**cfg, output_dir=str(tmp_path / "b"))).train(resume=True)
    for name, value in straight.parameters().items():
        np.testing.assert_array_equal(resumed.parameters()[name], value, err_msg=name)


def test_train_vision_needs_a_vision_model():
    text = ca.Lfm2Model.from_config(ca.Lfm2Config(vocab_size=16, hidden_size=16, intermediate_size=32,
                                                  num_hidden_layers=1, num_attention_heads=2,
                                                  num_key_value_heads=1), seed=0)
    example = {"input_ids": np.arange(1, 5, dtype=np.int32), "labels": np.arange(1, 5, dtype=np.int32)}
    with pytest.raises(ValueError, match="train_vision"):
        ca.Trainer(text, [example], ca.TrainingConfig(max_steps=1, train_vision=True))
