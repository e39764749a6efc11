"""Evaluate one checkpoint under L-inf attacks: robust accuracy per attack and in the worst case.

    python attack.py --checkpoint runs/fm-kwta/checkpoint.pt --attacks pgd,deepfool --table results.md
    python attack.py --checkpoint runs/fm-kwta/checkpoint.pt --attacks all \\
        --source-checkpoint runs/fm-relu/checkpoint.pt --n-images 32 --out results/fm-kwta.json
    torchrun --nproc_per_node=4 attack.py ...     # batches split across processes, counts all-reduced

Attacks (--attacks, comma-separated, or all):
  pgd       foolbox LinfPGD, cross-entropy, random start, --pgd-steps 40 of --pgd-step 2.5*eps/steps.
            --pgd-rel-stepsize 0.003 reproduces the replication, whose PGD could move 40*0.003*eps in all.
  deepfool  foolbox LinfDeepFoolAttack, 20 steps, 10 candidates (the replication's).
  es        Tramer et al. (2020)'s attack on k-WTA: sign steps on the logit margin with the gradient
            estimated by antithetic Gaussian finite differences (sigma = eps), the pairs per image growing
            linearly to --es-samples over --es-steps. Defaults 20 steps, 50 pairs: about 1,050 forward
            passes per attacked image; 130 s for the 20 correctly classified of 32 Fashion-MNIST images on
            a k-WTA resnet18-cifar on 2 idle CPU cores (PGD takes 20 s there). Raise both on a GPU.
  eot       PGD on the margin with the gradient averaged over --eot-samples (8) Gaussian draws of scale
            --eot-sigma (0.05) around the iterate, --pgd-steps steps of --pgd-step: 320 forward+backward
            passes per attacked image; 47 s for the same images on the same 2 cores.
  transfer  PGD adversarials crafted on --source-checkpoint (e.g. the ReLU twin), evaluated here.

Only correctly classified images are attacked; an image counts as robust if it is classified correctly
and the attack failed, and worst case counts it only if it survived every attack run. Every attack's
output is checked (within eps + 1e-6 of the image in L-inf, in [0, 1], no NaN) and a violation aborts.
Warnings flag gradient masking: es/eot/transfer beating PGD by more than 5 points, PGD success not
growing with eps (--eps-list), or vanishing input gradients.

Images: the first --n-batches x --batch-size (default 10 x 32, as the replication) test images, or the
first --n-images, always in the same order with the same per-batch seeds, so runs are comparable.
Writes --out (JSON: spec, eps, n_images, clean accuracy, accuracy left by each attack, seconds) and
--table (Markdown rows in the replication's format, merged by label, plus the same rows as CSV beside it).
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

from kwta import distributed
from kwta.attacks import (
    ATTACKS,
    AttackSanityError,
    AttackSettings,
    attack_batch,
    format_csv,
    format_table,
    masking_warnings,
    merge_rows,
    parse_table,
    predict,
    table_row,
    vanishing_gradients,
)
from kwta.checkpoint import atomic_write, load_model
from kwta.cli import positive_int
from kwta.data import DEFAULT_EPS, get_datasets

DEFAULT_N_BATCHES, DEFAULT_BATCH_SIZE = 10, 32


def epsilon(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (images live in [0, 1]), got {text}")
    return value


def epsilon_list(text: str) -> list[float]:
    return sorted({epsilon(part) for part in text.split(",") if part.strip()})


def attack_list(text: str) -> list[str]:
    names = list(ATTACKS) if text.strip() == "all" else [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in ATTACKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {','.join(ATTACKS)} or all, got {text!r}")
    return list(dict.fromkeys(names))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="attack.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = parser.add_argument_group("what to attack")
    target.add_argument("--checkpoint", required=True, help="checkpoint.pt written by train.py")
    target.add_argument("--attacks", type=attack_list, default=["pgd", "deepfool"], metavar="LIST",
                        help=f"comma-separated from {','.join(ATTACKS)}, or all (default pgd,deepfool)")
    target.add_argument("--source-checkpoint", help="model the transfer attack crafts its PGD adversarials on")
    target.add_argument("--eps", type=epsilon, help="L-inf budget (default by dataset: "
                        + ", ".join(f"{name} {value}" for name, value in DEFAULT_EPS.items()) + ")")
    target.add_argument("--eps-list", type=epsilon_list, metavar="E1,E2,...",
                        help="attack at each budget (robust accuracy against eps)")
    images = parser.add_argument_group("images")
    images.add_argument("--n-batches", type=positive_int, help=f"first N test batches (default {DEFAULT_N_BATCHES})")
    images.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    images.add_argument("--n-images", type=positive_int, help="first N test images (instead of --n-batches)")
    images.add_argument("--data-dir", help="where the dataset lives (default: data/; fashion-mnist: Debian's files)")
    images.add_argument("--download", action="store_true", help="download the dataset into --data-dir if missing")
    knobs = parser.add_argument_group("attack settings")
    knobs.add_argument("--pgd-steps", type=positive_int, default=40, help="PGD and EOT steps (default 40)")
    knobs.add_argument("--pgd-step", type=float, help="absolute PGD/EOT/transfer step (default 2.5*eps/steps)")
    knobs.add_argument("--pgd-rel-stepsize", type=float,
                       help="foolbox rel_stepsize instead (times eps; the replication's too-weak 0.003)")
    knobs.add_argument("--es-steps", type=positive_int, default=20, help="es sign steps (default 20)")
    knobs.add_argument("--es-samples", type=positive_int, default=50,
                       help="es antithetic pairs per image on the last step (default 50)")
    knobs.add_argument("--eot-samples", type=positive_int, default=8, help="eot noise draws per step (default 8)")
    knobs.add_argument("--eot-sigma", type=float, default=0.05, help="eot noise scale (default 0.05)")
    knobs.add_argument("--seed", type=int, default=0, help="seeds every random draw, per batch")
    output = parser.add_argument_group("output")
    output.add_argument("--out", help="results JSON (written atomically)")
    output.add_argument("--table", help="Markdown table to create or merge a row into; CSV goes beside it")
    output.add_argument("--label", help="the table row's Activation cell (default ReLU or k-WTA-RATIO)")
    output.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun: cuda:LOCAL_RANK)")
    args = parser.parse_args(argv)

    if args.eps is not None and args.eps_list:
        parser.error("give --eps or --eps-list, not both")
    if args.n_images is not None and args.n_batches is not None:
        parser.error("give --n-images or --n-batches, not both")
    if "transfer" in args.attacks and not args.source_checkpoint:
        parser.error("the transfer attack needs --source-checkpoint (or leave transfer out of --attacks)")
    if args.source_checkpoint and "transfer" not in args.attacks:
        parser.error("--source-checkpoint is only used by the transfer attack, which --attacks leaves out")
    if args.table and not args.table.endswith(".md"):
        parser.error(f"--table must name a .md file, got {args.table}")
    try:
        args.settings = AttackSettings(
            pgd_steps=args.pgd_steps, pgd_step=args.pgd_step, pgd_rel_stepsize=args.pgd_rel_stepsize,
            es_steps=args.es_steps, es_samples=args.es_samples, eot_samples=args.eot_samples, eot_sigma=args.eot_sigma,
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


def row_label(spec: dict) -> str:
    return f"k-WTA-{spec['ratio']:g}" if spec["activation"] == "kwta" else "ReLU"


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
        source_model = None
        if args.source_checkpoint:
            source_model, source_checkpoint = load_model(args.source_checkpoint, device)
            for key in ("dataset", "in_channels", "input_size", "num_classes"):
                if source_checkpoint["spec"][key] != spec[key]:
                    fail(f"--source-checkpoint has {key} {source_checkpoint['spec'][key]!r}, the target {spec[key]!r}")
        _, test_ds, _ = get_datasets(spec["dataset"], args.data_dir, download=args.download,
                                     input_size=spec["input_size"], augment=False)
    except (ValueError, OSError, KeyError) as error:
        fail(error)
    if args.n_images > len(test_ds):
        fail(f"asked for {args.n_images} images but the {spec['dataset']} test set has {len(test_ds)}")
    eps_list = args.eps_list or [args.eps if args.eps is not None else DEFAULT_EPS[spec["dataset"]]]
    # Whole batches go to processes round-robin; seeds depend on the batch alone, so any split gives the same.
    batch_starts = range(0, args.n_images, args.batch_size)
    my_batches = []
    for batch_index in range(distributed.rank(), len(batch_starts), distributed.world_size()):
        start = batch_starts[batch_index]
        indices = range(start, min(start + args.batch_size, args.n_images))
        images = torch.stack([test_ds[i][0] for i in indices]).to(device)
        labels = torch.tensor([test_ds[i][1] for i in indices], device=device)
        my_batches.append((batch_index, images, labels))

    # Clean accuracy first (with the vanishing-gradient check on the same images), then each attack.
    correct = vanishing = 0
    for _, images, labels in my_batches:
        is_correct = predict(model, images) == labels
        correct += int(is_correct.sum())
        vanishing += int((vanishing_gradients(model, images, labels) & is_correct).sum())
    correct, vanishing = distributed.all_reduce_sum([correct, vanishing], device)
    clean_accuracy = correct / args.n_images
    if is_main:
        kind = f"k-WTA {spec['ratio']:g} ({spec['mode']})" if spec["activation"] == "kwta" else "ReLU"
        print(f"{spec['arch']} with {kind} on {spec['dataset']}: {args.n_images} test images, "
              f"{distributed.world_size()} process(es) on {device.type}")
        print(f"clean accuracy: {clean_accuracy:.2%}")
        if spec.get("train_precision", "fp32") != "fp32":
            print(f"note: trained under {spec['train_precision']} autocast, evaluated and attacked here in fp32 "
                  "(k-WTA's winners depend on the arithmetic; train.py's test accuracy is fp32 too)")

    results = []
    for eps in eps_list:
        robust_by_attack, seconds = {}, {}
        for name in args.attacks:
            survived, attack_seconds = [], 0.0
            bar = tqdm(my_batches, desc=f"{name} eps={eps:g}", disable=not is_main, leave=False, dynamic_ncols=True)
            for batch_index, images, labels in bar:
                try:
                    robust, batch_seconds = attack_batch(
                        model, images, labels, eps, [name], args.settings, source_model=source_model,
                        seed=batch_seed(args.seed, batch_index),
                    )
                except AttackSanityError as error:
                    fail(f"sanity check failed, no number reported: {error}")
                survived.append(robust[name])
                attack_seconds += batch_seconds[name]
            robust_by_attack[name] = torch.cat(survived) if survived else torch.zeros(0, dtype=torch.bool)
            count, seconds[name] = distributed.all_reduce_sum([int(robust_by_attack[name].sum()), attack_seconds],
                                                              device)
            if is_main:
                tqdm.write(f"eps {eps:g}: robust accuracy after {name}: {count / args.n_images:.2%} "
                           f"({seconds[name]:.1f} s)")
        worst_case = torch.stack(list(robust_by_attack.values())).all(dim=0)
        counts = distributed.all_reduce_sum([int(robust_by_attack[n].sum()) for n in args.attacks]
                                            + [int(worst_case.sum())], device)
        accuracy = dict(zip([*args.attacks, "worst_case"], (c / args.n_images for c in counts), strict=True))
        if is_main:
            print(f"eps {eps:g}: worst case over {','.join(args.attacks)}: {accuracy['worst_case']:.2%}")
        results.append({"eps": eps, "accuracy": accuracy, "seconds": seconds})

    # Results: sanity line, masking warnings, JSON, table.
    vanishing_share = vanishing / correct if correct else 0.0
    warnings = masking_warnings({r["eps"]: r["accuracy"] for r in results}, vanishing_share)
    if is_main:
        print(f"sanity: every adversarial ({len(args.attacks)} attack(s) x {len(eps_list)} eps) lies within eps + 1e-6 "
              f"of its image in L-inf, inside [0, 1], without NaN")
        for warning in warnings:
            print(f"warning: {warning}")
        summary = {
            "checkpoint": args.checkpoint, "source_checkpoint": args.source_checkpoint, "spec": spec,
            "attacks": args.attacks, "settings": asdict(args.settings), "seed": args.seed,
            "eps": eps_list, "n_images": args.n_images, "clean_accuracy": clean_accuracy,
            "results": results, "vanishing_gradient_share": vanishing_share, "warnings": warnings,
            "world_size": distributed.world_size(), "device": device.type,
            "seconds": time.perf_counter() - started,
        }
        try:
            if args.out:
                atomic_write(args.out, json.dumps(summary, indent=2) + "\n")
            if args.table:
                label = args.label or row_label(spec)
                new_rows = [
                    table_row(label if len(eps_list) == 1 else f"{label} (eps {r['eps']:g})",
                              {"clean": clean_accuracy, **r["accuracy"]})
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
