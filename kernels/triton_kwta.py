"""Fused Triton k-WTA: each row's k-th largest value by a radix-histogram select (a sort for short rows), then
the mask.

Math. Each element becomes an order-preserving int32 key (float16 and bfloat16 are widened to float32
first, which is exact):
    key = +|x|bits for x >= 0,   -|x|bits for x < 0,   NAN_KEY (just above +inf's) for NaN,
so -0.0 and +0.0 share key 0 and NaN orders above +inf, as docs/operator.md specifies. The threshold key T
is the k-th largest key of the row, found digit by digit, most significant first: each pass histograms one
digit of the remaining candidates, and the bin that holds the k-th largest becomes the next prefix. A
digit of WIDTH bits takes bits 31 - WIDTH * p down to 32 - WIDTH * (p + 1) in pass p (the last one
narrower where WIDTH does not divide 32; the first holds the sign). Widened 16-bit floats have at least 13
zero low bits (NaN's key 21), so their passes stop at bit 13; keys from their own 16 bits would take as many
passes (4 of 5 bits, 2 of 11), so they are widened. The widths, chosen from the compiled code
(SASS instructions per element on sm_90, Triton 3.8 and 3.6, kernels/aot.py):
  * one program per row: ROW_DIGIT_WIDTH = 5, 32 bins (one per lane of a warp), 7 passes for float32 and 4
    for 16-bit floats. Every pass zeroes and scans its bins whatever N is, and Triton 3.6 lowers
    tl.histogram by warp ballots at about bins / 32 instructions per element, so few bins cost least on
    both versions. float32, BLOCK 512 / 2048, Triton 3.8 then 3.6:
        | width | passes | 3.8 | 3.6 |
        |---|---|---|---|
        | 4 | 8 | 190 / 139 | 346 / 250 |
        | 5 | 7 | 149 / 114 | 310 / 231 |
        | 6 | 6 | 165 / 118 | 346 / 255 |
        | 8 | 4 | 170 / 101 | 424 / 308 |
        | 11 (11, 11, 10) | 3 | 435 / 182 | 1080 / 806 |
    5 bits is the least at every BLOCK on 3.6 and at BLOCK 512 on 3.8, and within 13% of 8 bits at BLOCK
    1024-2048 there.
  * split rows: 11, 11 and 10 bits (2048, 2048 and 1024 bins). Pass 0 runs over the whole row, and its
    chosen bin is all that the second launch leaves undecided: 2048 bins leave a few percent of a row
    (a quarter of a binade), where 32 bins (whole exponent ranges) would leave most of it to the row's
    last program. Its later passes run on that list alone.
Then winners = key >= T (ties at T and NaN all win), y = x on winners and +0.0 elsewhere, and one bit
per element (bit i % 8 of byte i // 8, rows padded to whole 32-bit words: kernels/reference.py's mask
layout) records the winners for the backward.

Three forward paths, all free of host synchronisation (no .item(), grid sizes depend on shapes only),
so the op can be captured in CUDA graphs:
  * rows of N <= SHORT_ROW_MAX (256; 512 where tl.histogram lowers to ballots): sorted, up to 4 rows and
    512 elements to a one-warp program (short_row_layout). tl.sort puts each row's keys in descending
    order, so its k-th largest is the k-th entry, and the winners are the keys at or above it (ties and
    NaN included). No bins: the cost follows log2(N)**2 and is the same on Triton 3.6 and 3.8. SASS
    instructions per element slot (sm_90, the worst dtype), BLOCK 32 / 64 / 128 / 256 / 512: 117 / 133 /
    152 / 178 / 196, where the one-program kernel costs 213 at BLOCK 256 and 149 at 512 on 3.8 (388 and
    310 on 3.6): hence the bound per version. An all-pairs compare of rows up to 32 cost 231-316 (784 on
    3.6 with 16-bit inputs). Bytes per element: the floor, as below.
  * rows of N <= ROW_MAX (2048): one program per row holds the row in registers for every pass.
    Bytes per element: read x, write y, write 1/8 mask -> 2 * itemsize + 0.125 (the floor).
  * longer rows: chunks of TILE over a 2-D grid, two launches, each ending in a hand-over: every program
    takes a ticket from a per-row counter after its own work, and the program that draws the last one
    finishes the row for all of them (no program waits for another, so co-residency is never assumed):
      1. each chunk adds its pass-0 histogram into the row's (relaxed atomics: nothing reads it before the
         ticket), by tl.histogram and one add per nonzero bin, or one add per element where tl.histogram
         lowers to ballots; the last one picks the bin and leaves (prefix, k_left), two ints, for launch 2;
      2. each chunk writes y and the mask bits of every element pass 0 already decides (above or below the
         chosen bin) and appends the rest, the chosen bin's few percent, to the row's candidate list (raw
         bits and position); the last one runs the remaining passes over that list and writes the
         candidates' y and mask bits (32-bit atomic OR).
    Bytes per element: two reads of x, write y, 1/8 mask -> 3 * itemsize + 0.125, plus the candidates'
    list (8 bytes each, written once and read once per remaining pass) and a 2048-bin histogram per chunk
    in atomics (4 bytes per element where each element adds itself); no program re-reads another's
    histogram. The list's buffer is allocated (torch.empty, no launch) for every element, since a row's
    candidates can be all of it: 8 bytes per element of memory, of which only the chosen bin's few percent
    is touched. The per-row scratch is STATE_WORDS int32: the
    histogram, tickets and cursor, which every call leaves zero, and the (prefix, k_left) state, written
    before it is read. So it is allocated once per device and stream and no memset precedes a call (under
    CUDA-graph capture each call zeroes its own, a memset node).
    kernels/cost.py counts all of this from the launches themselves.
Backward: read grad_y and the 1/8-byte mask, write grad_x -> 2 * itemsize + 0.125 bytes per element.
All offsets are int64, so tensors past 2**31 elements stay correct.

Resources per program, as ptxas reports them for every specialization the launchers make on sm_80 and
sm_90 (`python -m kwta.kernels.aot`, with the pinned Triton and with PYTHONPATH=.venv/triton-3.6.0;
tests/test_aot.py fails on any spill), and SASS instructions per element (static, per thread over the
elements it holds; the split kernels' count includes the last program's finishing code):
    | kernel | warps | Triton | registers/thread | shared memory (B) | spills | SASS/element (sm_90) |
    |---|---|---|---|---|---|---|
    | _kwta_backward_kernel | 8 | 3.8.0 | 14-60 | 0 | 0 | 2-18 |
    | _kwta_backward_kernel | 8 | 3.6.0 | 14-57 | 0 | 0 | 2-18 |
    | _kwta_short_rows_kernel | 1 | 3.8.0 | 30-96 | 0-64 | 0 | 89-178 |
    | _kwta_short_rows_kernel | 1 | 3.6.0 | 30-96 | 16-64 | 0 | 108-196 |
    | _kwta_row_kernel | 4 | 3.8.0 | 28-40 | 128 | 0 | 62-149 |
    | _kwta_row_kernel | 4 | 3.6.0 | 56 | 128 | 0 | 151-230 |
    | _kwta_row_kernel | 8 | 3.8.0 | 32-40 | 128-256 | 0 | 62-114 |
    | _kwta_row_kernel | 8 | 3.6.0 | 48-80 | 256 | 0 | 151-231 |
    | _kwta_split_hist_kernel | 8 | 3.8.0 | 30-37 | 8192 | 0 | 31-38 |
    | _kwta_split_hist_kernel | 8 | 3.6.0 | 48 | 64 | 0 | 35-38 |
    | _kwta_split_mask_kernel | 8 | 3.8.0 | 108-147 | 8192-32768 | 0 | 84-140 |
    | _kwta_split_mask_kernel | 8 | 3.6.0 | 127-158 | 8192 | 0 | 140-168 |

Triton features used: tl.histogram, tl.sort, atomics with sem= (relaxed, acq_rel), atomic_or,
cache_modifier ".cg", tl.debug_barrier, data-dependent if and for: all in Triton 3.6, the oldest version
supported (what torch 2.11 brings). Tritons before 3.8 (3.6.0 and 3.7.1 compiled here) lower tl.histogram
by warp ballots and popcounts, about bins / 32 instructions per element, where 3.8 issues one shared-memory
atomic per element. Hence 32-bin digits where one program holds the row, and on those versions the sort up
to rows of 512 and per-element atomics for the split path's pass 0 (HISTOGRAM_BY_BALLOT). Per kernel and
dtype, 3.6 then costs at most 1.55 times 3.8's instructions per element (tests/test_aot.py holds it to 2).

Under TRITON_INTERPRET=1 these kernels run on CPU tensors (tests/). Interpreter facts that shaped the
code: tl.histogram drops out-of-range digits where the GPU wraps them, so every digit is masked into
range; only int32 arithmetic is used on keys (no uint32 `~`). The interpreter also reads plain module
globals that the GPU compiler rejects, which is why kernels/aot.py compiles every specialization.
"""

import contextlib
import re

import torch
import triton
import triton.language as tl


def _triton_version(version: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


# Tritons before HISTOGRAM_BY_ATOMICS (3.7.1 and 3.6.0 compiled here) lower tl.histogram by warp ballots and
# popcounts, about bins / 32 instructions per element: 2048 bins made the split histogram kernel 253-259 SASS
# instructions per element on 3.6 (225 for a bare 2048-bin tl.histogram on 3.7.1), against 31-38 with 3.8's
# one shared-memory atomic per element. On those versions each element of a split row adds itself to the
# row's histogram instead (35-38).
HISTOGRAM_BY_ATOMICS = (3, 8)
HISTOGRAM_BY_BALLOT = _triton_version(triton.__version__) < HISTOGRAM_BY_ATOMICS

TILE = 4096  # elements per program of the split path (and a bound on the one-program path's rows)
# A jitted function may read a module global only when it is a constexpr: the interpreter reads plain
# globals too, but the compiler for real GPUs rejects them (kernels/aot.py checks every specialization).
BINS = tl.constexpr(2048)
# The one-program path takes rows up to ROW_MAX elements, with 4 warps up to BLOCK 1024 and 8 at 2048 (23-80
# registers per thread with 32-bin digits). Longer rows take the split path, whose chunks spread a row over
# many SMs.
ROW_MAX = 2048
LAST_BINS = tl.constexpr(1024)  # the 10-bit digit of float32's pass 2
CANDIDATE_BLOCK = 256  # candidates the split path's last program narrows per step
ROW_DIGIT_WIDTH = 5  # bits per digit of the one-program path: 32 bins, one per lane of a warp (see above)


@triton.jit
def _order_key(x):
    bits = x.to(tl.float32).to(tl.int32, bitcast=True)
    magnitude = bits & 0x7FFFFFFF
    key = tl.where(bits < 0, -magnitude, magnitude)
    # NaN's key 0x7F800000 + 2**21 sits above +inf's and keeps 21 low zero bits, as 16-bit floats do
    return tl.where(magnitude > 0x7F800000, 0x7FA00000, key)


@triton.jit
def _digit(key, PASS: tl.constexpr, WIDTH: tl.constexpr):
    """Digit PASS of a key, most significant first: bits 31 - WIDTH * PASS down to 32 - WIDTH * (PASS + 1) (or
    0: the last digit may be narrower). The first holds the sign, offset by half its bins to sort unsigned."""
    if 32 - WIDTH * (PASS + 1) > 0:
        digit = key >> (32 - WIDTH * (PASS + 1))
        if PASS == 0:
            digit += 1 << (WIDTH - 1)
        digit = digit & ((1 << WIDTH) - 1)
    else:
        digit = key & ((1 << (32 - WIDTH * PASS)) - 1)
    return digit


@triton.jit
def _is_candidate(key, prefix, PASS: tl.constexpr, WIDTH: tl.constexpr):
    """Whether `key` matched the digits chosen by the passes before PASS (prefix = key >> their shift)."""
    if PASS == 0:
        match = key == key
    else:
        match = (key >> (32 - WIDTH * PASS)) == prefix
    return match


@triton.jit
def _descend(prefix, chosen_bin, PASS: tl.constexpr, WIDTH: tl.constexpr):
    """The prefix (key >> the shift of pass PASS) once bin `chosen_bin` of pass PASS holds the k-th largest."""
    if PASS == 0:
        prefix = chosen_bin - (1 << (WIDTH - 1))
    elif 32 - WIDTH * (PASS + 1) > 0:
        prefix = prefix * (1 << WIDTH) + chosen_bin
    else:
        prefix = prefix * (1 << (32 - WIDTH * PASS)) + chosen_bin
    return prefix


@triton.jit
def _threshold_key(prefix, NUM_PASSES: tl.constexpr, WIDTH: tl.constexpr):
    """The threshold key once NUM_PASSES digits are chosen (the bits below them are zero in every key that
    needs fewer passes: widened 16-bit floats)."""
    if 32 - WIDTH * NUM_PASSES > 0:
        threshold = prefix * (1 << (32 - WIDTH * NUM_PASSES))
    else:
        threshold = prefix
    return threshold


@triton.jit
def _select_bin(hist, k_left, BINS: tl.constexpr):
    """The bin of `hist` holding the k_left-th largest candidate, and k_left within that bin."""
    above = tl.sum(hist, 0) - tl.cumsum(hist, 0)  # candidates in higher bins
    chosen_bin = tl.sum((above >= k_left).to(tl.int32), 0)
    above_chosen = tl.sum(tl.where(tl.arange(0, BINS) == chosen_bin, above, 0), 0)
    return chosen_bin, k_left - above_chosen


@triton.jit
def _histogram_select(digit, mask, k_left, NUM_BINS: tl.constexpr):
    return _select_bin(tl.histogram(digit, NUM_BINS, mask=mask), k_left, NUM_BINS)


@triton.jit
def _pack_bytes(winners, BLOCK: tl.constexpr):
    """Bit i % 8 of byte i // 8 for each element i of a BLOCK: the mask's bytes (packing eight lanes, not 32,
    keeps the reduction's layout small: 32-lane packing made Triton 3.6 spill the one-program kernel)."""
    shifts = tl.arange(0, 8)[None, :]
    return tl.sum(tl.reshape(winners.to(tl.int32), (BLOCK // 8, 8)) << shifts, 1).to(tl.uint8)


@triton.jit(do_not_specialize=["k"])
def _kwta_row_kernel(x_ptr, y_ptr, mask_ptr, n, k, BLOCK: tl.constexpr, NUM_PASSES: tl.constexpr,
                     WIDTH: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK)
    in_row = offsets < n
    x = tl.load(x_ptr + row * n + offsets, mask=in_row, other=0.0)
    key = _order_key(x)
    prefix = 0
    k_left = k
    for p in tl.static_range(NUM_PASSES):
        candidates = in_row & _is_candidate(key, prefix, p, WIDTH)
        if 32 - WIDTH * (p + 1) >= 0:
            chosen_bin, k_left = _histogram_select(_digit(key, p, WIDTH), candidates, k_left, 1 << WIDTH)
        else:  # the last digit, narrower
            chosen_bin, k_left = _histogram_select(_digit(key, p, WIDTH), candidates, k_left, 1 << (32 - WIDTH * p))
        prefix = _descend(prefix, chosen_bin, p, WIDTH)
    winners = in_row & (key >= _threshold_key(prefix, NUM_PASSES, WIDTH))
    tl.store(y_ptr + row * n + offsets, tl.where(winners, x, 0.0), mask=in_row)
    n_bytes = 4 * ((n + 31) // 32)  # whole words: the padding bytes get zero bits
    byte_offsets = tl.arange(0, BLOCK // 8)
    tl.store(mask_ptr + row * n_bytes + byte_offsets, _pack_bytes(winners, BLOCK), mask=byte_offsets < n_bytes)


# Rows up to SHORT_ROW_MAX are sorted, up to SHORT_ROW_ELEMENTS elements (and 4 rows) to a one-warp program:
# the sort costs the same on every Triton, and beats the 32-bin histogram of the next path up to rows of 256
# on Triton 3.8 and of 512 where tl.histogram lowers to ballots (the module docstring's table).
SHORT_ROW_MAX = 512 if HISTOGRAM_BY_BALLOT else 256
SHORT_ROW_ELEMENTS = 512


def short_row_layout(n: int) -> tuple[int, int]:
    """(BLOCK, rows per program) of the sort path for rows of n <= SHORT_ROW_MAX."""
    block = max(triton.next_power_of_2(n), 32)  # whole 32-bit mask words
    return block, max(1, min(4, SHORT_ROW_ELEMENTS // block))


@triton.jit(do_not_specialize=["k"])
def _kwta_short_rows_kernel(x_ptr, y_ptr, words_ptr, n_rows, n, k, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """ROWS rows of n <= BLOCK elements per program, each sorted by key (tl.sort: a bitonic network of
    log2(BLOCK) * (log2(BLOCK) + 1) / 2 compare-and-swap stages), so its k-th largest key is the k-th
    entry; winners are the keys at or above it, ties and NaN included. No histogram and no bins: the cost
    follows log(n)**2."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    columns = tl.arange(0, BLOCK)
    inside = (rows[:, None] < n_rows) & (columns[None, :] < n)
    x = tl.load(x_ptr + rows[:, None] * n + columns[None, :], mask=inside, other=0.0)
    key = tl.where(inside, _order_key(x), -2147483648)  # below every real key: padding sorts last
    ordered = tl.sort(key, 1, descending=True)
    threshold = tl.sum(tl.where(columns[None, :] == k - 1, ordered, 0), 1)  # the k-th largest of each row
    winners = inside & (key >= threshold[:, None])
    tl.store(y_ptr + rows[:, None] * n + columns[None, :], tl.where(winners, x, 0.0), mask=inside)
    # the mask in whole 32-bit words, bit i % 32 of word i // 32 (little-endian: the byte layout); lanes
    # past n give zero bits
    n_words = (n + 31) // 32
    lanes = tl.arange(0, 32)[None, None, :]
    words = tl.sum(tl.reshape(winners.to(tl.int32), (ROWS, BLOCK // 32, 32)) << lanes, 2)
    word_index = tl.arange(0, BLOCK // 32)[None, :]
    tl.store(words_ptr + rows[:, None] * n_words + word_index, words,
             mask=(rows[:, None] < n_rows) & (word_index < n_words))


# The split path's per-row scratch (int32): the pass-0 histogram, two tickets and the candidate cursor, which
# every call leaves zero for the next one, then the (prefix, k_left) state the first launch leaves.
TICKET_0 = tl.constexpr(2048)
TICKET_1 = tl.constexpr(2049)
CURSOR = tl.constexpr(2050)
PREFIX = tl.constexpr(2051)
K_LEFT = tl.constexpr(2052)
STATE_WORDS = tl.constexpr(2056)  # a multiple of 8 (32-byte rows)


@triton.jit(do_not_specialize=["k"])
def _kwta_split_hist_kernel(x_ptr, state_ptr, n, k, CHUNK: tl.constexpr, ATOMIC_HISTOGRAM: tl.constexpr):
    """Pass 0 of a long row: each chunk adds its histogram to the row's; the last chunk to finish picks the bin.
    ATOMIC_HISTOGRAM: each element adds its own 1 to the row's bin, for Tritons whose tl.histogram costs
    about bins / 32 instructions per element (HISTOGRAM_BY_BALLOT)."""
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1).to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
    in_row = offsets < n
    key = _order_key(tl.load(x_ptr + row * n + offsets, mask=in_row, other=0.0))
    state = state_ptr + row * STATE_WORDS
    bins = tl.arange(0, BINS)
    # relaxed: nothing reads the histogram before the ticket below says every chunk has added to it
    if ATOMIC_HISTOGRAM:
        tl.atomic_add(state + _digit(key, 0, 11), 1, mask=in_row, sem="relaxed")
    else:
        hist = tl.histogram(_digit(key, 0, 11), BINS, mask=in_row)
        tl.atomic_add(state + bins, hist, mask=hist > 0, sem="relaxed")
    tl.debug_barrier()  # every thread's adds, then one release: the ticket
    ticket = tl.atomic_add(state + TICKET_0, 1, sem="acq_rel")
    if ticket == tl.num_programs(1) - 1:
        total = tl.load(state + bins, cache_modifier=".cg")
        chosen_bin, k_left = _select_bin(total, k, BINS)
        tl.store(state + PREFIX, _descend(0, chosen_bin, 0, 11))
        tl.store(state + K_LEFT, k_left)
        tl.store(state + bins, tl.zeros([BINS], tl.int32))
        tl.store(state + TICKET_0, 0)


@triton.jit(do_not_specialize=["k"])
def _kwta_split_mask_kernel(x_ptr, y_ptr, mask_ptr, words_ptr, state_ptr, cand_bits_ptr, cand_pos_ptr, n,
                            NUM_PASSES: tl.constexpr, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr):
    """Every element pass 0 decides gets its y and mask bit; the rest (the chosen bin's) are appended to the
    row's candidate list, which the last chunk to finish narrows with the remaining passes and writes."""
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1).to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
    in_row = offsets < n
    state = state_ptr + row * STATE_WORDS
    prefix = tl.load(state + PREFIX)
    x = tl.load(x_ptr + row * n + offsets, mask=in_row, other=0.0)
    key = _order_key(x)
    top = key >> 21
    winners = in_row & (top > prefix)
    undecided = in_row & (top == prefix)
    tl.store(y_ptr + row * n + offsets, tl.where(winners, x, 0.0), mask=in_row & ~undecided)
    n_words = (n + 31) // 32
    byte_offsets = tl.program_id(1).to(tl.int64) * (CHUNK // 8) + tl.arange(0, CHUNK // 8)
    tl.store(mask_ptr + row * 4 * n_words + byte_offsets, _pack_bytes(winners, CHUNK), mask=byte_offsets < 4 * n_words)
    # Append the undecided: this chunk's slots start where the row's cursor stood.
    slot = tl.atomic_add(state + CURSOR, tl.sum(undecided.to(tl.int32), 0), sem="relaxed")
    slot += tl.cumsum(undecided.to(tl.int32), 0) - 1
    tl.store(cand_bits_ptr + row * n + slot, _raw_bits(x), mask=undecided)
    tl.store(cand_pos_ptr + row * n + slot, offsets.to(tl.int32), mask=undecided)
    tl.debug_barrier()
    ticket = tl.atomic_add(state + TICKET_1, 1, sem="acq_rel")
    if ticket == tl.num_programs(1) - 1:
        count = tl.load(state + CURSOR, cache_modifier=".cg")
        k_left = tl.load(state + K_LEFT)
        _narrow_and_write(y_ptr + row * n, words_ptr + row * n_words, cand_bits_ptr + row * n,
                          cand_pos_ptr + row * n, count, prefix, k_left, NUM_PASSES, BLOCK_C)
        tl.store(state + CURSOR, 0)
        tl.store(state + TICKET_1, 0)


@triton.jit
def _raw_bits(x):
    """x's own bits in an int32 (16-bit floats in the low half): kept as they are, NaN payloads included."""
    if x.dtype == tl.float32:
        bits = x.to(tl.int32, bitcast=True)
    else:
        bits = x.to(tl.int16, bitcast=True).to(tl.int32)
    return bits


@triton.jit
def _from_raw_bits(bits, DTYPE: tl.constexpr):
    if DTYPE == tl.float32:
        x = bits.to(tl.float32, bitcast=True)
    else:
        x = bits.to(tl.int16).to(DTYPE, bitcast=True)
    return x


@triton.jit
def _candidate_keys(cand_bits, start, lanes, count, DTYPE: tl.constexpr):
    valid = start + lanes < count
    x = _from_raw_bits(tl.load(cand_bits + start + lanes, mask=valid, other=0, cache_modifier=".cg"), DTYPE)
    return x, _order_key(x), valid


@triton.jit
def _narrow(cand_bits, count, prefix, k_left, PASS: tl.constexpr, NUM_BINS: tl.constexpr, DTYPE: tl.constexpr,
            BLOCK_C: tl.constexpr):
    """One later pass over a row's `count` candidates: (the new prefix, k_left)."""
    lanes = tl.arange(0, BLOCK_C)
    hist = tl.zeros([NUM_BINS], tl.int32)
    for start in range(0, count, BLOCK_C):
        _, key, valid = _candidate_keys(cand_bits, start, lanes, count, DTYPE)
        hist += tl.histogram(_digit(key, PASS, 11), NUM_BINS, mask=valid & _is_candidate(key, prefix, PASS, 11))
    chosen_bin, k_left = _select_bin(hist, k_left, NUM_BINS)
    return _descend(prefix, chosen_bin, PASS, 11), k_left


@triton.jit
def _narrow_and_write(y_row, words, cand_bits, cand_pos, count, prefix, k_left, NUM_PASSES: tl.constexpr,
                      BLOCK_C: tl.constexpr):
    """Passes 1.. over a row's `count` candidates (their bits and positions), then their y and mask bits."""
    dtype = y_row.dtype.element_ty
    prefix, k_left = _narrow(cand_bits, count, prefix, k_left, 1, BINS, dtype, BLOCK_C)
    if NUM_PASSES == 3:
        prefix, k_left = _narrow(cand_bits, count, prefix, k_left, 2, LAST_BINS, dtype, BLOCK_C)
    threshold = _threshold_key(prefix, NUM_PASSES, 11)
    lanes = tl.arange(0, BLOCK_C)
    for start in range(0, count, BLOCK_C):
        x, key, valid = _candidate_keys(cand_bits, start, lanes, count, dtype)
        position = tl.load(cand_pos + start + lanes, mask=valid, other=0, cache_modifier=".cg")
        winners = valid & (key >= threshold)
        tl.store(y_row + position, tl.where(winners, x, 0.0), mask=valid)
        tl.atomic_or(words + (position >> 5), 1 << (position & 31), mask=winners, sem="relaxed")


@triton.jit
def _kwta_backward_kernel(grad_y_ptr, words_ptr, grad_x_ptr, n, CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1).to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
    in_row = offsets < n
    packed = tl.load(words_ptr + row * ((n + 31) // 32) + offsets // 32, mask=in_row, other=0)
    winners = ((packed >> (offsets % 32).to(tl.int32)) & 1) != 0
    grad_y = tl.load(grad_y_ptr + row * n + offsets, mask=in_row, other=0.0)
    tl.store(grad_x_ptr + row * n + offsets, tl.where(winners, grad_y, 0.0), mask=in_row)


def _num_passes(dtype: torch.dtype, width: int) -> int:
    """Digits of `width` bits (the last one narrower) that decide a key: float32's 32 bits, or the top 19 of
    a widened 16-bit float, whose low 13 bits are zero (NaN's key has 21)."""
    return -(-(32 if dtype == torch.float32 else 19) // width)



@contextlib.contextmanager
def launcher_settings(**settings):
    """This module's launcher settings (HISTOGRAM_BY_BALLOT, ROW_DIGIT_WIDTH, SHORT_ROW_MAX, ...) changed for
    the block, then restored: what kernels/cost.py and the GPU check use to try each choice both ways."""
    here = globals()  # what the launchers read at each call
    before = {name: here[name] for name in settings}
    here.update(settings)
    try:
        yield
    finally:
        here.update(before)


_states: dict[tuple, torch.Tensor] = {}  # (device, stream) -> the split path's scratch, all zero between calls


def _state(n_rows: int, device: torch.device) -> torch.Tensor:
    """The split path's per-row scratch: every call leaves it zero, so it is allocated (and zeroed) once per
    device and stream and grows as needed. Under CUDA-graph capture each call gets its own zeroed buffer
    (a memset node in the graph), so replays never share one with eager calls."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return torch.zeros((n_rows, STATE_WORDS.value), dtype=torch.int32, device=device)
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    state = _states.get((device, stream))
    if state is None or state.shape[0] < n_rows:
        state = _states[(device, stream)] = torch.zeros((n_rows, STATE_WORDS.value), dtype=torch.int32, device=device)
    return state


def kwta_forward(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k-WTA of each row of a contiguous 2-D tensor: (y, the winner mask, (rows, mask_bytes(N)) bytes)."""
    n_rows, n = rows.shape
    y = torch.empty_like(rows)
    words = torch.empty((n_rows, (n + 31) // 32), dtype=torch.int32, device=rows.device)  # the mask, as words
    mask = words.view(torch.uint8)  # and as bytes
    if n <= SHORT_ROW_MAX:
        block, rows_per_program = short_row_layout(n)
        _kwta_short_rows_kernel[(triton.cdiv(n_rows, rows_per_program),)](
            rows, y, words, n_rows, n, k, ROWS=rows_per_program, BLOCK=block, num_warps=1)
        return y, mask
    if n <= min(ROW_MAX, TILE):
        block = triton.next_power_of_2(n)
        _kwta_row_kernel[(n_rows,)](rows, y, mask, n, k, BLOCK=block,
                                    NUM_PASSES=_num_passes(rows.dtype, ROW_DIGIT_WIDTH), WIDTH=ROW_DIGIT_WIDTH,
                                    num_warps=8 if block == 2048 else 4)
        return y, mask
    grid = (n_rows, triton.cdiv(n, TILE))
    state = _state(n_rows, rows.device)
    candidates = torch.empty((2, n_rows, n), dtype=torch.int32, device=rows.device)  # bits, positions
    try:
        _kwta_split_hist_kernel[grid](rows, state, n, k, CHUNK=TILE, ATOMIC_HISTOGRAM=HISTOGRAM_BY_BALLOT,
                                      num_warps=8)
        _kwta_split_mask_kernel[grid](rows, y, mask, words, state, candidates[0], candidates[1], n,
                                      NUM_PASSES=_num_passes(rows.dtype, 11), CHUNK=TILE, BLOCK_C=CANDIDATE_BLOCK,
                                      num_warps=8)
    except BaseException:
        _states.clear()  # a launch that failed part-way may leave its scratch dirty
        raise
    return y, mask


def kwta_backward(grad_y: torch.Tensor, winner_bits: torch.Tensor) -> torch.Tensor:
    """grad_x = grad_y where the winner bit is set, +0.0 elsewhere (contiguous 2-D tensors)."""
    n_rows, n = grad_y.shape
    grad_x = torch.empty_like(grad_y)
    grid = (n_rows, triton.cdiv(n, TILE))
    _kwta_backward_kernel[grid](grad_y, winner_bits.view(torch.int32), grad_x, n, CHUNK=TILE, num_warps=8)
    return grad_x
