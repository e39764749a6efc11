"""The checks only a GPU can make, in one command: `make gpu-check` (= python -m scripts.gpu_check).

    make gpu-check                                   # on a machine with a CUDA GPU, after `make setup`
    python -m scripts.gpu_check --out results/gpu-check --skip-bench

1. Correctness on the GPU: tests/test_ops.py runs every bit-exactness case (odd shapes, ties, NaN, +-inf,
   signed zeros, k = 1 and k = N, split rows, all three dtypes) with the triton backend on CUDA tensors
   against the reference; tests/test_cuda.py replays the op in a CUDA graph, compiles a k-WTA network
   with torch.compile(fullgraph=True) and inductor, and takes a bf16 / channels-last training step of
   every architecture; tests/test_aot.py compiles every kernel specialization for sm_80 and sm_90 and
   checks ptxas reports no spills.
2. Speed: the benchmark on this GPU (operator shapes, row-length sweep, a training step), with its GPU
   targets (triton forward at least half of copy bandwidth on long rows, 10x faster than the topk formula)
   printed as facts, never asserted. Tables and CSVs go to --out.
3. A one-line verdict. The exit status is 0 only when every test passed; a missed speed target is reported
   in the verdict, not failed. Paste the tables into BENCHMARKS.md with the GPU's name.
"""

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

from experiments.cli import HelpFormatter

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_ops.py", "tests/test_cuda.py", "tests/test_aot.py"]
BENCH = [sys.executable, "-m", "bench", "--device", "cuda", "--sweep", "--model"]


def run(command: list[str], log: Path) -> int:
    """Run `command` in the repository root, its output both shown and kept in `log`."""
    print(f"$ {' '.join(command)}", flush=True)
    with open(log, "w") as file:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            sys.stdout.write(line)
            file.write(line)
    return process.wait()


def target_counts(path: Path) -> tuple[int, int]:
    """(met, missed) among the benchmark's targets in its targets CSV."""
    with open(path, newline="") as file:
        statuses = [row["status"] for row in csv.DictReader(file)]
    return statuses.count("PASS"), statuses.count("FAIL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", default="results/gpu-check", help="logs, benchmark tables and CSVs")
    parser.add_argument("--skip-bench", action="store_true", help="correctness only")
    args = parser.parse_args(argv)
    import torch  # after the arguments: --help answers at once

    if not torch.cuda.is_available():
        sys.exit("gpu_check.py: error: no CUDA device is visible (torch.cuda.is_available() is False)")
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name()
    capability = "sm_{}{}".format(*torch.cuda.get_device_capability())
    print(f"{name} ({capability}), torch {torch.__version__}, CUDA {torch.version.cuda}")

    started = time.perf_counter()
    tests_status = run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", *TESTS], out / "tests.log")
    verdict = [f"tests {'passed' if tests_status == 0 else 'FAILED'} (log: {args.out}/tests.log)"]
    if not args.skip_bench:
        bench_status = run([*BENCH, "--out", str(out / "bench")], out / "bench.log")
        targets = out / "bench" / "targets-cuda.csv"
        if bench_status != 0 or not targets.exists():
            verdict.append("benchmark FAILED to run")
            tests_status = tests_status or 1
        else:
            met, missed = target_counts(targets)
            verdict.append(f"speed targets met {met} of {met + missed} (tables: {args.out}/bench)")
    print(f"\ngpu-check on {name} ({capability}), {time.perf_counter() - started:.0f} s: " + "; ".join(verdict))
    return 0 if tests_status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
