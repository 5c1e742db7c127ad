"""Deployment on Flower (flwr ≥ 1.41: HTTP SuperLink, SuperNode authentication by registered EC keys).

The ServerApp and ClientApp below run the very code of the in-process `Simulation`: the ClientApp calls
`Simulation.local_train` on the site's own data and the ServerApp samples, aggregates (C kernels, LoRA-aware
aggregation, central DP, FedEx residuals) and checkpoints with `Simulation.sample` /
`Simulation.finish_round`, so a deployment with the same config and seeds ends on the same adapter as the
simulation. With ``secure_aggregation`` each round is the four SecAgg+ exchanges (`_secure_round`).

What leaves a site: the adapter vector (float32), its mean training loss and its number of examples (under
secure aggregation: public keys, encrypted shares, the masked vector with the masked example count, the loss
and the unmasking shares instead); and once, when the server asks which partition a node holds, the
partition id. Never a token id, a caption or a pixel.

The model folder (``model`` in the run config, or a site's node config) is an LFM2 or an LFM2-VL checkpoint
(`load_base_model`); a site's data file (`save_client_data`) holds its examples, for an image captioner with
the photos' tiles, and is read one example at a time.

Killing and resuming. The ServerApp checkpoints after every round (`Simulation`'s checkpoint in
``output_dir``: round, global adapter, strategy and DP state, FedEx residuals) and a run started with
``resume = true`` continues from it. Each site keeps its own state between rounds (its AdamW moments and step)
on its own disk (`SiteState`, the node config's ``state-dir``), keyed by the federation's id (kept in
``output_dir/federation.json``) and its partition id, so a new `flwr run`, on a new SuperLink and new
SuperNodes, ends on the adapter of the uninterrupted run:

    flwr run <app dir> <connection> --stream --run-config 'resume=true'

Start a federation by hand from the kits of ``captionaura provision --server-address HOST:PORT --out kits``:

    flower-superlink --ssl-ca-certfile kits/server/ca.crt --ssl-certfile kits/server/server.crt \\
        --ssl-keyfile kits/server/server.key --enable-supernode-auth \\
        --disable-runtime-dependency-installation --host HOST --port PORT
    flwr supernode register kits/client-0001/client.pub <connection>   # once per site (an operator step)
    flower-supernode --root-certificates kits/client-0001/ca.crt --superlink HOST:PORT \\
        --auth-supernode-private-key kits/client-0001/client.key \\
        --node-config 'partition-id=0 data="/site/data/client.npz" model="/site/lfm2"'
    flwr run <app dir written by write_app> <connection> --stream

`LocalFederation` does all of this on one machine (the integration test uses it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from captionaura._io import atomic_write, read_json, write_json_atomic
from captionaura.federated.client_data import check_client_data, load_client_data
from captionaura.federated.config import FederatedConfig, load_base_model, save_outputs
from captionaura.federated.dp import secagg_weight
from captionaura.federated.secagg import SecAggClient, SecAggServer
from captionaura.federated.simulation import FederatedClient, Simulation
from captionaura.federated.strategies import AggregateResult

server_app = ServerApp()
client_app = ClientApp()

ADAPTER = "adapter"
_CONFIG_KEYS = {f.name for f in fields(FederatedConfig)}
# run-config keys of the deployment itself (besides FederatedConfig's own)
DEPLOYMENT_DEFAULTS: dict[str, Any] = {"num_supernodes": 2, "reply_timeout": 600.0, "audit_dir": "",
                                       "resume": False}


def _split_run_config(run_config: Mapping[str, Any]) -> tuple[FederatedConfig, dict[str, Any]]:
    cfg = FederatedConfig.from_dict({k: v for k, v in run_config.items() if k in _CONFIG_KEYS})
    extra = dict(DEPLOYMENT_DEFAULTS)
    extra.update({k: v for k, v in run_config.items() if k not in _CONFIG_KEYS})
    return cfg, extra


def _vector_record(vector: np.ndarray) -> ArrayRecord:
    return ArrayRecord({ADAPTER: Array(np.ascontiguousarray(vector, dtype=np.float32))})


# -- server ------------------------------------------------------------------------------------------
@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    cfg, extra = _split_run_config(context.run_config)
    run_server(grid, cfg, num_supernodes=int(extra["num_supernodes"]), timeout=float(extra["reply_timeout"]),
               audit_dir=str(extra["audit_dir"]) or None, resume=bool(extra["resume"]))


def _wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {count} SuperNodes connected within {timeout:.0f} s")
        time.sleep(0.2)


def run_server(grid: Grid, cfg: FederatedConfig, num_supernodes: int, timeout: float = 600.0,
               audit_dir: str | None = None, resume: bool = False) -> Simulation:
    """The federated rounds over `grid`. The server holds the base model (to lay out the adapter and to
    re-factorise "exact" aggregates) but no client data. With `audit_dir`, every reply is saved there as
    received (what left the client), for inspection. `resume` continues from the checkpoint in
    ``cfg.output_dir`` (the sites reload their own state, see `SiteState`)."""
    nodes = _wait_for_nodes(grid, num_supernodes, timeout)
    # which partition (client id) each node holds: the simulation's sampling is over client ids
    queries = [Message(RecordDict({"config": ConfigRecord({"ask": "client-id"})}), dst_node_id=n,
                       message_type=MessageType.QUERY) for n in nodes]
    node_of: dict[int, int] = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        _audit(audit_dir, 0, reply)
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed the query: {reply.error.reason}")
        node_of[int(reply.content["config"]["client-id"])] = reply.metadata.src_node_id
    if len(node_of) != len(nodes):
        raise RuntimeError(f"{len(nodes)} SuperNodes but {len(node_of)} distinct partition ids")
    clients = [FederatedClient(cid, []) for cid in sorted(node_of)]
    sim = cfg.simulation(load_base_model(cfg.model, cfg.dtype), clients, progressbar=False)
    federation = _federation_id(cfg, resume)
    if resume:
        sim._load()
    for round_ in range(sim.round + 1, cfg.rounds + 1):
        t0 = time.perf_counter()
        sampled = [c.client_id for c in sim.sample(round_)]
        if sim.secure_aggregation is not None:
            aggregate, losses = _secure_round(grid, sim, round_, sampled, node_of, timeout, audit_dir, federation)
            sim.finish_round(round_, sampled, [], losses, t0, aggregate=aggregate)
            continue
        content = {"arrays": _vector_record(sim.global_vector),
                   "config": ConfigRecord({"server-round": round_, "federation": federation})}
        if sim.base_residual:  # FedEx-LoRA: the clients' base weights must carry the folded residuals
            content["residual"] = ArrayRecord({k: Array(v) for k, v in sim.base_residual.items()})
        messages = [Message(RecordDict(dict(content)), dst_node_id=node_of[cid], message_type=MessageType.TRAIN)
                    for cid in sampled]
        by_node = {}
        for reply in grid.send_and_receive(messages, timeout=timeout):
            _audit(audit_dir, round_, reply)
            by_node[reply.metadata.src_node_id] = reply
        ids, updates, losses = [], [], []
        for cid in sampled:  # the simulation's order, so the float64 sums add up in the same order
            reply = by_node.get(node_of[cid])
            if reply is None or reply.has_error():
                continue  # a lost client: the round goes on with the others
            metrics = reply.content["metrics"]
            updates.append((reply.content["arrays"][ADAPTER].numpy(), float(metrics["num-examples"])))
            losses.append(float(metrics["train_loss"]))
            ids.append(cid)
        if not updates:
            raise RuntimeError(f"round {round_}: no client replied")
        sim.finish_round(round_, ids, updates, losses, t0)
    if cfg.output_dir:
        save_outputs(Path(cfg.output_dir), sim)
    return sim


def _secure_round(grid: Grid, sim: Simulation, round_: int, sampled: list, node_of: dict[int, int],
                  timeout: float, audit_dir: str | None, federation: str) -> tuple[AggregateResult, list[float]]:
    """A round under secure aggregation: four message exchanges (train + public keys, encrypted shares,
    masked inputs, unmasking shares; see captionaura.federated.secagg). The server never sees a client's
    update or its number of examples, only the survivors' sum. Client k of the protocol is sampled[k]."""
    config = sim.secure_aggregation
    server = SecAggServer(config, list(range(len(sampled))), sim.global_vector.size, sim.secagg_context(round_))
    index_of = {node_of[cid]: k for k, cid in enumerate(sampled)}

    def exchange(stage: str, contents: Mapping[int, dict]) -> dict[int, Message]:
        messages = []
        for k, records in contents.items():
            head = ConfigRecord({"server-round": round_, "secagg-stage": stage, "secagg-id": k,
                                 "secagg-threshold": config.threshold, "federation": federation})
            messages.append(Message(RecordDict({"secagg": head, **records}), dst_node_id=node_of[sampled[k]],
                                    message_type=MessageType.TRAIN))
        replies = {}
        for reply in grid.send_and_receive(messages, timeout=timeout):
            _audit(audit_dir, round_, reply, stage)
            if not reply.has_error():  # a lost client: the protocol tolerates it down to the threshold
                replies[index_of[reply.metadata.src_node_id]] = reply
        return replies

    start = {"arrays": _vector_record(sim.global_vector)}
    keys = {k: (r.content["config"]["c-pk"], r.content["config"]["s-pk"])
            for k, r in exchange("setup", {k: start for k in range(len(sampled))}).items()}
    neighbour_keys = server.collect_public_keys(keys)
    shares = {}
    for k, r in exchange("share", {k: {"config": ConfigRecord({
            "ids": sorted(nk), "c-pks": [nk[v][0] for v in sorted(nk)], "s-pks": [nk[v][1] for v in sorted(nk)]})}
            for k, nk in neighbour_keys.items()}).items():
        shares[k] = dict(zip(r.content["config"]["to"], r.content["config"]["ct"]))
    inbox = server.route_shares(shares)
    masked, losses = {}, []
    for k, r in exchange("mask", {k: {"config": ConfigRecord({"from": sorted(box), "ct": [box[v] for v in sorted(box)]})}
                                  for k, box in inbox.items()}).items():
        masked[k] = r.content["arrays"]["masked"].numpy()
        losses.append(float(r.content["metrics"]["train_loss"]))
    survivors, dropped = server.collect_masked(masked)
    responses = {}
    for k, r in exchange("unmask", {k: {"config": ConfigRecord({"survivors": survivors, "dropped": dropped})}
                                    for k in survivors}).items():
        c = r.content["config"]
        responses[k] = {owner: (kind, int(x), int(y)) for owner, kind, x, y in zip(c["owners"], c["kinds"], c["xs"], c["ys"])}
    return sim.secure_aggregate(round_, server.unmask(responses), sampled), losses


def _federation_id(cfg: FederatedConfig, resume: bool) -> str:
    """The id under which the sites keep their state for this federation: a fresh one for a new run
    (written to ``output_dir/federation.json`` with the config), the saved one when resuming (which
    refuses a different config, the number of rounds and the folder aside)."""
    record = Path(cfg.output_dir) / "federation.json" if cfg.output_dir else None
    if resume:
        if record is None or not record.is_file():
            raise ValueError("resume needs the output_dir of the interrupted run (its federation.json)")
        saved = read_json(record, "federation record")
        changed = sorted(k for k, v in cfg.to_dict().items()
                         if k not in ("rounds", "output_dir") and saved["config"].get(k) != v)
        if changed:
            raise ValueError(f"cannot resume {cfg.output_dir}: the config differs in {changed}")
        return str(saved["federation"])
    federation = uuid.uuid4().hex
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, {"federation": federation, "config": cfg.to_dict()})
    return federation


def _audit(audit_dir: str | None, round_: int, reply: Message, stage: str = "") -> None:
    if not audit_dir or reply.has_error():
        return
    folder = Path(audit_dir) / f"round-{round_}-node-{reply.metadata.src_node_id}{'-' + stage if stage else ''}"
    folder.mkdir(parents=True, exist_ok=True)
    content = reply.content
    for name, record in content.array_records.items():
        for key, array in record.items():
            np.save(folder / f"{name}.{key}.npy", array.numpy(), allow_pickle=False)
    scalars = {name: dict(r) for name, r in list(content.metric_records.items()) + list(content.config_records.items())}
    (folder / "records.json").write_text(json.dumps(scalars, default=str))


# -- client ------------------------------------------------------------------------------------------
class SiteState:
    """A site's state between rounds (`Simulation.client_state`: its AdamW moments and step) on the site's
    own disk, so that it outlives the SuperNode, the SuperLink and the ServerApp:
    ``<folder>/<federation>/partition-<id>/round-<r>.npz``, written atomically (temp file, then rename) after
    every round the site trains. The state for round R is the newest saved before R: a server killed after
    the site trained round R, but before it checkpointed R, asks for round R again."""

    def __init__(self, folder: str | os.PathLike, federation: str, partition: int) -> None:
        if not re.fullmatch(r"[0-9a-f]{32}", federation):
            raise ValueError(f"federation id must be 32 hex digits, got {federation!r}")
        self.folder = Path(folder) / federation / f"partition-{int(partition)}"

    def _saved_rounds(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        names = (re.fullmatch(r"round-(\d+)\.npz", p.name) for p in self.folder.iterdir())
        return sorted(int(m.group(1)) for m in names if m)

    def _before(self, round_: int) -> int | None:
        return max((r for r in self._saved_rounds() if r < round_), default=None)

    def load(self, round_: int) -> dict[str, np.ndarray] | None:
        """The state the site held when round `round_` began (None before its first round)."""
        start = self._before(round_)
        if start is None:
            return None
        with np.load(self.folder / f"round-{start}.npz") as saved:
            return {k: saved[k].copy() for k in saved.files}

    def save(self, round_: int, state: Mapping[str, Any]) -> None:
        """Keep the state after round `round_`, and of the older ones only the state that round began from."""
        self.folder.mkdir(parents=True, exist_ok=True)
        start = self._before(round_)
        with atomic_write(self.folder / f"round-{round_}.npz") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in state.items()})
        for r in self._saved_rounds():
            if start is not None and r < start:
                (self.folder / f"round-{r}.npz").unlink(missing_ok=True)


def _site(context: Context, federation: str) -> tuple[FederatedConfig, FederatedClient, SiteState]:
    cfg, _ = _split_run_config(context.run_config)
    node = context.node_config
    if "data" not in node or "partition-id" not in node:
        raise ValueError("the SuperNode needs --node-config 'partition-id=<int> data=\"<client .npz>\"'")
    if "model" in node:  # a site may keep the base model elsewhere than the server
        cfg = cfg.replace(model=str(node["model"]))
    partition = int(node["partition-id"])
    # without a state-dir, the state goes next to the site's data
    folder = node.get("state-dir") or Path(str(node["data"])).parent / "captionaura-state"
    return (cfg, load_client_data(str(node["data"]), client_id=partition),
            SiteState(str(folder), federation, partition))


@client_app.query()
def _client_query(msg: Message, context: Context) -> Message:
    client_id = int(context.node_config["partition-id"])
    return Message(RecordDict({"config": ConfigRecord({"client-id": client_id})}), reply_to=msg)


@client_app.train()
def _client_train(msg: Message, context: Context) -> Message:
    head = msg.content["secagg" if "secagg" in msg.content else "config"]
    cfg, client, kept = _site(context, str(head["federation"]))
    if "secagg" in msg.content:
        return Message(_secagg_stage(cfg, client, kept, msg.content, context.state), reply_to=msg)
    residual = msg.content.array_records.get("residual")
    vector, loss, n = site_round(cfg, client, kept, msg.content["arrays"][ADAPTER].numpy(),
                                 int(msg.content["config"]["server-round"]),
                                 {k: a.numpy() for k, a in residual.items()} if residual is not None else None)
    reply = RecordDict({"arrays": _vector_record(vector),
                        "metrics": MetricRecord({"train_loss": float(loss), "num-examples": int(n)})})
    return Message(reply, reply_to=msg)


def site_round(cfg: FederatedConfig, client: FederatedClient, kept: SiteState, global_vector: np.ndarray,
               round_: int, base_residual: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, float, int]:
    """One site's local training as a one-client Simulation (same seeds, RNG streams and optimiser as
    in-process); the AdamW state lives between rounds in `kept`, on the site's disk. The base model is an
    image captioner when ``cfg.model`` is an LFM2-VL checkpoint (`load_base_model`), and the site's examples
    are checked against it first (`check_client_data`).
    `base_residual`: FedEx-LoRA's residuals, folded into the freshly loaded base first."""
    model = load_base_model(cfg.model, cfg.dtype)
    check_client_data(model, client)
    sim = cfg.simulation(model, [client], output_dir=None, progressbar=False)
    if base_residual:
        sim.apply_base_residual(base_residual)
    sim.global_vector = np.array(global_vector, dtype=np.float32, copy=True)
    saved = kept.load(round_)
    if saved is not None:
        sim.client_state[client.client_id] = saved
    vector, loss, n = sim.local_train(client, round_)
    if client.client_id in sim.client_state:
        kept.save(round_, sim.client_state[client.client_id])
    return vector, loss, n


def _secagg_stage(cfg: FederatedConfig, client: FederatedClient, kept: SiteState, content: RecordDict,
                  state: RecordDict) -> RecordDict:
    """The site's side of one secure-aggregation stage. Its update, number of examples and protocol secrets
    stay in the node's state between stages; only public keys, encrypted shares, the masked vector, the
    loss and (at the end) the shares the protocol allows leave the site."""
    head = content["secagg"]
    stage, round_ = str(head["secagg-stage"]), int(head["server-round"])
    config = dataclasses.replace(cfg.secagg_config(1), threshold=int(head["secagg-threshold"]))
    if stage == "setup":
        vector, loss, n = site_round(cfg, client, kept, content["arrays"][ADAPTER].numpy(), round_)
        state["secagg-delta"] = ArrayRecord({"delta": Array(vector - content["arrays"][ADAPTER].numpy())})
        protocol = SecAggClient(int(head["secagg-id"]), config, Simulation.secagg_context(round_))
        state["secagg"] = ConfigRecord({"client": protocol.to_state(), "loss": float(loss),
                                        "weight": secagg_weight(cfg.dp_config(1), n)})
        c_pk, s_pk = protocol.public_keys()
        return RecordDict({"config": ConfigRecord({"c-pk": c_pk, "s-pk": s_pk})})
    saved = state["secagg"]
    protocol = SecAggClient.from_state(str(saved["client"]), config)
    c = content["config"]
    if stage == "share":
        bundles = protocol.share_keys({v: (cp, sp) for v, cp, sp in zip(c["ids"], c["c-pks"], c["s-pks"])})
        reply = RecordDict({"config": ConfigRecord({"to": sorted(bundles), "ct": [bundles[v] for v in sorted(bundles)]})})
    elif stage == "mask":
        delta = state["secagg-delta"]["delta"].numpy()
        masked = protocol.masked_input(delta, int(saved["weight"]), dict(zip(c["from"], c["ct"])))
        reply = RecordDict({"arrays": ArrayRecord({"masked": Array(masked)}),
                            "metrics": MetricRecord({"train_loss": float(saved["loss"])})})
    elif stage == "unmask":
        shares = protocol.unmask_shares(c["survivors"], c["dropped"])
        owners = sorted(shares)
        reply = RecordDict({"config": ConfigRecord({
            "owners": owners, "kinds": [shares[o][0] for o in owners], "xs": [str(shares[o][1]) for o in owners],
            "ys": [str(shares[o][2]) for o in owners]})})
        del state["secagg-delta"]  # the round is over: the update is not kept
    else:
        raise ValueError(f"unknown secure-aggregation stage {stage!r}")
    state["secagg"] = ConfigRecord({**dict(saved), "client": protocol.to_state()})
    return reply


# -- the Flower app folder and a federation on this machine ----------------------------------------------
def write_app(app_dir: str | os.PathLike, cfg: FederatedConfig, **deployment: Any) -> Path:
    """Write a Flower app folder (pyproject.toml only: the code is this installed module) whose run
    config is `cfg` plus the deployment keys (num_supernodes, reply_timeout, audit_dir, resume)."""
    values = dict(DEPLOYMENT_DEFAULTS)
    unknown = set(deployment) - set(values)
    if unknown:
        raise ValueError(f"unknown deployment keys {sorted(unknown)}; known: {sorted(values)}")
    values.update(deployment)
    values.update(cfg.to_dict())
    lines = ["[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
             "[project]", 'name = "captionaura-federated"', 'version = "1.0.0"',
             'description = "Federated LoRA captioning with captionaura"', 'license = "Apache-2.0"',
             "dependencies = []", "", "[tool.flwr.app]", 'publisher = "captionaura"', "",
             "[tool.flwr.app.components]", 'serverapp = "captionaura.flower:server_app"',
             'clientapp = "captionaura.flower:client_app"', "", "[tool.flwr.app.config]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    folder = Path(app_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return folder


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalFederation:
    """A SuperLink and SuperNodes on this machine, started from provisioned kits with TLS and SuperNode
    authentication. Every process it starts (and their children: SuperExec, ServerApp, ClientApps) carries a
    marker in its environment, and `close()` kills exactly those, whatever happened.

        with LocalFederation(kits, workdir) as fed:
            fed.start_superlink()
            for i, name in enumerate(names): fed.register(name); fed.start_supernode(name, {...})
            fed.run(app_dir)
    """

    def __init__(self, kits: str | os.PathLike, workdir: str | os.PathLike) -> None:
        self.kits, self.workdir = Path(kits), Path(workdir)
        manifest = json.loads((self.kits / "manifest.json").read_text())
        self.address = manifest["server_address"]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.marker = uuid.uuid4().hex
        home = self.workdir / "flwr-home"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "captionaura"\n\n[superlink.captionaura]\n'
            f'address = "{self.address}"\nroot-certificates = "{(self.kits / "server" / "ca.crt").resolve()}"\n')
        bindir = str(Path(sys.executable).parent)
        self.env = dict(os.environ, FLWR_HOME=str(home), PATH=bindir + os.pathsep + os.environ.get("PATH", ""),
                        FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", NO_COLOR="1",
                        CAPTIONAURA_FEDERATION=self.marker)
        self.processes: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, argv: Sequence[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                cwd=self.workdir, start_new_session=True)
        log.close()
        self.processes[name] = proc
        return proc

    def log(self, name: str) -> str:
        p = self.workdir / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def start_superlink(self, timeout: float = 60.0) -> None:
        host, _, port = self.address.rpartition(":")
        srv = self.kits / "server"
        self._start("superlink", [
            "flower-superlink", "--ssl-ca-certfile", str(srv / "ca.crt"), "--ssl-certfile", str(srv / "server.crt"),
            "--ssl-keyfile", str(srv / "server.key"), "--enable-supernode-auth",
            "--disable-runtime-dependency-installation", "--host", host, "--port", port])
        deadline = time.monotonic() + timeout
        while "Uvicorn running on https://" not in self.log("superlink"):
            if self.processes["superlink"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the SuperLink did not start:\n{self.log('superlink')[-3000:]}")
            time.sleep(0.1)

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run the `flwr` CLI against this federation's SuperLink."""
        return subprocess.run(["flwr", *args], env=self.env, cwd=self.workdir, capture_output=True, text=True,
                              timeout=timeout, start_new_session=True)

    def register(self, client: str) -> None:
        """Admit a site's node-authentication public key (`flwr supernode register`)."""
        res = self.flwr("supernode", "register", str(self.kits / client / "client.pub"), "captionaura")
        if res.returncode != 0 or "registered successfully" not in res.stdout:
            raise RuntimeError(f"registering {client} failed:\n{res.stdout}\n{res.stderr}")

    def start_supernode(self, client: str, node_config: Mapping[str, Any], private_key: str | None = None,
                        max_retries: int | None = None, name: str | None = None) -> subprocess.Popen:
        """Start `client`'s SuperNode (its kit's CA and key unless `private_key` is given); its log is
        `log(name or client)`."""
        key = private_key or str(self.kits / client / "client.key")
        config = " ".join(f"{k}={_toml_value(v)}" for k, v in node_config.items())
        argv = ["flower-supernode", "--root-certificates", str(self.kits / client / "ca.crt"),
                "--superlink", self.address, "--auth-supernode-private-key", key,
                "--node-config", config, "--port", str(free_port())]
        if max_retries is not None:
            argv += ["--max-retries", str(max_retries)]
        return self._start(name or client, argv)

    def run(self, app_dir: str | os.PathLike, timeout: float = 600.0) -> str:
        """`flwr run` the app and stream its logs until the run ends; returns the output."""
        res = self.flwr("run", str(app_dir), "captionaura", "--stream", timeout=timeout)
        out = res.stdout + res.stderr
        if res.returncode != 0 or "ServerApp raised an exception" in out:
            raise RuntimeError(f"flwr run failed:\n{out[-6000:]}")
        return out

    def _marked_pids(self) -> list[int]:
        pids = []
        needle = f"CAPTIONAURA_FEDERATION={self.marker}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def close(self) -> None:
        for proc in self.processes.values():  # our own process groups first, politely
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.processes.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for pid in self._marked_pids():  # detached children (SuperExec, app processes)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> "LocalFederation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
