"""`make demo` end to end on a tiny budget: every step runs, the summary is written, a re-run reuses it all."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--train-subset", "64", "--test-subset", "64", "--epochs", "1", "--batch-size", "32", "--n-images", "2",
        "--restarts", "1", "--aa-iterations", "2", "--square-queries", "5", "--es-schedule", "2x2",
        "--eot-samples", "1", "--landscape-steps", "3", "--device", "cpu"]


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs dataset-fashion-mnist")
def test_demo_runs_every_step_and_reuses_them(tmp_path):
    command = [sys.executable, "-m", "scripts.demo", "--out", str(tmp_path), *TINY]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    for row in ("| ReLU |", "| k-WTA-0.2 |", "| k-WTA-0.1 |"):
        assert row in summary
    header = "| Activation | A_std | PGD | DeepFool | AutoAttack | Square | BPDA | EOT | ES | Transfer | Worst case |"
    assert header in summary and "+-" in summary.split(header)[1].splitlines()[2]  # every figure has its interval
    assert "es calibrated on the ReLU model" in summary and "| Activation | eps 0.05 | eps 0.1 | eps 0.2 |" in summary
    assert "(minutes: train-relu " in summary and "device cpu" in summary  # each step's time, kept for reruns
    assert "attack.py's warnings" in summary
    for figure in ("landscape.png", "landscape.npz", "curves.png"):
        assert (tmp_path / figure).stat().st_size > 0

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    assert "[run]" not in second.stdout and second.stdout.count("[done]") == 8
