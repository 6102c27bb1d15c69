"""The synthetic talker: speech and mouth follow the same phones, deterministically."""

from __future__ import annotations

import librosa
import numpy as np
import soxr

from stages.common.seeding import rng
from stages.lipspeech import talker


def one_phone_utterance(phone: str, seconds: float = 0.6) -> talker.Utterance:
    ends = np.array([0.2, 0.2 + seconds, 0.4 + seconds])
    starts = np.r_[0.0, ends[:-1]]
    return talker.Utterance([[phone]], ["pau", phone, "pau"], starts, ends, f0=120.0)


def formants(speech: np.ndarray) -> np.ndarray:
    """F1, F2 (Hz) of the steady middle of a vowel by LPC (order 12 at 12 kHz) root angles."""
    middle = soxr.resample(
        speech[int(0.35 * 48000) : int(0.65 * 48000)].astype(np.float64), 48000, 12000
    )
    a = librosa.lpc(middle * np.hamming(len(middle)), order=12)
    roots = np.roots(a)
    roots = roots[(roots.imag > 0) & (np.abs(roots) > 0.9)]  # sharp resonances only
    return np.sort(np.angle(roots) * 12000 / (2 * np.pi))[:2]


def test_random_utterances_are_reproducible_and_within_bounds():
    a = talker.random_utterance(rng(5, "t", 0), 2.0, 4.0)
    b = talker.random_utterance(rng(5, "t", 0), 2.0, 4.0)
    assert a.phones == b.phones and np.array_equal(a.ends, b.ends)
    for i in range(20):
        u = talker.random_utterance(rng(5, "t", i), 2.0, 4.0)
        assert 2.0 <= u.duration <= 4.0 + 0.3
        assert u.phones[0] == u.phones[-1] == "pau"
        assert np.all(np.diff(u.ends) > 0)


def test_vowels_have_their_formants():
    for vowel in talker.VOWELS:
        found = formants(talker.synthesize(one_phone_utterance(vowel), rng(1, vowel)))
        expected = talker.PHONES[vowel].formants[:2]
        np.testing.assert_allclose(found, expected, rtol=0.12, err_msg=vowel)


def test_speech_is_deterministic_and_never_digitally_silent():
    utt = talker.random_utterance(rng(3, "u"), 2.0, 2.5)
    a = talker.synthesize(utt, rng(3, "s"))
    assert np.array_equal(a, talker.synthesize(utt, rng(3, "s")))
    assert len(a) == round(utt.duration * 48000) and np.abs(a).max() <= 0.51
    pause = a[: int(0.15 * 48000)]
    assert 0 < np.abs(pause).max() < 0.01  # leading pause: only the faint room noise


def test_mouth_follows_the_phones():
    times = np.array([0.5])
    opening = {
        p: talker.mouth_track(one_phone_utterance(p), times)[0] for p in ("a", "i", "u", "m")
    }
    assert opening["a"][0] > 0.9 and opening["m"][0] < 0.05  # open vowel vs closed bilabial
    assert opening["i"][1] > opening["u"][1] + 0.3  # spread vs rounded lips


def test_open_mouth_darkens_the_lip_box():
    frames = {}
    for p in ("a", "m"):
        utt = one_phone_utterance(p)
        frames[p] = talker.render_frames(utt, rng(0, p), 0.0, 20)[15]
    x, y = (int(c) for c in talker.MOUTH_CENTRE)
    box = {p: f[y - 27 : y + 28, x - 27 : x + 28].mean() for p, f in frames.items()}
    assert box["a"] < box["m"] - 5
    assert frames["a"].shape == (talker.HEIGHT, talker.WIDTH, 3)
