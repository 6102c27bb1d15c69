"""Seeding: every random stream is derived from the params seed plus names, never from global state.

`rng(seed, "motionmnist", chunk)` gives the same numbers whatever else ran before it, in whichever
process, so work can be split across workers without changing the output.
"""

from __future__ import annotations

import zlib

import numpy as np


def _key(part: int | str) -> int:
    if isinstance(part, str):
        return zlib.crc32(part.encode())
    if part < 0:
        raise ValueError(f"seed keys must be non-negative, got {part}")
    return int(part)


def rng(seed: int, *keys: int | str) -> np.random.Generator:
    """A generator for the stream named by `keys` under `seed`, independent of all other streams."""
    sequence = np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(_key(k) for k in keys))
    return np.random.Generator(np.random.PCG64(sequence))


def seed_torch(seed: int) -> None:
    """Seed torch (CPU and CUDA) and ask for deterministic kernels where torch has them."""
    import torch

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
