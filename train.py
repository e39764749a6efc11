r"""Train one network on one dataset; by default the replication's recipe (SGD, momentum 0.9, batch 32).

    python train.py --arch resnet18-cifar --dataset fashion-mnist --activation kwta --ratio 0.2 --out runs/fm-kwta
    python train.py --arch resnet18 --dataset cifar10 --pretrained --out runs/ft   # lr 0.01, 10 epochs, 224 px
    python train.py --arch resnet18-cifar --init-from runs/k02/checkpoint.pt --ratio-schedule 0.2:0.1:0.005:2 \
        --lr 0.001 --epochs 70 --out runs/incremental     # the paper's incremental sparsity, from a trained model
    torchrun --nproc_per_node=4 train.py ...       # DistributedDataParallel, one process per GPU (gloo on CPU)

Writes into --out: checkpoint.pt (every epoch, atomically), metrics.jsonl (one line per epoch) and
summary.json. An --out already holding files is refused, so that one run never silently replaces another:
--resume continues from its checkpoint.pt exactly where it stopped (with the saved lr schedule: a different
--lr, --milestones or --weight-decay is refused); --overwrite starts afresh, deleting train.py's own files
there and nothing else. Fine-tuning (--pretrained) normalises inputs with ImageNet's statistics, as
torchvision's weights expect; from scratch, with the dataset's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from experiments.cli import HelpFormatter, positive_float, positive_int, unit_interval

if TYPE_CHECKING:  # --help answers before torch is imported: every phase imports what it uses
    import torch
    from torch.utils.data import DataLoader, Dataset, DistributedSampler

# Flags a resumed run must share with the run that wrote the checkpoint, or it would not be a continuation.
RESUME_MUST_MATCH = ("arch", "dataset", "activation", "ratio", "mode", "ratio_schedule", "input_size", "pretrained",
                     "batch_size", "seed", "train_subset", "adv_train", "adv_eps", "adv_alpha", "adv_steps",
                     "trades_beta", "stem_relu", "init_from", "precision", "schedule")
# Optimiser settings a checkpoint carries in its optimizer and scheduler state: resuming keeps the saved ones.
RESUME_KEEPS = ("lr", "milestones", "weight_decay")
ADV_TRAINING = ("pgd", "trades")
# What train.py writes into --out, and all that --overwrite deletes there (with atomic_write's .*.tmp leftovers).
CHECKPOINT, METRICS, SUMMARY = "checkpoint.pt", "metrics.jsonl", "summary.json"


def ratio_schedule(text: str) -> tuple[float, float, float, int]:
    """START:END:STEP:EVERY, e.g. 0.2:0.1:0.005:2 (the paper's incremental sparsity)."""
    parts = text.split(":")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"expected START:END:STEP:EVERY, got {text!r}")
    try:
        start, end, step, every = unit_interval(parts[0]), unit_interval(parts[1]), float(parts[2]), int(parts[3])
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected START:END:STEP:EVERY numbers, got {text!r} ({error})") from None
    if step <= 0 or every < 1:
        raise argparse.ArgumentTypeError(f"STEP must be > 0 and EVERY >= 1, got {text!r}")
    return start, end, step, every


def ratio_at(schedule: tuple[float, float, float, int], epoch: int) -> float:
    """The sparsity ratio for 0-based `epoch`: START moved by STEP every EVERY epochs, stopping at END."""
    start, end, step, every = schedule
    moved = start + np.sign(end - start) * step * (epoch // every)
    # Rounding keeps 0.2 - 20 * 0.005 at 0.1, not 0.0999..., so k = int(ratio * N) is the intended one.
    return round(float(min(moved, end) if end >= start else max(moved, end)), 10)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The RNG seed for one epoch on one process.

    Re-seeding at every epoch start makes augmentation, dropout and PGD starts depend on the epoch alone:
    a resumed run replays what an uninterrupted one would, on every rank, with no RNG state to save.
    """
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def build_parser() -> argparse.ArgumentParser:
    """The flags, torch-free so that --help answers at once. The names --arch, --activation, --mode and --dataset
    take live in modules that import torch, so parse_args checks them after parsing, not argparse."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--arch", default="resnet18", help="network, a name of kwta.models.ARCHS")
    model.add_argument("--activation", default="kwta", help="relu or kwta (kwta.models.ACTIVATIONS)")
    model.add_argument("--ratio", type=unit_interval, default=0.2, help="k-WTA sparsity ratio")
    model.add_argument("--mode", default="vol",
                       help="k-WTA rows: whole sample (vol) or per channel (channel); kwta.kernels.reference.MODES")
    model.add_argument("--ratio-schedule", type=ratio_schedule, metavar="START:END:STEP:EVERY",
                       help="incremental sparsity, e.g. 0.2:0.1:0.005:2 (overrides --ratio)")
    model.add_argument("--stem-relu", action="store_true",
                       help="k-WTA everywhere but the stem, which keeps its ReLU (the paper's resnet18-cifar)")
    model.add_argument("--pretrained", action="store_true", help="fine-tune from torchvision's ImageNet weights")
    model.add_argument("--weights", metavar="PATH",
                       help="ImageNet state dict file to fine-tune from (implies --pretrained)")
    model.add_argument("--init-from", metavar="CHECKPOINT",
                       help="start from the weights of a checkpoint.pt of this project (e.g. the paper's incremental "
                            "sparsity, from a trained k-WTA 0.2 model); the optimiser starts afresh")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="cifar10", help="a name of kwta.data.DATASETS")
    data.add_argument("--data-dir", help="where the dataset lives (default: data/; fashion-mnist: Debian's files)")
    data.add_argument("--download", action="store_true", help="download the dataset into --data-dir if missing")
    data.add_argument("--input-size", type=positive_int, help="resize to this (default: 224 with --pretrained or "
                      "alexnet, else the dataset's size)")
    data.add_argument("--train-subset", type=positive_int, metavar="N",
                      help="train on N samples, fixed by --seed (default: all)")
    data.add_argument("--test-subset", type=positive_int, metavar="N",
                      help="test on N samples, fixed by --seed (default: all)")
    data.add_argument("--workers", type=int, help="DataLoader workers per process (default: 4 on CUDA, 0 on CPU)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=positive_int, help="epochs to train (default: 80; 10 with --pretrained)")
    optim.add_argument("--lr", type=float, help="SGD's learning rate (default: 0.1; 0.01 with --pretrained)")
    optim.add_argument("--schedule", choices=("step", "onecycle"), default="step",
                       help="lr schedule: step (x0.1 at each --milestones epoch, the replication's) or onecycle "
                            "(warm up to --lr over the first 30%% of the steps, then cosine down, every batch)")
    optim.add_argument("--milestones", type=positive_int, nargs="*", metavar="EPOCH",
                       help="epochs where lr drops 10x under --schedule step (default: 50; none with --pretrained)")
    optim.add_argument("--batch-size", type=positive_int, default=32, help="per process")
    optim.add_argument("--weight-decay", type=float, help="SGD's weight decay (default: 0)")
    optim.add_argument("--adv-train", nargs="?", const="pgd", choices=ADV_TRAINING,
                       help="adversarial training: pgd (Madry et al., the default when no value is given) or trades "
                            "(Zhang et al.); off by default")
    optim.add_argument("--adv-eps", type=float, help="attack budget (default: the dataset's, as attack.py's)")
    optim.add_argument("--adv-alpha", type=float, help="attack step size (default: 2.5 * eps / steps)")
    optim.add_argument("--adv-steps", type=positive_int, default=7, help="attack steps")
    optim.add_argument("--trades-beta", type=positive_float, default=6.0,
                       help="TRADES's weight of the robust (KL) term; 6 is Zhang et al.'s CIFAR-10 value")
    run = parser.add_argument_group("run")
    run.add_argument("--out", help="run directory (default: runs/ARCH-DATASET-ACTIVATION, k-WTA's naming its ratio "
                                   "and a mode other than vol: e.g. runs/resnet18-cifar10-kwta0.1-channel)")
    existing = run.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help=f"continue from OUT/{CHECKPOINT}")
    existing.add_argument("--overwrite", action="store_true",
                          help=f"start afresh in an --out that holds files: once the run is set up, delete "
                               f"train.py's own files there ({CHECKPOINT}, {METRICS}, {SUMMARY} and the .*.tmp "
                               "of interrupted writes); anything else is kept, and named")
    run.add_argument("--seed", type=int, default=0, help="seeds the weights, subsets, data order, augmentation and "
                                                         "PGD starts")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun: cuda:LOCAL_RANK)")
    run.add_argument("--channels-last", action="store_true",
                     help="train in channels-last memory format (always on CUDA; on a CPU, python -m bench.training "
                          "says whether it pays)")
    run.add_argument("--compile", action="store_true", help="train through torch.compile (the saved, tested and "
                                                            "attacked network stays the eager one)")
    run.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                     help="training arithmetic: bf16 autocast (auto on CUDA and on CPUs with bf16 in hardware, "
                     "avx512_bf16 or AMX) or fp32 (auto on other CPUs, where bf16 is emulated and slower); test "
                     "accuracy is always measured in fp32, the precision attack.py attacks in")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The flags, with every default filled in: what the checkpoint records and a resumed run is compared with."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from kwta.kernels.reference import MODES

    from kwta.data import DATASETS, DEFAULT_EPS
    from kwta.models import ACTIVATIONS, ARCHS, MIN_INPUT_SIZE

    for flag, names in (("arch", ARCHS), ("activation", ACTIVATIONS), ("mode", MODES), ("dataset", tuple(DATASETS))):
        if vars(args)[flag] not in names:  # argparse's own message for a choice
            parser.error(f"argument --{flag}: invalid choice: {vars(args)[flag]!r} (choose from "
                         f"{', '.join(map(repr, names))})")
    args.pretrained = args.pretrained or args.weights is not None
    if args.init_from and args.pretrained:
        parser.error("--init-from starts from a checkpoint of ours; it does not combine with --pretrained/--weights")
    if args.stem_relu and args.activation != "kwta":
        parser.error("--stem-relu needs --activation kwta (a ReLU network keeps every ReLU anyway)")
    args.given = sorted(key for key in RESUME_KEEPS if getattr(args, key) is not None)  # what the user asked for
    if args.ratio_schedule and args.activation != "kwta":
        parser.error("--ratio-schedule needs --activation kwta")
    if args.ratio_schedule:
        args.ratio = args.ratio_schedule[0]
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if args.lr is not None and args.lr <= 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if args.epochs is None:
        args.epochs = 10 if args.pretrained else 80
    if args.lr is None:
        args.lr = 0.01 if args.pretrained else 0.1
    if args.milestones is None:
        args.milestones = [] if args.pretrained else [50]
    if args.weight_decay is None:
        args.weight_decay = 0.0
    if args.input_size is None:
        needs_imagenet_size = args.pretrained or args.arch == "alexnet"
        args.input_size = 224 if needs_imagenet_size else DATASETS[args.dataset]["size"]
    if args.input_size < MIN_INPUT_SIZE[args.arch]:
        parser.error(f"--input-size {args.input_size} is too small for {args.arch} (at least "
                     f"{MIN_INPUT_SIZE[args.arch]}; the replication used 224)")
    if args.adv_eps is None:
        args.adv_eps = DEFAULT_EPS[args.dataset]
    if args.adv_alpha is None:
        args.adv_alpha = 2.5 * args.adv_eps / args.adv_steps
    if args.out is None:
        args.out = default_out(args)
    return args


def default_out(args: argparse.Namespace) -> str:
    """runs/ARCH-DATASET-ACTIVATION, k-WTA's naming its sparsity: a k-WTA 0.1 run must not land on the 0.2 one."""
    activation = args.activation
    if args.activation == "kwta":
        start, end = args.ratio_schedule[:2] if args.ratio_schedule else (args.ratio, args.ratio)
        activation += f"{start:g}" if start == end else f"{start:g}to{end:g}"
        activation += f"-{args.mode}" if args.mode != "vol" else ""
    return os.path.join("runs", f"{args.arch}-{args.dataset}-{activation}")


def fail(message: object) -> None:
    sys.exit(f"train.py: error: {message}")


@dataclass(frozen=True)
class Processes:
    """This process's place among torchrun's, and the arithmetic it trains in: what every later phase asks."""

    device: torch.device
    rank: int
    world_size: int
    is_main: bool  # the one process that prints and writes files
    memory_format: torch.memory_format
    precision: str  # training's, "bf16" (autocast) or "fp32"; test accuracy is always measured in fp32

    def autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")


class Loaders(NamedTuple):
    sampler: DistributedSampler  # the training set's, which set_epoch reshuffles
    train: DataLoader
    test: DataLoader


@dataclass
class Training:
    """What the epochs advance and every checkpoint saves."""

    bare_model: torch.nn.Module  # the network itself: attacked, tested, saved
    model: torch.nn.Module  # what the optimiser trains through: bare_model, or its DDP wrapper under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    per_batch: bool  # the scheduler steps after every batch (onecycle), else after every epoch
    epochs_done: int
    history: list[dict]  # one row of metrics per epoch done (on rank 0)


def setup_processes(args: argparse.Namespace) -> Processes:
    """Join torchrun's process group, if any, and fix the arithmetic for the whole run.

    k-WTA's winners depend on the arithmetic, so the figures a user compares come from one precision:
    training may run under bf16 autocast for speed, but test accuracy is measured in fp32, as attack.py attacks.
    """
    import torch

    from kwta import distributed
    from kwta.machine import native_bf16

    try:
        device = distributed.init(args.device)
    except (ValueError, RuntimeError) as error:  # a device torch does not know, or CUDA absent
        fail(f"--device: {str(error).splitlines()[0]}")
    on_cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = on_cuda
    return Processes(
        device=device, rank=distributed.rank(), world_size=distributed.world_size(), is_main=distributed.is_main(),
        memory_format=torch.channels_last if on_cuda or args.channels_last else torch.contiguous_format,
        precision="bf16" if args.precision == "bf16" or (args.precision == "auto" and (on_cuda or native_bf16()))
        else "fp32",
    )


def check_out(args: argparse.Namespace, processes: Processes) -> None:
    """Refuse an --out holding files unless told what to do with them, before anything slow or destructive runs.

    Only rank 0 looks, and every process learns its verdict, so under torchrun all stop or none does, and no
    process sees the folder while another changes it. Nothing is deleted yet (see prepare_out).
    """
    from kwta import distributed

    problem = None
    if processes.is_main and os.path.exists(args.out) and not os.path.isdir(args.out):
        problem = f"--out {args.out} is a file, not a folder"
    elif processes.is_main and not (args.resume or args.overwrite) and os.path.isdir(args.out):
        held = sorted(os.listdir(args.out))
        if held:
            shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            problem = (f"--out {args.out} already holds files ({shown}): pass --resume to continue its run or "
                       "--overwrite to start afresh, or choose another --out")
    refused = distributed.all_reduce_sum([float(problem is not None)], processes.device)[0]
    if problem is not None:
        fail(problem)
    if refused:
        sys.exit(1)  # rank 0 has said why


def load_data(args: argparse.Namespace, processes: Processes) -> tuple[Dataset, Dataset, dict]:
    """(train set, test set, info). With --download rank 0 fetches first and the others then read its files,
    so no two processes write one file."""
    from kwta import distributed
    from kwta.data import get_datasets

    try:
        if args.download and not processes.is_main:
            distributed.barrier()
        datasets = get_datasets(  # in the data's own pixels: a network wanting another size resizes inside itself
            args.dataset, args.data_dir, download=args.download,
            train_subset=args.train_subset, test_subset=args.test_subset, seed=args.seed,
        )
        if args.download and processes.is_main:
            distributed.barrier()
    except (ValueError, OSError) as error:
        fail(error)
    return datasets


def build_network(args: argparse.Namespace, info: dict) -> tuple[torch.nn.Module, dict | None]:
    """(network, checkpoint to resume or None): the weights to start from, whichever flag chose them.

    Seeded first, so every process builds the same initial weights; --init-from's weights replace them
    together with its normalisation buffers, the ones that model learned with.
    """
    import torch

    from kwta.checkpoint import load_checkpoint
    from kwta.models import build_model, imagenet_normalization

    try:
        torch.manual_seed(args.seed)  # the same initial weights on every process
        normalize = imagenet_normalization(info["in_channels"]) if args.pretrained else (info["mean"], info["std"])
        network = build_model(
            args.arch, num_classes=info["num_classes"], in_channels=info["in_channels"], activation=args.activation,
            ratio=args.ratio, mode=args.mode, pretrained=args.pretrained, weights=args.weights, normalize=normalize,
            stem_relu=args.stem_relu, resize=args.input_size if args.input_size != info["input_size"] else None,
        )
        resumed = load_checkpoint(os.path.join(args.out, CHECKPOINT)) if args.resume else None
        if args.init_from and resumed is None:
            initial = load_checkpoint(args.init_from)
            this_run = {"arch": args.arch, "dataset": args.dataset, "num_classes": info["num_classes"],
                        "in_channels": info["in_channels"], "input_size": args.input_size}
            for key, value in this_run.items():
                if initial["spec"][key] != value:
                    raise ValueError(f"--init-from: {args.init_from} has {key} {initial['spec'][key]!r}, "
                                     f"this run {value!r}")
            network.load_state_dict(initial["model"])
    except (ValueError, OSError) as error:
        fail(error)
    if resumed is not None:
        check_continuation(args, resumed)
        network.load_state_dict(resumed["model"])
    return network, resumed


def check_continuation(args: argparse.Namespace, resumed: dict) -> None:
    """Refuse a --resume that would not continue the saved run, and adopt its optimiser settings into `args`:
    the restored optimizer and scheduler states carry those, so a new value asked for would be silently ignored."""
    checkpoint_path = os.path.join(args.out, CHECKPOINT)
    if any(key not in resumed for key in ("args", "optimizer", "scheduler", "epoch", "history")):
        fail(f"--resume: {checkpoint_path} holds a model but no training state to continue")
    for key in RESUME_MUST_MATCH:
        then, now = resumed["args"].get(key), vars(args)[key]
        if key in resumed["args"] and then != now:  # a key absent from an older checkpoint is not checked
            fail(f"--resume: {checkpoint_path} was trained with --{key.replace('_', '-')} {then}, not {now}")
    if args.schedule == "onecycle" and resumed["args"].get("epochs", args.epochs) != args.epochs:
        fail(f"--resume: {checkpoint_path} runs one cycle over {resumed['args']['epochs']} epochs, not {args.epochs}: "
             "a cycle cannot be stretched once begun")
    for key in RESUME_KEEPS:
        then = resumed["args"].get(key, vars(args)[key])
        if key in args.given and vars(args)[key] != then:
            fail(f"--resume continues with the saved --{key.replace('_', '-')} {then}; start a new run (another "
                 f"--out) to train with {vars(args)[key]}")
        vars(args)[key] = then


def start_training(args: argparse.Namespace, processes: Processes, info: dict, steps_per_epoch: int) -> Training:
    """The network on its device, its optimiser and lr schedule, fresh or where --resume's checkpoint left them."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    bare_model, resumed = build_network(args, info)
    bare_model.to(processes.device, memory_format=processes.memory_format)
    model = bare_model
    if processes.world_size > 1:
        device_ids = [processes.device.index] if processes.device.type == "cuda" else None
        model = DistributedDataParallel(bare_model, device_ids=device_ids)
    if args.compile:
        model = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    if args.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr,
                                                        total_steps=args.epochs * steps_per_epoch, pct_start=0.3)
    else:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=args.milestones, gamma=0.1)
    training = Training(bare_model, model, optimizer, scheduler, per_batch=args.schedule == "onecycle",
                        epochs_done=0, history=[])
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        training.epochs_done, training.history = resumed["epoch"], resumed["history"]
        if processes.is_main:  # a kill between the checkpoint and the metrics write left metrics.jsonl one epoch behind
            write_metrics(args, training.history)
    return training


def make_loaders(args: argparse.Namespace, processes: Processes, train_ds: Dataset, test_ds: Dataset) -> Loaders:
    """Loaders whose batches are a function of (seed, epoch) alone, whatever the number of workers: resuming needs it.

    They draw their worker seeds from a generator of their own, never from the global RNG that each epoch's
    reseed governs (dropout, PGD starts): loading must not shift that stream. DistributedSampler also in one
    process: its shuffle is a function of (seed, epoch); each sample's augmentation is a function of
    (seed, epoch, index), whichever worker loads it.
    """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, Subset

    from kwta.data import EpochIndexSampler, EpochSeeded

    on_cuda = processes.device.type == "cuda"
    workers = args.workers if args.workers is not None else (4 if on_cuda else 0)
    options = dict(num_workers=workers, pin_memory=on_cuda, persistent_workers=workers > 0,
                   generator=torch.Generator().manual_seed(args.seed))
    sampler = DistributedSampler(train_ds, num_replicas=processes.world_size, rank=processes.rank, shuffle=True,
                                 seed=args.seed)
    # drop_last: a final batch of one sample breaks BatchNorm where the feature map is 1x1.
    train_loader = DataLoader(EpochSeeded(train_ds, args.seed), batch_size=args.batch_size,
                              sampler=EpochIndexSampler(sampler), drop_last=True, **options)
    # Each process tests a disjoint shard (no padding, unlike DistributedSampler), so counts sum exactly.
    test_shard = Subset(test_ds, range(processes.rank, len(test_ds), processes.world_size))
    test_loader = DataLoader(test_shard, batch_size=4 * args.batch_size, **options)
    if len(train_loader) == 0:
        fail(f"--batch-size {args.batch_size} exceeds the {len(sampler)} training samples per process")
    return Loaders(sampler, train_loader, test_loader)


def prepare_out(args: argparse.Namespace) -> None:
    """Make --out ready for this run's writes (rank 0 only: nobody else writes there).

    --overwrite deletes the old run's files only now, once the run is set up: a run that fails to start (a
    missing dataset, a bad --init-from) leaves the old one whole, and --init-from may even read its checkpoint.
    It deletes only what train.py writes, so nothing stale of the old run remains beside the new one, but
    whatever else the user keeps there stays, and is named.
    """
    from kwta.checkpoint import remove_stale_temporaries

    os.makedirs(args.out, exist_ok=True)
    if args.overwrite:
        for name in (CHECKPOINT, METRICS, SUMMARY):
            path = os.path.join(args.out, name)
            if os.path.isfile(path) or os.path.islink(path):
                os.remove(path)
                print(f"removed {path} (--overwrite)")
    for path in remove_stale_temporaries(args.out):  # a write that a kill interrupted
        print(f"removed {path}, left by an interrupted write")
    kept = sorted(os.listdir(args.out)) if args.overwrite else []
    if kept:
        print(f"kept {', '.join(kept)} in {args.out}: not train.py's files")


def announce(args, processes: Processes, train_ds: Dataset, test_ds: Dataset, training: Training) -> None:
    """One line saying what is about to be trained, where and how: the log's first answer to "which run was this?"."""
    kind = f"k-WTA {args.ratio} ({args.mode})" if args.activation == "kwta" else "ReLU"
    precision = "bf16 autocast (test accuracy in fp32)" if processes.precision == "bf16" else "fp32"
    print(f"{args.arch} with {kind} on {args.dataset} ({len(train_ds)} train, {len(test_ds)} test, "
          f"{args.input_size}px), {args.epochs} epochs, {processes.world_size} process(es) on "
          f"{processes.device.type}, training in {precision}"
          + (f", resuming after epoch {training.epochs_done}" if args.resume else ""))


def run_epoch(args, processes: Processes, training: Training, loaders: Loaders, epoch: int) -> dict:
    """Train one epoch, then test: the epoch's row of metrics, summed over all processes.

    Testing comes after rank 0's BatchNorm statistics reach every process, so each scores the model rank 0 saves.
    """
    import torch

    from kwta import distributed
    from kwta.modules import set_ratio

    epoch_start = time.perf_counter()
    ratio = ratio_at(args.ratio_schedule, epoch) if args.ratio_schedule else args.ratio
    if args.activation == "kwta":
        set_ratio(training.bare_model, ratio)
    torch.manual_seed(epoch_seed(args.seed, epoch, processes.rank))
    loaders.sampler.set_epoch(epoch)
    lr = training.optimizer.param_groups[0]["lr"]
    loss_sum, correct, seen = train_steps(args, processes, training, loaders.train, epoch)
    if not training.per_batch:
        training.scheduler.step()
    train_loss, train_correct, train_seen = distributed.all_reduce_sum(
        [loss_sum.item(), correct.item(), seen], processes.device)
    train_seconds = time.perf_counter() - epoch_start
    distributed.broadcast_buffers(training.bare_model)
    test_loss, test_acc, test_images = evaluate(training.bare_model, loaders.test, processes)
    return {
        "epoch": epoch + 1, "lr": lr, "ratio": ratio if args.activation == "kwta" else None,
        "train_loss": train_loss / train_seen, "train_acc": train_correct / train_seen,
        "test_loss": test_loss, "test_acc": test_acc, "test_images": test_images,
        "train_seconds": train_seconds, "seconds": time.perf_counter() - epoch_start,
    }


def train_steps(args, processes: Processes, training: Training, loader: DataLoader, epoch: int):
    """(loss sum, correct, samples) over this process's batches of one epoch, the first two still on the device:
    .item() waits for the GPU, so the progress bar reads them every 10 steps only."""
    import torch
    from tqdm import tqdm

    loss_sum = torch.zeros((), dtype=torch.float64, device=processes.device)
    correct = torch.zeros((), dtype=torch.int64, device=processes.device)
    seen = 0
    training.model.train()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not processes.is_main, leave=False,
               dynamic_ncols=True)
    for step, (images, labels) in enumerate(bar):
        images = images.to(processes.device, non_blocking=True, memory_format=processes.memory_format)
        labels = labels.to(processes.device, non_blocking=True)
        logits, loss = batch_loss(args, processes, training, images, labels)
        training.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        training.optimizer.step()
        if training.per_batch:
            training.scheduler.step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += len(labels)
        if step % 10 == 0 or step == len(loader) - 1:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
    return loss_sum, correct, seen


def batch_loss(args, processes: Processes, training: Training, images, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean logits, loss) of one batch: cross-entropy, or with --adv-train PGD's (Madry et al.) or TRADES's
    (Zhang et al.). The logits are the clean ones either way, so train accuracy means one thing."""
    import torch.nn.functional as F

    from kwta.adversarial import pgd_linf, trades_linf, trades_loss

    bare_model, model = training.bare_model, training.model
    if args.adv_train:
        # Attack the bare module in eval mode: DDP would expect a parameter backward, and BatchNorm
        # statistics should not drift towards the attack's intermediate steps.
        bare_model.eval()
        with processes.autocast():
            if args.adv_train == "pgd":
                adversarial = pgd_linf(bare_model, images, labels, args.adv_eps, args.adv_alpha, args.adv_steps)
            else:
                adversarial = trades_linf(bare_model, images, args.adv_eps, args.adv_alpha, args.adv_steps)
        model.train()
    with processes.autocast():
        if args.adv_train == "trades":
            # Clean pass on the bare module, adversarial pass through DDP: one DDP forward per backward,
            # and autograd hands each parameter the sum of both paths' gradients once.
            adversarial_logits = model(adversarial)
            logits = bare_model(images)
            return logits, trades_loss(logits, adversarial_logits, labels, args.trades_beta)
        logits = model(adversarial if args.adv_train else images)
        return logits, F.cross_entropy(logits, labels)


def evaluate(model, loader, processes: Processes) -> tuple[float, float, int]:
    """(mean loss, accuracy, images) in fp32 over the test set: each process's shard, summed over all processes."""
    import torch
    import torch.nn.functional as F

    from kwta import distributed

    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=processes.device)
    correct = torch.zeros((), dtype=torch.int64, device=processes.device)
    count = 0
    with torch.no_grad():
        for images, labels in loader:
            images = images.to(processes.device, non_blocking=True, memory_format=processes.memory_format)
            logits = model(images)
            labels = labels.to(processes.device, non_blocking=True)
            loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
            correct += (logits.argmax(dim=1) == labels).sum()
            count += len(labels)
    loss_sum, correct, count = distributed.all_reduce_sum([loss_sum.item(), correct.item(), count], processes.device)
    return loss_sum / max(count, 1), correct / max(count, 1), int(count)


def write_metrics(args: argparse.Namespace, history: list[dict]) -> None:
    from kwta.checkpoint import atomic_write

    atomic_write(os.path.join(args.out, METRICS), "".join(json.dumps(row) + "\n" for row in history))


def save_epoch(args, processes: Processes, info: dict, training: Training) -> None:
    """Checkpoint the epoch just done, then metrics from the checkpoint's history: whichever write a kill
    interrupts, --resume rewrites metrics.jsonl from the checkpoint, so the two always agree."""
    from tqdm import tqdm

    from kwta.checkpoint import save_checkpoint

    row, bare_model = training.history[-1], training.bare_model
    spec = {
        "arch": args.arch, "activation": args.activation, "ratio": row["ratio"], "mode": args.mode,
        "dataset": args.dataset, "num_classes": info["num_classes"], "in_channels": info["in_channels"],
        "input_size": args.input_size, "image_size": info["input_size"],
        "mean": bare_model.normalize.mean.flatten().tolist(),
        "std": bare_model.normalize.std.flatten().tolist(), "stem_relu": args.stem_relu,
        "train_precision": processes.precision,
    }
    save_checkpoint(os.path.join(args.out, CHECKPOINT), {
        "spec": spec, "model": bare_model.state_dict(), "optimizer": training.optimizer.state_dict(),
        "scheduler": training.scheduler.state_dict(), "epoch": training.epochs_done, "history": training.history,
        "args": vars(args),
    })
    write_metrics(args, training.history)
    tqdm.write(f"epoch {row['epoch']}/{args.epochs}: train loss {row['train_loss']:.4f} acc "
               f"{row['train_acc']:.4f}, test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}, lr {row['lr']:g}, "
               + (f"ratio {row['ratio']:g}, " if args.activation == "kwta" else "") + f"{row['seconds']:.1f}s")


def write_summary(args, processes: Processes, train_ds: Dataset, test_ds: Dataset, history: list[dict]) -> None:
    """summary.json for the pipeline and tables to read, and one line for the person watching."""
    from kwta.checkpoint import atomic_write
    from kwta.machine import machine

    summary = {
        "arch": args.arch, "dataset": args.dataset, "activation": args.activation,
        "ratio": history[-1]["ratio"], "mode": args.mode, "pretrained": args.pretrained,
        "adv_train": args.adv_train, "epochs": len(history), "world_size": processes.world_size,
        "device": processes.device.type, "machine": machine(processes.device), "train_images": len(train_ds),
        "test_images": len(test_ds),
        "train_precision": processes.precision,
        "final_test_acc": history[-1]["test_acc"], "best_test_acc": max(r["test_acc"] for r in history),
        "seconds_per_epoch": sum(r["seconds"] for r in history) / len(history),
        "train_seconds_per_epoch": sum(r["train_seconds"] for r in history) / len(history),
        "checkpoint": os.path.join(args.out, CHECKPOINT), "metrics": os.path.join(args.out, METRICS),
        "args": vars(args),
    }
    atomic_write(os.path.join(args.out, SUMMARY), json.dumps(summary, indent=2) + "\n")
    print(f"done: {args.arch} {args.activation} on {args.dataset}, {len(history)} epochs: test acc "
          f"{summary['final_test_acc']:.4f} (best {summary['best_test_acc']:.4f}), "
          f"{summary['seconds_per_epoch']:.1f} s/epoch; results in {args.out}")


def main(argv: list[str] | None = None) -> None:
    """The recipe, phase by phase. The flags come first and alone, so --help and a bad flag answer before torch
    loads; --out is judged before anything slow runs, and cleaned only once the run is ready to write."""
    args = parse_args(argv)
    from kwta import distributed

    processes = setup_processes(args)
    check_out(args, processes)
    train_ds, test_ds, info = load_data(args, processes)
    loaders = make_loaders(args, processes, train_ds, test_ds)
    training = start_training(args, processes, info, len(loaders.train))
    if processes.is_main:
        prepare_out(args)
        announce(args, processes, train_ds, test_ds, training)

    # One epoch of training, then the test set, then its results and a checkpoint written atomically.
    for epoch in range(training.epochs_done, args.epochs):
        row = run_epoch(args, processes, training, loaders, epoch)
        training.epochs_done = epoch + 1
        if processes.is_main:
            training.history.append(row)
            save_epoch(args, processes, info, training)

    if processes.is_main and training.history:
        write_summary(args, processes, train_ds, test_ds, training.history)
    distributed.barrier()
    distributed.cleanup()


if __name__ == "__main__":
    main()
