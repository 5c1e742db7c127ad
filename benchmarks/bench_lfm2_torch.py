#!/usr/bin/env python3
"""PyTorch side of the LFM2 benchmark: transformers ``Lfm2ForCausalLM`` on CPU, float32, random weights.

    from benchmarks.bench_lfm2_torch import torch_lfm2_throughput, LFM2_350M, TINY
    torch_lfm2_throughput(LFM2_350M, batch=1, seq=256, threads=2, steps=3)
    -> {"forward_tok_s": ..., "fwd_bwd_tok_s": ..., ...}

or from the command line (needs torch==2.13.0 and transformers, e.g. the .venv-ref of tests/reference):

    .venv-ref/bin/python benchmarks/bench_lfm2_torch.py --config tiny --threads 1

Forward = ``model(input_ids)`` under ``torch.inference_mode()`` (logits for every position). Forward+backward =
``model(input_ids, labels=input_ids).loss.backward()`` (HF causal-LM loss, gradients for every parameter).
One warm-up step of each is run first and not timed; the reported figure is batch*seq / the best of the timed
steps (as for ours). torch's thread count is set for the call and restored afterwards.
torch and transformers are imported inside the function, so the config dicts import without them.
"""
from __future__ import annotations

import argparse
import json
import time

# LFM2-350M (lfm2.md §1.1): ff 6656 -> 4437 -> 4608 after auto-adjust; 354,483,968 parameters.
LFM2_350M = {
    "vocab_size": 65536,
    "hidden_size": 1024,
    "intermediate_size": 6656,
    "block_ff_dim": 6656,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "layer_types": ["full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16)],
    "conv_L_cache": 3,
    "conv_bias": False,
    "rope_theta": 1000000.0,
    "norm_eps": 1e-5,
    "max_position_embeddings": 128000,
    "block_multiple_of": 256,
    "block_ffn_dim_multiplier": 1.0,
    "block_auto_adjust_ff_dim": True,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 7,
}

# A tiny shape with the same structure (conv + attention, GQA, tied): ff 768 -> 512 -> 512.
TINY = {
    "vocab_size": 1024,
    "hidden_size": 128,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "layer_types": ["conv", "full_attention", "conv", "full_attention"],
    "conv_L_cache": 3,
    "conv_bias": False,
    "rope_theta": 1000000.0,
    "norm_eps": 1e-5,
    "max_position_embeddings": 4096,
    "block_multiple_of": 256,
    "block_ffn_dim_multiplier": 1.0,
    "block_auto_adjust_ff_dim": True,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

CONFIGS = {"lfm2-350m": LFM2_350M, "tiny": TINY}


def _make_config(config_dict: dict, attn_implementation: str):
    from transformers import Lfm2Config

    kw = dict(config_dict)
    kw.setdefault("use_cache", False)
    theta = kw.pop("rope_theta", None)
    theta = kw.pop("theta", theta)
    if theta is not None and "rope_parameters" not in kw:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": float(theta)}
    if "block_ff_dim" in kw:  # original alias overrides intermediate_size
        kw["intermediate_size"] = kw.pop("block_ff_dim")
    if "tie_embedding" in kw:
        kw["tie_word_embeddings"] = kw.pop("tie_embedding")
    cfg = Lfm2Config(**kw)
    cfg._attn_implementation = attn_implementation
    return cfg


def torch_lfm2_throughput(config_dict: dict, batch: int = 1, seq: int = 256, threads: int = 1, steps: int = 3,
                          attn_implementation: str = "sdpa", seed: int = 0, dtype: str = "fp32") -> dict:
    """Tokens/s of transformers Lfm2ForCausalLM (float32 weights, CPU) for forward and forward+backward; with
    dtype "bf16" both passes run under ``torch.autocast("cpu", torch.bfloat16)`` (mixed precision: bf16 matmuls,
    fp32 weights and gradients)."""
    import contextlib

    import torch
    import transformers
    from transformers import Lfm2ForCausalLM

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        cfg = _make_config(config_dict, attn_implementation)
        model = Lfm2ForCausalLM(cfg).float()
        model.config._attn_implementation = attn_implementation
        nparams = sum(p.numel() for p in model.parameters())
        g = torch.Generator().manual_seed(seed + 1)
        ids = torch.randint(3, cfg.vocab_size, (batch, seq), generator=g)
        ntok = batch * seq

        model.eval()  # no dropout in LFM2 anyway; eval keeps the two passes comparable

        def autocast():
            return (torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext())

        def fwd():
            with torch.inference_mode(), autocast():
                model(input_ids=ids).logits

        def fwd_bwd():
            model.zero_grad(set_to_none=True)
            with autocast():
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()

        def best_time(fn):
            """Best of `steps` timed runs after an untimed warm-up: the statistic bench_lfm2.py keeps for ours."""
            fn()
            best = float("inf")
            for _ in range(steps):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            return best

        t_f = best_time(fwd)
        t_fb = best_time(fwd_bwd)
        model.zero_grad(set_to_none=True)
        return {
            "forward_tok_s": ntok / t_f,
            "fwd_bwd_tok_s": ntok / t_fb,
            "forward_s_per_step": t_f,
            "fwd_bwd_s_per_step": t_fb,
            "batch": batch,
            "seq": seq,
            "threads": threads,
            "steps": steps,
            "num_parameters": nparams,
            "attn_implementation": attn_implementation,
            "dtype": "float32",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
    finally:
        torch.set_num_threads(prev_threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    a = ap.parse_args()
    r = torch_lfm2_throughput(CONFIGS[a.config], batch=a.batch, seq=a.seq, threads=a.threads, steps=a.steps,
                              attn_implementation=a.attn)
    print(json.dumps({"config": a.config, **r}, indent=2))


if __name__ == "__main__":
    main()
