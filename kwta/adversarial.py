"""The small L-inf PGD that adversarial training (train.py --adv-train) runs inside its loop.

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
