"""The results pipeline (`python -m scripts.results`, `make results`): the demo's three networks trained to
convergence on the whole of Fashion-MNIST and evaluated at full strength.

Steps, each resumable (train.py from its epoch checkpoint, attack.py from its journal):
  train-NAME    60,000 training images, the recipe of scripts/results.py, test accuracy on all 10,000
  attack-NAME   the first --n-images test images: PGD, AutoAttack, Square, BPDA, eot and (k-WTA) transfer from
                the ReLU twin at their standard budgets, with PGD's eps curve -> OUT/attacks/NAME.json
  check-NAME    the first --check-images: es (calibrated on the ReLU twin) and the binarization test of every
                attack of the suite -> OUT/checks/NAME.json
  landscape, curves
then OUT/summary.md. `--summary-only` writes the summary from the files alone (the committed raw results).
"""

import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from experiments.fashion import LABELS, attack_steps, figure_steps, read_results, result_tables, train_steps
from experiments.machine import cpu_name
from experiments.pipeline import Step, run_steps, step_seconds
from experiments.tables import format_table
from kwta.checkpoint import atomic_write
from kwta.evaluation import binarization_table, describe, wilson_interval

ROOT = Path(__file__).resolve().parent.parent
MAIN_ATTACKS = "pgd,autoattack,square,bpda,eot"  # and transfer for the k-WTA models; es runs in the check step


def build_steps(args, out: Path) -> list[Step]:
    recipe = ["--epochs", args.epochs, "--batch-size", args.batch_size, "--lr", args.lr, "--schedule", "onecycle",
              "--weight-decay", args.weight_decay, "--precision", args.precision,
              *(["--channels-last"] if args.channels_last else []), *(["--stem-relu"] if args.stem_relu else [])]
    if args.train_subset:  # a slice, for tests; the results use every image
        recipe += ["--train-subset", args.train_subset, "--test-subset", args.test_subset]
    main = ["--n-images", args.n_images, "--batch-size", args.attack_batch_size]
    check = ["--n-images", args.check_images, "--batch-size", args.attack_batch_size, "--eps-curve", "none",
             "--binarization", args.check_images, "--binarization-attacks", args.binarization_attacks,
             "--es-schedule", args.es_schedule]
    if args.cut:  # every budget cut to `cut` of its standard: a smoke run of the whole pipeline
        cut = ["--restarts", "1", "--aa-iterations", args.cut, "--bpda-iterations", args.cut, "--bpda-steps",
               args.cut, "--square-queries", args.cut, "--eot-samples", "1", "--eot-steps", args.cut,
               "--pgd-steps", args.cut, "--es-restarts", "1", "--binarization-inner", args.cut]
        main, check = main + cut, check + cut
    attacks = {"relu": MAIN_ATTACKS, "kwta-0.2": MAIN_ATTACKS + ",transfer", "kwta-0.1": MAIN_ATTACKS + ",transfer"}
    return [*train_steps(args, out, recipe), *attack_steps(args, out, "attacks", main, attacks),
            *attack_steps(args, out, "checks", check, dict.fromkeys(attacks, "es"), prefix="check"),
            *figure_steps(args, out)]


def verdict(label: str, result: dict) -> str:
    """Does PGD's figure exceed the worst case by more than the intervals (PGD's lower bound above the worst
    case's upper one)?"""
    (at_eps,) = result["results"]
    pgd, worst = at_eps["interval"]["pgd"], at_eps["interval"]["worst_case"]
    gap = at_eps["accuracy"]["pgd"] - at_eps["accuracy"]["worst_case"]
    answer = ("yes: PGD's interval lies wholly above the worst case's" if pgd[0] > worst[1] else
              "no: the intervals overlap")
    return (f"- {label}: PGD {describe(at_eps['accuracy']['pgd'], pgd)}, worst case "
            f"{describe(at_eps['accuracy']['worst_case'], worst)}; {gap:.1%} apart. Beyond the intervals? {answer}.")


def with_es(label: str, result: dict, check: dict) -> str:
    """The worst case over the check's images once es joins the suite."""
    n = check["n_images"]
    (main_at,), (check_at,) = result["results"], check["results"]
    worst = result["per_image"]["robust"][f"{main_at['eps']:g}"]["worst_case"][:n]
    es = check["per_image"]["robust"][f"{check_at['eps']:g}"]["es"]
    both = sum(w and e for w, e in zip(worst, es, strict=True))

    def share(count: int) -> str:
        return describe(count / n, wilson_interval(count, n))
    return (f"- {label}: on the first {n} images, es leaves {share(sum(es))}; the worst case with es "
            f"{share(both)} (without: {share(sum(worst))})")


def write_summary(args, out: Path, seconds: float) -> Path:
    results, checks = read_results(out, "attacks"), read_results(out, "checks")
    tables = result_tables(out, results)
    check_tables = result_tables(out, checks)
    relu = results["relu"]
    settings = relu["settings"]
    times = step_seconds(out / "logs")
    landscape = json.loads((out / "landscape.json").read_text())
    trained = json.loads((out / "runs" / "relu" / "summary.json").read_text())
    run = trained["args"]
    lines = [
        "# k-WTA and ReLU on Fashion-MNIST, trained to convergence, evaluated at full strength",
        "",
        f"Summary written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
        f"({cpu_name()}, device {trained['device']}); the steps took {sum(times.values()) / 3600:.2f} h when they ran "
        f"(hours: {', '.join(f'{step} {took / 3600:.2f}' for step, took in times.items())}); this invocation "
        f"{seconds / 60:.1f} min.",
        "",
        f"Training (train.py): resnet18-cifar, {trained['train_images']} training images, {run['epochs']} epochs, "
        f"batch {run['batch_size']}, SGD momentum 0.9, one-cycle lr up to {run['lr']}, weight decay "
        f"{run['weight_decay']}, {trained['train_precision']}"
        f"{' channels-last' if run.get('channels_last') else ''}; test accuracy on {trained['test_images']} test "
        "images, in fp32.",
        f"Attacks (attack.py): L-inf eps {relu['eps'][0]:g} on the first {relu['n_images']} test images; PGD "
        f"{settings['pgd_steps']} steps, {settings['pgd_restarts']} starts; AutoAttack's standard version at "
        f"{settings['autoattack_iterations']} iterations, {settings['square_queries']} Square queries; Square alone "
        f"as many; BPDA at temperatures {', '.join(f'{t:g}' for t in settings['bpda_temperatures'])} "
        f"({settings['bpda_steps']} sign steps, then APGD-CE and APGD-T at {settings['bpda_iterations']} "
        f"iterations); eot {settings['eot_steps']} steps of {settings['eot_samples']} draws at sigma "
        f"{settings['eot_rel_sigma']:g} eps; transfer from the ReLU twin. es and the binarization test on the first "
        f"{checks['relu']['n_images']} images: es in stages "
        f"{', '.join(f'{steps}x{pairs}' for steps, pairs in checks['relu']['settings']['es_schedule'])} "
        "(steps x antithetic pairs; Tramer et al.'s: 20x50, 20x500, 60x10000), "
        f"{checks['relu']['settings']['es_restarts']} runs.",
        "",
        "## Robust accuracy",
        "",
        format_table(tables["rows"]),
        "Worst case: an image counts only if classified correctly and no attack broke it. +- covers the 95% Wilson "
        "interval.",
        "",
        "Does k-WTA's PGD figure exceed its worst case by more than the intervals?",
        "",
        *(verdict(LABELS[name], result) for name, result in results.items()),
        "",
        "es, and the worst case with it:",
        "",
        *(with_es(LABELS[name], results[name], checks[name]) for name in results),
        *(check_tables["calibration"] or ["- es was not run"]),
        "",
        "## Were the attacks strong enough? The binarization test",
        "",
    ]
    for name, check in checks.items():
        lines += [f"### {LABELS[name]}", "", *binarization_table(check["binarization"])]
    lines += [
        "## PGD against eps, and the seconds",
        "",
        *tables["curve"],
        "",
        "Seconds per attack (the main step; the check step's beside it):",
        "",
        *tables["seconds"],
        "",
        *check_tables["seconds"],
        "",
        "## attack.py's warnings",
        "",
        *(tables["warnings"] + check_tables["warnings"] or ["- none"]),
        "",
        "## Training",
        "",
        *tables["training"],
        "",
        "![training curves](curves.png)",
        "",
        "![loss landscapes](landscape.png)",
        "",
        "Cross-entropy around a test image along the sign of its input gradient and a random +-1 direction; "
        "roughness averaged over test images " + ", ".join(map(str, landscape["image_index"])) + ": "
        + ", ".join(f"{r['label']} {r['mean_roughness']:.4f}" for r in landscape["checkpoints"]) + ".",
        "",
    ]
    path = out / "summary.md"
    atomic_write(path, "\n".join(lines))
    return path


def run(args) -> Path | None:
    """Run every unfinished step (unless --summary-only), then write the summary; None for --dry-run."""
    out = Path(args.out)
    started = time.perf_counter()
    if not args.summary_only:
        run_steps(build_steps(args, out), slots=[{}], log_dir=out / "logs", root=out, cwd=ROOT, dry_run=args.dry_run)
    return None if args.dry_run else write_summary(args, out, time.perf_counter() - started)
