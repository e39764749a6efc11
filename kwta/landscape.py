"""Input-space loss landscapes: the cross-entropy of a model on a 2-D slice around one input.

The slice is the paper's: for an input x with label y,

    loss[i, j] = CE(model(clip(x + a_i * gradient_direction + b_j * random_direction)), y)

where gradient_direction = sign(grad_x CE(model(x), y)) (the direction FGSM / PGD steps along),
random_direction is a seeded Rademacher (+-1 per element) tensor, a = b = `coords`, a grid of `steps`
points over [-radius, radius] whose middle point is exactly 0, and clip is clamping to [0, 1] (the
valid image range) unless clamp=False. Both directions have L-inf norm 1, so coordinates are L-inf
distances in input units; the corners of the grid are at L-inf distance `radius` from x.

`roughness(loss)` turns "this landscape is rougher" into a number (see its docstring).
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Landscape:
    """One loss slice. loss[i, j] is at coords[i] along gradient_direction and coords[j] along random_direction."""

    coords: np.ndarray  # (steps,) float64, L-inf offsets in input units; coords[steps // 2] == 0
    loss: np.ndarray  # (steps, steps) float64 cross-entropy
    gradient_direction: np.ndarray  # sign of the input gradient, shape of one input (no batch dimension)
    random_direction: np.ndarray  # seeded Rademacher +-1, same shape
    clean_loss: float  # the loss at x itself (equal to loss[steps // 2, steps // 2])
    label: int
    zero_gradient_fraction: float  # share of input elements whose gradient is exactly 0 (sign 0 there)
    radius: float
    seed: int
    clamp: bool

    @property
    def roughness(self) -> float:
        return roughness(self.loss)


def roughness(loss: np.ndarray | torch.Tensor) -> float:
    """Mean absolute second difference of a loss grid, divided by the grid's range (max - min).

    With L an (n, m) grid (n, m >= 3), the second differences along the two axes are

        d_a[i, j] = L[i-1, j] - 2 L[i, j] + L[i+1, j]      (1 <= i <= n-2)
        d_b[i, j] = L[i, j-1] - 2 L[i, j] + L[i, j+1]      (1 <= j <= m-2)

    and roughness = mean(|d_a| and |d_b| pooled) / (max L - min L); 0 when L is constant, NaN when L has
    a non-finite value. It does not depend on the loss's scale or offset. Reference points on an n x n grid:
    a plane scores 0; any quadratic a u^2 + b v^2 + c u v + linear terms on a grid symmetric about its
    centre scores at most 4 / (n - 1)^2 (0.0069 for n = 25; a centred bowl scores exactly that), since its
    second differences are 2 a h^2 and 2 b h^2 (h the spacing) while its range is at least (|a| + |b|) R^2;
    i.i.d. uniform noise scores about 0.6. A smooth surface's score falls as the grid gets finer (as h^2);
    a surface with jumps keeps the size of its jumps.
    """
    grid = np.asarray(loss.detach().cpu() if isinstance(loss, torch.Tensor) else loss, dtype=np.float64)
    if grid.ndim != 2 or min(grid.shape) < 3:
        raise ValueError(f"loss must be a 2-D grid of at least 3 x 3 points, got shape {grid.shape}")
    if not np.isfinite(grid).all():
        return float("nan")
    spread = grid.max() - grid.min()
    if spread == 0:
        return 0.0
    along_a = np.abs(grid[:-2, :] - 2 * grid[1:-1, :] + grid[2:, :])
    along_b = np.abs(grid[:, :-2] - 2 * grid[:, 1:-1] + grid[:, 2:])
    return float(np.concatenate([along_a.ravel(), along_b.ravel()]).mean() / spread)


def rademacher_direction(shape: torch.Size | tuple[int, ...], seed: int) -> torch.Tensor:
    """A float32 tensor of independent +-1 signs, the same for the same (shape, seed) on every machine."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, tuple(shape), generator=generator).float().mul_(2).sub_(1)


def grid_coords(radius: float, steps: int) -> np.ndarray:
    """`steps` evenly spaced offsets over [-radius, radius]; the middle one is exactly 0 (steps is odd)."""
    half = steps // 2
    return radius * np.arange(-half, half + 1, dtype=np.float64) / half


def loss_landscape(
    model: nn.Module,
    x: torch.Tensor,
    y: int | torch.Tensor,
    *,
    radius: float,
    steps: int = 25,
    seed: int = 0,
    clamp: bool = True,
    batch_size: int = 125,
) -> Landscape:
    """The cross-entropy of `model` on the (gradient sign, Rademacher) slice of input space around `x`.

    x: one input with a batch dimension of 1, e.g. (1, C, H, W), on the model's device; images in [0, 1].
    y: its class index. radius: half-width of the grid in L-inf input units (e.g. the dataset's eps).
    steps: points per axis, odd (so the middle point is x itself) and >= 3. clamp: clip every point of
    the grid to [0, 1]. batch_size: grid points per forward pass (changes speed and memory only).

    The model is evaluated in eval mode (BatchNorm uses its running statistics, so a point's loss does
    not depend on which other points share its batch) and put back in the mode it was in.
    """
    if x.dim() < 2 or x.shape[0] != 1:
        raise ValueError(f"x must be one input with a batch dimension of 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius!r}")
    if not isinstance(steps, int) or steps < 3 or steps % 2 == 0:
        raise ValueError(f"steps must be an odd integer >= 3 (so the grid's centre is x), got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    label = int(y)
    target = torch.tensor([label], device=x.device)

    was_training = model.training
    model.eval()
    try:
        probe = x.detach().clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(F.cross_entropy(model(probe), target), probe)
        gradient_direction = gradient.sign()[0].to(x.dtype)
        random_direction = rademacher_direction(x.shape[1:], seed).to(device=x.device, dtype=x.dtype)

        coords = grid_coords(radius, steps)
        along = torch.tensor(coords, dtype=x.dtype, device=x.device)
        # Point p = i * steps + j of the flattened grid, i along the gradient, j along the random direction.
        offsets_a, offsets_b = along.repeat_interleave(steps), along.repeat(steps)
        direction_shape = (-1,) + (1,) * (x.dim() - 1)
        losses = []
        with torch.no_grad():
            for start in range(0, steps * steps, batch_size):
                a = offsets_a[start:start + batch_size].view(direction_shape)
                b = offsets_b[start:start + batch_size].view(direction_shape)
                points = x + a * gradient_direction + b * random_direction
                if clamp:
                    points = points.clamp(0, 1)
                logits = model(points)
                losses.append(F.cross_entropy(logits.float(), target.expand(len(points)), reduction="none"))
            clean_loss = F.cross_entropy(model(x.detach()).float(), target).item()
    finally:
        model.train(was_training)

    loss = torch.cat(losses).double().cpu().numpy().reshape(steps, steps)
    return Landscape(
        coords=coords,
        loss=loss,
        gradient_direction=gradient_direction.cpu().numpy(),
        random_direction=random_direction.cpu().numpy(),
        clean_loss=clean_loss,
        label=label,
        zero_gradient_fraction=float((gradient == 0).float().mean()),
        radius=float(radius),
        seed=seed,
        clamp=clamp,
    )
