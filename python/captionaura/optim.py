"""Optimisers over flat float32 buffers, computed by the C core (torch.optim.AdamW's exact update)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from captionaura import _core
from captionaura.device import normalize_device


@dataclass
class AdamWConfig:
    """torch.optim.AdamW's hyper-parameters (and defaults), plus global-norm gradient clipping."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    max_grad_norm: float | None = None  # clip_grad_norm_ before each step; None: no clipping

    def __post_init__(self) -> None:
        if not self.lr >= 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        if not self.eps >= 0 or not self.weight_decay >= 0:
            raise ValueError("eps and weight_decay must be >= 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")


class AdamW:
    """AdamW over a list of (parameter, gradient) float32 buffers, usually views into a model's flat
    parameter and LoRA buffers. State (exp_avg, exp_avg_sq) is held here, one array per buffer."""

    def __init__(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray],
                 config: AdamWConfig | None = None) -> None:
        if len(params) != len(grads):
            raise ValueError("params and grads must pair up")
        self.config = config or AdamWConfig()
        self.params = [_flat(p, "params") for p in params]
        self.grads = [_flat(g, "grads") for g in grads]
        for p, g in zip(self.params, self.grads):
            if p.shape != g.shape:
                raise ValueError(f"a parameter of {p.size} values has a gradient of {g.size}")
        self.exp_avg = [np.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [np.zeros_like(p) for p in self.params]
        self.step_count = 0
        self.device = "cpu"  # where the moments live and the update runs (see rebind)

    def rebind(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray], device: str = "cpu") -> None:
        """Point the optimiser at moved buffers of the same sizes (after ``model.to(device)``), keeping its state,
        which moves along: on "cuda" the moments live in device memory and the update runs on the GPU."""
        params = [_flat(p, "params") for p in params]
        grads = [_flat(g, "grads") for g in grads]
        if [p.size for p in params] != [p.size for p in self.params] or \
                [g.size for g in grads] != [p.size for p in self.params]:
            raise ValueError("rebind needs buffers of the sizes the optimiser was created with")
        device = normalize_device(device)
        place = _device_copy if device == "cuda" else np.array
        exp_avg, exp_avg_sq = [place(m) for m in self.exp_avg], [place(v) for v in self.exp_avg_sq]
        self.params, self.grads, self.device = params, grads, device  # nothing changes when a copy fails
        self.exp_avg, self.exp_avg_sq = exp_avg, exp_avg_sq

    def grad_norm(self) -> float:
        """The global L2 norm of all gradients (as torch.nn.utils.clip_grad_norm_ computes it)."""
        sum_squares = _core.cuda_sum_squares if self.device == "cuda" else _core.sum_squares
        return math.sqrt(sum(sum_squares(g) for g in self.grads))

    def step(self, lr: float | None = None) -> float:
        """One AdamW step (after global-norm clipping when configured); returns the pre-clip gradient norm."""
        c = self.config
        norm = self.grad_norm()
        if not math.isfinite(norm):
            raise FloatingPointError(f"gradient norm is {norm}; refusing to step")
        scale = 1.0
        if c.max_grad_norm is not None:
            scale = min(1.0, c.max_grad_norm / (norm + 1e-6))  # torch's clip_coef, clamped at 1
        self.step_count += 1
        for p, m, v, g in zip(self.params, self.exp_avg, self.exp_avg_sq, self.grads):
            if self.device == "cuda":
                _core.cuda_adamw_update(p, m, v, g, c.lr if lr is None else lr, c.betas[0], c.betas[1], c.eps,
                                        c.weight_decay, self.step_count, scale)
            else:
                _core.adamw_update(p, m, v, g, c.lr if lr is None else lr, c.betas[0], c.betas[1], c.eps,
                                   c.weight_decay, self.step_count, scale)
        return norm

    def state_dict(self) -> dict[str, np.ndarray | int]:
        out: dict[str, np.ndarray | int] = {"step": self.step_count}
        for i, (m, v) in enumerate(zip(self.exp_avg, self.exp_avg_sq)):
            out[f"exp_avg.{i}"], out[f"exp_avg_sq.{i}"] = m, v
        return out

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        for i, (m, v) in enumerate(zip(self.exp_avg, self.exp_avg_sq)):
            m[...] = state[f"exp_avg.{i}"]
            v[...] = state[f"exp_avg_sq.{i}"]


def _device_copy(a: np.ndarray) -> np.ndarray:
    """A copy of `a` in CUDA managed memory (readable from NumPy, usable by the kernels)."""
    out = _core.cuda_array(a.shape, a.dtype)
    out[...] = a
    return out


def _flat(a: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous:
        raise TypeError(f"{what} must be C-contiguous float32 arrays")
    return a.reshape(-1)
