"""Smoke tests of the benchmark's code on tiny shapes: every provider is reported with sane numbers, the
saved-bytes count is exact on known cases, and the targets summary reads its inputs right. Nothing here is
timed against a limit: a benchmark's speed is a fact it prints, not a test."""

import contextlib
import csv
import io
import math

import pytest
import torch
from kwta.kernels.reference import kwta_reference
from torch import nn

from bench import providers, report
from bench.__main__ import QUICK_SHAPES, QUICK_SWEEP_ROW_LENGTHS, bench_model, bench_shapes, main, parse_args
from bench.timing import saved_bytes_per_element
from kwta import machine

CPU_PROVIDERS = ("topk", "reference", "cpu", "partition", "kthvalue", "relu", "copy")
CLOCKS = {("wall", "1"), ("process", "1")}


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["--quick", "--device", "cpu", "--sweep", "--threads", "1", "--repeats", "2", "--warmup", "0",
                     "--out", str(out)])
    return code, out, printed.getvalue()


def test_quick_run_reports_every_provider_with_positive_times(quick_run):
    code, out, printed = quick_run
    assert code == 0
    ops = read_csv(out / "ops-cpu.csv")
    shapes = {"x".join(map(str, s)) for s in QUICK_SHAPES}
    expected = {(s, p, c) for s in shapes for p in CPU_PROVIDERS for c in CLOCKS}
    assert {(r["shape"], r["provider"], (r["clock"], r["threads"])) for r in ops} == expected
    for row in ops:
        assert 0 < float(row["forward_ms"]) < math.inf
        assert float(row["forward_gbps"]) > 0
        assert float(row["saved_bytes_per_element"]) >= float(row["kept_bytes_per_element"]) >= 0
        if row["provider"] == "copy":
            assert row["backward_ms"] == row["forward_backward_ms"] == ""
        else:
            assert 0 < float(row["backward_ms"]) < math.inf
            assert float(row["forward_backward_ms"]) > 0
        if row["provider"] == "relu":
            assert float(row["forward_x_relu"]) == float(row["forward_backward_x_relu"]) == 1

    sweep = read_csv(out / "sweep-cpu.csv")
    expected = {(n, p, c) for n in QUICK_SWEEP_ROW_LENGTHS for p in CPU_PROVIDERS for c in CLOCKS}
    assert {(int(r["row_length"]), r["provider"], (r["clock"], r["threads"])) for r in sweep} == expected
    assert all(float(r["forward_ns_per_element"]) > 0 for r in sweep)

    targets = read_csv(out / "targets-cpu.csv")
    by_name = {(r["name"], r["clock"]): r for r in targets}
    assert by_name[("cpu saved bytes per element (max over shapes)", "")]["status"] == "PASS"
    for clock in ("wall, 1 thread", "process, 1 thread"):  # every timed target once per clock
        assert by_name[("cpu fwd+bwd speedup over topk (median over shapes)", clock)]["status"] in {"PASS", "FAIL"}
    assert {r["status"] for r in targets} <= {"PASS", "FAIL", "info", "n/a"}
    assert (out / "environment-cpu.json").exists()
    assert not list(out.glob(".*.tmp")), "a temporary file of the atomic write was left behind"
    assert "targets on " + machine.cpu_name() in printed and "wall, 1 thread" in printed


def test_process_clock_times_every_provider():
    results = bench_shapes([(2, 4, 4, 4)], ("cpu", "relu"), ratio=0.25, dtype=torch.float32, device="cpu",
                           clock="process", threads=1, repeats=2, warmup=1)
    assert [(r.provider, r.clock, r.threads) for r in results] == [("cpu", "process", 1), ("relu", "process", 1)]
    assert all(r.forward_ms >= 0 and r.backward_ms >= 0 for r in results)


def test_plots_are_drawn_next_to_their_csvs(quick_run):
    from plots import bench as bench_plots

    _, out, _ = quick_run
    assert bench_plots.main(["--results", str(out)]) == 0
    for stem in ("ops-cpu", "sweep-cpu"):
        assert (out / f"{stem}.png").stat().st_size > 0


@pytest.mark.parametrize("shape", [(3, 5, 3, 3), (2, 8, 4, 4)])
def test_saved_bytes_per_element_is_exact_on_known_cases(shape):
    x = torch.randn(shape, requires_grad=True)
    n = x[0].numel()
    k = int(0.1 * n)

    def saved(provider):
        return saved_bytes_per_element(providers.provider_function(provider, 0.1), x)

    assert saved("relu") == (4.0, 4.0)  # its float32 output
    assert saved("cpu") == (4 * math.ceil(n / 32) / n,) * 2  # the bit-packed winner mask, in whole words
    assert saved("reference") == (1.0, 1.0)  # a bool winner mask
    assert saved("partition") == (1.0, 1.0)
    assert saved("copy") == (0.0, 0.0)
    # a float mask, and topk's int64 indices, which die with the forward since nothing downstream needs them
    assert saved("topk") == (4.0 + 8 * k / n, 4.0)
    assert saved("kthvalue") == (1.0 + 8 / n, 1.0)  # a bool mask, and one int64 index per row


def test_saved_bytes_count_the_input_when_it_is_saved():
    x = torch.randn(4, 6, requires_grad=True)
    assert saved_bytes_per_element(lambda t: t * t, x) == (4.0, 4.0)  # x, saved once though used twice


def test_topk_kthvalue_and_partition_variants_match_the_reference():
    x = torch.randn(3, 7, 5, 5, requires_grad=True)  # continuous values: no ties, so k winners exactly
    expected = kwta_reference(x, 0.1)
    grad_y = torch.randn_like(x)
    (grad_expected,) = torch.autograd.grad(expected, x, grad_y)
    for variant in (providers.kwta_topk, providers.kwta_kthvalue, providers.kwta_partition):
        y = variant(x, 0.1)
        torch.testing.assert_close(y, expected, rtol=0, atol=0)
        torch.testing.assert_close(torch.autograd.grad(y, x, grad_y)[0], grad_expected, rtol=0, atol=0)
    # np.partition on the order keys is exact on ties, NaN and signed zeros too
    special = torch.tensor([[1.0, float("nan"), -0.0, 0.0, 2.0, 2.0, -float("inf"), float("inf")]])
    for ratio in (0.125, 0.25, 0.5, 0.75, 1.0):
        reference = kwta_reference(special, ratio).view(torch.int32)
        assert torch.equal(providers.kwta_partition(special, ratio).view(torch.int32), reference)


def test_replace_relu_with_topk_swaps_every_relu():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU()))
    assert providers.replace_relu_with_topk(model, 0.2) == 2
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, providers.TopkKWTA) for m in model.modules()) == 2
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 4, 4, 4)


def test_benchmark_models_are_relu_kwta_and_topk_resnets():
    pytest.importorskip("kwta.models")
    from kwta.modules import KWTA

    models = providers.build_benchmark_models(0.2)
    assert list(models) == ["relu", "kwta", "topk"]
    assert any(isinstance(m, nn.ReLU) for m in models["relu"].modules())
    assert any(isinstance(m, KWTA) for m in models["kwta"].modules())
    assert any(isinstance(m, providers.TopkKWTA) for m in models["topk"].modules())
    assert not any(isinstance(m, nn.ReLU) for m in models["topk"].modules())


def test_model_bench_times_a_training_step_of_every_model(monkeypatch):
    def tiny_models(ratio):  # a full ResNet18 step costs seconds on a shared CPU; the loop is what is tested
        def net(activation):
            return nn.Sequential(nn.Conv2d(3, 4, 3), activation, nn.Flatten(), nn.Linear(4 * 30 * 30, 10))

        return {"relu": net(nn.ReLU()), "kwta": net(KWTA(ratio)), "topk": net(providers.TopkKWTA(ratio))}

    from kwta.modules import KWTA

    monkeypatch.setattr("bench.providers.build_benchmark_models", tiny_models)
    results = bench_model(ratio=0.2, batch=2, device="cpu", clock="process", threads=1, repeats=2, warmup=1)
    assert [r.activation for r in results] == ["relu", "kwta ratio 0.2", "topk ratio 0.2"]
    assert all(r.step_ms > 0 and r.x_relu > 0 for r in results)
    assert results[0].x_relu == 1


def _op(shape, provider, forward_backward_ms, *, forward_ms=1.0, gbps=1.0, saved=0.125, row_length=65536,
        device="cpu", clock="wall", threads=2):
    return report.OpResult(
        device=device, dtype="float32", shape=shape, rows=1, row_length=row_length, ratio=0.1, k=1,
        provider=provider, clock=clock, threads=threads, forward_ms=forward_ms, backward_ms=1.0,
        forward_backward_ms=forward_backward_ms, forward_x_relu=math.nan, backward_x_relu=math.nan,
        forward_backward_x_relu=math.nan, forward_gbps=gbps, saved_bytes_per_element=saved,
        kept_bytes_per_element=saved, repeats=1,
    )


def test_targets_take_medians_over_shapes_and_print_pass_or_fail():
    ops = [
        # per-shape topk/cpu speedups 20, 5, 12 (median 12); cpu/relu 2, 4, 2.5 (median 2.5)
        _op("a", "topk", 40.0), _op("a", "cpu", 2.0), _op("a", "relu", 1.0, saved=4.0),
        _op("b", "topk", 20.0), _op("b", "cpu", 4.0), _op("b", "relu", 1.0, saved=4.0),
        _op("c", "topk", 30.0), _op("c", "cpu", 2.5), _op("c", "relu", 1.0, saved=4.0),
    ]
    targets = {t.name.split(" (")[0]: t for t in report.check_targets(ops, [], [], "cpu")}
    assert targets["cpu fwd+bwd speedup over topk"].value == 12
    assert targets["cpu fwd+bwd speedup over topk"].clock == "wall, 2 threads"
    assert targets["cpu fwd+bwd speedup over topk"].status == "PASS"
    assert targets["cpu fwd+bwd / relu fwd+bwd"].value == 2.5
    assert targets["cpu fwd+bwd / relu fwd+bwd"].status == "PASS"
    assert targets["relu saved bytes per element"].status == "info"

    # the same shapes on a second clock: its own column, the first clock's figures untouched
    one_thread = {"clock": "process", "threads": 1}
    slow = [_op(s, p, 10.0 if p == "cpu" else 1.0, **one_thread) for s in "ab" for p in ("topk", "cpu", "relu")]
    targets = {(t.name.split(" (")[0], t.clock): t for t in report.check_targets(ops + slow, [], [], "cpu")}
    assert targets[("cpu fwd+bwd speedup over topk", "wall, 2 threads")].status == "PASS"
    assert targets[("cpu fwd+bwd speedup over topk", "process, 1 thread")].status == "FAIL"
    assert targets[("cpu fwd+bwd / relu fwd+bwd", "process, 1 thread")].status == "FAIL"
    printed = report.format_targets(list(targets.values())).splitlines()
    assert "wall, 2 threads" in printed[0] and printed[0].index("wall") < printed[0].index("process")
    line = next(line for line in printed if line.startswith("cpu fwd+bwd speedup over topk"))
    assert line.index("12 PASS") < line.index("0.1 FAIL")


def test_triton_bandwidth_target_counts_only_long_rows():
    cuda = {"device": "cuda", "clock": "cuda", "threads": 1}
    ops = [
        _op("long", "triton", 1.0, gbps=600.0, **cuda), _op("long", "copy", math.nan, gbps=1000.0, **cuda),
        _op("short", "triton", 1.0, gbps=100.0, row_length=8192, **cuda),
        _op("short", "copy", math.nan, gbps=1000.0, **cuda),
    ]
    (bandwidth,) = [t for t in report.check_targets(ops, [], [], "cuda") if "copy GB/s" in t.name]
    assert bandwidth.value == 0.6
    assert bandwidth.status == "PASS"


@pytest.mark.parametrize(
    "argv",
    [
        ["--providers", "nope"],
        ["--providers", "triton", "--device", "cpu"],
        ["--ratio", "0"],
        ["--shapes", "2x3"],
        ["--clock", "process", "--threads", "2"],  # CPU time would add up the threads' spin-waits
        ["--threads", "0"],
    ],
)
def test_bad_arguments_exit_with_a_usage_error(argv):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2


def test_the_training_benchmark_prints_one_row_per_configuration(capsys):
    from bench import training

    training.main(["--configurations", "fp32", "channels-last", "bf16", "--batch-sizes", "2", "3", "--steps", "1",
                   "--activations", "kwta"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# ") and "threads, torch" in lines[0]
    rows = [line.split(" | ") for line in lines[3:]]
    names = [row[1] for row in rows]
    expected = ["fp32", "channels-last", *(["bf16"] if machine.native_bf16() else []), "fp32, batch 3"]
    assert names == expected and rows[0][4] == "1.00x"
    assert all(float(row[3]) > 0 for row in rows)
