"""Secure aggregation, SecAgg+-style and dropout-tolerant (Bonawitz et al. 2017; Bell et al. 2020), with a
cryptographic PRG: the server learns the sum of the surviving clients' quantised vectors and nothing else.

Each round, for clients u, v (neighbours in the communication graph: complete = SecAgg, k-regular = SecAgg+):

  0. setup     each client makes two X25519 key pairs: c (to encrypt shares) and s (pairwise masks).
  1. share     u draws a self-mask seed b_u and Shamir-shares b_u and s_sk_u (threshold t) among N(u) ∪ {u};
               each share travels through the server encrypted with ChaCha20-Poly1305 under
               HKDF(X25519(c_sk_u, c_pk_v)).
  2. mask      y_u = q_u + PRG(b_u) + Σ_{v∈N(u), v>u} PRG(s_uv) − Σ_{v∈N(u), v<u} PRG(s_uv)   (mod 2^bits)
               with s_uv = HKDF(X25519(s_sk_u, s_pk_v)), PRG = ChaCha20 keystream (never a small-seed PRG,
               unlike Flower's 32-bit-seeded RandomState), q_u the fixed-point quantisation of n_u/max_weight·x_u
               with the integer weight n_u appended.
  3. unmask    the server names the survivors S and the dropped D; each survivor returns its shares of b_u for
               u ∈ S and of s_sk_u for u ∈ D (never both for one u); with ≥ t shares the server rebuilds them,
               removes every survivor's self mask and the pairwise masks the survivors share with dropped
               clients, and is left with Σ_{u∈S} q_u.

Threat model: honest-but-curious server and clients (the server routes every message). The consistency-check
round with signatures of the malicious-server variant of SecAgg is not implemented; a client does refuse to
reveal both secrets of one peer and to unmask below the threshold.

The stages are pure-ish methods on `SecAggClient` / `SecAggServer` so a simulation or a Flower ServerApp can
drive them over any transport; `run_round` drives them in-process. The per-coordinate integer arithmetic
(quantise, add/subtract keystreams mod 2^bits, dequantise) is C (csrc/secagg.c).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from captionaura import _core
from captionaura.federated._vectors import as_vector, check_vector

# ---------------------------------------------------------------------------------------------------------
# Shamir secret sharing over GF(p), p = 2^521 − 1 (a Mersenne prime > 2^256, so a 32-byte secret is one
# field element)

PRIME = (1 << 521) - 1


class SecAggError(RuntimeError):
    """A protocol violation or too few participants (below the reconstruction threshold)."""


def shamir_split(secret: bytes, num_shares: int, threshold: int) -> list[tuple[int, int]]:
    """Shares (x, f(x)) for x = 1..num_shares of a random degree-(threshold−1) polynomial with f(0) = secret."""
    if not 1 <= threshold <= num_shares:
        raise ValueError(f"need 1 <= threshold ({threshold}) <= num_shares ({num_shares})")
    s = int.from_bytes(secret, "big")
    if s >= PRIME:
        raise ValueError("secret too large for the field")
    coeffs = [s] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in range(1, num_shares + 1):
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares.append((x, y))
    return shares


def shamir_combine(shares: Iterable[tuple[int, int]], threshold: int, length: int = 32) -> bytes:
    """f(0) by Lagrange interpolation from any `threshold` distinct shares; SecAggError when fewer."""
    pts = list({x: y for x, y in shares}.items())
    if len(pts) < threshold:
        raise SecAggError(f"{len(pts)} shares, need at least {threshold} to reconstruct")
    pts = pts[:threshold]
    s = 0
    for i, (xi, yi) in enumerate(pts):
        num, den = 1, 1
        for j, (xj, _) in enumerate(pts):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        s = (s + yi * num * pow(den, -1, PRIME)) % PRIME
    if s >= 1 << (8 * length):
        raise SecAggError("reconstructed value out of range: inconsistent shares")
    return s.to_bytes(length, "big")


# ---------------------------------------------------------------------------------------------------------
# key agreement and PRG

def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def keystream_u32(key: bytes, n: int) -> np.ndarray:
    """n uniform 32-bit words: ChaCha20(key, nonce 0) applied to zeros. Each key masks one vector per round."""
    enc = Cipher(algorithms.ChaCha20(key, b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(enc.update(bytes(4 * n)), dtype=np.uint32).copy()


def _raw(pk: X25519PublicKey) -> bytes:
    return pk.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _pairwise_key(sk: X25519PrivateKey, peer_pk: bytes, context: bytes) -> bytes:
    return _hkdf(sk.exchange(X25519PublicKey.from_public_bytes(peer_pk)), b"captionaura/secagg/pairwise|" + context)


def _self_key(seed: bytes, context: bytes) -> bytes:
    return _hkdf(seed, b"captionaura/secagg/self|" + context)


# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SecAggConfig:
    """Protocol parameters (names after Flower's SecAggPlusWorkflow, federated.md §A4).

    threshold: shares needed to rebuild a secret (t); the round fails below t participants.
    clipping_range: c, values of n/max_weight·x are clipped to [−c, c] before quantisation.
    quantization_levels: Q, fixed-point levels over [−c, c] (step 2c/(Q−1)).
    bits: the modulus is 2^bits (≤ 32); K·(Q−1) < 2^bits must hold for K survivors.
    max_weight: the largest number of examples a client may report (weights are scaled by 1/max_weight).
    num_neighbours: SecAgg+ graph degree (even, ≥ 2), or None for the complete graph (SecAgg).
    stochastic_rounding: unbiased random rounding (default) or round-to-nearest (deterministic, for tests).
    """

    threshold: int
    clipping_range: float = 8.0
    quantization_levels: int = 1 << 22
    bits: int = 32
    max_weight: float = 1000.0
    num_neighbours: int | None = None
    stochastic_rounding: bool = True

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError("threshold must be >= 1")
        if not 1 <= self.bits <= 32:
            raise ValueError("bits must be in [1, 32]")
        if not 2 <= self.quantization_levels <= 1 << self.bits:
            raise ValueError("quantization_levels must be in [2, 2^bits]")
        if self.num_neighbours is not None and (self.num_neighbours < 2 or self.num_neighbours % 2):
            raise ValueError("num_neighbours must be an even number >= 2 (or None)")
        if not self.clipping_range > 0 or not self.max_weight > 0:
            raise ValueError("clipping_range and max_weight must be > 0")

    @property
    def max_clients(self) -> int:
        """Largest number of summed vectors that cannot wrap modulo 2^bits."""
        return ((1 << self.bits) - 1) // (self.quantization_levels - 1)


def neighbours(client_ids: Iterable[int], num_neighbours: int | None) -> dict[int, list[int]]:
    """The communication graph: complete, or the Harary-style ring where each client is linked to the
    num_neighbours/2 next clients on each side (sorted by id)."""
    ids = sorted(client_ids)
    K = len(ids)
    if num_neighbours is None or num_neighbours >= K - 1:
        return {u: [v for v in ids if v != u] for u in ids}
    half = num_neighbours // 2
    out: dict[int, set[int]] = {u: set() for u in ids}
    for i, u in enumerate(ids):
        for d in range(1, half + 1):
            v = ids[(i + d) % K]
            out[u].add(v)
            out[v].add(u)
    return {u: sorted(vs) for u, vs in out.items()}


def _ad(sender: int, receiver: int, context: bytes) -> bytes:
    return b"captionaura/secagg/share|%d|%d|" % (sender, receiver) + context


class SecAggClient:
    """One client's side of a round. `context` binds every key and share to the round (e.g. b"round-7")."""

    def __init__(self, client_id: int, config: SecAggConfig, context: bytes = b"") -> None:
        self.id = int(client_id)
        self.config = config
        self.context = context
        self._c_sk = X25519PrivateKey.generate()
        self._s_sk = X25519PrivateKey.generate()
        self._seed = secrets.token_bytes(32)
        self._nbr_keys: dict[int, tuple[bytes, bytes]] = {}
        self._held: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {}  # owner → (b share, s_sk share)
        self._masked_with: list[int] = []
        self._unmasked = False

    def to_state(self) -> str:
        """The client's secrets and progress as JSON text, for transports that run each stage in a fresh
        process (a Flower ClientApp keeps it in the node's context.state; it never leaves the node)."""
        raw = serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        return json.dumps({
            "id": self.id, "context": self.context.hex(), "c_sk": self._c_sk.private_bytes(*raw).hex(),
            "s_sk": self._s_sk.private_bytes(*raw).hex(), "seed": self._seed.hex(),
            "nbr_keys": {str(v): [c.hex(), k.hex()] for v, (c, k) in self._nbr_keys.items()},
            "held": {str(u): [str(x) for pair in shares for x in pair] for u, shares in self._held.items()},
            "masked_with": self._masked_with, "unmasked": self._unmasked})

    @classmethod
    def from_state(cls, state: str, config: SecAggConfig) -> "SecAggClient":
        """The client `to_state` saved, ready for its next stage."""
        d = json.loads(state)
        client = cls(d["id"], config, bytes.fromhex(d["context"]))
        client._c_sk = X25519PrivateKey.from_private_bytes(bytes.fromhex(d["c_sk"]))
        client._s_sk = X25519PrivateKey.from_private_bytes(bytes.fromhex(d["s_sk"]))
        client._seed = bytes.fromhex(d["seed"])
        client._nbr_keys = {int(v): (bytes.fromhex(c), bytes.fromhex(k)) for v, (c, k) in d["nbr_keys"].items()}
        client._held = {int(u): ((int(a), int(b)), (int(c), int(e))) for u, (a, b, c, e) in d["held"].items()}
        client._masked_with = [int(v) for v in d["masked_with"]]
        client._unmasked = bool(d["unmasked"])
        return client

    # stage 0
    def public_keys(self) -> tuple[bytes, bytes]:
        """(c_pk, s_pk), raw 32-byte X25519 public keys."""
        return _raw(self._c_sk.public_key()), _raw(self._s_sk.public_key())

    def _share_key(self, peer: int) -> bytes:
        c_pk = self._nbr_keys[peer][0]
        return _hkdf(self._c_sk.exchange(X25519PublicKey.from_public_bytes(c_pk)),
                     b"captionaura/secagg/transport|" + self.context)

    # stage 1
    def share_keys(self, neighbour_keys: Mapping[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        """Given the public keys of the neighbours that completed setup, returns one encrypted share bundle
        per neighbour (to be routed by the server). The own share is kept."""
        nbrs = sorted(v for v in neighbour_keys if v != self.id)
        if len(nbrs) + 1 < self.config.threshold:
            raise SecAggError(f"client {self.id}: {len(nbrs)} neighbours + itself is below the threshold "
                              f"{self.config.threshold}")
        own = self.public_keys()
        for v in nbrs:
            if neighbour_keys[v] == own:
                raise SecAggError(f"client {self.id}: neighbour {v} announced our own public keys")
        self._nbr_keys = {v: (bytes(neighbour_keys[v][0]), bytes(neighbour_keys[v][1])) for v in nbrs}
        holders = [self.id] + nbrs
        s_raw = self._s_sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                         serialization.NoEncryption())
        b_sh = shamir_split(self._seed, len(holders), self.config.threshold)
        s_sh = shamir_split(s_raw, len(holders), self.config.threshold)
        out: dict[int, bytes] = {}
        for holder, bs, ss in zip(holders, b_sh, s_sh):
            if holder == self.id:
                self._held[self.id] = (bs, ss)
                continue
            plain = b"%d,%d,%d,%d" % (bs[0], bs[1], ss[0], ss[1])
            nonce = secrets.token_bytes(12)
            ct = ChaCha20Poly1305(self._share_key(holder)).encrypt(nonce, plain, _ad(self.id, holder, self.context))
            out[holder] = nonce + ct
        return out

    # stage 2
    def quantize(self, x: np.ndarray, num_examples: int) -> np.ndarray:
        """q_u: fixed-point n/max_weight·x (length n) followed by the integer weight n (length n + 1)."""
        cfg = self.config
        v = check_vector(x, np.asarray(x).size, self.id)
        n_ex = int(num_examples)
        if n_ex != num_examples or not 0 <= n_ex <= cfg.max_weight:
            raise SecAggError(f"client {self.id}: num_examples {num_examples} must be an integer in "
                              f"[0, max_weight={cfg.max_weight}]")
        q = np.empty(v.size + 1, np.uint32)
        rnd = None
        if cfg.stochastic_rounding:
            rnd = np.frombuffer(secrets.token_bytes(4 * v.size), dtype=np.uint32)
        _core.secagg_quantize(q[:-1], v, rnd, n_ex / cfg.max_weight, cfg.clipping_range,
                              cfg.quantization_levels, cfg.bits)
        q[-1] = n_ex
        return q

    def masked_input(self, x: np.ndarray, num_examples: int, ciphertexts: Mapping[int, bytes]) -> np.ndarray:
        """Decrypts the shares addressed to this client, then returns y_u (uint32, length n + 1)."""
        for sender, blob in ciphertexts.items():
            if sender not in self._nbr_keys:
                raise SecAggError(f"client {self.id}: share from non-neighbour {sender}")
            try:
                plain = ChaCha20Poly1305(self._share_key(sender)).decrypt(
                    blob[:12], blob[12:], _ad(sender, self.id, self.context))
            except Exception as e:  # InvalidTag
                raise SecAggError(f"client {self.id}: share from {sender} failed authentication") from e
            bx, by, sx, sy = (int(t) for t in plain.split(b","))
            self._held[sender] = ((bx, by), (sx, sy))
        y = self.quantize(x, num_examples)
        bits = self.config.bits
        _core.secagg_add_mod(y, keystream_u32(_self_key(self._seed, self.context), y.size), 1, bits)
        # mask only with neighbours whose shares arrived: the others dropped before stage 2
        self._masked_with = sorted(ciphertexts)
        for v in self._masked_with:
            k = _pairwise_key(self._s_sk, self._nbr_keys[v][1], self.context)
            _core.secagg_add_mod(y, keystream_u32(k, y.size), 1 if self.id < v else -1, bits)
        return y

    # stage 3
    def unmask_shares(self, survivors: Iterable[int], dropped: Iterable[int]) -> dict[int, tuple[str, int, int]]:
        """Shares the server needs: of b_u for surviving u, of s_sk_u for dropped u (never both for one u)."""
        S, D = set(survivors), set(dropped)
        if S & D:
            raise SecAggError(f"client {self.id}: clients {sorted(S & D)} listed as both surviving and dropped")
        if len(S) < self.config.threshold:
            raise SecAggError(f"client {self.id}: {len(S)} survivors is below the threshold "
                              f"{self.config.threshold}; refusing to reveal shares")
        if self._unmasked:
            raise SecAggError(f"client {self.id}: unmasking requested twice")
        self._unmasked = True
        out: dict[int, tuple[str, int, int]] = {}
        for owner, (bs, ss) in self._held.items():
            if owner in S:
                out[owner] = ("b", bs[0], bs[1])
            elif owner in D:
                out[owner] = ("s", ss[0], ss[1])
        return out


@dataclass
class SecAggResult:
    """What the server learns: the sum of the survivors' quantised vectors and its dequantised mean."""

    quantized_sum: np.ndarray       # (n,) uint32: Σ_{u∈S} q_u mod 2^bits (weights excluded)
    total_examples: int             # Σ_{u∈S} n_u
    mean: np.ndarray                # (n,) float32: Σ n_u x_u / Σ n_u (up to quantisation)
    survivors: list[int]
    dropped: list[int]


@dataclass
class SecAggServer:
    """The server's side: routes keys and shares, sums masked vectors, rebuilds secrets, removes masks."""

    config: SecAggConfig
    client_ids: list[int]
    vector_size: int
    context: bytes = b""
    graph: dict[int, list[int]] = field(init=False)
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict, init=False)
    shared: dict[int, dict[int, bytes]] = field(default_factory=dict, init=False)
    masked_sum: np.ndarray | None = field(default=None, init=False)
    survivors: list[int] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if len(set(self.client_ids)) != len(self.client_ids):
            raise ValueError("client ids must be distinct")
        self.graph = neighbours(self.client_ids, self.config.num_neighbours)

    def _need(self, have: int, stage: str) -> None:
        if have < self.config.threshold:
            raise SecAggError(f"{stage}: {have} clients left, below the reconstruction threshold "
                              f"{self.config.threshold}")

    def collect_public_keys(self, keys: Mapping[int, tuple[bytes, bytes]]) -> dict[int, dict[int, tuple[bytes, bytes]]]:
        """Stage 0 → 1: per client, the public keys of its neighbours that answered."""
        if len({k for pair in keys.values() for k in pair}) != 2 * len(keys):
            raise SecAggError("setup: duplicate public keys")
        self.keys = {u: keys[u] for u in keys if u in self.graph}
        self._need(len(self.keys), "setup")
        return {u: {v: self.keys[v] for v in self.graph[u] if v in self.keys} for u in self.keys}

    def route_shares(self, shares: Mapping[int, Mapping[int, bytes]]) -> dict[int, dict[int, bytes]]:
        """Stage 1 → 2: ciphertexts regrouped by recipient (only among clients that completed stage 1)."""
        self.shared = {u: dict(s) for u, s in shares.items() if u in self.keys}
        self._need(len(self.shared), "share keys")
        inbox: dict[int, dict[int, bytes]] = {u: {} for u in self.shared}
        for sender, per in self.shared.items():
            for receiver, ct in per.items():
                if receiver in inbox:
                    inbox[receiver][sender] = ct
        return inbox

    def collect_masked(self, masked: Mapping[int, np.ndarray]) -> tuple[list[int], list[int]]:
        """Stage 2 → 3: sums the masked vectors mod 2^bits; returns (survivors, dropped) to broadcast."""
        self.survivors = sorted(u for u in masked if u in self.shared)
        self._need(len(self.survivors), "masked input")
        if len(self.survivors) > self.config.max_clients:
            raise SecAggError(f"{len(self.survivors)} clients would overflow modulo 2^{self.config.bits} "
                              f"with {self.config.quantization_levels} levels (max {self.config.max_clients})")
        if len(self.survivors) * self.config.max_weight >= 1 << self.config.bits:
            raise SecAggError(f"{len(self.survivors)} clients x max_weight {self.config.max_weight} would overflow "
                              f"the weight sum modulo 2^{self.config.bits}")
        acc = np.zeros(self.vector_size + 1, np.uint32)
        for u in self.survivors:
            y = np.asarray(masked[u])
            if y.dtype != np.uint32 or y.shape != acc.shape:
                raise SecAggError(f"masked input of client {u}: expected uint32[{acc.size}], got "
                                  f"{y.dtype}{list(y.shape)}")
            _core.secagg_add_mod(acc, np.ascontiguousarray(y), 1, self.config.bits)
        self.masked_sum = acc
        dropped = sorted(set(self.shared) - set(self.survivors))
        return list(self.survivors), dropped

    def unmask(self, responses: Mapping[int, Mapping[int, tuple[str, int, int]]]) -> SecAggResult:
        """Stage 3: rebuild b_u (survivors) and s_sk_u (dropped) from ≥ t shares, strip the masks."""
        if self.masked_sum is None:
            raise SecAggError("unmask before collect_masked")
        cfg, bits = self.config, self.config.bits
        S = set(self.survivors)
        D = set(self.shared) - S
        responders = [u for u in responses if u in S]
        self._need(len(responders), "unmasking")
        b_shares: dict[int, list[tuple[int, int]]] = {u: [] for u in S}
        s_shares: dict[int, list[tuple[int, int]]] = {u: [] for u in D}
        for r in responders:
            for owner, (kind, x, y) in responses[r].items():
                if kind == "b" and owner in S:
                    b_shares[owner].append((x, y))
                elif kind == "s" and owner in D:
                    s_shares[owner].append((x, y))
                else:
                    raise SecAggError(f"client {r} sent a {kind!r} share of client {owner}, which is not allowed")
        total = self.masked_sum.copy()
        n1 = total.size
        for u in sorted(S):
            try:
                seed = shamir_combine(b_shares[u], cfg.threshold)
            except SecAggError as e:
                raise SecAggError(f"cannot remove the self mask of client {u}: {e}") from None
            _core.secagg_add_mod(total, keystream_u32(_self_key(seed, self.context), n1), -1, bits)
        for u in sorted(D):
            try:
                sk_raw = shamir_combine(s_shares[u], cfg.threshold)
            except SecAggError as e:
                raise SecAggError(f"cannot recover the pairwise masks of dropped client {u}: {e}") from None
            sk = X25519PrivateKey.from_private_bytes(sk_raw)
            if _raw(sk.public_key()) != self.keys[u][1]:
                raise SecAggError(f"reconstructed key of client {u} does not match its public key")
            for v in self.graph[u]:
                if v not in S or v not in self.shared[u]:
                    continue                      # u's shares never reached v: v did not mask with u
                k = _pairwise_key(sk, self.keys[v][1], self.context)
                # survivor v added +PRG if v < u else −PRG: undo it
                _core.secagg_add_mod(total, keystream_u32(k, n1), -1 if v < u else 1, bits)
        qsum = total[:-1].copy()
        examples = int(total[-1])
        mean = np.empty(qsum.size, np.float32)
        _core.secagg_dequantize(mean, qsum, len(S), cfg.clipping_range, cfg.quantization_levels, bits)
        if examples > 0:
            mean *= np.float32(cfg.max_weight / examples)
        return SecAggResult(qsum, examples, mean, sorted(S), sorted(D))


def run_round(config: SecAggConfig, inputs: Mapping[int, tuple[np.ndarray, int]],
              drop_after_share: Iterable[int] = (), drop_after_mask: Iterable[int] = (),
              context: bytes = b"round") -> SecAggResult:
    """All four stages in-process for `inputs` {client: (vector, num_examples)}: `drop_after_share` clients
    vanish after stage 1 (their masks were never added), `drop_after_mask` vanish after sending y_u but before
    unmasking (they are survivors: counted, their shares are held by others)."""
    ids = sorted(inputs)
    n = as_vector(inputs[ids[0]][0]).size
    server = SecAggServer(config, ids, n, context)
    clients = {u: SecAggClient(u, config, context) for u in ids}
    nbr = server.collect_public_keys({u: c.public_keys() for u, c in clients.items()})
    inbox = server.route_shares({u: clients[u].share_keys(nbr[u]) for u in ids})
    gone = set(drop_after_share)
    masked = {u: clients[u].masked_input(*inputs[u], inbox[u]) for u in ids if u not in gone}
    S, D = server.collect_masked(masked)
    late = set(drop_after_mask)
    responses = {u: clients[u].unmask_shares(S, D) for u in S if u not in late}
    return server.unmask(responses)


__all__ = ["PRIME", "SecAggClient", "SecAggConfig", "SecAggError", "SecAggResult", "SecAggServer",
           "keystream_u32", "neighbours", "run_round", "shamir_combine", "shamir_split"]
