"""Figures of the k-WTA benchmark from the CSVs `python -m bench` writes.

    python -m plots.bench [--results results/bench] [CSV ...]

For every ops-<device>.csv: milliseconds per shape and provider as grouped bars on a log scale (forward, backward,
forward+backward); for every sweep-<device>.csv: nanoseconds per element against row length on log axes; for every
model-<device>.csv: milliseconds per training step. A CSV that holds several clocks (wall clock at the default
threads, process time on one thread) gets a row of panels per clock. The title names the machine, from the
environment JSON beside the CSV. Each PNG is saved next to the CSV it was drawn from, same stem.
"""

import argparse
import csv
import glob
import json
import math
import os
import sys
from collections.abc import Sequence

from experiments.cli import HelpFormatter

# one colour per provider across every figure, so topk is the same red in the bars and the sweep
PROVIDER_COLORS = {
    "topk": "#d62728",
    "reference": "#9467bd",
    "cpu": "#1f77b4",
    "partition": "#8c564b",
    "kthvalue": "#ff7f0e",
    "relu": "#2ca02c",
    "triton": "#17becf",
    "copy": "#7f7f7f",
}


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported on first use (--help answers without it)."""
    import matplotlib

    matplotlib.use("Agg")  # figures are written to files; no display on a GPU box
    import matplotlib.pyplot as plt

    return plt


def read_rows(path: str) -> list[dict]:
    """The CSV's rows; a CSV from before the clock and threads columns gets them from its environment JSON."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if rows and "clock" not in rows[0]:
        environment_path = os.path.join(os.path.dirname(path), f"environment-{rows[0]['device']}.json")
        environment = {}
        if os.path.isfile(environment_path):
            with open(environment_path) as file:
                environment = json.load(file)
        for row in rows:
            row["clock"] = environment.get("clock", "wall")
            row["threads"] = str(environment.get("torch_threads", ""))
    return rows


def _number(text: str) -> float:
    return float(text) if text else math.nan


def _describe(row: dict) -> str:
    return f"{row['device']}, {row['dtype']}, ratio {row['ratio']}"


def _machine(csv_path: str, device: str) -> str:
    """The CPU (or GPU) the CSV was measured on, from its environment JSON; '' when there is none."""
    path = os.path.join(os.path.dirname(csv_path), f"environment-{device}.json")
    if not os.path.isfile(path):
        return ""
    with open(path) as file:
        environment = json.load(file)
    return environment.get("gpu") or environment.get("cpu") or ""


def _by_clock(rows: list[dict]) -> dict[str, list[dict]]:
    groups = {}
    for row in rows:
        groups.setdefault(_clock(row), []).append(row)
    return groups


def _clock(row: dict) -> str:
    """How the times were taken: wall clock or the process's CPU time, on how many threads, or CUDA events."""
    if row.get("clock") == "cuda":
        return "CUDA events (do_bench)"
    threads = f", {row['threads']} thread{'s' if row['threads'] != '1' else ''}" if row.get("threads") else ""
    kind = "process CPU time" if row.get("clock") == "process" else "wall clock"
    return kind + threads


def plot_ops(csv_path: str) -> str:
    """Grouped bars: ms per shape for every provider, one panel per pass and a row per clock; returns the PNG."""
    plt = _pyplot()
    rows = read_rows(csv_path)
    clocks = _by_clock(rows)
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    row_length = {r["shape"]: r["row_length"] for r in rows}
    panels = (("forward_ms", "forward"), ("backward_ms", "backward"), ("forward_backward_ms", "forward + backward"))
    figure, axes = plt.subplots(len(clocks), len(panels), figsize=(6 * len(panels), 5.2 * len(clocks)),
                                sharey=True, squeeze=False)
    width = 0.8 / len(providers)
    for axes_row, (clock, clock_rows) in zip(axes, clocks.items(), strict=True):
        cell = {(r["shape"], r["provider"]): r for r in clock_rows}
        for axis, (column, title) in zip(axes_row, panels, strict=True):
            for index, provider in enumerate(providers):
                values = [_number(cell[(s, provider)][column]) if (s, provider) in cell else math.nan for s in shapes]
                positions = [i + (index - (len(providers) - 1) / 2) * width for i in range(len(shapes))]
                axis.bar(positions, values, width, label=provider, color=PROVIDER_COLORS.get(provider))
            axis.set_yscale("log")
            axis.set_title(f"{title} ({clock})")
            axis.set_xticks(range(len(shapes)))
            axis.set_xticklabels([f"{s}\nN={int(row_length[s]) // 1024}K" for s in shapes], fontsize=8)
            axis.set_xlabel("input shape (B x C x H x W), row length N = C*H*W")
            axis.grid(axis="y", which="both", alpha=0.3)
        axes_row[0].set_ylabel("median time (ms, log scale)")
    figure.suptitle(f"k-WTA operator on {_machine(csv_path, rows[0]['device']) or rows[0]['device']}, median over "
                    f"interleaved runs ({_describe(rows[0])}; copy: forward only)")
    _legend_outside(figure, axes.flat)
    return _save(figure, csv_path)


def plot_sweep(csv_path: str) -> str:
    """ns per element against row length at a fixed total size, forward and forward+backward, a row per clock."""
    plt = _pyplot()
    rows = read_rows(csv_path)
    clocks = _by_clock(rows)
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    panels = (("forward_ns_per_element", "forward"), ("forward_backward_ns_per_element", "forward + backward"))
    figure, axes = plt.subplots(len(clocks), len(panels), figsize=(12, 5 * len(clocks)), sharey=True, squeeze=False)
    for axes_row, (clock, clock_rows) in zip(axes, clocks.items(), strict=True):
        for axis, (column, title) in zip(axes_row, panels, strict=True):
            for provider in providers:
                points = sorted((int(r["row_length"]), _number(r[column])) for r in clock_rows
                                if r["provider"] == provider)
                if not points or all(math.isnan(v) for _, v in points):
                    continue  # copy has no backward
                axis.plot(*zip(*points, strict=True), marker="o", label=provider, color=PROVIDER_COLORS.get(provider))
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_title(f"{title} ({clock})")
            axis.set_xlabel("row length N (elements, log scale)")
            axis.grid(which="both", alpha=0.3)
        axes_row[0].set_ylabel("median time per element (ns, log scale)")
    total = _elements(int(rows[0]["total_elements"]))
    machine = _machine(csv_path, rows[0]["device"]) or rows[0]["device"]
    figure.suptitle(f"k-WTA cost per element vs row length at {total} elements per tensor on {machine} "
                    f"({_describe(rows[0])})")
    _legend_outside(figure, axes.flat)
    return _save(figure, csv_path)


def plot_model(csv_path: str) -> str:
    """ms per training step of each activation, annotated with the ratio to ReLU, a panel per clock."""
    plt = _pyplot()
    rows = read_rows(csv_path)
    clocks = _by_clock(rows)
    figure, axes = plt.subplots(1, len(clocks), figsize=(6.5 * len(clocks), 4.5), squeeze=False)
    for axis, (clock, clock_rows) in zip(axes[0], clocks.items(), strict=True):
        labels = [r["activation"] for r in clock_rows]
        values = [_number(r["step_ms"]) for r in clock_rows]
        colors = [PROVIDER_COLORS.get(label.split()[0], PROVIDER_COLORS["cpu"]) for label in labels]
        bars = axis.bar(labels, values, color=colors)
        for bar, row in zip(bars, clock_rows, strict=True):
            axis.annotate(f"{_number(row['x_relu']):.2f}x relu", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                          ha="center", va="bottom", fontsize=9)
        axis.set_ylabel("median time per training step (ms)")
        axis.set_xlabel("activation")
        first = clock_rows[0]
        machine = _machine(csv_path, first["device"]) or first["device"]
        axis.set_title(f"{first['arch']} training step, batch {first['batch']}\n({machine}, {clock})")
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return _save(figure, csv_path)


def _elements(count: int) -> str:
    for unit, size in (("M", 2**20), ("K", 2**10)):
        if count >= size:
            return f"{count / size:g}{unit}"
    return str(count)


def _legend_outside(figure, axes) -> None:
    """One legend for all panels, right of them: a provider drawn in only one panel (copy) still gets an entry.

    Call it after suptitle, so that tight_layout leaves room for the title.
    """
    handles = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    figure.legend(handles.values(), handles.keys(), title="provider", loc="center right", fontsize=9)
    figure.tight_layout(rect=(0, 0, 0.92, 1))


def _save(figure, csv_path: str) -> str:
    plt = _pyplot()
    png_path = os.path.splitext(csv_path)[0] + ".png"
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
    return png_path


PLOTTERS = {"ops": plot_ops, "sweep": plot_sweep, "model": plot_model}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("csvs", nargs="*", metavar="CSV",
                        help="ops-*.csv, sweep-*.csv or model-*.csv (default: all in --results)")
    parser.add_argument("--results", default="results/bench", help="directory searched when no CSV is given")
    args = parser.parse_args(argv)
    paths = args.csvs or sorted(p for kind in PLOTTERS for p in glob.glob(os.path.join(args.results, f"{kind}-*.csv")))
    if not paths:
        parser.error(f"no ops-*.csv, sweep-*.csv or model-*.csv in {args.results}; run python -m bench first")
    for path in paths:
        kind = os.path.basename(path).split("-", 1)[0]
        if kind not in PLOTTERS:
            parser.error(f"{path}: the name must start with one of {', '.join(k + '-' for k in PLOTTERS)}")
        print(f"{path} -> {PLOTTERS[kind](path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
