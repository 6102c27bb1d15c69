"""The media reader against PyAV's own decode, on real files (good and broken); the 1-fps
feature readers (frame choice, short-side scaling, decord chunks vs PyAV, audio resampling)."""

from __future__ import annotations

import hashlib
import pickle
from fractions import Fraction

import av
import numpy as np
import pytest
import soxr
from media_samples import (
    frame_index,
    pattern_audio,
    pattern_frame,
    pyav_audio,
    pyav_frames,
    pyav_gray,
    remux_faststart,
    truncate,
    write_pattern,
)

from stages.common import media
from stages.common.errors import StageError
from stages.common.media import (
    AudioReader,
    FrameReader,
    MediaError,
    iter_second_frames,
    probe,
    probe_frames,
    read_audio,
    read_gray_frames,
    sample_times,
    scaled_size,
    second_indices,
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


def test_frames_read_through_key_frames_match_frames_read_one_by_one(tmp_path):
    # 60 fps, a key frame every 10: 30 fps times from an even frame step over key frames, which
    # FrameReader bridges by reading the frame before each; the output must not change.
    path = tmp_path / "short-gop.mp4"
    frames = (pattern_frame(i, 64, 96) for i in range(120))
    write_media(path, frames, 60, pattern_audio(2.0, 48000, []), gop=10)
    reader = FrameReader(path, (64, 64))
    times = sample_times(0.2, 40, 30)
    wanted = reader.indices_at(times)
    assert wanted.tolist() == list(range(12, 92, 2))
    assert set(reader.bridges(wanted).tolist()) >= {19, 39, 59, 79}
    got = reader.frames_at(times)
    assert [frame_index(f) for f in got] == wanted.tolist()
    alone = FrameReader(path, (64, 64))
    for k in (0, 3, 4, 39):  # one at a time, no bridging
        np.testing.assert_array_equal(got[k], alone.frames_at(times[k : k + 1])[0])


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


# libavutil/cpu.h: what FFmpeg would use on an AVX2 machine, and on one with SSE2 only.
AVX2_CPU = 0x1 | 0x2 | 0x8 | 0x10 | 0x1000 | 0x20 | 0x40 | 0x80 | 0x100 | 0x4000 | 0x8000
SSE2_CPU = 0x1 | 0x2 | 0x8 | 0x10 | 0x1000


@pytest.mark.parametrize("width", [64, 144])  # not multiples of 128: x264's AVX-512 bug (below)
def test_write_media_bytes_depend_on_nothing_but_the_input(tmp_path, busy_cpu, width):
    """Same bytes on every call, under load, and whatever SIMD kernels FFmpeg would pick.

    x264's AVX-512 mbtree kernel read past the end of a row of frames whose width is not a
    multiple of 128 px, so the bytes changed between calls on AVX-512 CPUs (6 outputs in 40
    calls); its other SIMD kernels are not bit-exact with each other either, and FFmpeg's AAC
    encoder gives other bits with AVX2, AVX or SSE kernels. write_media runs x264 without assembly
    and holds FFmpeg to x86-64's baseline kernels while encoding.
    """
    frames = [pattern_frame(i, width, 48) for i in range(12)]
    stereo = np.stack([np.sin(np.linspace(0, k, 12000)) for k in (300, 500)]).astype(np.float32)
    libavutil = media._libavutil()
    emulated = [None] if libavutil is None else [None, AVX2_CPU, SSE2_CPU]
    digests = set()
    for flags in emulated:
        for attempt in range(4):
            if flags is not None:
                libavutil.av_force_cpu_flags(flags)
            try:
                path = tmp_path / f"{flags}-{attempt}.mp4"
                write_media(path, iter(frames), 30, stereo, 24000, preset="veryfast")
            finally:
                if libavutil is not None:
                    libavutil.av_force_cpu_flags(-1)
            digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1


# --- surround sound ----------------------------------------------------------------------------

SURROUND = {0: (440, 0.2), 2: (1000, 0.1), 3: (60, 0.4), 4: (2500, 0.2)}  # FL, FC, LFE, BL
# FFmpeg's 5.1 -> mono (libswresample, as `ffmpeg -ac 1`): fronts -3 dB, centre 0 dB, surrounds
# -6 dB, LFE left out.
DOWNMIX = {0: 0.7071, 2: 1.0, 3: 0.0, 4: 0.5}


@pytest.fixture(scope="module")
def surround(tmp_path_factory):
    """A 5.1 AAC recording: one tone per channel in four of the six, the rest silent."""
    rate, t = 48000, np.arange(3 * 48000) / 48000
    audio = np.zeros((6, len(t)), np.float32)
    for channel, (hz, level) in SURROUND.items():
        audio[channel] = level * np.sin(2 * np.pi * hz * t)
    path = tmp_path_factory.mktemp("surround") / "5.1.mp4"
    write_media(path, (pattern_frame(i, 48, 64) for i in range(90)), 30, audio, rate)
    return path


def test_surround_is_downmixed_with_the_standard_weights(surround):
    assert probe(surround).audio.channels == 6
    with AudioReader(surround) as reader:
        mono = reader.read(1.0, 2.0, 16000)
    spectrum = np.abs(np.fft.rfft(mono)) / (len(mono) / 2)  # 1 Hz bins: tone amplitudes
    for channel, (hz, level) in SURROUND.items():
        assert spectrum[hz] == pytest.approx(DOWNMIX[channel] * level, abs=0.003), channel


def test_surround_downmix_is_ffmpegs_own(surround):
    """At the source rate (nothing resampled) the samples are FFmpeg's downmix of the track."""
    with av.open(str(surround)) as container:
        downmix = av.AudioResampler(format="fltp", layout="mono", rate=48000)
        frames = container.decode(container.streams.audio[0])
        reference = np.concatenate([f.to_ndarray()[0] for x in frames for f in downmix.resample(x)])
    with AudioReader(surround) as reader:
        mono = reader.read(0.0, 3.0, 48000)
        later = reader.read(1.25, 2.5, 48000)  # after a seek
    np.testing.assert_array_equal(mono, reference[: len(mono)])
    np.testing.assert_array_equal(later, reference[60000:120000])


def test_whole_surround_track_is_ffmpegs_mono_downmix(surround):
    """mel_cepstrum reads whole tracks: surround comes mixed as the clips' audio, not averaged."""
    with AudioReader(surround) as reader:
        track = reader.track()
        mono = reader.read(0.0, 3.0, reader.rate)
    assert track.shape[0] == 1
    np.testing.assert_array_equal(track[0, : len(mono)], mono)


# --- broken files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_mp4(tmp_path_factory):
    return write_pattern(tmp_path_factory.mktemp("good") / "good.mp4", 3.0, 30, (64, 48))


def test_truncated_mp4_is_an_error_naming_the_file(good_mp4, tmp_path):
    broken = truncate(good_mp4, tmp_path / "cut.mp4")
    with pytest.raises(MediaError, match="cannot be decoded") as info:
        probe(broken)
    assert info.value.where == str(broken) and info.value.kind == "corrupt"
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


def test_audio_shorter_than_video_is_not_truncation(tmp_path):
    """The header claims the longer stream: an audio track ending first is not a cut file."""
    frames = (pattern_frame(i, 48, 64) for i in range(90))  # 3 s of video, 1.5 s of audio
    path = tmp_path / "short-audio.mp4"
    write_media(path, frames, 30, pattern_audio(1.5, 48000, []), 48000)
    info = probe(path)
    assert info.video.end == pytest.approx(3.0)
    assert info.audio.end == pytest.approx(1.5, abs=0.03)
    assert info.duration == info.audio.end  # what both streams cover


def test_recording_without_audio(tmp_path):
    silent = write_pattern(tmp_path / "silent.mp4", 2.0, 30, (64, 48), audio=False)
    assert probe(silent).audio is None
    with pytest.raises(MediaError, match="no audio track") as info:
        AudioReader(silent)
    assert info.value.kind == "no_audio"
    with pytest.raises(MediaError, match="recording not found") as info:
        read_gray_frames(tmp_path / "missing.mp4")
    assert info.value.kind == "missing"


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


# --- 1 fps feature readers ---


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((454, 256), (397, 224)),
        ((1920, 1080), (398, 224)),
        ((224, 224), (224, 224)),
        ((480, 640), (224, 298)),
    ],
)
def test_short_side_scaling_keeps_aspect_without_crop(size, expected):
    assert scaled_size(*size, 224) == expected


def test_one_frame_per_whole_second_nearest_to_t():
    assert second_indices(90, 30.0).tolist() == [0, 30, 60]
    assert second_indices(100, 29.97).tolist() == [0, 30, 60]  # round(2 * 29.97) = 60
    assert second_indices(35, 10.0).tolist() == [0, 10, 20]  # 3.5 s -> 3 whole seconds
    assert second_indices(6, 10.0).tolist() == [0]  # shorter than a second: its first frame


@pytest.fixture(scope="module")
def one_fps_clip(tmp_path_factory):
    """5.5 s at 10 fps, 96x64; frame t shows grey level 40 * (t // 10): one level per second."""
    path = tmp_path_factory.mktemp("video") / "v.mp4"
    frames = np.repeat((np.arange(55) // 10 * 40).astype(np.uint8), 64 * 96 * 3)
    t = np.arange(int(5.5 * 22050)) / 22050
    tone = 0.3 * np.sin(2 * np.pi * 1000 * t)
    stereo = np.stack([tone, tone]).astype(np.float32)
    write_media(path, frames.reshape(55, 64, 96, 3), 10, stereo, 22050, gop=250)
    return path


def test_chunks_hold_at_most_chunk_frames_and_match_pyav(one_fps_clip):
    import av

    with av.open(str(one_fps_clip)) as container:
        reference = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    chunks = list(iter_second_frames(one_fps_clip, short_side=64, chunk=2))
    assert [(s, len(f)) for s, f in chunks] == [(0, 2), (2, 2), (4, 1)]
    frames = np.concatenate([f for _, f in chunks])
    assert frames.shape == (5, 64, 96, 3)
    for second, frame in enumerate(frames):
        diff = np.abs(frame.astype(int) - reference[second * 10].astype(int))
        assert diff.mean() < 2.0
        assert abs(frame.mean() - 40 * second) < 4  # the right second's grey level


def test_probe_and_scaled_decoding(one_fps_clip):
    info = probe_frames(one_fps_clip)
    assert (info.frames, info.fps, info.width, info.height) == (55, 10.0, 96, 64)
    _, frames = next(iter_second_frames(one_fps_clip, short_side=224, chunk=8))
    assert frames.shape == (5, 224, 336, 3)


def test_audio_is_16k_mono_at_the_right_pitch(one_fps_clip):
    wave = read_audio(one_fps_clip, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 5.5 * 16000) < 2048  # AAC priming/padding only
    spectrum = np.abs(np.fft.rfft(wave[4000:20000]))
    assert np.argmax(spectrum) == pytest.approx(1000, abs=2)  # 16000-sample window: 1 Hz bins


def test_unreadable_missing_and_silent_files_raise_classified_media_errors(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    with pytest.raises(MediaError) as err:
        probe_frames(bad)
    assert err.value.kind == "corrupt" and "bad.mp4" in str(err.value)
    with pytest.raises(MediaError) as err:
        probe_frames(tmp_path / "gone.mp4")
    assert err.value.kind == "missing"
    silent = tmp_path / "silent.mp4"
    write_media(silent, np.zeros((10, 32, 32, 3), np.uint8), 10)
    with pytest.raises(MediaError) as err:
        read_audio(silent, 16000)
    assert err.value.kind == "no_audio"


def test_media_errors_cross_process_boundaries_intact():
    # Workers raise them; the parent must see the same file, problem and kind.
    error = pickle.loads(pickle.dumps(MediaError("clips/a.mp4", "no audio track", "no_audio")))
    assert isinstance(error, MediaError)
    assert (error.where, error.problem, error.kind) == ("clips/a.mp4", "no audio track", "no_audio")
    assert str(error) == "clips/a.mp4: no audio track"
    plain = pickle.loads(pickle.dumps(StageError("params.yaml: x", "must be > 0")))
    assert type(plain) is StageError and str(plain) == "params.yaml: x: must be > 0"


def test_a_frame_size_decord_cannot_output_is_named_as_such(tmp_path):
    path = write_pattern(tmp_path / "p.mp4", 1.0, 30, (96, 64))
    with pytest.raises(MediaError, match="decord cannot output 48x48 frames") as info:
        FrameReader(path, (48, 48)).frames_at(sample_times(0.0, 4, 30))
    assert info.value.kind == "unsupported"
