"""The three feature tables of one corpus joined clip by clip, as MCN trains and evaluates on them.

Rows are (video, clip) keys present in all three tables (`video/clips`, `audio/windows-<W>`,
`text/words`), in key order. A clip is usable for training when its video span was not empty, its
audio window decoded (`ok`) and its caption has a known word; evaluation keeps every clip with a
video and text row and marks the ones without sound (`has_audio`), which the protocol scores as
misses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.common import dataset
from stages.common.errors import StageError


@dataclass(frozen=True)
class FeatureDirs:
    """The feature stages' output folders."""

    video: Path
    audio: Path
    text: Path


@dataclass(frozen=True)
class Clips:
    videos: np.ndarray  # (n,) video id of each clip: clips of one video are not negatives
    video: np.ndarray  # (n, 2048) float32, L2-normalised pooled ResNet feature
    audio: np.ndarray  # (n, 40, W) float16 log-mel window, zero-padded
    audio_frames: np.ndarray  # (n,) valid frames of each window
    has_audio: np.ndarray  # (n,) bool
    words: np.ndarray  # (n, 20, 300) float32 word vectors, zero-padded
    n_words: np.ndarray  # (n,)

    def __len__(self) -> int:
        return len(self.videos)

    def take(self, rows: np.ndarray) -> Clips:
        return Clips(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


def _table(folder: Path, corpus: str, columns: list[str]) -> dict[str, np.ndarray]:
    rows = dataset.read_arrays(folder, ["corpus", "video", "clip", *columns])
    keep = rows["corpus"] == corpus
    if not keep.any():
        raise StageError(folder, f"has no rows of corpus {corpus!r}")
    return {k: v[keep] for k, v in rows.items()}


def _keys(rows: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([f"{v}\t{c}" for v, c in zip(rows["video"], rows["clip"], strict=True)])


def load(features: FeatureDirs, corpus: str, window: int) -> Clips:
    """Every clip of `corpus` with a row in all three tables, in (video, clip) order."""
    video = _table(features.video / "clips", corpus, ["empty", "feature"])
    audio = _table(features.audio / f"windows-{window}", corpus, ["status", "n_frames", "window"])
    text = _table(features.text / "words", corpus, ["n_words", "words"])
    tables = [video, audio, text]
    keys = [_keys(t) for t in tables]
    common = sorted(set(keys[0]) & set(keys[1]) & set(keys[2]))
    if not common:
        raise StageError(
            features.video, f"no clip of corpus {corpus!r} is in all three feature tables"
        )
    at = [dict(zip(k, range(len(k)), strict=True)) for k in keys]
    rows = [np.array([a[key] for key in common]) for a in at]
    v, a, t = (table_rows(table, r) for table, r in zip(tables, rows, strict=True))
    return Clips(
        videos=v["video"],
        video=v["feature"].astype(np.float32) * ~v["empty"][:, None],
        audio=a["window"],
        audio_frames=a["n_frames"].astype(np.int64),
        has_audio=a["status"] == "ok",
        words=t["words"].astype(np.float32),
        n_words=t["n_words"].astype(np.int64),
    )


def table_rows(table: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[rows] for k, v in table.items()}


def trainable(clips: Clips) -> np.ndarray:
    """Rows fit for training: a video feature, sound and at least one known word."""
    has_video = np.abs(clips.video).sum(1) > 0
    return np.flatnonzero(has_video & clips.has_audio & (clips.n_words > 0))
