"""The replication's whole grid, for a machine with GPUs and the data, then every model attacked.

    make paper DATA_DIR=/data GPUS=0,1,2,3     # = python scripts/paper.py --data-dir /data --gpus 0,1,2,3
    python scripts/paper.py --dry-run          # list the steps (and which are already done)

Runs {AlexNet, ResNet18} x {CIFAR-10, SVHN} x {from scratch: 80 epochs, lr 0.1 then 0.01 from epoch 50;
fine-tuned from ImageNet: 10 epochs, lr 0.01, 224 px} x {ReLU, k-WTA 0.2, k-WTA 0.1} (24 runs), plus the
paper's resnet18-cifar on CIFAR-10 with incremental sparsity (0.2 down to 0.1 by 0.005 every 2 epochs)
and k-WTA 0.1 and ReLU with PGD adversarial training. Every model is then attacked with all attacks
(transfer from the ReLU model of its group) on the replication's 10 batches of 32 test images, and
one table per (arch, dataset, training) is written to OUT/tables/ in the replication's format.

Steps run one per GPU at once (--gpus), each logging to OUT/logs/; an interrupted grid resumes: finished
steps are skipped and a half-trained run continues from its checkpoint. Fine-tuning needs torchvision's
ImageNet weights in the torch hub cache (or network access on first use).

Expected time per run on one H100-class GPU (estimates from step counts, not measured here): from
scratch, 1,563 steps per epoch at batch 32: about 10-15 min for ResNet18 and AlexNet on 32 px inputs
(80 epochs), about 1 h for resnet18-cifar and 3-4 h with adversarial training (7 PGD steps per batch);
fine-tuning at 224 px, about 5-10 min (10 epochs), usually bound by the data loader's resizing; the
attack suite, a few minutes per model, most of it in es.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kwta.attacks import format_table, table_row  # noqa: E402
from kwta.checkpoint import atomic_write  # noqa: E402
from kwta.pipeline import Step, python_command, run_steps  # noqa: E402

ACTIVATIONS = [("relu", ["--activation", "relu"]), ("kwta-0.2", ["--activation", "kwta", "--ratio", "0.2"]),
               ("kwta-0.1", ["--activation", "kwta", "--ratio", "0.1"])]
TRAINING = {"scratch": [], "finetune": ["--pretrained"]}
PAPER_RUNS = [  # the paper's CIFAR ResNet18, against its own ReLU twin
    ("relu", ["--activation", "relu"]),
    ("kwta-incremental", ["--activation", "kwta", "--ratio-schedule", "0.2:0.1:0.005:2"]),
    ("kwta-0.1-adv", ["--activation", "kwta", "--ratio", "0.1", "--adv-train"]),
    ("relu-adv", ["--activation", "relu", "--adv-train"]),
]
LABELS = {"relu": "ReLU", "kwta-0.2": "k-WTA-0.2", "kwta-0.1": "k-WTA-0.1", "kwta-incremental": "k-WTA-0.2→0.1",
          "kwta-0.1-adv": "k-WTA-0.1 + adv. training", "relu-adv": "ReLU + adv. training"}


def groups() -> dict[str, tuple[list[str], list[tuple[str, list[str]]]]]:
    """group name -> (train.py flags shared by the group, [(run name, its own flags)])."""
    grid = {}
    for arch in ("alexnet", "resnet18"):
        for dataset in ("cifar10", "svhn"):
            for training, flags in TRAINING.items():
                grid[f"{arch}-{dataset}-{training}"] = (["--arch", arch, "--dataset", dataset, *flags], ACTIVATIONS)
    grid["resnet18-cifar-cifar10-paper"] = (["--arch", "resnet18-cifar", "--dataset", "cifar10"], PAPER_RUNS)
    return grid


def build_steps(args, out: Path) -> list[Step]:
    data = ["--data-dir", args.data_dir, *(["--download"] if args.download else [])]
    steps = []
    for group, (shared, runs) in groups().items():
        relu_checkpoint = out / "runs" / group / "relu" / "checkpoint.pt"
        for name, flags in runs:
            run_dir = out / "runs" / group / name
            resume = ["--resume"] if (run_dir / "checkpoint.pt").exists() else []
            steps.append(Step(f"train-{group}-{name}",
                              python_command("train.py", *shared, *flags, *data, "--out", run_dir, *resume),
                              done=run_dir / "summary.json"))
            transfer = name != "relu"
            steps.append(Step(
                f"attack-{group}-{name}",
                python_command("attack.py", "--checkpoint", run_dir / "checkpoint.pt",
                               "--attacks", "pgd,deepfool,es,eot" + (",transfer" if transfer else ""),
                               *(["--source-checkpoint", relu_checkpoint] if transfer else []),
                               *data, "--out", out / "attacks" / group / f"{name}.json"),
                done=out / "attacks" / group / f"{name}.json",
                needs=[f"train-{group}-{name}", f"train-{group}-relu"],
            ))
    return steps


def write_tables(out: Path) -> list[Path]:
    """One Markdown table per group from the attack results that exist so far."""
    written = []
    for group, (_, runs) in groups().items():
        rows = []
        for name, _ in runs:
            path = out / "attacks" / group / f"{name}.json"
            if path.exists():
                result = json.loads(path.read_text())
                accuracy = {"clean": result["clean_accuracy"], **result["results"][0]["accuracy"]}
                rows.append(table_row(LABELS[name], accuracy))
        if rows:
            table = out / "tables" / f"{group}.md"
            atomic_write(table, f"# {group}\n\n" + format_table(rows))
            written.append(table)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="where CIFAR-10 and SVHN live (default data/)")
    parser.add_argument("--download", action="store_true", help="download missing datasets into --data-dir")
    parser.add_argument("--gpus", default="0", help="comma-separated GPU ids; one step runs on each at once")
    parser.add_argument("--out", default="results/paper")
    parser.add_argument("--dry-run", action="store_true", help="print the steps that would run")
    args = parser.parse_args()
    devices = [gpu.strip() for gpu in args.gpus.split(",") if gpu.strip()]
    if not devices:
        parser.error(f"--gpus must list at least one GPU id, got {args.gpus!r}")
    out = Path(args.out)
    try:
        run_steps(build_steps(args, out), devices=devices, log_dir=out / "logs", dry_run=args.dry_run)
    except RuntimeError as error:
        write_tables(out)
        sys.exit(f"paper: {error}")
    for table in write_tables(out):
        print(f"table: {table}")


if __name__ == "__main__":
    main()
