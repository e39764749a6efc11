r"""Release a network train.py has trained: float16 weights into weights/DATASET/, with its record and manifest
(kwta/released.py says what the files hold).

    python -m scripts.release results/fashion-mnist/runs/relu fashion-mnist/relu
    python -c "import kwta; print(kwta.load_released('fashion-mnist/relu'))"

The run must have finished (its summary.json exists). The test accuracy in the record is measured on the
released weights themselves, float16 loaded into a float32 model, over the whole test set.
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

from experiments.cli import HelpFormatter

# train.py's flags that say where or how a run was continued, not what it trained.
NOT_THE_RECIPE = {"resume", "overwrite", "download", "workers", "help"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("run", help="train.py's --out: its checkpoint.pt, metrics.jsonl and summary.json")
    parser.add_argument("name", help="DATASET/NETWORK, e.g. fashion-mnist/relu")
    parser.add_argument("--root", help="the releases' folder (default: the checkout's weights/, or $KWTA_WEIGHTS)")
    parser.add_argument("--data-dir", help="the test set's folder (default: the dataset's, as train.py's)")
    parser.add_argument("--batch-size", type=int, default=500, help="test batch size")
    return parser.parse_args(argv)


def train_command(args: dict) -> str:
    """The train.py command line that trains this run again: the network, then every flag whose value is not
    the one train.py would fill in by itself."""
    import train

    network = ["--arch", args["arch"], "--dataset", args["dataset"], "--activation", args["activation"]]
    defaults = vars(train.parse_args(network))
    words = ["python", "train.py", *network]
    for action in train.build_parser()._actions:
        if action.dest in NOT_THE_RECIPE or not action.option_strings or action.dest not in args:
            continue
        value, flag = args[action.dest], action.option_strings[-1]
        if (value == defaults.get(action.dest) and action.dest != "ratio") or value is None or value is False:
            continue
        if action.dest == "ratio" and args["activation"] != "kwta":
            continue
        if value is True:
            words.append(flag)
        elif action.dest == "ratio_schedule":
            words += [flag, ":".join(f"{part:g}" for part in value)]
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        else:
            words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(words)


def test_accuracy(model, dataset, batch_size: int) -> tuple[int, int]:
    """(correct, images) of `model` in fp32 over `dataset`."""
    import torch
    from torch.utils.data import DataLoader

    correct = seen = 0
    with torch.no_grad():
        for images, labels in DataLoader(dataset, batch_size=batch_size):
            correct += int((model(images).argmax(dim=1) == labels).sum())
            seen += len(labels)
    return correct, seen


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from kwta.checkpoint import load_checkpoint, load_model
    from kwta.data import get_datasets
    from kwta.evaluation import wilson_interval
    from kwta.machine import commit, machine
    from kwta.released import paths, release, released_state

    run = Path(args.run)
    try:
        paths(args.name, args.root)
        summary = json.loads((run / "summary.json").read_text())
        trained = load_checkpoint(run / "checkpoint.pt")
    except (ValueError, OSError) as error:
        sys.exit(f"release: {error}")
    model, _ = load_model(run / "checkpoint.pt")
    with torch.no_grad():  # the released weights: float16, loaded into the float32 model
        model.load_state_dict(released_state(trained["model"]))
    _, test_ds, _ = get_datasets(summary["dataset"], args.data_dir)
    correct, seen = test_accuracy(model, test_ds, args.batch_size)
    info = {
        "command": train_command(summary["args"]), "trained_on": summary.get("machine"),
        "released_on": machine(), "commit": commit(), "spec": trained["spec"], "test_images": seen,
        "test_accuracy": correct / seen, "test_interval": wilson_interval(correct, seen),
        "test_accuracy_before_release": summary["final_test_acc"], "training": summary,
    }
    weights = release(run / "checkpoint.pt", args.name, info=info, root=args.root, metrics=run / "metrics.jsonl")
    print(f"released {args.name}: {weights} ({weights.stat().st_size / 2**20:.1f} MiB), test accuracy "
          f"{correct / seen:.2%} of {seen} on the released weights ({summary['final_test_acc']:.2%} before)")


if __name__ == "__main__":
    main()
