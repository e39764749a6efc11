"""The fast CPU path: the Triton kernel's radix-histogram select, in numba.

Math. Each float is read as its raw bits and mapped to an integer key of the same width,
    key = +|x|bits for x >= 0,   -|x|bits for x < 0,   |inf|bits + 1 for NaN,
so -0.0 and +0.0 share key 0, NaN sits above +inf, and ordering keys orders the floats exactly as
docs/operator.md says. The threshold key T, the k-th largest key of a row, is found digit by digit, most
significant first, as in kernels/triton_kwta.py:
    float32            11 / 11 / 10 bits                 (2048, 2048, 1024 bins)
    float16, bfloat16  11 /  5 bits                      (their own 16-bit keys: two passes)
    float64            11 / 11 / 11 / 11 / 10 / 10 bits  (64-bit keys)
Each pass histograms one digit of the remaining candidates, and the bin holding the k-th largest
becomes the next prefix. Only the first pass reads the whole row; it also keeps every element's
first digit (16 bits). The keys whose first digit matched the chosen bin (a few percent of a row of
activations: sign, exponent and two mantissa bits give about four bins per octave) are then copied
to a candidate buffer, and every later pass works on that buffer alone, compacting it in place.
So float64 keeps 64-bit keys and eleven-bit digits: its four extra digits are passes over a few
percent of a row, where a wider first digit would give every thread a histogram of 4096 or more
bins for each element to hit. Then winners = key >= T (ties at T and NaN all win), and a last read
of the row writes y (x's bits on winners, +0.0 elsewhere) and one bit per element (bit i % 8 of
byte i // 8). Working on raw bits makes one path serve every float dtype bit-exactly.

Speed. The first pass and the candidate copy work in blocks of BLOCK elements: keys, digits and
match bits are computed in vectorised loops; only the histogram increments (one per element) and
the copy of the matches (visited by their set bits) are scalar. Histogram indices are unsigned,
which spares numba's negative-index fix-up on each increment.

Bytes per float32 element, forward: read x (4), write its first digit and read it back (2 + 2, in
L2), the matches' keys (a few percent of 4 + 4), read x again (4, from L2 when a row fits it), write
y (4) and 1/8 byte of mask: about 16.4, against the floor's 8.125 (read x, write y and the mask).
Backward: read grad_y and 1/8 byte of mask, write grad_x: 8.125.

Threads. torch.get_num_threads() threads share the work; below PARALLEL_MIN_ELEMENTS it all runs
in the calling thread. Blocks of rows are shared by the calling thread and a pool of helpers (numba
releases the GIL), each taking the next block when it is free. When rows are fewer than threads,
each row is cut into chunks, as the GPU splits rows over programs: the chunks histogram in parallel,
their histograms merge, each chunk copies its candidates to the offset its own histogram gives, and
the chunks write y and the mask in parallel. The helpers are a plain ThreadPoolExecutor rather than
numba's OpenMP layer: numba's OpenMP runtime is not torch's, and the workers of each spin for a
while after every parallel region (libgomp's GOMP_SPINCOUNT), taking the cores from the other's
next op.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
from numba.cpython.unsafe.numbers import trailing_zeros

from .reference import mask_bytes

# dtype -> (integer view of the same width, bits of +inf)
_FORMATS = {
    torch.float16: (torch.int16, 0x7C00),
    torch.bfloat16: (torch.int16, 0x7F80),
    torch.float32: (torch.int32, 0x7F800000),
    torch.float64: (torch.int64, 0x7FF0000000000000),
}
FIRST_DIGIT_BITS = 11
BINS = 1 << FIRST_DIGIT_BITS  # the widest digit; later digits are at most as wide
BLOCK = 512  # elements per block of the first two reads: the block's scratch stays in L1
SMALL_ROW = 4 * BINS  # shorter rows histogram in one scalar loop that tracks the bins it touches
SORT_MAX = 32  # this many keys or fewer are ranked directly rather than histogrammed
PARALLEL_MIN_ELEMENTS = 1 << 16  # below this, handing work to threads costs more than it saves
TASKS_PER_THREAD = 2  # row blocks per thread: a thread slowed by another job leaves its share to the others
SPLIT_MIN_CHUNK = 1 << 15  # elements per chunk of a split row: below it merging costs more than it saves


@numba.njit(inline="always")
def _order_key(bits, abs_mask, inf):
    b = np.int64(bits)
    magnitude = b & abs_mask
    sign = b >> 63  # 0 or -1: branch-free negation, since signs are a coin flip on activations
    key = (magnitude ^ sign) - sign
    return inf + 1 if magnitude > inf else key


@numba.njit(inline="always")
def _first_digit(key, shift):
    """The top FIRST_DIGIT_BITS of a key as a bin in [0, BINS) (the arithmetic shift keeps the sign)."""
    return (key >> shift) + (BINS >> 1)


@numba.njit(inline="always")
def _next_width(shift):
    """The width of the next digit below `shift` bits: the rest split into near-equal digits of at most 11."""
    passes = (shift + FIRST_DIGIT_BITS - 1) // FIRST_DIGIT_BITS
    return (shift + passes - 1) // passes


@numba.njit(inline="always")
def _histogram_first_digit(row, abs_mask, inf, shift, hist, digits):
    """Add the row's first digits to hist and keep them in digits; return a range of bins holding them all."""
    n = row.shape[0]
    if n < SMALL_ROW:  # few elements: track the bins touched, so selecting and clearing skip the rest
        low, high = BINS, -1
        for i in range(n):
            digit = _first_digit(_order_key(row[i], abs_mask, inf), shift)
            digits[i] = digit
            hist[np.uintp(digit)] += 1
            low = min(low, digit)
            high = max(high, digit)
        return low, high
    # In blocks: keys and digits vectorise, only the counting stays scalar; unsigned indices spare
    # numba's negative-index fix-up on every increment.
    for start in range(0, n, BLOCK):
        block, block_digits = row[start : start + BLOCK], digits[start : start + BLOCK]
        for i in range(block.shape[0]):
            block_digits[i] = _first_digit(_order_key(block[i], abs_mask, inf), shift)
        for i in range(block.shape[0]):
            hist[np.uintp(block_digits[i])] += 1
    return 0, BINS - 1


@numba.njit(inline="always")
def _select_bin(hist, low, high, k_left, count):
    """(bin holding the k_left-th largest of the count values in hist[low..high], the rank within that bin).

    It scans from whichever end is nearer that rank: a large k would otherwise walk every bin of the
    small magnitudes (hundreds of exponents) on its way down.
    """
    if 2 * k_left <= count:
        above = 0
        chosen = high
        while above + hist[chosen] < k_left:
            above += hist[chosen]
            chosen -= 1
        return chosen, k_left - above
    rank_from_bottom = count - k_left + 1
    below = 0
    chosen = low
    while below + hist[chosen] < rank_from_bottom:
        below += hist[chosen]
        chosen += 1
    return chosen, k_left - (count - below - hist[chosen])


@numba.njit(inline="always")
def _kth_largest(candidates, m, k_left):
    """The k_left-th largest of the first m keys: the largest key that at least k_left keys reach.

    For the last handful of candidates, where a radix pass costs more in bins than in keys: m * m
    compares without a branch, as radix sorts hand small buckets to a simpler sort.
    """
    threshold = np.int64(-(1 << 62)) * 2  # below every key
    for i in range(m):
        key = np.int64(candidates[i])
        reach = 0
        for j in range(m):
            reach += candidates[j] >= key
        threshold = max(threshold, key if reach >= k_left else threshold)
    return threshold


@numba.njit(inline="always")
def _collect_candidates(row, digits, abs_mask, inf, chosen, out, start, matches):
    """Write the keys whose first digit (kept by the first pass) is `chosen` to out[start:]; return where they end.

    A few percent match, so each block first packs its matches into 64-bit words (16-bit compares,
    vectorised) and then visits only their set bits.
    """
    m = start
    n = row.shape[0]
    words = matches.view(np.uint64)
    target = np.uint16(chosen)  # compared as 16-bit lanes, not widened to 64
    full = n - n % BLOCK
    for block_start in range(0, full, BLOCK):
        block_digits = digits[block_start : block_start + BLOCK]
        for byte in range(BLOCK // 8):
            packed = np.uint8(0)
            for bit in range(8):
                packed |= np.uint8(block_digits[8 * byte + bit] == target) << np.uint8(bit)
            matches[byte] = packed
        for w in range(BLOCK // 64):
            word = words[w]
            while word:
                i = block_start + 64 * w + trailing_zeros(word)
                out[np.uintp(m)] = _order_key(row[i], abs_mask, inf)
                m += 1
                word &= word - np.uint64(1)
    for i in range(full, n):
        if digits[i] == target:
            out[np.uintp(m)] = _order_key(row[i], abs_mask, inf)
            m += 1
    return m


@numba.njit(inline="always")
def _narrow(candidates, m, prefix, shift, k_left, hist):
    """The later passes on the m candidate keys (first digits = prefix, shift bits left): the threshold key."""
    while shift > 0:
        if m <= SORT_MAX:
            return _kth_largest(candidates, m, k_left)
        width = _next_width(shift)
        shift -= width
        digit_mask = (1 << width) - 1
        low, high = BINS, -1
        for i in range(m):
            digit = (candidates[i] >> shift) & digit_mask
            hist[np.uintp(digit)] += 1
            low = min(low, digit)
            high = max(high, digit)
        chosen, k_left = _select_bin(hist, low, high, k_left, m)
        if m < high - low:  # clear what was counted: the keys' own bins when they are fewer
            for i in range(m):
                hist[np.uintp((candidates[i] >> shift) & digit_mask)] = 0
        else:
            hist[low : high + 1] = 0
        prefix = (prefix << width) | chosen
        kept = 0
        for i in range(m):  # compact in place, branch-free: a key is always written, kept on a match
            key = candidates[i]
            candidates[np.uintp(kept)] = key
            kept += (key >> shift) == prefix
        m = kept
    return prefix


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


@numba.njit(nogil=True, cache=True)
def _forward_rows(x_bits, k, abs_mask, inf, key_bits, y_bits, winner_bits):
    """The whole forward of each row, one after another, with one histogram and candidate buffer."""
    shift = key_bits - FIRST_DIGIT_BITS
    hist = np.zeros(BINS, np.int64)
    digits = np.empty(x_bits.shape[1], np.uint16)
    candidates = np.empty(x_bits.shape[1], x_bits.dtype)
    matches = np.empty(BLOCK // 8, np.uint8)
    n = x_bits.shape[1]
    for r in range(x_bits.shape[0]):
        row = x_bits[r]
        if n <= SORT_MAX:  # a handful of elements: rank their keys directly
            for i in range(n):
                candidates[i] = _order_key(row[i], abs_mask, inf)
            threshold = _kth_largest(candidates, n, k)
        else:
            low, high = _histogram_first_digit(row, abs_mask, inf, shift, hist, digits)
            chosen, k_left = _select_bin(hist, low, high, k, n)
            if n < high - low:  # clear what was counted: the elements' own bins when they are fewer
                for i in range(n):
                    hist[np.uintp(digits[i])] = 0
            else:
                hist[low : high + 1] = 0
            m = _collect_candidates(row, digits, abs_mask, inf, chosen, candidates, 0, matches)
            threshold = _narrow(candidates, m, chosen - (BINS >> 1), shift, k_left, hist)
        _mask_row(row, threshold, abs_mask, inf, y_bits[r], winner_bits[r])


# The split path's steps, each over one chunk of one row (or, for the cheap ones, every row).


@numba.njit(nogil=True, cache=True)
def _histogram_chunk(chunk, abs_mask, inf, key_bits, hist, digits):
    _histogram_first_digit(chunk, abs_mask, inf, key_bits - FIRST_DIGIT_BITS, hist, digits)


@numba.njit(nogil=True, cache=True)
def _merge_first_digits(hist, k):
    """From each row's chunk histograms: the chosen first digit, the rank left, and where each chunk's
    candidates start in the row's buffer (the last column is the row's candidate count)."""
    n_rows, chunks, _ = hist.shape
    chosen = np.empty(n_rows, np.int64)
    k_left = np.empty(n_rows, np.int64)
    starts = np.zeros((n_rows, chunks + 1), np.int64)
    for r in range(n_rows):
        chosen[r], k_left[r] = _select_bin(hist[r].sum(axis=0), 0, BINS - 1, k, hist[r].sum())
        starts[r, 1:] = np.cumsum(hist[r, :, chosen[r]])
    return chosen, k_left, starts


@numba.njit(nogil=True, cache=True)
def _collect_chunk(chunk, digits, abs_mask, inf, chosen, out, start):
    _collect_candidates(chunk, digits, abs_mask, inf, chosen, out, start, np.empty(BLOCK // 8, np.uint8))


@numba.njit(nogil=True, cache=True)
def _narrow_rows(candidates, counts, chosen, key_bits, k_left):
    thresholds = np.empty(candidates.shape[0], np.int64)
    hist = np.zeros(BINS, np.int64)
    for r in range(candidates.shape[0]):
        prefix = chosen[r] - (BINS >> 1)
        thresholds[r] = _narrow(candidates[r], counts[r], prefix, key_bits - FIRST_DIGIT_BITS, k_left[r], hist)
    return thresholds


@numba.njit(nogil=True, cache=True)
def _mask_rows(x_bits, thresholds, abs_mask, inf, y_bits, winner_bits):
    for r in range(x_bits.shape[0]):
        _mask_row(x_bits[r], thresholds[r], abs_mask, inf, y_bits[r], winner_bits[r])


@numba.njit(nogil=True, cache=True)
def _backward_rows(grad_bits, winner_bits, out_bits):
    for r in range(grad_bits.shape[0]):
        _unmask_row(grad_bits[r], winner_bits[r], out_bits[r])


# ---------------------------------------------------------------- threads

_helpers: dict[int, ThreadPoolExecutor] = {}  # by thread count: the calling thread is the other one


def _forget_helpers() -> None:
    _helpers.clear()  # a forked child inherits the executors but none of their threads


os.register_at_fork(after_in_child=_forget_helpers)


def _run(function, calls: list[tuple]) -> None:
    """function(*args) for every args in calls, on torch's CPU thread count; returns when all are done.

    The calling thread works too, and every thread takes the next call when it is free, so a thread that
    another job (or another pool's spinning worker) slows down simply takes fewer calls.
    """
    threads = min(torch.get_num_threads(), len(calls))
    if threads == 1:
        for args in calls:
            function(*args)
        return
    if threads not in _helpers:
        _helpers[threads] = ThreadPoolExecutor(threads - 1, thread_name_prefix="kwta-cpu")
    pending = iter(calls)  # next() on a list iterator is atomic under the GIL

    def work():
        for args in pending:
            function(*args)

    helpers = [_helpers[threads].submit(work) for _ in range(threads - 1)]
    work()
    for helper in helpers:
        helper.result()


def _threads(t: torch.Tensor) -> int:
    return torch.get_num_threads() if t.numel() >= PARALLEL_MIN_ELEMENTS else 1


def _row_blocks(n_rows: int, threads: int) -> list[slice]:
    tasks = min(n_rows, TASKS_PER_THREAD * threads)
    return [slice(t * n_rows // tasks, (t + 1) * n_rows // tasks) for t in range(tasks)]


def _chunks(n: int, n_rows: int, threads: int) -> list[slice]:
    """Column chunks of whole blocks (so whole mask bytes) that give every thread work on n_rows rows."""
    count = min(-(-threads // n_rows), n // SPLIT_MIN_CHUNK)
    length = -(-n // (BLOCK * count)) * BLOCK
    return [slice(start, min(start + length, n)) for start in range(0, n, length)]


def _mask_bytes(columns: slice) -> slice:
    return slice(columns.start // 8, -(-columns.stop // 8))


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.view(_FORMATS[t.dtype][0]).numpy()


# ---------------------------------------------------------------- entry points


def kwta_forward(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k-WTA of each row of a contiguous 2-D CPU tensor: (y, the winner mask, (rows, mask_bytes(N)) bytes)."""
    n_rows, n = rows.shape
    inf = _FORMATS[rows.dtype][1]
    key_bits = 8 * rows.element_size()
    abs_mask = (1 << (key_bits - 1)) - 1
    y = torch.empty_like(rows)
    winner_bits = torch.zeros((n_rows, mask_bytes(n)), dtype=torch.uint8)  # the padding stays zero
    x_bits, y_bits, packed = _bits(rows), _bits(y), winner_bits.numpy()
    threads = _threads(rows)
    if threads == 1:
        _forward_rows(x_bits, k, abs_mask, inf, key_bits, y_bits, packed)
    elif n_rows >= threads or n < 2 * SPLIT_MIN_CHUNK:
        _run(_forward_rows, [(x_bits[b], k, abs_mask, inf, key_bits, y_bits[b], packed[b])
                             for b in _row_blocks(n_rows, threads)])
    else:
        _forward_split(x_bits, k, abs_mask, inf, key_bits, y_bits, packed, _chunks(n, n_rows, threads))
    return y, winner_bits


def _forward_split(x_bits, k, abs_mask, inf, key_bits, y_bits, packed, chunks: list[slice]) -> None:
    """Few long rows: chunks histogram, collect candidates and mask in parallel; the rest is per row."""
    n_rows = x_bits.shape[0]
    pieces = [(r, c, columns) for r in range(n_rows) for c, columns in enumerate(chunks)]
    hist = np.zeros((n_rows, len(chunks), BINS), np.int64)
    digits = np.empty(x_bits.shape, np.uint16)
    _run(_histogram_chunk, [(x_bits[r, columns], abs_mask, inf, key_bits, hist[r, c], digits[r, columns])
                            for r, c, columns in pieces])
    chosen, k_left, starts = _merge_first_digits(hist, k)
    candidates = np.empty((n_rows, starts[:, -1].max()), x_bits.dtype)
    _run(_collect_chunk, [(x_bits[r, columns], digits[r, columns], abs_mask, inf, chosen[r], candidates[r],
                           starts[r, c]) for r, c, columns in pieces])
    thresholds = _narrow_rows(candidates, starts[:, -1], chosen, key_bits, k_left)
    _run(_mask_rows, [(x_bits[r : r + 1, columns], thresholds[r : r + 1], abs_mask, inf, y_bits[r : r + 1, columns],
                       packed[r : r + 1, _mask_bytes(columns)]) for r, _, columns in pieces])


def kwta_backward(grad_y: torch.Tensor, winner_bits: torch.Tensor) -> torch.Tensor:
    """grad_x = grad_y where the winner bit is set, +0.0 elsewhere (contiguous 2-D CPU tensors)."""
    grad_x = torch.empty_like(grad_y)
    grad_bits, packed, out_bits = _bits(grad_y), winner_bits.numpy(), _bits(grad_x)
    n_rows, n = grad_bits.shape
    threads = _threads(grad_y)
    if threads == 1:
        _backward_rows(grad_bits, packed, out_bits)
    elif n_rows >= threads or n < 2 * SPLIT_MIN_CHUNK:
        _run(_backward_rows, [(grad_bits[b], packed[b], out_bits[b]) for b in _row_blocks(n_rows, threads)])
    else:
        _run(_backward_rows, [(grad_bits[r : r + 1, c], packed[r : r + 1, _mask_bytes(c)], out_bits[r : r + 1, c])
                              for r in range(n_rows) for c in _chunks(n, n_rows, threads)])
    return grad_x
