"""attack.py end to end on checkpoints that train.py wrote (resnet18-cifar, 1 epoch of synthetic data)."""

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision

import attack
import train
from experiments.tables import TABLE_COLUMNS, parse_table
from kwta import evaluation
from kwta.attacks import ATTACKS, TABLE_SUITE
from kwta.checkpoint import load_model
from kwta.data import get_datasets

# Cut budgets for speed; the defaults (AutoAttack's 100 iterations and 5000 queries) are tested in test_attacks.py.
CHEAP_FLAGS = ["--pgd-steps", "5", "--restarts", "2", "--es-schedule", "3x4", "--eot-samples", "2",
               "--aa-iterations", "3", "--square-queries", "10", "--bpda-temperatures", "0.3", "--bpda-iterations", "3",
               "--bpda-steps", "5", "--eot-steps", "5", "--eps-curve", "none",
               "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{"kwta": path, "relu": path}: twins trained identically but for the activation."""
    root = tmp_path_factory.mktemp("runs")
    paths = {}
    for activation in ("kwta", "relu"):
        out = root / activation
        train.main(["--arch", "resnet18-cifar", "--dataset", "synthetic", "--activation", activation, "--epochs", "1",
                    "--lr", "0.02", "--train-subset", "256", "--test-subset", "64", "--device", "cpu",
                    "--precision", "fp32", "--out", str(out)])  # fp32 on every CPU: the same models everywhere
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
    attack.main(CHEAP_FLAGS + argv)


def test_the_suite_end_to_end_with_intervals_json_table_and_csv(checkpoints, tmp_path, capsys):
    out, table = tmp_path / "results.json", tmp_path / "results.md"
    run_attack(["--checkpoint", checkpoints["kwta"], "--source-checkpoint", checkpoints["relu"],
                "--n-batches", "2", "--batch-size", "6", "--out", str(out), "--table", str(table),
                "--eps-curve", "0.3"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("clean accuracy:") and "+-" in printed[1] and "95% CI" in printed[1]
    assert any(line.startswith("sanity:") for line in printed)
    assert any(line.startswith("eps curve, PGD alone: eps 0.1 ") and "eps 0.3 " in line for line in printed)

    results = json.loads(out.read_text())
    assert results["spec"]["activation"] == "kwta" and results["eps"] == [0.1] and results["n_images"] == 12
    assert results["attacks"] == list(TABLE_SUITE) and results["interval_method"] == "Wilson score, 95%"
    assert results["settings"]["autoattack_iterations"] == 3 and results["settings"]["square_queries"] == 10
    (at_eps,) = results["results"]
    accuracy, interval, count = at_eps["accuracy"], at_eps["interval"], at_eps["count"]
    assert set(accuracy) == set(interval) == set(count) == {*TABLE_SUITE, "worst_case"}
    assert set(at_eps["seconds"]) == set(TABLE_SUITE)
    # What a 1-epoch model learns depends on the machine's float arithmetic: check the figure, not its size.
    assert results["clean_accuracy"] == clean_accuracy(checkpoints["kwta"], 12, 6)
    for name in accuracy:
        assert accuracy[name] == count[name] / 12 and interval[name][0] <= accuracy[name] <= interval[name][1]
        assert accuracy["worst_case"] <= accuracy[name] <= results["clean_accuracy"]
        assert any(line.startswith(f"eps 0.1: robust accuracy after {name}: {accuracy[name]:.2%} +- ")
                   for line in printed) or name == "worst_case"
    # es was calibrated on the ReLU twin, and the verdict follows from the two numbers printed
    calibration = results["es_calibration"]
    assert calibration["model"] == checkpoints["relu"]
    assert calibration["counts_as_attack"] == (calibration["pgd_in_band"] and calibration["share_of_pgds"] >= 0.9)
    assert any(line.startswith(f"es calibration on the ReLU twin at eps {calibration['eps']:g} ") for line in printed)
    assert any("too weak to count" in w for w in results["warnings"]) == (not calibration["counts_as_attack"])
    assert [point["eps"] for point in results["eps_curve"]] == [0.3]

    (row,) = parse_table(table.read_text())
    assert row[0] == "k-WTA-0.2" and row[2].startswith(f"{results['clean_accuracy']:.2%} +- ")
    assert row[-1].startswith(f"{accuracy['worst_case']:.2%} +- ")
    assert (tmp_path / "results.csv").read_text().splitlines()[1].startswith("k-WTA-0.2,")


def test_table_merges_runs_and_eps_list(checkpoints, tmp_path, capsys):
    table = tmp_path / "results.md"
    run_attack(["--checkpoint", checkpoints["kwta"], "--attacks", "pgd", "--n-images", "8", "--table", str(table)])
    run_attack(["--checkpoint", checkpoints["relu"], "--attacks", "pgd,eot", "--n-images", "8",
                "--table", str(table), "--eps-list", "0.05,0.1", "--out", str(tmp_path / "relu.json")])
    run_attack(["--checkpoint", checkpoints["kwta"], "--attacks", "pgd", "--n-images", "8", "--table", str(table),
                "--eps", "0.2"])  # another eps: a row of its own
    run_attack(["--checkpoint", checkpoints["kwta"], "--attacks", "pgd", "--n-images", "8", "--table", str(table),
                "--eps", "0.2"])  # the same measurement again: replaces its row instead of adding one
    assert "note: es" not in capsys.readouterr().out  # no es, nothing to calibrate
    rows = parse_table(table.read_text())
    assert [row[:2] for row in rows] == [
        ["k-WTA-0.2", "synthetic, eps 0.1, 8 images"], ["ReLU", "synthetic, eps 0.05, 8 images"],
        ["ReLU", "synthetic, eps 0.1, 8 images"], ["k-WTA-0.2", "synthetic, eps 0.2, 8 images"]]
    eot = TABLE_COLUMNS.index("EOT")
    assert rows[0][eot] == "-" and rows[1][eot] != "-"
    assert table.read_text().splitlines()[0] == "| Activation | Setting | A_std | PGD | EOT | Worst case |"
    curve = json.loads((tmp_path / "relu.json").read_text())["results"]
    assert [r["eps"] for r in curve] == [0.05, 0.1]
    assert all(set(r["accuracy"]) == {"pgd", "eot", "worst_case"} for r in curve)


def test_es_calibration_reads_the_twins_own_results(checkpoints, tmp_path, capsys):
    relu_json, kwta_json = tmp_path / "relu.json", tmp_path / "kwta.json"
    run_attack(["--checkpoint", checkpoints["relu"], "--attacks", "pgd,es", "--n-images", "6", "--out", str(relu_json)])
    twin = json.loads(relu_json.read_text())["es_calibration"]
    run_attack(["--checkpoint", checkpoints["kwta"], "--attacks", "es", "--source-checkpoint", checkpoints["relu"],
                "--twin-results", str(relu_json), "--n-images", "6", "--out", str(kwta_json)])
    calibration = json.loads(kwta_json.read_text())["es_calibration"]
    assert calibration["from"] == str(relu_json) and calibration["model"] == checkpoints["relu"]
    assert calibration["per_image"] == twin["per_image"] and calibration["eps"] == twin["eps"]
    capsys.readouterr()
    for flags, differing in ((["--n-images", "5"], "n_images"),
                             (["--n-images", "6", "--batch-size", "4"], "batch_size")):
        with pytest.raises(SystemExit) as exit_info:  # other images or other batches: the twin's figures do not apply
            run_attack(["--checkpoint", checkpoints["kwta"], "--attacks", "es", "--source-checkpoint",
                        checkpoints["relu"], "--twin-results", str(relu_json), *flags])
        assert f"its {differing} differ" in str(exit_info.value.code)


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
    assert results[0]["results"][0]["interval"] == results[2]["results"][0]["interval"]
    assert results[0]["per_image"] == results[2]["per_image"]  # gathered from both processes, in image order
    assert not list(tmp_path.glob("*.journal*"))  # each process's journal, deleted once the results were saved


def test_an_interrupted_run_resumes_from_its_journal(checkpoints, tmp_path, monkeypatch):
    """Killed after two batches, attack.py keeps OUT.journal; run again, it attacks only the rest."""
    flags = ["--checkpoint", checkpoints["kwta"], "--attacks", "pgd", "--n-images", "7", "--batch-size", "3"]
    run_attack(flags + ["--out", str(tmp_path / "whole.json")])
    calls, real = [], evaluation.attack_batch

    def attack_batch(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(evaluation, "attack_batch", attack_batch)
    out = tmp_path / "resumed.json"
    with pytest.raises(KeyboardInterrupt):
        run_attack(flags + ["--out", str(out)])
    assert not out.exists() and len((tmp_path / "resumed.json.journal").read_text().splitlines()) == 1 + 2
    calls.clear()
    monkeypatch.setattr(evaluation, "attack_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    run_attack(flags + ["--out", str(out)])
    assert len(calls) == 1 and not (tmp_path / "resumed.json.journal").exists()
    whole, resumed = (json.loads((tmp_path / name).read_text()) for name in ("whole.json", "resumed.json"))
    assert resumed["per_image"] == whole["per_image"] and resumed["results"][0]["count"] == whole["results"][0]["count"]


def test_a_journal_folder_is_shared_by_runs_that_each_do_a_part(checkpoints, tmp_path, monkeypatch, capsys):
    """--shard and --stop-after each leave the rest to another run (exit status 3, no --out yet); the last run
    reads every shard, attacks nothing again, and keeps the folder."""
    flags = ["--checkpoint", checkpoints["kwta"], "--attacks", "pgd", "--eps-curve", "none", "--n-images", "7",
             "--batch-size", "3"]
    run_attack(flags + ["--out", str(tmp_path / "whole.json")])
    journal, out = tmp_path / "journal", tmp_path / "campaign.json"
    calls, real = [], evaluation.attack_batch
    monkeypatch.setattr(evaluation, "attack_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    for part in (["--stop-after", "1e-9"], ["--shard", "0/2"]):
        with pytest.raises(SystemExit) as stopped:
            run_attack(flags + ["--journal", str(journal), "--out", str(out), *part])
        assert stopped.value.code == attack.EXIT_INCOMPLETE and not out.exists()
    assert len(calls) == 2  # batches 0 and 2 of 3, none before the deadline
    assert "incomplete: 2 unit(s) done, 1 left to another run" in capsys.readouterr().out
    run_attack(flags + ["--journal", str(journal), "--out", str(out)])
    assert len(calls) == 3 and len(list(journal.glob("*.jsonl"))) == 2 and (journal / "plan.json").exists()
    whole, merged = (json.loads((tmp_path / name).read_text()) for name in ("whole.json", "campaign.json"))
    assert merged["per_image"] == whole["per_image"]
    with pytest.raises(SystemExit, match="2"):
        attack.parse_args(flags + ["--shard", "2/2", "--journal", str(journal)])
    with pytest.raises(SystemExit, match="2"):
        attack.parse_args(flags + ["--stop-after", "5"])  # nowhere to keep what it leaves


def test_a_model_train_py_did_not_make(tmp_path, capsys):
    """--model MODULE:FACTORY with --weights: torchvision's resnet18, its state dict saved by hand."""
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    out = tmp_path / "resnet18.json"
    run_attack(["--model", "torchvision.models:resnet18", "--model-kwargs", '{"num_classes": 10}', "--weights",
                str(weights), "--dataset", "synthetic", "--attacks", "pgd", "--n-images", "6", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["spec"]["model"] == "torchvision.models:resnet18" and results["n_images"] == 6
    assert len(results["per_image"]["robust"]["0.1"]["pgd"]) == 6
    assert "torchvision.models:resnet18 (" in capsys.readouterr().out

    torch.save({"model": argparse.Namespace(code="an object to unpickle")}, tmp_path / "pickled.pt")
    torch.save({"model": {"not": "tensors"}}, tmp_path / "strings.pt")
    for bad, message in ((tmp_path / "pickled.pt", "is not a torch state dict"),
                         (tmp_path / "strings.pt", "holds no state dict of tensors"),
                         (weights, "does not fit the model")):
        argv = ["--model", "torchvision.models:resnet18", "--model-kwargs",
                '{"num_classes": 10}' if bad != weights else '{"num_classes": 3}', "--weights", str(bad),
                "--dataset", "synthetic", "--attacks", "pgd", "--device", "cpu"]
        with pytest.raises(SystemExit) as exit_info:
            attack.main(argv)
        assert message in exit_info.value.code and exit_info.value.code.startswith("attack.py: error: weights:")


def test_list_attacks_prints_the_registry(capsys):
    attack.main(["--list-attacks"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["name", "column"] and len(lines) == 1 + len(ATTACKS)
    assert lines[1].split()[:4] == ["pgd", "PGD", "yes", "yes"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--checkpoint", "no/such/checkpoint.pt"], "no file"),
        (["--attacks", "fgsm"], "choose from"),
        (["--binarization", "4", "--binarization-attacks", "fgsm"], "--binarization-attacks: choose from"),
        (["--binarization-attacks", "pgd"], "give --binarization N too"),
        (["--attacks", "transfer"], "needs --source-checkpoint"),
        (["--attacks", "pgd", "--source-checkpoint", "x.pt"], "leaves out"),
        (["--bpda-temperatures", "0.1,0"], "must be > 0"),
        (["--eps-curve", "2"], "must be in"),
        (["--pgd-loss", "hinge"], "invalid choice"),
        (["--attacks", "pgd", "--twin-results", "relu.json"], "give both"),
        (["--eps", "0.1", "--eps-list", "0.1,0.2"], "not both"),
        (["--eps", "2"], "must be in"),
        (["--pgd-step", "0.01", "--pgd-rel-stepsize", "0.003"], "at most one"),
        (["--n-images", "100000"], "test set has"),
        (["--table", "results.txt"], ".md"),
        (["--model", "torchvision.models:resnet18"], "exactly one"),
        (["--checkpoint", None, "--model", "nomodule"], "MODULE:FACTORY"),
        (["--checkpoint", None, "--model", "torchvision.models:resnet18"], "needs --weights and --dataset"),
    ],
)
def test_bad_input_exits_with_a_one_line_reason(checkpoints, argv, message, capsys):
    if "--checkpoint" not in argv:
        argv = ["--checkpoint", checkpoints["kwta"], *argv]
    elif argv[1] is None:  # no checkpoint at all
        argv = argv[2:]
    with pytest.raises(SystemExit) as exit_info:
        attack.main(argv + ["--device", "cpu"])
    reason = exit_info.value.code if isinstance(exit_info.value.code, str) else capsys.readouterr().err.strip()
    assert exit_info.value.code != 0
    assert message in reason.splitlines()[-1]
    assert reason.splitlines()[-1].startswith("attack.py: error:")
