"""The cost report's counts (kernels/cost.py): the counter itself on kernels whose traffic is known, then
the launchers against the budgets written beside them."""

import pytest
import torch

triton = pytest.importorskip("triton")
if not triton.knobs.runtime.interpret:
    pytest.skip("the traffic is counted under Triton's interpreter", allow_module_level=True)

import triton.language as tl  # noqa: E402
from kwta.kernels import cost  # noqa: E402


@triton.jit
def _copy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offsets, tl.load(x_ptr + offsets, mask=offsets < n), mask=offsets < n)


@triton.jit
def _count_kernel(x_ptr, counts_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    positive = tl.load(x_ptr + offsets, mask=offsets < n, other=0.0) > 0
    tl.atomic_add(counts_ptr + positive.to(tl.int32), 1, mask=offsets < n, sem="relaxed")


@triton.jit
def _words_kernel(words_ptr, y_ptr, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(y_ptr + offsets, tl.load(words_ptr + offsets // 32))  # 32 lanes read each word


def test_lanes_that_share_an_address_share_its_bytes():
    words, y = torch.arange(4, dtype=torch.int32), torch.empty(128, dtype=torch.int32)
    with cost.count({"words": words, "y": y}, 128) as traffic:
        _words_kernel[(1,)](words, y, BLOCK=128)
    assert traffic.read == {"words": 16} and traffic.written == {"y": 512}


def test_the_counter_sees_every_active_lane_once_and_names_the_tensors():
    x = torch.randn(1000)
    named = {"x": x}
    with cost.count(named, x.numel()) as traffic:
        y = torch.empty_like(x)
        named["y"] = y
        _copy_kernel[(triton.cdiv(1000, 256),)](x, y, 1000, BLOCK=256)  # 24 masked-off lanes
    assert torch.equal(x, y)
    assert traffic.read == {"x": 4000} and traffic.written == {"y": 4000}
    assert traffic.launches == ["_copy_kernel"] and traffic.scratch_bytes == 0
    assert traffic.full_reads("x") == 1.0


def test_the_counter_counts_scratch_atomics_and_torch_launches():
    x = torch.randn(300)
    with cost.count({"x": x}, x.numel()) as traffic:
        counts = torch.zeros(2, dtype=torch.int32)  # a memset on a GPU: a launch of its own
        _count_kernel[(3,)](x, counts, 300, BLOCK=128)
    assert counts.tolist() == [int((x <= 0).sum()), int((x > 0).sum())]
    assert traffic.launches == ["torch:zeros", "_count_kernel"]
    assert traffic.atomic == {"scratch": 300 * 4} and traffic.scratch_bytes == 8


@pytest.mark.parametrize("case", list(cost.TRAFFIC_BUDGETS))
def test_each_launcher_stays_within_its_traffic_budget(case):
    budget = cost.TRAFFIC_BUDGETS[case]
    traffic = cost.measure(case)
    report = cost.summarize(traffic)
    over = {name: (report[name], limit) for name, limit in budget.items() if report[name] > limit}
    assert not over, f"{case}: over budget (counted, budget): {over}"
