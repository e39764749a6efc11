r"""The results: ReLU, k-WTA 0.2 and k-WTA 0.1 resnet18-cifar networks trained to convergence on the whole of
Fashion-MNIST, released, then evaluated at full strength: a campaign of many hours that any number of sessions
and machines share (the pipeline is experiments/results.py).

    make results                                     # = .venv/bin/python -m scripts.results
    python -m scripts.results --stop-after 150       # a session's share: no attack starts after 150 minutes
    python -m scripts.results --status               # what is done, what is left, the CPU hours left
    python -m scripts.results --summary-only         # docs/results/fashion-mnist/README.md from the files

Each run continues from the committed files: the released networks in weights/fashion-mnist/ (a network is
trained once), the attacks' journal folders and the steps' records in docs/results/fashion-mnist/. Commit both
after a run. Training: 60,000 images, one-cycle SGD, bf16 autocast where the CPU has it, channels-last (python -m
bench.training measures what pays). Attacks: the first 1,000 test images at the standard budgets; es and the
binarization test on the first 200.
"""

import argparse
import shlex
import sys
import time

from experiments.cli import HelpFormatter, positive_float, positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", default="results/fashion-mnist",
                        help="scratch, not committed: the training runs and their resume checkpoints")
    parser.add_argument("--page", default="docs/results/fashion-mnist",
                        help="committed: the steps' records, the journals, the results, the figures and README.md")
    parser.add_argument("--weights", default="weights", help="committed: the released networks (DATASET/NAME.pt)")
    parser.add_argument("--data-dir", help="Fashion-MNIST folder (default: Debian's dataset-fashion-mnist)")
    parser.add_argument("--download", action="store_true", help="download Fashion-MNIST into --data-dir")
    parser.add_argument("--device", default="auto", help="train.py's and attack.py's --device")
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=positive_int, default=8, help="one lr cycle over this many epochs")
    training.add_argument("--batch-size", type=positive_int, default=128)
    training.add_argument("--lr", type=positive_float, default=0.1, help="the cycle's peak")
    training.add_argument("--weight-decay", type=float, default=5e-4)
    training.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                          help="train.py's (auto: bf16 on CUDA and on CPUs with bf16 in hardware, else fp32)")
    training.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                          help="train in the contiguous memory format (channels-last is faster on the CPUs measured)")
    training.add_argument("--stem-relu", action="store_true", help="the paper's ReLU after the stem convolution")
    training.add_argument("--train-subset", type=positive_int, help="a slice of the training set (tests)")
    training.add_argument("--test-subset", type=positive_int, default=10000, help="with --train-subset")
    attacks = parser.add_argument_group("attacks")
    attacks.add_argument("--n-images", type=positive_int, default=1000, help="test images of the main table")
    attacks.add_argument("--check-images", type=positive_int, default=200,
                         help="test images of es and the binarization test")
    attacks.add_argument("--attack-batch-size", type=positive_int, default=50,
                         help="images per journal unit: the grain at which a run stops and another goes on")
    attacks.add_argument("--pgd-steps", type=positive_int, default=100, help="PGD's steps (and transfer's)")
    attacks.add_argument("--es-schedule", default="20x50,20x500,60x10000",
                         help="es's stages, STEPSxPAIRS (Tramer et al.'s by default)")
    attacks.add_argument("--binarization-attacks", default="all", help="the binarization test's attacks")
    attacks.add_argument("--budget", choices=("standard", "demo", "smoke"), default="standard",
                         help="attack.py's named budget (kwta.budgets); smoke: a run of the whole pipeline, "
                              "not a result")
    attacks.add_argument("--binarization-inner", type=positive_int, default=999,
                         help="the binarization test's inner points per image")
    parser.add_argument("--landscape-steps", type=positive_int, default=21, help="landscape grid points per axis")
    parser.add_argument("--stop-after", type=positive_float, metavar="MINUTES",
                        help="start no attack after this many minutes (what finished is journaled; run again to go on)")
    parser.add_argument("--steps", nargs="+", metavar="STEP",
                        help="run only these steps (and what they need), e.g. attack-relu; --dry-run lists them")
    parser.add_argument("--summary-only", action="store_true", help="write the page from the files, run nothing")
    parser.add_argument("--status", action="store_true",
                        help="print what is done and what is left from the committed files, run nothing")
    parser.add_argument("--dry-run", action="store_true", help="print the steps that would run")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


RUN_CONTROL = {"stop_after", "steps", "summary_only", "status", "dry_run", "help"}  # how a run goes, not what it makes


def campaign_command(args: argparse.Namespace) -> str:
    """The command that makes this campaign: every flag not at its default, less those that only steer a run."""
    parser, words = build_parser(), ["python", "-m", "scripts.results"]
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.dest in RUN_CONTROL or not action.option_strings or value == action.default:
            continue
        words += [action.option_strings[0]] if isinstance(value, bool) else [action.option_strings[0], str(value)]
    return shlex.join(words)


def main() -> None:
    started = time.time()
    args = parse_args()
    from experiments.results import Campaign, run, status, status_lines  # torch loads once the arguments are good

    if args.status:
        print("\n".join(status_lines(Campaign(args), status(Campaign(args)))))
        return
    try:
        written = run(args, campaign_command(args), stop_at=started + 60 * args.stop_after if args.stop_after else None)
    except (RuntimeError, FileNotFoundError) as error:
        sys.exit(f"results: {error}")
    if written is not None:
        page, complete = written
        print(f"page: {page} ({'complete' if complete else 'in progress: python -m scripts.results --status'})")


if __name__ == "__main__":
    main()
