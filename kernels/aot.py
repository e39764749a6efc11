"""Compile every Triton kernel specialization the launchers make, ahead of time, for real GPUs.

    python -m kwta.kernels.aot               # per specialization: registers, smem, spills, SASS per element;
                                             # then the traffic of one call (kernels/cost.py)
    python -m kwta.kernels.aot --arch 80 90 --json results/aot.json
    PYTHONPATH=.venv/triton-3.6.0 python -m kwta.kernels.aot   # the same with the oldest supported Triton

No GPU is needed, but TRITON_INTERPRET must be unset: the interpreter runs code the GPU compiler rejects (a
plain module global read inside a kernel, for one), so tests passing on CPU prove nothing about compiling.
This module drives the real launchers of kernels/triton_kwta.py over every dtype, every forward path (sorted
short rows, one program per row, split rows) and row lengths that reach every BLOCK, with each kernel's
`run` replaced by a recorder that launches nothing. Triton's own binder turns each recorded call into the
specialization a GPU launch would compile (signature, constexprs, the 16-byte alignment and divisibility
attributes of pointers and integers, num_warps); each distinct one is compiled with `triton.compile` for a
`GPUTarget` per architecture, and the ptxas that ships inside Triton (-v, the flags Triton itself passes)
reports registers, spills and static shared memory; the cuobjdump beside it disassembles the cubin. Its SASS
instructions per element (every thread runs the program once over its tile / (32 * num_warps) elements; a
loop's body counts once, as written: a static figure, not a profile) are the static cost that
tests/test_aot.py holds to budgets. A new kernel, launch path or constexpr is covered without anyone adding
it to a list.
"""

import argparse
import importlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

ARCHS = (80, 90)  # A100, H100/H200
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_REGISTERS = 255  # per thread on sm_80 and sm_90


@dataclass(frozen=True)
class Launch:
    """One launch as the runtime would specialize it (the JITFunction itself is looked up by name)."""

    kernel: str
    args: tuple
    kwargs: tuple  # sorted (name, value) pairs: constexprs given by keyword and launch options


@dataclass
class Compiled:
    kernel: str
    dtype: str
    constexprs: str
    attrs: str
    arch: int
    num_warps: int
    registers: int
    spill_stores: int  # bytes, from ptxas
    spill_loads: int
    stack_frame: int
    static_smem: int  # bytes ptxas reports (static shared memory)
    shared: int  # bytes of dynamic shared memory Triton's launch asks for
    instructions: int  # SASS instructions in the cubin (cuobjdump -sass), NOPs left out
    elements: int  # elements one program handles (its BLOCK or CHUNK constexpr, times ROWS where rows share one)

    @property
    def per_element(self) -> float:
        """Static SASS instructions per element a thread holds: every thread runs the program once over
        elements / (32 * num_warps) elements (a loop's body counted once, as written)."""
        return self.instructions * 32 * self.num_warps / self.elements


def _kernels(module) -> dict[str, JITFunction]:
    return {name: value for name, value in vars(module).items() if isinstance(value, JITFunction)}


def record_launches(module, workload) -> list[tuple[JITFunction, tuple, dict]]:
    """Run `workload()` with every JITFunction of `module` recording its launches instead of running."""
    if knobs.runtime.interpret:
        raise RuntimeError("TRITON_INTERPRET is set: kernels are interpreted, not compiled; unset it to compile")
    launches, originals = [], {}
    for kernel in _kernels(module).values():
        originals[kernel] = kernel.run

        def record(*args, grid, warmup, _kernel=kernel, **kwargs):
            launches.append((_kernel, args, kwargs))

        kernel.run = record
    try:
        workload()
    finally:
        for kernel, run in originals.items():
            kernel.run = run
    return launches


def _specialize(kernel: JITFunction, args: tuple, kwargs: dict, target: GPUTarget):
    """(options, signature, constexprs, attrs) exactly as JITFunction.run derives them for `target`."""
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    return kernel._pack_args(backend, dict(kwargs), bound_args, specialization, options)


def _ptxas_report(ptx: str, capability: int) -> dict[str, int]:
    """Registers, spills, stack and static shared memory from `ptxas -v`, run as Triton runs it."""
    with tempfile.TemporaryDirectory() as tmp:
        source = f"{tmp}/kernel.ptx"
        with open(source, "w") as file:
            file.write(ptx)
        log = subprocess.run(
            [get_ptxas(capability).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
             f"--gpu-name={sm_arch_from_capability(capability)}", source, "-o", f"{tmp}/kernel.cubin"],
            check=True, capture_output=True, text=True,
        ).stderr

    def number(pattern: str) -> int:
        match = re.search(pattern, log)
        return int(match.group(1)) if match else 0

    registers = number(r"Used (\d+) registers")
    if registers == 0:
        raise RuntimeError(f"ptxas reported no register count:\n{log}")
    return {
        "registers": registers, "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"), "stack_frame": number(r"(\d+) bytes stack frame"),
        "static_smem": number(r"(\d+) bytes smem"),
    }


SASS_LINE = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+([A-Z][A-Z0-9_.]*)", re.MULTILINE)


def sass_instructions(cubin: bytes) -> int:
    """The SASS instructions in a cubin, by the cuobjdump that ships inside Triton; NOPs (padding) left out."""
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/kernel.cubin"
        with open(path, "wb") as file:
            file.write(cubin)
        sass = subprocess.run([knobs.nvidia.cuobjdump.path, "-sass", path], check=True, capture_output=True,
                              text=True).stdout
    opcodes = SASS_LINE.findall(sass)
    if not opcodes:
        raise RuntimeError(f"cuobjdump printed no SASS:\n{sass[:2000]}")
    return sum(op != "NOP" for op in opcodes)


def _compile_one(job: tuple) -> Compiled:
    """Compile one specialization (runs in a worker process: the kernel is looked up by module and name)."""
    module_name, kernel_name, arch, signature, constexprs, attrs, options = job
    kernel = getattr(importlib.import_module(module_name), kernel_name)
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                              options=options)
    pointer_types = [v[1:] for v in signature.values() if v.startswith("*") and v[1:] in ("fp32", "fp16", "bf16")]
    names = {kernel.arg_names[path[0]]: value for path, value in constexprs.items()}
    return Compiled(
        kernel=kernel_name, dtype=pointer_types[0] if pointer_types else "-",
        constexprs=" ".join(f"{kernel.arg_names[path[0]]}={value}" for path, value in constexprs.items()),
        attrs=" ".join(kernel.arg_names[path[0]] for path, value in attrs.items() if value),
        arch=arch, num_warps=compiled.metadata.num_warps, shared=compiled.metadata.shared,
        instructions=sass_instructions(compiled.asm["cubin"]),
        elements=names.get("ROWS", 1) * names.get("BLOCK", names.get("CHUNK", 1)),
        **_ptxas_report(compiled.asm["ptx"], arch),
    )


def compile_launches(launches, archs=ARCHS, workers: int | None = None,
                     distinct_constexprs: bool = False) -> list[Compiled]:
    """Compile each distinct specialization among `launches` for every architecture in `archs`.

    distinct_constexprs: one compile per kernel, signature, constexprs and options, leaving out the variants
    that differ only in the alignment attributes of their pointers and integers (about half of them).
    Compiles run in `workers` processes (default: one per CPU); any compile error propagates.
    """
    jobs, seen = [], set()
    for arch in archs:
        for kernel, args, kwargs in launches:
            options, signature, constexprs, attrs = _specialize(kernel, args, kwargs, GPUTarget("cuda", arch, 32))
            job = (kernel.__module__, kernel.__name__, arch, signature, constexprs, attrs, options.__dict__)
            key = repr(job[:5] + job[6:]) if distinct_constexprs else repr(job)
            if key not in seen:
                seen.add(key)
                jobs.append(job)
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        return [_compile_one(job) for job in jobs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_compile_one, jobs))


def row_lengths(tile: int) -> list[int]:
    """Lengths that reach every power-of-two BLOCK of the one-program path, both sides of 16-divisibility,
    and the split path with a ragged last chunk."""
    lengths = {1, 3, tile + 1, 3 * tile + 16}
    block = 8
    while block <= tile:
        lengths.update({block, block // 2 + 1})
        block *= 2
    return sorted(lengths)


def launcher_workload(module):
    """Every forward and backward launch the launchers make over DTYPES and row_lengths()."""

    def run():
        for dtype in DTYPES:
            for n in row_lengths(module.TILE):
                for k in sorted({1, max(1, n // 10)}):
                    rows = torch.zeros((3, n), dtype=dtype)
                    _, winner_bits = module.kwta_forward(rows, k)
                    module.kwta_backward(rows, winner_bits)
            # a contiguous view whose data pointer is not 16-byte aligned (a slice of a larger buffer)
            rows = torch.zeros(2 * 1000 + 1, dtype=dtype)[1:].view(2, 1000)
            module.kwta_forward(rows, 100)

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="compute capabilities (80 90)")
    parser.add_argument("--json", help="write the table as JSON here too")
    parser.add_argument("--workers", type=int, help="compile processes (default: one per CPU)")
    parser.add_argument("--distinct-constexprs", action="store_true",
                        help="one compile per kernel, dtype, constexprs and warps (alignment variants left out)")
    parser.add_argument("--no-traffic", action="store_true",
                        help="leave out the counted traffic (kernels/cost.py, run under the interpreter)")
    args = parser.parse_args(argv)
    from . import triton_kwta

    try:
        launches = record_launches(triton_kwta, launcher_workload(triton_kwta))
    except RuntimeError as error:
        sys.exit(f"kwta.kernels.aot: error: {error}")
    results = compile_launches(launches, args.arch, args.workers, distinct_constexprs=args.distinct_constexprs)
    print(f"Triton {triton.__version__}")
    header = (f"{'kernel':24} {'dtype':5} {'arch':>4} {'warps':>5} {'regs':>4} {'spill B':>7} {'smem B':>7} "
              f"{'SASS':>6} {'/elem':>6}  constexprs")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.kernel:24} {r.dtype:5} {'sm_' + str(r.arch):>4} {r.num_warps:>5} {r.registers:>4} "
              f"{r.spill_stores + r.spill_loads:>7} {r.shared + r.static_smem:>7} {r.instructions:>6} "
              f"{r.per_element:>6.2f}  {r.constexprs}"
              + (f"  [16-divisible: {r.attrs}]" if r.attrs else ""))
    spilled = [r for r in results if r.spill_stores or r.spill_loads or r.stack_frame]
    print(f"{len(results)} specializations from {len(launches)} launches compiled for "
          + ", ".join(f"sm_{a}" for a in args.arch) + f"; {len(spilled)} spill registers or use a stack frame")
    if not args.no_traffic:  # counted under the interpreter, which must be set before triton is imported
        print("\nTraffic of one call, counted under the interpreter (python -m kwta.kernels.cost):", flush=True)
        subprocess.run([sys.executable, "-m", "kwta.kernels.cost"], env=os.environ | {"TRITON_INTERPRET": "1"},
                       check=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"triton": triton.__version__,
                       "compiled": [asdict(r) | {"per_element": r.per_element} for r in results]}, file, indent=1)
    sys.exit(1 if spilled else 0)


if __name__ == "__main__":
    main()
