"""get_datasets: real Fashion-MNIST offline, synthetic data, subsets, transforms, missing-data errors."""

import gzip
import os

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from kwta.data import DATASETS, DEBIAN_FASHION_MNIST, DEFAULT_EPS, get_datasets, image_transforms, read_idx

HAVE_DEBIAN_FASHION_MNIST = os.path.isfile(os.path.join(DEBIAN_FASHION_MNIST, "train-images-idx3-ubyte.gz"))


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def write_fake_fashion_mnist(folder, train_size=12, test_size=5) -> dict:
    """Four idx files of random pixels in `folder`; returns the arrays written."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, size in (("train", train_size), ("t10k", test_size)):
        arrays[f"{split}-images-idx3-ubyte.gz"] = rng.integers(0, 256, (size, 28, 28))
        arrays[f"{split}-labels-idx1-ubyte.gz"] = rng.integers(0, 10, size)
    for name, array in arrays.items():
        write_idx(os.path.join(folder, name), array)
    return arrays


def test_every_dataset_has_a_default_eps():
    assert set(DEFAULT_EPS) == set(DATASETS)


@pytest.mark.skipif(not HAVE_DEBIAN_FASHION_MNIST, reason="dataset-fashion-mnist not installed (make setup as root)")
def test_fashion_mnist_loads_the_real_debian_files():
    train_ds, test_ds, info = get_datasets("fashion-mnist", augment=False)
    assert (len(train_ds), len(test_ds)) == (60000, 10000)
    assert info["in_channels"] == 1 and info["num_classes"] == 10 and info["input_size"] == 28
    image, label = test_ds[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert label == 9  # the first t10k image is an ankle boot
    assert torch.bincount(test_ds.labels).tolist() == [1000] * 10
    # The normalisation the models use matches the pixels actually loaded.
    assert abs(train_ds.images.float().mean().item() / 255 - info["mean"][0]) < 1e-3


def test_fashion_mnist_from_a_data_dir_in_torchvision_layout(tmp_path):
    arrays = write_fake_fashion_mnist(tmp_path / "FashionMNIST" / "raw")
    train_ds, test_ds, _ = get_datasets("fashion-mnist", str(tmp_path), augment=False)
    assert (len(train_ds), len(test_ds)) == (12, 5)
    image, label = train_ds[3]
    assert torch.equal((image[0] * 255).round().to(torch.uint8), torch.from_numpy(
        arrays["train-images-idx3-ubyte.gz"][3].astype(np.uint8)))
    assert label == arrays["train-labels-idx1-ubyte.gz"][3]


def test_truncated_idx_file_is_refused(tmp_path):
    path = tmp_path / "short-idx3-ubyte.gz"
    with gzip.open(path, "wb") as file:
        file.write(bytes([0, 0, 8, 1]) + np.array([10], dtype=">i4").tobytes() + bytes(3))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(str(path))


def test_synthetic_data_is_learnable_by_class_means():
    train_ds, test_ds, info = get_datasets("synthetic", augment=False)
    assert info["in_channels"] == 3 and info["num_classes"] == 10
    train = torch.stack([train_ds[i][0] for i in range(len(train_ds))]).flatten(1)
    train_labels = torch.tensor([train_ds[i][1] for i in range(len(train_ds))])
    test = torch.stack([test_ds[i][0] for i in range(len(test_ds))]).flatten(1)
    test_labels = torch.tensor([test_ds[i][1] for i in range(len(test_ds))])
    assert train.min() >= 0 and train.max() <= 1
    class_means = torch.stack([train[train_labels == c].mean(0) for c in range(info["num_classes"])])
    predictions = torch.cdist(test, class_means).argmin(1)
    assert (predictions == test_labels).float().mean() > 0.9


def test_subsets_are_fixed_by_the_seed():
    def labels_and_first_pixel(seed):
        train_ds, test_ds, _ = get_datasets("synthetic", train_subset=40, test_subset=16, augment=False, seed=seed)
        assert (len(train_ds), len(test_ds)) == (40, 16)
        return [(label, image[0, 0, 0].item()) for image, label in train_ds]

    assert labels_and_first_pixel(3) == labels_and_first_pixel(3)
    assert labels_and_first_pixel(3) != labels_and_first_pixel(4)


def test_subset_larger_than_the_dataset_names_the_argument():
    with pytest.raises(ValueError, match="test_subset"):
        get_datasets("synthetic", test_subset=10**6)


def test_input_size_resizes():
    train_ds, test_ds, info = get_datasets("synthetic", input_size=20)
    assert train_ds[0][0].shape == test_ds[0][0].shape == (3, 20, 20) and info["input_size"] == 20


def transform_types(transform: v2.Compose) -> list[type]:
    return [type(step) for step in transform.transforms]


def test_training_transforms_flip_only_mirror_symmetric_classes():
    cifar_train, cifar_test = image_transforms("cifar10", 224, augment=True)
    svhn_train, _ = image_transforms("svhn", 32, augment=True)
    assert v2.RandomCrop in transform_types(cifar_train) and v2.RandomHorizontalFlip in transform_types(cifar_train)
    assert v2.Resize in transform_types(cifar_train) and v2.Resize in transform_types(cifar_test)
    assert v2.RandomCrop not in transform_types(cifar_test)
    assert v2.RandomCrop in transform_types(svhn_train) and v2.RandomHorizontalFlip not in transform_types(svhn_train)
    assert v2.Resize not in transform_types(svhn_train)
    assert v2.RandomCrop not in transform_types(image_transforms("cifar10", 32, augment=False)[0])


def test_random_crop_pads_by_four_pixels():
    train, _ = image_transforms("synthetic", 8, augment=True)
    white = torch.full((3, 8, 8), 255, dtype=torch.uint8)
    torch.manual_seed(0)
    crops = [train(white) for _ in range(50)]
    assert all(crop.shape == (3, 8, 8) for crop in crops)
    assert any((crop == 0).any() for crop in crops) and any((crop == 1).all() for crop in crops)


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_missing_torchvision_dataset_is_a_one_line_error(tmp_path, name):
    with pytest.raises(FileNotFoundError) as raised:
        get_datasets(name, str(tmp_path))
    message = str(raised.value)
    assert name in message and str(tmp_path) in message and "--download" in message and "\n" not in message


def test_missing_fashion_mnist_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError) as raised:
        get_datasets("fashion-mnist", str(tmp_path))
    assert str(tmp_path) in str(raised.value) and "dataset-fashion-mnist" in str(raised.value)


def test_unknown_dataset_names_the_argument():
    with pytest.raises(ValueError, match="dataset"):
        get_datasets("mnist-but-typo")


def test_a_truncated_gz_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    from train import main

    write_fake_fashion_mnist(tmp_path, train_size=200)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-200])  # a download cut short
    with pytest.raises(ValueError, match="truncated or corrupt") as raised:
        get_datasets("fashion-mnist", str(tmp_path))
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(SystemExit) as exited:  # train.py: one line, no traceback
        main(["--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--arch", "resnet18-cifar",
              "--device", "cpu", "--out", str(tmp_path / "run")])
    assert "truncated or corrupt" in str(exited.value.code) and "\n" not in str(exited.value.code)
