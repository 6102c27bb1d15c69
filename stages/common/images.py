"""Preview images for reports (DVC image plots)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from stages.common.atomic import atomic_file


def save_grid(path: str | Path, tiles: np.ndarray, *, border: int = 2, fill: int = 64) -> None:
    """Save a grid of uint8 tiles (rows, cols, h, w[, 3]) as one PNG, `border` px apart."""
    rows, cols, h, w = tiles.shape[:4]
    channels = tiles.shape[4:]
    grid = np.full(
        (rows * (h + border) + border, cols * (w + border) + border, *channels), fill, np.uint8
    )
    for r in range(rows):
        for c in range(cols):
            y, x = border + r * (h + border), border + c * (w + border)
            grid[y : y + h, x : x + w] = tiles[r, c]
    with atomic_file(path) as handle:
        Image.fromarray(grid).save(handle, format="PNG")
