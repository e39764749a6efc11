"""plots/landscape.py, plots/fit1d.py and plots/curves.py end to end on tiny inputs.

Each script runs as a module (`python -m plots.X ...`) from another folder with the checkout on
PYTHONPATH; the data file beside each figure is checked against what it claims.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from kwta.checkpoint import save_checkpoint
from kwta.data import DATASETS
from kwta.landscape import roughness
from kwta.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(name: str, *args: str, cwd, expect_ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO}
    command = [sys.executable, "-m", f"plots.{name.removesuffix('.py')}", *map(str, args)]
    process = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if expect_ok:
        assert process.returncode == 0, process.stderr
    return process


def figure_files(png) -> list:
    stem = str(png)[: -len(".png")]
    return [png, stem + ".pdf", stem + ".npz", stem + ".json"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Untrained resnet18 checkpoints (ReLU, and k-WTA marked as adversarially trained) on the synthetic set."""
    folder = tmp_path_factory.mktemp("checkpoints")
    card = DATASETS["synthetic"]
    paths = []
    for activation, adv_train in (("kwta", True), ("relu", False)):
        torch.manual_seed(0)
        model = build_model("resnet18", activation=activation, ratio=0.2, normalize=(card["mean"], card["std"]))
        spec = dict(arch="resnet18", activation=activation, ratio=0.2 if activation == "kwta" else None, mode="vol",
                    dataset="synthetic", num_classes=10, in_channels=3, input_size=card["size"],
                    mean=list(card["mean"]), std=list(card["std"]))
        path = folder / f"{activation}.pt"
        save_checkpoint(path, {"spec": spec, "model": model.state_dict(), "args": {"adv_train": adv_train}})
        paths.append(path)
    return paths


def test_landscape_script(checkpoints, tmp_path):
    out = tmp_path / "figs" / "landscape.png"
    process = run_script("landscape.py", "--checkpoints", *checkpoints, "--steps", "5", "--radius", "0.2",
                         "--image-index", "3", "0", "--out", out, cwd=tmp_path)
    for path in figure_files(out):
        assert os.path.getsize(path) > 0, path

    data = np.load(str(out)[: -len(".png")] + ".npz")
    assert data["loss"].shape == (2, 2, 5, 5)
    assert np.isfinite(data["loss"]).all()
    np.testing.assert_allclose(data["coords"], [[-0.2, -0.1, 0, 0.1, 0.2]] * 2)
    np.testing.assert_array_equal(data["image_index"], [3, 0])
    for run in range(2):
        for image in range(2):
            assert data["roughness"][run, image] == pytest.approx(roughness(data["loss"][run, image]))
            assert data["loss"][run, image, 2, 2] == pytest.approx(data["clean_loss"][run, image], rel=1e-4)
    assert list(data["labels"]) == ["k-WTA 0.2 + adv. training", "ReLU"]

    summary = json.loads((tmp_path / "figs" / "landscape.json").read_text())
    assert [c["label"] for c in summary["checkpoints"]] == ["k-WTA 0.2 + adv. training", "ReLU"]
    for run, entry in enumerate(summary["checkpoints"]):
        scores = [image["roughness"] for image in entry["images"]]
        np.testing.assert_allclose(scores, data["roughness"][run])
        assert entry["mean_roughness"] == pytest.approx(np.mean(scores))
        assert entry["spec"]["dataset"] == "synthetic" and entry["radius"] == 0.2
    assert "roughness" in process.stdout and "ReLU" in process.stdout


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "4"], "odd integer"),
        (["--labels", "only-one"], "--labels gives 1 titles for 2 checkpoints"),
        (["--image-index", "100000"], "--image-index 100000"),
    ],
)
def test_landscape_script_refuses_bad_input(checkpoints, tmp_path, extra, message):
    process = run_script("landscape.py", "--checkpoints", *checkpoints, "--out", tmp_path / "x.png", *extra,
                         cwd=tmp_path, expect_ok=False)
    assert process.returncode != 0
    assert message in process.stderr
    assert not (tmp_path / "x.png").exists()


def test_fit1d_script(tmp_path):
    out = tmp_path / "fit1d.png"
    run_script("fit1d.py", "--points", "6", "--hidden", "64", "--ratio", "0.2", "--steps", "150", "--grid", "1500",
               "--out", out, cwd=tmp_path)
    assert os.path.getsize(out) > 0 and os.path.getsize(tmp_path / "fit1d.pdf") > 0

    data = np.load(tmp_path / "fit1d.npz")
    assert data["grid_x"].shape == data["target_y"].shape == data["kwta_y"].shape == data["relu_y"].shape == (1500,)
    assert data["train_x"].shape == data["train_y"].shape == (6,)
    assert int(data["k"]) == 12
    for name in ("kwta", "relu"):
        assert np.isfinite(data[f"{name}_y"]).all()
        assert data[f"{name}_jumps"].shape == data[f"{name}_pattern_changes"].shape == (1499,)
        # a jump needs a change of activation pattern: with a fixed pattern the network is affine in x
        assert not (data[f"{name}_jumps"] & ~data[f"{name}_pattern_changes"]).any()
    # the illustration itself: k-WTA's fit jumps, ReLU's does not
    assert data["kwta_jumps"].sum() >= 3
    assert data["relu_jumps"].sum() == 0
    assert data["relu_pattern_changes"].sum() > 0


def write_metrics(path, test_acc: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"epoch": epoch, "lr": 0.1, "ratio": None, "train_loss": 2.0 / epoch, "train_acc": 0.5,
             "test_loss": 2.5 / epoch, "test_acc": acc, "seconds": 1.0} for epoch, acc in enumerate(test_acc, 1)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_attack(path, checkpoint: str, clean: float, accuracy_by_eps: dict[float, float], attacks=("pgd",)):
    results = [{"eps": eps, "accuracy": {**{name: acc for name in attacks}, "worst_case": acc}, "seconds": {}}
               for eps, acc in accuracy_by_eps.items()]
    path.write_text(json.dumps({"checkpoint": checkpoint, "spec": {}, "eps": list(accuracy_by_eps),
                                "clean_accuracy": clean, "results": results}))


def test_curves_script(tmp_path):
    write_metrics(tmp_path / "runs" / "fm-kwta" / "metrics.jsonl", [0.3, 0.5, 0.6])
    write_metrics(tmp_path / "runs" / "fm-relu" / "metrics.jsonl", [0.4, 0.7])
    write_attack(tmp_path / "a.json", "runs/fm-kwta/checkpoint.pt", 0.8, {0.1: 0.5, 0.03: 0.7})
    write_attack(tmp_path / "b.json", "runs/fm-kwta/checkpoint.pt", 0.8, {0.2: 0.4})
    write_attack(tmp_path / "c.json", "runs/fm-relu/checkpoint.pt", 0.9, {0.1: 0.0}, attacks=("pgd", "es"))
    out = tmp_path / "curves.png"
    run_script("curves.py", "--metrics", "runs/fm-kwta/metrics.jsonl", "runs/fm-relu/metrics.jsonl",
               "--attacks", "a.json", "b.json", "c.json", "--out", out, cwd=tmp_path)
    assert os.path.getsize(out) > 0 and os.path.getsize(tmp_path / "curves.pdf") > 0

    data = json.loads((tmp_path / "curves.json").read_text())
    assert data["training"]["fm-kwta"]["epoch"] == [1, 2, 3]
    assert data["training"]["fm-kwta"]["test_acc"] == [0.3, 0.5, 0.6]
    assert data["training"]["fm-relu"]["test_loss"] == [2.5, 1.25]
    kwta_pgd = data["robustness"]["fm-kwta"]["pgd"]
    assert kwta_pgd == {"eps": [0.0, 0.03, 0.1, 0.2], "accuracy": [0.8, 0.7, 0.5, 0.4]}
    assert data["robustness"]["fm-relu"]["worst_case"] == {"eps": [0.0, 0.1], "accuracy": [0.9, 0.0]}
    assert sorted(data["robustness"]["fm-relu"]) == ["es", "pgd", "worst_case"]
    assert "worst_case" not in data["robustness"]["fm-kwta"]  # one attack: worst case would repeat it


def test_curves_script_names_the_bad_line(tmp_path):
    metrics = tmp_path / "run" / "metrics.jsonl"
    write_metrics(metrics, [0.3])
    metrics.write_text(metrics.read_text() + '{"epoch": 2}\n')
    process = run_script("curves.py", "--metrics", metrics, "--out", tmp_path / "c.png", cwd=tmp_path,
                         expect_ok=False)
    assert process.returncode != 0
    assert "metrics.jsonl:2: not a train.py metrics line" in process.stderr
    assert not (tmp_path / "c.png").exists()
