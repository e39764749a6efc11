"""Microbenchmarks of the k-WTA operator as users call it: `python -m kernels.bench --help`.

What is timed. For every shape and provider: one forward with autograd on (as in training), then one backward
(torch.autograd.grad of y against a fixed random grad_y, so nothing accumulates into x.grad), each timed on its own;
forward+backward is their per-iteration sum. Providers run round-robin, one iteration each per round with the order
rotated every round, so drift (clock boost, other processes on a shared machine) hits all of them alike, and every
figure is a median over rounds. On CUDA the times are CUDA events and the L2 cache is flushed (a 256 MB write) before
each iteration, as triton.testing.do_bench does, so tensors smaller than L2 are not served from it. On CPU the times
are time.perf_counter and nothing is flushed: in a network the activation was just written by the layer before, so
it sits in a large L3 there too (read the CPU GB/s figures, copy's included, with that in mind). On a CPU whose
cores other jobs share, a multithreaded op waits at every parallel region for a descheduled thread (a scheduler
slice, ~4-16 ms), which swamps short ops: there, `--threads 1 --clock process` times each op by the process's CPU
time on one thread, which the other jobs do not inflate.

Providers (rows are whole samples, mode="vol", k = max(1, int(ratio * N)) for N = C*H*W):
  topk       the original formula exactly as printed in the paper code's README (kwta_topk), autograd through it
  reference  kwta(..., backend="reference"): sort-based threshold (kernels/reference.py), the test oracle
  cpu        kwta(..., backend="cpu"): numba passes and numpy introselect on integer keys, bit-packed mask; CPU only
  kthvalue   torch.kthvalue threshold and a torch.where mask (kwta_kthvalue): the obvious plain-PyTorch rewrite
  relu       torch.relu: the baseline every "x relu" ratio is taken against
  triton     kwta(..., backend="triton"): the fused radix-select kernel of kernels/triton_kwta.py; CUDA only
  copy       x.clone(), forward only: the device's copy bandwidth, the floor of any elementwise forward

Bytes. Forward GB/s counts 2 * itemsize bytes per element for every provider (8 for float32): one read of x and
one write of y, the least any k-WTA forward can move, as the Triton tutorials count the ideal traffic rather than
what an implementation actually moves. A provider's GB/s is therefore its speed expressed against that floor, and
triton's GB/s over copy's is the fraction of copy bandwidth it reaches. What each moves per float32 element (about):
  copy, relu  forward 8 (read x, write y); relu's backward 12 (read grad_y and its saved y, write grad_x).
  cpu         forward ~16 plus the selection: read x, write 4-byte keys, introselect over the keys (a few passes),
              read x again (mostly from cache), write y and a 1/8-byte mask bit; backward 8.125 (grad_y, mask, grad_x).
  triton      forward 8.125 on rows of up to one tile (read x, write y and the mask bit); longer rows are split
              and re-read x once per radix pass, up to 4 * 4 + 4.125 = 20.125 (kernels/triton_kwta.py, mostly L2
              hits on a GPU); backward 8.125.
  topk        forward ~34 plus topk itself: topk reads x and writes k values and k int64 indices, repeat writes a
              full-size float threshold (4), x >= topval reads 8 and writes 1, .to(x) reads 1 and writes 4, comp * x
              reads 8 and writes 4; backward 12 (grad_y and the saved float comp, write grad_x).
  kthvalue    forward ~22 plus the selection (kthvalue copies each row to select in it), compare reads 4 writes 1,
              where reads 5 writes 4; backward 9 (grad_y and the saved bool mask, write grad_x).
  reference   like kthvalue but a full sort (writes 4-byte values and 8-byte indices per element); backward 9.

Saved bytes. `saved B/el` is the sum of the unique storages (nbytes) that autograd packs for backward during one
forward, caught with torch.autograd.graph.saved_tensors_hooks, over x.numel(); the input x counts too when a provider
saves it. The topk formula packs a float mask (4) and topk's int64 indices (8k/N, 0.8 at ratio 0.1): 4.8. `kept B/el`
counts only what is still alive once the forward has returned: topk's indices belong to a graph branch that nothing
downstream references (the comparison cuts it), so they are freed at the end of the forward and topk keeps 4.0.

Layering. kernels/ is the bottom layer of DESIGN.md and knows nothing of kwta/, but this benchmark measures the
operator as users call it, through kwta.functional (and kwta.models for --model); that upward import is accepted
for this one script, and nothing in kernels/ imports it.

Targets of issue 2 are checked in a summary printed at the end (and written to targets-<device>.csv); they are
printed facts about this run, never assertions. CSVs (written atomically) and a JSON of the environment go to
--out, named by device: ops-cpu.csv, sweep-cpu.csv, model-cpu.csv, targets-cpu.csv, environment-cpu.json.
"""

import argparse
import csv
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from kwta.functional import kwta

SHAPES = ((32, 64, 32, 32), (32, 128, 16, 16), (32, 256, 8, 8), (32, 512, 4, 4), (8, 64, 112, 112))
QUICK_SHAPES = ((4, 16, 8, 8), (2, 8, 32, 32))
SWEEP_ROW_LENGTHS = tuple(1024 * 4**i for i in range(6))  # 1K .. 1M
QUICK_SWEEP_ROW_LENGTHS = (1024, 4096, 16384)
PROVIDERS = ("topk", "reference", "cpu", "kthvalue", "relu", "triton", "copy")
FORWARD_ONLY = frozenset({"copy"})
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
L2_FLUSH_BYTES = 256 * 2**20
TARGET_ROW_LENGTH = 16 * 1024  # the copy-bandwidth target counts rows of 16K elements or more


def kwta_topk(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """The original k-WTA forward, verbatim from the paper code's README (self.sr -> ratio); 4-D input only."""
    size = x.shape[1]*x.shape[2]*x.shape[3]
    k = int(ratio*size)
    tmpx = x.view(x.shape[0], -1)
    topval = tmpx.topk(k, dim=1)[0][:,-1]
    topval = topval.repeat(tmpx.shape[1], 1).permute(1,0).view_as(x)
    comp = (x>=topval).to(x)
    return comp*x


def kwta_kthvalue(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """k-WTA with a torch.kthvalue threshold and a torch.where mask (ties kept; NaN handling not to spec)."""
    rows = x.reshape(x.shape[0], -1)
    n = rows.shape[1]
    k = max(1, int(ratio * n))
    threshold = rows.kthvalue(n - k + 1, dim=1, keepdim=True).values  # the k-th largest is the (n-k+1)-th smallest
    return torch.where(rows >= threshold, rows, 0.0).view_as(x)


class TopkKWTA(nn.Module):
    """The paper code's k-WTA module: its forward is the README's topk formula (kwta_topk)."""

    def __init__(self, sr: float):
        super().__init__()
        self.sr = sr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kwta_topk(x, self.sr)

    def extra_repr(self) -> str:
        return f"sr={self.sr}"


def replace_relu_with_topk(model: nn.Module, ratio: float) -> int:
    """Swap every nn.ReLU module of `model` in place for a TopkKWTA; return how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, TopkKWTA(ratio))
                replaced += 1
    return replaced


def provider_function(name: str, ratio: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward a provider runs on x."""
    functions = {
        "topk": lambda x: kwta_topk(x, ratio),
        "reference": lambda x: kwta(x, ratio, backend="reference"),
        "cpu": lambda x: kwta(x, ratio, backend="cpu"),
        "kthvalue": lambda x: kwta_kthvalue(x, ratio),
        "relu": torch.relu,
        "triton": lambda x: kwta(x, ratio, backend="triton"),
        "copy": lambda x: x.detach().clone(),
    }
    return functions[name]


def available_providers(device: str) -> tuple[str, ...]:
    """The providers that run on `device`: triton needs CUDA, cpu needs CPU tensors."""
    unavailable = {"cuda": {"cpu"}, "cpu": {"triton"}}[device]
    return tuple(p for p in PROVIDERS if p not in unavailable)


# ---------------------------------------------------------------- timing


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


class _Clock:
    """Times a forward and a backward on the benchmark's device.

    On CPU, clock="wall" reads time.perf_counter; clock="process" reads the CPU time of the whole process, which
    a scheduler that hands the cores to other jobs does not inflate. With one thread that is the op's own cost;
    with more it sums the threads (spin-waits included), so main() asks for --threads 1 with it.
    """

    def __init__(self, device: str, clock: str = "wall"):
        self.cuda = device == "cuda"
        self.now = CLOCKS[clock]
        if self.cuda:
            self.l2_flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
            self.events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]

    def iteration(self, fn, x, grad_y, forward_only: bool) -> tuple[float, float]:
        """(forward seconds, backward seconds) of one iteration; backward is NaN when forward_only."""
        if self.cuda:
            self.l2_flush.zero_()
            start, mid, end = self.events
            start.record()
            y = fn(x)
            mid.record()
            if not forward_only:
                torch.autograd.grad(y, x, grad_y)
            end.record()
            end.synchronize()
            forward = start.elapsed_time(mid) / 1e3
            return forward, math.nan if forward_only else mid.elapsed_time(end) / 1e3
        start = self.now()
        y = fn(x)
        mid = self.now()
        if not forward_only:
            torch.autograd.grad(y, x, grad_y)
        end = self.now()
        return mid - start, math.nan if forward_only else end - mid


@dataclass
class Timing:
    forward_s: float
    backward_s: float
    forward_backward_s: float


def time_providers(
    functions: dict[str, Callable], x: torch.Tensor, grad_y: torch.Tensor, timer: _Clock, repeats: int, warmup: int
) -> dict[str, Timing]:
    """Median times of every provider on x, interleaved round-robin with the order rotated each round."""
    names = list(functions)
    for name in names:
        for _ in range(warmup):
            timer.iteration(functions[name], x, grad_y, name in FORWARD_ONLY)
    samples = {name: [] for name in names}
    gc.collect()
    gc.disable()  # a collection landing inside one provider's iteration would be charged to it alone
    try:
        for round_index in range(repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(timer.iteration(functions[name], x, grad_y, name in FORWARD_ONLY))
    finally:
        gc.enable()
    return {
        name: Timing(
            statistics.median(f for f, _ in runs),
            statistics.median(b for _, b in runs),
            statistics.median(f + b for f, b in runs),
        )
        for name, runs in samples.items()
    }


# ---------------------------------------------------------------- saved bytes


class _Packed:
    """What the pack hook hands autograd: a box whose lifetime shows whether the saved tensor is kept."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


def _unique_storage_bytes(tensors) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def saved_bytes_per_element(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[float, float]:
    """(bytes packed for backward during one forward, bytes still held after it) per element of x.

    Counted over unique storages, x's own included when it is saved. Two separate forwards: the first holds
    every packed tensor so that no two live storages can share an address; the second holds only weak
    references, so what a discarded graph branch packed is gone when the forward returns.
    """
    packed: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        y = fn(x)
    saved = _unique_storage_bytes(packed)
    del y
    packed.clear()  # let go of them before the second forward

    boxes: list[weakref.ref] = []

    def pack(tensor):
        box = _Packed(tensor)
        boxes.append(weakref.ref(box))
        return box

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
        y = fn(x)
    kept = _unique_storage_bytes(box.tensor for box in (ref() for ref in boxes) if box is not None)
    del y
    return saved / x.numel(), kept / x.numel()


# ---------------------------------------------------------------- benchmarks


@dataclass
class OpResult:
    device: str
    dtype: str
    shape: str
    rows: int
    row_length: int
    ratio: float
    k: int
    provider: str
    forward_ms: float
    backward_ms: float
    forward_backward_ms: float
    forward_x_relu: float
    backward_x_relu: float
    forward_backward_x_relu: float
    forward_gbps: float
    saved_bytes_per_element: float
    kept_bytes_per_element: float
    repeats: int
    clock: str
    threads: int


@dataclass
class SweepResult:
    device: str
    dtype: str
    total_elements: int
    rows: int
    row_length: int
    ratio: float
    k: int
    provider: str
    forward_ns_per_element: float
    backward_ns_per_element: float
    forward_backward_ns_per_element: float
    forward_gbps: float
    repeats: int
    clock: str
    threads: int


@dataclass
class ModelResult:
    device: str
    arch: str
    activation: str
    ratio: float
    batch: int
    step_ms: float
    x_relu: float
    repeats: int
    clock: str
    threads: int


def _random_input(shape, dtype, device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator).to(device=device, dtype=dtype).requires_grad_()
    grad_y = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
    return x, grad_y


def _ratio_to(value: float, baseline: float | None) -> float:
    return value / baseline if baseline and not math.isnan(baseline) else math.nan


def bench_shapes(
    shapes: Sequence[tuple[int, ...]],
    providers: Sequence[str],
    *,
    ratio: float,
    dtype: torch.dtype,
    device: str,
    repeats: int,
    warmup: int,
    clock: str = "wall",
) -> list[OpResult]:
    """Forward, backward and forward+backward medians and saved bytes of every provider on every shape."""
    timer = _Clock(device, clock)
    functions = {name: provider_function(name, ratio) for name in providers}
    results = []
    for seed, shape in enumerate(shapes):
        x, grad_y = _random_input(shape, dtype, device, seed)
        row_length = math.prod(shape[1:])
        timings = time_providers(functions, x, grad_y, timer, repeats, warmup)
        relu = timings.get("relu")
        floor_bytes = 2 * x.element_size() * x.numel()
        for name, timing in timings.items():
            saved, kept = saved_bytes_per_element(functions[name], x)
            results.append(
                OpResult(
                    device=device,
                    dtype=str(dtype).removeprefix("torch."),
                    shape="x".join(map(str, shape)),
                    rows=shape[0],
                    row_length=row_length,
                    ratio=ratio,
                    k=max(1, int(ratio * row_length)),
                    provider=name,
                    forward_ms=timing.forward_s * 1e3,
                    backward_ms=timing.backward_s * 1e3,
                    forward_backward_ms=timing.forward_backward_s * 1e3,
                    forward_x_relu=_ratio_to(timing.forward_s, relu and relu.forward_s),
                    backward_x_relu=_ratio_to(timing.backward_s, relu and relu.backward_s),
                    forward_backward_x_relu=_ratio_to(timing.forward_backward_s, relu and relu.forward_backward_s),
                    forward_gbps=floor_bytes / timing.forward_s / 1e9,
                    saved_bytes_per_element=saved,
                    kept_bytes_per_element=kept,
                    repeats=repeats,
                    clock=clock,
                    threads=torch.get_num_threads(),
                )
            )
    return results


def bench_sweep(
    row_lengths: Sequence[int],
    providers: Sequence[str],
    *,
    total_elements: int,
    ratio: float,
    dtype: torch.dtype,
    device: str,
    repeats: int,
    warmup: int,
    clock: str = "wall",
) -> list[SweepResult]:
    """Time per element against row length at a fixed total size (rows = total // row length)."""
    timer = _Clock(device, clock)
    functions = {name: provider_function(name, ratio) for name in providers}
    results = []
    for seed, row_length in enumerate(row_lengths):
        rows = max(1, total_elements // row_length)
        # (rows, N, 1, 1): 4-D so the topk formula, which reads three trailing dims, runs unchanged
        x, grad_y = _random_input((rows, row_length, 1, 1), dtype, device, seed)
        timings = time_providers(functions, x, grad_y, timer, repeats, warmup)
        for name, timing in timings.items():
            results.append(
                SweepResult(
                    device=device,
                    dtype=str(dtype).removeprefix("torch."),
                    total_elements=x.numel(),
                    rows=rows,
                    row_length=row_length,
                    ratio=ratio,
                    k=max(1, int(ratio * row_length)),
                    provider=name,
                    forward_ns_per_element=timing.forward_s * 1e9 / x.numel(),
                    backward_ns_per_element=timing.backward_s * 1e9 / x.numel(),
                    forward_backward_ns_per_element=timing.forward_backward_s * 1e9 / x.numel(),
                    forward_gbps=2 * x.element_size() * x.numel() / timing.forward_s / 1e9,
                    repeats=repeats,
                    clock=clock,
                    threads=torch.get_num_threads(),
                )
            )
    return results


def build_benchmark_models(ratio: float) -> dict[str, nn.Module]:
    """resnet18-cifar with ReLU, with k-WTA (backend auto) and with the paper's topk module swapped in."""
    from kwta.models import build_model  # lazily: the model zoo sits above this layer
    from kwta.modules import KWTA

    models = {
        "relu": build_model("resnet18-cifar", activation="relu"),
        "kwta": build_model("resnet18-cifar", activation="kwta", ratio=ratio),
        "topk": build_model("resnet18-cifar", activation="relu"),
    }
    if not any(isinstance(m, KWTA) for m in models["kwta"].modules()):
        raise RuntimeError("build_model('resnet18-cifar', activation='kwta') holds no KWTA module")
    if replace_relu_with_topk(models["topk"], ratio) == 0:
        raise RuntimeError("build_model('resnet18-cifar') holds no nn.ReLU module to swap for the topk formula")
    return models


def bench_model(
    *, ratio: float, batch: int, device: str, repeats: int, warmup: int, clock: str = "wall"
) -> list[ModelResult]:
    """Median ms per training step (forward, backward, SGD step) of each model, interleaved round-robin."""
    models = build_benchmark_models(ratio)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((batch, 3, 32, 32), generator=generator).to(device)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
    steps = {}
    for name, model in models.items():
        model.to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model=model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()

        steps[name] = step

    now = CLOCKS[clock]

    def timed(step) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = now()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        return now() - start

    names = list(steps)
    for name in names:
        for _ in range(warmup):
            timed(steps[name])
    samples = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(timed(steps[name]))
    medians = {name: statistics.median(s) for name, s in samples.items()}
    return [
        ModelResult(
            device=device,
            arch="resnet18-cifar",
            activation=name if name == "relu" else f"{name} ratio {ratio}",
            ratio=math.nan if name == "relu" else ratio,
            batch=batch,
            step_ms=median * 1e3,
            x_relu=median / medians["relu"],
            repeats=repeats,
            clock=clock,
            threads=torch.get_num_threads(),
        )
        for name, median in medians.items()
    ]


# ---------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    value: float
    comparison: str  # ">=", "<=" or "" for a printed fact with no target
    threshold: float
    detail: str = ""
    status: str = field(init=False)

    def __post_init__(self):
        if not self.comparison:
            self.status = "info"
        elif math.isnan(self.value):
            self.status = "n/a"
        else:
            passed = self.value >= self.threshold if self.comparison == ">=" else self.value <= self.threshold
            self.status = "PASS" if passed else "FAIL"


def _by_shape(results: Sequence[OpResult], provider: str) -> dict[str, OpResult]:
    return {r.shape: r for r in results if r.provider == provider}


def check_targets(
    ops: Sequence[OpResult], sweep: Sequence[SweepResult], model: Sequence[ModelResult], device: str
) -> list[Target]:
    """The targets of issue 2 ("Benchmark and targets") evaluated on this run's numbers."""
    targets = []
    topk, cpu, relu = _by_shape(ops, "topk"), _by_shape(ops, "cpu"), _by_shape(ops, "relu")
    triton, copy = _by_shape(ops, "triton"), _by_shape(ops, "copy")

    def median_ratio(numerator, denominator, field) -> float:
        ratios = [getattr(numerator[s], field) / getattr(denominator[s], field) for s in numerator if s in denominator]
        return statistics.median(ratios) if ratios else math.nan

    if cpu:
        targets += [
            Target("cpu fwd+bwd speedup over topk (median over shapes)", median_ratio(topk, cpu, "forward_backward_ms"),
                   ">=", 10.0),
            Target("cpu fwd+bwd / relu fwd+bwd (median over shapes)", median_ratio(cpu, relu, "forward_backward_ms"),
                   "<=", 3.0),
            Target("cpu saved bytes per element (max over shapes)",
                   max(r.saved_bytes_per_element for r in cpu.values()), "<=", 0.25),
        ]
    if triton:
        eligible = [s for s, r in triton.items() if r.row_length >= TARGET_ROW_LENGTH and s in copy]
        fractions = [triton[s].forward_gbps / copy[s].forward_gbps for s in eligible]
        targets += [
            Target("triton saved bytes per element (max over shapes)",
                   max(r.saved_bytes_per_element for r in triton.values()), "<=", 0.25),
            Target(f"triton fwd GB/s / copy GB/s on rows >= {TARGET_ROW_LENGTH // 1024}K (min over shapes)",
                   min(fractions) if fractions else math.nan, ">=", 0.5,
                   ", ".join(f"{s}: {f:.2f}" for s, f in zip(eligible, fractions, strict=True))),
            Target("triton fwd speedup over topk fwd (median over shapes)", median_ratio(topk, triton, "forward_ms"),
                   ">=", 10.0),
            Target("triton fwd+bwd speedup over topk (median over shapes)",
                   median_ratio(topk, triton, "forward_backward_ms"), "", math.nan),
        ]
    for name, results in (("topk", topk), ("relu", relu), ("reference", _by_shape(ops, "reference"))):
        if results:
            saved = statistics.median(r.saved_bytes_per_element for r in results.values())
            kept = statistics.median(r.kept_bytes_per_element for r in results.values())
            targets.append(Target(f"{name} saved bytes per element (median)", saved, "", math.nan,
                                  f"kept after forward {kept:.3f}"))
    for provider in sorted({r.provider for r in sweep}):
        points = sorted((r for r in sweep if r.provider == provider), key=lambda r: r.row_length)
        if len(points) > 1:
            first, last = points[0], points[-1]
            growth = last.forward_backward_ns_per_element / first.forward_backward_ns_per_element
            if provider in FORWARD_ONLY:
                growth = last.forward_ns_per_element / first.forward_ns_per_element
            targets.append(Target(f"sweep {provider}: ns/element at N={last.row_length} / at N={first.row_length}",
                                  growth, "", math.nan))
    by_activation = {r.activation.split()[0]: r for r in model}
    if "kwta" in by_activation:
        targets.append(Target("model kwta step / relu step", by_activation["kwta"].x_relu,
                              "<=" if device == "cpu" else "", 1.25, "the 1.25x target is for CPU"))
    if "topk" in by_activation:
        targets.append(Target("model topk step / relu step", by_activation["topk"].x_relu, "", math.nan))
    return targets


# ---------------------------------------------------------------- output


def write_csv_atomic(path: str, rows: Sequence) -> None:
    """Write dataclass rows as CSV through a temporary file and os.replace, so readers never see half a file."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    columns = [f.name for f in fields(rows[0])]
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".csv")
    try:
        with os.fdopen(handle, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _csv_value(v) for k, v in asdict(row).items()})
        os.chmod(temporary, 0o644)  # mkstemp makes it owner-only; results are for everyone to read
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def write_json_atomic(path: str, data: dict) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    with os.fdopen(handle, "w") as file:
        json.dump(data, file, indent=2)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def _fmt(value: float, digits: int = 3) -> str:
    if math.isnan(value):
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def format_ops_table(results: Sequence[OpResult]) -> str:
    header = (f"{'shape':<16}{'provider':<11}{'fwd ms':>9}{'bwd ms':>9}{'f+b ms':>9}{'fwd/relu':>10}{'bwd/relu':>10}"
              f"{'f+b/relu':>10}{'fwd GB/s':>10}{'saved B/el':>12}{'kept B/el':>11}")
    lines = [header, "-" * len(header)]
    shape = None
    for r in results:
        label = f"{r.shape}" if r.shape != shape else ""
        if r.shape != shape and shape is not None:
            lines.append("")
        shape = r.shape
        lines.append(
            f"{label:<16}{r.provider:<11}{_fmt(r.forward_ms):>9}{_fmt(r.backward_ms):>9}"
            f"{_fmt(r.forward_backward_ms):>9}{_fmt(r.forward_x_relu):>10}{_fmt(r.backward_x_relu):>10}"
            f"{_fmt(r.forward_backward_x_relu):>10}{_fmt(r.forward_gbps):>10}"
            f"{r.saved_bytes_per_element:>12.4f}{r.kept_bytes_per_element:>11.4f}"
        )
    return "\n".join(lines)


def format_sweep_table(results: Sequence[SweepResult]) -> str:
    providers = list(dict.fromkeys(r.provider for r in results))
    lengths = sorted({r.row_length for r in results})
    cell = {(r.row_length, r.provider): r for r in results}
    header = f"{'N':>9}{'rows':>7}" + "".join(f"{p:>11}" for p in providers)
    lines = ["fwd+bwd ns per element (copy: fwd only)", header, "-" * len(header)]
    for n in lengths:
        row = [cell[(n, p)] for p in providers]
        values = [r.forward_ns_per_element if r.provider in FORWARD_ONLY else r.forward_backward_ns_per_element
                  for r in row]
        lines.append(f"{n:>9}{row[0].rows:>7}" + "".join(f"{_fmt(v):>11}" for v in values))
    return "\n".join(lines)


def format_model_table(results: Sequence[ModelResult]) -> str:
    header = f"{'model':<16}{'activation':<20}{'batch':>6}{'ms/step':>10}{'x relu':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(f"{r.arch:<16}{r.activation:<20}{r.batch:>6}{r.step_ms:>10.1f}{r.x_relu:>8.2f}")
    return "\n".join(lines)


def format_targets(targets: Sequence[Target]) -> str:
    lines = []
    for t in targets:
        goal = f"target {t.comparison} {t.threshold:g}" if t.comparison else ""
        detail = f"  ({t.detail})" if t.detail else ""
        lines.append(f"{t.status:<5} {t.name}: {_fmt(t.value)} {goal}{detail}".rstrip())
    return "\n".join(lines)


def environment(device: str) -> dict:
    """Versions and device: what a reader needs to compare two runs."""
    import numba
    import numpy

    info = {
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
        "cpu": _cpu_name(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------- command line


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
        prog="python -m kernels.bench",
        description="Benchmark the k-WTA operator against the paper's topk formula, kthvalue and ReLU: "
        "forward, backward, forward+backward medians over interleaved runs, GB/s and bytes saved for backward.",
    )
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=("cuda", "cpu"), default=default_device,
                        help=f"device to run on (default here: {default_device})")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--ratio", type=float, default=0.1, help="k-WTA sparsity ratio for the operator (default 0.1)")
    parser.add_argument("--repeats", type=int, help="timed rounds per shape (default 15 on CPU, 100 on CUDA)")
    parser.add_argument("--warmup", type=int, help="untimed iterations per provider and shape (default 2 / 10)")
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
    parser.add_argument("--model-batch", type=int, default=128, help="batch of the model benchmark (default 128)")
    parser.add_argument("--model-ratio", type=float, default=0.2, help="k-WTA ratio in the models (default 0.2)")
    parser.add_argument("--model-repeats", type=int, help="timed steps per model (default 5 on CPU, 30 on CUDA)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch and numba (default: their own default); "
                        "1 keeps timings meaningful on a machine whose cores other jobs share")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="CPU only: 'wall' (perf_counter, default) or 'process' (the process's CPU time, which "
                        "other jobs on shared cores do not inflate; needs --threads 1)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few repeats: a smoke run")
    parser.add_argument("--out", default="results/bench", help="directory for the CSVs (default results/bench)")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if not 0 < args.ratio <= 1 or not 0 < args.model_ratio <= 1:
        parser.error("--ratio and --model-ratio must be in (0, 1]")
    for name in ("repeats", "warmup", "sweep_total", "model_repeats", "threads"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.clock == "process" and (args.device != "cpu" or args.threads != 1):
        parser.error("--clock process needs --device cpu and --threads 1 (it sums CPU time over threads)")
    if args.model_batch < 1:
        parser.error(f"--model-batch must be positive, got {args.model_batch}")
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

    cuda = args.device == "cuda"
    if args.repeats is None:
        args.repeats = 3 if args.quick else (100 if cuda else 15)
    if args.warmup is None:
        args.warmup = 1 if args.quick else (10 if cuda else 2)
    if args.model_repeats is None:
        args.model_repeats = 2 if args.quick else (30 if cuda else 5)
    if args.shapes is None:
        args.shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.sweep_total is None:
        args.sweep_total = 16 * 1024 if args.quick else (16 if cuda else 4) * 2**20
    args.sweep_row_lengths = QUICK_SWEEP_ROW_LENGTHS if args.quick else SWEEP_ROW_LENGTHS
    if args.quick and args.model_batch == 128:
        args.model_batch = 4
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dtype = DTYPES[args.dtype]
    if args.threads is not None:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    info = environment(args.device) | {"clock": args.clock}
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    print(f"ratio={args.ratio} dtype={args.dtype} repeats={args.repeats} warmup={args.warmup} clock={args.clock} "
          f"providers={','.join(args.providers)}")
    write_json_atomic(os.path.join(args.out, f"environment-{args.device}.json"), info)

    ops, sweep, model = [], [], []
    if not args.skip_shapes:
        ops = bench_shapes(args.shapes, args.providers, ratio=args.ratio, dtype=dtype, device=args.device,
                           repeats=args.repeats, warmup=args.warmup, clock=args.clock)
        path = os.path.join(args.out, f"ops-{args.device}.csv")
        write_csv_atomic(path, ops)
        print(f"\nmedians over {args.repeats} interleaved rounds; GB/s counts {2 * dtype.itemsize} bytes per "
              f"element (read x, write y); saved/kept: bytes packed for backward per element\n")
        print(format_ops_table(ops))
        print(f"-> {path}", flush=True)  # progress shows in a log while the next part runs
    if args.sweep:
        sweep = bench_sweep(args.sweep_row_lengths, args.providers, total_elements=args.sweep_total,
                            ratio=args.ratio, dtype=dtype, device=args.device, repeats=args.repeats,
                            warmup=args.warmup, clock=args.clock)
        path = os.path.join(args.out, f"sweep-{args.device}.csv")
        write_csv_atomic(path, sweep)
        print(f"\nrow-length sweep at {args.sweep_total} elements, medians over {args.repeats} interleaved rounds")
        print(format_sweep_table(sweep))
        print(f"-> {path}", flush=True)  # progress shows in a log while the next part runs
    if args.model:
        model = bench_model(ratio=args.model_ratio, batch=args.model_batch, device=args.device,
                            repeats=args.model_repeats, warmup=1 if args.quick else 2, clock=args.clock)
        path = os.path.join(args.out, f"model-{args.device}.csv")
        write_csv_atomic(path, model)
        print(f"\ntraining step (forward, backward, SGD), batch {args.model_batch} of 32x32x3, medians over "
              f"{args.model_repeats} interleaved steps")
        print(format_model_table(model))
        print(f"-> {path}", flush=True)  # progress shows in a log while the next part runs

    targets = check_targets(ops, sweep, model, args.device)
    if targets:
        path = os.path.join(args.out, f"targets-{args.device}.csv")
        write_csv_atomic(path, targets)
        print("\ntargets (issue 2; facts about this run, not assertions)")
        print(format_targets(targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
