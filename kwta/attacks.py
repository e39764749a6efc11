"""Attack runners and robust accuracy: the suite a k-WTA robustness figure has to survive.

Every attack takes a model in eval mode that maps images in [0, 1] to logits, clean images `x`, labels
`y` and an L-inf radius `eps`, and returns adversarial images of the same shape (untargeted).
`attack_batch` runs a list of them over one batch, checks each result (`check_adversarials`) and returns,
per attack, which images stayed robust: classified correctly and still classified correctly after the
attack. `worst_case` counts an image robust only if it survived every attack that was run.

The suite (TABLE_SUITE, what attack.py runs by default):
  pgd         Madry et al.'s PGD: random start, sign steps, projection; the first adversarial iterate is kept
              (an image adversarial at step 10 and correct again at step 40 counts as broken), restarts.
  deepfool    foolbox LinfDeepFoolAttack (the replication's).
  autoattack  AutoAttack's standard version from the official code (pyautoattack): APGD-CE, APGD-T,
              FAB-T, Square. Its parts also run alone: apgd-ce, apgd-t, fab (FAB-T), square.
  square      Square Attack alone: score-based and gradient-free, so a misleading gradient cannot stop it.
  bpda        PGD on the margin whose backward goes through a smooth stand-in of every k-WTA layer
              (kwta.modules.surrogate_gradient; forward exact), at a few temperatures.
  eot         PGD on the margin with the gradient averaged over Gaussian noise around the iterate.
  es          Tramer et al.'s attack on k-WTA: sign steps on a finite-difference gradient estimate.
  transfer    PGD adversarials crafted on a source model (the ReLU twin), evaluated on the target.

Why the adaptive ones: k-WTA makes the network piecewise linear with dense discontinuities, so the
gradient at a point says little about the loss a step away and plain PGD stalls (gradient masking).
Tramer, Carlini, Brendel, Madry (2020, "On Adaptive Attacks to Adversarial Example Defenses") broke
k-WTA with a gradient estimated by finite differences over Gaussian probes of scale eps (`es`); `eot`
averages autograd gradients over noise instead; `bpda` keeps the exact forward and smooths only the
backward; `square` never looks at a gradient. All the home-made ones share one sign-gradient loop
(`sign_gradient_ascent`) and differ only in how they get the gradient.
"""

import contextlib
import contextvars
import importlib
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kwta.modules import surrogate_gradient

if TYPE_CHECKING:
    from pyautoattack import AutoAttack

# AutoAttack's names for the parts that run alone; "fab" is the targeted FAB the standard version runs.
AUTOATTACK_PARTS = {"apgd-ce": "apgd-ce", "apgd-t": "apgd-t", "fab": "fab-t", "square": "square"}
LOSSES = ("ce", "margin")
# Measured on the demo's k-WTA 0.2 model (64 images, eps 0.1): 0.3 and 1 break the most, 0.03 far less than PGD.
BPDA_TEMPERATURES = (0.3, 1.0, 3.0)
# Tramer et al.'s es on k-WTA: 100 steps in (steps, antithetic pairs) stages, a step of 0.01 at eps 0.031.
ES_SCHEDULE = ((20, 50), (20, 500), (60, 10000))
ES_REL_STEP = 0.01 / 0.031
SANITY_TOLERANCE = 1e-6


class AttackSanityError(RuntimeError):
    """An attack returned images outside the eps-ball, outside [0, 1] or NaN: its number would be wrong."""


@dataclass
class AttackSettings:
    """Attack hyperparameters, each attack's its own, at the standard budgets (AutoAttack's, Madry's, Tramer's).

    A step left as None is 2.5 * eps / steps (Madry et al.'s schedule for a budget of `steps`).
    """

    pgd_steps: int = 40  # also transfer's on the source (it is PGD on the twin)
    pgd_step: float | None = None  # absolute step
    pgd_rel_stepsize: float | None = None  # foolbox's rel_stepsize (times eps); the replication used 0.003
    pgd_restarts: int = 5  # random starts of pgd and of transfer
    pgd_loss: str = "ce"
    deepfool_steps: int = 20
    deepfool_candidates: int = 10
    autoattack_iterations: int = 100  # APGD-CE, APGD-T, FAB-T iterations: AutoAttack's standard 100
    square_queries: int = 5000  # AutoAttack's standard 5000
    bpda_temperatures: tuple[float, ...] = BPDA_TEMPERATURES
    bpda_steps: int = 40  # the sign-step first stage, per temperature
    bpda_step: float | None = None
    bpda_iterations: int = 100  # APGD-CE and APGD-T through the surrogate, per temperature (AutoAttack's 100)
    es_schedule: tuple[tuple[int, int], ...] = ES_SCHEDULE  # (steps, antithetic pairs) stages
    es_restarts: int = 2  # the first from x (as published), the others from random starts
    es_probe_batch: int = 512  # probe images per forward pass: bounds es's memory whatever its budget
    eot_samples: int = 8
    eot_rel_sigma: float = 0.5  # the noise's scale, times eps
    eot_steps: int = 40
    eot_step: float | None = None

    def __post_init__(self):
        for name in ("pgd_steps", "pgd_restarts", "deepfool_steps", "deepfool_candidates", "autoattack_iterations",
                     "square_queries", "bpda_steps", "bpda_iterations", "es_restarts", "es_probe_batch",
                     "eot_samples", "eot_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("pgd_step", "pgd_rel_stepsize", "bpda_step", "eot_rel_sigma", "eot_step"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if self.pgd_step is not None and self.pgd_rel_stepsize is not None:
            raise ValueError("give at most one of pgd_step and pgd_rel_stepsize")
        if self.pgd_loss not in LOSSES:
            raise ValueError(f"pgd_loss must be one of {LOSSES}, got {self.pgd_loss!r}")
        self.es_schedule = tuple((int(steps), int(pairs)) for steps, pairs in self.es_schedule)
        if not self.es_schedule or not all(steps >= 1 and pairs >= 1 for steps, pairs in self.es_schedule):
            raise ValueError(f"es_schedule must be (steps, pairs) stages of positive counts, got {self.es_schedule!r}")
        self.bpda_temperatures = tuple(self.bpda_temperatures)
        if not self.bpda_temperatures or not all(t > 0 for t in self.bpda_temperatures):
            raise ValueError(f"bpda_temperatures must be positive numbers, got {self.bpda_temperatures!r}")

    def pgd_step_size(self, eps: float) -> float:
        if self.pgd_rel_stepsize is not None:
            return self.pgd_rel_stepsize * eps
        return madry_step(eps, self.pgd_steps, self.pgd_step)


def madry_step(eps: float, steps: int, step: float | None = None) -> float:
    """`step` if given, else 2.5 * eps / steps: enough to cross the eps-ball and back within the budget."""
    return step if step is not None else 2.5 * eps / steps


# ---------------------------------------------------------------------------------------------------------
# Shared pieces


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(dim=1)


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image: best wrong logit minus the true logit; positive exactly when the image is misclassified."""
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    wrong_logits = logits.scatter(1, labels[:, None], float("-inf"))
    return wrong_logits.max(dim=1).values - true_logit


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point of the eps-ball around x that is also a valid image."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def attack_seed(seed: int, attack: str) -> int:
    """A seed of its own for each attack, so no two attacks share a random start."""
    return int(np.random.SeedSequence([seed, zlib.crc32(attack.encode())]).generate_state(1)[0])


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def random_start(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform draw from the eps-ball around x, clipped to valid images (torch's global RNG without a generator)."""
    return project_linf(x + torch.empty_like(x).uniform_(-eps, eps, generator=generator), x, eps)


def optional_import(module: str, attack: str):
    """The maintained package an attack is run from; those are optional (pip install 'kwta[attacks]')."""
    if module == "foolbox":
        os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # foolbox imports GitPython, which warns without git
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"the {attack} attack runs from the {module} package, which is not installed: "
                          f"pip install 'kwta[attacks]'") from error


AUTOATTACK_LOGGER = "auto-attack"  # where pyautoattack logs its own checks
_running_attack: contextvars.ContextVar[str] = contextvars.ContextVar("running_attack", default="")
_attack_scope: contextvars.ContextVar[str] = contextvars.ContextVar("attack_scope", default="")


class _Collector(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.found: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        attack, scope = _running_attack.get(), _attack_scope.get()
        self.found.append((f"{attack} on {scope}" if scope else attack, record.getMessage()))


@contextlib.contextmanager
def attack_scope(scope: str) -> Iterator[None]:
    """While the block runs, AutoAttack's warnings name `scope` beside the attack (e.g. the binarization test's
    networks), so that they are not read as the evaluated model's."""
    token = _attack_scope.set(scope)
    try:
        yield
    finally:
        _attack_scope.reset(token)


@contextlib.contextmanager
def autoattack_checks() -> Iterator[list[tuple[str, str]]]:
    """While the block runs, collect (attack, message) for every warning AutoAttack's own checks log: a
    randomised defence, zero gradients, a dynamic model, Square beating the gradient attacks. The official
    code only logs them; an evaluation has to report them."""
    logger, collector = logging.getLogger(AUTOATTACK_LOGGER), _Collector()
    logger.addHandler(collector)
    try:
        yield collector.found
    finally:
        logger.removeHandler(collector)


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: torch.device):
    """Foolbox and AutoAttack draw from torch's global RNG: seed it here and restore it afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def sign_gradient_ascent(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int,
    step_size: float,
    start: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = margin_loss,
    estimate_gradient: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
    stop_at_adversarial: bool = True,
) -> torch.Tensor:
    """Signed steps up `loss`, projected onto the eps-ball each time; returns the last iterate of each image.

    The gradient is autograd's (whose forward pass also tells which iterates are adversarial already), or
    `estimate_gradient(images, labels, step_index)`'s. An image stops at its first adversarial iterate, the
    best one for accuracy: a later step could only lose it, and the gradient work goes to the images
    still standing. `stop_at_adversarial=False` runs every step (transfer: the source's last iterate; the
    training-time attacks of kwta.adversarial, whose losses need not be about labels at all).
    """
    x_adv = project_linf(start, x, eps)
    active = torch.ones(len(y), dtype=torch.bool, device=y.device)
    for step_index in range(steps):
        index = active.nonzero().squeeze(1)
        if len(index) == 0:
            break
        images, labels = x_adv[index], y[index]
        if estimate_gradient is None:
            images.requires_grad_(True)
            with torch.enable_grad():
                logits = model(images)
                (gradient,) = torch.autograd.grad(loss(logits, labels).sum(), images)
            moving = logits.detach().argmax(dim=1) == labels
        else:
            moving = predict(model, images) == labels
            gradient = torch.zeros_like(images)
        if stop_at_adversarial:
            active[index[~moving]] = False
        else:
            moving = torch.ones_like(moving)
        if estimate_gradient is not None and moving.any():
            gradient[moving] = estimate_gradient(images[moving], labels[moving], step_index)
        stepped = x_adv[index[moving]] + step_size * gradient[moving].sign()
        x_adv[index[moving]] = project_linf(stepped, x[index[moving]], eps)
    return x_adv.detach()


Run = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _first_success_of_runs(x: torch.Tensor, y: torch.Tensor, runs: Iterable[Run]) -> torch.Tensor:
    """Each run attacks the images still standing and returns (candidates, still correct); the first success stays."""
    x_adv = x.clone()
    standing = torch.ones(len(y), dtype=torch.bool, device=y.device)
    for run in runs:
        index = standing.nonzero().squeeze(1)
        if len(index) == 0:
            break
        candidates, correct = run(x[index], y[index])
        x_adv[index[~correct]] = candidates[~correct]
        standing[index[~correct]] = False
    return x_adv


# ---------------------------------------------------------------------------------------------------------
# Attacks


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int = 40,
    step_size: float | None = None,
    rel_stepsize: float | None = None,
    restarts: int = 1,
    loss: str = "ce",
    seed: int = 0,
) -> torch.Tensor:
    """L-inf PGD (Madry et al. 2018): uniform random start, `steps` sign steps up the loss, projection.

    Keeps the first adversarial iterate of each image, and runs `restarts` independent random starts
    on the images still standing. `loss` is "ce" (cross-entropy) or "margin" (best wrong logit minus the
    true one, Carlini-Wagner's). The step is absolute, 2.5 * eps / steps by default; `rel_stepsize`
    gives a foolbox-relative one instead (times eps): the replication's 0.003 moved at most
    40 * 0.003 * eps in total.
    """
    if step_size is None:
        step_size = rel_stepsize * eps if rel_stepsize is not None else madry_step(eps, steps)
    loss_function = cross_entropy_loss if loss == "ce" else margin_loss
    generator = _generator(seed, x.device)

    def run(xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = sign_gradient_ascent(model, xs, ys, eps, steps=steps, step_size=step_size,
                                     start=random_start(xs, eps, generator), loss=loss_function)
        return x_adv, predict(model, x_adv) == ys

    return _first_success_of_runs(x, y, [run] * restarts)


def deepfool(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 20, candidates: int = 10
) -> torch.Tensor:
    """foolbox LinfDeepFoolAttack (a minimisation attack), its result clipped to the eps-ball by foolbox."""
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    foolbox = optional_import("foolbox", "deepfool")
    attack = foolbox.attacks.LinfDeepFoolAttack(steps=steps, candidates=min(candidates, num_classes))
    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1), device=x.device)
    _, x_adv, _ = attack(fmodel, x, y, epsilons=eps)
    return x_adv


def autoattack_adversary(
    model: nn.Module, eps: float, num_classes: int, *, iterations: int = 100, square_queries: int = 5000,
    seed: int = 0, device: torch.device | str = "cpu",
) -> "AutoAttack":
    """pyautoattack's AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square), L-inf.

    The defaults are the standard budgets (100 iterations, 5000 Square queries); smaller ones are for
    tests and CPU demos. With fewer than 10 classes the targeted attacks get num_classes - 1 targets
    (the standard 9 would index classes that do not exist).
    """
    AutoAttack = optional_import("pyautoattack", "autoattack").AutoAttack
    adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed, device=device)
    for apgd in (adversary.apgd, adversary.apgd_targeted):
        set_apgd_iterations(apgd, iterations)
    adversary.fab.n_iter = iterations  # FAB reads n_iter as it runs; nothing is derived from it when built
    adversary.square.n_queries = square_queries
    targets = min(adversary.apgd_targeted.n_target_classes, num_classes - 1)
    adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = targets
    return adversary


APGD_SCHEDULE = ("n_iter", "n_iter_orig", "n_iter_2", "n_iter_min", "size_decr")


def set_apgd_iterations(apgd, iterations: int) -> None:
    """Give an APGD attack `iterations` iterations with the step-size schedule a fresh APGD of that budget has.

    APGD derives its checkpoints (when the step may halve and restart from the best point) from n_iter once,
    when built: setting n_iter alone at a cut budget leaves the schedule of 100 iterations, under which the
    step never halves. The schedule is taken from an APGD built with the new count, so the package's own rule
    makes it.
    """
    APGDAttack = optional_import("pyautoattack.autopgd_base", "autoattack").APGDAttack
    fresh = APGDAttack(apgd.model, n_iter=iterations, norm=apgd.norm, eps=apgd.eps)
    for name in APGD_SCHEDULE:
        setattr(apgd, name, getattr(fresh, name))


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    parts: Sequence[str] | None = None,
    iterations: int = 100,
    square_queries: int = 5000,
    seed: int = 0,
) -> torch.Tensor:
    """AutoAttack's standard evaluation, as the official code runs it, or some of its parts.

    parts: None for the whole standard sequence (each attack on the images the previous ones left), or names
    from "apgd-ce", "apgd-t", "fab" (FAB-T), "square", run in that order with their standard settings. With
    fewer than 4 classes (the binarization test's 2) the standard sequence leaves out APGD-T, whose targeted
    DLR loss reads the third and fourth largest logits; FAB-T then targets the C - 1 other classes.
    """
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    if parts is None and num_classes < 4:
        parts = ("apgd-ce", "fab", "square")
    if parts is not None and "apgd-t" in parts and num_classes < 4:
        raise ValueError(f"APGD-T's targeted DLR loss needs at least 4 classes, the model has {num_classes}")
    adversary = autoattack_adversary(model, eps, num_classes, iterations=iterations, square_queries=square_queries,
                                     seed=seed, device=x.device)
    if parts is not None:
        adversary.attacks_to_run = [AUTOATTACK_PARTS[part] for part in parts]
    with _seeded_global_rng(seed, x.device):
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(x))
    return x_adv


def bpda(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    temperatures: Sequence[float] = BPDA_TEMPERATURES,
    steps: int = 40,
    step_size: float | None = None,
    iterations: int = 100,
    seed: int = 0,
) -> torch.Tensor:
    """BPDA (Athalye, Carlini, Wagner 2018) for k-WTA: the forward exact, the backward smooth.

    Every KWTA layer back-propagates through x * sigmoid((x - t) / T) (kwta.functional), T = temperature
    times each row's standard deviation. Two stages, each on the images the runs before it left, the
    first adversarial of each image kept:
      1. at each temperature, `steps` sign steps on the margin from one random start (cheap; it breaks most);
      2. at each temperature, AutoAttack's APGD-CE and then APGD-T (9 targets, or C - 1), `iterations`
         each, run unchanged through the surrogate: its adaptive step and restarts from the best point.
    Every candidate is re-verified on the exact model. On a network without k-WTA layers the gradient is
    exact and this is PGD on the margin followed by APGD.
    """
    step_size = madry_step(eps, steps, step_size)
    generator = _generator(seed, x.device)
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1] if len(x) else 0
    parts = ("apgd-ce", "apgd-t") if num_classes >= 4 else ("apgd-ce",)

    def sign_steps_at(temperature: float) -> Run:
        def run(xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with surrogate_gradient(model, temperature):
                x_adv = sign_gradient_ascent(model, xs, ys, eps, steps=steps, step_size=step_size,
                                             start=random_start(xs, eps, generator))
            return x_adv, predict(model, x_adv) == ys
        return run

    def apgd_at(temperature: float, run_seed: int) -> Run:
        def run(xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with surrogate_gradient(model, temperature):
                x_adv = autoattack(model, xs, ys, eps, parts=parts, iterations=iterations, seed=run_seed)
            return x_adv, predict(model, x_adv) == ys
        return run

    runs = [sign_steps_at(t) for t in temperatures]
    runs += [apgd_at(t, seed + 1 + i) for i, t in enumerate(temperatures)]
    return _first_success_of_runs(x, y, runs)


def es(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    schedule: Sequence[tuple[int, int]] = ES_SCHEDULE,
    step_size: float | None = None,
    restarts: int = 2,
    probe_batch: int = 512,
    seed: int = 0,
) -> torch.Tensor:
    """Tramer et al.'s attack on k-WTA: sign steps on the margin with a finite-difference gradient.

    Per image and step, g = sum_i [L(x + sigma u_i) - L(x - sigma u_i)] u_i / (2 sigma n), u_i ~ N(0, I),
    sigma = eps, over n antithetic pairs. `schedule` is (steps, pairs) stages: Tramer et al. ran 20 steps of
    50 pairs, 20 of 500, then 60 of 10,000 (coarse estimates suffice far from the boundary; close to it the
    sign of every pixel must be right), with a step of 0.01 at eps 0.031 (ES_REL_STEP * eps). That is
    2 * sum(steps * pairs) = 1.2 million forward passes per image and run, none for images already
    misclassified. The first run starts at x, as published; each further one of `restarts` from a uniform
    random start, on the images still standing. The probes are drawn and evaluated `probe_batch` images at
    a time, so memory stays bounded whatever the budget.
    """
    step_size = ES_REL_STEP * eps if step_size is None else step_size
    pairs_at = [pairs for steps, pairs in schedule for _ in range(steps)]
    generator = _generator(seed, x.device)

    @torch.no_grad()
    def finite_difference_gradient(images: torch.Tensor, labels: torch.Tensor, step_index: int) -> torch.Tensor:
        pairs = pairs_at[step_index]
        gradient = torch.zeros_like(images)
        pairs_per_draw = max(1, probe_batch // (2 * len(images)))
        trailing = [1] * (images.dim() - 1)
        for first in range(0, pairs, pairs_per_draw):
            drawn = min(pairs_per_draw, pairs - first)
            directions = torch.randn((drawn, *images.shape), generator=generator, device=images.device)
            probes = torch.cat([images + eps * directions, images - eps * directions]).flatten(0, 1)
            probe_labels = labels.repeat(2 * drawn)
            losses = torch.cat([
                margin_loss(model(chunk), chunk_labels)
                for chunk, chunk_labels in zip(probes.split(probe_batch), probe_labels.split(probe_batch), strict=True)
            ]).view(2, drawn, len(images))
            gradient += ((losses[0] - losses[1]).view(drawn, len(images), *trailing) * directions).sum(dim=0)
        return gradient / (2 * eps * pairs)

    def run_from(start: Callable[[torch.Tensor], torch.Tensor]) -> Run:
        def run(xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x_adv = sign_gradient_ascent(model, xs, ys, eps, steps=len(pairs_at), step_size=step_size,
                                         start=start(xs), estimate_gradient=finite_difference_gradient)
            return x_adv, predict(model, x_adv) == ys
        return run

    runs = [run_from(lambda xs: xs)] + [run_from(lambda xs: random_start(xs, eps, generator))] * (restarts - 1)
    return _first_success_of_runs(x, y, runs)


def eot(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int = 40,
    samples: int = 8,
    sigma: float = 0.05,
    step_size: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """PGD on the margin with the gradient averaged over `samples` points x_adv + N(0, sigma^2 I).

    Averaging smooths the discontinuities k-WTA puts into the loss (expectation over transformation).
    Costs steps * samples forward and backward passes per image; random start like PGD.
    """
    step_size = madry_step(eps, steps, step_size)
    generator = _generator(seed, x.device)

    def smoothed_gradient(images: torch.Tensor, labels: torch.Tensor, step_index: int) -> torch.Tensor:
        noise = torch.randn((samples, *images.shape), generator=generator, device=images.device)
        noisy = (images + sigma * noise).flatten(0, 1).requires_grad_(True)
        with torch.enable_grad():
            loss = margin_loss(model(noisy), labels.repeat(samples)).sum()
            (gradient,) = torch.autograd.grad(loss, noisy)
        return gradient.view(samples, *images.shape).mean(dim=0)

    return sign_gradient_ascent(model, x, y, eps, steps=steps, step_size=step_size,
                                start=random_start(x, eps, generator), estimate_gradient=smoothed_gradient)


def transfer(
    source_model: nn.Module,
    target_model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int = 40,
    step_size: float | None = None,
    restarts: int = 1,
    loss: str = "ce",
    seed: int = 0,
) -> torch.Tensor:
    """PGD run to its last step on `source_model` (e.g. the ReLU twin); each restart's result is tried on
    the target, and an image keeps the first one that fools it."""
    step_size = madry_step(eps, steps, step_size)
    loss_function = cross_entropy_loss if loss == "ce" else margin_loss
    generator = _generator(seed, x.device)

    def run(xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        crafted = sign_gradient_ascent(source_model, xs, ys, eps, steps=steps, step_size=step_size,
                                           start=random_start(xs, eps, generator), loss=loss_function,
                                           stop_at_adversarial=False)
        return crafted, predict(target_model, crafted) == ys

    return _first_success_of_runs(x, y, [run] * restarts)


# ---------------------------------------------------------------------------------------------------------
# The registry: one entry per attack. A new attack is a function above and one registration here.


@dataclass
class AttackContext:
    """What every registered runner is given besides the images: the model, the budget, the settings."""

    model: nn.Module
    eps: float
    settings: AttackSettings
    source_model: nn.Module | None = None


Runner = Callable[[AttackContext, torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class Attack:
    """A registered attack. runner(context, x, y, seed) returns adversarial images of x (untargeted)."""

    name: str
    column: str  # its column in results tables
    runner: Runner
    white_box: bool = False  # follows the model's own gradient: Square beating every such attack flags masking
    in_suite: bool = False  # run by attacks="all", the suite a reported table has to survive
    needs_source: bool = False  # crafts on a source model (the ReLU twin)
    settings: tuple[str, ...] = ()  # the AttackSettings fields it reads
    # (forward passes, forward-and-backward passes) per image at most, given the settings and the classes
    passes: "Callable[[AttackSettings, int], tuple[int, int]] | None" = None
    describe: "Callable[[AttackSettings], str] | None" = None  # its budget in words

    def __post_init__(self):
        unknown = set(self.settings) - set(AttackSettings.__dataclass_fields__)
        if unknown:
            raise ValueError(f"attack {self.name!r} names unknown settings {sorted(unknown)}")


ATTACKS: dict[str, Attack] = {}


def register(name: str, column: str, *, white_box: bool = False, in_suite: bool = False, needs_source: bool = False,
             settings: Sequence[str] = (), passes=None, describe=None) -> Callable[[Runner], Runner]:
    """Decorator: enter `runner` into ATTACKS under `name` (registration order is the table's column order).
    passes(settings, classes) -> (forwards, forward-backwards) per image at most, and describe(settings) -> its
    budget in words, give attack.py's estimate before it runs (kwta.budgets)."""
    def enter(runner: Runner) -> Runner:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} is registered already")
        ATTACKS[name] = Attack(name, column, runner, white_box, in_suite, needs_source, tuple(settings), passes,
                               describe)
        return runner
    return enter


def _targets(classes: int) -> int:
    """The targeted attacks' targets: the standard 9, or one per other class."""
    return min(9, classes - 1)


def _apgd_passes(iterations: int, classes: int) -> int:
    """APGD-CE, and APGD-T over its targets where the model has the 4 classes its loss needs."""
    return iterations * (1 + (_targets(classes) if classes >= 4 else 0))


def _autoattack_passes(part: str | None):
    def passes(settings: "AttackSettings", classes: int) -> tuple[int, int]:
        iterations, targets = settings.autoattack_iterations, _targets(classes)
        each = {"apgd-ce": (0, iterations), "apgd-t": (0, iterations * targets if classes >= 4 else 0),
                "fab": (iterations * targets, iterations * targets), "square": (settings.square_queries, 0)}
        chosen = [part] if part else list(each)
        return sum(each[p][0] for p in chosen), sum(each[p][1] for p in chosen)
    return passes


def _pgd_passes(settings: "AttackSettings", _classes: int) -> tuple[int, int]:
    return settings.pgd_restarts, settings.pgd_restarts * settings.pgd_steps


def _pgd_words(settings: "AttackSettings") -> str:
    return f"{settings.pgd_steps} steps x {settings.pgd_restarts} starts, {settings.pgd_loss} loss"


def _bpda_passes(settings: "AttackSettings", classes: int) -> tuple[int, int]:
    temperatures = len(settings.bpda_temperatures)
    return 2 * temperatures, temperatures * (settings.bpda_steps + _apgd_passes(settings.bpda_iterations, classes))


def _es_passes(settings: "AttackSettings", _classes: int) -> tuple[int, int]:
    return settings.es_restarts * sum(2 * steps * pairs for steps, pairs in settings.es_schedule), 0


_PGD_SETTINGS = ("pgd_steps", "pgd_step", "pgd_rel_stepsize", "pgd_restarts", "pgd_loss")


def _pgd_options(context: AttackContext) -> dict:
    settings = context.settings
    return dict(steps=settings.pgd_steps, step_size=settings.pgd_step_size(context.eps),
                restarts=settings.pgd_restarts, loss=settings.pgd_loss)


@register("pgd", "PGD", white_box=True, in_suite=True, settings=_PGD_SETTINGS, passes=_pgd_passes, describe=_pgd_words)
def _run_pgd(context: AttackContext, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    return pgd(context.model, x, y, context.eps, **_pgd_options(context), seed=seed)


@register("deepfool", "DeepFool", white_box=True, in_suite=True, settings=("deepfool_steps", "deepfool_candidates"),
          passes=lambda s, classes: (s.deepfool_steps, s.deepfool_steps * min(s.deepfool_candidates, classes)),
          describe=lambda s: f"{s.deepfool_steps} steps, {s.deepfool_candidates} candidates")
def _run_deepfool(context: AttackContext, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    return deepfool(context.model, x, y, context.eps, steps=context.settings.deepfool_steps,
                    candidates=context.settings.deepfool_candidates)


def _register_autoattack(name: str, column: str, *, part: str | None, white_box: bool, in_suite: bool) -> None:
    def run(context: AttackContext, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
        return autoattack(context.model, x, y, context.eps, parts=None if part is None else [part], seed=seed,
                          iterations=context.settings.autoattack_iterations,
                          square_queries=context.settings.square_queries)
    def words(settings: AttackSettings) -> str:
        if part == "square":
            return f"{settings.square_queries} queries"
        return f"{settings.autoattack_iterations} iterations" + ("" if part else f", {settings.square_queries} Square "
                                                                 "queries")
    register(name, column, white_box=white_box, in_suite=in_suite, settings=("autoattack_iterations", "square_queries"),
             passes=_autoattack_passes(part), describe=words)(run)


_register_autoattack("autoattack", "AutoAttack", part=None, white_box=False, in_suite=True)
_register_autoattack("apgd-ce", "APGD-CE", part="apgd-ce", white_box=True, in_suite=False)
_register_autoattack("apgd-t", "APGD-T", part="apgd-t", white_box=True, in_suite=False)
_register_autoattack("fab", "FAB-T", part="fab", white_box=True, in_suite=False)
_register_autoattack("square", "Square", part="square", white_box=False, in_suite=True)


@register("bpda", "BPDA", in_suite=True, settings=("bpda_temperatures", "bpda_steps", "bpda_step", "bpda_iterations"),
          passes=_bpda_passes, describe=lambda s: f"temperatures {', '.join(f'{t:g}' for t in s.bpda_temperatures)}: "
          f"{s.bpda_steps} sign steps, then APGD {s.bpda_iterations} iterations each")
def _run_bpda(context: AttackContext, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    settings = context.settings
    return bpda(context.model, x, y, context.eps, temperatures=settings.bpda_temperatures, steps=settings.bpda_steps,
                step_size=settings.bpda_step, iterations=settings.bpda_iterations, seed=seed)


@register("eot", "EOT", in_suite=True, settings=("eot_samples", "eot_rel_sigma", "eot_steps", "eot_step"),
          passes=lambda s, _: (0, s.eot_steps * s.eot_samples),
          describe=lambda s: f"{s.eot_steps} steps x {s.eot_samples} draws of sigma {s.eot_rel_sigma:g} eps")
def _run_eot(context: AttackContext, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    settings = context.settings
    return eot(context.model, x, y, context.eps, steps=settings.eot_steps, samples=settings.eot_samples,
               sigma=settings.eot_rel_sigma * context.eps, step_size=settings.eot_step, seed=seed)


@register("es", "ES", in_suite=True, settings=("es_schedule", "es_restarts", "es_probe_batch"), passes=_es_passes,
          describe=lambda s: f"stages {','.join(f'{a}x{b}' for a, b in s.es_schedule)} (steps x pairs), "
          f"{s.es_restarts} runs")
def _run_es(context: AttackContext, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    settings = context.settings
    return es(context.model, x, y, context.eps, schedule=settings.es_schedule, restarts=settings.es_restarts,
              probe_batch=settings.es_probe_batch, seed=seed)


@register("transfer", "Transfer", in_suite=True, needs_source=True, settings=_PGD_SETTINGS, passes=_pgd_passes,
          describe=lambda s: f"PGD on the twin, {_pgd_words(s)}")
def _run_transfer(context: AttackContext, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    return transfer(context.source_model, context.model, x, y, context.eps, **_pgd_options(context), seed=seed)


TABLE_SUITE = tuple(name for name, attack in ATTACKS.items() if attack.in_suite)
# The suite's version, in every journal's fingerprint: bump it with any change that alters an attack's figures
# (a default, a loss, a seed), so that a campaign resuming across sessions never mixes units of two suites.
SUITE_VERSION = 1
WHITE_BOX = tuple(name for name, attack in ATTACKS.items() if attack.white_box)
ATTACK_COLUMNS = {name: attack.column for name, attack in ATTACKS.items()}


# ---------------------------------------------------------------------------------------------------------
# Runner and bookkeeping


def check_adversarials(x_adv: torch.Tensor, x: torch.Tensor, eps: float, attack: str = "attack") -> None:
    """Raise AttackSanityError unless x_adv is finite, in [0, 1] and within eps (+1e-6) of x in L-inf."""
    if x_adv.shape != x.shape:
        raise AttackSanityError(f"{attack}: adversarials have shape {tuple(x_adv.shape)}, images {tuple(x.shape)}")
    if x_adv.isnan().any():
        raise AttackSanityError(f"{attack}: adversarials contain NaN")
    if x_adv.numel() == 0:
        return
    low, high = x_adv.min().item(), x_adv.max().item()
    if low < 0.0 or high > 1.0:
        raise AttackSanityError(f"{attack}: adversarials leave [0, 1] (min {low:.6g}, max {high:.6g})")
    distance = (x_adv - x).abs().max().item()
    if distance > eps + SANITY_TOLERANCE:
        raise AttackSanityError(f"{attack}: max |x_adv - x| = {distance:.6g} exceeds eps = {eps:.6g}")


def attack_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    attacks: Sequence[str],
    settings: AttackSettings | None = None,
    *,
    source_model: nn.Module | None = None,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Run `attacks` on one batch; return ({"clean", each attack, "worst_case"} -> robust mask, seconds).

    Only correctly classified images are attacked (the others count as not robust anyway). `seed` fixes
    every random draw (each attack gets its own stream from it), so a batch gives the same answer
    whichever process or order runs it.
    """
    settings = settings or AttackSettings()
    unknown = [name for name in attacks if name not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; choose from {tuple(ATTACKS)}")
    needing_source = [name for name in attacks if ATTACKS[name].needs_source]
    if needing_source and source_model is None:
        raise ValueError(f"the {', '.join(needing_source)} attack needs a source_model")
    context = AttackContext(model, eps, settings, source_model)
    correct = predict(model, x) == y
    robust = {"clean": correct}
    seconds = {}
    x_correct, y_correct = x[correct], y[correct]
    for name in attacks:
        started = time.perf_counter()
        survived = torch.zeros_like(correct)
        if len(y_correct):
            running = _running_attack.set(name)
            try:
                x_adv = ATTACKS[name].runner(context, x_correct, y_correct, attack_seed(seed, name))
            finally:
                _running_attack.reset(running)
            check_adversarials(x_adv, x_correct, eps, name)
            survived[correct] = predict(model, x_adv) == y_correct
        robust[name] = survived
        seconds[name] = time.perf_counter() - started
    robust["worst_case"] = worst_case(robust)
    return robust, seconds


def worst_case(robust: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per image: robust only if classified correctly and it survived every attack in `robust` (a per-image AND)."""
    return torch.stack([mask for name, mask in robust.items() if name != "worst_case"]).all(dim=0)



