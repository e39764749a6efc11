"""The GPU check's sections and its report (scripts/gpu_check.py is the command line and says what each
section measures). Everything here runs on CUDA tensors, or, for a dry run, on CPU tensors with stand-ins: the
triton backend in Triton's interpreter, the body of a CUDA graph run eagerly, time.perf_counter for every
clock and torch.compile's "eager" backend. kwta is imported inside the sections, once the caller has made it
importable and set TRITON_INTERPRET."""

import argparse
import importlib.util
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

RATIO = 0.2
ROTATING = 4  # input buffers a graph replay cycles through
DTYPE_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


# ---------------------------------------------------------------------------------------------------------
# The machine: CUDA, or the CPU standing in for it


@dataclass
class Rig:
    """Where the check runs and how it times: CUDA, or (dry run) the CPU with stand-ins."""

    device: torch.device
    dry: bool
    seconds_per_timing: float

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def per_call(self, fn: Callable[[], object], calls_per_fn: int = 1) -> float:
        """Seconds per call of fn, on the host clock with the device synchronised: one warm-up call, then
        loops of doubling length until one lasts seconds_per_timing."""
        fn()
        self.sync()
        count = 1
        while True:
            started = time.perf_counter()
            for _ in range(count):
                fn()
            self.sync()
            took = time.perf_counter() - started
            if took >= self.seconds_per_timing or count >= 1 << 16:
                return took / (count * calls_per_fn)
            count *= 2

    def graph(self, body: Callable[[], object]) -> Callable[[], None]:
        """body captured in a CUDA graph (after a warm-up on a side stream): its replay. Dry run: body itself."""
        if self.dry:
            return body
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            body()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            body()
        return graph.replay


def number(value: float) -> str:
    """Three significant digits, never an exponent for the magnitudes reported here."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor: -0.0 != +0.0 and NaN == NaN when compared."""
    return t.contiguous().view({4: torch.int32, 2: torch.int16, 8: torch.int64}[t.element_size()])


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(bits(a.cpu()), bits(b.cpu()))


# ---------------------------------------------------------------------------------------------------------
# Correctness


def hard_cases(dry: bool) -> list[tuple[str, torch.Tensor, dict]]:
    """(name, float32 x on the host, kwta's keyword arguments): what the kernels can get wrong."""
    g = torch.Generator().manual_seed(0)
    split = 5000 if dry else 70_000  # rows longer than the one-program path's 2048 elements
    cases = [
        ("one program per row", torch.randn(6, 1000, generator=g), {"ratio": RATIO}),
        ("one program, N = 2048", torch.randn(3, 2048, generator=g), {"ratio": 0.1}),
        ("split rows", torch.randn(3, split, generator=g), {"ratio": RATIO}),
        ("split rows, ties", torch.randint(-3, 4, (2, split), generator=g).float(), {"ratio": 0.3}),
        ("ties", torch.randint(-2, 3, (5, 777), generator=g).float(), {"ratio": 0.5}),
        ("k = 1", torch.randn(3, 3000, generator=g), {"k": 1}),
        ("k = N", torch.randn(3, 300, generator=g), {"k": 300}),
        ("channel mode", torch.randn(4, 16, 4, 4, generator=g), {"ratio": 0.25, "mode": "channel"}),
        ("channels-last", torch.randn(2, 8, 12, 12, generator=g).to(memory_format=torch.channels_last),
         {"ratio": RATIO}),
    ]
    specials = torch.randint(-3, 4, (4, split), generator=g).float()  # ties too
    flat = specials.view(-1)
    picks = torch.randperm(flat.numel(), generator=g)[:64]
    flat[picks] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, float("nan"), 3.0, -3.0]
                               ).repeat(8)
    cases.append(("NaN, +-inf, signed zeros, split", specials, {"ratio": RATIO}))
    cases.append(("NaN, +-inf, signed zeros", specials[:, :1500].contiguous(), {"ratio": RATIO}))
    return cases


def check_backend(run: Callable, x: torch.Tensor, grad_y: torch.Tensor, device, kwargs: dict) -> str:
    """'ok', or what differs: run(x, **kwargs) on `device` against the reference on the host, y and grad x."""
    from kwta.kernels.reference import kwta_reference

    x_ref = x.detach().clone().requires_grad_()
    y_ref = kwta_reference(x_ref, **kwargs)
    (grad_ref,) = torch.autograd.grad(y_ref, x_ref, grad_y)
    x_dut = x.detach().to(device).requires_grad_()
    y_dut = run(x_dut, **kwargs)
    (grad_dut,) = torch.autograd.grad(y_dut, x_dut, grad_y.to(device))
    problems = [name for name, dut, ref in (("y", y_dut, y_ref), ("grad", grad_dut, grad_ref))
                if not same_bits(dut, ref)]
    return "ok" if not problems else "DIFFERS: " + ", ".join(problems)


def correctness(rig: Rig) -> list[dict]:
    from kwta import kwta

    backends = {"triton": rig.device, "reference": rig.device}
    if importlib.util.find_spec("numba") is not None:
        backends["cpu"] = torch.device("cpu")
    rows = []
    for name, x32, kwargs in hard_cases(rig.dry):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = x32.to(dtype)
            grad_y = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
            for backend, device in backends.items():
                def run(t, backend=backend, **kw):
                    return kwta(t, backend=backend, **kw)
                try:
                    verdict = check_backend(run, x, grad_y, device, kwargs)
                except Exception as error:  # a kernel that fails to compile or launch is a finding too
                    verdict = "ERROR: " + first_line(error)
                rows.append({"case": name, "shape": list(x.shape), "dtype": DTYPE_NAMES[str(dtype)[6:]],
                             "backend": backend, "device": device.type, "result": verdict})
    if "cpu" not in backends:
        rows.append({"case": "every case", "shape": [], "dtype": "-", "backend": "cpu", "device": "cpu",
                     "result": "skipped: numba is not installed"})
    return rows


def cuda_graph(rig: Rig) -> list[dict]:
    """Forward and backward captured once, replayed on inputs copied in afterwards: equal to eager."""
    from kwta import kwta

    rows = []
    for n in (1000, 5000 if rig.dry else 70_000):
        for dtype in (torch.float32, torch.bfloat16):
            static_x = torch.zeros(8, n, device=rig.device, dtype=dtype, requires_grad=True)
            grad_y = torch.randn(8, n, device=rig.device).to(dtype)
            outputs = {}

            def body(static_x=static_x, grad_y=grad_y, outputs=outputs):
                outputs["y"] = kwta(static_x, RATIO)
                (outputs["grad"],) = torch.autograd.grad(outputs["y"], static_x, grad_y)

            replay = rig.graph(body)
            results = []
            for seed in (1, 2):  # two new inputs after the capture
                x = torch.randn(8, n, generator=torch.Generator().manual_seed(seed)).to(dtype).to(rig.device)
                with torch.no_grad():
                    static_x.copy_(x)
                replay()
                rig.sync()
                eager_x = x.clone().requires_grad_()
                eager_y = kwta(eager_x, RATIO)
                (eager_grad,) = torch.autograd.grad(eager_y, eager_x, grad_y)
                results.append(same_bits(outputs["y"], eager_y) and same_bits(outputs["grad"], eager_grad))
            rows.append({"shape": [8, n], "dtype": DTYPE_NAMES[str(dtype)[6:]],
                         "result": "ok" if all(results) else "DIFFERS from eager"})
    return rows


# ---------------------------------------------------------------------------------------------------------
# Speed


def copy_bandwidth(rig: Rig) -> dict:
    elements = (1 << 16) if rig.dry else (256 << 20) // 4
    x = torch.randn(elements, device=rig.device)
    seconds = rig.per_call(lambda: x.clone())
    return {"bytes": 2 * x.numel() * 4, "us": seconds * 1e6, "GB/s": 2 * x.numel() * 4 / seconds / 1e9}


def speed_shapes(dry: bool) -> list[tuple[str, tuple[int, ...]]]:
    """(label, shape): vol-mode rows are whole samples; a channel-mode shape is given as (B*C, 1, H, W), which
    holds the same rows, so that the topk formula and kthvalue (vol mode only) time the same work."""
    if dry:
        return [("split rows, batch 2", (2, 4, 24, 24)), ("channel mode, batch 2", (2 * 4, 1, 4, 4))]
    shapes = []
    for batch in (32, 128, 256):
        for channels, size in ((64, 32), (128, 16), (256, 8), (512, 4)):
            shapes.append((f"resnet18-cifar {channels}x{size}x{size}, batch {batch}", (batch, channels, size, size)))
    shapes.append(("224-px stem 64x112x112, batch 32", (32, 64, 112, 112)))
    shapes.append(("channel mode 512x4x4 (rows of 16), batch 128", (128 * 512, 1, 4, 4)))
    shapes.append(("channel mode 64x32x32 (rows of 1024), batch 128", (128 * 64, 1, 32, 32)))
    return shapes


def time_forward(rig: Rig, fn: Callable, inputs: list) -> tuple[float, float]:
    """(eager seconds per call, graph-replay seconds per call) of fn over the rotating inputs."""
    eager = rig.per_call(lambda: fn(inputs[0]))

    def body():
        for x in inputs:
            fn(x)

    replay = rig.graph(body)
    return eager, rig.per_call(replay, calls_per_fn=len(inputs))


def speed(rig: Rig) -> tuple[dict, list[dict]]:
    from kwta.kernels import triton_kwta
    from kwta.kernels.reference import mask_bytes, resolve_k

    from bench.providers import provider_function

    copy = copy_bandwidth(rig)
    rows = []
    for label, shape in speed_shapes(rig.dry):
        for dtype in (torch.float32, torch.bfloat16):
            inputs = [torch.randn(shape, device=rig.device).to(dtype) for _ in range(ROTATING)]
            n_rows, n = shape[0], inputs[0][0].numel()
            floor = inputs[0].numel() * 2 * inputs[0].element_size() + n_rows * mask_bytes(n)
            row = {"shape": label, "dims": list(shape), "dtype": DTYPE_NAMES[str(dtype)[6:]], "floor_bytes": floor}
            with torch.no_grad():
                for name in ("triton", "copy", "topk", "kthvalue"):
                    try:
                        eager, replay = time_forward(rig, provider_function(name, RATIO), inputs)
                        row[f"{name}_eager_us"], row[f"{name}_replay_us"] = eager * 1e6, replay * 1e6
                    except Exception as error:
                        row[f"{name}_error"] = first_line(error)
                try:
                    k = resolve_k(n, RATIO, None)
                    forwards = [triton_kwta.kwta_forward(x.view(n_rows, n), k) for x in inputs]
                    grads = [torch.randn_like(y) for y, _ in forwards]

                    def backward_body(grads=grads, forwards=forwards):
                        for grad, (_, winner_bits) in zip(grads, forwards, strict=True):
                            triton_kwta.kwta_backward(grad, winner_bits)

                    row["triton_backward_replay_us"] = rig.per_call(rig.graph(backward_body), ROTATING) * 1e6
                except Exception as error:
                    row["backward_error"] = first_line(error)
            if "triton_replay_us" in row:
                row["triton_GB/s"] = floor / row["triton_replay_us"] / 1e3
                if "copy_replay_us" in row:
                    copy_gbs = 2 * inputs[0].numel() * inputs[0].element_size() / row["copy_replay_us"] / 1e3
                    row["fraction_of_copy"] = row["triton_GB/s"] / copy_gbs
            rows.append(row)
            print(shape_line(row), flush=True)
    return copy, rows


def choice_cases(dry: bool) -> list[tuple[str, str, dict, list[tuple[int, int]]]]:
    """(choice, the launcher module's attribute, variant -> value, (rows, N) shapes): what the launchers
    pick by Triton version (the split histogram, the sort's bound) or from static instruction counts (the
    one-program path's digit width)."""
    split = [(2, 5000)] if dry else [(128, 65536), (128, 8192), (32, 802816)]
    one_program = [(4, 700)] if dry else [(8192, 1024), (2048, 2048)]
    sort_bound = [(1, 260)] if dry else [(16384, 400), (8192, 512)]
    return [("split-row histogram", "HISTOGRAM_BY_BALLOT", {"tl.histogram": False, "per-element atomics": True},
             split),
            ("one-program digit width", "ROW_DIGIT_WIDTH", {"5-bit": 5, "8-bit": 8, "11-bit": 11}, one_program),
            ("rows of 257-512", "SHORT_ROW_MAX", {"sorted": 512, "one program, 32 bins": 256}, sort_bound)]


def choices(rig: Rig) -> list[dict]:
    """Each choice of choice_cases() made both ways on this Triton: the same bits as the launcher's own pick,
    and the time per call (graph replay, rotating inputs), so that a GPU run says which costs less here."""
    from kwta.kernels import triton_kwta
    from kwta.kernels.reference import resolve_k

    rows = []
    for choice, attribute, variants, shapes in choice_cases(rig.dry):
        for n_rows, n in shapes:
            for dtype in (torch.float32, torch.bfloat16):
                inputs = [torch.randn(n_rows, n, device=rig.device).to(dtype) for _ in range(ROTATING)]
                k = resolve_k(n, RATIO, None)
                with torch.no_grad():
                    expected = triton_kwta.kwta_forward(inputs[0], k)
                    for variant, value in variants.items():
                        row = {"choice": choice, "shape": f"{n_rows}x{n}", "dtype": DTYPE_NAMES[str(dtype)[6:]],
                               "variant": variant}
                        try:
                            with triton_kwta.launcher_settings(**{attribute: value}):
                                got = triton_kwta.kwta_forward(inputs[0], k)
                                same = same_bits(got[0], expected[0]) and torch.equal(got[1], expected[1])
                                row["result"] = "ok" if same else "DIFFERS"
                                _, replay = time_forward(rig, lambda x, k=k: triton_kwta.kwta_forward(x, k), inputs)
                            row["replay us"] = replay * 1e6
                        except Exception as error:
                            row["result"] = "ERROR: " + first_line(error)
                        rows.append(row)
                mine = [r for r in rows[-len(variants):] if "replay us" in r]
                if mine:
                    fastest = min(mine, key=lambda r: r["replay us"])
                    for r in mine:
                        r["x fastest"] = r["replay us"] / fastest["replay us"]
                print(" | ".join(f"{r['choice']} {r['shape']} {r['dtype']} {r['variant']}: {r['result']} "
                                 f"{number(r.get('replay us', float('nan')))} us" for r in rows[-len(variants):]),
                      flush=True)
    return rows


SPEED_COLUMNS = [("eager us", "triton_eager_us"), ("replay us", "triton_replay_us"),
                 ("backward replay us", "triton_backward_replay_us"), ("GB/s", "triton_GB/s"),
                 ("of copy", "fraction_of_copy"), ("topk eager us", "topk_eager_us"),
                 ("topk replay us", "topk_replay_us"), ("kthvalue eager us", "kthvalue_eager_us"),
                 ("kthvalue replay us", "kthvalue_replay_us")]


def shape_line(row: dict) -> str:
    def cell(key):
        if key not in row:
            return "error"
        return f"{row[key]:.0%}" if key == "fraction_of_copy" else number(row[key])
    return f"| {row['shape']} | {row['dtype']} | " + " | ".join(cell(key) for _, key in SPEED_COLUMNS) + " |"


def profile(rig: Rig) -> str:
    """torch.profiler's table of k-WTA forward + backward, per kernel, on one resnet18-cifar layer."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from kwta import kwta

    shape = (2, 4, 24, 24) if rig.dry else (128, 64, 32, 32)
    activities = [ProfilerActivity.CPU] + ([] if rig.dry else [ProfilerActivity.CUDA])
    tables = []
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(shape, device=rig.device).to(dtype).requires_grad_()
        grad_y = torch.randn_like(x)
        torch.autograd.grad(kwta(x, RATIO), x, grad_y)  # compiled before the profile
        rig.sync()
        with torch_profile(activities=activities) as prof:
            for _ in range(5):
                torch.autograd.grad(kwta(x, RATIO), x, grad_y)
            rig.sync()
        sort = "cpu_time_total" if rig.dry else "cuda_time_total"
        tables.append(f"## {tuple(shape)} {DTYPE_NAMES[str(dtype)[6:]]}, 5 x (forward + backward)\n\n"
                      + prof.key_averages().table(sort_by=sort, row_limit=12))
    return "\n\n".join(tables)


def training(rig: Rig) -> list[dict]:
    from bench.training import time_steps

    batch, steps = (2, 1) if rig.dry else (128, 10)
    rows = []
    for activation in ("relu", "kwta"):
        per_image, warm_up = time_steps(activation, batch, channels_last=True, bf16=True, compile=False,
                                        steps=steps, device=rig.device.type)
        rows.append({"network": "ReLU" if activation == "relu" else f"k-WTA {RATIO}", "batch": batch,
                     "ms per step": per_image * batch * 1e3, "warm-up s": warm_up})
    rows[1]["x ReLU"] = rows[1]["ms per step"] / rows[0]["ms per step"]
    return rows


def compiled(rig: Rig) -> dict:
    from kwta.models import build_model

    torch.manual_seed(0)
    batch = 2 if rig.dry else 128
    model = build_model("resnet18-cifar", activation="kwta", ratio=RATIO).to(rig.device).eval()
    images = torch.rand(batch, 3, 32, 32, device=rig.device)
    network = torch.compile(model, backend="eager") if rig.dry else torch.compile(model, mode="reduce-overhead")
    with torch.no_grad():
        started = time.perf_counter()
        for _ in range(3):  # reduce-overhead records its CUDA graph on the first calls
            logits = network(images).clone()
        rig.sync()
        compile_s = time.perf_counter() - started
        eager_logits = model(images)
        compiled_us = rig.per_call(lambda: network(images)) * 1e6
        eager_us = rig.per_call(lambda: model(images)) * 1e6
    difference = (logits - eager_logits).abs().max().item() / eager_logits.abs().max().item()
    agree = (logits.argmax(1) == eager_logits.argmax(1)).float().mean().item()
    return {"mode": "backend eager (dry run)" if rig.dry else "reduce-overhead", "batch": batch,
            "compile s": compile_s, "compiled us": compiled_us, "eager us": eager_us,
            "max |logit difference| / max |logit|": difference, "argmax agreement": agree}


# ---------------------------------------------------------------------------------------------------------
# The report


def markdown_table(rows: list[dict], columns: list[str]) -> list[str]:
    def cell(value):
        return number(value) if isinstance(value, float) else str(value)
    return (["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(cell(row.get(c, "-")) for c in columns) + " |" for row in rows])


def report_lines(header: list[str], sections: dict, failures: list[str]) -> list[str]:
    lines = ["# gpu_check", "", *header, ""]
    correct = sections.get("correctness")
    if isinstance(correct, list):
        lines += ["## Correctness against the reference (bit for bit, forward and backward)", "",
                  "| backend | device | rows ok | of |", "|---|---|---|---|"]
        for backend in dict.fromkeys(r["backend"] for r in correct):
            mine = [r for r in correct if r["backend"] == backend]
            lines.append(f"| {backend} | {mine[0]['device']} | {sum(r['result'] == 'ok' for r in mine)} | "
                         f"{len(mine)} |")
        others = [r for r in correct if r["result"] != "ok"]
        lines += ["", "Rows are case x dtype (fp32, fp16, bf16); cases: " +
                  "; ".join(dict.fromkeys(r["case"] for r in correct if r["case"] != "every case")) + ".", ""]
        if others:
            lines += [*markdown_table(others, ["case", "shape", "dtype", "backend", "device", "result"]), ""]
    if isinstance(sections.get("cuda graph"), list):
        lines += ["## CUDA graph: captured once, replayed on new inputs", "",
                  *markdown_table(sections["cuda graph"], ["shape", "dtype", "result"]), ""]
    if isinstance(sections.get("speed"), dict):
        copy, rows = sections["speed"]["copy"], sections["speed"]["shapes"]
        lines += ["## Speed (k-WTA forward, ratio 0.2; replay: CUDA graph, 4 rotating inputs, L2 warm)", "",
                  f"Copy bandwidth (x.clone(), {number(copy['bytes'] / 2 ** 20)} MiB moved): {number(copy['GB/s'])} "
                  "GB/s.",
                  "GB/s counts the floor's bytes (read x, write y and the 1/8-byte mask); `of copy` is that "
                  "against a same-shape x.clone() replayed the same way.", "",
                  "| shape | dtype | " + " | ".join(name for name, _ in SPEED_COLUMNS) + " |",
                  "|---|---|" + "---|" * len(SPEED_COLUMNS), *(shape_line(row) for row in rows), ""]
        errors = [f"- {row['shape']} {row['dtype']}: {key} {value}" for row in rows
                  for key, value in row.items() if key.endswith("error")]
        lines += (["Errors:", *errors, ""] if errors else [])
    if isinstance(sections.get("choices"), list):
        lines += ["## The launchers' choices, both ways (k-WTA forward, ratio 0.2, graph replay, 4 rotating inputs)",
                  "", *markdown_table(sections["choices"], ["choice", "shape", "dtype", "variant", "result",
                                                             "replay us", "x fastest"]), ""]
    if isinstance(sections.get("training"), list):
        lines += ["## Training step: resnet18-cifar, 1x28x28, bf16 autocast, channels-last", "",
                  *markdown_table(sections["training"], ["network", "batch", "ms per step", "x ReLU", "warm-up s"]),
                  ""]
    if isinstance(sections.get("compile"), dict):
        lines += ['## torch.compile(mode="reduce-overhead"), k-WTA resnet18-cifar, inference', "",
                  *markdown_table([sections["compile"]], list(sections["compile"])), ""]
    if isinstance(sections.get("profile"), str):
        lines += ["## Profile", "", "In profile.txt.", ""]
    lines += ["## Verdict", "", "- every section ran and every correctness row matched" if not failures else
              "\n".join(f"- {failure}" for failure in failures), ""]
    return lines


def run(args: argparse.Namespace, command: str) -> int:
    """Every section in turn, then the report into args.out; the exit status (0: every correctness row matched
    and every section ran)."""
    import triton

    if not args.dry_run and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device is visible (torch.cuda.is_available() is False); --dry-run runs "
                           "the check's code paths on the CPU")
    device = torch.device("cpu" if args.dry_run else "cuda")
    rig = Rig(device, args.dry_run, args.seconds_per_timing)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = "dry run on the CPU (Triton interpreter)" if args.dry_run else (
        f"{torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})")
    header = [f"- device: {gpu}",
              f"- triton {triton.__version__}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"Python {platform.python_version()}",
              f"- kwta from {Path(sys.modules['kwta'].__file__).parent.parent}",
              f"- command: {command}"]
    print("\n".join(header), flush=True)

    started = time.perf_counter()
    sections, failures, seconds = {}, [], {}
    steps = [("correctness", correctness), ("cuda graph", cuda_graph),
             ("speed", lambda r: dict(zip(("copy", "shapes"), speed(r), strict=True))),
             ("choices", choices), ("profile", profile), ("training", training), ("compile", compiled)]
    for name, step in steps:
        print(f"\n== {name}", flush=True)
        began = time.perf_counter()
        try:
            sections[name] = step(rig)
        except Exception as error:
            traceback.print_exc()
            sections[name] = "FAILED: " + first_line(error)
            failures.append(f"{name} FAILED: " + first_line(error))
        seconds[name] = time.perf_counter() - began
        print(f"   {name}: {seconds[name]:.1f} s", flush=True)
    bad = [r for r in sections.get("correctness") or [] if isinstance(r, dict)
           and r["result"] != "ok" and not r["result"].startswith("skipped")]
    bad += [r for section in ("cuda graph", "choices") for r in sections.get(section) or []
            if isinstance(r, dict) and r["result"] != "ok"]
    if bad:
        failures.append(f"{len(bad)} correctness rows did not match the reference (the tables above)")
    header.append(f"- took {time.perf_counter() - started:.0f} s (" +
                  ", ".join(f"{name} {took:.0f} s" for name, took in seconds.items()) + ")")

    if isinstance(sections.get("profile"), str):
        (out / "profile.txt").write_text(sections["profile"] + "\n")
    report = "\n".join(report_lines(header, sections, failures))
    (out / "report.md").write_text(report)
    (out / "report.json").write_text(json.dumps({"header": header, "seconds": seconds, "failures": failures,
                                                 **{k: v for k, v in sections.items() if k != "profile"}},
                                                indent=1) + "\n")
    print("\n" + report)
    return 1 if failures else 0
