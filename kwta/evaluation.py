"""`kwta.evaluate`: one call that evaluates any model under the attack suite, AutoAttack's protocol.

Clean accuracy first, then each attack over every image, then the sanity line, then the table: robust
accuracy per attack and in the worst case (an image counts only if it survived every attack), each with
its 95% Wilson interval; es's calibration on a ReLU network; PGD's eps curve; the gradient-masking
warnings; and per image, which attacks it survived. The protocol is described in docs/attacks.md.

    model = torchvision.models.resnet18(num_classes=10); kwta.replace_relu(model, 0.2)
    result = kwta.evaluate(model, images, labels, eps=8 / 255)       # images in [0, 1]
    print(result.to_markdown()); result.save_json("eval.json")

Every random draw is seeded by (seed, batch index, attack), so the same images in the same batches give
the same figures whichever process runs them: under torchrun each process attacks every
world_size-th batch and the per-image results are gathered.
"""

import contextlib
import itertools
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from kwta import distributed
from kwta.attacks import (
    ATTACKS,
    SUITE_VERSION,
    TABLE_SUITE,
    WHITE_BOX,
    AttackSettings,
    attack_batch,
    autoattack_checks,
    predict,
    worst_case,
)
from kwta.binarization import BinarizationSettings, binarization_test
from kwta.budgets import estimate, estimate_lines
from kwta.checkpoint import atomic_write
from kwta.journal import Incomplete, Journal, fingerprint, process_path
from kwta.modules import KWTA

# The binarization test: an attack missing more than this share of provably solvable tasks is too weak to trust.
BINARIZATION_TOLERANCE = 0.1
# ... and its tasks are needles, which no attack can be asked to find, where less of the corner's neighbourhood
# than this is class 1 (the reach control).
REACH_TOLERANCE = 0.5
# PGD alone at these multiples of the largest eps: its success must grow with eps and reach about 100%.
EPS_CURVE_FACTORS = (0.5, 2, 4, 8)
DEFAULT_BATCH_SIZE = 32

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
# es calibration, on the ReLU twin: at an eps where PGD leaves a share of images within the band (tried at these
# multiples of eps), es must break at least this share of the images PGD breaks, image by image.
ES_CALIBRATION_BAND = (0.3, 0.7)
ES_CALIBRATION_FACTORS = (1, 1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32)
ES_CALIBRATION_SHARE = 0.9
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


def well_below(share: float, pgd_share: float) -> bool:
    """Does an attack leaving `share` show that PGD's `pgd_share` overstates robustness? More than
    MASKING_MARGIN below it, or at most MASKING_SHARE of it and MASKING_MIN_GAP or more below."""
    gap = pgd_share - share
    return gap > MASKING_MARGIN or (share <= MASKING_SHARE * pgd_share and gap >= MASKING_MIN_GAP)


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
            stronger = [name for name in accuracy
                        if name not in ("pgd", "worst_case") and well_below(accuracy[name], pgd_accuracy)]
            # the worst case by the same rule: attacks each a little below PGD, on other images, add up
            if stronger or ("worst_case" in accuracy and well_below(accuracy["worst_case"], pgd_accuracy)):
                others = (", ".join(f"{name} {accuracy[name]:.1%}" for name in stronger) if stronger else
                          "no attack alone, together on different images")
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


def calibrate_es(model: nn.Module, batches, eps: float, settings: AttackSettings, seed: int, device,
                 known: dict[float, torch.Tensor] | None = None, journal: Journal | None = None) -> dict:
    """Does es, at this budget, find what PGD finds on a ReLU network (where PGD is known to work)?

    At an eps where PGD leaves between ES_CALIBRATION_BAND of the images (tried from `eps` down by halves;
    where PGD already breaks nothing or everything the comparison says nothing), es must break at least
    ES_CALIBRATION_SHARE of the images PGD breaks, image by image. `known`: PGD's masks already measured on
    this model with these batches, settings and seed, {eps: mask} (not run again). Returns the JSON's record.
    """
    journal = journal or Journal(None)
    low, high = ES_CALIBRATION_BAND
    tried = {}
    for factor in ES_CALIBRATION_FACTORS:
        calibration_eps = round(eps * factor, 6)
        if known and calibration_eps in known:
            tried[calibration_eps] = known[calibration_eps]
        else:
            tried[calibration_eps] = _run(model, batches, calibration_eps, "pgd", settings, seed, None, device,
                                          journal, "calibration")[0]
        if low <= tried[calibration_eps].float().mean() <= high:
            break
    calibration_eps = min(tried, key=lambda e: abs(tried[e].float().mean().item() - 0.5))
    pgd_mask = tried[calibration_eps]
    clean = _gathered(_clean_pass(model, batches, gradients=False)[0])
    # The verdict reads es only where PGD broke, so es runs only there (elsewhere it keeps PGD's mask): on the
    # images PGD cannot break es would spend its whole budget, for nothing the comparison uses.
    slices = _batch_slices(batches)
    broken = clean & ~pgd_mask
    targets = [(index, images[broken[slices[index]]], labels[broken[slices[index]]])
               for index, images, labels in batches if broken[slices[index]].any()]
    es_mask = pgd_mask.clone()
    if broken.any():  # the same on every process: each joins _run's gathers, with or without targets of its own
        es_on_broken = _run(model, targets, calibration_eps, "es", settings, seed, None, device, journal,
                            "calibration-on-pgd-breaks")[0]
        es_mask[broken] = es_on_broken
    return calibration_record(calibration_eps, clean, pgd_mask, es_mask, in_band=low <= pgd_mask.float().mean() <= high)


def calibration_record(eps: float, clean: torch.Tensor, pgd_mask: torch.Tensor, es_mask: torch.Tensor,
                       in_band: bool) -> dict:
    """The calibration's verdict from per-image masks on the ReLU network (robust to PGD, to es; es need only be
    measured where PGD broke, the rest is not read)."""
    n = len(clean)
    broken_by_pgd = clean & ~pgd_mask
    also_by_es = broken_by_pgd & ~es_mask
    share = int(also_by_es.sum()) / max(1, int(broken_by_pgd.sum()))
    counts = bool(in_band and share >= ES_CALIBRATION_SHARE)
    band = f"{ES_CALIBRATION_BAND[0]:.0%}-{ES_CALIBRATION_BAND[1]:.0%}"
    verdict = (f"es breaks {share:.1%} of the {int(broken_by_pgd.sum())} images PGD breaks: " + (
        "es at this budget is an attack" if counts else
        f"es at this budget is too weak to count (needs {ES_CALIBRATION_SHARE:.0%}" +
        ("" if in_band else f", at an eps where PGD leaves {band}") + "), its silence proves nothing"))
    return {
        "eps": eps, "counts_as_attack": counts, "share_of_pgds": share, "pgd_in_band": bool(in_band),
        "pgd": {"accuracy": int(pgd_mask.sum()) / n, "interval": wilson_interval(int(pgd_mask.sum()), n)},
        "per_image": {"clean": clean.int().tolist(), "pgd": pgd_mask.int().tolist(), "es": es_mask.int().tolist()},
        "line": f"es calibration on the ReLU twin at eps {eps:g} (PGD leaves {int(pgd_mask.sum()) / n:.1%}, es "
                f"runs on the images PGD breaks): {verdict}",
    }


# ---------------------------------------------------------------------------------------------------------
# The result


@dataclass
class Evaluation:
    """What `evaluate` found. Per-image masks are CPU bool tensors over the evaluated images, in order.

    robust: {eps: {attack: mask, ..., "worst_case": mask}}; eps_curve: {eps: PGD's mask}; es_calibration: the
    calibration's record (calibrate_es), or None. accuracy / interval / count read any of the masks.
    """

    n_images: int
    batch_size: int
    eps: list[float]
    attacks: list[str]
    settings: AttackSettings
    seed: int
    clean: torch.Tensor
    robust: dict[float, dict[str, torch.Tensor]]
    seconds: dict[float, dict[str, float]]
    eps_curve: dict[float, torch.Tensor] = field(default_factory=dict)
    curve_seconds: dict[float, float] = field(default_factory=dict)
    es_calibration: dict | None = None
    binarization: dict | None = None
    vanishing_gradient_share: float = 0.0
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    total_seconds: float = 0.0

    def _mask(self, name: str, eps: float | None) -> torch.Tensor:
        if name == "clean":
            return self.clean
        eps = self.eps[-1] if eps is None else eps
        if eps in self.robust and name in self.robust[eps]:
            return self.robust[eps][name]
        if name == "pgd" and eps in self.eps_curve:
            return self.eps_curve[eps]
        raise KeyError(f"no figure for {name!r} at eps {eps:g}")

    def count(self, name: str = "worst_case", eps: float | None = None) -> int:
        """Images robust to `name` ("clean", an attack, "worst_case") at `eps` (default: the largest evaluated)."""
        return int(self._mask(name, eps).sum())

    def accuracy(self, name: str = "worst_case", eps: float | None = None) -> float:
        return self.count(name, eps) / self.n_images

    def interval(self, name: str = "worst_case", eps: float | None = None) -> tuple[float, float]:
        return wilson_interval(self.count(name, eps), self.n_images)

    def figure(self, name: str = "worst_case", eps: float | None = None) -> str:
        """'12.50% +- 4.07 (95% CI 5.0%-24.7%)'."""
        return describe(self.accuracy(name, eps), self.interval(name, eps))

    def to_dict(self, per_image: bool = True) -> dict:
        """The JSON form (attack.py's --out): figures, intervals, counts, seconds, calibration, curve, warnings."""
        results = []
        for eps in self.eps:
            names = list(self.robust[eps])
            result = {"eps": eps, "accuracy": {name: self.accuracy(name, eps) for name in names},
                      "interval": {name: self.interval(name, eps) for name in names},
                      "count": {name: self.count(name, eps) for name in names}, "seconds": self.seconds[eps]}
            results.append(result)
        curve = [{"eps": eps, "pgd": int(mask.sum()) / self.n_images,
                  "interval": wilson_interval(int(mask.sum()), self.n_images), "seconds": self.curve_seconds[eps]}
                 for eps, mask in sorted(self.eps_curve.items())]
        summary = {
            "attacks": self.attacks, "settings": asdict(self.settings), "seed": self.seed, "eps": self.eps,
            "n_images": self.n_images, "batch_size": self.batch_size, "interval_method": "Wilson score, 95%",
            "clean_accuracy": self.accuracy("clean"), "clean_interval": self.interval("clean"),
            "results": results, "es_calibration": self.es_calibration, "binarization": self.binarization,
            "eps_curve": curve,
            "vanishing_gradient_share": self.vanishing_gradient_share,
            "warnings": self.warnings, "notes": self.notes, "seconds": self.total_seconds,
        }
        if per_image:
            summary["per_image"] = {
                "clean": self.clean.int().tolist(),
                "robust": {f"{eps:g}": {name: mask.int().tolist() for name, mask in masks.items()}
                           for eps, masks in self.robust.items()},
                "eps_curve": {f"{eps:g}": mask.int().tolist() for eps, mask in self.eps_curve.items()},
            }
        return summary

    def save_json(self, path: str | os.PathLike, **extra) -> None:
        """Write to_dict() (plus `extra` keys first, e.g. the checkpoint's spec) to `path`, atomically."""
        atomic_write(path, json.dumps({**extra, **self.to_dict()}, indent=2) + "\n")

    def pgd_curve(self) -> dict[float, float]:
        """PGD's robust accuracy at every eps it ran: the evaluated budgets and the eps curve's."""
        budgets = [eps for eps in self.eps if "pgd" in self.robust[eps]] + list(self.eps_curve)
        return {eps: self.accuracy("pgd", eps) for eps in sorted(budgets)}

    def pgd_curve_text(self) -> str:
        return ", ".join(f"eps {eps:g} {share:.1%}" for eps, share in self.pgd_curve().items())

    def to_markdown(self, title: str = "Robust accuracy") -> str:
        """A table per eps (clean first, then each attack, then the worst case), the calibration, the eps curve
        and the warnings."""
        lines = [f"## {title}", "", f"{self.n_images} images, L-inf, seed {self.seed}; "
                 "+- covers the 95% Wilson interval.", ""]
        for eps in self.eps:
            lines += [f"| eps {eps:g} | robust accuracy | 95% interval | images | seconds |", "|---|---|---|---|---|"]
            for name in ["clean", *self.robust[eps]]:
                label = {"clean": "clean", "worst_case": "**worst case**"}.get(name) or ATTACKS[name].column
                low, high = self.interval(name, eps)
                seconds = self.seconds[eps].get(name)
                lines.append(f"| {label} | {self.accuracy(name, eps):.2%} +- "
                             f"{100 * plus_minus(self.accuracy(name, eps), (low, high)):.2f} | {low:.1%}-{high:.1%} | "
                             f"{self.count(name, eps)} / {self.n_images} | "
                             f"{'-' if seconds is None else f'{seconds:.1f}'} |")
            lines.append("")
        if self.es_calibration:
            lines += [self.es_calibration["line"], ""]
        if self.binarization:
            lines += binarization_table(self.binarization)
        if self.eps_curve:
            lines += [f"PGD's eps curve: {self.pgd_curve_text()}", ""]
        lines += [f"- note: {note}" for note in self.notes]
        lines += [f"- **warning**: {warning}" for warning in self.warnings] or ["No gradient-masking warning."]
        return "\n".join(lines).rstrip() + "\n"


def describe(share: float, interval: tuple[float, float]) -> str:
    return f"{share:.2%} +- {100 * plus_minus(share, interval):.2f} (95% CI {interval[0]:.1%}-{interval[1]:.1%})"


def _describe_mask(mask: torch.Tensor) -> str:
    count = int(mask.sum())
    return describe(count / len(mask), wilson_interval(count, len(mask)))


# ---------------------------------------------------------------------------------------------------------
# The call


def evaluate(
    model: nn.Module,
    images_or_loader: torch.Tensor | Dataset | Iterable,
    labels: torch.Tensor | None = None,
    *,
    eps: float | Sequence[float],
    attacks: str | Sequence[str] = "all",
    source_model: nn.Module | None = None,
    settings: AttackSettings | None = None,
    eps_curve: str | Sequence[float] = "auto",
    calibration_model: nn.Module | str | None = "auto",
    calibration_record: dict | None = None,
    n_images: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    device: torch.device | str | None = None,
    binarization: BinarizationSettings | bool = False,
    journal: "str | os.PathLike | Journal | None" = None,
    verbose: bool = False,
) -> Evaluation:
    """Evaluate `model` (any nn.Module mapping images in [0, 1] to logits) under L-inf attacks.

    images_or_loader: an image tensor (then `labels` too), a dataset of (image, label) pairs, or an iterable
        of (images, labels) batches such as a DataLoader; the first `n_images` are used (default: all).
    eps: one budget or several; every attack runs at each. attacks: "all" (the suite, kwta.attacks.TABLE_SUITE;
        transfer only with a source_model) or names from kwta.attacks.ATTACKS.
    source_model: the ReLU twin (same data, trained the same way with ReLU): transfer crafts on it.
    eps_curve: "auto" (PGD alone at 0.5, 2, 4, 8 x the largest eps), "none", or budgets.
    calibration_model: the ReLU network es is calibrated on ("auto": the source model if it has no k-WTA
        layer, else the model itself if it has none, else none and a note says es is uncalibrated);
        calibration_record: the calibration already made there (the twin's own result's es_calibration), for
        the same images, batches, settings and seed.
    batch_size, seed: the batches and the seed fix every random draw (per batch and attack).
    binarization: run the binarization test (kwta.binarization) at the largest eps with every attack too: True
        for its defaults on every image, or BinarizationSettings (e.g. images=200); under torchrun, on the
        main process's images.
    journal: a file or folder where every finished attack of every batch is appended (kwta.journal): an
        interrupted evaluate, called again with the same journal, model, images and settings, resumes where it
        stopped and gives the same result. It is left in place (delete a file once the result is saved). A
        Journal(path, shard=..., deadline=...) does only a part of the units, then raises kwta.journal.Incomplete
        unless the journal already held the rest.
    The model is put in eval mode with its parameters frozen while it runs, and restored after.
    """
    started = time.perf_counter()
    settings = settings or AttackSettings()
    eps_list = _budgets(eps, "eps")
    names, notes = _attack_names(attacks, source_model)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    if eps_curve == "auto":
        curve_eps = sorted({min(1.0, round(f * eps_list[-1], 6)) for f in EPS_CURVE_FACTORS} - set(eps_list))
    else:
        curve_eps = [] if eps_curve == "none" else [e for e in _budgets(eps_curve, "eps_curve") if e not in eps_list]
    if "es" in names:
        if calibration_model == "auto":
            calibration_model = next((m for m in (source_model, model) if m is not None and not has_kwta(m)), None)
        if calibration_model is None and calibration_record is None:
            notes.append("es is uncalibrated: no ReLU network (source_model, the ReLU twin) to calibrate it on")
    else:
        calibration_model = calibration_record = None
    batches = _my_batches(images_or_loader, labels, n_images, batch_size, device)
    total = int(sum(distributed.all_reduce_sum([sum(len(y) for _, _, y in batches)], device)))
    if total == 0:
        raise ValueError("images_or_loader: no images to evaluate")
    say = print if verbose and distributed.is_main() else (lambda *_: None)

    test_settings = None
    if binarization:
        test_settings = binarization if isinstance(binarization, BinarizationSettings) else BinarizationSettings()
        tested = names if test_settings.attacks is None else _attack_names(test_settings.attacks, None)[0]
    if not isinstance(journal, Journal):
        journal = Journal(None if journal is None else process_path(journal), device=device)
    journal.say = say
    # the test's settings join the fingerprint only where it runs: an evaluation without it keeps its journal
    test_fields = {} if test_settings is None else {"binarization": asdict(test_settings), "tested": tested}
    evaluation = fingerprint(
        models=(model, source_model, calibration_model if isinstance(calibration_model, nn.Module) else None),
        batches=batches, eps=eps_list, attacks=names, curve=curve_eps, settings=asdict(settings), seed=seed,
        batch_size=batch_size, calibration_record=calibration_record, suite=SUITE_VERSION, **test_fields,
    ) if journal.path is not None else ""

    with (_frozen(model), _frozen(source_model), _frozen(calibration_model), autoattack_checks() as logged,
          journal.open(evaluation, logged) as units):
        clean, vanishing = _clean_pass(model, batches)
        clean_mask = _gathered(clean)
        vanishing_count = int(sum(distributed.all_reduce_sum([int(vanishing)], device)))
        correct = int(clean_mask.sum())
        say(f"clean accuracy: {_describe_mask(clean_mask)} ({total} images)")
        for note in notes:
            say(f"note: {note}")
        if verbose and distributed.is_main() and batches:
            for line in estimate_lines(estimate(model, batches[0][1], batches[0][2], names, settings,
                                                correct * len(eps_list)), correct * len(eps_list)):
                say(line)
        robust, seconds = {}, {}
        for e in eps_list:
            robust[e], seconds[e] = {}, {}
            for name in names:
                masks, seconds[e][name] = _run(model, batches, e, name, settings, seed, source_model, device, units,
                                               progress=verbose)
                robust[e][name] = masks
                say(f"eps {e:g}: robust accuracy after {name}: {_describe_mask(masks)}, {seconds[e][name]:.1f} s")
            robust[e]["worst_case"] = worst_case({"clean": clean_mask, **robust[e]})
            say(f"eps {e:g}: worst case over {','.join(names)}: {_describe_mask(robust[e]['worst_case'])}")
        calibration = None
        if calibration_record is not None:
            calibration = {**calibration_record, "from": "given"}
        elif calibration_model is not None:
            known = {e: robust[e]["pgd"] for e in eps_list if "pgd" in names} if calibration_model is model else {}
            calibration = {**calibrate_es(calibration_model, batches, eps_list[-1], settings, seed, device, known,
                                          units), "from": "this run"}
        if calibration is not None:
            say(calibration["line"])
        curve, curve_seconds = {}, {}
        for e in curve_eps:
            curve[e], curve_seconds[e] = _run(model, batches, e, "pgd", settings, seed, None, device, units, "curve",
                                              progress=verbose)
        binarized = None
        if test_settings is not None and distributed.is_main():
            images = torch.cat([x for _, x, _ in batches])
            binarized = binarization_test(model, images, eps_list[-1], tested, settings, test_settings, seed=seed,
                                          unit=units.record)
        units.write_plan(list(itertools.chain.from_iterable(distributed.all_gather(units.visited))))
        deferred = int(sum(distributed.all_reduce_sum([units.deferred], device)))
        if deferred:
            done = int(sum(distributed.all_reduce_sum([len(units.units)], device)))
            raise Incomplete(done, deferred, units.path)
        for line in binarization_table(binarized) if binarized else []:
            say(line)

    accuracy_by_eps = {e: {name: int(mask.sum()) / total for name, mask in robust[e].items()} for e in eps_list}
    warnings = [] if calibration is None or calibration["counts_as_attack"] else [calibration["line"]]
    found = dict.fromkeys(itertools.chain.from_iterable(distributed.all_gather(logged)))
    warnings += [f"AutoAttack's own check, in {attack}: {message}" for attack, message in found]
    warnings += masking_warnings(accuracy_by_eps, vanishing_count / correct if correct else 0.0,
                                 {e: int(mask.sum()) / total for e, mask in curve.items()})
    warnings += binarization_warnings(binarized)
    result = Evaluation(
        n_images=total, batch_size=batch_size, eps=eps_list, attacks=names, settings=settings, seed=seed,
        clean=clean_mask, robust=robust,
        seconds=seconds, eps_curve=curve, curve_seconds=curve_seconds, es_calibration=calibration,
        binarization=binarized,
        vanishing_gradient_share=vanishing_count / correct if correct else 0.0, warnings=warnings, notes=notes,
        total_seconds=time.perf_counter() - started,
    )
    if curve:
        say(f"eps curve, PGD alone: {result.pgd_curve_text()}")
    say(f"sanity: every adversarial ({len(names)} attack(s) x {len(eps_list)} eps) lies within eps + 1e-6 of its "
        f"image in L-inf, inside [0, 1], without NaN")
    for warning in warnings:
        say(f"warning: {warning}")
    return result


def binarization_table(found: dict) -> list[str]:
    """The binarization test's lines: per attack, the solvable tasks it missed, beside the two controls."""
    lines = [f"Binarization test (Zimmermann et al. 2022) at eps {found['eps']:g}: on {found['tested']} of "
             f"{found['images']} images an adversarial example provably lies within eps of the modified network "
             f"(closeness {found['closeness']:g}); the share each attack missed ({found['seconds_per_image']:.1f} s "
             "per image):", "", "| attack | missed | share | 95% interval |", "|---|---|---|---|"]
    draws = found["settings"]["validation_points"]
    rows = [*found["attacks"].items(), ("every attack", found["suite"]),
            (f"control: random noise ({draws} draws each in the box, on its surface, at its corners)", found["random"])]
    for name, record in rows:
        if record["tested"]:
            share = record["failed"] / record["tested"]
            low, high = wilson_interval(record["failed"], record["tested"])
            lines.append(f"| {name} | {record['failed']} / {record['tested']} | {share:.1%} | {low:.1%}-{high:.1%} |")
    if found["inner_accuracy"] is not None:
        radius = found["settings"]["boundary_radius"]
        lines.append(f"\nControls, on average over the tasks: held-out inner points ({draws} per task over the whole "
                     f"eps-box) in class 0: {found['inner_accuracy']:.1%}; reach ({draws} draws within {radius:g} eps "
                     f"of the corner) in class 1: {found['reachable']:.1%}. Boundary: "
                     f"{found['settings']['boundary_points']} point(s) within {radius:g} eps of a corner.")
    looser = found["looser"]
    if looser["tested"]:
        closeness = sorted({t["closeness"] for t in found["tasks"] if t["closeness"] != found["closeness"]})
        missed = ", ".join(f"{name} {r['failed']}" for name, r in looser["attacks"].items())
        lines.append(f"\n{looser['tested']} task(s) built at a looser closeness ({', '.join(map(str, closeness))}: "
                     f"an easier task) are counted apart; missed there: {missed}.")
    if found["setup_failures"]:
        lines.append(f"\nSetup failed on {len(found['setup_failures'])} image(s) (left out).")
    if found["left_out"]:
        lines.append(f"\n(left out, they need a twin of the modified network: {', '.join(found['left_out'])})")
    return lines + [""]


def binarization_warnings(found: dict | None) -> list[str]:
    if not found or not found["tested"]:
        return []
    warnings = [f"binarization test: {name} missed {record['failed']} of {record['tested']} adversarial examples "
                f"that provably exist ({record['failed'] / record['tested']:.0%}): too weak to trust on this model"
                for name, record in found["attacks"].items()
                if record["failed"] / record["tested"] > BINARIZATION_TOLERANCE]
    if found["reachable"] is not None and found["reachable"] < REACH_TOLERANCE:
        warnings.append(f"binarization test: only {found['reachable']:.0%} of the draws near the corner are class 1: "
                        "the tasks are needles, and a miss says little of an attack (more boundary points help)")
    solved = found["random"]["tested"] - found["random"]["failed"]
    if solved / found["random"]["tested"] > BINARIZATION_TOLERANCE:
        warnings.append(f"binarization test: random noise solved {solved} of {found['random']['tested']} tasks: "
                        "the test is too easy here to vouch for an attack")
    return warnings


def batch_seed(seed: int, batch_index: int) -> int:
    """The seed of one batch: the same images get the same draws whichever process attacks them."""
    return int(np.random.SeedSequence([seed, batch_index]).generate_state(1)[0])


def _budgets(value: float | Sequence[float], argument: str) -> list[float]:
    values = [value] if isinstance(value, (int, float)) else list(value)
    if not values or not all(isinstance(v, (int, float)) and 0 < v <= 1 for v in values):
        raise ValueError(f"{argument} must be a budget or budgets in (0, 1] (images live in [0, 1]), got {value!r}")
    return sorted({float(v) for v in values})


def _attack_names(attacks: str | Sequence[str], source_model: nn.Module | None) -> tuple[list[str], list[str]]:
    """(the attacks to run, notes): "all" is the suite, without the attacks that need a missing source model."""
    notes = []
    if attacks == "all":
        names = list(TABLE_SUITE)
        for name in [n for n in names if ATTACKS[n].needs_source and source_model is None]:
            names.remove(name)
            notes.append(f"{name} left out of the suite: no source_model (the ReLU twin) given")
        return names, notes
    names = [attacks] if isinstance(attacks, str) else list(dict.fromkeys(attacks))
    unknown = [name for name in names if name not in ATTACKS]
    if unknown or not names:
        raise ValueError(f"attacks: choose from {', '.join(ATTACKS)} or 'all', got {attacks!r}")
    needing = [name for name in names if ATTACKS[name].needs_source and source_model is None]
    if needing:
        raise ValueError(f"attacks: {', '.join(needing)} needs a source_model (the ReLU twin)")
    return names, notes


def has_kwta(model: nn.Module) -> bool:
    """Does `model` hold a KWTA layer (else it is a ReLU-like network es can be calibrated on)?"""
    return any(isinstance(module, KWTA) for module in model.modules())


@contextlib.contextmanager
def _frozen(model: nn.Module | None) -> Iterator[None]:
    """Eval mode and no parameter gradients while attacking (the attacks differentiate the images only)."""
    if model is None or not isinstance(model, nn.Module):
        yield
        return
    modes = {module: module.training for module in model.modules()}
    grads = {parameter: parameter.requires_grad for parameter in model.parameters()}
    model.eval().requires_grad_(False)
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training
        for parameter, requires_grad in grads.items():
            parameter.requires_grad_(requires_grad)


def _my_batches(source, labels, n_images, batch_size, device) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """This process's (batch index, images, labels): every world_size-th batch of the first n_images, checked."""
    if n_images is not None and n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if isinstance(source, torch.Tensor):
        if labels is None or len(labels) != len(source):
            raise ValueError("labels: give one label per image with an image tensor "
                             f"(got {None if labels is None else len(labels)} for {len(source)} images)")
        count = len(source) if n_images is None else min(n_images, len(source))
        batches = ((source[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, count, batch_size))
    elif labels is not None:
        raise ValueError("labels: only with an image tensor; a dataset or loader brings its own")
    elif isinstance(source, Dataset) and hasattr(source, "__len__"):
        count = len(source) if n_images is None else min(n_images, len(source))

        def batches_of_dataset():
            for start in range(0, count, batch_size):
                pairs = [source[i] for i in range(start, min(start + batch_size, count))]
                yield torch.stack([image for image, _ in pairs]), torch.tensor([int(label) for _, label in pairs])
        batches = batches_of_dataset()
    else:
        batches = _truncated(source, n_images)
    mine = []
    for index, (images, batch_labels) in enumerate(batches):
        if index % distributed.world_size() != distributed.rank():
            continue
        images, batch_labels = images.to(device), torch.as_tensor(batch_labels).to(device).long()
        _check_range(images)
        mine.append((index, images, batch_labels))
    return mine


def _truncated(loader: Iterable, n_images: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    left = n_images
    for images, labels in loader:
        if left is not None:
            images, labels = images[:left], labels[:left]
            left -= len(labels)
        if len(labels):
            yield images, labels
        if left is not None and left <= 0:
            return


def _check_range(images: torch.Tensor) -> None:
    if not images.is_floating_point():
        raise TypeError(f"images_or_loader: images must be floating point in [0, 1], got {images.dtype}")
    if images.dim() < 2:
        raise ValueError(f"images_or_loader: a batch needs a batch dimension first, got shape {tuple(images.shape)}")
    low, high = images.min().item(), images.max().item()
    if not (0.0 <= low and high <= 1.0):
        raise ValueError(f"images_or_loader: images must lie in [0, 1], found values in [{low:.4g}, {high:.4g}]: "
                         "the attacks clip to [0, 1] and eps is in those units; put the normalisation inside the model")


def _clean_pass(model: nn.Module, batches, gradients: bool = True) -> tuple[list[tuple[int, torch.Tensor]], int]:
    """(per batch: correctly classified images; correctly classified images whose input gradient vanishes)."""
    clean, vanishing = [], 0
    for index, images, labels in batches:
        correct = predict(model, images) == labels
        clean.append((index, correct.cpu()))
        if gradients:
            vanishing += int((vanishing_gradients(model, images, labels) & correct).sum())
    return clean, vanishing


def _batch_slices(batches) -> dict[int, slice]:
    """{batch index: its images' positions in the per-image masks _gathered assembles}, for this process's batches."""
    sizes = sorted(itertools.chain.from_iterable(distributed.all_gather([(i, len(y)) for i, _, y in batches])))
    starts = itertools.accumulate((size for _, size in sizes), initial=0)
    return {index: slice(start, start + size) for (index, size), start in zip(sizes, starts, strict=False)}


def _gathered(parts: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """The per-image mask over every process's batches, in batch order."""
    everyone = sorted(itertools.chain.from_iterable(distributed.all_gather(parts)), key=lambda part: part[0])
    return torch.cat([mask for _, mask in everyone]) if everyone else torch.zeros(0, dtype=torch.bool)


def _run(model, batches, eps, name, settings, seed, source_model, device, journal: Journal | None = None,
         tag: str = "suite", progress: bool = False) -> tuple[torch.Tensor, float]:
    """One attack over every batch: (the per-image robust mask over all processes, seconds summed over them).

    Each batch is one unit of the journal, keyed by `tag` (which model and why), attack, eps and batch index.
    progress: a bar per attack with its ETA (on stderr, the main process only)."""
    journal = journal or Journal(None)
    parts, seconds = [], 0.0
    bar = tqdm(batches, desc=f"{name} eps {eps:g}", unit="batch", leave=False,
               disable=not (progress and distributed.is_main()))
    for index, images, labels in bar:
        def attack(images=images, labels=labels, index=index) -> tuple[torch.Tensor, float]:
            robust, batch_seconds = attack_batch(model, images, labels, eps, [name], settings,
                                                 source_model=source_model, seed=batch_seed(seed, index))
            return robust[name].cpu(), batch_seconds[name]
        done = journal.unit(f"{tag}/{name}/{eps:g}/{index}", attack, batch=index)
        # A unit left to another run reads as robust here: the evaluation ends Incomplete before any figure.
        mask, batch_seconds = done if done is not None else (torch.ones(len(labels), dtype=torch.bool), 0.0)
        parts.append((index, mask))
        seconds += batch_seconds
    return _gathered(parts), distributed.all_reduce_sum([seconds], device)[0]
