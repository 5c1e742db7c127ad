"""LFM2 forward and forward+backward throughput: captionaura's C core vs PyTorch (transformers'
Lfm2ForCausalLM, same config, same thread count) measured side by side in one run, and the share of the
time spent in GEMMs set against raw cblas_sgemm on the same shapes, measured in the same run.

    python benchmarks/bench_lfm2.py [--threads 1] [--seq 256] [--shapes tiny,350m] [--dtypes fp32,bf16] [--no-torch]
                                    [--json out.json]

--dtypes bf16 runs both sides in mixed precision: ours with ``to_inference_dtype("bf16")`` (bf16 GEMMs with fp32
sums; fp32 master weights, gradients and every other op), PyTorch under ``torch.autocast("cpu", torch.bfloat16)``.
Each bf16 row is also set against PyTorch's fp32 run, the anchor the issue names. The GEMM-efficiency table
profiles the fp32 run (the bf16 GEMMs are our own kernels, not sgemm).

The speed-of-light table sets each pass's projection-GEMM FLOPs against the register-only FMA peak measured in
the same run (fp32 FMAs; vdpbf16ps for bf16) and prints the best ratio against PyTorch that any implementation
could reach on this machine: PyTorch's time over those FLOPs at 100% of peak.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import captionaura as ca
from captionaura import _core

sys.path.insert(0, str(Path(__file__).parent))

SHAPES = {
    "tiny": {
        "vocab_size": 512, "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "block_auto_adjust_ff_dim": False,
        "layer_types": ["conv", "full_attention", "conv", "full_attention"],
    },
    "350m": {
        "vocab_size": 65536, "hidden_size": 1024, "intermediate_size": 6656, "num_hidden_layers": 16,
        "num_attention_heads": 16, "num_key_value_heads": 8, "conv_L_cache": 3, "rope_theta": 1e6,
        "block_multiple_of": 256, "block_ffn_dim_multiplier": 1.0, "block_auto_adjust_ff_dim": True,
        "tie_word_embeddings": True, "eos_token_id": 7,
        "layer_types": ["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv",
                        "full_attention", "conv", "full_attention", "conv", "full_attention", "conv",
                        "full_attention", "conv"],
    },
}


def best_time(fn, steps: int) -> float:
    fn()  # warm-up (allocates the activation arena)
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def ours(config: dict, batch: int, seq: int, steps: int, dtype: str = "fp32") -> dict:
    model = ca.Lfm2Model.from_config(config, seed=0).to_inference_dtype(dtype)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, config["vocab_size"], (batch, seq)).astype(np.int32)
    tokens = batch * seq
    fwd = best_time(lambda: model.forward(ids), steps)
    fwd_bwd = best_time(lambda: model.loss_and_grad(ids, ids), steps)
    if dtype != "fp32":
        return {"forward_tok_s": tokens / fwd, "fwd_bwd_tok_s": tokens / fwd_bwd, "parameters": model.num_parameters()}

    # one profiled pass of each: time per GEMM shape, then raw sgemm on each shape
    forward_report = profiled(model, lambda: model.forward(ids))
    report = profiled(model, lambda: model.loss_and_grad(ids, ids))
    gemm_seconds = gemm_flops = raw_seconds = 0.0
    for g in report["gemms"]:
        flops = 2.0 * g["M"] * g["N"] * g["K"] * g["calls"]
        raw = _core.sgemm_seconds(g["trans_a"], g["trans_b"], g["M"], g["N"], g["K"], 3) * g["calls"]
        gemm_seconds += g["seconds"]
        gemm_flops += flops
        raw_seconds += raw
    total = sum(op["seconds"] for op in report["ops"].values())
    return {
        "forward_tok_s": tokens / fwd,
        "fwd_bwd_tok_s": tokens / fwd_bwd,
        "forward_gemm_flops": sum(2.0 * g["M"] * g["N"] * g["K"] * g["calls"] for g in forward_report["gemms"]),
        "fwd_bwd_gemm_flops": gemm_flops,
        "gemm_share": gemm_seconds / total,
        "gemm_gflops": gemm_flops / gemm_seconds / 1e9,
        "sgemm_gflops": gemm_flops / raw_seconds / 1e9,
        "gemm_vs_sgemm": raw_seconds / gemm_seconds,
        "op_seconds": {k: v["seconds"] for k, v in report["ops"].items()},
        "parameters": model.num_parameters(),
    }


def fma_peaks(dtypes) -> dict[str, float]:
    """The register-only FMA peak of the current thread count, GFLOP/s, for fp32 and (where asked and the CPU has
    AVX512-BF16) bf16: the speed of light the benchmarks set their FLOPs against."""
    peaks = {"fp32": _core.fma_peak_gflops()}
    if "bf16" in dtypes:
        try:
            peaks["bf16"] = _core.fma_peak_gflops(True)
        except NotImplementedError:
            pass
    return peaks


def profiled(model: ca.Lfm2Model, run) -> dict:
    model._core.set_profiling(True)
    _core.profile_reset()
    run()
    model._core.set_profiling(False)
    return _core.profile_report()


def print_speed_of_light(results: dict, batch: int, seq: int, peaks: dict) -> None:
    """How close each side is to the FMA peak measured in this run, and the best ratio against PyTorch that any
    implementation could reach: PyTorch's time over the time of the projection GEMMs' FLOPs at 100% of peak (the
    attention products and every non-GEMM op are left out, so the bound is generous)."""
    print("\nSpeed of light: projection-GEMM FLOPs against the register-only FMA peak of this run "
          f"(fp32 {peaks['fp32']:.0f}, bf16 {peaks.get('bf16', float('nan')):.0f} GFLOP/s)")
    print(f"{'shape':<6} {'dtype':<5} {'pass':<9} {'GFLOP/step':>10} {'ours % peak':>11} {'torch % peak':>12} "
          f"{'best possible ratio':>19}")
    for key, row in results.items():
        name, dtype = key.split("/")
        fp32 = results.get(f"{name}/fp32", {}).get("ours", {})
        peak = peaks.get(dtype)
        if "fwd_bwd_gemm_flops" not in fp32 or not peak:
            continue
        for label, k in (("forward", "forward"), ("fwd+bwd", "fwd_bwd")):
            flops = fp32[f"{k}_gemm_flops"]
            light = flops / (peak * 1e9)
            ours_s = batch * seq / row["ours"][f"{k}_tok_s"]
            torch_row = row.get("torch")
            torch_s = batch * seq / torch_row[f"{k}_tok_s"] if torch_row else None
            torch_pct = f"{light / torch_s:12.1%}" if torch_s else f"{'-':>12}"
            bound = f"{torch_s / light:19.2f}" if torch_s else f"{'-':>19}"
            print(f"{name:<6} {dtype:<5} {label:<9} {flops / 1e9:10.1f} {light / ours_s:11.1%} {torch_pct} {bound}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--shapes", default="tiny,350m")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch side")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    ca.set_num_threads(args.threads)
    torch_fn = None
    if not args.no_torch:
        try:
            from bench_lfm2_torch import torch_lfm2_throughput as torch_fn
        except ImportError as err:
            print(f"(PyTorch side skipped: {err}; `make bench` installs torch==2.13.0 and transformers)")

    results = {}
    for name in args.shapes.split(","):
        config = SHAPES[name]
        for dtype in args.dtypes.split(","):
            row = {"ours": ours(config, args.batch, args.seq, args.steps, dtype)}
            if torch_fn is not None:
                row["torch"] = torch_fn(config, batch=args.batch, seq=args.seq, threads=args.threads,
                                        steps=args.steps, dtype=dtype)
            results[f"{name}/{dtype}"] = row

    print(f"\nLFM2 throughput, batch {args.batch} x {args.seq} tokens, {args.threads} thread(s), best of {args.steps}")
    header = (f"{'shape':<6} {'dtype':<5} {'params':>11} {'pass':<9} {'captionaura tok/s':>18} {'torch tok/s':>12} "
              f"{'ratio':>6} {'vs torch fp32':>13}")
    print(header)
    print("-" * len(header))
    for key, row in results.items():
        name, dtype = key.split("/")
        o, t = row["ours"], row.get("torch")
        t32 = results.get(f"{name}/fp32", {}).get("torch")
        for label, k in (("forward", "forward_tok_s"), ("fwd+bwd", "fwd_bwd_tok_s")):
            theirs = f"{t[k]:12.1f}" if t else f"{'-':>12}"
            ratio = f"{o[k] / t[k]:6.2f}" if t else f"{'-':>6}"
            vs32 = f"{o[k] / t32[k]:13.2f}" if t32 else f"{'-':>13}"
            print(f"{name:<6} {dtype:<5} {o['parameters']:>11,} {label:<9} {o[k]:18.1f} {theirs} {ratio} {vs32}")
    print("\nGEMMs inside fp32 forward+backward vs raw cblas_sgemm on the same shapes (same run)")
    print(f"{'shape':<6} {'GEMM share':>10} {'GEMM GFLOP/s':>13} {'sgemm GFLOP/s':>14} {'efficiency':>10}")
    for key, row in results.items():
        o = row["ours"]
        if "gemm_share" not in o:
            continue
        print(f"{key.split('/')[0]:<6} {o['gemm_share']:10.1%} {o['gemm_gflops']:13.1f} {o['sgemm_gflops']:14.1f} "
              f"{o['gemm_vs_sgemm']:10.1%}")
    peaks = fma_peaks(args.dtypes.split(","))
    print_speed_of_light(results, args.batch, args.seq, peaks)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "fma_peak_gflops": peaks}, indent=2))


if __name__ == "__main__":
    main()
