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
enough for this model, high for one whose gradient the model masks.

Two controls, as the published code reports them, on `validation_points` fresh draws of each kind: the
held-out accuracy (inner points drawn over the whole eps-box must stay class 0: the head generalises), and
random noise as an attack (any of those draws, of points on the eps-box's surface or of its corners, in
class 1 solves the task: a test random noise passes says nothing of an attack). Where the boundary point
fails its check at `closeness` by a rounding of the last bits, the construction retries at 0.999, 0.99 and
0.9: a looser closeness enlarges class 1 and eases the task, so such tasks are recorded with their
closeness and counted apart. docs/attacks.md compares the construction with the published one.

Every image's task is drawn from its own seed (seed, image), so a task is the same whichever run, process or
order builds it: with a journal (kwta.journal) each (attack, image) is one unit, and the test resumes and
shards like the table.

Cost per image: forward passes of inner_points + 2 + 3 * validation_points images, a small fit, then every
attack on one image of a 2-class network.
"""

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kwta.attacks import ATTACKS, AttackSettings, attack_batch, attack_scope, predict, project_linf

LOOSER_CLOSENESS = (0.999, 0.99, 0.9)  # the retries when the boundary point misses its check by a rounding
SCOPE = "the binarization test's 2-class networks"  # how AutoAttack's warnings from these attacks are labelled
TASK_FIELDS = ("closeness", "inner_accuracy", "random", "reachable")  # what a task records besides its image


@dataclass
class BinarizationSettings:
    """The test's construction (the paper's k-WTA defaults but for the class weights) and how many images."""

    inner_points: int = 999
    inner_radius: float = 0.95  # times eps: the inner points stay clear of the eps-sphere
    closeness: float = 0.9999  # how far the boundary moves towards the boundary point
    validation_points: int = 200  # per kind (inner over the box, surface, corners): the controls, as published
    boundary_points: int = 64  # a region around the corner (see the module's doc); 1: the published test
    boundary_radius: float = 0.01  # times eps: that region's L-inf radius, and the reach control's
    images: int | None = None  # the first N evaluated images (default: all)
    attacks: str | tuple[str, ...] | None = None  # "all" (the suite) or names; default: the evaluation's attacks
    feature_batch: int = 256  # inner points per forward pass

    def __post_init__(self):
        if self.inner_points < 1 or self.feature_batch < 1 or self.validation_points < 1 or \
                (self.images is not None and self.images < 1):
            raise ValueError(f"inner_points, validation_points, feature_batch and images must be >= 1, got {self}")
        if self.boundary_points < 1:
            raise ValueError(f"boundary_points must be >= 1, got {self.boundary_points}")
        if not 0 < self.inner_radius < 1 or not 0 < self.closeness < 1 or not 0 < self.boundary_radius < 1:
            raise ValueError(f"inner_radius, closeness and boundary_radius must lie in (0, 1), got {self}")


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
    """Logistic regression (class 0: `inner` rows, class 1: the `boundary` row or rows), both classes weighted
    equally, by L-BFGS in float64 on standardised features; returns (w, b) in the original units."""
    boundary = boundary.reshape(-1, inner.shape[1])
    features = torch.cat([inner, boundary]).double()
    mean, scale = features.mean(dim=0), features.std(dim=0).clamp_min(1e-12)
    standard = (features - mean) / scale
    labels = torch.cat([torch.zeros(len(inner)), torch.ones(len(boundary))]).double()
    weights = torch.where(labels == 1, 0.5 / len(boundary), 0.5 / len(inner))
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
    """One image's binarized network and its controls, or why there is none."""

    model: BinarizedModel | None
    boundary_point: torch.Tensor | None
    failure: str = ""
    closeness: float | None = None  # the closeness the task was built at
    inner_accuracy: float | None = None  # held-out inner points (over the whole eps-box) in class 0
    random: str = ""  # the kind of random draw that solved the task ("inner", "surface", "corner"), or ""
    reachable: float | None = None  # draws within boundary_radius * eps of the boundary point in class 1


def image_generator(seed: int, image: int, device: torch.device) -> torch.Generator:
    """The draws of one image's task, whatever else the run does."""
    state = int(np.random.SeedSequence([seed, image, 0xB1]).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(state)


def corners(x: torch.Tensor, eps: float, count: int, generator: torch.Generator) -> torch.Tensor:
    signs = torch.randint(0, 2, (count, *x.shape[1:]), generator=generator, device=x.device) * 2 - 1
    return project_linf(x + eps * signs, x, eps)


def validation_draws(x: torch.Tensor, eps: float, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """`count` fresh points of each kind: uniform over the eps-box, on its surface (a uniform draw scaled to L-inf
    eps), its corners; clipped to valid images."""
    box = 2 * torch.rand((count, *x.shape[1:]), generator=generator, device=x.device) - 1
    surface = 2 * torch.rand((count, *x.shape[1:]), generator=generator, device=x.device) - 1
    surface = surface / surface.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
    return {"inner": project_linf(x + eps * box, x, eps), "surface": project_linf(x + eps * surface, x, eps),
            "corner": corners(x, eps, count, generator)}


def near(point: torch.Tensor, x: torch.Tensor, radius: float, eps: float, count: int,
         generator: torch.Generator) -> torch.Tensor:
    """`count` uniform draws from the L-inf ball of `radius` around `point`, within the eps-ball of x."""
    offsets = 2 * torch.rand((count, *x.shape[1:]), generator=generator, device=x.device) - 1
    return project_linf(point + radius * offsets, x, eps)


def binarize(model: nn.Module, x: torch.Tensor, eps: float, settings: BinarizationSettings,
             generator: torch.Generator) -> Setup:
    """The modified network for image x (shape (1, ...)) in which an adversarial example provably lies within eps,
    with its controls."""
    head, logits = find_head(model, x)
    offsets = (2 * torch.rand((settings.inner_points, *x.shape[1:]), generator=generator, device=x.device) - 1)
    inner = torch.cat([x, (x + settings.inner_radius * eps * offsets).clamp(0, 1)])
    boundary_point = corners(x, eps, 1, generator)
    validation = validation_draws(x, eps, settings.validation_points, generator)
    radius = settings.boundary_radius * eps
    reach = near(boundary_point, x, radius, eps, settings.validation_points, generator)
    region = near(boundary_point, x, radius, eps, settings.boundary_points - 1, generator)
    boundary = torch.cat([boundary_point, region])
    features = features_of(model, head, torch.cat([inner, boundary]), settings.feature_batch)
    weight, bias = fit_binary_head(features[: len(inner)], features[len(inner):])
    weight, bias = weight.to(features.dtype), bias.to(features.dtype)
    scores = features @ weight + bias
    least = scores[len(inner):].min()  # the boundary point (or region) closest to the boundary
    if not (scores[: len(inner)].max() < 0 < least):
        return Setup(None, None, "the logistic regression does not separate the inner points from the boundary point")
    for closeness in (settings.closeness, *(c for c in LOOSER_CLOSENESS if c < settings.closeness)):
        shifted = bias - closeness * least
        # a positive rescaling, which no decision sees, gives the two logits at x the original logits' spread: far
        # from the boundary a raw score saturates the cross-entropy, whose gradient then rounds to zero
        scale = (logits.max() - logits.min()).clamp_min(1e-6) / (2 * (scores[0] - closeness * least).abs())
        binarized = BinarizedModel(model, head, weight * scale, shifted * scale).eval()
        if predict(binarized, boundary_point).item() == 1 and predict(binarized, x).item() == 0:
            found = {kind: predict_in_chunks(binarized, points, settings.feature_batch)
                     for kind, points in validation.items()}
            solved = next((kind for kind, classes in found.items() if bool((classes == 1).any())), "")
            reached = predict_in_chunks(binarized, reach, settings.feature_batch)
            return Setup(binarized, boundary_point, closeness=closeness, random=solved,
                         inner_accuracy=float((found["inner"] == 0).double().mean()),
                         reachable=float((reached == 1).double().mean()))
    return Setup(None, None, "the boundary point is not class 1 on the modified network")


def predict_in_chunks(model: nn.Module, images: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([predict(model, chunk) for chunk in images.split(batch)])


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


Unit = Callable[[str, Callable[[], tuple[dict, float]], int], dict | None]


def _compute(_key: str, compute: Callable[[], tuple[dict, float]], _image: int) -> dict:
    return compute()[0]


def binarization_test(
    model: nn.Module,
    images: torch.Tensor,
    eps: float,
    attacks: Sequence[str],
    attack_settings: AttackSettings,
    settings: BinarizationSettings | None = None,
    *,
    seed: int = 0,
    unit: Unit | None = None,
) -> dict:
    """Run `attacks` on each image's binarized network; per attack, on how many images it failed a solvable task.

    Attacks that need a source model (transfer) have no twin of the modified network and are left out.
    unit(key, compute, image): a journal's record (kwta.journal.Journal.record) that runs compute() -> (value,
    seconds) once and keeps its value, or returns None when it leaves the unit to another run; by default
    everything is computed here. Returns {"attacks": {name: {"failed", "tested", "failed_images"}} over the tasks
    built at the set closeness, "suite" (the images every attack missed), "random" (the control: the tasks
    random draws solved), "inner_accuracy" (the held-out control, mean), "tasks" (per image: closeness,
    controls), "looser" (the figures of tasks built at a looser closeness, counted apart), "setup_failures",
    "tested", "deferred" (units left to another run), "seconds_per_image", "settings"}.
    """
    settings = settings or BinarizationSettings()
    unit = unit or _compute
    names = [name for name in attacks if not ATTACKS[name].needs_source]
    setups: dict[int, Setup] = {}
    started = time.perf_counter()

    def setup_of(index: int, x: torch.Tensor) -> Setup:
        if index not in setups:
            setups[index] = binarize(model, x, eps, settings, image_generator(seed, index, x.device))
        return setups[index]

    def build(index: int, x: torch.Tensor) -> tuple[dict, float]:
        began = time.perf_counter()
        setup = setup_of(index, x)
        return {"failure": setup.failure, "closeness": setup.closeness, "inner_accuracy": setup.inner_accuracy,
                "random": setup.random, "reachable": setup.reachable}, time.perf_counter() - began

    def attack(index: int, x: torch.Tensor, name: str) -> tuple[dict, float]:
        began = time.perf_counter()
        label = torch.zeros(1, dtype=torch.long, device=x.device)
        with attack_scope(SCOPE):
            robust, _ = attack_batch(setup_of(index, x).model, x, label, eps, [name], attack_settings,
                                     seed=seed + index)
        return {"failed": bool(robust[name].item())}, time.perf_counter() - began

    tasks, setup_failures, failed, deferred = [], [], {name: {} for name in names}, 0
    count = len(images[: settings.images])
    with _eval_mode(model):
        for index, image in enumerate(images[: settings.images]):
            x = image[None]
            task = unit(f"binarization/setup/{eps:g}/{index}", lambda index=index, x=x: build(index, x), index)
            if task is None:
                deferred += 1 + len(names)
                continue
            if task["failure"]:
                setup_failures.append({"image": index, "why": task["failure"]})
                continue
            tasks.append({"image": index, **{key: task[key] for key in TASK_FIELDS}})
            for name in names:
                done = unit(f"binarization/{name}/{eps:g}/{index}", lambda i=index, x=x, n=name: attack(i, x, n), index)
                if done is None:
                    deferred += 1
                else:
                    failed[name][index] = done["failed"]
            setups.pop(index, None)
    strict = [t["image"] for t in tasks if t["closeness"] == settings.closeness]
    looser = [t["image"] for t in tasks if t["closeness"] != settings.closeness]

    def record(images_: list[int], missed: Callable[[int], bool]) -> dict:
        missed_images = [i for i in images_ if missed(i)]
        return {"failed": len(missed_images), "tested": len(images_), "failed_images": missed_images}

    random_solved = {t["image"] for t in tasks if t["random"]}
    return {
        "eps": eps, "images": count, "tested": len(strict), "setup_failures": setup_failures, "tasks": tasks,
        "closeness": settings.closeness,
        "attacks": {name: record(strict, lambda i, n=name: failed[n].get(i, False)) for name in names},
        "suite": record(strict, lambda i: all(failed[n].get(i, False) for n in names)),
        "random": record(strict, lambda i: i not in random_solved),
        "inner_accuracy": float(np.mean([t["inner_accuracy"] for t in tasks])) if tasks else None,
        "reachable": float(np.mean([t["reachable"] for t in tasks])) if tasks else None,
        "looser": {"tested": len(looser), "attacks": {name: record(looser, lambda i, n=name: failed[n].get(i, False))
                                                      for name in names}},
        "left_out": [name for name in attacks if name not in names], "deferred": deferred,
        "seconds_per_image": (time.perf_counter() - started) / max(1, count), "settings": asdict(settings),
    }
