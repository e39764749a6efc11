"""KWTA, the nn.Module form of k-WTA, and replace_relu for swapping it into existing networks."""

from collections.abc import Iterable

import torch
from torch import nn

from kernels.reference import MODES
from kwta.functional import BACKENDS, kwta


class KWTA(nn.Module):
    """k-Winners-Take-All activation. `ratio` may be changed between epochs (incremental sparsity)."""

    def __init__(self, ratio: float | None = None, *, k: int | None = None, mode: str = "vol", backend: str = "auto"):
        super().__init__()
        if (ratio is None) == (k is None):
            raise ValueError("give exactly one of ratio and k")
        if ratio is not None and not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1, got {k!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.ratio, self.k, self.mode, self.backend = ratio, k, mode, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kwta(x, self.ratio, k=self.k, mode=self.mode, backend=self.backend)

    def extra_repr(self) -> str:
        amount = f"ratio={self.ratio}" if self.k is None else f"k={self.k}"
        return f"{amount}, mode={self.mode!r}, backend={self.backend!r}"


def replace_relu(model: nn.Module, ratio: float, *, mode: str = "vol", backend: str = "auto",
                 keep: Iterable[nn.Module] = ()) -> int:
    """Swap every nn.ReLU module of `model` in place for a KWTA; return how many were replaced.

    keep: ReLU modules to leave as they are (e.g. the stem's, as the paper's ResNet does).

    A ReLU module that is called several times (torchvision's BasicBlock calls its one ReLU twice)
    becomes one KWTA called as often, so every application is replaced.
    """
    kept = {id(module) for module in keep}
    replaced = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU) and id(child) not in kept:
                setattr(parent, name, KWTA(ratio, mode=mode, backend=backend))
                replaced += 1
    return replaced


def set_ratio(model: nn.Module, ratio: float) -> int:
    """Set the ratio of every KWTA in `model` (incremental sparsity); return how many were set."""
    layers = [m for m in model.modules() if isinstance(m, KWTA)]
    for layer in layers:
        layer.ratio = ratio
    return len(layers)
