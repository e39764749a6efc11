"""python -m bench: the k-WTA operator against the paper's topk formula, np.partition, kthvalue and ReLU.

    python -m bench                                  # the per-shape table on this machine's device
    python -m bench --device cuda --sweep --model    # what make gpu-check runs, on a CUDA GPU
    python -m bench --quick                          # tiny shapes and few repeats: a smoke run

Forward, backward and forward+backward medians over interleaved runs, GB/s and bytes saved for backward
(bench/__init__.py says how each is counted). On CPU every figure is taken twice by default: wall clock at
the default thread count (the headline, what a user sees) and process CPU time on one thread (for cores
other jobs share). The CSVs go to --out; python -m plots.bench draws them.
"""

from __future__ import annotations  # torch's types in the signatures; torch itself loads after the arguments

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bench import PROVIDERS
from experiments.cli import HelpFormatter

if TYPE_CHECKING:
    import torch

    from bench.report import ModelResult, OpResult, SweepResult

SHAPES = ((32, 64, 32, 32), (32, 128, 16, 16), (32, 256, 8, 8), (32, 512, 4, 4), (8, 64, 112, 112))
QUICK_SHAPES = ((4, 16, 8, 8), (2, 8, 32, 32))
SWEEP_ROW_LENGTHS = tuple(1024 * 4**i for i in range(6))  # 1K .. 1M
QUICK_SWEEP_ROW_LENGTHS = (1024, 4096, 16384)
DTYPES = ("float32", "float16", "bfloat16")  # torch's names
CLOCKS = ("wall", "process")  # bench/timing.py's CPU clocks


def _random_input(shape, dtype, device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator).to(device=device, dtype=dtype).requires_grad_()
    grad_y = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
    return x, grad_y


def _ratio_to(value: float, baseline: float | None) -> float:
    return value / baseline if baseline and not math.isnan(baseline) else math.nan


def bench_shapes(shapes: Sequence[tuple[int, ...]], providers: Sequence[str], *, ratio: float, dtype: torch.dtype,
                 device: str, clock: str, threads: int, repeats: int, warmup: int) -> list[OpResult]:
    """Forward, backward and forward+backward medians and saved bytes of every provider on every shape."""
    from bench.providers import FORWARD_ONLY, provider_function
    from bench.report import OpResult
    from bench.timing import saved_bytes_per_element, time_providers

    functions = {name: provider_function(name, ratio) for name in providers}
    results = []
    for seed, shape in enumerate(shapes):
        x, grad_y = _random_input(shape, dtype, device, seed)
        timings = time_providers(functions, x, grad_y, FORWARD_ONLY, clock=clock, threads=threads, repeats=repeats,
                                 warmup=warmup)
        relu = timings.get("relu")
        row_length = math.prod(shape[1:])
        for name, timing in timings.items():
            saved, kept = saved_bytes_per_element(functions[name], x)
            results.append(OpResult(
                device=device, dtype=str(dtype).removeprefix("torch."), shape="x".join(map(str, shape)),
                rows=shape[0], row_length=row_length, ratio=ratio, k=max(1, int(ratio * row_length)), provider=name,
                clock=clock, threads=threads, forward_ms=timing.forward_s * 1e3, backward_ms=timing.backward_s * 1e3,
                forward_backward_ms=timing.forward_backward_s * 1e3,
                forward_x_relu=_ratio_to(timing.forward_s, relu and relu.forward_s),
                backward_x_relu=_ratio_to(timing.backward_s, relu and relu.backward_s),
                forward_backward_x_relu=_ratio_to(timing.forward_backward_s, relu and relu.forward_backward_s),
                forward_gbps=2 * x.element_size() * x.numel() / timing.forward_s / 1e9,
                saved_bytes_per_element=saved, kept_bytes_per_element=kept, repeats=repeats,
            ))
    return results


def bench_sweep(row_lengths: Sequence[int], providers: Sequence[str], *, total_elements: int, ratio: float,
                dtype: torch.dtype, device: str, clock: str, threads: int, repeats: int,
                warmup: int) -> list[SweepResult]:
    """Time per element against row length at a fixed total size (rows = total // row length)."""
    from bench.providers import FORWARD_ONLY, provider_function
    from bench.report import SweepResult
    from bench.timing import time_providers

    functions = {name: provider_function(name, ratio) for name in providers}
    results = []
    for seed, row_length in enumerate(row_lengths):
        rows = max(1, total_elements // row_length)
        # (rows, N, 1, 1): 4-D so the topk formula, which reads three trailing dims, runs unchanged
        x, grad_y = _random_input((rows, row_length, 1, 1), dtype, device, seed)
        timings = time_providers(functions, x, grad_y, FORWARD_ONLY, clock=clock, threads=threads, repeats=repeats,
                                 warmup=warmup)
        for name, timing in timings.items():
            results.append(SweepResult(
                device=device, dtype=str(dtype).removeprefix("torch."), total_elements=x.numel(), rows=rows,
                row_length=row_length, ratio=ratio, k=max(1, int(ratio * row_length)), provider=name, clock=clock,
                threads=threads, forward_ns_per_element=timing.forward_s * 1e9 / x.numel(),
                backward_ns_per_element=timing.backward_s * 1e9 / x.numel(),
                forward_backward_ns_per_element=timing.forward_backward_s * 1e9 / x.numel(),
                forward_gbps=2 * x.element_size() * x.numel() / timing.forward_s / 1e9, repeats=repeats,
            ))
    return results


def _activation(name: str, ratio: float) -> str:
    return name if name == "relu" else f"{name} ratio {ratio}"


def bench_model(*, ratio: float, batch: int, device: str, clock: str, threads: int, repeats: int,
                warmup: int) -> list[ModelResult]:
    """Median time per training step (forward, backward, SGD step) of resnet18-cifar with each activation."""
    import torch
    from torch import nn

    from bench import providers
    from bench.report import ModelResult
    from bench.timing import time_steps

    generator = torch.Generator().manual_seed(0)
    images = torch.rand((batch, 3, 32, 32), generator=generator).to(device)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
    steps = {}
    for name, model in providers.build_benchmark_models(ratio).items():
        model.to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model=model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()

        steps[name] = step
    medians = time_steps(steps, device=device, clock=clock, threads=threads, repeats=repeats, warmup=warmup)
    return [
        ModelResult(device=device, arch="resnet18-cifar", activation=_activation(name, ratio),
                    ratio=math.nan if name == "relu" else ratio, batch=batch, clock=clock, threads=threads,
                    step_ms=median * 1e3, x_relu=median / medians["relu"], repeats=repeats)
        for name, median in medians.items()
    ]


def _parse_shapes(text: str) -> tuple[tuple[int, ...], ...]:
    try:
        shapes = tuple(tuple(int(d) for d in item.split("x")) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shapes look like 32x64x32x32,8x64x112x112, got {text!r}") from None
    if any(len(s) != 4 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"every shape needs 4 positive dims (B x C x H x W), got {text!r}")
    return shapes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", formatter_class=HelpFormatter, description=__doc__,
    )
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="device to run on; auto: cuda when torch sees one, else cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="element type of the inputs")
    parser.add_argument("--ratio", type=float, default=0.1, help="k-WTA sparsity ratio for the operator")
    parser.add_argument("--repeats", type=int, help="CPU: timed rounds per shape (default 15); CUDA uses do_bench")
    parser.add_argument("--warmup", type=int, help="CPU: untimed iterations per provider and shape (default 2)")
    parser.add_argument("--providers", help=f"comma-separated subset of {','.join(PROVIDERS)} "
                        "(default: all that run on the device)")
    parser.add_argument("--shapes", type=_parse_shapes, help="comma-separated BxCxHxW shapes (default: ResNet18 "
                        "CIFAR activations at batch 32 and 8x64x112x112)")
    parser.add_argument("--skip-shapes", action="store_true", help="skip the per-shape table")
    parser.add_argument("--sweep", action="store_true", help="also sweep row length 1K..1M at a fixed total size")
    parser.add_argument("--sweep-total", type=int,
                        help="elements per sweep tensor (default 4M on CPU, 16M on CUDA; --quick: 16K)")
    parser.add_argument("--model", action="store_true",
                        help="also time training steps of resnet18-cifar with relu, kwta and the topk formula")
    parser.add_argument("--model-batch", type=int, default=128,
                        help="batch of the model benchmark; --quick: 4 unless given")
    parser.add_argument("--model-ratio", type=float, default=0.2, help="k-WTA ratio in the models")
    parser.add_argument("--model-repeats", type=int, help="CPU: timed steps per model (default 5)")
    parser.add_argument("--threads", type=int, help="CPU threads of the wall clock (default: torch's, one per core)")
    parser.add_argument("--clock", choices=("both", *CLOCKS), default="both",
                        help="CPU only: 'wall' (perf_counter at --threads), 'process' (the process's CPU time on "
                        "one thread, which other jobs on shared cores do not inflate) or 'both'")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few repeats: a smoke run")
    parser.add_argument("--out", default="results/bench", help="directory for the CSVs")
    args = parser.parse_args(argv)
    import torch  # only now: --help answers without it

    from bench.providers import available_providers

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if not 0 < args.ratio <= 1 or not 0 < args.model_ratio <= 1:
        parser.error("--ratio and --model-ratio must be in (0, 1]")
    for name in ("repeats", "warmup", "sweep_total", "model_repeats", "threads", "model_batch"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.clock == "process" and args.threads not in (None, 1):
        parser.error("--clock process runs on one thread (CPU time would add up every thread's spin-waits); "
                     f"drop --threads {args.threads} or use --clock wall")
    runnable = available_providers(args.device)
    if args.providers is None:
        args.providers = runnable
    else:
        args.providers = tuple(p.strip() for p in args.providers.split(",") if p.strip())
        for p in args.providers:
            if p not in PROVIDERS:
                parser.error(f"--providers: unknown provider {p!r}; choose from {', '.join(PROVIDERS)}")
            if p not in runnable:
                parser.error(f"--providers: {p!r} does not run on --device {args.device}")

    if args.device == "cuda":
        args.clocks = [("cuda", 1)]
    else:
        threads = args.threads or torch.get_num_threads()
        args.clocks = {"wall": [("wall", threads)], "process": [("process", 1)],
                       "both": [("wall", threads), ("process", 1)]}[args.clock]
    args.repeats = args.repeats or (3 if args.quick else 15)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.model_repeats = args.model_repeats or (2 if args.quick else 5)
    args.shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    args.sweep_total = args.sweep_total or (16 * 1024 if args.quick else (16 if args.device == "cuda" else 4) * 2**20)
    args.sweep_row_lengths = QUICK_SWEEP_ROW_LENGTHS if args.quick else SWEEP_ROW_LENGTHS
    if args.quick and args.model_batch == 128:
        args.model_batch = 4
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from bench import report
    from bench.report import clock_label

    dtype = getattr(torch, args.dtype)
    info = report.environment(args.device)
    clocks = ", ".join(clock_label(args.device, c, t) for c, t in args.clocks)
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    print(f"ratio={args.ratio} dtype={args.dtype} repeats={args.repeats} warmup={args.warmup} clocks: {clocks} "
          f"providers={','.join(args.providers)}")
    report.write_json(os.path.join(args.out, f"environment-{args.device}.json"), info | {"clocks": clocks})

    ops, sweep, model = [], [], []
    for clock, threads in args.clocks:
        label = clock_label(args.device, clock, threads)
        common = {"dtype": dtype, "device": args.device, "clock": clock, "threads": threads,
                  "repeats": args.repeats, "warmup": args.warmup}
        if not args.skip_shapes:
            results = bench_shapes(args.shapes, args.providers, ratio=args.ratio, **common)
            ops += results
            how = "do_bench medians" if args.device == "cuda" else f"medians over {args.repeats} interleaved rounds"
            print(f"\n{label}: {how}; GB/s counts {2 * dtype.itemsize} bytes per element (read x, write y); "
                  "saved/kept: bytes packed for backward per element")
            print(report.format_table(results, report.OPS_COLUMNS), flush=True)
        if args.sweep:
            results = bench_sweep(args.sweep_row_lengths, args.providers, total_elements=args.sweep_total,
                                  ratio=args.ratio, **common)
            sweep += results
            print(f"\n{label}: row-length sweep at {args.sweep_total} elements")
            print(report.format_table(results, report.SWEEP_COLUMNS), flush=True)
        if args.model:
            results = bench_model(ratio=args.model_ratio, batch=args.model_batch, device=args.device, clock=clock,
                                  threads=threads, repeats=args.model_repeats, warmup=1 if args.quick else 2)
            model += results
            print(f"\n{label}: training step (forward, backward, SGD) at batch {args.model_batch} of 32x32x3")
            print(report.format_table(results, report.MODEL_COLUMNS), flush=True)

    for kind, rows in (("ops", ops), ("sweep", sweep), ("model", model)):
        if rows:
            report.write_csv(os.path.join(args.out, f"{kind}-{args.device}.csv"), rows)
    targets = report.check_targets(ops, sweep, model, args.device)
    if targets:
        report.write_csv(os.path.join(args.out, f"targets-{args.device}.csv"), targets)
        where = info["gpu"] if args.device == "cuda" else f"{info['cpu']}, {info['cpus']} cores"
        print(f"\ntargets on {where} (facts about this run and this machine, not assertions)")
        print(report.format_targets(targets))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
