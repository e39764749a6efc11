"""Checkpoints: written atomically, read with weights_only=True, and recognised by a format marker.

A checkpoint is a plain dict:
  format      "kwta-checkpoint" (anything else is refused)
  version     CHECKPOINT_VERSION (newer ones are refused)
  spec        what build_model needs: arch, activation, ratio, mode, dataset, num_classes, in_channels,
              input_size (and mean, std of the normalisation; stem_relu when the stem kept its ReLU)
  model       the model's state dict
  ...         whatever else the writer keeps (train.py: optimizer, scheduler, epoch, history, args)
"""

import glob
import io
import os
import tempfile

import torch
from torch import nn

from kwta.models import build_model

CHECKPOINT_FORMAT = "kwta-checkpoint"
CHECKPOINT_VERSION = 1
SPEC_KEYS = ("arch", "activation", "ratio", "mode", "dataset", "num_classes", "in_channels", "input_size")


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `path` so that a reader (or a crash) sees the old file or the new one, never a mix.

    The temporary file lives in the same folder because os.replace is atomic only within one filesystem.
    """
    payload = data.encode() if isinstance(data, str) else data
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(descriptor, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    # The rename itself lives in the folder's metadata; syncing the folder makes it survive power loss.
    if hasattr(os, "O_DIRECTORY"):
        folder_descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder_descriptor)
        finally:
            os.close(folder_descriptor)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete what interrupted atomic_write calls left in `folder` (a killed checkpoint write leaves a file as
    large as the checkpoint); return the paths removed. Call it only where no other process is writing."""
    stale = sorted(glob.glob(os.path.join(glob.escape(str(folder)), ".*.tmp")))
    for path in stale:
        os.remove(path)
    return stale


def save_checkpoint(path: str | os.PathLike, checkpoint: dict) -> None:
    """torch.save `checkpoint` atomically, stamped with the format marker and version."""
    buffer = io.BytesIO()
    torch.save({**checkpoint, "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}, buffer)
    atomic_write(path, buffer.getvalue())


def _load_safely(path: str | os.PathLike, argument: str, kind: str, detail: bool):
    """torch.load with weights_only=True, on CPU: a file that would run code, or is no torch file, is a ValueError."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{argument}: no file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler refusing code, or bytes that are no torch file at all
        why = f"{type(error).__name__}: {error}" if detail else type(error).__name__
        raise ValueError(f"{argument}: {path} is not {kind} ({why})") from None


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint at `path`, on CPU; a file that is not one of this project's checkpoints raises ValueError.

    weights_only=True never runs code from the file: a pickle that would is refused, not executed.
    """
    checkpoint = _load_safely(path, "checkpoint", "a kwta checkpoint", detail=False)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint: {path} is not a kwta checkpoint (no format={CHECKPOINT_FORMAT!r} marker)")
    version = checkpoint.get("version")
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint: {path} has version {version!r}; this code reads 1 to {CHECKPOINT_VERSION}")
    missing = [key for key in SPEC_KEYS if key not in checkpoint.get("spec", {})]
    if missing or "model" not in checkpoint:
        raise ValueError(f"checkpoint: {path} lacks {', '.join(missing) or 'model'}")
    return checkpoint


def image_size(spec: dict) -> int:
    """The pixels a side of the images the model takes: the dataset's own where the model resizes them itself
    (spec["image_size"]); older checkpoints, whose data transform resized, take input_size."""
    return spec.get("image_size", spec["input_size"])


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a state dict saved with torch.save into `model` (also one held under "model" or "state_dict", as
    this project's checkpoints and many training scripts save it); weights_only=True runs no code from the file."""
    state = _load_safely(path, "weights", "a torch state dict", detail=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"weights: {path} holds no state dict of tensors")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"weights: {path} does not fit the model ({str(error).splitlines()[0]})") from None
    return model


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode on `device`, checkpoint): the network rebuilt from checkpoint["spec"] with its weights."""
    checkpoint = load_checkpoint(path)
    spec = checkpoint["spec"]
    normalize = (tuple(spec["mean"]), tuple(spec["std"])) if "mean" in spec and "std" in spec else None
    model = build_model(
        spec["arch"],
        num_classes=spec["num_classes"],
        in_channels=spec["in_channels"],
        activation=spec["activation"],
        ratio=spec["ratio"],
        mode=spec["mode"],
        normalize=normalize,
        stem_relu=spec.get("stem_relu", False),
        resize=spec["input_size"] if image_size(spec) != spec["input_size"] else None,
    )
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint
