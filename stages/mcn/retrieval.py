"""Zero-shot text -> video retrieval metrics, with ties counted fairly.

For query i the candidates are every clip of the corpus, scored `scores[i, j]`; the true one is
clip i. The official `compute_metrics` counts a tie with the true clip as a hit; here a tie is an
even chance: the true clip's position is uniform over the tied positions, so

    R@K  = the expected share of queries whose true clip lands in the first K positions,
    MedR = the median of the average position (higher + ties / 2), plus 1.

A query marked as a miss (MSR-VTT's clips without a sound track, as the protocol has it) counts as
the last position.
"""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10)


def positions(
    scores: np.ndarray, misses: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per query, (candidates scored higher than the true one, other candidates tied with it)."""
    true = np.diag(scores)[:, None]
    higher = (scores > true).sum(1)
    ties = (scores == true).sum(1) - 1
    if misses is not None:
        higher = np.where(misses, len(scores) - 1, higher)
        ties = np.where(misses, 0, ties)
    return higher, ties


def recall_at(higher: np.ndarray, ties: np.ndarray, k: int) -> float:
    """Expected share of true clips in the first k positions, ties broken at random."""
    inside = np.clip(k - higher, 0, ties + 1) / (ties + 1)
    return float(inside.mean())


def metrics(scores: np.ndarray, misses: np.ndarray | None = None) -> dict[str, float]:
    higher, ties = positions(scores, misses)
    out = {f"r{k}": recall_at(higher, ties, k) for k in KS}
    out["median_rank"] = float(np.median(higher + ties / 2) + 1)
    return out


def chance(candidates: int) -> dict[str, float]:
    """The same metrics for a scorer that ranks at random."""
    out = {f"r{k}": min(k / candidates, 1.0) for k in KS}
    out["median_rank"] = (candidates + 1) / 2
    return out
