"""Seeds derived from coordinates: every random stream satpipe draws is a function of where it
is used (seed, epoch, step, rank, shard, ...), never of what ran before it in the process.
That is what makes resumed runs, dask workers and interrupted stores give the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

MASK63 = (1 << 63) - 1


def seed_words(entropy: int | Sequence[int], spawn_key: Sequence[int] = ()) -> tuple[int, int]:
    """Two 32-bit words from `np.random.SeedSequence(entropy, spawn_key=spawn_key)`."""
    state = np.random.SeedSequence(entropy, spawn_key=tuple(spawn_key)).generate_state(2, np.uint32)
    return int(state[0]), int(state[1])


def derive_seed(*words: int) -> int:
    """A 63-bit seed for the coordinates `words` (e.g. seed, epoch, purpose, rank); stable
    across runs, processes and platforms, and independent for different coordinates."""
    hi, lo = seed_words([int(w) for w in words])
    return (hi << 31) ^ lo


def generator(*words: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on `device` seeded by `derive_seed(*words)`."""
    return torch.Generator(device=device).manual_seed(derive_seed(*words))
