"""The main job (`make demo` runs `captionaura demo`) at small settings: federated personalisation of the
packaged aura-tiny with secure aggregation must beat the base model for every user, and the report, plot,
kits and adapters must be written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from captionaura.demo import DemoConfig, run_demo

SMALL = {"clients": 3, "rounds": 4, "local_steps": 8, "personal_steps": 4, "train_per_user": 8, "test_per_user": 6,
         "samples": 1, "progressbar": False}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(DemoConfig(**SMALL, out_dir=str(out)))


def test_federated_beats_the_base_model_for_every_user(report):
    """On CIDEr-D, the toolkit's primary caption metric. Base and federated get the same request (the user's
    posts and style); only the adapter differs."""
    _, rep = report
    for user, stages in rep["scores"].items():
        assert stages["federated"]["CIDEr"] > stages["base"]["CIDEr"], (user, stages)


def test_report_plot_kits_and_adapters_are_written(report):
    out, rep = report
    saved = json.loads((out / "report.json").read_text())
    assert saved["scores"] == rep["scores"]
    assert len(saved["history"]) == SMALL["rounds"]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = [u["name"] for u in rep["users"]]
    assert len(set(u["style"] for u in rep["users"])) == len(names)  # every user writes differently
    for name in names:
        assert (out / "kits" / name / "client.key").is_file()
        assert (out / "personal" / name / "adapter_model.safetensors").is_file()
        assert set(rep["scores"][name]) == {"plain", "base", "federated", "personal"}
    assert (out / "federated" / "adapter" / "adapter_config.json").is_file()
    assert rep["video"]["with_context"] and (out / "video" / "captions.json").is_file()
    # secure aggregation: the server receives quantised masked vectors, 4 bytes per coordinate per client
    assert rep["history"][0]["bytes_received"] > 0


def test_cli_rejects_bad_sizes():
    out = subprocess.run([sys.executable, "-m", "captionaura", "demo", "--clients", "0", "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "clients must be >= 1" in out.stderr
