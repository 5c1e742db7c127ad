"""Generation throughput for the LFM2-350M shape (random weights, batch 1): prefill of a 512-token prompt
and greedy decode of 128 new tokens, captionaura vs transformers ``generate`` (same config, same thread count,
each in fp32 and bf16 weights), run side by side, plus the decode roofline: weight bytes read per token / memory
read bandwidth measured in the same run (the C core's probe streaming reads over 512 MiB with the same threads),
and optionally llama.cpp's ``llama-bench`` on GGUFs converted from the same weights (below).

    python benchmarks/bench_generate.py [--threads 1,2] [--prompt 512] [--new 128] [--repeats 3] [--shape 350m]
                                        [--dtypes fp32,bf16,int8] [--pairs 5] [--torch-python .venv-ref/bin/python] [--no-torch]
                                        [--json out.json]

captionaura's streaming iterator (``stream=True``) is timed next to its plain call (each token handled by the
same Python code); ``--shape tiny`` (bench_lfm2's tiny LFM2) shows the per-token overhead of streaming, which the
350M shape's decode time hides.

bf16: ours is ``model.to_inference_dtype("bf16")`` (bf16 weights; decoding GEMVs with fp32 activations, the
prompt's GEMMs with activations rounded to bf16); transformers' is ``model.to(torch.bfloat16)`` (bf16 weights and
activations). int8 (ours only, per-row weight scales, activations quantised per block of 32 in the decoding
GEMVs; compared with llama.cpp's q8_0, which has one scale per 32 weights and quantises activations the same way):
``model.to_inference_dtype("int8")``. The roofline counts 4, 2 or 1 bytes per parameter; "best possible ratio"
is the roofline over transformers' decode rate: the most any decoder that streams its weights once per token at
the measured bandwidth could gain over it.

llama.cpp (optional, when the environment variable LLAMA_CPP_DIR names a llama.cpp source tree with a CPU
build of llama-bench in LLAMA_CPP_DIR/build/bin). Nothing of llama.cpp is part of this project; the manual steps:

    # a llama.cpp source tree (e.g. the one vendored in the llama-cpp-python sdist: pip download
    # llama-cpp-python --no-binary :all: --no-deps, then unpack vendor/llama.cpp) at $LLAMA_CPP_DIR, then
    cmake -S $LLAMA_CPP_DIR -B $LLAMA_CPP_DIR/build -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF
    cmake --build $LLAMA_CPP_DIR/build -j 2 --target llama-bench
    python3 -m venv /work/refvenv && /work/refvenv/bin/pip install torch transformers safetensors numpy sentencepiece
    LLAMA_CPP_DIR=... LLAMA_CPP_PYTHON=/work/refvenv/bin/python python benchmarks/bench_generate.py

The benchmark then saves our random 350M model (save_pretrained), converts it with llama.cpp's own
convert_hf_to_gguf.py (run by LLAMA_CPP_PYTHON, default the --torch-python interpreter) to f32, bf16 and q8_0
GGUFs, giving it a placeholder vocabulary because a random checkpoint has no tokenizer (token ids are all
llama-bench uses), and runs ``llama-bench -p 0 -n <new> -d <prompt> -t <threads> -r 1``: token generation
after a <prompt>-token context, as ours. Each llama-bench run follows one of our decodes of the same weights, for
--pairs pairs: the ratio of each pair compares the two at the same moment of a shared machine, whose speed drifts
by tens of percent over minutes; the table gives each pair's ratio, their median and the smallest.

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
import os
import subprocess
import sys
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


PHASES = (("prefill", "prefill_tok_s"), ("decode", "decode_tok_s"), ("decode mean", "decode_mean_tok_s"))


def rates(m: dict, prompt: int, new: int) -> dict:
    return {"prefill_tok_s": prompt / m["prefill_s"], "decode_tok_s": 1.0 / m["decode_median_s"],
            "decode_mean_tok_s": (new - 1) / m["decode_span_s"]}


def ours(config: dict, threads: int, prompt: int, new: int, repeats: int, dtype: str = "fp32",
         streaming: bool = False) -> dict:
    import captionaura as ca

    ca.set_num_threads(threads)
    model = ca.Lfm2Model.from_config(config, seed=0).to_inference_dtype(dtype)
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

    result = {**rates(measure(run, new, repeats), prompt, new), "parameters": model.num_parameters()}
    if streaming:
        result["handled"] = rates(measure(run_handled, new, repeats), prompt, new)
        result["streamed"] = rates(measure(run_streamed, new, repeats), prompt, new)
    return result


def handle_token(token: int) -> str:
    """About 50 µs of Python per token (what a caption streamer spends detokenising and sending a piece)."""
    return "".join(chr(97 + (token + i) % 26) for i in range(400))


def theirs(config: dict, threads: int, prompt: int, new: int, repeats: int, dtype: str = "fp32") -> dict:
    import torch
    from bench_lfm2_torch import _make_config
    from transformers import Lfm2ForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = _make_config(config, "sdpa")
    cfg.use_cache = True
    model = Lfm2ForCausalLM(cfg).eval().to({"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
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


def bandwidth(threads: int, mib: int = 512, repeats: int = 20) -> float:
    """Bytes/s of `threads` threads streaming reads over a buffer far beyond the caches (the C core's probe): what
    a decoding step, which only reads its weights, can get at most."""
    import captionaura as ca
    from captionaura import _core

    ca.set_num_threads(threads)
    return _core.read_bandwidth_gbs(mib, repeats) * 1e9


# convert_hf_to_gguf.py with a placeholder SentencePiece-style vocabulary (unk, bos, eos, the 256 byte tokens,
# then "<tN>"): llama.cpp's LFM2 converter reads the tokenizer files a random checkpoint does not have.
GGUF_CONVERT = r"""
import sys
llama, src, out, outtype = sys.argv[1:5]
sys.path[:0] = [llama, llama + "/gguf-py"]
import convert_hf_to_gguf
from conversion import lfm2

def set_vocab(self):
    V = self.hparams["vocab_size"]
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    tokens += [f"<t{i}>".encode() for i in range(len(tokens), V)]
    types = [2, 3, 3] + [6] * 256 + [1] * (V - 259)
    self.gguf_writer.add_tokenizer_model("llama")
    self.gguf_writer.add_tokenizer_pre("default")
    self.gguf_writer.add_token_list(tokens)
    self.gguf_writer.add_token_scores([0.0] * V)
    self.gguf_writer.add_token_types(types)
    self.gguf_writer.add_bos_token_id(1)
    self.gguf_writer.add_eos_token_id(2)
    self.gguf_writer.add_unk_token_id(0)

lfm2.LFM2Model.set_vocab = set_vocab
sys.argv = ["convert_hf_to_gguf.py", src, "--outtype", outtype, "--outfile", out]
convert_hf_to_gguf.main()
"""


def decode_rate(model, ids: np.ndarray, new: int, eos: int) -> float:
    """One greedy generation of `new` tokens: 1 / median gap between tokens."""
    stamps: list[float] = []
    model.generate(ids, max_new_tokens=new, min_new_tokens=new, eos_token_id=eos,
                   callback=lambda row, tok: stamps.append(time.perf_counter()))
    return 1.0 / float(np.median(np.diff(stamps)))


def llama_cpp(config: dict, thread_list: list[int], prompt: int, new: int, pairs: int,
              python: str) -> dict[int, dict[str, dict]]:
    """llama-bench token generation on GGUFs of our seed-0 model, alternated with our own decode of the same
    weights `pairs` times per thread count and type (each llama-bench run is one repetition after its warm-up),
    so that both sides of each ratio see the same moment of a shared machine."""
    import tempfile

    import captionaura as ca

    llama = Path(os.environ["LLAMA_CPP_DIR"])
    bench = llama / "build" / "bin" / "llama-bench"
    if not bench.exists():
        raise FileNotFoundError(f"{bench} is missing: build llama-bench first (see this file's docstring)")
    ids = np.random.default_rng(0).integers(3, config["vocab_size"], prompt).astype(np.int32)
    out: dict[int, dict[str, dict]] = {t: {} for t in thread_list}
    with tempfile.TemporaryDirectory() as tmp:
        ca.Lfm2Model.from_config(config, seed=0).save_pretrained(Path(tmp) / "hf")
        for outtype, dtype in (("f32", "fp32"), ("bf16", "bf16"), ("q8_0", "int8")):
            gguf = Path(tmp) / f"model-{outtype}.gguf"
            subprocess.run([python, "-c", GGUF_CONVERT, str(llama), str(Path(tmp) / "hf"), str(gguf), outtype],
                           check=True, capture_output=True, text=True)
            model = ca.Lfm2Model.from_config(config, seed=0).to_inference_dtype(dtype)
            for threads in thread_list:
                ca.set_num_threads(threads)
                decode_rate(model, ids, 2, config["eos_token_id"])  # warm-up
                mine, theirs_ = [], []
                for _ in range(pairs):
                    mine.append(decode_rate(model, ids, new, config["eos_token_id"]))
                    done = subprocess.run([str(bench), "-m", str(gguf), "-p", "0", "-n", str(new), "-d", str(prompt),
                                           "-t", str(threads), "-r", "1", "-o", "json"],
                                          check=True, capture_output=True, text=True)
                    theirs_.append(float(json.loads(done.stdout)[0]["samples_ts"][0]))
                out[threads][outtype] = {"ours": mine, "llama_cpp": theirs_}
            del model
            gguf.unlink()
    return out


def print_header(head: str) -> None:
    print(head)
    print("-" * len(head))


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
    parser.add_argument("--pairs", type=int, default=5, help="alternated runs of ours and llama-bench")
    parser.add_argument("--dtypes", default="fp32,bf16,int8")
    parser.add_argument("--torch-python")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--shape", default="350m", choices=("tiny", "350m"))
    parser.add_argument("--torch-worker", type=int, help=argparse.SUPPRESS)  # internal: run the torch side
    parser.add_argument("--config-json", help=argparse.SUPPRESS)
    parser.add_argument("--torch-dtype", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:  # the reference interpreter has no captionaura: the config comes as JSON
        config = json.loads(args.config_json)
        print(json.dumps(theirs(config, args.torch_worker, args.prompt, args.new, args.repeats, args.torch_dtype)))
        return
    from bench_lfm2 import SHAPES

    config = {"eos_token_id": 7, **SHAPES[args.shape]}
    dtypes = args.dtypes.split(",")
    thread_list = [int(t) for t in args.threads.split(",")]
    py = None if args.no_torch else torch_python(args.torch_python)
    results: dict = {}
    for threads in thread_list:
        row: dict = {"bandwidth": bandwidth(threads), "ours": {}, "torch": {}}
        for dtype in dtypes:
            row["ours"][dtype] = ours(config, threads, args.prompt, args.new, args.repeats, dtype,
                                      streaming=dtype == dtypes[0])
            if not py or dtype == "int8":  # transformers has no int8 weight-only CPU path of its own
                continue
            cmd = [py, __file__, "--torch-worker", str(threads), "--prompt", str(args.prompt), "--new",
                   str(args.new), "--repeats", str(args.repeats), "--config-json", json.dumps(config),
                   "--torch-dtype", dtype]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == 0:
                row["torch"][dtype] = json.loads(done.stdout.strip().splitlines()[-1])
            else:
                print(f"(transformers {dtype} side failed: {done.stderr.strip().splitlines()[-1:]})")
        results[threads] = row
    llama = {}
    if os.environ.get("LLAMA_CPP_DIR"):
        llama = llama_cpp(config, thread_list, args.prompt, args.new, args.pairs,
                          os.environ.get("LLAMA_CPP_PYTHON") or py or sys.executable)

    params = next(iter(results.values()))["ours"][dtypes[0]]["parameters"]  # tied lm_head read once
    print(f"\nLFM2 {args.shape} shape, random weights, batch 1: prefill {args.prompt} tokens, decode {args.new} "
          f"tokens (greedy), {args.repeats} repeats; load average {os.getloadavg()[0]:.1f} at the end")
    head = (f"{'threads':>7} {'dtype':<5} {'phase':<12} {'captionaura tok/s':>18} {'transformers tok/s':>19} "
            f"{'ratio':>6} {'vs torch fp32':>13} {'roofline tok/s':>15} {'of roofline':>11} {'best possible ratio':>19}")
    print_header(head)
    for threads, row in results.items():
        base = row["torch"].get("fp32")
        for dtype in dtypes:
            o, t = row["ours"][dtype], row["torch"].get(dtype)
            roof = row["bandwidth"] / (params * {"fp32": 4, "bf16": 2, "int8": 1}[dtype])
            for phase, key in PHASES:
                tv = f"{t[key]:19.1f}" if t else f"{'-':>19}"
                ratio = f"{o[key] / t[key]:6.2f}" if t else f"{'-':>6}"
                vs = f"{o[key] / base[key]:13.2f}" if base else f"{'-':>13}"
                rf = f"{roof:15.1f} {o[key] / roof:11.0%}" if phase != "prefill" else f"{'':>15} {'':>11}"
                if phase != "prefill" and t:  # what any decoder at the roofline would get over transformers
                    rf += f" {roof / t[key]:19.2f}"
                print(f"{threads:>7} {dtype:<5} {phase:<12} {o[key]:18.1f} {tv} {ratio} {vs} {rf}")
    print("\nstreaming: each token handled by Python code (handle_token), from the plain call's callback vs from the "
          f"stream=True iterator, same run ({dtypes[0]})")
    head = f"{'threads':>7} {'phase':<12} {'callback tok/s':>15} {'streamed tok/s':>15} {'ratio':>6}"
    print_header(head)
    for threads, row in results.items():
        o, st = row["ours"][dtypes[0]]["handled"], row["ours"][dtypes[0]]["streamed"]
        for phase, key in PHASES:
            print(f"{threads:>7} {phase:<12} {o[key]:15.1f} {st[key]:15.1f} {st[key] / o[key]:6.2f}")
    for threads, row in results.items():
        print(f"memory read bandwidth ({threads} thread(s), C probe): {row['bandwidth'] / 1e9:.1f} GB/s; "
              f"weights {4 * params / 1e9:.2f} GB (fp32) per decoded token")
    if llama:
        print(f"\nllama.cpp llama-bench tg{args.new} after a {args.prompt}-token context, alternated with our decode "
              f"of the same weights ({args.pairs} pairs), tok/s")
        head = (f"{'threads':>7} {'type':<5} {'ours (median)':>13} {'llama.cpp (median)':>18} "
                f"{'ratio per pair':<28} {'median ratio':>12} {'min ratio':>9}")
        print_header(head)
        for threads, by_type in llama.items():
            for gtype, r in by_type.items():
                ratios = [a / b for a, b in zip(r["ours"], r["llama_cpp"])]
                print(f"{threads:>7} {gtype:<5} {np.median(r['ours']):13.1f} {np.median(r['llama_cpp']):18.1f} "
                      f"{' '.join(f'{x:.2f}' for x in ratios):<28} {np.median(ratios):12.2f} {min(ratios):9.2f}")
            results[threads]["llama_cpp"] = by_type
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
