"""The CUDA backend against PyTorch on the same GPU, side by side in one run: LoRA train-step throughput
(tokens/s, r=16 on every linear projection, AdamW) and greedy decode throughput (new tokens/s, batch 1, KV
cache). Both sides in fp32 (PyTorch with TF32 off, as cuBLAS runs for captionaura). Needs a CUDA device and a
CUDA build of torch; without them it says which is missing and exits with status 2.

    python benchmarks/bench_cuda.py [--shapes tiny,350m] [--seq 256] [--steps 5] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_lfm2 import SHAPES  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"]
RANK = 16


def best_of(fn, steps: int, sync=lambda: None) -> float:
    fn()  # warm-up: allocations, cuBLAS heuristics
    sync()
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def ours(shape: str, seq: int, steps: int, new_tokens: int) -> dict:
    import numpy as np

    import captionaura as ca

    cfg = SHAPES[shape]
    ids = np.random.default_rng(0).integers(3, cfg["vocab_size"], (1, seq)).astype(np.int32)
    model = ca.Lfm2Model.from_config(cfg, seed=0).to("cuda")
    model.add_lora(ca.LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=TARGETS))
    model.set_optimizer(ca.AdamWConfig(lr=1e-4))
    batch = {"input_ids": ids, "labels": ids}
    train = best_of(lambda: model.train_step(batch), steps)
    prompt = ids[0, :16]
    decode = best_of(lambda: model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                            eos_token_id=2), max(1, steps // 2))
    return {"train_tok_s": seq / train, "decode_tok_s": new_tokens / decode}


def torch_side(shape: str, seq: int, steps: int, new_tokens: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Lfm2Config, Lfm2ForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    dev = torch.device("cuda")
    cfg = SHAPES[shape]
    model = Lfm2ForCausalLM(Lfm2Config(**cfg)).float().to(dev)
    ids = torch.randint(3, cfg["vocab_size"], (1, seq), device=dev)
    prompt = ids[:, :16]

    def decode():
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           eos_token_id=2, pad_token_id=0)

    decode_s = best_of(decode, max(1, steps // 2), torch.cuda.synchronize)
    lora = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=TARGETS))
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = lora(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    train_s = best_of(step, steps, torch.cuda.synchronize)
    return {"train_tok_s": seq / train_s, "decode_tok_s": new_tokens / decode_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="tiny,350m")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()

    import captionaura as ca

    if not ca.cuda_available():
        print(f"bench_cuda: no CUDA device for captionaura: {ca.cuda_status()['reason']}", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print("bench_cuda: PyTorch is not installed (pip install torch transformers peft)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("bench_cuda: this PyTorch build cannot use the GPU (install a CUDA build of torch)", file=sys.stderr)
        return 2

    print(f"device: {ca.cuda_status()['device']}; torch {torch.__version__}")
    print(f"{'shape':>6} {'side':>12} {'train tok/s':>12} {'decode tok/s':>13}")
    results = {}
    for shape in args.shapes.split(","):
        a = ours(shape, args.seq, args.steps, args.new_tokens)
        b = torch_side(shape, args.seq, args.steps, args.new_tokens)
        results[shape] = {"captionaura": a, "torch": b,
                          "train_speedup": a["train_tok_s"] / b["train_tok_s"],
                          "decode_speedup": a["decode_tok_s"] / b["decode_tok_s"]}
        for side, r in (("captionaura", a), ("torch", b)):
            print(f"{shape:>6} {side:>12} {r['train_tok_s']:12.0f} {r['decode_tok_s']:13.1f}")
        print(f"{shape:>6} {'speedup':>12} {results[shape]['train_speedup']:11.2f}x "
              f"{results[shape]['decode_speedup']:12.2f}x")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
