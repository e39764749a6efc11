"""get_datasets(...): CIFAR-10 and SVHN (torchvision), Fashion-MNIST (idx files, works offline), synthetic (tests).

Images come out as float tensors in [0, 1]; normalisation lives in the model (kwta/models.py). Training
transforms follow the replication: random crop with 4-pixel padding, horizontal flip where the classes
are mirror-symmetric, then a resize when the network wants another input size (224 for fine-tuning).
"""

import gzip
import os
import zlib

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset, Sampler, Subset
from torchvision.transforms import v2

# L-inf budgets: the replication's for CIFAR-10 (8/255) and SVHN (12/255); the paper's MNIST-family one.
DEFAULT_EPS = {"cifar10": 0.031, "svhn": 0.047, "fashion-mnist": 0.1, "synthetic": 0.1}
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
DEFAULT_DATA_DIR = "data"
# Flips: CIFAR-10 objects and Fashion-MNIST clothes are the same class mirrored; a mirrored digit is not.
DATASETS = {
    "cifar10": dict(num_classes=10, in_channels=3, size=32, flip=True,
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "svhn": dict(num_classes=10, in_channels=3, size=32, flip=False,
                 mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970)),
    "fashion-mnist": dict(num_classes=10, in_channels=1, size=28, flip=True, mean=(0.2860,), std=(0.3530,)),
    "synthetic": dict(num_classes=10, in_channels=3, size=8, flip=True, mean=(0.5,) * 3, std=(0.25,) * 3),
}
SYNTHETIC_TRAIN_SIZE, SYNTHETIC_TEST_SIZE = 512, 256


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) and labels held in memory; `transform` turns one image into floats in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        if len(images) != len(labels):
            raise ValueError(f"images and labels differ in length: {len(images)} and {len(labels)}")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), int(self.labels[index])


class EpochSeeded(Dataset):
    """`dataset` read by (epoch, index) pairs, each sample's random augmentation seeded by (seed, epoch, index).

    A sample's crop and flip then depend on the seed, the epoch and the sample alone: not on which
    DataLoader worker loads it, how many there are, or whether they persist between epochs (persistent
    workers are seeded once, so a per-epoch reseed in the main process never reaches them). A resumed run
    therefore replays an uninterrupted one exactly with any number of workers, and `--workers` does not
    change the result. The caller's RNG state is left as it was. Pair it with `EpochIndexSampler`.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, epoch_and_index: tuple[int, int]):
        epoch, index = epoch_and_index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]))
            return self.dataset[index]


class EpochIndexSampler(Sampler):
    """(epoch, index) for each index of `sampler` (e.g. a DistributedSampler after set_epoch): the epoch
    travels with the index into whichever worker process loads the sample."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler

    def __iter__(self):
        epoch = getattr(self.sampler, "epoch", 0)
        return ((epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def image_transforms(name: str, input_size: int, augment: bool) -> tuple[v2.Compose, v2.Compose]:
    """(train, test) transforms from a PIL image or uint8 (C, H, W) tensor to floats in [0, 1]."""
    card = DATASETS[name]
    augmentation = [v2.RandomCrop(card["size"], padding=4)] if augment else []
    if augment and card["flip"]:
        augmentation.append(v2.RandomHorizontalFlip())
    resize = [v2.Resize(input_size, antialias=True)] if input_size != card["size"] else []
    to_float = [v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose([v2.ToImage(), *augmentation, *resize, *to_float]), v2.Compose([v2.ToImage(), *resize, *to_float])


def read_idx(path: str) -> np.ndarray:
    """An idx-format unsigned-byte array (the MNIST family's file format), gzipped or not."""
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as file:
            data = file.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:  # a download cut short, or a damaged file
        raise ValueError(f"{path}: truncated or corrupt ({error}); delete it and download it again") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an idx file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int(n) for n in np.frombuffer(data, ">i4", count=ndim, offset=4))
    values = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {values.size} values (truncated?)")
    return values.reshape(shape)


def download_failed(name: str, root: str, error: Exception) -> OSError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return OSError(f"{name}: downloading into {os.path.abspath(root)} failed ({reason})")


def find_fashion_mnist(data_dir: str | None, download: bool) -> str:
    """The folder holding the four Fashion-MNIST idx files: data_dir (or its torchvision layout), else Debian's."""
    if data_dir is not None and download:
        try:
            torchvision.datasets.FashionMNIST(data_dir, download=True)
        except Exception as error:  # offline, proxy, partial download: all end the same way for the user
            raise download_failed("fashion-mnist", data_dir, error) from error
    folders = [data_dir, os.path.join(data_dir, "FashionMNIST", "raw")] if data_dir else [DEBIAN_FASHION_MNIST]
    for folder in folders:
        if os.path.isfile(os.path.join(folder, "train-images-idx3-ubyte.gz")):
            return folder
    raise FileNotFoundError(
        f"fashion-mnist: no train-images-idx3-ubyte.gz in {' or '.join(folders)}; "
        "install Debian's dataset-fashion-mnist (make setup as root), or pass --data-dir DIR with --download"
    )


def load_fashion_mnist(data_dir: str | None, download: bool, transforms) -> tuple[Dataset, Dataset]:
    folder = find_fashion_mnist(data_dir, download)
    splits = []
    for split, transform in zip(("train", "t10k"), transforms, strict=True):
        images = read_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"))
        splits.append(ImageTensorDataset(torch.from_numpy(images.copy()).unsqueeze(1),
                                         torch.from_numpy(labels.astype(np.int64)), transform))
    return tuple(splits)


def make_synthetic(transforms) -> tuple[Dataset, Dataset]:
    """Learnable data for tests: each class is a colour, each image that colour plus pixel noise.

    Colour survives cropping and flipping, so a few epochs of a small network beat chance clearly.
    """
    card = DATASETS["synthetic"]
    generator = torch.Generator().manual_seed(0)
    class_colours = 0.15 + 0.7 * torch.rand(card["num_classes"], card["in_channels"], 1, 1, generator=generator)
    splits = []
    for size, transform in zip((SYNTHETIC_TRAIN_SIZE, SYNTHETIC_TEST_SIZE), transforms, strict=True):
        labels = torch.randint(card["num_classes"], (size,), generator=generator)
        noise = 0.15 * torch.randn(size, card["in_channels"], card["size"], card["size"], generator=generator)
        images = ((class_colours[labels] + noise).clamp(0, 1) * 255).round().to(torch.uint8)
        splits.append(ImageTensorDataset(images, labels, transform))
    return tuple(splits)


def load_torchvision(name: str, data_dir: str | None, download: bool, transforms) -> tuple[Dataset, Dataset]:
    root = data_dir or DEFAULT_DATA_DIR
    dataset_class = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.SVHN
    train_test = ({"train": True}, {"train": False}) if name == "cifar10" else ({"split": "train"}, {"split": "test"})
    try:
        return tuple(
            dataset_class(root, **split, transform=transform, download=download)
            for split, transform in zip(train_test, transforms, strict=True)
        )
    except Exception as error:  # torchvision says RuntimeError for missing files, URLError etc. for downloads
        if download:
            raise download_failed(name, root, error) from error
        if not isinstance(error, RuntimeError):
            raise
        raise FileNotFoundError(
            f"{name}: not found in {os.path.abspath(root)} (torchvision layout); "
            "pass --download to fetch it there, or --data-dir DIR where it already is"
        ) from error


def deterministic_subset(dataset: Dataset, size: int | None, seed: int, argument: str) -> Dataset:
    """`size` samples of `dataset` drawn without replacement by `seed` (the whole dataset for None)."""
    if size is None:
        return dataset
    if not isinstance(size, int) or not 1 <= size <= len(dataset):
        raise ValueError(f"{argument} must be an integer in [1, {len(dataset)}], got {size!r}")
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size]
    return Subset(dataset, indices.sort().values.tolist())


def get_datasets(
    name: str,
    data_dir: str | None = None,
    *,
    download: bool = False,
    input_size: int | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    augment: bool = True,
    seed: int = 0,
) -> tuple[Dataset, Dataset, dict]:
    """(train, test, info) for `name`; info holds num_classes, in_channels, input_size, mean, std.

    input_size: resize images to this many pixels a side (None: the dataset's own size).
    train_subset / test_subset: use that many samples, the same ones for the same seed.
    augment: random crop and flip on the training set (the test set is never augmented).
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {tuple(DATASETS)}, got {name!r}")
    card = DATASETS[name]
    input_size = card["size"] if input_size is None else input_size
    if not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input_size must be a positive integer, got {input_size!r}")
    transforms = image_transforms(name, input_size, augment)
    if name == "fashion-mnist":
        train_ds, test_ds = load_fashion_mnist(data_dir, download, transforms)
    elif name == "synthetic":
        train_ds, test_ds = make_synthetic(transforms)
    else:
        train_ds, test_ds = load_torchvision(name, data_dir, download, transforms)
    train_ds = deterministic_subset(train_ds, train_subset, seed, "train_subset")
    test_ds = deterministic_subset(test_ds, test_subset, seed, "test_subset")
    info = {
        "name": name,
        "num_classes": card["num_classes"],
        "in_channels": card["in_channels"],
        "input_size": input_size,
        "mean": card["mean"],
        "std": card["std"],
    }
    return train_ds, test_ds, info
