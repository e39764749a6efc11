"""k-Winners-Take-All activations for adversarial-robustness research.

    from kwta import kwta, KWTA, replace_relu      # the operator, its module, the swap into existing networks
    result = kwta.evaluate(model, images, labels, eps=8 / 255)   # the attack suite on any model, in one call
"""

from kwta.functional import kwta
from kwta.modules import KWTA, replace_relu

__all__ = ["kwta", "KWTA", "replace_relu", "evaluate", "Evaluation"]


def __getattr__(name: str):
    # The evaluation pulls in the attacks and torchvision: loaded on first use, not by `import kwta`.
    if name in ("evaluate", "Evaluation"):
        from kwta import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module 'kwta' has no attribute {name!r}")
