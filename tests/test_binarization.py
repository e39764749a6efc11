"""The binarization test: it must fail an attack that is weak by construction and pass a strong one on ReLU."""

import pytest
import torch
from torch import nn

from kwta.attacks import AttackSettings, predict
from kwta.binarization import BinarizationSettings, binarization_test, binarize, find_head
from kwta.modules import KWTA

SETTINGS = BinarizationSettings(inner_points=199)


def relu_network() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    return model.eval(), torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))


def test_an_adversarial_example_provably_exists_on_the_modified_network():
    model, images = relu_network()
    generator = torch.Generator().manual_seed(0)
    for image in images:
        x = image[None]
        setup = binarize(model, x, 0.1, SETTINGS, generator)
        assert setup.model is not None, setup.failure
        assert (setup.boundary_point - x).abs().max() <= 0.1 + 1e-7
        assert setup.boundary_point.min() >= 0 and setup.boundary_point.max() <= 1
        assert predict(setup.model, setup.boundary_point).item() == 1 and predict(setup.model, x).item() == 0
        # the modified network is the original one up to its head: the features are shared
        head, _ = find_head(model, x)
        assert head is model[5] and setup.model(x).shape == (1, 2)
    assert torch.equal(model(images).argmax(dim=1), model(images).argmax(dim=1))  # the original is untouched


def test_the_strongest_attack_passes_on_a_relu_network():
    model, images = relu_network()
    found = binarization_test(model, images, 0.1, ["pgd", "autoattack"], AttackSettings(), SETTINGS)
    assert found["tested"] == len(images) and found["setup_failures"] == []
    assert found["attacks"]["autoattack"]["failed"] == 0 and found["suite"]["failed"] == 0
    assert found["attacks"]["pgd"]["failed"] <= 1


def test_a_vanishing_step_fails_the_test():
    model, images = relu_network()
    weak = AttackSettings(pgd_steps=5, pgd_step=1e-6, pgd_restarts=1)
    found = binarization_test(model, images, 0.1, ["pgd"], weak, SETTINGS)
    assert found["tested"] >= 4 and found["attacks"]["pgd"]["failed"] == found["tested"]
    assert found["suite"]["failed"] == found["tested"]


def test_a_masked_gradient_fails_pgd_and_not_bpda():
    """A small k-WTA network (10% winners, twice): its exact gradient, zero through the losers, leads plain PGD
    past most of the solvable tasks that BPDA's surrogate gradient solves."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 256), KWTA(0.1), nn.Linear(256, 128), KWTA(0.1),
                          nn.Linear(128, 10)).eval()
    images = torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    settings = AttackSettings(pgd_steps=20, pgd_restarts=1, bpda_steps=20, bpda_iterations=20)
    found = binarization_test(model, images, 0.1, ["pgd", "bpda"], settings, SETTINGS)
    assert found["tested"] == 10
    assert found["attacks"]["pgd"]["failed"] >= 5 and found["attacks"]["bpda"]["failed"] <= 1


def test_settings_and_a_model_without_a_head_are_refused():
    with pytest.raises(ValueError, match="inner_radius"):
        BinarizationSettings(inner_radius=1.5)
    with pytest.raises(ValueError, match="no nn.Linear head"):
        find_head(nn.Sequential(nn.Flatten()), torch.rand(1, 3))
