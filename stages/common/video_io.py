"""Minimal video and audio readers for feature extraction (decord frames, PyAV audio).

Kept behind this one module because decord is unmaintained (`../shared/specs/orchestration.md`):
swapping the backend touches nothing else. Memory is bounded by design: frames come in chunks of
at most `chunk` seconds, decoded straight at the target size, never the whole video at once.
Unreadable input raises `MediaError`, whose `kind` lets corpus-scale callers record a failure row
and go on.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.common.errors import StageError


class MediaError(StageError):
    """A video or audio file that cannot be used; `kind` is 'corrupt' or 'no_audio'."""

    def __init__(self, where: str | Path, problem: str, kind: str) -> None:
        super().__init__(where, problem)
        self.kind = kind


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int


def _reader(path: Path, width: int = -1, height: int = -1):
    import decord

    if not path.is_file():
        raise MediaError(path, "video file not found", "corrupt")
    try:
        reader = decord.VideoReader(
            str(path), ctx=decord.cpu(0), width=width, height=height, num_threads=1
        )
    except Exception as exc:  # decord raises its own DECORDError or RuntimeError
        raise MediaError(
            path, f"cannot open video ({str(exc).splitlines()[0][:200]})", "corrupt"
        ) from None
    if len(reader) == 0:
        raise MediaError(path, "video stream has no frames", "corrupt")
    return reader


def probe_video(path: str | Path) -> VideoInfo:
    reader = _reader(Path(path))
    height, width = reader[0].shape[:2]
    fps = float(reader.get_avg_fps())
    if not fps > 0:
        raise MediaError(path, f"invalid frame rate {fps}", "corrupt")
    return VideoInfo(len(reader), fps, int(width), int(height))


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side `short_side`, aspect kept, no crop: 454x256 -> 397x224."""
    if height >= width:
        return short_side, int(height * short_side / width)
    return int(width * short_side / height), short_side


def second_indices(frames: int, fps: float) -> np.ndarray:
    """Frame index nearest to t = 0, 1, 2, ... s (ffmpeg's fps=1 filter), one per whole second.

    A video shorter than one second gets its first frame (the documented fallback; the reference
    extractor produced nothing for it).
    """
    seconds = max(1, math.floor(frames / fps + 1e-9))
    return np.minimum(np.round(np.arange(seconds) * fps).astype(np.int64), frames - 1)


def iter_second_frames(
    path: str | Path, short_side: int, chunk: int, info: VideoInfo | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first second, uint8 frames (n <= chunk, h, w, 3)) at 1 fps, short side scaled.

    decord scales while decoding, so a chunk holds `chunk` frames of the target size and nothing
    else; indices go forward only (decord's accurate seeks grow memory when they jump around).
    """
    path = Path(path)
    info = info or probe_video(path)
    width, height = scaled_size(info.width, info.height, short_side)
    reader = _reader(path, width, height)
    indices = second_indices(info.frames, info.fps)
    for lo in range(0, len(indices), chunk):
        try:
            batch = reader.get_batch(indices[lo : lo + chunk].tolist()).asnumpy()
        except Exception as exc:
            raise MediaError(
                path, f"decoding failed at second {lo} ({exc})"[:300], "corrupt"
            ) from None
        yield lo, batch


def read_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """The first audio stream as float32 mono at `sample_rate` (PyAV decode + libswresample)."""
    import av

    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(path, f"cannot open ({exc})", "corrupt") from None
    with container:
        if not container.streams.audio:
            raise MediaError(path, "no audio stream", "no_audio")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        parts = []
        try:
            for frame in container.decode(stream):
                parts.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            parts.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
        except av.FFmpegError as exc:
            raise MediaError(path, f"audio decoding failed ({exc})", "corrupt") from None
    if not parts:
        raise MediaError(path, "audio stream has no samples", "no_audio")
    return np.concatenate(parts).astype(np.float32, copy=False)
