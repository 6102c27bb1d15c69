"""Mel-cepstral distortion (MCD), the standard distance between two mel-cepstrum sequences.

    MCD[dB] = (10 / ln 10) * sqrt(2 * sum_{d=1..D} (c_d - c^_d)^2), averaged over frames

c0 (frame energy) is excluded by default, as is usual, since it measures loudness, not spectral
shape. `mcd` compares frame by frame (aligned sequences of equal length); `mcd_dtw` first aligns
the two with dynamic time warping on the same per-frame distance (librosa's DTW) and averages along
the path, for sequences of different timing or length.
"""

from __future__ import annotations

import numpy as np

MCD_CONSTANT = 10.0 / np.log(10.0) * np.sqrt(2.0)  # 6.14185... dB per unit of cepstral distance


def _pair(c: np.ndarray, ref: np.ndarray, include_c0: bool) -> tuple[np.ndarray, np.ndarray]:
    c, ref = np.atleast_2d(np.asarray(c, np.float64)), np.atleast_2d(np.asarray(ref, np.float64))
    if c.shape[1] != ref.shape[1]:
        raise ValueError(f"coefficient counts differ: {c.shape[1]} vs {ref.shape[1]}")
    first = 0 if include_c0 else 1
    return c[:, first:], ref[:, first:]


def mcd_frames(c: np.ndarray, ref: np.ndarray, *, include_c0: bool = False) -> np.ndarray:
    """Per-frame MCD (dB) of two aligned sequences (T, D)."""
    c, ref = _pair(c, ref, include_c0)
    if c.shape != ref.shape:
        raise ValueError(f"frame-synchronous MCD needs equal shapes, got {c.shape} and {ref.shape}")
    return MCD_CONSTANT * np.sqrt(((c - ref) ** 2).sum(axis=1))


def mcd(c: np.ndarray, ref: np.ndarray, *, include_c0: bool = False) -> float:
    """Mean frame-synchronous MCD (dB) of two aligned sequences (T, D)."""
    return float(mcd_frames(c, ref, include_c0=include_c0).mean())


def mcd_dtw(
    c: np.ndarray, ref: np.ndarray, *, include_c0: bool = False
) -> tuple[float, np.ndarray]:
    """MCD (dB) averaged along the DTW path that minimises the summed per-frame MCD.

    Returns the mean and the path (k, 2) of (index in c, index in ref), first frames first.
    Steps are (1, 1), (1, 0), (0, 1) with equal weight.
    """
    import librosa

    c, ref = _pair(c, ref, include_c0)
    cost = MCD_CONSTANT * np.sqrt(((c[:, None, :] - ref[None, :, :]) ** 2).sum(axis=-1))
    _, path = librosa.sequence.dtw(C=cost, backtrack=True)
    path = path[::-1]
    return float(cost[path[:, 0], path[:, 1]].mean()), path
