"""The packaged default model, aura-tiny: it loads, its tokenizer is a plain Hugging Face tokenizer that round-trips
AuraScenes captions (emoji and hashtags included), its captions of held-out AuraScenes images score far above a
random model of the same architecture, and scripts/make_aura_tiny.py is reproducible from its seed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer as HfTokenizer

import captionaura as ca
import captionaura.metrics as cm
from captionaura.data import AuraScenes
from captionaura.default import default_model_path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_aura_tiny.py"
STYLED = ["Golden hour at the beach 🌅🏖️ #sunset #beachlife #nofilter", "snow day!! ❄️☃️ #winter #cozy",
          "城市的夜晚 🌃 #citylights", "Two red kites 🪁🪁 dancing over the dunes ✨ #windy #kites"]


@pytest.fixture(scope="module")
def model() -> ca.Lfm2VlModel:
    return ca.load_default()


@pytest.fixture(scope="module")
def heldout() -> list:
    return AuraScenes(seed=0, image_size=128).heldout_split(24)


def world_captions(heldout) -> list[str]:
    """Held-out references, every user style's captions and posts (emoji, hashtags, signatures), and a few
    captions the world never writes."""
    users = AuraScenes(seed=0, image_size=128).users(6, train_per_user=3, test_per_user=0, posts_per_user=3)
    styled = [c for user in users for ex in user.train for c in ex.captions] + [p for u in users for p in u.posts]
    assert any("#" in c for c in styled) and any(not c.isascii() for c in styled)
    return [c for ex in heldout for c in ex.captions] + styled + STYLED


def test_load_default_gives_the_packaged_captioner(model):
    assert isinstance(model, ca.Lfm2VlModel)
    assert model.processor is not None and model.generation_config is not None
    assert 2_000_000 <= model.num_parameters() <= 6_000_000
    tok = model.processor.tokenizer
    assert model.text.config.vocab_size == tok.vocab_size
    assert model.image_token_id == tok.token_to_id("<image>") == model.processor.image_token_id
    assert model.generation_config.eos_ids() == [tok.token_to_id("<|im_end|>")]
    files = list(default_model_path().iterdir())
    assert sum(f.stat().st_size for f in files) < 20_000_000
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json",
            "generation_config.json", "metrics.json", "README.md"} <= {f.name for f in files}


def test_tokenizer_round_trips_captions_with_emoji_and_hashtags(model, heldout):
    tok = model.processor.tokenizer
    for text in world_captions(heldout):
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    # the BPE learned the captions' words: far fewer tokens than bytes
    text = heldout[0].captions[0]
    assert len(tok.encode(text, add_special_tokens=False)) < len(text.encode()) / 2.5


def test_tokenizer_file_is_plain_hugging_face_and_renders_the_lfm2_vl_prompt(model, heldout):
    """tokenizers' own loader gives the same ids; the chat template renders LFM2-VL's prompt layout (lfm2.md
    §4.8) with each special token a single id."""
    tok = model.processor.tokenizer
    hf = HfTokenizer.from_file(str(default_model_path() / "tokenizer.json"))
    for text in world_captions(heldout):
        assert hf.encode(text, add_special_tokens=False).ids == tok.encode(text, add_special_tokens=False)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this image?"}]}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "<|startoftext|><|im_start|>user\n<image>What is in this image?<|im_end|>\n<|im_start|>assistant\n"
    ids = hf.encode(prompt, add_special_tokens=False).ids
    assert ids == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    for special in ("<|startoftext|>", "<|im_start|>", "<image>", "<|im_end|>"):
        assert hf.token_to_id(special) in ids
    assert tok.bos_token_id == hf.token_to_id("<|startoftext|>") and tok.pad_token_id == hf.token_to_id("<|pad|>")


def test_captions_of_heldout_images_score_far_above_a_random_model(model, heldout):
    refs = {i: ex.captions for i, ex in enumerate(heldout)}
    trained = cm.evaluate(refs, {i: model.caption(ex.image) for i, ex in enumerate(heldout)}).scores
    random_model = ca.Lfm2VlModel.from_config(model.config, seed=1)
    random_model.processor = model.processor
    random_model.generation_config = model.generation_config.replace(max_new_tokens=16)
    guesses = {i: random_model.caption(ex.image) or "empty" for i, ex in enumerate(heldout[:8])}
    baseline = cm.evaluate({i: refs[i] for i in guesses}, guesses).scores
    assert trained["CIDEr"] > 0.5 and trained["CIDEr"] > 10 * baseline["CIDEr"] + 0.3
    assert trained["Bleu_4"] > 0.2 and trained["ROUGE_L"] > baseline["ROUGE_L"] + 0.3


def test_script_is_reproducible_from_its_seed(tmp_path):
    spec = importlib.util.spec_from_file_location("make_aura_tiny", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    sys.modules["make_aura_tiny"] = script
    spec.loader.exec_module(script)
    args = ["--steps", "2", "--batch-size", "4", "--public-images", "12", "--heldout-images", "2", "--vocab-size",
            "300", "--no-progress"]
    for name in ("a", "b"):
        script.main(args + ["--out", str(tmp_path / name)])
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    other = tmp_path / "c"
    script.main(args + ["--out", str(other), "--seed", "1"])
    assert (other / "model.safetensors").read_bytes() != (tmp_path / "a" / "model.safetensors").read_bytes()
    assert not list(tmp_path.glob(".*"))  # no temporary folder left behind
    loaded = ca.Lfm2VlModel.from_pretrained(tmp_path / "a")
    assert isinstance(loaded.caption(np.zeros((128, 128, 3), np.uint8)), str)
