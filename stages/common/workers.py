"""How many worker processes a stage uses."""

from __future__ import annotations

import os


def worker_count(requested: int) -> int:
    """`requested` workers, or one per core available to this process when it is 0."""
    if requested < 0:
        raise ValueError(f"workers must be >= 0, got {requested}")
    return requested or len(os.sched_getaffinity(0))
