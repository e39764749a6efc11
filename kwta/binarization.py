"""The binarization test (Zimmermann, Brendel, Tramer, Carlini, NeurIPS 2022): were the attacks strong enough?

An attack that finds no adversarial example may be weak, or the model robust; the test tells the two apart
by posing, per image, a task the attack provably can solve. The network keeps everything up to its last
linear layer (the head), whose input (the features) feeds a new binary head instead:

  - inner points: x and `inner_points` draws from the uniform L-inf ball of radius inner_radius * eps
    around x, clipped to [0, 1], are class 0;
  - the boundary point: one random corner of the eps-ball, x + eps * s with s a random sign vector,
    clipped to [0, 1], is class 1;
  - a logistic regression on their features (both classes weighted equally, no regularisation) must
    separate them perfectly, or the image is a setup failure and left out; then the head's bias moves the
    boundary `closeness` of the way towards the boundary point, which stays class 1.

The boundary point lies within eps of x and the modified network classifies it as class 1 (checked on the
network as the attacks will see it), so an adversarial example within eps provably exists. Each attack
of the suite then attacks x (label 0) on the modified network, unchanged; where it finds nothing, it failed
a task it could solve. The share of such images is the attack's failure rate: near 0 for an attack strong
enough for this model, high for one whose gradient the model masks. The paper's k-WTA case ran 512
images, 999 inner points, a random corner and sklearn's logistic regression (google-research/
active-adversarial-tests, case_studies/kwta); this one fits the same head in torch with class weights.

Cost per image: one forward pass of inner_points + 2 images for the features, a small fit, then every
attack on one image of a 2-class network.
"""

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kwta.attacks import ATTACKS, AttackSettings, attack_batch, predict, project_linf


@dataclass
class BinarizationSettings:
    """The test's construction (the paper's k-WTA defaults but for the class weights) and how many images."""

    inner_points: int = 999
    inner_radius: float = 0.95  # times eps: the inner points stay clear of the eps-sphere
    closeness: float = 0.9999  # how far the boundary moves towards the boundary point
    images: int | None = None  # the first N evaluated images (default: all)
    attacks: str | tuple[str, ...] | None = None  # "all" (the suite) or names; default: the evaluation's attacks
    feature_batch: int = 256  # inner points per forward pass

    def __post_init__(self):
        if self.inner_points < 1 or self.feature_batch < 1 or (self.images is not None and self.images < 1):
            raise ValueError(f"inner_points, feature_batch and images must be >= 1, got {self}")
        if not 0 < self.inner_radius < 1 or not 0 < self.closeness < 1:
            raise ValueError(f"inner_radius and closeness must lie in (0, 1), got {self}")


def find_head(model: nn.Module, example: torch.Tensor) -> tuple[nn.Linear, torch.Tensor]:
    """(the last nn.Linear a forward pass runs: the head whose input are the features, the logits of `example`)."""
    order = []
    hooks = [module.register_forward_hook(lambda module, *_: order.append(module))
             for module in model.modules() if isinstance(module, nn.Linear)]
    try:
        with torch.no_grad():
            logits = model(example)
    finally:
        for hook in hooks:
            hook.remove()
    if not order:
        raise ValueError("binarization: the model has no nn.Linear head to replace")
    return order[-1], logits


class BinarizedModel(nn.Module):
    """`model` with its head's output replaced by the binary head's two logits (-s, s), s = w . features + b."""

    def __init__(self, model: nn.Module, head: nn.Linear, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.model, self.head = model, head
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return features.flatten(1) @ self.weight + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def binary(_module, inputs, _output):
            score = self.score(inputs[0])
            return torch.stack([-score, score], dim=1)

        hook = self.head.register_forward_hook(binary)
        try:
            return self.model(x)
        finally:
            hook.remove()


def features_of(model: nn.Module, head: nn.Linear, images: torch.Tensor, batch: int) -> torch.Tensor:
    """The head's input for each image."""
    captured = []
    hook = head.register_forward_hook(lambda _module, inputs, _output: captured.append(inputs[0].flatten(1)))
    try:
        with torch.no_grad():
            for chunk in images.split(batch):
                model(chunk)
    finally:
        hook.remove()
    return torch.cat(captured)


def fit_binary_head(inner: torch.Tensor, boundary: torch.Tensor, steps: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression (class 0: `inner` rows, class 1: the `boundary` row), both classes weighted equally,
    by L-BFGS in float64 on standardised features; returns (w, b) in the original units."""
    features = torch.cat([inner, boundary[None]]).double()
    mean, scale = features.mean(dim=0), features.std(dim=0).clamp_min(1e-12)
    standard = (features - mean) / scale
    labels = torch.cat([torch.zeros(len(inner)), torch.ones(1)]).double()
    weights = torch.where(labels == 1, 0.5, 0.5 / len(inner))
    w = torch.zeros(features.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = (weights * F.binary_cross_entropy_with_logits(standard @ w + b, labels, reduction="none")).sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    w_original = (w / scale).detach()
    return w_original, (b - (w_original * mean).sum()).detach()


@dataclass
class Setup:
    """One image's binarized network, or why there is none."""

    model: BinarizedModel | None
    boundary_point: torch.Tensor | None
    failure: str = ""


def binarize(model: nn.Module, x: torch.Tensor, eps: float, settings: BinarizationSettings,
             generator: torch.Generator) -> Setup:
    """The modified network for image x (shape (1, ...)) in which an adversarial example provably lies within eps."""
    head, logits = find_head(model, x)
    offsets = (2 * torch.rand((settings.inner_points, *x.shape[1:]), generator=generator, device=x.device) - 1)
    inner = torch.cat([x, (x + settings.inner_radius * eps * offsets).clamp(0, 1)])
    signs = torch.randint(0, 2, x.shape, generator=generator, device=x.device) * 2 - 1
    boundary_point = project_linf(x + eps * signs, x, eps)
    features = features_of(model, head, torch.cat([inner, boundary_point]), settings.feature_batch)
    weight, bias = fit_binary_head(features[:-1], features[-1])
    weight, bias = weight.to(features.dtype), bias.to(features.dtype)
    scores = features @ weight + bias
    if not (scores[:-1].max() < 0 < scores[-1]):
        return Setup(None, None, "the logistic regression does not separate the inner points from the boundary point")
    for closeness in (settings.closeness, 0.999, 0.99, 0.9):  # the arithmetic of one image may differ in the last bits
        shifted = bias - closeness * scores[-1]
        # a positive rescaling, which no decision sees, gives the two logits at x the original logits' spread: far
        # from the boundary a raw score saturates the cross-entropy, whose gradient then rounds to zero
        scale = (logits.max() - logits.min()).clamp_min(1e-6) / (2 * (scores[0] - closeness * scores[-1]).abs())
        binarized = BinarizedModel(model, head, weight * scale, shifted * scale).eval()
        if predict(binarized, boundary_point).item() == 1 and predict(binarized, x).item() == 0:
            return Setup(binarized, boundary_point)
    return Setup(None, None, "the boundary point is not class 1 on the modified network")


def binarization_test(
    model: nn.Module,
    images: torch.Tensor,
    eps: float,
    attacks: Sequence[str],
    attack_settings: AttackSettings,
    settings: BinarizationSettings | None = None,
    *,
    seed: int = 0,
) -> dict:
    """Run `attacks` on each image's binarized network; per attack, on how many images it failed a solvable task.

    Attacks that need a source model (transfer) have no twin of the modified network and are left out.
    Returns {"attacks": {name: {"failed": n, "tested": m, "failed_images": [...]}}, "suite": the same for the
    images every attack missed, "setup_failures": [...], "tested": m, "seconds_per_image": s, "settings": ...}.
    """
    settings = settings or BinarizationSettings()
    names = [name for name in attacks if not ATTACKS[name].needs_source]
    generator = torch.Generator(device=images.device).manual_seed(seed)
    failed = {name: [] for name in names}
    setup_failures, tested = [], []
    started = time.perf_counter()
    for index, image in enumerate(images[: settings.images]):
        x = image[None]
        setup = binarize(model, x, eps, settings, generator)
        if setup.model is None:
            setup_failures.append({"image": index, "why": setup.failure})
            continue
        tested.append(index)
        label = torch.zeros(1, dtype=torch.long, device=x.device)
        robust, _ = attack_batch(setup.model, x, label, eps, names, attack_settings, seed=seed + index)
        for name in names:
            if robust[name].item():
                failed[name].append(index)
    count = len(images[: settings.images])
    missed_by_all = [i for i in tested if all(i in failed[name] for name in names)]
    return {
        "eps": eps, "images": count, "tested": len(tested), "setup_failures": setup_failures,
        "attacks": {name: {"failed": len(failed[name]), "tested": len(tested), "failed_images": failed[name]}
                    for name in names},
        "suite": {"failed": len(missed_by_all), "tested": len(tested), "failed_images": missed_by_all},
        "left_out": [name for name in attacks if name not in names],
        "seconds_per_image": (time.perf_counter() - started) / max(1, count), "settings": asdict(settings),
    }
