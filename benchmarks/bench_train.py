"""LoRA train-step throughput and peak memory: captionaura vs PyTorch + PEFT on the same config, the same
thread count and the same adapters (r=16 on every linear projection), measured in one run. Each side runs in
its own process so its peak resident memory (ru_maxrss) is its own.

    python benchmarks/bench_train.py [--threads 1] [--seq 256] [--shapes tiny,350m] [--steps 3]
                                     [--dtypes fp32,bf16] [--torch-python /path/to/venv-with-torch-peft/bin/python]

--dtypes bf16 trains the adapters (fp32) on a frozen bf16 base on both sides: ours with
``to_inference_dtype("bf16", keep_fp32=False)`` (bf16 GEMMs with fp32 sums; the base's fp32 copy given back),
PyTorch with the model cast to bf16 (PEFT keeps the adapters in fp32). Each bf16 row is also compared with
PyTorch's fp32 run, the anchor the issue names.

The PyTorch side may run in another interpreter (``--torch-python``): a reference virtual environment with
torch 2.13, transformers and peft, kept apart from the project's own.

The speed-of-light table sets the step's least GEMM work against the register-only FMA peak measured in the same
run (fp32 FMAs; vdpbf16ps for a bf16 base): each side's share of it, and the best speed-up over PyTorch + PEFT
that any implementation could reach on this machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"]
RANK = 16


def run_ours(config: dict, seq: int, steps: int, threads: int, dtype: str) -> dict:
    import numpy as np

    import captionaura as ca

    ca.set_num_threads(threads)
    model = ca.Lfm2Model.from_config(config, seed=0)
    step_flops = lora_step_gemm_flops(model, seq)
    model.add_lora(ca.LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=TARGETS))
    model.to_inference_dtype(dtype, keep_fp32=dtype != "bf16")
    model.set_optimizer(ca.AdamWConfig(lr=1e-4))
    ids = np.random.default_rng(0).integers(0, config["vocab_size"], (1, seq)).astype(np.int32)
    batch = {"input_ids": ids, "labels": ids}
    setup_peak = _reset_peak()
    model.train_step(batch)  # warm-up
    best = _best_step(lambda: model.train_step(batch), steps)
    return {"tok_s": seq / best, "trainable": model.num_trainable_parameters(), "setup_peak_mb": setup_peak,
            "step_gemm_flops": step_flops}


def lora_step_gemm_flops(model, tokens: int) -> float:
    """The least GEMM work of a LoRA step on a frozen base: every projection's forward (the tied lm_head included,
    the embedding lookup not) and its input gradient, except layer 0's, whose inputs need none on the way to the
    frozen embedding. The adapters' own products, attention and every other op are left out."""
    params = model.parameters()
    weights = {k: v.size for k, v in params.items() if v.ndim == 2 and "embed_tokens" not in k}
    if "lm_head.weight" not in params:  # tied: the head is the embedding matrix
        weights["lm_head.weight"] = params["model.embed_tokens.weight"].size
    forward = 2.0 * tokens * sum(weights.values())
    layer0 = 2.0 * tokens * sum(v for k, v in weights.items() if k.startswith("model.layers.0."))
    return 2 * forward - layer0


def run_torch(config: dict, seq: int, steps: int, threads: int, dtype: str) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Lfm2Config, Lfm2ForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = Lfm2ForCausalLM(Lfm2Config(**config)).to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=TARGETS))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config["vocab_size"], (1, seq))

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    setup_peak = _reset_peak()
    step()
    best = _best_step(step, steps)
    return {"tok_s": seq / best, "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "setup_peak_mb": setup_peak}


def _reset_peak() -> float:
    """The process's peak resident memory so far (MB), then the peak reset to what is resident now (Linux
    clear_refs), so that the peak read after the steps is the training's own: building and converting a model
    (both sides build it in fp32 first) is not training."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return peak


def _best_step(step, steps: int, min_seconds: float = 2.0) -> float:
    """The best time of at least `steps` steps, and of as many more as fit in `min_seconds` (a shared machine's
    hiccups hide a 15 ms step in three samples; a 3 s one is measured three times)."""
    times: list[float] = []
    while len(times) < steps or sum(times) < min_seconds:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return min(times)


def worker(side: str, config: dict, seq: int, steps: int, threads: int, dtype: str) -> None:
    result = (run_ours if side == "ours" else run_torch)(config, seq, steps, threads, dtype)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the training steps'
    print(json.dumps(result))


def measure(side: str, shape: str, dtype: str, args) -> dict | None:
    from bench_lfm2 import SHAPES

    python = args.torch_python if side == "torch" and args.torch_python else sys.executable
    cmd = [python, __file__, "--worker", side, "--config", json.dumps(SHAPES[shape]), "--seq", str(args.seq),
           "--steps", str(args.steps), "--threads", str(args.threads), "--dtypes", dtype]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"({side} {shape} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode})")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--shapes", default="tiny,350m")
    p.add_argument("--dtypes", default="fp32,bf16", help="frozen base weights: fp32, bf16 or both")
    p.add_argument("--torch-python", help="interpreter with torch, transformers and peft (default: this one)")
    p.add_argument("--worker", choices=("ours", "torch"))
    p.add_argument("--config", help=argparse.SUPPRESS)  # a worker's model config (JSON)
    p.add_argument("--json")
    args = p.parse_args()
    if args.worker:
        worker(args.worker, json.loads(args.config), args.seq, args.steps, args.threads, args.dtypes)
        return
    sys.path.insert(0, str(Path(__file__).parent))
    results = {}
    print(f"LoRA r={RANK} on {', '.join(TARGETS)}; batch 1 x {args.seq}; {args.threads} thread(s); "
          f"best step of at least {args.steps} and of 2 s")
    print("MB: peak resident memory of the training steps (setup, where higher, in brackets: both sides build the "
          "model in fp32 first)")
    print(f"{'shape':<6} {'base':<5} {'trainable':>10} {'ours tok/s':>11} {'torch tok/s':>12} {'speed':>6} "
          f"{'vs torch fp32':>14} {'ours MB':>14} {'torch MB':>14} {'memory':>7}")
    for shape in args.shapes.split(","):
        for dtype in args.dtypes.split(","):
            ours, theirs = measure("ours", shape, dtype, args), measure("torch", shape, dtype, args)
            results[f"{shape}/{dtype}"] = {"ours": ours, "torch": theirs}
            if not ours:
                continue
            fp32 = results.get(f"{shape}/fp32", {}).get("torch")
            cell = lambda v, w, fmt: format(v, fmt) if v is not None else format("-", f">{w}")  # noqa: E731
            speed = ours["tok_s"] / theirs["tok_s"] if theirs else None
            vs_fp32 = ours["tok_s"] / fp32["tok_s"] if fp32 else None
            memory = ours["peak_rss_mb"] / theirs["peak_rss_mb"] if theirs else None
            def mb(r):
                if not r:
                    return f"{'-':>14}"
                setup = f"({r['setup_peak_mb']:.0f})" if r["setup_peak_mb"] > r["peak_rss_mb"] else ""
                return f"{r['peak_rss_mb']:.0f} {setup}".rjust(14)
            print(f"{shape:<6} {dtype:<5} {ours['trainable']:>10,} {ours['tok_s']:11.1f} "
                  f"{cell(theirs and theirs['tok_s'], 12, '12.1f')} {cell(speed, 6, '6.2f')} "
                  f"{cell(vs_fp32, 14, '14.2f')} {mb(ours)} {mb(theirs)} {cell(memory, 7, '7.2f')}")
    print_speed_of_light(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def print_speed_of_light(results: dict, args) -> None:
    """Each side's share of the register-only FMA peak measured now (same thread count), and the best speed-up
    over PyTorch + PEFT that any implementation could reach: its step time over the step's least GEMM FLOPs at
    100% of peak."""
    from bench_lfm2 import fma_peaks
    from captionaura import _core

    _core.set_num_threads(args.threads)
    peaks = fma_peaks(args.dtypes.split(","))
    print("\nSpeed of light: the step's GEMM FLOPs against the FMA peak of this run ("
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()) + ")")
    print(f"{'shape':<6} {'base':<5} {'GFLOP/step':>10} {'ours % peak':>11} {'torch % peak':>12} {'best possible speed':>19}")
    for key, row in results.items():
        shape, dtype = key.split("/")
        ours, theirs = row["ours"], row["torch"]
        if not ours or dtype not in peaks:
            continue
        light = ours["step_gemm_flops"] / (peaks[dtype] * 1e9)
        pct = lambda r: light / (args.seq / r["tok_s"])  # noqa: E731
        row["best_possible_speed"] = (args.seq / theirs["tok_s"]) / light if theirs else None
        print(f"{shape:<6} {dtype:<5} {ours['step_gemm_flops'] / 1e9:10.1f} {pct(ours):11.1%} "
              + (f"{pct(theirs):12.1%} {row['best_possible_speed']:19.2f}" if theirs else f"{'-':>12} {'-':>19}"))


if __name__ == "__main__":
    main()
