"""python -m bench.training: what makes a training step fast on this machine, measured, one table.

    python -m bench.training                         # resnet18-cifar on Fashion-MNIST-sized batches, ReLU and k-WTA 0.2
    python -m bench.training --batch-sizes 128 256 --steps 10 --device cuda

Each configuration trains the network as train.py does (SGD with momentum, cross-entropy, the model in train
mode) on random 1 x 28 x 28 images and reports the median seconds per image over --steps steps after two
warm-up steps (torch.compile's compile time is in the warm-up, and stated apart):
  fp32            the baseline: contiguous memory, no autocast
  channels-last   the network and the batches in channels-last memory format (train.py --channels-last)
  bf16            bf16 autocast (train.py --precision bf16): only where the CPU has native bf16 arithmetic
                  (avx512_bf16 or AMX); elsewhere emulated, slower, and left out
  compile         torch.compile of the training module (train.py --compile)
and every batch size of --batch-sizes in fp32. The CPU, the thread count and torch's version head the table:
a ratio measured on one CPU is not another's.
"""

from __future__ import annotations

import argparse
import statistics
import time

from experiments.cli import HelpFormatter, positive_int


def time_steps(activation: str, batch_size: int, *, channels_last: bool, bf16: bool, compile: bool, steps: int,
               device: str) -> tuple[float, float]:
    """(median seconds per image over `steps` steps, seconds of the two warm-up steps)."""
    import torch
    import torch.nn.functional as F

    from kwta.models import build_model

    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model("resnet18-cifar", num_classes=10, in_channels=1, activation=activation,
                        ratio=0.2 if activation == "kwta" else None).to(device, memory_format=memory_format).train()
    trained = torch.compile(model) if compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.rand(batch_size, 1, 28, 28, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch_size,), device=device)

    def step() -> float:
        started = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(trained(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    warm_up = step() + step()
    return statistics.median(step() for _ in range(steps)) / batch_size, warm_up


# name -> how it differs from the fp32 baseline
CONFIGURATIONS = {
    "fp32": {},
    "channels-last": {"channels_last": True},
    "bf16": {"bf16": True},
    "bf16 channels-last": {"bf16": True, "channels_last": True},
    "compile": {"compile": True},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--configurations", nargs="+", choices=tuple(CONFIGURATIONS), default=list(CONFIGURATIONS),
                        help="what to time at the first batch size (bf16 only where it is native)")
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=positive_int, default=5, help="timed steps per configuration")
    parser.add_argument("--activations", nargs="+", choices=("relu", "kwta"), default=["relu", "kwta"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    import torch

    from kwta.machine import cpu_name, native_bf16

    base, bf16 = args.batch_sizes[0], args.device != "cpu" or native_bf16()
    configurations = [("fp32", {})] + [(name, CONFIGURATIONS[name]) for name in args.configurations
                                       if name != "fp32" and (bf16 or "bf16" not in name)]
    configurations += [(f"fp32, batch {b}", {"batch_size": b}) for b in args.batch_sizes[1:]]
    print(f"# {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, device {args.device}"
          + ("" if bf16 else "; no native bf16: bf16 left out"))
    print("| network | configuration | batch | ms per image | speed-up | warm-up s |")
    print("|---|---|---|---|---|---|")
    for activation in args.activations:
        baseline = None
        for name, options in configurations:
            options = {"channels_last": False, "bf16": False, "compile": False, "batch_size": base, **options}
            per_image, warm_up = time_steps(activation, steps=args.steps, device=args.device, **options)
            baseline = baseline or per_image
            print(f"| {'k-WTA 0.2' if activation == 'kwta' else 'ReLU'} | {name} | {options['batch_size']} | "
                  f"{1000 * per_image:.2f} | {baseline / per_image:.2f}x | {warm_up:.1f} |", flush=True)


if __name__ == "__main__":
    main()
