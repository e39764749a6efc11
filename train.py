"""Train one network on one dataset; by default the replication's recipe (SGD, momentum 0.9, batch 32).

    python train.py --arch resnet18-cifar --dataset fashion-mnist --activation kwta --ratio 0.2 --out runs/fm-kwta
    python train.py --arch resnet18 --dataset cifar10 --pretrained --out runs/ft   # lr 0.01, 10 epochs, 224 px
    python train.py --arch resnet18-cifar --init-from runs/k02/checkpoint.pt --ratio-schedule 0.2:0.1:0.005:2 \
        --lr 0.001 --epochs 70 --out runs/incremental     # the paper's incremental sparsity, from a trained model
    torchrun --nproc_per_node=4 train.py ...       # DistributedDataParallel, one process per GPU (gloo on CPU)

Writes into --out: checkpoint.pt (every epoch, atomically), metrics.jsonl (one line per epoch) and
summary.json; --resume continues from checkpoint.pt exactly where it stopped (with the saved lr schedule:
a different --lr, --milestones or --weight-decay is refused). Fine-tuning (--pretrained) normalises inputs
with ImageNet's statistics, as torchvision's weights expect; from scratch, with the dataset's.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from kwta.kernels.reference import MODES
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from experiments.cli import positive_float, positive_int, unit_interval
from kwta import distributed
from kwta.adversarial import pgd_linf, trades_linf, trades_loss
from kwta.checkpoint import atomic_write, load_checkpoint, remove_stale_temporaries, save_checkpoint
from kwta.data import DATASETS, DEFAULT_EPS, EpochIndexSampler, EpochSeeded, get_datasets
from kwta.models import ACTIVATIONS, ARCHS, MIN_INPUT_SIZE, build_model, imagenet_normalization
from kwta.modules import set_ratio

# Flags a resumed run must share with the run that wrote the checkpoint, or it would not be a continuation.
RESUME_MUST_MATCH = ("arch", "dataset", "activation", "ratio", "mode", "ratio_schedule", "input_size", "pretrained",
                     "batch_size", "seed", "train_subset", "adv_train", "adv_eps", "adv_alpha", "adv_steps",
                     "trades_beta", "stem_relu", "init_from", "precision")
# Optimiser settings a checkpoint carries in its optimizer and scheduler state: resuming keeps the saved ones.
RESUME_KEEPS = ("lr", "milestones", "weight_decay")
ADV_TRAINING = ("pgd", "trades")


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--arch", choices=ARCHS, default="resnet18")
    model.add_argument("--activation", choices=ACTIVATIONS, default="kwta")
    model.add_argument("--ratio", type=unit_interval, default=0.2, help="k-WTA sparsity ratio (default 0.2)")
    model.add_argument("--mode", choices=MODES, default="vol", help="k-WTA rows: whole sample or per channel")
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
    data.add_argument("--dataset", choices=tuple(DATASETS), default="cifar10")
    data.add_argument("--data-dir", help="where the dataset lives (default: data/; fashion-mnist: Debian's files)")
    data.add_argument("--download", action="store_true", help="download the dataset into --data-dir if missing")
    data.add_argument("--input-size", type=positive_int, help="resize to this (default: 224 with --pretrained or "
                      "alexnet, else the dataset's size)")
    data.add_argument("--train-subset", type=positive_int, metavar="N", help="train on N samples (fixed by --seed)")
    data.add_argument("--test-subset", type=positive_int, metavar="N", help="test on N samples (fixed by --seed)")
    data.add_argument("--workers", type=int, help="DataLoader workers per process (default: 4 on CUDA, 0 on CPU)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=positive_int, help="default 80 (10 with --pretrained)")
    optim.add_argument("--lr", type=float, help="default 0.1 (0.01 with --pretrained)")
    optim.add_argument("--milestones", type=positive_int, nargs="*", metavar="EPOCH",
                       help="epochs where lr drops 10x (default 50; none with --pretrained)")
    optim.add_argument("--batch-size", type=positive_int, default=32, help="per process (default 32)")
    optim.add_argument("--weight-decay", type=float, help="default 0")
    optim.add_argument("--adv-train", nargs="?", const="pgd", choices=ADV_TRAINING,
                       help="adversarial training: pgd (Madry et al., the default when no value is given) or trades "
                            "(Zhang et al.)")
    optim.add_argument("--adv-eps", type=float, help="attack budget (default: the dataset's, as attack.py)")
    optim.add_argument("--adv-alpha", type=float, help="attack step size (default 2.5 * eps / steps)")
    optim.add_argument("--adv-steps", type=positive_int, default=7)
    optim.add_argument("--trades-beta", type=positive_float, default=6.0,
                       help="TRADES's weight of the robust (KL) term (default 6, Zhang et al.'s CIFAR-10 value)")
    run = parser.add_argument_group("run")
    run.add_argument("--out", help="run directory (default runs/ARCH-DATASET-ACTIVATION)")
    run.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun: cuda:LOCAL_RANK)")
    run.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                     help="training arithmetic: bf16 autocast (auto on CUDA) or fp32 (auto on CPU); test accuracy "
                     "is always measured in fp32, the precision attack.py attacks in")
    args = parser.parse_args(argv)

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
        args.out = os.path.join("runs", f"{args.arch}-{args.dataset}-{args.activation}")
    return args


def fail(message: object) -> None:
    sys.exit(f"train.py: error: {message}")


def write_metrics(path: str, history: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(row) + "\n" for row in history))


def evaluate(model, loader, device, memory_format) -> tuple[float, float, int]:
    """(mean loss, accuracy, images) in fp32 over the test set: each process's shard, summed over all processes."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    with torch.no_grad():
        for images, labels in loader:
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            logits = model(images)
            labels = labels.to(device, non_blocking=True)
            loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
            correct += (logits.argmax(dim=1) == labels).sum()
            count += len(labels)
    loss_sum, correct, count = distributed.all_reduce_sum([loss_sum.item(), correct.item(), count], device)
    return loss_sum / max(count, 1), correct / max(count, 1), int(count)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    # Setup: processes, data, model, optimiser, and the checkpoint to resume from.
    try:
        device = distributed.init(args.device)
    except (ValueError, RuntimeError) as error:  # a device torch does not know, or CUDA absent
        fail(f"--device: {str(error).splitlines()[0]}")
    rank, world_size, is_main = distributed.rank(), distributed.world_size(), distributed.is_main()
    on_cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = on_cuda
    memory_format = torch.channels_last if on_cuda else torch.contiguous_format
    # k-WTA's winners depend on the arithmetic, so the figures a user compares come from one precision:
    # training may run under bf16 autocast for speed, but test accuracy is measured in fp32, as attack.py attacks.
    train_precision = "bf16" if args.precision == "bf16" or (args.precision == "auto" and on_cuda) else "fp32"
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=train_precision == "bf16")
    checkpoint_path = os.path.join(args.out, "checkpoint.pt")
    metrics_path, summary_path = os.path.join(args.out, "metrics.jsonl"), os.path.join(args.out, "summary.json")

    try:
        if args.download and not is_main:
            distributed.barrier()  # rank 0 downloads first, the others then read its files
        train_ds, test_ds, info = get_datasets(
            args.dataset, args.data_dir, download=args.download, input_size=args.input_size,
            train_subset=args.train_subset, test_subset=args.test_subset, seed=args.seed,
        )
        if args.download and is_main:
            distributed.barrier()
        torch.manual_seed(args.seed)  # the same initial weights on every process
        normalize = imagenet_normalization(info["in_channels"]) if args.pretrained else (info["mean"], info["std"])
        bare_model = build_model(
            args.arch, num_classes=info["num_classes"], in_channels=info["in_channels"], activation=args.activation,
            ratio=args.ratio, mode=args.mode, pretrained=args.pretrained, weights=args.weights, normalize=normalize,
            stem_relu=args.stem_relu,
        )
        resumed = load_checkpoint(checkpoint_path) if args.resume else None
        if args.init_from and resumed is None:
            initial = load_checkpoint(args.init_from)
            this_run = {"arch": args.arch, "dataset": args.dataset, "num_classes": info["num_classes"],
                        "in_channels": info["in_channels"], "input_size": args.input_size}
            for key, value in this_run.items():
                if initial["spec"][key] != value:
                    raise ValueError(f"--init-from: {args.init_from} has {key} {initial['spec'][key]!r}, "
                                     f"this run {value!r}")
            bare_model.load_state_dict(initial["model"])  # its normalisation buffers too: the one it learned with
    except (ValueError, OSError) as error:
        fail(error)
    if resumed is not None:
        if any(key not in resumed for key in ("args", "optimizer", "scheduler", "epoch", "history")):
            fail(f"--resume: {checkpoint_path} holds a model but no training state to continue")
        for key in RESUME_MUST_MATCH:
            then, now = resumed["args"].get(key), vars(args)[key]
            if key in resumed["args"] and then != now:  # a key absent from an older checkpoint is not checked
                fail(f"--resume: {checkpoint_path} was trained with --{key.replace('_', '-')} {then}, not {now}")
        # The optimiser and scheduler states restore these; a new value asked for would be silently ignored.
        for key in RESUME_KEEPS:
            then = resumed["args"].get(key, vars(args)[key])
            if key in args.given and vars(args)[key] != then:
                fail(f"--resume continues with the saved --{key.replace('_', '-')} {then}; start a new run (another "
                     f"--out) to train with {vars(args)[key]}")
            vars(args)[key] = then
        bare_model.load_state_dict(resumed["model"])
    bare_model.to(device, memory_format=memory_format)
    model = bare_model
    if world_size > 1:
        model = DistributedDataParallel(bare_model, device_ids=[device.index] if on_cuda else None)

    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=args.milestones, gamma=0.1)
    start_epoch, history = 0, []
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        start_epoch, history = resumed["epoch"], resumed["history"]
        if is_main:  # a kill between the checkpoint and the metrics write left metrics.jsonl one epoch behind
            write_metrics(metrics_path, history)

    workers = args.workers if args.workers is not None else (4 if on_cuda else 0)
    # The loaders draw their worker seeds from a generator of their own, never from the global RNG that
    # the per-epoch reseed below governs (dropout, PGD starts): loading must not shift that stream.
    loader_options = dict(num_workers=workers, pin_memory=on_cuda, persistent_workers=workers > 0,
                          generator=torch.Generator().manual_seed(args.seed))
    # DistributedSampler also in one process: its shuffle is a function of (seed, epoch), which resuming needs;
    # each sample's augmentation is a function of (seed, epoch, index), whichever worker loads it.
    train_sampler = DistributedSampler(train_ds, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed)
    # drop_last: a final batch of one sample breaks BatchNorm where the feature map is 1x1.
    train_loader = DataLoader(EpochSeeded(train_ds, args.seed), batch_size=args.batch_size,
                              sampler=EpochIndexSampler(train_sampler), drop_last=True, **loader_options)
    # Each process tests a disjoint shard (no padding, unlike DistributedSampler), so counts sum exactly.
    test_shard = Subset(test_ds, range(rank, len(test_ds), world_size))
    test_loader = DataLoader(test_shard, batch_size=4 * args.batch_size, **loader_options)
    if len(train_loader) == 0:
        fail(f"--batch-size {args.batch_size} exceeds the {len(train_sampler)} training samples per process")

    if is_main:
        os.makedirs(args.out, exist_ok=True)
        for path in remove_stale_temporaries(args.out):  # a write that a kill interrupted; nobody else writes here
            print(f"removed {path}, left by an interrupted write")
        kind = f"k-WTA {args.ratio} ({args.mode})" if args.activation == "kwta" else "ReLU"
        precision = "bf16 autocast (test accuracy in fp32)" if train_precision == "bf16" else "fp32"
        print(f"{args.arch} with {kind} on {args.dataset} ({len(train_ds)} train, {len(test_ds)} test, "
              f"{args.input_size}px), {args.epochs} epochs, {world_size} process(es) on {device.type}, "
              f"training in {precision}" + (f", resuming after epoch {start_epoch}" if resumed is not None else ""))

    # The loop: one epoch of training, then the test set, then results and a checkpoint written atomically.
    for epoch in range(start_epoch, args.epochs):
        epoch_start = time.perf_counter()
        ratio = ratio_at(args.ratio_schedule, epoch) if args.ratio_schedule else args.ratio
        if args.activation == "kwta":
            set_ratio(bare_model, ratio)
        torch.manual_seed(epoch_seed(args.seed, epoch, rank))
        train_sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        model.train()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not is_main, leave=False,
                   dynamic_ncols=True)
        for step, (images, labels) in enumerate(bar):
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            if args.adv_train:
                # Attack the bare module in eval mode: DDP would expect a parameter backward, and BatchNorm
                # statistics should not drift towards the attack's intermediate steps.
                bare_model.eval()
                with autocast():
                    if args.adv_train == "pgd":
                        adversarial = pgd_linf(bare_model, images, labels, args.adv_eps, args.adv_alpha, args.adv_steps)
                    else:
                        adversarial = trades_linf(bare_model, images, args.adv_eps, args.adv_alpha, args.adv_steps)
                model.train()
            with autocast():
                if args.adv_train == "trades":
                    # Clean pass on the bare module, adversarial pass through DDP: one DDP forward per backward,
                    # and autograd hands each parameter the sum of both paths' gradients once.
                    logits = model(adversarial)
                    clean_logits = bare_model(images)
                    loss = trades_loss(clean_logits, logits, labels, args.trades_beta)
                    logits = clean_logits  # train accuracy is the clean one, as for plain training
                else:
                    logits = model(adversarial if args.adv_train else images)
                    loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum()
            seen += len(labels)
            if step % 10 == 0 or step == len(train_loader) - 1:  # .item() waits for the GPU: not every step
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
        scheduler.step()
        train_loss, train_correct, train_seen = distributed.all_reduce_sum(
            [loss_sum.item(), correct.item(), seen], device)
        train_seconds = time.perf_counter() - epoch_start
        distributed.broadcast_buffers(bare_model)
        test_loss, test_acc, test_images = evaluate(bare_model, test_loader, device, memory_format)

        row = {
            "epoch": epoch + 1, "lr": lr, "ratio": ratio if args.activation == "kwta" else None,
            "train_loss": train_loss / train_seen, "train_acc": train_correct / train_seen,
            "test_loss": test_loss, "test_acc": test_acc, "test_images": test_images,
            "train_seconds": train_seconds, "seconds": time.perf_counter() - epoch_start,
        }
        if is_main:
            history.append(row)
            spec = {
                "arch": args.arch, "activation": args.activation, "ratio": row["ratio"], "mode": args.mode,
                "dataset": args.dataset, "num_classes": info["num_classes"], "in_channels": info["in_channels"],
                "input_size": args.input_size, "mean": bare_model.normalize.mean.flatten().tolist(),
                "std": bare_model.normalize.std.flatten().tolist(), "stem_relu": args.stem_relu,
                "train_precision": train_precision,
            }
            # Checkpoint first, then metrics from the checkpoint's history: whichever write a kill interrupts,
            # --resume rewrites metrics.jsonl from the checkpoint, so the two always agree.
            save_checkpoint(checkpoint_path, {
                "spec": spec, "model": bare_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history, "args": vars(args),
            })
            write_metrics(metrics_path, history)
            tqdm.write(f"epoch {epoch + 1}/{args.epochs}: train loss {row['train_loss']:.4f} acc "
                       f"{row['train_acc']:.4f}, test loss {test_loss:.4f} acc {test_acc:.4f}, lr {lr:g}, "
                       + (f"ratio {ratio:g}, " if args.activation == "kwta" else "") + f"{row['seconds']:.1f}s")

    # Results: a machine-readable summary and one human-readable line.
    if is_main and history:
        summary = {
            "arch": args.arch, "dataset": args.dataset, "activation": args.activation,
            "ratio": history[-1]["ratio"], "mode": args.mode, "pretrained": args.pretrained,
            "adv_train": args.adv_train, "epochs": len(history), "world_size": world_size, "device": device.type,
            "train_images": len(train_ds), "test_images": len(test_ds), "train_precision": train_precision,
            "final_test_acc": history[-1]["test_acc"], "best_test_acc": max(r["test_acc"] for r in history),
            "seconds_per_epoch": sum(r["seconds"] for r in history) / len(history),
            "train_seconds_per_epoch": sum(r["train_seconds"] for r in history) / len(history),
            "checkpoint": checkpoint_path, "metrics": metrics_path, "args": vars(args),
        }
        atomic_write(summary_path, json.dumps(summary, indent=2) + "\n")
        print(f"done: {args.arch} {args.activation} on {args.dataset}, {len(history)} epochs: test acc "
              f"{summary['final_test_acc']:.4f} (best {summary['best_test_acc']:.4f}), "
              f"{summary['seconds_per_epoch']:.1f} s/epoch; results in {args.out}")
    distributed.barrier()
    distributed.cleanup()


if __name__ == "__main__":
    main()
