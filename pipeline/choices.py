"""Closed choice sets of the saliency stage, torch-free so the CLI can show them cheaply.

`MethodName` mirrors the method registry (a test keeps them equal); `Normalization` is the
set `satpipe.pipeline.normalize.normalize` accepts.
"""

from __future__ import annotations

from enum import Enum


class Normalization(str, Enum):
    signed_maxabs = "signed-maxabs"
    minmax = "minmax"
    sign = "sign"


class MethodName(str, Enum):
    gradient = "gradient"
    smoothgrad = "smoothgrad"
    ig = "ig"
    gbp = "gbp"
    gradcam_pp = "gradcam++"
    guided_gradcam_pp = "guided-gradcam++"
    mask = "mask"
    bbox = "bbox"
    random = "random"


BENCH_METHODS = ("gradient", "smoothgrad", "ig", "gbp", "gradcam++", "guided-gradcam++")
