"""Evaluate one checkpoint under L-inf attacks: robust accuracy per attack and in the worst case, each with
its 95% interval.

    python attack.py --checkpoint runs/fm-kwta/checkpoint.pt --source-checkpoint runs/fm-relu/checkpoint.pt \\
        --n-images 256 --out results/fm-kwta.json --table results.md      # the whole suite (the default)
    python attack.py --checkpoint runs/fm-kwta/checkpoint.pt --attacks pgd,autoattack --n-images 64
    torchrun --nproc_per_node=4 attack.py ...     # batches split across processes, counts all-reduced

Attacks (--attacks, comma-separated; all, the default, is the table suite pgd,deepfool,autoattack,square,
bpda,eot,es,transfer; transfer drops out of it without --source-checkpoint):
  pgd         Madry et al.'s PGD: uniform random start, --pgd-steps 40 sign steps of --pgd-step (2.5*eps/steps)
              on --pgd-loss (ce), the first adversarial iterate kept, --restarts 5 independent random starts.
              --pgd-rel-stepsize 0.003 reproduces the replication's foolbox step (40*0.003*eps in all).
  deepfool    foolbox LinfDeepFoolAttack, 20 steps, 10 candidates (the replication's).
  autoattack  AutoAttack's standard version from the official code (pyautoattack 0.2.0, Croce & Hein):
              APGD-CE, APGD-T (9 targets), FAB-T (9 targets), each 100 iterations, then Square with 5000
              queries, each on the images the previous ones left. --aa-iterations and --square-queries cut
              these budgets (tests, CPU demos); the defaults are the standard ones.
  apgd-ce, apgd-t, fab, square
              one part of AutoAttack alone, standard settings (fab is FAB-T). Square is score-based and
              gradient-free: the suite runs it alone too, as the check that gradients do not mislead.
  bpda        BPDA: PGD on the margin whose backward goes through x*sigmoid((x - t)/T) in every k-WTA layer
              (t the row's k-th largest value, T = temperature * the row's std) while the forward stays
              exact; one random start at each of --bpda-temperatures (0.3,1,3), the first success kept.
  eot         PGD on the margin with the gradient averaged over --eot-samples (8) Gaussian draws of scale
              --eot-sigma (0.05) around the iterate, --pgd-steps steps of --pgd-step.
  es          Tramer et al. (2020)'s attack on k-WTA: sign steps on the logit margin with the gradient
              estimated by antithetic Gaussian finite differences (sigma = eps), the pairs per image growing
              linearly to --es-samples over --es-steps: about samples*(steps+1) forward passes per image
              (1,050 at the defaults 20 x 50, far below Tramer et al.'s budget: raise both on a GPU). Probes
              run --es-probe-batch images per forward pass, so memory stays bounded at any budget.
  transfer    PGD (restarts, last iterate) crafted on --source-checkpoint, evaluated on this model.

The ReLU twin: --source-checkpoint names the model trained like this one but with ReLU. transfer crafts on
it, and es is calibrated on it: es and PGD both run there (same images, settings, seeds), and attack.py
prints whether es comes within 5 points of PGD, or that es at this budget is too weak to count. attack.py
takes it as the twin when its dataset, input size and classes match and its activation is ReLU; when the
checkpoint itself is a ReLU model, es is calibrated on it directly. When the twin has been attacked already
(same images, eps, settings and seed), --twin-results TWIN.json reads those two figures instead of
computing them again.

Only correctly classified images are attacked; an image counts as robust if it is classified correctly
and the attack failed, and worst case counts it only if it survived every attack run. Every attack's
output is checked (within eps + 1e-6 of the image in L-inf, in [0, 1], no NaN) and a violation aborts.
Every robust accuracy carries a 95% Wilson score interval (JSON: the bounds; printed and in the table:
+- the larger distance from the figure to a bound, so the band covers the interval).
Gradient-masking warnings: an attack beating PGD by more than 5 points, or leaving at most half of PGD's
figure and 2 points or more below it (the worst case well below PGD),
Square beating every white-box attack, PGD success not growing with eps or not reaching about 100% at
the largest eps of its curve (--eps-curve, on by default: PGD alone at 0.5, 2, 4 and 8 x eps), vanishing
input gradients.

Images: the first --n-batches x --batch-size (default 10 x 32, as the replication) test images, or the
first --n-images, always in the same order with the same per-batch seeds, so runs are comparable.
Writes --out (JSON: spec, settings, eps, n_images, clean accuracy, each attack's accuracy, interval, count
and seconds, the es calibration, the eps curve, warnings) and --table (Markdown rows in the replication's
format, merged by label, plus the same rows as CSV beside it).
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

from experiments.cli import positive_float, positive_int
from experiments.tables import format_csv, format_table, merge_rows, parse_table, table_row
from kwta import distributed
from kwta.attacks import (
    ATTACKS,
    BPDA_TEMPERATURES,
    TABLE_SUITE,
    AttackSanityError,
    AttackSettings,
    attack_batch,
    predict,
)
from kwta.checkpoint import atomic_write, load_model
from kwta.data import DEFAULT_EPS, get_datasets
from kwta.evaluation import es_calibration, masking_warnings, plus_minus, vanishing_gradients, wilson_interval

DEFAULT_N_BATCHES, DEFAULT_BATCH_SIZE = 10, 32
EPS_CURVE_FACTORS = (0.5, 2, 4, 8)
TWIN_KEYS = ("dataset", "in_channels", "input_size", "num_classes")


def epsilon(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (images live in [0, 1]), got {text}")
    return value


def epsilon_list(text: str) -> list[float]:
    return sorted({epsilon(part) for part in text.split(",") if part.strip()})


def eps_curve(text: str) -> list[float] | str:
    return text if text in ("auto", "none") else epsilon_list(text)


def temperature_list(text: str) -> tuple[float, ...]:
    return tuple(positive_float(part) for part in text.split(",") if part.strip())


def attack_list(text: str) -> tuple[list[str], bool]:
    """(attack names, whether the user named them: False for the suite)."""
    if text.strip() == "all":
        return list(TABLE_SUITE), False
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in ATTACKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {','.join(ATTACKS)} or all, got {text!r}")
    return list(dict.fromkeys(names)), True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="attack.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = parser.add_argument_group("what to attack")
    target.add_argument("--checkpoint", required=True, help="checkpoint.pt written by train.py")
    target.add_argument("--attacks", type=attack_list, default=attack_list("all"), metavar="LIST",
                        help=f"comma-separated from {','.join(ATTACKS)}, or all (the default: {','.join(TABLE_SUITE)})")
    target.add_argument("--source-checkpoint", metavar="TWIN",
                        help="the ReLU twin: transfer crafts on it and es is calibrated on it (see above)")
    target.add_argument("--twin-results", metavar="JSON",
                        help="the twin's own attack.py --out JSON (same images, eps, settings, seed): es's calibration "
                             "reads PGD's and es's figures there instead of computing them again")
    target.add_argument("--eps", type=epsilon, help="L-inf budget (default by dataset: "
                        + ", ".join(f"{name} {value}" for name, value in DEFAULT_EPS.items()) + ")")
    target.add_argument("--eps-list", type=epsilon_list, metavar="E1,E2,...",
                        help="run every attack at each budget (robust accuracy against eps)")
    target.add_argument("--eps-curve", type=eps_curve, default="auto", metavar="auto|none|E1,E2,...",
                        help="PGD alone at these budgets too, the masking check (auto: 0.5, 2, 4, 8 x eps)")
    images = parser.add_argument_group("images")
    images.add_argument("--n-batches", type=positive_int, help=f"first N test batches (default {DEFAULT_N_BATCHES})")
    images.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    images.add_argument("--n-images", type=positive_int, help="first N test images (instead of --n-batches)")
    images.add_argument("--data-dir", help="where the dataset lives (default: data/; fashion-mnist: Debian's files)")
    images.add_argument("--download", action="store_true", help="download the dataset into --data-dir if missing")
    knobs = parser.add_argument_group("attack settings (defaults: the standard budgets)")
    knobs.add_argument("--pgd-steps", type=positive_int, default=40, help="PGD, bpda, eot and transfer steps (40)")
    knobs.add_argument("--pgd-step", type=float, help="absolute step of those (default 2.5*eps/steps)")
    knobs.add_argument("--pgd-rel-stepsize", type=float,
                       help="foolbox rel_stepsize instead (times eps; the replication's too-weak 0.003)")
    knobs.add_argument("--restarts", type=positive_int, default=5, help="random starts of pgd and transfer (5)")
    knobs.add_argument("--pgd-loss", choices=("ce", "margin"), default="ce", help="pgd's and transfer's loss (ce)")
    knobs.add_argument("--aa-iterations", type=positive_int, default=100,
                       help="AutoAttack's APGD-CE, APGD-T, FAB-T iterations (standard: 100)")
    knobs.add_argument("--square-queries", type=positive_int, default=5000, help="Square's queries (standard: 5000)")
    knobs.add_argument("--bpda-temperatures", type=temperature_list, default=BPDA_TEMPERATURES, metavar="T1,T2,...",
                       help="bpda's temperatures, times each row's std (0.3,1,3)")
    knobs.add_argument("--es-steps", type=positive_int, default=20, help="es sign steps (20)")
    knobs.add_argument("--es-samples", type=positive_int, default=50,
                       help="es antithetic pairs per image on the last step (50)")
    knobs.add_argument("--es-probe-batch", type=positive_int, default=512, help="es probes per forward pass (512)")
    knobs.add_argument("--eot-samples", type=positive_int, default=8, help="eot noise draws per step (8)")
    knobs.add_argument("--eot-sigma", type=float, default=0.05, help="eot noise scale (0.05)")
    knobs.add_argument("--seed", type=int, default=0, help="seeds every random draw, per batch and attack")
    output = parser.add_argument_group("output")
    output.add_argument("--out", help="results JSON (written atomically)")
    output.add_argument("--table", help="Markdown table to create or merge a row into; CSV goes beside it")
    output.add_argument("--label", help="the table row's Activation cell (default ReLU or k-WTA-RATIO)")
    output.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun: cuda:LOCAL_RANK)")
    args = parser.parse_args(argv)

    args.attacks, named = args.attacks
    args.notes = []
    if args.eps is not None and args.eps_list:
        parser.error("give --eps or --eps-list, not both")
    if args.n_images is not None and args.n_batches is not None:
        parser.error("give --n-images or --n-batches, not both")
    if "transfer" in args.attacks and not args.source_checkpoint:
        if named:
            parser.error("the transfer attack needs --source-checkpoint (or leave transfer out of --attacks)")
        args.attacks.remove("transfer")
        args.notes.append("transfer left out of the suite: no --source-checkpoint (the ReLU twin) given")
    if args.source_checkpoint and not {"transfer", "es"} & set(args.attacks):
        parser.error("--source-checkpoint is used by transfer and es's calibration, which --attacks leaves out")
    if args.twin_results and not (args.source_checkpoint and "es" in args.attacks):
        parser.error("--twin-results calibrates es on --source-checkpoint: give both, and es in --attacks")
    if args.table and not args.table.endswith(".md"):
        parser.error(f"--table must name a .md file, got {args.table}")
    try:
        args.settings = AttackSettings(
            pgd_steps=args.pgd_steps, pgd_step=args.pgd_step, pgd_rel_stepsize=args.pgd_rel_stepsize,
            pgd_restarts=args.restarts, pgd_loss=args.pgd_loss, autoattack_iterations=args.aa_iterations,
            square_queries=args.square_queries, bpda_temperatures=args.bpda_temperatures, es_steps=args.es_steps,
            es_samples=args.es_samples, es_probe_batch=args.es_probe_batch, eot_samples=args.eot_samples,
            eot_sigma=args.eot_sigma,
        )
    except ValueError as error:
        parser.error(str(error).replace("pgd_step", "--pgd-step").replace("_", "-"))
    if args.n_images is None:
        args.n_images = (args.n_batches or DEFAULT_N_BATCHES) * args.batch_size
    return args


def fail(message: object) -> None:
    sys.exit(f"attack.py: error: {message}")


def batch_seed(seed: int, batch_index: int) -> int:
    return int(np.random.SeedSequence([seed, batch_index]).generate_state(1)[0])


def read_text(path: str) -> str:
    with open(path) as file:
        return file.read()


def twin_counts(path: str, args: argparse.Namespace, eps_list: list[float]) -> dict[float, dict[str, int]]:
    """{eps: {"pgd": robust images, "es": robust images}} from the twin's attack.py JSON, which must be the
    twin attacked on the same images with the same settings and seed."""
    try:
        twin = json.loads(read_text(path))
        differing = [key for key, same in [
            ("checkpoint", os.path.samefile(twin["checkpoint"], args.source_checkpoint)),
            ("n_images", twin["n_images"] == args.n_images),
            ("settings", twin["settings"] == json.loads(json.dumps(asdict(args.settings)))),
            ("seed", twin["seed"] == args.seed),
        ] if not same]
        counts = {result["eps"]: result["count"] for result in twin["results"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        fail(f"--twin-results {path}: not an attack.py results file of --source-checkpoint ({error})")
    if differing:
        fail(f"--twin-results {path}: its {', '.join(differing)} differ from this run's")
    missing = [eps for eps in eps_list if not {"pgd", "es"} <= set(counts.get(eps, {}))]
    if missing:
        fail(f"--twin-results {path}: no PGD and es figures at eps {', '.join(map(str, missing))}")
    return {eps: {"pgd": counts[eps]["pgd"], "es": counts[eps]["es"]} for eps in eps_list}


def row_label(spec: dict) -> str:
    return f"k-WTA-{spec['ratio']:g}" if spec["activation"] == "kwta" else "ReLU"


def figure(share: float, interval: tuple[float, float]) -> str:
    return f"{share:.2%} +- {100 * plus_minus(share, interval):.2f} (95% CI {interval[0]:.1%}-{interval[1]:.1%})"


def run_attacks(model, batches, eps, names, settings, seed, *, source_model=None, desc=""):
    """({attack: this process's per-image robust masks, in batch order}, {attack: seconds}) for `names`."""
    masks = {name: [] for name in names}
    seconds = dict.fromkeys(names, 0.0)
    for batch_index, images, labels in tqdm(batches, desc=desc, disable=not distributed.is_main(), leave=False,
                                            dynamic_ncols=True):
        try:
            robust, batch_seconds = attack_batch(model, images, labels, eps, names, settings,
                                                 source_model=source_model, seed=batch_seed(seed, batch_index))
        except AttackSanityError as error:
            fail(f"sanity check failed, no number reported: {error}")
        for name in names:
            masks[name].append(robust[name])
            seconds[name] += batch_seconds[name]
    empty = torch.zeros(0, dtype=torch.bool)
    return {name: torch.cat(parts) if parts else empty for name, parts in masks.items()}, seconds


def totals(masks: dict[str, torch.Tensor], device: torch.device) -> dict[str, int]:
    """Robust images per key, summed over processes."""
    counts = distributed.all_reduce_sum([int(mask.sum()) for mask in masks.values()], device)
    return {key: round(count) for key, count in zip(masks, counts, strict=True)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()

    # Setup: processes, the model(s) rebuilt from their checkpoints, the test images this process attacks.
    try:
        device = distributed.init(args.device)
    except (ValueError, RuntimeError) as error:
        fail(f"--device: {error}")
    is_main = distributed.is_main()
    try:
        model, checkpoint = load_model(args.checkpoint, device)
        spec = checkpoint["spec"]
        source_model = source_spec = None
        if args.source_checkpoint:
            source_model, source_checkpoint = load_model(args.source_checkpoint, device)
            source_spec = source_checkpoint["spec"]
            for key in TWIN_KEYS:
                if source_spec[key] != spec[key]:
                    fail(f"--source-checkpoint has {key} {source_spec[key]!r}, the target {spec[key]!r}")
        _, test_ds, _ = get_datasets(spec["dataset"], args.data_dir, download=args.download,
                                     input_size=spec["input_size"], augment=False)
    except (ValueError, OSError, KeyError) as error:
        fail(error)
    for network in (model, source_model):
        if network is not None:
            network.requires_grad_(False)  # attacks differentiate with respect to the images only
    if args.n_images > len(test_ds):
        fail(f"asked for {args.n_images} images but the {spec['dataset']} test set has {len(test_ds)}")
    eps_list = args.eps_list or [args.eps if args.eps is not None else DEFAULT_EPS[spec["dataset"]]]
    if args.eps_curve == "auto":
        curve_eps = sorted({min(1.0, round(factor * eps_list[-1], 6)) for factor in EPS_CURVE_FACTORS} - set(eps_list))
    else:
        curve_eps = [] if args.eps_curve == "none" else [eps for eps in args.eps_curve if eps not in eps_list]
    # es is calibrated on a ReLU network: the twin, or the checkpoint itself when it is one.
    calibration_model = calibration_path = precomputed = None
    if "es" in args.attacks:
        if source_spec is not None and source_spec["activation"] == "relu":
            calibration_model, calibration_path = source_model, args.source_checkpoint
            if args.twin_results:
                precomputed = twin_counts(args.twin_results, args, eps_list)
        elif args.twin_results:
            fail(f"--twin-results needs a ReLU --source-checkpoint, not a {source_spec['activation']} one")
        elif spec["activation"] == "relu":
            calibration_model, calibration_path = model, args.checkpoint
        else:
            args.notes.append("es is uncalibrated: no ReLU twin (--source-checkpoint) to calibrate it on")
    # Whole batches go to processes round-robin; seeds depend on the batch alone, so any split gives the same.
    batch_starts = range(0, args.n_images, args.batch_size)
    my_batches = []
    for batch_index in range(distributed.rank(), len(batch_starts), distributed.world_size()):
        start = batch_starts[batch_index]
        indices = range(start, min(start + args.batch_size, args.n_images))
        images = torch.stack([test_ds[i][0] for i in indices]).to(device)
        labels = torch.tensor([test_ds[i][1] for i in indices], device=device)
        my_batches.append((batch_index, images, labels))

    def interval(count: int) -> tuple[float, float]:
        return wilson_interval(count, args.n_images)

    # Clean accuracy first (with the vanishing-gradient check on the same images), then each attack.
    correct = vanishing = 0
    for _, images, labels in my_batches:
        is_correct = predict(model, images) == labels
        correct += int(is_correct.sum())
        vanishing += int((vanishing_gradients(model, images, labels) & is_correct).sum())
    correct, vanishing = (round(c) for c in distributed.all_reduce_sum([correct, vanishing], device))
    clean_accuracy = correct / args.n_images
    if is_main:
        kind = f"k-WTA {spec['ratio']:g} ({spec['mode']})" if spec["activation"] == "kwta" else "ReLU"
        print(f"{spec['arch']} with {kind} on {spec['dataset']}: {args.n_images} test images, "
              f"{distributed.world_size()} process(es) on {device.type}")
        print(f"clean accuracy: {figure(clean_accuracy, interval(correct))}")
        if spec.get("train_precision", "fp32") != "fp32":
            print(f"note: trained under {spec['train_precision']} autocast, evaluated and attacked here in fp32 "
                  "(k-WTA's winners depend on the arithmetic; train.py's test accuracy is fp32 too)")
        for note in args.notes:
            print(f"note: {note}")

    results, warnings = [], []
    for eps in eps_list:
        robust_by_attack, seconds = {}, {}
        for name in args.attacks:
            masks, attack_seconds = run_attacks(model, my_batches, eps, [name], args.settings, args.seed,
                                                source_model=source_model, desc=f"{name} eps={eps:g}")
            robust_by_attack[name] = masks[name]
            seconds[name] = distributed.all_reduce_sum([attack_seconds[name]], device)[0]
            count = totals(masks, device)[name]
            if is_main:
                share = count / args.n_images
                tqdm.write(f"eps {eps:g}: robust accuracy after {name}: {figure(share, interval(count))}, "
                           f"{seconds[name]:.1f} s")
        robust_by_attack["worst_case"] = torch.stack(list(robust_by_attack.values())).all(dim=0)
        counts = totals(robust_by_attack, device)
        accuracy = {name: count / args.n_images for name, count in counts.items()}
        result = {"eps": eps, "accuracy": accuracy, "interval": {name: interval(c) for name, c in counts.items()},
                  "count": counts, "seconds": seconds}
        if is_main:
            print(f"eps {eps:g}: worst case over {','.join(args.attacks)}: "
                  f"{figure(accuracy['worst_case'], result['interval']['worst_case'])}")
        if calibration_model is not None:
            if precomputed is not None:
                on_twin = precomputed[eps]
            elif calibration_model is model and "pgd" in args.attacks:
                on_twin = {name: counts[name] for name in ("pgd", "es")}
            else:
                twin_masks, _ = run_attacks(calibration_model, my_batches, eps, ["pgd", "es"], args.settings, args.seed,
                                            desc=f"es calibration eps={eps:g}")
                on_twin = totals(twin_masks, device)
            counts_as_attack, line = es_calibration(on_twin["es"] / args.n_images, on_twin["pgd"] / args.n_images, eps)
            result["es_calibration"] = {
                "model": calibration_path, "from": args.twin_results or "this run",
                "counts_as_attack": counts_as_attack,
                **{name: {"accuracy": c / args.n_images, "interval": interval(c)} for name, c in on_twin.items()},
            }
            if not counts_as_attack:
                warnings.append(line)
            if is_main:
                print(line)
        results.append(result)

    # The eps curve: PGD alone at more budgets, for the masking checks.
    curve = []
    for eps in curve_eps:
        masks, curve_seconds = run_attacks(model, my_batches, eps, ["pgd"], args.settings, args.seed,
                                           desc=f"eps curve {eps:g}")
        count = totals(masks, device)["pgd"]
        curve.append({"eps": eps, "pgd": count / args.n_images, "interval": interval(count),
                      "seconds": distributed.all_reduce_sum([curve_seconds["pgd"]], device)[0]})
    pgd_curve = {point["eps"]: point["pgd"] for point in curve}
    if is_main and curve:
        points = {**{r["eps"]: r["accuracy"]["pgd"] for r in results if "pgd" in r["accuracy"]}, **pgd_curve}
        print("eps curve, PGD alone: " + ", ".join(f"eps {eps:g} {share:.1%}" for eps, share in sorted(points.items())))

    # Results: sanity line, masking warnings, JSON, table.
    vanishing_share = vanishing / correct if correct else 0.0
    warnings += masking_warnings({r["eps"]: r["accuracy"] for r in results}, vanishing_share, pgd_curve)
    if is_main:
        print(f"sanity: every adversarial ({len(args.attacks)} attack(s) x {len(eps_list)} eps) lies within eps + 1e-6 "
              f"of its image in L-inf, inside [0, 1], without NaN")
        for warning in warnings:
            print(f"warning: {warning}")
        summary = {
            "checkpoint": args.checkpoint, "source_checkpoint": args.source_checkpoint, "spec": spec,
            "attacks": args.attacks, "settings": asdict(args.settings), "seed": args.seed,
            "eps": eps_list, "n_images": args.n_images, "interval_method": "Wilson score, 95%",
            "clean_accuracy": clean_accuracy, "clean_interval": interval(correct), "results": results,
            "eps_curve": curve, "vanishing_gradient_share": vanishing_share, "warnings": warnings, "notes": args.notes,
            "world_size": distributed.world_size(), "device": device.type, "seconds": time.perf_counter() - started,
        }
        try:
            if args.out:
                atomic_write(args.out, json.dumps(summary, indent=2) + "\n")
            if args.table:
                label = args.label or row_label(spec)
                new_rows = [
                    table_row(label if len(eps_list) == 1 else f"{label} (eps {r['eps']:g})",
                              {"clean": clean_accuracy, **r["accuracy"]},
                              {"clean": interval(correct), **r["interval"]})
                    for r in results
                ]
                existing = read_text(args.table) if os.path.exists(args.table) else ""
                rows = merge_rows(parse_table(existing), new_rows)
                atomic_write(args.table, format_table(rows))
                atomic_write(args.table[: -len(".md")] + ".csv", format_csv(rows))
        except (ValueError, OSError) as error:
            fail(f"--table {args.table}: {error}" if isinstance(error, ValueError) else error)
        written = [path for path in (args.out, args.table) if path]
        print(f"results: {', '.join(written)}" if written else "results: printed only (--out, --table keep them)")
    distributed.barrier()
    distributed.cleanup()


if __name__ == "__main__":
    main()
