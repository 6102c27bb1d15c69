"""The embedded talker: phoneme sequences, their timing, a source-filter voice and a moving mouth.

Pure functions only (arrays in, arrays out); `stages.lipspeech.sample` writes the files. One phone
timeline drives both modalities: the vocal-tract formants and sources of the 48 kHz speech, and the
opening and width of the mouth in the 720x480 video, so lip shape predicts the spectrum (five vowels
with distinct formants and mouth shapes; bilabials close the lips; fricatives, stops and pauses).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Literal

import numpy as np
import scipy.signal

SAMPLE_RATE = 48_000
FPS = Fraction(30_000, 1_001)  # 29.97 fps, NTSC as the paper's DV video
WIDTH, HEIGHT = 720, 480
MOUTH_CENTRE = (360.0, 280.0)  # (x, y) at rest; the default 55x55 ROI box is centred on it

Kind = Literal["vowel", "nasal", "liquid", "stop", "fricative", "aspirate", "pause"]


@dataclass(frozen=True)
class Phone:
    kind: Kind
    duration: tuple[float, float]  # seconds, drawn uniformly
    mouth: tuple[float, float] | None  # (opening 0..1, width 0..1); None: coarticulated
    formants: tuple[float, float, float] | None = None  # F1..F3 (Hz) for voiced sounds
    voicing: float = 0.0  # glottal source amplitude
    noise: float = 0.0  # frication / burst amplitude
    noise_band: tuple[float, float] = (0.0, 0.0)  # centre and bandwidth (Hz); 0 = through formants


# Japanese vowels (male speaker formants) and a handful of consonants.
PHONES: dict[str, Phone] = {
    "a": Phone("vowel", (0.09, 0.15), (1.00, 0.80), (800, 1250, 2600), voicing=1.0),
    "i": Phone("vowel", (0.08, 0.13), (0.22, 1.00), (300, 2300, 3000), voicing=0.9),
    "u": Phone("vowel", (0.07, 0.12), (0.28, 0.50), (350, 1300, 2400), voicing=0.85),
    "e": Phone("vowel", (0.08, 0.14), (0.55, 0.92), (500, 1900, 2600), voicing=0.95),
    "o": Phone("vowel", (0.09, 0.15), (0.68, 0.55), (500, 850, 2500), voicing=1.0),
    "m": Phone("nasal", (0.06, 0.08), (0.0, 0.72), (250, 1100, 2300), voicing=0.3),
    "n": Phone("nasal", (0.05, 0.07), (0.18, 0.78), (250, 1600, 2500), voicing=0.3),
    "r": Phone("liquid", (0.03, 0.04), None, (350, 1300, 2200), voicing=0.6),
    "b": Phone("stop", (0.06, 0.08), (0.0, 0.72), (250, 900, 2300), voicing=0.12, noise=0.2),
    "p": Phone("stop", (0.07, 0.09), (0.0, 0.72), noise=0.35, noise_band=(1200, 1500)),
    "t": Phone("stop", (0.06, 0.08), None, noise=0.35, noise_band=(4000, 2000)),
    "k": Phone("stop", (0.07, 0.09), None, noise=0.35, noise_band=(2000, 1200)),
    "s": Phone("fricative", (0.08, 0.11), (0.12, 0.88), noise=0.25, noise_band=(5200, 1600)),
    "sh": Phone("fricative", (0.08, 0.11), (0.22, 0.55), noise=0.25, noise_band=(3000, 1400)),
    "h": Phone("aspirate", (0.05, 0.07), None, noise=0.15),
    "pau": Phone("pause", (0.12, 0.25), (0.04, 0.74)),
}
VOWELS = ("a", "i", "u", "e", "o")
ONSETS = ("", "k", "s", "t", "n", "h", "m", "r", "p", "b", "sh")
REST_MOUTH = PHONES["pau"].mouth
BURST = 0.015  # seconds of release noise at the end of a stop


@dataclass(frozen=True)
class Utterance:
    words: list[list[str]]  # phones per word
    phones: list[str]  # including pauses
    starts: np.ndarray  # (n,) seconds
    ends: np.ndarray  # (n,) seconds
    f0: float  # base F0 (Hz)

    @property
    def duration(self) -> float:
        return float(self.ends[-1])

    @property
    def text(self) -> str:
        return " ".join("".join(w) for w in self.words)


# --- the phone timeline -----------------------------------------------------------------------


def random_utterance(generator: np.random.Generator, min_s: float, max_s: float) -> Utterance:
    """A sentence of CV words with pauses, lasting between min_s and max_s seconds."""
    target = generator.uniform(min_s, max_s)
    lead, tail = generator.uniform(0.18, 0.3), generator.uniform(0.18, 0.3)
    phones, durations, words = ["pau"], [lead], []
    elapsed = lead
    while True:
        morae = int(generator.integers(2, 5))
        word: list[str] = []
        for _ in range(morae):
            onset = ONSETS[int(generator.integers(len(ONSETS)))]
            word += ([onset] if onset else []) + [VOWELS[int(generator.integers(len(VOWELS)))]]
        word_durations = [generator.uniform(*PHONES[p].duration) for p in word]
        pause = generator.uniform(*PHONES["pau"].duration) if generator.random() < 0.35 else 0.0
        if words and elapsed + sum(word_durations) + tail > target:
            break
        words.append(word)
        phones += word
        durations += word_durations
        elapsed += sum(word_durations)
        if pause:
            phones.append("pau")
            durations.append(pause)
            elapsed += pause
    if phones[-1] == "pau":  # the closing silence absorbs a trailing word pause
        durations[-1] += max(target - elapsed, tail)
    else:
        phones.append("pau")
        durations.append(max(target - elapsed, tail))
    ends = np.cumsum(durations)
    return Utterance(words, phones, ends - np.asarray(durations), ends, generator.uniform(105, 135))


def _targets(utt: Utterance, field: str) -> list[tuple[float, ...]]:
    """Per-phone targets; coarticulated phones take the next vowel's (or else the last one's)."""
    values = [getattr(PHONES[p], field) for p in utt.phones]
    for i, v in enumerate(values):
        if v is None:
            later = [
                values[j]
                for j in range(i + 1, len(values))
                if PHONES[utt.phones[j]].kind == "vowel"
            ]
            earlier = [values[j] for j in range(i) if PHONES[utt.phones[j]].kind == "vowel"]
            values[i] = (
                later or earlier[::-1] or [REST_MOUTH if field == "mouth" else (500, 1500, 2500)]
            )[0]
    return values


def piecewise(utt: Utterance, values: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Step function of per-phone values (n, k) sampled at times (t,) -> (t, k)."""
    index = np.clip(np.searchsorted(utt.ends, times, side="right"), 0, len(utt.phones) - 1)
    return values[index]


def smooth(track: np.ndarray, rate: float, seconds: float) -> np.ndarray:
    """Gaussian smoothing along time (axis 0), sigma in seconds: coarticulation and ramps."""
    sigma = seconds * rate
    radius = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(track, [(radius, radius)] + [(0, 0)] * (track.ndim - 1), mode="edge")
    return np.apply_along_axis(lambda x: np.convolve(x, kernel, mode="valid"), 0, padded)


def mouth_track(utt: Utterance, times: np.ndarray) -> np.ndarray:
    """(opening, width) of the mouth at `times`: phone targets smoothed over ~35 ms."""
    rate = 1000.0
    grid = np.arange(0.0, utt.duration + 1e-9, 1 / rate)
    steps = piecewise(utt, np.asarray(_targets(utt, "mouth"), np.float64), grid)
    track = smooth(steps, rate, 0.035)
    return np.stack([np.interp(times, grid, track[:, k]) for k in range(2)], axis=1)


# --- the voice --------------------------------------------------------------------------------


def _resonator_sos(freq: np.ndarray, bandwidth: np.ndarray, rate: int) -> np.ndarray:
    """Two-pole resonators with unit gain at DC (cascade formant synthesis), as SOS rows."""
    r = np.exp(-np.pi * bandwidth / rate)
    a1, a2 = -2 * r * np.cos(2 * np.pi * freq / rate), r * r
    sos = np.zeros((len(freq), 6))
    sos[:, 0], sos[:, 3], sos[:, 4], sos[:, 5] = 1 + a1 + a2, 1.0, a1, a2
    return sos


def _bandpass_sos(centre: float, bandwidth: float, rate: int) -> np.ndarray:
    r = np.exp(-np.pi * bandwidth / rate)
    a1, a2 = -2 * r * np.cos(2 * np.pi * centre / rate), r * r
    return np.array([[(1 - r * r) / 2, 0.0, -(1 - r * r) / 2, 1.0, a1, a2]])


def synthesize(
    utt: Utterance, generator: np.random.Generator, rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Speech (samples,) float32 for an utterance: glottal pulses through time-varying formants,
    band noise for fricatives and bursts, aspiration through the formants, a faint noise floor."""
    n = round(utt.duration * rate)
    t = np.arange(n) / rate
    index = np.clip(np.searchsorted(utt.ends, t, side="right"), 0, len(utt.phones) - 1)
    phones = [PHONES[p] for p in utt.phones]

    # Source: F0 falls over the utterance (declination) with a slow wobble; impulses at each period,
    # glottal spectral tilt (two poles) and lip radiation (one zero).
    wobble = 1 + 0.06 * np.sin(
        2 * np.pi * t * generator.uniform(0.8, 1.6) + generator.uniform(0, 6.3)
    )
    f0 = utt.f0 * (1.0 - 0.2 * t / utt.duration) * wobble
    phase = np.cumsum(f0 / rate)
    pulses = np.diff(np.floor(phase), prepend=0.0)
    glottal = scipy.signal.lfilter([1.0, -1.0], [1.0, -1.94, 0.9409], pulses)

    voicing = smooth(np.array([p.voicing for p in phones])[index], rate, 0.008)
    aspiration = np.array([p.noise if p.kind == "aspirate" else 0.0 for p in phones])[index]
    aspiration = smooth(aspiration, rate, 0.006)
    source = glottal * voicing + 0.02 * aspiration * generator.standard_normal(n)

    # Formant tracks at 1 kHz control rate, applied in 2.5 ms blocks with carried filter state.
    control = np.arange(0.0, utt.duration, 0.001)
    formants = smooth(
        piecewise(utt, np.asarray(_targets(utt, "formants"), np.float64), control), 1000, 0.02
    )
    block = rate // 400
    voiced = np.empty(n)
    state = np.zeros((4, 2))
    bandwidths = np.array([80.0, 100.0, 150.0, 200.0])
    for lo in range(0, n, block):
        f = formants[min(int(lo / rate * 1000), len(formants) - 1)]
        sos = _resonator_sos(np.array([*f, 3500.0]), bandwidths, rate)
        voiced[lo : lo + block], state = scipy.signal.sosfilt(
            sos, source[lo : lo + block], zi=state
        )

    # Frication and stop bursts: band-limited noise per phone, with a short release burst.
    frication = np.zeros(n)
    for k, p in enumerate(phones):
        if not p.noise or not p.noise_band[0]:
            continue
        lo, hi = int(utt.starts[k] * rate), int(utt.ends[k] * rate)
        if p.kind == "stop":
            lo = max(lo, hi - int(BURST * rate))
        envelope = (
            np.hanning(hi - lo) if p.kind == "fricative" else np.exp(-np.linspace(0, 4, hi - lo))
        )
        noise = scipy.signal.sosfilt(
            _bandpass_sos(*p.noise_band, rate), generator.standard_normal(hi - lo)
        )
        frication[lo:hi] += p.noise * envelope * noise * 2

    speech = voiced + frication
    speech *= 0.5 / np.abs(speech).max()
    speech += 3e-4 * generator.standard_normal(n)  # room noise: silence is not digital zero
    return speech.astype(np.float32)


# --- the face -------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def face_canvas(margin: int) -> np.ndarray:
    """The still lower face (nose to chin), RGB, `margin` px larger on each side for head motion."""
    h, w = HEIGHT + 2 * margin, WIDTH + 2 * margin
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    y -= margin
    x -= margin
    cx = MOUTH_CENTRE[0]
    canvas = np.empty((h, w, 3))
    canvas[:] = (52, 58, 70)  # backdrop
    face = ((x - cx) / 330) ** 2 + ((y - 60) / 440) ** 2 < 1.0
    shade = 1.0 - 0.18 * np.clip((y - 60) / 440, 0, 1) - 0.1 * ((x - cx) / 330) ** 2
    canvas[face] = np.array([222, 170, 138])[None, :] * shade[face][:, None]
    for nx in (cx - 32, cx + 32):  # nostrils
        nostril = ((x - nx) / 14) ** 2 + ((y - 110) / 8) ** 2 < 1.0
        canvas[nostril] = (120, 72, 60)
    nose = np.exp(-(((x - cx) / 70) ** 2) - ((y - 80) / 45) ** 2)  # nose-tip highlight
    canvas += 20 * nose[..., None]
    chin = np.exp(-(((x - cx) / 120) ** 2) - ((y - 420) / 25) ** 2)  # chin crease shadow
    canvas -= 25 * chin[..., None]
    return np.clip(canvas, 0, 255)


def _soft_ellipse(x: np.ndarray, y: np.ndarray, rx: float, ry: float) -> np.ndarray:
    """Coverage (0..1) of an ellipse with a one-pixel anti-aliased edge; thin ones fade out."""
    if rx <= 0.05 or ry <= 0.05:
        return np.zeros_like(x)
    d = np.sqrt((x / rx) ** 2 + (y / ry) ** 2)
    # Distance to the edge in pixels ~ (d - 1) / |grad d|.
    grad = np.hypot(x / rx**2, y / ry**2) / np.maximum(d, 1e-9)
    distance = (d - 1.0) / np.maximum(grad, 1e-9)
    return np.clip(0.5 - distance, 0.0, 1.0) * min(1.0, 2 * ry) * min(1.0, 2 * rx)


PATCH = 48  # half-size of the square the mouth is drawn in


def draw_mouth(
    patch: np.ndarray, centre: tuple[float, float], opening: float, width: float
) -> None:
    """Draw lips, the dark opening and the upper teeth onto an RGB float patch, in place.

    `centre` is the mouth centre (x, y) in the patch's pixel coordinates.
    """
    y, x = np.mgrid[0 : patch.shape[0], 0 : patch.shape[1]].astype(np.float64)
    x, y = x - centre[0], y - centre[1]
    half_width = 11 + 11 * width
    lips = _soft_ellipse(x, y, half_width, 5.5 + 8 * opening)
    inner_h = 8.5 * opening
    inner = _soft_ellipse(x, y, half_width * 0.78, inner_h)
    teeth = inner * _soft_ellipse(x, y + inner_h * 0.75, half_width * 0.6, inner_h * 0.45)
    for cover, colour in ((lips, (168, 78, 86)), (inner, (58, 20, 26)), (teeth, (226, 222, 210))):
        patch += cover[..., None] * (np.array(colour, np.float64) - patch)


def head_motion(generator: np.random.Generator, times: np.ndarray, amplitude: float) -> np.ndarray:
    """Smooth (x, y) head displacement in px: three slow sinusoids per axis, peak ~amplitude."""
    freqs = generator.uniform(0.2, 1.2, (2, 3))
    phases = generator.uniform(0, 2 * np.pi, (2, 3))
    waves = np.sin(2 * np.pi * freqs[None] * times[:, None, None] + phases[None]).sum(axis=2)
    return amplitude * waves / 3.0


def render_frames(
    utt: Utterance, generator: np.random.Generator, jitter: float, count: int
) -> np.ndarray:
    """`count` video frames (count, 480, 720, 3) uint8 of the talker saying `utt`."""
    margin = int(np.ceil(jitter)) + 1
    base = np.round(face_canvas(margin)).astype(np.uint8)
    times = np.arange(count) / float(FPS)
    mouth = mouth_track(utt, times)
    motion = head_motion(generator, times, jitter)
    frames = np.empty((count, HEIGHT, WIDTH, 3), np.uint8)
    for k in range(count):
        shift = np.round(motion[k]).astype(int)
        frames[k] = base[margin - shift[1] :, margin - shift[0] :][:HEIGHT, :WIDTH]
        cx, cy = MOUTH_CENTRE[0] + motion[k, 0], MOUTH_CENTRE[1] + motion[k, 1]
        x0, y0 = int(cx) - PATCH, int(cy) - PATCH
        region = frames[k, y0 : y0 + 2 * PATCH, x0 : x0 + 2 * PATCH]
        patch = region.astype(np.float64)
        draw_mouth(patch, (cx - x0, cy - y0), *mouth[k])
        region[:] = np.round(patch)
    return frames
