"""The suite's budgets by name, as AutoAttack has versions, and what a budget costs before it runs.

  standard  the published budgets, AttackSettings' defaults: PGD 40 steps from 5 starts, AutoAttack's standard
            version (100 iterations, 5,000 Square queries), BPDA at 3 temperatures, eot 40 x 8, es at Tramer et
            al.'s 1.2 million forward passes per image. What a reported table runs.
  demo      cut in size, not in kind, to fit `make demo` on 2 CPU cores: 2 PGD starts, 20 AutoAttack and BPDA-APGD
            iterations, 500 Square queries, es 10 steps of 20 pairs, eot 4 draws.
  smoke     a step or two of everything: tests and dry runs of whole pipelines; its figures mean nothing.

Every place that runs the suite at a cut budget names one of these (attack.py --budget, the demo, the grid's
mini run, the results campaign's slice); a flag overrides one field of it.

`estimate` times the model's forward pass and its forward and backward pass on one batch and multiplies them
by each attack's count of passes per image (`Attack.passes`): an upper bound, reached only where no image breaks
early (each attack stops on an image once it is adversarial).
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from kwta.attacks import ATTACKS, AttackSettings

BUDGETS: dict[str, AttackSettings] = {
    "standard": AttackSettings(),
    "demo": AttackSettings(pgd_restarts=2, autoattack_iterations=20, bpda_iterations=20, square_queries=500,
                           es_schedule=((10, 20),), eot_samples=4),
    "smoke": AttackSettings(pgd_steps=2, pgd_restarts=1, autoattack_iterations=2, square_queries=5,
                            bpda_temperatures=(1.0,), bpda_steps=2, bpda_iterations=2, es_schedule=((1, 1),),
                            eot_samples=1, eot_steps=2),
}


def budget(name: str, **overrides) -> AttackSettings:
    """The named budget, with `overrides` (AttackSettings fields) replacing its values."""
    if name not in BUDGETS:
        raise ValueError(f"budget must be one of {', '.join(BUDGETS)}, got {name!r}")
    return replace(BUDGETS[name], **overrides)


@dataclass
class Estimate:
    """One attack's budget in words, its passes per image and the seconds they take at most."""

    attack: str
    budget: str
    forwards: int  # forward passes per image
    backwards: int  # forward-and-backward passes per image
    seconds: float  # for every image given, if none breaks early


def time_passes(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, repeats: int = 2) -> tuple[float, float]:
    """(seconds per image of a forward pass, of a forward and backward pass w.r.t. the images) on this batch,
    the faster of `repeats` timings after one warm-up."""
    def forward():
        with torch.no_grad():
            model(images)

    def forward_backward():
        x = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            torch.nn.functional.cross_entropy(model(x), labels).backward()

    timings = []
    for run in (forward, forward_backward):
        run()
        best = float("inf")
        for _ in range(repeats):
            began = time.perf_counter()
            run()
            if images.is_cuda:
                torch.cuda.synchronize(images.device)
            best = min(best, time.perf_counter() - began)
        timings.append(best / len(images))
    return timings[0], timings[1]


def estimate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attacks: Sequence[str],
             settings: AttackSettings, n_images: int, num_classes: int | None = None) -> list[Estimate]:
    """Each attack's budget and its time on `n_images` images at most, from a timing on this batch."""
    was_training = model.training
    model.eval()
    try:
        if num_classes is None:
            with torch.no_grad():
                num_classes = model(images[:1]).shape[1]
        forward, backward = time_passes(model, images, labels)
    finally:
        model.train(was_training)
    found = []
    for name in attacks:
        attack = ATTACKS[name]
        forwards, backwards = attack.passes(settings, num_classes) if attack.passes else (0, 0)
        found.append(Estimate(name, attack.describe(settings) if attack.describe else "", forwards, backwards,
                              n_images * (forwards * forward + backwards * backward)))
    return found


def estimate_lines(found: list[Estimate], n_images: int) -> list[str]:
    """The table attack.py prints before it attacks."""
    lines = [f"budget and time at most (every one of {n_images} images attacked to the end; an image broken early "
             "costs less):"]
    for row in found:
        passes = f"{row.forwards:,} forward + {row.backwards:,} forward-backward passes per image"
        lines.append(f"  {row.attack:<10} {row.budget}: {passes}, at most {_duration(row.seconds)}")
    lines.append(f"  {'all':<10} at most {_duration(sum(row.seconds for row in found))}")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
