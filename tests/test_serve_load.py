"""Load on a real server (``captionaura serve`` in its own process) over loopback: 20 concurrent WebSocket clients
each sending camera frames and asking for captions (at most 5 a second each, the page's rate) with no error; latency percentiles
printed. The default run holds the load 5 s; ``pytest -m slow`` 30 s."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("uvicorn", reason="the web app needs the serve extra (starlette, uvicorn)")
pytest.importorskip("websockets", reason="the load client needs websockets")

from captionaura.serve.load import run_load, serve_process
from test_serve import encode, picture, tiny_captioner

CLIENTS = 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_vl")
    tiny_captioner(folder)
    return folder


def hold_load(model_dir, seconds: float):
    frames = [encode(picture(seed)) for seed in range(8)]
    with serve_process(model_dir, threads=1) as address:
        result = asyncio.run(run_load(f"ws://{address}/ws", frames, clients=CLIENTS, seconds=seconds, rate=5.0,
                                      generation={"max_new_tokens": 12}))
    print("\n" + result.report())
    assert result.errors == []
    # every client was served (the machine's speed sets how often; a starved client gets none)
    assert len(result.per_client) == CLIENTS and min(result.per_client) >= 1
    return result


def test_twenty_clients_for_five_seconds(model_dir):
    hold_load(model_dir, 5.0)


@pytest.mark.slow
def test_twenty_clients_for_thirty_seconds(model_dir):
    hold_load(model_dir, 30.0)
