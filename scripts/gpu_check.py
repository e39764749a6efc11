r"""One GPU run that tells everything about the kernels: `python scripts/gpu_check.py` (`make gpu-check` once
`make setup` has run).

It needs only torch and Triton, whichever versions the machine has: no network, no `make setup`, no pytest,
and kwta is imported from this checkout, installed or not. It prints the versions first, then each section
as it finishes, and ends with one report, also written to --out (report.md, report.json, profile.txt):

  correctness  every backend against kernels/reference.py on the host, bit for bit, forward and backward:
               triton and reference on CUDA, cpu on the host (where numba is installed), over the hard
               cases (rows split over programs, float16 and bfloat16, ties, NaN, +-inf and signed zeros,
               k = 1 and k = N, channel mode, channels-last input)
  cuda graph   forward and backward captured once, replayed on new inputs, equal to eager
  copy         x.clone() of 256 MB: the device's copy bandwidth, measured in this run
  shapes       per shape and dtype (resnet18-cifar's k-WTA layers at batch 32 to 256, the 224-px stem at
               batch 32, channel mode), the forward's eager wall time per call (host clock: what a
               training loop sees, launch overhead included) and its CUDA-graph replay time per call
               (inputs rotating over 4 buffers, L2 not flushed: as in a network, where the layer before
               has just written x); the backward's replay; GB/s of the floor's bytes (read x, write y and
               the 1/8-byte mask) and its fraction of a same-shape copy's GB/s; the paper's topk formula
               and torch.kthvalue beside
  choices      what the launchers pick by Triton version or BLOCK, made both ways on this Triton: the split
               path's pass-0 histogram (tl.histogram, or per-element atomics where tl.histogram lowers to
               ballots), the one-program path's digit width (5, 8 or 11 bits), and whether rows of 257-512 are
               sorted (where tl.histogram lowers to ballots) or histogrammed; same bits as the pick, and
               the replay time per call of each, so that the run says which costs less on this GPU
  profile      torch.profiler's per-kernel table of k-WTA forward and backward on one shape
  training     a bf16 channels-last resnet18-cifar training step (python -m bench.training's), k-WTA 0.2
               against ReLU
  compile      torch.compile(mode="reduce-overhead") of a k-WTA resnet18-cifar: its logits against eager's
               and its time per call

A section that fails says so in the report, with its error, and the next still runs. The exit status is 0
only when every correctness case matched and no section failed; speed is reported, never judged. It takes
a few minutes on an H100 or H200, most of it Triton compiling each kernel specialization once (a
TRITON_CACHE_DIR filled by an earlier run is reused). Paste report.md into BENCHMARKS.md.

--dry-run runs every code path where there is no GPU, on CPU tensors at tiny sizes: the triton backend in
Triton's interpreter (TRITON_INTERPRET=1, set before kwta is imported), an eager stand-in for the graph
replay, time.perf_counter for every clock, torch.compile with its "eager" backend. Its figures mean nothing;
tests/test_gpu_check.py runs it so that the script cannot break unseen.
"""

import argparse
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    sys.path.insert(0, str(ROOT))
    from experiments.cli import HelpFormatter, positive_float

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", default="results/gpu-check", help="report.md, report.json and profile.txt")
    parser.add_argument("--dry-run", action="store_true",
                        help="every code path on CPU tensors at tiny sizes (Triton's interpreter): no GPU needed")
    parser.add_argument("--seconds-per-timing", type=positive_float, default=0.1,
                        help="how long each timed loop runs (after one warm-up call)")
    return parser.parse_args(argv)


def import_checkout():
    """kwta from this checkout whether or not it is installed: kernels/ is the package kwta.kernels, as
    pyproject.toml's package-dir maps it. Returns the kwta module."""
    spec = importlib.util.spec_from_file_location("kwta.kernels", ROOT / "kernels" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "kernels")])
    kernels = importlib.util.module_from_spec(spec)
    sys.modules["kwta.kernels"] = kernels
    spec.loader.exec_module(kernels)
    import kwta

    kwta.kernels = kernels
    return kwta


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton_kwta is imported: its kernels run on CPU tensors
    import_checkout()
    from bench.gpu import run

    command = "python scripts/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        return run(args, command.strip())
    except RuntimeError as error:
        sys.exit(f"gpu_check.py: error: {error}")


if __name__ == "__main__":
    sys.exit(main())
