"""The fast CPU path: k-WTA on order-preserving integer keys, numba for the streaming passes,
numpy's SIMD introselect for the threshold.

Each float is read as its raw bits and mapped to an integer key of the same width,
    key = +|x|bits for x >= 0,   -|x|bits for x < 0,   |inf|bits + 1 for NaN,
so -0.0 and +0.0 share key 0, NaN sits above +inf, and ordering keys orders the floats exactly as
DESIGN.md does. The forward is three passes over each row:
  1. numba writes the keys (branch-free, vectorised; parallel over rows from 64K elements up);
  2. numpy's np.partition selects the k-th largest key of each row in place (introselect with
     x86-simd-sort, 2-3x faster on int32 keys than on the floats themselves), rows split over threads;
  3. numba writes y (x's bits on winners, +0.0 elsewhere) and the bit-packed winner mask.
Working on raw bits makes one path serve float16, bfloat16, float32 and float64 bit-exactly.
Per element the forward reads x twice (the second read mostly from cache), writes and selects one
key, writes y and 1/8 byte of mask; the backward reads grad_y and 1/8 byte, and writes grad_x.
"""

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch

# dtype -> (integer view of the same width, bits of +inf)
_FORMATS = {
    torch.float16: (torch.int16, 0x7C00),
    torch.bfloat16: (torch.int16, 0x7F80),
    torch.float32: (torch.int32, 0x7F800000),
    torch.float64: (torch.int64, 0x7FF0000000000000),
}
_pool: ThreadPoolExecutor | None = None


@numba.njit(inline="always")
def _order_key(bits, abs_mask, inf):
    b = np.int64(bits)
    magnitude = b & abs_mask
    sign = b >> 63  # 0 or -1: branch-free negation, since signs are a coin flip on activations
    key = (magnitude ^ sign) - sign
    return inf + 1 if magnitude > inf else key


@numba.njit(inline="always")
def _keys_row(row, abs_mask, inf, out):
    for i in range(row.shape[0]):
        out[i] = _order_key(row[i], abs_mask, inf)


@numba.njit(inline="always")
def _mask_row(row, threshold, abs_mask, inf, out, packed_row):
    full_bytes = row.shape[0] // 8
    for byte in range(full_bytes):
        packed = 0
        for bit in range(8):  # a constant trip count and no branch: LLVM unrolls and vectorises it
            i = 8 * byte + bit
            win = np.int64(_order_key(row[i], abs_mask, inf) >= threshold)
            out[i] = row[i] & -win  # all ones or zero: a branch-free select
            packed |= win << bit
        packed_row[byte] = packed
    if full_bytes < packed_row.shape[0]:
        packed = 0
        for i in range(8 * full_bytes, row.shape[0]):
            win = np.int64(_order_key(row[i], abs_mask, inf) >= threshold)
            out[i] = row[i] & -win
            packed |= win << (i - 8 * full_bytes)
        packed_row[full_bytes] = packed


@numba.njit(inline="always")
def _unmask_row(grad, packed_row, out):
    full_bytes = grad.shape[0] // 8
    for byte in range(full_bytes):
        packed = packed_row[byte]
        for bit in range(8):
            out[8 * byte + bit] = grad[8 * byte + bit] & -np.int64((packed >> bit) & 1)
    for i in range(8 * full_bytes, grad.shape[0]):
        out[i] = grad[i] & -np.int64((packed_row[full_bytes] >> (i - 8 * full_bytes)) & 1)


# Each pass runs its per-row body over the rows, in parallel or, below PARALLEL_MIN_ELEMENTS, in one
# thread: starting a parallel region costs tens of microseconds idle and milliseconds on busy cores,
# more than a small layer's whole pass. The bodies are functions of their own so that numba's parfor
# pass does not take `packed` in _mask_row for a reduction across rows.
PARALLEL_MIN_ELEMENTS = 1 << 16


@numba.njit(parallel=True, cache=True)
def _keys_parallel(x_bits, abs_mask, inf, keys):
    for r in numba.prange(x_bits.shape[0]):
        _keys_row(x_bits[r], abs_mask, inf, keys[r])


@numba.njit(cache=True)
def _keys_serial(x_bits, abs_mask, inf, keys):
    for r in range(x_bits.shape[0]):
        _keys_row(x_bits[r], abs_mask, inf, keys[r])


@numba.njit(parallel=True, cache=True)
def _mask_parallel(x_bits, thresholds, abs_mask, inf, y_bits, winner_bits):
    for r in numba.prange(x_bits.shape[0]):
        _mask_row(x_bits[r], thresholds[r], abs_mask, inf, y_bits[r], winner_bits[r])


@numba.njit(cache=True)
def _mask_serial(x_bits, thresholds, abs_mask, inf, y_bits, winner_bits):
    for r in range(x_bits.shape[0]):
        _mask_row(x_bits[r], thresholds[r], abs_mask, inf, y_bits[r], winner_bits[r])


@numba.njit(parallel=True, cache=True)
def _backward_parallel(grad_bits, winner_bits, out_bits):
    for r in numba.prange(grad_bits.shape[0]):
        _unmask_row(grad_bits[r], winner_bits[r], out_bits[r])


@numba.njit(cache=True)
def _backward_serial(grad_bits, winner_bits, out_bits):
    for r in range(grad_bits.shape[0]):
        _unmask_row(grad_bits[r], winner_bits[r], out_bits[r])


def _parallel(t: torch.Tensor) -> bool:
    return t.numel() >= PARALLEL_MIN_ELEMENTS and numba.get_num_threads() > 1


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.view(_FORMATS[t.dtype][0]).numpy()


def _select_in_place(keys: np.ndarray, rank: int) -> np.ndarray:
    """keys[:, rank] after partitioning each row in place; rows split over torch's CPU threads."""
    global _pool
    threads = min(torch.get_num_threads(), keys.shape[0])
    if threads <= 1 or keys.size < PARALLEL_MIN_ELEMENTS:
        keys.partition(rank, axis=1)
        return keys[:, rank].copy()
    if _pool is None or _pool._max_workers != threads:
        _pool = ThreadPoolExecutor(threads)
    chunks = np.array_split(np.arange(keys.shape[0]), threads)
    list(_pool.map(lambda rows: keys[rows[0] : rows[-1] + 1].partition(rank, axis=1), chunks))
    return keys[:, rank].copy()


def kwta_forward(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k-WTA of each row of a contiguous 2-D CPU tensor: (y, winner_bits of shape (rows, ceil(N/8)))."""
    int_dtype, inf = _FORMATS[rows.dtype]
    abs_mask = (1 << (8 * rows.element_size() - 1)) - 1
    x_bits = _bits(rows)
    keys = np.empty_like(x_bits)
    parallel = _parallel(rows)
    (_keys_parallel if parallel else _keys_serial)(x_bits, abs_mask, inf, keys)
    thresholds = _select_in_place(keys, rows.shape[1] - k)
    y = torch.empty_like(rows)
    winner_bits = torch.empty((rows.shape[0], (rows.shape[1] + 7) // 8), dtype=torch.uint8)
    (_mask_parallel if parallel else _mask_serial)(x_bits, thresholds, abs_mask, inf, _bits(y), winner_bits.numpy())
    return y, winner_bits


def kwta_backward(grad_y: torch.Tensor, winner_bits: torch.Tensor) -> torch.Tensor:
    """grad_x = grad_y where the winner bit is set, +0.0 elsewhere (contiguous 2-D CPU tensors)."""
    grad_x = torch.empty_like(grad_y)
    (_backward_parallel if _parallel(grad_y) else _backward_serial)(_bits(grad_y), winner_bits.numpy(), _bits(grad_x))
    return grad_x
