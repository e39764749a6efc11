"""What one call of the Triton launchers costs, counted rather than estimated.

    TRITON_INTERPRET=1 python -m kwta.kernels.cost          # the split path's fp32 32x64x32x32 and others

Under Triton's interpreter every program of every launch really runs, so each tl.load, tl.store and
atomic can be seen with its addresses and mask. `count` runs a workload with the interpreter's memory
operations wrapped and adds up, per tensor the caller names (x, y, mask, grad_y, grad_x) and for all
other memory together (scratch), the bytes each operation of a program touches:
    bytes read    loads: the distinct bytes its active lanes address (lanes that share a word, as a
                  mask word's 32 readers do, share its transfer),
    bytes written stores, likewise,
    bytes atomic  atomic read-modify-writes: every active lane's element (each is its own update at L2),
and the distinct scratch bytes touched. Launches are counted too: every Triton kernel launch, and every
torch op the launcher calls that would put a kernel on a GPU stream (a memset by torch.zeros, a copy);
allocations (torch.empty) and views launch nothing and are not counted.

These are the bytes the kernels ask for, before any cache: on a GPU a re-read of a row that sits in L2
costs less than one from memory. "Full reads of x" = bytes read from x / x's size. The SASS instruction
counts per element come from the compiled cubins (kernels/aot.py), since the interpreter has no ISA.
"""

import argparse
import contextlib
import json
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that only allocate or re-view memory: no kernel runs for them on a GPU.
_FREE_OPS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "view", "_unsafe_view",
             "as_strided", "reshape", "_reshape_alias", "alias", "detach", "t", "transpose", "permute", "expand",
             "slice", "select", "unsqueeze", "squeeze", "lift_fresh", "resolve_conj", "resolve_neg"}


@dataclass
class Traffic:
    """What one workload moved: bytes per named tensor and for scratch, launches in order."""

    elements: int  # of x: the unit of every per-element figure
    read: dict = field(default_factory=dict)  # name -> bytes
    written: dict = field(default_factory=dict)
    atomic: dict = field(default_factory=dict)
    scratch_bytes: int = 0  # distinct bytes of memory outside the named tensors that any op touched
    launches: list = field(default_factory=list)  # kernel names; torch ops as "torch:<op>"
    x_itemsize: int = 4  # bytes per element of x

    def full_reads(self, name: str = "x") -> float:
        """Bytes read from a tensor of `elements` elements of x's dtype, over its size."""
        return self.read.get(name, 0) / (self.elements * self.x_itemsize)

    @property
    def x_reads(self) -> float:
        return self.full_reads("x")


class _TorchLaunches(TorchDispatchMode):
    """Records the torch ops (outside the interpreter's own copies) that would launch a GPU kernel."""

    def __init__(self, launches: list):
        super().__init__()
        self.launches = launches
        self.inside_kernel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.inside_kernel and name not in _FREE_OPS:
            self.launches.append(f"torch:{name}")
        return func(*args, **(kwargs or {}))


def _regions(tensors: dict[str, torch.Tensor]):
    """Sorted (start, end, name) address ranges of the named tensors."""
    spans = []
    for name, tensor in tensors.items():
        start = tensor.data_ptr()
        spans.append((start, start + tensor.numel() * tensor.element_size(), name))
    return sorted(spans)


@contextlib.contextmanager
def count(tensors: dict[str, torch.Tensor], elements: int):
    """Within the block, add up what the interpreted kernels move; yields the Traffic, filled on exit.

    `tensors` names the memory the caller knows (x, y, ...); outputs allocated inside the block may be
    added to the dict before it ends. Everything else is scratch. Needs TRITON_INTERPRET=1 before triton
    was first imported."""
    from triton import knobs
    from triton.runtime import interpreter

    if not knobs.runtime.interpret:
        raise RuntimeError("TRITON_INTERPRET is not set: counting needs Triton's interpreter")
    traffic = Traffic(elements=elements, x_itemsize=tensors["x"].element_size() if "x" in tensors else 4)
    events: list[tuple[str, int, np.ndarray]] = []  # (kind, itemsize, addresses of the active lanes)
    builder = interpreter.interpreter_builder

    def tally(kind: str, ptrs, mask) -> None:
        addresses = np.asarray(ptrs.data, dtype=np.uint64)
        active = np.broadcast_to(np.asarray(getattr(mask, "data", mask), dtype=bool), addresses.shape)
        events.append((kind, ptrs.get_element_ty().primitive_bitwidth // 8, addresses[active]))

    originals = {name: getattr(builder, name) for name in
                 ("create_masked_load", "create_masked_store", "create_atomic_rmw", "create_atomic_cas")}

    def masked_load(ptrs, mask, *args):
        tally("read", ptrs, mask)
        return originals["create_masked_load"](ptrs, mask, *args)

    def masked_store(ptrs, value, mask, *args):
        tally("written", ptrs, mask)
        return originals["create_masked_store"](ptrs, value, mask, *args)

    def atomic_rmw(op, ptr, val, mask, *args):
        tally("atomic", ptr, mask)
        return originals["create_atomic_rmw"](op, ptr, val, mask, *args)

    def atomic_cas(ptr, cmp, val, *args):
        tally("atomic", ptr, True)
        return originals["create_atomic_cas"](ptr, cmp, val, *args)

    launch = interpreter.GridExecutor.__call__
    mode = _TorchLaunches(traffic.launches)

    def grid_call(executor, *args, **kwargs):
        traffic.launches.append(executor.fn.__name__)
        mode.inside_kernel += 1
        try:
            return launch(executor, *args, **kwargs)
        finally:
            mode.inside_kernel -= 1

    for name, wrapped in (("create_masked_load", masked_load), ("create_masked_store", masked_store),
                          ("create_atomic_rmw", atomic_rmw), ("create_atomic_cas", atomic_cas)):
        setattr(builder, name, wrapped)
    interpreter.GridExecutor.__call__ = grid_call
    try:
        with mode:
            yield traffic
    finally:
        for name, original in originals.items():
            setattr(builder, name, original)
        interpreter.GridExecutor.__call__ = launch
    _resolve(traffic, events, _regions(tensors))


def _resolve(traffic: Traffic, events, spans) -> None:
    """Add each event's bytes to the named tensor its addresses fall in, or to scratch."""
    starts = np.array([start for start, _, _ in spans], dtype=np.uint64)
    scratch = []
    for kind, itemsize, addresses in events:
        if kind != "atomic":  # lanes of one load or store that share an address share its transfer
            addresses = np.unique(addresses)
        table = getattr(traffic, kind)
        where = np.searchsorted(starts, addresses, side="right") - 1
        named = np.zeros(addresses.shape, dtype=bool)
        for index, (_, end, name) in enumerate(spans):
            hits = (where == index) & (addresses < end)
            if hits.any():
                named |= hits
                table[name] = table.get(name, 0) + int(hits.sum()) * itemsize
        outside = addresses[~named]
        if outside.size:
            table["scratch"] = table.get("scratch", 0) + outside.size * itemsize
            scratch.append((outside[:, None] + np.arange(itemsize, dtype=np.uint64)).ravel())
    traffic.scratch_bytes = int(np.unique(np.concatenate(scratch)).size) if scratch else 0


def _rows_and_k(shape: tuple[int, ...], ratio: float, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, int]:
    """A (batch, ...) activation flattened per sample, as the launchers get it, and its k."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    rows = x.reshape(shape[0], -1)
    return rows, max(1, int(ratio * rows.shape[1]))


def forward_traffic(shape: tuple[int, ...], ratio: float = 0.2, dtype: torch.dtype = torch.float32,
                    seed: int = 0) -> Traffic:
    """One forward of the Triton launcher, after a first split call on as many rows (the split path's scratch
    is allocated and zeroed once per device and stream: a memset that only the first call makes)."""
    from . import triton_kwta

    rows, k = _rows_and_k(shape, ratio, dtype, seed)
    triton_kwta.kwta_forward(torch.randn(rows.shape[0], triton_kwta.TILE + 1).to(dtype), 1)  # as many rows, split
    named = {"x": rows}
    with count(named, rows.numel()) as traffic:
        named["y"], named["mask"] = triton_kwta.kwta_forward(rows, k)
    return traffic


def backward_traffic(shape: tuple[int, ...], ratio: float = 0.2, dtype: torch.dtype = torch.float32,
                     seed: int = 0) -> Traffic:
    """One backward of the Triton launcher, on the mask a forward of the same shape left."""
    from . import triton_kwta

    rows, k = _rows_and_k(shape, ratio, dtype, seed)
    _, mask = triton_kwta.kwta_forward(rows, k)
    named = {"grad_y": torch.ones_like(rows), "mask": mask}
    with count(named, rows.numel()) as traffic:
        named["grad_x"] = triton_kwta.kwta_backward(named["grad_y"], mask)
    return traffic


# name -> (direction, shape, dtype, the launcher module's settings): rows are shape[0] samples of
# prod(shape[1:]) elements. The split path's pass-0 histogram depends on the Triton version (tl.histogram, or
# per-element atomics where tl.histogram lowers to ballots: triton_kwta.HISTOGRAM_BY_BALLOT); both are counted.
HISTOGRAM = {"HISTOGRAM_BY_BALLOT": False}
ATOMICS = {"HISTOGRAM_BY_BALLOT": True}
CASES = {
    "forward split fp32 32x64x32x32": ("forward", (32, 64, 32, 32), torch.float32, HISTOGRAM),  # ResNet18 at CIFAR
    "forward split fp32 32x64x32x32, atomics": ("forward", (32, 64, 32, 32), torch.float32, ATOMICS),
    "forward split bf16 32x64x32x32": ("forward", (32, 64, 32, 32), torch.bfloat16, HISTOGRAM),
    "forward split bf16 32x64x32x32, atomics": ("forward", (32, 64, 32, 32), torch.bfloat16, ATOMICS),
    "forward row fp32 64x16": ("forward", (64, 16), torch.float32),  # channel mode on 4x4 maps: short rows
    "forward row fp32 64x2048": ("forward", (64, 2048), torch.float32),
    "backward fp32 8x64x32x32": ("backward", (8, 64, 32, 32), torch.float32),
}

# The most each case may cost, as counted by summarize(); a change that goes past one fails tests/test_cost.py.
TRAFFIC_BUDGETS = {
    "forward split fp32 32x64x32x32": {"launches": 2, "x_reads": 2.0, "bytes_per_element": 13.5,
                                       "scratch_read_per_element": 0.75, "scratch_bytes_per_element": 0.45},
    # one 4-byte atomic per element into the row's histogram (at L2 on a GPU), where tl.histogram adds each
    # chunk's nonzero bins
    "forward split fp32 32x64x32x32, atomics": {"launches": 2, "x_reads": 2.0, "bytes_per_element": 17.5,
                                                "scratch_read_per_element": 0.75, "scratch_bytes_per_element": 0.45},
    "forward split bf16 32x64x32x32": {"launches": 2, "x_reads": 2.0, "bytes_per_element": 7.3,
                                       "scratch_read_per_element": 0.6, "scratch_bytes_per_element": 0.45},
    "forward split bf16 32x64x32x32, atomics": {"launches": 2, "x_reads": 2.0, "bytes_per_element": 11.5,
                                                "scratch_read_per_element": 0.6, "scratch_bytes_per_element": 0.45},
    # one whole 32-bit mask word per row of 16: 0.25 bytes of mask per element
    "forward row fp32 64x16": {"launches": 1, "x_reads": 1.0, "bytes_per_element": 8.25,
                                "scratch_read_per_element": 0.0, "scratch_bytes_per_element": 0.0},
    "forward row fp32 64x2048": {"launches": 1, "x_reads": 1.0, "bytes_per_element": 8.125,
                                 "scratch_read_per_element": 0.0, "scratch_bytes_per_element": 0.0},
    "backward fp32 8x64x32x32": {"launches": 1, "x_reads": 0.0, "bytes_per_element": 8.125,
                                 "scratch_read_per_element": 0.0, "scratch_bytes_per_element": 0.0},
}

# The most SASS instructions per element (kernels/aot.py's Compiled.per_element) of any sm_90 specialization
# of each kernel, for the pinned Triton and for 3.6, about 5-10% above what they compile to; tests/test_aot.py
# holds every compile to them. The sort kernel's worst case is its widest BLOCK (256 on the pinned Triton,
# 512 on 3.6); the one-program kernel's is its narrowest (512 on the pinned Triton, 1024 on 3.6).
SASS_BUDGETS = {
    "pinned": {"_kwta_short_rows_kernel": 190, "_kwta_row_kernel": 160, "_kwta_split_hist_kernel": 40,
               "_kwta_split_mask_kernel": 147, "_kwta_backward_kernel": 18.5},
    "3.6": {"_kwta_short_rows_kernel": 210, "_kwta_row_kernel": 245, "_kwta_split_hist_kernel": 40,
            "_kwta_split_mask_kernel": 177, "_kwta_backward_kernel": 18.5},
}

# On Triton 3.6 each kernel may cost at most OLDEST_RATIO times the pinned Triton's SASS instructions per
# element, per dtype (the worst specialization of each).
OLDEST_RATIO = 2.0


def measure(case: str) -> Traffic:
    from . import triton_kwta

    direction, shape, dtype, *settings = CASES[case]
    with triton_kwta.launcher_settings(**(settings[0] if settings else {})):
        return (forward_traffic if direction == "forward" else backward_traffic)(shape, dtype=dtype)


def summarize(traffic: Traffic) -> dict[str, float]:
    """The figures the budgets bound: launches, full reads of x, all bytes moved and scratch, per element."""
    moved = sum(sum(table.values()) for table in (traffic.read, traffic.written, traffic.atomic))
    return {
        "launches": len(traffic.launches),
        "x_reads": traffic.x_reads,
        "bytes_per_element": moved / traffic.elements,
        "scratch_read_per_element": traffic.read.get("scratch", 0) / traffic.elements,
        "scratch_bytes_per_element": traffic.scratch_bytes / traffic.elements,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the report as JSON here too")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), metavar="CASE")
    args = parser.parse_args(argv)
    report = {}
    header = (f"{'case':42} {'launches':>8} {'x reads':>7} {'B/elem':>7} {'scratch rd B/elem':>17} "
              f"{'scratch B/elem':>14}  launches")
    print(header)
    print("-" * len(header))
    for case in args.cases:
        traffic = measure(case)
        figures = summarize(traffic)
        report[case] = figures | {"launch_names": traffic.launches, "read": traffic.read,
                                  "written": traffic.written, "atomic": traffic.atomic}
        print(f"{case:42} {figures['launches']:>8} {figures['x_reads']:>7.2f} {figures['bytes_per_element']:>7.3f} "
              f"{figures['scratch_read_per_element']:>17.3f} {figures['scratch_bytes_per_element']:>14.3f}  "
              + ", ".join(traffic.launches))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
