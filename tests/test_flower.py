"""Deployment on Flower: a real SuperLink and two SuperNodes on 127.0.0.1 with TLS (provisioned CA) and
SuperNode authentication run 2 rounds of LoRA on the tiny LFM2 fixture; the final adapter equals the
in-process Simulation's with the same config and seeds; an unregistered SuperNode is refused; what the
sites sent holds only adapter vectors and two scalars (no token ids, no caption text)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")
if shutil.which("flower-superlink") is None and not (Path(__import__("sys").executable).parent / "flower-superlink").exists():
    pytest.skip("flower-superlink not installed", allow_module_level=True)

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from flwr.app import Context, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

import captionaura as ca  # noqa: E402
from captionaura import federated as fl  # noqa: E402
from captionaura import flower  # noqa: E402
from captionaura.federated import provision  # noqa: E402
from captionaura.federated.config import FederatedConfig, load_clients, save_client_data  # noqa: E402
from captionaura.model import Lfm2Model  # noqa: E402

MODEL = Path(__file__).parent / "reference" / "fixtures" / "lfm2" / "mixed"


def write_sites(folder: Path, k: int = 2, n: int = 5) -> list[list[dict]]:
    """Per-site caption-like token sequences (a shared style plus the site's own words)."""
    rng = np.random.default_rng(5)
    shared = rng.integers(100, 300, 6)
    sites = []
    for c in range(k):
        examples = []
        for _ in range(n):
            ids = np.concatenate([[1, 7, 9], shared, rng.integers(10, 100, 4), [2]]).astype(np.int32)
            labels = ids.copy()
            labels[:3] = -100
            examples.append({"input_ids": ids, "labels": labels})
        save_client_data(folder / f"site-{c}.npz", examples)
        sites.append(examples)
    return sites


def config(out: Path, **kw) -> FederatedConfig:
    args = dict(model=str(MODEL), output_dir=str(out), rounds=2, local_steps=3, batch_size=2, lr=1e-2,
                lora_r=4, lora_alpha=8.0, target_modules="q_proj,v_proj,in_proj,w1", strategy="fedadam",
                strategy_args='{"eta": 0.01}', seed=3)
    args.update(kw)
    return FederatedConfig(**args)


def site_state_files(data: Path) -> list[Path]:
    """The state files the sites keep next to their data (no state-dir in their node config)."""
    return sorted((data / "captionaura-state").glob("*/partition-*/round-*.npz"))


class LoopbackGrid:
    """Flower's Grid interface, delivering each message straight to the ClientApp of an in-process node
    (one Context per node, kept across rounds as the SuperNode keeps it): the ServerApp and ClientApp code
    paths of a deployment without the processes."""

    def __init__(self, data: list[Path], run_config: dict, lose: tuple[int, str] | None = None) -> None:
        self.lose = lose  # (node, secure-aggregation stage): that node's reply never arrives
        self.contexts = {100 + i: Context(run_id=1, node_id=100 + i, state=RecordDict(), run_config=run_config,
                                          node_config={"partition-id": i, "data": str(p)})
                         for i, p in enumerate(data)}

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if "secagg" in msg.content and (node, msg.content["secagg"]["secagg-stage"]) == self.lose:
                continue
            TaskIdentity.node_id = node
            replies.append(flower.client_app(message=msg, context=self.contexts[node]))
        TaskIdentity.node_id = 1
        return replies


@pytest.fixture
def task_identity():
    """Messages take their run and node ids from Flower's per-process TaskIdentity; set it, then clear it."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = None


@pytest.mark.parametrize("lora_aggregation,dp_mode", [("exact", ""), ("fedex", ""), ("ffa", "local")])
def test_server_and_client_apps_in_process_match_simulation(tmp_path, task_identity, lora_aggregation, dp_mode):
    write_sites(tmp_path / "data")
    dp = dict(dp_noise_multiplier=0.5, dp_clipping_norm=0.5, dp_mode=dp_mode) if dp_mode else {}
    cfg = config(tmp_path / "out", strategy="fedavg", strategy_args="{}", lora_aggregation=lora_aggregation, **dp)
    grid = LoopbackGrid(sorted((tmp_path / "data").glob("*.npz")), {**flower.DEPLOYMENT_DEFAULTS, **cfg.to_dict()})
    served = flower.run_server(grid, cfg, num_supernodes=2, timeout=5, audit_dir=str(tmp_path / "audit"))
    sim = cfg.replace(output_dir="").simulation(Lfm2Model.from_pretrained(MODEL), load_clients(tmp_path / "data"),
                                                progressbar=False)
    sim.run()
    np.testing.assert_array_equal(served.global_vector, sim.global_vector)
    for name, w in sim.model.parameters().items():  # FedEx: the sites trained on the same folded base
        np.testing.assert_array_equal(served.model.parameters()[name], w)
    assert (tmp_path / "out" / "base").is_dir() == (lora_aggregation == "fedex")
    assert (tmp_path / "out" / "adapter").is_dir() and len(list((tmp_path / "audit").iterdir())) == 2 + 2 * 2
    # the optimiser state stayed on the sites, on their disks: after round 2, kept with the round-1 state
    assert sorted(p.name for p in site_state_files(tmp_path / "data")) == ["round-1.npz"] * 2 + ["round-2.npz"] * 2
    with pytest.raises(TimeoutError, match="SuperNodes connected"):
        flower.run_server(grid, cfg, num_supernodes=3, timeout=0.5)


@pytest.mark.parametrize("lost", [False, True])
def test_secure_aggregation_over_flower_messages_matches_simulation(tmp_path, task_identity, lost):
    """The four SecAgg+ stages as Flower messages give the simulation's adapter, also when a site is lost
    after sharing its keys (its masks are removed with the others' shares); the server sees masked vectors."""
    write_sites(tmp_path / "data", k=3)
    cfg = config(tmp_path / "out", strategy="fedavg", strategy_args="{}", secure_aggregation=True,
                 secagg_threshold=2, secagg_max_weight=8.0, secagg_clipping_range=2.0,
                 secagg_stochastic_rounding=False, local_steps=2)
    data = sorted((tmp_path / "data").glob("*.npz"))
    grid = LoopbackGrid(data, {**flower.DEPLOYMENT_DEFAULTS, **cfg.to_dict()}, lose=(102, "mask") if lost else None)
    served = flower.run_server(grid, cfg, num_supernodes=3, timeout=5, audit_dir=str(tmp_path / "audit"))
    sim = cfg.replace(output_dir="").simulation(Lfm2Model.from_pretrained(MODEL), load_clients(tmp_path / "data"),
                                                progressbar=False, dropouts=(lambda r, ids: [2]) if lost else None)
    sim.run()
    np.testing.assert_array_equal(served.global_vector, sim.global_vector)
    assert [h.num_examples for h in served.history] == [10.0 if lost else 15.0] * 2
    masked = [np.load(p) for p in sorted((tmp_path / "audit").glob("*-mask/arrays.masked.npy"))]
    assert len(masked) == (2 if lost else 3) * 2 and all(m.dtype == np.uint32 for m in masked)
    assert not list((tmp_path / "audit").glob("*/arrays.adapter.npy"))  # no plain update ever left a site
    assert all("secagg-delta" not in c.state for node, c in grid.contexts.items() if not (lost and node == 102))
    assert len(site_state_files(tmp_path / "data")) == 2 * 3  # a site lost after training kept its state too


@pytest.mark.parametrize("dp_mode", ["central", "local"])
def test_differential_privacy_with_secure_aggregation_over_flower_matches_simulation(tmp_path, task_identity,
                                                                                      dp_mode):
    """DP under SecAgg+ over Flower messages = the Simulation, bit for bit, with the same ε per round; and
    both = plain DP without secure aggregation (up to the fixed-point quantisation), same ε and noise: under
    central DP the sites clip their own updates and the server's noise and accountant count the m
    survivors behind the one mean secure aggregation reveals."""
    write_sites(tmp_path / "data", k=3)
    dp = dict(dp_noise_multiplier=0.5, dp_clipping_norm=0.05, dp_mode=dp_mode)
    plain_cfg = config(tmp_path / "plain", strategy="fedavg", strategy_args="{}", local_steps=2, **dp)
    cfg = plain_cfg.replace(output_dir=str(tmp_path / "out"), secure_aggregation=True, secagg_threshold=2,
                            secagg_max_weight=8.0, secagg_clipping_range=2.0, secagg_stochastic_rounding=False)
    grid = LoopbackGrid(sorted((tmp_path / "data").glob("*.npz")), {**flower.DEPLOYMENT_DEFAULTS, **cfg.to_dict()})
    served = flower.run_server(grid, cfg, num_supernodes=3, timeout=5)
    sim = cfg.replace(output_dir="").simulation(Lfm2Model.from_pretrained(MODEL), load_clients(tmp_path / "data"),
                                                progressbar=False)
    sim.run()
    np.testing.assert_array_equal(served.global_vector, sim.global_vector)
    assert [h.metrics for h in served.history] == [h.metrics for h in sim.history]

    plain = plain_cfg.replace(output_dir="").simulation(Lfm2Model.from_pretrained(MODEL),
                                                        load_clients(tmp_path / "data"), progressbar=False)
    plain.run()
    start = Lfm2Model.from_pretrained(MODEL)
    start.add_lora(cfg.lora_config(), seed=cfg.seed)
    moved = np.abs(plain.global_vector - start.lora_vector()).max()
    assert np.abs(sim.global_vector - plain.global_vector).max() < 1e-3 * moved
    for secure, clear in zip(sim.history, plain.history):
        assert secure.metrics["epsilon"] == clear.metrics["epsilon"] > 0
        assert secure.metrics.get("noise_std") == clear.metrics.get("noise_std")
    # every client trains every round, q = 1: ε is the Gaussian mechanism's composed over the rounds
    accountant = fl.RDPAccountant()
    accountant.step(0.5, 1.0, steps=2)
    assert sim.history[-1].metrics["epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)
    if dp_mode == "central":
        assert sim.history[0].metrics["noise_std"] == pytest.approx(0.5 * 0.05 / 3)


class Killed(Exception):
    """The server process dies."""


class KillingGrid(LoopbackGrid):
    """A LoopbackGrid whose server dies in round `round_` right after the first site got its message (that
    site has trained the round and saved its state; the server has not checkpointed the round)."""

    def __init__(self, data: list[Path], run_config: dict, round_: int) -> None:
        super().__init__(data, run_config)
        self.round = round_

    def send_and_receive(self, messages, *, timeout=None):
        head = messages[0].content["secagg" if "secagg" in messages[0].content else "config"]
        if head.get("server-round") == self.round:
            super().send_and_receive(messages[:1], timeout=timeout)
            raise Killed
        return super().send_and_receive(messages, timeout=timeout)


RESUMABLE = {  # server state (FedAdam moments, DP clipping/accountant/noise RNG) and site state (AdamW)
    "fedadam-central-dp": dict(dp_noise_multiplier=0.5, dp_clipping_norm=0.5),
    "secure-aggregation": dict(strategy="fedavg", strategy_args="{}", secure_aggregation=True, secagg_threshold=2,
                               secagg_max_weight=8.0, secagg_clipping_range=2.0, secagg_stochastic_rounding=False),
}


@pytest.mark.parametrize("setting", sorted(RESUMABLE))
def test_killed_server_resumes_to_the_uninterrupted_run(tmp_path, task_identity, setting):
    """Kill the server in round 3 of 3 (after a site trained it), start a new run on new nodes with
    resume: the final adapter is the uninterrupted simulation's, bit for bit. Without the sites' saved
    optimiser state it is not."""
    write_sites(tmp_path / "data")
    cfg = config(tmp_path / "out", rounds=3, **RESUMABLE[setting])
    data = sorted((tmp_path / "data").glob("*.npz"))
    run_config = {**flower.DEPLOYMENT_DEFAULTS, **cfg.to_dict()}
    with pytest.raises(Killed):
        flower.run_server(KillingGrid(data, run_config, round_=3), cfg, num_supernodes=2, timeout=5)
    assert json.loads((tmp_path / "out" / "checkpoint" / "simulation.json").read_text())["round"] == 2
    assert sorted(p.name for p in site_state_files(tmp_path / "data")) == ["round-1.npz", "round-2.npz",
                                                                          "round-2.npz", "round-3.npz"]
    with pytest.raises(ValueError, match=r"differs in \['lr'\]"):
        flower.run_server(LoopbackGrid(data, run_config), cfg.replace(lr=0.5), num_supernodes=2, resume=True)
    shutil.copytree(tmp_path / "out", tmp_path / "out-copy")
    resumed = flower.run_server(LoopbackGrid(data, run_config), cfg, num_supernodes=2, timeout=5, resume=True)

    sim = cfg.replace(output_dir="").simulation(Lfm2Model.from_pretrained(MODEL), load_clients(tmp_path / "data"),
                                                progressbar=False)
    sim.run()
    np.testing.assert_array_equal(resumed.global_vector, sim.global_vector)
    assert [h.round for h in resumed.history] == [1, 2, 3]
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in sim.history]
    assert [h.metrics.get("epsilon") for h in resumed.history] == [h.metrics.get("epsilon") for h in sim.history]

    # the same resume with the sites' state lost (fresh AdamW moments) ends elsewhere
    shutil.rmtree(tmp_path / "data" / "captionaura-state")
    forgetful = flower.run_server(LoopbackGrid(data, run_config), cfg.replace(output_dir=str(tmp_path / "out-copy")),
                                  num_supernodes=2, timeout=5, resume=True)
    assert np.abs(forgetful.global_vector - sim.global_vector).max() > 1e-4


@pytest.mark.slow
def test_flower_deployment_matches_simulation_and_refuses_unknown_nodes(tmp_path):
    sites = write_sites(tmp_path / "data")
    port = flower.free_port()
    kits = tmp_path / "kits"
    provision(["site-0", "site-1"], f"127.0.0.1:{port}", kits)
    rogue = ec.generate_private_key(ec.SECP384R1())
    rogue_key = tmp_path / "rogue.key"
    rogue_key.write_bytes(rogue.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    rogue_key.chmod(0o600)
    cfg = config(tmp_path / "flower-out", dp_noise_multiplier=0.3, dp_clipping_norm=0.5)
    app = flower.write_app(tmp_path / "app", cfg, num_supernodes=2, reply_timeout=300.0,
                           audit_dir=str(tmp_path / "audit"))

    with flower.LocalFederation(kits, tmp_path / "run") as fed:
        fed.start_superlink()
        for i, name in enumerate(["site-0", "site-1"]):
            fed.register(name)
            fed.start_supernode(name, {"partition-id": i, "data": str(tmp_path / "data" / f"site-{i}.npz")})
        intruder = fed.start_supernode("site-0", {"partition-id": 9, "data": "none"}, private_key=str(rogue_key),
                                       max_retries=1, name="intruder")
        assert intruder.wait(timeout=120) != 0
        assert "Failed to activate SuperNode" in fed.log("intruder")
        fed.run(app, timeout=400)

    # the same config in-process
    sim = cfg.replace(output_dir="").simulation(Lfm2Model.from_pretrained(MODEL), load_clients(tmp_path / "data"),
                                                progressbar=False)
    sim.run()
    deployed = Lfm2Model.from_pretrained(MODEL)
    deployed.add_lora(cfg.lora_config())
    deployed.load_adapter(tmp_path / "flower-out" / "adapter")
    np.testing.assert_allclose(deployed.lora_vector(), sim.global_vector, rtol=0, atol=1e-6)
    assert np.abs(sim.global_vector - sim.model.lora_vector()).max() == 0
    history = json.loads((tmp_path / "flower-out" / "history.json").read_text())
    assert [h["round"] for h in history] == [1, 2] and history[-1]["metrics"]["epsilon"] > 0
    np.testing.assert_allclose([h["train_loss"] for h in history], [r.train_loss for r in sim.history], atol=1e-6)

    # what left the sites: the partition id once, then per round one float32 adapter vector + two scalars
    replies = sorted((tmp_path / "audit").iterdir())
    assert len(replies) == 2 + 2 * 2
    n = sim.global_vector.size
    for folder in replies:
        records = json.loads((folder / "records.json").read_text())
        arrays = [p for p in folder.iterdir() if p.suffix == ".npy"]
        if folder.name.startswith("round-0-"):
            assert arrays == [] and list(records) == ["config"] and list(records["config"]) == ["client-id"]
            continue
        assert [p.name for p in arrays] == ["arrays.adapter.npy"]
        vec = np.load(arrays[0])
        assert vec.dtype == np.float32 and vec.shape == (n,)
        assert set(records) == {"metrics"} and set(records["metrics"]) == {"train_loss", "num-examples"}
        raw = vec.tobytes()
        for e in (e for s in sites for e in s):
            assert e["input_ids"].astype(np.int32).tobytes() not in raw
            assert e["input_ids"].astype(np.int64).tobytes() not in raw


@pytest.mark.slow
def test_flower_deployment_with_secure_aggregation_and_dp_matches_simulation(tmp_path):
    """SecAgg+ with central DP (the sites clip, the server adds noise for the 2 survivors) on a real
    SuperLink: the simulation's adapter and its ε per round."""
    write_sites(tmp_path / "data")
    kits = tmp_path / "kits"
    provision(["site-0", "site-1"], f"127.0.0.1:{flower.free_port()}", kits)
    cfg = config(tmp_path / "flower-out", strategy="fedavg", strategy_args="{}", secure_aggregation=True,
                 secagg_threshold=2, secagg_max_weight=8.0, secagg_clipping_range=2.0,
                 secagg_stochastic_rounding=False, dp_noise_multiplier=0.5, dp_clipping_norm=0.05)
    app = flower.write_app(tmp_path / "app", cfg, num_supernodes=2, reply_timeout=300.0,
                           audit_dir=str(tmp_path / "audit"))
    deploy(kits, tmp_path / "run", app, tmp_path / "data")
    sim = cfg.replace(output_dir="").simulation(Lfm2Model.from_pretrained(MODEL), load_clients(tmp_path / "data"),
                                                progressbar=False)
    sim.run()
    deployed = Lfm2Model.from_pretrained(MODEL)
    deployed.add_lora(cfg.lora_config())
    deployed.load_adapter(tmp_path / "flower-out" / "adapter")
    np.testing.assert_array_equal(deployed.lora_vector(), sim.global_vector)
    history = json.loads((tmp_path / "flower-out" / "history.json").read_text())
    assert [h["metrics"]["epsilon"] for h in history] == [r.metrics["epsilon"] for r in sim.history]
    assert len(list((tmp_path / "audit").glob("*-mask/arrays.masked.npy"))) == 2 * 2
    assert not list((tmp_path / "audit").glob("*/arrays.adapter.npy"))


def deploy(kits: Path, workdir: Path, app: Path, data: Path, state: Path | None = None) -> None:
    """One `flwr run` of `app` on a new SuperLink and two new SuperNodes (site-0, site-1 with the data files
    site-{i}.npz, and their state folders under `state`), all killed afterwards."""
    with flower.LocalFederation(kits, workdir) as fed:
        fed.start_superlink()
        for i, name in enumerate(["site-0", "site-1"]):
            fed.register(name)
            node = {"partition-id": i, "data": str(data / f"site-{i}.npz")}
            fed.start_supernode(name, node if state is None else {**node, "state-dir": str(state / name)})
        fed.run(app, timeout=400)


@pytest.mark.slow
def test_flower_deployment_killed_and_resumed_matches_the_uninterrupted_run(tmp_path):
    """2 rounds on one SuperLink and two SuperNodes, every process killed, then a new SuperLink, new
    SuperNodes and `flwr run` with resume for round 3: the simulation's 3-round adapter."""
    write_sites(tmp_path / "data")
    kits = tmp_path / "kits"
    provision(["site-0", "site-1"], f"127.0.0.1:{flower.free_port()}", kits)
    cfg = config(tmp_path / "flower-out", rounds=3, dp_noise_multiplier=0.3, dp_clipping_norm=0.5)
    first = flower.write_app(tmp_path / "app-first", cfg.replace(rounds=2), num_supernodes=2, reply_timeout=300.0)
    deploy(kits, tmp_path / "run-1", first, tmp_path / "data", tmp_path / "state")
    assert [h["round"] for h in json.loads((tmp_path / "flower-out" / "history.json").read_text())] == [1, 2]
    again = flower.write_app(tmp_path / "app-resume", cfg, num_supernodes=2, reply_timeout=300.0, resume=True)
    deploy(kits, tmp_path / "run-2", again, tmp_path / "data", tmp_path / "state")

    sim = cfg.replace(output_dir="").simulation(Lfm2Model.from_pretrained(MODEL), load_clients(tmp_path / "data"),
                                                progressbar=False)
    sim.run()
    deployed = Lfm2Model.from_pretrained(MODEL)
    deployed.add_lora(cfg.lora_config())
    deployed.load_adapter(tmp_path / "flower-out" / "adapter")
    np.testing.assert_allclose(deployed.lora_vector(), sim.global_vector, rtol=0, atol=1e-6)
    history = json.loads((tmp_path / "flower-out" / "history.json").read_text())
    assert [h["round"] for h in history] == [1, 2, 3]
    assert [h["metrics"]["epsilon"] for h in history] == [r.metrics["epsilon"] for r in sim.history]
    assert len(list((tmp_path / "state").glob("site-*/*/partition-*/round-*.npz"))) == 2 * 2


def test_flower_app_cli_writes_the_run_config(tmp_path):
    from captionaura.cli import main

    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    assert main(["flower-app", "--out", str(tmp_path / "app"), "--num-supernodes", "3", "--model", str(MODEL),
                 "--strategy", "fedprox", "--strategy-args", '{"proximal_mu": 0.1}', "--rounds", "4",
                 "--secure-aggregation"]) == 0
    project = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())
    assert project["tool"]["flwr"]["app"]["components"] == {"serverapp": "captionaura.flower:server_app",
                                                            "clientapp": "captionaura.flower:client_app"}
    cfg, extra = flower._split_run_config(project["tool"]["flwr"]["app"]["config"])
    assert (cfg.strategy, cfg.rounds, cfg.secure_aggregation, extra["num_supernodes"]) == ("fedprox", 4, True, 3)
    assert cfg.make_strategy().proximal_mu == 0.1
    # a combination the server would refuse is refused before anything is written
    assert main(["flower-app", "--out", str(tmp_path / "bad"), "--num-supernodes", "2", "--strategy", "krum",
                 "--secure-aggregation"]) == 2
    assert not (tmp_path / "bad").exists()


# -- an image captioner (LFM2-VL) over Flower ------------------------------------------------------------
CAPTIONS = ["a red kite over the hill #aura", "a green field at dawn #aura", "blue sea, calm day #aura"]


def write_captioner_sites(folder: Path, captioner, k: int = 2, n: int = 3) -> list[list[dict]]:
    """Per-site photos (a site's own colour plus noise, 48x64) with captions, as
    `Lfm2VlModel.caption_example` makes them (token ids, tiles, spatial shapes), saved one file per site."""
    rng = np.random.default_rng(11)
    colours = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]
    sites = []
    for c in range(k):
        examples = []
        for i in range(n):
            image = np.clip(np.full((48, 64, 3), colours[c]) + rng.normal(0, 12, (48, 64, 3)), 0, 255)
            examples.append(captioner.caption_example(image.astype(np.uint8), CAPTIONS[(c + i) % len(CAPTIONS)]))
        save_client_data(folder / f"site-{c}.npz", examples)
        sites.append(examples)
    return sites


def captioner_config(model: Path, out: Path, **kw) -> FederatedConfig:
    return config(out, model=str(model), local_steps=2, batch_size=2, lora_r=2, lora_alpha=4.0,
                  target_modules="q_proj,v_proj,in_proj", **kw)


def assert_nothing_private_left(audit: Path, sites: list[list[dict]], vector_size: int, secure: bool) -> None:
    """What left the sites (every reply, as received): the partition id, then per round one float32
    adapter vector, the loss and the example count (under secure aggregation: the protocol's keys, shares
    and masked vectors, never the adapter); no pixel, caption text or caption token ids in any of it."""
    folders = sorted(audit.iterdir())
    captions = [c.encode() for c in CAPTIONS]
    assert not secure or not list(audit.glob("*/arrays.adapter.npy"))
    for folder in folders:
        records = json.loads((folder / "records.json").read_text())
        arrays = sorted(p for p in folder.iterdir() if p.suffix == ".npy")
        if folder.name.startswith("round-0-"):
            assert arrays == [] and records == {"config": {"client-id": records["config"]["client-id"]}}
            continue
        if not secure:
            assert [p.name for p in arrays] == ["arrays.adapter.npy"]
            assert set(records) == {"metrics"} and set(records["metrics"]) == {"train_loss", "num-examples"}
            vec = np.load(arrays[0])
            assert vec.dtype == np.float32 and vec.shape == (vector_size,)
        raw = b"".join(p.read_bytes() for p in folder.iterdir())
        assert not any(c in raw for c in captions)
        for ex in (e for s in sites for e in s):
            valid = ex["pixel_values"][ex["pixel_attention_mask"] == 1]  # (patches, patch_dim)
            assert all(row[:8].tobytes() not in raw for row in valid[::7])
            caption_ids = ex["labels"][ex["labels"] != -100]
            assert caption_ids.astype(np.int32).tobytes() not in raw
            assert caption_ids.astype(np.int64).tobytes() not in raw


@pytest.mark.parametrize("secure", [False, True])
def test_image_captioner_over_flower_apps_matches_simulation(tmp_path, task_identity, captioner,
                                                            tiny_captioner_dir, secure):
    """ServerApp + ClientApps on an LFM2-VL checkpoint: the sites train on their photos' tiles read from
    their data files, and the federated adapter equals the in-process Simulation's on the same examples
    in memory, bit for bit, with and without secure aggregation; no pixel, caption or token id left a site."""
    from captionaura.federated.config import load_base_model

    sites = write_captioner_sites(tmp_path / "data", captioner)
    secagg = dict(strategy="fedavg", strategy_args="{}", secure_aggregation=True, secagg_threshold=2,
                  secagg_max_weight=8.0, secagg_clipping_range=2.0, secagg_stochastic_rounding=False)
    cfg = captioner_config(tiny_captioner_dir, tmp_path / "out", **(secagg if secure else {}))
    grid = LoopbackGrid(sorted((tmp_path / "data").glob("*.npz")), {**flower.DEPLOYMENT_DEFAULTS, **cfg.to_dict()})
    served = flower.run_server(grid, cfg, num_supernodes=2, timeout=5, audit_dir=str(tmp_path / "audit"))
    assert isinstance(served.model, ca.Lfm2VlModel)

    sim = cfg.replace(output_dir="").simulation(load_base_model(tiny_captioner_dir),
                                                [fl.FederatedClient(c, s) for c, s in enumerate(sites)],
                                                progressbar=False)
    start = sim.global_vector.copy()
    sim.run()
    np.testing.assert_array_equal(served.global_vector, sim.global_vector)
    assert [h.train_loss for h in served.history] == [h.train_loss for h in sim.history]
    assert np.abs(sim.global_vector - start).max() > 1e-3  # the rounds trained something
    assert (tmp_path / "out" / "adapter").is_dir()
    assert_nothing_private_left(tmp_path / "audit", sites, sim.global_vector.size, secure)


@pytest.mark.slow
def test_flower_deployment_of_an_image_captioner_matches_simulation(tmp_path, captioner, tiny_captioner_dir):
    """A real SuperLink and two authenticated SuperNodes whose sites hold photo + caption files run 2 rounds
    on the tiny LFM2-VL captioner: the server's final adapter is the in-process Simulation's on the same
    examples, and no pixel, caption or token id left a site."""
    from captionaura.federated.config import load_base_model

    sites = write_captioner_sites(tmp_path / "data", captioner)
    kits = tmp_path / "kits"
    provision(["site-0", "site-1"], f"127.0.0.1:{flower.free_port()}", kits)
    cfg = captioner_config(tiny_captioner_dir, tmp_path / "flower-out")
    app = flower.write_app(tmp_path / "app", cfg, num_supernodes=2, reply_timeout=300.0,
                           audit_dir=str(tmp_path / "audit"))
    deploy(kits, tmp_path / "run", app, tmp_path / "data")

    sim = cfg.replace(output_dir="").simulation(load_base_model(tiny_captioner_dir),
                                                [fl.FederatedClient(c, s) for c, s in enumerate(sites)],
                                                progressbar=False)
    sim.run()
    with np.load(tmp_path / "flower-out" / "checkpoint" / "state.npz") as state:
        np.testing.assert_allclose(state["global_vector"], sim.global_vector, rtol=0, atol=1e-6)
    history = json.loads((tmp_path / "flower-out" / "history.json").read_text())
    assert [h["round"] for h in history] == [1, 2]
    np.testing.assert_allclose([h["train_loss"] for h in history], [r.train_loss for r in sim.history], atol=1e-6)
    assert len(list((tmp_path / "audit").iterdir())) == 2 + 2 * 2
    assert_nothing_private_left(tmp_path / "audit", sites, sim.global_vector.size, secure=False)
