"""How the benchmark times: torch.utils.benchmark on CPU, triton.testing.do_bench on CUDA.

CPU. Every forward runs with autograd on (as in training); the backward is timed on its own, as
torch.autograd.grad of that forward's y against a fixed random grad_y with retain_graph, so nothing
accumulates into x.grad. Forward+backward is the sum of the two medians. Each provider's timers run
one iteration per round, round-robin with the order rotated every round, so drift (clock boost,
other jobs on a shared machine) hits all providers alike; torch.utils.benchmark.Measurement.merge
pools the rounds and gives the median. Two clocks:
  wall     time.perf_counter at the given thread count: what a user sees, the headline figure. On
           cores other jobs share, a multithreaded op waits for a descheduled thread at every
           parallel region (a scheduler slice, ~4-16 ms), which swamps short ops.
  process  time.process_time on one thread: the process's CPU time, which other jobs do not inflate
           (with more threads it would add up their spin-waits), so it is the figure for shared cores.
Nothing is flushed on CPU: in a network the activation was just written by the layer before, so it
sits in a large L3 there too (read the CPU GB/s figures, copy's included, with that in mind).

CUDA. triton.testing.do_bench: CUDA events, the L2 cache flushed before every call, its own
warm-up and repetition budgets (25 and 100 ms), the median.
"""

import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils import benchmark

CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


@dataclass
class Timing:
    forward_s: float
    backward_s: float  # NaN for a forward-only provider

    @property
    def forward_backward_s(self) -> float:
        return self.forward_s + self.backward_s


def _interleaved_medians(timers: dict[str, list[benchmark.Timer]], repeats: int, warmup: int) -> dict[str, list]:
    """Median seconds of every timer, one call per timer per round, providers rotated each round."""
    names = list(timers)
    for name in names:
        for timer in timers[name]:
            if warmup:
                timer.timeit(warmup)
    rounds = {name: [[] for _ in timers[name]] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            for timer, measurements in zip(timers[name], rounds[name], strict=True):
                measurements.append(timer.timeit(1))
    return {name: [benchmark.Measurement.merge(m)[0].median for m in rounds[name]] for name in names}


def _forward_backward_timers(fn, x, grad_y, forward_only: bool, clock: str, threads: int) -> list[benchmark.Timer]:
    common = {"timer": CLOCKS[clock], "num_threads": threads}
    timers = [benchmark.Timer("fn(x)", globals={"fn": fn, "x": x}, **common)]
    if not forward_only:
        y = fn(x)
        timers.append(benchmark.Timer("torch.autograd.grad(y, x, grad_y, retain_graph=True)",
                                      globals={"torch": torch, "y": y, "x": x, "grad_y": grad_y}, **common))
    return timers


def time_providers(functions: dict[str, Callable], x: torch.Tensor, grad_y: torch.Tensor, forward_only: set[str], *,
                   clock: str, threads: int, repeats: int, warmup: int) -> dict[str, Timing]:
    """Forward and backward medians of every provider on x (CPU: `clock` at `threads`; CUDA: do_bench)."""
    if x.is_cuda:
        return {name: _cuda_timing(fn, x, grad_y, name in forward_only) for name, fn in functions.items()}
    timers = {name: _forward_backward_timers(fn, x, grad_y, name in forward_only, clock, threads)
              for name, fn in functions.items()}
    medians = _interleaved_medians(timers, repeats, warmup)
    return {name: Timing(m[0], m[1] if len(m) > 1 else math.nan) for name, m in medians.items()}


def _cuda_timing(fn, x, grad_y, forward_only: bool) -> Timing:
    from triton.testing import do_bench

    forward = do_bench(lambda: fn(x), return_mode="median") / 1e3
    if forward_only:
        return Timing(forward, math.nan)
    y = fn(x)
    backward = do_bench(lambda: torch.autograd.grad(y, x, grad_y, retain_graph=True), return_mode="median") / 1e3
    return Timing(forward, backward)


def time_steps(steps: dict[str, Callable[[], None]], *, device: str, clock: str, threads: int, repeats: int,
               warmup: int) -> dict[str, float]:
    """Median seconds per call of every training step (CPU: interleaved rounds; CUDA: do_bench)."""
    if device == "cuda":
        from triton.testing import do_bench

        return {name: do_bench(step, return_mode="median") / 1e3 for name, step in steps.items()}
    timers = {name: [benchmark.Timer("step()", globals={"step": step}, timer=CLOCKS[clock], num_threads=threads)]
              for name, step in steps.items()}
    return {name: m[0] for name, m in _interleaved_medians(timers, repeats, warmup).items()}


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
