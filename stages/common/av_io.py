"""Minimal video/audio file I/O on PyAV (FFmpeg): write a talker video, read grey frames and audio.

Kept deliberately small and separate from the fuller `media` module being written for issue 3, so
the two can be merged: `probe`, `read_gray_frames`, `read_audio`, `write_video`. Every failure is a
`StageError` naming the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from stages.common.errors import StageError


@dataclass(frozen=True)
class MediaInfo:
    width: int
    height: int
    fps: float
    frames: int | None  # as the container says; None when it does not
    duration: float | None  # seconds of video
    sample_rate: int | None  # None: no audio track
    channels: int | None


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise StageError(path, "file not found")
    try:
        return av.open(str(path))
    except av.FFmpegError as exc:
        raise StageError(path, f"cannot open as a media file ({exc})") from None


def probe(path: str | Path) -> MediaInfo:
    """Stream facts of a media file without decoding it."""
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise StageError(path, "no video stream")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        duration = float(video.duration * video.time_base) if video.duration else None
        return MediaInfo(
            width=video.codec_context.width,
            height=video.codec_context.height,
            fps=float(video.average_rate or video.guessed_rate or 0),
            frames=video.frames or None,
            duration=duration,
            sample_rate=audio.codec_context.sample_rate if audio else None,
            channels=audio.codec_context.channels if audio else None,
        )


# 8-bit planar YUV: the luma plane is the grey picture, so no colour conversion is needed.
_YUV8 = {"yuv420p", "yuv422p", "yuv444p", "yuvj420p", "yuvj422p", "yuvj444p", "nv12", "nv21"}
# Limited-range (16..235) luma to full range, rounded: what FFmpeg's grey conversion does.
_LIMITED_TO_FULL = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)


def _gray(frame: av.VideoFrame, x: int, y: int, w: int, h: int) -> np.ndarray:
    """The box of one decoded frame as full-range grey uint8 (h, w).

    For 8-bit YUV the luma plane is cropped first: 4x faster than converting whole frames.
    """
    if frame.format.name not in _YUV8:
        return frame.to_ndarray(format="gray")[y : y + h, x : x + w].copy()
    plane = frame.planes[0]
    luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[y : y + h, x : x + w]
    full = frame.format.name.startswith("yuvj") or frame.color_range == 2  # 2: JPEG/full range
    return luma.copy() if full else _LIMITED_TO_FULL[luma]


def read_gray_frames(
    path: str | Path, box: tuple[int, int, int, int] | None = None, *, threads: int = 1
) -> tuple[np.ndarray, float]:
    """All frames as grey uint8 (T, h, w), cropped to box (x, y, width, height); and the fps.

    Grey is full-range luma (BT.601 weights, as FFmpeg's `gray` and PIL's `convert("L")`).
    `threads`: decoder threads (0 = FFmpeg's choice); stages run one process per core instead.
    """
    path = Path(path)
    out = []
    with _open(path) as container:
        if not container.streams.video:
            raise StageError(path, "no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        x, y, w, h = box if box else (0, 0, stream.codec_context.width, stream.codec_context.height)
        try:
            for frame in container.decode(stream):
                out.append(_gray(frame, x, y, w, h))
        except av.FFmpegError as exc:
            raise StageError(
                path, f"video decoding failed after {len(out)} frames ({exc})"
            ) from None
    if not out:
        raise StageError(path, "video stream has no frames")
    return np.stack(out), fps


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """The first audio track as float32 (samples, channels) in [-1, 1], and its sample rate."""
    path = Path(path)
    chunks = []
    with _open(path) as container:
        if not container.streams.audio:
            raise StageError(path, "no audio track (a talker recording needs its speech)")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        # Planar float keeps the rate and channels; FFmpeg drops the codec's priming samples.
        resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=rate)
        try:
            for frame in container.decode(stream):
                for converted in resampler.resample(frame):
                    chunks.append(converted.to_ndarray())
            for converted in resampler.resample(None):
                chunks.append(converted.to_ndarray())
        except av.FFmpegError as exc:
            raise StageError(path, f"audio decoding failed ({exc})") from None
    if not chunks:
        raise StageError(path, "audio track has no samples")
    return np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False), rate


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    size: tuple[int, int],
    fps: Fraction,
    audio: np.ndarray | None = None,
    sample_rate: int = 48000,
    *,
    crf: int = 18,
    audio_bitrate: int = 192_000,
) -> None:
    """Encode RGB frames (h, w, 3) uint8 as H.264 and float audio (samples, channels) as AAC, mp4.

    One encoder thread and no wall-clock metadata, so the same input gives the same bytes.
    """
    width, height = size
    with av.open(str(path), "w", format="mp4") as container:
        container.metadata.clear()
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.thread_count = 1
        video.options = {"crf": str(crf), "preset": "ultrafast"}  # 2x faster, files still small
        sound = None
        if audio is not None:
            layout = {1: "mono", 2: "stereo"}[audio.shape[1]]
            sound = container.add_stream("aac", rate=sample_rate, layout=layout)
            sound.codec_context.bit_rate = audio_bitrate
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None and audio is not None:
            planar = np.ascontiguousarray(audio.T, np.float32)
            block = 1024  # AAC frame size
            for lo in range(0, planar.shape[1], block):
                chunk = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(planar[:, lo : lo + block]), format="fltp", layout=layout
                )
                chunk.sample_rate = sample_rate
                chunk.pts = lo
                container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))
