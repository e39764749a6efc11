"""Every Triton kernel specialization the launchers make compiles for real GPUs (sm_80, sm_90) without
register spills. No GPU is needed; the compiles run in a subprocess without TRITON_INTERPRET, because
the interpreter runs code the GPU compiler rejects."""

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def compiler_env() -> dict:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    return env


# The pinned Triton (requirements.txt) and the oldest one the kernels support, which `make setup` installs
# beside it (the Makefile's TRITON_OLDEST): torch 2.11 brings Triton 3.6, so users have both.
OLDEST = "3.6.0"


def triton_paths() -> dict[str, Path | None]:
    """Each Triton version to compile with -> the folder it is imported from (None: the installed one). On a
    machine whose own Triton is the oldest (a GPU image with torch 2.11) and no copy beside it, that one."""
    oldest = ROOT / ".venv" / f"triton-{OLDEST}"
    try:
        installed = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed == OLDEST and not oldest.is_dir():
        return {"installed": None}
    return {"pinned": None, OLDEST: oldest}


TRITON_PATHS = triton_paths()


_COMPILES: dict[str, tuple[subprocess.Popen, Path]] = {}  # version -> (the running compile, its JSON and log)


def start_compiles(folder: Path) -> None:
    """Start every version's compile in the background (tests/conftest.py calls this once collection has
    found these tests, and runs them last): the compiles then overlap the rest of the suite, much of which
    keeps only one of the cores busy. The pinned version compiles every specialization; 3.6, whose histogram
    lowering makes each compile several times slower, every kernel at every constexpr, dtype and warp count
    on both architectures, leaving out the alignment variants."""
    for version, path in TRITON_PATHS.items():
        if version in _COMPILES:
            continue
        env = compiler_env()
        if path is not None:
            env["PYTHONPATH"] = f"{path}{os.pathsep}{ROOT}"
        table = folder / f"aot-{version}.json"
        variants = [] if path is None else ["--distinct-constexprs"]
        command = [sys.executable, "-m", "kwta.kernels.aot", "--no-traffic", *variants, "--workers", "1",
                   "--json", str(table)]
        with open(table.with_suffix(".log"), "w") as log:
            _COMPILES[version] = (subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
                                  table)


def finished_compile(version: str, tmp_path_factory) -> tuple[str, list[dict], str]:
    """Every launcher specialization compiled for sm_80 and sm_90 by one Triton version: (version, rows, stdout)."""
    folder = TRITON_PATHS[version]
    if folder is not None:
        assert (folder / "triton").is_dir(), f"Triton {version} is not installed in {folder}: run make setup"
    start_compiles(tmp_path_factory.mktemp("aot"))  # a no-op when conftest.py started them already
    process, table = _COMPILES[version]
    process.wait(timeout=1800)
    stdout = table.with_suffix(".log").read_text()
    assert process.returncode == 0, stdout[-6000:]
    report = json.loads(table.read_text())
    if folder is not None:
        assert report["triton"] == version
    return report["triton"], report["compiled"], stdout


@pytest.fixture(scope="module", params=list(TRITON_PATHS))
def compiled(request, tmp_path_factory):
    return finished_compile(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def compiled_by_every_version(tmp_path_factory):
    return {version: finished_compile(version, tmp_path_factory) for version in TRITON_PATHS}


def test_every_launcher_specialization_compiles_for_sm80_and_sm90_without_spills(compiled):
    version, results, stdout = compiled
    for arch in (80, 90):
        for dtype in ("fp32", "fp16", "bf16"):
            kernels = {r["kernel"] for r in results if r["arch"] == arch and r["dtype"] == dtype}
            assert kernels == {"_kwta_short_rows_kernel", "_kwta_row_kernel", "_kwta_split_hist_kernel",
                               "_kwta_split_mask_kernel", "_kwta_backward_kernel"}, (version, arch, dtype)
        passes = {r["constexprs"] for r in results if r["arch"] == arch and r["kernel"] == "_kwta_split_mask_kernel"}
        assert {c.split()[0] for c in passes} == {"NUM_PASSES=2", "NUM_PASSES=3"}
        blocks = {int(c.split("BLOCK=")[1].split()[0]) for r in results if r["arch"] == arch
                  and r["kernel"] == "_kwta_row_kernel" for c in [r["constexprs"]]}
        short = {int(c.split("BLOCK=")[1].split()[0]) for r in results if r["arch"] == arch
                 and r["kernel"] == "_kwta_short_rows_kernel" for c in [r["constexprs"]]}
        # sorted up to 256 or 512 (by version), one program per row above: every power of two, once
        assert short | blocks == {32, 64, 128, 256, 512, 1024, 2048} and max(short) < min(blocks), (short, blocks)
        assert max(short) in (256, 512)
    for r in results:
        assert 0 < r["registers"] <= 255, (version, r)
        assert r["spill_stores"] == r["spill_loads"] == r["stack_frame"] == 0, (version, r)
    assert f"Triton {version}" in stdout and "0 spill registers" in stdout


def worst_on_sm90(results: list[dict], key) -> dict:
    """The most SASS instructions per element on sm_90 per key(result): per kernel, or kernel and dtype."""
    worst = {}
    for r in results:
        if r["arch"] == 90:
            worst[key(r)] = max(worst.get(key(r), 0), r["per_element"])
    return worst


def test_sass_instructions_per_element_stay_within_their_budgets(compiled):
    """kernels/cost.py's SASS_BUDGETS: per kernel and Triton version, the most instructions per element of
    any specialization on sm_90."""
    from kwta.kernels.cost import SASS_BUDGETS

    version, results, _ = compiled
    budgets = SASS_BUDGETS["3.6" if version.startswith("3.6") else "pinned"]
    worst = worst_on_sm90(results, lambda r: r["kernel"])
    assert set(worst) == set(budgets), (version, worst)
    over = {kernel: round(value, 1) for kernel, value in worst.items() if value > budgets[kernel]}
    assert not over, f"Triton {version}: SASS instructions per element over budget: {over} (budgets {budgets})"


def test_the_oldest_triton_costs_at_most_twice_the_pinned_one_per_element(compiled_by_every_version):
    """kernels/cost.py's OLDEST_RATIO, per kernel and dtype."""
    from kwta.kernels.cost import OLDEST_RATIO

    if OLDEST not in compiled_by_every_version:
        pytest.skip(f"only one Triton here ({', '.join(compiled_by_every_version)})")
    per_kernel_and_dtype = lambda r: (r["kernel"], r["dtype"])  # noqa: E731
    pinned = worst_on_sm90(compiled_by_every_version["pinned"][1], per_kernel_and_dtype)
    oldest = worst_on_sm90(compiled_by_every_version[OLDEST][1], per_kernel_and_dtype)
    assert set(oldest) == set(pinned)
    over = {key: round(oldest[key] / pinned[key], 2) for key in pinned
            if oldest[key] > OLDEST_RATIO * pinned[key]}
    assert not over, f"Triton {OLDEST} against the pinned one, SASS per element, ratio: {over}"


def test_the_check_catches_what_only_the_interpreter_accepts(tmp_path):
    """A kernel that reads a plain module global runs interpreted but must fail to compile here."""
    (tmp_path / "plain_global_kernel.py").write_text(textwrap.dedent("""
        import torch
        import triton
        import triton.language as tl

        WIDTH = 64  # not a tl.constexpr: the interpreter reads it, the GPU compiler refuses it

        @triton.jit
        def _copy_kernel(x_ptr, y_ptr):
            offsets = tl.arange(0, WIDTH)
            tl.store(y_ptr + offsets, tl.load(x_ptr + offsets))

        def copy(x):
            y = torch.empty_like(x)
            _copy_kernel[(1,)](x, y)
            return y
    """))
    script = textwrap.dedent("""
        import sys, torch
        import plain_global_kernel as module
        from kwta.kernels import aot
        launches = aot.record_launches(module, lambda: module.copy(torch.zeros(64)))
        assert len(launches) == 1
        try:
            aot.compile_launches(launches, (90,), workers=1)
        except Exception as error:
            print("rejected:", type(error).__name__, str(error).splitlines()[-1] if str(error) else "")
            sys.exit(0)
        sys.exit("compiled a kernel that reads a plain global")
    """)
    env = compiler_env()
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{tmp_path}"
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WIDTH" in done.stdout or "global" in done.stdout


def test_recording_refuses_the_interpreter():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the suite runs kernels compiled here, not interpreted")
    from kwta.kernels import aot, triton_kwta

    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        aot.record_launches(triton_kwta, lambda: None)


def test_a_machine_whose_own_triton_is_the_oldest_compiles_with_it(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: OLDEST)
    assert triton_paths() == {"installed": None}
    (tmp_path / ".venv" / f"triton-{OLDEST}").mkdir(parents=True)
    assert triton_paths() == {"pinned": None, OLDEST: tmp_path / ".venv" / f"triton-{OLDEST}"}
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "3.8.0")
    assert set(triton_paths()) == {"pinned", OLDEST}
