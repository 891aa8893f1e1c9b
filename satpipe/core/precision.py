"""Process-wide numerics settings for CUDA: full fp32 for evaluation, and the deterministic
mode (or cuDNN's autotuner) for training and saliency runs.

- `fp32_math()`: TF32 off for cuDNN convolutions and CUDA matmuls inside the block (PyTorch
  lets cuDNN convolutions use TF32 by default on Ampere and later, a 10-bit mantissa), the
  previous flags restored after it. Evaluation runs inside it: attacks are not to be weakened
  by reduced precision.
- `configure(device, deterministic)`: with `deterministic`, torch.use_deterministic_algorithms
  (an op without a deterministic implementation raises instead of varying), cuBLAS's fixed
  workspace (CUBLAS_WORKSPACE_CONFIG=:4096:8, which torch requires for it), cudnn.deterministic
  and no cudnn.benchmark; without it, on CUDA, cudnn.benchmark (the batch shapes are fixed, so
  the autotuned kernels pay for the first batches' search). Returns the settings, for the
  record.

On a CPU these settings change nothing satpipe runs: its CPU results are bitwise reproducible
without them (docs/reference.md, "Determinism").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

CUBLAS_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def fp32_math() -> Iterator[None]:
    """TF32 off (cuDNN convolutions, CUDA matmuls) inside the block; the flags as they were
    after it, also when the block raises."""
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def configure(device: torch.device | str, deterministic: bool = False) -> dict[str, Any]:
    """Set this process's cuDNN/cuBLAS/algorithm settings for work on `device` (see the module
    docstring) and return them: {"deterministic", "cudnn_benchmark", "cublas_workspace"}.

    Deterministic mode is process-wide: once asked for, it stays on for the process (a later
    call without it leaves it on, and keeps cudnn.benchmark off)."""
    cuda = torch.device(device).type == "cuda"
    if deterministic:
        # Read by cuBLAS when its handle is created: set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
    on = torch.are_deterministic_algorithms_enabled()
    torch.backends.cudnn.benchmark = cuda and not on
    return {
        "deterministic": on,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG") if on else None,
    }
