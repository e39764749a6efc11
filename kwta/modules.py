"""KWTA, the nn.Module form of k-WTA; replace_relu for swapping it into existing networks; surrogate_gradient
for attacking a k-WTA network through a smooth backward (BPDA) without copying it."""

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from kwta.functional import BACKENDS, kwta
from kwta.kernels.reference import MODES


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
        self.surrogate_temperature = None  # set by surrogate_gradient while an attack runs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kwta(x, self.ratio, k=self.k, mode=self.mode, backend=self.backend,
                    surrogate_temperature=self.surrogate_temperature)

    def extra_repr(self) -> str:
        amount = f"ratio={self.ratio}" if self.k is None else f"k={self.k}"
        text = f"{amount}, mode={self.mode!r}, backend={self.backend!r}"
        if self.surrogate_temperature is not None:
            text += f", surrogate_temperature={self.surrogate_temperature}"
        return text


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


@contextlib.contextmanager
def surrogate_gradient(model: nn.Module, temperature: float) -> Iterator[int]:
    """Inside the block every KWTA of `model` back-propagates through its smooth stand-in (BPDA).

    Forward passes stay exact (the same logits, bit for bit); only gradients change. Yields how many
    KWTA modules were switched (0 for a ReLU network, whose gradient is left exact); restores them on exit.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    layers = [m for m in model.modules() if isinstance(m, KWTA)]
    before = [layer.surrogate_temperature for layer in layers]
    for layer in layers:
        layer.surrogate_temperature = temperature
    try:
        yield len(layers)
    finally:
        for layer, temperature_before in zip(layers, before, strict=True):
            layer.surrogate_temperature = temperature_before
