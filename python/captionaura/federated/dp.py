"""Differential privacy for federated rounds (federated.md §A3): per-client global-L2 clipping of the update
(C kernel), Gaussian noise at the server (central, σ = z·C/m) or on each client (local), adaptive clipping
(Andrew et al. 2019, arXiv 1905.03871) and the per-round (ε, δ) of an RDP accountant.

Central DP wraps any strategy whose server step is a mean (FedAvg and its optimisers):

    dp = DifferentialPrivacy(FedAvg(), DPConfig(noise_multiplier=1.0, clipping_norm=0.5,
                                                num_sampled_clients=10, population=1000))
    new = dp.aggregate(current, replies)         # clips each reply vs current, averages, adds noise
    dp.last_epsilon                              # ε after this round at dp.config.delta

Sensitivity. With σ = z·C/m the guarantee holds for the *uniform* mean of m clipped updates (each client
moves the mean by at most C/m). Flower also applies it on top of an example-weighted mean, where one client
with a large weight moves the mean by up to C·n_k/Σn. `DPConfig.uniform_weights=True` (the default) gives
every client weight 1 so the stated ε is honest; set it False for Flower's behaviour.

Adaptive clipping. Andrew et al.: b_k = 1[‖Δ_k‖ ≤ C] (update NOT clipped), b̃ = (Σb_k + N(0, σ_b²))/m,
C ← C·exp(−η_C·(b̃ − γ)), γ = target quantile of unclipped updates; the noise multiplier of the model is
raised to z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) so the pair of releases costs the same as one with z. Flower's
0.x/1.x `DifferentialPrivacy*AdaptiveClipping` counts *clipped* updates (`norm_bit = scaling < 1`) in the same
formula, which moves C the wrong way (C shrinks while every update is being clipped); we follow the paper and
add the model noise with the C actually used for clipping this round.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from captionaura import _core
from captionaura.federated._vectors import Rejection, as_vector
from captionaura.federated.accountant import RDPAccountant
from captionaura.federated.strategies import AggregateResult, RoundAggregator, Strategy

log = logging.getLogger("captionaura.federated")


@dataclass
class DPConfig:
    """Differential-privacy settings for a federated run.

    noise_multiplier: z; the noise std is z·C/m (central) or z·C per coordinate on each client (local).
    clipping_norm: C, or the initial C when `adaptive` (Flower's initial_clipping_norm default is 0.1).
    num_sampled_clients: m; None = the number of accepted updates in the round.
    mode: "central" (server adds noise to the aggregate) or "local" (each client noises its own update).
    clipping: in central mode, "server" clips every reply, "client" expects clients to have clipped (Flower's
        ClientSideFixedClipping) and rejects a reply whose update norm exceeds C (a client that did not clip
        would otherwise break the noise calibration).
    population: total number of clients, for the accountant's sampling rate q = m/population (None: q = 1).
    """

    noise_multiplier: float
    clipping_norm: float = 1.0
    num_sampled_clients: int | None = None
    mode: Literal["central", "local"] = "central"
    clipping: Literal["server", "client"] = "server"
    adaptive: bool = False
    target_unclipped_quantile: float = 0.5
    clip_norm_lr: float = 0.2
    clipped_count_stddev: float | None = None
    uniform_weights: bool = True
    population: int | None = None
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0:
            raise ValueError("noise_multiplier must be >= 0")
        if not self.clipping_norm > 0:
            raise ValueError("clipping_norm must be > 0")
        if self.mode not in ("central", "local"):
            raise ValueError(f"mode must be 'central' or 'local', got {self.mode!r}")
        if self.clipping not in ("server", "client"):
            raise ValueError(f"clipping must be 'server' or 'client', got {self.clipping!r}")
        if self.adaptive and self.clipping == "client":
            raise ValueError("adaptive clipping here is server-side; use clipping='server'")
        if not 0 <= self.target_unclipped_quantile <= 1:
            raise ValueError("target_unclipped_quantile must be in [0, 1]")
        if self.clip_norm_lr <= 0:
            raise ValueError("clip_norm_lr must be > 0")
        if self.num_sampled_clients is not None and self.num_sampled_clients <= 0:
            raise ValueError("num_sampled_clients must be > 0")


def clip_update(x: np.ndarray, reference: np.ndarray | None, clipping_norm: float) -> tuple[np.ndarray, float]:
    """FlatClip: u = x − reference, u ← u·min(1, C/‖u‖₂) over all coordinates; returns (reference + u, ‖u‖₂
    before clipping). With reference None, clips x itself."""
    xv = as_vector(x)
    ref = None if reference is None else as_vector(reference)
    if ref is not None and ref.size != xv.size:
        raise ValueError(f"x has {xv.size} values, reference {ref.size}")
    out = np.empty_like(xv)
    norm = _core.fed_clip(out, xv, ref, float(clipping_norm))
    return out, norm


def add_gaussian_noise(x: np.ndarray, std: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """x + N(0, std²) per coordinate (in place on a float32 flat vector; returned). The noise is drawn in
    float64 from `rng` (default: a fresh OS-seeded generator)."""
    if std < 0:
        raise ValueError("std must be >= 0")
    if std == 0:
        return x
    rng = rng if rng is not None else np.random.default_rng()
    _core.fed_add_noise(x, rng.normal(0.0, std, size=x.size))
    return x


def local_dp_update(x: np.ndarray, reference: np.ndarray, config: DPConfig,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """Client side of local DP: clip the update to C, then add N(0, (z·C)²) before it leaves the device."""
    out, _ = clip_update(x, reference, config.clipping_norm)
    return add_gaussian_noise(out, config.noise_multiplier * config.clipping_norm, rng)


def secagg_weight(config: DPConfig | None, num_examples: float) -> int:
    """A client's weight in a secure-aggregation sum: its number of examples, or 1 under central DP with
    uniform weights (each client then moves the mean by at most C/m, which the noise is calibrated to)."""
    if config is not None and config.mode == "central" and config.uniform_weights:
        return 1
    return int(num_examples)


def adaptive_noise_params(noise_multiplier: float, num_sampled: int,
                          clipped_count_stddev: float | None) -> tuple[float, float]:
    """(σ_b, z_Δ): the count noise (default m/20) and the raised model noise multiplier
    z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) (Andrew et al. Thm. 1); ValueError when z ≥ 2σ_b."""
    if noise_multiplier == 0:
        return (0.0 if clipped_count_stddev is None else clipped_count_stddev), 0.0
    sb = num_sampled / 20 if clipped_count_stddev is None else clipped_count_stddev
    if noise_multiplier >= 2 * sb:
        raise ValueError(f"clipped_count_stddev={sb} is too small for noise_multiplier={noise_multiplier} "
                         f"(need z < 2*sigma_b)")
    return sb, (noise_multiplier ** -2 - (2 * sb) ** -2) ** -0.5


class _DPRound(RoundAggregator):
    """Clips each reply against the current vector before it reaches the wrapped strategy's round."""

    def __init__(self, dp: DifferentialPrivacy, current: np.ndarray, server_round: int | None,
                 batch: int = 1) -> None:
        self.dp = dp
        self.inner = dp.strategy.begin_round(current, server_round, batch)
        self.current = self.inner.current
        self.clip_norm = dp.clipping_norm
        self.unclipped = 0
        # how many clipped updates the one added vector averages (secure aggregation adds their mean)
        self.contributors: int | None = None

    def add(self, x, num_examples=1.0, client=None):
        cid = client if client is not None else self.inner.num_accepted + len(self.inner.rejected)
        arr = np.asarray(x)
        if arr.size == self.current.size and arr.dtype.kind in "fiu":
            v = as_vector(arr)
            if _core.fed_first_nonfinite(v) < 0:        # invalid vectors go through unclipped to be rejected
                cfg = self.dp.config
                if cfg.mode == "central" and cfg.clipping == "server":
                    v, norm = clip_update(v, self.current, self.clip_norm)
                    self.unclipped += int(norm <= self.clip_norm)
                elif cfg.mode == "central":
                    norm = _core.fed_l2norm(v, self.current)
                    if norm > self.clip_norm * (1 + 1e-5):
                        rej = Rejection(cid, f"update norm {norm:.6g} exceeds the clipping norm {self.clip_norm:.6g}"
                                             " (client-side clipping expected)")
                        log.warning("update from client %s rejected: %s", cid, rej.reason)
                        self.inner.rejected.append(rej)
                        return rej
                x = v
        w = 1.0 if self.dp.config.uniform_weights else num_examples
        return self.inner.add(x, w, cid)

    @property
    def num_accepted(self) -> int:
        return self.inner.num_accepted

    @property
    def accepted(self) -> list:  # type: ignore[override]
        return self.inner.accepted

    @property
    def rejected(self) -> list:  # type: ignore[override]
        return self.inner.rejected

    def finish(self) -> AggregateResult:
        res = self.inner.finish()
        return self.dp._finish_round(res, self)


class DifferentialPrivacy(Strategy):
    """Central (or local-mode bookkeeping) DP around a mean-based strategy; see the module docstring."""

    def __init__(self, strategy: Strategy, config: DPConfig, seed: int | None = None) -> None:
        if not strategy.streaming:
            raise ValueError("DP noise calibration assumes a mean-based strategy (FedAvg family), got "
                             f"{type(strategy).__name__}")
        self.strategy = strategy
        self.config = config
        self.clipping_norm = float(config.clipping_norm)
        self.rng = np.random.default_rng(seed)
        self.accountant = RDPAccountant()
        self.last_epsilon: float | None = None
        self.streaming = True

    def begin_round(self, current: np.ndarray, server_round: int | None = None, batch: int = 1) -> RoundAggregator:
        return _DPRound(self, current, server_round, batch)

    def _finish_round(self, res: AggregateResult, rnd: _DPRound) -> AggregateResult:
        cfg = self.config
        # σ = z·C/m assumes the mean of m clipped updates; with fewer accepted replies a client moves the
        # mean by up to C/accepted, so the noise follows the smaller denominator (never weaker than stated)
        accepted = rnd.contributors or len(res.accepted)
        m = min(int(cfg.num_sampled_clients or accepted), accepted)
        z = cfg.noise_multiplier
        metrics: dict[str, float] = {"clipping_norm": rnd.clip_norm}
        if cfg.mode == "central":
            if cfg.adaptive:
                sb, z = adaptive_noise_params(cfg.noise_multiplier, m, cfg.clipped_count_stddev)
                noisy = (rnd.unclipped + self.rng.normal(0.0, sb)) / m if sb > 0 else rnd.unclipped / m
                self.clipping_norm *= math.exp(-cfg.clip_norm_lr * (noisy - cfg.target_unclipped_quantile))
                metrics["unclipped_fraction"] = rnd.unclipped / max(1, len(res.accepted))
            std = z * rnd.clip_norm / m
            add_gaussian_noise(res.parameters, std, self.rng)
            metrics["noise_std"] = std
            q = 1.0 if cfg.population is None else min(1.0, m / cfg.population)
            # the adaptive round releases the count with σ_b and the model with z_Δ: together they cost z
            self.accountant.step(cfg.noise_multiplier, q)
        else:
            # local DP: every client's release is a Gaussian mechanism with multiplier z on its own data
            self.accountant.step(cfg.noise_multiplier, 1.0)
        self.last_epsilon = self.accountant.get_epsilon(cfg.delta)
        metrics["epsilon"] = self.last_epsilon
        metrics["delta"] = cfg.delta
        res.metrics.update(metrics)
        return res
