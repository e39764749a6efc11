"""The demo's pipeline (`python -m scripts.demo`, `make demo`): its models, its steps and its summary.

Three resnet18-cifar networks on Fashion-MNIST (ReLU, k-WTA 0.2, k-WTA 0.1), each trained by train.py and
attacked by attack.py's whole suite (the k-WTA ones with transfer from the ReLU twin, on which es is
calibrated too), the loss landscapes and the training curves, then OUT/summary.md from their results.
`args` is scripts/demo.py's command line (argparse's namespace): every size and budget comes from it.
"""

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from experiments.pipeline import Step, python_command, run_steps, step_seconds
from experiments.tables import format_table, table_row
from kwta.checkpoint import atomic_write

ROOT = Path(__file__).resolve().parent.parent  # the checkout: where the steps' commands run

MODELS = [("relu", "relu", None), ("kwta-0.2", "kwta", 0.2), ("kwta-0.1", "kwta", 0.1)]


def build_steps(args, out: Path) -> list[Step]:
    data = [*(["--data-dir", args.data_dir] if args.data_dir else []), *(["--download"] if args.download else [])]
    steps = []
    for name, activation, ratio in MODELS:
        run_dir = out / "runs" / name
        steps.append(Step(
            f"train-{name}",
            python_command(
                "train.py", "--arch", "resnet18-cifar", "--dataset", "fashion-mnist", "--activation", activation,
                *(["--ratio", ratio] if ratio else []), "--train-subset", args.train_subset,
                "--test-subset", args.test_subset, "--epochs", args.epochs, "--lr", args.lr,
                "--milestones", max(args.epochs - 1, 1), "--batch-size", args.batch_size, "--device", args.device,
                "--out", run_dir,
            ),
            done=run_dir / "summary.json", checkpoint=run_dir / "checkpoint.pt", location=data,
            resume=["--resume"], fresh=["--overwrite"],  # continue an interrupted attempt, else start afresh
        ))
    relu_checkpoint = out / "runs" / "relu" / "checkpoint.pt"
    for name, _, _ in MODELS:
        steps.append(Step(
            f"attack-{name}",
            python_command(
                "attack.py", "--checkpoint", out / "runs" / name / "checkpoint.pt",  # the whole suite, by default
                # the twin: transfer crafts on it; es's calibration on it reads the ReLU step's figures
                *(["--source-checkpoint", relu_checkpoint, "--twin-results", out / "attacks" / "relu.json"]
                  if name != "relu" else []),
                "--n-images", args.n_images, "--restarts", args.restarts, "--aa-iterations", args.aa_iterations,
                "--bpda-iterations", args.aa_iterations,
                "--square-queries", args.square_queries, "--es-schedule", args.es_schedule,
                "--eot-samples", args.eot_samples, "--device", args.device,
                "--out", out / "attacks" / f"{name}.json",
            ),
            done=out / "attacks" / f"{name}.json", location=data,
            needs=[f"train-{name}"] + ([] if name == "relu" else ["attack-relu"]),
        ))
    checkpoints = [out / "runs" / name / "checkpoint.pt" for name, _, _ in MODELS]
    steps.append(Step(
        "landscape",
        python_command("plots.landscape", "--checkpoints", *checkpoints, "--steps", args.landscape_steps,
                       "--image-index", 0, 1, 2, 3, "--out", out / "landscape.png"),
        done=out / "landscape.png", location=["--data-dir", args.data_dir] if args.data_dir else [],
        needs=[f"train-{name}" for name, _, _ in MODELS],
    ))
    steps.append(Step(
        "curves",
        python_command("plots.curves", "--metrics", *[out / "runs" / n / "metrics.jsonl" for n, _, _ in MODELS],
                       "--out", out / "curves.png"),
        done=out / "curves.png",
        needs=[f"train-{name}" for name, _, _ in MODELS],
    ))
    return steps


def write_summary(args, out: Path, seconds: float) -> Path:
    label = {"relu": "ReLU", "kwta-0.2": "k-WTA-0.2", "kwta-0.1": "k-WTA-0.1"}
    results = {name: json.loads((out / "attacks" / f"{name}.json").read_text()) for name, _, _ in MODELS}
    attacks = list(dict.fromkeys(a for result in results.values() for a in result["attacks"]))
    curve_eps = sorted({r["eps"] for result in results.values() for r in result["results"] + result["eps_curve"]})
    rows, timing, curves, checks, training, warnings = [], [], [], [], [], []
    for name, result in results.items():
        (at_eps,) = result["results"]
        rows.append(table_row(label[name], {"clean": result["clean_accuracy"], **at_eps["accuracy"]},
                              {"clean": result["clean_interval"], **at_eps["interval"]}))
        took = at_eps["seconds"]
        timing.append(f"| {label[name]} | " + " | ".join(f"{took[a]:.0f}" if a in took else "-" for a in attacks)
                      + " |")
        pgd = {at_eps["eps"]: at_eps["accuracy"]["pgd"], **{p["eps"]: p["pgd"] for p in result["eps_curve"]}}
        curves.append(f"| {label[name]} | " + " | ".join(f"{pgd[e]:.1%}" if e in pgd else "-" for e in curve_eps)
                      + " |")
        if result.get("es_calibration"):
            checks.append(f"- {label[name]}: {result['es_calibration']['line']}")
        warnings += [f"- {label[name]}: {warning}" for warning in result["warnings"]]
        run = json.loads((out / "runs" / name / "summary.json").read_text())
        training.append(f"| {label[name]} | {run['final_test_acc']:.2%} | {run['seconds_per_epoch']:.0f} |")
    relu = results["relu"]
    eps, settings = relu["eps"][0], relu["settings"]
    device = json.loads((out / "runs" / "relu" / "summary.json").read_text())["device"]
    times = step_seconds(out / "logs")
    total = sum(times.values())
    landscape = json.loads((out / "landscape.json").read_text())
    lines = [
        "# k-WTA demo: resnet18-cifar on Fashion-MNIST",
        "",
        f"Summary written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"{os.cpu_count()} CPU cores, device {device}. The steps took {total / 60:.1f} min when they ran "
        f"(minutes: {', '.join(f'{step} {took / 60:.1f}' for step, took in times.items())}); this invocation "
        f"took {seconds / 60:.1f} min, reusing finished steps.",
        "The demo's defaults (3,000 training images, 3 epochs, 32 attacked images, every attack cut in size) are",
        "sized for about 20 minutes on 2 CPU cores; this run's settings:",
        "",
        f"Training: {args.train_subset} images, {args.epochs} epochs, batch {args.batch_size}, SGD lr {args.lr} "
        f"(x0.1 for the last epoch), momentum 0.9; test accuracy on {args.test_subset} test images.",
        f"Attacks (attack.py's suite): L-inf eps {eps:g} on the first {relu['n_images']} test images; PGD "
        f"{settings['pgd_steps']} steps of 2.5*eps/{settings['pgd_steps']}, {settings['pgd_restarts']} random starts, "
        f"first adversarial iterate kept; DeepFool {settings['deepfool_steps']} steps (foolbox); AutoAttack's "
        f"standard version (pyautoattack) at {settings['autoattack_iterations']} iterations (standard 100) and "
        f"{settings['square_queries']} Square queries (standard 5000); Square alone, as many queries; BPDA at "
        f"temperatures {', '.join(f'{t:g}' for t in settings['bpda_temperatures'])}, {settings['bpda_steps']} sign "
        f"steps then APGD-CE and APGD-T at {settings['bpda_iterations']} iterations through the surrogate; eot "
        f"{settings['eot_steps']} "
        f"steps of {settings['eot_samples']} draws; es in stages of (steps, antithetic pairs) "
        f"{', '.join(f'{steps}x{pairs}' for steps, pairs in settings['es_schedule'])} (standard 20x50, 20x500, "
        f"60x10000), {settings['es_restarts']} runs; transfer = PGD on the ReLU model, {settings['pgd_restarts']} "
        f"starts.",
        f"Each figure: the robust accuracy +- the half-width of a band covering its 95% Wilson interval; with "
        f"{relu['n_images']} images one image is {100 / relu['n_images']:.1f} points: read them for their direction.",
        "",
        "## Robust accuracy (an image counts only if classified correctly and the attack failed)",
        "",
        format_table(rows),
        "Worst case counts an image only if it survived every attack. Plain PGD overstates k-WTA's robustness",
        "wherever another attack leaves less. Seconds per attack (2 CPU cores unless the summary says otherwise):",
        "",
        "| Activation | " + " | ".join(attacks) + " |",
        "|---|" + "---|" * len(attacks),
        *timing,
        "",
        "es calibrated on the ReLU model (es must come within 5 points of PGD there to count):",
        "",
        *(checks or ["- es was not run"]),
        "",
        "PGD alone against eps (the masking check: its success must grow with eps and reach about 100%):",
        "",
        "| Activation | " + " | ".join(f"eps {e:g}" for e in curve_eps) + " |",
        "|---|" + "---|" * len(curve_eps),
        *curves,
        "",
        "attack.py's warnings (gradient masking, es calibration):",
        "",
        *(warnings or ["- none"]),
        "",
        "## Training",
        "",
        "| Activation | test accuracy | seconds per epoch |",
        "|---|---|---|",
        *training,
        "",
        "## Figures",
        "",
        "![loss landscapes](landscape.png)",
        "",
        "Cross-entropy around a test image along the sign of its input gradient and a random +-1 direction",
        f"(radius eps, {args.landscape_steps} x {args.landscape_steps} points), shown for test image "
        f"{landscape['image_index'][0]}. Roughness (the mean absolute second difference of the loss grid divided "
        f"by its range), averaged over test images {', '.join(map(str, landscape['image_index']))}:",
        "",
        *(f"- {run['label']}: {run['mean_roughness']:.4f}" for run in landscape["checkpoints"]),
        "",
        "![training curves](curves.png)",
        "",
    ]
    path = out / "summary.md"
    atomic_write(path, "\n".join(lines))
    return path


def run(args) -> Path | None:
    """Run every unfinished step, then write the summary; return its path (None for --dry-run, which lists the
    steps instead). Raises RuntimeError naming the steps that failed."""
    out = Path(args.out)
    started = time.perf_counter()
    run_steps(build_steps(args, out), slots=[{}], log_dir=out / "logs", root=out, cwd=ROOT, dry_run=args.dry_run)
    return None if args.dry_run else write_summary(args, out, time.perf_counter() - started)
