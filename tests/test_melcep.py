"""The batched mel-cepstral analysis against pysptk (SPTK), and its building blocks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soxr

from stages.common.seeding import rng
from stages.lipspeech import melcep, talker
from stages.lipspeech.mcd import mcd_frames
from stages.lipspeech.spdsolve import solve_toeplitz_plus_hankel

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pysptk imports the deprecated pkg_resources
    import pysptk

ORDER, ALPHA, NFFT = 31, 0.37, 512


@pytest.fixture(scope="module")
def speech_frames() -> np.ndarray:
    """Windowed 12 kHz frames of two talker utterances (speech, pauses and room noise)."""
    generator = rng(7, "test-melcep")
    signals = []
    for _ in range(2):
        utt = talker.random_utterance(generator, 2.0, 2.5)
        signals.append(
            soxr.resample(talker.synthesize(utt, generator).astype(np.float64), 48000, 12000)
        )
    return melcep.frame_signal(np.concatenate(signals), 300, 60, NFFT, "blackman")


def reference(frames: np.ndarray, **kwargs) -> np.ndarray:
    return np.array([pysptk.sptk.mcep(f, order=ORDER, alpha=ALPHA, **kwargs) for f in frames])


def test_freqt_matches_sptk():
    c = rng(1, "freqt").standard_normal(40)
    for order, alpha in ((31, 0.37), (60, -0.42), (5, 0.0)):
        np.testing.assert_allclose(
            melcep.freqt(c, order, alpha), pysptk.sptk.freqt(c, order, alpha), atol=1e-12
        )


@pytest.mark.parametrize(("etype", "eps"), [(0, 0.0), (1, 1e-8), (2, -60.0)])
def test_mcep_matches_pysptk_on_speech(speech_frames, etype, eps):
    frames = speech_frames[::4]
    ours = melcep.mcep(frames, ORDER, ALPHA, etype=etype, eps=eps)
    theirs = reference(frames, etype=etype, eps=eps)
    distortion = mcd_frames(ours, theirs)
    assert distortion.max() <= 0.05
    assert distortion.mean() < 1e-6  # the same algorithm: agreement to rounding, not just "close"
    np.testing.assert_allclose(ours[:, 0], theirs[:, 0], atol=1e-6)


def test_mcep_of_silence_is_finite_and_matches_pysptk():
    frames = np.zeros((3, NFFT))
    frames[1, :300] = 1e-6 * rng(2, "quiet").standard_normal(300)
    ours = melcep.mcep(frames, ORDER, ALPHA, etype=1, eps=1e-8)
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, reference(frames, etype=1, eps=1e-8), atol=1e-8)


def test_digital_silence_without_a_floor_is_an_error_naming_the_frame():
    frames = np.zeros((2, NFFT))
    frames[0, :300] = rng(3, "x").standard_normal(300)
    with pytest.raises(ValueError, match=r"frames \[1\]"):
        melcep.mcep(frames, ORDER, ALPHA)


def test_mcep_is_deterministic_and_frame_independent(speech_frames):
    frames = speech_frames[:600]
    whole = melcep.mcep(frames, ORDER, ALPHA, etype=1, eps=1e-8)
    np.testing.assert_array_equal(whole, melcep.mcep(frames, ORDER, ALPHA, etype=1, eps=1e-8))
    # Frames are analysed independently: other frames in the batch change only the rounding.
    parts = [
        melcep.mcep(frames[i : i + 37], ORDER, ALPHA, etype=1, eps=1e-8) for i in range(0, 600, 37)
    ]
    np.testing.assert_allclose(whole, np.concatenate(parts), rtol=0, atol=1e-10)


def test_log_amplitude_known_answer():
    # alpha = 0: log|H(w)| = c0 + c1 cos(w) + c2 cos(2w) for a cepstrum (c0, c1, c2).
    mc = np.array([[0.5, 0.3, -0.2]])
    w = 2 * np.pi * np.arange(NFFT // 2 + 1) / NFFT
    expected = 0.5 + 0.3 * np.cos(w) - 0.2 * np.cos(2 * w)
    np.testing.assert_allclose(melcep.log_amplitude(mc, 0.0, NFFT)[0], expected, atol=1e-12)


def test_mcep_envelope_follows_the_periodogram(speech_frames):
    # The fitted envelope of a loud voiced frame tracks its smoothed log spectrum.
    loudest = speech_frames[np.argmax((speech_frames**2).sum(axis=1))]
    mc = melcep.mcep(loudest[None], ORDER, ALPHA)
    model = 2 * melcep.log_amplitude(mc, ALPHA, NFFT)[0]
    log_power = np.log(melcep.periodogram(loudest[None])[0])
    smooth = np.convolve(log_power, np.ones(9) / 9, mode="same")
    assert np.corrcoef(model[10:200], smooth[10:200])[0, 1] > 0.9


def test_frame_signal_centres_frames_on_hops():
    x = np.arange(1, 1001, dtype=np.float64)
    frames = melcep.frame_signal(x, 300, 60, 512, "boxcar")
    assert frames.shape == (1 + 1000 // 60, 512)
    assert frames[0, 150] == x[0] and frames[5, 150] == x[300]  # frame k centred on sample k*hop
    assert not frames[:, 300:].any()


def test_toeplitz_plus_hankel_solve_matches_numpy():
    generator = rng(4, "tph")
    n, batch = 12, 150  # three lane groups, the last one partial
    lags = np.arange(2 * n - 1)
    # r from a positive weight on cosines -> a positive definite T + H matrix.
    theta = np.linspace(0, np.pi, 200)
    weights = generator.random((batch, 200)) + 0.1
    r = weights @ np.cos(np.outer(theta, lags))
    definite = generator.random(batch) > 0.2
    r[~definite] *= -1  # negative definite: rejected, not NaN
    rhs = generator.standard_normal((batch, n))
    x, ok = solve_toeplitz_plus_hankel(r, rhs)
    np.testing.assert_array_equal(ok, definite)
    assert not x[~definite].any()
    i, j = np.indices((n, n))
    for b in np.flatnonzero(definite):
        np.testing.assert_allclose(
            x[b], np.linalg.solve(r[b][abs(i - j)] + r[b][i + j], rhs[b]), rtol=1e-9
        )
    # A row's answer does not depend on the rows solved beside it, to the bit.
    for b in (0, 63, 64, 149):
        alone, _ = solve_toeplitz_plus_hankel(r[b : b + 1], rhs[b : b + 1])
        np.testing.assert_array_equal(alone[0], x[b])
