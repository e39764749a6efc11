"""train.py end to end on synthetic data: results files, exact resume, torchrun with gloo, bad input, the
--out safety rails and a --help that answers before torch loads."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from kwta.adversarial import pgd_linf
from kwta.checkpoint import load_checkpoint, load_model
from kwta.data import get_datasets
from kwta.machine import native_bf16
from kwta.models import build_model
from train import main, parse_args, ratio_at

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# resnet18-cifar on 8x8 images, 48 samples in batches of 16: a few seconds an epoch on two shared cores.
TINY_RUN = ["--arch", "resnet18-cifar", "--dataset", "synthetic", "--train-subset", "48", "--test-subset", "24",
            "--batch-size", "16", "--lr", "0.02", "--milestones", "2", "--activation", "kwta",
            "--ratio-schedule", "0.3:0.2:0.1:1", "--device", "cpu"]


def train(*args: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    command = [sys.executable, *launcher, os.path.join(ROOT, "train.py"), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)


def read_metrics(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as file:
        return [json.loads(line) for line in file]


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    result = train(*TINY_RUN, "--epochs", "2", "--out", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_training_writes_metrics_summary_and_a_loadable_checkpoint(two_epoch_run):
    run_dir, result = two_epoch_run
    metrics = read_metrics(run_dir)
    assert [row["epoch"] for row in metrics] == [1, 2]
    assert [row["ratio"] for row in metrics] == [0.3, 0.2]  # the incremental-sparsity schedule
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"} <= set(metrics[0])
    with open(os.path.join(run_dir, "summary.json")) as file:
        summary = json.load(file)
    assert summary["final_test_acc"] == metrics[-1]["test_acc"] and summary["epochs"] == 2
    assert "done:" in result.stdout.splitlines()[-1]
    assert sorted(os.listdir(run_dir)) == ["checkpoint.pt", "metrics.jsonl", "summary.json"]

    # The checkpoint alone rebuilds the model, and it scores on the test set what the run recorded.
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    assert checkpoint["spec"]["ratio"] == 0.2 and checkpoint["epoch"] == 2
    assert checkpoint["spec"]["train_precision"] == ("bf16" if native_bf16() else "fp32")  # auto on CPU
    assert fp32_test_scores(run_dir)[1] == pytest.approx(metrics[-1]["test_acc"])


def fp32_test_scores(run_dir) -> tuple[float, float]:
    """(loss, accuracy) of the run's checkpoint, scored here in fp32 on TINY_RUN's 24 test images."""
    model, _ = load_model(run_dir / "checkpoint.pt")
    _, test_ds, _ = get_datasets("synthetic", test_subset=24, seed=0)
    images, labels = torch.stack([image for image, _ in test_ds]), torch.tensor([label for _, label in test_ds])
    with torch.no_grad():
        logits = model(images)
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_a_cpu_is_bf16_only_where_the_cpu_does_bf16_in_hardware(monkeypatch, native, expected):
    import train as script
    from kwta import machine

    monkeypatch.setattr(machine, "native_bf16", lambda: native)
    assert script.setup_processes(parse_args([*TINY_RUN, "--out", "unused"])).precision == expected
    assert script.setup_processes(parse_args([*TINY_RUN, "--out", "unused", "--precision", "fp32"])).precision == "fp32"


def test_bf16_training_is_recorded_and_test_accuracy_is_measured_in_fp32(tmp_path):
    """k-WTA's winners depend on the arithmetic: the recorded test accuracy must be the fp32 one attack.py sees."""
    result = train(*TINY_RUN, "--epochs", "1", "--precision", "bf16", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training in bf16 autocast (test accuracy in fp32)" in result.stdout
    assert load_checkpoint(tmp_path / "checkpoint.pt")["spec"]["train_precision"] == "bf16"
    loss, accuracy = fp32_test_scores(tmp_path)
    recorded = read_metrics(tmp_path)[0]
    # bf16 logits would move the loss by about 1e-3; fp32 ones agree to rounding
    assert loss == pytest.approx(recorded["test_loss"], rel=1e-5) and accuracy == pytest.approx(recorded["test_acc"])


@pytest.mark.parametrize("workers", ["0", "2"])
def test_resume_continues_exactly(two_epoch_run, tmp_path, workers):
    """1 epoch, then --resume to 2, gives the straight run's weights bit for bit. With 2 persistent DataLoader
    workers too, against a straight run that loaded in the main process: workers are seeded once, so only
    augmentation seeded per (seed, epoch, sample) makes that hold."""
    straight_dir, _ = two_epoch_run
    first = train(*TINY_RUN, "--epochs", "1", "--workers", workers, "--out", str(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    second = train(*TINY_RUN, "--epochs", "2", "--workers", workers, "--out", str(tmp_path), "--resume")
    assert second.returncode == 0, second.stderr[-3000:]

    straight, resumed = load_checkpoint(straight_dir / "checkpoint.pt"), load_checkpoint(tmp_path / "checkpoint.pt")
    assert straight["model"].keys() == resumed["model"].keys()
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    for index, state in straight["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], resumed["optimizer"]["state"][index]["momentum_buffer"])
    timing = ("seconds", "train_seconds")
    without_timing = lambda rows: [{k: v for k, v in row.items() if k not in timing} for row in rows]
    assert without_timing(read_metrics(tmp_path)) == without_timing(read_metrics(straight_dir))


def test_torchrun_two_processes_with_gloo_and_trades(tmp_path):
    # TRADES here: under DDP its attack runs on the bare module, its clean pass too and its adversarial pass through
    # DDP, so this is the risky case. 129 test images: shards of 65 and 64, so in test batches of 64 one process
    # runs two batches, the other one.
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    result = train(*TINY_RUN, "--epochs", "1", "--adv-train", "trades", "--adv-steps", "1", "--test-subset", "129",
                   "--out", str(tmp_path), launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "metrics.jsonl", "summary.json"]
    assert result.stdout.count("done:") == 1  # only rank 0 reports
    with open(tmp_path / "summary.json") as file:
        summary = json.load(file)
    assert summary["world_size"] == 2 and summary["adv_train"] == "trades" and summary["test_images"] == 129

    # The recorded figures are both shards' together, scored with the checkpoint's weights and BatchNorm statistics
    # (after the last step each process holds its own running statistics until rank 0's are broadcast).
    # Recomputed here shard by shard in the same batches, they match: the accuracy to the image, the loss to rounding.
    model, _ = load_model(tmp_path / "checkpoint.pt")
    _, test_ds, _ = get_datasets("synthetic", test_subset=129, seed=0)
    loss_sum, correct = 0.0, 0
    for rank in (0, 1):
        shard = [test_ds[i] for i in range(rank, 129, 2)]
        for start in range(0, len(shard), 64):
            images = torch.stack([image for image, _ in shard[start:start + 64]])
            labels = torch.tensor([label for _, label in shard[start:start + 64]])
            with torch.no_grad():
                logits = model(images)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
    recorded = read_metrics(tmp_path)[0]
    assert recorded["test_images"] == 129 and recorded["test_acc"] == correct / 129
    assert recorded["test_loss"] == pytest.approx(loss_sum / 129, rel=1e-5)


def test_a_missing_dataset_exits_non_zero_with_one_line(tmp_path):
    result = train("--dataset", "cifar10", "--data-dir", str(tmp_path), "--device", "cpu", "--out", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "cifar10" in result.stderr and str(tmp_path) in result.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--ratio", "1.5"], "--ratio"),
        (["--activation", "relu", "--ratio-schedule", "0.2:0.1:0.01:1"], "--ratio-schedule"),
        (["--ratio-schedule", "0.2:0.1"], "--ratio-schedule"),
        (["--arch", "alexnet", "--input-size", "32"], "--input-size"),
        (["--dataset", "synthetic", "--resume"], "checkpoint"),
        (["--device", "cuda:99"], "--device"),
        (["--device", "tpu9"], "--device"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(tmp_path, capsys, args, expected):
    with pytest.raises(SystemExit) as raised:
        main([*args, "--out", str(tmp_path)])
    # argparse prints its message and exits 2; train.py's own checks exit with the message as the code.
    message = capsys.readouterr().err.strip().splitlines()[-1] if raised.value.code == 2 else raised.value.code
    assert expected in message and "\n" not in message


def test_resume_refuses_a_different_run(two_epoch_run):
    straight_dir, _ = two_epoch_run
    other_args = [arg if arg != "resnet18-cifar" else "resnet18" for arg in TINY_RUN]
    with pytest.raises(SystemExit, match="--arch"):
        main([*other_args, "--epochs", "3", "--out", str(straight_dir), "--resume"])


def test_ratio_schedule_steps_down_and_stops_at_the_end():
    schedule = (0.2, 0.1, 0.005, 2)
    assert [ratio_at(schedule, epoch) for epoch in (0, 1, 2, 3, 4)] == [0.2, 0.2, 0.195, 0.195, 0.19]
    assert ratio_at(schedule, 40) == 0.1 and ratio_at(schedule, 500) == 0.1
    assert ratio_at((0.1, 0.3, 0.1, 1), 7) == 0.3


def test_pgd_stays_in_the_ball_and_raises_the_loss():
    torch.manual_seed(0)
    model = build_model("resnet18-cifar", num_classes=4).eval()
    x, y = torch.rand(6, 3, 8, 8), torch.randint(4, (6,))
    x_adv = pgd_linf(model, x, y, eps=0.05, alpha=0.02, steps=3)
    assert (x_adv - x).abs().max() <= 0.05 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
    assert all(p.grad is None for p in model.parameters())


def test_resume_refuses_a_new_learning_rate(two_epoch_run):
    straight_dir, _ = two_epoch_run  # trained with --lr 0.02 --milestones 2: its optimiser and scheduler keep them
    other_lr = [arg if arg != "0.02" else "0.5" for arg in TINY_RUN]
    with pytest.raises(SystemExit, match="saved --lr 0.02"):
        main([*other_lr, "--epochs", "3", "--out", str(straight_dir), "--resume"])
    other_milestones = [arg if arg != "2" else "1" for arg in TINY_RUN]
    with pytest.raises(SystemExit, match=r"saved --milestones \[2\]"):
        main([*other_milestones, "--epochs", "3", "--out", str(straight_dir), "--resume"])


def test_init_from_a_trained_model_with_the_stem_relu_and_stale_temporaries_cleaned(two_epoch_run, tmp_path, capsys):
    straight_dir, _ = two_epoch_run
    stale = tmp_path / ".checkpoint.pt.x1y2.tmp"  # what a kill during a checkpoint write leaves
    stale.write_bytes(b"\0" * 1000)
    main([*TINY_RUN, "--epochs", "1", "--lr", "1e-12", "--stem-relu",
          "--init-from", str(straight_dir / "checkpoint.pt"), "--out", str(tmp_path), "--overwrite"])
    assert not stale.exists() and f"removed {stale}" in capsys.readouterr().out
    model, checkpoint = load_model(tmp_path / "checkpoint.pt")
    assert checkpoint["spec"]["stem_relu"] and isinstance(model.net.relu, torch.nn.ReLU)
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 1  # the blocks are k-WTA
    initial = load_checkpoint(straight_dir / "checkpoint.pt")["model"]
    for name in ("net.conv1.weight", "net.fc.weight"):  # lr 1e-12: the weights it started from, unchanged
        assert torch.allclose(checkpoint["model"][name], initial[name], atol=1e-6)
    with pytest.raises(SystemExit, match="--init-from.*arch 'resnet18-cifar'"):
        main([*[a if a != "resnet18-cifar" else "resnet18" for a in TINY_RUN], "--epochs", "1",
              "--init-from", str(straight_dir / "checkpoint.pt"), "--out", str(tmp_path / "other")])


def test_a_non_empty_out_is_refused_without_resume_or_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as raised:
        main([*TINY_RUN, "--epochs", "1", "--out", str(tmp_path)])
    message = str(raised.value.code)
    assert all(flag in message for flag in ("--out", "--resume", "--overwrite")) and "\n" not in message
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]  # refused before anything was written


def test_torchrun_refuses_a_non_empty_out_once_and_stops_every_process(tmp_path):
    """Rank 0 alone decides, and the others learn its verdict: one message, no process left waiting."""
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    result = train(*TINY_RUN, "--epochs", "1", "--out", str(tmp_path), launcher=launcher)
    assert result.returncode != 0 and result.stderr.count("already holds files") == 1, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]


def test_overwrite_starts_afresh_deleting_only_train_py_files(two_epoch_run, tmp_path, capsys):
    straight_dir, _ = two_epoch_run  # a finished 2-epoch run: an accidental resume would train nothing
    for name in ("checkpoint.pt", "metrics.jsonl", "summary.json"):
        shutil.copy(straight_dir / name, tmp_path / name)
    (tmp_path / "notes.txt").write_text("mine")
    main([*TINY_RUN, "--epochs", "1", "--overwrite", "--out", str(tmp_path)])
    assert [row["epoch"] for row in read_metrics(tmp_path)] == [1]  # a fresh metrics.jsonl, the old rows gone
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    with open(tmp_path / "summary.json") as file:
        assert json.load(file)["epochs"] == 1
    assert (tmp_path / "notes.txt").read_text() == "mine"  # not train.py's: kept, and said so
    out = capsys.readouterr().out
    assert f"removed {tmp_path / 'metrics.jsonl'}" in out and "kept notes.txt" in out


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(SystemExit) as raised:
        main([*TINY_RUN, "--epochs", "3", "--out", str(tmp_path), "--resume", "--overwrite"])
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert raised.value.code == 2 and "--resume" in message and "--overwrite" in message and "not allowed" in message
    assert (tmp_path / "metrics.jsonl").read_text() == "{}\n"  # untouched


def test_the_default_out_names_the_sparsity():
    out = lambda *flags: parse_args(["--arch", "resnet18-cifar", "--dataset", "fashion-mnist", *flags]).out
    runs = os.path.join("runs", "resnet18-cifar-fashion-mnist-")
    assert out("--ratio", "0.1") == runs + "kwta0.1" and out("--ratio", "0.2") == runs + "kwta0.2"
    assert out("--ratio", "0.1", "--mode", "channel") == runs + "kwta0.1-channel"
    assert out("--ratio-schedule", "0.2:0.1:0.005:2") == runs + "kwta0.2to0.1"
    assert out("--activation", "relu", "--ratio", "0.1") == runs + "relu"


def test_help_answers_before_torch_is_imported_and_shows_the_defaults():
    command = [sys.executable, "-X", "importtime", os.path.join(ROOT, "train.py"), "--help"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time")]
    imported = {line.rsplit("|", 1)[-1].strip() for line in lines}
    assert "argparse" in imported and not [name for name in imported if name.split(".")[0] in ("torch", "tqdm")]
    assert "\n        --lr 0.001 --epochs 70" in result.stdout  # the docstring's continued example, on its own line
    text = " ".join(result.stdout.split())
    assert all(f"(default: {value})" in text for value in ("resnet18", "kwta", "0.2", "vol", "cifar10", "32", "auto"))


def test_a_wrong_name_is_refused_with_the_names(tmp_path, capsys):
    """The names live in torch-importing modules, so they are checked after parsing: as argparse would."""
    with pytest.raises(SystemExit) as raised:
        main(["--arch", "vgg16", "--out", str(tmp_path)])
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert raised.value.code == 2 and "--arch" in message and "'resnet18-cifar'" in message


def test_onecycle_in_channels_last_resumes_exactly_and_refuses_a_stretched_cycle(tmp_path, monkeypatch):
    """--schedule onecycle steps the lr every batch: a run killed after its first epoch's checkpoint and resumed
    ends bit for bit where the straight run does; changing --epochs on resume is refused."""
    import train as train_module

    flags = [*TINY_RUN, "--epochs", "2", "--schedule", "onecycle", "--channels-last"]
    straight = train(*flags, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    metrics = read_metrics(tmp_path / "straight")
    assert metrics[0]["lr"] == pytest.approx(0.02 / 25) and 0 < metrics[1]["lr"] < 0.02  # warm-up, then down

    real_save = train_module.save_epoch

    def save_then_die(args, processes, info, training):
        real_save(args, processes, info, training)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(train_module, "save_epoch", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        main([*flags, "--out", str(tmp_path / "resumed")])
    monkeypatch.setattr(train_module, "save_epoch", real_save)
    main([*flags, "--out", str(tmp_path / "resumed"), "--resume"])
    first, second = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("straight", "resumed"))
    for name, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][name]), name
    assert first["scheduler"]["_step_count"] == second["scheduler"]["_step_count"]

    stretched = train(*TINY_RUN, "--epochs", "3", "--schedule", "onecycle", "--channels-last",
                      "--out", str(tmp_path / "resumed"), "--resume")
    assert stretched.returncode != 0 and "a cycle cannot be stretched once begun" in stretched.stderr
