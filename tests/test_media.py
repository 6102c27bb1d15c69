"""The media reader against PyAV's own decode, on real files (good and broken)."""

from __future__ import annotations

import hashlib
from fractions import Fraction

import numpy as np
import pytest
import soxr
from media_samples import (
    frame_index,
    pattern_frame,
    pyav_audio,
    pyav_frames,
    pyav_gray,
    remux_faststart,
    truncate,
    write_pattern,
)

from stages.common.errors import StageError
from stages.common.media import (
    AudioReader,
    FrameReader,
    probe,
    read_gray_frames,
    sample_times,
    write_media,
)

CLICKS = (1.5, 3.25)


@pytest.fixture(
    scope="module",
    params=[(60, (256, 240), "mp4"), (25, (320, 180), "mkv"), (30, (160, 96), "webm")],
    ids=["h264-aac-mp4", "h264-aac-mkv", "vp9-opus-webm"],
)
def recording(request, tmp_path_factory):
    fps, size, ext = request.param
    path = tmp_path_factory.mktemp("media") / f"rec.{ext}"
    write_pattern(path, 4.0, fps, size, clicks=CLICKS)
    return path, fps, size


def test_probe_describes_the_recording(recording):
    path, fps, (width, height) = recording
    info = probe(path)
    assert info.video.fps == pytest.approx(fps)
    assert (info.video.width, info.video.height) == (width, height)
    assert info.video.frames == 4 * fps
    assert info.duration == pytest.approx(4.0, abs=0.03)
    assert info.audio is not None
    assert (info.audio.rate, info.audio.channels) == (48000, 2)
    assert info.audio.codec == ("opus" if path.suffix == ".webm" else "aac")


def test_frames_at_shows_the_frame_on_screen_at_each_time(recording):
    path, fps, _ = recording
    times = sample_times(1.01, 60, 30)
    frames = FrameReader(path, (128, 128)).frames_at(times)
    assert frames.shape == (60, 128, 128, 3) and frames.dtype == np.uint8
    expected = np.floor(times * fps + 1e-6).astype(int)
    assert [frame_index(f) for f in frames] == expected.tolist()


def test_frames_agree_with_pyav_decode(recording):
    path, _, _ = recording
    reference = pyav_frames(path, 128)
    times = sample_times(0.5, 45, 30)
    reader = FrameReader(path, (128, 128))
    for image, index in zip(reader.frames_at(times), reader.indices_at(times), strict=True):
        diff = np.abs(image.astype(int) - reference[index].astype(int)).mean()
        assert diff < 6, (index, diff)


def test_audio_has_the_exact_length_and_its_clicks_where_they_are(recording):
    path, _, _ = recording
    with AudioReader(path) as reader:
        clip = reader.read(1.0, 3.5, 16000)
    assert clip.shape == (40000,) and clip.dtype == np.float32
    loud = np.flatnonzero(np.abs(clip) > 0.6)
    onsets = loud[np.diff(loud, prepend=-100) > 100] / 16000 + 1.0
    assert onsets == pytest.approx(CLICKS, abs=0.002)


def test_audio_agrees_with_resampling_the_whole_track(recording):
    path, _, _ = recording
    whole, rate = pyav_audio(path)
    reference = soxr.resample(whole, rate, 16000, quality="HQ")
    with AudioReader(path) as reader:
        for start, end in ((0.0, 2.0), (0.73, 3.1), (1.9999, 3.9)):
            clip = reader.read(start, end, 16000)
            first = round(start * 16000)
            diff = np.abs(clip - reference[first : first + len(clip)])
            # AAC's noise substitution draws from a generator that a seek resets, so the loud
            # broadband clicks decode slightly differently; everything else agrees closely.
            assert np.mean(diff > 2e-3) < 0.01 and diff.max() < 0.2


def test_gray_frames_are_ffmpegs_grey_cropped(recording):
    path, fps, (width, height) = recording
    reference = np.stack(pyav_gray(path))
    box = (width // 4, height // 3, width // 2, height // 4)
    x, y, w, h = box
    rois = read_gray_frames(path, box)
    assert rois.shape == (4 * fps, h, w) and rois.dtype == np.uint8
    np.testing.assert_array_equal(rois, reference[:, y : y + h, x : x + w])
    np.testing.assert_array_equal(read_gray_frames(path), reference)


def test_track_is_the_whole_track_as_decoded(recording):
    path, _, _ = recording
    whole, rate = pyav_audio(path)
    with AudioReader(path) as reader:
        track = reader.track()
        assert reader.rate == rate == 48000
    assert track.shape == (2, len(whole)) and track.dtype == np.float32
    np.testing.assert_array_equal(track.mean(axis=0), whole)
    # The two channels are different sines (440 and 660 Hz) with the same clicks.
    loud = np.flatnonzero(np.abs(track[1]) > 0.6)
    onsets = loud[np.diff(loud, prepend=-1000) > 1000] / rate
    assert onsets == pytest.approx(CLICKS, abs=0.002)


def test_write_media_takes_fractional_rates_and_mono(tmp_path):
    frames = [pattern_frame(i, 48, 64) for i in range(60)]
    audio = np.sin(np.linspace(0, 3000, 2 * 44100))[None].astype(np.float32)
    path = tmp_path / "ntsc.mp4"
    write_media(path, iter(frames), Fraction(30000, 1001), audio, 44100, audio_bitrate=96_000)
    info = probe(path)
    assert info.video.fps == pytest.approx(30000 / 1001) and info.video.frames == 60
    assert (info.audio.rate, info.audio.channels) == (44100, 1)
    assert [frame_index(f) for f in FrameReader(path).frames_at(np.arange(60) * 1.001 / 30)] == (
        list(range(60))
    )


@pytest.mark.parametrize("ext", ["mp4", "webm"])
def test_write_media_keeps_every_audio_sample(tmp_path, ext):
    # 100004 / 48000 * 48000 rounds below 100004 in floating point: the last partial codec frame
    # must still be written.
    audio = (0.5 * np.sin(np.arange(100004) / 7.0))[None].astype(np.float32)
    path = tmp_path / f"tail.{ext}"
    write_media(path, iter([pattern_frame(i, 48, 64) for i in range(30)]), 30, audio, 48000)
    with AudioReader(path) as reader:
        track = reader.track()
    # Decoded length: the input plus at most the encoder's padding of the last frame.
    assert 100004 <= track.shape[1] < 100004 + 1024


def test_write_media_is_deterministic(tmp_path):
    frames = [pattern_frame(i, 48, 64) for i in range(30)]
    audio = np.sin(np.linspace(0, 300, 48000))[None].astype(np.float32)
    digests = []
    for name in ("a.mp4", "b.mp4"):
        write_media(tmp_path / name, iter(frames), 30, audio, 48000)
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert digests[0] == digests[1]


# --- broken files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_mp4(tmp_path_factory):
    return write_pattern(tmp_path_factory.mktemp("good") / "good.mp4", 3.0, 30, (64, 48))


def test_truncated_mp4_is_an_error_naming_the_file(good_mp4, tmp_path):
    broken = truncate(good_mp4, tmp_path / "cut.mp4")
    with pytest.raises(StageError, match="cannot be decoded") as info:
        probe(broken)
    assert info.value.where == str(broken)
    with pytest.raises(StageError, match="cannot be decoded"):
        FrameReader(broken, (32, 32))
    with pytest.raises(StageError, match="cannot be decoded") as info:
        read_gray_frames(broken)
    assert info.value.where == str(broken)


def test_truncated_streaming_mp4_is_reported_as_truncated(good_mp4, tmp_path):
    streaming = remux_faststart(good_mp4, tmp_path / "fast.mp4")
    assert probe(streaming).duration == pytest.approx(3.0, abs=0.05)  # the remux itself is fine
    broken = truncate(streaming, tmp_path / "fast-cut.mp4", keep=0.6)
    with pytest.raises(StageError, match="truncated: data ends at") as info:
        probe(broken)
    assert info.value.where == str(broken)


def test_recording_without_audio(tmp_path):
    silent = write_pattern(tmp_path / "silent.mp4", 2.0, 30, (64, 48), audio=False)
    assert probe(silent).audio is None
    with pytest.raises(StageError, match="no audio track"):
        AudioReader(silent)
    with pytest.raises(StageError, match="recording not found"):
        read_gray_frames(tmp_path / "missing.mp4")


def test_mpeg_ts_is_refused_with_advice(tmp_path):
    """decord seeks to wrong frames in MPEG-TS: refuse it rather than cut wrong clips."""
    ts = write_pattern(tmp_path / "capture.ts", 2.0, 30, (64, 48))
    with pytest.raises(StageError, match="MPEG-TS is not supported: remux"):
        probe(ts)


def test_not_a_video(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    with pytest.raises(StageError, match="cannot be decoded"):
        probe(text)
    with pytest.raises(StageError, match="not found"):
        probe(tmp_path / "missing.mp4")
