"""Federated LoRA training simulated in one process: every client shares ONE base model in memory and keeps
only its adapter and optimiser state, so hundreds of clients fit on a laptop.

A round: sample ``fraction_fit`` of the clients; each starts from the global adapter vector, trains
``local_steps`` (or ``local_epochs``) on its own examples (with FedProx's proximal term when the strategy is
FedProx), and returns its vector; the server aggregates with the strategy — through secure aggregation
and/or differential privacy when configured — and LoRA-aware aggregation decides how A and B combine.
Nothing but adapter vectors (or their masked, quantised form) leaves a client.

An ``Lfm2VlModel`` takes the LoRA config with PEFT's matching over the whole captioner: when it adapts the
vision tower or the projector too, the federated vector is the captioner's whole ``lora_vector()`` (language
model, then tower and projector adapters) and clients backpropagate through the frozen tower into its adapters;
otherwise the tower only supplies features and the language model's adapter vector moves.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from captionaura.federated.accountant import RDPAccountant
from captionaura.federated.dp import DifferentialPrivacy, DPConfig, clip_update, local_dp_update, secagg_weight
from captionaura.federated.secagg import SecAggConfig, SecAggResult, run_round as secagg_run_round
from captionaura.federated.strategies import AggregateResult, FedAvg, FedProx, Strategy, proximal_term
from captionaura.lora import LoraConfig
from captionaura.model import Lfm2Model
from captionaura.optim import AdamW, AdamWConfig
from captionaura.vl import Lfm2VlModel
from captionaura.trainer import PIXEL_KEYS, Example, collate

LORA_AGGREGATION = ("naive", "ffa", "exact", "fedex")


@dataclass
class FederatedClient:
    """One participant: its private training examples and, optionally, held-out ones for evaluation."""

    client_id: int | str
    train: Sequence[Example]
    eval: Sequence[Example] | None = None
    metadata: dict = field(default_factory=dict)


@dataclass
class RoundRecord:
    round: int
    clients: list
    train_loss: float
    num_examples: float
    bytes_sent: int          # server → clients
    bytes_received: int      # clients → server
    aggregation_error: dict[str, float]
    rejected: list
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    client_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # client id -> eval scores


class Simulation:
    """Federated LoRA personalisation of `model` over `clients`.

    ``lora_aggregation``: ``"naive"`` averages A and B separately (the common baseline); ``"ffa"`` freezes A
    at its shared-seed initialisation and trains and sends only B, which makes the average exact;
    ``"exact"`` forms ``Σ p_k B_k A_k`` per layer and re-factorises it to rank r (truncated SVD);
    ``"fedex"`` (FedEx-LoRA) keeps the strategy's B and A and folds the residual
    ``s·(Σ p_k B_k A_k − B A)`` into the frozen base weight, so the model is exact at rank r (the dense
    residual is what a deployment must send down to the clients: `base_residual`). Each
    round reports the relative error ``‖Σ p B A − B̄ Ā‖ / ‖Σ p B A‖`` per adapted module.
    ``dropouts(round, client_ids) -> ids`` names clients lost mid-round (after key sharing, before sending).
    ``eval_fn(model, client) -> dict`` scores clients after aggregation (e.g. BLEU/CIDEr on their held-out
    captions). With ``output_dir`` a checkpoint is written atomically after every round and
    ``run(resume=True)`` continues from it, reproducing the uninterrupted run.
    """

    def __init__(self, model: Lfm2Model | Lfm2VlModel, clients: Sequence[FederatedClient], lora: LoraConfig,
                 strategy: Strategy | None = None, rounds: int = 5, local_steps: int | None = 10,
                 local_epochs: int | None = None, batch_size: int = 8, fraction_fit: float = 1.0,
                 optimizer: AdamWConfig | None = None, lora_aggregation: str = "naive",
                 secure_aggregation: SecAggConfig | None = None, dp: DPConfig | None = None,
                 eval_fn: Callable[[Lfm2Model, FederatedClient], Mapping[str, float]] | None = None,
                 keep_optimizer_state: bool = True, output_dir: str | None = None, seed: int = 0,
                 progressbar: bool = True, dropouts: Callable[[int, list], Sequence] | None = None) -> None:
        if not clients:
            raise ValueError("no clients")
        if (local_steps is None) == (local_epochs is None):
            raise ValueError("give exactly one of local_steps and local_epochs")
        if not 0.0 < fraction_fit <= 1.0:
            raise ValueError(f"fraction_fit must be in (0, 1], got {fraction_fit}")
        if lora_aggregation not in LORA_AGGREGATION:
            raise ValueError(f"lora_aggregation must be one of {LORA_AGGREGATION}")
        if lora_aggregation in ("exact", "fedex") and secure_aggregation is not None:
            raise ValueError(f"lora_aggregation={lora_aggregation!r} needs each client's B_k A_k, which secure "
                             "aggregation hides from the server; use 'naive' or 'ffa'")
        if lora_aggregation == "fedex" and dp is not None:
            raise ValueError("lora_aggregation='fedex' folds the clients' un-noised products into the base, "
                             "bypassing differential privacy; use 'ffa' (exact and DP-compatible)")
        if dp is not None and dp.adaptive and secure_aggregation is not None:
            raise ValueError("adaptive clipping counts the clients whose update was clipped, which secure "
                             "aggregation hides from the server; use a fixed clipping_norm")
        strategy = strategy or FedAvg()
        if secure_aggregation is not None and not strategy.streaming:
            raise ValueError(f"{type(strategy).__name__} needs every client's update, which secure aggregation "
                             "hides from the server; use a FedAvg-family strategy")
        if dp is not None and dp.mode == "central":
            strategy = DifferentialPrivacy(strategy, dp, seed=seed)
        self.model, self.clients, self.lora, self.strategy = model, list(clients), lora, strategy
        self.rounds, self.local_steps, self.local_epochs = rounds, local_steps, local_epochs
        self.batch_size, self.fraction_fit, self.seed = batch_size, fraction_fit, seed
        self.optimizer_config = optimizer or AdamWConfig(lr=1e-3, weight_decay=0.0)
        self.lora_aggregation, self.secure_aggregation, self.dp = lora_aggregation, secure_aggregation, dp
        self.eval_fn, self.keep_optimizer_state, self.progressbar = eval_fn, keep_optimizer_state, progressbar
        self.output_dir = Path(output_dir) if output_dir else None
        self.dropouts = dropouts
        self.history: list[RoundRecord] = []
        self.round = 0

        self.lm: Lfm2Model = getattr(model, "text", model)
        model.add_lora(lora, seed=seed)  # every client starts from the same adapter (A from the shared seed)
        # `adapted` owns the federated vector: the whole captioner when its tower or projector has adapters
        self.train_vision = isinstance(model, Lfm2VlModel) and model.vision._core.lora_params() is not None
        self.adapted: Lfm2Model | Lfm2VlModel = model if self.train_vision else self.lm
        if lora_aggregation == "ffa":
            self.adapted.freeze_lora_A()
        self.global_vector = self.adapted.lora_vector().copy()
        self.base_residual: dict[str, np.ndarray] = {}  # module -> Σ over rounds of the FedEx residuals
        # "fedex" sets W = W_0 + base_residual (never W += r each round) so that a server, a client that
        # receives base_residual and a resumed run hold bit-identical base weights
        self._pristine = ({m["module"]: self._base_weight(m["module"]).copy()
                           for m in self.adapted.lora_modules()} if lora_aggregation == "fedex" else {})
        self.client_state: dict = {}  # client id -> optimiser state (exp_avg, exp_avg_sq, step)

    # -- one client ---------------------------------------------------------------------------------
    def local_train(self, client: FederatedClient, round_: int) -> tuple[np.ndarray, float, int]:
        """Client side of a round: train from the global vector on `client`'s examples and return
        (adapter vector, mean loss, number of examples). A Flower ClientApp calls exactly this."""
        model = self.adapted
        model.set_lora_vector(self.global_vector)
        opt = (AdamW(*model.trainable_buffers(), config=self.optimizer_config) if self.train_vision
               else self.lm.set_optimizer(self.optimizer_config))
        saved = self.client_state.get(client.client_id)
        if self.keep_optimizer_state and saved is not None:
            opt.load_state_dict(saved)
        rng = np.random.default_rng([self.seed, round_, _stable_id(client.client_id)])
        n = len(client.train)
        if n == 0:
            raise ValueError(f"client {client.client_id} has no training examples")
        steps = self.local_steps or self.local_epochs * max(1, -(-n // self.batch_size))
        inner = _inner(self.strategy)
        mu = inner.proximal_mu if isinstance(inner, FedProx) else 0.0
        order, pos, losses = rng.permutation(n), 0, []
        dropout_seed = int(rng.integers(2**62))
        (model.set_dropout_seed if self.train_vision else model._core.set_dropout_seed)(dropout_seed)
        for _ in range(steps):
            if pos >= n:
                order, pos = rng.permutation(n), 0
            batch = collate([client.train[i] for i in order[pos: pos + self.batch_size]], _pad_id(self.lm))
            pos += self.batch_size
            pixels = {key: batch[key] for key in PIXEL_KEYS if key in batch}
            if pixels:
                pixels["train_vision"] = self.train_vision
            loss = self.model.loss_and_grad(batch["input_ids"], batch["labels"], batch["attention_mask"], **pixels)
            if mu:
                loss += self._proximal(mu)
            opt.step()
            losses.append(loss)
        if self.keep_optimizer_state:
            self.client_state[client.client_id] = {k: np.array(v, copy=True) for k, v in opt.state_dict().items()}
        vector = model.lora_vector().copy()
        if self.dp is not None and self.dp.mode == "local":
            vector = local_dp_update(vector, self.global_vector, self.dp, rng)
        elif self.dp is not None and self.secure_aggregation is not None:
            # central DP under secure aggregation: the server cannot clip what it cannot see, so the client
            # clips its update to C (Flower's client-side fixed clipping) and the server adds z·C/m noise
            vector, _ = clip_update(vector, self.global_vector, self.dp.clipping_norm)
        return vector, float(np.mean(losses)), n

    def _proximal(self, mu: float) -> float:
        """FedProx's μ/2·‖w − w_t‖² over the whole federated vector, its gradient added to the LoRA gradients
        (buffer by buffer: the captioner's vector spans the language model's and the vision side's)."""
        pairs = (self.adapted.lora_buffers() if self.train_vision
                 else [(self.lm._core.lora_params(), self.lm._core.lora_grads())])
        term, start = 0.0, 0
        for params, grads in pairs:
            term += proximal_term(params, self.global_vector[start: start + params.size], mu, grads)
            start += params.size
        return term

    def _base_weight(self, module: str) -> np.ndarray:
        """The base weight (out, in) view under the adapter of `module` (a name from `lora_modules()`)."""
        if self.train_vision:
            return self.adapted.lora_base_weight(module)
        return self.lm.parameters()[module + ".weight"]

    def save_adapter(self, path: str | os.PathLike[str]) -> None:
        """The global adapter in PEFT's format (``save_adapter`` of the model: for a captioner the keys of
        ``Lfm2VlForConditionalGeneration``, tower and projector adapters included)."""
        self.adapted.set_lora_vector(self.global_vector)
        self.model.save_adapter(path)

    # -- one round ----------------------------------------------------------------------------------
    def sample(self, round_: int) -> list[FederatedClient]:
        """The clients that train in `round_` (a function of the seed and the round only)."""
        rng = np.random.default_rng([self.seed, round_, 7])
        k = max(1, int(round(self.fraction_fit * len(self.clients))))
        picked = sorted(rng.choice(len(self.clients), size=k, replace=False))
        return [self.clients[i] for i in picked]

    def _aggregate(self, round_: int, updates: list[tuple[np.ndarray, float]], ids: list):
        g = self.global_vector
        if self.secure_aggregation is not None:
            gone = set(self.dropouts(round_, ids)) if self.dropouts else set()
            inputs = {i: (updates[i][0] - g, secagg_weight(self.dp, updates[i][1])) for i in range(len(ids))}
            # a client lost during local training never sends its masked input: the others' shares of its
            # pairwise secrets let the server cancel its masks, so the sum is exactly the survivors'
            result = secagg_run_round(self.secure_aggregation, inputs,
                                      drop_after_share=[i for i, cid in enumerate(ids) if cid in gone],
                                      context=self.secagg_context(round_))
            return self.secure_aggregate(round_, result, ids)
        return self.strategy.aggregate_detailed(g, updates, round_)

    @staticmethod
    def secagg_context(round_: int) -> bytes:
        """What binds a round's secure-aggregation keys and shares to that round."""
        return f"round-{round_}".encode()

    def secure_aggregate(self, round_: int, result: SecAggResult, ids: list) -> AggregateResult:
        """The strategy's step on the survivors' mean delta, which is all secure aggregation reveals
        (secure-aggregation client k is `ids[k]`, the k-th sampled client). Under central DP the mean is
        of the survivors' client-clipped updates: the noise and the accountant count them, not one reply."""
        g = self.global_vector
        mean = g + result.mean  # the server only ever sees the masked sum of the deltas
        rnd = self.strategy.begin_round(g, round_)
        rnd.add(mean, float(result.total_examples), client=0)
        if isinstance(self.strategy, DifferentialPrivacy):
            rnd.contributors = len(result.survivors)
        res = rnd.finish()
        res.accepted = [ids[i] for i in result.survivors]
        return res

    def _refactorise(self, updates: list[tuple[np.ndarray, float]]) -> np.ndarray:
        """"exact": per module, ΔW = Σ p_k B_k A_k re-factorised to rank r by truncated SVD (B = U√S, A = √S Vᵀ)."""
        out = self.global_vector.copy()
        for m in self.adapted.lora_modules():
            r, fin, fout = m["r"], m["in_features"], m["out_features"]
            delta = _weighted_delta(m, updates)
            U, S, Vt = np.linalg.svd(delta, full_matrices=False)
            root = np.sqrt(S[:r])
            out[m["a_offset"]: m["a_offset"] + r * fin] = (root[:, None] * Vt[:r]).reshape(-1)
            out[m["b_offset"]: m["b_offset"] + fout * r] = (U[:, :r] * root[None, :]).reshape(-1)
        return out

    def _fold_residual(self, updates: list[tuple[np.ndarray, float]], new: np.ndarray) -> dict[str, np.ndarray]:
        """"fedex": per module, R = s·(Σ p_k B_k A_k − B A) with (B, A) from `new`, added to the base weight
        (and to `base_residual`). Returns this round's residuals in units of B A (R / s)."""
        folded, residuals = {}, {}
        for m in self.adapted.lora_modules():
            delta = _weighted_delta(m, updates)
            B, A = _lora_factors(m, new)
            delta -= B @ A
            residuals[m["module"]] = (m["scaling"] * delta).astype(np.float32)
            folded[m["module"]] = delta
        self.apply_base_residual(residuals)
        return folded

    def apply_base_residual(self, residual: Mapping[str, np.ndarray]) -> None:
        """Add FedEx residuals (module -> [out, in], already scaled) to the base weights: what a client of a
        deployment does with the server's `base_residual` on a freshly loaded base model."""
        for module, value in residual.items():
            if module not in self._pristine or self._pristine[module].shape != np.shape(value):
                raise ValueError(f"residual for {module!r} does not match an adapted base weight")
            kept = self.base_residual.get(module)
            value = np.asarray(value, np.float32)
            self.base_residual[module] = value.copy() if kept is None else kept + value
            self._base_weight(module)[...] = self._pristine[module] + self.base_residual[module]
        if self.model.inference_dtype != "fp32":  # a low-precision base re-rounds (and re-packs) what changed
            self.model.to_inference_dtype(self.model.inference_dtype)

    def aggregation_error(self, updates: list[tuple[np.ndarray, float]], new: np.ndarray,
                          folded: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
        """‖Σ p_k B_k A_k − B A‖_F / ‖Σ p_k B_k A_k‖_F per module, (B, A) taken from the new global vector
        (plus, under "fedex", the residual folded into the base this round)."""
        total = sum(w for _, w in updates)
        out = {}
        for m in self.adapted.lora_modules():
            r, fin, fout = m["r"], m["in_features"], m["out_features"]
            exact = np.zeros((fout, fin), np.float64)
            for vec, w in updates:
                A = vec[m["a_offset"]: m["a_offset"] + r * fin].reshape(r, fin)
                B = vec[m["b_offset"]: m["b_offset"] + fout * r].reshape(fout, r)
                exact += (w / total) * (B.astype(np.float64) @ A)
            A = new[m["a_offset"]: m["a_offset"] + r * fin].reshape(r, fin)
            B = new[m["b_offset"]: m["b_offset"] + fout * r].reshape(fout, r)
            approx = B.astype(np.float64) @ A
            if folded is not None:
                approx = approx + folded[m["module"]]
            norm = np.linalg.norm(exact)
            out[m["module"]] = float(np.linalg.norm(exact - approx) / norm) if norm > 0 else 0.0
        return out

    def local_dp_epsilon(self, ids: list) -> float:
        """Local DP's ε after this round (clients `ids`): every round a client trains, it releases its own
        update through a Gaussian mechanism (multiplier z, sensitivity C) on its own data, so ε is that of
        the client that has trained most often (no subsampling: q = 1)."""
        releases = Counter(str(c) for record in self.history for c in record.clients)
        releases.update(str(c) for c in ids)
        accountant = RDPAccountant()
        accountant.step(self.dp.noise_multiplier, 1.0, steps=max(releases.values()))
        return accountant.get_epsilon(self.dp.delta)

    def run_round(self) -> RoundRecord:
        round_ = self.round + 1
        t0 = time.perf_counter()
        sampled = self.sample(round_)
        updates, losses, ids = [], [], []
        for client in sampled:
            vector, loss, n = self.local_train(client, round_)
            updates.append((vector, float(n)))
            losses.append(loss)
            ids.append(client.client_id)
        return self.finish_round(round_, ids, updates, losses, t0)

    def finish_round(self, round_: int, ids: list, updates: list[tuple[np.ndarray, float]],
                     losses: list[float], t0: float, aggregate: AggregateResult | None = None) -> RoundRecord:
        """Server side of a round: aggregate the clients' (vector, num_examples) `updates`, install the new
        global adapter, evaluate, record and checkpoint. A Flower ServerApp calls exactly this; under secure
        aggregation it passes the protocol's `aggregate` and no individual updates (the aggregation error,
        which needs them, is then not reported)."""
        result = aggregate if aggregate is not None else self._aggregate(round_, updates, ids)
        new = result.parameters
        kept = [u for u, cid in zip(updates, ids) if cid in set(result.accepted)]
        folded = None
        if self.lora_aggregation == "exact":
            new = self._refactorise(kept)
        elif self.lora_aggregation == "fedex":
            folded = self._fold_residual(kept, new)
        error = self.aggregation_error(kept, new, folded) if kept else {}
        self.global_vector = np.ascontiguousarray(new, dtype=np.float32)
        self.adapted.set_lora_vector(self.global_vector)
        metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
        if self.dp is not None and self.dp.mode == "local":
            metrics.update(epsilon=self.local_dp_epsilon(ids), delta=self.dp.delta)
        per_client: dict[str, dict[str, float]] = {}
        if self.eval_fn is not None:
            scores: dict[str, list[float]] = {}
            for client in self.clients:
                client_scores = {k: float(v) for k, v in self.eval_fn(self.model, client).items()}
                if client_scores:
                    per_client[str(client.client_id)] = client_scores
                for k, v in client_scores.items():
                    scores.setdefault(k, []).append(v)
            metrics.update({f"eval_{k}": float(np.mean(v)) for k, v in scores.items()})
        vec_bytes = self.global_vector.nbytes
        up = (4 if self.secure_aggregation else vec_bytes // self.global_vector.size) * self.global_vector.size
        record = RoundRecord(round_, ids, float(np.mean(losses)), float(result.num_examples),
                             bytes_sent=vec_bytes * len(ids), bytes_received=up * len(result.accepted),
                             aggregation_error=error, rejected=[str(r) for r in result.rejected],
                             seconds=time.perf_counter() - t0, metrics=metrics, client_metrics=per_client)
        self.history.append(record)
        self.round = round_
        if self.output_dir is not None:
            self._save()
        return record

    def run(self, resume: bool = False) -> list[RoundRecord]:
        """Run the remaining rounds (after the checkpoint in output_dir when resume=True)."""
        if resume:
            self._load()
        bar = tqdm(total=self.rounds, initial=self.round, desc="federated rounds", disable=not self.progressbar)
        try:
            while self.round < self.rounds:
                rec = self.run_round()
                bar.update(1)
                bar.set_postfix(loss=f"{rec.train_loss:.4f}")
        finally:
            bar.close()
        return self.history

    # -- checkpoints --------------------------------------------------------------------------------
    def _save(self) -> None:
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=".round."))
        try:
            arrays = {"global_vector": self.global_vector}
            for i, (cid, state) in enumerate(self.client_state.items()):
                for k, v in state.items():
                    arrays[f"client{i}.{k}"] = np.asarray(v)
            for module, residual in self.base_residual.items():
                arrays[f"residual.{module}"] = residual
            np.savez(tmp / "state.npz", **arrays)
            meta = {"round": self.round, "client_ids": [str(c) for c in self.client_state],
                    "history": [r.__dict__ for r in self.history], "strategy": _strategy_state(self.strategy)}
            (tmp / "simulation.json").write_text(json.dumps(meta, default=float))
            final = out / "checkpoint"
            old = out / ".checkpoint.old"
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _load(self) -> None:
        if self.output_dir is None or not (self.output_dir / "checkpoint").is_dir():
            return
        folder = self.output_dir / "checkpoint"
        meta = json.loads((folder / "simulation.json").read_text())
        ids_by_str = {str(c.client_id): c.client_id for c in self.clients}
        with np.load(folder / "state.npz") as state:
            self.global_vector = state["global_vector"].copy()
            self.client_state = {}
            for i, cid in enumerate(meta["client_ids"]):
                keys = [k for k in state.files if k.startswith(f"client{i}.")]
                self.client_state[ids_by_str[cid]] = {k.split(".", 1)[1]: state[k].copy() for k in keys}
            residual = {k.split(".", 1)[1]: state[k].copy() for k in state.files if k.startswith("residual.")}
        self.round = int(meta["round"])
        self.history = [RoundRecord(**r) for r in meta["history"]]
        self.base_residual = {}
        self.apply_base_residual(residual)  # the base weights were loaded fresh, without the residuals
        _restore_strategy(self.strategy, meta["strategy"])
        self.adapted.set_lora_vector(self.global_vector)


def caption_eval_fn(max_new_tokens: int = 16, decode: Callable[[list[int]], str] | None = None,
                    metrics: Sequence[str] = ("Bleu", "CIDEr")) -> Callable[[Lfm2Model, FederatedClient], dict]:
    """An `eval_fn` that captions each client's held-out examples and scores them with the metrics module
    (the pycocoevalcap BLEU-1..4 and CIDEr-D). An example's prompt is its unscored prefix (labels −100), its
    reference caption the scored tokens up to the end token; greedy decoding writes the candidate. With
    `decode` (e.g. a tokenizer's decode) captions are scored as text through the PTB tokenizer, otherwise as
    space-separated token ids. An `Lfm2VlModel` captions held-out image + caption examples (from
    `Lfm2VlModel.caption_example`, tiles included) on its `caption` path: the example's image and prompt,
    greedy up to `max_new_tokens` or ``<|im_end|>``, captions and references decoded by its processor's
    tokenizer and scored as text (`decode` is for text-only models). Clients without held-out examples
    return {}."""
    from captionaura.generate import GenerationConfig
    from captionaura.metrics import evaluate

    def words(ids: Sequence[int]) -> str:
        return decode(list(ids)) if decode is not None else " ".join(str(int(t)) for t in ids)

    def until_end(ids: np.ndarray, stops: set[int]) -> list[int]:
        out = []
        for t in ids.tolist():
            if t in stops:
                break
            out.append(t)
        return out

    def split_example(client: FederatedClient, i: int, ex: Mapping) -> tuple[np.ndarray, np.ndarray]:
        """(prompt ids, caption labels): the unscored prefix and the scored tokens."""
        ids, labels = np.asarray(ex["input_ids"]), np.asarray(ex["labels"])
        scored = np.flatnonzero(labels != -100)
        if scored.size == 0:
            raise ValueError(f"client {client.client_id}: held-out example {i} has no caption tokens")
        return ids[: scored[0]].astype(np.int32), labels[scored]

    def caption_pairs(model: Lfm2VlModel, client: FederatedClient) -> tuple[dict, dict]:
        settings = model._caption_settings(None)  # ValueError without the processor
        settings = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False,
                                    eos_token_id=settings.eos_token_id, pad_token_id=settings.pad_token_id)
        stops = set(np.atleast_1d(settings.eos_token_id).tolist()) - {None}
        refs, cands = {}, {}
        for i, ex in enumerate(client.eval):
            prompt, caption = split_example(client, i, ex)
            features = model._features(prompt[None], ex.get("pixel_values"), ex.get("spatial_shapes"),
                                       ex.get("pixel_attention_mask"), train=False)
            if features[0] is None:
                raise ValueError(f"client {client.client_id}: held-out example {i} has no image")
            reference = until_end(caption, stops)
            refs[i] = [model.processor.tokenizer.decode(reference, skip_special_tokens=True).strip()]
            cands[i] = model._generate_caption(prompt, features, settings)
        return refs, cands

    def eval_fn(model: Lfm2Model, client: FederatedClient) -> dict[str, float]:
        if not client.eval:
            return {}
        if isinstance(model, Lfm2VlModel):
            refs, cands = caption_pairs(model, client)
            return {k: float(v) for k, v in evaluate(refs, cands, metrics=metrics, tokenize="ptb").scores.items()}
        eos = model.config.eos_token_id
        stops = set(eos if isinstance(eos, list) else [eos]) - {None}
        refs, cands = {}, {}
        for i, ex in enumerate(client.eval):
            prompt, caption = split_example(client, i, ex)
            new = model.generate(prompt[None, :], max_new_tokens=max_new_tokens, do_sample=False)
            refs[i] = [words(until_end(caption, stops))]
            cands[i] = words(until_end(np.asarray(new)[0], stops | {_pad_id(model)}))
        scores = evaluate(refs, cands, metrics=metrics, tokenize="ptb" if decode is not None else "none").scores
        return {k: float(v) for k, v in scores.items()}

    return eval_fn


def _inner(strategy: Strategy) -> Strategy:
    return strategy.strategy if isinstance(strategy, DifferentialPrivacy) else strategy


def _pad_id(model: Lfm2Model) -> int:
    return model.config.pad_token_id if model.config.pad_token_id is not None else 0


def _stable_id(client_id) -> int:
    return client_id if isinstance(client_id, int) else int.from_bytes(str(client_id).encode()[:8].ljust(8, b"\0"), "little")


def _strategy_state(strategy: Strategy) -> dict:
    """What a server strategy carries between rounds: the optimisers' public state (FedAdam's m_t/v_t and
    round count, FedAvgM's momentum) and, under DP, the clipping norm, the accountant and the noise RNG."""
    inner = _inner(strategy)
    state = {"inner": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(inner).items()
                       if not k.startswith("_") and isinstance(v, (np.ndarray, int, float, type(None)))}}
    if isinstance(strategy, DifferentialPrivacy):
        state["dp"] = {"clipping_norm": strategy.clipping_norm, "rdp": strategy.accountant.rdp.tolist(),
                       "history": strategy.accountant.history, "rng": strategy.rng.bit_generator.state}
    return state


def _restore_strategy(strategy: Strategy, state: dict) -> None:
    inner = _inner(strategy)
    for k, v in state["inner"].items():
        setattr(inner, k, np.asarray(v, dtype=np.float32) if isinstance(v, list) else v)
    if "dp" in state and isinstance(strategy, DifferentialPrivacy):
        dp = state["dp"]
        strategy.clipping_norm = dp["clipping_norm"]
        strategy.accountant.rdp = np.asarray(dp["rdp"])
        strategy.accountant.history = [tuple(h) for h in dp["history"]]
        strategy.rng.bit_generator.state = dp["rng"]


def _lora_factors(module: dict, vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B (out, r), A (r, in)) of one LoRA module inside a flat adapter vector, as float64."""
    r, fin, fout = module["r"], module["in_features"], module["out_features"]
    A = vec[module["a_offset"]: module["a_offset"] + r * fin].reshape(r, fin).astype(np.float64)
    B = vec[module["b_offset"]: module["b_offset"] + fout * r].reshape(fout, r).astype(np.float64)
    return B, A


def _weighted_delta(module: dict, updates: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Σ p_k B_k A_k of one module over the clients' adapter vectors, p_k = w_k / Σ w (float64, (out, in))."""
    total = sum(w for _, w in updates)
    delta = np.zeros((module["out_features"], module["in_features"]), np.float64)
    for vec, w in updates:
        B, A = _lora_factors(module, vec)
        delta += (w / total) * (B @ A)
    return delta
