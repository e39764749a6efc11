"""The binarization test: it must fail an attack that is weak by construction, pass an exact one where the exact
attack is known, be solvable by a random search that can enumerate the corners, and report its controls."""

import logging

import pytest
import torch
from torch import nn

import kwta
from kwta import attacks, binarization
from kwta.attacks import AUTOATTACK_LOGGER, AttackSettings, autoattack_checks, predict
from kwta.binarization import BinarizationSettings, binarization_test, binarize, find_head, image_generator
from kwta.journal import Incomplete, Journal
from kwta.modules import KWTA

SETTINGS = BinarizationSettings(inner_points=199)


def relu_network() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    return model.eval(), torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))


def masked_network() -> tuple[nn.Module, torch.Tensor]:
    """A small k-WTA network (10% winners, twice): its exact gradient is zero through the losers."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 256), KWTA(0.1), nn.Linear(256, 128), KWTA(0.1),
                          nn.Linear(128, 10)).eval()
    return model, torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(3))


def test_an_adversarial_example_provably_exists_on_the_modified_network():
    model, images = relu_network()
    for index, image in enumerate(images):
        x = image[None]
        setup = binarize(model, x, 0.1, SETTINGS, image_generator(0, index, x.device))
        assert setup.model is not None, setup.failure
        assert (setup.boundary_point - x).abs().max() <= 0.1 + 1e-7
        assert setup.boundary_point.min() >= 0 and setup.boundary_point.max() <= 1
        assert predict(setup.model, setup.boundary_point).item() == 1 and predict(setup.model, x).item() == 0
        assert setup.closeness == SETTINGS.closeness and 0.9 <= setup.inner_accuracy <= 1
        # the modified network is the original one up to its head: the features are shared
        head, _ = find_head(model, x)
        assert head is model[5] and setup.model(x).shape == (1, 2)
    assert torch.equal(model(images).argmax(dim=1), model(images).argmax(dim=1))  # the original is untouched


def test_each_task_is_drawn_from_its_own_seed():
    """A task does not depend on which images came before it (units of a journal, shards, another order)."""
    model, images = relu_network()
    alone = binarize(model, images[3:4], 0.1, SETTINGS, image_generator(0, 3, images.device))
    found = binarization_test(model, images[:4], 0.1, ["pgd"], AttackSettings(pgd_steps=5, pgd_restarts=1), SETTINGS)
    again = binarize(model, images[3:4], 0.1, SETTINGS, image_generator(0, 3, images.device))
    assert torch.equal(alone.boundary_point, again.boundary_point) and found["tasks"][3]["image"] == 3


def test_where_the_exact_attack_is_known_pgd_passes_and_random_noise_does_not():
    """A linear network: the features are the image itself, so the binary head is linear in the input and one
    sign step of its gradient reaches the corner that maximises it. The test must then count no task missed,
    while random draws of the box, its surface and its corners miss nearly all: the class-1 region is a small
    cap at one corner, not a region noise falls into."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 10)).eval()
    images = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    found = binarization_test(model, images, 0.1, ["pgd"], AttackSettings(pgd_steps=10, pgd_restarts=1), SETTINGS)
    assert found["tested"] == 8 and found["setup_failures"] == []
    assert found["attacks"]["pgd"]["failed"] == 0
    assert found["random"]["failed"] >= 6 and found["inner_accuracy"] > 0.99


def test_a_random_search_that_enumerates_the_corners_passes_on_a_small_kwta_network():
    """Six pixels have 64 corners, and the boundary point is one of them: 1,000 random corners cover them all, so
    the random control solves every task while PGD, on the masked gradient, misses some."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 64), KWTA(0.2), nn.Linear(64, 32), KWTA(0.2),
                          nn.Linear(32, 10)).eval()
    images = torch.rand(10, 1, 2, 3, generator=torch.Generator().manual_seed(3))
    settings = BinarizationSettings(inner_points=199, validation_points=1000)
    found = binarization_test(model, images, 0.1, ["pgd"], AttackSettings(pgd_steps=10, pgd_restarts=1), settings)
    assert found["tested"] >= 8
    assert found["random"]["failed"] == 0 and found["attacks"]["pgd"]["failed"] >= 2


def test_a_vanishing_step_fails_the_test():
    model, images = relu_network()
    weak = AttackSettings(pgd_steps=5, pgd_step=1e-6, pgd_restarts=1)
    found = binarization_test(model, images, 0.1, ["pgd"], weak, SETTINGS)
    assert found["tested"] >= 4 and found["attacks"]["pgd"]["failed"] == found["tested"]
    assert found["suite"]["failed"] == found["tested"]


def test_a_masked_gradient_fails_pgd_and_not_es():
    """On the small k-WTA network plain PGD misses most tasks; es, whose finite differences over eps-wide probes
    see the jumps, misses none."""
    model, images = masked_network()
    settings = AttackSettings(pgd_steps=20, pgd_restarts=1)
    found = binarization_test(model, images, 0.1, ["pgd", "es"], settings, SETTINGS)
    assert found["tested"] == 16
    assert found["attacks"]["pgd"]["failed"] >= 6 and found["attacks"]["es"]["failed"] == 0


def test_a_task_built_at_a_looser_closeness_is_counted_apart(monkeypatch):
    """The first check of the boundary point fails (a rounding of the last bits): the task is built at 0.999,
    recorded so, and left out of the headline figures."""
    model, images = relu_network()
    real, calls = binarization.predict, []

    def predict_once_wrong(network, x):
        calls.append(1)
        found = real(network, x)
        return 1 - found if len(calls) == 1 else found
    monkeypatch.setattr(binarization, "predict", predict_once_wrong)
    found = binarization_test(model, images[:2], 0.1, ["pgd"], AttackSettings(pgd_steps=5, pgd_restarts=1), SETTINGS)
    assert [task["closeness"] for task in found["tasks"]] == [0.999, 0.9999]
    assert found["tested"] == 1 and found["looser"]["tested"] == 1
    assert found["attacks"]["pgd"]["tested"] == 1 and found["looser"]["attacks"]["pgd"]["tested"] == 1


def test_the_model_is_tested_in_eval_mode_and_left_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(32, 10)).train()
    images = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    seen = []
    model[4].register_forward_hook(lambda module, *_: seen.append(module.training))
    binarization_test(model, images, 0.1, ["pgd"], AttackSettings(pgd_steps=2, pgd_restarts=1), SETTINGS)
    assert seen and not any(seen) and all(module.training for module in model.modules())


def test_autoattacks_warnings_from_the_test_are_labelled_as_the_tests(monkeypatch):
    model, images = relu_network()
    real = attacks.pgd

    def warning_pgd(*args, **kwargs):
        logging.getLogger(AUTOATTACK_LOGGER).warning("zero gradients")
        return real(*args, **kwargs)
    monkeypatch.setattr(attacks, "pgd", warning_pgd)
    with autoattack_checks() as found:
        binarization_test(model, images[:1], 0.1, ["pgd"], AttackSettings(pgd_steps=2, pgd_restarts=1), SETTINGS)
    assert found == [(f"pgd on {binarization.SCOPE}", "zero gradients")]


def test_the_test_resumes_from_a_journal_and_shards_by_image(tmp_path, monkeypatch):
    """Each (attack, image) is a unit: a second run reads every one back; half a folder's units, left by a
    shard, make the evaluation Incomplete, and the other half finishes it with the figures of one run."""
    model, images = relu_network()
    labels = model(images).argmax(dim=1)
    kwargs = dict(eps=0.1, attacks=["pgd"], settings=AttackSettings(pgd_steps=5, pgd_restarts=1), eps_curve="none",
                  batch_size=3, binarization=BinarizationSettings(inner_points=49, images=4, validation_points=20))
    whole = kwta.evaluate(model, images, labels, **kwargs).binarization
    folder = tmp_path / "journal"
    folder.mkdir()
    with pytest.raises(Incomplete):
        kwta.evaluate(model, images, labels, journal=Journal(folder, shard=(0, 2)), **kwargs)
    calls = []
    real = binarization.binarize
    monkeypatch.setattr(binarization, "binarize", lambda *a, **k: calls.append(1) or real(*a, **k))
    merged = kwta.evaluate(model, images, labels, journal=Journal(folder), **kwargs).binarization
    assert len(calls) == 2  # the images of the other shard only (1 and 3); 0 and 2 were read back
    drop = {"seconds_per_image"}
    assert {k: v for k, v in merged.items() if k not in drop} == {k: v for k, v in whole.items() if k not in drop}


def test_settings_and_a_model_without_a_head_are_refused():
    with pytest.raises(ValueError, match="inner_radius"):
        BinarizationSettings(inner_radius=1.5)
    with pytest.raises(ValueError, match="validation_points"):
        BinarizationSettings(validation_points=0)
    with pytest.raises(ValueError, match="no nn.Linear head"):
        find_head(nn.Sequential(nn.Flatten()), torch.rand(1, 3))


def test_a_region_of_boundary_points_makes_the_corner_reachable():
    """One boundary point: the head may separate that point's features alone, and on a k-WTA network, whose features
    jump under the smallest perturbation, little around it is class 1 (the reach control); a region of boundary
    points within 1% of eps of the corner makes nearly all of that neighbourhood class 1."""
    model, images = masked_network()
    attack = AttackSettings(pgd_steps=2, pgd_restarts=1)
    point = binarization_test(model, images, 0.1, ["pgd"], attack, BinarizationSettings(inner_points=199,
                                                                                         boundary_points=1))
    region = binarization_test(model, images, 0.1, ["pgd"], attack, SETTINGS)
    assert SETTINGS.boundary_points == 64 and point["reachable"] < 0.5 < 0.9 < region["reachable"]
