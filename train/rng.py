"""The training loop's randomness: the per-step generator every draw of a step comes from, and
the global RNG states a checkpoint carries so a resumed run continues exactly."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from satpipe.core.seeding import generator

__all__ = ["STEP_STREAM", "rng_state", "set_rng_state", "step_generator"]

STEP_STREAM = 0x5A7  # tags the per-step streams apart from every other seeded stream


def step_generator(
    seed: int, epoch: int, step: int, rank: int, device: torch.device
) -> torch.Generator:
    """The generator for all randomness of one training step: a function of its coordinates."""
    return generator(seed, epoch, step, rank, STEP_STREAM, device=device)


def rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and plain values (loadable with weights_only=True).

    The loop draws from per-step generators only; these are saved so code that does use the
    global generators (a user's model, say) resumes exactly too.
    """
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore `rng_state()`'s states. CUDA: only `device`'s own generator (this process's
    GPU), from the state saved for the same index; a checkpoint saved on 8 GPUs resumes on 1,
    and a state for an index this machine lacks is not restored (nothing draws from it)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    saved = state.get("cuda")
    if saved is None or device is None or device.type != "cuda":
        return
    index = 0 if device.index is None else device.index
    if index < len(saved):
        torch.cuda.set_rng_state(saved[index], index)
