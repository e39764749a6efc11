"""The evaluation protocol over the attack registry: robust accuracy per attack and in the worst case, each
with its 95% interval, es's calibration, PGD's eps curve and the gradient-masking warnings.
"""

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kwta.attacks import WHITE_BOX

# Gradient-masking diagnostics: an attack beating white-box PGD (or Square beating every white-box attack)
# by more than this many accuracy points, PGD leaving more than LARGE_EPS_ACCURACY at the largest eps of
# its curve, or more than this share of images having (numerically) zero input gradient, is a warning.
MASKING_MARGIN = 0.05
# ... or an attack leaving at most this share of PGD's figure, at least MASKING_MIN_GAP below it: where PGD
# already leaves little, breaking half of its survivors is masking too, though fewer than 5 points.
MASKING_SHARE = 0.5
MASKING_MIN_GAP = 0.02
LARGE_EPS_ACCURACY = 0.01
VANISHING_GRADIENT_SHARE = 0.1
VANISHING_GRADIENT_NORM = 1e-12
# es calibration: on the ReLU twin es must leave at most this many points more than PGD to count as an attack.
ES_CALIBRATION_MARGIN = 0.05
INTERVAL_Z = 1.959963984540054  # two-sided 95%


def wilson_interval(successes: int, trials: int, z: float = INTERVAL_Z) -> tuple[float, float]:
    """Wilson's score interval for a proportion (95% by default): the p whose score test accepts successes/trials.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or `trials` successes,
    where robust accuracies often sit.
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    share = successes / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    half_width = z / (1 + z * z / trials) * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    # at 0 and at `trials` successes the bound is exactly 0 (1); rounding would leave it a hair inside
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == trials else min(1.0, centre + half_width)
    return low, high


def plus_minus(share: float, interval: Sequence[float]) -> float:
    """The half-width of a symmetric band around `share` that covers its whole (asymmetric) interval."""
    return max(share - interval[0], interval[1] - share)


def vanishing_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image: is the cross-entropy input gradient (what PGD follows) numerically zero?"""
    x = x.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return gradient.flatten(1).abs().sum(dim=1) <= VANISHING_GRADIENT_NORM


def masking_warnings(
    accuracy_by_eps: dict[float, dict[str, float]],
    vanishing_gradient_share: float | None = None,
    pgd_curve: dict[float, float] | None = None,
) -> list[str]:
    """AutoAttack-style red flags for gradient masking.

    accuracy_by_eps: {eps: {attack or "worst_case": robust accuracy}}; pgd_curve: {eps: PGD's robust
    accuracy} from the eps curve (merged with the PGD figures of accuracy_by_eps).
    """
    warnings = []
    for eps, accuracy in sorted(accuracy_by_eps.items()):
        if "pgd" in accuracy:
            pgd_accuracy = accuracy["pgd"]
            stronger = [name for name in accuracy if name not in ("pgd", "worst_case")
                        and (pgd_accuracy - accuracy[name] > MASKING_MARGIN
                             or (accuracy[name] <= MASKING_SHARE * pgd_accuracy
                                 and pgd_accuracy - accuracy[name] >= MASKING_MIN_GAP))]
            if stronger:
                others = ", ".join(f"{name} {accuracy[name]:.1%}" for name in stronger)
                warnings.append(
                    f"eps {eps:g}: the worst case leaves {accuracy['worst_case']:.1%} against PGD's "
                    f"{accuracy['pgd']:.1%} ({others}): PGD's figure overstates robustness (gradient masking)"
                )
        white_box = {name: accuracy[name] for name in WHITE_BOX if name in accuracy}
        if "square" in accuracy and white_box and min(white_box.values()) - accuracy["square"] > MASKING_MARGIN:
            best = min(white_box, key=white_box.get)
            warnings.append(
                f"eps {eps:g}: Square (gradient-free) leaves {accuracy['square']:.1%}, less than every white-box "
                f"attack (best: {best} {white_box[best]:.1%}): the model's gradients mislead (gradient masking)"
            )
    curve = {eps: accuracy["pgd"] for eps, accuracy in accuracy_by_eps.items() if "pgd" in accuracy}
    curve.update(pgd_curve or {})
    points = sorted(curve.items())
    for (eps_low, acc_low), (eps_high, acc_high) in itertools.pairwise(points):
        if acc_high > acc_low:
            warnings.append(
                f"PGD leaves more at eps {eps_high:g} ({acc_high:.1%}) than at eps {eps_low:g} ({acc_low:.1%}): "
                f"its success does not grow with eps (gradient masking or a broken attack)"
            )
    if len(points) > 1 and points[0][1] == points[-1][1] > 0:
        warnings.append(
            f"PGD leaves {points[0][1]:.1%} at every eps from {points[0][0]:g} to {points[-1][0]:g}: "
            f"its success does not grow with eps"
        )
    if pgd_curve and points[-1][1] > LARGE_EPS_ACCURACY:
        warnings.append(
            f"PGD leaves {points[-1][1]:.1%} at eps {points[-1][0]:g}, the largest of its curve, where it should "
            f"break about every image: gradient masking or a broken attack"
        )
    if vanishing_gradient_share is not None and vanishing_gradient_share > VANISHING_GRADIENT_SHARE:
        warnings.append(
            f"input gradients vanish for {vanishing_gradient_share:.1%} of correctly classified images: "
            f"gradient attacks have nothing to follow there"
        )
    return warnings


def es_calibration(es_accuracy: float, pgd_accuracy: float, eps: float) -> tuple[bool, str]:
    """(es counts as an attack at this budget, the line saying so) from es and PGD on the ReLU twin."""
    gap = es_accuracy - pgd_accuracy
    verdict = (f"within {ES_CALIBRATION_MARGIN:.0%} of PGD: es at this budget is an attack"
               if gap <= ES_CALIBRATION_MARGIN else
               f"{gap:.1%} above PGD: es at this budget is too weak to count, its silence proves nothing "
               f"(raise --es-steps / --es-samples)")
    return gap <= ES_CALIBRATION_MARGIN, (
        f"eps {eps:g}: es calibration on the ReLU twin: es leaves {es_accuracy:.1%}, PGD {pgd_accuracy:.1%}, {verdict}"
    )
