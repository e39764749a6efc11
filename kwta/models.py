"""build_model(...): the replication's networks (torchvision ResNet18 and AlexNet) and the paper's CIFAR ResNet18.

Every model is `nn.Sequential([resize,] normalize, net)`: it takes the data's own images in [0, 1], resizes (when the
network wants another size) and normalises them itself, so attacks clip to [0, 1] and use one epsilon per dataset,
in the data's pixels, whatever the normalisation and the network's input size.
"""

import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from kwta.modules import replace_relu

ARCHS = ("resnet18", "resnet18-cifar", "alexnet")
ACTIVATIONS = ("relu", "kwta")
# AlexNet's three stride-2 max-pools need at least this many pixels; fine-tuning uses 224 as ImageNet did.
MIN_INPUT_SIZE = {"resnet18": 1, "resnet18-cifar": 1, "alexnet": 63}
# The statistics torchvision's ImageNet weights were trained with: a fine-tuned network must see its inputs
# normalised the same way, or its first layer starts from features tuned to another input distribution.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The activation module right after the first convolution (torchvision's ResNet calls `relu` only there).
STEM_ACTIVATION = {"resnet18": "relu", "resnet18-cifar": "relu", "alexnet": "features.1"}
TORCHVISION_WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "alexnet": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
}


class Resize(nn.Module):
    """Bilinear (antialiased) resize to size x size pixels: part of the model, so gradients reach the data's pixels."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class Normalize(nn.Module):
    """(x - mean) / std per channel; the statistics are buffers, so checkpoints carry them."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"normalize: mean and std must have the same length, got {len(mean)} and {len(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def load_pretrained_state_dict(arch: str, weights: str | os.PathLike | None) -> dict:
    """ImageNet weights for `arch`: from the file `weights`, else from the torch hub cache (downloading if online)."""
    if weights is not None:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"weights: no state dict file at {weights}")
        try:
            return torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as error:  # a pickle carrying code, or not a torch file at all
            raise ValueError(f"weights: {weights} is not a plain state dict ({type(error).__name__})") from None
    if arch not in TORCHVISION_WEIGHTS:
        raise ValueError(f"pretrained: torchvision has ImageNet weights for {tuple(TORCHVISION_WEIGHTS)}, not {arch!r}")
    url = TORCHVISION_WEIGHTS[arch].url
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if os.path.isfile(cached):
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True, check_hash=True)
    except Exception as error:  # offline, proxy, partial download: all end the same way for the user
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise FileNotFoundError(
            f"pretrained {arch}: no ImageNet weights at {cached} and downloading {url} failed ({reason}); "
            f"put the file there or pass weights=PATH (--weights PATH)"
        ) from None


def imagenet_normalization(in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) that feed pretrained ImageNet filters what they expect, for 3 or 1 input channels.

    A gray image meets adapt_in_channels' summed filters: one channel normalised with the average of
    ImageNet's statistics (the per-channel ones differ by a few hundredths, so this is close, not exact).
    """
    if in_channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    if in_channels == 1:
        return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    raise ValueError(f"in_channels: ImageNet statistics exist for 1 or 3 channels, got {in_channels}")


def adapt_in_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """`conv`, or a copy of it that takes `in_channels` channels.

    For grayscale the RGB filters are summed over colour: a gray image (R = G = B) then gives exactly
    the response the RGB filters give, so pretrained features carry over.
    """
    if in_channels == conv.in_channels:
        return conv
    adapted = nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None
    )
    if in_channels == 1:
        with torch.no_grad():
            adapted.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
            if conv.bias is not None:
                adapted.bias.copy_(conv.bias)
    return adapted


def build_model(
    arch: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    activation: str = "relu",
    ratio: float = 0.2,
    mode: str = "vol",
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    stem_relu: bool = False,
    resize: int | None = None,
) -> nn.Module:
    """The network `arch` with `activation` ("relu", or "kwta": every ReLU replaced), taking images in [0, 1].

    arch: "resnet18", "alexnet" (torchvision layouts) or "resnet18-cifar" (3x3 stride-1 stem, no max-pool).
    pretrained: start from torchvision's ImageNet weights (from `weights`, a state dict file, when given).
    normalize: (mean, std) per input channel, applied inside the model; None leaves inputs unchanged.
    stem_relu: with activation "kwta", keep the ReLU after the first convolution, as the paper's
        resnet18-cifar does (its blocks use k-WTA, its stem ReLU); False replaces every ReLU.
    resize: upsample the input to resize x resize pixels inside the model, before normalising (torchvision's
        networks fine-tuned at 224 on 32-px data): the model still takes the data's own images, so an
        attack's eps applies to those pixels, as in the literature, not to the upsampled ones.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    if weights is not None and not pretrained:
        raise ValueError("weights: a weights file is only read with pretrained=True")
    if pretrained and arch == "resnet18-cifar":
        raise ValueError("pretrained: resnet18-cifar has no ImageNet weights (its 3x3 stem differs); use resnet18")
    if pretrained and in_channels not in (1, 3):
        raise ValueError(f"in_channels: pretrained RGB filters adapt to 1 or 3 channels, got {in_channels}")

    # Built with ImageNet's 1000 classes so pretrained state dicts load strictly, then the head is replaced.
    net = torchvision.models.alexnet() if arch == "alexnet" else torchvision.models.resnet18()
    if pretrained:
        state_dict = load_pretrained_state_dict(arch, weights)
        try:
            net.load_state_dict(state_dict)
        except (RuntimeError, TypeError, AttributeError) as error:
            first_line = str(error).strip().splitlines()[0]
            raise ValueError(f"weights: not a torchvision {arch} ImageNet state dict ({first_line})") from None

    if arch == "alexnet":
        net.features[0] = adapt_in_channels(net.features[0], in_channels)
        net.classifier[6] = nn.Linear(net.classifier[6].in_features, num_classes)
    else:
        if arch == "resnet18-cifar":
            # The paper's CIFAR stem keeps 32x32 resolution into layer1: 3x3 stride 1, no max-pool.
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        else:
            net.conv1 = adapt_in_channels(net.conv1, in_channels)
        net.fc = nn.Linear(net.fc.in_features, num_classes)

    if activation == "kwta":
        stem = net.get_submodule(STEM_ACTIVATION[arch])
        if not isinstance(stem, nn.ReLU):
            raise RuntimeError(f"{arch}: expected a ReLU after the stem convolution, found {type(stem).__name__}")
        replace_relu(net, ratio, mode=mode, keep=[stem] if stem_relu else [])

    mean, std = normalize if normalize is not None else ((0.0,) * in_channels, (1.0,) * in_channels)
    if len(mean) != in_channels:
        raise ValueError(f"normalize: mean/std need {in_channels} values (in_channels), got {len(mean)}")
    if resize is not None and (not isinstance(resize, int) or resize < 1):
        raise ValueError(f"resize: a positive number of pixels or None, got {resize!r}")
    layers = [("resize", Resize(resize))] if resize is not None else []
    return nn.Sequential(OrderedDict([*layers, ("normalize", Normalize(tuple(mean), tuple(std))), ("net", net)]))
