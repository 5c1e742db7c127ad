"""Generation throughput for the LFM2-350M shape (random weights, float32, batch 1): prefill of a 512-token prompt
and greedy decode of 128 new tokens, captionaura vs transformers ``generate`` (same config, same thread count),
run side by side, captionaura's streaming iterator (``stream=True``) next to its plain call, plus the decode
roofline: weight bytes read per token / memory bandwidth measured in the same run (a STREAM-like NumPy "add" over
3 x 256 MiB arrays, one NumPy call per thread). ``--shape tiny`` (bench_lfm2's tiny LFM2) shows the per-token
overhead of streaming, which the 350M shape's decode time hides.

    python benchmarks/bench_generate.py [--threads 1,2] [--prompt 512] [--new 128] [--repeats 3] [--shape 350m]
                                        [--torch-python .venv-ref/bin/python] [--no-torch] [--json out.json]

Each new token is timestamped as it is emitted (captionaura: the per-token callback; transformers: a streamer).
prefill tok/s = prompt / best time to the first token; decode tok/s = 1 / median gap between tokens over all
repeats (robust to a shared machine's hiccups; "mean" = (new − 1) / best first-to-last time is printed too);
eos masked (min_new_tokens = new) so every run decodes `new` tokens.
The transformers side runs in a subprocess of the interpreter given by --torch-python (default: this one if it
imports torch, else .venv-ref/bin/python) with ``torch.set_num_threads(threads)``, ``use_cache=True``,
sdpa attention, under ``torch.inference_mode()``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def measure(run, new: int, repeats: int) -> dict:
    """run(n, stamp) generates n tokens and calls stamp() as each new token arrives. Prefill = best time to the
    first token; decode = 1 / median gap between consecutive tokens, pooled over the repeats (the median keeps
    a shared machine's hiccups out), and also (new − 1) / best time from first to last token."""
    run(2, lambda: None)  # warm-up: arenas, caches, lazy init
    first, span, gaps = float("inf"), float("inf"), []
    for _ in range(repeats):
        stamps: list[float] = []
        t0 = time.perf_counter()
        run(new, lambda: stamps.append(time.perf_counter()))
        assert len(stamps) == new, len(stamps)
        first = min(first, stamps[0] - t0)
        span = min(span, stamps[-1] - stamps[0])
        gaps += list(np.diff(stamps))
    return {"prefill_s": first, "decode_median_s": float(np.median(gaps)), "decode_span_s": span}


def rates(m: dict, prompt: int, new: int) -> dict:
    return {"prefill_tok_s": prompt / m["prefill_s"], "decode_tok_s": 1.0 / m["decode_median_s"],
            "decode_mean_tok_s": (new - 1) / m["decode_span_s"]}


def ours(config: dict, threads: int, prompt: int, new: int, repeats: int) -> dict:
    import captionaura as ca

    ca.set_num_threads(threads)
    model = ca.Lfm2Model.from_config(config, seed=0)
    ids = np.random.default_rng(0).integers(3, config["vocab_size"], prompt).astype(np.int32)

    def run(n: int, stamp) -> None:
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, eos_token_id=config["eos_token_id"],
                             callback=lambda row, tok: stamp())
        assert out.shape == (1, n)

    # streaming: each token handled by some Python code (a caption streamer detokenises and sends a piece), on
    # the decoding thread through the callback, or on the caller's thread from the stream=True iterator
    def run_handled(n: int, stamp) -> None:
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, eos_token_id=config["eos_token_id"],
                       callback=lambda row, tok: (handle_token(tok), stamp()) and None)

    def run_streamed(n: int, stamp) -> None:
        for _, tok in model.generate(ids, max_new_tokens=n, min_new_tokens=n, eos_token_id=config["eos_token_id"],
                                     stream=True):
            handle_token(tok)
            stamp()

    return {**rates(measure(run, new, repeats), prompt, new), "parameters": model.num_parameters(),
            "handled": rates(measure(run_handled, new, repeats), prompt, new),
            "streamed": rates(measure(run_streamed, new, repeats), prompt, new)}


def handle_token(token: int) -> str:
    """About 50 µs of Python per token (what a caption streamer spends detokenising and sending a piece)."""
    return "".join(chr(97 + (token + i) % 26) for i in range(400))


def theirs(config: dict, threads: int, prompt: int, new: int, repeats: int) -> dict:
    import torch
    from bench_lfm2_torch import _make_config
    from transformers import Lfm2ForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = _make_config(config, "sdpa")
    cfg.use_cache = True
    model = Lfm2ForCausalLM(cfg).eval()
    ids = torch.tensor(np.random.default_rng(0).integers(3, config["vocab_size"], (1, prompt)))
    mask = torch.ones_like(ids)

    class Stamper:  # transformers' streamer protocol: put(prompt) once, then put(token) per step, end()
        def __init__(self, stamp) -> None:
            self.stamp, self.prompt_seen = stamp, False

        def put(self, value) -> None:
            if self.prompt_seen:
                self.stamp()
            self.prompt_seen = True

        def end(self) -> None:
            pass

    def run(n: int, stamp) -> None:
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 use_cache=True, eos_token_id=config["eos_token_id"], pad_token_id=0,
                                 streamer=Stamper(stamp))
        assert out.shape[1] == prompt + n

    return rates(measure(run, new, repeats), prompt, new)


def bandwidth(threads: int, mib: int = 256, repeats: int = 5) -> float:
    """Bytes/s of z = x + y (2 reads + 1 write per element), the arrays split across `threads` Python threads
    (NumPy releases the GIL inside the ufunc)."""
    n = mib * 2**20 // 8
    x, y, z = np.ones(n), np.ones(n), np.empty(n)
    parts = np.array_split(np.arange(n), threads)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts]

    def work(lo: int, hi: int) -> None:
        np.add(x[lo:hi], y[lo:hi], out=z[lo:hi])

    best = float("inf")
    for _ in range(repeats):
        ts = [threading.Thread(target=work, args=b) for b in bounds]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best = min(best, time.perf_counter() - t0)
    return 3 * n * 8 / best


def torch_python(arg: str | None) -> str | None:
    if arg:
        return arg
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        return sys.executable
    ref = HERE.parent / ".venv-ref" / "bin" / "python"
    return str(ref) if ref.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-python")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--shape", default="350m", choices=("tiny", "350m"))
    parser.add_argument("--torch-worker", type=int, help=argparse.SUPPRESS)  # internal: run the torch side
    parser.add_argument("--config-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:  # the reference interpreter has no captionaura: the config comes as JSON
        config = json.loads(args.config_json)
        print(json.dumps(theirs(config, args.torch_worker, args.prompt, args.new, args.repeats)))
        return
    from bench_lfm2 import SHAPES

    config = {"eos_token_id": 7, **SHAPES[args.shape]}
    py = None if args.no_torch else torch_python(args.torch_python)
    results = {}
    for threads in [int(t) for t in args.threads.split(",")]:
        row = {"ours": ours(config, threads, args.prompt, args.new, args.repeats), "bandwidth": bandwidth(threads)}
        if py:
            cmd = [py, __file__, "--torch-worker", str(threads), "--prompt", str(args.prompt), "--new",
                   str(args.new), "--repeats", str(args.repeats), "--config-json", json.dumps(config)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == 0:
                row["torch"] = json.loads(done.stdout.strip().splitlines()[-1])
            else:
                print(f"(transformers side failed: {done.stderr.strip().splitlines()[-1:]})")
        results[threads] = row

    weight_bytes = 4 * next(iter(results.values()))["ours"]["parameters"]  # f32; tied lm_head read once
    print(f"\nLFM2 {args.shape} shape, f32, random weights, batch 1: prefill {args.prompt} tokens, decode {args.new} "
          f"tokens (greedy), best of {args.repeats}")
    head = (f"{'threads':>7} {'phase':<12} {'captionaura tok/s':>18} {'transformers tok/s':>19} {'ratio':>6} "
            f"{'roofline tok/s':>15} {'of roofline':>11}")
    print(head)
    print("-" * len(head))
    for threads, row in results.items():
        o, t = row["ours"], row.get("torch")
        roof = row["bandwidth"] / weight_bytes
        for phase, key in (("prefill", "prefill_tok_s"), ("decode", "decode_tok_s"),
                           ("decode mean", "decode_mean_tok_s")):
            tv = f"{t[key]:19.1f}" if t else f"{'-':>19}"
            ratio = f"{o[key] / t[key]:6.2f}" if t else f"{'-':>6}"
            rf = f"{roof:15.1f} {o[key] / roof:11.0%}" if phase != "prefill" else f"{'':>15} {'':>11}"
            print(f"{threads:>7} {phase:<12} {o[key]:18.1f} {tv} {ratio} {rf}")
    print("\nstreaming: each token handled by Python code (handle_token), from the plain call's callback vs from the "
          "stream=True iterator, same run")
    head = f"{'threads':>7} {'phase':<12} {'callback tok/s':>15} {'streamed tok/s':>15} {'ratio':>6}"
    print(head)
    print("-" * len(head))
    for threads, row in results.items():
        o, st = row["ours"]["handled"], row["ours"]["streamed"]
        for phase, key in (("prefill", "prefill_tok_s"), ("decode", "decode_tok_s"),
                           ("decode mean", "decode_mean_tok_s")):
            print(f"{threads:>7} {phase:<12} {o[key]:15.1f} {st[key]:15.1f} {st[key] / o[key]:6.2f}")
    for threads, row in results.items():
        print(f"memory bandwidth ({threads} thread(s), NumPy add): {row['bandwidth'] / 1e9:.1f} GB/s; "
              f"weights {weight_bytes / 1e9:.2f} GB per decoded token")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
