"""Fused Triton k-WTA: a radix-histogram select of each row's k-th largest value, then the mask.

Math. Each element becomes an order-preserving int32 key (float16 and bfloat16 are widened to float32
first, which is exact):
    key = +|x|bits for x >= 0,   -|x|bits for x < 0,   NAN_KEY (just above +inf's) for NaN,
so -0.0 and +0.0 share key 0 and NaN orders above +inf, as docs/operator.md specifies. The threshold key T
is the k-th largest key of the row, found digit by digit, most significant first:
    pass 0: bits 31..21 (sign, exponent, 2 mantissa bits)    2048 bins
    pass 1: bits 20..10 of the keys that matched pass 0      2048 bins
    pass 2: bits  9..0  of the keys that matched pass 1      1024 bins (float32 only)
Each pass histograms one digit of the remaining candidates, and the bin that holds the k-th largest
becomes the next prefix. Widened 16-bit floats have ten zero low bits, so two passes decide them.
Then winners = key >= T (ties at T and NaN all win), y = x on winners and +0.0 elsewhere, and one bit
per element (bit i % 8 of byte i // 8) records the winners for the backward.

Two forward paths, both free of host synchronisation (no .item(), grid sizes depend on shapes only),
so the op can be captured in CUDA graphs:
  * rows of N <= TILE: one program per row holds the row in registers for every pass.
    Bytes moved per element: read x, write y, write 1/8 mask -> 2 * itemsize + 0.125 (the floor).
  * longer rows: each row is split into chunks of TILE over a 2-D grid. One launch per pass adds each
    chunk's histogram into a per-row global histogram with atomics (every program re-derives the
    prefix from the earlier passes' histograms), and a last launch writes y and the mask.
    Bytes per element: (passes + 1) reads of x, write y, 1/8 mask -> (passes + 2) * itemsize + 0.125;
    on a GPU the re-reads of a batch that fits L2 (H100: 50 MB) mostly hit it.
Backward: read grad_y and the 1/8-byte mask, write grad_x -> 2 * itemsize + 0.125 bytes per element.
All offsets are int64, so tensors past 2**31 elements stay correct.

Resources per program, as ptxas reports them for every specialization the launchers make on sm_80 and
sm_90 (`python -m kwta.kernels.aot`; tests/test_aot.py fails on any spill):
    kernel                 warps  registers/thread         shared memory      spills
    _kwta_row_kernel       4      48-128 (BLOCK 128-2048)  8 KiB (histogram)  0
    _kwta_row_kernel       8      80-128 (BLOCK 4096)      8 KiB              0
    _kwta_hist_kernel      8      28-71                    8 KiB              0
    _kwta_mask_kernel      8      47-106                   64-512 B           0
    _kwta_backward_kernel  8      14-59                    0                  0
One warp would hold 64 histogram bins per thread: 254 registers at BLOCK 512, hence four warps at least.

Under TRITON_INTERPRET=1 these kernels run on CPU tensors (tests/). Interpreter facts that shaped the
code: tl.histogram drops out-of-range digits where the GPU wraps them, so every digit is masked into
range; only int32 arithmetic is used on keys (no uint32 `~`). The interpreter also reads plain module
globals that the GPU compiler rejects, which is why kernels/aot.py compiles every specialization.
"""

import torch
import triton
import triton.language as tl

TILE = 4096  # elements per program: the one-program-per-row limit and the chunk of the split path
MIN_BLOCK = 128  # one element per thread of the four warps the one-program path uses up to 2048
# A jitted function may read a module global only when it is a constexpr: the interpreter reads plain
# globals too, but the compiler for real GPUs rejects them (kernels/aot.py checks every specialization).
BINS = tl.constexpr(2048)


@triton.jit
def _order_key(x):
    bits = x.to(tl.float32).to(tl.int32, bitcast=True)
    magnitude = bits & 0x7FFFFFFF
    key = tl.where(bits < 0, -magnitude, magnitude)
    # NaN's key 0x7F800000 + 2**21 sits above +inf's and keeps 21 low zero bits, as 16-bit floats do
    return tl.where(magnitude > 0x7F800000, 0x7FA00000, key)


@triton.jit
def _digit(key, PASS: tl.constexpr):
    if PASS == 0:
        return ((key >> 21) + 1024) & 2047
    elif PASS == 1:
        return (key >> 10) & 2047
    else:
        return key & 1023


@triton.jit
def _is_candidate(key, prefix, PASS: tl.constexpr):
    """Whether `key` matched the digits chosen by the passes before PASS (prefix = key >> shift)."""
    if PASS == 0:
        return key == key
    elif PASS == 1:
        return (key >> 21) == prefix
    else:
        return (key >> 10) == prefix


@triton.jit
def _descend(prefix, chosen_bin, PASS: tl.constexpr):
    """The prefix (key >> shift of pass PASS) once bin `chosen_bin` of pass PASS holds the k-th largest."""
    if PASS == 0:
        return chosen_bin - 1024
    elif PASS == 1:
        return prefix * 2048 + chosen_bin
    else:
        return prefix * 1024 + chosen_bin


@triton.jit
def _select_bin(hist, k_left, BINS: tl.constexpr):
    """The bin of `hist` holding the k_left-th largest candidate, and k_left within that bin."""
    above = tl.sum(hist, 0) - tl.cumsum(hist, 0)  # candidates in higher bins
    chosen_bin = tl.sum((above >= k_left).to(tl.int32), 0)
    above_chosen = tl.sum(tl.where(tl.arange(0, BINS) == chosen_bin, above, 0), 0)
    return chosen_bin, k_left - above_chosen


@triton.jit
def _threshold_key(prefix, NUM_PASSES: tl.constexpr):
    if NUM_PASSES == 2:
        return prefix * 1024  # 16-bit floats: the last ten key bits are zero
    return prefix


@triton.jit
def _write_winners(x, key, threshold, in_row, y_ptrs, bits_ptrs, bytes_in_row, BLOCK: tl.constexpr):
    winners = in_row & (key >= threshold)
    tl.store(y_ptrs, tl.where(winners, x, 0.0), mask=in_row)
    shifts = tl.arange(0, 8)[None, :]
    packed = tl.sum(tl.reshape(winners.to(tl.int32), (BLOCK // 8, 8)) << shifts, 1)
    tl.store(bits_ptrs, packed.to(tl.uint8), mask=bytes_in_row)


@triton.jit(do_not_specialize=["k"])
def _kwta_row_kernel(x_ptr, y_ptr, bits_ptr, n, k, BLOCK: tl.constexpr, NUM_PASSES: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK)
    in_row = offsets < n
    x = tl.load(x_ptr + row * n + offsets, mask=in_row, other=0.0)
    key = _order_key(x)
    prefix = 0
    k_left = k
    for p in tl.static_range(NUM_PASSES):
        candidates = in_row & _is_candidate(key, prefix, p)
        hist = tl.histogram(_digit(key, p), BINS, mask=candidates)
        chosen_bin, k_left = _select_bin(hist, k_left, BINS)
        prefix = _descend(prefix, chosen_bin, p)
    n_bytes = (n + 7) // 8
    byte_offsets = tl.arange(0, BLOCK // 8)
    _write_winners(
        x, key, _threshold_key(prefix, NUM_PASSES), in_row, y_ptr + row * n + offsets,
        bits_ptr + row * n_bytes + byte_offsets, byte_offsets < n_bytes, BLOCK,
    )


@triton.jit
def _prefix_from_hist(hist_row_ptr, k, PASSES_DONE: tl.constexpr):
    """Replay the bin choices of the passes already merged into this row's global histograms."""
    prefix = 0
    k_left = k
    bins = tl.arange(0, BINS)
    for p in tl.static_range(PASSES_DONE):
        hist = tl.load(hist_row_ptr + p * BINS + bins)
        chosen_bin, k_left = _select_bin(hist, k_left, BINS)
        prefix = _descend(prefix, chosen_bin, p)
    return prefix


@triton.jit(do_not_specialize=["k"])
def _kwta_hist_kernel(x_ptr, hist_ptr, n, k, PASS: tl.constexpr, NUM_PASSES: tl.constexpr, CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1).to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
    in_row = offsets < n
    key = _order_key(tl.load(x_ptr + row * n + offsets, mask=in_row, other=0.0))
    hist_row_ptr = hist_ptr + row * NUM_PASSES * BINS
    prefix = _prefix_from_hist(hist_row_ptr, k, PASS)
    hist = tl.histogram(_digit(key, PASS), BINS, mask=in_row & _is_candidate(key, prefix, PASS))
    tl.atomic_add(hist_row_ptr + PASS * BINS + tl.arange(0, BINS), hist, mask=hist > 0)


@triton.jit(do_not_specialize=["k"])
def _kwta_mask_kernel(x_ptr, y_ptr, bits_ptr, hist_ptr, n, k, NUM_PASSES: tl.constexpr, CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    offsets = chunk * CHUNK + tl.arange(0, CHUNK)
    in_row = offsets < n
    x = tl.load(x_ptr + row * n + offsets, mask=in_row, other=0.0)
    prefix = _prefix_from_hist(hist_ptr + row * NUM_PASSES * BINS, k, NUM_PASSES)
    n_bytes = (n + 7) // 8
    byte_offsets = chunk * (CHUNK // 8) + tl.arange(0, CHUNK // 8)
    _write_winners(
        x, _order_key(x), _threshold_key(prefix, NUM_PASSES), in_row, y_ptr + row * n + offsets,
        bits_ptr + row * n_bytes + byte_offsets, byte_offsets < n_bytes, CHUNK,
    )


@triton.jit
def _kwta_backward_kernel(grad_y_ptr, bits_ptr, grad_x_ptr, n, CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1).to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
    in_row = offsets < n
    packed = tl.load(bits_ptr + row * ((n + 7) // 8) + offsets // 8, mask=in_row, other=0)
    winners = ((packed.to(tl.int32) >> (offsets % 8).to(tl.int32)) & 1) != 0
    grad_y = tl.load(grad_y_ptr + row * n + offsets, mask=in_row, other=0.0)
    tl.store(grad_x_ptr + row * n + offsets, tl.where(winners, grad_y, 0.0), mask=in_row)


def _num_passes(dtype: torch.dtype) -> int:
    return 3 if dtype == torch.float32 else 2


def kwta_forward(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k-WTA of each row of a contiguous 2-D tensor: (y, winner_bits of shape (rows, ceil(N / 8)))."""
    n_rows, n = rows.shape
    y = torch.empty_like(rows)
    winner_bits = torch.empty((n_rows, (n + 7) // 8), dtype=torch.uint8, device=rows.device)
    num_passes = _num_passes(rows.dtype)
    if n <= TILE:
        # The 2048-bin histogram, not the row, sets the register budget: spread over one warp it takes
        # 254 registers per thread (BLOCK 512, ptxas); over four, 72-127 up to BLOCK 2048.
        block = max(triton.next_power_of_2(n), MIN_BLOCK)
        _kwta_row_kernel[(n_rows,)](rows, y, winner_bits, n, k, BLOCK=block, NUM_PASSES=num_passes,
                                    num_warps=4 if block <= 2048 else 8)
        return y, winner_bits
    grid = (n_rows, triton.cdiv(n, TILE))
    hist = torch.zeros((n_rows, num_passes, BINS.value), dtype=torch.int32, device=rows.device)
    for p in range(num_passes):
        _kwta_hist_kernel[grid](rows, hist, n, k, PASS=p, NUM_PASSES=num_passes, CHUNK=TILE, num_warps=8)
    _kwta_mask_kernel[grid](rows, y, winner_bits, hist, n, k, NUM_PASSES=num_passes, CHUNK=TILE, num_warps=8)
    return y, winner_bits


def kwta_backward(grad_y: torch.Tensor, winner_bits: torch.Tensor) -> torch.Tensor:
    """grad_x = grad_y where the winner bit is set, +0.0 elsewhere (contiguous 2-D tensors)."""
    n_rows, n = grad_y.shape
    grad_x = torch.empty_like(grad_y)
    grid = (n_rows, triton.cdiv(n, TILE))
    _kwta_backward_kernel[grid](grad_y, winner_bits, grad_x, n, CHUNK=TILE, num_warps=8)
    return grad_x
