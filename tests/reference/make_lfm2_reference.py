#!/usr/bin/env python3
"""Generate the LFM2 reference fixtures that captionaura's C core is tested against.

Run by hand (never by the test suite), offline, with the reference virtual environment:

    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch==2.13.0 transformers safetensors numpy
    .venv-ref/bin/python tests/reference/make_lfm2_reference.py

It builds several tiny random ``Lfm2ForCausalLM`` models (float32, CPU, ``attn_implementation="eager"``,
seeded, no Hugging Face hub access) and writes, for each one, ``tests/reference/fixtures/lfm2/<name>/``:

* ``config.json`` + ``model.safetensors`` (float32) written by ``save_pretrained``. Tied models have no
  ``lm_head.weight`` tensor. For ``aliases`` the config.json is then rewritten by hand to use the original
  LFM2 key aliases (see ``ALIAS_REWRITE``) and the script checks that transformers loads it identically.
* ``reference.npz`` (float32 tensors, int32 ids; see ``KEYS`` below), and one ``versions.json`` for all.

npz keys (B = 2 rows, T = padded length, T0 = T (row 0 is unpadded), T1 < T, C = hidden, V = vocab, L = layers):

    input_ids        (B,T)   int32  right-padded with pad_token_id (0) after row 1's T1 tokens
    attention_mask   (B,T)   int32  1 = real token, 0 = padding (row 0 all ones)
    labels           (B,T)   int32  input_ids with a few -100s and -100 on every padded position
    logits           (B,T,V) f32    padded-batch forward (attention_mask passed)
    hidden_states    (L+1,B,T,C)    ``output_hidden_states=True`` of the padded-batch forward, stacked
    embed_out        (B,T,C)        model.embed_tokens output (hook)
    layer_out.{i}    (B,T,C)        output of decoder layer i (hook), i = 0..L-1
    mixer_out.{i}    (B,T,C)        output of layer i's conv / self_attn block, before its residual add (hook)
    ffn_out.{i}      (B,T,C)        output of layer i's feed_forward, before its residual add (hook)
    final_norm_out   (B,T,C)        model.embedding_norm output (the final RMSNorm) (hook)
    loss             ()      f32    model(..., labels=labels).loss on the padded batch
    grad.<name>      param shape    d loss / d parameter after loss.backward(), Hugging Face parameter names
                                    (tied models: a single grad.model.embed_tokens.weight, no lm_head)
    logits_row0      (T0,V)         forward of row 0 alone, no attention_mask
    logits_row1      (T1,V)         forward of row 1's T1 real tokens alone, no attention_mask

hidden_states layout (checked empirically by this script, transformers 5.23.0):
    L+1 entries.  hidden_states[0] = embedding output (= embed_out, input of layer 0);
    hidden_states[i] = output of decoder layer i-1 for i = 1..L-1 (= layer_out.{i-1});
    hidden_states[L] = final_norm_out, i.e. the LAST entry is AFTER the final ``embedding_norm`` (transformers
    replaces the last layer's raw output with ``last_hidden_state``); the raw output of the last decoder
    layer appears only as ``layer_out.{L-1}``.

Padding semantics (transformers 5.23.0, modeling_lfm2.py / masking_utils.py):
    * conv layers: ``create_recurrent_attention_mask`` returns the 2-D attention_mask when it is given, T > 1 and
      it is not all ones (else None). ``Lfm2ShortConv.forward`` then multiplies its *input* (the operator_norm
      output) by the mask (``apply_mask_to_padding_states``) before in_proj. No biases, so B, C, x and the
      block output are exactly 0 at padded positions. With right padding the causal conv never lets padded
      positions reach real ones, so real positions equal the unpadded run.
    * attention layers: ``create_causal_mask`` = causal AND key-padding mask (additive min-float in eager).
      A padded query at position t (right padding) attends to all real keys j <= t (never fully masked, no NaN).
    * Padded positions still get logits (finite, stored in ``logits``); compare them only if you implement
      exactly the two rules above; real positions must match ``logits_row{0,1}``.

Loss (loss/loss_utils.py ForCausalLMLoss): labels are padded on the right with -100 and shifted left by one
(target for position t is labels[t+1], last position has none), logits are NOT sliced, then
``cross_entropy(ignore_index=-100, reduction="mean")`` = mean over all counted (non -100) targets of the whole
batch (not per row). attention_mask plays no part in the loss: padded positions are excluded only because their
labels are -100.

Gradient quirk: ``nn.Embedding(vocab, C, padding_idx=pad_token_id)`` receives NO gradient from the lookup of
token pad_token_id (0). Row 0 of grad.model.embed_tokens.weight therefore holds only the tied lm_head part.
Fixture ``mixed`` has token 0 at a real position of row 0 to exercise this.
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

import transformers
from transformers import Lfm2Config, Lfm2ForCausalLM
import safetensors

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

OUT = Path(__file__).resolve().parent / "fixtures" / "lfm2"

# Common small-model settings; each config overrides what it needs.
BASE = dict(
    max_position_embeddings=128,
    norm_eps=1e-5,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    conv_bias=False,
    use_cache=False,
    block_auto_adjust_ff_dim=True,
    block_ffn_dim_multiplier=1.0,
)

CONFIGS = {
    # 5 mixed layers; ff: 70 -> int(2*70/3)=46 -> *1.0=46 -> round up to 16 -> 48 (auto-adjust matters).
    "mixed": dict(
        vocab_size=300, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=5, layer_types=["conv", "full_attention", "conv", "conv", "full_attention"],
        intermediate_size=70, block_multiple_of=16, conv_L_cache=3,
        tie_word_embeddings=True, seq=(16, 11),
    ),
    # hidden 48, 3 heads, 1 KV head (head_dim 16), rope_theta 10000; ff: 50 -> 33 -> *1.5 = 49 -> 64.
    "odd": dict(
        vocab_size=200, hidden_size=48, num_attention_heads=3, num_key_value_heads=1,
        num_hidden_layers=3, layer_types=["full_attention", "conv", "full_attention"],
        intermediate_size=50, block_multiple_of=16, block_ffn_dim_multiplier=1.5, conv_L_cache=3,
        rope_theta=10000.0, tie_word_embeddings=True, seq=(13, 9),
    ),
    # no attention layer, conv kernel L=4; ff: 64 -> 42 -> 48.
    "conv_only": dict(
        vocab_size=128, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=3, layer_types=["conv", "conv", "conv"],
        intermediate_size=64, block_multiple_of=16, conv_L_cache=4, tie_word_embeddings=True, seq=(15, 10),
    ),
    # only attention layers, head_dim 8, 4 heads / 2 KV heads; auto-adjust OFF (ff used as is = 40).
    "attn_only": dict(
        vocab_size=160, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, layer_types=["full_attention", "full_attention"],
        intermediate_size=40, block_multiple_of=16, block_auto_adjust_ff_dim=False, conv_L_cache=3,
        tie_word_embeddings=True, seq=(14, 8),
    ),
    # untied lm_head (lm_head.weight saved and trained separately); ff: 48 -> 32 -> 32.
    "untied": dict(
        vocab_size=96, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
        num_hidden_layers=3, layer_types=["conv", "full_attention", "conv"],
        intermediate_size=48, block_multiple_of=16, conv_L_cache=3, tie_word_embeddings=False, seq=(17, 12),
    ),
    # saved normally, then config.json rewritten with the original LFM2 key aliases (ALIAS_REWRITE);
    # untied via tie_embedding=false; ff: block_ff_dim 96 -> 64 -> 64 (intermediate_size key holds a decoy 999).
    "aliases": dict(
        vocab_size=112, hidden_size=32, num_attention_heads=4, num_key_value_heads=1,
        num_hidden_layers=4, layer_types=["conv", "conv", "full_attention", "conv"],
        intermediate_size=96, block_multiple_of=32, conv_L_cache=3, rope_theta=50000.0,
        tie_word_embeddings=False, seq=(13, 7),
    ),
}


def ff_dim(cfg: dict) -> int:
    """lfm2.md §1.2, as in Lfm2MLP."""
    ff = cfg["intermediate_size"]
    if cfg.get("block_auto_adjust_ff_dim", True):
        ff = int(2 * ff / 3)
        mult = cfg.get("block_ffn_dim_multiplier", 1.0)
        if mult is not None:
            ff = int(mult * ff)
            m = cfg["block_multiple_of"]
            ff = m * ((ff + m - 1) // m)
    return ff


def make_config(spec: dict) -> Lfm2Config:
    kw = dict(BASE)
    kw.update({k: v for k, v in spec.items() if k not in ("seq", "rope_theta", "rope_parameters")})
    theta = spec.get("rope_theta", 1e6)
    kw["rope_parameters"] = {"rope_type": "default", "rope_theta": float(theta)}
    cfg = Lfm2Config(**kw)
    cfg._attn_implementation = "eager"
    return cfg


@torch.no_grad()
def init_weights(model: Lfm2ForCausalLM, seed: int) -> None:
    """Deterministic, non-trivial weights: every parameter influences the output."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):  # operator_norm, ffn_norm, q/k_layernorm, embedding_norm
            p.copy_(1.0 + 0.25 * torch.randn(p.shape, generator=g))
        elif name.endswith("conv.conv.weight"):  # [C,1,L]
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
        elif name == "model.embed_tokens.weight":
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
        elif p.ndim == 2:  # Linear [out, in] (incl. untied lm_head)
            p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(p.shape[1]))
        else:
            raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")


def make_inputs(spec: dict, vocab: int, seed: int, put_pad_token_inside: bool):
    T0, T1 = spec["seq"]
    T = T0
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(2, T)).astype(np.int64)
    mask = np.ones((2, T), dtype=np.int64)
    mask[1, T1:] = 0
    ids[1, T1:] = 0  # pad_token_id
    if put_pad_token_inside:
        ids[0, 5] = 0  # a real token equal to pad_token_id (padding_idx gradient quirk)
    labels = ids.copy()
    labels[mask == 0] = -100
    labels[0, 3] = -100
    labels[1, 0] = -100
    labels[1, T1 - 3] = -100
    return ids, mask, labels


def add_hooks(model: Lfm2ForCausalLM, store: dict) -> list:
    hs = []

    def save(key):
        def hook(_mod, _args, out):
            t = out[0] if isinstance(out, tuple) else out
            store[key] = t.detach().clone()
        return hook

    m = model.model
    hs.append(m.embed_tokens.register_forward_hook(save("embed_out")))
    for i, layer in enumerate(m.layers):
        hs.append(layer.register_forward_hook(save(f"layer_out.{i}")))
        mixer = layer.self_attn if layer.is_attention_layer else layer.conv
        hs.append(mixer.register_forward_hook(save(f"mixer_out.{i}")))
        hs.append(layer.feed_forward.register_forward_hook(save(f"ffn_out.{i}")))
    hs.append(m.embedding_norm.register_forward_hook(save("final_norm_out")))
    return hs


# Original-LFM2 config keys used for the "aliases" fixture (lfm2.md §1.1).
def alias_rewrite(cfg_json: dict) -> dict:
    d = dict(cfg_json)
    ff = d.pop("intermediate_size")
    d["block_ff_dim"] = ff            # block_ff_dim overrides intermediate_size
    d["intermediate_size"] = 999      # decoy: a loader that ignores block_ff_dim gets the wrong FFN width
    layer_types = d.pop("layer_types")
    d["full_attn_idxs"] = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    d["tie_embedding"] = d.pop("tie_word_embeddings")
    theta = d.pop("rope_parameters")["rope_theta"]
    d["rope_theta"] = theta           # legacy top-level key (what transformers 5.x reads)
    d["theta"] = theta                # original key (transformers 4.5x read it; 5.23 ignores it) - same value
    # extra keys present in real LFM2 checkpoints, ignored by transformers
    d["block_dim"] = d["hidden_size"]
    d["conv_dim"] = d["hidden_size"]
    d["conv_dim_out"] = d["hidden_size"]
    d["num_heads"] = d["num_attention_heads"]
    d["block_norm_eps"] = d["norm_eps"]
    d["use_pos_enc"] = True
    d["block_use_swiglu"] = True
    d["block_mlp_init_scale"] = 1.0
    d["block_out_init_scale"] = 1.0
    return dict(sorted(d.items()))


def build_one(name: str, spec: dict, seed: int) -> dict:
    cfg = make_config(spec)
    torch.manual_seed(seed)
    model = Lfm2ForCausalLM(cfg).float().eval()
    model.config._attn_implementation = "eager"
    init_weights(model, seed)
    assert model.model.layers[0].feed_forward.w1.weight.shape[0] == ff_dim(spec), name

    ids, mask, labels = make_inputs(spec, cfg.vocab_size, seed + 1, put_pad_token_inside=(name == "mixed"))
    t_ids, t_mask, t_lab = (torch.from_numpy(a) for a in (ids, mask, labels))

    store: dict = {}
    hooks = add_hooks(model, store)
    model.zero_grad(set_to_none=True)
    out = model(input_ids=t_ids, attention_mask=t_mask, labels=t_lab, output_hidden_states=True)
    out.loss.backward()
    for h in hooks:
        h.remove()

    res = {
        "input_ids": ids.astype(np.int32),
        "attention_mask": mask.astype(np.int32),
        "labels": labels.astype(np.int32),
        "logits": out.logits.detach().numpy(),
        "hidden_states": torch.stack(out.hidden_states).detach().numpy(),
        "loss": np.asarray(out.loss.item(), dtype=np.float32),
    }
    for k, v in store.items():
        res[k] = v.numpy()
    grads = {}
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        grads["grad." + pname] = p.grad.detach().numpy().copy()
    res.update(grads)

    # --- empirical checks documented in the module docstring ---
    L = cfg.num_hidden_layers
    hs = res["hidden_states"]
    assert hs.shape[0] == L + 1
    assert np.array_equal(hs[0], res["embed_out"])
    for i in range(L - 1):
        assert np.array_equal(hs[i + 1], res[f"layer_out.{i}"]), i
    assert np.array_equal(hs[L], res["final_norm_out"])
    assert not np.array_equal(hs[L], res[f"layer_out.{L - 1}"])
    # loss = shift-left labels, ignore -100, mean over the batch's counted targets
    lg = torch.from_numpy(res["logits"]).double()
    tgt = torch.from_numpy(labels)[:, 1:]
    lp = torch.log_softmax(lg[:, :-1], dim=-1)
    keep = tgt != -100
    manual = -(lp[keep].gather(-1, tgt[keep][:, None]).squeeze(-1)).mean().item()
    assert abs(manual - res["loss"]) <= 1e-5 * abs(manual), (manual, res["loss"])
    # conv padding: mixer output exactly 0 at padded positions of conv layers
    for i, lt in enumerate(cfg.layer_types):
        if lt == "conv":
            assert np.all(res[f"mixer_out.{i}"][mask == 0] == 0), i

    # --- unpadded single rows ---
    T1 = int(mask[1].sum())
    with torch.no_grad():
        r0 = model(input_ids=t_ids[:1]).logits[0].numpy()
        r1 = model(input_ids=t_ids[1:, :T1]).logits[0].numpy()
    res["logits_row0"], res["logits_row1"] = r0, r1
    d0 = float(np.abs(r0 - res["logits"][0]).max())
    d1 = float(np.abs(r1 - res["logits"][1, :T1]).max())
    assert d0 < 1e-5 and d1 < 1e-5, (d0, d1)

    for k, v in res.items():
        if v.dtype == np.float64:
            res[k] = v.astype(np.float32)
        assert res[k].dtype in (np.float32, np.int32), (k, res[k].dtype)

    # --- save ---
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    model.save_pretrained(d, safe_serialization=True)
    for extra in ("generation_config.json",):
        (d / extra).unlink(missing_ok=True)
    if name == "aliases":
        cj = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(alias_rewrite(cj), indent=2) + "\n")
    np.savez_compressed(d / "reference.npz", **res)

    # --- reload check: the saved folder (incl. hand-written alias config) gives identical results ---
    m2 = Lfm2ForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "layer_types", "tie_word_embeddings", "conv_L_cache", "norm_eps"):
        assert getattr(m2.config, key) == getattr(cfg, key), (name, key, getattr(m2.config, key))
    assert m2.config.rope_parameters["rope_theta"] == cfg.rope_parameters["rope_theta"], name
    assert m2.model.layers[0].feed_forward.w1.weight.shape[0] == ff_dim(spec)
    with torch.no_grad():
        re = m2(input_ids=t_ids, attention_mask=t_mask).logits.numpy()
    assert np.array_equal(re, res["logits"]), (name, float(np.abs(re - res["logits"]).max()))

    from safetensors import safe_open
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        st_keys = sorted(f.keys())
        assert all(f.get_slice(k).get_dtype() == "F32" for k in st_keys)
    assert ("lm_head.weight" in st_keys) == (not cfg.tie_word_embeddings), (name, st_keys)

    nparams = sum(p.numel() for p in model.parameters())
    info = {
        "seed": seed, "T": int(ids.shape[1]), "T0": int(ids.shape[1]), "T1": T1,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_hidden_layers": L,
        "layer_types": cfg.layer_types, "ff_dim": ff_dim(spec), "head_dim": cfg.hidden_size // cfg.num_attention_heads,
        "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
        "conv_L_cache": cfg.conv_L_cache, "rope_theta": cfg.rope_parameters["rope_theta"],
        "tie_word_embeddings": cfg.tie_word_embeddings, "num_parameters": int(nparams),
        "loss": float(res["loss"]), "padded_vs_unpadded_max_abs": max(d0, d1),
        "safetensors_keys": len(st_keys),
    }
    print(f"{name:10s} params={nparams:7d} ff={info['ff_dim']:3d} T={info['T']} T1={T1} loss={info['loss']:.6f} "
          f"pad-vs-unpad={max(d0, d1):.2e}", flush=True)
    return info


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    fixtures = {}
    for k, (name, spec) in enumerate(CONFIGS.items()):
        fixtures[name] = build_one(name, spec, seed=1234 + 100 * k)
    meta = {
        "generator": "tests/reference/make_lfm2_reference.py",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
        },
        "settings": {"dtype": "float32", "device": "cpu", "attn_implementation": "eager", "torch_threads": 1},
        "fixtures": fixtures,
    }
    (OUT / "versions.json").write_text(json.dumps(meta, indent=2) + "\n")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    sys.exit(main())
