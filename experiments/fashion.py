"""What the Fashion-MNIST pipelines (the demo, the results) share: three resnet18-cifar networks (ReLU, k-WTA
0.2, k-WTA 0.1), each trained by train.py and attacked by attack.py with the ReLU one as its twin, the figures,
and the tables read back from the steps' files.

Each pipeline (experiments/demo.py, experiments/results.py) chooses the recipe and the budgets; the steps and
the tables are made here, once.
"""

import json
from collections.abc import Sequence
from pathlib import Path

from experiments.pipeline import Step, python_command
from experiments.tables import table_row
from kwta.evaluation import wilson_interval

MODELS = [("relu", "relu", None), ("kwta-0.2", "kwta", 0.2), ("kwta-0.1", "kwta", 0.1)]
LABELS = {"relu": "ReLU", "kwta-0.2": "k-WTA-0.2", "kwta-0.1": "k-WTA-0.1"}


def data_flags(args) -> list[str]:
    """Where Fashion-MNIST lives: a location, not a setting (a step does not rerun when it moves)."""
    return [*(["--data-dir", args.data_dir] if args.data_dir else []), *(["--download"] if args.download else [])]


def checkpoint(out: Path, name: str) -> Path:
    return out / "runs" / name / "checkpoint.pt"


def train_steps(args, out: Path, recipe: Sequence, intermediate: bool = False) -> list[Step]:
    """train-NAME for each model: train.py with `recipe` (its flags), resumed from its checkpoint if interrupted.
    intermediate: needed only until the steps that need it (a release) have finished."""
    steps = []
    for name, activation, ratio in MODELS:
        run_dir = out / "runs" / name
        steps.append(Step(
            f"train-{name}",
            python_command("train.py", "--arch", "resnet18-cifar", "--dataset", "fashion-mnist", "--activation",
                           activation, *(["--ratio", ratio] if ratio else []), *recipe, "--device", args.device,
                           "--out", run_dir),
            done=run_dir / "summary.json", checkpoint=run_dir / "checkpoint.pt", location=data_flags(args),
            resume=["--resume"], fresh=["--overwrite"],  # continue an interrupted attempt, else start afresh
            intermediate=intermediate,
        ))
    return steps


def attack_steps(args, out: Path, folder: str, budgets: Sequence, attacks: dict[str, str] | None = None,
                 prefix: str = "attack", networks: dict[str, Path] | None = None, made_by: str = "train",
                 journals: Path | None = None, location: Sequence = ()) -> list[Step]:
    """PREFIX-NAME for each model: attack.py with `budgets` into OUT/FOLDER/NAME.json (resumed from its journal if
    interrupted). The k-WTA models get the ReLU one as twin: transfer crafts on it and es's calibration reads
    its step's figures (so, with es, they wait for it). attacks: per model, --attacks (default: the whole suite).
    networks: each model's checkpoint (default: train.py's in OUT/runs), made by the step MADE_BY-NAME and read
    as an input; journals: a folder holding each step's journal folder (kept), instead of OUT.journal files;
    location: more arguments that are run but are no setting (a deadline)."""
    networks = networks or {name: checkpoint(out, name) for name, _, _ in MODELS}
    steps = []
    for name, _, _ in MODELS:
        with_es = attacks is None or "es" in attacks[name].split(",")
        twin = [] if name == "relu" else ["--source-checkpoint", networks["relu"],
                                          *(["--twin-results", out / folder / "relu.json"] if with_es else [])]
        journal = [] if journals is None else ["--journal", journals / f"{prefix}-{name}"]
        steps.append(Step(
            f"{prefix}-{name}",
            python_command("attack.py", "--checkpoint", networks[name], *twin,
                           *(["--attacks", attacks[name]] if attacks else []), *budgets, "--device", args.device,
                           *journal, "--out", out / folder / f"{name}.json"),
            done=out / folder / f"{name}.json", location=[*data_flags(args), *location],
            inputs=[] if made_by == "train" else [networks[name], *([] if name == "relu" else [networks["relu"]])],
            needs=[f"{made_by}-{name}"] + ([] if name == "relu" else
                                           [f"{prefix}-relu" if with_es else f"{made_by}-relu"]),
        ))
    return steps


def figure_steps(args, out: Path, networks: dict[str, Path] | None = None,
                 metrics: dict[str, Path] | None = None, made_by: str = "train") -> list[Step]:
    """The loss landscapes of the three trained models and their training curves, into OUT. networks, metrics:
    each model's checkpoint and metrics.jsonl (default: train.py's in OUT/runs), made by MADE_BY-NAME."""
    networks = networks or {name: checkpoint(out, name) for name, _, _ in MODELS}
    metrics = metrics or {name: out / "runs" / name / "metrics.jsonl" for name, _, _ in MODELS}
    trained = [f"{made_by}-{name}" for name, _, _ in MODELS]
    return [
        Step("landscape",
             python_command("plots.landscape", "--checkpoints", *networks.values(),
                            "--steps", args.landscape_steps, "--image-index", 0, 1, 2, 3, "--out",
                            out / "landscape.png"),
             done=out / "landscape.png", location=["--data-dir", args.data_dir] if args.data_dir else [],
             needs=trained),
        Step("curves", python_command("plots.curves", "--metrics", *metrics.values(), "--out", out / "curves.png"),
             done=out / "curves.png", needs=trained),
    ]


def read_results(out: Path, folder: str) -> dict[str, dict]:
    """{model name: its attack.py JSON in OUT/FOLDER}, in MODELS' order."""
    return {name: json.loads((out / folder / f"{name}.json").read_text()) for name, _, _ in MODELS}


def result_tables(out: Path, results: dict[str, dict], trained: dict[str, dict] | None = None) -> dict[str, list[str]]:
    """The tables of attack.py's results, as Markdown lines: "rows" (table_row's, for format_table), "seconds"
    (per attack), "curve" (PGD against eps), "calibration" and "warnings" (bullets), "training" (test accuracy
    and seconds per epoch from each run's summary.json, or from `trained`: {name: {"final_test_acc",
    "test_images", "epochs", "seconds_per_epoch"}})."""
    attacks = list(dict.fromkeys(a for result in results.values() for a in result["attacks"]))
    curve_eps = sorted({r["eps"] for result in results.values() for r in result["results"] + result["eps_curve"]})
    tables = {"rows": [], "seconds": ["| Activation | " + " | ".join(attacks) + " | whole run |",
                                      "|---|" + "---|" * (len(attacks) + 1)],
              "curve": ["| Activation | " + " | ".join(f"eps {e:g}" for e in curve_eps) + " |",
                        "|---|" + "---|" * len(curve_eps)],
              "calibration": [], "warnings": [],
              "training": ["| Activation | test accuracy | 95% interval | test images | epochs | seconds per epoch |",
                           "|---|---|---|---|---|---|"]}
    for name, result in results.items():
        label = LABELS[name]
        (at_eps,) = result["results"]
        tables["rows"].append(table_row(label, {"clean": result["clean_accuracy"], **at_eps["accuracy"]},
                                        {"clean": result["clean_interval"], **at_eps["interval"]}))
        took = at_eps["seconds"]
        tables["seconds"].append(f"| {label} | " + " | ".join(f"{took[a]:.0f}" if a in took else "-" for a in attacks)
                                 + f" | {result['seconds']:.0f} |")
        if "pgd" in at_eps["accuracy"]:
            pgd = {at_eps["eps"]: at_eps["accuracy"]["pgd"], **{p["eps"]: p["pgd"] for p in result["eps_curve"]}}
            tables["curve"].append(f"| {label} | " + " | ".join(f"{pgd[e]:.1%}" if e in pgd else "-"
                                                                for e in curve_eps) + " |")
        if result.get("es_calibration"):
            tables["calibration"].append(f"- {label}: {result['es_calibration']['line']}")
        tables["warnings"] += [f"- {label}: {warning}" for warning in result["warnings"]]
        run = trained[name] if trained else json.loads((out / "runs" / name / "summary.json").read_text())
        correct = round(run["final_test_acc"] * run["test_images"])
        low, high = wilson_interval(correct, run["test_images"])
        tables["training"].append(f"| {label} | {run['final_test_acc']:.2%} | {low:.1%}-{high:.1%} | "
                                  f"{run['test_images']} | {run['epochs']} | {run['seconds_per_epoch']:.0f} |")
    return tables
