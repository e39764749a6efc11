"""The inner attacks of adversarial training (train.py --adv-train pgd|trades) and TRADES's loss.

Attack evaluation lives in kwta/attacks.py (foolbox); this one is plain PyTorch so it runs under
autocast and on the module inside DistributedDataParallel without touching parameter gradients.
"""

import torch
import torch.nn.functional as F
from torch import nn


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

    Each of `steps` steps moves by `alpha` along the sign of the input gradient, then projects back.
    The model's mode is left as it is; gradients are taken with respect to the input only.
    """
    if eps < 0 or alpha <= 0 or steps < 1:
        raise ValueError(f"pgd_linf needs eps >= 0, alpha > 0, steps >= 1, got eps={eps}, alpha={alpha}, steps={steps}")
    x = x.detach()
    x_adv = x.clone()
    if random_start:
        x_adv = (x_adv + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (gradient,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * gradient.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def trades_linf(model: nn.Module, x: torch.Tensor, eps: float, alpha: float, steps: int) -> torch.Tensor:
    """TRADES's inner maximisation (Zhang et al. 2019): inputs within `eps` (L-inf) of x, inside [0, 1], that
    push the model's prediction away from its prediction on x (KL divergence), labels unused.

    Starts at x plus Gaussian noise of scale 0.001 (the reference code's start), then `steps` sign steps of
    `alpha`, each projected back. The model's mode is left as it is.
    """
    if eps < 0 or alpha <= 0 or steps < 1:
        raise ValueError(f"trades_linf needs eps >= 0, alpha > 0, steps >= 1, got eps={eps}, alpha={alpha}, "
                         f"steps={steps}")
    x = x.detach()
    with torch.no_grad():
        clean_probabilities = F.softmax(model(x).float(), dim=1)
    x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        divergence = F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), clean_probabilities, reduction="sum")
        (gradient,) = torch.autograd.grad(divergence, x_adv)
        x_adv = x_adv.detach() + alpha * gradient.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def trades_loss(clean_logits: torch.Tensor, adversarial_logits: torch.Tensor, y: torch.Tensor,
                beta: float) -> torch.Tensor:
    """Cross-entropy on the clean images plus beta times the mean KL divergence of the adversarial prediction
    from the clean one; gradients flow through both."""
    divergence = F.kl_div(F.log_softmax(adversarial_logits.float(), dim=1), F.softmax(clean_logits.float(), dim=1),
                          reduction="batchmean")
    return F.cross_entropy(clean_logits, y) + beta * divergence
