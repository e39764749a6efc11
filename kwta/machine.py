"""Facts about this machine that choices and records depend on: the CPU's name, whether it does bf16 in
hardware (where bf16 autocast pays on a CPU; elsewhere it is emulated and slower than fp32), and where a
result was made (the `provenance` a journal's units carry)."""

import os
import platform
import subprocess
from functools import cache


def _cpuinfo(field: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as file:
            return next((line.split(":", 1)[1].strip() for line in file if line.startswith(field)), None)
    except OSError:
        return None


def cpu_name() -> str:
    """The CPU model, as lscpu's "Model name" gives it."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def native_bf16() -> bool:
    """Does this CPU do bf16 arithmetic in hardware (avx512_bf16 or AMX)?"""
    flags = (_cpuinfo("flags") or "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


@cache
def commit() -> str | None:
    """The git commit of the checkout kwta is imported from (with "+changes" when its tracked files differ
    from it), or None for an installed copy outside a checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def machine(device=None) -> str:
    """One line naming what computes: the GPU for a CUDA device, else the CPU and its core count."""
    import torch

    if device is not None and torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(torch.device(device))} (cuda)"
    return f"{platform.machine()} {cpu_name()}, {os.cpu_count()} cores (cpu)"
