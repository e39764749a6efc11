"""What only a GPU can show: the compiled Triton kernels inside CUDA graphs and torch.compile's inductor,
and a bf16 / channels-last training step of every architecture with k-WTA. Marked `cuda`: skipped, not
failed, without a GPU (tests/conftest.py). test_ops.py runs every bit-exactness case on CUDA as well
when there is one. `make gpu-check` runs these with the benchmark's GPU targets."""

import pytest
import torch
import torch.nn.functional as F

from kwta import KWTA, kwta
from kwta.functional import resolve_backend
from kwta.models import ARCHS, MIN_INPUT_SIZE, build_model

pytestmark = pytest.mark.cuda


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({torch.float32: torch.int32}.get(t.dtype, torch.int16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [1000, 20_000])  # one program per row, and rows split over programs
def test_forward_and_backward_replay_in_a_cuda_graph(dtype, n):
    """No host synchronisation and shape-only launch sizes: the op can be captured and replayed."""
    x = torch.randn(8, n, device="cuda", dtype=dtype, requires_grad=True)
    grad_y = torch.randn_like(x)
    eager_y = kwta(x, 0.1)
    (eager_grad,) = torch.autograd.grad(eager_y, x, grad_y)

    static_x = x.detach().clone().requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up compiles the kernels outside the capture
        torch.autograd.grad(kwta(static_x, 0.1), static_x, grad_y)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = kwta(static_x, 0.1)
        (static_grad,) = torch.autograd.grad(static_y, static_x, grad_y)
    with torch.no_grad():
        static_x.copy_(x)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(bits(static_y), bits(eager_y)) and torch.equal(bits(static_grad), bits(eager_grad))


def test_inductor_compiles_a_kwta_network_in_one_graph():
    torch.manual_seed(0)
    layer = torch.nn.Sequential(KWTA(0.2), torch.nn.Flatten()).cuda()
    x = torch.randn(4, 16, 8, 8, device="cuda", requires_grad=True)
    compiled_layer = torch.compile(layer, fullgraph=True)  # inductor, the default backend
    assert torch.equal(bits(compiled_layer(x)), bits(layer(x)))  # the op is opaque to inductor: same bits

    model = build_model("resnet18-cifar", activation="kwta", ratio=0.1).cuda().to(memory_format=torch.channels_last)
    compiled = torch.compile(model, fullgraph=True)
    images = torch.rand(8, 3, 32, 32, device="cuda").to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(compiled(images), torch.randint(10, (8,), device="cuda"))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_channels_last_training_step(arch):
    """train.py's GPU recipe, one step: channels-last, bf16 autocast, k-WTA on the Triton kernel."""
    torch.manual_seed(0)
    size = max(32, MIN_INPUT_SIZE[arch])
    model = build_model(arch, activation="kwta", ratio=0.1).cuda().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.rand(16, 3, size, size, device="cuda").to(memory_format=torch.channels_last)
    labels = torch.randint(10, (16,), device="cuda")
    assert resolve_backend(images, "auto") == "triton"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
