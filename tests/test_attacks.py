"""kwta/attacks.py: sanity checks, robust-accuracy bookkeeping, attacks against exactly known answers, tables.

The exact answers come from two constructions. A two-class linear model: its margin after the best L-inf
perturbation is margin(x) - eps * ||w_true - w_other||_1 (while no pixel hits 0 or 1), so which images an
attack can flip is known in closed form; an attack may miss some (it is a heuristic) but never flip a
robust one. And a tiny network whose gradient is masked by construction (`masked_network`): PGD cannot
break it, attacks that look past the local gradient must.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kwta import attacks, evaluation
from kwta.attacks import (
    AttackSanityError,
    AttackSettings,
    attack_batch,
    autoattack_adversary,
    check_adversarials,
    margin_loss,
    predict,
    project_linf,
)
from kwta.evaluation import calibration_record, masking_warnings, plus_minus, wilson_interval
from kwta.modules import KWTA

CHEAP = AttackSettings(pgd_steps=20, pgd_restarts=2, es_schedule=((10, 20), (10, 40)), eot_samples=4, eot_rel_sigma=1.0,
                       eot_steps=20, bpda_steps=20, bpda_iterations=20, autoattack_iterations=20, square_queries=1000)


def linear_two_class(seed: int = 0, pixels: int = 64) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(model, images in [0.3, 0.7], their predicted labels): a linear classifier and points it gets right."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(pixels, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(2, pixels, generator=generator))
        model[1].bias.copy_(-0.5 * model[1].weight.sum(dim=1))  # centre the decision boundary on the data
    images = 0.3 + 0.4 * torch.rand(96, 1, 8, pixels // 8, generator=generator)
    return model.eval(), images, predict(model, images)


def exactly_robust(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    weight = model[1].weight.detach()
    with torch.no_grad():
        margin = -margin_loss(model(images), labels)  # true logit minus the other one
    weight_gap = (weight[labels] - weight[1 - labels]).abs().sum(dim=1)
    return margin > eps * weight_gap


def linear_ten_class(seed: int = 0, pixels: int = 64) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 10-class linear classifier and 96 images in [0.3, 0.7] with their predicted labels."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(pixels, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(10, pixels, generator=generator))
        model[1].bias.copy_(-0.5 * model[1].weight.sum(dim=1) + 0.3 * torch.randn(10, generator=generator))
    images = 0.3 + 0.4 * torch.rand(96, 1, 8, pixels // 8, generator=generator)
    return model.eval(), images, predict(model, images)


def exactly_robust_multiclass(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Robust iff every other class j stays behind: logit gap > eps * ||w_true - w_j||_1 (no pixel clipped)."""
    weight = model[1].weight.detach()
    with torch.no_grad():
        logits = model(images)
    gaps = logits.gather(1, labels[:, None]) - logits
    weight_gaps = (weight[labels][:, None, :] - weight[None]).abs().sum(dim=-1)
    is_true_class = torch.arange(logits.shape[1])[None] == labels[:, None]
    return ((gaps > eps * weight_gaps) | is_true_class).all(dim=1)


def masked_network(n_images: int = 16) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A network whose gradient points away from its decision boundary by construction, and images it gets right.

    u = mean(x) - 0.5 drives two units z = (1 + 10u, 1 - 10u); a k-WTA with k = 1 keeps the larger (a hard
    threshold at u = 0); the wrong class's logit is 2 z1 + 0.1 z2 - 1 of the kept values, the true one 0.
    For u < 0 the margin is 0.1 (1 - 10u) - 1 < 0 and grows as u falls: the gradient says "lower u". At
    u = 0 it jumps to 2 (1 + 10u) - 1 > 0. The images sit at u = -0.05, half of eps = 0.1 below the jump;
    PGD's random start moves u by 0.007 (one standard deviation), and every gradient step moves it down.
    """
    pixels = 64
    model = nn.Sequential(nn.Flatten(), nn.Linear(pixels, 2), KWTA(k=1), nn.Linear(2, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[10.0], [-10.0]]).expand(2, pixels) / pixels)
        model[1].bias.copy_(torch.tensor([1.0 - 5.0, 1.0 + 5.0]))
        model[3].weight.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.1]]))
        model[3].bias.copy_(torch.tensor([0.0, -1.0]))
    images = 0.3 + 0.4 * torch.rand(n_images, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    images = images - images.mean(dim=(1, 2, 3), keepdim=True) + 0.45
    labels = torch.zeros(n_images, dtype=torch.long)
    assert torch.equal(predict(model, images), labels)
    return model.eval(), images, labels


# ---------------------------------------------------------------------------------------------------------
# Sanity checks and shared pieces


def test_check_adversarials_accepts_valid_and_boundary_points():
    x = torch.rand(4, 1, 5, 5)
    check_adversarials(x.clone(), x, 0.1)
    check_adversarials(project_linf(x + 0.1 * torch.randn_like(x).sign(), x, 0.1), x, 0.1)
    check_adversarials(torch.empty(0, 1, 5, 5), torch.empty(0, 1, 5, 5), 0.1)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda x: x + 0.1 + 1e-4, "exceeds eps"),
        (lambda x: x.clone().index_fill_(0, torch.tensor([1]), float("nan")), "NaN"),
        (lambda x: x.clone().index_fill_(0, torch.tensor([2]), 1.01), r"\[0, 1\]"),
        (lambda x: x.clone().index_fill_(0, torch.tensor([2]), -0.01), r"\[0, 1\]"),
        (lambda x: x[:3], "shape"),
    ],
)
def test_check_adversarials_raises_on_each_violation(corrupt, message):
    x = 0.2 + 0.6 * torch.rand(4, 1, 5, 5)  # away from the bounds, so only the intended rule is broken
    with pytest.raises(AttackSanityError, match=message):
        check_adversarials(corrupt(x), x, 0.1, "pgd")


def test_attack_batch_aborts_when_an_attack_leaves_the_ball(monkeypatch):
    model, images, labels = linear_two_class()
    monkeypatch.setattr(attacks, "pgd", lambda model, x, y, eps, **options: (x + 2 * eps).clamp(0, 1))
    with pytest.raises(AttackSanityError, match="pgd: max"):
        attack_batch(model, images, labels, 0.01, ["pgd"], CHEAP)


def test_project_linf_and_margin_loss():
    x = torch.rand(3, 2, 4, 4)
    far = x + 5 * torch.randn_like(x)
    projected = project_linf(far, x, 0.05)
    assert (projected - x).abs().max() <= 0.05 + 1e-7 and projected.min() >= 0 and projected.max() <= 1
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]])
    assert margin_loss(logits, torch.tensor([0, 0])).tolist() == [-1.0, 3.0]


def test_attack_settings_validation_and_step_size():
    assert AttackSettings().pgd_step_size(0.1) == pytest.approx(2.5 * 0.1 / 40)
    assert AttackSettings(pgd_step=0.02).pgd_step_size(0.1) == 0.02
    assert AttackSettings(pgd_rel_stepsize=0.003).pgd_step_size(0.1) == pytest.approx(0.0003)
    bad_settings = [(dict(pgd_step=0.01, pgd_rel_stepsize=0.003), "at most one"),
                    (dict(es_schedule=((3, 0),)), "es_schedule"),
                    (dict(pgd_loss="hinge"), "pgd_loss"), (dict(bpda_temperatures=(0.1, 0.0)), "bpda"),
                    (dict(square_queries=0), "square_queries"), (dict(es_probe_batch=0), "es_probe_batch")]
    for bad, message in bad_settings:
        with pytest.raises(ValueError, match=message):
            AttackSettings(**bad)


def test_autoattack_defaults_are_the_standard_version():
    model, _, _ = linear_two_class()
    adversary = autoattack_adversary(model, 8 / 255, num_classes=10)
    assert adversary.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert adversary.apgd.n_iter == adversary.apgd_targeted.n_iter == adversary.fab.n_iter == 100
    assert adversary.apgd.n_restarts == adversary.apgd_targeted.n_restarts == adversary.fab.n_restarts == 1
    assert adversary.apgd_targeted.n_target_classes == adversary.fab.n_target_classes == 9
    assert adversary.square.n_queries == 5000 and adversary.norm == "Linf" and adversary.epsilon == 8 / 255
    cut = autoattack_adversary(model, 0.1, num_classes=5, iterations=7, square_queries=30)
    assert (cut.apgd.n_iter, cut.square.n_queries, cut.fab.n_target_classes) == (7, 30, 4)


@pytest.mark.parametrize("iterations", [5, 20, 37, 100, 250])
def test_a_cut_budget_gives_apgd_the_schedule_of_a_fresh_apgd_with_that_budget(iterations):
    """APGD derives when its step halves (n_iter_2, n_iter_min, size_decr) from n_iter in __init__: at a cut
    budget the schedule must be the one a fresh APGD of that budget computes, not the 100-iteration one."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    model, _, _ = linear_two_class()
    adversary = autoattack_adversary(model, 0.1, num_classes=10, iterations=iterations)
    for built, kind in ((adversary.apgd, APGDAttack), (adversary.apgd_targeted, APGDAttack_targeted)):
        fresh = kind(model, n_iter=iterations, eps=0.1)
        assert {name: getattr(built, name) for name in attacks.APGD_SCHEDULE} == \
               {name: getattr(fresh, name) for name in attacks.APGD_SCHEDULE}
    if iterations < 100:  # the bug it guards against: the step schedule of 100 iterations kept
        assert adversary.apgd.n_iter_2 < max(int(0.22 * 100), 1)


def test_bpda_runs_autoattacks_apgd_through_the_surrogate(monkeypatch):
    """After the sign steps, APGD-CE and APGD-T run at each temperature with every KWTA layer's backward smoothed."""
    model, images, labels = masked_network()
    layers = [m for m in model.modules() if isinstance(m, KWTA)]
    calls = []

    def recording(model, x, y, eps, *, parts, iterations, seed, **options):
        calls.append((tuple(parts), iterations, [layer.surrogate_temperature for layer in layers]))
        return x.clone()

    monkeypatch.setattr(attacks, "autoattack", recording)
    monkeypatch.setattr(attacks, "sign_gradient_ascent", lambda model, xs, ys, eps, **options: xs.clone())
    settings = AttackSettings(bpda_temperatures=(0.3, 1.0), bpda_iterations=17)
    attack_batch(model, images, labels, 0.1, ["bpda"], settings)
    parts = ("apgd-ce", "apgd-t") if model(images[:1]).shape[1] >= 4 else ("apgd-ce",)
    assert calls == [(parts, 17, [0.3] * len(layers)), (parts, 17, [1.0] * len(layers))]
    assert all(layer.surrogate_temperature is None for layer in layers)  # restored afterwards


def test_eot_noise_scales_with_eps_and_each_attack_has_its_own_steps(monkeypatch):
    model, images, labels = linear_two_class()
    seen = {}
    for name in ("eot", "bpda", "pgd"):
        def recording(*args, _name=name, **options):
            seen[_name] = options
            return args[1].clone()
        monkeypatch.setattr(attacks, name, recording)
    settings = AttackSettings(pgd_step=0.5, eot_rel_sigma=0.25, eot_steps=7, bpda_steps=9)
    for eps in (0.02, 0.2):
        attack_batch(model, images, labels, eps, ["eot", "bpda", "pgd"], settings)
        assert seen["eot"]["sigma"] == pytest.approx(0.25 * eps) and seen["eot"]["steps"] == 7
        assert seen["eot"]["step_size"] is None and seen["bpda"]["step_size"] is None  # PGD's step is PGD's own
        assert seen["bpda"]["steps"] == 9 and seen["pgd"]["step_size"] == 0.5


# ---------------------------------------------------------------------------------------------------------
# Attacks against the exact answer, and the bookkeeping


@pytest.mark.parametrize("name", ["pgd", "deepfool", "bpda", "es", "eot", "transfer"])
def test_attack_finds_the_exactly_known_adversarials_of_a_linear_model(name):
    model, images, labels = linear_two_class()
    eps = 0.01
    exact = exactly_robust(model, images, labels, eps)
    assert 0.2 < exact.float().mean() < 0.8, "the data should have both robust and breakable images"
    robust, seconds = attack_batch(model, images, labels, eps, [name], CHEAP, source_model=model, seed=1)
    assert not (exact & ~robust[name]).any(), f"{name} broke an image that no eps-perturbation can break"
    # es only estimates the gradient, so near-boundary images (which need every pixel's sign right) may survive
    agreement = 0.85 if name == "es" else 0.95
    assert (robust[name] == exact).float().mean() >= agreement, f"{name} misses adversarials a linear model has"
    assert seconds[name] >= 0


# each part of AutoAttack alone; the whole cascade runs in tests/test_attack_script.py
@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t", "fab", "square"])
def test_autoattack_at_its_standard_budget_finds_the_adversarials_of_a_ten_class_linear_model(name):
    model, images, labels = linear_ten_class()
    eps = 0.01
    exact = exactly_robust_multiclass(model, images, labels, eps)
    assert 0.2 < exact.float().mean() < 0.8, "the data should have both robust and breakable images"
    robust, _ = attack_batch(model, images, labels, eps, [name], AttackSettings(), seed=1)
    assert not (exact & ~robust[name]).any(), f"{name} broke an image that no eps-perturbation can break"
    agreement = 0.9 if name == "square" else 0.93  # Square searches at random; APGD-CE alone misses a few
    assert (robust[name] == exact).float().mean() >= agreement, f"{name} misses adversarials a linear model has"


def test_a_masked_gradient_stops_pgd_but_not_bpda_square_or_eot():
    model, images, labels = masked_network()
    settings = AttackSettings(pgd_restarts=3, square_queries=100, eot_rel_sigma=4.0, bpda_iterations=20)
    robust, _ = attack_batch(model, images, labels, 0.1, ["pgd", "bpda", "square", "eot"], settings)
    assert robust["pgd"].all(), "every gradient step moves away from the boundary: PGD cannot break an image"
    assert not robust["bpda"].any(), "the smooth stand-in of the k-WTA layer sees the jump (at temperature 1)"
    assert not robust["square"].any(), "Square's first squares cover most pixels and cross the jump"
    assert not robust["eot"].any(), "noise of the jump's distance brings its far side into the average"
    cold, _ = attack_batch(model, images, labels, 0.1, ["bpda"],
                           AttackSettings(bpda_temperatures=(0.1,), bpda_iterations=20))
    assert cold["bpda"].all(), "too cold a stand-in passes the exact gradient again: hence several temperatures"


def test_worst_case_is_the_and_over_attacks_not_the_minimum(monkeypatch):
    """Two stubbed attacks break disjoint halves: each leaves half the images, together they leave none."""
    model, images, labels = masked_network(n_images=12)
    jump = torch.full_like(images[:1], 0.1)  # +eps on every pixel takes u from -0.05 to +0.05: across the jump

    def breaking(first: int, last: int):
        def attack(model, x, y, eps, **options):
            return torch.cat([x[:first], (x[first:last] + jump).clamp(0, 1), x[last:]])
        return attack

    monkeypatch.setattr(attacks, "pgd", breaking(0, 6))
    monkeypatch.setattr(attacks, "eot", breaking(6, 12))
    robust, _ = attack_batch(model, images, labels, 0.1, ["pgd", "eot"], CHEAP)
    assert robust["pgd"].tolist() == [False] * 6 + [True] * 6
    assert robust["eot"].tolist() == [True] * 6 + [False] * 6
    assert robust["worst_case"].sum() == 0


def test_robust_accuracy_bookkeeping():
    model, images, labels = linear_two_class(seed=3)
    labels[:10] = 1 - labels[:10]  # misclassified images are never robust, whatever the attack does
    other_model, _, _ = linear_two_class(seed=4)
    names = ["pgd", "deepfool", "bpda", "es", "eot", "transfer"]
    robust, seconds = attack_batch(model, images, labels, 0.01, names, CHEAP, source_model=other_model)
    assert set(robust) == {"clean", *names, "worst_case"} and set(seconds) == set(names)
    assert robust["clean"].tolist() == [False] * 10 + [True] * (len(labels) - 10)
    every = torch.stack([robust[name] for name in ["clean", *names]]).all(dim=0)
    assert torch.equal(robust["worst_case"], every)
    for name in names:
        assert not (robust[name] & ~robust["clean"]).any()
        assert robust["worst_case"].sum() <= robust[name].sum()
    # transfer from an unrelated model is far weaker than white-box PGD on a linear model
    assert robust["transfer"].sum() > robust["pgd"].sum()


def test_attack_batch_rejects_bad_requests():
    model, images, labels = linear_two_class()
    with pytest.raises(ValueError, match="unknown attack"):
        attack_batch(model, images, labels, 0.01, ["fgsm"])
    with pytest.raises(ValueError, match="source_model"):
        attack_batch(model, images, labels, 0.01, ["transfer"])
    with pytest.raises(ValueError, match="at least 4 classes"):
        attack_batch(model, images, labels, 0.01, ["apgd-t"])


def test_random_attacks_are_deterministic_per_seed_and_independent_per_attack():
    model, images, labels = linear_two_class()
    for name, budget in [("es", dict(schedule=((3, 4),))), ("eot", dict(steps=3, samples=4))]:
        first = getattr(attacks, name)(model, images, labels, 0.01, **budget, seed=7)
        again = getattr(attacks, name)(model, images, labels, 0.01, **budget, seed=7)
        other = getattr(attacks, name)(model, images, labels, 0.01, **budget, seed=8)
        assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(*[attacks.pgd(model, images, labels, 0.01, seed=5) for _ in range(2)])
    # each attack draws its random start from its own stream of the batch's seed
    starts = {name: attacks.attack_seed(0, name) for name in attacks.ATTACKS}
    assert len(set(starts.values())) == len(starts)


def test_es_probes_are_evaluated_in_bounded_chunks():
    """Whatever the budget, no forward pass sees more than max(probe_batch, 2 x the images) images."""
    model, images, labels = linear_two_class()
    images, labels = images[:5], labels[:5]
    seen = []
    model.register_forward_hook(lambda _module, inputs, _output: seen.append(len(inputs[0])))
    attacks.es(model, images, labels, 0.01, schedule=((3, 5), (1, 60)), restarts=1, probe_batch=16)
    assert max(seen) <= 16 and sum(seen) >= 2 * 60 * len(images)  # the last step alone draws 60 pairs per image


def test_es_runs_tramers_schedule_then_restarts_from_random_starts(monkeypatch):
    """Tramer et al.'s stages by default (20 steps of 50 pairs, 20 of 500, 60 of 10,000), the step 0.01 at eps
    0.031; the first run from the image itself, the next from a uniform random start."""
    assert AttackSettings().es_schedule == ((20, 50), (20, 500), (60, 10000)) and AttackSettings().es_restarts == 2
    model, images, labels = linear_two_class()
    runs = []

    def recording(model, xs, ys, eps, *, steps, step_size, start, estimate_gradient, **options):
        runs.append((steps, step_size, (start - xs).abs().max().item()))
        return xs.clone()  # breaks nothing: every restart runs

    monkeypatch.setattr(attacks, "sign_gradient_ascent", recording)
    attacks.es(model, images, labels, 0.031, schedule=((2, 3), (1, 7)))
    assert [steps for steps, _, _ in runs] == [3, 3] and runs[0][1] == pytest.approx(0.01)
    assert runs[0][2] == 0 and 0 < runs[1][2] <= 0.031 + 1e-7


def test_es_calibration_compares_image_by_image():
    clean = torch.tensor([True] * 10)
    pgd = torch.tensor([False] * 5 + [True] * 5)  # PGD breaks images 0-4: 50% left, inside the band
    record = calibration_record(0.05, clean, pgd, pgd.clone(), in_band=True)
    assert record["counts_as_attack"] and record["share_of_pgds"] == 1.0 and "is an attack" in record["line"]
    # es leaves as many as PGD, but on other images: the counts agree, the images do not
    other = torch.tensor([True] * 5 + [False] * 5)
    record = calibration_record(0.05, clean, pgd, other, in_band=True)
    assert not record["counts_as_attack"] and record["share_of_pgds"] == 0.0 and "too weak" in record["line"]
    # 9 of PGD's 10 breaks is enough, 8 is not
    pgd = torch.tensor([False] * 10 + [True] * 10)
    clean = torch.ones(20, dtype=torch.bool)
    assert calibration_record(0.05, clean, pgd, torch.tensor([False] * 9 + [True] * 11), True)["counts_as_attack"]
    assert not calibration_record(0.05, clean, pgd, torch.tensor([False] * 8 + [True] * 12), True)["counts_as_attack"]
    # outside the band (PGD broke everything) the comparison says nothing
    assert not calibration_record(0.05, clean, torch.zeros(20, dtype=torch.bool), torch.zeros(20, dtype=torch.bool),
                                  in_band=False)["counts_as_attack"]


# ---------------------------------------------------------------------------------------------------------
# The 95% interval


def test_wilson_interval_known_cases():
    z2 = evaluation.INTERVAL_Z**2
    assert wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))  # closed forms at the ends
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", 81 of 263: 0.2553 to 0.3662
    low, high = wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    # the bounds are where the score test just accepts: |p_hat - p| = z sqrt(p (1 - p) / n)
    for successes, trials in [(3, 32), (17, 256), (128, 256)]:
        for bound in wilson_interval(successes, trials):
            gap = abs(successes / trials - bound) - evaluation.INTERVAL_Z * math.sqrt(bound * (1 - bound) / trials)
            assert abs(gap) < 1e-12
    low, high = wilson_interval(5, 20)
    assert (low, high) == pytest.approx((1 - wilson_interval(15, 20)[1], 1 - wilson_interval(15, 20)[0]))
    assert plus_minus(0.0, wilson_interval(0, 10)) == pytest.approx(z2 / (10 + z2))  # the band covers [0, high]
    with pytest.raises(ValueError):
        wilson_interval(3, 0)


# ---------------------------------------------------------------------------------------------------------
# The "must hold" on real data: PGD breaks a normally trained ReLU network on Fashion-MNIST


@pytest.fixture(scope="module")
def fashion_mnist_relu():
    """A small strided CNN, 3 epochs of SGD on 6,000 Fashion-MNIST images (seconds on a CPU)."""
    from kwta.data import get_datasets

    try:
        train_ds, test_ds, _ = get_datasets("fashion-mnist", train_subset=6000, augment=False)
    except FileNotFoundError as error:
        pytest.skip(f"Fashion-MNIST not available: {error}")
    train_x = torch.stack([image for image, _ in train_ds])
    train_y = torch.tensor([label for _, label in train_ds])
    test_x = torch.stack([test_ds[i][0] for i in range(128)])
    test_y = torch.tensor([test_ds[i][1] for i in range(128)])
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        for batch in torch.randperm(len(train_x)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(train_x[batch]), train_y[batch]).backward()
            optimizer.step()
    return model.eval(), test_x, test_y


def test_pgd_leaves_at_most_a_quarter_of_clean_accuracy_on_a_relu_network(fashion_mnist_relu):
    model, images, labels = fashion_mnist_relu
    robust, _ = attack_batch(model, images, labels, 0.1, ["pgd"], AttackSettings())
    clean, after_pgd = robust["clean"].float().mean().item(), robust["pgd"].float().mean().item()
    assert clean >= 0.7, "the network should have learned Fashion-MNIST"
    assert after_pgd <= clean / 4, f"PGD left {after_pgd:.1%} of {clean:.1%}"


def test_the_replications_relative_step_is_too_weak(fashion_mnist_relu):
    """rel_stepsize=0.003 moves at most 40 * 0.003 * eps in total: it leaves most images standing."""
    model, images, labels = fashion_mnist_relu
    weak, _ = attack_batch(model, images[:64], labels[:64], 0.1, ["pgd"], AttackSettings(pgd_rel_stepsize=0.003))
    assert weak["pgd"].sum() > 3 / 4 * weak["clean"].sum()


def test_adaptive_attacks_break_the_relu_network_too(fashion_mnist_relu):
    """On a smooth network es and eot must break many images; a wrong sign would break none."""
    model, images, labels = fashion_mnist_relu
    images, labels = images[:32], labels[:32]
    settings = AttackSettings(eot_samples=2, es_schedule=((10, 20), (10, 50)), es_restarts=1)  # a cut budget
    robust, _ = attack_batch(model, images, labels, 0.1, ["es", "eot"], settings)
    # es is gradient-free and weaker than PGD at this cut budget: it breaks about a third of them, so the bound
    # leaves room for another machine's float arithmetic.
    assert robust["es"].sum() <= 5 / 6 * robust["clean"].sum()
    assert robust["eot"].sum() <= robust["clean"].sum() / 4


# ---------------------------------------------------------------------------------------------------------
# Masking diagnostics and the results table


def test_masking_warnings():
    assert masking_warnings({0.1: {"pgd": 0.40, "es": 0.38, "eot": 0.37, "transfer": 0.5, "worst_case": 0.37}}) == []
    (flagged,) = masking_warnings({0.1: {"pgd": 0.40, "es": 0.30, "transfer": 0.2, "worst_case": 0.1}})
    assert "worst case leaves 10.0% against PGD's 40.0%" in flagged and "es 30.0%, transfer 20.0%" in flagged
    # where PGD leaves little, an attack breaking half of its survivors is flagged though under 5 points
    (flagged,) = masking_warnings({0.1: {"pgd": 0.043, "autoattack": 0.035, "bpda": 0.0, "worst_case": 0.0}})
    assert "worst case leaves 0.0% against PGD's 4.3% (bpda 0.0%)" in flagged
    assert masking_warnings({0.1: {"pgd": 0.03, "bpda": 0.015, "worst_case": 0.015}}) == []  # 1.5 points: noise
    # Square beating PGD is no flag while a white-box attack (here APGD-CE) does as well
    (flagged,) = masking_warnings({0.1: {"pgd": 0.40, "apgd-ce": 0.30, "square": 0.32, "worst_case": 0.3}})
    assert "worst case" in flagged and "Square (gradient-free)" not in flagged
    flagged = masking_warnings({0.1: {"pgd": 0.40, "apgd-ce": 0.38, "square": 0.2, "worst_case": 0.2}})
    assert len(flagged) == 2 and "Square (gradient-free) leaves 20.0%" in flagged[1] and "apgd-ce 38.0%" in flagged[1]
    assert any("does not grow" in w for w in masking_warnings({0.05: {"pgd": 0.3}, 0.1: {"pgd": 0.4}}))
    assert any("does not grow" in w for w in masking_warnings({0.05: {"pgd": 0.3}, 0.1: {"pgd": 0.3}}))
    assert masking_warnings({0.05: {"pgd": 0.0}, 0.1: {"pgd": 0.0}}) == []
    # the eps curve: PGD must break about every image at its largest eps
    assert masking_warnings({0.1: {"pgd": 0.2}}, pgd_curve={0.05: 0.4, 0.2: 0.05, 0.8: 0.0}) == []
    (large,) = masking_warnings({0.1: {"pgd": 0.2}}, pgd_curve={0.05: 0.4, 0.8: 0.03})
    assert "largest of its curve" in large
    assert "vanish" in masking_warnings({}, vanishing_gradient_share=0.5)[0]


def test_the_worst_case_is_held_to_the_same_rule_as_each_attack():
    """Every attack within 3 points of PGD, each on other images: only their worst case shows the gap."""
    (flagged,) = masking_warnings({0.1: {"pgd": 0.40, "es": 0.37, "eot": 0.37, "bpda": 0.38, "worst_case": 0.30}})
    assert "worst case leaves 30.0% against PGD's 40.0% (no attack alone, together on different images)" in flagged
    (flagged,) = masking_warnings({0.1: {"pgd": 0.04, "es": 0.035, "bpda": 0.03, "worst_case": 0.0}})
    assert "worst case leaves 0.0% against PGD's 4.0%" in flagged


def test_autoattacks_own_checks_reach_the_warnings():
    """A randomised model: AutoAttack's check_randomized logs a warning, which attack_batch's caller collects."""
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))

        def forward(self, x):
            return self.net(x) + 0.5 * torch.randn(len(x), 4)

    torch.manual_seed(0)
    model, images = Noisy().eval(), torch.rand(8, 3, 2, 2)
    labels = model.net(images).argmax(dim=1)
    with attacks.autoattack_checks() as logged:
        attack_batch(model, images, labels, 0.1, ["apgd-ce"], AttackSettings(autoattack_iterations=2))
    assert any(attack == "apgd-ce" and "random" in message.lower() for attack, message in logged), logged
    with attacks.autoattack_checks() as quiet:
        pass
    assert quiet == []
