"""Reference outputs of the whole tiny LFM2-VL models in tests/reference/fixtures/lfm2vl/<name>/ for a
captioning example: a prompt, the image's <image> tokens (one per projected feature) and a caption.

Writes <name>/model_reference.npz:
    input_ids     (1, T) i32   prompt, image_token_id × M, caption
    labels        (1, T) i32   −100 on the prompt and image tokens: only the caption is scored
    logits        (1, T, V)    Lfm2VlForConditionalGeneration(input_ids, pixel_values, ...) logits
    loss          ()           its caption loss
    grad.<name>                d loss / d every parameter (vision tower, projector, language model)
The pixel inputs are those of <name>/reference.npz. As in make_lfm2vl_reference.py, the vision tower runs
the layers that vision_feature_layer selects (lfm2.md §4.4: layers[:vfl + 1], all when vfl = −1; transformers
5.23 itself would run every layer it built). Run offline with torch 2.13.0 (CPU) + transformers:
    python tests/reference/make_lfm2vl_model_reference.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import Lfm2VlForConditionalGeneration

ROOT = Path(__file__).parent / "fixtures" / "lfm2vl"


def build(folder: Path) -> None:
    torch.manual_seed(0)
    model = Lfm2VlForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    ref = np.load(folder / "reference.npz")
    cfg = json.loads((folder / "config.json").read_text())
    tower = model.model.vision_tower
    n_layers, vfl = cfg["vision_config"]["num_hidden_layers"], cfg.get("vision_feature_layer", -1)
    tower.encoder.layers = tower.encoder.layers[: n_layers if vfl == -1 else vfl % n_layers + 1]
    image_token = cfg.get("image_token_id", cfg.get("image_token_index"))
    vocab = cfg["text_config"]["vocab_size"]
    m = ref["features"].shape[0]
    rng = np.random.default_rng(0)
    words = [t for t in range(3, vocab) if t != image_token]
    prompt = [1] + list(rng.choice(words, 5))
    caption = list(rng.choice(words, 8))
    ids = np.array([prompt + [image_token] * m + caption], dtype=np.int64)
    labels = ids.copy()
    labels[0, : len(prompt) + m] = -100
    out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)),
                pixel_values=torch.from_numpy(ref["pixel_values"]), spatial_shapes=torch.from_numpy(ref["spatial_shapes"]).long(),
                pixel_attention_mask=torch.from_numpy(ref["pixel_attention_mask"]).bool(), labels=torch.from_numpy(labels))
    out.loss.backward()
    arrays = {"input_ids": ids.astype(np.int32), "labels": labels.astype(np.int32),
              "logits": out.logits.detach().numpy().astype(np.float32), "loss": np.float32(out.loss.item())}
    for name, p in model.named_parameters():
        if p.grad is not None:
            arrays[f"grad.{name}"] = p.grad.numpy().astype(np.float32)
    np.savez_compressed(folder / "model_reference.npz", **arrays)
    print(f"{folder.name}: T={ids.shape[1]} image tokens={m} loss={out.loss.item():.5f} grads={len(arrays) - 4}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    for folder in sorted(p for p in ROOT.iterdir() if (p / "reference.npz").is_file()):
        build(folder)
