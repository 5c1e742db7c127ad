"""FedAvg aggregation throughput: captionaura's streaming float64 C kernel vs a NumPy re-implementation of
Flower's `aggregate_arrayrecords` (float32, p_k = n_k/Σn, out = x_0·p_0, out += x_k·p_k) vs flwr's own
function (when flwr is installed; it deserialises every Array), against a STREAM triad measured in the same
run; then the cost of secure aggregation per client and on the server.

    .venv/bin/python benchmarks/bench_aggregate.py            # full grid (K ∈ {8,32,128}, M ∈ {1e5,1e6,1e7})
    .venv/bin/python benchmarks/bench_aggregate.py --quick    # K ∈ {8,32}, M ∈ {1e5,1e6}

"GB/s" counts 20 bytes per client and coordinate for the streaming path (read x: 4, read and write the
float64 sum: 16; validation is fused into the same read of x). Triad: 24 bytes per element (STREAM convention, no
write-allocate), measured with the same OpenMP threads. While the accumulator fits in the last-level cache
(M <= ~1e6 with a 32 MB L3) the 16 accumulator bytes never reach DRAM and the figure can exceed the triad. Client vectors beyond
a 1.5 GB budget are reused cyclically (each is still far larger than the last-level cache when M ≥ 1e6; at
M = 1e5 everything is cache-resident for every method alike).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from captionaura import _core, get_num_threads, set_num_threads
from captionaura.federated import FedAvg, WeightedAccumulator

try:
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
    HAVE_FLWR = True
except ImportError:
    HAVE_FLWR = False

BUDGET = 1.0e9      # bytes of distinct client vectors at most
MIN_POOL = 512e6    # ...and at least this much where the budget allows, so vectors come from DRAM, not L3


def best_of(fn, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def triad_gbs(n: int = 20_000_000, repeat: int = 5) -> float:
    a = np.zeros(n); b = np.ones(n); c = np.full(n, 2.0)
    _core.fed_stream_triad(a, b, c, 3.0)
    t = best_of(lambda: _core.fed_stream_triad(a, b, c, 3.0), repeat)
    return 24 * n / t / 1e9


def numpy_flower(vectors, weights):
    total = sum(weights)
    out = None
    for x, w in zip(vectors, weights):
        p = w / total
        if out is None:
            out = x * p
        else:
            out += x * p
    return out


def bench_fedavg(K: int, M: int, repeat: int, triad: float) -> dict:
    rng = np.random.default_rng(0)
    distinct = max(1, min(max(K, int(MIN_POOL // (4 * M))), int(BUDGET // (4 * M))))
    pool = [rng.standard_normal(M, dtype=np.float32) for _ in range(distinct)]
    # each timed repetition takes the next K vectors of the pool (rotating), so the same vector is not read
    # twice while it could still be cached
    state = {"off": 0}

    def next_vectors():
        off = state["off"]
        state["off"] = (off + K) % distinct
        return [pool[(off + k) % distinct] for k in range(K)]
    weights = [int(w) for w in rng.integers(1, 1000, K)]
    acc = WeightedAccumulator(M)
    out = np.empty(M, np.float32)

    def ours_streaming():
        acc.reset()
        for k, (x, w) in enumerate(zip(next_vectors(), weights)):
            acc.add(x, w, k)                       # validate + add, one vector at a time
        acc.mean(out)

    cur = np.zeros(M, np.float32)
    strategy = FedAvg()   # a server keeps its strategy across rounds (and with it the float64 accumulator)

    def ours_batched():
        rnd = strategy.begin_round(cur, batch=16)
        for k, (x, w) in enumerate(zip(next_vectors(), weights)):
            rnd.add(x, w, k)
        out[:] = rnd.finish().parameters      # validate all, add 16 vectors per pass

    r = {"K": K, "M": M}
    r["stream_s"] = best_of(ours_streaming, repeat)
    r["batch_s"] = best_of(ours_batched, repeat)
    r["gbs"] = 20.0 * K * M / r["stream_s"] / 1e9
    r["numpy_s"] = best_of(lambda: numpy_flower(next_vectors(), weights), repeat)
    state["off"] = 0
    ref = numpy_flower(next_vectors(), weights)
    state["off"] = 0
    ours_batched()
    r["maxdiff"] = float(np.max(np.abs(out - ref)))
    r["flwr_s"] = None
    if HAVE_FLWR:
        # serialised records cost as much memory as the vectors: build at most K (+1 repeat's worth) of them
        nrec = min(distinct, 2 * K, max(2, int(0.6e9 // (4 * M))))
        arecs = [ArrayRecord({"w": Array(pool[k])}) for k in range(nrec)]
        sets = [[RecordDict({"arrays": arecs[(s * K + k) % nrec],
                             "metrics": MetricRecord({"num-examples": weights[k]})}) for k in range(K)]
                for s in range(2)]
        it = iter(range(10**9))
        r["flwr_s"] = best_of(lambda: aggregate_arrayrecords(sets[next(it) % 2], "num-examples"),
                              max(1, repeat - 1))
        del arecs, sets
    r["pct_triad"] = 100 * r["gbs"] / triad
    return r


def bench_secagg(K: int, M: int, neighbours: int | None, threshold: int) -> dict:
    from captionaura.federated.secagg import SecAggClient, SecAggConfig, SecAggServer
    cfg = SecAggConfig(threshold=threshold, num_neighbours=neighbours)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(M, dtype=np.float32)
    ids = list(range(K))
    server = SecAggServer(cfg, ids, M)
    t0 = time.perf_counter()
    clients = {u: SecAggClient(u, cfg) for u in ids}
    pks = {u: c.public_keys() for u, c in clients.items()}
    t_setup = (time.perf_counter() - t0) / K
    nbr = server.collect_public_keys(pks)
    t0 = time.perf_counter()
    shares = {u: clients[u].share_keys(nbr[u]) for u in ids}
    t_share = (time.perf_counter() - t0) / K
    inbox = server.route_shares(shares)
    masked, t_mask = {}, []
    for u in ids:
        t0 = time.perf_counter()
        masked[u] = clients[u].masked_input(x, 100, inbox[u])
        t_mask.append(time.perf_counter() - t0)
    drop = ids[-1]                                        # one client drops after sending its masked input?
    del masked[drop]                                      # no: it drops before, so its pairwise masks are recovered
    t0 = time.perf_counter()
    S, D = server.collect_masked(masked)
    t_collect = time.perf_counter() - t0
    resp = {u: clients[u].unmask_shares(S, D) for u in S}
    t0 = time.perf_counter()
    server.unmask(resp)
    t_unmask = time.perf_counter() - t0
    return {"K": K, "M": M, "graph": "complete" if neighbours is None else f"{neighbours}-regular",
            "client_s": t_setup + t_share + float(np.mean(t_mask)), "mask_s": float(np.mean(t_mask)),
            "upload_MB": 4 * (M + 1) / 1e6, "server_collect_s": t_collect, "server_unmask_s": t_unmask}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-secagg", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="OpenMP threads (default: the core's default)")
    args = ap.parse_args()
    if args.threads:
        set_num_threads(args.threads)
    Ks = [8, 32] if args.quick else [8, 32, 128]
    Ms = [100_000, 1_000_000] if args.quick else [100_000, 1_000_000, 10_000_000]
    triad = triad_gbs()
    read = _core.read_bandwidth_gbs(512, 10)
    most_bw = max(triad, read)  # the bound below takes the larger: it stays generous
    print(f"threads={get_num_threads()}  STREAM triad (C, same threads) = {triad:.1f} GB/s  read-only (C probe) = "
          f"{read:.1f} GB/s  flwr={'yes' if HAVE_FLWR else 'no'}")
    print()
    hdr = (f"{'K':>4} {'M':>9} | {'stream ms':>9} {'GB/s':>6} {'%triad':>6} {'batch ms':>8} | {'numpy ms':>9} "
           f"{'x':>5} {'x max':>5} | {'flwr ms':>9} {'x':>5} | {'maxdiff':>8}")
    print(hdr)
    print("-" * len(hdr))
    for K in Ks:
        for M in Ms:
            if 4.0 * K * M > 4e9:
                print(f"{K:>4} {M:>9.0e} | skipped: K*M*4 bytes = {4 * K * M / 1e9:.1f} GB > 4 GB")
                continue
            r = bench_fedavg(K, M, args.repeat, triad)
            fl = r["flwr_s"]
            best = min(r["batch_s"], r["stream_s"])
            fls = f"{1e3 * fl:>9.1f} {fl / best:>5.1f}" if fl else f"{'n/a':>9} {'':>5}"
            # the least any FedAvg can do is read each client vector once (4 bytes a coordinate) from DRAM
            most = f"{r['numpy_s'] / (4.0 * K * M / (most_bw * 1e9)):>5.1f}" if M >= 1_000_000 else f"{'':>5}"
            print(f"{K:>4} {M:>9.0e} | {1e3 * r['stream_s']:>9.1f} {r['gbs']:>6.1f} {r['pct_triad']:>5.0f}% "
                  f"{1e3 * r['batch_s']:>8.1f} | {1e3 * r['numpy_s']:>9.1f} {r['numpy_s'] / best:>5.1f} {most} | "
                  f"{fls} | {r['maxdiff']:>8.1e}", flush=True)
    print("stream = validate and add fused, one vector at a time (peak memory: one vector + the float64 accumulator);")
    print("batch = FedAvg().begin_round(batch=16): validate each, add 16 vectors per accumulator pass;")
    print("GB/s = 20 bytes per client and coordinate (x read, float64 sum read + written) / stream time;")
    print("%triad = that against the triad above (>100% while the accumulator stays in cache, M <= ~1e6);")
    print("x = speed-up of the best captionaura path over that column; maxdiff = max |ours - NumPy float32|")
    print("x max = the most any FedAvg could gain over NumPy: NumPy's time over reading every client vector once")
    print("        at the larger of the triad and read-only bandwidths (M >= 1e6, where the vectors come from DRAM)")
    if args.no_secagg:
        return
    print()
    print("secure aggregation, K=32, M=1e6, one client dropped before unmasking:")
    print(f"{'graph':>12} | {'client total s':>14} {'of which mask s':>15} {'upload MB':>9} | "
          f"{'server sum s':>12} {'server unmask s':>15}")
    for nb, t in ((None, 17), (8, 5)):
        s = bench_secagg(32, 1_000_000, nb, t)
        print(f"{s['graph']:>12} | {s['client_s']:>14.3f} {s['mask_s']:>15.3f} {s['upload_MB']:>9.1f} | "
              f"{s['server_collect_s']:>12.3f} {s['server_unmask_s']:>15.3f}", flush=True)


if __name__ == "__main__":
    main()
