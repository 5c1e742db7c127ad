"""Server-side aggregation strategies with Flower's names, parameters and update rules (federated.md §A2), on
flat float32 vectors, computed by the C core.

Every strategy is a small dataclass; aggregation is a pure function of the current global vector and the
clients' returned vectors (plus the optimiser state that FedAdam/FedYogi/FedAdagrad/FedAvgM keep in the
object), separate from orchestration:

    new = strategy.aggregate(current, [(x_1, n_1), (x_2, n_2), ...])

`x_k` is client k's returned parameter vector (Flower's convention: parameters, not deltas) and `n_k` its
number of examples. A simulation or a Flower ServerApp that receives replies one at a time streams them:

    rnd = strategy.begin_round(current)
    for cid, (x, n) in replies: rnd.add(x, n, client=cid)   # a bad update is rejected, not fatal
    result = rnd.finish()                                     # .parameters, .rejected, .num_examples

The FedAvg family keeps only a float64 accumulator during the round (peak memory ≈ one vector + 8 bytes per
coordinate); the robust rules (FedMedian, FedTrimmedAvg, Krum, Bulyan) must see every vector and keep
references to them until `finish`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from captionaura import _core
from captionaura.federated._vectors import (
    NoValidUpdatesError,
    Rejection,
    UpdateRejected,
    WeightedAccumulator,
    as_vector,
    check_vector,
    check_weight,
)

log = logging.getLogger("captionaura.federated")

_MEDIAN, _TRIMMED, _CLOSEST = 0, 1, 2
_ADAM, _YOGI, _ADAGRAD = 0, 1, 2


@dataclass
class AggregateResult:
    """Outcome of one round: the new global vector, which clients counted, which were rejected and why."""

    parameters: np.ndarray
    accepted: list[int | str]
    rejected: list[Rejection]
    num_examples: float
    metrics: dict[str, Any] = field(default_factory=dict)


class RoundAggregator:
    """One round in progress: `add` each reply, then `finish`. Created by `Strategy.begin_round`."""

    def __init__(self, strategy: Strategy, current: np.ndarray, server_round: int | None,
                 streaming: bool, batch: int = 1) -> None:
        self.strategy = strategy
        self.current = as_vector(current)
        if self.current.size == 0:
            raise ValueError("the current global vector is empty")
        bad = _core.fed_first_nonfinite(self.current)
        if bad >= 0:
            raise FloatingPointError(f"current global vector has a non-finite value at index {bad}")
        self.server_round = server_round
        self.accepted: list[int | str] = []
        self.rejected: list[Rejection] = []
        self.acc: WeightedAccumulator | None = strategy._take_accumulator(self.current.size) if streaming else None
        self.vectors: list[np.ndarray] = []
        self.weights: list[float] = []
        # streaming rounds keep up to `batch` validated vectors (references) and add them in one pass
        self.batch = max(1, int(batch))
        self._pending: list[tuple[np.ndarray, float]] = []

    def _flush(self) -> None:
        if self._pending and self.acc is not None:
            ws = [w for _, w in self._pending]   # already validated in add()
            _core.fed_acc_add_many(self.acc.sum, [v for v, _ in self._pending], np.asarray(ws, np.float64))
            self.acc.weight += float(sum(ws))
            self.acc.count += len(ws)
            self._pending = []

    def add(self, x: np.ndarray, num_examples: float = 1.0, client: int | str | None = None) -> Rejection | None:
        """Validate and take in one client's vector. Returns None, or the Rejection (also logged) when the
        vector has the wrong length, a NaN/Inf or a bad weight; the round goes on without it."""
        cid = client if client is not None else len(self.accepted) + len(self.rejected)
        try:
            if self.acc is not None and self.batch == 1:
                self.acc.add(x, num_examples, cid)
            elif self.acc is not None:
                v = check_vector(x, self.current.size, cid)
                self._pending.append((v, check_weight(num_examples, cid)))
                if len(self._pending) >= self.batch:
                    self._flush()
            else:
                v = check_vector(x, self.current.size, cid)
                w = check_weight(num_examples, cid)
                self.vectors.append(v)
                self.weights.append(w)
        except UpdateRejected as e:
            log.warning("%s", e)
            self.rejected.append(e.rejection)
            return e.rejection
        self.accepted.append(cid)
        return None

    @property
    def num_accepted(self) -> int:
        return len(self.accepted)

    def finish(self) -> AggregateResult:
        """Aggregate the accepted vectors; raises NoValidUpdatesError when none was accepted."""
        self._flush()
        if not self.accepted:
            raise NoValidUpdatesError(self.rejected)
        if self.acc is not None:
            if self.acc.weight <= 0.0:
                raise NoValidUpdatesError(self.rejected + [Rejection("*", "total number of examples is 0")])
            new = self.strategy._server_step(self.current, self.acc, self.server_round)
            total = self.acc.weight
            self.strategy._return_accumulator(self.acc)
            self.acc = None
        else:
            new = self.strategy._robust_step(self.current, self.vectors, self.weights)
            total = float(sum(self.weights))
        return AggregateResult(new, list(self.accepted), list(self.rejected), total)


class Strategy:
    """Base class. Subclasses implement `_server_step` (streaming) or `_robust_step` (needs all vectors)."""

    streaming: bool = True

    def _take_accumulator(self, size: int) -> WeightedAccumulator:
        """The float64 accumulator of the previous round when the size matches (zeroing 8 bytes per
        coordinate is ~10x cheaper than faulting in fresh pages every round), else a new one."""
        acc = self.__dict__.pop("_spare_accumulator", None)
        if acc is not None and acc.size == size:
            acc.reset()
            return acc
        return WeightedAccumulator(size)

    def _return_accumulator(self, acc: WeightedAccumulator) -> None:
        self.__dict__["_spare_accumulator"] = acc

    def begin_round(self, current: np.ndarray, server_round: int | None = None, batch: int = 1) -> RoundAggregator:
        """Start a round. `batch` > 1 lets a streaming round hold that many received vectors and add them in
        one pass (faster, memory ≈ `batch` vectors); 1 keeps the peak at one vector + the accumulator."""
        return RoundAggregator(self, current, server_round, self.streaming, batch)

    def aggregate_detailed(self, current: np.ndarray, updates: Sequence[tuple[np.ndarray, float]],
                           server_round: int | None = None) -> AggregateResult:
        # one vector at a time: on the machines measured, batched passes (batch=16) were not faster
        rnd = self.begin_round(current, server_round)
        for i, (x, n) in enumerate(updates):
            rnd.add(x, n, client=i)
        return rnd.finish()

    def aggregate(self, current: np.ndarray, updates: Sequence[tuple[np.ndarray, float]],
                  server_round: int | None = None) -> np.ndarray:
        """The new global vector (float32, flat) from (vector, num_examples) pairs; invalid updates are
        rejected with a logged warning (use `aggregate_detailed` for the list)."""
        return self.aggregate_detailed(current, updates, server_round).parameters

    def config(self) -> dict[str, Any]:
        """Values the server sends to clients with the round's instructions (Flower's ConfigRecord)."""
        return {}

    # -- hooks --
    def _server_step(self, current: np.ndarray, acc: WeightedAccumulator, server_round: int | None) -> np.ndarray:
        raise NotImplementedError

    def _robust_step(self, current: np.ndarray, vectors: list[np.ndarray], weights: list[float]) -> np.ndarray:
        raise NotImplementedError


@dataclass
class FedAvg(Strategy):
    """x_{t+1} = Σ_k n_k x_k / Σ_k n_k, accumulated in float64 (Flower `aggregate_arrayrecords`)."""

    def _server_step(self, current, acc, server_round):
        return acc.mean()


@dataclass
class FedProx(FedAvg):
    """FedAvg on the server; clients add μ/2·‖w − w_t‖² to their loss (`proximal_term`). Flower sends μ as
    config["proximal-mu"] (default 0.0 in the message API)."""

    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        if self.proximal_mu < 0:
            raise ValueError(f"proximal_mu must be >= 0, got {self.proximal_mu}")

    def config(self) -> dict[str, Any]:
        return {"proximal-mu": float(self.proximal_mu)}


def proximal_term(w: np.ndarray, w_global: np.ndarray, mu: float, grad: np.ndarray | None = None) -> float:
    """FedProx's client-side term μ/2·‖w − w_t‖² (squared L2 over all coordinates, as in the FedProx paper and
    Flower's baseline); when `grad` (float32, same length, writable) is given, adds μ·(w − w_t) to it."""
    wv, gv = as_vector(w), as_vector(w_global)
    if wv.size != gv.size:
        raise ValueError(f"w has {wv.size} values, w_global {gv.size}")
    if grad is not None and (grad.dtype != np.float32 or not grad.flags.c_contiguous):
        raise TypeError("grad must be a C-contiguous float32 array")
    return _core.fed_proximal(None if grad is None else grad.reshape(-1), wv, gv, float(mu))


@dataclass
class _FedOpt(FedAvg):
    """Adaptive server optimisers on the pseudo-gradient Δ_t = x̄ − x_t (Flower fedopt.py). m and v are kept
    here between rounds (float32 like Flower); `reset_state()` forgets them."""

    eta: float = 1e-1
    eta_l: float = 1e-1  # informational only: the client learning rate (Flower does not send it either)
    beta_1: float = 0.0
    beta_2: float = 0.0
    tau: float = 1e-3
    _kind: int = field(default=_ADAM, init=False, repr=False)
    m_t: np.ndarray | None = field(default=None, init=False, repr=False)
    v_t: np.ndarray | None = field(default=None, init=False, repr=False)
    rounds_done: int = field(default=0, init=False, repr=False)

    def reset_state(self) -> None:
        self.m_t = self.v_t = None
        self.rounds_done = 0

    def _eta_t(self, server_round: int) -> float:
        return self.eta

    def _server_step(self, current, acc, server_round):
        if self.m_t is None or self.m_t.size != current.size:
            self.m_t = np.zeros(current.size, np.float32)
            self.v_t = np.zeros(current.size, np.float32)
        t = server_round if server_round is not None else self.rounds_done + 1
        x = current.copy()
        _core.fed_fedopt_step(x, self.m_t, self.v_t, acc.sum, acc.weight, self._kind, self._eta_t(t),
                              self.beta_1, self.beta_2, self.tau)
        self.rounds_done += 1
        return x


@dataclass
class FedAdam(_FedOpt):
    """v_t = β2·v + (1−β2)·Δ²; x += η̂·m/(√v + τ), η̂ = η·√(1−β2^{t+1})/(1−β1^{t+1}) with t the server round.
    Defaults are Flower's message API (the legacy API had τ = 1e-9)."""

    eta: float = 1e-1
    eta_l: float = 1e-1
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        self._kind = _ADAM

    def _eta_t(self, server_round: int) -> float:
        return self.eta * np.sqrt(1 - self.beta_2 ** (server_round + 1.0)) / (1 - self.beta_1 ** (server_round + 1.0))


@dataclass
class FedYogi(_FedOpt):
    """v_t = v − (1−β2)·Δ²·sign(v − Δ²); x += η·m/(√v + τ) (no bias correction, as in Flower)."""

    eta: float = 1e-2
    eta_l: float = 0.0316
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        self._kind = _YOGI


@dataclass
class FedAdagrad(_FedOpt):
    """β1 = β2 = 0: m = Δ, v_t = v + Δ²; x += η·Δ/(√v + τ)."""

    eta: float = 1e-1
    eta_l: float = 1e-1
    tau: float = 1e-3

    def __post_init__(self) -> None:
        self._kind = _ADAGRAD
        self.beta_1 = 0.0
        self.beta_2 = 0.0


@dataclass
class FedAvgM(FedAvg):
    """Server momentum (Flower fedavgm.py): g = x_t − x̄; with momentum μ > 0, v = g on the first round, else
    v = μ·v + g; x_{t+1} = x_t − η_s·v. With η_s = 1 and μ = 0 this is FedAvg."""

    server_learning_rate: float = 1.0
    server_momentum: float = 0.0
    momentum_vector: np.ndarray | None = field(default=None, init=False, repr=False)

    def reset_state(self) -> None:
        self.momentum_vector = None

    def _server_step(self, current, acc, server_round):
        if self.server_momentum == 0.0 and self.server_learning_rate == 1.0:
            return acc.mean()
        x = current.copy()
        first = self.momentum_vector is None or self.momentum_vector.size != current.size
        if self.server_momentum != 0.0 and first:
            self.momentum_vector = np.zeros(current.size, np.float32)
        v = self.momentum_vector if self.server_momentum != 0.0 else None
        _core.fed_fedavgm_step(x, v, acc.sum, acc.weight, self.server_learning_rate, self.server_momentum, first)
        return x


@dataclass
class FedMedian(Strategy):
    """Coordinate-wise median of the clients' vectors, unweighted (np.median semantics for even K)."""

    streaming = False

    def _robust_step(self, current, vectors, weights):
        out = np.empty(current.size, np.float32)
        _core.fed_coordinate_rule(out, vectors, _MEDIAN, 0)
        return out


@dataclass
class FedTrimmedAvg(Strategy):
    """Coordinate-wise trimmed mean, unweighted: cut int(β·K) values from each end (Flower's `_trim_mean`)."""

    beta: float = 0.2
    streaming = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {self.beta}")

    def _robust_step(self, current, vectors, weights):
        out = np.empty(current.size, np.float32)
        _core.fed_coordinate_rule(out, vectors, _TRIMMED, int(self.beta * len(vectors)))
        return out


def pairwise_sq_distances(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """(K, K) squared L2 distances Σ(x_i − x_j)² accumulated in float64 (C, OpenMP)."""
    vs = [as_vector(v) for v in vectors]
    D = np.empty((len(vs), len(vs)), np.float64)
    _core.fed_pairwise_sqdist(D, vs)
    return D


def krum_scores(D: np.ndarray, num_malicious: int) -> np.ndarray:
    """score_i = Σ of the max(1, K − f − 2) smallest distances from i to the others (Blanchard et al.)."""
    K = D.shape[0]
    num_closest = max(1, K - num_malicious - 2)
    scores = np.empty(K)
    for i in range(K):
        others = np.delete(D[i], i)
        scores[i] = np.sort(others)[:num_closest].sum()
    return scores


def _weighted_mean(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    acc = WeightedAccumulator(vectors[0].size)
    for v, w in zip(vectors, weights):
        acc.add(v, w)
    return acc.mean()


@dataclass
class Krum(Strategy):
    """Krum (num_clients_to_keep = 0: the single vector with the lowest score) and MultiKrum
    (num_clients_to_keep = m > 0: weighted FedAvg of the m lowest scores), Flower's `aggregate_krum`."""

    num_malicious_clients: int = 0
    num_clients_to_keep: int = 0
    streaming = False

    def __post_init__(self) -> None:
        if self.num_malicious_clients < 0 or self.num_clients_to_keep < 0:
            raise ValueError("num_malicious_clients and num_clients_to_keep must be >= 0")

    def select(self, vectors: Sequence[np.ndarray]) -> list[int]:
        """Indices of the selected clients, best first."""
        scores = krum_scores(pairwise_sq_distances(vectors), self.num_malicious_clients)
        keep = self.num_clients_to_keep if self.num_clients_to_keep > 0 else 1
        if keep > len(vectors):
            raise ValueError(f"cannot keep {keep} of {len(vectors)} clients")
        return [int(i) for i in np.argsort(scores, kind="stable")[:keep]]

    def _robust_step(self, current, vectors, weights):
        idx = self.select(vectors)
        if self.num_clients_to_keep == 0:
            return vectors[idx[0]].copy()
        return _weighted_mean([vectors[i] for i in idx], [weights[i] for i in idx])


def MultiKrum(num_malicious_clients: int = 0, num_clients_to_keep: int = 1) -> Krum:  # noqa: N802
    """Krum keeping the `num_clients_to_keep` best clients and averaging them (weighted)."""
    return Krum(num_malicious_clients, max(1, num_clients_to_keep))


@dataclass
class Bulyan(Strategy):
    """Bulyan (El Mhamdi et al.), Flower's `aggregate_bulyan` with Krum as the selection rule: needs
    K ≥ 4f + 3; select θ = K − 2f vectors by repeatedly taking the Krum winner of the remaining set, then per
    coordinate average the β = θ − 2f values closest to the median of the selected ones. Unweighted."""

    num_malicious_clients: int = 0
    streaming = False

    def select(self, vectors: Sequence[np.ndarray]) -> list[int]:
        f = self.num_malicious_clients
        K = len(vectors)
        if K < 4 * f + 3:
            raise ValueError(f"Bulyan needs at least 4f+3 = {4 * f + 3} clients, got {K}")
        D = pairwise_sq_distances(vectors)  # distances do not change as clients are removed: compute once
        remaining = list(range(K))
        chosen: list[int] = []
        for _ in range(K - 2 * f):
            sub = D[np.ix_(remaining, remaining)]
            best = int(np.argmin(krum_scores(sub, f)))
            chosen.append(remaining.pop(best))
        return chosen

    def _robust_step(self, current, vectors, weights):
        f = self.num_malicious_clients
        chosen = self.select(vectors)
        beta = len(chosen) - 2 * f
        out = np.empty(current.size, np.float32)
        _core.fed_coordinate_rule(out, [vectors[i] for i in chosen], _CLOSEST, beta)
        return out
