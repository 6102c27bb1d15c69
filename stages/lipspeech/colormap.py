"""Spectrogram pictures for preview PNGs: dB values through a perceptual colour ramp."""

from __future__ import annotations

import numpy as np

# Anchor colours of a magma-like ramp (black -> purple -> orange -> pale yellow).
RAMP = np.array(
    [[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]],
    np.float64,
)


def colorize(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map values to RGB uint8 (..., 3): lo and below -> black, hi and above -> pale yellow."""
    x = np.clip((np.asarray(values, np.float64) - lo) / (hi - lo), 0.0, 1.0) * (len(RAMP) - 1)
    i = np.minimum(x.astype(int), len(RAMP) - 2)
    f = (x - i)[..., None]
    return np.round(RAMP[i] * (1 - f) + RAMP[i + 1] * f).astype(np.uint8)


def spectrogram_image(db: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A (frames, bins) dB array as RGB (bins, frames, 3), low frequencies at the bottom."""
    return colorize(np.asarray(db).T[::-1], lo, hi)
