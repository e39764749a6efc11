"""attack.py end to end on checkpoints that train.py wrote (resnet18-cifar, 1 epoch of synthetic data)."""

import json
import os
import subprocess
import sys

import pytest
import torch

import attack
import train
from kwta.attacks import parse_table
from kwta.checkpoint import load_model
from kwta.data import get_datasets

CHEAP_FLAGS = ["--pgd-steps", "5", "--es-steps", "3", "--es-samples", "4", "--eot-samples", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{"kwta": path, "relu": path}: twins trained identically but for the activation."""
    root = tmp_path_factory.mktemp("runs")
    paths = {}
    for activation in ("kwta", "relu"):
        out = root / activation
        train.main(["--arch", "resnet18-cifar", "--dataset", "synthetic", "--activation", activation, "--epochs", "1",
                    "--lr", "0.02", "--train-subset", "256", "--test-subset", "64", "--device", "cpu",
                    "--out", str(out)])
        paths[activation] = str(out / "checkpoint.pt")
    return paths


def clean_accuracy(checkpoint: str, n_images: int, batch_size: int) -> float:
    """The share of the first `n_images` test images the checkpoint classifies correctly, computed here in
    attack.py's batches (a batch's size can change the float arithmetic)."""
    model, saved = load_model(checkpoint, torch.device("cpu"))
    _, test_ds, _ = get_datasets(saved["spec"]["dataset"], input_size=saved["spec"]["input_size"], augment=False)
    correct = 0
    for start in range(0, n_images, batch_size):
        indices = range(start, min(start + batch_size, n_images))
        images = torch.stack([test_ds[i][0] for i in indices])
        labels = torch.tensor([test_ds[i][1] for i in indices])
        with torch.no_grad():
            correct += (model(images).argmax(1) == labels).sum().item()
    return correct / n_images


def run_attack(argv: list[str]) -> None:
    attack.main(argv + CHEAP_FLAGS)


def test_all_attacks_end_to_end_with_json_table_and_csv(checkpoints, tmp_path, capsys):
    out, table = tmp_path / "results.json", tmp_path / "results.md"
    run_attack(["--checkpoint", checkpoints["kwta"], "--attacks", "all", "--source-checkpoint", checkpoints["relu"],
                "--n-batches", "2", "--batch-size", "6", "--out", str(out), "--table", str(table)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("clean accuracy:")
    assert any(line.startswith("sanity:") for line in printed)

    results = json.loads(out.read_text())
    assert results["spec"]["activation"] == "kwta" and results["eps"] == [0.1] and results["n_images"] == 12
    (at_eps,) = results["results"]
    accuracy = at_eps["accuracy"]
    assert set(accuracy) == {"pgd", "deepfool", "es", "eot", "transfer", "worst_case"}
    assert set(at_eps["seconds"]) == {"pgd", "deepfool", "es", "eot", "transfer"}
    # What a 1-epoch model learns depends on the machine's float arithmetic: check the figure, not its size.
    assert results["clean_accuracy"] == clean_accuracy(checkpoints["kwta"], 12, 6)
    for name in ("pgd", "deepfool", "es", "eot", "transfer"):
        assert accuracy["worst_case"] <= accuracy[name] <= results["clean_accuracy"]

    (row,) = parse_table(table.read_text())
    assert row[0] == "k-WTA-0.2" and row[1] == f"{results['clean_accuracy']:.2%}"
    assert row[-1] == f"{accuracy['worst_case']:.2%}"
    assert (tmp_path / "results.csv").read_text().splitlines()[1].startswith("k-WTA-0.2,")


def test_table_merges_runs_and_eps_list(checkpoints, tmp_path):
    table = tmp_path / "results.md"
    run_attack(["--checkpoint", checkpoints["kwta"], "--attacks", "pgd", "--n-images", "8", "--table", str(table)])
    run_attack(["--checkpoint", checkpoints["relu"], "--attacks", "pgd,eot", "--n-images", "8",
                "--table", str(table), "--eps-list", "0.05,0.1", "--out", str(tmp_path / "relu.json")])
    run_attack(["--checkpoint", checkpoints["kwta"], "--attacks", "pgd", "--n-images", "8", "--table", str(table),
                "--eps", "0.2"])  # same label: replaces the first row instead of adding one
    rows = parse_table(table.read_text())
    assert [row[0] for row in rows] == ["k-WTA-0.2", "ReLU (eps 0.05)", "ReLU (eps 0.1)"]
    assert rows[0][5] == "-" and rows[1][5] != "-"  # EOT column
    curve = json.loads((tmp_path / "relu.json").read_text())["results"]
    assert [r["eps"] for r in curve] == [0.05, 0.1]
    assert all(set(r["accuracy"]) == {"pgd", "eot", "worst_case"} for r in curve)


def test_same_numbers_again_and_under_torchrun(checkpoints, tmp_path):
    """Per-batch seeds: a rerun, and two torchrun processes splitting the batches, give identical counts."""
    flags = ["--checkpoint", checkpoints["kwta"], "--attacks", "pgd,es", "--n-images", "7", "--batch-size", "3"]
    outs = [tmp_path / "first.json", tmp_path / "second.json", tmp_path / "torchrun.json"]
    for out in outs[:2]:
        run_attack(flags + ["--out", str(out)])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "attack.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(torchrun + flags + CHEAP_FLAGS + ["--out", str(outs[2])], capture_output=True, text=True,
                          env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
    results = [json.loads(out.read_text()) for out in outs]
    assert results[2]["world_size"] == 2
    assert results[0]["clean_accuracy"] == results[1]["clean_accuracy"] == results[2]["clean_accuracy"]
    assert results[0]["results"][0]["accuracy"] == results[1]["results"][0]["accuracy"]
    assert results[0]["results"][0]["accuracy"] == results[2]["results"][0]["accuracy"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--checkpoint", "no/such/checkpoint.pt"], "no file"),
        (["--attacks", "fgsm"], "choose from"),
        (["--attacks", "transfer"], "needs --source-checkpoint"),
        (["--eps", "0.1", "--eps-list", "0.1,0.2"], "not both"),
        (["--eps", "2"], "must be in"),
        (["--pgd-step", "0.01", "--pgd-rel-stepsize", "0.003"], "at most one"),
        (["--n-images", "100000"], "test set has"),
        (["--table", "results.txt"], ".md"),
    ],
)
def test_bad_input_exits_with_a_one_line_reason(checkpoints, argv, message, capsys):
    if "--checkpoint" not in argv:
        argv = ["--checkpoint", checkpoints["kwta"], *argv]
    with pytest.raises(SystemExit) as exit_info:
        attack.main(argv + ["--device", "cpu"])
    reason = exit_info.value.code if isinstance(exit_info.value.code, str) else capsys.readouterr().err.strip()
    assert exit_info.value.code != 0
    assert message in reason.splitlines()[-1]
    assert reason.splitlines()[-1].startswith("attack.py: error:")
