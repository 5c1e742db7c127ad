#!/usr/bin/env python3
"""Reference fixtures for LoRA on the whole LFM2-VL model (language model, vision tower, projector), with
Hugging Face PEFT as the reference. Run by hand (never by the test suite), offline, with a reference venv:

    python3 -m venv /work/refvenv-vl
    /work/refvenv-vl/bin/pip install torch==2.13.0 transformers==5.23.0 peft safetensors numpy pillow
    /work/refvenv-vl/bin/python tests/reference/make_vl_lora_reference.py

It reuses the tiny LFM2-VL of ``tests/reference/fixtures/lfm2vl/base/`` (weights, pixel inputs in
reference.npz, the captioning batch in model_reference.npz; see make_lfm2vl_model_reference.py), wraps
``Lfm2VlForConditionalGeneration`` with ``peft.get_peft_model(model, LoraConfig(...))``, overwrites every lora_A /
lora_B with seeded random values (B != 0, so every gradient is informative) and writes
``tests/reference/fixtures/vl_lora/<case>/``:

* ``adapter/``: ``peft_model.save_pretrained`` (README.md deleted, ``base_model_name_or_path`` made
  repository-relative, a list ``target_modules`` sorted; nothing else changed).
* ``reference.npz``:
    input_ids, labels  (1, T) int32  the base fixture's captioning batch
    logits             (1, T, V)     adapted model
    loss               ()            its caption loss
    grad.<key>         key shape     d loss / d LoRA parameter; <key> = the adapter_model.safetensors key
    logits_disabled    (1, T, V)     inside ``disable_adapter()``
    merged_logits      (1, T, V)     after ``merge_and_unload()``
* ``targets.json``: the module paths PEFT adapted (sorted), to check target matching ("all-linear" included).

Checked here: PeftModel.from_pretrained(fresh base, adapter/) reproduces the logits.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import Lfm2VlForConditionalGeneration

torch.set_num_threads(1)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BASE = HERE / "fixtures" / "lfm2vl" / "base"
OUT = HERE / "fixtures" / "vl_lora"

CASES = {
    "all_linear": dict(seed=5151, config=dict(r=2, lora_alpha=4, target_modules="all-linear")),
    "vision_regex_rslora": dict(seed=5252, config=dict(
        r=3, lora_alpha=5, use_rslora=True, init_lora_weights="gaussian",
        target_modules=r"model\.(vision_tower\..*\.(q_proj|v_proj|fc2)|multi_modal_projector\.linear_1"
                       r"|language_model\..*\.w2)")),
}


def load_base() -> Lfm2VlForConditionalGeneration:
    model = Lfm2VlForConditionalGeneration.from_pretrained(BASE, dtype=torch.float32, attn_implementation="eager")
    cfg = json.loads((BASE / "config.json").read_text())
    n_layers, vfl = cfg["vision_config"]["num_hidden_layers"], cfg.get("vision_feature_layer", -1)
    tower = model.model.vision_tower
    tower.encoder.layers = tower.encoder.layers[: n_layers if vfl == -1 else vfl % n_layers + 1]
    return model.eval()


def inputs() -> dict[str, torch.Tensor]:
    ref, batch = np.load(BASE / "reference.npz"), np.load(BASE / "model_reference.npz")
    ids = torch.from_numpy(batch["input_ids"].astype(np.int64))
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                pixel_values=torch.from_numpy(ref["pixel_values"]),
                spatial_shapes=torch.from_numpy(ref["spatial_shapes"]).long(),
                pixel_attention_mask=torch.from_numpy(ref["pixel_attention_mask"]).bool(),
                labels=torch.from_numpy(batch["labels"].astype(np.int64)))


def build(name: str, seed: int, config: dict) -> None:
    out = OUT / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = get_peft_model(load_base(), LoraConfig(**config))
    gen = torch.Generator().manual_seed(seed)
    targets = []
    for module_name, module in model.base_model.model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            targets.append(module_name)
            A, B = module.lora_A["default"].weight, module.lora_B["default"].weight
            with torch.no_grad():
                A.copy_(torch.randn(A.shape, generator=gen) * 0.3 / A.shape[1] ** 0.5)
                B.copy_(torch.randn(B.shape, generator=gen) * 0.3 / B.shape[1] ** 0.5)
    for n, p in model.named_parameters():
        assert p.requires_grad == ("lora_" in n), n
    batch = inputs()
    res = model(**batch)
    res.loss.backward()
    arrays = {"input_ids": batch["input_ids"].numpy().astype(np.int32),
              "labels": batch["labels"].numpy().astype(np.int32),
              "logits": res.logits.detach().numpy(), "loss": np.float32(res.loss.item())}
    for n, p in model.named_parameters():
        if "lora_" in n:
            arrays["grad." + n.replace(".default", "")] = p.grad.numpy().copy()
    with torch.no_grad(), model.disable_adapter():
        arrays["logits_disabled"] = model(**batch).logits.numpy()
    model.save_pretrained(out / "adapter")
    (out / "adapter" / "README.md").unlink(missing_ok=True)
    cfg_path = out / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(BASE.relative_to(REPO))
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    reloaded = PeftModel.from_pretrained(load_base(), out / "adapter").eval()
    with torch.no_grad():
        again = reloaded(**batch).logits.numpy()
        assert np.array_equal(again, arrays["logits"]), "reloaded adapter differs"
        arrays["merged_logits"] = reloaded.merge_and_unload()(**batch).logits.numpy()
    np.savez_compressed(out / "reference.npz", **arrays)
    (out / "targets.json").write_text(json.dumps(sorted(targets), indent=1) + "\n")
    print(f"{name}: {len(targets)} adapted modules, loss {res.loss.item():.6f}")


if __name__ == "__main__":
    for case, spec in CASES.items():
        build(case, spec["seed"], spec["config"])
    (OUT / "versions.json").write_text(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__,
                                                   "peft": peft.__version__}, indent=1) + "\n")
