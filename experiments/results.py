"""The results campaign (`python -m scripts.results`, `make results`): the demo's three networks trained to
convergence on the whole of Fashion-MNIST, released, and evaluated at full strength, across as many sessions
and machines as it takes. Each session runs the same command for as long as it has and commits what it made;
the next one, anywhere, continues from the committed files.

Three folders:
  WEIGHTS/fashion-mnist  the released networks (kwta/released.py), committed: each network is trained once
  PAGE                   committed: the steps' records (PAGE/pipeline), the attacks' journal folders (PAGE/journal,
                         one shard file per run), attack.py's results (PAGE/attacks, PAGE/checks), the figures and
                         the page itself (PAGE/README.md)
  OUT                    scratch, never committed: the training runs with their resume checkpoints
Steps, each resumable:
  train-NAME    train.py on the 60,000 training images (needed only until NAME is released)
  release-NAME  scripts/release.py: float16 weights, their record (test accuracy of the released weights on all
                10,000 test images) and the manifest
  attack-NAME   the first --n-images test images: PGD, AutoAttack, Square, BPDA, eot and (k-WTA) transfer from the
                ReLU twin at their standard budgets, with PGD's eps curve -> PAGE/attacks/NAME.json
  check-NAME    the first --check-images: es (calibrated on the ReLU twin) and the binarization test of every
                attack of the suite -> PAGE/checks/NAME.json
  landscape, curves
then PAGE/README.md: the results once every step has finished, else "in progress" with what is left (`--status`
prints the same from the committed files alone; `--summary-only` writes the page from them, byte for byte).
"""

import json
from pathlib import Path

from experiments.fashion import LABELS, MODELS, attack_steps, figure_steps, read_results, result_tables, train_steps
from experiments.pipeline import Step, python_command, run_steps, step_seconds, upstream
from experiments.tables import format_table
from kwta.checkpoint import atomic_write
from kwta.evaluation import binarization_table, describe, wilson_interval
from kwta.journal import progress

ROOT = Path(__file__).resolve().parent.parent
DATASET = "fashion-mnist"
MAIN_ATTACKS = "pgd,autoattack,square,bpda,eot"  # and transfer for the k-WTA models; es runs in the check step
EVALUATIONS = (("attack", "attacks"), ("check", "checks"))  # (step prefix, results folder)


class Campaign:
    """Where a campaign's files live, from scripts/results.py's --out, --page and --weights."""

    def __init__(self, args):
        self.out, self.page, self.weights = Path(args.out), Path(args.page), Path(args.weights)

    def network(self, name: str) -> Path:
        return self.weights / DATASET / f"{name}.pt"

    def record(self, name: str) -> Path:
        return self.weights / DATASET / f"{name}.json"

    def journal(self, prefix: str, name: str) -> Path:
        return self.page / "journal" / f"{prefix}-{name}"

    @property
    def log_dir(self) -> Path:
        return self.page / "pipeline"


def build_steps(args, campaign: Campaign, stop_at: float | None = None) -> list[Step]:
    recipe = ["--epochs", args.epochs, "--batch-size", args.batch_size, "--lr", args.lr, "--schedule", "onecycle",
              "--weight-decay", args.weight_decay, "--precision", args.precision,
              *(["--channels-last"] if args.channels_last else []), *(["--stem-relu"] if args.stem_relu else [])]
    if args.train_subset:  # a slice, for tests; the results use every image
        recipe += ["--train-subset", args.train_subset, "--test-subset", args.test_subset]
    budget = [] if args.budget == "standard" else ["--budget", args.budget]  # attack.py's default: standard
    main = ["--n-images", args.n_images, "--batch-size", args.attack_batch_size, *budget, "--pgd-steps", args.pgd_steps]
    check = ["--n-images", args.check_images, "--batch-size", args.attack_batch_size, "--eps-curve", "none",
             "--binarization", args.check_images, "--binarization-attacks", args.binarization_attacks, *budget,
             "--es-schedule", args.es_schedule,
             *(["--binarization-inner", args.binarization_inner] if args.binarization_inner != 999 else [])]
    attacks = {"relu": MAIN_ATTACKS, "kwta-0.2": MAIN_ATTACKS + ",transfer", "kwta-0.1": MAIN_ATTACKS + ",transfer"}
    networks = {name: campaign.network(name) for name, _, _ in MODELS}
    deadline = [] if stop_at is None else ["--stop-at", f"{stop_at:.0f}"]  # run, but no setting
    releases = [Step(f"release-{name}",
                     python_command("scripts.release", campaign.out / "runs" / name, f"{DATASET}/{name}", "--root",
                                    campaign.weights),
                     done=networks[name], needs=[f"train-{name}"], final=True,
                     location=["--data-dir", args.data_dir] if args.data_dir else [])
                for name, _, _ in MODELS]
    common = dict(networks=networks, made_by="release", journals=campaign.page / "journal", location=deadline)
    return [*train_steps(args, campaign.out, recipe, intermediate=True), *releases,
            *attack_steps(args, campaign.page, "attacks", main, attacks, **common),
            *attack_steps(args, campaign.page, "checks", check, dict.fromkeys(attacks, "es"), prefix="check",
                          **common),
            *figure_steps(args, campaign.page, networks,
                          {name: campaign.record(name).with_suffix(".metrics.jsonl") for name, _, _ in MODELS},
                          made_by="release")]


# ---------------------------------------------------------------------------------------------------------
# How far it is, from the committed files alone


def status(campaign: Campaign) -> dict:
    """Per network: released (and its record); per evaluation: its journal's progress and whether its result is
    written; and the CPU hours left at the rates the CPUs measured so far."""
    networks = {name: json.loads(campaign.record(name).read_text()) if campaign.record(name).exists() else None
                for name, _, _ in MODELS}
    evaluations = {}
    for prefix, folder in EVALUATIONS:
        for name, _, _ in MODELS:
            evaluations[f"{prefix}-{name}"] = {
                "progress": progress(campaign.journal(prefix, name)) if campaign.journal(prefix, name).is_dir()
                else None,
                "result": (campaign.page / folder / f"{name}.json").exists()}
    trained = [r["training"]["seconds_per_epoch"] * r["training"]["epochs"] for r in networks.values() if r]
    hours = {"training": None if not trained else
             sum(trained) / len(trained) * sum(r is None for r in networks.values()) / 3600}
    for prefix, _ in EVALUATIONS:
        hours[prefix] = _hours_left({k: v for k, v in evaluations.items() if k.startswith(prefix + "-")})
    return {"networks": networks, "evaluations": evaluations, "hours_left": hours,
            "units": {"done": sum(e["progress"]["done"] for e in evaluations.values() if e["progress"]),
                      "planned": sum(e["progress"]["planned"] for e in evaluations.values() if e["progress"])}}


def _hours_left(evaluations: dict[str, dict]) -> float | None:
    """Hours left to the evaluations of one kind: each attack's units left times its mean seconds per unit so
    far (over every model of this kind); an evaluation not yet walked through counts as one that has been."""
    seconds, units = {}, {}
    for evaluation in evaluations.values():
        for attack, (done, _, took) in (evaluation["progress"] or {"per_attack": {}})["per_attack"].items():
            seconds[attack], units[attack] = seconds.get(attack, 0.0) + took, units.get(attack, 0) + done
    rate = {attack: seconds[attack] / units[attack] for attack in seconds if units[attack]}
    known = [e["progress"] for e in evaluations.values() if e["progress"]]
    if not known:
        return None
    left = 0.0
    for evaluation in evaluations.values():
        shown = evaluation["progress"] or known[0]
        for attack, (done, planned, _) in shown["per_attack"].items():
            if attack not in rate:
                return None
            left += (planned - (done if evaluation["progress"] else 0)) * rate[attack]
    return left / 3600


def status_lines(campaign: Campaign, state: dict) -> list[str]:
    def hours(value: float | None) -> str:
        return "unknown (no rate measured yet)" if value is None else f"{value:.1f}"
    lines = ["| network | released | test accuracy (released weights) | epochs | seconds per epoch | trained on |",
             "|---|---|---|---|---|---|"]
    for name, record in state["networks"].items():
        if record is None:
            lines.append(f"| {LABELS[name]} | no | - | - | - | - |")
        else:
            low, high = record["test_interval"]
            lines.append(f"| {LABELS[name]} | {record['sha256'][:12]} | {record['test_accuracy']:.2%} ({low:.1%}-"
                         f"{high:.1%}, {record['test_images']} images) | {record['training']['epochs']} | "
                         f"{record['training']['seconds_per_epoch']:.0f} | {record['trained_on'] or 'unrecorded'} |")
    lines += ["", "| evaluation | units done | of | result | machines |", "|---|---|---|---|---|"]
    for step, evaluation in state["evaluations"].items():
        seen = evaluation["progress"]
        machines = "; ".join(f"{where}: {count}" for where, count in seen["machines"].items()) if seen else "-"
        lines.append(f"| {step} | {seen['done'] if seen else 0} | {seen['planned'] if seen else 'not planned yet'} "
                     f"| {'written' if evaluation['result'] else '-'} | {machines or '-'} |")
    left = state["hours_left"]
    lines += ["", f"Estimated CPU hours left: training {hours(left['training'])}, main table {hours(left['attack'])}, "
              f"checks {hours(left['check'])} (at the mean seconds per unit measured so far; the checks' units "
              "include the binarization test's, one per attack and image)."]
    return lines


# ---------------------------------------------------------------------------------------------------------
# The page


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


TITLE = "# k-WTA and ReLU on Fashion-MNIST, trained to convergence, evaluated at full strength"


def progress_page(campaign: Campaign, state: dict, command: str) -> list[str]:
    units = state["units"]
    return [TITLE, "", f"**In progress: {units['done']} of {units['planned']} units** (the units of the evaluations "
            "walked through so far; each of the others plans its own when it first runs).", "",
            f"Continue it with `{command}` on any machine, then commit weights/ and this folder.", "",
            *status_lines(campaign, state), ""]


def results_page(args, campaign: Campaign, command: str) -> list[str]:
    page = campaign.page
    results, checks = read_results(page, "attacks"), read_results(page, "checks")
    records = {name: json.loads(campaign.record(name).read_text()) for name, _, _ in MODELS}
    trained = {name: {"final_test_acc": r["test_accuracy"], "test_images": r["test_images"],
                      "epochs": r["training"]["epochs"], "seconds_per_epoch": r["training"]["seconds_per_epoch"]}
               for name, r in records.items()}
    tables, check_tables = result_tables(page, results, trained), result_tables(page, checks, trained)
    relu, run = results["relu"], records["relu"]["training"]
    settings = relu["settings"]
    times = step_seconds(campaign.log_dir)
    landscape = json.loads((page / "landscape.json").read_text())
    lines = [
        TITLE, "",
        f"Made with `{command}`; the steps took {sum(times.values()) / 3600:.2f} h when they ran (hours: "
        f"{', '.join(f'{step} {took / 3600:.2f}' for step, took in times.items())}). Machines: "
        + "; ".join(f"{name} trained on {r['trained_on']}" for name, r in records.items()) + "; the attacks' "
        "units on " + "; ".join(sorted({where for e in status(campaign)["evaluations"].values() if e["progress"]
                                        for where in e["progress"]["machines"]})) + ".",
        "",
        f"Training (train.py, the released networks' records in weights/{DATASET}/): resnet18-cifar, "
        f"{run['train_images']} training images, {run['epochs']} epochs, batch {run['args']['batch_size']}, SGD "
        f"momentum 0.9, one-cycle lr up to {run['args']['lr']}, weight decay {run['args']['weight_decay']}, "
        f"{run['train_precision']}{' channels-last' if run['args'].get('channels_last') else ''}. Evaluated: the "
        "released float16 weights in a float32 model; test accuracy on every test image.",
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
        "Seconds per attack (the main step; the check step's beside it), summed over the units of whichever "
        "machines ran them:",
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
    return lines


def write_page(args, campaign: Campaign, command: str) -> tuple[Path, bool]:
    """PAGE/README.md: the results if every step has finished, else the progress. (path, complete)."""
    state = status(campaign)
    complete = (all(e["result"] for e in state["evaluations"].values())
                and all((campaign.page / figure).exists() for figure in ("landscape.png", "curves.png")))
    lines = results_page(args, campaign, command) if complete else progress_page(campaign, state, command)
    path = campaign.page / "README.md"
    atomic_write(path, "\n".join(lines))
    return path, complete


def run(args, command: str, stop_at: float | None = None) -> tuple[Path, bool] | None:
    """Run every unfinished step (unless --summary-only), then write the page; None for --dry-run."""
    campaign = Campaign(args)
    if not args.summary_only:
        steps = build_steps(args, campaign, stop_at)
        if args.steps:
            unknown = set(args.steps) - {step.name for step in steps}
            if unknown:
                raise RuntimeError(f"--steps: no step {', '.join(sorted(unknown))} (choose from "
                                   f"{', '.join(step.name for step in steps)})")
            steps = upstream(steps, set(args.steps))
        run_steps(steps, slots=[{}], log_dir=campaign.log_dir, root=ROOT, cwd=ROOT, dry_run=args.dry_run)
    return None if args.dry_run else write_page(args, campaign, command)
