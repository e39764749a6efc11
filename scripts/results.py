r"""The results: ReLU, k-WTA 0.2 and k-WTA 0.1 resnet18-cifar networks trained to convergence on the whole of
Fashion-MNIST, then evaluated at full strength (the pipeline is experiments/results.py):

    make results                                     # = .venv/bin/python -m scripts.results
    python -m scripts.results --summary-only --out docs/results/fashion-mnist   # the page's tables, from its files

Training: 60,000 images, one-cycle SGD (python -m bench.training measures what else pays on a CPU). Attacks:
the first 1,000 test images at the standard budgets; es and the binarization test on the first 200. Every
step resumes where an interruption left it and a second run reuses every finished one.
"""

import argparse
import sys

from experiments.cli import HelpFormatter, positive_float, positive_int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", default="results/fashion-mnist", help="where everything goes")
    parser.add_argument("--data-dir", help="Fashion-MNIST folder (default: Debian's dataset-fashion-mnist)")
    parser.add_argument("--download", action="store_true", help="download Fashion-MNIST into --data-dir")
    parser.add_argument("--device", default="auto", help="train.py's and attack.py's --device")
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=positive_int, default=8, help="one lr cycle over this many epochs")
    training.add_argument("--batch-size", type=positive_int, default=128)
    training.add_argument("--lr", type=positive_float, default=0.1, help="the cycle's peak")
    training.add_argument("--weight-decay", type=float, default=5e-4)
    training.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                          help="train.py's (auto: bf16 on CUDA, fp32 on a CPU)")
    training.add_argument("--channels-last", action="store_true", help="train in channels-last memory format")
    training.add_argument("--stem-relu", action="store_true", help="the paper's ReLU after the stem convolution")
    training.add_argument("--train-subset", type=positive_int, help="a slice of the training set (tests)")
    training.add_argument("--test-subset", type=positive_int, default=10000, help="with --train-subset")
    attacks = parser.add_argument_group("attacks")
    attacks.add_argument("--n-images", type=positive_int, default=1000, help="test images of the main table")
    attacks.add_argument("--check-images", type=positive_int, default=200,
                         help="test images of es and the binarization test")
    attacks.add_argument("--attack-batch-size", type=positive_int, default=100)
    attacks.add_argument("--es-schedule", default="20x50,20x500,60x10000",
                         help="es's stages, STEPSxPAIRS (Tramer et al.'s by default)")
    attacks.add_argument("--binarization-attacks", default="all", help="the binarization test's attacks")
    attacks.add_argument("--cut", type=positive_int, help="cut every budget to this (a smoke run, not a result)")
    parser.add_argument("--landscape-steps", type=positive_int, default=21, help="landscape grid points per axis")
    parser.add_argument("--summary-only", action="store_true", help="write the summary from OUT's files, run nothing")
    parser.add_argument("--dry-run", action="store_true", help="print the steps that would run")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    from experiments.results import run  # torch and the rest load only once the arguments are good

    try:
        summary = run(args)
    except (RuntimeError, FileNotFoundError) as error:
        sys.exit(f"results: {error}")
    if summary is not None:
        print(f"summary: {summary}")


if __name__ == "__main__":
    main()
