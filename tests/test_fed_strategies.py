"""Strategies on flat vectors: against NumPy re-derivations of the formulas in federated.md §A2 (always) and
against flwr's own functions and legacy strategies (skipped when flwr is not installed)."""

from __future__ import annotations

import logging
import tracemalloc

import numpy as np
import pytest

from captionaura.federated import (
    Bulyan, FedAdagrad, FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg, FedYogi, Krum, MultiKrum,
    NoValidUpdatesError, WeightedAccumulator, proximal_term,
)

try:
    import flwr  # noqa: F401
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import aggregate as flagg
    HAVE_FLWR = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_FLWR = False

needs_flwr = pytest.mark.skipif(not HAVE_FLWR, reason="flwr not installed (pip install '.[federated]')")


def clients(rng, K, n, center=None, spread=1.0):
    c = np.zeros(n, np.float32) if center is None else center
    return [((c + spread * rng.standard_normal(n)).astype(np.float32), int(rng.integers(1, 500)))
            for _ in range(K)]


# ---------------- FedAvg ----------------

@pytest.mark.parametrize("K,n", [(1, 7), (5, 1000), (16, 70_001)])
def test_fedavg_matches_float64_formula(K, n):
    rng = np.random.default_rng(K)
    ups = clients(rng, K, n)
    ref = sum(np.float64(w) * x.astype(np.float64) for x, w in ups) / sum(w for _, w in ups)
    got = FedAvg().aggregate(np.zeros(n, np.float32), ups)
    assert got.dtype == np.float32 and got.shape == (n,)
    np.testing.assert_allclose(got, ref.astype(np.float32), rtol=0, atol=0)  # correctly rounded mean


@needs_flwr
def test_fedavg_matches_flwr_aggregate():
    rng = np.random.default_rng(1)
    ups = clients(rng, 12, 5000)
    theirs = flagg.aggregate([([x], w) for x, w in ups])[0]
    ours = FedAvg().aggregate(np.zeros(5000, np.float32), ups)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_float64_accumulation_beats_float32_naive():
    # 1e8 then 998 ones then -1e8: float32 running sums lose every 1 (1e8 + 1 == 1e8 in float32).
    n = 4
    ups = [(np.full(n, 1e8, np.float32), 1)] + [(np.ones(n, np.float32), 1)] * 998 + \
          [(np.full(n, -1e8, np.float32), 1)]
    naive = ups[0][0] * np.float32(1 / 1000)                    # Flower's aggregate_inplace order, float32
    for x, w in ups[1:]:
        naive += x * np.float32(w / 1000)
    exact = 998 / 1000
    ours = FedAvg().aggregate(np.zeros(n, np.float32), ups)
    np.testing.assert_allclose(ours, exact, rtol=1e-7)
    assert np.all(np.abs(naive - exact) > 0.1)                  # the naive float32 path is badly off


def test_streaming_memory_is_one_vector_plus_accumulator():
    n, K = 200_000, 40
    rng = np.random.default_rng(0)
    tracemalloc.start()
    rnd = FedAvg().begin_round(np.zeros(n, np.float32))
    for _ in range(K):
        rnd.add(rng.standard_normal(n, dtype=np.float32), 3)
    out = rnd.finish().parameters
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # accumulator 8n + current 4n + one incoming 4n + output 4n (+ slack), far below K vectors (160n bytes)
    assert peak < 28 * n, peak
    assert out.shape == (n,)


# ---------------- validation ----------------

def test_bad_updates_rejected_round_goes_on(caplog):
    n = 100
    rng = np.random.default_rng(3)
    good = clients(rng, 3, n)
    nan = good[0][0].copy(); nan[17] = np.nan
    inf = good[0][0].copy(); inf[5] = -np.inf
    ups = [good[0], (nan, 10), (np.ones(n + 1, np.float32), 4), good[1], (inf, 3), (good[2][0], -1), good[2]]
    with caplog.at_level(logging.WARNING, logger="captionaura.federated"):
        res = FedAvg().aggregate_detailed(np.zeros(n, np.float32), ups)
    assert res.accepted == [0, 3, 6]
    reasons = {r.client: r.reason for r in res.rejected}
    assert set(reasons) == {1, 2, 4, 5}
    assert "index 17" in reasons[1] and "nan" in reasons[1].lower()
    assert "wrong length" in reasons[2] and "101" in reasons[2]
    assert "index 5" in reasons[4]
    assert "weight" in reasons[5]
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 4
    ref = FedAvg().aggregate(np.zeros(n, np.float32), [good[0], good[1], good[2]])
    np.testing.assert_array_equal(res.parameters, ref)
    for strat in (FedMedian(), Krum(), FedTrimmedAvg(0.1)):
        r = strat.aggregate_detailed(np.zeros(n, np.float32), ups)
        assert r.accepted == [0, 3, 6]


def test_all_rejected_raises():
    n = 4
    bad = np.array([0, np.nan, 0, 0], np.float32)
    with pytest.raises(NoValidUpdatesError, match="non-finite"):
        FedAvg().aggregate(np.zeros(n, np.float32), [(bad, 1), (bad, 2)])
    with pytest.raises(NoValidUpdatesError):
        FedAvg().aggregate(np.zeros(n, np.float32), [])
    with pytest.raises(NoValidUpdatesError, match="examples is 0"):
        FedAvg().aggregate(np.zeros(n, np.float32), [(np.zeros(n, np.float32), 0)])


def test_accumulator_untouched_by_rejected_update():
    acc = WeightedAccumulator(3)
    acc.add(np.ones(3, np.float32), 2)
    with pytest.raises(ValueError):
        acc.add(np.array([1, np.inf, 1], np.float32), 5)
    assert acc.weight == 2 and acc.count == 1
    np.testing.assert_array_equal(acc.mean(), np.ones(3, np.float32))


# ---------------- robust rules ----------------

@pytest.mark.parametrize("K", [1, 2, 5, 8, 33, 64])
def test_median_matches_numpy(K):
    rng = np.random.default_rng(K)
    ups = clients(rng, K, 3001)
    ref = np.median(np.stack([x for x, _ in ups]).astype(np.float64), axis=0)
    got = FedMedian().aggregate(np.zeros(3001, np.float32), ups)
    np.testing.assert_allclose(got, ref.astype(np.float32), rtol=1e-7, atol=0)


@pytest.mark.parametrize("K,beta", [(5, 0.2), (10, 0.2), (10, 0.45), (40, 0.1), (7, 0.0)])
def test_trimmed_mean_matches_sorted_slice(K, beta):
    rng = np.random.default_rng(K)
    ups = clients(rng, K, 2000)
    s = np.sort(np.stack([x for x, _ in ups]).astype(np.float64), axis=0)
    lc = int(beta * K)
    ref = s[lc:K - lc].mean(axis=0)
    got = FedTrimmedAvg(beta).aggregate(np.zeros(2000, np.float32), ups)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


@needs_flwr
@pytest.mark.parametrize("K,beta", [(5, 0.2), (11, 0.3)])
def test_trimmed_and_median_match_flwr(K, beta):
    rng = np.random.default_rng(7)
    ups = clients(rng, K, 999)
    res = [([x], w) for x, w in ups]
    np.testing.assert_allclose(FedTrimmedAvg(beta).aggregate(np.zeros(999, np.float32), ups),
                               flagg.aggregate_trimmed_avg(res, beta)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(FedMedian().aggregate(np.zeros(999, np.float32), ups),
                               flagg.aggregate_median(res)[0], rtol=1e-6, atol=1e-7)


@needs_flwr
@pytest.mark.parametrize("K,f,keep", [(6, 1, 0), (10, 2, 0), (10, 2, 3), (9, 0, 4)])
def test_krum_matches_flwr(K, f, keep):
    rng = np.random.default_rng(K + f)
    ups = clients(rng, K, 500)
    ours = Krum(f, keep).aggregate(np.zeros(500, np.float32), ups)
    theirs = flagg.aggregate_krum([([x], w) for x, w in ups], f, keep)[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@needs_flwr
@pytest.mark.parametrize("K,f", [(7, 1), (11, 2), (8, 1), (3, 0)])
def test_bulyan_matches_flwr(K, f):
    rng = np.random.default_rng(100 + K)
    ups = clients(rng, K, 800)
    ours = Bulyan(f).aggregate(np.zeros(800, np.float32), ups)
    theirs = flagg.aggregate_bulyan([([x], w) for x, w in ups], f, flagg.aggregate_krum, to_keep=0)[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_bulyan_needs_4f_plus_3():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="4f"):
        Bulyan(2).aggregate(np.zeros(10, np.float32), clients(rng, 10, 10))


def test_krum_distances_exact_for_close_vectors():
    # ‖x‖²+‖y‖²−2x·y in float32 cancels to garbage when x ≈ y with a large norm; Σ(x−y)² in float64 does not.
    from captionaura.federated import pairwise_sq_distances
    n = 100_000
    base = np.full(n, 1000.0, np.float32)
    x = base.copy(); x[::2] += np.float32(1e-3) * 64  # representable offsets near 1000 (ulp = 6.1e-5)
    D = pairwise_sq_distances([base, x])
    exact = float(np.sum((x.astype(np.float64) - base.astype(np.float64)) ** 2))
    assert D[0, 1] == pytest.approx(exact, rel=1e-12) and D[1, 0] == D[0, 1] and D[0, 0] == 0


def test_byzantine_bounded_error_krum_median():
    rng = np.random.default_rng(42)
    n, honest, byz = 2000, 9, 2
    truth = rng.standard_normal(n).astype(np.float32)
    ups = [((truth + 0.1 * rng.standard_normal(n)).astype(np.float32), 100) for _ in range(honest)]
    ups += [((-truth) * 100, 1000) for _ in range(byz)]            # sign-flipped and scaled x100, big weights
    rng.shuffle(ups)
    cur = np.zeros(n, np.float32)
    tn = np.linalg.norm(truth)
    err = {name: np.linalg.norm(s.aggregate(cur, ups) - truth) / tn for name, s in {
        "fedavg": FedAvg(), "krum": Krum(byz), "multikrum": MultiKrum(byz, 5), "median": FedMedian(),
        "trimmed": FedTrimmedAvg(0.2), "bulyan": Bulyan(byz)}.items()}
    assert err["fedavg"] > 50                                  # poisoned
    for name in ("krum", "multikrum", "median", "trimmed", "bulyan"):
        assert err[name] < 0.25, (name, err)                   # honest noise alone is ~0.1 per client


# ---------------- server optimisers ----------------

def _rounds(rng, n, R, K=5):
    return [clients(rng, K, n, spread=0.5) for _ in range(R)]


def _numpy_fedopt(kind, x0, rounds, eta, b1, b2, tau):
    """The update rules of federated.md §A2 written out in float64."""
    x = x0.astype(np.float64); m = np.zeros_like(x); v = np.zeros_like(x)
    for t, ups in enumerate(rounds, start=1):
        mean = sum(w * u.astype(np.float64) for u, w in ups) / sum(w for _, w in ups)
        d = mean - x
        m = b1 * m + (1 - b1) * d
        if kind == "adam":
            v = b2 * v + (1 - b2) * d * d
            e = eta * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        elif kind == "yogi":
            v = v - (1 - b2) * d * d * np.sign(v - d * d); e = eta
        else:
            v = v + d * d; e = eta
        x = x + e * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("kind,cls", [("adam", FedAdam), ("yogi", FedYogi), ("adagrad", FedAdagrad)])
def test_fedopt_matches_formula(kind, cls):
    rng = np.random.default_rng(5)
    n = 3000
    x0 = rng.standard_normal(n).astype(np.float32)
    rounds = _rounds(rng, n, 4)
    s = cls()
    x = x0
    for t, ups in enumerate(rounds, start=1):
        x = s.aggregate(x, ups, server_round=t)
    ref = _numpy_fedopt(kind, x0, rounds, s.eta, s.beta_1, s.beta_2, s.tau)
    np.testing.assert_allclose(x, ref, rtol=1e-4, atol=1e-5)


def test_flower_defaults():
    assert (FedAdam().eta, FedAdam().eta_l, FedAdam().beta_1, FedAdam().beta_2, FedAdam().tau) == \
        (0.1, 0.1, 0.9, 0.99, 1e-3)
    assert (FedYogi().eta, FedYogi().eta_l, FedYogi().tau) == (1e-2, 0.0316, 1e-3)
    assert (FedAdagrad().eta, FedAdagrad().tau, FedAdagrad().beta_1, FedAdagrad().beta_2) == (0.1, 1e-3, 0, 0)
    assert (FedAvgM().server_learning_rate, FedAvgM().server_momentum) == (1.0, 0.0)
    assert FedTrimmedAvg().beta == 0.2 and FedProx().proximal_mu == 0.0
    assert FedProx(0.5).config() == {"proximal-mu": 0.5}


def _fitres(x, w):
    return (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([x]), w, {}))


@needs_flwr
@pytest.mark.parametrize("name", ["FedAdam", "FedYogi", "FedAdagrad", "FedAvgM"])
def test_server_optimisers_match_flwr(name):
    import flwr.server.strategy as fs
    rng = np.random.default_rng(11)
    n = 2000
    x0 = rng.standard_normal(n).astype(np.float32)
    init = ndarrays_to_parameters([x0])
    if name == "FedAvgM":
        theirs = fs.FedAvgM(initial_parameters=init, server_learning_rate=0.7, server_momentum=0.9)
        ours = FedAvgM(server_learning_rate=0.7, server_momentum=0.9)
    else:
        kw = dict(eta=0.05, eta_l=0.1, tau=1e-3) | ({} if name == "FedAdagrad" else dict(beta_1=0.8, beta_2=0.95))
        theirs = getattr(fs, name)(initial_parameters=init, **kw)
        ours = {"FedAdam": FedAdam, "FedYogi": FedYogi, "FedAdagrad": FedAdagrad}[name](**kw)
    x = x0
    for t, ups in enumerate(_rounds(rng, n, 4), start=1):
        x = ours.aggregate(x, ups, server_round=t)
        params, _ = theirs.aggregate_fit(t, [_fitres(u, w) for u, w in ups], [])
        np.testing.assert_allclose(x, parameters_to_ndarrays(params)[0], rtol=2e-5, atol=2e-6)


def test_fedavgm_plain_is_fedavg_and_momentum_formula():
    rng = np.random.default_rng(2)
    n = 500
    x0 = rng.standard_normal(n).astype(np.float32)
    ups = clients(rng, 4, n)
    np.testing.assert_array_equal(FedAvgM().aggregate(x0, ups), FedAvg().aggregate(x0, ups))
    s = FedAvgM(server_learning_rate=0.5, server_momentum=0.9)
    x, v = x0.astype(np.float64), None
    xo = x0
    for r in range(3):
        ups = clients(rng, 4, n)
        mean = sum(w * u.astype(np.float64) for u, w in ups) / sum(w for _, w in ups)
        g = x - mean
        v = g if v is None else 0.9 * v + g
        x = x - 0.5 * v
        xo = s.aggregate(xo, ups)
    np.testing.assert_allclose(xo, x, rtol=1e-5, atol=1e-5)


# ---------------- FedProx ----------------

def test_proximal_term_value_and_gradient():
    rng = np.random.default_rng(9)
    w = rng.standard_normal(10_000).astype(np.float32)
    wt = rng.standard_normal(10_000).astype(np.float32)
    mu = 0.3
    d = w.astype(np.float64) - wt
    assert proximal_term(w, wt, mu) == pytest.approx(mu / 2 * np.dot(d, d), rel=1e-12)
    g = np.ones(10_000, np.float32)
    proximal_term(w, wt, mu, grad=g)
    np.testing.assert_allclose(g, 1 + mu * d, rtol=1e-6, atol=1.2e-7)
    # central finite difference of the value along a random direction
    u = rng.standard_normal(10_000)
    h = 1e-3
    fp = proximal_term((w + h * u).astype(np.float32), wt, mu)
    fm = proximal_term((w - h * u).astype(np.float32), wt, mu)
    assert (fp - fm) / (2 * h) == pytest.approx(float(np.dot(mu * d, u)), rel=1e-2)


def test_batched_accumulation_is_bit_identical_to_one_by_one():
    rng = np.random.default_rng(21)
    n = 100_003
    ups = clients(rng, 37, n)
    one = WeightedAccumulator(n)
    for x, w in ups:
        one.add(x, w)
    many = WeightedAccumulator(n)
    many.add_many([x for x, _ in ups[:20]], [w for _, w in ups[:20]])
    many.add_many([x for x, _ in ups[20:]], [w for _, w in ups[20:]])
    np.testing.assert_array_equal(one.sum, many.sum)
    assert one.weight == many.weight and one.count == many.count == 37
    cur = np.zeros(n, np.float32)
    rnd = FedAvg().begin_round(cur, batch=5)
    for i, (x, w) in enumerate(ups):
        rnd.add(x, w, i)
    np.testing.assert_array_equal(rnd.finish().parameters, one.mean())
    bad = ups[3][0].copy(); bad[9] = np.inf
    with pytest.raises(ValueError, match="index 9"):
        many.add_many([ups[0][0], bad], [1, 1])
    assert many.count == 37                                   # untouched by the rejected batch


@pytest.mark.parametrize("bad_at", [0, 5000, 99_999, 250_001])
def test_fused_validation_rolls_back_across_threads(bad_at):
    rng = np.random.default_rng(bad_at)
    n = 250_002
    acc = WeightedAccumulator(n)
    good = [rng.standard_normal(n).astype(np.float32) * 1e3 for _ in range(3)]
    for g in good:
        acc.add(g, 7)
    before = acc.sum.copy()
    bad = rng.standard_normal(n).astype(np.float32)
    bad[bad_at] = np.nan
    bad[min(n - 1, bad_at + 70_000)] = np.inf       # a second bad value, possibly in another thread's range
    with pytest.raises(ValueError, match=f"index {bad_at}\\b"):
        acc.add(bad, 5, client="mallory")
    assert acc.weight == 21 and acc.count == 3
    assert np.all(np.abs(acc.sum - before) <= np.spacing(np.abs(before)))   # within one float64 ulp
    ref = WeightedAccumulator(n)
    for g in good:
        ref.add(g, 7)
    np.testing.assert_array_equal(acc.mean(), ref.mean())
