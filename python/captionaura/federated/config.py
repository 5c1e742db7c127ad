"""One flat configuration for a federated LoRA run, shared by `captionaura train` (an in-process Simulation)
and the Flower deployment (`captionaura.flower`, where it travels as Flower's run config: flat scalars).

    cfg = FederatedConfig.from_file("run.toml")       # or .json, or FederatedConfig(model=..., ...)
    sim = cfg.simulation(load_base_model(cfg.model, cfg.dtype), load_clients(cfg.data))

Client data on disk: one ``<client>.npz`` per client (`captionaura.federated.client_data`: token ids and
labels, and an image captioner's tiles), re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence


from captionaura._io import read_json, write_json_atomic
from captionaura.federated.client_data import (  # noqa: F401 (load_client_data, save_client_data re-exported)
    check_client_data,
    load_client_data,
    load_clients,
    save_client_data,
)
from captionaura.federated.dp import DPConfig
from captionaura.federated.secagg import SecAggConfig
from captionaura.federated.simulation import FederatedClient, Simulation, caption_eval_fn
from captionaura.federated.strategies import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)
from captionaura.lora import LoraConfig
from captionaura.model import Lfm2Model
from captionaura.optim import AdamWConfig
from captionaura.vl import Lfm2VlModel

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad,
    "fedavgm": FedAvgM, "fedmedian": FedMedian, "fedtrimmedavg": FedTrimmedAvg, "krum": Krum,
    "multikrum": MultiKrum, "bulyan": Bulyan,
}


@dataclass
class FederatedConfig:
    """Everything a federated run needs besides the model weights and the clients' data.

    ``local_steps`` > 0 trains that many batches per round, else ``local_epochs`` passes over the client's
    data. ``strategy_args`` are the strategy's own parameters (e.g. ``{"eta": 0.01}`` for FedAdam), a
    mapping or its JSON text. ``dp_noise_multiplier`` > 0 turns differential privacy on (``dp_mode``
    "central": clip on the server and add noise to the mean; "local": each client noises its own update).
    ``secagg_threshold`` 0 means two thirds of the sampled clients (at least 2). ``eval_max_new_tokens`` > 0
    captions every client's held-out examples after each round and records its BLEU/CIDEr
    (`caption_eval_fn`). ``dtype`` "bf16" trains on bf16 base weights (mixed precision, ``to_inference_dtype``:
    about twice the fp32 rate on CPUs with AVX512-BF16); the adapters and what clients send stay fp32."""

    model: str = ""
    data: str = ""
    output_dir: str = ""
    rounds: int = 5
    local_steps: int = 10
    local_epochs: int = 0
    batch_size: int = 8
    fraction_fit: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 0.0
    lora_r: int = 8
    lora_alpha: float = 16.0
    target_modules: str = "q_proj,k_proj,v_proj,out_proj,in_proj,w1,w2,w3"
    lora_aggregation: str = "naive"
    strategy: str = "fedavg"
    strategy_args: str = "{}"
    secure_aggregation: bool = False
    secagg_threshold: int = 0
    secagg_clipping_range: float = 8.0
    secagg_max_weight: float = 1000.0
    secagg_stochastic_rounding: bool = True
    dp_noise_multiplier: float = 0.0
    dp_clipping_norm: float = 1.0
    dp_mode: str = "central"
    dp_delta: float = 1e-5
    keep_optimizer_state: bool = True
    eval_max_new_tokens: int = 0
    seed: int = 0
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype must be 'fp32' or 'bf16', got {self.dtype!r}")
        if not isinstance(self.strategy_args, str):
            self.strategy_args = json.dumps(dict(self.strategy_args))
        if self.strategy.lower() not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; one of {sorted(STRATEGIES)}")
        if self.rounds < 1 or self.batch_size < 1:
            raise ValueError("rounds and batch_size must be >= 1")
        if (self.local_steps > 0) == (self.local_epochs > 0):
            raise ValueError("give exactly one of local_steps > 0 and local_epochs > 0")
        if self.dp_mode not in ("central", "local"):
            raise ValueError(f"dp_mode must be 'central' or 'local', got {self.dp_mode!r}")
        strategy = self.make_strategy()  # bad JSON or unknown parameters fail here, not mid-run
        if self.secure_aggregation and not strategy.streaming:
            raise ValueError(f"{self.strategy} needs every client's update, which secure aggregation hides; "
                             "use a FedAvg-family strategy")
        if self.lora_aggregation in ("exact", "fedex") and self.secure_aggregation:
            raise ValueError(f"lora_aggregation={self.lora_aggregation!r} needs each client's B_k A_k, which "
                             "secure aggregation hides")
        if self.lora_aggregation == "fedex" and self.dp_noise_multiplier > 0:
            raise ValueError("lora_aggregation='fedex' would bypass differential privacy")

    # -- loading --------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "FederatedConfig":
        """Build from a mapping; keys may use '-' (Flower's run-config style) or '_'."""
        names = {f.name for f in fields(cls)}
        kwargs = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ValueError(f"unknown federated config key {key!r}; known: {sorted(names)}")
            kwargs[name] = value
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "FederatedConfig":
        """Read a .toml or .json file (a flat table; `strategy_args` may be a sub-table)."""
        p = Path(path)
        if p.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            return cls.from_dict(tomllib.loads(p.read_text()))
        if p.suffix == ".json":
            return cls.from_dict(json.loads(p.read_text()))
        raise ValueError(f"config file must end in .toml or .json, got {p.name}")

    def to_dict(self) -> dict[str, Any]:
        """Flat scalars only (Flower's run config accepts bool, int, float and str values)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "FederatedConfig":
        return dataclasses.replace(self, **changes)

    # -- the objects it describes --------------------------------------------------------------------
    def lora_config(self) -> LoraConfig:
        targets = [t.strip() for t in self.target_modules.split(",") if t.strip()]
        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, target_modules=targets)

    def optimizer_config(self) -> AdamWConfig:
        return AdamWConfig(lr=self.lr, weight_decay=self.weight_decay)

    def strategy_kwargs(self) -> dict[str, Any]:
        kwargs = json.loads(self.strategy_args or "{}")
        if not isinstance(kwargs, dict):
            raise ValueError(f"strategy_args must be a JSON object, got {self.strategy_args!r}")
        allowed = {f.name for f in fields(STRATEGIES[self.strategy.lower()]) if f.init}
        unknown = set(kwargs) - allowed
        if unknown:
            raise ValueError(f"{self.strategy} has no parameter(s) {sorted(unknown)}; it takes {sorted(allowed)}")
        return kwargs

    def make_strategy(self) -> Strategy:
        return STRATEGIES[self.strategy.lower()](**self.strategy_kwargs())

    def secagg_config(self, num_sampled: int) -> SecAggConfig | None:
        if not self.secure_aggregation:
            return None
        threshold = self.secagg_threshold or max(2, -(-2 * num_sampled // 3))
        return SecAggConfig(threshold=threshold, clipping_range=self.secagg_clipping_range,
                            max_weight=self.secagg_max_weight, stochastic_rounding=self.secagg_stochastic_rounding)

    def dp_config(self, population: int) -> DPConfig | None:
        if self.dp_noise_multiplier <= 0:
            return None
        return DPConfig(noise_multiplier=self.dp_noise_multiplier, clipping_norm=self.dp_clipping_norm,
                        mode=self.dp_mode, population=population, delta=self.dp_delta)

    def simulation(self, model: Lfm2Model | Lfm2VlModel, clients: Sequence[FederatedClient], **overrides: Any) -> Simulation:
        """The Simulation this config describes (`overrides` go straight to Simulation, e.g. eval_fn)."""
        num_sampled = max(1, int(round(self.fraction_fit * len(clients))))
        kwargs: dict[str, Any] = dict(
            strategy=self.make_strategy(), rounds=self.rounds,
            local_steps=self.local_steps if self.local_steps > 0 else None,
            local_epochs=self.local_epochs if self.local_epochs > 0 else None,
            batch_size=self.batch_size, fraction_fit=self.fraction_fit, optimizer=self.optimizer_config(),
            lora_aggregation=self.lora_aggregation, secure_aggregation=self.secagg_config(num_sampled),
            dp=self.dp_config(len(clients)), keep_optimizer_state=self.keep_optimizer_state,
            output_dir=self.output_dir or None, seed=self.seed,
            eval_fn=caption_eval_fn(self.eval_max_new_tokens) if self.eval_max_new_tokens > 0 else None)
        kwargs.update(overrides)
        return Simulation(model, clients, self.lora_config(), **kwargs)


def load_base_model(path: str | os.PathLike, dtype: str = "fp32") -> Lfm2Model | Lfm2VlModel:
    """The base model of a federated run: an image captioner (`Lfm2VlModel`) when the checkpoint folder's
    config.json has a vision_config (LFM2-VL), else a language model (`Lfm2Model`), its weights in `dtype`."""
    config = Path(path) / "config.json"
    if config.is_file() and "vision_config" in read_json(config, "config file"):
        return Lfm2VlModel.from_pretrained(path, dtype=dtype)
    return Lfm2Model.from_pretrained(path, dtype=dtype)


def run_training(cfg: FederatedConfig, num_clients: int | None = None, resume: bool = False,
                 progressbar: bool = True) -> Simulation:
    """`captionaura train`: the Simulation `cfg` describes, over the clients in `cfg.data` (the first
    `num_clients` of them), checkpointed after every round in `cfg.output_dir`; at the end the global
    adapter (PEFT format) and the history JSON are written there too. `resume` continues from the
    checkpoint, and refuses one made with a different config."""
    if not cfg.model or not cfg.data or not cfg.output_dir:
        raise ValueError("model, data and output_dir are required")
    clients = load_clients(cfg.data)
    if num_clients is not None:
        if not 1 <= num_clients <= len(clients):
            raise ValueError(f"{cfg.data} holds {len(clients)} clients, asked for {num_clients}")
        clients = clients[:num_clients]
    out = Path(cfg.output_dir)
    saved = out / "config.json"
    settings = {**cfg.to_dict(), "num_clients": len(clients)}
    if resume and saved.exists():
        before = json.loads(saved.read_text())
        changed = sorted(k for k in settings if k != "rounds" and before.get(k) != settings[k])
        if changed:
            raise ValueError(f"cannot resume {out}: the config differs in {changed}")
    elif not resume and (out / "checkpoint").exists():
        raise ValueError(f"{out} already holds a checkpoint; pass resume=True (--resume) or use another folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(saved, settings)
    model = load_base_model(cfg.model, cfg.dtype)
    for client in clients:
        check_client_data(model, client)
    sim = cfg.simulation(model, clients, progressbar=progressbar)
    sim.run(resume=resume)
    save_outputs(out, sim)
    return sim


def save_outputs(out: Path, sim: Simulation) -> None:
    """The run's results in `out`: the global adapter (PEFT format), history.json and, under FedEx-LoRA,
    the base model with the residuals folded in (``base/``: the adapter applies to that base)."""
    sim.save_adapter(out / "adapter")
    write_history(out / "history.json", sim)
    if sim.base_residual:
        sim.model.save_pretrained(out / "base")


def write_history(path: Path, sim: Simulation) -> None:
    """The per-round records as a JSON list (atomically)."""
    write_json_atomic(path, json.loads(json.dumps([r.__dict__ for r in sim.history], default=float)))
