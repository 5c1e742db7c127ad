"""`captionaura train` end to end on the tiny LFM2 fixture: a TOML config plus flags, checkpoints, history
and adapter on disk, --resume reproducing the uninterrupted run, and clear errors for bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from captionaura.cli import main
from captionaura.federated.config import FederatedConfig, load_client_data, save_client_data
from captionaura.model import Lfm2Model

MODEL = Path(__file__).parent / "reference" / "fixtures" / "lfm2" / "mixed"


def write_data(folder: Path, k: int = 3, n: int = 4) -> None:
    rng = np.random.default_rng(2)
    for c in range(k):
        examples = []
        for _ in range(n):
            ids = np.concatenate([[1, 5], rng.integers(10, 300, 6), [2]]).astype(np.int32)
            labels = ids.copy()
            labels[:2] = -100
            examples.append({"input_ids": ids, "labels": labels})
        save_client_data(folder / f"client-{c}.npz", examples, eval=examples[:1])


TOML = """
model = "{model}"
data = "{data}"
rounds = 3
local_steps = 2
batch_size = 2
lr = 0.01
lora_r = 2
target_modules = "q_proj,v_proj,w1"
strategy = "fedavgm"
seed = 4

[strategy_args]
server_momentum = 0.5
"""


def adapter(folder: Path) -> np.ndarray:
    m = Lfm2Model.from_pretrained(MODEL)
    m.add_lora(FederatedConfig(target_modules="q_proj,v_proj,w1", lora_r=2).lora_config())
    m.load_adapter(folder / "adapter")
    return m.lora_vector()


def test_train_cli_writes_history_adapter_and_resumes_exactly(tmp_path, capsys):
    write_data(tmp_path / "data")
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text(TOML.format(model=MODEL.as_posix(), data=(tmp_path / "data").as_posix()))
    flags = ["--dp-noise-multiplier", "0.2", "--dp-clipping-norm", "1.0", "--no-progress"]

    assert main(["train", "--config", str(cfg_file), "--output-dir", str(tmp_path / "a"), *flags]) == 0
    assert "round 3: loss" in capsys.readouterr().out
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    assert [h["round"] for h in history] == [1, 2, 3] and history[-1]["clients"] == [0, 1, 2]
    assert history[0]["metrics"]["epsilon"] < history[-1]["metrics"]["epsilon"]
    assert (tmp_path / "a" / "checkpoint" / "state.npz").is_file()
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["strategy"] == "fedavgm" and json.loads(saved["strategy_args"]) == {"server_momentum": 0.5}

    # interrupted after round 2, resumed to 3: the same adapter as the straight run
    assert main(["train", "--config", str(cfg_file), "--output-dir", str(tmp_path / "b"), "--rounds", "2", *flags]) == 0
    assert main(["train", "--config", str(cfg_file), "--output-dir", str(tmp_path / "b"), "--resume", *flags]) == 0
    np.testing.assert_array_equal(adapter(tmp_path / "b"), adapter(tmp_path / "a"))
    assert len(json.loads((tmp_path / "b" / "history.json").read_text())) == 3

    # the flags alone, two clients, secure aggregation
    assert main(["train", "--model", str(MODEL), "--data", str(tmp_path / "data"), "--output-dir",
                 str(tmp_path / "c"), "--clients", "2", "--rounds", "1", "--local-steps", "1", "--lora-r", "2",
                 "--target-modules", "q_proj", "--secure-aggregation", "--secagg-max-weight", "8",
                 "--eval-max-new-tokens", "4", "--no-progress"]) == 0
    history = json.loads((tmp_path / "c" / "history.json").read_text())
    assert history[0]["clients"] == [0, 1] and history[0]["bytes_received"] > 0
    assert set(history[0]["client_metrics"]) == {"0", "1"} and "CIDEr" in history[0]["client_metrics"]["0"]


def test_train_cli_rejects_bad_configs(tmp_path, capsys):
    write_data(tmp_path / "data")
    base = ["train", "--model", str(MODEL), "--data", str(tmp_path / "data"), "--output-dir", str(tmp_path / "o"),
            "--rounds", "1", "--local-steps", "1", "--lora-r", "2", "--no-progress"]
    assert main(base + ["--strategy", "fedbest"]) == 2
    assert "unknown strategy 'fedbest'" in capsys.readouterr().err
    assert main(base + ["--strategy", "fedadam", "--strategy-args", '{"momentum": 1}']) == 2
    assert "has no parameter(s) ['momentum']" in capsys.readouterr().err
    assert main(base + ["--clients", "7"]) == 2
    assert "holds 3 clients, asked for 7" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('rounds = 2\nlearning_rate = 0.1\n')
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown federated config key 'learning_rate'" in capsys.readouterr().err
    assert main(base) == 0
    assert main(base) == 2  # a second run into the same folder must say --resume
    assert "--resume" in capsys.readouterr().err
    assert main(base + ["--resume", "--lr", "0.5"]) == 2
    assert "differs in ['lr']" in capsys.readouterr().err


def test_train_cli_on_bf16_base_weights(tmp_path):
    """--dtype bf16: clients train on the bf16-rounded base (mixed precision); the run learns, lands near the fp32
    run's adapter and is not that adapter (the bf16 GEMMs are in play); a dtype that does not train is refused."""
    write_data(tmp_path / "data")
    base = ["train", "--model", str(MODEL), "--data", str(tmp_path / "data"), "--rounds", "2", "--local-steps",
            "2", "--lora-r", "2", "--target-modules", "q_proj,v_proj,w1", "--lr", "0.01", "--no-progress"]
    assert main(base + ["--output-dir", str(tmp_path / "fp32")]) == 0
    assert main(base + ["--output-dir", str(tmp_path / "bf16"), "--dtype", "bf16"]) == 0
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bf16"
    history = json.loads((tmp_path / "bf16" / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    ours, ref = adapter(tmp_path / "bf16"), adapter(tmp_path / "fp32")
    assert 0 < np.linalg.norm(ours - ref) <= 0.05 * np.linalg.norm(ref)
    with pytest.raises(ValueError, match="dtype must be 'fp32' or 'bf16'"):
        FederatedConfig(dtype="int8")


def test_client_data_round_trip(tmp_path):
    ex = [{"input_ids": np.array([1, 2, 3], np.int32), "labels": np.array([-100, 2, 3], np.int32)}]
    save_client_data(tmp_path / "alice.npz", ex, eval=ex)
    client = load_client_data(tmp_path / "alice.npz")
    assert client.client_id == "alice" and len(client.train) == len(client.eval) == 1
    np.testing.assert_array_equal(client.train[0]["labels"], ex[0]["labels"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_client_data(tmp_path / "bob.npz")


def test_train_cli_federates_an_image_captioner(tmp_path, captioner, tiny_captioner_dir, capsys):
    """`captionaura train` on an LFM2-VL checkpoint and clients' photo + caption files: 2 rounds with
    per-client caption scores, ending on the adapter of the in-process Simulation over the same examples in
    memory, bit for bit; a client file without tiles is refused before any round."""
    from captionaura import federated as fl
    from captionaura.federated.config import load_base_model

    rng = np.random.default_rng(4)
    clients = []
    for c, (colour, caption) in enumerate([((220, 30, 30), "a red kite #aura"), ((40, 60, 230), "blue sea #aura")]):
        images = [np.clip(np.full((40, 56, 3), colour) + rng.normal(0, 10, (40, 56, 3)), 0, 255).astype(np.uint8)
                  for _ in range(3)]
        examples = [captioner.caption_example(im, caption) for im in images]
        save_client_data(tmp_path / "data" / f"client-{c}.npz", examples, eval=examples[:1])
        clients.append(fl.FederatedClient(c, examples, examples[:1]))
    toml = tmp_path / "vl.toml"
    toml.write_text(f'model = "{tiny_captioner_dir.as_posix()}"\ndata = "{(tmp_path / "data").as_posix()}"\n'
                    'rounds = 2\nlocal_steps = 2\nbatch_size = 2\nlr = 0.01\nlora_r = 2\n'
                    'target_modules = "q_proj,v_proj,in_proj"\neval_max_new_tokens = 4\nseed = 1\n')
    assert main(["train", "--config", str(toml), "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "round 2: loss" in capsys.readouterr().out
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert [h["round"] for h in history] == [1, 2] and set(history[-1]["client_metrics"]) == {"0", "1"}
    assert "CIDEr" in history[-1]["client_metrics"]["0"] and (tmp_path / "out" / "adapter").is_dir()

    cfg = FederatedConfig.from_file(toml).replace(eval_max_new_tokens=0)
    sim = cfg.simulation(load_base_model(tiny_captioner_dir), clients, progressbar=False)
    sim.run()
    with np.load(tmp_path / "out" / "checkpoint" / "state.npz") as state:
        np.testing.assert_array_equal(state["global_vector"], sim.global_vector)
    assert [h["train_loss"] for h in history] == [r.train_loss for r in sim.history]

    save_client_data(tmp_path / "data" / "client-2.npz",
                     [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in clients[0].train])
    assert main(["train", "--config", str(toml), "--output-dir", str(tmp_path / "again"), "--no-progress"]) == 2
    assert "client 2: train example 0 has no image tiles" in capsys.readouterr().err
