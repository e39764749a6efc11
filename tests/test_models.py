"""build_model: every ReLU becomes k-WTA, heads and stems really change, pretrained weights load."""

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from kwta.models import build_model
from kwta.modules import KWTA

# Small inputs each architecture accepts (AlexNet's pools need >= 63 pixels).
INPUT_SIZE = {"resnet18": 32, "resnet18-cifar": 8, "alexnet": 64}
ARCHS = tuple(INPUT_SIZE)


def count_calls(model: nn.Module, module_type: type) -> tuple[int, list[torch.Size]]:
    """(modules of `module_type`, input shapes of every call they get in one forward pass)."""
    shapes = []
    modules = [m for m in model.modules() if isinstance(m, module_type)]
    for module in modules:
        module.register_forward_hook(lambda _module, inputs, _output: shapes.append(inputs[0].shape))
    return len(modules), shapes


@pytest.mark.parametrize("arch", ARCHS)
def test_kwta_replaces_every_relu_call(arch):
    size = INPUT_SIZE[arch]
    x = torch.rand(2, 3, size, size)
    relu_model = build_model(arch, activation="relu").eval()
    kwta_model = build_model(arch, activation="kwta", ratio=0.2).eval()
    relu_modules, relu_calls = count_calls(relu_model, nn.ReLU)
    kwta_modules, kwta_calls = count_calls(kwta_model, KWTA)
    with torch.no_grad():
        relu_model(x), kwta_model(x)
    assert relu_modules > 0 and kwta_modules == relu_modules
    assert not any(isinstance(m, nn.ReLU) for m in kwta_model.modules())
    assert kwta_calls == relu_calls  # same shapes in the same order: every application was swapped
    if arch.startswith("resnet18"):
        assert len(kwta_calls) == 1 + 2 * 8  # the stem, then each BasicBlock's module twice
    else:
        assert [len(shape) for shape in kwta_calls] == [4] * 5 + [2] * 2  # features, then 4096-wide rows
        assert kwta_calls[-1] == (2, 4096)


@pytest.mark.parametrize("arch", ARCHS)
def test_num_classes_and_in_channels_change_the_network(arch):
    size = INPUT_SIZE[arch]
    model = build_model(arch, num_classes=7, in_channels=1, activation="kwta").eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 1, size, size))
    assert logits.shape == (2, 7)
    assert [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features == 7
    assert next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels == 1


def test_resnet18_cifar_stem():
    net = build_model("resnet18-cifar").net
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)


def test_normalisation_lives_inside_the_model():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    model = build_model("resnet18-cifar", normalize=(mean, std)).eval()
    x = torch.rand(2, 3, 8, 8)
    expected = model.net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    assert "normalize.mean" in model.state_dict()


@pytest.fixture(scope="module")
def imagenet_resnet18(tmp_path_factory):
    """(path, state dict) of a stand-in for torchvision's ImageNet ResNet18 weights."""
    torch.manual_seed(1)
    state_dict = torchvision.models.resnet18().state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state_dict, path)
    return path, state_dict


@pytest.mark.parametrize("in_channels", [3, 1])
def test_pretrained_weights_from_a_file(imagenet_resnet18, in_channels):
    path, imagenet = imagenet_resnet18
    model = build_model("resnet18", pretrained=True, weights=path, in_channels=in_channels, activation="kwta")
    net = model.net
    assert torch.equal(net.layer3[1].conv2.weight, imagenet["layer3.1.conv2.weight"])
    assert torch.equal(net.bn1.running_var, imagenet["bn1.running_var"])
    expected_stem = imagenet["conv1.weight"] if in_channels == 3 else imagenet["conv1.weight"].sum(1, keepdim=True)
    assert torch.equal(net.conv1.weight, expected_stem)
    assert net.fc.weight.shape == (10, 512)


def test_pretrained_weights_from_the_torch_hub_cache(imagenet_resnet18, tmp_path, monkeypatch):
    _, imagenet = imagenet_resnet18
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    torch.save(imagenet, tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    net = build_model("resnet18", pretrained=True).net
    assert torch.equal(net.layer4[0].conv1.weight, imagenet["layer4.0.conv1.weight"])


def test_missing_weights_file_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="weights") as raised:
        build_model("resnet18", pretrained=True, weights=missing)
    assert str(missing) in str(raised.value) and "\n" not in str(raised.value)


def test_offline_without_cached_weights_says_where_it_looked(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError) as raised:
        build_model("alexnet", pretrained=True)
    message = str(raised.value)
    assert str(tmp_path / "checkpoints" / "alexnet-owt-7be5be79.pth") in message
    assert "--weights" in message and "\n" not in message


def test_a_state_dict_of_another_network_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a torchvision resnet18"):
        build_model("resnet18", pretrained=True, weights=path)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"arch": "vgg16"}, "arch"),
        ({"arch": "resnet18", "activation": "tanh"}, "activation"),
        ({"arch": "resnet18", "num_classes": 0}, "num_classes"),
        ({"arch": "resnet18-cifar", "pretrained": True}, "pretrained"),
        ({"arch": "resnet18", "activation": "kwta", "ratio": 1.5}, "ratio"),
        ({"arch": "resnet18", "normalize": ((0.5,), (0.5,))}, "normalize"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        build_model(**kwargs)


@pytest.mark.parametrize("arch", ARCHS)
def test_stem_relu_keeps_only_the_first_activation(arch):
    size = INPUT_SIZE[arch]
    model = build_model(arch, activation="kwta", stem_relu=True).eval()
    relu_calls, kwta_calls = [], []
    for module in model.modules():
        calls = relu_calls if isinstance(module, nn.ReLU) else kwta_calls if isinstance(module, KWTA) else None
        if calls is not None:
            module.register_forward_hook(lambda _m, inputs, _o, calls=calls: calls.append(inputs[0].shape))
    with torch.no_grad():
        model(torch.rand(2, 3, size, size))
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert len(relu_calls) == 1 and relu_calls[0][1] == first_conv.out_channels  # the stem's, called once
    assert len(kwta_calls) == (2 * 8 if arch.startswith("resnet18") else 6)  # every other activation


def test_imagenet_normalization_for_rgb_and_gray():
    from kwta.models import IMAGENET_MEAN, IMAGENET_STD, imagenet_normalization

    assert imagenet_normalization(3) == (IMAGENET_MEAN, IMAGENET_STD)
    (mean,), (std,) = imagenet_normalization(1)
    assert mean == pytest.approx(sum(IMAGENET_MEAN) / 3) and std == pytest.approx(sum(IMAGENET_STD) / 3)
    with pytest.raises(ValueError, match="in_channels"):
        imagenet_normalization(4)
