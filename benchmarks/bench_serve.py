"""Caption latency of the web app under load: ``captionaura serve`` in its own process on loopback, N
concurrent WebSocket clients each sending a camera frame and asking for its caption in a loop (at most --rate
a second each, like the page at that frame rate), for --seconds. Prints p50/p90/p99 of the round trip
(frame sent → last token) and of the first token.

    .venv/bin/python benchmarks/bench_serve.py [--model DIR] [--clients 20] [--seconds 30] [--rate 5]
                                               [--max-new-tokens 12] [--threads 1]

Anchor, measured in the same run: the same captions written by ``model.caption`` in this process, one after
another, with no server (the model's own time per caption). Under load the server runs the model on one
worker thread, so a caption's latency is about (clients in the queue) x (anchor). Without --model the model is
the tests' tiny random LFM2-VL (tests/test_serve.py), which measures the serving path rather than a real model.
--threads sets the C core's threads on both sides (default 1: a tiny model gains nothing from more, and on a
busy machine OpenMP teams wait for each other).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))


def anchor(model_dir: Path, frames: list[bytes], captions: int, max_new_tokens: int, threads: int) -> list[float]:
    """Milliseconds per caption of model.caption on decoded frames, in this process, sequentially."""
    import captionaura as ca
    from captionaura.serve import CaptionService
    from captionaura.serve.validation import decode_image

    ca.set_num_threads(threads)
    model = ca.Lfm2VlModel.from_pretrained(model_dir)
    service = CaptionService(model)
    settings = service.generation({"max_new_tokens": max_new_tokens})
    service.close()
    times = []
    for i in range(captions):
        start = time.perf_counter()
        model.caption(decode_image(frames[i % len(frames)]), generation=settings)
        times.append(1000 * (time.perf_counter() - start))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="LFM2-VL checkpoint folder (default: the tests' tiny model)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=5.0, help="captions a second per client, at most")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1, help="threads of the C core, here and in the server")
    args = parser.parse_args()

    from captionaura.serve.load import run_load, serve_process
    from test_serve import encode, picture, tiny_captioner

    frames = [encode(picture(seed, (240, 320))) for seed in range(8)]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = Path(tmp)
            tiny_captioner(model_dir)
        bare = anchor(model_dir, frames, 50, args.max_new_tokens, args.threads)
        p50, p90, p99 = np.percentile(bare, [50, 90, 99])
        print(f"anchor: model.caption in-process, sequential: p50 {p50:.1f}  p90 {p90:.1f}  p99 {p99:.1f} ms")
        with serve_process(model_dir, threads=args.threads) as address:
            result = asyncio.run(run_load(f"ws://{address}/ws", frames, clients=args.clients, seconds=args.seconds,
                                          rate=args.rate, generation={"max_new_tokens": args.max_new_tokens}))
    print(result.report())
    if result.errors:
        print(f"errors (first 5): {result.errors[:5]}")
        sys.exit(1)


if __name__ == "__main__":
    main()
