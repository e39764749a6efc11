"""The paper's 1-D illustration: a k-WTA MLP and a ReLU MLP fitted to a handful of points of a 1-D function.

    python -m plots.fit1d --out results/fit1d.png [--points 10 --hidden 256 --ratio 0.2 --steps 2000]

Both networks are Linear(1, H) -> act -> Linear(H, H) -> act -> Linear(H, 1), trained full-batch with Adam
on the same points from the same initial weights. k-WTA rows are the H hidden units of one sample, so
as x moves the winner set changes wherever two hidden units swap rank around the k-th place; each
change swaps one unit's outgoing weights for another's, and the fit jumps. With a fixed winner set (or
ReLU pattern) the network is affine in x, so ReLU's fit is continuous and piecewise linear, k-WTA's is
piecewise linear with jumps, densely. The figure draws both fits on a dense grid (top) and zoomed in
(bottom), breaking a curve where it jumps; a jump is a step between neighbouring grid points larger
than --jump-tolerance of the fit's range (for a continuous fit such a step shrinks with the spacing).

Writes OUT (PNG), OUT with .pdf, and OUT with .npz (the grid, the target, the points, both fits, the
activation-pattern changes and jumps between neighbours), and prints a summary per network.
"""

from __future__ import annotations  # torch's types in the signatures, torch itself imported when needed

import argparse
from typing import TYPE_CHECKING

import numpy as np

from experiments.cli import HelpFormatter, positive_int, unit_interval

if TYPE_CHECKING:
    import torch
    from torch import nn

DOMAIN = (-1.0, 1.0)
COLORS = {"target": "#2ca02c", "points": "#d62728", "fit": "#1f77b4"}


def target_function(x: np.ndarray) -> np.ndarray:
    return np.sin(2.5 * np.pi * x) * np.exp(-x**2) + 0.3 * x


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", required=True, help="PNG to write (PDF and .npz go beside it)")
    parser.add_argument("--points", type=positive_int, default=10, help="training points")
    parser.add_argument("--hidden", type=positive_int, default=256, help="hidden units per layer")
    parser.add_argument("--ratio", type=unit_interval, default=0.2, help="k-WTA sparsity ratio")
    parser.add_argument("--steps", type=positive_int, default=2000, help="Adam steps")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--grid", type=positive_int, default=4000, help="points of the dense grid")
    parser.add_argument("--zoom", type=unit_interval, default=0.15,
                        help="width of the zoomed window, as a share of the domain")
    parser.add_argument("--jump-tolerance", type=unit_interval, default=0.01,
                        help="a step between grid neighbours above this share of the fit's range is a jump")
    parser.add_argument("--seed", type=int, default=0, help="seed of the points and the initial weights")
    args = parser.parse_args(argv)
    if args.grid < 2:
        parser.error(f"--grid needs at least 2 points, got {args.grid}")
    if args.lr <= 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if not args.out.endswith(".png"):
        parser.error(f"--out must name a .png file, got {args.out}")
    return args


def mlp(activation: str, hidden: int, ratio: float) -> nn.Sequential:
    from torch import nn

    from kwta.modules import KWTA

    make = (lambda: KWTA(ratio)) if activation == "kwta" else nn.ReLU
    return nn.Sequential(nn.Linear(1, hidden), make(), nn.Linear(hidden, hidden), make(), nn.Linear(hidden, 1))


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> float:
    """Full-batch Adam on the mean squared error; returns the final training MSE."""
    import torch
    from torch import nn

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), y).item()


def evaluate_with_patterns(model: nn.Sequential, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(model(x) flattened, activation pattern per point: which hidden units are non-zero, all layers)."""
    import torch
    from torch import nn

    from kwta.modules import KWTA

    patterns = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: patterns.append(out != 0))
             for layer in model if isinstance(layer, nn.ReLU | KWTA)]
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return y.squeeze(1).numpy(), torch.cat(patterns, dim=1).numpy()


def with_gaps(y: np.ndarray, jumps: np.ndarray) -> np.ndarray:
    """y with NaN after every jump, so a plotted line breaks there instead of drawing a vertical stroke."""
    return np.insert(y, np.flatnonzero(jumps) + 1, np.nan)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Only now the heavy imports: --help and a bad argument answer at once.
    import matplotlib

    matplotlib.use("Agg")  # figures are written to files; no display needed
    import matplotlib.pyplot as plt
    import torch

    from experiments.figures import save_figure

    torch.set_num_threads(1)  # matrices of a few hundred: threads cost more than they save

    # Setup: the points, the grid and two networks from the same initial weights (k-WTA's copied from ReLU's).
    rng = np.random.default_rng(args.seed)
    train_x = np.sort(rng.uniform(*DOMAIN, size=args.points))
    train_y = target_function(train_x)
    grid_x = np.linspace(*DOMAIN, args.grid)
    inputs = torch.tensor(train_x, dtype=torch.float32).unsqueeze(1)
    targets = torch.tensor(train_y, dtype=torch.float32).unsqueeze(1)
    grid = torch.tensor(grid_x, dtype=torch.float32).unsqueeze(1)
    torch.manual_seed(args.seed)
    relu_net = mlp("relu", args.hidden, args.ratio)
    kwta_net = mlp("kwta", args.hidden, args.ratio)
    kwta_net.load_state_dict(relu_net.state_dict())
    k = max(1, int(args.ratio * args.hidden))

    # The fits, then what each looks like on the dense grid.
    results = {}
    for name, model in (("kwta", kwta_net), ("relu", relu_net)):
        train_mse = fit(model, inputs, targets, args.steps, args.lr)
        y, patterns = evaluate_with_patterns(model, grid)
        steps_between = np.abs(np.diff(y))
        spread = float(np.ptp(y)) or 1.0
        results[name] = dict(
            y=y,
            train_mse=train_mse,
            pattern_changes=(patterns[1:] != patterns[:-1]).any(axis=1),
            jumps=steps_between > args.jump_tolerance * spread,
            largest_step=float(steps_between.max() / spread),
        )
        print(f"{name}: train MSE {train_mse:.2e}, {int(results[name]['pattern_changes'].sum())} activation-pattern "
              f"changes and {int(results[name]['jumps'].sum())} jumps > {args.jump_tolerance:g} of the range "
              f"between {args.grid} grid points, largest step {results[name]['largest_step']:.3f} of the range")

    # The figure: full domain on top, a zoomed window (centred on the densest jumps of k-WTA) below.
    width = args.zoom * (DOMAIN[1] - DOMAIN[0])
    jump_x = grid_x[:-1][results["kwta"]["jumps"]]
    centre = float(np.median(jump_x)) if len(jump_x) else 0.0
    window = (max(DOMAIN[0], centre - width / 2), min(DOMAIN[1], centre + width / 2))
    titles = {"kwta": f"k-WTA (k = {k} of {args.hidden}, ratio {args.ratio:g})", "relu": "ReLU"}
    figure, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharey="row")
    for column, name in enumerate(("kwta", "relu")):
        result = results[name]
        gap_x = with_gaps(grid_x, result["jumps"])
        gap_y = with_gaps(result["y"], result["jumps"])
        for row, axis in enumerate(axes[:, column]):
            axis.plot(grid_x, target_function(grid_x), color=COLORS["target"], lw=1.5, alpha=0.7,
                      label="target function")
            axis.plot(gap_x, gap_y, color=COLORS["fit"], lw=1.2, label=f"{titles[name].split(' (')[0]} fit")
            axis.scatter(train_x, train_y, color=COLORS["points"], s=30, zorder=3, label="training points")
            axis.set_xlabel("x (input, unitless)")
            axis.grid(alpha=0.3)
            if row == 0:
                axis.set_title(f"{titles[name]}: {int(result['jumps'].sum())} jumps")
                axis.axvspan(*window, color="0.85", zorder=0)
            else:
                axis.set_xlim(*window)
                inside = (grid_x >= window[0]) & (grid_x <= window[1])
                low, high = result["y"][inside].min(), result["y"][inside].max()
                if column == 0:
                    pad = 0.1 * (high - low + 1e-9)
                    axis.set_ylim(low - pad, high + pad)
                axis.set_title(f"zoom: x in [{window[0]:.2f}, {window[1]:.2f}] (shaded above)")
        axes[0, column].legend(loc="lower right", fontsize=9)
    for row in range(2):
        axes[row, 0].set_ylabel("y (output, unitless)")
    figure.suptitle(f"Fitting {args.points} points of a 1-D function: k-WTA is discontinuous, ReLU is continuous "
                    f"(MLP 1-{args.hidden}-{args.hidden}-1, {args.steps} Adam steps)", fontsize=12)
    figure.tight_layout()

    # Results: the figure and the data it was drawn from, side by side.
    arrays = dict(
        grid_x=grid_x, target_y=target_function(grid_x), train_x=train_x, train_y=train_y, window=np.array(window),
        hidden=args.hidden, ratio=args.ratio, k=k, jump_tolerance=args.jump_tolerance,
        **{f"{name}_{key}": np.asarray(value) for name, result in results.items() for key, value in result.items()},
    )
    print("wrote " + ", ".join(save_figure(figure, args.out, arrays=arrays)))


if __name__ == "__main__":
    main()
