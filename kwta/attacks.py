"""Attack runners and robust accuracy: foolbox PGD and DeepFool, the adaptive es / eot attacks, transfer.

Every attack takes a model in eval mode that maps images in [0, 1] to logits, clean images `x`, labels
`y` and an L-inf radius `eps`, and returns adversarial images of the same shape (untargeted).
`attack_batch` runs a list of them over one batch, checks each result (`check_adversarials`) and returns,
per attack, which images stayed robust: classified correctly and still classified correctly after the
attack. `worst_case` counts an image robust only if it survived every attack that was run.

Why es and eot: k-WTA makes the network piecewise linear with dense discontinuities, so the gradient at a
point says little about the loss a step away and plain PGD stalls (gradient masking). Tramer, Carlini,
Brendel, Madry (2020, "On Adaptive Attacks to Adversarial Example Defenses") broke k-WTA with a
gradient estimated by finite differences over Gaussian probes of scale eps, which sees through the
discontinuities; `es` is that attack. `eot` is the cheaper variant: autograd gradients averaged over
Gaussian noise around the iterate. Both take sign-gradient steps on the logit margin through the same
loop (`_sign_gradient_ascent`) and differ only in how they estimate the gradient.
"""

import contextlib
import csv
import io
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # foolbox imports GitPython, which warns without git
import foolbox  # noqa: E402

ATTACKS = ("pgd", "deepfool", "es", "eot", "transfer")
SANITY_TOLERANCE = 1e-6
# Gradient-masking diagnostics: an adaptive or transfer attack beating white-box PGD by more than this many
# accuracy points, or more than this share of images having (numerically) zero input gradient, is a warning.
MASKING_MARGIN = 0.05
VANISHING_GRADIENT_SHARE = 0.1
VANISHING_GRADIENT_NORM = 1e-12
PROBES_PER_FORWARD = 512  # es evaluates its Gaussian probes in chunks of this many images


class AttackSanityError(RuntimeError):
    """An attack returned images outside the eps-ball, outside [0, 1] or NaN: its number would be wrong."""


@dataclass
class AttackSettings:
    """Attack hyperparameters; the defaults are the replication's PGD/DeepFool and CPU-sized es/eot."""

    pgd_steps: int = 40
    pgd_step: float | None = None  # absolute step; None means 2.5 * eps / pgd_steps (Madry et al.)
    pgd_rel_stepsize: float | None = None  # foolbox's rel_stepsize (times eps); the replication used 0.003
    deepfool_steps: int = 20
    deepfool_candidates: int = 10
    es_steps: int = 20
    es_samples: int = 50  # antithetic pairs per image on the last step; the count grows linearly to it
    eot_samples: int = 8  # eot runs pgd_steps steps of size pgd_step
    eot_sigma: float = 0.05

    def __post_init__(self):
        for name in ("pgd_steps", "deepfool_steps", "deepfool_candidates", "es_steps", "es_samples", "eot_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("pgd_step", "pgd_rel_stepsize", "eot_sigma"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if self.pgd_step is not None and self.pgd_rel_stepsize is not None:
            raise ValueError("give at most one of pgd_step and pgd_rel_stepsize")

    def pgd_step_size(self, eps: float) -> float:
        if self.pgd_rel_stepsize is not None:
            return self.pgd_rel_stepsize * eps
        return self.pgd_step if self.pgd_step is not None else 2.5 * eps / self.pgd_steps


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


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point of the eps-ball around x that is also a valid image."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def _sign_gradient_ascent(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int,
    step_size: float,
    estimate_gradient: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    start: torch.Tensor,
) -> torch.Tensor:
    """Signed steps up `estimate_gradient(x_adv, y, step_index)`, projected each time.

    An image is frozen as soon as it is misclassified: further steps could only lose the success, and
    the gradient estimates (the expensive part) are spent on the images still standing.
    """
    x_adv = project_linf(start, x, eps)
    for step_index in range(steps):
        still_correct = predict(model, x_adv) == y
        if not still_correct.any():
            break
        gradient = estimate_gradient(x_adv[still_correct], y[still_correct], step_index)
        moved = x_adv[still_correct] + step_size * gradient.sign()
        x_adv[still_correct] = project_linf(moved, x[still_correct], eps)
    return x_adv


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: torch.device):
    """Foolbox draws its random start from torch's global RNG: seed it here and restore it afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


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
    seed: int = 0,
) -> torch.Tensor:
    """foolbox LinfPGD (cross-entropy, random start). The step is absolute, 2.5 * eps / steps by default.

    `rel_stepsize` reproduces a foolbox-relative step instead: foolbox multiplies it by eps, so the
    replication's rel_stepsize=0.003 moved at most 40 * 0.003 * eps (0.004 at eps 0.031) in total.
    """
    if step_size is None:
        step_size = rel_stepsize * eps if rel_stepsize is not None else 2.5 * eps / steps
    attack = foolbox.attacks.LinfPGD(steps=steps, abs_stepsize=step_size, random_start=True)
    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1), device=x.device)
    with _seeded_global_rng(seed, x.device):
        _, x_adv, _ = attack(fmodel, x, y, epsilons=eps)
    return x_adv


def deepfool(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 20, candidates: int = 10
) -> torch.Tensor:
    """foolbox LinfDeepFoolAttack (a minimisation attack), its result clipped to the eps-ball by foolbox."""
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    attack = foolbox.attacks.LinfDeepFoolAttack(steps=steps, candidates=min(candidates, num_classes))
    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1), device=x.device)
    _, x_adv, _ = attack(fmodel, x, y, epsilons=eps)
    return x_adv


def es(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int = 20,
    samples: int = 50,
    step_size: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Tramer et al.'s attack on k-WTA: sign steps on the margin with a finite-difference gradient.

    Per image and step, g = sum_i [L(x + sigma u_i) - L(x - sigma u_i)] u_i / (2 sigma n), u_i ~ N(0, I),
    sigma = eps, with n antithetic pairs growing linearly from samples / steps to `samples` over the
    steps (coarse estimates suffice far from the boundary, close to it the sign must be right). Costs
    about samples * (steps + 1) forward passes per image (1,050 at the defaults), none for images already
    misclassified. Starts at x; steps of 2.5 * eps / steps by default.
    """
    step_size = 2.5 * eps / steps if step_size is None else step_size
    generator = _generator(seed, x.device)

    @torch.no_grad()
    def finite_difference_gradient(images: torch.Tensor, labels: torch.Tensor, step_index: int) -> torch.Tensor:
        pairs = math.ceil(samples * (step_index + 1) / steps)
        directions = torch.randn((pairs, *images.shape), generator=generator, device=images.device)
        probes = torch.cat([images + eps * directions, images - eps * directions]).flatten(0, 1)
        probe_labels = labels.repeat(2 * pairs)
        losses = torch.cat(
            [
                margin_loss(model(chunk), chunk_labels)
                for chunk, chunk_labels in zip(
                    probes.split(PROBES_PER_FORWARD), probe_labels.split(PROBES_PER_FORWARD), strict=True
                )
            ]
        ).view(2, pairs, len(images))
        loss_differences = (losses[0] - losses[1]).view(pairs, len(images), *([1] * (images.dim() - 1)))
        return (loss_differences * directions).sum(dim=0) / (2 * eps * pairs)

    return _sign_gradient_ascent(
        model, x, y, eps, steps=steps, step_size=step_size, estimate_gradient=finite_difference_gradient, start=x
    )


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
    step_size = 2.5 * eps / steps if step_size is None else step_size
    generator = _generator(seed, x.device)

    def smoothed_gradient(images: torch.Tensor, labels: torch.Tensor, step_index: int) -> torch.Tensor:
        noise = torch.randn((samples, *images.shape), generator=generator, device=images.device)
        noisy = (images + sigma * noise).flatten(0, 1).requires_grad_(True)
        loss = margin_loss(model(noisy), labels.repeat(samples)).sum()
        (gradient,) = torch.autograd.grad(loss, noisy)
        return gradient.view(samples, *images.shape).mean(dim=0)

    random_start = x + torch.empty_like(x).uniform_(-eps, eps, generator=generator)
    return _sign_gradient_ascent(
        model, x, y, eps, steps=steps, step_size=step_size, estimate_gradient=smoothed_gradient, start=random_start
    )


def transfer(
    source_model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, **pgd_options
) -> torch.Tensor:
    """PGD adversarials crafted on `source_model` (e.g. the ReLU twin); the caller evaluates the target."""
    return pgd(source_model, x, y, eps, **pgd_options)


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
    every random draw, so a batch gives the same answer whichever process or order runs it.
    """
    settings = settings or AttackSettings()
    unknown = [name for name in attacks if name not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; choose from {ATTACKS}")
    if "transfer" in attacks and source_model is None:
        raise ValueError("the transfer attack needs a source_model")
    step_size = settings.pgd_step_size(eps)
    runners = {
        "pgd": lambda xs, ys: pgd(model, xs, ys, eps, steps=settings.pgd_steps, step_size=step_size, seed=seed),
        "deepfool": lambda xs, ys: deepfool(
            model, xs, ys, eps, steps=settings.deepfool_steps, candidates=settings.deepfool_candidates
        ),
        "es": lambda xs, ys: es(model, xs, ys, eps, steps=settings.es_steps, samples=settings.es_samples, seed=seed),
        "eot": lambda xs, ys: eot(
            model, xs, ys, eps, steps=settings.pgd_steps, samples=settings.eot_samples, sigma=settings.eot_sigma,
            step_size=step_size, seed=seed,
        ),
        "transfer": lambda xs, ys: transfer(
            source_model, xs, ys, eps, steps=settings.pgd_steps, step_size=step_size, seed=seed
        ),
    }
    correct = predict(model, x) == y
    robust = {"clean": correct}
    seconds = {}
    x_correct, y_correct = x[correct], y[correct]
    for name in attacks:
        started = time.perf_counter()
        survived = torch.zeros_like(correct)
        if len(y_correct):
            x_adv = runners[name](x_correct, y_correct)
            check_adversarials(x_adv, x_correct, eps, name)
            survived[correct] = predict(model, x_adv) == y_correct
        robust[name] = survived
        seconds[name] = time.perf_counter() - started
    robust["worst_case"] = torch.stack([robust[name] for name in ("clean", *attacks)]).all(dim=0)
    return robust, seconds


def vanishing_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image: is the cross-entropy input gradient (what PGD follows) numerically zero?"""
    x = x.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return gradient.flatten(1).abs().sum(dim=1) <= VANISHING_GRADIENT_NORM


def masking_warnings(
    accuracy_by_eps: dict[float, dict[str, float]], vanishing_gradient_share: float | None = None
) -> list[str]:
    """AutoAttack-style red flags for gradient masking, from {eps: {attack: robust accuracy}}."""
    warnings = []
    for eps, accuracy in sorted(accuracy_by_eps.items()):
        if "pgd" not in accuracy:
            continue
        for name in ("es", "eot", "transfer"):
            if name in accuracy and accuracy["pgd"] - accuracy[name] > MASKING_MARGIN:
                warnings.append(
                    f"eps {eps:g}: {name} leaves {accuracy[name]:.1%} against PGD's {accuracy['pgd']:.1%}: "
                    f"PGD's figure overstates robustness (gradient masking)"
                )
    pgd_curve = [(eps, accuracy["pgd"]) for eps, accuracy in sorted(accuracy_by_eps.items()) if "pgd" in accuracy]
    for (eps_low, acc_low), (eps_high, acc_high) in itertools.pairwise(pgd_curve):
        if acc_high > acc_low:
            warnings.append(
                f"PGD leaves more at eps {eps_high:g} ({acc_high:.1%}) than at eps {eps_low:g} ({acc_low:.1%}): "
                f"its success does not grow with eps (gradient masking or a broken attack)"
            )
    if len(pgd_curve) > 1 and pgd_curve[0][1] == pgd_curve[-1][1] > 0:
        warnings.append(
            f"PGD leaves {pgd_curve[0][1]:.1%} at every eps from {pgd_curve[0][0]:g} to {pgd_curve[-1][0]:g}: "
            f"its success does not grow with eps"
        )
    if vanishing_gradient_share is not None and vanishing_gradient_share > VANISHING_GRADIENT_SHARE:
        warnings.append(
            f"input gradients vanish for {vanishing_gradient_share:.1%} of correctly classified images: "
            f"gradient attacks have nothing to follow there"
        )
    return warnings


# ---------------------------------------------------------------------------------------------------------
# Results table in the replication's format


TABLE_COLUMNS = ("Activation", "A_std", "PGD", "DeepFool", "ES", "EOT", "Transfer", "Worst case")
_TABLE_KEYS = {"A_std": "clean", "PGD": "pgd", "DeepFool": "deepfool", "ES": "es", "EOT": "eot",
               "Transfer": "transfer", "Worst case": "worst_case"}
NOT_RUN = "-"


def table_row(label: str, accuracy: dict[str, float]) -> list[str]:
    """One row: `accuracy` maps clean / attack names / worst_case to fractions; missing attacks show '-'."""
    cells = [f"{accuracy[key]:.2%}" if key in accuracy else NOT_RUN for key in _TABLE_KEYS.values()]
    return [label, *cells]


def parse_table(markdown: str) -> list[list[str]]:
    """Rows (without header) of a table written by `format_table`; an empty text is an empty table."""
    lines = [line.strip() for line in markdown.splitlines() if line.strip().startswith("|")]
    if not lines:
        return []
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    if tuple(header) != TABLE_COLUMNS:
        raise ValueError(f"not a results table: header {header}, expected {list(TABLE_COLUMNS)}")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    for row in rows:
        if len(row) != len(TABLE_COLUMNS):
            raise ValueError(f"malformed table row: {row}")
    return rows


def merge_rows(rows: Iterable[list[str]], new_rows: Iterable[list[str]]) -> list[list[str]]:
    """Rows with the same label are replaced (a re-run supersedes), others appended, order kept."""
    merged = {row[0]: row for row in rows}
    for row in new_rows:
        merged[row[0]] = row
    return list(merged.values())


def format_table(rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def format_csv(rows: Iterable[list[str]]) -> str:
    """The table as CSV, percentages as plain numbers (75.00% -> 75.00), not-run cells empty."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    for label, *cells in rows:
        writer.writerow([label, *("" if cell == NOT_RUN else cell.rstrip("%") for cell in cells)])
    return text.getvalue()
