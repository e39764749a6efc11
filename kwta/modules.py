"""KWTA, the nn.Module form of k-WTA; replace_relu for swapping it into existing networks; surrogate_gradient
for attacking a k-WTA network through a smooth backward (BPDA) without copying it."""

import contextlib
import warnings
from collections.abc import Iterable, Iterator

import torch
import torch.fx
import torch.nn.functional as F
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


# Activations torchvision and timm networks commonly use, told apart from the one being replaced in messages.
ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.ELU, nn.PReLU)
# Calls a forward can make instead of holding a module: a module swap cannot reach them.
_FUNCTIONAL_RELUS = {F.relu, F.relu_, F.relu6, torch.relu, torch.relu_}


def replace_relu(model: nn.Module, ratio: float, *, mode: str = "vol", backend: str = "auto",
                 keep: Iterable[nn.Module] = (), types: tuple[type[nn.Module], ...] = (nn.ReLU,)) -> int:
    """Swap every activation module of `types` (nn.ReLU by default) in `model` in place for a KWTA; return how
    many were replaced.

    keep: modules to leave as they are (e.g. the stem's ReLU, as the paper's ResNet does).
    types: the activation classes to replace, e.g. (nn.ReLU, nn.ReLU6) for mobilenet_v2, whose activations
        are all ReLU6.

    A module that is called several times (torchvision's BasicBlock calls its one ReLU twice) becomes one
    KWTA called as often, so every application is replaced. Raises ValueError when there is nothing to
    replace (naming the activation types the model does hold), and warns when the model's forward also
    applies ReLU as a function (densenet121's F.relu after its features): those calls stay ReLU.
    """
    types = tuple(types)
    if not types or not all(isinstance(kind, type) and issubclass(kind, nn.Module) for kind in types):
        raise TypeError(f"types must be nn.Module classes, got {types!r}")
    kept = {id(module) for module in keep}
    functional_calls = _functional_relu_calls(model)
    replaced = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, types) and id(child) not in kept:
                setattr(parent, name, KWTA(ratio, mode=mode, backend=backend))
                replaced += 1
    if replaced == 0 and not kept:
        held = sorted({type(m).__name__ for m in model.modules() if isinstance(m, ACTIVATION_TYPES)})
        raise ValueError(f"replace_relu: no {' or '.join(kind.__name__ for kind in types)} module to replace in "
                         f"{type(model).__name__}" + (f"; it holds {', '.join(held)}: pass types=(...) to replace "
                                                      "those" if held else ""))
    if functional_calls:
        warnings.warn(f"replace_relu: {type(model).__name__}'s forward applies ReLU as a function at "
                      f"{', '.join(functional_calls)}); those stay ReLU (make them nn.ReLU modules to replace them)",
                      stacklevel=2)
    return replaced


def _functional_relu_calls(model: nn.Module) -> list[str]:
    """Where the forward calls F.relu / torch.relu / x.relu() itself, by tracing it symbolically (torch.fx);
    an empty list when it calls none or cannot be traced (data-dependent control flow)."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # any model fx cannot trace: nothing known, nothing claimed
        return []
    return [node.name for node in graph.nodes
            if (node.op == "call_function" and node.target in _FUNCTIONAL_RELUS)
            or (node.op == "call_method" and node.target in ("relu", "relu_"))]


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
