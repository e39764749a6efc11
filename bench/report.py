"""What the benchmark reports: result rows, the targets, tables on the terminal, CSV and JSON files.

Targets (issues 2, 10 and 13) are facts about one run, printed and written to targets-<device>.csv,
never assertions. On CPU each is given per clock, the wall clock at the default thread count first:
that is the headline, and it holds for the CPU named beside it, not for CPUs in general.
"""

import csv
import io
import json
import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import torch

from kwta.checkpoint import atomic_write
from kwta.machine import cpu_name

TARGET_ROW_LENGTH = 16 * 1024  # the copy-bandwidth target counts rows of 16K elements or more


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
    clock: str
    threads: int
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
    clock: str
    threads: int
    forward_ns_per_element: float
    backward_ns_per_element: float
    forward_backward_ns_per_element: float
    forward_gbps: float
    repeats: int


@dataclass
class ModelResult:
    device: str
    arch: str
    activation: str
    ratio: float
    batch: int
    clock: str
    threads: int
    step_ms: float
    x_relu: float
    repeats: int


@dataclass
class Target:
    name: str
    clock: str  # "wall, 2 threads", "process, 1 thread" or "cuda"
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


def clock_label(device: str, clock: str, threads: int) -> str:
    if device == "cuda":
        return "cuda"
    return f"{clock}, {threads} thread{'s' if threads != 1 else ''}"


def _label(result) -> str:
    return clock_label(result.device, result.clock, result.threads)


def _group(results, key) -> dict:
    groups = {}
    for r in results:
        groups.setdefault(key(r), []).append(r)
    return groups


def _median_ratio(numerator: dict, denominator: dict, column: str) -> float:
    ratios = [getattr(numerator[s], column) / getattr(denominator[s], column) for s in numerator if s in denominator]
    return statistics.median(ratios) if ratios else math.nan


def check_targets(ops: Sequence[OpResult], sweep: Sequence[SweepResult], model: Sequence[ModelResult],
                  device: str) -> list[Target]:
    """The targets evaluated on this run's numbers, per clock, in the order the clocks were measured."""
    targets = []
    for clock, rows in _group(ops, _label).items():
        by_provider = {p: {r.shape: r for r in results} for p, results in _group(rows, lambda r: r.provider).items()}
        topk, cpu, relu, triton, copy = (by_provider.get(p, {}) for p in ("topk", "cpu", "relu", "triton", "copy"))
        if cpu:
            targets += [
                Target("cpu fwd+bwd speedup over topk (median over shapes)", clock,
                       _median_ratio(topk, cpu, "forward_backward_ms"), ">=", 10.0),
                Target("cpu fwd+bwd / relu fwd+bwd (median over shapes)", clock,
                       _median_ratio(cpu, relu, "forward_backward_ms"), "<=", 3.0),
            ]
        if triton:
            eligible = [s for s, r in triton.items() if r.row_length >= TARGET_ROW_LENGTH and s in copy]
            fractions = [triton[s].forward_gbps / copy[s].forward_gbps for s in eligible]
            targets += [
                Target(f"triton fwd GB/s / copy GB/s on rows >= {TARGET_ROW_LENGTH // 1024}K (min over shapes)",
                       clock, min(fractions) if fractions else math.nan, ">=", 0.5,
                       ", ".join(f"{s}: {f:.2f}" for s, f in zip(eligible, fractions, strict=True))),
                Target("triton fwd speedup over topk fwd (median over shapes)", clock,
                       _median_ratio(topk, triton, "forward_ms"), ">=", 10.0),
                Target("triton fwd+bwd speedup over topk (median over shapes)", clock,
                       _median_ratio(topk, triton, "forward_backward_ms"), "", math.nan),
            ]
    # what autograd keeps does not depend on the clock: one line each, in the first clock's column
    for provider, results in _group(ops, lambda r: r.provider).items():
        saved = [r.saved_bytes_per_element for r in results]
        if provider in ("cpu", "triton"):
            targets.append(Target(f"{provider} saved bytes per element (max over shapes)", "", max(saved), "<=", 0.25))
        elif provider in ("topk", "relu", "reference"):
            kept = statistics.median(r.kept_bytes_per_element for r in results)
            targets.append(Target(f"{provider} saved bytes per element (median)", "", statistics.median(saved), "",
                                  math.nan, f"kept after forward {kept:.3f}"))
    for (provider, clock), points in _group(sweep, lambda r: (r.provider, _label(r))).items():
        if len(points) > 1:
            first, last = min(points, key=lambda r: r.row_length), max(points, key=lambda r: r.row_length)
            column = "forward_ns_per_element" if math.isnan(first.backward_ns_per_element) else \
                "forward_backward_ns_per_element"
            targets.append(Target(f"sweep {provider}: ns/element at N={last.row_length} / at N={first.row_length}",
                                  clock, getattr(last, column) / getattr(first, column), "", math.nan))
    for r in model:
        name = r.activation.split()[0]
        if name == "kwta":
            targets.append(Target("model kwta step / relu step", _label(r), r.x_relu, "<=" if device == "cpu" else "",
                                  1.05, "the 1.05x target is for CPU" if device != "cpu" else ""))
        elif name == "topk":
            targets.append(Target("model topk step / relu step", _label(r), r.x_relu, "", math.nan))
    return targets


# ---------------------------------------------------------------- terminal


def _fmt(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def format_table(rows: Sequence, columns: dict[str, str]) -> str:
    """rows (dataclasses) as a fixed-width table of the given {attribute: header} columns."""
    cells = [[_fmt(getattr(row, name)) for name in columns] for row in rows]
    widths = [max(len(header), *(len(line[i]) for line in cells)) for i, header in enumerate(columns.values())]
    lines = ["  ".join(header.rjust(width) for header, width in zip(columns.values(), widths, strict=True))]
    lines.append("-" * len(lines[0]))
    lines += ["  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)


OPS_COLUMNS = {"shape": "shape", "provider": "provider", "forward_ms": "fwd ms", "backward_ms": "bwd ms",
               "forward_backward_ms": "f+b ms", "forward_x_relu": "fwd/relu", "backward_x_relu": "bwd/relu",
               "forward_backward_x_relu": "f+b/relu", "forward_gbps": "fwd GB/s",
               "saved_bytes_per_element": "saved B/el", "kept_bytes_per_element": "kept B/el"}
SWEEP_COLUMNS = {"row_length": "N", "rows": "rows", "provider": "provider",
                 "forward_ns_per_element": "fwd ns/el", "backward_ns_per_element": "bwd ns/el",
                 "forward_backward_ns_per_element": "f+b ns/el", "forward_gbps": "fwd GB/s"}
MODEL_COLUMNS = {"arch": "model", "activation": "activation", "batch": "batch", "step_ms": "ms/step",
                 "x_relu": "x relu"}


def format_targets(targets: Sequence[Target]) -> str:
    """One line per target and a column of values per clock, the headline clock first.

    A target that does not depend on the clock (bytes saved) shows in the first column.
    """
    clocks = list(dict.fromkeys(t.clock for t in targets if t.clock)) or [""]
    by_name: dict[str, dict[str, Target]] = {}
    for t in targets:
        by_name.setdefault(t.name, {})[t.clock or clocks[0]] = t
    width = max(len(name) for name in by_name)
    lines = [f"{'':<{width}}" + "".join(f"  {c:>18}" for c in clocks) + "  target"]
    lines.append("-" * len(lines[0]))
    for name, per_clock in by_name.items():
        cells = [f"{_fmt(t.value)} {t.status}" if (t := per_clock.get(c)) else "" for c in clocks]
        first = next(iter(per_clock.values()))
        goal = f"{first.comparison} {first.threshold:g}" if first.comparison else ""
        detail = f"  ({first.detail})" if first.detail else ""
        lines.append(f"{name:<{width}}" + "".join(f"  {c:>18}" for c in cells) + f"  {goal}{detail}".rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------- files


def write_csv(path: str, rows: Sequence) -> None:
    """Dataclass rows as CSV, written atomically (NaN as an empty cell)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in fields(rows[0])])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(row).items()})
    atomic_write(path, buffer.getvalue())


def write_json(path: str, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def environment(device: str) -> dict:
    """Versions, CPU and device: what a reader needs to compare two runs."""
    import numba
    import numpy

    info = {
        "device": device,
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "numba": numba.__version__,
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
