"""Checkpoints: atomic writes, weights_only loading that refuses foreign files and code, model rebuilding."""

import os
import pickle

import pytest
import torch

from kwta.checkpoint import CHECKPOINT_VERSION, atomic_write, load_checkpoint, load_model, save_checkpoint
from kwta.models import build_model
from kwta.modules import KWTA

SPEC = {"arch": "resnet18-cifar", "activation": "kwta", "ratio": 0.3, "mode": "channel", "dataset": "synthetic",
        "num_classes": 4, "in_channels": 3, "input_size": 8, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.25]}


class RunsCodeWhenUnpickled:
    """A pickle that would create `marker` when loaded by an unrestricted unpickler."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_atomic_write_bytes_and_text_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic_write(path, "first\n")
    atomic_write(path, b"second\n")
    assert path.read_bytes() == b"second\n"
    assert os.listdir(path.parent) == ["out.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_write(path, b"old")

    def crash(*args):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk vanished"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"spec": SPEC, "model": {"w": torch.arange(3.0)}, "epoch": 2})
    checkpoint = load_checkpoint(path)
    assert checkpoint["format"] == "kwta-checkpoint" and checkpoint["version"] == CHECKPOINT_VERSION
    assert checkpoint["epoch"] == 2 and torch.equal(checkpoint["model"]["w"], torch.arange(3.0))


@pytest.mark.parametrize(
    "content",
    [
        {"spec": SPEC, "model": {}},  # a plain torch.save without the marker
        {"format": "kwta-checkpoint", "version": CHECKPOINT_VERSION + 1, "spec": SPEC, "model": {}},
        {"format": "kwta-checkpoint", "version": CHECKPOINT_VERSION, "spec": {"arch": "resnet18"}, "model": {}},
        [1, 2, 3],
    ],
    ids=["no-marker", "newer-version", "incomplete-spec", "not-a-dict"],
)
def test_files_that_are_not_our_checkpoints_are_refused(tmp_path, content):
    path = tmp_path / "foreign.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match="checkpoint") as raised:
        load_checkpoint(path)
    assert "\n" not in str(raised.value)


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(os.urandom(1000))
    with pytest.raises(ValueError, match="not a kwta checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_pickle_carrying_code_is_refused_without_running_it(tmp_path, writer):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    payload = {"format": "kwta-checkpoint", "version": 1, "spec": SPEC, "model": RunsCodeWhenUnpickled(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    with pytest.raises(ValueError, match="not a kwta checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_checkpoint(tmp_path / "absent.pt")


def test_load_model_rebuilds_the_network_from_the_spec(tmp_path):
    torch.manual_seed(0)
    normalize = (tuple(SPEC["mean"]), tuple(SPEC["std"]))
    model = build_model("resnet18-cifar", num_classes=4, activation="kwta", ratio=0.3, mode="channel",
                        normalize=normalize)
    # One training step so the BatchNorm statistics are not the defaults a fresh model has too.
    model(torch.rand(8, 3, 8, 8)).sum().backward()
    model.eval()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"spec": SPEC, "model": model.state_dict()})

    loaded, checkpoint = load_model(path)
    assert not loaded.training and checkpoint["spec"] == SPEC
    kwta_layers = [m for m in loaded.modules() if isinstance(m, KWTA)]
    assert kwta_layers and all(m.ratio == 0.3 and m.mode == "channel" for m in kwta_layers)
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_network_wanting_another_size_resizes_inside_itself(tmp_path):
    """The data stays in its own pixels (eps applies there): the checkpoint records both sizes and the rebuilt
    model takes 8-px images and upsamples them to its 16."""
    import torch.nn.functional as F

    from kwta.checkpoint import image_size

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4, in_channels=3, resize=16).eval()
    x = torch.rand(2, 3, 8, 8)
    upsampled = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(model(x), model.net(model.normalize(upsampled)))
    spec = {**SPEC, "arch": "resnet18", "activation": "relu", "ratio": None, "mode": "vol", "num_classes": 4,
            "in_channels": 3, "input_size": 16, "image_size": 8}
    save_checkpoint(tmp_path / "c.pt", {"spec": spec, "model": model.state_dict()})
    loaded, _ = load_model(tmp_path / "c.pt")
    assert loaded.resize.size == 16 and torch.equal(loaded(x), model(x)) and image_size(spec) == 8
    # an older checkpoint, whose data transform resized: no resize inside, the data comes at input_size
    old = {key: value for key, value in spec.items() if key != "image_size"}
    assert image_size(old) == 16
    with pytest.raises(ValueError, match="resize"):
        build_model("resnet18", resize=0)
