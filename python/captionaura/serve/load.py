"""Load tests of the web app. ``serve_process`` runs ``captionaura serve`` in a child process on a free
loopback port; ``run_load`` is the client: ``clients`` WebSocket connections, each sending a camera frame and
asking for its caption in a loop (at most ``rate`` captions a second per client, like the page at that frame
rate) for ``seconds``; caption latencies measured at the client. Used by the load tests and
benchmarks/bench_serve.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from captionaura.serve.app import FRAME


@contextlib.contextmanager
def serve_process(model_dir: str | os.PathLike[str], threads: int | None = None,
                  start_timeout: float = 30.0) -> Iterator[str]:
    """``captionaura serve --model model_dir [--threads threads]`` in a child process on a free 127.0.0.1 port;
    yields "127.0.0.1:port" once the server answers, and stops it on leaving."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "captionaura", "serve", "--model", str(model_dir), "--port", str(port)]
    if threads is not None:
        command += ["--threads", str(threads)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"captionaura serve exited: {process.stdout.read()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"captionaura serve did not answer within {start_timeout:g} s")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class LoadResult:
    clients: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)     # caption request → last token
    first_token_ms: list[float] = field(default_factory=list)   # caption request → first token
    errors: list[str] = field(default_factory=list)
    per_client: list[int] = field(default_factory=list)         # captions each client received

    def percentiles(self, values: Sequence[float] | None = None) -> dict[str, float]:
        values = self.latencies_ms if values is None else values
        if not values:
            return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
        p50, p90, p99 = np.percentile(np.asarray(values), [50, 90, 99])
        return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}

    def report(self) -> str:
        total = self.percentiles()
        first = self.percentiles(self.first_token_ms)
        rate = len(self.latencies_ms) / self.seconds if self.seconds else 0.0
        return (f"{self.clients} clients, {self.seconds:.1f} s: {len(self.latencies_ms)} captions "
                f"({rate:.1f}/s; per client {min(self.per_client, default=0)} to {max(self.per_client, default=0)}), "
                f"{len(self.errors)} errors\n"
                f"caption latency ms    p50 {total['p50']:.1f}  p90 {total['p90']:.1f}  p99 {total['p99']:.1f}\n"
                f"first token ms        p50 {first['p50']:.1f}  p90 {first['p90']:.1f}  p99 {first['p99']:.1f}")


async def _client(url: str, frames: Sequence[bytes], deadline: float, rate: float,
                  generation: dict[str, Any], result: LoadResult) -> None:
    import websockets

    async with websockets.connect(url, max_size=None) as ws:
        async def reply(kinds: tuple[str, ...]) -> dict[str, Any]:
            while True:
                msg = json.loads(await ws.recv())
                if msg["type"] == "error":
                    result.errors.append(msg["message"])
                if msg["type"] in kinds:
                    return msg

        await reply(("ready",))
        await ws.send(json.dumps({"type": "settings", "live": False, "generation": generation}))
        await reply(("settings",))
        client = len(result.per_client)
        result.per_client.append(0)
        sent = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await ws.send(bytes([FRAME]) + frames[sent % len(frames)])
            await ws.send(json.dumps({"type": "caption"}))
            sent += 1
            first = None
            while True:
                msg = await reply(("token", "caption_end", "error"))
                if msg["type"] == "error":
                    break
                if msg["type"] == "token" and first is None:
                    first = time.perf_counter()
                if msg["type"] == "caption_end":
                    end = time.perf_counter()
                    if msg.get("failed"):
                        result.errors.append("caption failed")
                    else:
                        result.latencies_ms.append(1000 * (end - started))
                        result.first_token_ms.append(1000 * ((first or end) - started))
                        result.per_client[client] += 1
                    break
            await asyncio.sleep(max(0.0, 1.0 / rate - (time.perf_counter() - started)))


async def run_load(url: str, frames: Sequence[bytes], clients: int = 20, seconds: float = 30.0, rate: float = 5.0,
                   generation: dict[str, Any] | None = None) -> LoadResult:
    """Run the clients concurrently against ``url`` (ws://host:port/ws); connection failures count as errors."""
    result = LoadResult(clients=clients, seconds=seconds)
    deadline = time.monotonic() + seconds
    outcomes = await asyncio.gather(*(_client(url, frames, deadline, rate, generation or {}, result)
                                      for _ in range(clients)), return_exceptions=True)
    result.errors.extend(f"{type(e).__name__}: {e}" for e in outcomes if isinstance(e, BaseException))
    return result
