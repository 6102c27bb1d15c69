"""Alignment rules of lipspeech_pairs on hand-checkable inputs."""

from __future__ import annotations

import numpy as np
import pytest

from stages.common.errors import StageError
from stages.lipspeech.pairs import align, interpolate_features, learnability, pool_mcep

FPS = 30000 / 1001


def test_interpolation_is_linear_in_time_and_drops_frames_outside_the_video():
    lip_t = np.arange(4) / FPS
    lip = np.array([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0], [3.0, 40.0]])
    times = np.array([-0.01, 0.0, 0.5 / FPS, 2.25 / FPS, 3 / FPS, 0.2])
    values, inside = interpolate_features(lip_t, lip, times)
    np.testing.assert_array_equal(inside, [False, True, True, True, True, False])
    np.testing.assert_allclose(values, [[0, 10], [0.5, 15], [2.25, 32.5], [3, 40]])


def test_pooling_averages_the_frames_nearest_each_video_frame():
    lip_t = np.arange(3) / FPS  # video frames at 0, 33.4, 66.7 ms
    mcep_t = np.array([0.0, 0.005, 0.020, 0.030, 0.040, 0.200])  # 5 ms frames, one far outside
    mcep = np.arange(6.0)[:, None] * np.ones((1, 2))
    pooled, has = pool_mcep(lip_t, FPS, mcep_t, mcep)
    # nearest video frame: 0, 0, 1 (20 ms > 16.7 ms), 1, 1; 200 ms is past the video
    np.testing.assert_array_equal(has, [True, True, False])
    np.testing.assert_allclose(pooled[:, 0], [0.5, 3.0])


def columns(names, splits, times, values, key):
    return {
        "utterance": np.array(names),
        "split": np.array(splits),
        "frame": np.arange(len(names)),
        "time": np.array(times),
        key: np.array(values, np.float32),
    }


def test_align_rejects_utterances_missing_from_one_side():
    lip = columns(["a", "a"], ["train"] * 2, [0, 1 / FPS], [[0.0], [1.0]], "features")
    mcep = columns(["b"], ["train"], [0.0], [[0.0, 0.0]], "mcep")
    with pytest.raises(StageError, match="not the other"):
        align(lip, mcep, FPS, "interpolate")


def test_linear_baseline_finds_a_linear_relation():
    rng = np.random.default_rng(0)
    lip = rng.standard_normal((400, 3))
    mcep = np.c_[np.zeros(400), lip @ rng.standard_normal((3, 4))]
    rows = {"split": np.array(["train"] * 300 + ["test"] * 100), "lip": lip, "mcep": mcep}
    result = learnability(rows)
    assert result["test_mcd_db_linear"] < 1e-6 < result["test_mcd_db_train_mean"]
