"""The Fashion-MNIST pipelines end to end on tiny budgets: `make demo` and `make results` each run every step,
write their summary and reuse it all on a re-run; the results' page can be rewritten from its files alone."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--train-subset", "64", "--test-subset", "64", "--epochs", "1", "--batch-size", "32", "--n-images", "2",
        "--budget", "smoke", "--landscape-steps", "3", "--device", "cpu"]
SLICE = ["--train-subset", "64", "--test-subset", "64", "--epochs", "1", "--batch-size", "32", "--n-images", "3",
         "--check-images", "2", "--attack-batch-size", "2", "--budget", "smoke", "--pgd-steps", "2",
         "--binarization-inner", "2", "--es-schedule", "2x2",
         "--binarization-attacks", "pgd,bpda", "--landscape-steps", "3", "--device", "cpu"]
needs_fashion_mnist = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                                         reason="needs dataset-fashion-mnist")


def run_twice(module: str, out: Path, flags: list[str], steps: int) -> list[str]:
    """Run the pipeline, then again: the second run must reuse all `steps`. Returns the command line."""
    command = [sys.executable, "-m", module, "--out", str(out), *flags]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    assert "[run]" not in second.stdout and second.stdout.count("[done]") == steps
    return command


@needs_fashion_mnist
def test_demo_runs_every_step_and_reuses_them(tmp_path):
    run_twice("scripts.demo", tmp_path, TINY, steps=8)
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


@needs_fashion_mnist
def test_the_results_campaign_on_a_slice(tmp_path):
    """A session whose attacks stop at once leaves an in-progress page; the next one finishes; on a clean clone
    (the scratch folder gone, the committed page and weights kept) nothing trains again and the page is rewritten
    byte for byte from the committed files."""
    scratch, page, weights = tmp_path / "scratch", tmp_path / "page", tmp_path / "weights"
    flags = [*SLICE, "--page", str(page), "--weights", str(weights)]
    command = [sys.executable, "-m", "scripts.results", "--out", str(scratch), *flags]
    first = subprocess.run([*command, "--stop-after", "1e-6"], cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "[incomplete] attack-relu" in first.stdout and "[waiting] check-kwta-0.2" in first.stdout
    assert "**In progress: 0 of " in (page / "README.md").read_text()
    assert sorted(p.name for p in (weights / "fashion-mnist").glob("*.pt")) == ["kwta-0.1.pt", "kwta-0.2.pt",
                                                                                 "relu.pt"]
    run_twice("scripts.results", scratch, flags, steps=14)
    summary = (page / "README.md").read_text()
    header = "| Activation | A_std | PGD | AutoAttack | Square | BPDA | EOT | Transfer | Worst case |"
    assert header in summary and "In progress" not in summary
    assert summary.count("Beyond the intervals? ") == 3  # PGD against the worst case, per model
    assert summary.count("the worst case with es") == 3 and "es calibration on the ReLU twin" in summary
    assert summary.count("Binarization test (Zimmermann et al. 2022)") == 3 and "| bpda |" in summary
    assert "| Activation | test accuracy | 95% interval | test images | epochs | seconds per epoch |" in summary
    assert f"Made with `python -m scripts.results --out {scratch} --page {page} --weights {weights} " in summary
    record = json.loads((weights / "fashion-mnist" / "relu.json").read_text())
    assert record["training"]["args"]["schedule"] == "onecycle" and record["training"]["train_images"] == 64
    assert record["test_images"] == 10000  # the released weights' accuracy, on every test image

    shutil.rmtree(scratch)  # what stays out of git
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    assert "[run]" not in again.stdout and again.stdout.count("[not needed] train-") == 3
    (page / "README.md").unlink()
    subprocess.run([*command, "--summary-only"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert (page / "README.md").read_text() == summary
    status = subprocess.run([*command, "--status"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "| attack-relu | " in status and "| written |" in status and "Estimated CPU hours left" in status
