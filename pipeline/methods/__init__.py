"""Saliency methods behind one registry: `get_method("smoothgrad", samples=50, sigma=0.15)`.

Every method maps `(model, x in [0, 1] (B, C, H, W), target (B,))` to a raw attribution
`(B, 1 or C, H, W)` float32 of the target logit; normalisation is a separate step
(`satpipe.pipeline.normalize`). One file per method; importing this package registers them all.
"""

from satpipe.core.modules import frozen
from satpipe.pipeline.methods import (  # noqa: F401  (imported to register the methods)
    bbox,
    gbp,
    gradcam_pp,
    gradient,
    guided_gradcam_pp,
    ig,
    mask,
    random_control,
    smoothgrad,
)
from satpipe.pipeline.methods.base import Method
from satpipe.pipeline.methods.registry import (
    METHODS,
    get_method,
    method_params,
    model_methods,
    register_method,
)

__all__ = [
    "METHODS",
    "Method",
    "frozen",
    "get_method",
    "method_params",
    "model_methods",
    "register_method",
]
