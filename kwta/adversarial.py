"""The inner attacks of adversarial training (train.py --adv-train pgd|trades) and TRADES's loss.

Both reuse the evaluation's primitives (kwta.attacks: the sign-gradient loop and the projection), run in plain
PyTorch so they work under autocast and on the module inside DistributedDataParallel, and never touch
parameter gradients.
"""

import torch
import torch.nn.functional as F
from torch import nn

from kwta import attacks
from kwta.attacks import cross_entropy_loss, sign_gradient_ascent


def _check_budget(attack: str, eps: float, alpha: float, steps: int) -> None:
    if eps < 0 or alpha <= 0 or steps < 1:
        raise ValueError(f"{attack} needs eps >= 0, alpha > 0, steps >= 1, got eps={eps}, alpha={alpha}, steps={steps}")


def pgd_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool = True,
) -> torch.Tensor:
    """Inputs within `eps` (L-inf) of x, inside [0, 1], that raise the cross-entropy of `model` on y.

    Madry et al.'s inner maximisation: the evaluation's sign-gradient loop run for all `steps` steps of
    `alpha` (no early stop: training wants the last iterate of every image), from a uniform start drawn
    from torch's global RNG. The model's mode is left as it is; gradients are taken for the input only.
    """
    _check_budget("pgd_linf", eps, alpha, steps)
    x = x.detach()
    start = attacks.random_start(x, eps) if random_start else x
    return sign_gradient_ascent(model, x, y, eps, steps=steps, step_size=alpha, start=start, loss=cross_entropy_loss,
                                stop_at_adversarial=False)


def trades_linf(model: nn.Module, x: torch.Tensor, eps: float, alpha: float, steps: int) -> torch.Tensor:
    """TRADES's inner maximisation (Zhang et al. 2019): inputs within `eps` (L-inf) of x, inside [0, 1], that
    push the model's prediction away from its prediction on x (KL divergence), labels unused.

    Starts at x plus Gaussian noise of scale 0.001 (the reference code's start), then `steps` sign steps of
    `alpha` in the evaluation's sign-gradient loop, each projected back. The model's mode is left as it is.
    """
    _check_budget("trades_linf", eps, alpha, steps)
    x = x.detach()
    with torch.no_grad():
        clean_probabilities = F.softmax(model(x).float(), dim=1)

    def divergence(logits: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits.float(), dim=1), clean_probabilities, reduction="none").sum(dim=1)

    start = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
    unused_labels = torch.zeros(len(x), dtype=torch.long, device=x.device)
    return sign_gradient_ascent(model, x, unused_labels, eps, steps=steps, step_size=alpha, start=start,
                                loss=divergence, stop_at_adversarial=False)


def trades_loss(clean_logits: torch.Tensor, adversarial_logits: torch.Tensor, y: torch.Tensor,
                beta: float) -> torch.Tensor:
    """Cross-entropy on the clean images plus beta times the mean KL divergence of the adversarial prediction
    from the clean one; gradients flow through both."""
    divergence = F.kl_div(F.log_softmax(adversarial_logits.float(), dim=1), F.softmax(clean_logits.float(), dim=1),
                          reduction="batchmean")
    return F.cross_entropy(clean_logits, y) + beta * divergence
