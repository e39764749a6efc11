"""k-Winners-Take-All activations for adversarial-robustness research."""

from kwta.functional import kwta
from kwta.modules import KWTA, replace_relu

__all__ = ["kwta", "KWTA", "replace_relu"]
