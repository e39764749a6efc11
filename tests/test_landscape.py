"""kwta/landscape.py: the roughness figure, the grid, clamping, seeding."""

import numpy as np
import pytest
import torch
from torch import nn

from kwta.landscape import grid_coords, loss_landscape, rademacher_direction, roughness
from kwta.modules import KWTA

STEPS = 25


def tiny_net(activation: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), activation, nn.Flatten(), nn.Linear(8 * 6 * 6, 10)
    )


def tiny_input(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


class InputRange(nn.Module):
    """Records the smallest and largest value the wrapped model was ever fed."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.low, self.high = model, float("inf"), float("-inf")

    def forward(self, x):
        self.low, self.high = min(self.low, x.min().item()), max(self.high, x.max().item())
        return self.model(x)


def surface(function) -> np.ndarray:
    u, v = np.meshgrid(grid_coords(0.1, STEPS), grid_coords(0.1, STEPS), indexing="ij")
    return function(u, v)


def test_roughness_of_a_plane_is_zero():
    assert roughness(surface(lambda u, v: 3.0 * u - 2.0 * v + 1.0)) < 1e-12


def test_roughness_of_quadratics_is_the_discretisation_bound():
    bound = 4 / (STEPS - 1) ** 2
    assert roughness(surface(lambda u, v: u**2 + v**2)) == pytest.approx(bound)
    assert roughness(surface(lambda u, v: u**2 - 0.5 * v**2 + 0.3 * u * v + 2 * u)) <= bound + 1e-12


def test_roughness_of_noise_is_large_and_scale_free():
    noise = np.random.default_rng(0).random((STEPS, STEPS))
    assert roughness(noise) > 0.4
    assert roughness(5.0 * noise + 7.0) == pytest.approx(roughness(noise))
    smooth = surface(lambda u, v: u**2 + v)
    assert roughness(smooth + 0.05 * np.ptp(smooth) * noise) > 5 * roughness(smooth)


def test_roughness_edge_cases():
    assert roughness(np.ones((5, 5))) == 0.0
    with_nan = np.zeros((5, 5))
    with_nan[2, 2] = np.nan
    assert np.isnan(roughness(with_nan))
    assert roughness(torch.rand(5, 4, generator=torch.Generator().manual_seed(0))) > 0
    with pytest.raises(ValueError, match="loss"):
        roughness(np.zeros((2, 5)))


def test_grid_is_symmetric_with_an_exact_zero_centre():
    coords = grid_coords(0.031, STEPS)
    assert coords.shape == (STEPS,)
    assert coords[STEPS // 2] == 0.0
    assert coords[0] == -0.031 and coords[-1] == 0.031
    np.testing.assert_allclose(coords, -coords[::-1])


@pytest.mark.parametrize("activation", [nn.ReLU(), KWTA(0.2)], ids=["relu", "kwta"])
def test_landscape_centre_is_the_clean_loss(activation):
    model, x = tiny_net(activation), tiny_input()
    result = loss_landscape(model, x, 3, radius=0.1, steps=STEPS, batch_size=64)
    assert result.loss.shape == (STEPS, STEPS) and result.coords.shape == (STEPS,)
    assert np.isfinite(result.loss).all()
    clean = nn.functional.cross_entropy(model.eval()(x), torch.tensor([3])).item()
    assert result.clean_loss == pytest.approx(clean, rel=1e-6)
    assert result.loss[STEPS // 2, STEPS // 2] == pytest.approx(clean, rel=1e-5)
    assert result.roughness == roughness(result.loss)


def test_directions_are_the_gradient_sign_and_rademacher():
    model, x = tiny_net(nn.ReLU()), tiny_input()
    result = loss_landscape(model, x, 1, radius=0.1, steps=5)
    probe = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model.eval()(probe), torch.tensor([1])).backward()
    np.testing.assert_array_equal(result.gradient_direction, probe.grad.sign()[0].numpy())
    assert result.random_direction.shape == x.shape[1:]
    assert set(np.unique(result.random_direction)) == {-1.0, 1.0}
    assert result.zero_gradient_fraction == float((probe.grad == 0).float().mean())


def test_loss_along_the_axes_matches_direct_evaluation():
    model, x = tiny_net(KWTA(0.3)).eval(), tiny_input()
    result = loss_landscape(model, x, 2, radius=0.2, steps=5, clamp=False)
    g, r = torch.from_numpy(result.gradient_direction), torch.from_numpy(result.random_direction)
    i, j = 4, 1
    point = x + result.coords[i] * g + result.coords[j] * r
    direct = nn.functional.cross_entropy(model(point), torch.tensor([2])).item()
    assert result.loss[i, j] == pytest.approx(direct, rel=1e-5)


def test_clamping_keeps_every_point_in_the_unit_box():
    x = tiny_input()
    x[0, 0, 0, :3] = torch.tensor([0.0, 1.0, 0.5])
    clamped = InputRange(tiny_net(nn.ReLU()))
    loss_landscape(clamped, x, 0, radius=0.5, steps=5)
    assert 0.0 <= clamped.low and clamped.high <= 1.0
    unclamped = InputRange(tiny_net(nn.ReLU()))
    loss_landscape(unclamped, x, 0, radius=0.5, steps=5, clamp=False)
    assert unclamped.low < 0.0 and unclamped.high > 1.0


def test_determinism_by_seed():
    model, x = tiny_net(KWTA(0.2)), tiny_input()
    first = loss_landscape(model, x, 5, radius=0.1, steps=7, seed=1)
    again = loss_landscape(model, x, 5, radius=0.1, steps=7, seed=1, batch_size=5)
    np.testing.assert_array_equal(first.random_direction, again.random_direction)
    np.testing.assert_allclose(first.loss, again.loss, rtol=1e-6)
    other = loss_landscape(model, x, 5, radius=0.1, steps=7, seed=2)
    assert (first.random_direction != other.random_direction).any()
    np.testing.assert_array_equal(rademacher_direction((3, 4), 9), rademacher_direction((3, 4), 9))


def test_model_mode_is_restored():
    model = tiny_net(nn.ReLU()).train()
    loss_landscape(model, tiny_input(), 0, radius=0.1, steps=3)
    assert model.training
    loss_landscape(model.eval(), tiny_input(), 0, radius=0.1, steps=3)
    assert not model.training


def test_kwta_slice_is_rougher_than_relu_slice():
    """The property the figure illustrates, on an untrained net: k-WTA's winner set switches inside the box."""
    x = tiny_input(1)
    relu = loss_landscape(tiny_net(nn.ReLU(), seed=1), x, 0, radius=0.3, steps=STEPS)
    kwta = loss_landscape(tiny_net(KWTA(0.1), seed=1), x, 0, radius=0.3, steps=STEPS)
    assert kwta.roughness > 3 * relu.roughness


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(radius=0.1, steps=4), "steps"),
        (dict(radius=0.1, steps=1), "steps"),
        (dict(radius=0.0), "radius"),
        (dict(radius=0.1, batch_size=0), "batch_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        loss_landscape(tiny_net(nn.ReLU()), tiny_input(), 0, **kwargs)


def test_input_needs_a_batch_of_one():
    with pytest.raises(ValueError, match="batch dimension of 1"):
        loss_landscape(tiny_net(nn.ReLU()), torch.rand(2, 3, 6, 6), 0, radius=0.1)
