"""scripts/paper.py: the full grid as listed by --dry-run, its --gpus checked, and a slice of the mini grid run
for real."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import gpu_ids
from kwta.checkpoint import load_checkpoint
from kwta.models import imagenet_normalization

ROOT = Path(__file__).resolve().parent.parent


def paper(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "scripts.paper", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=900)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def listed(stdout: str) -> dict[str, str]:
    """step name -> its command line, from --dry-run's listing."""
    lines = stdout.splitlines()
    return {re.match(r"\[to run\] (\S+)", line).group(1): lines[i + 1].strip()
            for i, line in enumerate(lines) if line.startswith("[to run]")}


def test_full_grid_dry_run_lists_every_step_with_its_settings(tmp_path):
    steps = listed(paper("--dry-run", "--out", str(tmp_path)).stdout)
    trains = {name: command for name, command in steps.items() if name.startswith("train-")}
    suites = {name: command for name, command in steps.items() if re.match(r"attack-(?!report-)", name)}
    reports = {name: command for name, command in steps.items() if name.startswith("attack-report-")}
    assert len(trains) == 8 * 3 + 2 * 8 and len(suites) == len(reports) == len(trains)
    assert len(steps) == 3 * len(trains) + 2 + 2  # two landscapes, the 1-D fit, the tables
    assert sorted(set(steps) - set(trains) - set(suites) - set(reports)) == [
        "fit1d", "landscape-resnet18-cifar-cifar10-paper", "landscape-resnet18-cifar-svhn-paper", "tables"]

    assert all(c.endswith(" --overwrite --data-dir data") for c in trains.values())  # a fresh start, as new
    torchvision_runs = [c for c in trains.values() if "--arch resnet18-cifar" not in c]
    assert len(torchvision_runs) == 24 and all("--input-size 224" in c for c in torchvision_runs)  # the report's
    assert sum("--pretrained" in c for c in torchvision_runs) == 12
    assert all("--epochs 80 --lr 0.1 --milestones 50" in c for c in torchvision_runs if "--pretrained" not in c)
    paper_runs = {name: c for name, c in trains.items() if "--arch resnet18-cifar" in c}
    assert {re.search(r"--dataset (\S+)", c).group(1) for c in paper_runs.values()} == {"cifar10", "svhn"}
    kwta = [c for c in paper_runs.values() if "--activation kwta" in c]
    assert len(kwta) == 10 and all("--stem-relu" in c for c in kwta)
    incremental = trains["train-resnet18-cifar-svhn-paper-kwta-incremental"]
    for setting in ("--ratio-schedule 0.2:0.1:0.005:2", "--lr 0.001", "--epochs 70", "--stem-relu", "--init-from "):
        assert setting in incremental
    assert "svhn-paper/kwta-0.2/checkpoint.pt" in incremental
    assert sum("--adv-train pgd" in c for c in paper_runs.values()) == 4
    assert sum("--adv-train trades" in c and "--trades-beta 6" in c for c in paper_runs.values()) == 4
    assert "--adv-alpha 0.01" in trains["train-resnet18-cifar-svhn-paper-relu-pgd"]

    assert all("--attacks all --source-checkpoint" in c for c in suites.values())  # attack.py's default table suite
    assert all("--attacks pgd,deepfool --pgd-rel-stepsize 0.003" in c for c in reports.values())
    twin = lambda name: re.search(r"--source-checkpoint \S+/(\S+)/checkpoint.pt", suites[name]).group(1)
    assert twin("attack-resnet18-cifar-cifar10-paper-kwta-0.1-pgd") == "relu-pgd"  # the matching twin
    assert twin("attack-resnet18-cifar-cifar10-paper-relu-trades") == "kwta-0.1-trades"
    assert twin("attack-alexnet-svhn-scratch-kwta-0.1") == "relu" and twin("attack-alexnet-svhn-scratch-relu") == \
        "kwta-0.2"
    assert "--labels k-WTA-0.1 'k-WTA-0.1 + PGD training' ReLU 'ReLU + PGD training'" in \
        steps["landscape-resnet18-cifar-cifar10-paper"]

    resized = listed(paper("--dry-run", "--out", str(tmp_path), "--input-size", "128").stdout)
    assert "--input-size 128" in resized["train-alexnet-cifar10-finetune-relu"]


@pytest.mark.parametrize("gpus", ["abc", "0,0", "-1", "", "0,,1", "1.5"])
def test_gpus_must_be_distinct_non_negative_integers(gpus):
    refused = paper("--gpus", gpus, "--dry-run", check=False)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.splitlines()[-1].startswith("paper.py: error: argument --gpus: ")
    assert gpu_ids("0, 1,3") == ["0", "1", "3"] and gpu_ids("7") == ["7"]


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs dataset-fashion-mnist")
def test_a_slice_of_the_mini_grid_runs_writes_its_table_and_reruns_only_what_changed(tmp_path):
    out = str(tmp_path)
    only = ["--only", "attack-*resnet18-fashion-mnist-finetune-kwta-0.2", "--only",
            "train-resnet18-cifar-synthetic-paper-kwta-incremental"]
    first = paper("--mini", "--cpus", "2", *only, "--out", out)
    ran = re.findall(r"\[finished\] (\S+)", first.stdout)
    assert sorted(ran) == sorted([
        "train-resnet18-fashion-mnist-finetune-relu", "train-resnet18-fashion-mnist-finetune-kwta-0.2",
        "attack-resnet18-fashion-mnist-finetune-kwta-0.2", "attack-report-resnet18-fashion-mnist-finetune-kwta-0.2",
        "train-resnet18-cifar-synthetic-paper-kwta-0.2", "train-resnet18-cifar-synthetic-paper-kwta-incremental"])

    # Fine-tuned from the locally made ImageNet-layout state dict, normalised as ImageNet's weights expect.
    run = json.loads((tmp_path / "runs/resnet18-fashion-mnist-finetune/kwta-0.2/summary.json").read_text())
    assert run["args"]["weights"].endswith("weights/resnet18-imagenet-layout.pt") and run["test_images"] == 64
    spec = load_checkpoint(tmp_path / "runs/resnet18-fashion-mnist-finetune/kwta-0.2/checkpoint.pt")["spec"]
    assert spec["mean"] == pytest.approx(imagenet_normalization(1)[0]) and spec["input_size"] == 64
    incremental = json.loads((tmp_path / "runs/resnet18-cifar-synthetic-paper/kwta-incremental/metrics.jsonl")
                             .read_text().splitlines()[-1])
    assert incremental["ratio"] == 0.15  # 0.2, then one step of the mini schedule

    paper("--mini", "--tables-only", "--out", out)
    table = (tmp_path / "tables" / "resnet18-fashion-mnist-finetune.md").read_text()
    assert "Stand-in for the report's Table 7" in table and "not comparable" in table
    report_row = "| k-WTA-0.2 | report | 94.64% | - | 10.00% | 36.88% |"
    assert report_row in table and "| k-WTA-0.2 | ours, report's attacks | " in table
    assert "| k-WTA-0.2 | ours, full suite | " in table and "Tables 7 (SVHN) and 8 (CIFAR-10)" in table
    assert f"A_std on {run['test_images']} test images" in table and "PGD 2 steps at rel_stepsize 0.003" in table
    assert "- Transfer: k-WTA-0.2 from ReLU." in table

    # Nothing changed: every step is reused. A changed setting reruns that step and what follows it, only.
    again = paper("--mini", "--cpus", "2", *only, "--out", out, "--dry-run")
    assert "[to run]" not in again.stdout and again.stdout.count("[done]") == 6
    changed = paper("--mini", "--cpus", "2", *only, "--out", out, "--input-size", "72", "--dry-run").stdout
    assert "[done] train-resnet18-cifar-synthetic-paper-kwta-incremental" in changed  # 32 px: not resized
    assert ("[to run] train-resnet18-fashion-mnist-finetune-relu (settings changed since it finished: "
            "--input-size 64 -> --input-size 72)") in changed
    assert "[to run] attack-resnet18-fashion-mnist-finetune-kwta-0.2 (settings changed since it finished: " \
           "a step it needs changed)" in changed
