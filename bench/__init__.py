"""Benchmarks of the k-WTA operator as users call it: `python -m bench --help`.

It sits above the library (it imports kwta; kernels/ imports nothing from it):
  providers.py  what is timed: the operator's backends, the paper's topk formula, np.partition, ReLU, copy
  timing.py     how: torch.utils.benchmark on CPU (wall clock and one-thread process time), do_bench on CUDA
  report.py     result rows, targets, terminal tables, CSV and JSON
  __main__.py   the command line: per-shape table, row-length sweep, model training step, targets
  gpu.py        the GPU check's sections and its one report (the command line: scripts/gpu_check.py)

Bytes. Forward GB/s counts 2 * itemsize bytes per element for every provider (8 for float32): one read
of x and one write of y, the least any k-WTA forward can move, as the Triton tutorials count the ideal
traffic rather than what an implementation moves. A provider's GB/s is its speed against that floor, and
triton's GB/s over copy's is the fraction of copy bandwidth it reaches. What each moves per float32
element (about):
  copy, relu  forward 8 (read x, write y); relu's backward 12 (read grad_y and its saved y, write grad_x).
  cpu         forward 16.1 plus a few percent: three reads of x (the second and third mostly from L2),
              the candidates' keys, write y and a 1/8-byte mask bit; backward 8.125 (grad_y, mask, grad_x).
  triton      forward 8.125 on rows of up to 2048 (read x, write y and the mask bit); longer rows are
              split and read x twice, plus the candidates' list: 13.4 counted on 32x64x32x32
              (kernels/cost.py); backward 8.125.
  partition   forward ~30 plus the select: keys in four torch passes, np.partition on a copy of them,
              compare and where; backward 9 (grad_y and the saved bool mask, write grad_x).
  topk        forward ~34 plus topk itself: topk reads x and writes k values and k int64 indices, repeat
              writes a full-size float threshold (4), x >= topval reads 8 and writes 1, .to(x) reads 1 and
              writes 4, comp * x reads 8 and writes 4; backward 12 (grad_y and the saved float comp).
  kthvalue    forward ~22 plus the select (kthvalue copies each row to select in it), compare reads 4
              writes 1, where reads 5 writes 4; backward 9 (grad_y and the saved bool mask, write grad_x).
  reference   like kthvalue but a full sort (writes 4-byte values and 8-byte indices per element).

Saved bytes. `saved B/el` is the sum of the unique storages (nbytes) that autograd packs for backward
during one forward, caught with torch.autograd.graph.saved_tensors_hooks, over x.numel(); the input x
counts too when a provider saves it. The topk formula packs a float mask (4) and topk's int64 indices
(8k/N, 0.8 at ratio 0.1): 4.8. `kept B/el` counts only what is still alive once the forward has
returned: topk's indices belong to a graph branch nothing downstream references, so topk keeps 4.0.

Files, named by device under --out: ops-cpu.csv, sweep-cpu.csv, model-cpu.csv (a row per clock),
targets-cpu.csv and environment-cpu.json; plots/bench.py draws them.
"""

# What is timed, by name (bench/providers.py says what each is): here, without torch, for --help and --providers.
PROVIDERS = ("topk", "reference", "cpu", "partition", "kthvalue", "relu", "triton", "copy")
