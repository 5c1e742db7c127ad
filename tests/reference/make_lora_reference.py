#!/usr/bin/env python3
"""Generate the LoRA (Hugging Face PEFT) reference fixtures that captionaura's C LoRA code is tested against.

Run by hand (never by the test suite), offline, with the reference virtual environment, AFTER the LFM2 base
fixtures exist (``make_lfm2_reference.py``; they are reused, never copied):

    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch==2.13.0 transformers==5.23.0 peft safetensors numpy
    .venv-ref/bin/python tests/reference/make_lora_reference.py

For each case in ``CASES`` it loads ``tests/reference/fixtures/lfm2/<base>/`` with
``Lfm2ForCausalLM.from_pretrained(dtype=torch.float32, attn_implementation="eager")``, wraps it with
``peft.get_peft_model(model, LoraConfig(...))``, overwrites every lora_A / lora_B weight with seeded random values
(A ~ N(0, (0.3/sqrt(in))^2) [r, in], B ~ N(0, (0.3/sqrt(r))^2) [out, r], so B != 0 and every gradient is informative;
the LoraConfig's ``init_lora_weights`` therefore only shows up in adapter_config.json) and writes
``tests/reference/fixtures/lora/<case>/``:

* ``adapter/adapter_config.json`` + ``adapter/adapter_model.safetensors``: ``peft_model.save_pretrained``.
  PEFT's model-card README.md is deleted, ``base_model_name_or_path`` is rewritten to the repository-relative
  base folder (PEFT writes the absolute path it was loaded from) and a list ``target_modules`` is sorted (PEFT
  writes it in Python set order, which varies with PYTHONHASHSEED), so the files do not depend on the checkout
  or the run. Nothing else in the file is changed.
* ``merged/`` (``config.json`` + ``model.safetensors``, plain Hugging Face checkpoint of ``merge_and_unload()``),
  only for the smallest case (``MERGED_CASE``).
* ``reference.npz`` with the base fixture's batch (B = 2, right-padded; see make_lfm2_reference.py):

    input_ids, attention_mask, labels   (B,T) int32   copied from fixtures/lfm2/<base>/reference.npz
    logits                   (B,T,V) f32   adapted model, padded batch with attention_mask
    loss                     ()      f32   adapted model's own causal-LM loss (labels=labels)
    grad.<key>               key shape     d loss / d LoRA parameter; <key> = the exact adapter_model.safetensors
                                           key, e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
    grad_norm                ()      f32   total L2 norm of all LoRA gradients (clip_grad_norm_'s return, pre-clip)
    after_adamw.<key>        key shape     parameter after ONE torch.optim.AdamW(lr=1e-2, betas=(0.9, 0.999),
                                           eps=1e-8, weight_decay=0.01) step on that loss (fresh optimiser state)
    after_clipped_adamw.<key>              same start, same optimiser settings, one step after
                                           torch.nn.utils.clip_grad_norm_(lora_params, max_norm=0.05)
    merged_logits            (B,T,V) f32   logits of merge_and_unload() (float32)
    logits_disabled          (B,T,V) f32   logits inside ``with peft_model.disable_adapter():`` (== base logits)
    scaling.<module path>    ()      f32   PEFT's lora scaling for that module (alpha/r, alpha/sqrt(r) with rsLoRA),
                                           <module path> as in the base model, e.g. model.layers.0.conv.in_proj
    labels_prompt            (B,T) int32   labels with the first PROMPT_LEN positions of each row also -100
                                           ("prompt" positions; caption-only loss)
    loss_prompt              ()      f32   loss with labels_prompt

  The initial LoRA values are in adapter/adapter_model.safetensors (same keys, float32).

Semantics checked by this script (assertions; peft version in fixtures/lora/versions.json):
    * adapted Linear: y = W x + scaling * B (A x), scaling = lora_alpha / r, or lora_alpha / sqrt(r) with
      use_rslora (checked against a manual forward of every adapted module's delta weight).
    * PEFT's init before the overwrite: B = 0; A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform a=sqrt(5)) for
      init_lora_weights=True, A ~ N(0, (1/r)^2) for "gaussian" (std checked to 10%).
    * only LoRA parameters require grad (bias="none"); every base parameter has requires_grad False.
    * saved keys = in-memory names with the adapter name ("default.") removed; lora_A [r, in], lora_B [out, r].
    * target_modules as a list matches a module whose name equals an entry or ends with "." + entry, so
      "out_proj" matches both self_attn.out_proj and conv.out_proj; conv.conv (nn.Conv1d) is never matched.
      As a regex string it must fullmatch the module name.
    * PeftModel.from_pretrained(fresh base, adapter/) reproduces ``logits`` bit for bit.
    * logits_disabled equals the base fixture's logits (fixtures/lfm2/<base>/reference.npz) bit for bit.
    * merged_logits equal logits within 1e-5 * max|logits| (merging reorders float32 arithmetic).
    * labels invariance: the loss depends only on labels[:, 1:] that are not -100. Changing labels[:, 0]
      (never a target after the shift) to arbitrary token ids leaves the loss unchanged, and two different
      sequences of prompt labels, once masked to -100, give the same loss (loss_prompt).
    * eval() and train() give the same loss (lora_dropout = 0 and LFM2 has no dropout).
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

import peft
import safetensors
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import Lfm2ForCausalLM

torch.set_num_threads(1)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BASE_DIR = HERE / "fixtures" / "lfm2"
OUT = HERE / "fixtures" / "lora"

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"]

CASES = {
    "mixed_all": dict(
        base="mixed", seed=4242,
        config=dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=ALL_LINEAR, bias="none"),
    ),
    "untied_rslora_regex": dict(
        base="untied", seed=4343,
        config=dict(r=2, lora_alpha=3, use_rslora=True, target_modules=r".*\.(q_proj|w2|in_proj)", lora_dropout=0.0),
    ),
    "odd_gaussian": dict(
        base="odd", seed=4444,
        config=dict(r=3, lora_alpha=6, init_lora_weights="gaussian", target_modules=["v_proj", "w1"]),
    ),
}
MERGED_CASE = "untied_rslora_regex"  # smallest base model: the only case with a merged/ checkpoint

ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
MAX_NORM = 0.05
PROMPT_LEN = 4  # "prompt" positions per row for the caption-only labels


def load_base(base: str) -> Lfm2ForCausalLM:
    m = Lfm2ForCausalLM.from_pretrained(BASE_DIR / base, dtype=torch.float32, attn_implementation="eager")
    return m.eval()


def saved_key(name: str) -> str:
    """In-memory PEFT parameter name -> key in adapter_model.safetensors (adapter name stripped)."""
    k = name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
    assert k != name, name
    return k


def expected_targets(model: Lfm2ForCausalLM, target_modules) -> list[str]:
    """PEFT's documented matching rule, applied independently to the base model's Linear modules."""
    names = []
    for n, mod in model.named_modules():
        if isinstance(target_modules, str):
            hit = re.fullmatch(target_modules, n) is not None
        else:
            hit = any(n == t or n.endswith("." + t) for t in target_modules)
        if hit:
            assert isinstance(mod, torch.nn.Linear), (n, type(mod))
            names.append(n)
    return names


def lora_params(pm) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in pm.named_parameters() if p.requires_grad]


def forward(pm, ids, mask, labels=None):
    out = pm(input_ids=ids, attention_mask=mask, labels=labels)
    return out


def build_case(case: str, spec: dict) -> dict:
    base = spec["base"]
    ref = np.load(BASE_DIR / base / "reference.npz")
    ids = torch.from_numpy(ref["input_ids"].astype(np.int64))
    mask = torch.from_numpy(ref["attention_mask"].astype(np.int64))
    labels = torch.from_numpy(ref["labels"].astype(np.int64))

    model = load_base(base)
    # conv.conv is an nn.Conv1d: no target list/regex here may select it
    targets = expected_targets(model, spec["config"]["target_modules"])
    assert targets and not any(t.endswith("conv.conv") for t in targets), targets
    base_logits_fixture = ref["logits"]

    cfg = LoraConfig(**spec["config"])
    torch.manual_seed(spec["seed"])  # PEFT's init uses the global RNG (only checked, then overwritten)
    pm = get_peft_model(model, cfg)
    pm.eval()

    # which modules were wrapped (PEFT module paths, relative to the base model)
    from peft.tuners.lora import LoraLayer
    wrapped = sorted(n[len("base_model.model."):] for n, m in pm.named_modules() if isinstance(m, LoraLayer))
    assert wrapped == sorted(targets), (case, wrapped, targets)

    # --- trainable set ---
    for n, p in pm.named_parameters():
        if "lora_" in n:
            assert p.requires_grad, n
        else:
            assert not p.requires_grad, n
    named = lora_params(pm)
    assert all("lora_A" in n or "lora_B" in n for n, _ in named)

    # --- PEFT's own init (then overwritten): B = 0; A kaiming-uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in))
    #     for init_lora_weights=True, A ~ N(0, (1/r)^2) for "gaussian" ---
    with torch.no_grad():
        for n, p in named:
            if ".lora_B." in n:
                assert torch.count_nonzero(p) == 0, n
            elif cfg.init_lora_weights is True:
                assert float(p.abs().max()) <= 1.0 / np.sqrt(p.shape[1]) + 1e-7, n
            else:
                assert cfg.init_lora_weights == "gaussian"
        if cfg.init_lora_weights == "gaussian":
            a_all = torch.cat([p.flatten() for n, p in named if ".lora_A." in n])
            assert abs(float(a_all.std()) - 1.0 / cfg.r) < 0.1 / cfg.r, float(a_all.std())

    # --- seeded non-zero LoRA weights (sorted names: independent of module registration order) ---
    g = torch.Generator().manual_seed(spec["seed"])
    r = cfg.r
    with torch.no_grad():
        for n, p in sorted(named):
            if ".lora_A." in n:
                assert p.shape[0] == r
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 / np.sqrt(p.shape[1])))
            else:
                assert p.shape[1] == r
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 / np.sqrt(r)))

    # --- scaling and the y = Wx + s*B(Ax) formula per module ---
    res: dict = {}
    scal = {}
    xt = torch.randn(3, 5, 1, generator=g)  # shape placeholder, replaced per module
    for n, m in pm.named_modules():
        if isinstance(m, LoraLayer):
            path = n[len("base_model.model."):]
            s = m.scaling["default"]
            want = cfg.lora_alpha / (np.sqrt(cfg.r) if cfg.use_rslora else cfg.r)
            assert abs(s - want) < 1e-12, (path, s, want)
            scal[path] = s
            res["scaling." + path] = np.asarray(s, dtype=np.float32)
            A = m.lora_A["default"].weight
            B = m.lora_B["default"].weight
            W = m.base_layer.weight
            assert A.shape == (cfg.r, W.shape[1]) and B.shape == (W.shape[0], cfg.r), path
            xt = torch.randn(2, 3, W.shape[1], generator=g)
            with torch.no_grad():
                y = m(xt)
                manual = xt @ W.T + s * ((xt @ A.T) @ B.T)
            assert torch.allclose(y, manual, rtol=1e-5, atol=1e-6), path
    del xt

    # --- forward / loss / grads ---
    pm.zero_grad(set_to_none=True)
    out = forward(pm, ids, mask, labels)
    out.loss.backward()
    res["input_ids"] = ref["input_ids"]
    res["attention_mask"] = ref["attention_mask"]
    res["labels"] = ref["labels"]
    res["logits"] = out.logits.detach().numpy().copy()
    res["loss"] = np.asarray(out.loss.item(), dtype=np.float32)
    for n, p in pm.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, n
    for n, p in named:
        assert p.grad is not None and float(p.grad.abs().max()) > 0, n
        res["grad." + saved_key(n)] = p.grad.detach().numpy().copy()

    # train() mode gives the same loss (no dropout anywhere)
    pm.train()
    with torch.no_grad():
        lt = forward(pm, ids, mask, labels).loss.item()
    pm.eval()
    assert lt == out.loss.item(), (lt, out.loss.item())

    # --- optimiser steps from the same start ---
    start = {n: p.detach().clone() for n, p in named}
    grads = {n: p.grad.detach().clone() for n, p in named}
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, **ADAMW)
    opt.step()
    for n, p in named:
        res["after_adamw." + saved_key(n)] = p.detach().numpy().copy()
    # manual AdamW (step 1, bias-corrected) as a cross-check of the formula
    lr, (b1, b2), eps, wd = ADAMW["lr"], ADAMW["betas"], ADAMW["eps"], ADAMW["weight_decay"]
    for n, p in named:
        p0, gr = start[n].double(), grads[n].double()
        m_hat = (1 - b1) * gr / (1 - b1)
        v_hat = (1 - b2) * gr * gr / (1 - b2)
        want = p0 * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
        assert torch.allclose(p.detach().double(), want, rtol=0, atol=1e-7), n

    with torch.no_grad():
        for n, p in named:
            p.copy_(start[n])
            p.grad = grads[n].clone()
    total = torch.nn.utils.clip_grad_norm_(params, max_norm=MAX_NORM)
    manual_norm = torch.sqrt(sum((gr.double() ** 2).sum() for gr in grads.values())).item()
    assert abs(total.item() - manual_norm) <= 1e-5 * manual_norm, (total.item(), manual_norm)
    assert total.item() > MAX_NORM, "clipping must be active for this fixture"
    res["grad_norm"] = np.asarray(total.item(), dtype=np.float32)
    opt2 = torch.optim.AdamW(params, **ADAMW)
    opt2.step()
    for n, p in named:
        res["after_clipped_adamw." + saved_key(n)] = p.detach().numpy().copy()
    with torch.no_grad():
        for n, p in named:
            p.copy_(start[n])
            p.grad = None

    # --- labels invariance ---
    with torch.no_grad():
        lab0 = labels.clone()
        lab0[:, 0] = torch.tensor([7, 11])  # position 0 is never a target (shift left by one)
        l0 = forward(pm, ids, mask, lab0).loss.item()
        assert l0 == out.loss.item(), (l0, out.loss.item())
        lab_p = labels.clone()
        lab_p[:, :PROMPT_LEN] = -100
        alt = labels.clone()
        alt[:, :PROMPT_LEN] = torch.randint(3, 50, (2, PROMPT_LEN), generator=g)  # other prompt labels ...
        alt[:, :PROMPT_LEN] = -100                                              # ... then masked
        lp = forward(pm, ids, mask, lab_p)
        la = forward(pm, ids, mask, alt).loss.item()
        assert lp.loss.item() == la
        assert lp.loss.item() != out.loss.item()
        # manual caption-only cross-entropy (mean over counted targets of the whole batch)
        lg = lp.logits.double()
        tgt = lab_p[:, 1:]
        keep = tgt != -100
        lsm = torch.log_softmax(lg[:, :-1], dim=-1)
        manual = -(lsm[keep].gather(-1, tgt[keep][:, None]).squeeze(-1)).mean().item()
        assert abs(manual - lp.loss.item()) <= 1e-5 * abs(manual)
    res["labels_prompt"] = lab_p.numpy().astype(np.int32)
    res["loss_prompt"] = np.asarray(lp.loss.item(), dtype=np.float32)

    # --- disabled adapter == base model ---
    with torch.no_grad():
        with pm.disable_adapter():
            ld = forward(pm, ids, mask).logits.numpy().copy()
        again = forward(pm, ids, mask).logits.numpy()
    assert np.array_equal(again, res["logits"])
    assert np.array_equal(ld, base_logits_fixture), float(np.abs(ld - base_logits_fixture).max())
    res["logits_disabled"] = ld

    # --- save the adapter ---
    d = OUT / case
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    pm.save_pretrained(d / "adapter")
    (d / "adapter" / "README.md").unlink(missing_ok=True)
    cj_path = d / "adapter" / "adapter_config.json"
    cj = json.loads(cj_path.read_text())
    cj["base_model_name_or_path"] = str((BASE_DIR / base).relative_to(REPO))
    assert cj["peft_type"] == "LORA" and cj["r"] == cfg.r and cj["lora_alpha"] == cfg.lora_alpha
    if isinstance(cj["target_modules"], list):
        # PEFT stores a list target_modules as a Python set and writes it in set order, which depends on
        # PYTHONHASHSEED; sort it so the committed file is reproducible (a set either way).
        assert sorted(cj["target_modules"]) == sorted(spec["config"]["target_modules"])
        cj["target_modules"] = sorted(cj["target_modules"])
    else:
        assert cj["target_modules"] == spec["config"]["target_modules"]  # a regex string is kept verbatim
    cj_path.write_text(json.dumps(cj, indent=2, sort_keys=True) + "\n")
    with safe_open(str(d / "adapter" / "adapter_model.safetensors"), "pt") as f:
        st_keys = sorted(f.keys())
        st = {k: f.get_tensor(k) for k in st_keys}
    assert st_keys == sorted(saved_key(n) for n, _ in named), st_keys
    for n, p in named:
        assert st[saved_key(n)].dtype == torch.float32
        assert torch.equal(st[saved_key(n)], p.detach()), n
    res_grad_keys = sorted(k[len("grad."):] for k in res if k.startswith("grad."))
    assert res_grad_keys == st_keys

    # --- reload the adapter onto a fresh base ---
    pm2 = PeftModel.from_pretrained(load_base(base), d / "adapter").eval()
    with torch.no_grad():
        l2 = forward(pm2, ids, mask).logits.numpy()
    assert np.array_equal(l2, res["logits"]), float(np.abs(l2 - res["logits"]).max())
    assert not any(p.requires_grad for p in pm2.parameters())  # inference_mode=True on load by default
    del pm2

    # --- merge ---
    merged = pm.merge_and_unload()
    assert type(merged) is Lfm2ForCausalLM
    assert all(isinstance(m, torch.nn.Linear) and type(m) is torch.nn.Linear
               for n, m in merged.named_modules() if n in targets)
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    with torch.no_grad():
        ml = merged(input_ids=ids, attention_mask=mask).logits.numpy().copy()
    mdiff = float(np.abs(ml - res["logits"]).max())
    mscale = float(np.abs(res["logits"]).max())
    print(f"  merged vs unmerged: max abs {mdiff:.2e}, max |logit| {mscale:.2f}, rel {mdiff / mscale:.2e}")
    assert mdiff <= 1e-5 * mscale, (mdiff, mscale)
    res["merged_logits"] = ml
    if case == MERGED_CASE:
        merged.save_pretrained(d / "merged", safe_serialization=True)
        (d / "merged" / "generation_config.json").unlink(missing_ok=True)
        m3 = Lfm2ForCausalLM.from_pretrained(d / "merged", dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            l3 = m3(input_ids=ids, attention_mask=mask).logits.numpy()
        assert np.array_equal(l3, ml), float(np.abs(l3 - ml).max())
        with safe_open(str(d / "merged" / "model.safetensors"), "pt") as f:
            assert not any("lora" in k or "base_layer" in k for k in f.keys())

    for k, v in res.items():
        if v.dtype == np.float64:
            res[k] = v.astype(np.float32)
        assert res[k].dtype in (np.float32, np.int32), (k, res[k].dtype)
    np.savez_compressed(d / "reference.npz", **res)

    n_train = sum(p.numel() for _, p in named)
    info = {
        "base": f"fixtures/lfm2/{base}", "seed": spec["seed"],
        "lora_config": {k: v for k, v in spec["config"].items()},
        "adapted_modules": wrapped, "scaling": float(next(iter(scal.values()))),
        "trainable_parameters": int(n_train), "saved_keys": len(st_keys),
        "loss": float(res["loss"]), "loss_prompt": float(res["loss_prompt"]), "grad_norm": float(res["grad_norm"]),
        "merged_vs_unmerged_max_abs": mdiff, "max_abs_logit": mscale, "merged_checkpoint": case == MERGED_CASE,
    }
    print(f"{case:20s} modules={len(wrapped):2d} trainable={n_train:6d} loss={info['loss']:.6f} "
          f"grad_norm={info['grad_norm']:.4f} merged-diff={mdiff:.1e}", flush=True)
    return info


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    cases = {}
    for case, spec in CASES.items():
        cases[case] = build_case(case, spec)
    meta = {
        "generator": "tests/reference/make_lora_reference.py",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
        },
        "settings": {"dtype": "float32", "device": "cpu", "attn_implementation": "eager", "torch_threads": 1,
                     "adamw": {**ADAMW, "betas": list(ADAMW["betas"])}, "clip_max_norm": MAX_NORM,
                     "prompt_len": PROMPT_LEN,
                     "lora_init": "A ~ N(0, (0.3/sqrt(in))^2), B ~ N(0, (0.3/sqrt(r))^2), seeded, sorted names"},
        "cases": cases,
    }
    (OUT / "versions.json").write_text(json.dumps(meta, indent=2) + "\n")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    sys.exit(main())
