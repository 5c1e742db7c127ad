"""The main job on the built-in default.

Until the AuraScenes world and the aura-tiny model land, the demo shows the core end to end: it builds a
small random LFM2, trains it on token sequences drawn from a fixed random Markov chain, and reports the
falling loss against the chain's entropy rate (the best loss any model can reach on that data).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from captionaura.config import Lfm2Config
from captionaura.model import Lfm2Model
from captionaura.optim import AdamWConfig


@dataclass
class DemoConfig:
    steps: int = 60
    batch_size: int = 8
    seq_len: int = 64
    learning_rate: float = 3e-3
    seed: int = 0
    vocab_size: int = 128
    successors: int = 3  # each token is followed by one of this many tokens
    progressbar: bool = True
    report_path: str | None = None
    model: dict = field(default_factory=lambda: {
        "hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "layer_types": ["conv", "full_attention", "conv", "full_attention"],
        "block_auto_adjust_ff_dim": False,
    })


class MarkovTokens:
    """Token sequences from a random sparse Markov chain; its entropy rate is the floor of the loss."""

    def __init__(self, vocab_size: int, successors: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.next_tokens = np.stack([rng.choice(vocab_size, successors, replace=False) for _ in range(vocab_size)])
        self.next_probs = rng.dirichlet(np.ones(successors) * 2.0, size=vocab_size)
        self.vocab_size = vocab_size
        self.entropy_rate = self._entropy_rate()

    def _entropy_rate(self) -> float:
        transition = np.zeros((self.vocab_size, self.vocab_size))
        np.put_along_axis(transition, self.next_tokens, self.next_probs, axis=1)
        stationary = np.full(self.vocab_size, 1.0 / self.vocab_size)
        for _ in range(500):
            stationary = stationary @ transition
        row_entropy = -(self.next_probs * np.log(self.next_probs)).sum(axis=1)
        return float(stationary @ row_entropy)

    def batch(self, batch_size: int, seq_len: int) -> np.ndarray:
        ids = np.empty((batch_size, seq_len), dtype=np.int32)
        ids[:, 0] = self.rng.integers(0, self.vocab_size, batch_size)
        for t in range(1, seq_len):
            prev = ids[:, t - 1]
            u = self.rng.random(batch_size)[:, None]
            choice = (u > np.cumsum(self.next_probs[prev], axis=1)).sum(axis=1).clip(max=self.next_probs.shape[1] - 1)
            ids[:, t] = self.next_tokens[prev, choice]
        return ids


def run_demo(config: DemoConfig | None = None) -> dict:
    """Train a small random LFM2 on generated tokens and return (and print) the figures."""
    cfg = config or DemoConfig()
    model_cfg = Lfm2Config(vocab_size=cfg.vocab_size, **cfg.model)
    model = Lfm2Model.from_config(model_cfg, seed=cfg.seed)
    data = MarkovTokens(cfg.vocab_size, cfg.successors, cfg.seed + 1)
    print(model)
    print(f"data: Markov chain over {cfg.vocab_size} tokens, entropy rate {data.entropy_rate:.3f} nats "
          f"(uniform guess: {np.log(cfg.vocab_size):.3f})")

    model.set_optimizer(AdamWConfig(lr=cfg.learning_rate, weight_decay=0.0))  # full training: every parameter
    losses, start = [], time.perf_counter()
    bar = tqdm(range(1, cfg.steps + 1), desc="training", disable=not cfg.progressbar)
    for _ in bar:
        ids = data.batch(cfg.batch_size, cfg.seq_len)
        losses.append(model.train_step({"input_ids": ids, "labels": ids}))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    elapsed = time.perf_counter() - start
    tokens = cfg.steps * cfg.batch_size * cfg.seq_len
    report = {
        "parameters": model.num_parameters(),
        "steps": cfg.steps,
        "initial_loss": losses[0],
        "final_loss": float(np.mean(losses[-5:])),
        "entropy_rate": data.entropy_rate,
        "train_tokens_per_s": tokens / elapsed,
        "losses": losses,
    }
    print(f"loss {report['initial_loss']:.3f} -> {report['final_loss']:.3f} "
          f"(floor {data.entropy_rate:.3f}) in {cfg.steps} steps, {report['train_tokens_per_s']:.0f} tokens/s")
    if cfg.report_path:
        Path(cfg.report_path).write_text(json.dumps(report, indent=2))
    return report
