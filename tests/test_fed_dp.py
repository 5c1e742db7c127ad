"""Differential privacy: clipping, noise scale, adaptive clipping, and the RDP accountant against the values
published in TF-Privacy's README and (when installed) Google's dp-accounting package."""

from __future__ import annotations

import math

import numpy as np
import pytest

from captionaura.federated import FedAvg, FedMedian
from captionaura.federated.accountant import (
    RDPAccountant, compute_rdp, rdp_sampled_gaussian, rdp_to_dp,
)
from captionaura.federated.dp import (
    DifferentialPrivacy, DPConfig, adaptive_noise_params, clip_update, local_dp_update,
)

try:
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant as dpa_rdp
except ImportError:  # pragma: no cover
    dp_accounting = None

try:
    from flwr.supercore import differential_privacy as flwr_dp
except ImportError:  # pragma: no cover
    flwr_dp = None


# ---------------- clipping ----------------

def test_clip_inside_ball_is_identity_and_outside_lands_on_sphere():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(50_000).astype(np.float32)
    small = ref + np.float32(1e-4) * rng.standard_normal(50_000).astype(np.float32)
    out, norm = clip_update(small, ref, 1.0)
    assert norm < 1.0
    np.testing.assert_array_equal(out, small)
    big = ref + 3 * rng.standard_normal(50_000).astype(np.float32)
    out, norm = clip_update(big, ref, 2.5)
    u_in = big.astype(np.float64) - ref
    assert norm == pytest.approx(np.linalg.norm(u_in), rel=1e-9)
    u = out.astype(np.float64) - ref
    assert np.linalg.norm(u) == pytest.approx(2.5, rel=1e-4)
    cos = np.dot(u, u_in) / (np.linalg.norm(u) * np.linalg.norm(u_in))
    assert cos > 1 - 1e-6


@pytest.mark.skipif(flwr_dp is None, reason="flwr not installed")
def test_clip_matches_flwr():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal(1000).astype(np.float32)
    x = (ref + rng.standard_normal(1000)).astype(np.float32)
    theirs = [x.copy()]
    flwr_dp.compute_clip_model_update(theirs, [ref], 0.7)
    ours, _ = clip_update(x, ref, 0.7)
    np.testing.assert_allclose(ours, theirs[0], rtol=1e-5, atol=1e-6)
    sb, z = adaptive_noise_params(1.0, 40, None)
    assert (sb, z) == pytest.approx(flwr_dp.compute_adaptive_noise_params(1.0, 40, None))


# ---------------- central / local noise ----------------

def test_central_noise_std_is_z_c_over_m():
    rng = np.random.default_rng(2)
    n, m = 200_000, 8
    cur = np.zeros(n, np.float32)
    ups = [((0.001 * rng.standard_normal(n)).astype(np.float32), 5) for _ in range(m)]  # all inside the ball
    clean = np.mean(np.stack([u for u, _ in ups]).astype(np.float64), axis=0)
    dp = DifferentialPrivacy(FedAvg(), DPConfig(noise_multiplier=1.3, clipping_norm=2.0, num_sampled_clients=m),
                             seed=0)
    res = dp.aggregate_detailed(cur, ups)
    noise = res.parameters - clean
    assert np.std(noise) == pytest.approx(1.3 * 2.0 / m, rel=0.01)
    assert abs(np.mean(noise)) < 5 * 1.3 * 2.0 / m / math.sqrt(n)
    assert res.metrics["noise_std"] == pytest.approx(1.3 * 2.0 / m)


def test_central_clips_and_uses_uniform_weights():
    rng = np.random.default_rng(3)
    n = 1000
    cur = rng.standard_normal(n).astype(np.float32)
    ups = [((cur + 10 * rng.standard_normal(n))).astype(np.float32) for _ in range(4)]
    dp = DifferentialPrivacy(FedAvg(), DPConfig(noise_multiplier=0.0, clipping_norm=1.0))
    got = dp.aggregate(cur, [(u, w) for u, w in zip(ups, [1, 10, 100, 1000])])
    clipped = [clip_update(u, cur, 1.0)[0].astype(np.float64) for u in ups]
    np.testing.assert_allclose(got, np.mean(clipped, axis=0), rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(got.astype(np.float64) - cur) <= 1.0 + 1e-5   # the mean of clipped updates is bounded


def test_dp_wrapper_rejects_bad_updates_and_needs_mean_strategy():
    n = 10
    bad = np.full(n, np.nan, np.float32)
    dp = DifferentialPrivacy(FedAvg(), DPConfig(noise_multiplier=0.0, clipping_norm=1.0))
    res = dp.aggregate_detailed(np.zeros(n, np.float32), [(np.ones(n, np.float32), 1), (bad, 1)])
    assert res.accepted == [0] and "non-finite" in res.rejected[0].reason
    with pytest.raises(ValueError, match="mean-based"):
        DifferentialPrivacy(FedMedian(), DPConfig(noise_multiplier=1.0))


def test_local_dp_noise_std():
    rng = np.random.default_rng(4)
    ref = np.zeros(300_000, np.float32)
    x = (5 * rng.standard_normal(300_000)).astype(np.float32)
    out = local_dp_update(x, ref, DPConfig(noise_multiplier=0.8, clipping_norm=3.0, mode="local"),
                          np.random.default_rng(0))
    clipped, _ = clip_update(x, ref, 3.0)
    assert np.std(out.astype(np.float64) - clipped) == pytest.approx(0.8 * 3.0, rel=0.01)


def test_adaptive_clipping_tracks_the_target_quantile():
    # Update norms are Uniform(1, 3): the median norm is 2. Starting far away, C must settle near it.
    rng = np.random.default_rng(5)
    n, m = 64, 50
    cur = np.zeros(n, np.float32)
    dp = DifferentialPrivacy(FedAvg(), DPConfig(noise_multiplier=0.0, clipping_norm=0.1, adaptive=True,
                                                target_unclipped_quantile=0.5, clip_norm_lr=0.2))
    for _ in range(150):
        ups = []
        for _ in range(m):
            d = rng.standard_normal(n)
            ups.append(((d / np.linalg.norm(d)) * rng.uniform(1, 3)).astype(np.float32))
        dp.aggregate(cur, [(u, 1) for u in ups])
    assert dp.clipping_norm == pytest.approx(2.0, rel=0.15)
    # target 0.9 unclipped: C settles near the 90th percentile (2.8)
    dp.config.target_unclipped_quantile = 0.9
    for _ in range(150):
        ups = [(((d := rng.standard_normal(n)) / np.linalg.norm(d)) * rng.uniform(1, 3)).astype(np.float32)
               for _ in range(m)]
        dp.aggregate(cur, [(u, 1) for u in ups])
    assert dp.clipping_norm == pytest.approx(2.8, rel=0.1)


def test_adaptive_noise_params():
    sb, z = adaptive_noise_params(1.0, 100, None)
    assert sb == 5.0 and z == pytest.approx((1 - 1 / 100) ** -0.5)
    with pytest.raises(ValueError):
        adaptive_noise_params(1.0, 10, None)     # σ_b = 0.5, z ≥ 2σ_b


def test_dp_reports_epsilon_per_round():
    rng = np.random.default_rng(6)
    cfg = DPConfig(noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=10, population=1000)
    dp = DifferentialPrivacy(FedAvg(), cfg, seed=1)
    eps = []
    for _ in range(5):
        ups = [(rng.standard_normal(20).astype(np.float32), 1) for _ in range(10)]
        eps.append(dp.aggregate_detailed(np.zeros(20, np.float32), ups).metrics["epsilon"])
    assert all(b > a for a, b in zip(eps, eps[1:]))
    acc = RDPAccountant()
    acc.step(1.0, 0.01, 5)
    assert eps[-1] == pytest.approx(acc.get_epsilon(1e-5))


# ---------------- accountant ----------------

TF_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


@pytest.mark.parametrize("z,epochs,published", [(1.1, 60, 3.01), (1.3, 15, 1.19), (0.7, 45, 7.10)])
def test_accountant_matches_tf_privacy_readme(z, epochs, published):
    # tensorflow/privacy tutorials/README.md: MNIST, N = 60000, batch 256, δ = 1e-5, ε printed with 2 decimals
    # by compute_dp_sgd_privacy (steps = ceil(epochs·N/batch), classic RDP→DP conversion).
    steps = math.ceil(epochs * 60000 / 256)
    eps, _ = rdp_to_dp(TF_ORDERS, compute_rdp(256 / 60000, z, steps, TF_ORDERS), 1e-5, method="classic")
    assert round(eps, 2) == published


def test_accountant_closed_forms():
    # q = 1: the Gaussian mechanism, RDP α/(2z²)
    assert rdp_sampled_gaussian(1.0, 2.0, 7.5) == pytest.approx(7.5 / 8)
    assert rdp_sampled_gaussian(0.0, 2.0, 3) == 0.0
    # integer and fractional orders agree on a smooth curve (the fractional series at α = 4.0001 ≈ integer α = 4)
    a = rdp_sampled_gaussian(0.05, 1.2, 4)
    b = rdp_sampled_gaussian(0.05, 1.2, 4.0001)
    assert b == pytest.approx(a, rel=1e-3)
    # amplification by sampling: far below the unsampled mechanism
    assert rdp_sampled_gaussian(0.01, 1.0, 8) < 0.01 * 8 / 2


@pytest.mark.skipif(dp_accounting is None, reason="dp-accounting not installed")
@pytest.mark.parametrize("q,z,steps", [(0.01, 1.0, 100), (256 / 60000, 1.1, 14063), (0.1, 0.8, 30),
                                        (0.5, 2.0, 10), (1.0, 1.5, 3)])
def test_accountant_matches_dp_accounting(q, z, steps):
    # Integer orders: the same binomial sum, must agree to rounding. Fractional orders: we sum the series of
    # Mironov et al. 2019 §3.3 with the signed generalised binomial coefficients (as Opacus and the TF-Privacy
    # release behind the README numbers above do); dp-accounting adds |C(α, i)|, an upper bound, so ours must
    # be ≤ theirs and close.
    orders = np.array(TF_ORDERS)
    theirs_rdp = dpa_rdp._compute_rdp_poisson_subsampled_gaussian(q, z, orders) * steps
    ours_rdp = compute_rdp(q, z, steps, TF_ORDERS)
    integer = orders == np.round(orders)
    np.testing.assert_allclose(ours_rdp[integer], theirs_rdp[integer], rtol=1e-8)
    assert np.all(ours_rdp[~integer] <= theirs_rdp[~integer] * (1 + 1e-9))
    int_orders = tuple(float(a) for a in orders[integer])
    acc = dpa_rdp.RdpAccountant(list(int_orders))
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)
    ours = RDPAccountant(int_orders)
    ours.step(z, q, steps)
    assert ours.get_epsilon(1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
    full = RDPAccountant(tuple(TF_ORDERS))
    full.step(z, q, steps)
    assert full.get_epsilon(1e-5) <= ours.get_epsilon(1e-5) + 1e-12


def test_client_side_clipping_is_verified_by_the_server():
    rng = np.random.default_rng(8)
    n = 500
    cur = rng.standard_normal(n).astype(np.float32)
    ok = clip_update((cur + rng.standard_normal(n)).astype(np.float32), cur, 1.0)[0]
    unclipped = (cur + rng.standard_normal(n)).astype(np.float32)              # norm ~ 22 > 1
    dp = DifferentialPrivacy(FedAvg(), DPConfig(noise_multiplier=0.0, clipping_norm=1.0, clipping="client"))
    res = dp.aggregate_detailed(cur, [(ok, 1), (unclipped, 1)])
    assert res.accepted == [0]
    assert "exceeds the clipping norm" in res.rejected[0].reason
    np.testing.assert_array_equal(res.parameters, ok)                          # not re-clipped, not changed


def test_noise_follows_the_actual_number_of_accepted_replies():
    n = 100_000
    rng = np.random.default_rng(9)
    ups = [((0.001 * rng.standard_normal(n)).astype(np.float32), 1) for _ in range(4)]
    dp = DifferentialPrivacy(FedAvg(), DPConfig(noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=10),
                             seed=3)
    res = dp.aggregate_detailed(np.zeros(n, np.float32), ups)
    assert res.metrics["noise_std"] == pytest.approx(1.0 / 4)     # 4 replies of 10 sampled: C/4, not C/10


@pytest.mark.skipif(flwr_dp is None, reason="flwr not installed")
def test_flower_adaptive_rule_moves_the_wrong_way_ours_does_not():
    # Backs the claim in dp.py's docstring: Flower counts *clipped* updates (norm_bit = scaling < 1) and
    # applies C *= exp(-lr * (fraction - target)), so when every update is clipped C shrinks further.
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping, FedAvg as FlwrFedAvg
    theirs = DifferentialPrivacyServerSideAdaptiveClipping(FlwrFedAvg(), noise_multiplier=0.0, num_sampled_clients=4,
                                                           initial_clipping_norm=0.1)
    assert flwr_dp.adaptive_clip_inputs_inplace([np.ones(4, np.float32)], 0.1) is True   # norm 2 > 0.1: "bit" set
    theirs._geometric_update(1.0)                  # all four updates were clipped
    assert theirs.clipping_norm < 0.1
    ours = DifferentialPrivacy(FedAvg(), DPConfig(noise_multiplier=0.0, clipping_norm=0.1, adaptive=True))
    ours.aggregate(np.zeros(4, np.float32), [(np.ones(4, np.float32), 1)] * 4)
    assert ours.clipping_norm > 0.1
