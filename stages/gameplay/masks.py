"""Sprite masks: which pixels of a gameplay frame are sprites and which show the level itself.

The stand-in renderer knows it (a pixel is background when it equals the bare level's), so it writes
one mask file per recording beside the video: a Parquet file, one row per frame, 1 = sprite. The
clip stage carries the masks into the clips at the clips' frame size, and the evaluation scores
"background recovered" and "details recovered" on them. Real recordings have no masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.common import dataset
from stages.common.errors import StageError

SCHEMA_NAME = "gameplay-sprite-masks/v1"


def schema(height: int, width: int, fps: int) -> dataset.SampleSchema:
    return dataset.SampleSchema(
        name=SCHEMA_NAME,
        doc="Per frame of one recording, 1 where a sprite (player, enemy, item, block) is drawn "
        "over the level, 0 where the pixel shows the level (the background) itself.",
        columns=(
            dataset.Column("frame", pa.int32(), f"frame index ({fps} fps)"),
            dataset.ArrayColumn("sprites", "uint8", (height, width), "1 = sprite, 0 = background"),
        ),
        metadata={"fps": fps},
    )


def mask_path(folder: Path, recording: str) -> Path:
    """The mask file of a recording (`rec-000.mp4` -> `folder/rec-000.parquet`)."""
    return folder / f"{Path(recording).stem}.parquet"


def check_file(path: Path) -> None:
    """Refuse, naming the file, anything that is not a mask file."""
    if not path.is_file():
        raise StageError(path, "sprite mask file not found (gameplay_clips.masks names the folder)")
    try:
        described = dataset.describe_file(path)
    except (StageError, OSError, pa.ArrowException) as exc:
        raise StageError(path, f"not a sprite mask file ({str(exc).splitlines()[0]})") from None
    if described["name"] != SCHEMA_NAME:
        raise StageError(path, f"not a sprite mask file (schema {described['name']!r})")


def read_frames(path: Path, indices: np.ndarray) -> np.ndarray:
    """The masks (n, H, W) of the frames `indices` (ascending) of one recording; only the row
    groups that hold them are read."""
    lo, hi = int(indices.min()), int(indices.max())
    table = pq.read_table(path, filters=[("frame", ">=", lo), ("frame", "<=", hi)])
    rows = dataset.to_numpy(table)
    frames = rows["frame"]
    at = np.searchsorted(frames, indices)
    if len(frames) == 0 or at.max() >= len(frames) or np.any(frames[at] != indices):
        raise StageError(path, f"has no mask for frames {lo}..{hi} of its recording")
    return rows["sprites"][at]


def downsample(masks: np.ndarray, size: int) -> np.ndarray:
    """(n, H, W) -> (n, size, size): a cell is 1 when any source pixel in it, or in a neighbouring
    cell, is a sprite. The frames are resized with interpolation, so a sprite's colour bleeds into
    the cells next to it: those are not clean background either."""
    _, height, width = masks.shape
    # the first source row (column) of each cell; clipped, so upsampling repeats the nearest one
    rows = np.searchsorted(np.arange(height) * size // height, np.arange(size)).clip(0, height - 1)
    cols = np.searchsorted(np.arange(width) * size // width, np.arange(size)).clip(0, width - 1)
    cells = np.maximum.reduceat(np.maximum.reduceat(masks, rows, axis=1), cols, axis=2)
    padded = np.pad(cells, ((0, 0), (1, 1), (1, 1)))
    grown = np.zeros_like(cells)
    for dy in range(3):
        for dx in range(3):
            np.maximum(grown, padded[:, dy : dy + size, dx : dx + size], out=grown)
    return grown
