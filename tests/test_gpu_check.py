"""scripts/gpu_check.py where there is no GPU: its --dry-run runs every section on CPU tensors (the triton backend
in Triton's interpreter) from a copy of the checkout that nothing has installed, and a backend that is wrong
is reported as wrong."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from bench import gpu

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ["## Correctness", "## CUDA graph", "## Speed", "## Training step", "## torch.compile", "## Verdict"]


def test_dry_run_runs_every_section_from_a_checkout_nothing_installed(tmp_path):
    checkout = tmp_path / "checkout"
    for folder in ("scripts", "kwta", "kernels", "bench", "experiments"):
        shutil.copytree(ROOT / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__"))
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}  # the script sets it
    result = subprocess.run([sys.executable, str(checkout / "scripts" / "gpu_check.py"), "--dry-run", "--out",
                             str(tmp_path / "out"), "--seconds-per-timing", "0.001"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    import triton

    assert f"triton {triton.__version__}, torch {torch.__version__}" in result.stdout.splitlines()[1]
    assert f"- kwta from {checkout}" in result.stdout  # this copy's kwta and kernels, no installed one
    report = (tmp_path / "out" / "report.md").read_text()
    assert all(section in report for section in SECTIONS), report
    assert "every section ran and every correctness row matched" in report
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    backends = {row["backend"] for row in data["correctness"]}
    assert backends == {"triton", "reference", "cpu"} and all(row["result"] == "ok" for row in data["correctness"])
    assert {row["dtype"] for row in data["correctness"]} == {"fp32", "fp16", "bf16"}
    assert any(row["dims"][0] > 2 and row["dims"][1] == 1 for row in data["speed"]["shapes"])  # channel mode
    assert all("triton_replay_us" in row and "topk_eager_us" in row and "kthvalue_replay_us" in row
               for row in data["speed"]["shapes"])
    profile = (tmp_path / "out" / "profile.txt").read_text()
    assert profile.count("KWTAFunctionBackward") >= 2  # the profiler's table, fp32 and bf16


def test_a_backend_that_differs_from_the_reference_is_reported():
    x = torch.randn(3, 50)
    grad_y = torch.randn(3, 50)
    right = gpu.check_backend(lambda t, **kw: __import__("kwta").kwta(t, backend="reference", **kw),
                                    x, grad_y, torch.device("cpu"), {"ratio": 0.2})
    assert right == "ok"

    def keeps_one_too_many(t, ratio):  # the k+1 largest: a classic off-by-one
        k = int(ratio * t.shape[1]) + 1
        return t * (t >= t.topk(k, dim=1).values[:, -1:])

    wrong = gpu.check_backend(keeps_one_too_many, x, grad_y, torch.device("cpu"), {"ratio": 0.2})
    assert wrong == "DIFFERS: y, grad"


def test_the_verdict_names_every_failure():
    rows = [{"case": "split rows", "shape": [2, 9], "dtype": "bf16", "backend": "triton", "device": "cuda",
             "result": "DIFFERS: y"}]
    lines = gpu.report_lines(["- device: x"], {"correctness": rows}, ["1 correctness rows did not match"])
    assert "| triton | cuda | 0 | 1 |" in lines
    assert "| split rows | [2, 9] | bf16 | triton | cuda | DIFFERS: y |" in lines
    assert lines[-2] == "- 1 correctness rows did not match"
