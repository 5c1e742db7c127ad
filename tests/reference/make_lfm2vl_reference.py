#!/usr/bin/env python3
"""Generate the LFM2-VL vision-side reference fixtures (SigLIP2 tower + projector) for captionaura's C core.

Run by hand (never by the test suite), offline, with the reference virtual environment:

    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch==2.13.0 transformers==5.23.0 safetensors numpy
    .venv-ref/bin/python tests/reference/make_lfm2vl_reference.py

It builds tiny random ``Lfm2VlForConditionalGeneration`` models (float32, CPU, eager attention, seeded, no hub
access) and writes, for each one, ``tests/reference/fixtures/lfm2vl/<name>/``:

* ``config.json`` + ``model.safetensors`` (float32, the whole model: language model, vision tower, projector)
  from ``save_pretrained``; for the ``vision_feature_layer`` fixtures config.json is then edited (see below);
* ``reference.npz`` with the keys

    pixel_values          (T, P, K) f32   tiles as Lfm2VlModel.get_image_features receives them: patch (r, c) of a
                                          tile is row r*wP + c, element (py*p + px)*3 + ch; rows >= hP*wP are 0
    spatial_shapes        (T, 2)  i32     (hP, wP) per tile
    pixel_attention_mask  (T, P)  i32     1 for the first hP*wP rows, 0 after
    features              (M, TH) f32     torch.cat(get_image_features(...).pooler_output): projector output, tile
                                          after tile, each tile row-major over its (hP/2, wP/2) grid
    hidden_states         (L+1, N, D) f32 vision tower output_hidden_states, valid rows only, tiles packed one
                                          after the other (N = sum hP*wP): [0] embeddings, [l+1] output of layer l
                                          (the last entry is BEFORE post_layernorm)
    last_hidden_state     (N, D)  f32     post_layernorm output, valid rows packed
    R                     (M, TH) f32     fixed random weights of the scalar loss = sum(features * R)
    loss                  ()      f32
    grad.<name>           param shape     d loss / d parameter for every vision tower and projector parameter
                                          that the features depend on (Hugging Face names)

Semantics checked here and relied on by the tests (transformers 5.23.0):
* Siglip2VisionModel runs every layer it was built with and applies post_layernorm; Lfm2VlModel ignores
  ``vision_feature_layer``. captionaura follows lfm2.md §4.4 instead: layers_run = vfl == -1 ? N : vfl mod N + 1
  (the remote-code truncation, which is what the published 1.6B checkpoint's 26 stored layers imply). The two
  fixtures with vfl != -1 are therefore built so that transformers computes exactly the truncated tower:
    - ``no_ln`` is built with 2 vision layers, then its config.json claims num_hidden_layers=3 and
      vision_feature_layer=-2 (the 1.6B layout: the file holds only the layers that run);
    - ``p16`` is built and saved with 3 layers, config vision_feature_layer=1, and the reference is computed
      with the encoder cut to layers[:2] (the file holds a layer past the feature layer, which a loader must
      accept and ignore).
* padded rows (mask 0) do not influence valid rows: each tile computed alone with no padding gives the same
  features (checked below to 1e-5).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

import safetensors
import transformers
from transformers import Lfm2VlConfig, Lfm2VlForConditionalGeneration

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

OUT = Path(__file__).resolve().parent / "fixtures" / "lfm2vl"

TEXT = dict(model_type="lfm2", vocab_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=48, layer_types=["conv", "full_attention"], max_position_embeddings=64,
            block_multiple_of=16)

CONFIGS = {
    # projector LayerNorm on, vfl -1, 16x16 position table, patch 4 (K=48) to keep pixel tensors small;
    # tiles: 16x16 (identity resize), 6x10 (downsample both), 2x12 wide, 10x4 tall; padded to 256.
    "base": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    patch_size=4, num_patches=256),
        top=dict(projector_hidden_size=40, projector_use_layernorm=True, projector_bias=True),
        text_hidden=24, build_layers=2, run_layers=2, config_edit=None,
        tiles=[(16, 16), (6, 10), (2, 12), (10, 4)], P=256,
    ),
    # no projector LayerNorm; 3 heads of 16; built with 2 layers, config then says 3 layers + vfl -2;
    # tiles: 20x14 (up in y, down in x; 280 patches = two attention query blocks), 8x8, 4x2; padded to 280.
    "no_ln": dict(
        vision=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=3,
                    patch_size=4, num_patches=256),
        top=dict(projector_hidden_size=56, projector_use_layernorm=False, projector_bias=True),
        text_hidden=32, build_layers=2, run_layers=2,
        config_edit=dict(num_hidden_layers=3, vision_feature_layer=-2),
        tiles=[(20, 14), (8, 8), (4, 2)], P=280,
    ),
    # real patch size 16 (K=768, (py, px, c) order), 8x8 position table, 4 heads of 8, projector without
    # biases; saved with 3 layers, vision_feature_layer=1 runs 2. Tiles: 4x6 (downsample), 10x12 (upsample).
    "p16": dict(
        vision=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                    patch_size=16, num_patches=64),
        top=dict(projector_hidden_size=36, projector_use_layernorm=True, projector_bias=False),
        text_hidden=20, build_layers=3, run_layers=2, config_edit=dict(vision_feature_layer=1),
        tiles=[(4, 6), (10, 12)], P=120,
    ),
}


def make_config(spec: dict) -> Lfm2VlConfig:
    vision = dict(model_type="siglip2_vision_model", num_channels=3, layer_norm_eps=1e-6,
                  hidden_act="gelu_pytorch_tanh", vision_use_head=False, **spec["vision"])
    vision["num_hidden_layers"] = spec["build_layers"]
    text = dict(TEXT, hidden_size=spec["text_hidden"])
    cfg = Lfm2VlConfig(vision_config=vision, text_config=text, downsample_factor=2, projector_hidden_act="gelu",
                       image_token_id=60, **spec["top"])
    cfg._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    cfg.text_config._attn_implementation = "eager"
    return cfg


@torch.no_grad()
def init_weights(model, seed: int) -> None:
    """Deterministic, non-trivial weights (LayerNorm weights away from 1, biases away from 0)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim == 1 and ("norm" in name or "layernorm" in name) and name.endswith(".weight"):
            p.copy_(1.0 + 0.25 * torch.randn(p.shape, generator=g))
        elif p.ndim == 1:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        elif name.endswith("position_embedding.weight"):
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
        elif name.endswith("embed_tokens.weight"):
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
        elif p.ndim == 2:
            p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(p.shape[1]))
        else:  # conv kernels of the language model
            p.copy_(0.5 * torch.randn(p.shape, generator=g))


def make_inputs(spec: dict, K: int, seed: int):
    rng = np.random.default_rng(seed)
    T, P = len(spec["tiles"]), spec["P"]
    pv = np.zeros((T, P, K), dtype=np.float32)
    mask = np.zeros((T, P), dtype=np.int32)
    for t, (h, w) in enumerate(spec["tiles"]):
        # what the processor produces: (u8/255 - 0.5)/0.5 of uint8 pixels (also compresses well)
        u8 = rng.integers(0, 256, size=(h * w, K)).astype(np.float32)
        pv[t, : h * w] = (u8 / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)
        mask[t, : h * w] = 1
    shapes = np.array(spec["tiles"], dtype=np.int32)
    return pv, shapes, mask


def build_one(name: str, spec: dict, seed: int) -> dict:
    cfg = make_config(spec)
    torch.manual_seed(seed)
    model = Lfm2VlForConditionalGeneration(cfg).float().eval()
    init_weights(model, seed)
    vm = model.model.vision_tower
    K = 3 * spec["vision"]["patch_size"] ** 2
    pv, shapes, mask = make_inputs(spec, K, seed + 1)
    t_pv, t_sh, t_mask = torch.from_numpy(pv), torch.from_numpy(shapes).long(), torch.from_numpy(mask)

    all_layers = vm.encoder.layers
    if spec["run_layers"] != spec["build_layers"]:  # remote-code truncation: layers[:vision_feature_layer + 1]
        vm.encoder.layers = torch.nn.ModuleList(list(all_layers)[: spec["run_layers"]])
    L = len(vm.encoder.layers)

    model.zero_grad(set_to_none=True)
    out = model.model.get_image_features(pixel_values=t_pv, spatial_shapes=t_sh, pixel_attention_mask=t_mask)
    feats = torch.cat(list(out.pooler_output), dim=0)
    rng = np.random.default_rng(seed + 2)
    R = rng.standard_normal(tuple(feats.shape)).astype(np.float32)
    loss = (feats * torch.from_numpy(R)).sum()
    loss.backward()

    with torch.no_grad():
        vo = model.model.vision_tower(pixel_values=t_pv, spatial_shapes=t_sh, pixel_attention_mask=t_mask,
                                      output_hidden_states=True)
    hs = vo.hidden_states
    assert len(hs) == L + 1, (name, len(hs))
    valid = [slice(0, int(h * w)) for h, w in spec["tiles"]]
    pack = lambda x: np.concatenate([x[t, valid[t]].numpy() for t in range(len(valid))], axis=0)  # noqa: E731
    hidden = np.stack([pack(h) for h in hs])
    last = pack(vo.last_hidden_state)
    with torch.no_grad():  # the last hidden state is BEFORE post_layernorm; last_hidden_state after it
        assert torch.equal(vm.post_layernorm(hs[-1]), vo.last_hidden_state)
        assert not torch.equal(hs[-1], vo.last_hidden_state)

    # each tile alone, unpadded, gives the same features (padding is masked out)
    with torch.no_grad():
        alone = []
        for t, (h, w) in enumerate(spec["tiles"]):
            o = model.model.get_image_features(pixel_values=t_pv[t : t + 1, : h * w],
                                               spatial_shapes=t_sh[t : t + 1],
                                               pixel_attention_mask=t_mask[t : t + 1, : h * w])
            alone.append(o.pooler_output[0])
        d_alone = float((torch.cat(alone) - feats.detach()).abs().max())
        assert d_alone < 1e-5, (name, d_alone)

    res = {
        "pixel_values": pv, "spatial_shapes": shapes, "pixel_attention_mask": mask,
        "features": feats.detach().numpy(), "hidden_states": hidden, "last_hidden_state": last,
        "R": R, "loss": np.asarray(loss.item(), dtype=np.float32),
    }
    ngrads = 0
    for pname, p in model.named_parameters():
        if not (pname.startswith("model.vision_tower.") or pname.startswith("model.multi_modal_projector.")):
            continue
        if p.grad is None:
            continue
        res["grad." + pname] = p.grad.detach().numpy().copy()
        ngrads += 1
    for k, v in res.items():
        assert v.dtype in (np.float32, np.int32), (k, v.dtype)

    vm.encoder.layers = all_layers  # save the model as built
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    model.save_pretrained(d, safe_serialization=True)
    (d / "generation_config.json").unlink(missing_ok=True)
    cj = json.loads((d / "config.json").read_text())
    if spec["config_edit"]:
        ed = dict(spec["config_edit"])
        if "num_hidden_layers" in ed:
            cj["vision_config"]["num_hidden_layers"] = ed.pop("num_hidden_layers")
        cj.update(ed)
        (d / "config.json").write_text(json.dumps(cj, indent=2, sort_keys=True) + "\n")
    np.savez_compressed(d / "reference.npz", **res)

    from safetensors import safe_open
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        keys = sorted(f.keys())
    nvis = sum(k.startswith("model.vision_tower.") for k in keys)
    info = {
        "seed": seed, "tiles": spec["tiles"], "P": spec["P"], "patch_dim": K, "layers_in_file": spec["build_layers"],
        "layers_run": L, "config_vision_num_hidden_layers": cj["vision_config"]["num_hidden_layers"],
        "vision_feature_layer": cj.get("vision_feature_layer", -1), "num_tokens": int(feats.shape[0]),
        "features_shape": list(feats.shape), "loss": float(loss.item()), "grad_tensors": ngrads,
        "vision_tensors_in_file": nvis, "each_tile_alone_max_abs": d_alone,
    }
    print(f"{name:8s} tokens={feats.shape[0]:4d} layers run={L} grads={ngrads} loss={loss.item():.5f} "
          f"alone-vs-batch={d_alone:.1e}", flush=True)
    return info


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    fixtures = {}
    for k, (name, spec) in enumerate(CONFIGS.items()):
        fixtures[name] = build_one(name, spec, seed=4321 + 100 * k)
    meta = {
        "generator": "tests/reference/make_lfm2vl_reference.py",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "safetensors": safetensors.__version__,
                     "numpy": np.__version__},
        "settings": {"dtype": "float32", "device": "cpu", "attn_implementation": "eager", "torch_threads": 1},
        "fixtures": fixtures,
    }
    (OUT / "versions.json").write_text(json.dumps(meta, indent=2) + "\n")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    sys.exit(main())
