"""The replication's grid and the paper's own experiments as a pipeline (`python -m scripts.paper`, whose
--help describes the groups): its groups, runs and scales (FULL, and MINI at toy sizes), their steps, and the
tables step, which sets each group's results beside the replication report's (experiments/replication.py).

`run(args)` does what scripts/paper.py's command line (argparse's namespace) asks: run the steps here (one
per GPU, or N at once on the CPU), submit them to SLURM, list them (--dry-run), or write the tables only.
"""

import fnmatch
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from experiments.pipeline import (
    Busy,
    Step,
    cpu_slots,
    exclusive_lock,
    gpu_slots,
    python_command,
    run_steps,
    upstream,
)
from experiments.replication import ModelResults, anomalies, comparison_table, load_report, report_table
from kwta.checkpoint import atomic_write

ROOT = Path(__file__).resolve().parent.parent  # the checkout: where the steps' commands run

TORCHVISION_ARCHS = ("alexnet", "resnet18")
ARCH_TITLES = {"alexnet": "AlexNet", "resnet18": "ResNet18", "resnet18-cifar": "the paper's resnet18-cifar"}
DATASET_TITLES = {"cifar10": "CIFAR-10", "svhn": "SVHN", "synthetic": "synthetic data",
                  "fashion-mnist": "Fashion-MNIST"}
PGD_ALPHA = {"cifar10": 0.007, "svhn": 0.01}  # the paper's adversarial-training step per dataset (its configs)
REPORT_PGD = ["--attacks", "pgd,deepfool", "--pgd-rel-stepsize", "0.003"]  # the report's attack protocol
LANDSCAPE_RUNS = ("kwta-0.1", "kwta-0.1-pgd", "relu", "relu-pgd")  # the paper's figure, left to right


@dataclass(frozen=True)
class Scale:
    """How big the grid is: the full replication, or the mini grid that proves the machinery on a laptop."""

    datasets: dict[str, str]  # the grid's dataset -> the one trained on
    torchvision_size: int  # input size of the AlexNet and ResNet18 runs
    epochs: dict[str, int]  # recipe -> epochs
    incremental: str  # --ratio-schedule of the incremental run
    data: list = field(default_factory=list)  # train.py flags cutting the data (subsets, batch size)
    adv_steps: int = 10
    attack: list = field(default_factory=list)  # attack.py flags cutting images and budgets
    landscape: list = field(default_factory=list)
    fit: list = field(default_factory=list)
    minutes: dict[str, int] | None = None  # SLURM time limits by step kind; None: the full grid's
    mini: bool = False


FULL = Scale(datasets={"cifar10": "cifar10", "svhn": "svhn"}, torchvision_size=224,
             epochs={"scratch": 80, "finetune": 10, "paper": 80, "incremental": 70}, incremental="0.2:0.1:0.005:2",
             landscape=["--image-index", 0, 1, 2, 3])
MINI = Scale(datasets={"cifar10": "synthetic", "svhn": "fashion-mnist"}, torchvision_size=64,
             epochs={"scratch": 1, "finetune": 1, "paper": 1, "incremental": 2}, incremental="0.2:0.1:0.05:1",
             data=["--train-subset", 64, "--test-subset", 64, "--batch-size", 16], adv_steps=1,
             attack=["--n-images", 4, "--batch-size", 4, "--budget", "smoke"],
             landscape=["--steps", 3, "--image-index", 0],
             fit=["--steps", 30, "--grid", 100, "--hidden", 16, "--points", 6],
             minutes=dict.fromkeys(("scratch", "finetune", "paper", "incremental", "adversarial", "suite", "report",
                                    "landscape", "fit", "tables"), 30), mini=True)
FULL_MINUTES = {"scratch": 8 * 60, "finetune": 3 * 60, "paper": 3 * 60, "incremental": 4 * 60, "adversarial": 24 * 60,
                "suite": 6 * 60, "report": 60, "landscape": 60, "fit": 30, "tables": 10}


@dataclass
class Run:
    name: str
    label: str
    flags: list  # train.py flags of its own
    twin: str  # the run whose PGD adversarials the transfer attack evaluates on this one
    recipe: str  # key of Scale.epochs / the minutes table
    init_from: str | None = None  # a run of the same group whose trained weights it starts from


@dataclass
class Group:
    name: str
    arch: str
    dataset: str  # the grid's dataset (cifar10 or svhn), whatever the scale trains on
    training: str  # scratch, finetune or paper
    runs: list[Run]


def replication_runs() -> list[Run]:
    return [Run("relu", "ReLU", ["--activation", "relu"], twin="kwta-0.2", recipe=""),
            Run("kwta-0.2", "k-WTA-0.2", ["--activation", "kwta", "--ratio", 0.2], twin="relu", recipe=""),
            Run("kwta-0.1", "k-WTA-0.1", ["--activation", "kwta", "--ratio", 0.1], twin="relu", recipe="")]


def paper_runs(dataset: str, scale: Scale) -> list[Run]:
    kwta = lambda ratio: ["--activation", "kwta", "--ratio", ratio, "--stem-relu"]
    adversarial = lambda kind: ["--adv-train", kind, "--adv-steps", scale.adv_steps, "--adv-alpha", PGD_ALPHA[dataset],
                                *(["--trades-beta", 6] if kind == "trades" else [])]
    return [
        Run("relu", "ReLU", ["--activation", "relu"], twin="kwta-0.2", recipe="paper"),
        Run("kwta-0.2", "k-WTA-0.2", kwta(0.2), twin="relu", recipe="paper"),
        Run("kwta-0.1", "k-WTA-0.1", kwta(0.1), twin="relu", recipe="paper"),
        Run("kwta-incremental", "k-WTA 0.2→0.1 (incremental)",
            ["--activation", "kwta", "--ratio-schedule", scale.incremental, "--stem-relu", "--lr", 0.001,
             "--milestones"], twin="relu", recipe="incremental", init_from="kwta-0.2"),
        Run("relu-pgd", "ReLU + PGD training", ["--activation", "relu", *adversarial("pgd")], twin="kwta-0.1-pgd",
            recipe="adversarial"),
        Run("kwta-0.1-pgd", "k-WTA-0.1 + PGD training", [*kwta(0.1), *adversarial("pgd")], twin="relu-pgd",
            recipe="adversarial"),
        Run("relu-trades", "ReLU + TRADES", ["--activation", "relu", *adversarial("trades")], twin="kwta-0.1-trades",
            recipe="adversarial"),
        Run("kwta-0.1-trades", "k-WTA-0.1 + TRADES", [*kwta(0.1), *adversarial("trades")], twin="relu-trades",
            recipe="adversarial"),
    ]


def grid(scale: Scale) -> list[Group]:
    groups = []
    for arch in TORCHVISION_ARCHS:
        for dataset in ("cifar10", "svhn"):
            for training in ("scratch", "finetune"):
                groups.append(Group(f"{arch}-{scale.datasets[dataset]}-{training}", arch, dataset, training,
                                    replication_runs()))
    for dataset in ("cifar10", "svhn"):
        groups.append(Group(f"resnet18-cifar-{scale.datasets[dataset]}-paper", "resnet18-cifar", dataset, "paper",
                            paper_runs(dataset, scale)))
    return groups


def train_flags(group: Group, run: Run, scale: Scale, out: Path) -> list:
    """train.py's flags for one run: the recipe of its group, its own flags, then the scale's cuts."""
    dataset = scale.datasets[group.dataset]
    flags = ["--arch", group.arch, "--dataset", dataset]
    if group.training == "paper":
        recipe = run.recipe if run.recipe == "incremental" else "paper"
        flags += ["--batch-size", 256, "--epochs", scale.epochs[recipe]]
        if recipe == "paper":
            flags += ["--lr", 0.1, "--milestones", 50]
        if run.init_from:
            flags += ["--init-from", out / "runs" / group.name / run.init_from / "checkpoint.pt"]
    else:
        flags += ["--input-size", scale.torchvision_size, "--batch-size", 32, "--epochs", scale.epochs[group.training]]
        if group.training == "finetune":
            weights = ["--weights", imagenet_layout_weights(out, group.arch)] if scale.mini else []
            flags += ["--pretrained", *weights, "--lr", 0.01, "--milestones"]
        else:
            flags += ["--lr", 0.1, "--milestones", 50]
    return [*flags, *run.flags, *scale.data]


def imagenet_layout_weights(out: Path, arch: str) -> Path:
    """The mini grid's stand-in for torchvision's ImageNet weights: a state dict in their layout, made here."""
    return out / "weights" / f"{arch}-imagenet-layout.pt"


def write_imagenet_layout_weights(out: Path) -> None:
    import torch
    import torchvision

    for arch in TORCHVISION_ARCHS:
        path = imagenet_layout_weights(out, arch)
        if not path.exists():
            torch.manual_seed(0)
            buffer = io.BytesIO()
            torch.save(getattr(torchvision.models, arch)().state_dict(), buffer)
            atomic_write(path, buffer.getvalue())


def run_kind(group: Group, run: Run) -> str:
    return group.training if group.training != "paper" else run.recipe


def build_steps(scale: Scale, out: Path, data_dir: str | None) -> list[Step]:
    """Every step of the grid, each after the steps it needs; data_dir: where the datasets live (not a setting)."""
    minutes = scale.minutes or FULL_MINUTES
    location = ["--data-dir", data_dir] if data_dir else []
    steps, last = [], []  # last: what the tables show
    for group in grid(scale):
        for run in group.runs:
            run_dir = out / "runs" / group.name / run.name
            flags = train_flags(group, run, scale, out)
            steps.append(Step(
                f"train-{group.name}-{run.name}", python_command("train.py", *flags, "--out", run_dir),
                done=run_dir / "summary.json", needs=[f"train-{group.name}-{run.init_from}"] if run.init_from else [],
                resume=["--resume"], fresh=["--overwrite"], checkpoint=run_dir / "checkpoint.pt", location=location,
                inputs=[Path(flags[flags.index("--weights") + 1])] if "--weights" in flags else [],
                minutes=minutes[run_kind(group, run)],
            ))
        for run in group.runs:
            checkpoint = out / "runs" / group.name / run.name / "checkpoint.pt"
            twin = out / "runs" / group.name / run.twin / "checkpoint.pt"
            for suffix, attack_flags, kind in (("", ["--attacks", "all", "--source-checkpoint", twin], "suite"),
                                               ("report-", REPORT_PGD, "report")):
                result = out / "attacks" / group.name / f"{suffix}{run.name}.json"
                steps.append(Step(
                    f"attack-{suffix}{group.name}-{run.name}",
                    python_command("attack.py", "--checkpoint", checkpoint, *attack_flags, *scale.attack,
                                   "--out", result),
                    done=result, location=location, minutes=minutes[kind],
                    needs=[f"train-{group.name}-{run.name}"] + ([f"train-{group.name}-{run.twin}"] if kind == "suite"
                                                                else []),
                ))
                last.append(steps[-1].name)
        if group.training == "paper":
            figure = out / "landscapes" / f"{group.name}.png"
            runs = {run.name: run for run in group.runs}
            steps.append(Step(
                f"landscape-{group.name}",
                python_command("plots.landscape", "--checkpoints",
                               *[out / "runs" / group.name / name / "checkpoint.pt" for name in LANDSCAPE_RUNS],
                               "--labels", *[runs[name].label for name in LANDSCAPE_RUNS], *scale.landscape,
                               "--out", figure),
                done=figure, needs=[f"train-{group.name}-{name}" for name in LANDSCAPE_RUNS], location=location,
                minutes=minutes["landscape"],
            ))
            last.append(steps[-1].name)
    steps.append(Step("fit1d", python_command("plots.fit1d", *scale.fit, "--out", out / "fit1d.png"),
                      done=out / "fit1d.png", gpus=0, minutes=minutes["fit"]))
    last.append("fit1d")
    steps.append(Step(
        "tables", python_command("scripts.paper", "--tables-only", *(["--mini"] if scale.mini else []),
                                 "--out", out),
        done=out / "tables" / "all.md", needs=last, gpus=0, minutes=minutes["tables"],
    ))
    return steps


# --------------------------------------------------------------------------------------------------------
# Tables


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def training_setting(summary: dict) -> str:
    """How a model was trained, read from its summary.json (never from this invocation's flags)."""
    args = summary["args"]
    if args.get("weights"):
        how = f"fine-tuned from the ImageNet-layout state dict {Path(args['weights']).name}, ImageNet normalisation"
    elif args.get("pretrained"):
        how = "fine-tuned from torchvision's ImageNet weights, ImageNet normalisation"
    elif args.get("init_from"):
        how = f"fine-tuned from the trained {Path(args['init_from']).parent.name} model"
    else:
        how = "from scratch"
    if args.get("ratio_schedule"):
        start, end, step, every = args["ratio_schedule"]
        how += f", ratio {start:g} to {end:g} by {step:g} every {every} epoch(s)"
    if args.get("stem_relu"):
        how += ", stem ReLU kept"
    if args.get("adv_train"):
        kind = "PGD training" if args["adv_train"] == "pgd" else f"TRADES, beta {args['trades_beta']:g}"
        how += f", {kind} ({args['adv_steps']} steps of {args['adv_alpha']:g} at eps {args['adv_eps']:g})"
    milestones = f", x0.1 at epoch {', '.join(map(str, args['milestones']))}" if args["milestones"] else ""
    return (f"{how}, {summary['epochs']} epoch(s), batch {args['batch_size']}, lr {args['lr']:g}{milestones}, "
            f"{args['input_size']} px, {summary.get('train_images', '?')} training images; A_std on "
            f"{summary.get('test_images', '?')} test images; on {summary['device']}")


def attack_setting(result: dict) -> str:
    """What attack.py ran, read from its JSON."""
    settings, eps = result["settings"], result["eps"][0]
    if settings.get("pgd_rel_stepsize"):
        step = f"rel_stepsize {settings['pgd_rel_stepsize']:g} (step {settings['pgd_rel_stepsize'] * eps:.2g})"
    else:
        step = f"step {settings.get('pgd_step') or 2.5 * eps / settings['pgd_steps']:.2g}"
    return (f"{', '.join(result['attacks'])} at eps {eps:g} on the first {result['n_images']} test images, PGD "
            f"{settings['pgd_steps']} steps at {step}")


def merged(settings: dict[str, str]) -> list[str]:
    """One line per distinct setting, naming the models that share it: '- ReLU, k-WTA-0.2: ...'."""
    by_text: dict[str, list[str]] = {}
    for label, text in settings.items():
        by_text.setdefault(text, []).append(label)
    return [f"- {', '.join(labels)}: {text}." for text, labels in by_text.items()]


def write_tables(scale: Scale, out: Path) -> list[Path]:
    """One Markdown table per group from the results that exist so far, and tables/all.md with all of them."""
    report = load_report()
    written, sections = [], []
    for group in grid(scale):
        labels = {run.name: run.label for run in group.runs}
        table = report_table(report, group.arch, group.dataset, group.training)
        models, training, suites, reports, transfers = [], {}, {}, {}, []
        for run in group.runs:
            summary = read_json(out / "runs" / group.name / run.name / "summary.json")
            report_attacks = read_json(out / "attacks" / group.name / f"report-{run.name}.json")
            suite = read_json(out / "attacks" / group.name / f"{run.name}.json")
            models.append(ModelResults(run.label, report=table["rows"].get(run.name) if table else None,
                                       test_accuracy=summary["final_test_acc"] if summary else None,
                                       report_attacks=report_attacks, suite=suite))
            if summary:
                training[run.label] = training_setting(summary)
            if suite:
                suites[run.label] = attack_setting(suite)
                if suite.get("source_checkpoint"):
                    source = Path(suite["source_checkpoint"]).parent.name
                    transfers.append(f"{run.label} from {labels.get(source, source)}")
            if report_attacks:
                reports[run.label] = attack_setting(report_attacks)
        if not training:
            continue
        trained_on = scale.datasets[group.dataset]
        title = (f"{ARCH_TITLES[group.arch]} {'fine-tuned' if group.training == 'finetune' else 'trained'} on "
                 f"{DATASET_TITLES[trained_on]}" + (" from scratch" if group.training == "scratch" else ""))
        lines = [f"## {title[0].upper()}{title[1:]} ({group.name})", ""]
        if table and trained_on != group.dataset:
            lines += [f"Stand-in for the report's Table {table['table']} ({table['title']}): this grid trains on "
                      f"{DATASET_TITLES[trained_on]} at toy sizes, so its figures are not comparable with the "
                      "report's, which are shown for the layout.", ""]
        elif table:
            lines += [f"Beside the report's Table {table['table']} ({table['title']}).", ""]
        else:
            lines += ["The paper's own experiments: the replication report has no figures for them.", ""]
        lines += [comparison_table(models), "Robust accuracy: the share of the attacked images classified correctly "
                  "after the attack; worst case counts an image only if it survived every attack of its row. "
                  "Settings, as recorded by the runs:", "", "Training:", "", *merged(training), "",
                  "Full suite:", "", *merged(suites), *([f"- Transfer: {', '.join(transfers)}."] if transfers else []),
                  "", "The report's attacks:", "", *merged(reports), ""]
        if table:
            lines += [f"The report's protocol: {' '.join(report['protocol'])}", ""]
            if group.arch != "resnet18-cifar":
                lines += ["How this differs from the report: here eps applies to the data's own 32-px images (the "
                          "network upsamples to its input size inside itself), as in the literature; the report's "
                          "data transform upsampled first, so its eps ball held every upsampled 32-px perturbation "
                          "and far more (49 times the dimensions at 224 px).", ""]
            lines += [f"Anomaly in the report: {text}" for text in anomalies(report, table["table"])]
            lines += [""] if anomalies(report, table["table"]) else []
        figure = out / "landscapes" / f"{group.name}.png"
        if figure.exists():
            lines += [f"![loss landscapes](../landscapes/{figure.name})", ""]
        text = "\n".join(lines)
        path = out / "tables" / f"{group.name}.md"
        atomic_write(path, "# " + text[3:])
        written.append(path)
        sections.append(text)
    if sections:
        fit = ["## The 1-D fit", "", "![1-D fit](../fit1d.png)", ""] if (out / "fit1d.png").exists() else []
        title = "# The mini grid: every table (toy sizes; not comparable)" if scale.mini else "# The grid: every table"
        atomic_write(out / "tables" / "all.md", "\n".join([title, "", *sections, *fit]))
        written.append(out / "tables" / "all.md")
    return written


def download_datasets(scale: Scale, data_dir: str) -> None:
    """Every dataset of the grid into data_dir, once, before any step starts (steps never download)."""
    from kwta.data import get_datasets

    with exclusive_lock(Path(data_dir) / ".download.lock", wait=True, what=data_dir):
        for dataset in sorted(set(scale.datasets.values()) - {"synthetic"}):
            print(f"download: {dataset} into {data_dir}", flush=True)
            get_datasets(dataset, data_dir, download=True)


def select(steps: list[Step], only: list[str]) -> list[Step]:
    """The steps matching any of the fnmatch patterns `only` and those they need (every step when `only` is
    empty); RuntimeError when nothing matches."""
    if not only:
        return steps
    matching = {step.name for step in steps if any(fnmatch.fnmatch(step.name, p) for p in only)}
    if not matching:
        raise RuntimeError(f"--only {' '.join(only)} matches no step (--dry-run lists them)")
    return upstream(steps, matching)


def run(args) -> None:
    """What scripts/paper.py's arguments ask for (args.scale, out, data_dir, download, devices, cpus, slurm,
    slurm_*, only, rerun, dry_run, tables_only). Raises RuntimeError (Busy when another invocation holds OUT)
    naming what failed; when steps fail, the tables are first written from what finished."""
    scale, out = args.scale, args.out
    if args.tables_only:
        for table in write_tables(scale, out):
            print(f"table: {table}")
        return
    steps = select(build_steps(scale, out, args.data_dir), args.only)
    rerun = {step.name for step in steps if any(fnmatch.fnmatch(step.name, p) for p in args.rerun)}
    try:
        if not args.dry_run:
            if args.download:
                download_datasets(scale, args.data_dir)
            if scale.mini:
                write_imagenet_layout_weights(out)
        if args.slurm:
            from experiments.slurm import submit_steps

            if args.dry_run:
                run_steps(steps, slots=[{}], log_dir=out / "logs", root=out, cwd=ROOT, dry_run=True, rerun=rerun)
                return
            submit_steps(steps, log_dir=out / "logs", root=out, cwd=ROOT, partition=args.slurm_partition,
                         cpus_per_step=args.slurm_cpus, mem_gb=args.slurm_mem_gb, extra=args.slurm_options,
                         rerun=rerun)
            print(f"submitted; run the same command again to see what finished (tables: {out / 'tables'})")
            return
        slots = cpu_slots(args.cpus) if args.cpus else gpu_slots(args.devices)
        run_steps(steps, slots=slots, log_dir=out / "logs", root=out, cwd=ROOT, dry_run=args.dry_run, rerun=rerun)
    except Busy:
        raise
    except RuntimeError:
        write_tables(scale, out)
        raise
    if not args.dry_run:
        print(f"tables: {out / 'tables'}")
