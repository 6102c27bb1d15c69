"""Real media files for tests: recordings whose frames say their own index, and broken files.

Frame i shows i as 16 coloured blocks (bit set: red, clear: blue) in two rows of eight, so a
decoded, resized and compressed frame still tells which source frame it is, and that its channels
are in RGB order. The sound is a quiet sine per channel with loud 20 ms clicks at known times.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from stages.common.media import write_media

ON, OFF = (230, 40, 40), (20, 20, 120)


def pattern_frame(index: int, height: int, width: int) -> np.ndarray:
    bits = (index >> np.arange(16)) & 1
    blocks = np.where(bits[:, None], ON, OFF).astype(np.uint8).reshape(2, 8, 3)
    rows = np.arange(height) * 2 // height
    cols = np.arange(width) * 8 // width
    return blocks[rows[:, None], cols[None, :]]


def frame_index(image: np.ndarray) -> int:
    """Read back the index of a (possibly resized) pattern frame."""
    h, w = image.shape[:2]
    bits = 0
    for b in range(16):
        r, c = divmod(b, 8)
        block = image[r * h // 2 : (r + 1) * h // 2, c * w // 8 : (c + 1) * w // 8]
        inner = block[
            block.shape[0] // 4 : -block.shape[0] // 4, block.shape[1] // 4 : -block.shape[1] // 4
        ]
        bits |= int(inner[..., 0].mean() > 128) << b
    return bits


def pattern_audio(seconds: float, rate: int, clicks: list[float], channels: int = 2) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    audio = np.stack([0.2 * np.sin(2 * np.pi * (440 + 220 * c) * t) for c in range(channels)])
    for at in clicks:
        audio[:, round(at * rate) : round((at + 0.02) * rate)] = 0.9
    return audio.astype(np.float32)


def write_pattern(
    path: Path,
    seconds: float,
    fps: int,
    size: tuple[int, int],
    *,
    rate: int = 48000,
    clicks: tuple[float, ...] = (),
    audio: bool = True,
) -> Path:
    """A recording of pattern frames (size = (width, height)) with clicks at `clicks` seconds."""
    width, height = size
    frames = (pattern_frame(i, height, width) for i in range(round(seconds * fps)))
    sound = pattern_audio(seconds, rate, list(clicks)) if audio else None
    write_media(path, frames, fps, sound, rate, crf=18)
    return path


def write_audio_only(path: Path, seconds: float = 2.0, rate: int = 48000) -> Path:
    """An MP4 with an AAC track and no video stream."""
    audio = pattern_audio(seconds, rate, [])
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate, layout="stereo")
        for lo in range(0, audio.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio[:, lo : lo + 1024]), format="fltp", layout="stereo"
            )
            frame.rate, frame.pts = rate, lo
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def truncate(source: Path, target: Path, keep: float = 0.5) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


def remux_faststart(source: Path, target: Path) -> Path:
    """Copy an MP4 with its index (moov) moved to the front, as streaming MP4s have it."""
    with (
        av.open(str(source)) as inp,
        av.open(str(target), "w", format="mp4", options={"movflags": "+faststart"}) as out,
    ):
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return target


def pyav_frames(path: Path, size: int) -> list[np.ndarray]:
    """Every frame decoded by PyAV and resized to size x size: the reference for decord."""
    with av.open(str(path)) as container:
        return [
            f.reformat(width=size, height=size, format="rgb24").to_ndarray()
            for f in container.decode(video=0)
        ]


def pyav_gray(path: Path) -> list[np.ndarray]:
    """Every frame converted to grey by FFmpeg (swscale): the reference for the grey reader."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="gray") for f in container.decode(video=0)]


def pyav_audio(path: Path) -> tuple[np.ndarray, int]:
    """The whole track decoded by PyAV, mono, and its rate: the reference for clip audio."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = [f.to_ndarray() for f in container.decode(stream)]
        return np.concatenate(chunks, axis=1).mean(axis=0), stream.codec_context.sample_rate
