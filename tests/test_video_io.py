"""Readers: 1-fps frame choice, short-side scaling, decord chunks vs PyAV, audio resampling."""

from __future__ import annotations

import numpy as np
import pytest

from stages.common.video_io import (
    MediaError,
    iter_second_frames,
    probe_video,
    read_audio,
    scaled_size,
    second_indices,
)
from stages.mcn_sample import write_mp4


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
def clip(tmp_path_factory):
    """5.5 s at 10 fps, 96x64; frame t shows grey level 40 * (t // 10): one level per second."""
    path = tmp_path_factory.mktemp("video") / "v.mp4"
    frames = np.repeat((np.arange(55) // 10 * 40).astype(np.uint8), 64 * 96 * 3)
    t = np.arange(int(5.5 * 22050)) / 22050
    tone = 0.3 * np.sin(2 * np.pi * 1000 * t)
    write_mp4(
        path, frames.reshape(55, 64, 96, 3), np.stack([tone, tone]).astype(np.float32), 10, 22050
    )
    return path


def test_chunks_hold_at_most_chunk_frames_and_match_pyav(clip):
    import av

    with av.open(str(clip)) as container:
        reference = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    chunks = list(iter_second_frames(clip, short_side=64, chunk=2))
    assert [(s, len(f)) for s, f in chunks] == [(0, 2), (2, 2), (4, 1)]
    frames = np.concatenate([f for _, f in chunks])
    assert frames.shape == (5, 64, 96, 3)
    for second, frame in enumerate(frames):
        diff = np.abs(frame.astype(int) - reference[second * 10].astype(int))
        assert diff.mean() < 2.0
        assert abs(frame.mean() - 40 * second) < 4  # the right second's grey level


def test_probe_and_scaled_decoding(clip):
    info = probe_video(clip)
    assert (info.frames, info.fps, info.width, info.height) == (55, 10.0, 96, 64)
    _, frames = next(iter_second_frames(clip, short_side=224, chunk=8))
    assert frames.shape == (5, 224, 336, 3)


def test_audio_is_16k_mono_at_the_right_pitch(clip):
    wave = read_audio(clip, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 5.5 * 16000) < 2048  # AAC priming/padding only
    spectrum = np.abs(np.fft.rfft(wave[4000:20000]))
    assert np.argmax(spectrum) == pytest.approx(1000, abs=2)  # 16000-sample window: 1 Hz bins


def test_unreadable_and_silent_files_raise_media_errors(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    with pytest.raises(MediaError) as err:
        probe_video(bad)
    assert err.value.kind == "corrupt" and "bad.mp4" in str(err.value)
    silent = tmp_path / "silent.mp4"
    write_mp4(silent, np.zeros((10, 32, 32, 3), np.uint8), None, 10, 22050)
    with pytest.raises(MediaError) as err:
        read_audio(silent)
    assert err.value.kind == "no_audio"
