"""The replication's grid and the paper's own experiments, every model attacked, tables beside the report's.

    make paper DATA_DIR=/data GPUS=0,1,2,3     # = python -m scripts.paper --data-dir /data --gpus 0,1,2,3
    python -m scripts.paper --dry-run          # every step with its settings, and which are finished
    python -m scripts.paper --slurm --slurm-partition gpu --data-dir /shared/data   # one SLURM job per step
    make paper-mini                            # the same grid at toy sizes: 2 CPU cores, minutes

Groups (one table each, in OUT/tables/):
- the replication's: {AlexNet, ResNet18} x {CIFAR-10, SVHN} x {from scratch: 80 epochs, lr 0.1, x0.1 from
  epoch 50; fine-tuned from torchvision's ImageNet weights with ImageNet's normalisation: 10 epochs, lr 0.01}
  x {ReLU, k-WTA 0.2, k-WTA 0.1}, batch 32, every image scaled to 224 px as the report did (--input-size).
  Each table sets the report's Table 1-8 figures beside ours and names the report's anomalies.
- the paper's (Xiao et al.'s code: train-cifar.ipynb, config/): its resnet18-cifar (3x3 stem that keeps its
  ReLU, k-WTA in the blocks) on CIFAR-10 and SVHN, batch 256, 80 epochs at lr 0.1, x0.1 from epoch 50:
  ReLU, k-WTA 0.2 and 0.1; incremental sparsity as the paper ran it (the trained k-WTA 0.2 model fine-tuned
  70 epochs at lr 0.001, ratio down by 0.005 every 2 epochs to 0.1); ReLU and k-WTA 0.1 adversarially
  trained with PGD (10 steps of 0.007 on CIFAR-10, 0.01 on SVHN) and with TRADES (beta 6); the four-model
  loss landscape (k-WTA 0.1, k-WTA 0.1 + PGD training, ReLU, ReLU + PGD training) per dataset; the 1-D fit.

Every model is attacked twice on the first 10 test batches of 32 (the report's images): with the report's
own protocol (PGD 40 steps at foolbox rel_stepsize 0.003, DeepFool 20 steps) and with attack.py's full
suite (--attacks all: PGD with restarts, DeepFool, AutoAttack, Square, BPDA, eot, es, transfer; worst case
per image; every figure with its 95% interval; PGD's eps curve), transfer coming from the matching twin
(k-WTA from ReLU, ReLU from k-WTA 0.2, adversarially trained from adversarially trained), on which es is
also calibrated. A_std is train.py's accuracy on the whole test set.

Steps are keyed on their settings (experiments/pipeline.py): a finished step is reused only when its command line,
the steps it needs and its input files are unchanged; otherwise it reruns, and so does what follows. One
invocation at a time holds OUT's lock. Locally, steps run one per GPU (--gpus) or N at once on the CPU
(--cpus N); with --slurm each step is one job (experiments/slurm.py). --download fetches the datasets into
--data-dir once, before any step starts.

--mini: the same groups and step kinds at toy sizes, CIFAR-10 replaced by synthetic data and SVHN by
Fashion-MNIST, torchvision models at 64 px, fine-tuning from an ImageNet-layout state dict made locally
(there are no ImageNet weights offline), attacks cut to 4 images and tiny budgets (every attack still
runs): its tables prove the machinery, not k-WTA. Its figures are not comparable with the report's,
which its tables say.

Time limits given to SLURM jobs (upper bounds for one H100-class GPU, from step counts; nothing here has
been measured on a GPU): from scratch at 224 px 8 h, fine-tuning 3 h, the paper's plain runs 3 h,
incremental 4 h, adversarial training (11 forward-backward passes per batch) 24 h, the attack suite 6 h,
the report's attacks 1 h, landscapes 1 h. A job at its limit is requeued and resumes from its checkpoint.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from experiments.cli import HelpFormatter, gpu_ids, positive_int


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--mini", action="store_true", help="the toy-sized grid (Fashion-MNIST, synthetic data)")
    parser.add_argument("--data-dir", help="where CIFAR-10 and SVHN live (default data/; --mini: Debian's "
                        "Fashion-MNIST)")
    parser.add_argument("--download", action="store_true", help="download missing datasets into --data-dir first")
    parser.add_argument("--out", help="results folder (default results/paper, --mini results/paper-mini)")
    parser.add_argument("--input-size", type=positive_int, help="input size of the AlexNet and ResNet18 runs "
                        "(default 224, the report's; --mini 64)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--gpus", type=gpu_ids, default="0",
                       help="comma-separated GPU ids (distinct integers); one step runs on each at once")
    where.add_argument("--cpus", type=positive_int, metavar="N", help="no GPU: N steps at once, sharing the cores")
    where.add_argument("--slurm", action="store_true", help="submit one SLURM job per step (submitit) and return")
    slurm = parser.add_argument_group("SLURM (with --slurm)")
    slurm.add_argument("--slurm-partition", help="the partition (default: the cluster's)")
    slurm.add_argument("--slurm-cpus", type=positive_int, default=8, help="CPUs per job")
    slurm.add_argument("--slurm-mem-gb", type=positive_int, help="memory per job")
    slurm.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. account=abc or qos=high (repeatable)")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="run only the matching steps and those they need (fnmatch, e.g. '*-svhn-*'; repeatable)")
    parser.add_argument("--rerun", action="append", default=[], metavar="PATTERN",
                        help="run matching steps again even if finished (fnmatch, e.g. 'attack-*'; repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="list every step, its status and its command")
    parser.add_argument("--tables-only", action="store_true", help="write the tables from the results so far")
    args = parser.parse_args()
    if args.input_size is not None and args.input_size < 63:
        parser.error(f"--input-size {args.input_size} is too small for AlexNet (at least 63; the report used 224)")
    if args.data_dir is None and not args.mini:
        args.data_dir = "data"
    if args.download and not args.data_dir:
        parser.error("--download needs --data-dir (where the datasets go)")
    try:
        args.slurm_options = dict(option.split("=", 1) for option in args.slurm_option)
    except ValueError:
        parser.error(f"--slurm-option takes KEY=VALUE, got {args.slurm_option}")
    args.out = Path(args.out or ("results/paper-mini" if args.mini else "results/paper"))
    args.devices = args.gpus
    from experiments.grid import FULL, MINI  # torch and the rest load only once the arguments are good

    args.scale = MINI if args.mini else FULL
    if args.input_size is not None:
        args.scale = dataclasses.replace(args.scale, torchvision_size=args.input_size)
    return args


def main() -> None:
    args = parse_args()
    from experiments.grid import run

    try:
        run(args)
    except RuntimeError as error:  # failed steps (the tables written first), a busy OUT, an --only matching nothing
        sys.exit(f"paper: {error}")


if __name__ == "__main__":
    main()
