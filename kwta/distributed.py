"""torchrun helpers shared by train.py and attack.py; every function also works in a plain single process.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; `init` joins the process group (nccl on GPUs, gloo on CPU).
Collectives wait up to COLLECTIVE_TIMEOUT ($KWTA_COLLECTIVE_TIMEOUT seconds), not torch's default of 10 minutes
(30 with gloo): an evaluation's binarization test runs on the main process while the others wait in a gather,
and at full budgets it takes hours.
"""

import os
from datetime import timedelta

import torch
import torch.distributed as dist

COLLECTIVE_TIMEOUT = timedelta(seconds=float(os.environ.get("KWTA_COLLECTIVE_TIMEOUT", 24 * 3600)))


def init(device: str = "auto") -> torch.device:
    """Join the torchrun process group if there is one; return this process's device.

    device: "auto" (cuda if available), "cpu", "cuda" or "cuda:N"; under torchrun each process takes
    the GPU of its LOCAL_RANK.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} asked for, but no CUDA device is available")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device: {device!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if chosen.type == "cuda":
            chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(chosen)
        if chosen.type == "cuda":  # bound to its GPU at once, so collectives never guess a device
            dist.init_process_group("nccl", device_id=chosen, timeout=COLLECTIVE_TIMEOUT)
        else:
            dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    return chosen


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True on the one process that prints and writes files."""
    return rank() == 0


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """`values` summed element-wise over all processes (counts, loss sums), as float64 for exact counts."""
    if not dist.is_initialized():
        return list(values)
    # gloo reduces CPU tensors, nccl CUDA ones: the tensor lives where this process computes.
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.tolist()


def all_gather(value: object) -> list[object]:
    """Every process's `value`, in rank order (a list of one outside torchrun)."""
    if not dist.is_initialized():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics).

    In training each process updates its running statistics on its own batches, so after the last step
    they differ between processes. Evaluating the bare module once they agree scores, on every process,
    the model rank 0 checkpoints. DDP's forward broadcasts buffers as well, but as a collective inside
    each forward it needs every process to run equally many forwards, which test shards of unequal
    length (65 and 64 images in batches of 64) do not give.
    """
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
