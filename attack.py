r"""Evaluate one model under L-inf attacks: robust accuracy per attack and in the worst case, each with its 95%
interval. A thin shell over kwta.evaluate; the suite and its protocol are described in docs/attacks.md.

    python attack.py --checkpoint runs/fm-kwta/checkpoint.pt --source-checkpoint runs/fm-relu/checkpoint.pt \
        --n-images 256 --out results/fm-kwta.json --table results.md      # the whole suite (the default)
    python attack.py --checkpoint runs/fm-kwta/checkpoint.pt --attacks pgd,autoattack --n-images 64
    python attack.py --model mypackage.nets:make_net --weights net.pt --dataset cifar10 --eps 0.031
    python attack.py --list-attacks                # the registry: name, table column, kind, settings it reads
    torchrun --nproc_per_node=4 attack.py ...     # batches split across processes, per-image results gathered

The model is a checkpoint train.py wrote (--checkpoint: the spec in it rebuilds the network), or any network
of your own (--model MODULE:FACTORY, called with --model-kwargs, its weights from --weights: a state dict,
or a dict holding one under "model" or "state_dict", read with weights_only=True). It must map images in
[0, 1] to logits: normalisation lives inside the model.

The ReLU twin (--source-checkpoint, or --source-model with --source-weights) is the network trained like
this one but with ReLU: transfer crafts on it and es is calibrated on it. --twin-results TWIN.json reads
the twin's own attack.py figures (same images, eps, settings and seed) instead of computing them again.

Images: the first --n-batches x --batch-size test images, or the first --n-images, always in the same
order with the same per-batch seeds, so runs are comparable. Writes --out (JSON: the spec, every figure
with its interval, count and seconds, es's calibration, the eps curve, the warnings and per-image
robustness) and --table (Markdown rows in the replication's format, merged by label, setting and attacks,
CSV beside it).

An interrupted run resumes from OUT.journal: the same command again attacks only what it does not hold. A
run longer than one machine's time keeps a journal folder instead (--journal DIR, e.g. committed with the
project): --stop-after MINUTES ends a session's share in time, --shard I/N splits the batches between
machines running at once; such a run exits with status 3 (EXIT_INCOMPLETE) and writes no --out until the
journal holds every unit.
"""

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

from experiments.cli import HelpFormatter, positive_float, positive_int, unit_interval

DEFAULT_N_BATCHES, DEFAULT_BATCH_SIZE = 10, 32
EXIT_INCOMPLETE = 3  # the journal holds only a part of the evaluation: run the same command again
TWIN_KEYS = ("dataset", "in_channels", "input_size", "num_classes")
# attack.py's flags are AttackSettings' field names, but for these two
RENAMED_FLAGS = {"pgd_restarts": "restarts", "autoattack_iterations": "aa_iterations"}


epsilon = unit_interval  # an L-inf budget in the units of images in [0, 1]


def epsilon_list(text: str) -> list[float]:
    return sorted({epsilon(part) for part in text.split(",") if part.strip()})


def eps_curve(text: str) -> list[float] | str:
    return text if text in ("auto", "none") else epsilon_list(text)


def temperature_list(text: str) -> tuple[float, ...]:
    return tuple(positive_float(part) for part in text.split(",") if part.strip())


def es_schedule(text: str) -> tuple[tuple[int, int], ...]:
    try:
        stages = tuple(tuple(int(count) for count in stage.split("x")) for stage in text.split(",") if stage.strip())
    except ValueError:
        stages = ()
    if not stages or not all(len(stage) == 2 and min(stage) >= 1 for stage in stages):
        raise argparse.ArgumentTypeError(f"must be STEPSxPAIRS stages, e.g. 20x50,20x500,60x10000, got {text!r}")
    return stages


def factory_reference(text: str) -> str:
    module, _, name = text.partition(":")
    if not module or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"must be MODULE:FACTORY (e.g. torchvision.models:resnet18), got {text!r}")
    return text


def shard(text: str) -> tuple[int, int]:
    """I/N with 0 <= I < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, e.g. 0/2, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return index, count


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"must be a JSON object ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Arguments first, before torch is imported, so --help answers at once."""
    parser = argparse.ArgumentParser(prog="attack.py", description=__doc__, formatter_class=HelpFormatter)
    target = parser.add_argument_group("what to attack")
    target.add_argument("--checkpoint", help="checkpoint.pt written by train.py")
    target.add_argument("--model", type=factory_reference, metavar="MODULE:FACTORY",
                        help="a network of your own instead: FACTORY(**--model-kwargs) from MODULE")
    target.add_argument("--model-kwargs", type=json_object, default={}, metavar="JSON", help="keyword arguments of it")
    target.add_argument("--weights", help="--model's weights (a state dict), read with weights_only=True")
    target.add_argument("--dataset", help="--model's test set (fashion-mnist, cifar10, svhn, synthetic)")
    target.add_argument("--attacks", default="all", metavar="LIST",
                        help="comma-separated names from --list-attacks, or all (the suite; transfer only with a twin)")
    target.add_argument("--list-attacks", action="store_true", help="print the attack registry and exit")
    target.add_argument("--source-checkpoint", metavar="TWIN",
                        help="the ReLU twin: transfer crafts on it and es is calibrated on it")
    target.add_argument("--source-model", type=factory_reference, metavar="MODULE:FACTORY",
                        help="a twin of your own instead (with --source-weights, --model-kwargs)")
    target.add_argument("--source-weights", help="--source-model's weights")
    target.add_argument("--twin-results", metavar="JSON",
                        help="the twin's own attack.py --out JSON (same images, eps, settings, seed): es's calibration "
                             "reads PGD's and es's figures there instead of computing them again")
    target.add_argument("--eps", type=epsilon, help="L-inf budget (default: the dataset's, kwta.data.DEFAULT_EPS)")
    target.add_argument("--eps-list", type=epsilon_list, metavar="E1,E2,...",
                        help="run every attack at each budget (robust accuracy against eps)")
    target.add_argument("--eps-curve", type=eps_curve, default="auto", metavar="auto|none|E1,E2,...",
                        help="PGD alone at these budgets too, the masking check (auto: 0.5, 2, 4, 8 x eps)")
    target.add_argument("--binarization", type=positive_int, metavar="N",
                        help="also run the binarization test (were the attacks strong enough?) on the first N images")
    target.add_argument("--binarization-attacks", metavar="LIST",
                        help="the attacks the binarization test runs: all (the suite) or names (default: --attacks)")
    target.add_argument("--binarization-inner", type=positive_int, default=999,
                        help="the binarization test's inner points per image (the paper's 999)")
    target.add_argument("--binarization-boundary-points", type=positive_int, default=64,
                        help="its boundary points, drawn within --binarization-boundary-radius of one corner (1: the "
                             "published test, a region k-WTA's jumps make too small to find; docs/attacks.md)")
    target.add_argument("--binarization-boundary-radius", type=unit_interval, default=0.01,
                        help="that region's L-inf radius, times eps")
    images = parser.add_argument_group("images")
    images.add_argument("--n-batches", type=positive_int, help=f"first N test batches ({DEFAULT_N_BATCHES} if neither "
                        "this nor --n-images is given)")
    images.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    images.add_argument("--n-images", type=positive_int, help="first N test images (instead of --n-batches)")
    images.add_argument("--data-dir", help="where the dataset lives (default: data/; fashion-mnist: Debian's files)")
    images.add_argument("--download", action="store_true", help="download the dataset into --data-dir if missing")
    knobs = parser.add_argument_group("attack settings: a named budget (kwta.budgets), each flag overriding one "
                                      "of its values (standard's shown)")
    knobs.add_argument("--budget", choices=("standard", "demo", "smoke"), default="standard",
                       help="standard: the published budgets; demo: cut in size to fit a CPU demo; smoke: a step or "
                            "two of everything (tests)")
    knobs.add_argument("--pgd-steps", type=positive_int, help="PGD's steps (and transfer's on the twin) (40)")
    knobs.add_argument("--pgd-step", type=positive_float, help="PGD's absolute step (2.5*eps/steps)")
    knobs.add_argument("--pgd-rel-stepsize", type=positive_float,
                       help="foolbox rel_stepsize instead (times eps; the replication's too-weak 0.003)")
    knobs.add_argument("--restarts", type=positive_int, help="random starts of pgd and transfer (5)")
    knobs.add_argument("--pgd-loss", choices=("ce", "margin"), help="pgd's and transfer's loss (ce)")
    knobs.add_argument("--aa-iterations", type=positive_int,
                       help="AutoAttack's APGD-CE, APGD-T, FAB-T iterations (100)")
    knobs.add_argument("--square-queries", type=positive_int, help="Square's queries (5000)")
    knobs.add_argument("--bpda-temperatures", type=temperature_list, metavar="T1,T2,...",
                       help="bpda's temperatures, times each row's std (0.3,1,3)")
    knobs.add_argument("--bpda-steps", type=positive_int, help="bpda's sign steps per temperature (40)")
    knobs.add_argument("--bpda-step", type=positive_float, help="their absolute step (2.5*eps/steps)")
    knobs.add_argument("--bpda-iterations", type=positive_int,
                       help="bpda's APGD-CE and APGD-T iterations per temperature (100)")
    knobs.add_argument("--es-schedule", type=es_schedule, metavar="STEPSxPAIRS,...",
                       help="es's stages: sign steps x antithetic pairs per step (Tramer et al.'s "
                            "20x50,20x500,60x10000)")
    knobs.add_argument("--es-restarts", type=positive_int,
                       help="es's runs: the first from the image (as published), the others from random starts (2)")
    knobs.add_argument("--es-probe-batch", type=positive_int, help="es probes per forward pass (512)")
    knobs.add_argument("--eot-samples", type=positive_int, help="eot noise draws per step (8)")
    knobs.add_argument("--eot-rel-sigma", type=positive_float, help="eot noise scale, times eps (0.5)")
    knobs.add_argument("--eot-steps", type=positive_int, help="eot sign steps (40)")
    knobs.add_argument("--eot-step", type=positive_float, help="their absolute step (2.5*eps/steps)")
    knobs.add_argument("--seed", type=int, default=0, help="seeds every random draw, per batch and attack")
    output = parser.add_argument_group("output")
    output.add_argument("--out", help="results JSON (written atomically)")
    output.add_argument("--table", help="Markdown table to create or merge a row into; CSV goes beside it")
    output.add_argument("--label", help="the table row's Activation cell (default ReLU or k-WTA-RATIO)")
    output.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun: cuda:LOCAL_RANK)")
    campaign = parser.add_argument_group("a run longer than one machine's time (kwta.journal)")
    campaign.add_argument("--journal", metavar="DIR",
                          help="a journal folder, kept (instead of OUT.journal, deleted once --out is written): "
                               "each run adds its own shard file and reads every shard there, so runs on other "
                               "machines merge by copying their shards in")
    campaign.add_argument("--shard", type=shard, metavar="I/N", help="attack only the batches whose index is I mod N")
    campaign.add_argument("--stop-after", type=positive_float, metavar="MINUTES",
                          help="start no attack after this many minutes; what finished stays in the journal")
    campaign.add_argument("--stop-at", type=positive_float, metavar="UNIX_TIME",
                          help="the same, at a time (seconds since 1970, as `date +%%s` prints): a pipeline's deadline")
    args = parser.parse_args(argv)
    if args.list_attacks:
        return args
    if (args.checkpoint is None) == (args.model is None):
        parser.error("give --checkpoint or --model (with --weights and --dataset), exactly one")
    if args.model and not (args.weights and args.dataset):
        parser.error("--model needs --weights and --dataset")
    if args.source_model and not args.source_weights:
        parser.error("--source-model needs --source-weights")
    if args.source_model and args.source_checkpoint:
        parser.error("give --source-checkpoint or --source-model, not both")
    if args.eps is not None and args.eps_list:
        parser.error("give --eps or --eps-list, not both")
    if args.n_images is not None and args.n_batches is not None:
        parser.error("give --n-images or --n-batches, not both")
    if args.table and not args.table.endswith(".md"):
        parser.error(f"--table must name a .md file, got {args.table}")
    if (args.shard or args.stop_after or args.stop_at) and not (args.journal or args.out):
        parser.error("--shard, --stop-after and --stop-at leave units for another run: give --journal (or --out) to "
                     "keep them")
    if args.n_images is None:
        args.n_images = (args.n_batches or DEFAULT_N_BATCHES) * args.batch_size
    check_suite(parser, args)
    return args


def check_suite(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--attacks against the registry, and the settings against AttackSettings (torch is imported from here on)."""
    from kwta.attacks import ATTACKS, AttackSettings
    from kwta.budgets import budget

    def attack_list(text: str, option: str) -> list[str] | str:
        names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
        if text.strip() == "all":
            return "all"
        if not names or any(name not in ATTACKS for name in names):
            parser.error(f"{option}: choose from {','.join(ATTACKS)} or all, got {text!r}")
        return names

    has_twin = bool(args.source_checkpoint or args.source_model)
    chosen = attack_list(args.attacks, "--attacks")
    names = [] if chosen == "all" else chosen
    if args.binarization_attacks is not None:
        if args.binarization is None:
            parser.error("--binarization-attacks chooses the binarization test's attacks: give --binarization N too")
        args.binarization_attacks = attack_list(args.binarization_attacks, "--binarization-attacks")
    if args.attacks.strip() != "all" and "transfer" in names and not has_twin:
        parser.error("the transfer attack needs --source-checkpoint (or leave transfer out of --attacks)")
    suite = chosen == "all"
    if has_twin and not suite and not {"transfer", "es"} & set(names):
        parser.error("the twin is used by transfer and es's calibration, which --attacks leaves out")
    if args.twin_results and not (args.source_checkpoint and (suite or "es" in names)):
        parser.error("--twin-results calibrates es on --source-checkpoint: give both, and es in --attacks")
    args.attacks = chosen
    overrides = {field: getattr(args, RENAMED_FLAGS.get(field, field)) for field in AttackSettings.__dataclass_fields__
                 if getattr(args, RENAMED_FLAGS.get(field, field), None) is not None}
    try:
        args.settings = budget(args.budget, **overrides)
    except ValueError as error:
        parser.error(str(error).replace("pgd_step", "--pgd-step").replace("_", "-"))


def fail(message: object) -> None:
    sys.exit(f"attack.py: error: {message}")


def list_attacks() -> None:
    from kwta.attacks import ATTACKS

    print(f"{'name':<11} {'column':<11} {'white-box':<10} {'in suite':<9} settings")
    for attack in ATTACKS.values():
        print(f"{attack.name:<11} {attack.column:<11} {'yes' if attack.white_box else '-':<10} "
              f"{'yes' if attack.in_suite else '-':<9} {', '.join(attack.settings)}")


def build_network(reference: str, kwargs: dict, weights: str, device):
    """FACTORY(**kwargs) from MODULE, its weights loaded safely: a network train.py did not make."""
    from kwta.checkpoint import load_weights

    module_name, _, name = reference.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), name)
        model = factory(**kwargs)
    except (ImportError, AttributeError, TypeError) as error:
        raise ValueError(f"{reference}: {error}") from None
    load_weights(model, weights)
    return model.to(device).eval()


def load_networks(args: argparse.Namespace, device):
    """(model, its spec, the twin or None, its spec or None): from checkpoints, or built by factories."""
    from kwta.checkpoint import load_model

    if args.checkpoint:
        model, checkpoint = load_model(args.checkpoint, device)
        spec = checkpoint["spec"]
    else:
        model = build_network(args.model, args.model_kwargs, args.weights, device)
        spec = {"model": args.model, "weights": args.weights, "dataset": args.dataset, "activation": None}
    source_model = source_spec = None
    if args.source_checkpoint:
        source_model, source_checkpoint = load_model(args.source_checkpoint, device)
        source_spec = source_checkpoint["spec"]
        for key in TWIN_KEYS:
            if key in spec and source_spec[key] != spec[key]:
                fail(f"--source-checkpoint has {key} {source_spec[key]!r}, the target {spec[key]!r}")
    elif args.source_model:
        source_model = build_network(args.source_model, args.model_kwargs, args.source_weights, device)
        source_spec = {"model": args.source_model, "weights": args.source_weights, "activation": None}
    return model, spec, source_model, source_spec


def twin_calibration(path: str, args: argparse.Namespace, eps_list: list[float]) -> dict:
    """es's calibration from the twin's attack.py JSON, which must be the twin attacked on the same images, in the
    same batches (they set the per-batch seeds), at the same eps, with the same settings and seed."""
    from dataclasses import asdict

    try:
        with open(path) as file:
            twin = json.load(file)
        differing = [key for key, same in [
            ("checkpoint", os.path.samefile(twin["checkpoint"], args.source_checkpoint)),
            ("n_images", twin["n_images"] == args.n_images),
            ("batch_size", twin["batch_size"] == args.batch_size),
            ("eps", twin["eps"] == eps_list),
            ("settings", twin["settings"] == json.loads(json.dumps(asdict(args.settings)))),
            ("seed", twin["seed"] == args.seed),
        ] if not same]
        record = twin["es_calibration"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        fail(f"--twin-results {path}: not an attack.py results file of --source-checkpoint ({error})")
    if differing:
        fail(f"--twin-results {path}: its {', '.join(differing)} differ from this run's")
    if not record:
        fail(f"--twin-results {path}: holds no es calibration (run the twin with es in --attacks)")
    return record


def calibration_source(args: argparse.Namespace, model, source_model, eps_list):
    """(the ReLU network es is calibrated on: the twin, else the model itself if it is one, else None; its path;
    the calibration already made there, or None)."""
    from kwta.evaluation import has_kwta

    if args.twin_results:
        if has_kwta(source_model):
            fail("--twin-results needs a ReLU --source-checkpoint, not a k-WTA one")
        return source_model, args.source_checkpoint, twin_calibration(args.twin_results, args, eps_list)
    candidates = [(source_model, args.source_checkpoint or args.source_weights),
                  (model, args.checkpoint or args.weights)]
    return next(((network, path) for network, path in candidates if network is not None and not has_kwta(network)),
                (None, None)) + (None,)


def binarization_settings(args: argparse.Namespace):
    from kwta.binarization import BinarizationSettings

    if args.binarization is None:
        return False
    attacks = args.binarization_attacks if args.binarization_attacks in (None, "all") else \
        tuple(args.binarization_attacks)
    try:
        return BinarizationSettings(inner_points=args.binarization_inner, images=args.binarization, attacks=attacks,
                                    boundary_points=args.binarization_boundary_points,
                                    boundary_radius=args.binarization_boundary_radius)
    except ValueError as error:
        fail(f"--binarization-boundary-radius: {error}")


def row_label(spec: dict) -> str:
    if spec["activation"] is None:
        return spec["model"]
    return f"k-WTA-{spec['ratio']:g}" if spec["activation"] == "kwta" else "ReLU"


def describe_model(spec: dict) -> str:
    if spec["activation"] is None:
        return f"{spec['model']} ({spec['weights']}) on {spec['dataset']}"
    kind = f"k-WTA {spec['ratio']:g} ({spec['mode']})" if spec["activation"] == "kwta" else "ReLU"
    return f"{spec['arch']} with {kind} on {spec['dataset']}"


def write_outputs(args: argparse.Namespace, result, spec: dict, calibration_path, world_size: int, device) -> None:
    """--out (the JSON, with the spec) and --table (a row per eps, merged by label, setting and attacks),
    atomically."""
    from experiments.tables import format_csv, format_table, merge_rows, parse_table, setting, table_row
    from kwta.checkpoint import atomic_write

    if result.es_calibration:
        result.es_calibration.update(model=calibration_path, **{"from": args.twin_results or "this run"})
    try:
        if args.out:
            result.save_json(args.out, checkpoint=args.checkpoint or args.weights,
                             source_checkpoint=args.source_checkpoint or args.source_weights, spec=spec,
                             world_size=world_size, device=device.type)
        if args.table:
            label = args.label or row_label(spec)
            new_rows = [table_row(label, {"clean": result.accuracy("clean"), **r["accuracy"]},
                                  {"clean": result.interval("clean"), **r["interval"]},
                                  where=setting(spec["dataset"], r["eps"], result.n_images))
                        for r in result.to_dict(per_image=False)["results"]]
            existing = Path(args.table).read_text() if os.path.exists(args.table) else ""
            rows = merge_rows(parse_table(existing), new_rows)
            atomic_write(args.table, format_table(rows))
            atomic_write(args.table[: -len(".md")] + ".csv", format_csv(rows))
    except (ValueError, OSError) as error:
        fail(f"--table {args.table}: {error}" if isinstance(error, ValueError) else error)
    written = [path for path in (args.out, args.table) if path]
    print(f"results: {', '.join(written)}" if written else "results: printed only (--out, --table keep them)")


def journal_path(args: argparse.Namespace) -> str | None:
    """--journal, else OUT.journal: every finished attack of every batch, so that an interrupted run resumes
    (kwta.journal)."""
    return args.journal or (f"{args.out}.journal" if args.out else None)


def open_journal(args: argparse.Namespace, device, started: float):
    """The evaluation's journal, with the part of it this run takes (--shard, --stop-after, --stop-at)."""
    from kwta.journal import Journal, process_path

    path = journal_path(args)
    if args.journal:
        os.makedirs(args.journal, exist_ok=True)
    deadlines = [time for time in (args.stop_after and started + 60 * args.stop_after, args.stop_at) if time]
    return Journal(None if path is None else process_path(path), shard=args.shard,
                   deadline=min(deadlines, default=None), device=device)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.list_attacks:
        return list_attacks()

    # Setup: processes, the model(s), the test images, the network es is calibrated on.
    import kwta
    from kwta import distributed
    from kwta.attacks import AttackSanityError
    from kwta.checkpoint import image_size
    from kwta.data import DEFAULT_EPS, get_datasets
    from kwta.journal import Incomplete, process_path

    started = time.time()
    try:
        device = distributed.init(args.device)
    except (ValueError, RuntimeError) as error:
        fail(f"--device: {error}")
    try:
        model, spec, source_model, source_spec = load_networks(args, device)
        _, test_ds, _ = get_datasets(spec["dataset"], args.data_dir, download=args.download,
                                     input_size=image_size(spec) if "arch" in spec else None, augment=False)
    except (ValueError, OSError, KeyError) as error:
        fail(error)
    if args.n_images > len(test_ds):
        fail(f"asked for {args.n_images} images but the {spec['dataset']} test set has {len(test_ds)}")
    eps_list = args.eps_list or [args.eps if args.eps is not None else DEFAULT_EPS[spec["dataset"]]]
    calibration_model, calibration_path, calibration_record = calibration_source(args, model, source_model, eps_list)
    if distributed.is_main():
        print(f"{describe_model(spec)}: {args.n_images} test images, {distributed.world_size()} process(es) "
              f"on {device.type}")
        if spec.get("train_precision", "fp32") != "fp32":
            print(f"note: trained under {spec['train_precision']} autocast, evaluated and attacked here in fp32 "
                  "(k-WTA's winners depend on the arithmetic; train.py's test accuracy is fp32 too)")

    # Clean accuracy, each attack, the worst case, es's calibration, the eps curve, the warnings.
    try:
        result = kwta.evaluate(
            model, test_ds, eps=eps_list, attacks=args.attacks, source_model=source_model, settings=args.settings,
            eps_curve=args.eps_curve, calibration_model=calibration_model, calibration_record=calibration_record,
            n_images=args.n_images, batch_size=args.batch_size, seed=args.seed, device=device,
            binarization=binarization_settings(args), journal=open_journal(args, device, started),
            verbose=distributed.is_main(),
        )
    except AttackSanityError as error:
        fail(f"sanity check failed, no number reported: {error}")
    except Incomplete as left:
        if distributed.is_main():
            print(f"incomplete: {left}; the same command again attacks only what is left")
        distributed.cleanup()
        sys.exit(EXIT_INCOMPLETE)
    if distributed.is_main():
        write_outputs(args, result, spec, calibration_path, distributed.world_size(), device)
    distributed.barrier()
    if args.out and not args.journal:  # the results are saved: the journal of finished attacks has served
        Path(process_path(journal_path(args))).unlink(missing_ok=True)
    distributed.cleanup()


if __name__ == "__main__":
    main()
