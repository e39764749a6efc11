"""Every backend of the k-WTA operator against kernels/reference.py, bit for bit.

The cpu backend runs on CPU tensors; triton runs on CUDA tensors where there is a GPU and otherwise on CPU
tensors in Triton's interpreter (tests/conftest.py), so the same cases check the compiled kernels on a GPU.
"""

import warnings

import pytest
import torch
from kwta.kernels import cpu, triton_kwta
from kwta.kernels.reference import kwta_reference, mask_bytes, resolve_k, row_shape, winner_mask

from kwta import KWTA, kwta, replace_relu
from kwta.functional import resolve_backend
from kwta.modules import set_ratio, surrogate_gradient

BACKENDS = ["cpu", "triton"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INT_VIEW = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor, so that -0.0 != +0.0 and NaN == NaN in comparisons."""
    return t.contiguous().view(INT_VIEW[t.dtype])


def assert_bit_identical(actual: torch.Tensor, expected: torch.Tensor):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    mismatch = bits(actual) != bits(expected)
    assert not mismatch.any(), f"{int(mismatch.sum())} elements differ, first at {mismatch.nonzero()[0].tolist()}"


def device_for(backend: str) -> str:
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def check_against_reference(x: torch.Tensor, backend: str, ratio=None, k=None, mode="vol"):
    x = x.to(device_for(backend))
    grad_y = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(x.dtype).to(x.device)
    x_ref = x.detach().clone().requires_grad_()
    x_dut = x.detach().clone().requires_grad_()
    y_ref = kwta_reference(x_ref, ratio, k=k, mode=mode)
    y_dut = kwta(x_dut, ratio, k=k, mode=mode, backend=backend)
    assert_bit_identical(y_dut, y_ref)
    y_ref.backward(grad_y)
    y_dut.backward(grad_y)
    assert_bit_identical(x_dut.grad, x_ref.grad)


def special_values(shape, dtype, seed):
    """Integer-valued (so full of ties) with NaN, +-inf and signed zeros sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-4, 5, shape, generator=g).to(dtype)
    flat = x.view(-1)
    picks = torch.randperm(flat.numel(), generator=g)
    specials = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, float("nan")]
    flat[picks[: len(specials)]] = torch.tensor(specials, dtype=dtype)
    return x


SHAPES = [(3, 37), (2, 3, 5, 7), (4, 1), (1, 1), (2, 5, 1, 1), (3, 3, 11), (2, 16, 9, 9)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["vol", "channel"])
def test_random_inputs_match_reference(backend, dtype, shape, mode):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))).to(dtype)
    for ratio in (0.1, 0.37, 1.0):
        check_against_reference(x, backend, ratio=ratio, mode=mode)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 41), (2, 4, 3, 3), (2, 300)])
def test_ties_nan_inf_signed_zeros_k_extremes(backend, dtype, shape):
    x = special_values(shape, dtype, seed=len(shape))
    n = row_shape(x.shape, "vol")[1]
    for k in (1, 2, n // 3, n - 1, n):
        check_against_reference(x, backend, k=k)


def test_reference_semantics_by_hand():
    x = torch.tensor([[3.0, float("nan"), 1.0, 3.0, -0.0, 0.0, -float("inf"), 2.0]])
    # k = 3: NaN, 3, 3 are the three largest; t = 3 and both threes win, NaN propagates.
    assert winner_mask(x, k=3).tolist() == [[True, True, False, True, False, False, False, False]]
    # k = 6: t = 0.0, and -0.0 == +0.0 ties with it, so both zeros win.
    assert winner_mask(x, k=6).tolist() == [[True, True, True, True, True, True, False, True]]
    # k = 1: t = NaN; only NaN wins.
    y = kwta_reference(x, k=1)
    assert y.isnan().tolist() == x.isnan().tolist() and (y.nan_to_num() == 0).all()
    assert resolve_k(10, 0.29, None) == 2 and resolve_k(3, 0.1, None) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_losers_are_positive_zero(backend):
    x = -torch.arange(1.0, 17.0).view(2, 8).to(device_for(backend))
    y = kwta(x, k=2, backend=backend)
    assert (bits(y[:, 2:]) == 0).all()  # +0.0, not -0.0 as x * mask would give


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend):
    base = torch.randn(6, 4, 10, 12)
    check_against_reference(base.transpose(2, 3), backend, ratio=0.2)
    check_against_reference(base[:, ::2, :, 1:], backend, ratio=0.2, mode="channel")
    channels_last = base.to(memory_format=torch.channels_last)
    check_against_reference(channels_last, backend, ratio=0.2)
    # vol-mode rows are read from channels-last storage as it lies, and y keeps that layout
    y = kwta(channels_last.to(device_for(backend)), 0.2, backend=backend)
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile", [64, 256])
@pytest.mark.parametrize("ballot", [False, True], ids=["histogram", "atomics"])
def test_triton_split_rows_match_reference(monkeypatch, dtype, tile, ballot):
    """Rows longer than a tile are split over programs that merge histograms with atomics; where Triton
    lowers tl.histogram by ballots, every element adds itself to the row's histogram instead."""
    monkeypatch.setattr(triton_kwta, "TILE", tile)
    monkeypatch.setattr(triton_kwta, "HISTOGRAM_BY_BALLOT", ballot)
    x = torch.randn(3, 1000, generator=torch.Generator().manual_seed(tile)).to(dtype)
    for k in (1, 500, 1000):
        check_against_reference(x, "triton", k=k)
    check_against_reference(special_values((2, 5, 7, 11), dtype, seed=3), "triton", ratio=0.25)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [5, 8, 11])
def test_triton_one_program_rows_match_reference_at_any_digit_width(monkeypatch, dtype, width):
    """Rows in one program (BLOCK 64 to 2048), by digits of `width` bits, the last one narrower where the
    width does not divide the key's bits: 5 (the launcher's; 7 passes for float32, 4 for 16-bit floats), 8, 11."""
    monkeypatch.setattr(triton_kwta, "ROW_DIGIT_WIDTH", width)
    monkeypatch.setattr(triton_kwta, "SHORT_ROW_MAX", 32)  # every row below goes to the one-program kernel
    generator = torch.Generator().manual_seed(width)
    for n in (33, 100, 700, 2048):
        x = (torch.randn(3, n, generator=generator) * 10.0 ** torch.randint(-3, 4, (3, n), generator=generator))
        for k in (1, n // 3, n):
            check_against_reference(x.to(dtype), "triton", k=k)
    check_against_reference(special_values((2, 5, 7, 11), dtype, seed=4), "triton", ratio=0.25)


@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_sorted_rows_match_reference_at_every_block(monkeypatch, dtype):
    """Rows of up to SHORT_ROW_MAX are sorted, 1 to 4 to a program, BLOCK 32 to 512 (512 is the bound where
    tl.histogram lowers to ballots, so it is forced here)."""
    monkeypatch.setattr(triton_kwta, "SHORT_ROW_MAX", 512)
    generator = torch.Generator().manual_seed(7)
    for n in (1, 2, 31, 33, 65, 129, 257):  # BLOCK 32, 64, 128, 256, 512, ragged
        check_against_reference(torch.randn(5, n, generator=generator).to(dtype), "triton", k=max(1, n // 2))
        if n >= 2:  # room for the six special values
            check_against_reference(special_values((3, n), dtype, seed=n), "triton", ratio=0.3)
    for k in (1, 33):
        check_against_reference(torch.randn(5, 33, generator=generator).to(dtype), "triton", k=k)


def test_triton_version_parsing():
    assert triton_kwta._triton_version("3.6.0") == (3, 6)
    assert triton_kwta._triton_version("3.10.1+git4f2c") == (3, 10)


def test_triton_split_path_hands_its_scratch_on_clean(monkeypatch):
    """Each call leaves the split path's per-row histogram, tickets and cursor zero, so the next call (other
    rows, other k, fewer rows than before) needs no memset; a call that fails part-way drops the scratch."""
    monkeypatch.setattr(triton_kwta, "TILE", 128)
    monkeypatch.setattr(triton_kwta, "_states", {})
    generator = torch.Generator().manual_seed(0)
    for n_rows, n, k in ((4, 1000, 300), (2, 700, 1), (4, 1000, 1000), (3, 129, 64)):
        check_against_reference(torch.randn(n_rows, n, generator=generator), "triton", k=k)
        (state,) = triton_kwta._states.values()
        handed_on = state[:, : triton_kwta.CURSOR.value + 1]  # the histogram, both tickets, the cursor
        assert state.shape[0] == 4 and not handed_on.any(), (n_rows, n, k)

    class FailingLaunch:  # the second launch fails after the first has filled the histogram
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise RuntimeError("launch failed")

            return launch

    monkeypatch.setattr(triton_kwta, "_kwta_split_mask_kernel", FailingLaunch())
    with pytest.raises(RuntimeError, match="launch failed"):
        triton_kwta.kwta_forward(torch.randn(2, 1000), 10)
    assert triton_kwta._states == {}


@pytest.mark.parametrize("n", [4096, 4097, 9000])
def test_triton_default_tile_boundary(n):
    x = torch.randn(2, n, generator=torch.Generator().manual_seed(n))
    check_against_reference(x, "triton", ratio=0.1)


@pytest.fixture
def torch_threads():
    """Set torch's CPU thread count (the cpu path's too) for one test and restore it afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float64])
def test_cpu_every_path_matches_reference(monkeypatch, torch_threads, dtype):
    """One thread; row blocks on a pool; rows split into chunks whose histograms merge (rows fewer than
    threads); rows shorter and longer than cpu.SMALL_ROW (two first-pass loops), none a multiple of
    cpu.BLOCK (the tail after the last block)."""
    monkeypatch.setattr(cpu, "SPLIT_MIN_CHUNK", 2 * cpu.BLOCK)  # split rows of a few thousand elements
    long_row = cpu.SMALL_ROW + 77
    for threads, parallel_min in ((1, cpu.PARALLEL_MIN_ELEMENTS), (3, 0)):
        torch_threads(threads)
        monkeypatch.setattr(cpu, "PARALLEL_MIN_ELEMENTS", parallel_min)
        check_against_reference(special_values((5, 3, 7, 11), dtype, seed=5), "cpu", ratio=0.3)
        check_against_reference(torch.randn(7, 301, generator=torch.Generator().manual_seed(7)).to(dtype), "cpu", k=13)
        for rows in (1, 2, 4):  # 3 threads: 3 chunks of one row, 2 chunks of each of two, row blocks
            x = special_values((rows, long_row), dtype, seed=rows)
            for k in (1, 97, long_row):
                check_against_reference(x, "cpu", k=k)
            x = torch.randn(rows, long_row, generator=torch.Generator().manual_seed(rows)).to(dtype)
            check_against_reference(x, "cpu", ratio=0.1)


NAN_BITS = {  # quiet, negative (x86's default NaN), signalling: one key for all of them, payloads kept
    torch.float32: [0x7FC00000, -0x400000, 0x7F800001],
    torch.float16: [0x7E00, -0x200, 0x7C01],
    torch.bfloat16: [0x7FC0, -0x40, 0x7F81],
    torch.float64: [0x7FF8000000000000, -0x8000000000000, 0x7FF0000000000001],
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_payloads_and_signs_all_win_bit_exact(backend, dtype):
    x = special_values((3, 50), dtype, seed=11)
    nans = torch.tensor(NAN_BITS[dtype] * 4, dtype=torch.int64).to(INT_VIEW[dtype]).view(dtype)
    x.view(-1)[torch.randperm(150, generator=torch.Generator().manual_seed(0))[: len(nans)]] = nans
    for k in (1, 5, 20, 50):
        check_against_reference(x, backend, k=k)


def test_cpu_float64_and_backends_share_one_mask_format():
    x = torch.randn(3, 5, 7, dtype=torch.float64)
    check_against_reference(x, "cpu", ratio=0.3)
    nans = torch.tensor(NAN_BITS[torch.float64] * 2, dtype=torch.int64).view(torch.float64)
    check_against_reference(torch.cat([special_values((2, 40), torch.float64, seed=2), nans.view(2, 3)], 1), "cpu", k=9)
    rows = torch.randn(4, 77)
    _, cpu_bits = torch.ops.kwta.cpu_forward(rows, 20)
    _, triton_bits = torch.ops.kwta.triton_forward(rows.to(device_for("triton")), 20)
    expected = winner_mask(rows, k=20)
    unpacked = (cpu_bits.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    assert cpu_bits.shape == (4, mask_bytes(77)) == (4, 12)  # 77 bits in three 32-bit words
    assert torch.equal(unpacked.view(4, -1)[:, :77].bool(), expected) and not unpacked.view(4, -1)[:, 77:].any()
    assert torch.equal(cpu_bits, triton_bits.cpu())


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    # distinct, well separated values so finite differences never move an element across the threshold
    x = (torch.randperm(2 * 3 * 4 * 5, generator=torch.Generator().manual_seed(0)).double() / 7).view(2, 3, 4, 5)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: kwta(t, 0.3, backend=backend), (x,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_for_backward_is_the_bit_mask(backend):
    x = torch.randn(4, 8, 6, 6, device=device_for(backend), requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        kwta(x, 0.2, backend=backend)
    assert [(t.dtype, tuple(t.shape)) for t in saved] == [(torch.uint8, (4, 8 * 36 // 8))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_traces_one_graph(backend):
    device = device_for(backend)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), KWTA(0.25, backend=backend), torch.nn.Flatten()).to(device)
    x = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    y.sum().backward()
    assert_bit_identical(y, model(x))


def test_empty_batch_returns_empty():
    for backend in ["reference", *BACKENDS]:
        y = kwta(torch.empty(0, 3, 4, 4, device=device_for(backend)), 0.5, backend=backend)
        assert y.shape == (0, 3, 4, 4)


@pytest.mark.parametrize(
    "call, error, text",
    [
        (lambda x: kwta(x, 0.0), ValueError, "ratio"),
        (lambda x: kwta(x, 1.5), ValueError, "ratio"),
        (lambda x: kwta(x, -0.2), ValueError, "ratio"),
        (lambda x: kwta(x, 0.5, k=3), ValueError, "exactly one"),
        (lambda x: kwta(x), ValueError, "exactly one"),
        (lambda x: kwta(x, k=0), ValueError, "k must"),
        (lambda x: kwta(x, k=49), ValueError, "k must"),
        (lambda x: kwta(x, k=2.0), ValueError, "k must"),
        (lambda x: kwta(x[0, 0, 0], 0.5), ValueError, "at least 2 dims"),
        (lambda x: kwta(x.long(), 0.5), TypeError, "floating"),
        (lambda x: kwta(x, 0.5, mode="spatial"), ValueError, "mode"),
        (lambda x: kwta(x, 0.5, backend="cuda"), ValueError, "backend"),
        (lambda x: kwta(x.double(), 0.5, backend="triton"), TypeError, "triton"),
        (lambda x: KWTA(0.5, mode="spatial"), ValueError, "mode"),
        (lambda x: KWTA(), ValueError, "exactly one"),
        (lambda x: kwta(x, 0.5, surrogate_temperature=0.0), ValueError, "surrogate_temperature"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, error, text):
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(error, match=text):
        call(x)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        kwta(torch.randn(2, 8), 0.5, backend="triton")


def test_module_repr_ratio_schedule_and_replace_relu():
    head = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(inplace=True))
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), head)
    assert replace_relu(model, 0.2, mode="channel") == 2
    layers = [m for m in model.modules() if isinstance(m, KWTA)]
    assert len(layers) == 2 and not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    assert repr(layers[0]) == "KWTA(ratio=0.2, mode='channel', backend='auto')"
    assert set_ratio(model, 0.1) == 2 and layers[1].ratio == 0.1
    x = torch.randn(2, 1, 5, 5)
    assert torch.equal(layers[0](x), kwta(x, 0.1, mode="channel"))
    assert "k=3" in repr(KWTA(k=3))


def test_replace_relu_says_when_it_replaces_nothing_and_takes_other_types():
    mobile = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU6(), torch.nn.Flatten(), torch.nn.Linear(36, 2))
    with pytest.raises(ValueError, match="no ReLU module to replace in Sequential; it holds ReLU6: pass types="):
        replace_relu(mobile, 0.2)
    assert replace_relu(mobile, 0.2, types=(torch.nn.ReLU, torch.nn.ReLU6)) == 1
    assert isinstance(mobile[1], KWTA)
    with pytest.raises(TypeError, match="types must be nn.Module classes"):
        replace_relu(mobile, 0.2, types=(len,))

    class FunctionalTail(torch.nn.Module):  # densenet121's shape: a ReLU module inside, F.relu in its forward
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())

        def forward(self, x):
            return torch.nn.functional.relu(self.features(x))

    with pytest.warns(UserWarning, match="applies ReLU as a function .*those stay ReLU"):
        assert replace_relu(FunctionalTail(), 0.5) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no functional ReLU, no warning
        assert replace_relu(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()), 0.5) == 1


def test_auto_backend_dispatch():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert resolve_backend(x, "auto") == ("triton" if x.is_cuda else "cpu")
    # the cpu path runs on a (rows, N) view of x, so its node sits under the view back to x's shape
    assert type(kwta(x, 0.3).grad_fn.next_functions[0][0]).__name__ == "KWTAFunctionBackward"
    assert type(kwta(x, 0.3, backend="reference").grad_fn).__name__ == "_ReferenceKWTABackward"


# ---------------------------------------------------------------------------------------------------------
# The surrogate backward (BPDA): forward exact on every backend, gradient that of x * sigmoid((x - t) / T)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("mode", ["vol", "channel"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_surrogate_forward_is_exact_and_backward_is_the_smooth_gradient(backend, mode, channels_last):
    x = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(2)).to(device_for(backend))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad_y = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(x.device)
    x_exact, x_smooth = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_smooth = kwta(x_smooth, 0.2, mode=mode, backend=backend, surrogate_temperature=0.3)
    assert_bit_identical(y_smooth, kwta(x_exact, 0.2, mode=mode, backend=backend))
    y_smooth.backward(grad_y)

    # the stand-in written out with autograd: t the k-th largest of each row, T = 0.3 * the row's std
    n_rows, n = row_shape(x.shape, mode)
    rows = x.detach().cpu().reshape(n_rows, n).double().requires_grad_()
    threshold = rows.detach().sort(dim=1, descending=True).values[:, resolve_k(n, 0.2, None) - 1, None]
    scale = 0.3 * rows.detach().std(dim=1, keepdim=True, correction=0)
    (rows * torch.sigmoid((rows - threshold) / scale)).backward(grad_y.cpu().reshape(n_rows, n).double())
    torch.testing.assert_close(x_smooth.grad.cpu().reshape(n_rows, n), rows.grad.float(), rtol=1e-4, atol=1e-5)


def test_surrogate_gradient_switches_a_models_kwta_layers_and_restores_them():
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), KWTA(k=3), torch.nn.Linear(8, 8), KWTA(0.5))
    x = torch.randn(5, 6, requires_grad=True)
    (exact,) = torch.autograd.grad(model(x).sum(), x)
    with surrogate_gradient(model, 0.5) as switched:
        assert switched == 2 and "surrogate_temperature=0.5" in repr(model[1])
        y = model(x)
        (smooth,) = torch.autograd.grad(y.sum(), x)
    assert_bit_identical(y, model(x))
    assert not torch.equal(smooth, exact)
    assert all(layer.surrogate_temperature is None for layer in (model[1], model[3]))
    relu_model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU())
    with surrogate_gradient(relu_model, 0.5) as switched:
        assert switched == 0
    with pytest.raises(ValueError, match="temperature"):
        with surrogate_gradient(model, -1.0):
            pass
