"""captionaura.federated: the federated core on flat float32 update vectors.

- strategies (Flower names, parameters and math, C kernels): FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad,
  FedAvgM, FedMedian, FedTrimmedAvg, Krum/MultiKrum, Bulyan; streaming rounds via `begin_round`;
- update validation (`UpdateRejected`, `Rejection`, `NoValidUpdatesError`);
- differential privacy (`DPConfig`, `DifferentialPrivacy` wrapper, client-side clipping/local noise) and an
  RDP accountant (`RDPAccountant`);
- secure aggregation (SecAgg+-style, `captionaura.federated.secagg`);
- provisioning of per-site startup kits (`provision`);
- the in-process federated LoRA driver (`Simulation`, `FederatedClient`).
"""

from __future__ import annotations

from captionaura.federated._vectors import (
    NoValidUpdatesError,
    Rejection,
    UpdateRejected,
    WeightedAccumulator,
)
from captionaura.federated.accountant import RDPAccountant, compute_rdp, rdp_to_dp
from captionaura.federated.dp import (
    DifferentialPrivacy,
    DPConfig,
    add_gaussian_noise,
    clip_update,
    local_dp_update,
)
from captionaura.federated.provision import ProvisionResult, provision
from captionaura.federated.secagg import (
    SecAggClient,
    SecAggConfig,
    SecAggError,
    SecAggResult,
    SecAggServer,
    run_round as secagg_run_round,
)
from captionaura.federated.simulation import FederatedClient, RoundRecord, Simulation, caption_eval_fn
from captionaura.federated.strategies import (
    AggregateResult,
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
    RoundAggregator,
    Strategy,
    pairwise_sq_distances,
    proximal_term,
)

__all__ = [
    "FederatedClient", "RoundRecord", "Simulation", "caption_eval_fn",
    "DPConfig", "DifferentialPrivacy", "RDPAccountant", "add_gaussian_noise", "clip_update", "compute_rdp",
    "local_dp_update", "rdp_to_dp",
    "ProvisionResult", "provision",
    "SecAggClient", "SecAggConfig", "SecAggError", "SecAggResult", "SecAggServer", "secagg_run_round",
    "AggregateResult", "Bulyan", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedMedian", "FedProx",
    "FedTrimmedAvg", "FedYogi", "Krum", "MultiKrum", "NoValidUpdatesError", "Rejection", "RoundAggregator",
    "Strategy", "UpdateRejected", "WeightedAccumulator", "pairwise_sq_distances", "proximal_term",
]
