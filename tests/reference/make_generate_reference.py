#!/usr/bin/env python3
"""Generate the decoding fixtures (transformers 5.23 ``generate``) that tests/test_generate.py compares against.

Run by hand (never by the test suite), offline, with the reference virtual environment:

    .venv-ref/bin/python tests/reference/make_generate_reference.py

For each model in MODELS (tiny random LFM2 fixtures from make_lfm2_reference.py, loaded float32, eager
attention, one torch thread) and three seeded prompts of different lengths, every case below is run one prompt at
a time with ``Lfm2ForCausalLM.generate`` and stored in ``fixtures/generate/<model>.npz``:

    <case>__new.<i>      int32 (R, n)  the new tokens of prompt i (transformers' returned sequences minus the prompt;
                                      R = 1, or num_return_sequences for beams, padded with transformers' fill value)
    <case>__len.<i>      int32 (R,)    how many of them are real (beams: from beam_indices; greedy: up to the eos)
    <case>__scores.<i>   f32 (R,)      beams only: ``sequences_scores``
    <case>__margin       f32 ()        greedy only: the smallest top-1 − top-2 gap of the processed scores over all
                                      steps and prompts (how far the fixture is from a tie that float noise could flip)
    prompt.<i>           int32 (T_i,)
    eos.<case>           int32         the eos ids of the case

The models are random, so continuations are arbitrary but deterministic. Cases that must run the full 64 tokens set
``min_new_tokens = max_new_tokens`` (eos masked throughout); the eos cases use eos ids taken from the plain greedy
continuations so that generation really stops early, at different steps for different prompts.
Also stored: ``batch__new`` (3, n) / ``batch__mask``: transformers' own LEFT-padded batch of the three prompts (greedy,
the eos case), to document whether transformers' batch equals its one-by-one results (``batch__equal``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import Lfm2ForCausalLM

HERE = Path(__file__).parent
SRC = HERE / "fixtures" / "lfm2"
OUT = HERE / "fixtures" / "generate"
MODELS = {"mixed": 11, "odd": 12, "attn_only": 13}
PROMPT_LENGTHS = (4, 9, 15)
N_GREEDY = 64
N_BEAM = 16
PAD = 0


def run(model, prompt: np.ndarray, **kw):
    ids = torch.tensor(prompt[None].astype(np.int64))
    out = model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=PAD, bos_token_id=1,
                         return_dict_in_generate=True, output_scores=True, do_sample=False, **kw)
    return out


def greedy_case(model, prompts, store, name, **kw):
    margins = []
    for i, p in enumerate(prompts):
        out = run(model, p, num_beams=1, **kw)
        new = out.sequences[0, len(p):].numpy().astype(np.int32)
        eos = kw.get("eos_token_id")
        eos = [eos] if isinstance(eos, int) else list(eos)
        n = len(new)
        for j, t in enumerate(new):
            if t in eos:
                n = j + 1
                break
        store[f"{name}__new.{i}"] = new[None]
        store[f"{name}__len.{i}"] = np.array([n], np.int32)
        for s in out.scores[:n]:
            top2 = torch.topk(s[0], 2).values
            margins.append(float(top2[0] - top2[1]))
    store[f"{name}__margin"] = np.float32(min(margins))
    store[f"eos.{name}"] = np.array(np.atleast_1d(kw.get("eos_token_id")), np.int32)


def beam_case(model, prompts, store, name, **kw):
    for i, p in enumerate(prompts):
        out = run(model, p, num_beams=4, num_return_sequences=4, max_new_tokens=N_BEAM, **kw)
        new = out.sequences[:, len(p):].numpy().astype(np.int32)
        store[f"{name}__new.{i}"] = new
        store[f"{name}__len.{i}"] = (out.beam_indices >= 0).sum(1).numpy().astype(np.int32)
        store[f"{name}__scores.{i}"] = out.sequences_scores.numpy().astype(np.float32)
    store[f"eos.{name}"] = np.array(np.atleast_1d(kw.get("eos_token_id")), np.int32)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "cases": {}}
    for name, seed in MODELS.items():
        model = Lfm2ForCausalLM.from_pretrained(SRC / name, dtype=torch.float32, attn_implementation="eager").eval()
        V = model.config.vocab_size
        rng = np.random.default_rng(seed)
        prompts = [rng.integers(3, V, n).astype(np.int32) for n in PROMPT_LENGTHS]
        store: dict[str, np.ndarray] = {f"prompt.{i}": p for i, p in enumerate(prompts)}
        full = dict(max_new_tokens=N_GREEDY, min_new_tokens=N_GREEDY, eos_token_id=2)
        with torch.no_grad():
            greedy_case(model, prompts, store, "greedy", **full)
            g = [store[f"greedy__new.{i}"][0] for i in range(3)]
            # eos ids that occur: each prompt stops at its first one (different steps)
            stop = sorted({int(g[0][5]), int(g[1][12]), int(g[2][20])})
            greedy_case(model, prompts, store, "greedy_eos", max_new_tokens=N_GREEDY, eos_token_id=stop)
            greedy_case(model, prompts, store, "greedy_min_new", max_new_tokens=N_GREEDY, min_new_tokens=24,
                        eos_token_id=stop)
            greedy_case(model, prompts, store, "rep", repetition_penalty=1.5, **full)
            greedy_case(model, prompts, store, "ngram", no_repeat_ngram_size=2, **full)
            greedy_case(model, prompts, store, "rep_ngram", repetition_penalty=1.3, no_repeat_ngram_size=3, **full)
            beam_eos = sorted({int(g[0][2]), int(g[1][4])})
            for lp in (0.7, 1.5):
                for es in (True, False, "never"):
                    beam_case(model, prompts, store, f"beam_lp{lp}_es{es}", length_penalty=lp, early_stopping=es,
                              eos_token_id=beam_eos)
            beam_case(model, prompts, store, "beam_ngram", length_penalty=1.0, early_stopping=False,
                      eos_token_id=beam_eos[:1], no_repeat_ngram_size=2, repetition_penalty=1.2)
            # transformers' own left-padded batch (documentation: is it equal to one-by-one?)
            T = max(PROMPT_LENGTHS)
            ids = np.full((3, T), PAD, np.int64)
            mask = np.zeros((3, T), np.int64)
            for i, p in enumerate(prompts):
                ids[i, T - len(p):], mask[i, T - len(p):] = p, 1
            out = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), pad_token_id=PAD,
                                 max_new_tokens=N_GREEDY, eos_token_id=stop, do_sample=False)
            bnew = out[:, T:].numpy().astype(np.int32)
            store["batch__new"] = bnew
            equal = all(np.array_equal(bnew[i, :store[f"greedy_eos__len.{i}"][0]],
                                       store[f"greedy_eos__new.{i}"][0, :store[f"greedy_eos__len.{i}"][0]])
                        for i in range(3))
            store["batch__equal"] = np.array(equal)
        np.savez_compressed(OUT / f"{name}.npz", **store)
        meta["cases"][name] = {k: float(v) for k, v in store.items() if k.endswith("__margin")}
        meta["cases"][name]["hf_batch_equals_one_by_one"] = bool(equal)
        meta["cases"][name]["greedy_eos_lengths"] = [int(store[f"greedy_eos__len.{i}"][0]) for i in range(3)]
        print(name, meta["cases"][name])
    (OUT / "versions.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
