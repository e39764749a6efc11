"""Facts about this machine that choices and reports depend on: the CPU's name, and whether it does bf16 in
hardware (where bf16 autocast pays on a CPU; elsewhere it is emulated and slower than fp32)."""

import platform


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
