"""Released networks: trained once, committed to the checkout, loaded in one line without network.

    model = kwta.load_released("fashion-mnist/kwta-0.2")     # float32 model, eval mode, the released weights
    record = kwta.released.record("fashion-mnist/kwta-0.2")  # how it was trained, its test accuracy

A release lives in a folder of the checkout's weights/ (or $KWTA_WEIGHTS), one per dataset:
  NAME.pt             a kwta checkpoint (kwta.checkpoint) holding only the spec and the weights, every
                      floating-point tensor in float16 (about 22 MB for resnet18-cifar); integer buffers as they were
  NAME.json           the record: train.py's summary, the command that trained it, the machine and commit, and
                      the test accuracy of the released weights themselves (float16 loaded into a float32 model)
  NAME.metrics.jsonl  train.py's metrics, one line per epoch
  SHA256SUMS          sha256 of every NAME.pt, in sha256sum's format: a weights file that differs is refused
The evaluated network is the released one: every figure of a campaign is measured on exactly these weights.
Releases are not part of the wheel (they live beside the package, not in it).
"""

import hashlib
import io
import json
import os
from pathlib import Path

import torch
from torch import nn

from kwta.checkpoint import atomic_write, load_checkpoint, load_model

MANIFEST = "SHA256SUMS"
RELEASE_DTYPE = torch.float16


def weights_root() -> Path:
    """$KWTA_WEIGHTS, else the weights/ folder of the checkout kwta is imported from."""
    return Path(os.environ.get("KWTA_WEIGHTS") or Path(__file__).resolve().parent.parent / "weights")


def paths(name: str, root: str | os.PathLike | None = None) -> dict[str, Path]:
    """The files of the release `name` ("DATASET/NETWORK"): weights, record, metrics and the folder's manifest."""
    parts = name.split("/")
    if len(parts) != 2 or not all(parts) or any(part in (".", "..") for part in parts):
        raise ValueError(f"name: a release is named DATASET/NETWORK (e.g. fashion-mnist/relu), got {name!r}")
    folder = Path(root) if root is not None else weights_root()
    folder = folder / parts[0]
    return {"weights": folder / f"{parts[1]}.pt", "record": folder / f"{parts[1]}.json",
            "metrics": folder / f"{parts[1]}.metrics.jsonl", "manifest": folder / MANIFEST}


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict[str, str]:
    """{file name: sha256} of a SHA256SUMS file (none yet: {})."""
    if not path.exists():
        return {}
    entries = (line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())
    return {file.lstrip("*"): digest for digest, file in entries}


def verified(name: str, root: str | os.PathLike | None = None) -> Path:
    """The release's weights file, once its sha256 matches the manifest; else a one-line error."""
    files = paths(name, root)
    weights = files["weights"]
    if not weights.is_file():
        available = sorted(p.stem for p in weights.parent.glob("*.pt")) if weights.parent.is_dir() else []
        raise FileNotFoundError(f"name: no release {name} at {weights}"
                                + (f" (this folder holds {', '.join(available)})" if available else ""))
    expected = read_manifest(files["manifest"]).get(weights.name)
    if expected is None:
        raise ValueError(f"name: {weights} is not listed in {files['manifest']}")
    actual = sha256(weights)
    if actual != expected:
        raise ValueError(f"name: {weights} has sha256 {actual[:12]}..., its manifest says {expected[:12]}...")
    return weights


def load_released(name: str, device: str | torch.device = "cpu", root: str | os.PathLike | None = None) -> nn.Module:
    """The released network `name` ("DATASET/NETWORK"), float32, in eval mode on `device`, its weights checked
    against the manifest. Nothing is downloaded."""
    return load_model(verified(name, root), device)[0]


def record(name: str, root: str | os.PathLike | None = None) -> dict:
    """The release's record (NAME.json): how it was trained and the test accuracy of the released weights."""
    return json.loads(paths(name, root)["record"].read_text())


def released_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with every floating-point tensor in RELEASE_DTYPE, the rest (counters) as it is."""
    return {key: value.detach().cpu().to(RELEASE_DTYPE) if value.is_floating_point() else value.detach().cpu()
            for key, value in state.items()}


def release(checkpoint: str | os.PathLike, name: str, *, info: dict, root: str | os.PathLike | None = None,
            metrics: str | os.PathLike | None = None) -> Path:
    """Write the release `name` from a train.py checkpoint: NAME.pt (spec and float16 weights, nothing of the
    optimiser), NAME.json (`info` with the file's sha256), NAME.metrics.jsonl (a copy of `metrics`), and the
    folder's SHA256SUMS, each atomically. Returns the weights' path."""
    from kwta.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

    trained = load_checkpoint(checkpoint)
    files = paths(name, root)
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "spec": trained["spec"],
                "model": released_state(trained["model"])}, buffer)
    atomic_write(files["weights"], buffer.getvalue())
    digest = sha256(files["weights"])
    manifest = {**read_manifest(files["manifest"]), files["weights"].name: digest}
    atomic_write(files["manifest"], "".join(f"{manifest[file]}  {file}\n" for file in sorted(manifest)))
    atomic_write(files["record"], json.dumps({**info, "name": name, "sha256": digest,
                                              "bytes": files["weights"].stat().st_size}, indent=2) + "\n")
    if metrics is not None:
        atomic_write(files["metrics"], Path(metrics).read_bytes())
    return files["weights"]
