"""`kwta(x, ratio, ...)`: backend dispatch, the torch.library ops and the autograd.Function.

The cpu and triton backends return y and a bit-packed winner mask of shape (rows, mask_bytes(N)), bit
i % 8 of byte i // 8 for element i of a row, rows padded to whole 32-bit words; the backward reads only
that mask (0.125 bytes saved per element, against 4 for ReLU's saved output). Both are registered as
torch.library custom ops with fake (meta) implementations, so torch.compile traces a k-WTA network in
one graph; eager calls go to the kernels directly.

`surrogate_temperature` switches the backward to a smooth stand-in (BPDA, Athalye, Carlini, Wagner
2018): the forward stays the exact k-WTA, bit for bit, while the gradient is that of
x * sigmoid((x - t) / T), t the row's k-th largest value and T = temperature * the row's standard
deviation. Units just below the threshold then pass gradient too: the direction in which the winner
set would change, which the exact gradient (zero on losers) cannot see. It is an attack's tool, not
part of the operator's semantics; kwta.modules.surrogate_gradient switches it on for a whole model.
"""

import os

import torch

from kwta.kernels.reference import check_input, kwta_reference, mask_bytes, resolve_k, row_shape

BACKENDS = ("auto", "reference", "cpu", "triton")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _mask_like(rows: torch.Tensor) -> torch.Tensor:
    return rows.new_empty((rows.shape[0], mask_bytes(rows.shape[1])), dtype=torch.uint8)


@torch.library.custom_op("kwta::cpu_forward", mutates_args=())
def _cpu_forward(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    from kwta.kernels import cpu  # numba loads on the cpu backend's first use, not with kwta (as triton does)

    return cpu.kwta_forward(rows, k)


@torch.library.custom_op("kwta::cpu_backward", mutates_args=())
def _cpu_backward(grad_y: torch.Tensor, winner_bits: torch.Tensor) -> torch.Tensor:
    from kwta.kernels import cpu

    return cpu.kwta_backward(grad_y, winner_bits)


@torch.library.custom_op("kwta::triton_forward", mutates_args=())
def _triton_forward(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    from kwta.kernels import triton_kwta

    return triton_kwta.kwta_forward(rows, k)


@torch.library.custom_op("kwta::triton_backward", mutates_args=())
def _triton_backward(grad_y: torch.Tensor, winner_bits: torch.Tensor) -> torch.Tensor:
    from kwta.kernels import triton_kwta

    return triton_kwta.kwta_backward(grad_y, winner_bits)


for _forward in (_cpu_forward, _triton_forward):

    @_forward.register_fake
    def _(rows, k):
        return torch.empty_like(rows), _mask_like(rows)


for _backward in (_cpu_backward, _triton_backward):

    @_backward.register_fake
    def _(grad_y, winner_bits):
        return torch.empty_like(grad_y)


_OPS = {"cpu": (_cpu_forward, _cpu_backward), "triton": (_triton_forward, _triton_backward)}


def _kernels(backend: str):
    """The kernels themselves: eager calls skip the custom op's dispatch (about 25 us per forward and backward,
    most of a small layer's cost); under torch.compile the ops are what gets traced."""
    if torch.compiler.is_compiling():
        return _OPS[backend]
    if backend == "cpu":
        from kwta.kernels import cpu

        return cpu.kwta_forward, cpu.kwta_backward
    from kwta.kernels import triton_kwta

    return triton_kwta.kwta_forward, triton_kwta.kwta_backward


class KWTAFunction(torch.autograd.Function):
    """y = x on the k largest of each row (ties kept, NaN kept), 0 elsewhere; grad flows on winners."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, k: int, backend: str):
        forward_op, backward_op = _kernels(backend)
        y, winner_bits = forward_op(rows, k)
        ctx.backward_op = backward_op
        ctx.save_for_backward(winner_bits)
        ctx.mark_non_differentiable(winner_bits)
        return y, winner_bits

    @staticmethod
    def backward(ctx, grad_y, _grad_bits):
        (winner_bits,) = ctx.saved_tensors
        return ctx.backward_op(grad_y.contiguous(), winner_bits), None, None


class SurrogateKWTAFunction(torch.autograd.Function):
    """Exact k-WTA forward on 2-D rows; backward through x * sigmoid((x - t) / T) (BPDA)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, k: int, backend: str, temperature: float):
        with torch.no_grad():
            y = kwta_reference(rows, k=k) if backend == "reference" else _OPS[backend][0](rows, k)[0]
            threshold = rows.kthvalue(rows.shape[1] - k + 1, dim=1, keepdim=True).values
            spread = rows.std(dim=1, keepdim=True, correction=0)
            # a constant row has no spread: any positive scale gives the same (sigmoid(0)) gate there
            scale = (temperature * spread).clamp_min(torch.finfo(rows.dtype).eps)
        ctx.save_for_backward(rows, threshold, scale)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        rows, threshold, scale = ctx.saved_tensors
        gate = torch.sigmoid((rows - threshold) / scale)
        return grad_y * (gate + rows * gate * (1 - gate) / scale), None, None, None


def resolve_backend(x: torch.Tensor, backend: str) -> str:
    """The backend that runs `x`: 'auto' is triton on CUDA (float16/bfloat16/float32), cpu on CPU."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if x.is_cuda:
            return "triton" if x.dtype in TRITON_DTYPES else "reference"
        return "cpu" if x.device.type == "cpu" else "reference"
    if backend == "cpu" and x.device.type != "cpu":
        raise ValueError(f"backend='cpu' needs a CPU tensor, got one on {x.device}")
    if backend == "triton":
        if x.dtype not in TRITON_DTYPES:
            raise TypeError(f"backend='triton' supports float16, bfloat16 and float32 x, got {x.dtype}")
        if not x.is_cuda and not (x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
            raise ValueError("backend='triton' needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors)")
    return backend


def kwta(
    x: torch.Tensor,
    ratio: float | None = None,
    *,
    k: int | None = None,
    mode: str = "vol",
    backend: str = "auto",
    surrogate_temperature: float | None = None,
) -> torch.Tensor:
    """k-Winners-Take-All of each row of `x` (see kernels/reference.py for the exact semantics).

    mode="vol": one row per sample (C*H*W); mode="channel": one row per (sample, channel).
    Exactly one of `ratio` (k = max(1, int(ratio * N))) and `k` is given.
    surrogate_temperature: None for the exact gradient; T > 0 for BPDA's smooth backward (module docstring).
    """
    check_input(x, mode)
    backend = resolve_backend(x, backend)
    n_rows, n = row_shape(x.shape, mode)
    k = resolve_k(max(n, 1), ratio, k)
    if surrogate_temperature is not None and not surrogate_temperature > 0:
        raise ValueError(f"surrogate_temperature must be > 0 (or None), got {surrogate_temperature!r}")
    if backend == "reference" and surrogate_temperature is None:
        return kwta_reference(x, k=k, mode=mode)
    if x.numel() == 0:
        return x.clone()

    def apply(rows: torch.Tensor) -> torch.Tensor:
        if surrogate_temperature is not None:
            return SurrogateKWTAFunction.apply(rows, k, backend, surrogate_temperature)
        return KWTAFunction.apply(rows, k, backend)[0]

    if mode == "vol" and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        # Each sample is still one contiguous block, in (H, W, C) order, and which elements win does
        # not depend on their order: run on the storage as it lies and hand back a channels-last y.
        y = apply(x.permute(0, 2, 3, 1).reshape(n_rows, n))
        return y.view(x.shape[0], x.shape[2], x.shape[3], x.shape[1]).permute(0, 3, 1, 2)
    return apply(x.reshape(n_rows, n).contiguous()).view(x.shape)
