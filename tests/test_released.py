"""Released networks (kwta/released.py, scripts/release.py): float16 weights with a sha256 manifest, a record of
how they were trained and of their own test accuracy, loaded in one line with no network, refused if altered."""

import json
import shlex

import pytest
import torch

import kwta
import train
from kwta.checkpoint import load_checkpoint, load_model
from kwta.released import MANIFEST, read_manifest, record, released_state, sha256
from scripts import release

RECIPE = ["--arch", "resnet18-cifar", "--dataset", "synthetic", "--activation", "kwta", "--ratio", "0.3", "--epochs",
          "1", "--lr", "0.02", "--train-subset", "128", "--test-subset", "32", "--precision", "fp32", "--device", "cpu"]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """(the run folder, the releases' root) after one tiny training and its release as synthetic/kwta-0.3."""
    run, root = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("weights")
    train.main([*RECIPE, "--out", str(run), "--overwrite"])
    release.main([str(run), "synthetic/kwta-0.3", "--root", str(root)])
    return run, root


def test_a_release_holds_float16_weights_its_manifest_and_its_record(released):
    run, root = released
    folder = root / "synthetic"
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "kwta-0.3.json", "kwta-0.3.metrics.jsonl",
                                                        "kwta-0.3.pt"]
    assert read_manifest(folder / MANIFEST) == {"kwta-0.3.pt": sha256(folder / "kwta-0.3.pt")}
    saved = load_checkpoint(folder / "kwta-0.3.pt")  # weights_only=True
    assert set(saved) == {"format", "version", "spec", "model"}  # nothing of the optimiser
    floating = [t for t in saved["model"].values() if t.is_floating_point()]
    assert floating and all(t.dtype == torch.float16 for t in floating)
    assert saved["model"]["net.bn1.num_batches_tracked"].dtype == torch.int64
    trained = load_checkpoint(run / "checkpoint.pt")
    assert (folder / "kwta-0.3.pt").stat().st_size < 0.6 * (run / "checkpoint.pt").stat().st_size
    info = record("synthetic/kwta-0.3", root)
    assert info["sha256"] == sha256(folder / "kwta-0.3.pt") and info["spec"] == trained["spec"]
    assert (folder / "kwta-0.3.metrics.jsonl").read_text() == (run / "metrics.jsonl").read_text()
    assert info["training"]["machine"].endswith("(cpu)") and info["test_images"] == 256  # the whole test set
    # the command retrains the same run: parsed again it gives the run's settings
    words = shlex.split(info["command"])
    assert words[:2] == ["python", "train.py"]
    again, then = vars(train.parse_args(words[2:])), info["training"]["args"]
    assert all(again[key] == then[key] for key in train.RESUME_MUST_MATCH + train.RESUME_KEEPS + ("epochs",))


def test_the_released_network_is_the_evaluated_one(released):
    """load_released gives float32 weights equal to the float16 ones, whose test accuracy the record gives."""
    run, root = released
    model = kwta.load_released("synthetic/kwta-0.3", root=root)
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    trained, _ = load_model(run / "checkpoint.pt")
    rounded = released_state(trained.state_dict())
    assert all(torch.equal(value, rounded[key].to(value.dtype)) for key, value in model.state_dict().items())
    assert any(not torch.equal(value, trained.state_dict()[key]) for key, value in model.state_dict().items())
    from kwta.data import get_datasets

    _, test_ds, _ = get_datasets("synthetic")
    correct, seen = release.test_accuracy(model, test_ds, 100)
    assert record("synthetic/kwta-0.3", root)["test_accuracy"] == correct / seen


def test_an_altered_or_unknown_release_is_refused_in_one_line(released, tmp_path):
    _, root = released
    copy = tmp_path / "weights"
    (copy / "synthetic").mkdir(parents=True)
    for path in (root / "synthetic").iterdir():
        (copy / "synthetic" / path.name).write_bytes(path.read_bytes())
    weights = copy / "synthetic" / "kwta-0.3.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"^name: .*kwta-0.3.pt has sha256 \w+\.\.\., its manifest says"):
        kwta.load_released("synthetic/kwta-0.3", root=copy)
    with pytest.raises(FileNotFoundError, match=r"no release synthetic/relu .*\(this folder holds kwta-0.3\)"):
        kwta.load_released("synthetic/relu", root=copy)
    with pytest.raises(ValueError, match="DATASET/NETWORK"):
        kwta.load_released("kwta-0.3", root=copy)
    (copy / "synthetic" / MANIFEST).write_text("")
    with pytest.raises(ValueError, match="not listed in"):
        kwta.load_released("synthetic/kwta-0.3", root=copy)


def test_release_refuses_a_run_that_has_not_finished(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit, match="release: .*summary.json"):
        release.main([str(tmp_path / "run"), "synthetic/x", "--root", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()


def test_the_record_is_json_the_page_can_read(released):
    _, root = released
    info = json.loads((root / "synthetic" / "kwta-0.3.json").read_text())
    assert 0 <= info["test_interval"][0] <= info["test_accuracy"] <= info["test_interval"][1] <= 1
