#!/usr/bin/env python
r"""Independent L-inf attack cascade against a k-WTA checkpoint, to cross-check the project's attack suite.

    python cascade.py --checkpoint results/demo/runs/kwta-0.2/checkpoint.pt \
        --n-images 64 --eps 0.1 --threads 1 --out cascade-kwta-0.2.json

Images: the first --n-images of the Fashion-MNIST test split (t10k), in file order, read here from the idx
files with a reader of this script's own, as float32 in [0, 1] computed exactly like torchvision's
ToDtype(float32, scale=True) (uint8 -> float32, times 1/255), so the tensors equal those attack.py feeds.

From the project this script uses only kwta.checkpoint.load_model (the network; normalisation and any resize
live inside it) and the class kwta.modules.KWTA (to find the k-WTA layers). The attacks are the autoattack
package's own classes (pyautoattack); the BPDA surrogate is written here.

Stages (each attacks only the images still robust; every adversarial is clipped to the eps ball and to
[0, 1] and re-verified with a plain forward of the EXACT model; an image is robust only if its clean
prediction is right and every stage failed on it):

  aa-apgd-ce        APGDAttack, loss ce, n_iter 100, n_restarts 1, rho .75, eot 1   (AutoAttack standard)
  aa-apgd-t         APGDAttack_targeted, n_iter 100, n_restarts 1, n_target_classes 9 (AutoAttack standard)
  aa-square         SquareAttack, n_queries 5000, p_init .8, n_restarts 1, margin loss, resc_schedule False
  bpda-T<T>-apgd-ce / bpda-T<T>-apgd-t   for T in --temperatures (default 0.1,0.3,1,3): the same two APGD
                    attacks on a copy of the model whose KWTA layers keep their exact forward but
                    back-propagate the vjp of s(x) = x * sigmoid((x - tau) / (T * std_row)), tau the row's
                    k-th largest value (detached), std_row the row's population std (detached)
                    (--temperature-scale absolute: T itself instead of T * std_row)
  bpda-relu-apgd-ce / bpda-relu-apgd-t   the same with the backward of plain ReLU(x): grad * (x > 0)

Every attack object is built fresh for its stage with its final counts and seed 0 (nothing is changed
after construction). --quick cuts every n_iter to 5 and Square's queries to 50 (for testing only).

--out (JSON, written atomically after every stage) holds the settings, the labels, the clean mask, per
stage the robust mask before and after, the images fooled (verified), those the attack claimed but the
exact model did not confirm, the seconds, and at the end the final robust mask and counts. Adversarials
that were verified are kept in OUT.adv.pt ({stage: {"index": LongTensor, "x_adv": Tensor}}). A rerun with
the same --out skips every finished stage (the settings must match; the clean mask is recomputed and
must match too).
"""

import argparse
import copy
import gzip
import io
import json
import os
import struct
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_TEMPERATURES = (0.1, 0.3, 1.0, 3.0)
NATIVE_SIZE = 28


# ----------------------------------------------------------------------------------------------- arguments

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a kwta checkpoint (train.py's checkpoint.pt)")
    parser.add_argument("--n-images", type=int, default=64, help="first N test images")
    parser.add_argument("--eps", type=float, default=0.1, help="L-inf budget, in [0, 1] pixel units")
    parser.add_argument("--out", required=True, help="results JSON (atomic; resumable per stage)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--batch-size", type=int, default=64, help="images per attack call")
    parser.add_argument("--data-dir", default=FASHION_MNIST_DIR, help="folder with t10k-*-idx*-ubyte.gz")
    parser.add_argument("--temperatures", default=",".join(f"{t:g}" for t in DEFAULT_TEMPERATURES),
                        help="BPDA sigmoid temperatures, comma-separated")
    parser.add_argument("--temperature-scale", choices=("std", "absolute"), default="std",
                        help="std: the sigmoid's scale is T times the row's std (default); absolute: T itself")
    parser.add_argument("--no-relu-surrogate", action="store_true", help="skip the ReLU-backward BPDA stages")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="testing: n_iter 5, Square queries 50")
    args = parser.parse_args(argv)
    if args.n_images < 1:
        parser.error("--n-images must be >= 1")
    if not 0 < args.eps <= 1:
        parser.error("--eps must be in (0, 1]")
    try:
        args.temperatures = [float(t) for t in args.temperatures.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--temperatures: numbers, got {args.temperatures!r}")
    if not all(t > 0 for t in args.temperatures):
        parser.error("--temperatures must be > 0")
    return args


# ------------------------------------------------------------------------------------------------- data

def read_idx_file(path: str) -> np.ndarray:
    """An idx file (gzipped or not) of unsigned bytes: magic 0x00 0x00 0x08 ndim, ndim big-endian int32 dims."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    zero1, zero2, dtype_code, ndim = struct.unpack(">BBBB", raw[:4])
    if zero1 != 0 or zero2 != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (header {raw[:4]!r})")
    dims = struct.unpack(f">{ndim}i", raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header dims {dims} but {body.size} bytes of data")
    return body.reshape(dims)


def load_test_images(folder: str, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n test images (N, 1, size, size) float32 in [0, 1] and their labels (int64)."""
    images = read_idx_file(os.path.join(folder, "t10k-images-idx3-ubyte.gz"))
    labels = read_idx_file(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"))
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (NATIVE_SIZE, NATIVE_SIZE):
        raise ValueError(f"unexpected shapes: images {images.shape}, labels {labels.shape}")
    if n > images.shape[0]:
        raise ValueError(f"asked for {n} images, the test split has {images.shape[0]}")
    x = torch.from_numpy(images[:n].copy()).unsqueeze(1)  # uint8 (n, 1, 28, 28)
    if size != NATIVE_SIZE:
        # Older checkpoints take resized images (the project's data transform resized the uint8 image).
        from torchvision.transforms.v2 import functional as TF
        x = TF.resize(x, [size, size], antialias=True)
    # torchvision's ToDtype(float32, scale=True) on uint8: .to(float32).mul_(1 / 255) (bit-identical to it)
    x = x.to(torch.float32).mul_(1.0 / 255)
    y = torch.from_numpy(labels[:n].astype(np.int64))
    return x, y


# ------------------------------------------------------------------------------------------------- io

def atomic_bytes(path: str, payload: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, record: dict) -> None:
    atomic_bytes(path, (json.dumps(record, indent=1) + "\n").encode())


def write_adv(path: str, adv: dict) -> None:
    buffer = io.BytesIO()
    torch.save(adv, buffer)
    atomic_bytes(path, buffer.getvalue())


# ------------------------------------------------------------------------------------------------- BPDA

def kwta_rows(x: torch.Tensor, mode: str) -> torch.Tensor:
    """The rows k-WTA competes over: one per sample (vol), or one per (sample, channel) (channel)."""
    lead = 2 if mode == "channel" and x.dim() > 2 else 1
    return x.reshape(int(np.prod(x.shape[:lead])), -1)


def winners_per_row(n: int, ratio, k) -> int:
    return int(k) if k is not None else max(1, int(ratio * n))


class ExactForwardSurrogateBackward(torch.autograd.Function):
    """Forward: returns `y_exact` (the exact k-WTA output, computed outside); backward: the vjp of a surrogate.

    kind "sigmoid": s(x) = x * sigmoid((x - tau) / scale), tau the row's k-th largest value, both detached.
    kind "relu":    s(x) = relu(x), so grad * (x > 0).
    """

    @staticmethod
    def forward(ctx, x, y_exact, kind, k, mode, temperature, scale_mode):
        ctx.save_for_backward(x)
        ctx.kind, ctx.k, ctx.mode, ctx.temperature, ctx.scale_mode = kind, k, mode, temperature, scale_mode
        return y_exact.clone()

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        if ctx.kind == "relu":
            return grad_out * (x > 0).to(grad_out.dtype), None, None, None, None, None, None
        rows = kwta_rows(x.detach(), ctx.mode)
        grad_rows = kwta_rows(grad_out.contiguous(), ctx.mode)
        with torch.no_grad():
            tau = torch.topk(rows, ctx.k, dim=1).values[:, -1:]
            if ctx.scale_mode == "std":
                scale = ctx.temperature * rows.std(dim=1, keepdim=True, correction=0)
            else:
                scale = torch.full_like(tau, ctx.temperature)
            scale = scale.clamp_min(1e-12)
        with torch.enable_grad():
            r = rows.clone().requires_grad_(True)
            surrogate = r * torch.sigmoid((r - tau) / scale)
            (grad_r,) = torch.autograd.grad(surrogate, r, grad_rows)
        return grad_r.reshape(x.shape), None, None, None, None, None, None


class BPDAWrapper(nn.Module):
    """Wraps one KWTA module: its exact output forward, the surrogate's gradient backward."""

    def __init__(self, layer: nn.Module, kind: str, temperature, scale_mode: str):
        super().__init__()
        self.layer, self.kind, self.temperature, self.scale_mode = layer, kind, temperature, scale_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            y = self.layer(x.detach())
        mode = getattr(self.layer, "mode", "vol")
        n = kwta_rows(x, mode).shape[1]
        k = winners_per_row(n, getattr(self.layer, "ratio", None), getattr(self.layer, "k", None))
        return ExactForwardSurrogateBackward.apply(x, y, self.kind, k, mode, self.temperature, self.scale_mode)


def surrogate_model(model: nn.Module, kwta_class, kind: str, temperature, scale_mode: str) -> tuple[nn.Module, int]:
    """A deep copy of `model` with every KWTA module wrapped in a BPDAWrapper; (copy, how many wrapped)."""
    twin = copy.deepcopy(model).eval()
    wrapped = 0
    for parent in list(twin.modules()):
        if isinstance(parent, BPDAWrapper):
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, kwta_class):
                setattr(parent, name, BPDAWrapper(child, kind, temperature, scale_mode))
                wrapped += 1
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin, wrapped


# ------------------------------------------------------------------------------------------------- attacks

def import_autoattack():
    try:
        import autoattack as package
        from autoattack.autopgd_base import APGDAttack, APGDAttack_targeted
        from autoattack.square import SquareAttack
    except ImportError:
        import pyautoattack as package
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
        from pyautoattack.square import SquareAttack
    return package, APGDAttack, APGDAttack_targeted, SquareAttack


class NoGrad(nn.Module):
    """For the score-based Square: forward under no_grad."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.no_grad():
            return self.model(x)


def make_attack(kind: str, network: nn.Module, settings: dict):
    _, APGDAttack, APGDAttack_targeted, SquareAttack = import_autoattack()
    eps, seed = settings["eps"], settings["seed"]
    if kind == "apgd-ce":
        return APGDAttack(network, n_iter=settings["apgd_iterations"], norm="Linf", n_restarts=1, eps=eps,
                          seed=seed, loss="ce", eot_iter=1, rho=.75, verbose=False, device="cpu")
    if kind == "apgd-t":
        return APGDAttack_targeted(network, n_iter=settings["apgd_iterations"], norm="Linf", n_restarts=1, eps=eps,
                                   seed=seed, eot_iter=1, rho=.75, n_target_classes=9, verbose=False, device="cpu")
    if kind == "square":
        return SquareAttack(NoGrad(network), p_init=.8, n_queries=settings["square_queries"], eps=eps, norm="Linf",
                            n_restarts=1, seed=seed, verbose=False, device="cpu", resc_schedule=False,
                            loss="margin")
    raise ValueError(kind)


def stage_plan(args) -> list[dict]:
    plan = [dict(name=f"aa-{kind}", attack=kind, surrogate=None) for kind in ("apgd-ce", "apgd-t", "square")]
    surrogates = [("sigmoid", t) for t in args.temperatures] + ([] if args.no_relu_surrogate else [("relu", None)])
    for kind, temperature in surrogates:
        label = f"bpda-T{temperature:g}" if kind == "sigmoid" else "bpda-relu"
        for attack in ("apgd-ce", "apgd-t"):
            plan.append(dict(name=f"{label}-{attack}", attack=attack,
                             surrogate=dict(kind=kind, temperature=temperature)))
    return plan


def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def run_stage(stage: dict, model, kwta_class, x, y, robust: torch.Tensor, settings: dict, batch_size: int):
    """Attack the robust images; return (fooled mask, claimed-unverified mask, adversarials, info)."""
    n = len(x)
    fooled = torch.zeros(n, dtype=torch.bool)
    claimed_unverified = torch.zeros(n, dtype=torch.bool)
    indices = robust.nonzero().flatten()
    info = dict(n_attacked=int(len(indices)))
    network = model
    if stage["surrogate"] is not None:
        sur = stage["surrogate"]
        network, wrapped = surrogate_model(model, kwta_class, sur["kind"], sur["temperature"],
                                           settings["temperature_scale"])
        info["kwta_layers_wrapped"] = wrapped
        if wrapped == 0:
            raise RuntimeError("the model holds no KWTA module: BPDA would equal the plain attack")
        # the surrogate's forward must be the exact model's, bit for bit; its gradient must be nonzero
        probe = x[: min(8, n)].clone().requires_grad_(True)
        with torch.no_grad():
            exact = model(probe)
        out = network(probe)
        info["forward_bit_exact"] = bool(torch.equal(out.detach(), exact))
        if not info["forward_bit_exact"]:
            raise RuntimeError(f"{stage['name']}: the surrogate model's forward differs from the exact model's")
        (g,) = torch.autograd.grad(F.cross_entropy(out, y[: len(probe)]), probe)
        info["probe_grad_abs_mean"] = float(g.abs().mean())
    adv_keep = []
    if len(indices):
        torch.manual_seed(settings["seed"])
        for start in range(0, len(indices), batch_size):
            idx = indices[start:start + batch_size]
            xb, yb = x[idx].clone(), y[idx].clone()
            attack = make_attack(stage["attack"], network, settings)  # fresh, final counts, seed 0
            x_adv = attack.perturb(xb, yb).detach()
            claimed = (x_adv != xb).flatten(1).any(1)
            # clip to the eps ball and [0, 1], then re-verify on the exact model with a plain forward
            eps = settings["eps"]
            x_adv = torch.min(torch.max(x_adv, xb - eps), xb + eps).clamp(0.0, 1.0)
            with torch.no_grad():
                wrong = model(x_adv).argmax(1) != yb
            fooled[idx] = wrong
            claimed_unverified[idx] = claimed & ~wrong
            if wrong.any():
                adv_keep.append((idx[wrong], x_adv[wrong]))
    adv = None
    if adv_keep:
        adv = dict(index=torch.cat([i for i, _ in adv_keep]), x_adv=torch.cat([a for _, a in adv_keep]))
        info["max_linf_verified"] = float((adv["x_adv"] - x[adv["index"]]).abs().flatten(1).max())
    return fooled, claimed_unverified, adv, info


# ------------------------------------------------------------------------------------------------- main

def to_list(mask: torch.Tensor) -> list[bool]:
    return [bool(v) for v in mask.tolist()]


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(args.threads)
    except RuntimeError:
        pass
    warnings.filterwarnings("once")

    from kwta.checkpoint import load_model
    from kwta.modules import KWTA

    package, *_ = import_autoattack()
    model, checkpoint = load_model(args.checkpoint, "cpu")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    spec = checkpoint["spec"]
    if spec.get("dataset") != "fashion-mnist":
        sys.exit(f"cascade.py: the checkpoint's dataset is {spec.get('dataset')!r}, this reads Fashion-MNIST")
    # the pixels the model takes: the data's own where the model resizes inside (spec image_size), else input_size
    size = int(spec.get("image_size", spec["input_size"]))
    n_kwta = sum(isinstance(m, KWTA) for m in model.modules())

    x, y = load_test_images(args.data_dir, args.n_images, size)
    settings = dict(
        checkpoint=os.path.abspath(args.checkpoint), n_images=args.n_images, eps=args.eps, seed=args.seed,
        image_size=size, quick=args.quick, batch_size=args.batch_size,
        apgd_iterations=5 if args.quick else 100, apgd_restarts=1, apgd_t_target_classes=9, apgd_rho=0.75,
        square_queries=50 if args.quick else 5000, square_p_init=0.8, square_resc_schedule=False,
        temperatures=args.temperatures, temperature_scale=args.temperature_scale,
        relu_surrogate=not args.no_relu_surrogate,
        autoattack_package=f"{package.__name__} {getattr(package, '__version__', '?')}",
        torch=torch.__version__, threads=args.threads,
    )
    plan = stage_plan(args)
    adv_path = args.out + ".adv.pt"

    clean_correct = predict(model, x, args.batch_size) == y
    if os.path.exists(args.out):
        with open(args.out) as handle:
            record = json.load(handle)
        differing = [key for key in settings if key not in ("threads", "batch_size", "torch")
                     and record.get("settings", {}).get(key) != settings[key]]
        if differing:
            sys.exit(f"cascade.py: {args.out} was made with other settings ({', '.join(differing)}); "
                     "use another --out or delete it")
        if record["clean_correct"] != to_list(clean_correct):
            sys.exit(f"cascade.py: the clean predictions differ from those in {args.out}")
        adv_all = torch.load(adv_path, weights_only=True) if os.path.exists(adv_path) else {}
    else:
        record = dict(tool="crosscheck/cascade.py", spec=spec, settings=settings,
                      image_indices=list(range(args.n_images)), labels=y.tolist(),
                      clean_correct=to_list(clean_correct), n_kwta_layers=n_kwta,
                      stage_order=[s["name"] for s in plan], stages={}, finished=False)
        adv_all = {}
    record["settings"]["threads"] = args.threads
    print(f"{spec['arch']} {spec['activation']} ratio {spec.get('ratio')} ({n_kwta} KWTA layers), "
          f"{args.n_images} images at {size} px, eps {args.eps}, clean {int(clean_correct.sum())}/{args.n_images}"
          f"{' [QUICK]' if args.quick else ''}", flush=True)
    if n_kwta == 0:
        print("warning: no KWTA module in this model; the BPDA stages will fail", file=sys.stderr)

    robust = clean_correct.clone()
    first_fooled_by = [None if c else "clean" for c in to_list(clean_correct)]
    for stage in plan:
        name = stage["name"]
        done = record["stages"].get(name)
        if done and done.get("finished"):
            robust = torch.tensor(done["robust_after"])
            for i, f in enumerate(done["fooled"]):
                if f and first_fooled_by[i] is None:
                    first_fooled_by[i] = name
            print(f"{name:<22} done before: robust {int(robust.sum())}", flush=True)
            continue
        started = time.time()
        fooled, unverified, adv, info = run_stage(stage, model, KWTA, x, y, robust, record["settings"],
                                                  args.batch_size)
        seconds = time.time() - started
        robust_before = robust.clone()
        robust = robust & ~fooled
        for i, f in enumerate(to_list(fooled)):
            if f and first_fooled_by[i] is None:
                first_fooled_by[i] = name
        record["stages"][name] = dict(
            attack=stage["attack"], surrogate=stage["surrogate"], robust_before=to_list(robust_before),
            fooled=to_list(fooled), robust_after=to_list(robust), claimed_but_not_verified=to_list(unverified),
            n_fooled=int(fooled.sum()), n_robust_after=int(robust.sum()),
            n_claimed_but_not_verified=int(unverified.sum()), seconds=round(seconds, 2), finished=True, **info)
        if adv is not None:
            adv_all[name] = adv
            write_adv(adv_path, adv_all)
        write_json(args.out, record)
        print(f"{name:<22} attacked {info['n_attacked']:>3}  fooled {int(fooled.sum()):>3}  "
              f"robust {int(robust.sum()):>3}  ({seconds:.1f} s)", flush=True)

    record["final_robust"] = to_list(robust)
    record["first_fooled_by"] = first_fooled_by
    record["counts"] = dict(n_images=args.n_images, clean=int(clean_correct.sum()),
                            **{name: record["stages"][name]["n_robust_after"] for name in record["stage_order"]},
                            final=int(robust.sum()))
    record["seconds"] = {name: record["stages"][name]["seconds"] for name in record["stage_order"]}
    record["finished"] = True
    write_json(args.out, record)

    print()
    print(f"{'stage':<22} {'attacked':>8} {'fooled':>6} {'robust':>6} {'unverif.':>8} {'seconds':>8}")
    print(f"{'clean':<22} {args.n_images:>8} {args.n_images - int(clean_correct.sum()):>6} "
          f"{int(clean_correct.sum()):>6} {'':>8} {'':>8}")
    for name in record["stage_order"]:
        s = record["stages"][name]
        print(f"{name:<22} {s['n_attacked']:>8} {s['n_fooled']:>6} {s['n_robust_after']:>6} "
              f"{s['n_claimed_but_not_verified']:>8} {s['seconds']:>8.1f}")
    print(f"final robust: {int(robust.sum())}/{args.n_images} = {robust.float().mean():.3f}   -> {args.out}")


if __name__ == "__main__":
    main()
