"""The project's media reader and writer: probe a recording, read frames and audio by time.

The only module that touches decord or PyAV, so that swapping a backend touches one file:
- `probe` / `require_audio`: what a recording holds, checked (truncation, undecodable streams);
- `FrameReader`: RGB frames by time, resized (decord: frame-accurate seeking, resize in C);
- `read_gray_frames`: every frame of a recording as grey, cropped to a box (PyAV: the luma plane is
  cropped before any conversion, for region features such as the lip stages');
- `AudioReader`: mono audio by time span (surround downmixed by FFmpeg), resampled, or a whole
  track as decoded (PyAV, because decord's audio reader is unmaintained and returns NaNs on
  stereo input);
- `write_media`: the one encoder (H.264 + AAC, or VP9 + Opus), deterministic;
- for feature extraction at corpus scale: `iter_second_frames` (1 fps, short side scaled, in
  chunks of bounded memory, on `FrameReader`; `probe_frames`, `scaled_size`, `second_indices`)
  and `read_audio` (a whole track to mono at a rate, resampled by FFmpeg).

Every problem is a `MediaError` (a `StageError`) whose `kind` (missing, corrupt, no_audio, short,
unsupported) lets corpus-scale stages record a failure row and go on.

Everything is addressed by time in seconds on the recording's timeline: 0 is the first video frame
(as in decord, and as players show it), whatever offset the container gives its streams (MPEG-TS
starts at an arbitrary clock); edit lists and AAC priming are applied by FFmpeg. So frames and
audio of the same span line up. Readers seek: memory depends on the span read, never on the
length of the recording.

`write_media` encodes H.264 + AAC with settings that make the bytes a pure function of the input
(single-threaded x264 without assembly, FFmpeg's bitexact mode), for synthetic stand-ins and tests.
"""

from __future__ import annotations

import ctypes
import functools
import math
import platform
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soxr

from stages.common.errors import StageError

# Frames whose presentation starts within this many seconds after a requested time count as shown
# at that time: absorbs float rounding of timestamps (decord reports them as float32).
TIME_EPS = 1e-4
# Audio is decoded from this long before a span: decoders converge only after a seek plus some
# pre-roll (AAC: one frame; Opus: 80 ms and more after a cold start), and the resampler needs
# context at the span's edges.
AUDIO_MARGIN = 0.2
# x264 runs its plain C code (no assembly): the same bytes on every x86-64 CPU and on every call.
# It picks SIMD kernels by CPU at run time and they are not all bit-exact (the SSSE3-and-up paths
# give other bytes than SSE2 and C; mbtree's SSE2-AVX2 kernels use rcpps, whose bits are
# vendor-specific), and its AVX-512 mbtree_propagate_list reads past a row of a frame that is not a
# multiple of 128 px wide: on AVX-512 CPUs the bytes then changed between calls. ~2.4x x264 time.
X264_PARAMS = "asm=0"
# FFmpeg also picks SIMD kernels by CPU, and its AAC encoder's differ in the last bits (CPUs with
# AVX2, with AVX only and with SSE only gave three different AAC streams of the same audio), so
# while encoding they are held to x86-64's baseline (MMX, MMXEXT, SSE, SSE2, CMOV): every x86-64
# CPU has them, and swscale's RGB -> YUV conversion gives the same bytes with them.
_X86_64_BASELINE = 0x1 | 0x2 | 0x8 | 0x10 | 0x1000  # libavutil/cpu.h AV_CPU_FLAG_*


class MediaError(StageError):
    """A recording that cannot be used, classified by `kind` so that corpus-scale stages can
    record a failure row and go on: 'missing', 'corrupt', 'no_audio', 'short' or 'unsupported'.

    Every media problem raised here is one; being a `StageError`, it reads the same to the CLI.
    """

    def __init__(self, where: str | Path, problem: str, kind: str) -> None:
        super().__init__(where, problem)
        self.kind = kind

    def __reduce__(self) -> tuple:
        return type(self), (self.where, self.problem, self.kind)


@dataclass(frozen=True)
class VideoInfo:
    fps: float  # average frame rate
    width: int
    height: int
    frames: int  # frames found by demuxing (not the header's claim)
    codec: str
    end: float  # s, where the stream's data ends on the recording's timeline


@dataclass(frozen=True)
class AudioInfo:
    rate: int
    channels: int
    codec: str
    end: float  # s, where the stream's data ends on the recording's timeline


@dataclass(frozen=True)
class MediaInfo:
    path: Path
    duration: float  # seconds both streams cover (the shorter of video and audio)
    video: VideoInfo
    audio: AudioInfo | None


def probe(path: str | Path) -> MediaInfo:
    """Describe a recording, checking that it really decodes and is not truncated.

    Reads every packet header (no decoding) to find where each stream's data ends, and decodes the
    first frame of each stream. Any problem is a `StageError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "recording not found", "missing")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(path, "no video stream", "corrupt")
            if container.format.name == "mpegts":
                # decord seeks to wrong frames in MPEG-TS (its streams have no sample index).
                raise MediaError(
                    path,
                    "MPEG-TS is not supported: remux it first (ffmpeg -i IN -c copy OUT.mkv)",
                    "unsupported",
                )
            vs = container.streams.video[0]
            aus = container.streams.audio[0] if container.streams.audio else None
            claimed = _claimed_end(container)
            ends = _demux_ends(container, _origin(vs))
            _decode_first(container, vs, aus, path)
            info_video = VideoInfo(
                fps=float(vs.average_rate or vs.guessed_rate or 0),
                width=vs.codec_context.width,
                height=vs.codec_context.height,
                frames=ends.get("frames", 0),
                codec=vs.codec_context.name,
                end=ends["video"],
            )
            info_audio = None
            if aus is not None:
                info_audio = AudioInfo(
                    rate=aus.codec_context.sample_rate,
                    channels=aus.codec_context.channels,
                    codec=aus.codec_context.name,
                    end=ends.get("audio", 0.0),
                )
    except StageError:
        raise
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(path, f"cannot be decoded ({exc})", "corrupt") from None
    if info_video.frames == 0 or info_video.fps <= 0:
        raise MediaError(path, "video stream has no frames", "corrupt")
    # The header claims the longer stream's length: only data ending before it is truncation (an
    # audio track that simply ends before the video is not; `duration` is what both cover).
    data_end = max(ends["video"], ends.get("audio", 0.0))
    if claimed is not None and data_end < claimed - 0.5:
        raise MediaError(
            path,
            f"truncated: data ends at {data_end:.2f} s, the header says {claimed:.2f} s",
            "corrupt",
        )
    duration = ends["video"] if aus is None else min(ends["video"], ends.get("audio", 0.0))
    return MediaInfo(path, duration, info_video, info_audio)


def _claimed_end(container: av.container.InputContainer) -> float | None:
    return None if container.duration is None else container.duration / av.time_base


def _origin(video: av.video.stream.VideoStream) -> float:
    """Container time of the first video frame: time 0 of the recording's timeline."""
    return 0.0 if video.start_time is None else float(video.start_time * video.time_base)


def _demux_ends(container: av.container.InputContainer, origin: float) -> dict:
    """End time of each stream's last packet and the video packet count, from packet headers."""
    ends: dict = {"video": 0.0, "frames": 0}
    streams = [container.streams.video[0], *container.streams.audio[:1]]
    seconds = {s.index: float(s.time_base) for s in streams}  # floats: Fractions are slow
    for packet in container.demux(streams):
        if packet.pts is None or packet.size == 0:
            continue
        kind = packet.stream.type
        end = (packet.pts + (packet.duration or 0)) * seconds[packet.stream_index] - origin
        ends[kind] = max(ends.get(kind, 0.0), end)
        if kind == "video":
            ends["frames"] += 1
    return ends


def _decode_first(container: av.container.InputContainer, vs, aus, path: Path) -> None:
    for stream in (vs, aus):
        if stream is None:
            continue
        container.seek(0)
        for _ in container.decode(stream):
            break
        else:
            raise MediaError(path, f"{stream.type} stream decodes to nothing", "corrupt")


def require_audio(info: MediaInfo) -> AudioInfo:
    """The audio of a probed recording, or a `StageError` naming it."""
    if info.audio is None:
        raise MediaError(info.path, "no audio track", "no_audio")
    return info.audio


def sample_times(start: float, count: int, fps: float) -> np.ndarray:
    """The `count` instants start, start + 1/fps, ... at which a resampled clip shows a frame."""
    return start + np.arange(count, dtype=np.float64) / fps


BRIDGE_MAX = 8  # frames: see FrameReader.bridged


class FrameReader:
    """Frames of one recording by time, decoded and resized by decord.

    Opening reads the recording's packet index once (cheap next to decoding); `frames_at` seeks to
    the key frame before the first requested time and decodes forward, so reading a clip costs the
    clip (plus at most one GOP), whatever the recording's length.
    """

    def __init__(self, path: str | Path, size: tuple[int, int] | None = None, threads: int = 1):
        import decord

        self.path = Path(path)
        self.size = size
        width, height = size if size is not None else (-1, -1)
        try:
            self._reader = decord.VideoReader(
                str(self.path), width=width, height=height, num_threads=threads
            )
            self.starts = self._reader.get_frame_timestamp(np.arange(len(self._reader)))[:, 0]
            self._keys = np.asarray(self._reader.get_key_indices(), np.int64)
        except Exception as exc:  # decord raises its own DECORDError / RuntimeError
            raise MediaError(
                self.path, f"cannot be decoded ({_first_line(exc)})", "corrupt"
            ) from None
        self.starts = self.starts.astype(np.float64)

    def indices_at(self, times: np.ndarray) -> np.ndarray:
        """Index of the frame on screen at each time: the last one starting at or before it."""
        index = np.searchsorted(self.starts, np.asarray(times) + TIME_EPS, side="right") - 1
        return np.clip(index, 0, len(self.starts) - 1)

    def frames_at(self, times: np.ndarray) -> np.ndarray:
        """RGB frames (n, h, w, 3) uint8 shown at `times` (seconds, ascending)."""
        wanted = self.indices_at(times)
        bridges = self.bridges(wanted)
        read = np.union1d(wanted, bridges) if bridges.size else wanted
        try:
            frames = self._batch(read)
        except Exception as exc:
            if "size must exactly match" in str(exc):  # not the file: decord's frame copy
                raise MediaError(
                    self.path,
                    f"decord cannot output {'x'.join(map(str, self.size or ('native',)))} frames "
                    "(its row-padding bug with some small sizes, e.g. 16, 48 or 72 px): choose "
                    "another size",
                    "unsupported",
                ) from None
            raise MediaError(
                self.path, f"cannot be decoded ({_first_line(exc)})", "corrupt"
            ) from None
        return frames[np.searchsorted(read, wanted)] if bridges.size else frames

    def bridges(self, indices: np.ndarray) -> np.ndarray:
        """Frames to read as well so that decord decodes straight through the key frames that
        short steps between `indices` (ascending) jump over: the frame before each such key.

        decord decodes forward while the next index is in the current GOP, but when it lies past
        a key frame it stops its decoder thread, flushes and seeks, even if that key frame is the
        next packet. One extra frame converted per key frame is much cheaper (60 -> 30 fps clips:
        ~25% less CPU). Steps of `BRIDGE_MAX` frames or more are left to decord's seek.
        """
        indices = np.asarray(indices, np.int64)
        after, before = indices[:-1] + 1, indices[1:]  # decord sits at `after` before the step
        step = np.searchsorted(before, self._keys, side="left")  # the step each key falls in
        inside = step < len(before)
        keys, step = self._keys[inside], step[inside]
        jumped = (after[step] < keys) & (before[step] - after[step] < BRIDGE_MAX)
        return keys[jumped] - 1

    def _batch(self, indices: np.ndarray) -> np.ndarray:
        """Frames by index; decord's own exception on failure (callers say what was read)."""
        return self._reader.get_batch(np.asarray(indices).tolist()).asnumpy()


# --- 1 fps frames for feature extraction (HowTo100M conventions) ---------------------------------


@dataclass(frozen=True)
class DecodedVideo:
    """What decord decodes of a recording: frame count, average rate and frame size."""

    frames: int
    fps: float
    width: int
    height: int


def probe_frames(path: str | Path) -> DecodedVideo:
    """Open a recording with decord (the reader that `iter_second_frames` indexes) and describe it.

    Lighter than `probe` (no demux pass, no truncation or audio checks): feature extraction takes
    whatever frames decode. A file decord cannot open is a `MediaError` of kind 'corrupt'.
    """
    import decord

    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "video file not found", "missing")
    try:  # PyAV first: decord's FFmpeg prints its own errors on a file it cannot open
        av.open(str(path)).close()
    except av.FFmpegError as exc:
        raise MediaError(path, f"cannot open video ({exc.strerror})", "corrupt") from None
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as exc:  # decord raises its own DECORDError or RuntimeError
        raise MediaError(path, f"cannot open video ({_first_line(exc)})", "corrupt") from None
    if len(reader) == 0:
        raise MediaError(path, "video stream has no frames", "corrupt")
    height, width = reader[0].shape[:2]
    fps = float(reader.get_avg_fps())
    if not fps > 0:
        raise MediaError(path, f"invalid frame rate {fps}", "corrupt")
    return DecodedVideo(len(reader), fps, int(width), int(height))


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
    path: str | Path, short_side: int, chunk: int, info: DecodedVideo | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first second, uint8 frames (n <= chunk, h, w, 3)) at 1 fps, short side scaled.

    Built on `FrameReader`, which decord scales while decoding, so a chunk holds `chunk` frames
    of the target size and nothing else: memory is bounded whatever the video's length. Indices
    go forward only (decord's accurate seeks grow memory when they jump around).
    """
    path = Path(path)
    info = info or probe_frames(path)
    reader = FrameReader(path, scaled_size(info.width, info.height, short_side))
    indices = second_indices(info.frames, info.fps)
    for lo in range(0, len(indices), chunk):
        try:
            batch = reader._batch(indices[lo : lo + chunk])
        except Exception as exc:
            raise MediaError(
                path, f"decoding failed at second {lo} ({exc})"[:300], "corrupt"
            ) from None
        yield lo, batch


# 8-bit planar YUV: the luma plane is the grey picture, so no colour conversion is needed.
_YUV8 = {"yuv420p", "yuv422p", "yuv444p", "yuvj420p", "yuvj422p", "yuvj444p", "nv12", "nv21"}
# Limited-range (16..235) luma to full range, rounded: what FFmpeg's grey conversion does.
_LIMITED_TO_FULL = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)


def read_gray_frames(
    path: str | Path, box: tuple[int, int, int, int] | None = None, *, threads: int = 1
) -> np.ndarray:
    """Every frame, in order, as grey uint8 (n, h, w) cropped to box (x, y, width, height).

    For features of a fixed region over whole recordings (frame k at k / fps, fps from `probe`).
    Grey is full-range luma (BT.601 weights), bit-identical to FFmpeg's `gray` conversion (and
    PIL's `convert("L")` up to rounding). For 8-bit YUV the luma plane is cropped before anything
    is converted: about 8x faster than decoding RGB frames (`benchmarks/lip_features_speed.py`).
    `threads`: decoder threads (0 = FFmpeg's choice); stages run one process per core instead.
    """
    path = Path(path)
    out = []
    with _open_input(path) as container:
        if not container.streams.video:
            raise MediaError(path, "no video stream", "corrupt")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        x, y, w, h = box if box else (0, 0, stream.codec_context.width, stream.codec_context.height)
        try:
            for frame in container.decode(stream):
                out.append(_gray(frame, x, y, w, h))
        except av.FFmpegError as exc:
            raise MediaError(
                path, f"video decoding failed after {len(out)} frames ({exc})", "corrupt"
            ) from None
    if not out:
        raise MediaError(path, "video stream has no frames", "corrupt")
    return np.stack(out)


def _gray(frame: av.VideoFrame, x: int, y: int, w: int, h: int) -> np.ndarray:
    """The box of one decoded frame as full-range grey uint8 (h, w)."""
    if frame.format.name not in _YUV8:
        return frame.to_ndarray(format="gray")[y : y + h, x : x + w].copy()
    plane = frame.planes[0]
    luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[y : y + h, x : x + w]
    full = frame.format.name.startswith("yuvj") or frame.color_range == 2  # 2: JPEG/full range
    return luma.copy() if full else _LIMITED_TO_FULL[luma]


def _open_input(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise MediaError(path, "recording not found", "missing")
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(path, f"cannot be decoded ({exc})", "corrupt") from None


class AudioReader:
    """Audio of one recording: mono by time span, resampled (`read`), or the whole track as
    decoded (`track`). PyAV decodes, soxr resamples."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._container: av.container.InputContainer | None = None
        self._grid: int | None = None
        self._open()
        self.rate = self._stream.codec_context.sample_rate

    def _open(self) -> None:
        self.close()
        self._container = _open_input(self.path)
        if not self._container.streams.audio:
            self.close()
            raise MediaError(self.path, "no audio track", "no_audio")
        self._stream = self._container.streams.audio[0]
        video = self._container.streams.video
        self._origin = _origin(video[0]) if video else 0.0

    def read(self, start: float, end: float, rate: int) -> np.ndarray:
        """float32 mono samples of [start, end) at `rate`: exactly round((end - start) * rate).

        Samples lie on the recording's own grid at `rate` (sample g at g / rate, from
        g = round(start * rate)), so clips agree with resampling the whole track at once.
        """
        count = round((end - start) * rate)
        first = max(0.0, start - AUDIO_MARGIN) + self._origin
        mono, first_index = self._decode(first, end + AUDIO_MARGIN + self._origin)
        # Start resampling at a source sample that falls on the output grid, so that the
        # resampled block's sample 0 is grid sample `grid0` exactly (no fractional shift).
        step = self.rate // math.gcd(self.rate, rate)
        trim = -first_index % step
        grid0 = (first_index + trim) * rate // self.rate
        resampled = soxr.resample(mono[trim:], self.rate, rate, quality="HQ")
        offset = round(start * rate) - grid0
        out = np.zeros(count, np.float32)
        # A span can start before the first decoded sample (only near time 0): that is silence.
        take = resampled[max(offset, 0) : max(offset, 0) + count - max(-offset, 0)]
        out[max(-offset, 0) : max(-offset, 0) + len(take)] = take
        return out

    def track(self) -> np.ndarray:
        """The whole track as float32 (channels, n) at `rate`, nothing resampled: mono and stereo
        as they are, more channels as FFmpeg's mono downmix (as `_mono` does).

        For stages that mix and resample with their own filter (mel_cepstrum: soxr VHQ). Starts
        at the track's first sample (FFmpeg drops the codec's priming), not at the video's time 0.
        Integer PCM is converted to float by FFmpeg (x / 2**(bits - 1)).
        """
        self._open()  # from the start, as a fresh decoder
        layout = self._stream.codec_context.layout
        if layout.nb_channels > 2:  # a mean of 5.1's channels, mostly silent, is ~15 dB too quiet
            layout = "mono"
        # Planar float at the track's own rate and layout: a pass-through for AAC, Opus, Vorbis.
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=self.rate)
        chunks = []
        try:
            for frame in self._container.decode(self._stream):
                chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray() for f in resampler.resample(None))
        except av.FFmpegError as exc:
            raise MediaError(self.path, f"audio cannot be decoded ({exc})", "corrupt") from None
        if not chunks:
            raise MediaError(self.path, "audio track has no samples", "no_audio")
        return np.concatenate(chunks, axis=1).astype(np.float32, copy=False)

    def _decode(self, start: float, end: float) -> tuple[np.ndarray, int]:
        """Mono float samples (n,) covering [start, end] in container time (`_mono`), and the
        first one's index on the recording's timeline at the source rate."""
        downmix = av.AudioResampler(format="fltp", layout="mono", rate=self.rate)
        tb = self._stream.time_base
        seconds = float(tb)  # float arithmetic: Fraction timestamps cost more than decoding
        try:
            if start > self._origin:
                self._container.seek(int(start / tb), stream=self._stream, backward=True)
            else:
                # After a seek the AAC decoder restarts without the priming frame's overlap, so
                # its first ~600 samples differ; from time 0, decode as a fresh reader does.
                self._open()
            chunks, first_time = [], None
            for frame in self._container.decode(self._stream):
                if frame.pts is None:
                    continue
                at = frame.pts * seconds
                if first_time is None:
                    first_time = at
                chunks.append(_mono(frame, downmix))
                if at + frame.samples / self.rate >= end:
                    break
        except av.FFmpegError as exc:
            raise MediaError(self.path, f"audio cannot be decoded ({exc})", "corrupt") from None
        if not chunks:
            raise MediaError(self.path, f"no audio at {start:.3f} s", "short")
        first = round((first_time - self._origin) * self.rate)
        if seconds * self.rate > 1:
            # Timestamps coarser than a sample (Matroska, WebM: 1 ms) only locate a frame to
            # within a tick. Codec frames have a fixed size (AAC 1024, Opus 960) and end on a grid
            # that starts where the stream's first frame ends (that one is short by the codec's
            # priming, and so can be the first after a seek): snapping the end of the first
            # decoded frame to that grid recovers the exact sample position.
            size = max(len(chunk) for chunk in chunks[:3])
            grid, end = self._grid_start(), first + len(chunks[0])
            snapped = grid + round((end - grid) / size) * size
            if abs(snapped - end) <= seconds * self.rate:
                first = snapped - len(chunks[0])
        return np.concatenate(chunks), first

    def _grid_start(self) -> int:
        """Timeline sample index (source rate) at which the stream's first frame ends."""
        if self._grid is None:
            with av.open(str(self.path)) as container:
                stream = container.streams.audio[0]
                frame = next(container.decode(stream))
                end = frame.pts * float(stream.time_base) - self._origin
                self._grid = round(end * self.rate) + frame.samples
        return self._grid

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> AudioReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _mono(frame: av.AudioFrame, downmix: av.AudioResampler) -> np.ndarray:
    """One decoded frame as mono float32 (n,).

    Mono as decoded; stereo as the mean of its two channels, as clips have always been mixed
    (FFmpeg's stereo -> mono is (L + R) / sqrt(2) for float audio: 3 dB louder, other bytes).
    More channels go through FFmpeg's own downmix (libswresample's matrix, what `ffmpeg -ac 1`
    applies; for 5.1: fronts 0.707, centre 1, surrounds 0.5, LFE left out): a plain mean of six
    channels, most of them near silent, made real 5.1 soundtracks ~15 dB too quiet. The rates are
    equal, so the resampler only mixes: one output sample per input sample, no delay.
    """
    if frame.layout.nb_channels <= 2:
        samples = _planar_float(frame)
        return samples.mean(axis=0) if samples.shape[0] > 1 else samples[0]
    return np.concatenate([f.to_ndarray()[0] for f in downmix.resample(frame)])


def _planar_float(frame: av.AudioFrame) -> np.ndarray:
    """(channels, samples) float32 whatever the decoder's sample format."""
    if frame.format.name == "fltp":  # AAC, Opus, Vorbis: read the planes without copies
        planes = [np.frombuffer(p, np.float32, frame.samples) for p in frame.planes]
        return np.stack(planes)
    data = frame.to_ndarray()
    if not frame.format.is_planar:
        data = data.reshape(-1, frame.layout.nb_channels).T
    if data.dtype.kind == "i":
        data = data.astype(np.float32) / np.iinfo(data.dtype).max
    return data.astype(np.float32, copy=False)


def read_audio(path: str | Path, rate: int) -> np.ndarray:
    """The whole first audio track as float32 mono at `rate`, downmixed and resampled by FFmpeg
    (libswresample), as the reference feature extractors do (audio_features' 16 kHz front end).

    Not `AudioReader`: that one mixes stereo by its mean and resamples with soxr on the
    recording's own sample grid, which gives other samples; the feature stages keep FFmpeg's.
    No audio stream is a `MediaError` of kind 'no_audio', an unreadable file one of 'corrupt'.
    """
    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(path, f"cannot open ({exc})", "corrupt") from None
    with container:
        if not container.streams.audio:
            raise MediaError(path, "no audio stream", "no_audio")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
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


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__


def write_media(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: int | Fraction,
    audio: np.ndarray | None = None,
    audio_rate: int = 48000,
    *,
    crf: int = 20,
    preset: str = "veryfast",
    gop: int | None = None,
    audio_bitrate: int | None = None,
) -> None:
    """Encode RGB frames (h, w, 3) uint8 and optional float audio (channels, n) in [-1, 1].

    The container follows the suffix: H.264 (libx264) + AAC in .mp4, .mkv, .mov; VP9 + Opus in
    .webm. Deterministic: one encoder thread, x264 without assembly (`X264_PARAMS`) and FFmpeg's
    bitexact mode (no version strings, no random Matroska UIDs), so the same input gives the same
    bytes. `fps` may be a Fraction (30000/1001). `gop` is the key-frame interval in frames (default
    about 1 s), which bounds the decoding a seek costs. Frames are consumed one at a time; `crf`
    and `preset` tune x264 only; `audio_bitrate` is in bit/s (None: the encoder's default). Mono,
    stereo and 5.1 audio (channels FL FR FC LFE BL BR).
    """
    webm = Path(path).suffix.lower() == ".webm"
    keyint = str(gop or round(fps))
    if webm:
        codecs = ("libvpx-vp9", "libopus")
        options = {"deadline": "realtime", "cpu-used": "8", "threads": "1", "g": keyint}
    else:
        codecs = ("libx264", "aac")
        options = {"crf": str(crf), "preset": preset, "threads": "1", "g": keyint}
        options["x264-params"] = X264_PARAMS
    with (
        _baseline_ffmpeg_kernels(),
        av.open(str(path), "w", container_options={"fflags": "+bitexact"}) as container,
    ):
        video = container.add_stream(codecs[0], rate=fps, options=options)
        video.pix_fmt = "yuv420p"
        sound = None
        if audio is not None:
            audio = np.asarray(audio, np.float32)
            layout = {1: "mono", 2: "stereo", 6: "5.1"}[audio.shape[0]]
            sound = container.add_stream(codecs[1], rate=audio_rate, layout=layout)
            if audio_bitrate is not None:
                sound.codec_context.bit_rate = audio_bitrate
        encoded = 0  # audio samples sent so far: audio is fed alongside video to interleave
        for i, image in enumerate(frames):
            if i == 0:
                video.height, video.width = image.shape[:2]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(video.encode(frame))
            if sound is not None:
                encoded = _encode_audio(container, sound, audio, audio_rate, encoded, (i + 1) / fps)
        container.mux(video.encode())
        if sound is not None:
            _encode_audio(container, sound, audio, audio_rate, encoded, None)
            container.mux(sound.encode())


@functools.cache
def _libavutil() -> ctypes.CDLL | None:
    """PyAV's own libavutil (the wheel bundles it), on x86-64 Linux; None elsewhere."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    libs = sorted((Path(av.__file__).parent.parent / "av.libs").glob("libavutil*.so*"))
    return ctypes.CDLL(str(libs[0])) if libs else None


@contextmanager
def _baseline_ffmpeg_kernels() -> Iterator[None]:
    """FFmpeg's CPU flags held to `_X86_64_BASELINE` for the encoders opened inside. Process-wide:
    only for code that does nothing else meanwhile (the writers)."""
    lib = _libavutil()
    if lib is None:
        yield
        return
    lib.av_force_cpu_flags(ctypes.c_int(lib.av_get_cpu_flags() & _X86_64_BASELINE))
    try:
        yield
    finally:
        lib.av_force_cpu_flags(ctypes.c_int(-1))  # back to the CPU's own


def _encode_audio(
    container, stream, audio: np.ndarray, rate: int, done: int, until: float | None
) -> int:
    """Encode whole codec frames of audio up to time `until`; None (at the end): all that is left.

    The end is a sentinel, not the track's duration: n / rate * rate can round below n, which
    would drop the last partial frame.
    """
    layout = stream.codec_context.layout.name
    block = stream.codec_context.frame_size or 1024  # AAC 1024, Opus 960
    if until is None or until * rate >= audio.shape[1]:
        stop = audio.shape[1]
    else:
        stop = min(audio.shape[1], done + max(int(until * rate) - done, 0) // block * block)
    for lo in range(done, stop, block):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(audio[:, lo : min(lo + block, stop)]), format="fltp", layout=layout
        )
        frame.rate, frame.pts = rate, lo
        container.mux(stream.encode(frame))
    return max(stop, done)
