r"""Training curves from train.py's metrics.jsonl, and robust accuracy against eps from attack.py's JSON files.

    python -m plots.curves --metrics runs/fm-kwta/metrics.jsonl runs/fm-relu/metrics.jsonl \
        --attacks results/fm-kwta.json results/fm-relu.json --out results/curves.png

Panels: loss per epoch and accuracy per epoch (train dashed, test solid), then, with --attacks, accuracy
left by each attack against eps (one line per run and attack, starting from the clean accuracy at eps 0;
files of the same run at different eps are merged). A run is named by the folder its metrics.jsonl or
checkpoint lives in, so one run has one name and one colour in every panel.

Writes OUT (PNG), and beside it .pdf and .json (every plotted series, by run).
"""

import argparse
import json
import os
import sys

from experiments.cli import HelpFormatter

METRIC_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")
ATTACK_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
ATTACK_STYLES = ("-", "--", ":", "-.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--metrics", nargs="+", default=[], metavar="JSONL",
                        help="train.py metrics.jsonl files (default: none; give --metrics, --attacks or both)")
    parser.add_argument("--attacks", nargs="+", default=[], metavar="JSON",
                        help="attack.py --out JSON files (default: none)")
    parser.add_argument("--out", required=True, help="PNG to write (.pdf and .json go beside it)")
    args = parser.parse_args(argv)
    if not args.metrics and not args.attacks:
        parser.error("give --metrics, --attacks or both")
    if not args.out.endswith(".png"):
        parser.error(f"--out must name a .png file, got {args.out}")
    return args


def fail(message: object) -> None:
    sys.exit(f"curves.py: error: {message}")


def run_name(path: str) -> str:
    """The name of the run a file belongs to: a release's own (weights/fashion-mnist/relu.metrics.jsonl -> relu),
    else the folder it lives in (runs/fm-kwta/metrics.jsonl -> fm-kwta)."""
    name = os.path.basename(path)
    if name.endswith(".metrics.jsonl"):
        return name[: -len(".metrics.jsonl")]
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


def read_metrics(path: str) -> dict[str, list[float]]:
    """{key: values per epoch} for METRIC_KEYS, from one metrics.jsonl."""
    series = {key: [] for key in METRIC_KEYS}
    with open(path) as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                for key in METRIC_KEYS:
                    series[key].append(float(row[key]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{path}:{number}: not a train.py metrics line ({type(error).__name__}: "
                                 f"{error})") from None
    if not series["epoch"]:
        raise ValueError(f"{path}: no epochs recorded")
    return series


def read_attacks(path: str) -> tuple[str, dict[str, dict[float, float]]]:
    """(run name, {attack: {eps: accuracy}}) from one attack.py JSON; eps 0 is the clean accuracy.

    worst_case is left out when the file holds one attack: it is that attack's curve again.
    """
    with open(path) as file:
        try:
            summary = json.load(file)
            clean = float(summary["clean_accuracy"])
            by_attack: dict[str, dict[float, float]] = {}
            for result in summary["results"]:
                single_attack = len([name for name in result["accuracy"] if name != "worst_case"]) == 1
                for attack, accuracy in result["accuracy"].items():
                    if attack == "worst_case" and single_attack:
                        continue
                    by_attack.setdefault(attack, {0.0: clean})[float(result["eps"])] = float(accuracy)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: not an attack.py results file ({type(error).__name__}: {error})") from None
    return run_name(summary.get("checkpoint") or path), by_attack


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Only now the heavy imports: --help and a bad argument answer at once.
    import matplotlib

    matplotlib.use("Agg")  # figures are written to files; no display needed
    import matplotlib.pyplot as plt

    from experiments.figures import save_figure

    # Setup: every file read and grouped by run.
    try:
        training = {}
        for path in args.metrics:
            name = run_name(path)
            if name in training:
                fail(f"--metrics: two files belong to the run {name!r}; give runs distinct folders")
            training[name] = read_metrics(path)
        robustness: dict[str, dict[str, dict[float, float]]] = {}
        for path in args.attacks:
            name, by_attack = read_attacks(path)
            for attack, points in by_attack.items():
                robustness.setdefault(name, {}).setdefault(attack, {}).update(points)
    except (OSError, ValueError) as error:
        fail(error)
    runs = list(dict.fromkeys([*training, *robustness]))
    colors = {name: plt.cm.tab10(index % 10) for index, name in enumerate(runs)}
    attacks = list(dict.fromkeys(attack for by_attack in robustness.values() for attack in by_attack))

    # The figure: loss and accuracy per epoch, then robust accuracy against eps.
    panels = (["loss", "accuracy"] if training else []) + (["robust"] if robustness else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8), squeeze=False)
    axis_of = dict(zip(panels, axes[0], strict=True))
    for name, series in training.items():
        for split, style in (("train", "--"), ("test", "-")):
            axis_of["loss"].plot(series["epoch"], series[f"{split}_loss"], style, marker="o", markersize=4,
                                 color=colors[name], label=f"{name} ({split})")
            axis_of["accuracy"].plot(series["epoch"], [100 * a for a in series[f"{split}_acc"]], style, marker="o",
                                     markersize=4, color=colors[name], label=f"{name} ({split})")
    if training:
        axis_of["loss"].set(title="Cross-entropy per epoch", xlabel="epoch", ylabel="cross-entropy loss (nats)")
        axis_of["accuracy"].set(title="Accuracy per epoch", xlabel="epoch", ylabel="accuracy (%)")
        for panel in ("loss", "accuracy"):
            axis_of[panel].xaxis.get_major_locator().set_params(integer=True)
    for name, by_attack in robustness.items():
        for attack, points in by_attack.items():
            index = attacks.index(attack)
            eps = sorted(points)
            axis_of["robust"].plot(eps, [100 * points[e] for e in eps], ATTACK_STYLES[index % len(ATTACK_STYLES)],
                                   marker=ATTACK_MARKERS[index % len(ATTACK_MARKERS)], color=colors[name],
                                   label=f"{name}: {attack}")
    if robustness:
        axis_of["robust"].set(title="Robust accuracy against the attack budget",
                              xlabel="ε (L∞ distance, pixel scale [0, 1]; 0 = clean)", ylabel="robust accuracy (%)")
        axis_of["robust"].set_ylim(-2, 102)
    for axis in axes[0]:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()

    # Results: the figure and every series it shows.
    summary = {
        "training": training,
        "robustness": {name: {attack: {"eps": sorted(points), "accuracy": [points[e] for e in sorted(points)]}
                              for attack, points in by_attack.items()} for name, by_attack in robustness.items()},
        "sources": {"metrics": args.metrics, "attacks": args.attacks},
    }
    print("wrote " + ", ".join(save_figure(figure, args.out, summary=summary)))


if __name__ == "__main__":
    main()
