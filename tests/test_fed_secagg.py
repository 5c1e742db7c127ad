"""Secure aggregation: exact recovery of the survivors' quantised sum with dropouts, clear failure below the
threshold, uniform-looking masked vectors, Shamir sharing, and the C mask arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from captionaura import _core
from captionaura.federated.secagg import (
    SecAggClient, SecAggConfig, SecAggError, SecAggServer, keystream_u32, neighbours, run_round,
    shamir_combine, shamir_split,
)


def make_inputs(K, n, seed=0):
    rng = np.random.default_rng(seed)
    return {u: ((rng.standard_normal(n) * 2).astype(np.float32), int(rng.integers(1, 1000))) for u in range(K)}


def expected_qsum(cfg, inputs, survivors):
    """Σ q_u mod 2^bits computed independently: nearest rounding of the fixed-point map, in float64 NumPy."""
    c, Q = cfg.clipping_range, cfg.quantization_levels
    tot = np.zeros(next(iter(inputs.values()))[0].size, np.uint64)
    for u in survivors:
        x, w = inputs[u]
        v = np.clip(x.astype(np.float64) * (w / cfg.max_weight), -c, c)
        tot += np.floor((v + c) * (Q - 1) / (2 * c) + 0.5).astype(np.uint64)
    return (tot % (1 << cfg.bits)).astype(np.uint32)


@pytest.mark.parametrize("drop_share,drop_mask", [((), ()), ((3,), ()), ((), (5,)), ((1, 6), (2,)),
                                                  ((0, 4), (7, 8))])
@pytest.mark.parametrize("graph", [None, 6])
def test_server_learns_exact_quantised_sum_of_survivors(drop_share, drop_mask, graph):
    K, n = 10, 777
    cfg = SecAggConfig(threshold=3 if graph else 6, stochastic_rounding=False, num_neighbours=graph)
    inputs = make_inputs(K, n, seed=len(drop_share) + 3 * len(drop_mask))
    res = run_round(cfg, inputs, drop_after_share=drop_share, drop_after_mask=drop_mask)
    survivors = [u for u in range(K) if u not in drop_share]
    assert res.survivors == survivors and res.dropped == sorted(drop_share)
    np.testing.assert_array_equal(res.quantized_sum, expected_qsum(cfg, inputs, survivors))
    assert res.total_examples == sum(inputs[u][1] for u in survivors)
    ref = sum(inputs[u][1] * inputs[u][0].astype(np.float64) for u in survivors) / res.total_examples
    step = 2 * cfg.clipping_range / (cfg.quantization_levels - 1) * cfg.max_weight / res.total_examples
    assert np.max(np.abs(res.mean - ref)) <= len(survivors) * step


def test_stochastic_rounding_is_unbiased():
    cfg = SecAggConfig(threshold=2, quantization_levels=1 << 8, clipping_range=1.0)
    x = np.full(50_000, 0.3001, np.float32)           # between two levels of a coarse grid (step 2/255)
    res = run_round(cfg, {0: (x, 1000), 1: (x, 1000), 2: (x, 1000)})
    step = 2 / 255
    assert abs(float(res.mean.astype(np.float64).mean()) - 0.3001) < 0.01 * step
    assert len(np.unique(res.mean)) > 1              # rounding is random, not nearest


def test_fails_clearly_below_threshold():
    cfg = SecAggConfig(threshold=5, stochastic_rounding=False)
    inputs = make_inputs(7, 50)
    with pytest.raises(SecAggError, match="below the reconstruction threshold 5"):
        run_round(cfg, inputs, drop_after_share=(0, 1, 2))          # 4 survivors < 5
    with pytest.raises(SecAggError, match="below the reconstruction threshold 5"):
        run_round(cfg, inputs, drop_after_mask=(0, 1, 2))           # 4 responders to unmasking
    # exactly at the threshold still works
    res = run_round(cfg, inputs, drop_after_share=(0,), drop_after_mask=(1,))
    np.testing.assert_array_equal(res.quantized_sum, expected_qsum(cfg, inputs, [1, 2, 3, 4, 5, 6]))


def test_secagg_plus_fails_clearly_when_a_neighbourhood_loses_too_many():
    # degree 4: client 8's secrets are held by {6, 7, 8, 9, 0}; with 7, 8, 0 gone only 2 < 3 shares remain
    cfg = SecAggConfig(threshold=3, stochastic_rounding=False, num_neighbours=4)
    with pytest.raises(SecAggError, match="client 8: 2 shares, need at least 3"):
        run_round(cfg, make_inputs(10, 20), drop_after_share=(0, 7), drop_after_mask=(8,))


def test_client_refuses_to_reveal_both_secrets_of_one_client():
    cfg = SecAggConfig(threshold=2)
    c = SecAggClient(0, cfg)
    with pytest.raises(SecAggError, match="both surviving and dropped"):
        c.unmask_shares([0, 1, 2], [2])
    with pytest.raises(SecAggError, match="below the threshold"):
        c.unmask_shares([0], [1, 2])


def test_masked_vectors_look_uniform_and_hide_the_input():
    K, n = 5, 200_000
    cfg = SecAggConfig(threshold=3, stochastic_rounding=False)
    ids = list(range(K))
    zeros = np.zeros(n, np.float32)
    server = SecAggServer(cfg, ids, n)
    clients = {u: SecAggClient(u, cfg) for u in ids}
    nbr = server.collect_public_keys({u: c.public_keys() for u, c in clients.items()})
    inbox = server.route_shares({u: clients[u].share_keys(nbr[u]) for u in ids})
    y = clients[0].masked_input(zeros, 500, inbox[0])
    q = clients[0].quantize(zeros, 500)
    assert np.all(q[:-1] == q[0])                     # the plaintext is one constant value...
    # ...its masked version is uniform on [0, 2^32): chi-square over 256 buckets of the top byte
    counts = np.bincount((y >> 24).astype(np.int64), minlength=256)
    chi2 = float(np.sum((counts - y.size / 256) ** 2 / (y.size / 256)))
    assert chi2 < 350                                 # 255 d.o.f.: P(chi2 > 350) < 1e-4
    # no coordinate equals the plaintext more often than chance, and the weight is hidden too
    assert np.mean(y == q) < 1e-3 and y[-1] != 500
    # and each bit is balanced
    bits = np.unpackbits(y.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.002


def test_shamir_threshold_and_tamper_detection():
    secret = bytes(range(32))
    sh = shamir_split(secret, 7, 4)
    assert shamir_combine(sh[:4], 4) == secret
    assert shamir_combine(sh[3:], 4) == secret
    assert shamir_combine([sh[0], sh[2], sh[4], sh[6]], 4) == secret
    with pytest.raises(SecAggError, match="need at least 4"):
        shamir_combine(sh[:3], 4)
    # 3 shares of a degree-3 polynomial say nothing: any secret is consistent with them; a 4th forged share
    # yields a different value
    forged = sh[:3] + [(sh[3][0], (sh[3][1] + 1))]
    assert shamir_combine(forged, 4, length=66) != secret.rjust(66, b"\0")


def test_share_transport_is_authenticated():
    cfg = SecAggConfig(threshold=2)
    ids = [0, 1, 2]
    server = SecAggServer(cfg, ids, 10)
    clients = {u: SecAggClient(u, cfg) for u in ids}
    nbr = server.collect_public_keys({u: c.public_keys() for u, c in clients.items()})
    inbox = server.route_shares({u: clients[u].share_keys(nbr[u]) for u in ids})
    blob = bytearray(inbox[0][1])
    blob[-1] ^= 1
    inbox[0][1] = bytes(blob)
    with pytest.raises(SecAggError, match="failed authentication"):
        clients[0].masked_input(np.zeros(10, np.float32), 1, inbox[0])


def test_neighbour_graph():
    g = neighbours(range(10), 4)
    assert all(len(v) == 4 for v in g.values())
    assert all(u in g[v] for u in g for v in g[u])
    assert neighbours(range(4), None)[0] == [1, 2, 3]


def test_keystream_is_chacha20_rfc8439():
    # RFC 8439 §2.4.2 test vector: key 00..1f, nonce 000000000000004a00000000, initial counter 1; the
    # keystream is the ciphertext XOR the plaintext. Our keystream_u32 uses counter 0 and a zero nonce, so
    # check the cipher primitive the PRG is built on with the RFC's parameters.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    key = bytes(range(32))
    nonce = (1).to_bytes(4, "little") + bytes.fromhex("000000000000004a00000000")
    pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it."
    ct = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor().update(pt)
    assert ct[:16].hex() == "6e2e359a2568f98041ba0728dd0d6981"
    a, b = keystream_u32(key, 1000), keystream_u32(key, 1000)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, keystream_u32(bytes(32), 1000))


def test_mask_arithmetic_in_c():
    rng = np.random.default_rng(0)
    for bits in (8, 20, 32):
        mod = 1 << bits
        y = rng.integers(0, mod, 10_001, dtype=np.uint64).astype(np.uint32)
        m = rng.integers(0, 1 << 32, 10_001, dtype=np.uint64).astype(np.uint32)
        y0 = y.copy()
        _core.secagg_add_mod(y, m, 1, bits)
        np.testing.assert_array_equal(y, ((y0.astype(np.uint64) + m) % mod).astype(np.uint32))
        _core.secagg_add_mod(y, m, -1, bits)
        np.testing.assert_array_equal(y, y0)
    with pytest.raises(ValueError, match="bits"):
        _core.secagg_add_mod(y, m, 1, 33)
    with pytest.raises(ValueError, match="overflow"):
        _core.secagg_dequantize(np.empty(3, np.float32), np.zeros(3, np.uint32), 2000, 8.0, 1 << 22, 32)


def test_overflow_guard_on_server():
    cfg = SecAggConfig(threshold=2, quantization_levels=1 << 16, bits=17, stochastic_rounding=False)
    assert cfg.max_clients == 2
    with pytest.raises(SecAggError, match="overflow"):
        run_round(cfg, make_inputs(3, 10))
    small = SecAggConfig(threshold=2, quantization_levels=16, bits=10, max_weight=400, stochastic_rounding=False)
    with pytest.raises(SecAggError, match="weight sum"):
        run_round(small, {u: (np.zeros(4, np.float32), 1) for u in range(3)})
