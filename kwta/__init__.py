"""k-Winners-Take-All activations for adversarial-robustness research.

    from kwta import kwta, KWTA, replace_relu      # the operator, its module, the swap into existing networks
    result = kwta.evaluate(model, images, labels, eps=8 / 255)   # the attack suite on any model, in one call
    model = kwta.load_released("fashion-mnist/kwta-0.2")          # a network this project trained and released
"""

from kwta.functional import kwta
from kwta.modules import KWTA, replace_relu

__all__ = ["kwta", "KWTA", "replace_relu", "evaluate", "Evaluation", "load_released"]


def __getattr__(name: str):
    # The evaluation and the releases pull in the attacks and torchvision: loaded on first use, not by `import kwta`.
    if name in ("evaluate", "Evaluation"):
        from kwta import evaluation

        return getattr(evaluation, name)
    if name == "load_released":
        from kwta.released import load_released

        return load_released
    raise AttributeError(f"module 'kwta' has no attribute {name!r}")
