"""Sizes that depend on the device: images per call and per forward pass.

A CPU runs small passes fastest (caches: passes of ~64 small images ran 1.5-2.4x faster per
image than passes of 640), a GPU large ones (small passes leave it idle). Every size here is
a default only: a value the user gives wins, and the value used is recorded where it changes
results (saliency stores: compute.batch_size and the method's params; scores: their settings),
so a store made on one device resumes on another with the sizes it was made with.

On CUDA a forward pass is sized to about PASS_PIXELS input pixels (2^21: 2048 images of
32x32, 41 of 224x224), which keeps a ResNet's activations and their gradients within a few GiB.
"""

from __future__ import annotations

PASS_PIXELS = 2**21
CPU_BATCH = 64  # images per method / score call on a CPU
MAX_CUDA_BATCH = 1024
MIN_CUDA_BATCH = 16


def _kind(device: object) -> str:
    return getattr(device, "type", None) or str(device).split(":")[0]


def batch_size(device: object, height: int, width: int) -> int:
    """Images per saliency-method call or score batch: 64 on a CPU; on CUDA
    PASS_PIXELS / (H W), within [16, 1024]."""
    if _kind(device) != "cuda":
        return CPU_BATCH
    return max(MIN_CUDA_BATCH, min(MAX_CUDA_BATCH, PASS_PIXELS // max(1, height * width)))


def samples_per_pass(device: object, batch: int, height: int, width: int, samples: int) -> int:
    """SmoothGrad's noisy copies per image per forward pass: 1 on a CPU (the pass is the
    batch); on CUDA as many as fit PASS_PIXELS with the batch, within [1, samples]."""
    if _kind(device) != "cuda":
        return 1
    return max(1, min(samples, PASS_PIXELS // max(1, batch * height * width)))


def ig_internal_batch(device: object, batch: int, height: int, width: int) -> int:
    """Integrated Gradients' images per forward pass across its steps: 64 on a CPU (one step
    of the batch per pass); on CUDA whole steps of the batch filling PASS_PIXELS."""
    if _kind(device) != "cuda":
        return CPU_BATCH
    return batch * max(1, PASS_PIXELS // max(1, batch * height * width))
