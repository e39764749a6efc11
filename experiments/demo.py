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

from experiments.fashion import attack_steps, figure_steps, read_results, result_tables, train_steps
from experiments.pipeline import Step, run_steps, step_seconds
from experiments.tables import format_table
from kwta.checkpoint import atomic_write

ROOT = Path(__file__).resolve().parent.parent  # the checkout: where the steps' commands run


def build_steps(args, out: Path) -> list[Step]:
    recipe = ["--train-subset", args.train_subset, "--test-subset", args.test_subset, "--epochs", args.epochs,
              "--lr", args.lr, "--milestones", max(args.epochs - 1, 1), "--batch-size", args.batch_size,
              "--channels-last"]  # faster on the CPUs measured (python -m bench.training), the same on CUDA
    budgets = ["--n-images", args.n_images, "--budget", args.budget]
    return [*train_steps(args, out, recipe), *attack_steps(args, out, "attacks", budgets), *figure_steps(args, out)]


def write_summary(args, out: Path, seconds: float) -> Path:
    results = read_results(out, "attacks")
    tables = result_tables(out, results)
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
        format_table(tables["rows"]),
        "Worst case counts an image only if it survived every attack. Plain PGD overstates k-WTA's robustness",
        "wherever another attack leaves less. Seconds per attack (2 CPU cores unless the summary says otherwise):",
        "",
        *tables["seconds"],
        "",
        "es calibrated on the ReLU model (at an eps where PGD leaves 30-70%, es must break 90% of what PGD breaks, "
        "image by image, to count):",
        "",
        *(tables["calibration"] or ["- es was not run"]),
        "",
        "PGD alone against eps (the masking check: its success must grow with eps and reach about 100%):",
        "",
        *tables["curve"],
        "",
        "attack.py's warnings (gradient masking, es calibration):",
        "",
        *(tables["warnings"] or ["- none"]),
        "",
        "## Training",
        "",
        *tables["training"],
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
