"""Rényi-DP accountant for the sampled Gaussian mechanism (Mironov 2017; Mironov, Talwar, Zhang 2019,
"Rényi Differential Privacy of the Sampled Gaussian Mechanism", arXiv 1908.10530).

One round of DP-FedAvg with client sampling rate q and noise multiplier z (σ = z·C for sensitivity C) is a
sampled Gaussian mechanism; its RDP at order α composes additively over rounds and converts to (ε, δ).

The RDP of one step at order α is log(A_α)/(α − 1), with A_α = E_{x∼μ0}[(μ(x)/μ0(x))^α],
μ0 = N(0, z²), μ = (1 − q)·μ0 + q·N(1, z²):
  - integer α (binomial expansion, §3.3):  A_α = Σ_{i=0}^{α} C(α,i)(1−q)^{α−i} q^i exp((i² − i)/(2z²));
  - fractional α: the two-sided series of the paper's §3.3 with erfc tails, summed until terms drop below
    e^{-30}, in log space with signed log-add/log-sub;
  - q = 1: the plain Gaussian, α/(2z²).
Conversion to (ε, δ): either the classic bound ε = RDP(α) − log δ/(α − 1) (Mironov 2017, Prop. 3) or the
tighter one of Balle et al. 2020 (Thm. 21): ε = RDP(α) + log((α − 1)/α) − (log δ + log α)/(α − 1); the
minimum over the orders is reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) +
                                          [128, 256, 512])


def _log_add(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    if lo == -math.inf:
        return hi
    return hi + math.log1p(math.exp(lo - hi))


def _log_sub(a: float, b: float) -> float:
    """log(e^a − e^b), a ≥ b."""
    if b == -math.inf:
        return a
    if a < b:
        raise ValueError("log_sub of a negative quantity")
    if a == b:
        return -math.inf
    return a + math.log(-math.expm1(b - a))


def _log_erfc(x: float) -> float:
    """log(erfc(x)), stable for large x via the asymptotic expansion once erfc underflows."""
    r = math.erfc(x)
    if r > 0.0:
        return math.log(r)
    # erfc(x) ≈ exp(−x²)/(x√π)·(1 − 1/(2x²) + 3/(4x⁴) − 15/(8x⁶))
    return (-x * x - math.log(x) - 0.5 * math.log(math.pi)
            + math.log1p(-1 / (2 * x * x) + 3 / (4 * x ** 4) - 15 / (8 * x ** 6)))


def _log_binom(n: float, k: int) -> tuple[float, int]:
    """log|C(n, k)| and its sign for real n ≥ 0 and integer k ≥ 0 (generalised binomial)."""
    if float(n).is_integer() and k > n:
        return -math.inf, 0
    if float(n).is_integer():
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1), 1
    # C(n,k) = Γ(n+1)/(Γ(k+1)Γ(n−k+1)); Γ(n−k+1) changes sign for negative arguments
    lg, sign = math.lgamma(n - k + 1), 1
    if n - k + 1 < 0:
        sign = -1 if math.floor(n - k + 1) % 2 else 1
    return math.lgamma(n + 1) - math.lgamma(k + 1) - lg, sign


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    log_a = -math.inf
    for i in range(alpha + 1):
        lb, _ = _log_binom(alpha, i)
        term = lb + i * math.log(q) + (alpha - i) * math.log1p(-q) + (i * i - i) / (2 * sigma ** 2)
        log_a = _log_add(log_a, term)
    return log_a


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    # A_α = A_0 + A_1: the integral split at z0 where the two Gaussians' likelihood ratio crosses
    log_a0 = log_a1 = -math.inf
    z0 = sigma ** 2 * math.log(1 / q - 1) + 0.5
    i = 0
    while True:
        lb, sign = _log_binom(alpha, i)
        j = alpha - i
        log_t0 = lb + i * math.log(q) + j * math.log1p(-q)
        log_t1 = lb + j * math.log(q) + i * math.log1p(-q)
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma ** 2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma ** 2) + log_e1
        if sign > 0:
            log_a0, log_a1 = _log_add(log_a0, log_s0), _log_add(log_a1, log_s1)
        else:
            log_a0, log_a1 = _log_sub(log_a0, log_s0), _log_sub(log_a1, log_s1)
        i += 1
        if max(log_s0, log_s1) < -30 or i > 10_000:
            break
    return _log_add(log_a0, log_a1)


def rdp_sampled_gaussian(q: float, noise_multiplier: float, alpha: float) -> float:
    """RDP ε(α) of one step of the sampled Gaussian mechanism."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"sampling rate must be in [0, 1], got {q}")
    if alpha <= 1:
        raise ValueError(f"RDP order must be > 1, got {alpha}")
    if q == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    if q == 1.0:
        return alpha / (2 * noise_multiplier ** 2)
    if float(alpha).is_integer():
        log_a = _log_a_int(q, noise_multiplier, int(alpha))
    else:
        log_a = _log_a_frac(q, noise_multiplier, float(alpha))
    return log_a / (alpha - 1)


def compute_rdp(q: float, noise_multiplier: float, steps: int,
                orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP at each order after `steps` compositions."""
    return np.array([steps * rdp_sampled_gaussian(q, noise_multiplier, a) for a in orders])


def rdp_to_dp(orders: Sequence[float], rdp: Sequence[float], delta: float,
              method: str = "balle2020") -> tuple[float, float]:
    """(ε, best order) for a target δ. method: "balle2020" (tighter, the default of Opacus/TF-Privacy today)
    or "classic" (ε = RDP − log δ/(α − 1), what TF-Privacy's README numbers used)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    a = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "classic":
            eps = r - math.log(delta) / (a - 1)
        elif method == "balle2020":
            eps = r - (math.log(delta) + np.log(a)) / (a - 1) + np.log((a - 1) / a)
        else:
            raise ValueError(f"unknown conversion {method!r}")
    eps = np.where(np.isnan(eps), np.inf, eps)
    k = int(np.argmin(eps))
    return max(0.0, float(eps[k])), float(a[k])


@dataclass
class RDPAccountant:
    """Accumulates the RDP of every round; `get_epsilon(delta)` converts at any time.

    >>> acc = RDPAccountant()
    >>> acc.step(noise_multiplier=1.1, sample_rate=0.01, steps=100)
    >>> eps = acc.get_epsilon(1e-5)
    """

    orders: tuple[float, ...] = DEFAULT_ORDERS
    method: str = "balle2020"
    rdp: np.ndarray = field(init=False)
    history: list[tuple[float, float, int]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.rdp = np.zeros(len(self.orders))

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        self.rdp = self.rdp + compute_rdp(sample_rate, noise_multiplier, steps, self.orders)
        self.history.append((float(noise_multiplier), float(sample_rate), int(steps)))

    def get_privacy_spent(self, delta: float) -> tuple[float, float]:
        """(ε, the order that attains it)."""
        return rdp_to_dp(self.orders, self.rdp, delta, self.method)

    def get_epsilon(self, delta: float) -> float:
        return self.get_privacy_spent(delta)[0]
