"""The main job (`make demo` runs `python -m captionaura demo`): a short run must show a falling loss."""

import json
import subprocess
import sys


def test_demo_trains_with_falling_loss(tmp_path):
    report = tmp_path / "report.json"
    out = subprocess.run([sys.executable, "-m", "captionaura", "demo", "--steps", "25", "--no-progress",
                          "--report", str(report)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    figures = json.loads(report.read_text())
    assert figures["final_loss"] < 0.7 * figures["initial_loss"]
    assert "tokens/s" in out.stdout
