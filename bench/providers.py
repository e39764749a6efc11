"""What the benchmark times: the k-WTA operator as users call it, and what it is compared with.

Rows are whole samples (mode="vol"), k = max(1, int(ratio * N)) for N = C*H*W:
  topk       the original formula exactly as printed in the paper code's README (kwta_topk), autograd through it
  reference  kwta(..., backend="reference"): sort-based threshold (kernels/reference.py), the test oracle
  cpu        kwta(..., backend="cpu"): the numba radix-histogram select of kernels/cpu.py; CPU only
  partition  np.partition (introselect, AVX-512 sorting networks where the CPU has them) of each row's
             order-preserving keys, computed in numpy, then a torch.where mask: the cpu path's select before
             the radix one, kept as a comparison; CPU only, numpy's one thread
  kthvalue   torch.kthvalue threshold and a torch.where mask (kwta_kthvalue): the obvious plain-PyTorch rewrite
  relu       torch.relu: the baseline every "x relu" ratio is taken against
  triton     kwta(..., backend="triton"): the fused radix-select kernel of kernels/triton_kwta.py; CUDA only
  copy       x.clone(), forward only: the device's copy bandwidth, the floor of any elementwise forward
"""

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from bench import PROVIDERS
from kwta.functional import kwta

FORWARD_ONLY = frozenset({"copy"})
_UNAVAILABLE = {"cuda": {"cpu", "partition"}, "cpu": {"triton"}}


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


_INT_VIEWS = {2: torch.int16, 4: torch.int32, 8: torch.int64}
_INF_BITS = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80, torch.float32: 0x7F800000,
             torch.float64: 0x7FF0000000000000}


def order_keys(rows: torch.Tensor) -> np.ndarray:
    """Integer keys that order like the floats, -0.0 == +0.0 and NaN above +inf (kernels/cpu.py's keys)."""
    bits = rows.detach().view(_INT_VIEWS[rows.element_size()]).numpy()
    magnitude = bits & ((1 << (8 * rows.element_size() - 1)) - 1)
    sign = bits >> (8 * rows.element_size() - 1)  # 0 or -1
    keys = (magnitude ^ sign) - sign
    inf = _INF_BITS[rows.dtype]
    np.putmask(keys, magnitude > inf, inf + 1)
    return keys


def kwta_partition(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """k-WTA with each row's threshold key from np.partition; exact (ties, NaN, signed zeros) like kwta."""
    rows = x.reshape(x.shape[0], -1)
    n = rows.shape[1]
    rank = n - max(1, int(ratio * n))  # the k-th largest is at this index of the ascending order
    keys = order_keys(rows)
    threshold = np.partition(keys, rank, axis=1)[:, rank : rank + 1]
    return torch.where(torch.from_numpy(keys >= threshold), rows, rows.new_zeros(())).view_as(x)


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
        "partition": lambda x: kwta_partition(x, ratio),
        "kthvalue": lambda x: kwta_kthvalue(x, ratio),
        "relu": torch.relu,
        "triton": lambda x: kwta(x, ratio, backend="triton"),
        "copy": lambda x: x.detach().clone(),
    }
    return functions[name]


def available_providers(device: str) -> tuple[str, ...]:
    """The providers that run on `device`: triton needs CUDA, cpu and partition need CPU tensors."""
    return tuple(p for p in PROVIDERS if p not in _UNAVAILABLE[device])


def build_benchmark_models(ratio: float) -> dict[str, nn.Module]:
    """resnet18-cifar with ReLU, with k-WTA (backend auto) and with the paper's topk module swapped in."""
    from kwta.models import build_model
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
