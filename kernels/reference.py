"""The k-WTA operator in plain PyTorch, written for clarity: the oracle every backend is tested against.

Semantics (docs/operator.md, "Exact semantics"):
  rows       mode="vol": one row per sample (C*H*W); mode="channel": one row per (sample, channel);
             a 2-D input (B, D) has rows of D in both modes.
  k          exactly one of ratio (0 < ratio <= 1, k = max(1, int(ratio * N))) and k (1 <= k <= N).
  threshold  t = the k-th largest value of the row, NaN ordered above +inf (as torch.topk does).
  winners    isnan(x) | (x >= t): ties at t all win, +0.0 == -0.0, NaN always propagates.
  output     y = x on winners, +0.0 elsewhere.  grad_x = grad_y on winners, 0 elsewhere.
  mask       what the cpu and triton backends save for the backward: (rows, mask_bytes(N)) uint8, bit i % 8
             of byte i // 8 set for each winner i of a row, each row padded with zero bytes to whole
             32-bit words (so a kernel can set bits with 32-bit atomics); 1/8 byte per element.
"""

import math

import torch

MODES = ("vol", "channel")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def mask_bytes(n: int) -> int:
    """Bytes of one row's winner mask: N bits, rounded up to whole 32-bit words."""
    return 4 * ((n + 31) // 32)


def check_input(x: torch.Tensor, mode: str) -> None:
    """Raise the errors docs/operator.md lists for a bad `x` or `mode`."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be a floating tensor (float16, bfloat16, float32, float64), got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must have a batch dimension and at least 2 dims, got shape {tuple(x.shape)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def row_shape(shape: torch.Size, mode: str) -> tuple[int, int]:
    """(rows, N): how a tensor of `shape` splits into k-WTA rows."""
    lead = 2 if mode == "channel" and len(shape) > 2 else 1
    return math.prod(shape[:lead]), math.prod(shape[lead:])


def resolve_k(n: int, ratio: float | None, k: int | None) -> int:
    """The number of winners per row of length `n`, from exactly one of `ratio` and `k`."""
    if (ratio is None) == (k is None):
        raise ValueError("give exactly one of ratio and k")
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}")
        return max(1, int(ratio * n))
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, N={n}], got {k!r}")
    return k


def kth_largest(rows: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value of each row of a 2-D tensor, NaN above +inf (shape (rows, 1))."""
    # torch.sort orders NaN above +inf, so a descending sort puts NaN first, as topk does.
    return rows.sort(dim=1, descending=True).values[:, k - 1 : k]


def winner_mask(x: torch.Tensor, ratio: float | None = None, *, k: int | None = None, mode: str = "vol"):
    """Boolean mask of the winners of `x`, same shape as x."""
    check_input(x, mode)
    n_rows, n = row_shape(x.shape, mode)
    k = resolve_k(max(n, 1), ratio, k)
    if x.numel() == 0:
        return torch.zeros_like(x, dtype=torch.bool)
    rows = x.reshape(n_rows, n)
    threshold = kth_largest(rows, k)
    return (rows.isnan() | (rows >= threshold)).reshape(x.shape)


class _ReferenceKWTA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ratio, k, mode):
        winners = winner_mask(x, ratio, k=k, mode=mode)
        ctx.save_for_backward(winners)
        return torch.where(winners, x, torch.zeros((), dtype=x.dtype, device=x.device))

    @staticmethod
    def backward(ctx, grad_y):
        (winners,) = ctx.saved_tensors
        zero = torch.zeros((), dtype=grad_y.dtype, device=grad_y.device)
        return torch.where(winners, grad_y, zero), None, None, None


def kwta_reference(x: torch.Tensor, ratio: float | None = None, *, k: int | None = None, mode: str = "vol"):
    """k-WTA of `x` with the exact semantics above; differentiable."""
    return _ReferenceKWTA.apply(x, ratio, k, mode)
