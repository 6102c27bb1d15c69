"""Mel-cepstral distortion: known answers for the frame-synchronous and DTW variants."""

from __future__ import annotations

import numpy as np
import pytest

from stages.lipspeech.mcd import MCD_CONSTANT, mcd, mcd_dtw, mcd_frames


def test_constant_is_the_textbook_value():
    assert pytest.approx(6.14185, abs=1e-5) == MCD_CONSTANT


def test_known_offsets():
    ref = np.zeros((4, 5))
    c = ref.copy()
    c[:, 2] = 0.1  # every frame off by 0.1 in c2
    assert mcd(c, ref) == pytest.approx(6.14185 * 0.1, abs=1e-5)
    c[:, 0] = 7.0  # c0 (energy) is excluded by default ...
    assert mcd(c, ref) == pytest.approx(0.614185, abs=1e-5)
    assert mcd(c, ref, include_c0=True) == pytest.approx(MCD_CONSTANT * np.sqrt(49.01))
    c2 = ref.copy()
    c2[0, 1], c2[1, 1] = 0.3, 0.4  # per frame 0.3, 0.4, 0, 0
    np.testing.assert_allclose(mcd_frames(c2, ref), MCD_CONSTANT * np.array([0.3, 0.4, 0, 0]))


def test_identical_sequences_have_zero_distortion():
    x = np.random.default_rng(0).standard_normal((10, 32))
    assert mcd(x, x) == 0.0
    assert mcd_dtw(x, x)[0] == 0.0


def test_sync_needs_equal_lengths():
    with pytest.raises(ValueError, match="equal shapes"):
        mcd(np.zeros((3, 4)), np.zeros((4, 4)))


def test_dtw_undoes_a_time_stretch():
    x = np.random.default_rng(1).standard_normal((20, 8))
    stretched = np.repeat(x, 2, axis=0)  # same content, twice as slow
    value, path = mcd_dtw(stretched, x)
    assert value == pytest.approx(0.0, abs=1e-12)
    assert (path[0] == (0, 0)).all() and (path[-1] == (39, 19)).all()
    np.testing.assert_array_equal(path[:, 1], np.arange(40) // 2)


def test_dtw_matches_brute_force_on_a_small_case():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 3))
    cost = MCD_CONSTANT * np.sqrt(((a[:, None, 1:] - b[None, :, 1:]) ** 2).sum(-1))

    def paths(i, j):  # every monotone path from (0, 0) to (i, j) with unit steps
        if i == 0 and j == 0:
            return [[(0, 0)]]
        out = []
        for di, dj in ((1, 1), (1, 0), (0, 1)):
            if i - di >= 0 and j - dj >= 0:
                out += [[*p, (i, j)] for p in paths(i - di, j - dj)]
        return out

    best = min(paths(3, 2), key=lambda p: sum(cost[q] for q in p))
    value, path = mcd_dtw(a, b)
    assert sum(cost[q] for q in map(tuple, path)) == pytest.approx(sum(cost[q] for q in best))
    assert value == pytest.approx(np.mean([cost[q] for q in map(tuple, path)]))
