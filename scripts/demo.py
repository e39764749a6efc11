r"""The main job, end to end on Fashion-MNIST: train ReLU, k-WTA 0.2 and k-WTA 0.1 resnet18-cifar networks,
attack each with attack.py's whole suite (PGD, DeepFool, AutoAttack, Square, BPDA, eot, es, and for the
k-WTA models transfer from the ReLU twin, on which es is calibrated too) plus PGD's eps curve up to
8 x eps, draw the loss landscapes and the curves, and write results/demo/summary.md.

    make demo                                  # = .venv/bin/python -m scripts.demo
    python -m scripts.demo --epochs 10 --train-subset 60000 --n-images 320 --budget standard   # a bigger run (GPU)

The defaults fit about 20 minutes on 2 CPU cores with bf16 in hardware (docs/results/demo-bf16/): 3,000
training images for 3 epochs, 1,000 test images, and the attacks cut in size, not in kind: 32 attacked images
at attack.py's demo budget (kwta.budgets: AutoAttack's iterations and Square's queries, PGD's restarts, es and eot
below their standard); the summary states every setting. A second run reuses every finished step (checkpoints,
attack results, figures) and resumes a half-trained network. The pipeline itself is experiments/demo.py.
"""

import argparse
import sys

from experiments.cli import HelpFormatter, positive_float, positive_int


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", default="results/demo", help="where everything goes")
    parser.add_argument("--data-dir", help="Fashion-MNIST folder (default: Debian's dataset-fashion-mnist)")
    parser.add_argument("--download", action="store_true", help="download Fashion-MNIST into --data-dir")
    parser.add_argument("--device", default="auto", help="train.py's and attack.py's --device")
    parser.add_argument("--train-subset", type=positive_int, default=3000, help="training images")
    parser.add_argument("--test-subset", type=positive_int, default=1000, help="test images for the accuracy")
    parser.add_argument("--epochs", type=positive_int, default=3, help="the lr drops x0.1 for the last one")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="training batch")
    parser.add_argument("--lr", type=positive_float, default=0.05, help="SGD learning rate")
    parser.add_argument("--n-images", type=positive_int, default=32, help="test images attacked per model")
    parser.add_argument("--budget", choices=("standard", "demo", "smoke"), default="demo",
                        help="attack.py's named budget (kwta.budgets)")
    parser.add_argument("--landscape-steps", type=positive_int, default=21, help="landscape grid points per axis")
    parser.add_argument("--dry-run", action="store_true", help="print the steps that would run")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from experiments.demo import run  # torch and the rest load only once the arguments are good

    try:
        summary = run(args)
    except RuntimeError as error:
        sys.exit(f"demo: {error}")
    if summary is not None:
        print(f"summary: {summary}")


if __name__ == "__main__":
    main()
